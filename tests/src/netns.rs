//! Network namespaces for tests, in the manner of the kernel's WireGuard selftest:
//! unique names, interfaces created directly inside the namespaces (never in the host's
//! own), and cleanup of exactly what was made, on success, failure or panic.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether privileged tests can run here. Outside CI a missing privilege is a loud skip;
/// under `CI=true` it is a failure.
pub fn privileged(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let tools = ["ip", "nft", "python3", "nmap"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if root && tools {
        return true;
    }
    let why = if root {
        "ip, nft or python3 is missing"
    } else {
        "not root"
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: privileged test cannot run under CI ({why}); scripts/test.sh installs the tools and CI runs as root");
    }
    eprintln!(
        "\n!!!!!!!! SKIPPED {test}: {why}. This privileged test runs in CI (as root). !!!!!!!!\n"
    );
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace this test made; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// `ip netns add spa-e2e-<pid>-<n>-<role>` with loopback up.
    pub fn new(role: &str) -> Self {
        let name = format!(
            "spa-e2e-{}-{}-{role}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a command inside the namespace; panics on failure.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.cmd(args[0]).args(&args[1..]).output().expect("spawn");
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs a command inside the namespace; returns whether it succeeded.
    pub fn try_run(&self, args: &[&str]) -> bool {
        self.cmd(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts a long-running command inside the namespace.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args[0])
            .args(&args[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    }

    /// The namespace's whole ruleset, as nft prints it.
    pub fn ruleset(&self) -> String {
        String::from_utf8_lossy(&self.run(&["nft", "list", "ruleset"]).stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Joins `a` and `b` with a veth pair created inside `a` (its peer moved straight into
/// `b`), with IPv4 /24 and IPv6 /64 addresses `a_addr`/`b_addr` on each side.
pub fn link(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) {
    a.run(&[
        "ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    for (ns, ifname, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            ns.run(&["ip", "addr", "add", addr, "dev", ifname, "nodad"]);
        }
        ns.run(&["ip", "link", "set", ifname, "up"]);
    }
}

/// A TCP connection from `ns` to `host:port` completes within `timeout_s` (python3,
/// so the probe itself adds nothing to install).
pub fn tcp_connects(ns: &Netns, host: &str, port: u16, timeout_s: f64) -> bool {
    let code = format!(
        "import socket,sys\ntry:\n s=socket.create_connection(('{host}',{port}),timeout={timeout_s})\n s.close()\nexcept Exception:\n sys.exit(1)"
    );
    ns.try_run(&["python3", "-c", &code])
}

/// Sends `bytes` as one UDP datagram from `ns` to `host:port`, optionally from `src`.
pub fn send_udp(ns: &Netns, host: &str, port: u16, bytes: &[u8]) {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let family = if host.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let code = format!(
        "import socket\ns=socket.socket(socket.{family},socket.SOCK_DGRAM)\ns.sendto(bytes.fromhex('{hex}'),('{host}',{port}))"
    );
    ns.run(&["python3", "-c", &code]);
}

/// A TCP echo server on `port` (all addresses, IPv4 and IPv6), a thread per connection.
pub fn tcp_listener(ns: &Netns, port: u16) -> Child {
    let code = format!(
        "import socket,threading\n\
         def echo(c):\n while True:\n  d=c.recv(4096)\n  if not d: break\n  c.sendall(d)\n c.close()\n\
         s=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\n\
         s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('::',{port}))\ns.listen(64)\n\
         while True:\n c,_=s.accept()\n threading.Thread(target=echo,args=(c,),daemon=True).start()"
    );
    ns.spawn(&["python3", "-c", &code])
}

/// Connects now and exchanges bytes after `after_s` seconds over the same connection:
/// succeeds only if an established session outlives whatever happened meanwhile.
pub fn session_survives(ns: &Netns, host: &str, port: u16, after_s: f64) -> Child {
    let code = format!(
        "import socket,sys,time\ns=socket.create_connection(('{host}',{port}),timeout=2)\n\
         time.sleep({after_s})\ns.sendall(b'still here')\ns.settimeout(2)\n\
         sys.exit(0 if s.recv(64)==b'still here' else 1)"
    );
    ns.cmd("python3")
        .args(["-c", &code])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn")
}

/// nmap's verdict on one port (`open|filtered`, `closed`, `filtered`...), from `ns`.
pub fn nmap_state(ns: &Netns, scan: &str, host: &str, port: u16) -> String {
    let out = ns.run(&[
        "nmap",
        "-n",
        "-Pn",
        scan,
        "--max-retries",
        "1",
        "--host-timeout",
        "30s",
        "-p",
        &port.to_string(),
        host,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with(&format!("{port}/")))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("missing")
        .to_string()
}
