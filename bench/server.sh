#!/usr/bin/env bash
# Server benchmarks in a network-namespace lab (as root): knock-to-open latency, daemon
# CPU per junk packet, valid knocks granted per second, RSS idle and with 100,000 users.
# Creates its own namespaces and deletes them; touches nothing in the host's namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_debian_packages nftables iproute2 python3
cargo build --release --locked -q --workspace --bins
cargo build --release --locked -q -p spa-keys --example gen_users
cargo build --release --locked -q -p spa-e2e --example lab
exec target/release/examples/lab bench
