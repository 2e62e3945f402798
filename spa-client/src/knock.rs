//! `spa-client HOST SERVICE...`: seal one knock and send it as ONE datagram.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::SystemTime;

use rand::rngs::OsRng;
use spa_keys::profile::Profile;
use spa_keys::services::parse_duration;
use spa_keys::{Error, Result};
use spa_proto::{seal, Access, Action, OpenAddr, Request};

use crate::cli::{profile_path, Cli};

fn usage(m: impl Into<String>) -> Error {
    Error::Usage(m.into())
}

/// Resolves `host:port` with the system resolver, honouring -4/-6.
fn resolve(host: &str, port: u16, v4: bool, v6: bool) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| usage(format!("cannot resolve {host}: {e}")))?
        .filter(|a| (!v4 || a.is_ipv4()) && (!v6 || a.is_ipv6()))
        .collect();
    addrs.first().copied().ok_or_else(|| {
        usage(format!(
            "{host} has no {} address",
            if v4 { "IPv4" } else { "IPv6" }
        ))
    })
}

/// Runs a knock.
pub fn run(cli: &Cli, out: &mut impl Write) -> Result<()> {
    let Some(host) = cli.host.as_deref() else {
        return Err(usage(
            "give HOST and SERVICE (e.g. `spa-client myserver ssh`), or a subcommand; see --help",
        ));
    };
    if cli.services.is_empty() {
        return Err(usage(format!(
            "name at least one service to open on {host} (e.g. ssh, https, tcp/8443)"
        )));
    }
    let path = profile_path(cli.key.as_ref())?;
    if !path.exists() {
        return Err(usage(format!(
            "no profile at {}: create one with `spa-client keygen` or import a bundle with `spa-client import FILE`",
            path.display()
        )));
    }
    let profile = Profile::load(&path)?;
    let (name, server) = profile.find_server(host).ok_or_else(|| {
        usage(format!(
            "{host} is not a server in {}: add it with `spa-client add-server NAME CARD` (the server's admin prints the card with `spa-server card`)",
            path.display()
        ))
    })?;
    let mut access: Vec<Access> = Vec::new();
    for s in &cli.services {
        // A bare port number (ssh's %p) means tcp/PORT.
        let list = match s.parse::<u16>() {
            Ok(p) => vec![Access::tcp(p).map_err(|e| usage(e.to_string()))?],
            Err(_) => server.resolve(s)?,
        };
        for a in list {
            if !access.contains(&a) {
                access.push(a);
            }
        }
    }
    let duration_s = match &cli.duration {
        Some(d) => parse_duration(d)?.as_secs() as u32,
        None => 0,
    };
    let target = resolve(&server.card.host, server.card.port, cli.ipv4, cli.ipv6)?;
    let bind: SocketAddr = match cli.source_ip {
        Some(ip) => SocketAddr::new(ip, 0),
        None if target.is_ipv4() => SocketAddr::new(IpAddr::from([0u8; 4]), 0),
        None => SocketAddr::new(IpAddr::from([0u16; 8]), 0),
    };
    let socket = UdpSocket::bind(bind)
        .map_err(|e| usage(format!("cannot use source address {}: {e}", bind.ip())))?;
    socket
        .connect(target)
        .map_err(|e| usage(format!("host unreachable: {target}: {e}")))?;
    // The address we will connect from: the local address of the route to the server.
    let local = socket
        .local_addr()
        .map_err(|e| usage(format!("no route to {target}: {e}")))?
        .ip();
    let open = if cli.nat {
        OpenAddr::FromPacket
    } else {
        OpenAddr::Ip(local)
    };
    let action = if cli.close {
        Action::Close
    } else {
        Action::Open
    };
    let request = Request::new(action, open, target.ip(), &access, duration_s)
        .map_err(|e| usage(e.to_string()))?;
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let knock = seal(
        server.secret(&profile),
        &server.card.key,
        server.psk.as_ref(),
        &request,
        now_ms,
        &mut OsRng,
    )
    .map_err(|e| usage(e.to_string()))?;
    let what: Vec<String> = access.iter().map(Access::to_string).collect();
    let opened = match open {
        OpenAddr::Ip(ip) => ip.to_string(),
        OpenAddr::FromPacket => "the address it arrives from (NAT mode)".into(),
    };
    let span = match (action, duration_s) {
        (Action::Close, _) => "close now".to_string(),
        (Action::Open, 0) => "server's default duration".to_string(),
        (Action::Open, s) => format!("{s} s"),
    };
    if cli.dry_run {
        return writeln!(
            out,
            "would send {} bytes to {target} ({name}): {} {} for {opened}, {span}, destination {}, psk {}",
            knock.len(),
            if cli.close { "close" } else { "open" },
            what.join(","),
            target.ip(),
            if server.psk.is_some() { "yes" } else { "no" }
        )
        .map_err(|e| Error::io(std::path::Path::new("<stdout>"), e));
    }
    let sent = socket
        .send(&knock)
        .map_err(|e| usage(format!("host unreachable: {target}: {e}")))?;
    if sent != knock.len() {
        return Err(usage(format!("sent {sent} of {} bytes", knock.len())));
    }
    if !cli.quiet {
        writeln!(
            out,
            "knocked {name} ({target}): {} {} for {opened}, {span}",
            if cli.close { "close" } else { "open" },
            what.join(",")
        )
        .map_err(|e| Error::io(std::path::Path::new("<stdout>"), e))?;
    }
    Ok(())
}
