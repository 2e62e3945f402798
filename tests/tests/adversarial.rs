//! The adversarial suite (issue 9): a real `spa-server` in a network namespace lab, attacked
//! the ways PROTOCOL.md says it must withstand. Every case states what the adversary does
//! and asserts that nothing opened (a TCP probe from the adversary's address fails and the
//! grant sets hold no new element) and that the reason is recorded where it belongs: a
//! reject after authentication is its own audit record naming the user; a reject before
//! authentication is only counted, in the per-interval summaries (`count`, `sources`).
//!
//! ```text
//!   [cli] c-s 10.79.1.2 (alice)            ──── s-c 10.79.1.1 fd79:1::1 [srv] spa-server
//!             10.79.1.3 (bob) fd79:1::2                                       tcp/2222, tcp/3389 echo
//!   [atk] a-s 10.79.2.2, 10.79.2.10-16     ──── s-a 10.79.2.1 fd79:2::1 [srv]
//!             fd79:2::2; forges 10.79.1.2, 10.79.2.99, 198.18.0.0/22 (raw IPv4)
//! ```
//!
//! One lab serves every case (the daemon starts in about a second, and the cases run one
//! after another so that no case sees another's traffic); each pre-authentication case
//! sends from its own source address, so its summary counts can be told apart. Every loop
//! is bounded in count and time. Only the test's namespaces are changed; the host's
//! ruleset is compared before and after.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::OsRng;
use serde_json::Value;
use spa_e2e::daemon::{until, Daemon};
use spa_e2e::netns::{link, nmap_state, privileged, tcp_listener, Netns};
use spa_e2e::{bin, run};
use spa_keys::profile::{Profile, ServerEntry};
use spa_proto::{seal, Access, Action, ClientSecret, OpenAddr, Request, ServerPublic, KNOCK_LEN};

/// The knock port.
const PORT: u16 = 23458;
/// A protected service every user may open.
const SERVICE: u16 = 2222;
/// A protected service no user may open.
const FORBIDDEN: u16 = 3389;
/// A UDP port the foreign table drops silently (nmap's point of comparison).
const DROPPED: u16 = 9998;

const SRV: &str = "10.79.1.1";
const SRV6: &str = "fd79:1::1";
const SRV_A: &str = "10.79.2.1";
const SRV6_A: &str = "fd79:2::1";
const ALICE: &str = "10.79.1.2";
const ALICE6: &str = "fd79:1::2";
const BOB: &str = "10.79.1.3";
const ATK: &str = "10.79.2.2";
const ATK6: &str = "fd79:2::2";
/// Attacker sources, one per pre-authentication case.
const SRC_BITFLIP: &str = "10.79.2.10";
const SRC_LENGTH: &str = "10.79.2.11";
const SRC_UNKNOWN: &str = "10.79.2.12";
const SRC_OTHER_SERVER: &str = "10.79.2.13";
const SRC_REPLAY: &str = "10.79.2.14";
const SRC_CAPTURE: &str = "10.79.2.15";
const SRC_MISMATCH: &str = "10.79.2.16";

// ---------------------------------------------------------------------------------------
// Knocks, sealed in-process with a user's bundle.

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A timestamp newer than every one handed out before (a client never reuses one).
fn fresh_ts() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now.max(last + 1))
        })
        .unwrap();
    now.max(prev + 1)
}

fn request(action: Action, open: OpenAddr, dest: &str, ports: &[u16], secs: u32) -> Request {
    let access: Vec<Access> = ports.iter().map(|&p| Access::tcp(p).unwrap()).collect();
    Request::new(action, open, dest.parse().unwrap(), &access, secs).unwrap()
}

fn open_for(addr: &str, dest: &str, secs: u32) -> Request {
    request(
        Action::Open,
        OpenAddr::Ip(addr.parse().unwrap()),
        dest,
        &[SERVICE],
        secs,
    )
}

/// A user's bundle, as `spa-server user provision` wrote it.
struct Key {
    profile: Profile,
}

impl Key {
    fn load(path: &Path) -> Self {
        Self {
            profile: Profile::load(path).unwrap(),
        }
    }

    fn server(&self) -> &ServerEntry {
        self.profile.servers.values().next().unwrap()
    }

    fn secret(&self) -> &ClientSecret {
        self.server().secret(&self.profile)
    }

    /// `request`, sealed at `ts_ms` for the bundle's server.
    fn seal(&self, request: &Request, ts_ms: u64) -> Vec<u8> {
        self.seal_to(&self.server().card.key, request, ts_ms)
    }

    /// `request`, sealed at `ts_ms` for any server key.
    fn seal_to(&self, server: &ServerPublic, request: &Request, ts_ms: u64) -> Vec<u8> {
        seal_with(self.secret(), server, request, ts_ms)
    }

    /// A fresh knock opening tcp/SERVICE for `addr` (aimed at the server's 10.79.1.1).
    fn knock(&self, addr: &str, secs: u32) -> Vec<u8> {
        let dest = if addr.contains(':') { SRV6 } else { SRV };
        self.seal(&open_for(addr, dest, secs), fresh_ts())
    }

    /// A fresh knock closing tcp/SERVICE for `addr`.
    fn close(&self, addr: &str) -> Vec<u8> {
        let req = request(
            Action::Close,
            OpenAddr::Ip(addr.parse().unwrap()),
            SRV,
            &[SERVICE],
            0,
        );
        self.seal(&req, fresh_ts())
    }
}

fn seal_with(client: &ClientSecret, server: &ServerPublic, request: &Request, ts: u64) -> Vec<u8> {
    let k = seal(client, server, None, request, ts, &mut OsRng)
        .unwrap()
        .to_vec();
    assert_eq!(k.len(), KNOCK_LEN);
    k
}

// ---------------------------------------------------------------------------------------
// Traffic, from python3 inside a namespace (one process per batch).

/// Sends length-prefixed datagrams from a file, optionally bound to a source address and
/// port, paced (a millisecond's pause every 32) so no capture buffer overflows.
const SENDER: &str = r#"
import socket,struct,sys,time
src,sport,dst,dport,path=sys.argv[1:6]
v6=':' in dst
s=socket.socket(socket.AF_INET6 if v6 else socket.AF_INET,socket.SOCK_DGRAM)
if src or sport!='0':
    s.bind((src or ('::' if v6 else '0.0.0.0'),int(sport)))
data=open(path,'rb').read()
i=n=0
while i<len(data):
    l=struct.unpack('>H',data[i:i+2])[0]
    s.sendto(data[i+2:i+2+l],(dst,int(dport)))
    i+=2+l
    n+=1
    if n%32==0:
        time.sleep(0.001)
print(n)
"#;

/// One IPv4/UDP datagram with a forged source address (raw socket, IP_HDRINCL).
const SPOOFER: &str = r#"
import socket,struct,sys
src,dst,sport,dport,hexdata=sys.argv[1:6]
p=bytes.fromhex(hexdata)
u=struct.pack('>HHHH',int(sport),int(dport),8+len(p),0)+p
h=struct.pack('>BBHHHBBH4s4s',0x45,0,20+len(u),0,0,64,17,0,socket.inet_aton(src),socket.inet_aton(dst))
s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)
s.sendto(h+u,(dst,0))
"#;

/// Junk knocks (a valid header, 240 random bytes) from forged sources 198.18.0.0/22, at
/// most `count`, paced to `rate` per second, for at most `secs`. Prints how many it sent.
const FLOOD: &str = r#"
import os,socket,struct,sys,time
dst=sys.argv[1]
dport,count,nsrc=int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[6])
rate,secs=float(sys.argv[4]),float(sys.argv[5])
s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)
d=socket.inet_aton(dst)
hdr=[]
for i in range(nsrc):
    ip=struct.pack('>BBHHHBBH4s4s',0x45,0,20+8+242,0,0,64,17,0,bytes([198,18,(i>>8)&3,i&255]),d)
    hdr.append(ip+struct.pack('>HHHH',40000+i,dport,8+242,0))
blk=os.urandom(1<<20)
start=time.time()
n=0
while n<count and time.time()-start<secs:
    for _ in range(100):
        o=(n*241)%((1<<20)-240)
        s.sendto(hdr[n%nsrc]+b'\x01\x01'+blk[o:o+240],(dst,0))
        n+=1
        if n>=count:
            break
    ahead=start+n/rate-time.time()
    if ahead>0:
        time.sleep(ahead)
print(n)
"#;

/// The legitimate client during the flood: knocks are open/close pairs; for each open it
/// waits (at most 2 s) until tcp/port connects, then closes and waits until it no longer
/// connects. Prints "opened closed slowest_open_s".
const KNOCKER: &str = r#"
import socket,struct,sys,time
dst,dport,host,port,path=sys.argv[1:6]
data=open(path,'rb').read()
ks=[]
i=0
while i<len(data):
    l=struct.unpack('>H',data[i:i+2])[0]
    ks.append(data[i+2:i+2+l])
    i+=2+l
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)
def conn(t):
    c=socket.socket()
    c.settimeout(t)
    try:
        c.connect((host,int(port)))
        return True
    except Exception:
        return False
    finally:
        c.close()
opened=closed=0
slowest=0.0
for j in range(0,len(ks),2):
    t0=time.time()
    u.sendto(ks[j],(dst,int(dport)))
    while time.time()-t0<2:
        if conn(0.2):
            opened+=1
            slowest=max(slowest,time.time()-t0)
            break
    u.sendto(ks[j+1],(dst,int(dport)))
    t1=time.time()
    while time.time()-t1<2:
        if not conn(0.2):
            closed+=1
            break
        time.sleep(0.02)
print(opened,closed,round(slowest,3))
"#;

/// A TCP connection attempt, optionally from a chosen source address.
const PROBE: &str = r#"
import socket,sys
src,host,port,t=sys.argv[1:5]
s=socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET,socket.SOCK_STREAM)
s.settimeout(float(t))
if src:
    s.bind((src,0))
try:
    s.connect((host,int(port)))
except Exception:
    sys.exit(1)
"#;

/// Every IPv4/IPv6 packet the namespace sends (PACKET_OUTGOING) for `secs` seconds, one
/// line each: "icmp TYPE CODE QUOTED_DPORT", "udp SPORT DPORT", "tcp SPORT DPORT",
/// "icmp6 TYPE CODE", "udp6 SPORT DPORT", "ip PROTO", "ip6 NEXT" (after a hop-by-hop
/// header, as MLD reports carry).
const CAPTURE: &str = r#"
import socket,sys,time
s=socket.socket(socket.AF_PACKET,socket.SOCK_DGRAM,socket.htons(3))
s.settimeout(0.1)
print('ready',flush=True)
end=time.time()+float(sys.argv[1])
be=lambda b:int.from_bytes(b,'big')
while time.time()<end:
    try:
        d,a=s.recvfrom(65535)
    except socket.timeout:
        continue
    if a[2]!=4:
        continue
    if a[1]==0x0800 and len(d)>=20:
        t=d[(d[0]&15)*4:]
        if d[9]==1 and len(t)>=8:
            q=t[8:]
            qh=(q[0]&15)*4 if q else 0
            print('icmp',t[0],t[1],be(q[qh+2:qh+4]) if len(q)>=qh+4 else -1,flush=True)
        elif d[9] in (6,17) and len(t)>=4:
            print('udp' if d[9]==17 else 'tcp',be(t[0:2]),be(t[2:4]),flush=True)
        else:
            print('ip',d[9],flush=True)
    elif a[1]==0x86dd and len(d)>=40:
        nh,t=d[6],d[40:]
        if nh==0 and len(t)>=2:
            nh,t=t[0],t[(t[1]+1)*8:]
        if nh==58 and len(t)>=2:
            print('icmp6',t[0],t[1],flush=True)
        elif nh in (6,17) and len(t)>=4:
            print('udp6' if nh==17 else 'tcp6',be(t[0:2]),be(t[2:4]),flush=True)
        else:
            print('ip6',nh,flush=True)
print('done',flush=True)
"#;

fn py(ns: &Netns, code: &str, args: &[&str]) -> String {
    let mut all = vec!["python3", "-c", code];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&ns.run(&all).stdout)
        .trim()
        .to_owned()
}

fn datagram_file(datagrams: &[Vec<u8>]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for d in datagrams {
        f.write_all(&(d.len() as u16).to_be_bytes()).unwrap();
        f.write_all(d).unwrap();
    }
    f.flush().unwrap();
    f
}

/// Sends `datagrams` to `dst`:PORT from `ns`, from `src` (or the routed address) and
/// `sport` (or any port).
fn send_from(ns: &Netns, src: Option<&str>, sport: u16, dst: &str, datagrams: &[Vec<u8>]) {
    let f = datagram_file(datagrams);
    let sent = py(
        ns,
        SENDER,
        &[
            src.unwrap_or(""),
            &sport.to_string(),
            dst,
            &PORT.to_string(),
            f.path().to_str().unwrap(),
        ],
    );
    assert_eq!(sent, datagrams.len().to_string());
}

fn send(ns: &Netns, src: Option<&str>, dst: &str, datagram: &[u8]) {
    send_from(ns, src, 0, dst, &[datagram.to_vec()]);
}

/// Sends `datagram` to `dst`:PORT from `ns` with the forged IPv4 source `src`.
fn send_spoofed(ns: &Netns, src: &str, dst: &str, datagram: &[u8]) {
    let hex: String = datagram.iter().map(|b| format!("{b:02x}")).collect();
    py(ns, SPOOFER, &[src, dst, "40123", &PORT.to_string(), &hex]);
}

/// Whether a TCP connection from `ns` (from `src`, if given) to `host`:`port` completes
/// within half a second. The protected ports drop, so a refusal costs the full timeout.
fn connects(ns: &Netns, src: Option<&str>, host: &str, port: u16) -> bool {
    ns.try_run(&[
        "python3",
        "-c",
        PROBE,
        src.unwrap_or(""),
        host,
        &port.to_string(),
        "0.5",
    ])
}

// ---------------------------------------------------------------------------------------
// The lab.

struct Lab {
    daemon: Option<Daemon>,
    listeners: Vec<Child>,
    s: Netns,
    c: Netns,
    a: Netns,
    dir: tempfile::TempDir,
    etc: PathBuf,
    config: String,
    alice: Key,
    bob: Key,
    carol: Key,
    /// Alice's client key, but the card of another server (`spa-server init` elsewhere).
    other_server: ServerPublic,
    /// Every tables' text but ours, before the daemon first started.
    foreign_before: Vec<(String, String)>,
    ruleset_before: String,
    /// Pre-authentication counts each case expects: (reason, source, count).
    expected: Vec<(&'static str, &'static str, u64)>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.daemon.take());
        for l in &mut self.listeners {
            let _ = l.kill();
            let _ = l.wait();
        }
    }
}

fn init_server(dir: &Path, home: &Path) -> String {
    let r = run(
        "spa-server",
        &[
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--port",
            &PORT.to_string(),
        ],
        home,
    );
    assert!(r.ok, "{r:?}");
    dir.join("server.toml").display().to_string()
}

fn provision(config: &str, home: &Path, name: &str, endpoint: &str, out: &Path) -> Key {
    let r = run(
        "spa-server",
        &[
            "--config",
            config,
            "user",
            "provision",
            name,
            "--allow",
            &format!("tcp/{SERVICE}"),
            "--endpoint",
            endpoint,
            "--out",
            out.to_str().unwrap(),
        ],
        home,
    );
    assert!(r.ok, "{r:?}");
    Key::load(out)
}

/// Replaces `from` (which must be present) in the config text.
fn edit(text: String, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the config has no {from:?}");
    text.replace(from, to)
}

/// Our table's name; every other table is foreign.
fn foreign_tables(ns: &Netns) -> Vec<(String, String)> {
    let list = String::from_utf8_lossy(&ns.run(&["nft", "list", "tables"]).stdout).into_owned();
    list.lines()
        .filter_map(|l| l.strip_prefix("table "))
        .filter(|t| *t != "inet spa")
        .map(|t| {
            let (family, name) = t.split_once(' ').unwrap();
            let text = ns.run(&["nft", "list", "table", family, name]).stdout;
            (t.to_owned(), String::from_utf8_lossy(&text).into_owned())
        })
        .collect()
}

fn host_ruleset() -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Lab {
    fn new() -> Self {
        let (s, c, a) = (Netns::new("srv"), Netns::new("cli"), Netns::new("atk"));
        link(
            &s,
            "s-c",
            &["10.79.1.1/24", "fd79:1::1/64"],
            &c,
            "c-s",
            &["10.79.1.2/24", "10.79.1.3/24", "fd79:1::2/64"],
        );
        link(
            &s,
            "s-a",
            &["10.79.2.1/24", "fd79:2::1/64"],
            &a,
            "a-s",
            &["10.79.2.2/24", "fd79:2::2/64"],
        );
        for src in [
            SRC_BITFLIP,
            SRC_LENGTH,
            SRC_UNKNOWN,
            SRC_OTHER_SERVER,
            SRC_REPLAY,
            SRC_CAPTURE,
            SRC_MISMATCH,
        ] {
            a.run(&["ip", "addr", "add", &format!("{src}/24"), "dev", "a-s"]);
        }

        // Foreign tables (someone else's firewall) that must stay byte-identical. No
        // counter sees traffic, and no set has timeouts, so nothing in them may change.
        let dropped = DROPPED.to_string();
        for cmd in [
            vec!["add", "table", "inet", "other"],
            vec![
                "add",
                "chain",
                "inet",
                "other",
                "in",
                "{ type filter hook input priority 10; policy accept; }",
            ],
            vec![
                "add", "rule", "inet", "other", "in", "tcp", "dport", "9999", "counter", "accept",
            ],
            vec![
                "add", "rule", "inet", "other", "in", "udp", "dport", &dropped, "drop",
            ],
            vec!["add", "table", "ip", "legacy"],
            vec![
                "add",
                "set",
                "ip",
                "legacy",
                "blocked",
                "{ type ipv4_addr; elements = { 192.0.2.7, 198.51.100.9 }; }",
            ],
            vec![
                "add",
                "chain",
                "ip",
                "legacy",
                "pre",
                "{ type filter hook prerouting priority -150; policy accept; }",
            ],
            vec![
                "add", "rule", "ip", "legacy", "pre", "ip", "saddr", "@blocked", "drop",
            ],
            vec!["add", "table", "ip6", "six"],
            vec![
                "add",
                "chain",
                "ip6",
                "six",
                "out",
                "{ type filter hook output priority 0; policy accept; }",
            ],
        ] {
            let mut args = vec!["nft"];
            args.extend(cmd);
            s.run(&args);
        }
        let ruleset_before = s.ruleset();
        let foreign_before = foreign_tables(&s);
        assert_eq!(foreign_before.len(), 3, "{foreign_before:#?}");

        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_path_buf();
        let etc = dir.path().join("etc");
        let config = init_server(&etc, &home);
        let text = std::fs::read_to_string(&config).unwrap();
        let text = edit(
            text,
            "protect = [\"ssh\"]",
            &format!("protect = [\"tcp/{SERVICE}\", \"tcp/{FORBIDDEN}\"]"),
        );
        // Summaries once a second, so pre-authentication counts show up quickly.
        let text = edit(
            text,
            "aggregate_interval = \"60s\"",
            "aggregate_interval = \"1s\"",
        );
        // The per-source bucket would throttle the legitimate client's 40 knocks during
        // the flood; raise it (junk never reaches it: it fails mac1 first).
        let text = edit(text, "per_source_burst = 20", "per_source_burst = 1000");
        let text = edit(
            text,
            "per_source_per_sec = 5.0",
            "per_source_per_sec = 1000.0",
        );
        std::fs::write(&config, text).unwrap();
        let r = run("spa-server", &["--config", &config, "check"], &home);
        assert!(r.ok, "{r:?}");
        let alice = provision(&config, &home, "alice", SRV, &home.join("alice.bundle"));
        let bob = provision(&config, &home, "bob", SRV, &home.join("bob.bundle"));
        let carol = provision(&config, &home, "carol", SRV, &home.join("carol.bundle"));

        // Another server, with its own key.
        let other_config = init_server(&home.join("other"), &home);
        let other = provision(
            &other_config,
            &home,
            "alice",
            SRV,
            &home.join("other.bundle"),
        );
        let other_server = other.server().card.key;
        assert_ne!(other_server, alice.server().card.key);

        // Both protected services listen, so a probe fails only if the firewall drops it.
        let listeners = vec![tcp_listener(&s, SERVICE), tcp_listener(&s, FORBIDDEN)];
        until("listener", Duration::from_secs(5), || {
            s.try_run(&[
                "python3",
                "-c",
                &format!(
                    "import socket\nfor p in ({SERVICE},{FORBIDDEN}): socket.create_connection(('127.0.0.1',p),timeout=1)"
                ),
            ])
        });
        let daemon = Daemon::start(&s, &config);
        Self {
            daemon: Some(daemon),
            listeners,
            s,
            c,
            a,
            dir,
            etc,
            config,
            alice,
            bob,
            carol,
            other_server,
            foreign_before,
            ruleset_before,
            expected: Vec::new(),
        }
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon running")
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["--config", self.config.as_str()];
        all.extend_from_slice(args);
        let r = run("spa-server", &all, self.home());
        assert!(r.ok, "{r:?}");
        r.stdout
    }

    fn records(&self) -> Vec<Value> {
        self.cli(&["audit", "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The sequence number of the last record so far.
    fn seq(&self) -> u64 {
        self.records()
            .last()
            .and_then(|r| r["seq"].as_u64())
            .expect("a started record at least")
    }

    fn audit_bytes(&self) -> u64 {
        std::fs::read_dir(self.etc.join("audit"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    /// Every element of both grant sets (address . protocol . port).
    fn grants(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for set in ["grants4", "grants6"] {
            let o = self
                .s
                .run(&["nft", "-j", "list", "set", "inet", "spa", set]);
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            for item in v["nftables"].as_array().unwrap() {
                for e in item["set"]["elem"].as_array().into_iter().flatten() {
                    let val = e.get("elem").map_or(e, |x| &x["val"]);
                    out.insert(val.to_string());
                }
            }
        }
        out
    }

    fn granted(&self, addr: &str) -> bool {
        self.grants()
            .iter()
            .any(|g| g.contains(&format!("\"{addr}\"")))
    }

    /// Waits (at most 5 s) for exactly one record after `since` that matches, and returns it.
    fn one_record(&self, since: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let recent: Vec<Value> = self
                .records()
                .into_iter()
                .filter(|r| r["seq"].as_u64() > Some(since))
                .collect();
            let mut found: Vec<&Value> = recent.iter().filter(|r| f(r)).collect();
            if !found.is_empty() {
                assert_eq!(found.len(), 1, "{what}: {found:#?}");
                return found.pop().unwrap().clone();
            }
            assert!(
                Instant::now() < deadline,
                "no record: {what}; records since {since}: {recent:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An authenticated reject: its own record, naming the user and the source.
    fn expect_rejected(&self, since: u64, reason: &str, user: &str, src: &str) -> Value {
        let r = self.one_record(since, &format!("{reason} for {user} from {src}"), |r| {
            r["decision"] == "rejected"
                && r["reason"] == reason
                && r["user"] == user
                && r["src"] == src
        });
        assert!(r["key"].is_string() && r["count"].is_null(), "{r:#}");
        r
    }

    /// Rejects before authentication from `src` with `reason`, summed over every summary.
    fn preauth(&self, records: &[Value], reason: &str, src: &str) -> u64 {
        records
            .iter()
            .filter(|r| r["decision"] == "rejected" && r["reason"] == reason)
            .map(|r| {
                assert!(
                    r["user"].is_null() && r["key"].is_null() && r["count"].is_u64(),
                    "a pre-authentication reject must be an anonymous summary: {r:#}"
                );
                r["sources"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| s["src"] == src)
                    .map(|s| s["count"].as_u64().unwrap())
                    .sum::<u64>()
            })
            .sum()
    }

    /// Waits (at most 10 s) until the summaries count `n` rejects for `reason` from `src`.
    fn expect_preauth(&mut self, reason: &'static str, src: &'static str, n: u64) {
        let mut got = 0;
        until(
            &format!("summaries never counted {n} {reason} from {src}"),
            Duration::from_secs(10),
            || {
                got = self.preauth(&self.records(), reason, src);
                assert!(got <= n, "{got} {reason} from {src}, expected {n}");
                got == n
            },
        );
        self.expected.push((reason, src, n));
    }

    /// Before authentication nothing may name a user: no reject record since `since`
    /// has a user or a key.
    fn assert_anonymous(&self, since: u64) {
        let named: Vec<Value> = self
            .records()
            .into_iter()
            .filter(|r| {
                r["seq"].as_u64() > Some(since)
                    && r["decision"] == "rejected"
                    && !(r["user"].is_null() && r["key"].is_null())
            })
            .collect();
        assert!(named.is_empty(), "{named:#?}");
    }

    /// Nothing opened: no grant after `since` in the log, no new element in the grant
    /// sets, and the protected service does not answer the given probes.
    fn assert_nothing_opened(
        &self,
        since: u64,
        before: &BTreeSet<String>,
        probes: &[(&Netns, Option<&str>, &str)],
    ) {
        let opened: Vec<Value> = self
            .records()
            .into_iter()
            .filter(|r| {
                r["seq"].as_u64() > Some(since)
                    && ["granted", "refreshed", "failed"].contains(&r["decision"].as_str().unwrap())
            })
            .collect();
        assert!(opened.is_empty(), "{opened:#?}");
        let after = self.grants();
        assert!(
            after.is_subset(before),
            "new grants: {before:?} -> {after:?}"
        );
        for (ns, src, host) in probes {
            assert!(
                !connects(ns, *src, host, SERVICE),
                "tcp/{SERVICE} answered {src:?} in {}",
                ns.name
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The cases.

/// nmap from the attacker: the SPA port looks exactly like a port some firewall drops
/// silently (`open|filtered`: no ICMP gives it away), while an unused port answers
/// (`closed`); the protected services are `filtered` for a SYN scan.
fn nmap_sees_nothing(lab: &Lab) {
    assert_eq!(nmap_state(&lab.a, "-sU", SRV_A, DROPPED), "open|filtered");
    assert_eq!(nmap_state(&lab.a, "-sU", SRV_A, PORT), "open|filtered");
    assert_eq!(nmap_state(&lab.a, "-sU", SRV_A, PORT + 1), "closed");
    assert_eq!(nmap_state(&lab.a, "-sS", SRV_A, SERVICE), "filtered");
    assert_eq!(nmap_state(&lab.a, "-sS", SRV_A, FORBIDDEN), "filtered");
}

/// A capture of everything the server's namespace sends while it receives a valid knock
/// (IPv4 and IPv6), its replay, junk, a truncated knock and a stale one, each from a fixed
/// UDP source port: nothing is ever sent back, neither UDP to the knocker's port nor ICMP.
/// A datagram to an unused port, sent in the same window, must draw an ICMP port
/// unreachable (the capture would see a reply if there were one).
fn no_reply_on_the_wire(lab: &mut Lab) {
    const KNOCKER_PORT: u16 = 40001;
    const CONTROL_PORT: u16 = 40002;
    let mut cap = lab
        .s
        .cmd("python3")
        .args(["-c", CAPTURE, "4"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(cap.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let since = lab.seq();
    let valid = lab.alice.knock(ALICE, 1);
    let valid6 = lab.alice.knock(ALICE6, 1);
    let stale = lab
        .alice
        .seal(&open_for(ALICE, SRV, 1), now_ms() - 3_600_000);
    let junk = vec![1u8; KNOCK_LEN];
    send_from(
        &lab.c,
        None,
        KNOCKER_PORT,
        SRV,
        std::slice::from_ref(&valid),
    );
    send_from(&lab.c, None, KNOCKER_PORT, SRV6, &[valid6]);
    send_from(&lab.c, None, KNOCKER_PORT, SRV, &[valid, stale]);
    send_from(
        &lab.a,
        Some(SRC_CAPTURE),
        KNOCKER_PORT,
        SRV_A,
        &[junk, vec![1u8; 100]],
    );
    // The control: a port nothing listens on and nobody drops.
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('',{CONTROL_PORT}))\ns.sendto(b'x',('{SRV_A}',{}))",
        PORT + 1
    );
    lab.a.run(&["python3", "-c", &code]);

    let seen: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(cap.wait().unwrap().success());
    assert_eq!(seen.last().map(String::as_str), Some("done"), "{seen:?}");
    eprintln!("capture: the server sent {seen:?}");
    let control = format!("icmp 3 3 {}", PORT + 1);
    assert!(
        seen.contains(&control),
        "the control drew no ICMP port unreachable, so the capture proves nothing: {seen:?}"
    );
    let replies: Vec<&String> = seen
        .iter()
        .filter(|l| **l != control && *l != "done")
        // Neighbour discovery and MLD (ICMPv6 130..=143) are the link's, not replies.
        .filter(|l| {
            !l.strip_prefix("icmp6 ")
                .and_then(|t| t.split(' ').next()?.parse::<u8>().ok())
                .is_some_and(|t| (130..=143).contains(&t))
        })
        .collect();
    assert!(
        replies.is_empty(),
        "the server sent something back: {replies:?}"
    );
    // The knocks were handled (not lost): both grants, the replay, the stale one.
    lab.one_record(since, "granted over IPv4", |r| {
        r["decision"] == "granted" && r["src"] == ALICE
    });
    lab.one_record(since, "granted over IPv6", |r| {
        r["decision"] == "granted" && r["src"] == ALICE6
    });
    lab.expect_rejected(since, "replay", "alice", ALICE);
    lab.expect_rejected(since, "stale", "alice", ALICE);
    lab.expect_preauth("bad_mac1", SRC_CAPTURE, 1);
    lab.expect_preauth("bad_length", SRC_CAPTURE, 1);
    until("1 s grants expire", Duration::from_secs(5), || {
        lab.grants().is_empty()
    });
}

/// Every single-bit flip of a valid knock (242 × 8 datagrams), from one attacker source.
/// Flips in the header are `bad_header` (16: no single flip turns type 1 into type 2);
/// every other flip breaks mac1 (`bad_mac1`, 1920). Before authentication: only counted.
fn bit_flips(lab: &mut Lab) {
    let since = lab.seq();
    let before = lab.grants();
    let valid = lab.alice.knock(SRC_BITFLIP, 60);
    let mut flipped = Vec::with_capacity(KNOCK_LEN * 8);
    for byte in 0..KNOCK_LEN {
        for bit in 0..8 {
            let mut k = valid.clone();
            k[byte] ^= 1 << bit;
            flipped.push(k);
        }
    }
    send_from(&lab.a, Some(SRC_BITFLIP), 0, SRV_A, &flipped);
    lab.expect_preauth("bad_header", SRC_BITFLIP, 16);
    lab.expect_preauth("bad_mac1", SRC_BITFLIP, 1920);
    lab.assert_anonymous(since);
    lab.assert_nothing_opened(since, &before, &[(&lab.a, Some(SRC_BITFLIP), SRV_A)]);
    // The unflipped knock would have opened: the flips, not the knock, were refused.
    send(&lab.a, Some(SRC_BITFLIP), SRV_A, &valid);
    lab.one_record(since, "the unflipped knock", |r| {
        r["decision"] == "granted" && r["src"] == SRC_BITFLIP
    });
    until(
        "the unflipped knock's grant",
        Duration::from_secs(3),
        || connects(&lab.a, Some(SRC_BITFLIP), SRV_A, SERVICE),
    );
    send(
        &lab.a,
        Some(SRC_BITFLIP),
        SRV_A,
        &lab.alice.close(SRC_BITFLIP),
    );
    until("close", Duration::from_secs(3), || {
        !lab.granted(SRC_BITFLIP)
    });
}

/// A valid knock cut short by one byte, by half, to nothing, and extended by one byte
/// and by a whole second knock: `bad_length`, before authentication.
fn truncation_and_extension(lab: &mut Lab) {
    let since = lab.seq();
    let before = lab.grants();
    let valid = lab.alice.knock(SRC_LENGTH, 60);
    let mut doubled = valid.clone();
    doubled.extend_from_slice(&valid);
    let mut longer = valid.clone();
    longer.push(0);
    let variants = vec![
        valid[..KNOCK_LEN - 1].to_vec(),
        valid[..KNOCK_LEN / 2].to_vec(),
        Vec::new(),
        longer,
        doubled,
    ];
    send_from(&lab.a, Some(SRC_LENGTH), 0, SRV_A, &variants);
    lab.expect_preauth("bad_length", SRC_LENGTH, 5);
    lab.assert_anonymous(since);
    lab.assert_nothing_opened(since, &before, &[(&lab.a, Some(SRC_LENGTH), SRV_A)]);
}

/// A knock from a client key the server never provisioned (it knows the server's card,
/// so mac1 passes): `unknown_key`, before authentication (anyone can make a key decrypt).
fn unknown_key(lab: &mut Lab) {
    let since = lab.seq();
    let before = lab.grants();
    let stranger = ClientSecret::generate(&mut OsRng);
    let k = seal_with(
        &stranger,
        &lab.alice.server().card.key,
        &open_for(SRC_UNKNOWN, SRV_A, 60),
        fresh_ts(),
    );
    send(&lab.a, Some(SRC_UNKNOWN), SRV_A, &k);
    lab.expect_preauth("unknown_key", SRC_UNKNOWN, 1);
    lab.assert_anonymous(since);
    lab.assert_nothing_opened(since, &before, &[(&lab.a, Some(SRC_UNKNOWN), SRV_A)]);
}

/// Alice's own key, but the knock is sealed for another server's key: `bad_mac1` (mac1
/// is keyed with the server's public key), before any Diffie-Hellman.
fn sealed_for_another_server(lab: &mut Lab) {
    let since = lab.seq();
    let before = lab.grants();
    let k = lab.alice.seal_to(
        &lab.other_server,
        &open_for(SRC_OTHER_SERVER, SRV_A, 60),
        fresh_ts(),
    );
    send(&lab.a, Some(SRC_OTHER_SERVER), SRV_A, &k);
    lab.expect_preauth("bad_mac1", SRC_OTHER_SERVER, 1);
    lab.assert_anonymous(since);
    lab.assert_nothing_opened(since, &before, &[(&lab.a, Some(SRC_OTHER_SERVER), SRV_A)]);
}

/// Alice's knocks with her clock an hour behind and an hour ahead (window 120 s): `stale`
/// and `future`, after authentication, each record naming the offset (`skew_ms`).
fn stale_and_future(lab: &Lab) {
    for (reason, shift) in [("stale", -3_600_000i64), ("future", 3_600_000)] {
        let since = lab.seq();
        let before = lab.grants();
        let ts = now_ms().checked_add_signed(shift).unwrap();
        send(
            &lab.c,
            None,
            SRV,
            &lab.alice.seal(&open_for(ALICE, SRV, 60), ts),
        );
        let r = lab.expect_rejected(since, reason, "alice", ALICE);
        let skew = r["skew_ms"].as_i64().expect("skew_ms");
        assert!(
            (skew - shift).abs() < 10_000,
            "{reason}: skew_ms {skew}, clock shifted by {shift}"
        );
        lab.assert_nothing_opened(
            since,
            &before,
            &[(&lab.c, None, SRV), (&lab.a, Some(ATK), SRV_A)],
        );
    }
}

/// Alice asks for tcp/3389 along with the tcp/2222 she may open: `access_denied`, and
/// neither opens (the knock is all or nothing).
fn access_not_allowed(lab: &Lab) {
    let since = lab.seq();
    let before = lab.grants();
    let req = request(
        Action::Open,
        OpenAddr::Ip(ALICE.parse().unwrap()),
        SRV,
        &[SERVICE, FORBIDDEN],
        60,
    );
    send(&lab.c, None, SRV, &lab.alice.seal(&req, fresh_ts()));
    let r = lab.expect_rejected(since, "access_denied", "alice", ALICE);
    assert_eq!(
        r["requested"],
        serde_json::json!([format!("tcp/{SERVICE}"), format!("tcp/{FORBIDDEN}")])
    );
    lab.assert_nothing_opened(since, &before, &[(&lab.c, None, SRV)]);
    assert!(!connects(&lab.c, None, SRV, FORBIDDEN));
}

/// Bob's knock (it names bob's address, 10.79.1.3) sent from alice's address, as if alice
/// had captured it: `address_mismatch`, recorded against bob (the key's owner), from
/// alice's address. The knock says whom to open for, so alice cannot borrow it; and since
/// a rejected knock burns nothing, bob's own copy still opens for bob, and only for him.
fn another_users_knock(lab: &Lab) {
    let since = lab.seq();
    let before = lab.grants();
    let bobs = lab.bob.knock(BOB, 1);
    send(&lab.c, Some(ALICE), SRV, &bobs);
    lab.expect_rejected(since, "address_mismatch", "bob", ALICE);
    lab.assert_nothing_opened(since, &before, &[(&lab.c, Some(ALICE), SRV)]);
    send(&lab.c, Some(BOB), SRV, &bobs);
    let g = lab.one_record(since, "bob's own knock", |r| r["decision"] == "granted");
    assert_eq!(g["user"], "bob");
    assert_eq!(g["addr"], BOB);
    until("bob's grant", Duration::from_secs(3), || lab.granted(BOB));
    assert!(!lab.granted(ALICE));
    assert!(!connects(&lab.c, Some(ALICE), SRV, SERVICE));
    until("bob's 1 s grant expires", Duration::from_secs(5), || {
        !lab.granted(BOB)
    });
}

/// Alice (provisioned without `--nat`) asks for NAT mode, "open whatever address this
/// arrives from": `nat_not_allowed`.
fn nat_without_permission(lab: &Lab) {
    let since = lab.seq();
    let before = lab.grants();
    let req = request(Action::Open, OpenAddr::FromPacket, SRV, &[SERVICE], 60);
    send(&lab.c, None, SRV, &lab.alice.seal(&req, fresh_ts()));
    lab.expect_rejected(since, "nat_not_allowed", "alice", ALICE);
    lab.assert_nothing_opened(since, &before, &[(&lab.c, None, SRV)]);
}

/// A knock aimed at another host (its destination names 192.0.2.1), as if captured on
/// its way there and redirected here: `wrong_destination`.
fn aimed_elsewhere(lab: &Lab) {
    let since = lab.seq();
    let before = lab.grants();
    let k = lab
        .alice
        .seal(&open_for(ALICE, "192.0.2.1", 60), fresh_ts());
    send(&lab.c, None, SRV, &k);
    lab.expect_rejected(since, "wrong_destination", "alice", ALICE);
    lab.assert_nothing_opened(since, &before, &[(&lab.c, None, SRV)]);
}

/// Carol's key is revoked while the server runs; her next knock: `revoked`.
fn revoked_while_running(lab: &Lab) {
    let reloads = lab.daemon().count_log("users store reloaded");
    lab.cli(&["user", "revoke", "carol"]);
    lab.daemon()
        .wait_log_n("users store reloaded", reloads + 1, Duration::from_secs(5));
    let since = lab.seq();
    let before = lab.grants();
    send(&lab.c, None, SRV, &lab.carol.knock(ALICE, 60));
    lab.expect_rejected(since, "revoked", "carol", ALICE);
    lab.assert_nothing_opened(since, &before, &[(&lab.c, None, SRV)]);
}

/// A valid knock's bytes with a forged IPv4 source, from the attacker's namespace:
/// - forged as some other address: `address_mismatch` (the knock names alice's address);
/// - forged as the address the knock names (an on-path attacker who suppressed the
///   original): PROTOCOL.md §9 accepts it, because it opens only the named address,
///   alice's; the attacker's own addresses stay closed. So it must open for 10.79.1.2
///   and nothing else, and the original, arriving later, is a `replay`.
fn spoofed_source(lab: &Lab) {
    let since = lab.seq();
    let before = lab.grants();
    let k = lab.alice.knock(ALICE, 1);
    send_spoofed(&lab.a, "10.79.2.99", SRV_A, &k);
    lab.expect_rejected(since, "address_mismatch", "alice", "10.79.2.99");
    lab.assert_nothing_opened(since, &before, &[(&lab.a, Some(ATK), SRV_A)]);

    let since = lab.seq();
    send_spoofed(&lab.a, ALICE, SRV_A, &k);
    let g = lab.one_record(since, "the forged-source knock", |r| {
        r["decision"] == "granted"
    });
    assert_eq!(g["user"], "alice");
    assert_eq!(g["addr"], ALICE);
    until("alice's grant", Duration::from_secs(3), || {
        lab.granted(ALICE)
    });
    let new: Vec<String> = lab.grants().difference(&before).cloned().collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains(&format!("\"{ALICE}\"")), "{new:?}");
    assert!(!connects(&lab.a, Some(ATK), SRV_A, SERVICE));
    assert!(!connects(&lab.a, Some(SRC_MISMATCH), SRV_A, SERVICE));
    send(&lab.c, None, SRV, &k);
    lab.expect_rejected(since, "replay", "alice", ALICE);
    until("the 1 s grant expires", Duration::from_secs(5), || {
        !lab.granted(ALICE)
    });
}

/// A captured knock, resent after it was used: from the same source, from another
/// source (IPv4 and IPv6), with a forged source equal to the one it names, and after a
/// clean restart of the server: `replay` every time (step 13 comes before the address
/// check), nothing opens.
fn replays(lab: &mut Lab) -> Vec<u8> {
    let captured = lab.alice.knock(ALICE, 1);
    let since = lab.seq();
    send(&lab.c, None, SRV, &captured);
    lab.one_record(since, "the original", |r| r["decision"] == "granted");
    until("the 1 s grant expires", Duration::from_secs(5), || {
        lab.grants().is_empty()
    });

    let since = lab.seq();
    let before = lab.grants();
    send(&lab.c, None, SRV, &captured);
    lab.expect_rejected(since, "replay", "alice", ALICE);
    send(&lab.a, Some(SRC_REPLAY), SRV_A, &captured);
    lab.expect_rejected(since, "replay", "alice", SRC_REPLAY);
    send(&lab.a, Some(ATK6), SRV6_A, &captured);
    lab.expect_rejected(since, "replay", "alice", ATK6);
    let seq = lab.seq();
    send_spoofed(&lab.a, ALICE, SRV_A, &captured);
    lab.expect_rejected(seq, "replay", "alice", ALICE);
    lab.assert_nothing_opened(
        since,
        &before,
        &[
            (&lab.c, None, SRV),
            (&lab.a, Some(SRC_REPLAY), SRV_A),
            (&lab.a, Some(ATK6), SRV6_A),
        ],
    );

    // A clean restart: the replay state is on disk.
    lab.daemon.take().unwrap().stop();
    lab.daemon = Some(Daemon::start(&lab.s, &lab.config));
    let since = lab.seq();
    send(&lab.c, None, SRV, &captured);
    lab.expect_rejected(since, "replay", "alice", ALICE);
    lab.assert_nothing_opened(since, &before, &[(&lab.c, None, SRV)]);
    captured
}

/// spa-server processes (the verifier and its firewall helper) in `ns`.
fn spa_processes(ns: &Netns) -> usize {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", &ns.name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "spa-server")
        })
        .count()
}

/// kill -9 of the server (and so of its firewall helper) right after a 3 s grant opened:
/// the grant keeps working while the daemon is dead and the kernel closes it on time;
/// after a restart the knock, and the one captured before, are `replay`s (the timestamp
/// was durable before the port opened).
fn kill_9_with_a_grant_open(lab: &mut Lab, earlier: &[u8]) {
    let k = lab.alice.knock(ALICE, 3);
    let since = lab.seq();
    let knocked = Instant::now();
    send(&lab.c, None, SRV, &k);
    until("the knock opens", Duration::from_secs(3), || {
        lab.granted(ALICE)
    });
    let running = spa_processes(&lab.s);
    assert!(running >= 1, "no spa-server process found to kill");
    lab.daemon.take().unwrap().kill9();
    until(
        "a spa-server process outlived kill -9",
        Duration::from_secs(3),
        || spa_processes(&lab.s) == 0,
    );
    assert!(
        connects(&lab.c, None, SRV, SERVICE),
        "the grant must survive the daemon"
    );
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(knocked.elapsed()) + Duration::from_millis(800),
    );
    assert!(!lab.granted(ALICE), "the kernel never expired the grant");
    assert!(!connects(&lab.c, None, SRV, SERVICE));
    let g = lab.one_record(since, "the grant", |r| r["decision"] == "granted");
    assert_eq!(g["duration_s"], 3);

    lab.daemon = Some(Daemon::start(&lab.s, &lab.config));
    let since = lab.seq();
    let before = lab.grants();
    send(&lab.c, None, SRV, &k);
    send(&lab.c, None, SRV, earlier);
    until("two replays", Duration::from_secs(5), || {
        lab.records()
            .iter()
            .filter(|r| r["seq"].as_u64() > Some(since) && r["reason"] == "replay")
            .count()
            == 2
    });
    lab.assert_nothing_opened(since, &before, &[(&lab.c, None, SRV)]);
}

/// A junk flood (up to 200,000 datagrams with a valid header and random bytes, from 1,024
/// forged sources, paced to at most 20,000 a second, for at most 40 s) while alice
/// makes 20 open/close knock pairs: at least 99% of her knocks open (that is, all 20), the
/// summaries count every junk datagram as `bad_mac1`, and the audit log grows by
/// kilobytes, not by the packet count.
fn junk_flood(lab: &Lab) {
    const COUNT: u64 = 200_000;
    const PAIRS: usize = 20;
    let since = lab.seq();
    let bytes_before = lab.audit_bytes();
    let mut knocks = Vec::new();
    for _ in 0..PAIRS {
        knocks.push(lab.alice.knock(ALICE, 30));
        knocks.push(lab.alice.close(ALICE));
    }
    let f = datagram_file(&knocks);
    let started = Instant::now();
    let flood = lab
        .a
        .cmd("python3")
        .args([
            "-c",
            FLOOD,
            SRV_A,
            &PORT.to_string(),
            &COUNT.to_string(),
            "20000",
            "40",
            "1024",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let knocker = py(
        &lab.c,
        KNOCKER,
        &[
            SRV,
            &PORT.to_string(),
            SRV,
            &SERVICE.to_string(),
            f.path().to_str().unwrap(),
        ],
    );
    let knocker_done = started.elapsed();
    let out = flood.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let sent: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let flood_time = started.elapsed();
    let fields: Vec<f64> = knocker.split(' ').map(|x| x.parse().unwrap()).collect();
    let (opened, closed) = (fields[0] as usize, fields[1] as usize);
    eprintln!(
        "flood: {sent} junk datagrams in {flood_time:?}; alice's knocks: {opened}/{PAIRS} opened, \
         {closed} closed, slowest open {} s, done after {knocker_done:?}",
        fields[2]
    );
    assert!(
        knocker_done < flood_time,
        "the knocks must run during the flood"
    );
    assert!(sent >= COUNT / 2, "the flood sent only {sent}");
    assert!(
        opened * 100 >= PAIRS * 99,
        "only {opened} of {PAIRS} knocks opened during the flood"
    );
    assert_eq!(closed, PAIRS);

    // Every junk datagram is counted, in a summary per interval.
    let mut records = Vec::new();
    let mut counted = 0;
    until(
        "the summaries never counted the whole flood",
        Duration::from_secs(15),
        || {
            records = lab
                .records()
                .into_iter()
                .filter(|r| r["seq"].as_u64() > Some(since))
                .collect();
            counted = records
                .iter()
                .filter(|r| r["reason"] == "bad_mac1")
                .map(|r| r["count"].as_u64().unwrap())
                .sum::<u64>();
            counted >= sent
        },
    );
    assert_eq!(counted, sent, "junk counted vs sent");
    let count = |d: &str| {
        records
            .iter()
            .filter(|r| r["decision"] == d && r["user"] == "alice")
            .count()
    };
    assert_eq!(count("granted"), PAIRS);
    assert_eq!(count("closed"), PAIRS);
    let summaries = records
        .iter()
        .filter(|r| r["decision"] == "rejected")
        .count();
    let other: Vec<&Value> = records
        .iter()
        .filter(|r| r["decision"] == "rejected" && r["reason"] != "bad_mac1")
        .collect();
    assert!(other.is_empty(), "{other:#?}");
    let grown = lab.audit_bytes() - bytes_before;
    eprintln!(
        "flood: audit log grew {grown} bytes: {summaries} summaries and {} grant records",
        2 * PAIRS
    );
    assert!(
        summaries as u64 <= flood_time.as_secs() + 5,
        "one summary per interval, not per packet: {summaries}"
    );
    assert!(
        grown < 64 * 1024,
        "the audit log grew {grown} bytes for {sent} junk datagrams"
    );
}

// ---------------------------------------------------------------------------------------
// The suite.

#[test]
fn adversaries_open_nothing_and_are_recorded_where_they_belong() {
    if !privileged("adversaries_open_nothing_and_are_recorded_where_they_belong") {
        return;
    }
    let started = Instant::now();
    let host_before = host_ruleset();
    let mut lab = Lab::new();
    let step = |name: &str| eprintln!("[{:>6.1?}] {name}", started.elapsed());

    step("nmap");
    nmap_sees_nothing(&lab);
    step("no reply on the wire");
    no_reply_on_the_wire(&mut lab);
    step("bit flips");
    bit_flips(&mut lab);
    step("truncation and extension");
    truncation_and_extension(&mut lab);
    step("unknown key");
    unknown_key(&mut lab);
    step("sealed for another server");
    sealed_for_another_server(&mut lab);
    step("stale and future");
    stale_and_future(&lab);
    step("access not allowed");
    access_not_allowed(&lab);
    step("another user's knock");
    another_users_knock(&lab);
    step("NAT mode without permission");
    nat_without_permission(&lab);
    step("aimed at another host");
    aimed_elsewhere(&lab);
    step("revoked while running");
    revoked_while_running(&lab);
    step("spoofed source");
    spoofed_source(&lab);
    step("replays, and after a restart");
    let captured = replays(&mut lab);
    step("kill -9 with a grant open");
    kill_9_with_a_grant_open(&mut lab, &captured);
    step("junk flood");
    junk_flood(&lab);

    step("stop; every count once, the chain intact, foreign tables untouched");
    let foreign_running = foreign_tables(&lab.s);
    lab.daemon.take().unwrap().stop();
    // After the final summaries (written at stop), every pre-authentication count is
    // still exactly what its case sent: nothing arrived late or twice.
    let records = lab.records();
    for (reason, src, n) in &lab.expected {
        assert_eq!(
            lab.preauth(&records, reason, src),
            *n,
            "{reason} from {src}"
        );
    }
    let starts = records
        .iter()
        .filter(|r| r["decision"] == "started")
        .count();
    let stops = records
        .iter()
        .filter(|r| r["decision"] == "stopped")
        .count();
    assert_eq!((starts, stops), (3, 2), "three runs, one ended by kill -9");
    let key = lab.etc.join("audit-verify.key").display().to_string();
    let verified = lab.cli(&["audit", "--verify", "--key", &key]);
    assert!(verified.contains("chain intact"), "{verified}");

    assert_eq!(foreign_running, lab.foreign_before, "while the daemon ran");
    assert_eq!(
        foreign_tables(&lab.s),
        lab.foreign_before,
        "after it stopped"
    );
    let removed = lab.s.run(&[
        bin("spa-server").to_str().unwrap(),
        "--config",
        &lab.config,
        "firewall",
        "remove",
    ]);
    assert!(String::from_utf8_lossy(&removed.stdout).contains("removed table inet spa"));
    assert_eq!(
        lab.s.ruleset(),
        lab.ruleset_before,
        "the namespace's ruleset, our table removed"
    );
    drop(lab);
    assert_eq!(
        host_before,
        host_ruleset(),
        "the host's own ruleset changed"
    );
    step("done");
}
