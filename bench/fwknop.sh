#!/usr/bin/env bash
# spa against fwknop (Debian's fwknop-server and fwknop-client, pcap mode and
# --udp-server) in one run, in one namespace lab, every server pinned to the same CPUs:
# knock-to-open latency, server CPU per junk packet, junk rate survived, valid knocks
# granted per second, RSS, and client CPU per knock. As root; installs what it needs.
#
#   bench/fwknop.sh            # ROUNDS=21 CLIENT_RUNS=200 SERVER_CPUS=1 CLIENT_CPUS=0
#
# Creates its own network namespaces (spa-e2e-<pid>-*) and a temporary directory, and
# deletes exactly those on exit, failure or Ctrl-C; touches nothing in the host's own
# network namespace (fwknopd and its iptables rules live in the lab's server namespace).
# The client-cost part sends only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_debian_packages nftables iproute2 python3 iptables tcpdump util-linux fwknop-server fwknop-client
cargo build --release --locked -q --workspace --bins
cargo build --release --locked -q -p spa-keys --example gen_users
cargo build --release --locked -q -p spa-e2e --example lab

work=$(mktemp -d /tmp/spa-fwknop-bench.XXXXXX)
lab_pid=""
cleanup() {
    trap - EXIT INT TERM
    if [ -n "$lab_pid" ]; then
        kill -TERM "$lab_pid" 2>/dev/null || true
        wait "$lab_pid" 2>/dev/null || true
        # Whatever the lab left (if it was killed before its own cleanup ran): its
        # namespaces, and the processes inside them. After a normal exit there are none.
        for ns in $(ip netns list | awk '{print $1}' | grep "^spa-e2e-$lab_pid-" || true); do
            for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
            ip netns del "$ns" 2>/dev/null || true
        done
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "# machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r)"
echo "# fwknop: $(dpkg-query -W -f='${Package} ${Version}' fwknop-server), $(dpkg-query -W -f='${Package} ${Version}' fwknop-client); iptables $(iptables --version | awk '{print $2, $3}')"
echo "# spa: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"

# Client cost per knock: the client process's own CPU time (user + system, start-up
# included), both clients interleaved, each knock sent to a loopback sink.
taskset -c "${CLIENT_CPUS:-0}" python3 - "${CLIENT_RUNS:-200}" "$work" <<'PY'
import os, resource, statistics, subprocess, sys
sys.path.insert(0, "bench")
from spa_loopback import CLIENT as client, loopback_profile
n, work = min(int(sys.argv[1]), 2000), sys.argv[2]
d = os.path.join(work, "client-cost")
os.makedirs(d)
prof, sink, port = loopback_profile(d)
sink.settimeout(2)
env = dict(os.environ, HOME=d)
rc = os.path.join(d, "fwknoprc")
keys = subprocess.run(["fwknop", "--rc-file", rc, "--key-gen"], env=env, check=True, capture_output=True, text=True).stdout
key = next(l.split()[1] for l in keys.splitlines() if l.startswith("KEY_BASE64:"))
hmac = next(l.split()[1] for l in keys.splitlines() if l.startswith("HMAC_KEY_BASE64:"))
fw = ["fwknop", "--rc-file", rc, "--no-save-args", "-A", "tcp/22", "-a", "127.0.0.1", "-D", "127.0.0.1",
      "-p", str(port), "--use-hmac", "--key-base64-rijndael", key, "--key-base64-hmac", hmac]
sp = [client, "-q", "--key", prof, "lo", "ssh"]
def cpu(args):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sink.recv(4096)  # exactly one datagram per knock, or a timeout error
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
a, b = [], []
for _ in range(n):
    a.append(cpu(sp)); b.append(cpu(fw))
ms = lambda v: f"median {statistics.median(v)*1e3:.2f} ms, mean {statistics.mean(v)*1e3:.2f} ms"
print(f"\n## client cost per knock ({n} runs each, interleaved; process CPU user+sys incl. start-up)")
print(f"spa-client: {ms(a)}")
print(f"fwknop:     {ms(b)}")
print(f"ratio spa-client / fwknop (medians): {statistics.median(a)/statistics.median(b):.2f}x")
PY

target/release/examples/lab fwknop "$work" &
lab_pid=$!
wait "$lab_pid"
