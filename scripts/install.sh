#!/usr/bin/env bash
# Installs spa-server and spa-client with their man pages and shell completions, the
# systemd unit, and an empty /etc/spa (0700) for `spa-server init`. Starts nothing.
#   PREFIX (default /usr/local), DESTDIR (staging root, default empty),
#   SYSTEMD_UNIT_DIR (default PREFIX/lib/systemd/system, which systemd searches for
#   PREFIX /usr and /usr/local), SPA_PROFILE=debug to install a debug build (tests use it).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="${PREFIX:-/usr/local}"
DESTDIR="${DESTDIR:-}"
PROFILE="${SPA_PROFILE:-release}"
UNIT_DIR="${SYSTEMD_UNIT_DIR:-$PREFIX/lib/systemd/system}"
if [ "$PROFILE" = release ]; then
    cargo build --release --locked -q --bins
else
    cargo build --locked -q --bins
fi
bin="target/$PROFILE"
root="$DESTDIR$PREFIX"
install -d -m 0755 "$root/bin" "$root/share/man/man1" \
    "$root/share/bash-completion/completions" "$root/share/zsh/site-functions" \
    "$root/share/fish/vendor_completions.d"
install -m 0755 "$bin/spa-server" "$bin/spa-client" "$root/bin/"
docs="$(mktemp -d)"
trap 'rm -rf "$docs"' EXIT
"$bin/spa-server" generate-docs "$docs" >/dev/null
"$bin/spa-client" --key /dev/null generate-docs "$docs" >/dev/null
install -m 0644 "$docs"/man/*.1 "$root/share/man/man1/"
for b in spa-server spa-client; do
    install -m 0644 "$docs/completions/$b.bash" "$root/share/bash-completion/completions/$b"
    install -m 0644 "$docs/completions/_$b" "$root/share/zsh/site-functions/_$b"
    install -m 0644 "$docs/completions/$b.fish" "$root/share/fish/vendor_completions.d/$b.fish"
done
# The unit names the binary by its installed path.
install -d -m 0755 "$DESTDIR$UNIT_DIR"
sed "s|/usr/local/bin/spa-server|$PREFIX/bin/spa-server|g" dist/spa-server.service \
    >"$DESTDIR$UNIT_DIR/spa-server.service"
chmod 0644 "$DESTDIR$UNIT_DIR/spa-server.service"
# Keys and users live here; only root may look in.
install -d -m 0700 "$DESTDIR/etc/spa"
echo "installed spa-server and spa-client into $root, the unit into $DESTDIR$UNIT_DIR"
if [ -z "$DESTDIR" ]; then
    echo "next: spa-server init; systemctl daemon-reload; systemctl enable --now spa-server (docs/OPERATIONS.md)"
fi
