//! The command line: parsing and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::profile_cmds;

/// spa-client: open a port on a spa-protected host with one datagram.
#[derive(Debug, Parser)]
#[command(
    name = "spa-client",
    version,
    about,
    subcommand_precedence_over_arg = true
)]
pub struct Cli {
    /// Your profile (secret key and servers).
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Server name from the profile, or its host name/address.
    pub host: Option<String>,
    /// Services to open: names from the profile, well-known names (ssh, https...), tcp/PORT, udp/PORT.
    pub services: Vec<String>,
    /// How long to open for (30s, 10m, 1h); the server clamps it. Default: the server's.
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: Option<String>,
    /// Ask the server to close the grant now.
    #[arg(long)]
    pub close: bool,
    /// Open the address the knock arrives from (for clients behind NAT; the user must be allowed it).
    #[arg(long, conflicts_with = "source_ip")]
    pub nat: bool,
    /// Knock from, and ask to open, this local address.
    #[arg(long, value_name = "ADDR")]
    pub source_ip: Option<std::net::IpAddr>,
    /// Use IPv4 only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 only.
    #[arg(short = '6')]
    pub ipv6: bool,
    /// After knocking, wait until the TCP service accepts (default timeout 10s), re-sending
    /// the knock once if the first seems lost.
    #[arg(long, value_name = "TIMEOUT", num_args = 0..=1, default_missing_value = "10s", require_equals = true)]
    pub wait: Option<String>,
    /// ssh ProxyCommand mode: knock, wait, then relay stdin/stdout to the service
    /// (`ssh -o ProxyCommand='spa-client --proxy %h %p' host`). Only relayed bytes go to stdout.
    #[arg(long)]
    pub proxy: bool,
    /// Print what would be sent (never the key) and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
    /// Profile management.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a profile with a new key pair and print the public key for the server's admin.
    Keygen,
    /// Add the server(s) of a provisioning bundle to your profile (creating it if needed).
    Import {
        /// The bundle from `spa-server user provision`.
        file: PathBuf,
    },
    /// Add a server from its card (`spa-server card` prints it).
    AddServer {
        /// A name for the server in your profile.
        name: String,
        /// The card: spa://KEY@HOST:PORT.
        card: String,
        /// Replace a server of the same name.
        #[arg(long)]
        replace: bool,
    },
    /// Show your public key and the servers in your profile (never the secret key).
    Show,
    /// Write man pages and shell completions into DIR (for packaging and `scripts/install.sh`).
    #[command(hide = true)]
    GenerateDocs {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

/// The profile path: `--key`, else `~/.spa`.
pub fn profile_path(key: Option<&PathBuf>) -> Result<PathBuf, spa_keys::Error> {
    if let Some(k) = key {
        return Ok(k.clone());
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(".spa")),
        _ => Err(spa_keys::Error::Usage(
            "HOME is not set: give the profile with --key FILE".into(),
        )),
    }
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    let result = match &cli.command {
        Some(cmd) => profile_cmds::run(&cli, cmd, &mut out),
        None => crate::knock::run(&cli, &mut out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spa-client: {e}");
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
        clap_complete::generate_to(shell, &mut cmd.clone(), "spa-client", &completions)?;
    }
    Ok(())
}
