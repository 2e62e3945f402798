//! The server benchmarks in a namespace lab (run by `bench/server.sh`, as root).
//!
//! ```text
//!   [cli] 10.77.1.2 ──── 10.77.1.1 [srv] spa-server (release), tcp/2222 listener
//!   [atk] 10.77.2.2 ──── 10.77.2.1 [srv]
//! ```
//!
//! `lab bench` sets up the lab and runs the measurements; it re-invokes itself inside a
//! namespace (`lab probe|flood|burst ...`) for the client side. Every loop is bounded in
//! count and time; the namespaces are deleted on exit.
//!
//! `lab fwknop DIR` runs spa and Debian's fwknopd (pcap and `--udp-server`) in the same
//! lab, pinned the same way (module `fwknop`, run by `bench/fwknop.sh`).

mod fwknop;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::OsRng;
use spa_e2e::netns::{link, tcp_listener, Netns};
use spa_keys::profile::Profile;
use spa_proto::{seal, Access, Action, OpenAddr, Request};

const PORT: u16 = 23456;
const SERVICE: u16 = 2222;
/// Users sending the valid-knock bursts, each from its own socket.
const USERS: usize = 64;

fn exe() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

fn sibling(name: &str) -> String {
    // target/release/examples/lab -> target/release/NAME
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join(name)
        .display()
        .to_string()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn knocks(
    bundle: &str,
    src: &str,
    dest: &str,
    action: Action,
    n: usize,
    secs: u32,
) -> Vec<[u8; 242]> {
    let profile = Profile::load(std::path::Path::new(bundle)).unwrap();
    let (_, server) = profile.servers.iter().next().unwrap();
    let src: IpAddr = src.parse().unwrap();
    let req = Request::new(
        action,
        OpenAddr::Ip(src),
        dest.parse().unwrap(),
        &[Access::tcp(SERVICE).unwrap()],
        secs,
    )
    .unwrap();
    let base = now_ms();
    (0..n)
        .map(|i| {
            seal(
                server.secret(&profile),
                &server.card.key,
                server.psk.as_ref(),
                &req,
                base + i as u64,
                &mut OsRng,
            )
            .unwrap()
        })
        .collect()
}

/// Client side of the latency run: knock, then a fresh non-blocking connect every 100 µs
/// until one completes; close; repeat.
fn probe(bundle: &str, rounds: usize) {
    use socket2::{Domain, Socket, Type};
    let target: SocketAddr = format!("10.77.1.1:{SERVICE}").parse().unwrap();
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    let mut lat = Vec::new();
    for _ in 0..rounds {
        let open = knocks(bundle, "10.77.1.2", "10.77.1.1", Action::Open, 1, 30)[0];
        let mut pending: Vec<Socket> = Vec::new();
        let t0 = Instant::now();
        udp.send_to(&open, ("10.77.1.1", PORT)).unwrap();
        let mut next = t0;
        let done = loop {
            let now = Instant::now();
            if now >= next && pending.len() < 4000 {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                s.set_nonblocking(true).unwrap();
                let _ = s.connect(&target.into());
                pending.push(s);
                next += Duration::from_micros(100);
            }
            if let Some(_s) = pending.iter().find(|s| s.peer_addr().is_ok()) {
                break Some(t0.elapsed());
            }
            if now - t0 > Duration::from_secs(2) {
                break None;
            }
            // Sleep between attempts rather than spin: on two cores a spinning probe would
            // take one away from the daemon it measures.
            std::thread::sleep(Duration::from_micros(30));
        };
        drop(pending);
        let close = knocks(bundle, "10.77.1.2", "10.77.1.1", Action::Close, 1, 0)[0];
        std::thread::sleep(Duration::from_millis(2));
        udp.send_to(&close, ("10.77.1.1", PORT)).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        match done {
            Some(d) => lat.push(d.as_secs_f64() * 1e6),
            None => eprintln!("round timed out"),
        }
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let med = lat.get(lat.len() / 2).copied().unwrap_or(f64::NAN);
    println!(
        "latency_us median={med:.0} min={:.0} max={:.0} n={}",
        lat.first().unwrap_or(&f64::NAN),
        lat.last().unwrap_or(&f64::NAN),
        lat.len()
    );
}

/// Sends `count` datagrams at `rate` per second (0 = as fast as possible), bounded to 30 s.
fn pace(packets: &[[u8; 242]], to: &str, rate: u64) {
    let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
    let t0 = Instant::now();
    for (i, p) in packets.iter().enumerate() {
        if rate > 0 {
            // Sleep, never spin: the sender must not take a core from the daemon.
            let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
            let now = Instant::now();
            if due > now + Duration::from_micros(200) {
                std::thread::sleep(due - now);
            }
        }
        let _ = udp.send_to(p, (to, PORT));
        if t0.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    println!(
        "sent {} in {:.3} s",
        packets.len(),
        t0.elapsed().as_secs_f64()
    );
}

struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(ns: &Netns, config: &str) -> Self {
        let mut child = ns
            .cmd(&sibling("spa-server"))
            .args(["--config", config, "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        let d = Self { child, log };
        let t = Instant::now();
        while !d
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("spa-server running"))
        {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "daemon did not start: {:?}",
                d.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
    /// (user, system) CPU seconds of the daemon.
    fn cpu_s(&self) -> (f64, f64) {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        (
            f[11].parse::<f64>().unwrap() / 100.0,
            f[12].parse::<f64>().unwrap() / 100.0,
        )
    }
    fn rss_mib(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        kb / 1024.0
    }
    /// SIGTERM, then the counters from the final log line.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        self.log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.contains("stopped"))
            .cloned()
            .unwrap_or_default()
    }
}

fn setup(dir: &std::path::Path, users: usize) -> (String, String) {
    let etc = dir.join("etc");
    let server = sibling("spa-server");
    let ok = |args: &[&str]| {
        assert!(
            Command::new(&server).args(args).status().unwrap().success(),
            "{args:?}"
        )
    };
    ok(&[
        "init",
        "--dir",
        etc.to_str().unwrap(),
        "--port",
        &PORT.to_string(),
    ]);
    let config = etc.join("server.toml").display().to_string();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(
            "protect = [\"ssh\"]",
            &format!("protect = [\"tcp/{SERVICE}\"]"),
        )
        .replace("per_source_burst = 20", "per_source_burst = 1000000")
        .replace("per_source_per_sec = 5.0", "per_source_per_sec = 1000000.0")
        .replace("dh_per_sec = 20000", "dh_per_sec = 1000000");
    std::fs::write(&config, text).unwrap();
    if users > 0 {
        let gen = Command::new(sibling("examples/gen_users"))
            .args([
                etc.join("users.jsonl").to_str().unwrap(),
                &users.to_string(),
            ])
            .output()
            .unwrap();
        assert!(gen.status.success(), "{gen:?}");
    }
    let bundle = dir.join("bench.bundle").display().to_string();
    ok(&[
        "--config",
        &config,
        "user",
        "provision",
        "bench",
        "--allow",
        &format!("tcp/{SERVICE}"),
        "--endpoint",
        "10.77.1.1",
        "--out",
        &bundle,
    ]);
    (config, bundle)
}

fn bench() {
    let (s, c, a) = (Netns::new("srv"), Netns::new("cli"), Netns::new("atk"));
    link(&s, "s-c", &["10.77.1.1/24"], &c, "c-s", &["10.77.1.2/24"]);
    link(&s, "s-a", &["10.77.2.1/24"], &a, "a-s", &["10.77.2.2/24"]);
    let mut listener = tcp_listener(&s, SERVICE);
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let (config, bundle) = setup(dir.path(), 0);
    for u in 0..USERS {
        let out = dir
            .path()
            .join(format!("u{u}.bundle"))
            .display()
            .to_string();
        let ok = Command::new(sibling("spa-server"))
            .args([
                "--config",
                &config,
                "user",
                "provision",
                &format!("u{u}"),
                "--allow",
                &format!("tcp/{SERVICE}"),
                "--endpoint",
                "10.77.1.1",
                "--out",
                &out,
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    println!(
        "# machine: {} cores; kernel {}",
        std::thread::available_parallelism().unwrap(),
        String::from_utf8_lossy(&Command::new("uname").arg("-r").output().unwrap().stdout).trim()
    );

    let d = Daemon::start(&s, &config);
    println!("rss_idle_mib {:.1}", d.rss_mib());
    let out = c
        .cmd(&exe())
        .args(["probe", &bundle, "51"])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    // Inside the daemon: from the frame's handling to the grant in the kernel.
    let field = |l: &str, f: &str| -> Option<u64> {
        let plain: String = l.chars().filter(|c| !c.is_control()).collect();
        let at = plain.find(&format!("{f}="))?;
        plain[at + f.len() + 1..]
            .split(|c: char| !c.is_ascii_digit())
            .find(|t| !t.is_empty())?
            .parse()
            .ok()
    };
    // The daemon's own account of each grant, from the kernel's receipt of the knock:
    // taken from the ring, verified, at the gate (audit and replay written), applied.
    let fields = ["picked_us", "verified_us", "queued_us", "apply_us"];
    let mut cols: Vec<Vec<u64>> = vec![Vec::new(); fields.len() + 1];
    for l in d
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("grant open"))
    {
        let v: Vec<u64> = fields.iter().filter_map(|f| field(l, f)).collect();
        if v.len() == fields.len() {
            for (c, x) in cols.iter_mut().zip(&v) {
                c.push(*x);
            }
            cols[fields.len()].push(v[1] + v[2] + v[3]);
        }
    }
    let med = |c: &mut Vec<u64>| {
        c.sort_unstable();
        c.get(c.len() / 2).copied().unwrap_or(0)
    };
    if !cols[0].is_empty() {
        let m: Vec<u64> = cols.iter_mut().map(med).collect();
        println!(
            "daemon: kernel->ring pickup median {} us, kernel->verified {} us, verified->gate {} us, helper round trip {} us; kernel->applied {} us (n={})",
            m[0], m[1], m[2], m[3], m[4], cols[0].len()
        );
    }

    // Junk: right length, valid header, wrong mac1 (the worst junk), from the attacker.
    let bad_mac1 = || {
        let out = s
            .cmd(&sibling("spa-server"))
            .args(["--config", &config, "status", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["counters"]["bad_mac1"].as_u64().unwrap_or(0)
    };
    let n_junk = 400_000usize;
    let mac1_0 = bad_mac1();
    let cpu0 = d.cpu_s();
    let out = a
        .cmd(&exe())
        .args(["flood", "10.77.2.1", &n_junk.to_string(), "0"])
        .output()
        .unwrap();
    print!("junk {}", String::from_utf8_lossy(&out.stdout));
    std::thread::sleep(Duration::from_millis(500));
    let cpu1 = d.cpu_s();
    let mac1 = bad_mac1().saturating_sub(mac1_0);
    let (cpu_user, cpu_sys) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);

    // Knock-to-open while the attacker floods junk as fast as it can (bounded: at most
    // 1,500,000 packets, 30 s), which is when the capture threads' interrupt moderation
    // (COALESCE) is at work.
    let mut flood = a
        .cmd(&exe())
        .args(["flood", "10.77.2.1", "1500000", "0"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = c
        .cmd(&exe())
        .args(["probe", &bundle, "21"])
        .output()
        .unwrap();
    print!(
        "during a junk flood: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = flood.kill();
    let _ = flood.wait();

    // Valid knocks at paced rates: what fraction is granted.
    let mut rates = Vec::new();
    for rate in [2_000u64, 5_000, 10_000, 15_000, 20_000] {
        let before = d
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("grant open"))
            .count();
        let n = (rate as usize).min(20_000);
        let out = c
            .cmd(&exe())
            .args([
                "burst",
                dir.path().to_str().unwrap(),
                &USERS.to_string(),
                &n.to_string(),
                &rate.to_string(),
            ])
            .output()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let after = d
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("grant open"))
            .count();
        let granted = after - before;
        println!(
            "valid_rate {rate}/s: sent {n}, granted {granted} ({:.1}%) [{}]",
            100.0 * granted as f64 / n as f64,
            String::from_utf8_lossy(&out.stdout).trim()
        );
        rates.push((rate, granted as f64 / n as f64));
    }
    let line = d.stop();
    let per = |t: f64| t * 1e6 / mac1.max(1) as f64;
    println!(
        "junk_received {mac1} of {n_junk}; daemon cpu {cpu_user:.2} s user + {cpu_sys:.2} s sys => {:.2} us user + {:.2} us sys per junk packet",
        per(cpu_user),
        per(cpu_sys)
    );
    println!("final counters: {line}");
    let best = rates
        .iter()
        .filter(|(_, f)| *f >= 0.99)
        .map(|(r, _)| *r)
        .max()
        .unwrap_or(0);
    println!("valid_knocks_per_s (highest paced rate with >=99% granted): {best}");

    // RSS with 100,000 users.
    let dir2 = tempfile::tempdir().unwrap();
    let (config2, _) = setup(dir2.path(), 100_000);
    let t = Instant::now();
    let d = Daemon::start(&s, &config2);
    println!("startup_with_100k_users_s {:.2}", t.elapsed().as_secs_f64());
    std::thread::sleep(Duration::from_millis(500));
    println!("rss_100k_users_mib {:.1}", d.rss_mib());
    d.stop();
    let _ = listener.kill();
    let _ = listener.wait();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench"] => bench(),
        ["fwknop", dir] => fwknop::compare(dir),
        ["fwprobe", src, arg] => fwknop::probe(src, arg),
        ["fwsend", src, to, rate] => fwknop::send(src, to, rate),
        ["fwjunk", to, port, kind, count, rate] => fwknop::junk(to, port, kind, count, rate),
        ["probe", bundle, rounds] => probe(bundle, rounds.parse().unwrap()),
        ["flood", to, count, rate] => {
            let mut junk = vec![[0x5au8; 242]; 1];
            junk[0][0] = 1;
            junk[0][1] = 1;
            let n: usize = count.parse().unwrap();
            let packets: Vec<[u8; 242]> = (0..n)
                .map(|i| {
                    let mut p = junk[0];
                    p[100] = i as u8;
                    p[101] = (i >> 8) as u8;
                    p
                })
                .collect();
            pace(&packets, to, rate.parse().unwrap());
        }
        ["burst", dir, users, count, rate] => {
            // Each user's knocks come from its own socket (flow), timestamps increasing.
            let (users, count): (usize, usize) = (users.parse().unwrap(), count.parse().unwrap());
            let per = count.div_ceil(users);
            let lists: Vec<Vec<[u8; 242]>> = (0..users)
                .map(|u| {
                    knocks(
                        &format!("{dir}/u{u}.bundle"),
                        "10.77.1.2",
                        "10.77.1.1",
                        Action::Open,
                        per,
                        30,
                    )
                })
                .collect();
            let socks: Vec<UdpSocket> = (0..users)
                .map(|_| UdpSocket::bind("0.0.0.0:0").unwrap())
                .collect();
            let rate: u64 = rate.parse().unwrap();
            let t0 = Instant::now();
            let mut sent = 0usize;
            // Round-robin over users: `i` is the round, the same index in every list.
            #[allow(clippy::needless_range_loop)]
            'outer: for i in 0..per {
                for u in 0..users {
                    if sent == count || t0.elapsed() > Duration::from_secs(30) {
                        break 'outer;
                    }
                    let due = t0 + Duration::from_secs_f64(sent as f64 / rate as f64);
                    let now = Instant::now();
                    if due > now + Duration::from_micros(200) {
                        std::thread::sleep(due - now);
                    }
                    let _ = socks[u].send_to(&lists[u][i], ("10.77.1.1", PORT));
                    sent += 1;
                }
            }
            println!(
                "sent {sent} in {:.3} s from {users} users",
                t0.elapsed().as_secs_f64()
            );
        }
        _ => {
            eprintln!("usage: lab bench | lab fwknop DIR   (as root; see bench/server.sh, bench/fwknop.sh)");
            std::process::exit(2);
        }
    }
}
