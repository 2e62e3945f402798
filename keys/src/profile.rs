//! The client profile (`~/.spa` by default): the client's secret key and, per server, its
//! card, an optional pre-shared key, and service names. A provisioning bundle is a
//! profile with one server, so it works directly as `spa-client --key FILE`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use spa_proto::{Access, ClientSecret, Psk, ServerPublic};
use zeroize::Zeroizing;

use crate::card::{valid_host, Card};
use crate::error::{Error, Result};
use crate::fsutil;
use crate::services::parse_access;
use crate::text::{public_text, KeyText};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    secret_key: Zeroizing<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    servers: BTreeMap<String, ServerFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_key: Option<Zeroizing<String>>,
    public_key: String,
    address: String,
    port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    psk: Option<Zeroizing<String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    services: BTreeMap<String, Vec<String>>,
}

/// One server in a profile.
#[derive(Debug, Clone)]
pub struct ServerEntry {
    /// Key, host and port.
    pub card: Card,
    /// The pre-shared key, when the server's admin set one for this user.
    pub psk: Option<Psk>,
    /// Service names this profile defines for the server (`admin` → `tcp/8443`...).
    pub services: BTreeMap<String, Vec<Access>>,
    /// A key for this server only (an imported bundle's), instead of the profile's key.
    pub secret: Option<ClientSecret>,
}

/// A client profile.
pub struct Profile {
    /// The client's secret key.
    pub secret: ClientSecret,
    /// Servers by name.
    pub servers: BTreeMap<String, ServerEntry>,
}

impl core::fmt::Debug for Profile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Profile")
            .field("secret", &self.secret)
            .field("public", &self.secret.public())
            .field("servers", &self.servers)
            .finish()
    }
}

/// Server and service names: letters, digits, `.`, `_`, `-`; 1 to 64 characters.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

impl Profile {
    /// A new profile with a fresh key and no servers.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            secret: ClientSecret::generate(rng),
            servers: BTreeMap::new(),
        }
    }

    /// Loads and validates a profile (refused when group/world readable).
    pub fn load(path: &Path) -> Result<Self> {
        let text = fsutil::read_secret(path)?;
        let file: ProfileFile =
            toml::from_str(&text).map_err(|e| fsutil::toml_error(path, &text, &e))?;
        let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).map(|i| i + 1);
        let secret = ClientSecret::from_text(&file.secret_key)
            .map_err(|e| Error::invalid(path, line_of("secret_key"), format!("secret_key: {e}")))?;
        let mut servers = BTreeMap::new();
        for (name, s) in file.servers {
            let at = line_of(&format!("[servers.{name}]"));
            let invalid = |m: String| Error::invalid(path, at, format!("server {name:?}: {m}"));
            if !valid_name(&name) {
                return Err(invalid(
                    "server names use letters, digits, '.', '_', '-'".into(),
                ));
            }
            let key = crate::text::parse_public::<ServerPublic>(&s.public_key)
                .map_err(|e| invalid(format!("public_key: {e}")))?;
            if !valid_host(&s.address) {
                return Err(invalid("address is not a host name or IP address".into()));
            }
            if s.port == 0 {
                return Err(invalid("port 0".into()));
            }
            let psk = match &s.psk {
                Some(p) => Some(Psk::from_text(p).map_err(|e| invalid(format!("psk: {e}")))?),
                None => None,
            };
            let own_secret = match &s.secret_key {
                Some(k) => Some(
                    ClientSecret::from_text(k).map_err(|e| invalid(format!("secret_key: {e}")))?,
                ),
                None => None,
            };
            let mut services = BTreeMap::new();
            for (svc, list) in s.services {
                if !valid_name(&svc) {
                    return Err(invalid(format!("service name {svc:?} is not valid")));
                }
                let list = list
                    .iter()
                    .map(|a| parse_access(a))
                    .collect::<Result<Vec<_>>>()
                    .map_err(|e| invalid(format!("service {svc:?}: {e}")))?;
                if list.is_empty() || list.len() > spa_proto::payload::MAX_ACCESS {
                    return Err(invalid(format!("service {svc:?} must name 1 to 4 entries")));
                }
                services.insert(svc, list);
            }
            servers.insert(
                name,
                ServerEntry {
                    card: Card {
                        key,
                        host: s.address,
                        port: s.port,
                    },
                    psk,
                    services,
                    secret: own_secret,
                },
            );
        }
        Ok(Self { secret, servers })
    }

    /// The file text: a comment header, then TOML.
    pub fn to_toml(&self) -> Zeroizing<String> {
        let file = ProfileFile {
            secret_key: self.secret.to_text(),
            servers: self
                .servers
                .iter()
                .map(|(name, s)| {
                    (
                        name.clone(),
                        ServerFile {
                            secret_key: s.secret.as_ref().map(KeyText::to_text),
                            public_key: public_text(&s.card.key),
                            address: s.card.host.clone(),
                            port: s.card.port,
                            psk: s.psk.as_ref().map(KeyText::to_text),
                            services: s
                                .services
                                .iter()
                                .map(|(k, v)| {
                                    (k.clone(), v.iter().map(Access::to_string).collect())
                                })
                                .collect(),
                        },
                    )
                })
                .collect(),
        };
        let body = Zeroizing::new(toml::to_string(&file).expect("a profile serializes"));
        let created = humantime::format_rfc3339_seconds(SystemTime::now());
        Zeroizing::new(format!(
            "# spa client profile: your secret key and the servers you knock on.\n\
             # Written {created}. Your public key: {}\n\
             # Keep this file private (mode 0600); spa-client refuses it otherwise.\n\
             # Give the server's admin only your public key (`spa-client show`).\n\n{}",
            public_text(&self.secret.public()),
            *body
        ))
    }

    /// Creates a new profile file (0600, never overwriting).
    pub fn create(&self, path: &Path) -> Result<()> {
        fsutil::create_secret(path, &self.to_toml())
    }

    /// Rewrites an existing profile atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        fsutil::write_atomic(path, &self.to_toml())
    }

    /// Adds a server; an existing name is an error unless `replace`.
    pub fn add_server(&mut self, name: &str, entry: ServerEntry, replace: bool) -> Result<()> {
        if !valid_name(name) {
            return Err(Error::Usage(format!(
                "server name {name:?}: use letters, digits, '.', '_', '-' (1 to 64)"
            )));
        }
        if self.servers.contains_key(name) && !replace {
            return Err(Error::Usage(format!(
                "the profile already has a server named {name:?}; choose another name or remove it first"
            )));
        }
        self.servers.insert(name.to_owned(), entry);
        Ok(())
    }

    /// Merges the servers of a bundle (another profile) into this one. A server whose key
    /// differs from this profile's keeps the bundle's key as its own. Existing names are
    /// refused. Returns the names added.
    pub fn import(&mut self, bundle: &Profile) -> Result<Vec<String>> {
        if bundle.servers.is_empty() {
            return Err(Error::Usage("the bundle names no server".into()));
        }
        if let Some(name) = bundle
            .servers
            .keys()
            .find(|n| self.servers.contains_key(*n))
        {
            return Err(Error::Usage(format!(
                "the profile already has a server named {name:?}; remove it first or edit the bundle"
            )));
        }
        for (name, entry) in &bundle.servers {
            let mut entry = entry.clone();
            let key = entry.secret.take().unwrap_or_else(|| bundle.secret.clone());
            if key.public() != self.secret.public() {
                entry.secret = Some(key);
            }
            self.servers.insert(name.clone(), entry);
        }
        Ok(bundle.servers.keys().cloned().collect())
    }

    /// Finds a server by profile name, or by the host/address it was added with.
    pub fn find_server(&self, host: &str) -> Option<(&str, &ServerEntry)> {
        self.servers
            .get_key_value(host)
            .or_else(|| {
                self.servers
                    .iter()
                    .find(|(_, s)| s.card.host.eq_ignore_ascii_case(host))
            })
            .map(|(n, s)| (n.as_str(), s))
    }
}

impl ServerEntry {
    /// The key to knock on this server with.
    pub fn secret<'a>(&'a self, profile: &'a Profile) -> &'a ClientSecret {
        self.secret.as_ref().unwrap_or(&profile.secret)
    }

    /// Resolves a service: a name this profile defines, a well-known name, or
    /// `tcp/PORT`/`udp/PORT`.
    pub fn resolve(&self, service: &str) -> Result<Vec<Access>> {
        if let Some(list) = self.services.get(service) {
            return Ok(list.clone());
        }
        parse_access(service).map(|a| vec![a])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn sample() -> Profile {
        let mut p = Profile::generate(&mut OsRng);
        let card = Card {
            key: spa_proto::ServerSecret::generate(&mut OsRng).public(),
            host: "203.0.113.1".into(),
            port: 23456,
        };
        let services = BTreeMap::from([("admin".to_string(), vec![Access::tcp(8443).unwrap()])]);
        p.add_server(
            "web1",
            ServerEntry {
                card,
                psk: Some(Psk::generate(&mut OsRng)),
                services,
                secret: None,
            },
            false,
        )
        .unwrap();
        p
    }

    #[test]
    fn round_trip_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spa");
        let p = sample();
        p.create(&path).unwrap();
        let q = Profile::load(&path).unwrap();
        assert_eq!(q.secret.public(), p.secret.public());
        let (name, s) = q.find_server("203.0.113.1").unwrap();
        assert_eq!(name, "web1");
        assert_eq!(s.card, p.servers["web1"].card);
        assert_eq!(
            s.psk.as_ref().unwrap().as_bytes(),
            p.servers["web1"].psk.as_ref().unwrap().as_bytes()
        );
        assert_eq!(
            s.resolve("admin").unwrap(),
            vec![Access::tcp(8443).unwrap()]
        );
        assert_eq!(s.resolve("ssh").unwrap(), vec![Access::tcp(22).unwrap()]);
        assert!(s.resolve("nope").is_err());
        assert!(matches!(p.create(&path), Err(Error::Exists(_))));
    }

    #[test]
    fn import_keeps_the_bundle_key_per_server() {
        let mut mine = Profile::generate(&mut OsRng);
        let bundle = sample();
        assert_eq!(mine.import(&bundle).unwrap(), vec!["web1".to_string()]);
        let entry = &mine.servers["web1"];
        assert_eq!(entry.secret(&mine).public(), bundle.secret.public());
        assert!(mine.import(&bundle).is_err(), "same name twice");
        // Round trip keeps the per-server key.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spa");
        mine.create(&path).unwrap();
        let again = Profile::load(&path).unwrap();
        assert_eq!(
            again.servers["web1"].secret(&again).public(),
            bundle.secret.public()
        );
        assert_eq!(again.secret.public(), mine.secret.public());
    }

    #[test]
    fn debug_hides_secrets() {
        let p = sample();
        let debug = format!("{p:?}");
        let secret = p.secret.to_text();
        assert!(!debug.contains(&secret[23..50]));
        let psk = p.servers["web1"].psk.as_ref().unwrap().to_text();
        assert!(!debug.contains(&psk[10..40]));
    }

    #[test]
    fn unknown_field_names_the_line_not_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spa");
        let text = sample()
            .to_toml()
            .replace("port = 23456", "port = 23456\ncolour = \"blue\"");
        crate::fsutil::create_secret(&path, &text).unwrap();
        let err = Profile::load(&path).unwrap_err().to_string();
        let line = text.lines().position(|l| l.starts_with("colour")).unwrap() + 1;
        assert!(err.contains(&format!(":{line}:")), "{err}");
        assert!(err.contains("colour"), "{err}");
        assert!(!err.contains("SPA-"), "{err}");
    }

    #[test]
    fn bad_secret_text_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spa");
        let text = sample().to_toml();
        let secret = sample_secret_text(&text);
        // One character of the key's data changed: the bech32 checksum must catch it.
        let mut chars: Vec<char> = secret.chars().collect();
        chars[30] = if chars[30] == 'Q' { 'P' } else { 'Q' };
        let typo: String = chars.into_iter().collect();
        let secret_line = secret.clone();
        crate::fsutil::create_secret(&path, &text.replace(&secret_line, &typo)).unwrap();
        let err = Profile::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("secret_key") && err.contains("checksum"),
            "{err}"
        );
        assert!(!err.contains(&secret_line[30..60]), "{err}");
        assert!(!err.contains(&typo[30..60]), "{err}");
    }

    fn sample_secret_text(toml: &str) -> String {
        let line = toml.lines().find(|l| l.starts_with("secret_key")).unwrap();
        line.split('"').nth(1).unwrap().to_string()
    }
}
