//! The live view of keys and users the verifier uses, and its reload.
//!
//! The users store is polled (size, mtime, inode) a few times a second; on a change it is
//! parsed and the directory rebuilt reusing every known key's precomputed DH, then
//! swapped in atomically. Verifier threads load the current snapshot per knock, so a knock
//! in flight finishes on the view it started with, and none is dropped. Revocation and
//! policy changes therefore take effect within one poll interval plus one parse
//! (about 0.6 s for 100,000 users; see `bench/reload.sh`).
//!
//! The configuration file is polled the same way for a server key rotation
//! (`spa-server rotate-key` rewrites `secret_key_file` and `previous_keys`): the new key
//! becomes current, still-accepted old keys keep their precomputed directories, and only
//! a key not seen before costs a DH per client. Other settings take effect at a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use spa_keys::server::ServerConfig;
use spa_keys::users::Users;
use spa_proto::{ServerSecret, Verifier, VerifierConfig};

use crate::directory::{self, BuildStats, Directory};

/// One server identity: its verifier and the client keys precomputed for it.
pub struct Identity {
    /// The key, for computing new clients' DH on a reload.
    secret: ServerSecret,
    /// Verifies knocks sealed for this identity's key (unchanged across reloads).
    pub verifier: Arc<Verifier>,
    /// Client keys with their DH for this key.
    pub directory: Directory,
    /// For a previous key after a rotation: accepted until then.
    pub accept_until: Option<SystemTime>,
}

/// Everything a knock is verified against, at one moment.
pub struct Snapshot {
    /// The current key first, then previous keys still accepted.
    pub identities: Vec<Identity>,
}

/// How a users file looked when last loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    ino: u64,
    #[cfg(unix)]
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    Ok(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
        #[cfg(unix)]
        ino: m.ino(),
        #[cfg(unix)]
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The live snapshot and what is needed to rebuild it.
pub struct Live {
    current: ArcSwap<Snapshot>,
    users_file: PathBuf,
    stamp: std::sync::Mutex<Option<Stamp>>,
    config_file: PathBuf,
    config_stamp: std::sync::Mutex<Option<Stamp>>,
    verifier_config: VerifierConfig,
}

/// What a reload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// The file did not change.
    Unchanged,
    /// The file changed and the new view is live.
    Swapped(BuildStats),
    /// The server keys changed (a rotation) and the new view is live.
    KeysChanged(BuildStats),
}

impl Live {
    /// Loads keys and users and precomputes every key's DH (on all cores).
    pub fn load(
        config: &ServerConfig,
        verifier: &VerifierConfig,
        now: SystemTime,
    ) -> spa_keys::Result<Self> {
        let before = stamp(&config.users_file).ok();
        let config_before = stamp(&config.path).ok();
        let users = Users::load(&config.users_file)?;
        let (identities, _) = identities(config, verifier, &users, None, now)?;
        Ok(Self {
            current: ArcSwap::from_pointee(Snapshot { identities }),
            users_file: config.users_file.clone(),
            stamp: std::sync::Mutex::new(before),
            config_file: config.path.clone(),
            config_stamp: std::sync::Mutex::new(config_before),
            verifier_config: verifier.clone(),
        })
    }

    /// Reloads the server keys if the configuration file changed (a rotation). On an
    /// invalid file or key the old view stays live and the error is returned.
    pub fn reload_keys_if_changed(&self, now: SystemTime) -> spa_keys::Result<Reloaded> {
        let seen =
            stamp(&self.config_file).map_err(|e| spa_keys::Error::io(&self.config_file, e))?;
        let mut last = self.config_stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == Some(seen) {
            return Ok(Reloaded::Unchanged);
        }
        // Seen, whatever comes of it: a broken file is reported once, not at every poll.
        *last = Some(seen);
        let config = ServerConfig::load(&self.config_file)?;
        if config.users_file != self.users_file {
            return Err(spa_keys::Error::Usage(
                "users_file changed in the configuration: that takes a restart".into(),
            ));
        }
        // Hold the users stamp too, so a users reload cannot interleave.
        let users_stamp = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        let users = Users::load(&self.users_file)?;
        let old = self.current.load_full();
        let (identities, stats) =
            identities(&config, &self.verifier_config, &users, Some(&old), now)?;
        drop(users_stamp);
        self.current.store(Arc::new(Snapshot { identities }));
        Ok(Reloaded::KeysChanged(stats))
    }

    /// The current snapshot; cheap, for every knock.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Reloads the users store if it changed. On an invalid file the old view stays live
    /// and the error is returned (the admin commands validate before they write, so this
    /// only happens after a hand edit).
    pub fn reload_if_changed(&self) -> spa_keys::Result<Reloaded> {
        let now = stamp(&self.users_file).map_err(|e| spa_keys::Error::io(&self.users_file, e))?;
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == Some(now) {
            return Ok(Reloaded::Unchanged);
        }
        // Seen, whatever comes of it: a broken file is reported once, not at every poll.
        *last = Some(now);
        let users = Users::load(&self.users_file)?;
        let old = self.current.load_full();
        let mut total = BuildStats::default();
        let identities = old
            .identities
            .iter()
            .map(|id| {
                let (directory, stats) = directory::build(&id.secret, &users, Some(&id.directory));
                total.reused += stats.reused;
                total.computed += stats.computed;
                total.refused += stats.refused;
                Identity {
                    secret: id.secret.clone(),
                    verifier: id.verifier.clone(),
                    directory,
                    accept_until: id.accept_until,
                }
            })
            .collect();
        drop(users);
        self.current.store(Arc::new(Snapshot { identities }));
        Ok(Reloaded::Swapped(total))
    }

    /// Polls for changes every `interval` until `stop` returns true, reporting each
    /// outcome to `report`. Runs on the caller's thread.
    pub fn watch(
        &self,
        interval: Duration,
        stop: impl Fn() -> bool,
        mut report: impl FnMut(spa_keys::Result<Reloaded>),
    ) {
        while !stop() {
            std::thread::sleep(interval);
            for r in [
                self.reload_keys_if_changed(SystemTime::now()),
                self.reload_if_changed(),
            ] {
                if !matches!(r, Ok(Reloaded::Unchanged)) {
                    report(r);
                }
            }
        }
    }
}

/// The identities for `config`'s keys: the current key first, then previous keys still
/// accepted at `now`. A key `old` already has keeps its verifier and directory (brought up
/// to date with `users`, reusing every known client's DH).
fn identities(
    config: &ServerConfig,
    verifier: &VerifierConfig,
    users: &Users,
    old: Option<&Snapshot>,
    now: SystemTime,
) -> spa_keys::Result<(Vec<Identity>, BuildStats)> {
    let keys = std::iter::once((config.secret_key()?, None)).chain(
        config
            .previous_secret_keys(now)?
            .into_iter()
            .map(|(k, until)| (k, Some(until))),
    );
    let mut total = BuildStats::default();
    let out = keys
        .map(|(secret, accept_until)| {
            let known = old.and_then(|o| {
                o.identities
                    .iter()
                    .find(|id| id.secret.public() == secret.public())
            });
            let (directory, stats) =
                directory::build(&secret, users, known.map(|id| &id.directory));
            total.reused += stats.reused;
            total.computed += stats.computed;
            total.refused += stats.refused;
            let verifier = known.map_or_else(
                || Arc::new(Verifier::new(secret.clone(), verifier.clone())),
                |id| id.verifier.clone(),
            );
            Identity {
                secret,
                verifier,
                directory,
                accept_until,
            }
        })
        .collect();
    Ok((out, total))
}
