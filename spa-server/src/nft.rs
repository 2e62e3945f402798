//! Our nftables table, created or updated at start with one atomic `nft -f -` transaction
//! (per-grant changes go over netlink: [`crate::netlink`]).
//!
//! Grants are elements of sets with `flags timeout`, keyed by address · protocol · port,
//! so the kernel closes them on time even if the daemon dies. The table is left in place
//! when the daemon stops: protected services stay closed.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::process::{Command, Stdio};

use spa_proto::{Access, Proto};

/// What our table protects and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// Table name (`inet NAME`).
    pub table: String,
    /// The SPA port (dropped, so nothing ever answers on it).
    pub spa_port: u16,
    /// Services closed unless granted.
    pub protect: Vec<Access>,
    /// Also gate the forward hook.
    pub forward: bool,
}

fn proto(a: Access) -> &'static str {
    match a.proto() {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    }
}

/// The nft script that creates or updates our table. Idempotent: sets (and the grants in
/// them) survive; chains are flushed and refilled.
pub fn ruleset(c: &TableConfig) -> String {
    let t = &c.table;
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {t}");
    let _ = writeln!(
        s,
        "add set inet {t} grants4 {{ type ipv4_addr . inet_proto . inet_service; flags timeout; }}"
    );
    let _ = writeln!(
        s,
        "add set inet {t} grants6 {{ type ipv6_addr . inet_proto . inet_service; flags timeout; }}"
    );
    let hooks: &[&str] = if c.forward {
        &["input", "forward"]
    } else {
        &["input"]
    };
    for hook in hooks {
        let _ = writeln!(s, "add chain inet {t} {hook} {{ type filter hook {hook} priority filter; policy accept; }}");
        let _ = writeln!(s, "flush chain inet {t} {hook}");
        let _ = writeln!(
            s,
            "add rule inet {t} {hook} ct state established,related accept"
        );
        let _ = writeln!(
            s,
            "add rule inet {t} {hook} ip saddr . meta l4proto . th dport @grants4 accept"
        );
        let _ = writeln!(
            s,
            "add rule inet {t} {hook} ip6 saddr . meta l4proto . th dport @grants6 accept"
        );
        for a in &c.protect {
            let p = proto(*a);
            let _ = writeln!(
                s,
                "add rule inet {t} {hook} meta l4proto {p} {p} dport {} drop",
                a.port()
            );
        }
    }
    let _ = writeln!(s, "add rule inet {t} input udp dport {} drop", c.spa_port);
    if !c.forward {
        // Gating forward was switched off: take away a forward chain an earlier start
        // made (adding first makes the delete valid whether or not it exists).
        let _ = writeln!(s, "add chain inet {t} forward {{ type filter hook forward priority filter; policy accept; }}");
        let _ = writeln!(s, "flush chain inet {t} forward");
        let _ = writeln!(s, "delete chain inet {t} forward");
    }
    s
}

fn nft(script: &str) -> io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running nft: {e} (is the nftables package installed?)"),
            )
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Creates or updates our table.
pub fn install(c: &TableConfig) -> io::Result<()> {
    nft(&ruleset(c))
}

/// Removes our table (the explicit `spa-server firewall remove`).
pub fn remove(table: &str) -> io::Result<()> {
    nft(&format!("delete table inet {table}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_and_batches() {
        let c = TableConfig {
            table: "spa".into(),
            spa_port: 23456,
            protect: vec![Access::tcp(22).unwrap(), Access::udp(51820).unwrap()],
            forward: false,
        };
        let r = ruleset(&c);
        assert!(r.contains("add rule inet spa input meta l4proto tcp tcp dport 22 drop"));
        assert!(r.contains("add rule inet spa input meta l4proto udp udp dport 51820 drop"));
        assert!(r.contains("add rule inet spa input udp dport 23456 drop"));
        assert!(!r.contains("add rule inet spa forward"));
        assert!(r.ends_with("delete chain inet spa forward\n"));
        let f = ruleset(&TableConfig {
            forward: true,
            ..c.clone()
        });
        assert!(f.contains("add rule inet spa forward meta l4proto tcp tcp dport 22 drop"));
        assert!(f.contains(
            "add rule inet spa forward ip saddr . meta l4proto . th dport @grants4 accept"
        ));
        assert!(!f.contains("delete chain"));
        let accept = r.find("@grants4 accept").unwrap();
        assert!(
            accept < r.find("dport 22 drop").unwrap(),
            "grants are checked before the drops"
        );
    }
}
