#!/usr/bin/env bash
# The spa demo. Until the namespace lab lands it shows the protocol core: a knock sealed,
# opened, and every way of abusing it refused, with the reason the audit log would name.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_rust_components
cargo run --release --locked -q -p spa-proto --example demo
