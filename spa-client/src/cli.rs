//! The command line: parsing and dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        None => Err(spa_keys::Error::Usage(match cli.host {
            None => "give HOST and SERVICE (e.g. `spa-client myserver ssh`), or a subcommand; see --help".into(),
            Some(_) => "knocking is not implemented yet in this build (see the client issue); the profile commands work".into(),
        })),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spa-client: {e}");
            ExitCode::FAILURE
        }
    }
}
