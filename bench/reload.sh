#!/usr/bin/env bash
# Reload latency and RSS with many users (default 100,000): startup, the revoke command,
# and the reload that makes the revocation live.   usage: bench/reload.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --locked -q -p spa-server --example reload_100k -- "${1:-100000}"
