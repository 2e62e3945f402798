#!/usr/bin/env bash
# Runs every test, as CI does (.ci/run calls this). Installs what it needs on a fresh
# Debian machine. MUTATIONS sets the size of the mutation run (default 200000; the full
# run is 10000000, see README).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

need_rust_components
# nftables, iproute2, python3 and nmap: the namespace tests (a real daemon, real firewall).
# systemd: systemd-analyze checks dist/spa-server.service (systemd need not be PID 1).
need_debian_packages ca-certificates python3 nftables iproute2 nmap systemd

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
# The end-to-end tests run the real binaries: build them first.
cargo build --workspace --bins --locked
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
echo "== mutation run"
cargo run --release --locked -q -p spa-proto --example mutate -- --count "${MUTATIONS:-200000}"
echo "== benchmarks compile"
cargo bench --locked --workspace --no-run -q
# One closing line with the totals of every test suite above.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
