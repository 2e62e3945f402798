//! spa against fwknop in one namespace lab, in one run (`bench/fwknop.sh`, as root).
//!
//! ```text
//!   [cli] 10.77.1.2 ──── 10.77.1.1 [srv]   one server at a time, pinned with taskset:
//!   [atk] 10.77.2.2 ──── 10.77.2.1 [srv]     spa-server | fwknopd (pcap) | fwknopd --udp-server
//!                                            tcp/2222 listener, closed until a knock opens it
//! ```
//!
//! Each server gets the same measurements from the same client programs (this binary
//! re-invoked inside a namespace, pinned to the client CPUs):
//!
//! - it opens the port: a TCP connect fails before a knock and succeeds after (checked
//!   before anything is measured);
//! - knock-to-open latency, twice: from the probe (knock sent → first completed handshake,
//!   a fresh connect every 100 µs) and from one capture on the server's interface (knock in
//!   → first SYN-ACK out, kernel timestamps);
//! - server CPU per rejected junk packet (all processes of the server, /proc before/after);
//! - the highest junk rate at which ≥ 99 % of interleaved valid knocks are still granted;
//! - valid knocks granted per second;
//! - RSS idle (and, for spa, with 100,000 users).
//!
//! fwknop's knocks are built by Debian's `fwknop` client (`--test --save-packet`) right
//! before they are sent, each with its own random data, so the digest cache never sees a
//! replay. Its grants are iptables rules in its own `FWKNOP_INPUT` chain; between rounds
//! the lab flushes that chain (fwknop has no close message). Every loop is bounded in
//! count and time; the namespaces are deleted on exit (and by bench/fwknop.sh's trap).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore};
use spa_e2e::netns::{link, tcp_connects, tcp_listener, Netns};
use spa_proto::Action;

use super::{exe, knocks, setup, sibling, PORT, SERVICE, USERS};

/// fwknop's default SPA port (both modes).
const FW_PORT: u16 = 62201;
const SRV: &str = "10.77.1.1";
const CLI: &str = "10.77.1.2";
const SRV_ATK: &str = "10.77.2.1";
/// Valid knocks interleaved with each junk rate: this many at this rate.
const INTERLEAVED: usize = 100;
const INTERLEAVED_RATE: u64 = 20;
/// Junk for the CPU measurement: this many at this rate, below fwknop's pcap drain bound
/// (about 1,000 packets/s: 100 per pcap_dispatch, then a 100 ms sleep), so every server
/// handles every packet.
const JUNK_N: usize = 10_000;
const JUNK_RATE: u64 = 500;
/// Junk sent as fast as the sender goes (bounded to 60 s by the sender).
const FLOOD_N: usize = 200_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Spa,
    Pcap,
    Udp,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Spa => "spa",
            Kind::Pcap => "fwknop-pcap",
            Kind::Udp => "fwknop-udp",
        }
    }
    fn port(self) -> u16 {
        match self {
            Kind::Spa => PORT,
            _ => FW_PORT,
        }
    }
    /// The log line every grant writes.
    fn grant_marker(self) -> &'static str {
        match self {
            Kind::Spa => "grant open",
            _ => "Added access rule",
        }
    }
    fn ready_marker(self) -> &'static str {
        match self {
            Kind::Spa => "spa-server running",
            Kind::Pcap => "Starting fwknopd main event loop",
            Kind::Udp => "Kicking off UDP server",
        }
    }
}

struct Lab {
    s: Netns,
    c: Netns,
    a: Netns,
    dir: PathBuf,
    server_cpus: String,
    client_cpus: String,
    /// spa: config and the probe user's bundle.
    spa_config: String,
    spa_bundle: String,
    /// fwknop: base64 Rijndael and HMAC keys.
    fw_key: String,
    fw_hmac: String,
}

/// `taskset -c CPUS ip netns exec NS PROGRAM`: the pinning is inherited by everything the
/// program forks (fwknopd's iptables, spa-server's helper).
fn pinned(ns: &Netns, cpus: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpus, "ip", "netns", "exec", &ns.name, program]);
    c
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn minmax(v: &[f64]) -> (f64, f64) {
    let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    (
        v.iter().copied().fold(f64::INFINITY, f64::min),
        v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    )
}

// ---------------------------------------------------------------------------------------
// /proc: CPU and memory of a process and all its descendants.

fn ppid_map() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(r) = stat.rfind(')') else { continue };
        if let Some(pp) = stat[r + 2..].split_whitespace().nth(1) {
            out.push((pid, pp.parse().unwrap_or(0)));
        }
    }
    out
}

fn tree(root: u32) -> Vec<u32> {
    let map = ppid_map();
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() && all.len() < 10_000 {
        let p = all[i];
        all.extend(map.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    all
}

/// CPU of a process tree: exact run time of its live threads (schedstat, ns), plus the
/// reaped children's time (cutime + cstime, clock ticks), plus the user/system split.
#[derive(Clone, Copy, Default, Debug)]
struct Cpu {
    run_ns: u64,
    user_ticks: u64,
    sys_ticks: u64,
    reaped_ticks: u64,
}

impl Cpu {
    fn of(root: u32) -> Self {
        let mut c = Cpu::default();
        for pid in tree(root) {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let f: Vec<u64> = stat[stat.rfind(')').unwrap() + 2..]
                    .split_whitespace()
                    .map(|x| x.parse().unwrap_or(0))
                    .collect();
                c.user_ticks += f[11];
                c.sys_ticks += f[12];
                c.reaped_ticks += f[13] + f[14];
            }
            if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
                for t in tasks.flatten() {
                    if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                        c.run_ns += s
                            .split_whitespace()
                            .next()
                            .and_then(|x| x.parse().ok())
                            .unwrap_or(0);
                    }
                }
            }
        }
        c
    }
    /// Seconds between two samples (live threads exactly, reaped children by tick).
    fn since(&self, before: &Cpu) -> (f64, f64, f64) {
        let tick = 0.01;
        let total = (self.run_ns.saturating_sub(before.run_ns)) as f64 / 1e9
            + self.reaped_ticks.saturating_sub(before.reaped_ticks) as f64 * tick;
        let user = self.user_ticks.saturating_sub(before.user_ticks) as f64 * tick;
        let sys = self.sys_ticks.saturating_sub(before.sys_ticks) as f64 * tick;
        (total, user, sys)
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// A running server.

struct Server {
    kind: Kind,
    child: Child,
    log: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Server {
    fn start(lab: &Lab, kind: Kind, config: &str) -> Self {
        let mut cmd = match kind {
            Kind::Spa => {
                let mut c = pinned(&lab.s, &lab.server_cpus, &sibling("spa-server"));
                c.args(["--config", config, "run"]);
                c
            }
            Kind::Pcap | Kind::Udp => {
                let d = lab.dir.join(kind.name());
                let mut c = pinned(&lab.s, &lab.server_cpus, "fwknopd");
                c.args(["-f", "-c"]).arg(d.join("fwknopd.conf"));
                c.arg("-a").arg(d.join("access.conf"));
                if kind == Kind::Udp {
                    c.arg("--udp-server");
                }
                c
            }
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        let log = Arc::new(Mutex::new(Vec::new()));
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(r).split(b'\n').map_while(Result::ok) {
                    let l = String::from_utf8_lossy(&l).into_owned();
                    sink.lock().unwrap().push((Instant::now(), l));
                }
            });
        }
        let s = Self { kind, child, log };
        let t = Instant::now();
        while !s.has(kind.ready_marker()) {
            if t.elapsed() > Duration::from_secs(120) || s.exited() {
                panic!("{} did not start: {:?}", kind.name(), s.tail(30));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn exited(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
    }
    fn has(&self, needle: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|(_, l)| l.contains(needle))
    }
    fn tail(&self, n: usize) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.iter()
            .rev()
            .take(n)
            .rev()
            .map(|(_, l)| l.clone())
            .collect()
    }
    fn mark(&self) -> usize {
        self.log.lock().unwrap().len()
    }
    /// Grants logged since `mark`: count, and the times of the first and last.
    fn grants_since(&self, mark: usize) -> (usize, Option<Instant>, Option<Instant>) {
        let log = self.log.lock().unwrap();
        let g: Vec<Instant> = log[mark.min(log.len())..]
            .iter()
            .filter(|(_, l)| l.contains(self.kind.grant_marker()))
            .map(|(t, _)| *t)
            .collect();
        (g.len(), g.first().copied(), g.last().copied())
    }
    fn rss(&self) -> (f64, f64) {
        let own = rss_kib(self.pid()) as f64 / 1024.0;
        let all: u64 = tree(self.pid()).into_iter().map(rss_kib).sum();
        (own, all as f64 / 1024.0)
    }
    /// SIGTERM (fwknopd flushes its chains, spa-server logs its counters), then SIGKILL
    /// after 10 s.
    fn stop(mut self) {
        self.terminate();
    }
    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A helper process killed when the lab is done with it, also on a panic.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The lab.

impl Lab {
    fn client(&self, ns: &Netns) -> Command {
        pinned(ns, &self.client_cpus, &exe())
    }

    fn client_out(&self, ns: &Netns, args: &[&str]) -> String {
        let out = self.client(ns).args(args).output().expect("client");
        if !out.status.success() {
            eprintln!(
                "client {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `n` fwknop knocks (one per line) built by the real client right now, each allowing
    /// the address `allow(i)`; run inside the client namespace, `--test` so nothing is sent.
    fn fw_packets(&self, n: usize, allow: impl Fn(usize) -> String) -> PathBuf {
        let file = self.dir.join("fwknop-packets.txt");
        let _ = std::fs::remove_file(&file);
        for i in 0..n {
            let ok = self
                .c
                .cmd("fwknop")
                .env("HOME", &self.dir)
                .args(["--rc-file"])
                .arg(self.dir.join("fwknoprc"))
                .args([
                    "--no-save-args",
                    "-A",
                    &format!("tcp/{SERVICE}"),
                    "-a",
                    &allow(i),
                    "-D",
                    SRV,
                    "-f",
                    "30",
                    "--use-hmac",
                    "--key-base64-rijndael",
                    &self.fw_key,
                    "--key-base64-hmac",
                    &self.fw_hmac,
                    "--test",
                    "-B",
                ])
                .arg(&file)
                .arg("-b")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("fwknop client");
            assert!(ok.success(), "fwknop client failed");
        }
        file
    }

    /// Closes whatever the server opened, so the next round starts closed.
    fn reset(&self, kind: Kind) {
        match kind {
            // The probe already sent a close knock; the lab waits for it to land.
            Kind::Spa => std::thread::sleep(Duration::from_millis(150)),
            _ => {
                let _ = self.s.try_run(&["iptables", "-F", "FWKNOP_INPUT"]);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn send_one_knock(&self, kind: Kind) {
        match kind {
            Kind::Spa => {
                self.client_out(
                    &self.c,
                    &["fwsend", &format!("spa:{}:1", self.spa_bundle), SRV, "0"],
                );
            }
            _ => {
                let f = self.fw_packets(1, |_| CLI.to_string());
                self.client_out(
                    &self.c,
                    &[
                        "fwsend",
                        &format!("file:{}:{FW_PORT}", f.display()),
                        SRV,
                        "0",
                    ],
                );
            }
        }
    }

    /// TCP fails before a knock, succeeds after it, fails again after the reset.
    fn verify_opens(&self, kind: Kind) -> Result<f64, String> {
        if tcp_connects(&self.c, SRV, SERVICE, 0.5) {
            return Err("tcp/2222 is open before any knock".into());
        }
        let t = Instant::now();
        self.send_one_knock(kind);
        let mut open = false;
        while t.elapsed() < Duration::from_secs(5) {
            if tcp_connects(&self.c, SRV, SERVICE, 0.3) {
                open = true;
                break;
            }
        }
        if !open {
            return Err("a valid knock did not open tcp/2222 within 5 s".into());
        }
        let took = t.elapsed().as_secs_f64();
        if kind == Kind::Spa {
            self.client_out(
                &self.c,
                &[
                    "fwsend",
                    &format!("spa-close:{}:1", self.spa_bundle),
                    SRV,
                    "0",
                ],
            );
        }
        self.reset(kind);
        if tcp_connects(&self.c, SRV, SERVICE, 0.5) {
            return Err("tcp/2222 still open after the reset".into());
        }
        Ok(took)
    }
}

fn fw_configs(lab: &Lab, kind: Kind) {
    let d = lab.dir.join(kind.name());
    std::fs::create_dir_all(d.join("run")).unwrap();
    // Sniff every interface (junk comes from the attacker's link, knocks from the
    // client's); everything else is fwknop's default (PCAP_LOOP_SLEEP 100 ms, digest
    // persistence on, RULES_CHECK_THRESHOLD 20).
    let conf = format!(
        "PCAP_INTF any;\nPCAP_FILTER udp dst port {FW_PORT};\nUDPSERV_PORT {FW_PORT};\n\
         FWKNOP_RUN_DIR {run};\nFWKNOP_PID_FILE {run}/fwknopd.pid;\nDIGEST_FILE {run}/digest.cache;\n",
        run = d.join("run").display()
    );
    let access = format!(
        "SOURCE ANY\nOPEN_PORTS tcp/{SERVICE}\nKEY_BASE64 {}\nHMAC_KEY_BASE64 {}\nFW_ACCESS_TIMEOUT 30\n",
        lab.fw_key, lab.fw_hmac
    );
    for (name, text) in [("fwknopd.conf", conf), ("access.conf", access)] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(d.join(name))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}
impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// The server namespace's firewall for a phase: spa installs its own table; fwknop needs
/// tcp/2222 dropped (established traffic allowed) in the iptables INPUT chain, into which
/// it jumps its own FWKNOP_INPUT chain first.
fn firewall_for(lab: &Lab, kind: Kind) {
    // Nothing of the previous phase stays: spa leaves its table in place on stop, and
    // iptables-nft keeps its rules in the table `ip filter`.
    let _ = lab.s.try_run(&["nft", "delete", "table", "inet", "spa"]);
    let _ = lab.s.try_run(&["nft", "delete", "table", "ip", "filter"]);
    if kind != Kind::Spa {
        let svc = SERVICE.to_string();
        lab.s.run(&[
            "iptables",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &svc,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ]);
        lab.s.run(&[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", &svc, "-j", "DROP",
        ]);
    }
}

/// UDP InDatagrams and RcvbufErrors of the server namespace (/proc/net/snmp).
fn udp_snmp(lab: &Lab) -> (u64, u64) {
    let out = lab.s.run(&["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, vals) = (lines.next().unwrap(), lines.next().unwrap());
    let m: BTreeMap<&str, u64> = names
        .split_whitespace()
        .zip(vals.split_whitespace())
        .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
        .collect();
    (m["InDatagrams"], m["RcvbufErrors"])
}

/// spa's counters (all outcomes) from `spa-server status --json`.
fn spa_counters(lab: &Lab) -> BTreeMap<String, u64> {
    let out = Command::new(sibling("spa-server"))
        .args(["--config", &lab.spa_config, "status", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["counters"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

fn rejected(c: &BTreeMap<String, u64>) -> u64 {
    c.iter()
        .filter(|(k, _)| *k != "granted" && *k != "failed")
        .map(|(_, v)| v)
        .sum()
}

struct JunkRun {
    /// Server CPU (µs, idle subtracted) per packet the server handled, if known.
    per_handled: f64,
    per_sent: f64,
}

#[derive(Default)]
struct Results {
    verify_s: f64,
    idle_ms_per_s: f64,
    probe_us: Vec<f64>,
    wire_us: Vec<f64>,
    rss_idle: (f64, f64),
    junk: Vec<JunkRun>,
    /// (nominal junk rate, achieved junk rate, valid granted %)
    ladder: Vec<(u64, f64, f64)>,
    /// (offered rate, sent, granted, grants/s from first to last)
    valid: Vec<(u64, usize, usize, f64)>,
}

fn tcpdump_start(lab: &Lab, file: &Path) -> Reaper {
    // Knocks in (both servers' ports) and SYN-ACKs out of tcp/2222, on the client link.
    let filter = format!(
        "(udp and dst port {PORT}) or (udp and dst port {FW_PORT}) or \
         (tcp and src port {SERVICE} and tcp[13] & 0x12 == 0x12)"
    );
    let mut c = pinned(&lab.s, &lab.client_cpus, "tcpdump")
        .args([
            "-i",
            "s-c",
            "-n",
            "-U",
            "--immediate-mode",
            "-s",
            "96",
            "-Z",
            "root",
        ])
        .args(["--time-stamp-precision=nano", "-w"])
        .arg(file)
        .arg(filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    // Capturing once it says so ("listening on s-c ..."), within 10 s.
    let (tx, rx) = std::sync::mpsc::channel();
    let err = c.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if l.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(10)).is_err() {
        eprintln!("tcpdump did not report listening within 10 s; wire latencies may miss rounds");
    }
    Reaper(c)
}

/// Knock in → first SYN-ACK out, per round, from the capture (µs); and the number of
/// knocks and SYN-ACKs the capture holds.
fn wire_latencies(file: &Path) -> (Vec<f64>, usize, usize) {
    let out = Command::new("tcpdump")
        .args(["-r"])
        .arg(file)
        .args(["-n", "-tt", "--time-stamp-precision=nano"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::write(file.with_extension("txt"), text.as_bytes());
    let knocks = text.lines().filter(|l| l.contains(" UDP")).count();
    let synacks = text.lines().filter(|l| l.contains("Flags [S.]")).count();
    let mut lat = Vec::new();
    let mut knock: Option<f64> = None;
    for l in text.lines() {
        let Some(t) = l
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<f64>().ok())
        else {
            continue;
        };
        if l.contains(" UDP") {
            knock = Some(t);
        } else if l.contains("Flags [S.]") {
            if let Some(k) = knock.take() {
                lat.push((t - k) * 1e6);
            }
        }
    }
    (lat, knocks, synacks)
}

/// The parts of the run (env STEPS, comma-separated; default all).
fn step(name: &str) -> bool {
    std::env::var("STEPS").map_or(true, |v| v.split(',').any(|s| s.trim() == name))
}

fn run_server(lab: &Lab, kind: Kind, rounds: usize) -> Results {
    let mut r = Results::default();
    println!(
        "\n## {} (server pinned to CPU {})",
        kind.name(),
        lab.server_cpus
    );
    firewall_for(lab, kind);
    let srv = Server::start(lab, kind, &lab.spa_config);
    std::thread::sleep(Duration::from_secs(1));
    r.rss_idle = srv.rss();
    println!(
        "rss_idle_mib {:.1} (process tree {:.1})",
        r.rss_idle.0, r.rss_idle.1
    );

    // It really opens the port, before anything is measured.
    match lab.verify_opens(kind) {
        Ok(s) => {
            r.verify_s = s;
            println!("verified: tcp/{SERVICE} closed before, open {s:.3} s after a knock, closed after the reset");
        }
        Err(e) => {
            eprintln!("{}: {e}; log tail: {:#?}", kind.name(), srv.tail(40));
            panic!("{}: {e}", kind.name());
        }
    }
    if step("latency") {
        latency(lab, kind, rounds, &mut r);
    }
    let fw_len = std::fs::read_to_string(lab.fw_packets(1, |_| CLI.to_string()))
        .unwrap()
        .trim_end()
        .len();
    let shaped = match kind {
        Kind::Spa => "spa-mac1".to_string(),
        _ => format!("fwknop-b64:{fw_len}"),
    };
    if step("junk") {
        junk_cpu(lab, &srv, &shaped, &mut r);
    }
    if step("ladder") {
        ladder(lab, &srv, &shaped, &mut r);
    }
    if step("valid") {
        valid_rate(lab, &srv, &mut r);
    }
    srv.stop();
    r
}

/// Knock-to-open, rounds bounded in count and time; the capture runs alongside.
fn latency(lab: &Lab, kind: Kind, rounds: usize, r: &mut Results) {
    let cap = lab.dir.join(format!("{}.pcap", kind.name()));
    let mut td = tcpdump_start(lab, &cap);
    let t = Instant::now();
    for i in 0..rounds {
        if t.elapsed() > Duration::from_secs(240) {
            eprintln!("latency: stopping after {i} rounds (time bound)");
            break;
        }
        let out = match kind {
            Kind::Spa => lab.client_out(&lab.c, &["fwprobe", "spa", &lab.spa_bundle]),
            _ => {
                let f = lab.fw_packets(1, |_| CLI.to_string());
                lab.client_out(
                    &lab.c,
                    &[
                        "fwprobe",
                        &format!("file:{}", f.display()),
                        &FW_PORT.to_string(),
                    ],
                )
            }
        };
        match out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("latency_us="))
            .and_then(|v| v.parse::<f64>().ok())
        {
            Some(us) => r.probe_us.push(us),
            None => eprintln!("round {i}: {}", out.trim()),
        }
        lab.reset(kind);
    }
    // Without immediate mode a TPACKET_V3 block reaches tcpdump only when full or after
    // its 1 s timeout; with it, packets come at once. Wait past the timeout anyway.
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-INT", &td.0.id().to_string()])
        .status();
    let _ = td.0.wait();
    let (wire, knocks_seen, synacks_seen) = wire_latencies(&cap);
    // A pairing longer than the slowest probe round is impossible (the probe's interval
    // contains the wire one): the capture missed that round's knock and paired the
    // previous close knock. Such rounds are left out and counted.
    let bound = minmax(&r.probe_us).1;
    let n = wire.len();
    r.wire_us = wire.into_iter().filter(|w| *w <= bound).collect();
    if r.wire_us.len() < n {
        println!("wire: {} mis-paired rounds left out", n - r.wire_us.len());
    }
    let (pmin, pmax) = minmax(&r.probe_us);
    let (wmin, wmax) = minmax(&r.wire_us);
    println!(
        "knock_to_open probe: median {:.0} us, min {pmin:.0}, max {pmax:.0}, n={}",
        median(&r.probe_us),
        r.probe_us.len()
    );
    println!(
        "knock_to_open wire (knock in -> first SYN-ACK out): median {:.0} us, min {wmin:.0}, max {wmax:.0}, n={} (capture: {knocks_seen} knocks, {synacks_seen} SYN-ACKs)",
        median(&r.wire_us),
        r.wire_us.len()
    );
}

/// Server CPU per rejected junk packet: random payloads and the server's own worst
/// shape, first at JUNK_RATE (every server handles every packet), then as fast as the
/// sender goes (where the handled count is observable). The idle CPU over the same span
/// is subtracted.
fn junk_cpu(lab: &Lab, srv: &Server, shaped: &str, r: &mut Results) {
    let kind = srv.kind;
    // 10 s, so that fwknopd's periodic `iptables -L` (every 20 loops: 2 s in pcap mode)
    // averages out.
    let (i0, it) = (Cpu::of(srv.pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let idle_per_s = Cpu::of(srv.pid()).since(&i0).0 / it.elapsed().as_secs_f64();
    r.idle_ms_per_s = idle_per_s * 1e3;
    println!("idle cpu {:.2} ms/s", idle_per_s * 1e3);
    let runs = [
        ("random", JUNK_N, JUNK_RATE),
        (shaped, JUNK_N, JUNK_RATE),
        ("random", FLOOD_N, 0),
        (shaped, FLOOD_N, 0),
    ];
    for (junk, n, rate) in runs {
        let t0 = Instant::now();
        let (c0, s0, u0) = (
            Cpu::of(srv.pid()),
            spa_counters_if(lab, kind),
            udp_snmp(lab),
        );
        let out = lab.client_out(
            &lab.a,
            &[
                "fwjunk",
                SRV_ATK,
                &kind.port().to_string(),
                junk,
                &n.to_string(),
                &rate.to_string(),
            ],
        );
        // Let the server drain its backlog (fwknop's pcap loop: 100 packets per 100 ms).
        wait_quiet(srv, idle_per_s);
        let (c1, s1, u1) = (
            Cpu::of(srv.pid()),
            spa_counters_if(lab, kind),
            udp_snmp(lab),
        );
        let (raw, user, sys) = c1.since(&c0);
        let total = (raw - idle_per_s * t0.elapsed().as_secs_f64()).max(0.0);
        let (handled, note) = match kind {
            Kind::Spa => (
                Some(rejected(&s1) - rejected(&s0)),
                "spa's reject counters".to_string(),
            ),
            Kind::Udp => (
                Some(u1.0 - u0.0),
                format!("UDP InDatagrams; {} dropped at the socket buffer", u1.1 - u0.1),
            ),
            Kind::Pcap if rate > 0 => (
                Some(n as u64),
                "all sent: below the pcap drain bound".to_string(),
            ),
            Kind::Pcap => (
                None,
                "handled count not observable: the pcap ring drops what the 100 ms loop does not drain".to_string(),
            ),
        };
        let per_handled = handled.map_or(f64::NAN, |h| total * 1e6 / h.max(1) as f64);
        let raw_per_sent = raw * 1e6 / n as f64;
        let per_sent = total * 1e6 / n as f64;
        let rate_s = if rate == 0 {
            "flood".to_string()
        } else {
            format!("{rate}/s")
        };
        println!(
            "junk {junk} at {rate_s}: {} cpu {raw:.3} s ({user:.2} user + {sys:.2} sys by tick), {total:.3} s less idle => {per_handled:.2} us per handled packet ({} handled: {note}), {per_sent:.2} us per sent packet ({raw_per_sent:.2} with idle)",
            out.trim(),
            handled.map_or("?".to_string(), |h| h.to_string()),
        );
        r.junk.push(JunkRun {
            per_handled,
            per_sent,
        });
    }
}

/// Waits (at most 30 s) until the server's CPU use is back near idle, i.e. it has
/// drained its backlog.
fn wait_quiet(srv: &Server, idle_per_s: f64) {
    let t = Instant::now();
    let mut prev = (Cpu::of(srv.pid()), Instant::now());
    while t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        let now = (Cpu::of(srv.pid()), Instant::now());
        let busy = now.0.since(&prev.0).0 / (now.1 - prev.1).as_secs_f64();
        prev = now;
        if busy < idle_per_s * 1.5 + 0.0005 {
            return;
        }
    }
    eprintln!("{}: still busy after 30 s", srv.kind.name());
}

/// One valid knock, and its grant awaited (at most 30 s): a server that works in arrival
/// order has then handled everything sent before it. Then the reset.
fn drain(lab: &Lab, srv: &Server) {
    // A knock sent while fwknopd's pcap ring is still full of junk is dropped unseen, so
    // up to four tries, 10 s each.
    let mut granted = false;
    for _ in 0..4 {
        let mark = srv.mark();
        lab.send_one_knock(srv.kind);
        let t = Instant::now();
        while srv.grants_since(mark).0 == 0 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if srv.grants_since(mark).0 > 0 {
            granted = true;
            break;
        }
    }
    if !granted {
        eprintln!("{}: drain knock not granted in four tries", srv.kind.name());
    }
    if srv.kind == Kind::Spa {
        lab.client_out(
            &lab.c,
            &[
                "fwsend",
                &format!("spa-close:{}:1", lab.spa_bundle),
                SRV,
                "0",
            ],
        );
    }
    lab.reset(srv.kind);
}

/// Highest junk rate with >= 99% of interleaved valid knocks granted (a bounded ladder;
/// it stops at the first rate that fails).
fn ladder(lab: &Lab, srv: &Server, shaped: &str, r: &mut Results) {
    let kind = srv.kind;
    for rate in [0u64, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000] {
        drain(lab, srv);
        let secs = INTERLEAVED as u64 / INTERLEAVED_RATE;
        let valid_src = match kind {
            Kind::Spa => format!("spa:{}:{INTERLEAVED}", lab.spa_bundle),
            _ => {
                let f = lab.fw_packets(INTERLEAVED, |i| {
                    format!("10.78.{}.{}", i / 250, i % 250 + 1)
                });
                format!("file:{}:{FW_PORT}", f.display())
            }
        };
        let mark = srv.mark();
        let mut junk = (rate > 0).then(|| {
            let c = lab
                .client(&lab.a)
                .args([
                    "fwjunk",
                    SRV_ATK,
                    &kind.port().to_string(),
                    shaped,
                    &(rate * (secs + 1)).to_string(),
                    &rate.to_string(),
                ])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            Reaper(c)
        });
        std::thread::sleep(Duration::from_millis(300));
        lab.client_out(
            &lab.c,
            &["fwsend", &valid_src, SRV, &INTERLEAVED_RATE.to_string()],
        );
        let junk_out = junk
            .take()
            .map(|mut j| {
                let mut out = String::new();
                let _ = j.0.wait();
                if let Some(mut o) = j.0.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut o, &mut out);
                }
                out
            })
            .unwrap_or_default();
        // The rate the sender really achieved ("sent N in T s (R/s)").
        let achieved = junk_out
            .split('(')
            .nth(1)
            .and_then(|x| x.split('/').next())
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0);
        // fwknop drains its backlog slowly; wait until the grants stop (bounded).
        let mut last = usize::MAX;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(500));
            let n = srv.grants_since(mark).0;
            if n == last {
                break;
            }
            last = n;
        }
        let granted = srv.grants_since(mark).0;
        let pct = 100.0 * granted as f64 / INTERLEAVED as f64;
        println!(
            "junk_rate {rate}/s ({shaped}) {}: valid granted {granted}/{INTERLEAVED} ({pct:.0}%)",
            junk_out.trim()
        );
        r.ladder.push((rate, achieved, pct));
        lab.reset(kind);
        if pct < 99.0 {
            break;
        }
    }
}

/// Valid knocks granted per second: offered at increasing rates, bounded in count.
fn valid_rate(lab: &Lab, srv: &Server, r: &mut Results) {
    let kind = srv.kind;
    let steps: &[(u64, usize)] = match kind {
        Kind::Spa => &[(5_000, 5_000), (10_000, 10_000), (20_000, 20_000)],
        _ => &[(100, 300), (300, 300), (1_000, 300)],
    };
    for &(rate, n) in steps {
        drain(lab, srv);
        let src = match kind {
            Kind::Spa => format!("spa-users:{}:{USERS}:{n}", lab.dir.display()),
            _ => {
                let f = lab.fw_packets(n, |i| format!("10.79.{}.{}", i / 250, i % 250 + 1));
                format!("file:{}:{FW_PORT}", f.display())
            }
        };
        let mark = srv.mark();
        let out = lab.client_out(&lab.c, &["fwsend", &src, SRV, &rate.to_string()]);
        let mut last = usize::MAX;
        for _ in 0..60 {
            std::thread::sleep(Duration::from_millis(500));
            let g = srv.grants_since(mark).0;
            if g == last {
                break;
            }
            last = g;
        }
        let (granted, first, lastt) = srv.grants_since(mark);
        let per_s = match (first, lastt) {
            (Some(a), Some(b)) if granted > 1 && b > a => {
                (granted - 1) as f64 / (b - a).as_secs_f64()
            }
            _ => f64::NAN,
        };
        println!(
            "valid offered {rate}/s: {} -> granted {granted}/{n} ({:.1}%), {per_s:.0} grants/s first to last",
            out.trim(),
            100.0 * granted as f64 / n as f64
        );
        r.valid.push((rate, n, granted, per_s));
        lab.reset(kind);
    }
}

fn spa_counters_if(lab: &Lab, kind: Kind) -> BTreeMap<String, u64> {
    if kind == Kind::Spa {
        spa_counters(lab)
    } else {
        BTreeMap::new()
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.1}x", a / b)
    } else {
        "n/a".into()
    }
}

pub fn compare(dir: &str) {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(21)
        .clamp(1, 101);
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server_cpus =
        std::env::var("SERVER_CPUS").unwrap_or_else(|_| if ncpu > 1 { "1" } else { "0" }.into());
    let client_cpus = std::env::var("CLIENT_CPUS").unwrap_or_else(|_| "0".into());
    let dir = PathBuf::from(dir);

    let (s, c, a) = (Netns::new("srv"), Netns::new("cli"), Netns::new("atk"));
    link(&s, "s-c", &["10.77.1.1/24"], &c, "c-s", &["10.77.1.2/24"]);
    link(&s, "s-a", &["10.77.2.1/24"], &a, "a-s", &["10.77.2.2/24"]);
    let listener = Reaper(tcp_listener(&s, SERVICE));
    std::thread::sleep(Duration::from_millis(300));

    // spa: a server with one probe user and USERS burst users.
    let (spa_config, spa_bundle) = setup(&dir, 0);
    for u in 0..USERS {
        let out = dir.join(format!("u{u}.bundle")).display().to_string();
        let ok = Command::new(sibling("spa-server"))
            .args([
                "--config",
                &spa_config,
                "user",
                "provision",
                &format!("u{u}"),
            ])
            .args(["--allow", &format!("tcp/{SERVICE}"), "--endpoint", SRV])
            .args(["--out", &out])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    // fwknop: one Rijndael + HMAC key pair from its own --key-gen.
    let keys = Command::new("fwknop")
        .env("HOME", &dir)
        .arg("--rc-file")
        .arg(dir.join("fwknoprc"))
        .arg("--key-gen")
        .output()
        .expect("fwknop --key-gen");
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    let field = |name: &str| -> String {
        keys.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("fwknop --key-gen printed no {name}: {keys}"))
    };
    let lab = Lab {
        fw_key: field("KEY_BASE64:"),
        fw_hmac: field("HMAC_KEY_BASE64:"),
        s,
        c,
        a,
        dir,
        server_cpus,
        client_cpus,
        spa_config,
        spa_bundle,
    };
    for k in [Kind::Pcap, Kind::Udp] {
        fw_configs(&lab, k);
    }
    println!(
        "# lab: server CPUs {}, client CPUs {}; {rounds} latency rounds; junk {JUNK_N} at {JUNK_RATE}/s",
        lab.server_cpus, lab.client_cpus
    );

    let mut all = Vec::new();
    for kind in [Kind::Spa, Kind::Pcap, Kind::Udp] {
        all.push((kind, run_server(&lab, kind, rounds)));
    }

    // spa with 100,000 users: RSS (pinned the same way).
    let mut rss100k = (f64::NAN, f64::NAN);
    if step("rss100k") {
        firewall_for(&lab, Kind::Spa);
        let dir2 = lab.dir.join("spa-100k");
        std::fs::create_dir_all(&dir2).unwrap();
        let (config2, _) = setup(&dir2, 100_000);
        let t = Instant::now();
        let big = Server::start(&lab, Kind::Spa, &config2);
        let start_s = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(500));
        rss100k = big.rss();
        big.stop();
        println!(
            "\nspa with 100,000 users: start {start_s:.1} s, rss {:.1} MiB (process tree {:.1})",
            rss100k.0, rss100k.1
        );
    }
    drop(listener);

    // Summary with same-run ratios: how many times better spa is (fwknop / spa where lower
    // is better, spa / fwknop where higher is better).
    let get = |k: Kind| &all.iter().find(|(kk, _)| *kk == k).unwrap().1;
    let (sp, pc, ud) = (get(Kind::Spa), get(Kind::Pcap), get(Kind::Udp));
    println!("\n# summary (medians; \"spa better by\" = fwknop / spa if lower is better, spa / fwknop if higher is)");
    println!("| measure | spa | fwknop pcap | fwknop --udp-server | spa better than pcap by | than udp by |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, f: &dyn Fn(&Results) -> f64, unit: &str, lower_better: bool| {
        let (a, b, c) = (f(sp), f(pc), f(ud));
        let (rb, rc) = if lower_better {
            (ratio(b, a), ratio(c, a))
        } else {
            (ratio(a, b), ratio(a, c))
        };
        let v = |x: f64| {
            if x.is_finite() {
                format!("{x:.1} {unit}")
            } else {
                "n/a".to_string()
            }
        };
        println!("| {name} | {} | {} | {} | {rb} | {rc} |", v(a), v(b), v(c));
    };
    row(
        "knock-to-open, probe (median)",
        &|r| median(&r.probe_us),
        "µs",
        true,
    );
    row(
        "knock-to-open, wire (median)",
        &|r| median(&r.wire_us),
        "µs",
        true,
    );
    for (i, label) in [
        "CPU per random junk packet at 500/s",
        "CPU per shaped junk packet at 500/s",
        "CPU per handled random junk packet, flood",
        "CPU per handled shaped junk packet, flood",
    ]
    .iter()
    .enumerate()
    {
        row(
            label,
            &|r| r.junk.get(i).map_or(f64::NAN, |j| j.per_handled),
            "µs",
            true,
        );
    }
    row(
        "CPU per sent shaped junk packet, flood (all a flood costs the server)",
        &|r| r.junk.get(3).map_or(f64::NAN, |j| j.per_sent),
        "µs",
        true,
    );
    let best_junk = |r: &Results| {
        r.ladder
            .iter()
            .filter(|(_, _, p)| *p >= 99.0)
            .map(|(_, achieved, _)| *achieved)
            .fold(f64::NAN, f64::max)
    };
    row(
        "highest junk rate (achieved), ≥99 % valid granted",
        &best_junk,
        "/s",
        false,
    );
    let best_rate = |r: &Results| {
        r.valid
            .iter()
            .map(|v| v.3)
            .filter(|x| x.is_finite())
            .fold(f64::NAN, f64::max)
    };
    row(
        "valid knocks granted per second (best step)",
        &best_rate,
        "/s",
        false,
    );
    row("idle CPU", &|r| r.idle_ms_per_s, "ms/s", true);
    row("RSS idle, process tree", &|r| r.rss_idle.1, "MiB", true);
    println!(
        "| RSS with 100,000 users | {:.1} MiB | n/a | n/a | | |",
        rss100k.1
    );
}

// ---------------------------------------------------------------------------------------
// Client-side programs (run inside a namespace, pinned to the client CPUs).

/// One latency round: knock, then a fresh non-blocking connect every 100 µs until one
/// completes (3 s bound). Only the newest 64 attempts are kept: a SYN the firewall dropped
/// is retried by the kernel only after a second, so an older attempt cannot complete first.
pub fn probe(src: &str, arg: &str) {
    use socket2::{Domain, Socket, Type};
    let target: SocketAddr = format!("{SRV}:{SERVICE}").parse().unwrap();
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    // `spa BUNDLE` seals its own knock (and a close for afterwards); `file:PATH PORT` sends
    // the first line of PATH.
    let (knock, close, port): (Vec<u8>, Option<Vec<u8>>, u16) = if src == "spa" {
        let k = knocks(arg, CLI, SRV, Action::Open, 1, 30)[0].to_vec();
        let c = knocks(arg, CLI, SRV, Action::Close, 1, 0)[0].to_vec();
        (k, Some(c), PORT)
    } else {
        let path = src.strip_prefix("file:").unwrap();
        let text = std::fs::read_to_string(path).unwrap();
        (
            text.lines().next().unwrap().as_bytes().to_vec(),
            None,
            arg.parse().unwrap(),
        )
    };
    let mut pending: std::collections::VecDeque<Socket> = std::collections::VecDeque::new();
    let t0 = Instant::now();
    udp.send_to(&knock, (SRV, port)).unwrap();
    let mut next = t0;
    let done = loop {
        let now = Instant::now();
        if now >= next {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&target.into());
            pending.push_back(s);
            if pending.len() > 64 {
                pending.pop_front();
            }
            next += Duration::from_micros(100);
        }
        if pending.iter().any(|s| s.peer_addr().is_ok()) {
            break Some(t0.elapsed());
        }
        if now - t0 > Duration::from_secs(3) {
            break None;
        }
        // Sleep between attempts rather than spin (the probe shares the client CPU).
        std::thread::sleep(Duration::from_micros(30));
    };
    drop(pending);
    if let Some(c) = close {
        std::thread::sleep(Duration::from_millis(2));
        udp.send_to(&c, (SRV, PORT)).unwrap();
    }
    match done {
        Some(d) => println!("latency_us={:.0}", d.as_secs_f64() * 1e6),
        None => println!("timeout (3 s)"),
    }
}

/// Sends valid knocks to `to` at `rate` per second (0 = at once), bounded to 60 s:
/// `spa:BUNDLE:N` (one user, increasing timestamps), `spa-close:BUNDLE:N`,
/// `spa-users:DIR:USERS:N` (round-robin over users, each from its own socket), or
/// `file:PATH:PORT` (one datagram per line, as fwknop's client sends them).
pub fn send(src: &str, to: &str, rate: &str) {
    let rate: u64 = rate.parse().unwrap();
    let parts: Vec<&str> = src.split(':').collect();
    // (socket index, payload, port)
    let (nsocks, packets): (usize, Vec<(usize, Vec<u8>, u16)>) = match parts.as_slice() {
        ["spa", bundle, n] | ["spa-close", bundle, n] => {
            let action = if parts[0] == "spa" {
                Action::Open
            } else {
                Action::Close
            };
            let secs = if action == Action::Open { 30 } else { 0 };
            let k = knocks(bundle, CLI, SRV, action, n.parse().unwrap(), secs);
            (1, k.into_iter().map(|p| (0, p.to_vec(), PORT)).collect())
        }
        ["spa-users", dir, users, n] => {
            let (users, n): (usize, usize) = (users.parse().unwrap(), n.parse().unwrap());
            let per = n.div_ceil(users);
            let lists: Vec<Vec<[u8; 242]>> = (0..users)
                .map(|u| {
                    knocks(
                        &format!("{dir}/u{u}.bundle"),
                        CLI,
                        SRV,
                        Action::Open,
                        per,
                        30,
                    )
                })
                .collect();
            let mut v = Vec::new();
            'outer: for i in 0..per {
                for (u, list) in lists.iter().enumerate() {
                    if v.len() == n {
                        break 'outer;
                    }
                    v.push((u, list[i].to_vec(), PORT));
                }
            }
            (users, v)
        }
        ["file", path, port] => {
            let port: u16 = port.parse().unwrap();
            let text = std::fs::read_to_string(path).unwrap();
            (
                1,
                text.lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| (0, l.as_bytes().to_vec(), port))
                    .collect(),
            )
        }
        _ => panic!("fwsend: unknown source {src}"),
    };
    let socks: Vec<UdpSocket> = (0..nsocks)
        .map(|_| UdpSocket::bind("0.0.0.0:0").unwrap())
        .collect();
    let t0 = Instant::now();
    let mut sent = 0;
    for (i, (s, p, port)) in packets.iter().enumerate() {
        if rate > 0 {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now + Duration::from_micros(200) {
                std::thread::sleep(due - now);
            }
        }
        let _ = socks[*s].send_to(p, (to, *port));
        sent += 1;
        if t0.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    println!("sent {sent} in {:.3} s", t0.elapsed().as_secs_f64());
}

/// Junk to `to:port`: `count` datagrams at `rate` per second (bounded to 60 s), from a
/// pool of 4,096 distinct payloads: `random` (242 random bytes), `spa-mac1` (spa's exact
/// length and header, wrong mac1: the most expensive junk spa sees) or `fwknop-b64:LEN`
/// (random base64 text of a real knock's length: passes fwknop's pre-checks, costs the
/// digest-cache lookup and the HMAC).
pub fn junk(to: &str, port: &str, kind: &str, count: &str, rate: &str) {
    let (port, count, rate): (u16, usize, u64) = (
        port.parse().unwrap(),
        count.parse().unwrap(),
        rate.parse().unwrap(),
    );
    let mut rng = rand::thread_rng();
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let pool: Vec<Vec<u8>> = (0..4096)
        .map(|i| match kind.split(':').collect::<Vec<_>>().as_slice() {
            ["random"] => {
                let mut p = vec![0u8; 242];
                rng.fill_bytes(&mut p);
                p
            }
            ["spa-mac1"] => {
                let mut p = vec![0x5au8; 242];
                p[0] = 1;
                p[1] = 1;
                p[100] = i as u8;
                p[101] = (i >> 8) as u8;
                p
            }
            ["fwknop-b64", len] => (0..len.parse::<usize>().unwrap())
                .map(|_| B64[rng.gen_range(0..64)])
                .collect(),
            _ => panic!("fwjunk: unknown kind {kind}"),
        })
        .collect();
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    let t0 = Instant::now();
    let mut sent = 0usize;
    while sent < count && t0.elapsed() < Duration::from_secs(60) {
        if rate > 0 {
            let due = t0 + Duration::from_secs_f64(sent as f64 / rate as f64);
            let now = Instant::now();
            if due > now + Duration::from_micros(200) {
                std::thread::sleep(due - now);
            }
        }
        let _ = udp.send_to(&pool[sent % pool.len()], (to, port));
        sent += 1;
    }
    let el = t0.elapsed().as_secs_f64();
    println!("sent {sent} in {el:.3} s ({:.0}/s)", sent as f64 / el);
}
