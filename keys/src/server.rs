//! The server's configuration file (`/etc/spa/server.toml` by default), which names every
//! other server file, and the server's key files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand_core::CryptoRngCore;
use serde::Deserialize;
use spa_proto::{Access, ServerSecret};

use crate::error::{Error, Result};
use crate::fsutil;
use crate::services::{parse_access, parse_duration};
use crate::text::{public_text, KeyText};
use crate::users::Users;

/// Default configuration directory.
pub const DEFAULT_DIR: &str = "/etc/spa";
/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/spa/server.toml";

/// SPA ports are drawn from this range: above the registered-services crowd and below
/// Linux's ephemeral range (32768–60999), so no outgoing connection of the host ever uses
/// the port whose inbound traffic our ruleset drops. A random port, unlike fwknop's fixed
/// 62201, does not tell a scanner what is listening.
pub const PORT_RANGE: core::ops::RangeInclusive<u16> = 10_000..=32_767;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    secret_key_file: PathBuf,
    #[serde(default)]
    previous_keys: Vec<PreviousKeyFile>,
    users_file: PathBuf,
    state_dir: PathBuf,
    audit_dir: PathBuf,
    port: u16,
    #[serde(default)]
    interfaces: Vec<String>,
    #[serde(default)]
    knock: KnockFile,
    #[serde(default)]
    firewall: FirewallFile,
    #[serde(default)]
    status: StatusFile,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    audit: AuditFile,
    #[serde(default)]
    hooks: crate::hooks::HooksFile,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct AuditFile {
    rotate_size_mib: u64,
    aggregate_interval: String,
    rejects_per_key: u32,
}

impl Default for AuditFile {
    fn default() -> Self {
        Self {
            rotate_size_mib: 64,
            aggregate_interval: "60s".into(),
            rejects_per_key: 10,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LimitsFile {
    per_source_burst: u32,
    per_source_per_sec: f64,
    dh_per_sec: u32,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            per_source_burst: 20,
            per_source_per_sec: 5.0,
            dh_per_sec: 20_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviousKeyFile {
    file: PathBuf,
    accept_until: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct KnockFile {
    window: String,
    default_duration: String,
    destinations: Vec<IpAddr>,
}

impl Default for KnockFile {
    fn default() -> Self {
        Self {
            window: "120s".into(),
            default_duration: "30s".into(),
            destinations: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FirewallFile {
    table: String,
    protect: Vec<String>,
    forward: bool,
}

impl Default for FirewallFile {
    fn default() -> Self {
        Self {
            table: "spa".into(),
            protect: vec!["ssh".into()],
            forward: false,
        }
    }
}

/// The status socket of a configuration without a `[status]` section.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/spa/status.sock";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct StatusFile {
    socket: PathBuf,
    group: Option<String>,
}

impl Default for StatusFile {
    fn default() -> Self {
        Self {
            socket: DEFAULT_STATUS_SOCKET.into(),
            group: None,
        }
    }
}

/// A server key that is still accepted after a rotation, until a date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousKey {
    /// Its key file.
    pub file: PathBuf,
    /// Knocks sealed for it are accepted until then.
    pub accept_until: SystemTime,
}

/// The validated server configuration, paths resolved against the file's directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The configuration file itself.
    pub path: PathBuf,
    /// The current secret key file.
    pub secret_key_file: PathBuf,
    /// Older keys still accepted.
    pub previous_keys: Vec<PreviousKey>,
    /// The users store.
    pub users_file: PathBuf,
    /// Replay state.
    pub state_dir: PathBuf,
    /// Audit log.
    pub audit_dir: PathBuf,
    /// The SPA port.
    pub port: u16,
    /// Interfaces to sniff; empty means all.
    pub interfaces: Vec<String>,
    /// Accepted clock difference either way, in milliseconds.
    pub window_ms: u64,
    /// Grant duration when a knock asks for none, in seconds.
    pub default_duration_s: u32,
    /// Extra addresses knocks may be aimed at (1:1 NAT), besides the host's own.
    pub destinations: Vec<IpAddr>,
    /// Our nftables table (`inet NAME`).
    pub table: String,
    /// Services that stay closed unless granted.
    pub protect: Vec<Access>,
    /// Also gate the forward hook.
    pub forward: bool,
    /// The Unix socket `spa-server status` asks the daemon on.
    pub status_socket: PathBuf,
    /// The group that may use the status socket too (mode 0660); root only when `None`.
    pub status_group: Option<String>,
    /// Knocks one source may send at once (step 4).
    pub per_source_burst: u32,
    /// Knocks per second one source regains.
    pub per_source_per_sec: f64,
    /// Diffie-Hellman operations per second, all sources together.
    pub dh_per_sec: u32,
    /// The audit log file is rotated when it grows past this many bytes.
    pub audit_rotate_bytes: u64,
    /// Pre-authentication rejects are summed over this interval, one record per reason.
    pub audit_interval: Duration,
    /// Authenticated rejects recorded one by one per key and interval; more are summed.
    pub audit_rejects_per_key: u32,
    /// Programs run when grants open, close or expire (`[hooks]`).
    pub hooks: crate::hooks::HooksConfig,
}

fn valid_ifname(name: &str) -> bool {
    (1..16).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

impl ServerConfig {
    /// Loads and validates the configuration (not the files it names; see [`Self::check`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = fsutil::read_public(path)?;
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| fsutil::toml_error(path, &text, &e))?;
        let line_of = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(key))
                .map(|i| i + 1)
        };
        let invalid =
            |key: &str, m: String| Error::invalid(path, line_of(key), format!("{key}: {m}"));
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            }
        };
        if file.port == 0 {
            return Err(invalid("port", "must be 1-65535".into()));
        }
        let window =
            parse_duration(&file.knock.window).map_err(|e| invalid("window", e.to_string()))?;
        let default_duration = parse_duration(&file.knock.default_duration)
            .map_err(|e| invalid("default_duration", e.to_string()))?;
        let protect = file
            .firewall
            .protect
            .iter()
            .map(|s| parse_access(s))
            .collect::<Result<Vec<_>>>()
            .map_err(|e| invalid("protect", e.to_string()))?;
        if protect
            .iter()
            .any(|a| a.proto() == spa_proto::Proto::Udp && a.port() == file.port)
        {
            return Err(invalid(
                "protect",
                "must not include the SPA port itself".into(),
            ));
        }
        let table = file.firewall.table;
        if !(1..=32).contains(&table.len())
            || !table.starts_with(|c: char| c.is_ascii_alphabetic())
            || !table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(invalid(
                "table",
                "start with a letter; letters, digits and '_' (1 to 32)".into(),
            ));
        }
        let status_socket = resolve(&file.status.socket);
        // sun_path holds 107 bytes; the daemon binds beside the socket under a longer name.
        if file.status.socket.as_os_str().is_empty() || status_socket.as_os_str().len() > 90 {
            return Err(invalid(
                "socket",
                "the status socket's path must have 1 to 90 bytes".into(),
            ));
        }
        if let Some(g) = &file.status.group {
            if !(1..=32).contains(&g.len())
                || g.starts_with('-')
                || !g
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return Err(invalid(
                    "group",
                    "a group name: letters, digits, '_', '-', '.' (1 to 32)".into(),
                ));
            }
        }
        if let Some(bad) = file.interfaces.iter().find(|i| !valid_ifname(i)) {
            return Err(invalid(
                "interfaces",
                format!(
                    "{:?} is not an interface name",
                    bad.chars().take(20).collect::<String>()
                ),
            ));
        }
        let l = &file.limits;
        if l.per_source_burst == 0
            || !(l.per_source_per_sec > 0.0 && l.per_source_per_sec.is_finite())
            || l.dh_per_sec == 0
        {
            return Err(Error::invalid(
                path,
                line_of("[limits]"),
                "limits: per_source_burst, per_source_per_sec and dh_per_sec must be positive",
            ));
        }
        let a = &file.audit;
        let audit_interval = parse_duration(&a.aggregate_interval)
            .map_err(|e| invalid("aggregate_interval", e.to_string()))?;
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&audit_interval) {
            return Err(invalid(
                "aggregate_interval",
                "must be between 1s and 1h".into(),
            ));
        }
        if !(1..=1 << 20).contains(&a.rotate_size_mib) {
            return Err(invalid(
                "rotate_size_mib",
                "must be between 1 and 1048576".into(),
            ));
        }
        let mut previous_keys = Vec::new();
        for p in file.previous_keys {
            let until = humantime::parse_rfc3339_weak(&p.accept_until).map_err(|_| {
                invalid(
                    "accept_until",
                    "not an RFC 3339 time such as 2026-12-31T00:00:00Z".into(),
                )
            })?;
            previous_keys.push(PreviousKey {
                file: resolve(&p.file),
                accept_until: until,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            secret_key_file: resolve(&file.secret_key_file),
            previous_keys,
            users_file: resolve(&file.users_file),
            state_dir: resolve(&file.state_dir),
            audit_dir: resolve(&file.audit_dir),
            port: file.port,
            interfaces: file.interfaces,
            window_ms: window.as_millis() as u64,
            default_duration_s: default_duration.as_secs() as u32,
            destinations: file.knock.destinations,
            table,
            protect,
            forward: file.firewall.forward,
            status_socket,
            status_group: file.status.group,
            per_source_burst: file.limits.per_source_burst,
            per_source_per_sec: file.limits.per_source_per_sec,
            dh_per_sec: file.limits.dh_per_sec,
            audit_rotate_bytes: file.audit.rotate_size_mib << 20,
            audit_interval,
            audit_rejects_per_key: file.audit.rejects_per_key,
            hooks: crate::hooks::HooksConfig::from_file(file.hooks, path, &text)?,
        })
    }

    /// The current server secret key.
    pub fn secret_key(&self) -> Result<ServerSecret> {
        load_server_key(&self.secret_key_file)
    }

    /// Previous keys still accepted at `now`, loaded.
    pub fn previous_secret_keys(&self, now: SystemTime) -> Result<Vec<(ServerSecret, SystemTime)>> {
        self.previous_keys
            .iter()
            .filter(|p| p.accept_until > now)
            .map(|p| Ok((load_server_key(&p.file)?, p.accept_until)))
            .collect()
    }

    /// Loads everything the configuration names: keys and users. What `spa-server check`
    /// runs.
    pub fn check(&self) -> Result<(ServerSecret, Users)> {
        let key = self.secret_key()?;
        self.previous_secret_keys(SystemTime::UNIX_EPOCH)?;
        let users = Users::load(&self.users_file)?;
        Ok((key, users))
    }
}

/// Reads a server secret key file (refused when loose).
pub fn load_server_key(path: &Path) -> Result<ServerSecret> {
    let text = fsutil::read_secret(path)?;
    let mut found = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if found.is_some() {
            return Err(Error::invalid(
                path,
                Some(i + 1),
                "more than one key in the file",
            ));
        }
        found = Some(
            ServerSecret::from_text(line)
                .map_err(|e| Error::invalid(path, Some(i + 1), e.to_string()))?,
        );
    }
    found.ok_or_else(|| Error::invalid(path, None, "no key in the file"))
}

fn key_file_text(key: &ServerSecret) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(format!(
        "# spa server secret key. Created {}.\n# Public key: {}\n# Never share this file; clients need only `spa-server card`.\n{}\n",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        public_text(&key.public()),
        *key.to_text()
    ))
}

/// What `init` created.
#[derive(Debug)]
pub struct InitReport {
    /// The configuration file.
    pub config: PathBuf,
    /// The key file.
    pub key_file: PathBuf,
    /// The users store.
    pub users_file: PathBuf,
    /// The SPA port.
    pub port: u16,
    /// The server's public key.
    pub public: spa_proto::ServerPublic,
}

/// `spa-server init`: writes `DIR/server.toml`, `DIR/server.key`, `DIR/users.jsonl`.
/// Refuses to overwrite any of them. `state_dir`/`audit_dir` default to `/var/lib/spa` and
/// `/var/log/spa` for `/etc/spa`, and to `DIR/state`, `DIR/audit` elsewhere.
pub fn init(dir: &Path, port: Option<u16>, rng: &mut impl CryptoRngCore) -> Result<InitReport> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config = dir.join("server.toml");
    let key_file = dir.join("server.key");
    let users_file = dir.join("users.jsonl");
    for p in [&config, &key_file, &users_file] {
        if p.exists() {
            return Err(Error::Exists(p.clone()));
        }
    }
    let port = match port {
        Some(0) => return Err(Error::Usage("--port must be 1-65535".into())),
        Some(p) => p,
        None => {
            let span = u32::from(PORT_RANGE.end() - PORT_RANGE.start()) + 1;
            PORT_RANGE.start() + (rng.next_u32() % span) as u16
        }
    };
    let status_socket = if dir == Path::new(DEFAULT_DIR) {
        PathBuf::from(DEFAULT_STATUS_SOCKET)
    } else {
        PathBuf::from("status.sock")
    };
    let (state, audit) = if dir == Path::new(DEFAULT_DIR) {
        (PathBuf::from("/var/lib/spa"), PathBuf::from("/var/log/spa"))
    } else {
        (PathBuf::from("state"), PathBuf::from("audit"))
    };
    let key = ServerSecret::generate(rng);
    fsutil::create_secret(&key_file, &key_file_text(&key))?;
    Users::create_empty(&users_file)?;
    let text = format!(
        r#"# spa-server configuration. Every spa-server subcommand reads it (as root).
# Validate it with: spa-server check --config {config}
# Relative paths are relative to this file's directory.

# The server's secret key (0600). `spa-server rotate-key` replaces it.
secret_key_file = "server.key"
# Users, their public keys and what they may open (0600). A running server reloads it.
users_file = "users.jsonl"
# Replay state: the last accepted timestamp of every key.
state_dir = {state:?}
# The audit log.
audit_dir = {audit:?}
# The UDP port knocks go to. Nothing listens on it and it never answers. Drawn at random
# from {lo}-{hi} (below the kernel's ephemeral range, unlike a fingerprintable fixed port).
port = {port}
# Interfaces to sniff; empty means all.
interfaces = []

[knock]
# Accepted clock difference either way (replays are stopped by per-key timestamps).
window = "120s"
# Grant duration when a knock asks for none; each user's max_duration caps requests.
default_duration = "30s"
# Extra addresses knocks may be aimed at besides this host's own (e.g. a 1:1 NAT address).
destinations = []

[firewall]
# Our own nftables table (inet); left in place when the daemon stops, so services stay closed.
table = "spa"
# Services that stay closed unless a knock opens them.
protect = ["ssh"]
# Also gate the forward hook (services behind this host, e.g. containers).
forward = false

[status]
# `spa-server status` asks the running daemon on this Unix socket: mode 0600 (root only),
# or 0660 with `group`, whose members may then read uptime, open grants and counters.
socket = {status_socket:?}
#group = "adm"

[limits]
# Checked after mac1 and before any Diffie-Hellman. A person knocks a few times a minute;
# these never throttle one. A flood from one source is held to the per-source rate, and
# floods from many (spoofed) sources to the global Diffie-Hellman budget.
per_source_burst = 20
per_source_per_sec = 5.0
dh_per_sec = 20000

[audit]
# The log (audit_dir/audit.jsonl) is rotated when it grows past this size; the MAC chain
# continues across files. `spa-server audit --verify` checks it.
rotate_size_mib = 64
# Rejects before authentication (junk, bad mac1, unknown key, rate limited) are summed per
# reason over this interval, so a flood cannot grow the log.
aggregate_interval = "60s"
# Authenticated rejects (a replay, a revoked key) are recorded one by one up to this many
# per key and interval, and summed beyond.
rejects_per_key = 10

# Hooks: programs run when a grant opens, and when it is closed or expires. They run
# asynchronously as run_as (never root), with an empty environment but for SPA_EVENT,
# SPA_USER, SPA_ADDRESS, SPA_ACCESS, SPA_DURATION and PATH; nothing from a knock is ever
# an argument or passes through a shell. See docs/OPERATIONS.md.
#[hooks]
#run_as = "nobody"
#timeout = "10s"
#[[hooks.rule]]
#user = "alice"                                  # optional: only this user
#access = "ssh"                                  # optional: only this access entry
#on_open = ["/usr/local/bin/notify", "opened"]   # argv: program (absolute path), arguments
#on_close = ["/usr/local/bin/notify", "closed"]
"#,
        config = config.display(),
        lo = PORT_RANGE.start(),
        hi = PORT_RANGE.end(),
    );
    fsutil::create_secret(&config, &text)?;
    ServerConfig::load(&config)?;
    Ok(InitReport {
        config,
        key_file,
        users_file,
        port,
        public: key.public(),
    })
}

/// `spa-server rotate-key`: a new key becomes current; the old one stays accepted until
/// `accept_old_until`. The configuration is edited in place (comments kept) atomically.
pub fn rotate_key(
    config: &ServerConfig,
    accept_old_until: SystemTime,
    rng: &mut impl CryptoRngCore,
) -> Result<(PathBuf, ServerSecret)> {
    let now = SystemTime::now();
    if accept_old_until <= now {
        return Err(Error::Usage(
            "the old key must stay accepted until a time in the future".into(),
        ));
    }
    let dir = config.secret_key_file.parent().unwrap_or(Path::new("."));
    let stamp = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let new_file = dir.join(format!("server-{stamp}.key"));
    let key = ServerSecret::generate(rng);
    fsutil::create_secret(&new_file, &key_file_text(&key))?;
    let text = fsutil::read_public(&config.path)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|_| Error::invalid(&config.path, None, "does not parse as TOML"))?;
    doc["secret_key_file"] = toml_edit::value(new_file.display().to_string());
    let mut previous = toml_edit::ArrayOfTables::new();
    for p in config.previous_keys.iter().filter(|p| p.accept_until > now) {
        let mut t = toml_edit::Table::new();
        t["file"] = toml_edit::value(p.file.display().to_string());
        t["accept_until"] =
            toml_edit::value(humantime::format_rfc3339_seconds(p.accept_until).to_string());
        previous.push(t);
    }
    let mut t = toml_edit::Table::new();
    t["file"] = toml_edit::value(config.secret_key_file.display().to_string());
    t["accept_until"] =
        toml_edit::value(humantime::format_rfc3339_seconds(accept_old_until).to_string());
    previous.push(t);
    doc.remove("previous_keys");
    doc.insert("previous_keys", toml_edit::Item::ArrayOfTables(previous));
    fsutil::write_atomic(&config.path, &doc.to_string())?;
    ServerConfig::load(&config.path)?;
    Ok((new_file, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn init_then_load_then_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let report = init(dir.path(), None, &mut OsRng).unwrap();
        assert!(PORT_RANGE.contains(&report.port));
        let config = ServerConfig::load(&report.config).unwrap();
        assert_eq!(config.port, report.port);
        assert_eq!(config.window_ms, 120_000);
        assert_eq!(config.default_duration_s, 30);
        assert_eq!(config.protect, vec![Access::tcp(22).unwrap()]);
        assert_eq!(config.state_dir, dir.path().join("state"));
        let (key, users) = config.check().unwrap();
        assert_eq!(key.public(), report.public);
        assert!(users.is_empty());
        assert!(matches!(
            init(dir.path(), Some(5000), &mut OsRng),
            Err(Error::Exists(_))
        ));
    }

    #[test]
    fn status_socket_defaults_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let report = init(dir.path(), Some(23456), &mut OsRng).unwrap();
        let config = ServerConfig::load(&report.config).unwrap();
        assert_eq!(config.status_socket, dir.path().join("status.sock"));
        assert_eq!(config.status_group, None);
        let text = std::fs::read_to_string(&report.config).unwrap();
        // A configuration written before the section existed still loads.
        let start = text.find("[status]").unwrap();
        let end = start + text[start..].find("\n\n").unwrap() + 2;
        std::fs::write(
            &report.config,
            format!("{}{}", &text[..start], &text[end..]),
        )
        .unwrap();
        assert_eq!(
            ServerConfig::load(&report.config).unwrap().status_socket,
            PathBuf::from(DEFAULT_STATUS_SOCKET)
        );
        let long = format!("socket = \"/{}\"", "x".repeat(100));
        for (from, to, err) in [
            ("#group = \"adm\"", "group = \"spa-status\"", None),
            ("#group = \"adm\"", "group = \"a b\"", Some("group")),
            ("#group = \"adm\"", "sock = \"x\"", Some("sock")),
            ("socket = \"status.sock\"", long.as_str(), Some("socket")),
        ] {
            std::fs::write(&report.config, text.replace(from, to)).unwrap();
            match (ServerConfig::load(&report.config), err) {
                (Ok(c), None) => assert_eq!(c.status_group.as_deref(), Some("spa-status")),
                (Err(e), Some(want)) => assert!(e.to_string().contains(want), "{e}"),
                (r, _) => panic!("{to}: {:?}", r.map(|c| c.status_group)),
            }
        }
    }

    #[test]
    fn unknown_field_and_bad_values_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let report = init(dir.path(), Some(23456), &mut OsRng).unwrap();
        let text = std::fs::read_to_string(&report.config).unwrap();
        for (from, to, expect) in [
            (
                "forward = false",
                "forward = false\nfoward = true",
                "foward",
            ),
            ("window = \"120s\"", "window = \"soon\"", "window"),
            ("protect = [\"ssh\"]", "protect = [\"gopher\"]", "protect"),
            ("port = 23456", "port = 0", "port"),
        ] {
            let path = dir.path().join("bad.toml");
            std::fs::write(&path, text.replace(from, to)).unwrap();
            let err = ServerConfig::load(&path).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}:", path.display())), "{err}");
            assert!(err.contains(expect), "{err}");
            let line = text
                .replace(from, to)
                .lines()
                .position(|l| l.contains(to.lines().last().unwrap()))
                .unwrap()
                + 1;
            assert!(err.contains(&format!(":{line}:")), "{err} (line {line})");
        }
    }

    #[test]
    fn limits_are_configurable_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let report = init(dir.path(), Some(23456), &mut OsRng).unwrap();
        let config = ServerConfig::load(&report.config).unwrap();
        assert_eq!((config.per_source_burst, config.dh_per_sec), (20, 20_000));
        let text = std::fs::read_to_string(&report.config).unwrap();
        std::fs::write(
            &report.config,
            text.replace("dh_per_sec = 20000", "dh_per_sec = 50000"),
        )
        .unwrap();
        assert_eq!(
            ServerConfig::load(&report.config).unwrap().dh_per_sec,
            50_000
        );
        std::fs::write(
            &report.config,
            text.replace("per_source_per_sec = 5.0", "per_source_per_sec = 0.0"),
        )
        .unwrap();
        let err = ServerConfig::load(&report.config).unwrap_err().to_string();
        let line = text.lines().position(|l| l == "[limits]").unwrap() + 1;
        assert!(err.contains(&format!(":{line}: limits")), "{err}");
    }

    #[test]
    fn rotation_keeps_old_key_until_date() {
        let dir = tempfile::tempdir().unwrap();
        let report = init(dir.path(), Some(23456), &mut OsRng).unwrap();
        let config = ServerConfig::load(&report.config).unwrap();
        let old = config.secret_key().unwrap().public();
        let until = SystemTime::now() + Duration::from_secs(86_400);
        let (_, new) = rotate_key(&config, until, &mut OsRng).unwrap();
        let config = ServerConfig::load(&report.config).unwrap();
        assert_eq!(config.secret_key().unwrap().public(), new.public());
        let prev = config.previous_secret_keys(SystemTime::now()).unwrap();
        assert_eq!(prev.len(), 1);
        assert_eq!(prev[0].0.public(), old);
        assert!(config
            .previous_secret_keys(until + Duration::from_secs(1))
            .unwrap()
            .is_empty());
        let text = std::fs::read_to_string(&report.config).unwrap();
        assert!(text.contains("# Our own nftables table"), "comments kept");
    }
}
