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

/// A server by profile name or card host; else by address, resolving HOST and every
/// server's host with the system resolver.
fn find_server<'p>(
    profile: &'p Profile,
    host: &str,
) -> Option<(&'p str, &'p spa_keys::profile::ServerEntry)> {
    if let Some(found) = profile.find_server(host) {
        return Some(found);
    }
    let addrs = |h: &str| -> Vec<IpAddr> {
        (h, 0)
            .to_socket_addrs()
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default()
    };
    let wanted = addrs(host);
    if wanted.is_empty() {
        return None;
    }
    profile
        .servers
        .iter()
        .find(|(_, s)| addrs(&s.card.host).iter().any(|a| wanted.contains(a)))
        .map(|(n, s)| (n.as_str(), s))
}

fn send_one(socket: &UdpSocket, knock: &[u8], target: SocketAddr) -> Result<()> {
    let sent = socket
        .send(knock)
        .map_err(|e| usage(format!("host unreachable: {target}: {e}")))?;
    if sent != knock.len() {
        return Err(usage(format!("sent {sent} of {} bytes", knock.len())));
    }
    Ok(())
}

/// Tries to connect every 50 ms until `timeout`; after 1 s without success the knock is
/// sent once more (a lost datagram is never answered, so the client cannot know).
fn wait_open(
    service: SocketAddr,
    timeout: std::time::Duration,
    mut resend: impl FnMut() -> Result<()>,
) -> Result<std::net::TcpStream> {
    use std::time::{Duration, Instant};
    let t0 = Instant::now();
    let mut resent = false;
    loop {
        let left = timeout.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return Err(usage(format!(
                "{service} did not open within {}s: the knock was lost or refused (the server never says which; check your clock, your profile and the server's log)",
                timeout.as_secs()
            )));
        }
        if let Ok(s) =
            std::net::TcpStream::connect_timeout(&service, left.min(Duration::from_millis(250)))
        {
            return Ok(s);
        }
        if !resent && t0.elapsed() >= Duration::from_secs(1) {
            resent = true;
            resend()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Relays stdin to the connection and the connection to stdout until both ends close.
fn relay(stream: std::net::TcpStream) -> Result<()> {
    use std::io::copy;
    let io = |e: std::io::Error| usage(format!("relay: {e}"));
    let mut up = stream.try_clone().map_err(io)?;
    let mut down = stream;
    let writer = std::thread::spawn(move || {
        let r = copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
        r
    });
    copy(&mut down, &mut std::io::stdout().lock()).map_err(io)?;
    let _ = writer.join();
    Ok(())
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
    let (name, server) = find_server(&profile, host).ok_or_else(|| {
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
    // Every knock, the first and a re-send, is sealed afresh at the current time.
    let seal_now = || {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        seal(
            server.secret(&profile),
            &server.card.key,
            server.psk.as_ref(),
            &request,
            now_ms,
            &mut OsRng,
        )
        .map_err(|e| usage(e.to_string()))
    };
    let knock = seal_now()?;
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
    send_one(&socket, &knock, target)?;
    if !cli.quiet {
        // In proxy mode stdout carries only the relayed bytes.
        let out: &mut dyn Write = if cli.proxy {
            &mut std::io::stderr()
        } else {
            out
        };
        writeln!(
            out,
            "knocked {name} ({target}): {} {} for {opened}, {span}",
            if cli.close { "close" } else { "open" },
            what.join(",")
        )
        .map_err(|e| Error::io(std::path::Path::new("<stdout>"), e))?;
    }
    if cli.wait.is_some() || cli.proxy {
        let timeout = match &cli.wait {
            Some(t) => parse_duration(t)?,
            None => std::time::Duration::from_secs(10),
        };
        let port = access
            .iter()
            .find(|a| a.proto() == spa_proto::Proto::Tcp)
            .ok_or_else(|| usage("--wait and --proxy need a tcp service"))?
            .port();
        let service = SocketAddr::new(target.ip(), port);
        let resend = || send_one(&socket, &seal_now()?, target);
        let stream = wait_open(service, timeout, resend)?;
        if cli.proxy {
            return relay(stream);
        }
    }
    Ok(())
}
