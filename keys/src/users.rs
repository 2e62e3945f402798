//! The users store: one record per user (name, keys each with a revoked flag, allowed
//! access, maximum duration, NAT mode, optional pre-shared key, created time). It may
//! hold pre-shared keys, so it is a secret file (0600).
//!
//! Format: JSON Lines, one user per line, with `#` comment lines. One line per user keeps
//! it greppable and diffable, makes every error point at the user's line, and parses fast
//! enough that a running server reloads 100,000 users well within a second (the same
//! store as TOML took 2.4 s to parse).

use std::collections::HashMap;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use spa_proto::{Access, ClientPublic, Psk};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::services::{format_duration, parse_access, parse_duration};
use crate::text::{public_text, KeyText};

/// Default longest grant for a new user.
pub const DEFAULT_MAX_DURATION_S: u32 = 3600;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    name: String,
    created: String,
    allow: Vec<String>,
    max_duration: String,
    #[serde(default)]
    nat: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    psk: Option<Zeroizing<String>>,
    #[serde(default, rename = "key")]
    keys: Vec<KeyFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    public_key: String,
    #[serde(default)]
    revoked: bool,
    added: String,
}

/// One client key of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKey {
    /// The public key.
    pub key: ClientPublic,
    /// Revoked keys authenticate but are refused with reason `revoked`.
    pub revoked: bool,
    /// When it was added.
    pub added: SystemTime,
}

/// One user.
#[derive(Clone)]
pub struct User {
    /// Unique name.
    pub name: String,
    /// When the user was created.
    pub created: SystemTime,
    /// What the user may open.
    pub allow: Vec<Access>,
    /// Longest grant in seconds.
    pub max_duration_s: u32,
    /// Whether NAT mode is allowed.
    pub nat: bool,
    /// Optional pre-shared key (the user's knocks then use `Noise_Xpsk1`).
    pub psk: Option<Psk>,
    /// The user's keys (devices, rotations).
    pub keys: Vec<UserKey>,
}

impl core::fmt::Debug for User {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("allow", &self.allow)
            .field("max_duration_s", &self.max_duration_s)
            .field("nat", &self.nat)
            .field("psk", &self.psk.as_ref().map(|_| "<redacted>"))
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// User names: lower-case letters, digits, `.`, `_`, `-`, starting with a letter or
/// digit, 1 to 32 characters. Nothing a shell or a log line could misread.
pub fn valid_user_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

/// The users store, indexed by name and by key.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: Vec<User>,
    by_name: HashMap<String, usize>,
    by_key: HashMap<ClientPublic, usize>,
}

/// serde_json appends " at line L column C"; we report the store's line ourselves.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Users {
    /// Loads and validates the store (a secret file: refused when loose).
    pub fn load(path: &Path) -> Result<Self> {
        let text = fsutil::read_secret(path)?;
        Self::parse(path, &text)
    }

    /// Parses and validates store text; `path` is only for messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut users = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut keys: HashMap<ClientPublic, usize> = HashMap::new();
        for (n, raw) in text.lines().enumerate() {
            let at = Some(n + 1);
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let u: UserFile = serde_json::from_str(line).map_err(|e| {
                Error::invalid(
                    path,
                    at,
                    fsutil::redact_quoted(&strip_position(&e.to_string())),
                )
            })?;
            let name = u.name;
            let invalid = |m: String| Error::invalid(path, at, format!("user {name:?}: {m}"));
            if !valid_user_name(&name) {
                return Err(Error::invalid(
                    path,
                    at,
                    "user names use a-z, 0-9, '.', '_', '-' (1 to 32, starting with a letter or digit)",
                ));
            }
            if names.insert(name.clone(), users.len()).is_some() {
                return Err(invalid("listed twice".into()));
            }
            let created = parse_time(&u.created)
                .ok_or_else(|| invalid("created is not an RFC 3339 time".into()))?;
            let allow = u
                .allow
                .iter()
                .map(|a| parse_access(a))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| invalid(e.to_string()))?;
            let max = parse_duration(&u.max_duration)
                .map_err(|e| invalid(format!("max_duration: {e}")))?;
            let psk = match &u.psk {
                Some(p) => Some(Psk::from_text(p).map_err(|e| invalid(format!("psk: {e}")))?),
                None => None,
            };
            let mut user_keys = Vec::with_capacity(u.keys.len());
            for k in u.keys {
                let key = crate::text::parse_public::<ClientPublic>(&k.public_key)
                    .map_err(|e| invalid(e.to_string()))?;
                if let Some(&other) = keys.get(&key) {
                    let owner = users
                        .get(other)
                        .map_or(name.as_str(), |u: &User| u.name.as_str());
                    return Err(invalid(format!(
                        "key {} is already a key of user {owner:?}",
                        key.key_id()
                    )));
                }
                keys.insert(key, users.len());
                let added = parse_time(&k.added)
                    .ok_or_else(|| invalid("a key's added is not an RFC 3339 time".into()))?;
                user_keys.push(UserKey {
                    key,
                    revoked: k.revoked,
                    added,
                });
            }
            users.push(User {
                name,
                created,
                allow,
                max_duration_s: u32::try_from(max.as_secs()).unwrap_or(u32::MAX),
                nat: u.nat,
                psk,
                keys: user_keys,
            });
        }
        Ok(Self {
            users,
            by_name: names,
            by_key: keys,
        })
    }

    /// The file text.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::from(
            "# spa users store: who may knock and what they may open. One JSON object per line.\n\
             # Managed by `spa-server user ...`; a running spa-server reloads it within a second.\n\
             # Holds pre-shared keys: keep it private (mode 0600), readable by root only.\n",
        ));
        for u in &self.users {
            let record = UserFile {
                name: u.name.clone(),
                created: format_time(u.created),
                allow: u.allow.iter().map(Access::to_string).collect(),
                max_duration: format_duration(u.max_duration_s),
                nat: u.nat,
                psk: u.psk.as_ref().map(KeyText::to_text),
                keys: u
                    .keys
                    .iter()
                    .map(|k| KeyFile {
                        public_key: public_text(&k.key),
                        revoked: k.revoked,
                        added: format_time(k.added),
                    })
                    .collect(),
            };
            let line = Zeroizing::new(serde_json::to_string(&record).expect("a user serializes"));
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// Creates a new, empty store file (0600, never overwriting).
    pub fn create_empty(path: &Path) -> Result<()> {
        fsutil::create_secret(path, &Users::default().to_text())
    }

    /// Rewrites the store atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        fsutil::write_atomic(path, &self.to_text())
    }

    fn reindex(&mut self) {
        self.by_name = self
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| (u.name.clone(), i))
            .collect();
        self.by_key = self
            .users
            .iter()
            .enumerate()
            .flat_map(|(i, u)| u.keys.iter().map(move |k| (k.key, i)))
            .collect();
    }

    /// All users, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.iter()
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name).map(|&i| &self.users[i])
    }

    /// Changes the user called `name` (or says there is none); keys may be added or
    /// removed, but a key of another user is refused.
    pub fn update<T>(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut User) -> Result<T>,
    ) -> Result<T> {
        let &i = self.by_name.get(name).ok_or_else(|| {
            Error::Usage(format!(
                "no user named {name:?} (see `spa-server user list`)"
            ))
        })?;
        let mut user = self.users[i].clone();
        let out = change(&mut user)?;
        for (n, k) in user.keys.iter().enumerate() {
            if user.keys[..n].iter().any(|o| o.key == k.key) {
                return Err(Error::Usage(format!(
                    "key {} is listed twice for user {name:?}",
                    k.key.key_id()
                )));
            }
            match self.by_key.get(&k.key) {
                Some(&owner) if owner != i => {
                    return Err(Error::Usage(format!(
                        "key {} is already a key of user {:?}",
                        k.key.key_id(),
                        self.users[owner].name
                    )))
                }
                _ => {}
            }
        }
        if user.name != name {
            return Err(Error::Usage("a user cannot be renamed".into()));
        }
        self.users[i] = user;
        self.reindex_user(i);
        Ok(out)
    }

    fn reindex_user(&mut self, i: usize) {
        self.by_key.retain(|_, &mut owner| owner != i);
        for k in &self.users[i].keys {
            self.by_key.insert(k.key, i);
        }
    }

    /// The user owning `key`.
    pub fn owner_of(&self, key: &ClientPublic) -> Option<&User> {
        self.by_key.get(key).map(|&i| &self.users[i])
    }

    /// Adds a user; duplicate names and keys are refused.
    pub fn add(&mut self, user: User) -> Result<()> {
        if !valid_user_name(&user.name) {
            return Err(Error::Usage(format!(
                "user name {:?}: use a-z, 0-9, '.', '_', '-' (1 to 32, starting with a letter or digit)",
                user.name.chars().take(40).collect::<String>()
            )));
        }
        if self.get(&user.name).is_some() {
            return Err(Error::Usage(format!("user {:?} exists already", user.name)));
        }
        for (n, k) in user.keys.iter().enumerate() {
            self.check_new_key(&k.key)?;
            if user.keys[..n].iter().any(|o| o.key == k.key) {
                return Err(Error::Usage(format!(
                    "key {} is listed twice",
                    k.key.key_id()
                )));
            }
        }
        let i = self.users.len();
        self.by_name.insert(user.name.clone(), i);
        for k in &user.keys {
            self.by_key.insert(k.key, i);
        }
        self.users.push(user);
        Ok(())
    }

    /// Refuses a key that belongs to any user already.
    pub fn check_new_key(&self, key: &ClientPublic) -> Result<()> {
        match self.owner_of(key) {
            Some(owner) => Err(Error::Usage(format!(
                "key {} is already a key of user {:?}",
                key.key_id(),
                owner.name
            ))),
            None => Ok(()),
        }
    }

    /// Removes the user called `name`.
    pub fn remove(&mut self, name: &str) -> Result<User> {
        let &i = self
            .by_name
            .get(name)
            .ok_or_else(|| Error::Usage(format!("no user named {name:?}")))?;
        let user = self.users.remove(i);
        self.reindex();
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn user(name: &str) -> User {
        User {
            name: name.into(),
            created: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            allow: vec![Access::tcp(22).unwrap()],
            max_duration_s: 3600,
            nat: false,
            psk: Some(Psk::generate(&mut OsRng)),
            keys: vec![UserKey {
                key: spa_proto::ClientSecret::generate(&mut OsRng).public(),
                revoked: false,
                added: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            }],
        }
    }

    #[test]
    fn round_trip() {
        let mut users = Users::default();
        users.add(user("alice")).unwrap();
        users.add(user("bob")).unwrap();
        let text = users.to_text();
        let again = Users::parse(Path::new("users.jsonl"), &text).unwrap();
        assert_eq!(again.len(), 2);
        let (a, b) = (users.get("alice").unwrap(), again.get("alice").unwrap());
        assert_eq!(a.keys, b.keys);
        assert_eq!(a.allow, b.allow);
        assert_eq!(a.created, b.created);
        assert_eq!(
            a.psk.as_ref().unwrap().as_bytes(),
            b.psk.as_ref().unwrap().as_bytes()
        );
    }

    #[test]
    fn refusals_name_the_line() {
        let mut users = Users::default();
        users.add(user("alice")).unwrap();
        assert!(users.add(user("alice")).is_err(), "duplicate name");
        let mut dup_key = user("carol");
        dup_key.keys = users.get("alice").unwrap().keys.clone();
        assert!(users.add(dup_key).is_err(), "duplicate key");
        for bad in ["Alice", "", "a b", "-x", "a;rm", "x".repeat(33).as_str()] {
            assert!(users.add(user(bad)).is_err(), "{bad:?}");
        }
        let text = users.to_text();
        // The same user twice in the file: the error names the second line.
        let alice_line = text.lines().find(|l| l.contains("\"alice\"")).unwrap();
        let doubled = format!("{}{alice_line}\n", *text);
        let err = Users::parse(Path::new("users.jsonl"), &doubled)
            .unwrap_err()
            .to_string();
        let line = doubled.lines().count();
        assert!(
            err.contains(&format!("users.jsonl:{line}:")) && err.contains("twice"),
            "{err}"
        );
        // Unknown field: named, with the line, and the psk on that line is not quoted.
        let unknown = text.replace("\"nat\":false", "\"nat\":false,\"admin\":true");
        let err = Users::parse(Path::new("users.jsonl"), &unknown)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("admin") && err.contains("users.jsonl:4:"),
            "{err}"
        );
        assert!(!err.contains("SPA-PSK"), "{err}");
        // A psk in a field of the wrong type is not echoed.
        let psk = users.get("alice").unwrap().psk.as_ref().unwrap().to_text();
        let wrong = text.replace("\"nat\":false", &format!("\"nat\":\"{}\"", *psk));
        let err = Users::parse(Path::new("users.jsonl"), &wrong)
            .unwrap_err()
            .to_string();
        assert!(!err.contains(&psk[9..30]), "{err}");
        // Comments and blank lines are fine.
        assert_eq!(
            Users::parse(Path::new("u"), &format!("# hi\n\n{}", *text))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn debug_hides_psk() {
        let u = user("alice");
        let psk = u.psk.as_ref().unwrap().to_text();
        assert!(!format!("{u:?}").contains(&psk[10..40]));
    }
}
