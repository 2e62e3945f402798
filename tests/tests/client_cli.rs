//! The real spa-client on loopback: one datagram of the fixed length that the server's
//! verifier opens, clear errors and exit codes, --dry-run, --wait and --proxy.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::OsRng;
use spa_e2e::{bin, run};
use spa_keys::card::Card;
use spa_keys::profile::Profile;
use spa_proto::*;

struct Lab {
    dir: tempfile::TempDir,
    server: ServerSecret,
    udp: UdpSocket,
    profile: String,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerSecret::generate(&mut OsRng);
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let profile = dir.path().join("me.spa").display().to_string();
        let lab = Self {
            dir,
            server,
            udp,
            profile,
        };
        assert!(lab.client(&["keygen"]).ok);
        let card = Card {
            key: lab.server.public(),
            host: "127.0.0.1".into(),
            port: lab.udp.local_addr().unwrap().port(),
        };
        assert!(lab.client(&["add-server", "lo", &card.to_string()]).ok);
        lab
    }
    fn client(&self, args: &[&str]) -> spa_e2e::Run {
        let mut all = vec!["--key", self.profile.as_str()];
        all.extend_from_slice(args);
        run("spa-client", &all, self.dir.path())
    }
    fn datagrams(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = self.udp.recv(&mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }
    fn open(&self, knock: &[u8]) -> Result<Request, Reject> {
        self.open_from("127.0.0.1", false, knock)
    }
    fn open_from(&self, src: &str, nat: bool, knock: &[u8]) -> Result<Request, Reject> {
        let me = Profile::load(std::path::Path::new(&self.profile))
            .unwrap()
            .secret
            .public();
        let policy = Arc::new(Policy {
            allowed: (1..=65535).map(|p| Access::tcp(p).unwrap()).collect(),
            max_duration_s: 3600,
            nat_allowed: nat,
        });
        let dir = HashMap::from([(
            me,
            ClientEntry::new(&self.server, me, None, policy, ()).unwrap(),
        )]);
        let v = Verifier::new(self.server.clone(), VerifierConfig::default());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        v.open(src.parse().unwrap(), now, knock, &dir, &HashMap::new())
            .map(|o| o.payload.request)
            .map_err(|r| r.reason)
    }
}

#[test]
fn one_datagram_of_the_fixed_length_that_the_server_opens() {
    let lab = Lab::new();
    let r = lab.client(&["lo", "ssh", "tcp/8443", "--for", "10m"]);
    assert!(r.ok, "{r:?}");
    assert!(
        r.stdout.contains("knocked lo") && r.stdout.contains("tcp/22,tcp/8443"),
        "{}",
        r.stdout
    );
    let got = lab.datagrams();
    assert_eq!(got.len(), 1, "exactly one datagram");
    assert_eq!(got[0].len(), KNOCK_LEN);
    let req = lab.open(&got[0]).unwrap();
    assert_eq!(
        req.access(),
        [Access::tcp(22).unwrap(), Access::tcp(8443).unwrap()]
    );
    assert_eq!(req.duration_s(), 600);
    assert_eq!(req.open_addr(), OpenAddr::Ip("127.0.0.1".parse().unwrap()));
    // -q prints nothing; a bare port means tcp/PORT; --close asks to close.
    let r = lab.client(&["-q", "lo", "2222", "--close"]);
    assert!(r.ok && r.stdout.is_empty(), "{r:?}");
    let got = lab.datagrams();
    let req = lab.open(&got[0]).unwrap();
    assert_eq!(
        (req.access()[0], req.action()),
        (Access::tcp(2222).unwrap(), Action::Close)
    );
}

#[test]
fn dry_run_sends_nothing_and_never_prints_the_key() {
    let lab = Lab::new();
    let r = lab.client(&["lo", "ssh", "--dry-run"]);
    assert!(r.ok && r.stdout.contains("would send 242 bytes"), "{r:?}");
    assert!(lab.datagrams().is_empty());
    let text = std::fs::read_to_string(&lab.profile).unwrap();
    let secret = text
        .split('"')
        .find(|w| w.starts_with("SPA-CLIENT-SECRET-KEY-1"))
        .unwrap();
    assert!(!r.stdout.contains(&secret[23..50]) && !r.stderr.contains(&secret[23..50]));
}

#[test]
fn errors_say_what_to_do() {
    let lab = Lab::new();
    let cases: [(&[&str], &str); 5] = [
        (&["nowhere", "ssh"], "add-server"),
        (&["lo", "gopher"], "unknown service"),
        (&["lo"], "name at least one service"),
        (&["lo", "tcp/0"], "tcp/PORT"),
        (&["lo", "ssh", "--for", "forever"], "not a duration"),
    ];
    for (args, needle) in cases {
        let r = lab.client(args);
        assert_eq!(r.code, Some(1), "{args:?}: {r:?}");
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    }
    let missing = lab.dir.path().join("none.spa").display().to_string();
    let r = run(
        "spa-client",
        &["--key", &missing, "lo", "ssh"],
        lab.dir.path(),
    );
    assert!(
        r.code == Some(1) && r.stderr.contains("spa-client keygen"),
        "{r:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&lab.profile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = lab.client(&["lo", "ssh"]);
    assert!(r.code == Some(1) && r.stderr.contains("chmod 600"), "{r:?}");
    let r = run("spa-client", &["--bogus"], lab.dir.path());
    assert_eq!(r.code, Some(2), "usage errors exit 2: {r:?}");
    assert!(lab.datagrams().is_empty(), "no error path sends anything");
}

#[test]
fn wait_and_resend() {
    let lab = Lab::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let r = lab.client(&["lo", &format!("tcp/{port}"), "--wait=5s"]);
    assert!(r.ok, "{r:?}");
    assert_eq!(lab.datagrams().len(), 1, "open at once: no resend");
    drop(listener);
    let r = lab.client(&["lo", &format!("tcp/{port}"), "--wait=2s"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stderr.contains("did not open within 2s"), "{}", r.stderr);
    let got = lab.datagrams();
    assert_eq!(got.len(), 2, "the knock is re-sent once");
    assert_ne!(got[0], got[1], "the resend is a fresh knock");
    assert!(lab.open(&got[1]).is_ok());
}

#[test]
fn proxy_relays_and_keeps_stdout_clean() {
    let lab = Lab::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        c.write_all(&buf[..n]).unwrap();
    });
    let mut child = Command::new(bin("spa-client"))
        .args(["--key", &lab.profile, "--proxy", "127.0.0.1", &port])
        .env("HOME", lab.dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SSH-2.0-test\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout, b"SSH-2.0-test\r\n",
        "stdout carries only the relayed bytes"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("knocked"));
    assert_eq!(lab.datagrams().len(), 1);
}

#[test]
fn host_by_resolved_address_and_help() {
    let lab = Lab::new();
    // The card says 127.0.0.1; "localhost" resolves to it.
    let r = lab.client(&["-4", "localhost", "ssh"]);
    assert!(r.ok, "{r:?}");
    assert_eq!(lab.datagrams().len(), 1);
    let help = run("spa-client", &["--help"], lab.dir.path());
    assert!(help.ok);
    for needle in [
        "Usage: spa-client",
        "--key",
        "--for",
        "--wait",
        "--proxy",
        "--nat",
        "--source-ip",
        "--dry-run",
        "keygen",
        "add-server",
    ] {
        assert!(
            help.stdout.contains(needle),
            "help lacks {needle}: {}",
            help.stdout
        );
    }
    let help = run("spa-server", &["--help"], lab.dir.path());
    for needle in [
        "init",
        "card",
        "check",
        "rotate-key",
        "user",
        "run",
        "firewall",
    ] {
        assert!(help.stdout.contains(needle), "help lacks {needle}");
    }
}

#[test]
fn install_target_puts_binaries_man_pages_and_completions_in_place() {
    let dest = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("DESTDIR", dest.path())
        .env("PREFIX", "/usr")
        .env("SPA_PROFILE", "debug")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dest.path().join("usr");
    for f in [
        "bin/spa-server",
        "bin/spa-client",
        "share/man/man1/spa-client.1",
        "share/man/man1/spa-server-user-provision.1",
        "share/bash-completion/completions/spa-client",
        "share/zsh/site-functions/_spa-server",
        "share/fish/vendor_completions.d/spa-client.fish",
    ] {
        assert!(root.join(f).exists(), "{f} not installed");
    }
    let page = std::fs::read_to_string(root.join("share/man/man1/spa-client.1")).unwrap();
    assert!(
        page.contains(".TH spa-client") && page.contains("proxy"),
        "man page content"
    );
    let completion =
        std::fs::read_to_string(root.join("share/bash-completion/completions/spa-client")).unwrap();
    assert!(completion.contains("--wait"));
    // The unit, naming the binary where PREFIX put it, and /etc/spa for root only.
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/spa-server.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/spa-server run --config /etc/spa/server.toml\n")
            && !unit.contains("/usr/local/"),
        "{unit}"
    );
    use std::os::unix::fs::PermissionsExt;
    let etc = std::fs::metadata(dest.path().join("etc/spa")).unwrap();
    assert_eq!(etc.permissions().mode() & 0o7777, 0o700);
}

#[test]
fn source_ip_and_nat_mode() {
    let lab = Lab::new();
    // --source-ip: sent from that address, and it names that address.
    let r = lab.client(&["lo", "ssh", "--source-ip", "127.0.0.2"]);
    assert!(r.ok, "{r:?}");
    let mut buf = [0u8; 2048];
    let (n, from) = lab.udp.recv_from(&mut buf).unwrap();
    assert_eq!(from.ip().to_string(), "127.0.0.2");
    let req = lab.open_from("127.0.0.2", false, &buf[..n]).unwrap();
    assert_eq!(req.open_addr(), OpenAddr::Ip("127.0.0.2".parse().unwrap()));
    assert_eq!(
        lab.open_from("127.0.0.1", false, &buf[..n]),
        Err(Reject::AddressMismatch)
    );
    // --nat: the address it arrives from, only for users allowed NAT mode.
    let r = lab.client(&["lo", "ssh", "--nat"]);
    assert!(r.ok && r.stdout.contains("NAT mode"), "{r:?}");
    let got = lab.datagrams();
    assert_eq!(
        lab.open_from("127.0.0.1", true, &got[0])
            .unwrap()
            .open_addr(),
        OpenAddr::FromPacket
    );
    assert_eq!(
        lab.open_from("127.0.0.1", false, &got[0]),
        Err(Reject::NatNotAllowed)
    );
    assert!(
        lab.client(&["lo", "ssh", "--nat", "--source-ip", "127.0.0.2"])
            .code
            == Some(2),
        "they conflict"
    );
}

#[test]
fn unresolvable_and_unreachable_hosts_are_clear_errors() {
    let lab = Lab::new();
    let key = lab.server.public();
    let add = |name: &str, host: &str| {
        let card = Card {
            key,
            host: host.into(),
            port: 23456,
        };
        assert!(lab.client(&["add-server", name, &card.to_string()]).ok);
    };
    add("nowhere", "nowhere.invalid");
    let r = lab.client(&["nowhere", "ssh"]);
    assert!(
        r.code == Some(1) && r.stderr.contains("cannot resolve nowhere.invalid"),
        "{r:?}"
    );
    if !spa_e2e::netns::privileged("unresolvable_and_unreachable_hosts_are_clear_errors") {
        return;
    }
    // A namespace with no route at all: the send fails, and the client says so.
    add("far", "192.0.2.1");
    let ns = spa_e2e::netns::Netns::new("unreach");
    for extra in [&[][..], &["--wait=1s"][..]] {
        let mut cmd = ns.cmd(bin("spa-client").to_str().unwrap());
        cmd.args(["--key", &lab.profile, "far", "ssh"]).args(extra);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert!(
            stderr.contains("host unreachable: 192.0.2.1:23456"),
            "{extra:?}: {stderr}"
        );
    }
}
