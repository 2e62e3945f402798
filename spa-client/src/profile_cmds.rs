//! keygen, import, add-server, show: the profile commands. Nothing here prints a secret.

use std::io::Write;
use std::path::Path;

use rand::rngs::OsRng;
use spa_keys::card::Card;
use spa_keys::profile::{Profile, ServerEntry};
use spa_keys::text::public_text;
use spa_keys::{Error, Result};

use crate::cli::{profile_path, Cli, Command};

fn io(e: std::io::Error) -> Error {
    Error::io(Path::new("<stdout>"), e)
}

fn load(path: &Path) -> Result<Profile> {
    if !path.exists() {
        return Err(Error::Usage(format!(
            "no profile at {}: create one with `spa-client keygen` or import a bundle with `spa-client import FILE`",
            path.display()
        )));
    }
    Profile::load(path)
}

/// Runs a profile subcommand.
pub fn run(cli: &Cli, cmd: &Command, out: &mut impl Write) -> Result<()> {
    let path = profile_path(cli.key.as_ref())?;
    match cmd {
        Command::Keygen => {
            let profile = Profile::generate(&mut OsRng);
            profile.create(&path)?;
            writeln!(out, "{}", public_text(&profile.secret.public())).map_err(io)?;
            eprintln!(
                "created {} (0600). Send the public key above to the server's admin, then add the server's card\n\
                 with `spa-client add-server NAME CARD`.",
                path.display()
            );
            Ok(())
        }
        Command::Import { file } => {
            let bundle = Profile::load(file)?;
            if path.exists() {
                let mut profile = Profile::load(&path)?;
                let names = profile.import(&bundle)?;
                profile.save(&path)?;
                writeln!(
                    out,
                    "imported server(s) {} into {}",
                    names.join(", "),
                    path.display()
                )
                .map_err(io)
            } else {
                bundle.create(&path)?;
                let names: Vec<_> = bundle.servers.keys().cloned().collect();
                writeln!(
                    out,
                    "created {} from the bundle with server(s) {}",
                    path.display(),
                    names.join(", ")
                )
                .map_err(io)
            }
        }
        Command::AddServer {
            name,
            card,
            replace,
        } => {
            let card: Card = card.parse()?;
            let mut profile = load(&path)?;
            let entry = ServerEntry {
                card,
                psk: None,
                services: Default::default(),
                secret: None,
            };
            profile.add_server(name, entry, *replace)?;
            profile.save(&path)?;
            writeln!(out, "added server {name} to {}", path.display()).map_err(io)
        }
        Command::GenerateDocs { dir } => {
            crate::cli::generate_docs(dir).map_err(|e| Error::io(dir, e))?;
            writeln!(out, "wrote man pages and completions to {}", dir.display()).map_err(io)
        }
        Command::Show => {
            let profile = load(&path)?;
            writeln!(
                out,
                "profile:    {}\npublic key: {}",
                path.display(),
                public_text(&profile.secret.public())
            )
            .map_err(io)?;
            for (name, s) in &profile.servers {
                let services: Vec<String> = s
                    .services
                    .iter()
                    .map(|(n, l)| {
                        format!(
                            "{n}={}",
                            l.iter()
                                .map(|a| a.to_string())
                                .collect::<Vec<_>>()
                                .join("+")
                        )
                    })
                    .collect();
                writeln!(
                    out,
                    "server {name}: {}:{} key {}{}{}{}",
                    s.card.host,
                    s.card.port,
                    s.card.key.key_id(),
                    if s.psk.is_some() { ", psk" } else { "" },
                    s.secret.as_ref().map_or(String::new(), |k| format!(
                        ", own key {}",
                        k.public().key_id()
                    )),
                    if services.is_empty() {
                        String::new()
                    } else {
                        format!(", services {}", services.join(" "))
                    }
                )
                .map_err(io)?;
            }
            Ok(())
        }
    }
}
