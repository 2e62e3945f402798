#!/usr/bin/env bash
# Client cost per knock: the spa-client process's own CPU time (user + system, including
# its start-up and loading the profile) to build and send one knock to a loopback port,
# over N runs (default 200). Creates a throwaway profile; sends only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p spa-client -p spa-server --bins
exec python3 - "${1:-200}" <<'PY'
import os, resource, socket, subprocess, sys, tempfile, time
n = int(sys.argv[1])
client = os.path.abspath("target/release/spa-client")
server = os.path.abspath("target/release/spa-server")
with tempfile.TemporaryDirectory() as d:
    etc = os.path.join(d, "etc")
    subprocess.run([server, "init", "--dir", etc, "--port", "23456"], check=True, stdout=subprocess.DEVNULL)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    card = subprocess.run([server, "--config", os.path.join(etc, "server.toml"), "card", "--endpoint", f"127.0.0.1:{port}"],
                          check=True, capture_output=True, text=True).stdout.strip()
    prof = os.path.join(d, "me.spa")
    subprocess.run([client, "--key", prof, "keygen"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([client, "--key", prof, "add-server", "lo", card], check=True, stdout=subprocess.DEVNULL)
    sink.settimeout(0.5)
    def cpu(args):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    knock, peer, floor, got = [], [], [], 0
    for _ in range(n):
        # Interleaved, so both see the same machine.
        knock.append(cpu([client, "-q", "--key", prof, "lo", "ssh"]))
        sink.recv(2048); got += 1
        peer.append(cpu([client, "--version"]))
        floor.append(cpu(["/bin/true"]))
    knock.sort(); peer.sort(); floor.sort()
    med = lambda v: sum(v) / len(v)
    print(f"knocks sent {n}, datagrams received {got} (one each)")
    print(f"process CPU (user+sys, tick-grained so means are shown): knock {med(knock)*1e3:.2f} ms, "
          f"peer 'spa-client --version' {med(peer)*1e3:.2f} ms, floor '/bin/true' {med(floor)*1e3:.2f} ms")
    print(f"spa-client's own time per knock (knock minus the exec floor) {(med(knock)-med(floor))*1e3:.2f} ms (target <= 1 ms); "
          f"building and sending the knock (knock minus --version) {(med(knock)-med(peer))*1e3:.2f} ms")
PY
