#!/usr/bin/env bash
# spa-proto micro-benchmarks: seal, junk rejection, full open, and one bare X25519 in the
# same run; prints the medians and the open / X25519 ratio.
#   usage: bench/proto.sh [criterion args, e.g. --measurement-time 5]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --locked -p spa-proto --bench knock -- "$@" >&2
python3 - <<'PY'
import json, pathlib
base = pathlib.Path("target/criterion/knock")
med = {}
for d in sorted(base.iterdir()):
    est = d / "new" / "estimates.json"
    if est.exists():
        med[d.name] = json.loads(est.read_text())["median"]["point_estimate"]
print(f"{'benchmark':<24} {'median':>12}")
for name, ns in med.items():
    print(f"{name:<24} {ns/1000:>9.3f} µs")
if "open_valid" in med and "x25519" in med:
    print(f"open_valid / x25519 = {med['open_valid']/med['x25519']:.3f}  (target <= 1.2)")
PY
