//! The command line: argument parsing and dispatch only; the work is in [`crate::admin`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::admin;

/// spa-server: Single Packet Authorization server.
#[derive(Debug, Parser)]
#[command(name = "spa-server", version, about, long_about = None)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, value_name = "FILE", default_value = spa_keys::server::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a configuration, a server key pair and an empty users store.
    Init {
        /// Directory to create them in.
        #[arg(long, value_name = "DIR", default_value = spa_keys::server::DEFAULT_DIR)]
        dir: PathBuf,
        /// The SPA port (default: random, 10000-32767).
        #[arg(long)]
        port: Option<u16>,
        /// Where to write the audit log's first chain key (0600; default DIR/audit-verify.key).
        /// Keep it off this host: `spa-server audit --verify --key FILE` needs it.
        #[arg(long, value_name = "FILE")]
        audit_key_out: Option<PathBuf>,
    },
    /// Print the server's card (public key, address, port) for clients.
    Card {
        /// Where clients reach this server: HOST or HOST:PORT.
        #[arg(long, value_name = "HOST[:PORT]")]
        endpoint: String,
    },
    /// Validate the configuration, keys and users; non-zero exit on any error.
    Check,
    /// Make a new server key; the old one is still accepted until a date.
    RotateKey {
        /// Keep accepting the old key for this long (e.g. 7d).
        #[arg(
            long,
            value_name = "DURATION",
            conflicts_with = "accept_old_until",
            required_unless_present = "accept_old_until"
        )]
        accept_old_for: Option<String>,
        /// Keep accepting the old key until this time (RFC 3339, e.g. 2026-12-31T00:00:00Z).
        #[arg(long, value_name = "TIME")]
        accept_old_until: Option<String>,
    },
    /// Manage users and their keys.
    #[command(subcommand)]
    User(UserCommand),
    /// Run the daemon in the foreground (logs to stderr).
    Run,
    /// Show the running daemon's uptime, open grants and counters.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The firewall helper process that `run` starts (holds only CAP_NET_ADMIN).
    #[command(hide = true)]
    FirewallHelper {
        /// The channel to the daemon.
        #[arg(long)]
        fd: i32,
        /// Our nftables table.
        #[arg(long)]
        table: String,
    },
    /// Query the audit log (a table, or JSON lines), or verify its MAC chain.
    Audit(AuditArgs),
    /// The hook runner process `spa-server run` starts (not for people).
    #[command(hide = true)]
    HookRunner {
        /// The channel to the daemon.
        #[arg(long)]
        fd: i32,
    },
    /// Manage our nftables table.
    #[command(subcommand)]
    Firewall(FirewallCommand),
    /// Write man pages and shell completions into DIR (for packaging and `scripts/install.sh`).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

/// `spa-server audit ...`
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this user's records.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Only records at or after: a duration ago (1h, 2d) or a time (2026-11-23, RFC 3339).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only records before: a duration ago or a time.
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only this decision: granted, refreshed, closed, expired, rejected, failed, started, stopped.
    #[arg(long, value_name = "DECISION")]
    pub decision: Option<String>,
    /// Only this reject reason (e.g. replay, stale, bad_mac1).
    #[arg(long, value_name = "REASON")]
    pub reason: Option<String>,
    /// Only records naming this address (source, opened address, or a summary's source).
    #[arg(long, value_name = "ADDR")]
    pub source: Option<std::net::IpAddr>,
    /// Keep printing new records as they are written.
    #[arg(long, conflicts_with = "verify")]
    pub follow: bool,
    /// JSON lines (one record per line) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Check the whole MAC chain; exits non-zero naming the first bad record.
    #[arg(long, requires = "key")]
    pub verify: bool,
    /// The chain's first key (SPA-AUDIT-KEY-1..., written by `init`), for --verify.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// A head the daemon logged ("audit head SEQ:MAC"): the log must reach it.
    #[arg(long, value_name = "SEQ:MAC", requires = "verify")]
    pub head: Option<String>,
}

/// `spa-server firewall ...`
#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Delete our table (the daemon leaves it in place so services stay closed).
    Remove,
}

/// Access and duration options shared by `user add` and `user provision`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What the user may open: names or tcp/PORT, udp/PORT, comma-separated (e.g. ssh,tcp/8443).
    #[arg(long, value_name = "LIST")]
    pub allow: String,
    /// Longest grant (e.g. 30m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub max_duration: String,
    /// Allow NAT mode (open whatever address the knock arrives from).
    #[arg(long)]
    pub nat: bool,
}

/// `spa-server user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Register a user with a public key the user generated (`spa-client keygen`).
    Add {
        /// User name.
        name: String,
        /// The user's public key (spaclient1...).
        #[arg(long, value_name = "KEY")]
        pubkey: String,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Create a key pair for a user, register it, and write a 0600 bundle for the user.
    Provision {
        /// User name.
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Where clients reach this server: HOST or HOST:PORT.
        #[arg(long, value_name = "HOST[:PORT]")]
        endpoint: String,
        /// The bundle file to create (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Also give the user a pre-shared key (knocks then use Noise Xpsk1).
        #[arg(long)]
        psk: bool,
        /// The server's name inside the bundle (default: the endpoint's host).
        #[arg(long, value_name = "NAME")]
        server_name: Option<String>,
    },
    /// List users.
    List {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one user.
    Show {
        /// User name.
        name: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke all of a user's keys, or one (takes effect on a running server within a second).
    Revoke {
        /// User name.
        name: String,
        /// Only this key.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Undo a revocation.
    Unrevoke {
        /// User name.
        name: String,
        /// Only this key.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Remove a user and all their keys.
    Remove {
        /// User name.
        name: String,
    },
    /// Add another key to a user (a second device, or a rotation).
    AddKey {
        /// User name.
        name: String,
        /// The new public key (spaclient1...).
        #[arg(long, value_name = "KEY")]
        pubkey: String,
    },
    /// Allow a user more access.
    Allow {
        /// User name.
        name: String,
        /// Names or tcp/PORT, udp/PORT, comma-separated.
        access: String,
    },
    /// Take access away from a user.
    Deny {
        /// User name.
        name: String,
        /// Names or tcp/PORT, udp/PORT, comma-separated.
        access: String,
    },
}

/// Runs the command line; errors go to stderr with a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Run | Command::FirewallHelper { .. } | Command::HookRunner { .. }
    ) {
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            // Plain text for journald and files; colours only on a terminal.
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .init();
        let helper = match &cli.command {
            Command::FirewallHelper { fd, table } => {
                Some(crate::privsep::firewall_helper(*fd, table))
            }
            Command::HookRunner { fd } => Some(crate::privsep::hook_runner(*fd, &cli.config)),
            _ => None,
        };
        if let Some(result) = helper {
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
        let result = spa_keys::server::ServerConfig::load(&cli.config)
            .map_err(|e| e.to_string())
            .and_then(|c| crate::daemon::run(&c));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("spa-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut out = std::io::stdout().lock();
    match admin::run(&cli, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spa-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `man/*.1` (one page per command and subcommand) and completions for bash, zsh
/// and fish under `dir`.
pub fn generate_docs(dir: &std::path::Path) -> std::io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "spa-server", &completions)?;
    }
    Ok(())
}
