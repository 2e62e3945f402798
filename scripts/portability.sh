#!/usr/bin/env bash
# Type-checks spa-client (and the crates it uses) for macOS, Windows and FreeBSD, with
# warnings as errors: the client uses only std sockets, and everything Linux-only is
# cfg-gated. Needs rustup to reach static.rust-lang.org for the targets' std (not
# available in CI, which only reaches package registries; run it by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(x86_64-apple-darwin aarch64-apple-darwin x86_64-pc-windows-gnu x86_64-unknown-freebsd)
rustup target add "${targets[@]}"
for t in "${targets[@]}"; do
  echo "== $t"
  RUSTFLAGS="-D warnings" cargo check --locked -p spa-client --target "$t"
done
echo "spa-client type-checks for: ${targets[*]}"
