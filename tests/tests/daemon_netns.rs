//! spa-server for real: AF_PACKET capture and nftables in network namespaces this test
//! makes (and always deletes).
//!
//! ```text
//!   [cli] c-s 10.77.1.2 fd77:1::2 ──── s-c 10.77.1.1 fd77:1::1 [srv] spa-server, tcp/2222 listener
//!   [atk] a-s 10.77.2.2           ──── s-a 10.77.2.1           [srv]
//! ```

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::OsRng;
use spa_e2e::daemon::{in_set, until, wait_listening, Daemon};
use spa_e2e::netns::{
    link, nmap_state, privileged, send_udp, session_survives, tcp_connects, tcp_listener, Netns,
};
use spa_e2e::server::ServerFiles;
use spa_e2e::{bin, run};
use spa_keys::profile::Profile;
use spa_proto::{seal, Access, Action, OpenAddr, Request};

const PORT: u16 = 23456;
const SERVICE: u16 = 2222;

/// Seconds left on `addr`'s elements (one entry per element in the set).
fn expires(ns: &Netns, addr: &str) -> Vec<u64> {
    let set = if addr.contains(':') {
        "grants6"
    } else {
        "grants4"
    };
    let out = ns.run(&["nft", "-j", "list", "set", "inet", "spa", set]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut left = Vec::new();
    for item in v["nftables"].as_array().unwrap() {
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            if e["elem"]["val"]["concat"][0] == addr {
                left.push(e["elem"]["expires"].as_u64().unwrap_or(0));
            }
        }
    }
    left
}

fn sealed(bundle: &str, src: &str, dest: &str, secs: u32) -> Vec<u8> {
    let profile = Profile::load(std::path::Path::new(bundle)).unwrap();
    let (_, server) = profile.servers.iter().next().unwrap();
    let src: IpAddr = src.parse().unwrap();
    let req = Request::new(
        Action::Open,
        OpenAddr::Ip(src),
        dest.parse().unwrap(),
        &[Access::tcp(SERVICE).unwrap()],
        secs,
    )
    .unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    seal(
        server.secret(&profile),
        &server.card.key,
        server.psk.as_ref(),
        &req,
        now,
        &mut OsRng,
    )
    .unwrap()
    .to_vec()
}

fn host_ruleset() -> String {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn knock_opens_for_the_knocker_only_expires_and_survives_kill_9() {
    if !privileged("knock_opens_for_the_knocker_only_expires_and_survives_kill_9") {
        return;
    }
    let host_before = host_ruleset();
    let (s, c, a) = (Netns::new("srv"), Netns::new("cli"), Netns::new("atk"));
    link(
        &s,
        "s-c",
        &["10.77.1.1/24", "fd77:1::1/64"],
        &c,
        "c-s",
        &["10.77.1.2/24", "fd77:1::2/64"],
    );
    link(&s, "s-a", &["10.77.2.1/24"], &a, "a-s", &["10.77.2.2/24"]);
    // A foreign table that must stay byte-identical.
    s.run(&["nft", "add", "table", "inet", "other"]);
    s.run(&[
        "nft",
        "add",
        "chain",
        "inet",
        "other",
        "c",
        "{ type filter hook input priority 10; policy accept; }",
    ]);
    s.run(&[
        "nft", "add", "rule", "inet", "other", "c", "tcp", "dport", "9999", "counter", "accept",
    ]);
    let other_before =
        String::from_utf8_lossy(&s.run(&["nft", "list", "table", "inet", "other"]).stdout)
            .into_owned();

    let server = ServerFiles::init(PORT, SERVICE);
    let (config, home) = (server.config.clone(), server.home());
    let bundle = server.provision("alice", &format!("tcp/{SERVICE}"), "10.77.1.1");

    let mut listener = tcp_listener(&s, SERVICE);
    wait_listening(&s, SERVICE);
    let daemon = Daemon::start(&s, &config);

    // The SPA port never answers: nmap cannot tell it from a silently dropped port, while
    // an unprotected closed port answers with ICMP; the protected service is filtered.
    assert_eq!(nmap_state(&a, "-sU", "10.77.2.1", PORT), "open|filtered");
    assert_eq!(nmap_state(&a, "-sU", "10.77.2.1", PORT + 1), "closed");
    assert_eq!(nmap_state(&a, "-sS", "10.77.2.1", SERVICE), "filtered");

    // Closed to everyone before a knock.
    assert!(
        !tcp_connects(&c, "10.77.1.1", SERVICE, 1.0),
        "open before any knock"
    );
    assert!(!tcp_connects(&a, "10.77.2.1", SERVICE, 1.0));

    // The real client, one datagram: open for 4 s, for the client's address only.
    let knocked_at = Instant::now();
    let out = c.run(&[
        bin("spa-client").to_str().unwrap(),
        "--key",
        &bundle,
        "10.77.1.1",
        &format!("tcp/{SERVICE}"),
        "--for",
        "4s",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("knocked"),
        "{out:?}"
    );
    until(
        "knock never opened the port",
        Duration::from_secs(3),
        || tcp_connects(&c, "10.77.1.1", SERVICE, 0.5),
    );
    assert!(in_set(&s, "10.77.1.2"));
    assert!(
        !tcp_connects(&a, "10.77.2.1", SERVICE, 1.0),
        "the attacker must stay closed out"
    );
    // A session opened during the grant keeps working after the grant expires.
    let mut session = session_survives(&c, "10.77.1.1", SERVICE, 4.5);
    // It expires on time (the kernel's set timeout).
    std::thread::sleep(
        Duration::from_secs(4).saturating_sub(knocked_at.elapsed()) + Duration::from_millis(700),
    );
    assert!(!in_set(&s, "10.77.1.2"), "grant outlived its 4 s");
    assert!(!tcp_connects(&c, "10.77.1.1", SERVICE, 1.0));
    assert!(
        session.wait().unwrap().success(),
        "an established session must survive expiry"
    );

    // A repeated knock refreshes the one element; a close knock removes it at once.
    let client = bin("spa-client");
    let knock = |extra: &[&str]| {
        let mut args = vec![
            client.to_str().unwrap(),
            "-q",
            "--key",
            &bundle,
            "10.77.1.1",
        ];
        let service = format!("tcp/{SERVICE}");
        args.push(&service);
        args.extend_from_slice(extra);
        c.run(&args);
    };
    knock(&["--for", "3s"]);
    until("knock never opened", Duration::from_secs(3), || {
        in_set(&s, "10.77.1.2")
    });
    std::thread::sleep(Duration::from_millis(5));
    knock(&["--for", "10m"]);
    until("refresh never applied", Duration::from_secs(3), || {
        expires(&s, "10.77.1.2").first().is_some_and(|&e| e > 500)
    });
    assert_eq!(
        expires(&s, "10.77.1.2").len(),
        1,
        "a refresh must not duplicate the element"
    );
    assert!(tcp_connects(&c, "10.77.1.1", SERVICE, 1.0));
    knock(&["--close"]);
    until("close never applied", Duration::from_secs(3), || {
        !in_set(&s, "10.77.1.2")
    });
    assert!(!tcp_connects(&c, "10.77.1.1", SERVICE, 1.0));

    // IPv6.
    send_udp(
        &c,
        "fd77:1::1",
        PORT,
        &sealed(&bundle, "fd77:1::2", "fd77:1::1", 3),
    );
    until("IPv6 knock never opened", Duration::from_secs(3), || {
        tcp_connects(&c, "fd77:1::1", SERVICE, 0.5)
    });
    assert!(in_set(&s, "fd77:1::2"));

    // A captured knock, replayed: from the attacker now, and after kill -9 and a restart.
    let captured = sealed(&bundle, "10.77.1.2", "10.77.1.1", 2);
    send_udp(&c, "10.77.1.1", PORT, &captured);
    until("knock never opened", Duration::from_secs(3), || {
        in_set(&s, "10.77.1.2")
    });
    send_udp(&a, "10.77.2.1", PORT, &captured);
    daemon.wait_log("replay", Duration::from_secs(3));
    assert!(!in_set(&s, "10.77.2.2"));
    until("2 s grant never expired", Duration::from_secs(5), || {
        !in_set(&s, "10.77.1.2")
    });
    daemon.kill9();
    assert!(
        s.try_run(&["nft", "list", "table", "inet", "spa"]),
        "the table stays after the daemon dies"
    );
    assert!(
        !tcp_connects(&c, "10.77.1.1", SERVICE, 1.0),
        "closed while the daemon is down"
    );
    let daemon = Daemon::start(&s, &config);
    send_udp(&c, "10.77.1.1", PORT, &captured);
    daemon.wait_log("replay", Duration::from_secs(3));
    assert!(
        !in_set(&s, "10.77.1.2"),
        "a replay after restart opened the port"
    );
    assert!(!tcp_connects(&c, "10.77.1.1", SERVICE, 1.0));

    // Revoked while the server runs: the next knock opens nothing.
    let r = run(
        "spa-server",
        &["--config", &config, "user", "revoke", "alice"],
        home,
    );
    assert!(r.ok, "{r:?}");
    daemon.wait_log("users store reloaded", Duration::from_secs(5));
    send_udp(
        &c,
        "10.77.1.1",
        PORT,
        &sealed(&bundle, "10.77.1.2", "10.77.1.1", 3),
    );
    daemon.wait_log("revoked", Duration::from_secs(3));
    assert!(!in_set(&s, "10.77.1.2"), "a revoked key opened the port");
    let r = run(
        "spa-server",
        &["--config", &config, "user", "unrevoke", "alice"],
        home,
    );
    assert!(r.ok, "{r:?}");
    daemon.wait_log_n("users store reloaded", 2, Duration::from_secs(5));

    // kill -9 while a grant is open: the kernel still closes it on time.
    send_udp(
        &c,
        "10.77.1.1",
        PORT,
        &sealed(&bundle, "10.77.1.2", "10.77.1.1", 3),
    );
    until("knock never opened", Duration::from_secs(3), || {
        tcp_connects(&c, "10.77.1.1", SERVICE, 0.5)
    });
    let opened = Instant::now();
    // The daemon's log never holds a secret.
    let secrets: Vec<String> = std::fs::read_to_string(&bundle)
        .unwrap()
        .split('"')
        .filter(|w| w.starts_with("SPA-"))
        .chain(
            std::fs::read_to_string(server.etc("server.key"))
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("SPA-")),
        )
        .map(str::to_owned)
        .collect();
    assert!(secrets.len() >= 2);
    for line in daemon.lines() {
        assert!(
            secrets.iter().all(|s| !line.contains(&s[12..40])),
            "secret in the log: {line}"
        );
    }
    daemon.kill9();
    assert!(
        tcp_connects(&c, "10.77.1.1", SERVICE, 1.0),
        "grant survives the daemon"
    );
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(opened.elapsed()) + Duration::from_millis(800),
    );
    assert!(!in_set(&s, "10.77.1.2"));
    assert!(
        !tcp_connects(&c, "10.77.1.1", SERVICE, 1.0),
        "grant outlived the dead daemon"
    );

    // The audit log holds every decision, across two kill -9s, and its chain verifies.
    let audit = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str(), "audit"];
        all.extend_from_slice(args);
        let r = run("spa-server", &all, home);
        assert!(r.ok, "{r:?}");
        r.stdout
    };
    let records: Vec<serde_json::Value> = audit(&["--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |decision: &str, reason: Option<&str>, src: Option<&str>| {
        records
            .iter()
            .filter(|r| {
                r["decision"] == decision
                    && reason.is_none_or(|x| r["reason"] == x)
                    && src.is_none_or(|x| r["src"] == x)
            })
            .count()
    };
    assert_eq!(count("started", None, None), 2, "{records:#?}");
    assert_eq!(count("granted", None, Some("fd77:1::2")), 1);
    // 4 s, 3 s, the captured 2 s knock, and the one after unrevoke; plus one refresh
    // (10 min) and one close.
    assert_eq!(count("granted", None, Some("10.77.1.2")), 4);
    assert_eq!(count("refreshed", None, Some("10.77.1.2")), 1);
    assert_eq!(count("closed", None, Some("10.77.1.2")), 1);
    assert_eq!(count("rejected", Some("replay"), Some("10.77.2.2")), 1);
    assert_eq!(count("rejected", Some("replay"), Some("10.77.1.2")), 1);
    assert_eq!(count("rejected", Some("revoked"), Some("10.77.1.2")), 1);
    // At least the 4 s grant's expiry (others may fall due just as the daemon is killed).
    assert!(
        records
            .iter()
            .any(|r| r["decision"] == "expired" && r["addr"] == "10.77.1.2"),
        "{records:#?}"
    );
    let g = records
        .iter()
        .find(|r| r["decision"] == "granted" && r["src"] == "10.77.1.2")
        .unwrap();
    assert_eq!(g["user"], "alice");
    assert_eq!(g["addr"], "10.77.1.2");
    assert_eq!(g["granted"][0], format!("tcp/{SERVICE}"));
    assert_eq!(g["duration_s"], 4, "the first, `--for 4s`");
    assert_eq!(g["requested_s"], 4);
    let table = audit(&[
        "--user",
        "alice",
        "--decision",
        "rejected",
        "--source",
        "10.77.2.2",
    ]);
    assert_eq!(table.lines().count(), 2, "header and one row: {table}");
    assert!(table.contains("replay"), "{table}");
    let key = server.etc("audit-verify.key").display().to_string();
    let verified = audit(&["--verify", "--key", &key]);
    assert!(verified.contains("chain intact"), "{verified}");
    let all_audit: String = std::fs::read_dir(server.etc("audit"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    for s in &secrets {
        assert!(!all_audit.contains(&s[12..40]), "secret in the audit log");
    }

    // The table outlives the daemon until the admin removes it.
    assert!(s.try_run(&["nft", "list", "table", "inet", "spa"]));
    let r = s.run(&[
        bin("spa-server").to_str().unwrap(),
        "--config",
        &config,
        "firewall",
        "remove",
    ]);
    assert!(String::from_utf8_lossy(&r.stdout).contains("removed table inet spa"));
    assert!(!s.try_run(&["nft", "list", "table", "inet", "spa"]));

    // Nothing outside our table changed, here or on the host.
    let other_after =
        String::from_utf8_lossy(&s.run(&["nft", "list", "table", "inet", "other"]).stdout)
            .into_owned();
    assert_eq!(other_before, other_after);
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(
        host_before,
        host_ruleset(),
        "the host's own ruleset changed"
    );
}

/// `forward = true`: a service behind the host (a container, a VM) is gated on the forward
/// hook like the host's own services, and switching it off again removes that chain.
///
/// ```text
///   [cli] c-s 10.78.1.2 ── s-c 10.78.1.1 [srv] spa-server, routes ── s-b 10.78.3.1 ── b-s 10.78.3.2 [back] tcp/2222
///   [atk] a-s 10.78.2.2 ── s-a 10.78.2.1 [srv]
/// ```
#[test]
fn forward_hook_gates_a_service_behind_the_host() {
    if !privileged("forward_hook_gates_a_service_behind_the_host") {
        return;
    }
    let (s, c, a, b) = (
        Netns::new("fsrv"),
        Netns::new("fcli"),
        Netns::new("fatk"),
        Netns::new("fback"),
    );
    link(&s, "s-c", &["10.78.1.1/24"], &c, "c-s", &["10.78.1.2/24"]);
    link(&s, "s-a", &["10.78.2.1/24"], &a, "a-s", &["10.78.2.2/24"]);
    link(&s, "s-b", &["10.78.3.1/24"], &b, "b-s", &["10.78.3.2/24"]);
    s.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    c.run(&["ip", "route", "add", "10.78.3.0/24", "via", "10.78.1.1"]);
    a.run(&["ip", "route", "add", "10.78.3.0/24", "via", "10.78.2.1"]);
    b.run(&["ip", "route", "add", "default", "via", "10.78.3.1"]);

    let server = ServerFiles::init(PORT, SERVICE);
    server.edit("forward = false", "forward = true");
    let config = server.config.clone();
    let bundle = server.provision("alice", &format!("tcp/{SERVICE}"), "10.78.1.1");
    let mut listener = tcp_listener(&b, SERVICE);
    wait_listening(&b, SERVICE);
    let daemon = Daemon::start(&s, &config);
    assert!(
        !tcp_connects(&c, "10.78.3.2", SERVICE, 1.0),
        "the service behind the host is open before a knock"
    );
    send_udp(
        &c,
        "10.78.1.1",
        PORT,
        &sealed(&bundle, "10.78.1.2", "10.78.1.1", 30),
    );
    until(
        "the knock never opened the forwarded service",
        Duration::from_secs(3),
        || tcp_connects(&c, "10.78.3.2", SERVICE, 0.5),
    );
    assert!(
        !tcp_connects(&a, "10.78.3.2", SERVICE, 1.0),
        "the attacker reaches the service behind the host"
    );
    daemon.kill9();

    // Off again: the next start removes our forward chain, and the service is reachable
    // through the host as before spa (the admin chose not to gate it).
    server.edit("forward = true", "forward = false");
    assert!(s.try_run(&["nft", "list", "chain", "inet", "spa", "forward"]));
    let daemon = Daemon::start(&s, &config);
    assert!(!s.try_run(&["nft", "list", "chain", "inet", "spa", "forward"]));
    assert!(tcp_connects(&a, "10.78.3.2", SERVICE, 1.0));
    drop(daemon);
    let _ = listener.kill();
    let _ = listener.wait();
}
