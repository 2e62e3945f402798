//! Text forms of keys: bech32 with a checksum and a typed prefix a person can recognise,
//! so a mistyped key is a clear error and one kind can never be taken for another.
//!
//! | Kind | Example prefix |
//! |---|---|
//! | server public key | `spaserver1…` |
//! | client public key | `spaclient1…` |
//! | server secret key | `SPA-SERVER-SECRET-KEY-1…` |
//! | client secret key | `SPA-CLIENT-SECRET-KEY-1…` |
//! | pre-shared key | `SPA-PSK-1…` |
//! | audit chain key | `SPA-AUDIT-KEY-1…` |

use bech32::{Bech32, Hrp};
use spa_proto::{ClientPublic, ClientSecret, Psk, ServerPublic, ServerSecret};
use zeroize::Zeroizing;

/// The kinds of key text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `spaserver1…`
    ServerPublic,
    /// `spaclient1…`
    ClientPublic,
    /// `SPA-SERVER-SECRET-KEY-1…`
    ServerSecret,
    /// `SPA-CLIENT-SECRET-KEY-1…`
    ClientSecret,
    /// `SPA-PSK-1…`
    Psk,
    /// `SPA-AUDIT-KEY-1…`
    AuditKey,
}

impl KeyKind {
    const ALL: [KeyKind; 6] = [
        KeyKind::ServerPublic,
        KeyKind::ClientPublic,
        KeyKind::ServerSecret,
        KeyKind::ClientSecret,
        KeyKind::Psk,
        KeyKind::AuditKey,
    ];
    /// The bech32 human-readable part (lower case).
    pub const fn hrp(self) -> &'static str {
        match self {
            KeyKind::ServerPublic => "spaserver",
            KeyKind::ClientPublic => "spaclient",
            KeyKind::ServerSecret => "spa-server-secret-key-",
            KeyKind::ClientSecret => "spa-client-secret-key-",
            KeyKind::Psk => "spa-psk-",
            KeyKind::AuditKey => "spa-audit-key-",
        }
    }
    const fn is_secret(self) -> bool {
        matches!(
            self,
            KeyKind::ServerSecret | KeyKind::ClientSecret | KeyKind::Psk | KeyKind::AuditKey
        )
    }
    /// What a person calls it.
    pub const fn describe(self) -> &'static str {
        match self {
            KeyKind::ServerPublic => "a server public key (spaserver1…)",
            KeyKind::ClientPublic => "a client public key (spaclient1…)",
            KeyKind::ServerSecret => "a server secret key (SPA-SERVER-SECRET-KEY-1…)",
            KeyKind::ClientSecret => "a client secret key (SPA-CLIENT-SECRET-KEY-1…)",
            KeyKind::Psk => "a pre-shared key (SPA-PSK-1…)",
            KeyKind::AuditKey => "an audit chain key (SPA-AUDIT-KEY-1…)",
        }
    }
}

/// A key's text is not what was expected. Never contains the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyTextError {
    /// Another kind of key was given.
    #[error("expected {}, but this is {}", .expected.describe(), .found.describe())]
    WrongKind {
        /// What was expected.
        expected: KeyKind,
        /// What was found.
        found: KeyKind,
    },
    /// The text is not a key of any kind, or its checksum does not match (a typo).
    #[error("expected {}: the text is not a valid key (mistyped or truncated? the checksum does not match)", .0.describe())]
    Malformed(KeyKind),
    /// Right prefix and checksum, wrong length.
    #[error("expected {}: wrong length", .0.describe())]
    Length(KeyKind),
    /// A public key that is not a canonical curve point encoding (never produced by spa).
    #[error("expected {}: not a canonical key encoding", .0.describe())]
    NonCanonical(KeyKind),
}

fn encode(kind: KeyKind, bytes: &[u8; 32]) -> String {
    let hrp = Hrp::parse(kind.hrp()).expect("static HRPs are valid");
    let text = if kind.is_secret() {
        bech32::encode_upper::<Bech32>(hrp, bytes)
    } else {
        bech32::encode_lower::<Bech32>(hrp, bytes)
    };
    text.expect("32 bytes fit in a bech32 string")
}

fn decode(expected: KeyKind, text: &str) -> Result<Zeroizing<[u8; 32]>, KeyTextError> {
    let text = text.trim();
    let (hrp, data) = bech32::decode(text).map_err(|_| KeyTextError::Malformed(expected))?;
    let data = Zeroizing::new(data);
    let found = KeyKind::ALL
        .into_iter()
        .find(|k| hrp.to_lowercase() == k.hrp())
        .ok_or(KeyTextError::Malformed(expected))?;
    if found != expected {
        return Err(KeyTextError::WrongKind { expected, found });
    }
    let bytes: [u8; 32] = data
        .as_slice()
        .try_into()
        .map_err(|_| KeyTextError::Length(expected))?;
    Ok(Zeroizing::new(bytes))
}

/// Text forms for the key types of `spa-proto`.
pub trait KeyText: Sized {
    /// The kind of text.
    const KIND: KeyKind;
    /// Encodes the key. For secrets the returned string wipes itself when dropped.
    fn to_text(&self) -> Zeroizing<String>;
    /// Parses the key, checking prefix and checksum.
    fn from_text(text: &str) -> Result<Self, KeyTextError>;
}

macro_rules! key_text {
    ($ty:ty, $kind:expr, $to:expr, $from:expr) => {
        impl KeyText for $ty {
            const KIND: KeyKind = $kind;
            fn to_text(&self) -> Zeroizing<String> {
                let f: fn(&$ty) -> Zeroizing<[u8; 32]> = $to;
                Zeroizing::new(encode($kind, &f(self)))
            }
            fn from_text(text: &str) -> Result<Self, KeyTextError> {
                let f: fn([u8; 32]) -> $ty = $from;
                decode($kind, text).map(|b| f(*b))
            }
        }
    };
}

key_text!(
    ServerPublic,
    KeyKind::ServerPublic,
    |k| Zeroizing::new(*k.as_bytes()),
    ServerPublic::from_bytes
);
key_text!(
    ClientPublic,
    KeyKind::ClientPublic,
    |k| Zeroizing::new(*k.as_bytes()),
    ClientPublic::from_bytes
);
key_text!(
    ServerSecret,
    KeyKind::ServerSecret,
    |k| k.to_bytes(),
    ServerSecret::from_bytes
);
key_text!(
    ClientSecret,
    KeyKind::ClientSecret,
    |k| k.to_bytes(),
    ClientSecret::from_bytes
);
key_text!(
    Psk,
    KeyKind::Psk,
    |k| Zeroizing::new(*k.as_bytes()),
    Psk::from_bytes
);

key_text!(
    AuditKey,
    KeyKind::AuditKey,
    |k| Zeroizing::new(*k.expose_secret()),
    AuditKey::from_bytes
);

/// The first key of an audit log's MAC chain (see `spa-server audit`). The daemon evolves
/// it after every record and forgets the old one; the admin keeps this first one off the
/// host to verify the whole chain. Never printed by `Debug`.
#[derive(Clone)]
pub struct AuditKey(Zeroizing<[u8; 32]>);

impl AuditKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl rand_core::CryptoRngCore) -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(k.as_mut());
        Self(k)
    }
    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }
    /// The raw bytes (for the MAC chain only).
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl core::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AuditKey(<secret>)")
    }
}

/// Parses a public key and refuses non-canonical encodings (one key, one text).
pub fn parse_public<K: KeyText + CanonicalCheck>(text: &str) -> Result<K, KeyTextError> {
    let key = K::from_text(text)?;
    if key.canonical() {
        Ok(key)
    } else {
        Err(KeyTextError::NonCanonical(K::KIND))
    }
}

/// Public key types that can say whether their encoding is canonical.
pub trait CanonicalCheck {
    /// See [`ClientPublic::is_canonical`].
    fn canonical(&self) -> bool;
}

impl CanonicalCheck for ServerPublic {
    fn canonical(&self) -> bool {
        self.is_canonical()
    }
}

impl CanonicalCheck for ClientPublic {
    fn canonical(&self) -> bool {
        self.is_canonical()
    }
}

/// The public text of a public key, as a plain `String`.
pub fn public_text<K: KeyText>(key: &K) -> String {
    debug_assert!(!K::KIND.is_secret());
    key.to_text().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn round_trips_with_recognisable_prefixes() {
        let s = ServerSecret::generate(&mut OsRng);
        let c = ClientSecret::generate(&mut OsRng);
        let p = Psk::generate(&mut OsRng);
        assert!(s.to_text().starts_with("SPA-SERVER-SECRET-KEY-1"));
        assert!(c.to_text().starts_with("SPA-CLIENT-SECRET-KEY-1"));
        assert!(p.to_text().starts_with("SPA-PSK-1"));
        assert!(public_text(&s.public()).starts_with("spaserver1"));
        assert!(public_text(&c.public()).starts_with("spaclient1"));
        assert_eq!(
            ServerSecret::from_text(&s.to_text()).unwrap().public(),
            s.public()
        );
        assert_eq!(
            ClientSecret::from_text(&c.to_text()).unwrap().public(),
            c.public()
        );
        assert_eq!(
            Psk::from_text(&p.to_text()).unwrap().as_bytes(),
            p.as_bytes()
        );
        assert_eq!(
            ClientPublic::from_text(&public_text(&c.public())).unwrap(),
            c.public()
        );
        // Lower-case secrets are accepted too (bech32 is case-insensitive as a whole).
        assert!(ClientSecret::from_text(&c.to_text().to_lowercase()).is_ok());
    }

    #[test]
    fn kinds_cannot_be_confused() {
        let c = ClientSecret::generate(&mut OsRng);
        let server_pub = public_text(&ServerSecret::generate(&mut OsRng).public());
        assert_eq!(
            ClientPublic::from_text(&server_pub),
            Err(KeyTextError::WrongKind {
                expected: KeyKind::ClientPublic,
                found: KeyKind::ServerPublic
            })
        );
        assert!(matches!(
            ServerSecret::from_text(&c.to_text()),
            Err(KeyTextError::WrongKind {
                found: KeyKind::ClientSecret,
                ..
            })
        ));
        assert!(matches!(
            ClientPublic::from_text(&c.to_text()),
            Err(KeyTextError::WrongKind {
                found: KeyKind::ClientSecret,
                ..
            })
        ));
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let text = public_text(&ClientSecret::generate(&mut OsRng).public());
        let alphabet = "qpzry9x8gf2tvdw0s3jn54khce6mua7l";
        for i in "spaclient1".len()..text.len() {
            for c in alphabet.chars() {
                let mut typo: Vec<char> = text.chars().collect();
                if typo[i] == c {
                    continue;
                }
                typo[i] = c;
                let typo: String = typo.into_iter().collect();
                assert!(
                    ClientPublic::from_text(&typo).is_err(),
                    "typo at {i} accepted"
                );
            }
        }
        assert!(ClientPublic::from_text(&text[..text.len() - 1]).is_err());
        assert!(ClientPublic::from_text("").is_err());
    }

    #[test]
    fn non_canonical_public_keys_are_refused() {
        let mut bytes = *ClientSecret::generate(&mut OsRng).public().as_bytes();
        bytes[31] |= 0x80;
        let text = public_text(&ClientPublic::from_bytes(bytes));
        assert_eq!(
            parse_public::<ClientPublic>(&text),
            Err(KeyTextError::NonCanonical(KeyKind::ClientPublic))
        );
    }

    #[test]
    fn errors_never_contain_the_text() {
        let secret = ClientSecret::generate(&mut OsRng).to_text();
        let mut broken = secret.to_string();
        broken.pop();
        for err in [
            ServerSecret::from_text(&secret).unwrap_err(),
            ClientSecret::from_text(&broken).unwrap_err(),
        ] {
            let msg = err.to_string();
            assert!(!msg.contains(&secret[24..40]), "{msg}");
            assert!(!format!("{err:?}").contains(&secret[24..40]));
        }
    }
}
