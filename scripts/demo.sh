#!/usr/bin/env bash
# The spa demo: a real sshd protected by spa-server, in network namespaces this script
# creates (and deletes, also on failure or Ctrl-C). The host's own network namespace,
# firewall and interfaces are never touched.
#
#   [client]  c-s 10.88.1.2 ──── s-c 10.88.1.1  [server]  sshd :22, spa-server (udp/23456)
#                 fd88:1::2           fd88:1::1
#   [thief]   a-s 10.88.2.2 ──── s-a 10.88.2.1  [server]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
[ "$(id -u)" -eq 0 ] || { echo "run the demo as root (it creates network namespaces)" >&2; exit 1; }
need_rust_components
need_debian_packages nftables iproute2 openssh-server openssh-client python3

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '   $ %s\n' "$*"; }

echo "building spa (release)..."
cargo build --release --locked -q --bins
BIN="$PWD/target/release"

ID="spa-demo-$$"
S="$ID-srv"; C="$ID-cli"; A="$ID-thief"
WORK="$(mktemp -d)"
cleanup() {
    set +e
    for pidfile in "$WORK/sshd.pid" "$WORK/daemon.pid" "$WORK/sniff.pid"; do
        [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
    done
    wait 2>/dev/null
    for ns in "$S" "$C" "$A"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Three network namespaces: a server, a client, and a thief"
for ns in "$S" "$C" "$A"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$S" link add s-c type veth peer name c-s netns "$C"
ip -n "$S" link add s-a type veth peer name a-s netns "$A"
ip -n "$S" addr add 10.88.1.1/24 dev s-c; ip -n "$C" addr add 10.88.1.2/24 dev c-s
ip -n "$S" addr add fd88:1::1/64 dev s-c nodad; ip -n "$C" addr add fd88:1::2/64 dev c-s nodad
ip -n "$S" addr add 10.88.2.1/24 dev s-a; ip -n "$A" addr add 10.88.2.2/24 dev a-s
for l in "$S s-c" "$S s-a" "$C c-s" "$A a-s"; do set -- $l; ip -n "$1" link set "$2" up; done
echo "   $S, $C, $A"

say "The server: sshd on port 22, and spa-server guarding it"
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/id_demo"
cp "$WORK/id_demo.pub" "$WORK/authorized_keys"
cat > "$WORK/sshd_config" <<CONF
Port 22
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
CONF
ip netns exec "$S" /usr/sbin/sshd -D -f "$WORK/sshd_config" &
echo $! > "$WORK/sshd.pid"
run "spa-server init --dir $WORK/etc --port 23456"
"$BIN/spa-server" init --dir "$WORK/etc" --port 23456 >/dev/null
CONFIG="$WORK/etc/server.toml"
run "spa-server user provision alice --allow ssh --endpoint 10.88.1.1 --out alice.spa"
"$BIN/spa-server" --config "$CONFIG" user provision alice --allow ssh --endpoint 10.88.1.1 --out "$WORK/alice.spa" >/dev/null
ip netns exec "$S" "$BIN/spa-server" --config "$CONFIG" run 2>"$WORK/daemon.log" &
echo $! > "$WORK/daemon.pid"
for _ in $(seq 100); do grep -q "spa-server running" "$WORK/daemon.log" && break; sleep 0.1; done
grep -q "spa-server running" "$WORK/daemon.log" || { cat "$WORK/daemon.log"; exit 1; }
echo "   spa-server is running; table inet spa drops ssh and the SPA port"

# The thief's view of the wire: the server sees every knock, so we take the copy there.
ip netns exec "$S" python3 -c '
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.bind(("s-c", 0))
while True:
    p = s.recv(2048)
    ihl = (p[0] & 15) * 4
    if p[9] == 17 and int.from_bytes(p[ihl+2:ihl+4], "big") == 23456:
        open(sys.argv[1], "w").write(p[ihl+8:].hex()); break
' "$WORK/captured.hex" &
echo $! > "$WORK/sniff.pid"
sleep 0.3

SSH=(ssh -q -i "$WORK/id_demo" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=3)
ssh_client() { ip netns exec "$C" "${SSH[@]}" root@10.88.1.1 "$@"; }

say "1. Without a knock, ssh gets nowhere (the port is silently dropped)"
run "ssh root@10.88.1.1"
if ssh_client true; then echo "   UNEXPECTED: ssh got in"; exit 1; else echo "   ssh: connection timed out"; fi

say "2. The client knocks: ONE datagram, for 10 seconds"
run "spa-client --key alice.spa 10.88.1.1 ssh --for 10s"
ip netns exec "$C" "$BIN/spa-client" --key "$WORK/alice.spa" 10.88.1.1 ssh --for 10s | sed 's/^/   /'
KNOCKED=$(date +%s)

say "3. ssh logs in, from the client's address only"
run "ssh root@10.88.1.1 'echo hello from the server'"
for _ in $(seq 20); do out=$(ssh_client 'echo hello from the server' 2>/dev/null) && break; sleep 0.1; done
echo "   $out"
# A session opened now keeps running after the grant expires.
ssh_client 'sleep 13; echo "   the session opened during the grant is still alive after it expired"' &
SESSION=$!
if ip netns exec "$A" "${SSH[@]}" root@10.88.2.1 true; then echo "   UNEXPECTED: the thief got in"; exit 1; fi
echo "   the thief's ssh (from 10.88.2.2) still times out"

say "3b. The same over IPv6"
CARD6=$("$BIN/spa-server" --config "$CONFIG" card --endpoint '[fd88:1::1]')
"$BIN/spa-client" --key "$WORK/alice.spa" add-server srv6 "$CARD6" >/dev/null
run "spa-client --key alice.spa srv6 ssh --for 10s    (srv6: this server's card at fd88:1::1)"
ip netns exec "$C" "$BIN/spa-client" --key "$WORK/alice.spa" srv6 ssh --for 10s | sed 's/^/   /'
run "ssh root@fd88:1::1 'echo hello over IPv6'"
out=""
for _ in $(seq 20); do out=$(ip netns exec "$C" "${SSH[@]}" root@fd88:1::1 'echo hello over IPv6' 2>/dev/null) && break; sleep 0.1; done
[ -n "$out" ] || { echo "   UNEXPECTED: ssh over IPv6 did not get in"; exit 1; }
echo "   $out"

say "4. The audit log shows the grant"
run "spa-server audit --user alice"
"$BIN/spa-server" --config "$CONFIG" audit --user alice | sed 's/^/   /'

say "5. The grant expires after 10 s: the open session lives on, a new ssh times out"
sleep $(( KNOCKED + 11 - $(date +%s) ))
if ssh_client true; then echo "   UNEXPECTED: ssh got in after expiry"; exit 1; else echo "   new ssh: connection timed out"; fi
wait "$SESSION"

say "6. The thief replays the captured knock from its own namespace, and from the client's"
HEX=$(cat "$WORK/captured.hex")
send() { ip netns exec "$1" python3 -c "import socket,sys; socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(bytes.fromhex(sys.argv[1]),(sys.argv[2],23456))" "$HEX" "$2"; }
send "$A" 10.88.2.1
send "$C" 10.88.1.1
sleep 0.5
if ip netns exec "$A" "${SSH[@]}" root@10.88.2.1 true || ssh_client true; then echo "   UNEXPECTED: a replay opened ssh"; exit 1; fi
echo "   both replays opened nothing; the audit log names them:"
run "spa-server audit --decision rejected"
"$BIN/spa-server" --config "$CONFIG" audit --decision rejected | sed 's/^/   /'
run "spa-server audit --verify --key audit-verify.key"
"$BIN/spa-server" --config "$CONFIG" audit --verify --key "$WORK/etc/audit-verify.key" | sed 's/^/   /'

say "Done: deleting the namespaces, the daemon and the files this demo made"
