#!/usr/bin/env bash
# Client cost per knock: the spa-client process's own CPU time (user + system, including
# its start-up and loading the profile) to build and send one knock to a loopback port,
# over N runs (default 200). Creates a throwaway profile; sends only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q -p spa-client -p spa-server --bins
exec python3 - "${1:-200}" <<'PY'
import resource, subprocess, sys, tempfile
sys.path.insert(0, "bench")
from spa_loopback import CLIENT as client, loopback_profile
n = int(sys.argv[1])
with tempfile.TemporaryDirectory() as d:
    prof, sink, _ = loopback_profile(d)
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
