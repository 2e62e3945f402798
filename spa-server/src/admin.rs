//! The admin commands: init, card, check, key rotation, users. Output goes to a writer so
//! tests can read it; no command ever prints a secret.

use std::io::Write;
use std::time::SystemTime;

use rand::rngs::OsRng;
use serde_json::json;
use spa_keys::card::{split_endpoint, Card};
use spa_keys::fsutil;
use spa_keys::profile::{Profile, ServerEntry};
use spa_keys::server::{self, ServerConfig};
use spa_keys::services::{format_duration, name_of, parse_access_list, parse_duration};
use spa_keys::text::{public_text, AuditKey, KeyText};
use spa_keys::users::{User, UserKey, Users};
use spa_keys::{Error, Result};
use spa_proto::{Access, ClientPublic, Psk};

use crate::cli::{AuditArgs, Cli, Command, FirewallCommand, PolicyArgs, UserCommand};

fn io(e: std::io::Error) -> Error {
    Error::io(std::path::Path::new("<stdout>"), e)
}

/// Runs one parsed command.
pub fn run(cli: &Cli, out: &mut impl Write) -> Result<()> {
    match &cli.command {
        Command::Init {
            dir,
            port,
            audit_key_out,
        } => {
            let key_out = audit_key_out
                .clone()
                .unwrap_or_else(|| dir.join("audit-verify.key"));
            if key_out.exists() {
                return Err(Error::Exists(key_out));
            }
            let r = server::init(dir, *port, &mut OsRng)?;
            let config = ServerConfig::load(&r.config)?;
            let audit_key = AuditKey::generate(&mut OsRng);
            // The chain first: if one exists already (a reinstall), no key file is written
            // that would not match it.
            crate::audit::log::create_chain(&config.audit_dir, &audit_key)
                .map_err(|e| Error::Usage(e.to_string()))?;
            let written = fsutil::create_secret(
                &key_out,
                &format!(
                    "# The first key of the spa audit log's MAC chain ({}).\n\
                     # Keep it OFF the server: `spa-server audit --verify --key FILE` needs it.\n{}\n",
                    config.audit_dir.display(),
                    *audit_key.to_text()
                ),
            );
            if written.is_err() {
                // A chain whose first key nobody has can never be verified.
                let _ = std::fs::remove_file(config.audit_dir.join(crate::audit::log::STATE));
            }
            written?;
            writeln!(
                out,
                "created {} (config), {} (secret key, 0600), {} (users), {} (audit log)\nSPA port: udp/{}\nserver public key: {}\n\
                 audit chain key: {} (0600) -- move it off this host; `spa-server audit --verify --key FILE` needs it\n\
                 next: spa-server card --config {} --endpoint HOST",
                r.config.display(),
                r.key_file.display(),
                r.users_file.display(),
                config.audit_dir.display(),
                r.port,
                public_text(&r.public),
                key_out.display(),
                r.config.display()
            )
            .map_err(io)
        }
        Command::Card { endpoint } => {
            let config = ServerConfig::load(&cli.config)?;
            let card = card(&config, endpoint)?;
            writeln!(out, "{card}").map_err(io)
        }
        Command::Check => {
            let config = ServerConfig::load(&cli.config)?;
            let (key, users) = config.check()?;
            let keys: usize = users.iter().map(|u| u.keys.len()).sum();
            let hooks = &config.hooks;
            // run_as must name an unprivileged user on this host (only when hooks exist).
            let run_as = (!hooks.rules.is_empty())
                .then(|| crate::hooks::resolve_run_as(&hooks.run_as))
                .transpose()
                .map_err(|e| Error::invalid(&cli.config, None, e.to_string()))?;
            writeln!(
                out,
                "{}: ok (server key {}, {} users, {} keys, port udp/{})",
                cli.config.display(),
                key.public().key_id(),
                users.len(),
                keys,
                config.port
            )
            .map_err(io)?;
            if let Some(r) = run_as {
                writeln!(
                    out,
                    "hooks: {} rule{}, run as {} (uid {}, gid {}), timeout {}",
                    hooks.rules.len(),
                    if hooks.rules.len() == 1 { "" } else { "s" },
                    hooks.run_as,
                    r.uid,
                    r.gid,
                    humantime::format_duration(hooks.timeout)
                )
                .map_err(io)?;
            }
            Ok(())
        }
        Command::RotateKey {
            accept_old_for,
            accept_old_until,
        } => {
            let config = ServerConfig::load(&cli.config)?;
            let until = match (accept_old_for, accept_old_until) {
                (Some(d), _) => SystemTime::now() + parse_duration(d)?,
                (None, Some(t)) => humantime::parse_rfc3339_weak(t)
                    .map_err(|_| Error::Usage(format!("not an RFC 3339 time: {t:?}")))?,
                (None, None) => {
                    return Err(Error::Usage(
                        "give --accept-old-for or --accept-old-until".into(),
                    ))
                }
            };
            let (file, key) = server::rotate_key(&config, until, &mut OsRng)?;
            writeln!(
                out,
                "new server key {} in {} (0600); the old key {} is accepted until {}.\n\
                 a running spa-server takes both up within a second.\n\
                 give clients the new card: spa-server card --endpoint HOST",
                key.public().key_id(),
                file.display(),
                config.secret_key()?.public().key_id(),
                humantime::format_rfc3339_seconds(until)
            )
            .map_err(io)
        }
        Command::User(cmd) => user(cli, cmd, out),
        Command::Audit(args) => audit(cli, args, out),
        Command::Run | Command::FirewallHelper { .. } | Command::HookRunner { .. } => Err(
            Error::Usage("run and firewall-helper are handled by the command line".into()),
        ),
        Command::Status { json } => {
            let config = ServerConfig::load(&cli.config)?;
            crate::status::show(&config.status_socket, *json, out).map_err(Error::Usage)
        }
        Command::GenerateDocs { dir } => {
            crate::cli::generate_docs(dir).map_err(|e| Error::io(dir, e))?;
            writeln!(out, "wrote man pages and completions to {}", dir.display()).map_err(io)
        }
        Command::Firewall(FirewallCommand::Remove) => {
            let config = ServerConfig::load(&cli.config)?;
            crate::nft::remove(&config.table).map_err(|e| Error::Usage(e.to_string()))?;
            writeln!(out, "removed table inet {}", config.table).map_err(io)
        }
    }
}

/// `--since`/`--until`: a duration ago, a date, or an RFC 3339 time.
fn parse_when(text: &str, now: SystemTime) -> Result<SystemTime> {
    if let Ok(d) = humantime::parse_duration(text.trim()) {
        return Ok(now - d);
    }
    let t = text.trim();
    let full = if t.len() == 10 {
        format!("{t}T00:00:00Z")
    } else {
        t.to_owned()
    };
    humantime::parse_rfc3339_weak(&full).map_err(|_| {
        Error::Usage(format!(
            "{:?} is neither a duration (1h, 2d) nor a time (2026-11-23, 2026-11-23T10:00:00Z)",
            t.chars().take(40).collect::<String>()
        ))
    })
}

fn audit(cli: &Cli, args: &AuditArgs, out: &mut impl Write) -> Result<()> {
    use crate::audit::read;
    let config = ServerConfig::load(&cli.config)?;
    let dir = &config.audit_dir;
    let usage = |e: crate::audit::AuditError| Error::Usage(e.to_string());
    if args.verify {
        let key_file = args.key.as_ref().expect("clap requires --key");
        let text = fsutil::read_secret(key_file)?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| Error::invalid(key_file, None, "no key in the file"))?;
        let key =
            AuditKey::from_text(line).map_err(|e| Error::invalid(key_file, None, e.to_string()))?;
        let head = match &args.head {
            None => None,
            Some(h) => {
                let (seq, mac) = h
                    .split_once(':')
                    .and_then(|(s, m)| Some((s.parse::<u64>().ok()?, m)))
                    .filter(|(_, m)| m.len() == 64 && m.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| {
                        Error::Usage("--head: expected SEQ:MAC as the daemon logs it".into())
                    })?;
                Some((seq, mac))
            }
        };
        return match read::verify(dir, &key, head) {
            Ok(v) => {
                let head = v
                    .head
                    .map_or("empty".into(), |(s, m)| format!("head {s}:{m}"));
                writeln!(
                    out,
                    "{}: ok, {} records in {} files, chain intact; {head}",
                    dir.display(),
                    v.records,
                    v.files
                )
                .map_err(io)
            }
            Err(e) => Err(Error::Usage(format!("audit log TAMPERED or damaged: {e}"))),
        };
    }
    let now = SystemTime::now();
    let filter = read::Filter {
        user: args.user.clone(),
        since: args
            .since
            .as_deref()
            .map(|t| parse_when(t, now))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| parse_when(t, now))
            .transpose()?,
        decision: args
            .decision
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: String| Error::Usage(format!("--decision: {e}")))?,
        reason: args.reason.clone(),
        source: args.source,
    };
    if let Some(r) = &filter.reason {
        let known = spa_proto::Reject::ALL
            .iter()
            .map(|x| x.code())
            .chain(crate::packet::Drop::ALL.iter().map(|d| d.code()));
        if !known.clone().any(|c| c == r) {
            let names: Vec<_> = known.collect();
            return Err(Error::Usage(format!(
                "--reason: unknown reason (one of {})",
                names.join(", ")
            )));
        }
    }
    if !args.json {
        writeln!(out, "{}", read::header()).map_err(io)?;
    }
    let mut bad = 0usize;
    let last_seq = std::cell::Cell::new(None);
    let mut print = |r: std::result::Result<crate::audit::Record, String>| -> std::io::Result<()> {
        if let Ok(r) = &r {
            last_seq.set(Some(r.seq));
        }
        match r {
            Ok(r) if filter.matches(&r) => {
                if args.json {
                    writeln!(out, "{}", serde_json::to_string(&r)?)
                } else {
                    writeln!(out, "{}", read::row(&r))
                }?;
                out.flush()
            }
            Ok(_) => Ok(()),
            Err(e) => {
                bad += 1;
                eprintln!("spa-server: {e}");
                Ok(())
            }
        }
    };
    read::for_each(dir, &mut print).map_err(usage)?;
    if args.follow {
        let after = last_seq.get();
        read::follow(dir, after, || false, &mut print).map_err(usage)?;
    }
    if bad > 0 {
        return Err(Error::Usage(format!(
            "{bad} lines are not audit records; run `spa-server audit --verify --key FILE`"
        )));
    }
    Ok(())
}

fn card(config: &ServerConfig, endpoint: &str) -> Result<Card> {
    let (host, port) = split_endpoint(endpoint)?;
    Ok(Card {
        key: config.secret_key()?.public(),
        host,
        port: port.unwrap_or(config.port),
    })
}

fn new_user(name: &str, policy: &PolicyArgs, key: ClientPublic, psk: Option<Psk>) -> Result<User> {
    let max = parse_duration(&policy.max_duration)?;
    let now = SystemTime::now();
    Ok(User {
        name: name.to_owned(),
        created: now,
        allow: parse_access_list(&policy.allow)?,
        max_duration_s: max.as_secs().try_into().unwrap_or(u32::MAX),
        nat: policy.nat,
        psk,
        keys: vec![UserKey {
            key,
            revoked: false,
            added: now,
        }],
    })
}

fn user(cli: &Cli, cmd: &UserCommand, out: &mut impl Write) -> Result<()> {
    let config = ServerConfig::load(&cli.config)?;
    let path = &config.users_file;
    let mut users = Users::load(path)?;
    match cmd {
        UserCommand::Add {
            name,
            pubkey,
            policy,
        } => {
            let key = spa_keys::text::parse_public::<ClientPublic>(pubkey)?;
            users.add(new_user(name, policy, key, None)?)?;
            users.save(path)?;
            writeln!(out, "added user {name} with key {}", key.key_id()).map_err(io)
        }
        UserCommand::Provision {
            name,
            policy,
            endpoint,
            out: bundle,
            psk,
            server_name,
        } => {
            let card = card(&config, endpoint)?;
            let mut profile = Profile::generate(&mut OsRng);
            let psk = psk.then(|| Psk::generate(&mut OsRng));
            let user = new_user(name, policy, profile.secret.public(), psk.clone())?;
            users.add(user.clone())?;
            let services = user
                .allow
                .iter()
                .map(|a| {
                    (
                        name_of(*a).map_or_else(|| a.to_string().replace('/', "-"), str::to_owned),
                        vec![*a],
                    )
                })
                .collect();
            let server_name = server_name.clone().unwrap_or_else(|| card.host.clone());
            profile.add_server(
                &server_name,
                ServerEntry {
                    card,
                    psk,
                    services,
                    secret: None,
                },
                false,
            )?;
            // The bundle first: if it cannot be written, the user is not registered.
            profile.create(bundle)?;
            users.save(path)?;
            writeln!(
                out,
                "added user {name} with key {}; bundle written to {} (0600).\n\
                 give it to the user over a private channel; they use it as `spa-client --key {} {server_name} SERVICE`\n\
                 or import it with `spa-client import {}`",
                profile.secret.public().key_id(),
                bundle.display(),
                bundle.display(),
                bundle.display()
            )
            .map_err(io)
        }
        UserCommand::List { json } => {
            if *json {
                for u in users.iter() {
                    writeln!(out, "{}", user_json(u)).map_err(io)?;
                }
                return Ok(());
            }
            writeln!(
                out,
                "{:<20} {:>4} {:>7}  {:<6} {:<4} {:<4} ALLOW",
                "NAME", "KEYS", "REVOKED", "MAX", "NAT", "PSK"
            )
            .map_err(io)?;
            for u in users.iter() {
                writeln!(
                    out,
                    "{:<20} {:>4} {:>7}  {:<6} {:<4} {:<4} {}",
                    u.name,
                    u.keys.len(),
                    u.keys.iter().filter(|k| k.revoked).count(),
                    format_duration(u.max_duration_s),
                    if u.nat { "yes" } else { "no" },
                    if u.psk.is_some() { "yes" } else { "no" },
                    access_text(&u.allow)
                )
                .map_err(io)?;
            }
            Ok(())
        }
        UserCommand::Show { name, json } => {
            let u = users
                .get(name)
                .ok_or_else(|| Error::Usage(format!("no user named {name:?}")))?;
            if *json {
                return writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&user_json(u)).expect("json")
                )
                .map_err(io);
            }
            writeln!(
                out,
                "user:         {}\ncreated:      {}\nallow:        {}\nmax duration: {}\nnat mode:     {}\npsk:          {}\nkeys:",
                u.name,
                humantime::format_rfc3339_seconds(u.created),
                access_text(&u.allow),
                format_duration(u.max_duration_s),
                if u.nat { "allowed" } else { "no" },
                if u.psk.is_some() { "yes (not shown)" } else { "no" },
            )
            .map_err(io)?;
            for k in &u.keys {
                writeln!(
                    out,
                    "  {} {}  added {}{}",
                    k.key.key_id(),
                    public_text(&k.key),
                    humantime::format_rfc3339_seconds(k.added),
                    if k.revoked { "  REVOKED" } else { "" }
                )
                .map_err(io)?;
            }
            Ok(())
        }
        UserCommand::Revoke { name, key } | UserCommand::Unrevoke { name, key } => {
            let revoke = matches!(cmd, UserCommand::Revoke { .. });
            let only = key
                .as_deref()
                .map(spa_keys::text::parse_public::<ClientPublic>)
                .transpose()?;
            let n = users.update(name, |u| {
                let mut n = 0;
                for k in u
                    .keys
                    .iter_mut()
                    .filter(|k| only.is_none_or(|o| o == k.key))
                {
                    k.revoked = revoke;
                    n += 1;
                }
                if n == 0 {
                    return Err(Error::Usage(format!("user {name:?} has no such key")));
                }
                Ok(n)
            })?;
            users.save(path)?;
            let verb = if revoke { "revoked" } else { "unrevoked" };
            writeln!(out, "{verb} {n} key(s) of user {name}").map_err(io)
        }
        UserCommand::Remove { name } => {
            let u = users.remove(name)?;
            users.save(path)?;
            writeln!(out, "removed user {name} and {} key(s)", u.keys.len()).map_err(io)
        }
        UserCommand::AddKey { name, pubkey } => {
            let key = spa_keys::text::parse_public::<ClientPublic>(pubkey)?;
            users.update(name, |u| {
                u.keys.push(UserKey {
                    key,
                    revoked: false,
                    added: SystemTime::now(),
                });
                Ok(())
            })?;
            users.save(path)?;
            writeln!(out, "added key {} to user {name}", key.key_id()).map_err(io)
        }
        UserCommand::Allow { name, access } | UserCommand::Deny { name, access } => {
            let allow = matches!(cmd, UserCommand::Allow { .. });
            let list = parse_access_list(access)?;
            let now = users.update(name, |u| {
                if allow {
                    for a in &list {
                        if !u.allow.contains(a) {
                            u.allow.push(*a);
                        }
                    }
                } else {
                    u.allow.retain(|a| !list.contains(a));
                }
                Ok(u.allow.clone())
            })?;
            users.save(path)?;
            writeln!(out, "user {name} may now open: {}", access_text(&now)).map_err(io)
        }
    }
}

fn access_text(list: &[Access]) -> String {
    if list.is_empty() {
        return "(nothing)".into();
    }
    list.iter()
        .map(Access::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn user_json(u: &User) -> serde_json::Value {
    json!({
        "name": u.name,
        "created": humantime::format_rfc3339_seconds(u.created).to_string(),
        "allow": u.allow.iter().map(Access::to_string).collect::<Vec<_>>(),
        "max_duration_s": u.max_duration_s,
        "nat": u.nat,
        "psk": u.psk.is_some(),
        "keys": u.keys.iter().map(|k| json!({
            "key_id": k.key.key_id().to_string(),
            "public_key": public_text(&k.key),
            "revoked": k.revoked,
            "added": humantime::format_rfc3339_seconds(k.added).to_string(),
        })).collect::<Vec<_>>(),
    })
}
