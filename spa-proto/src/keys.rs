//! Key types. Secret and public keys of servers and clients are four distinct types, so a
//! server key cannot be passed where a client key is expected. Secrets zeroize on drop and
//! their `Debug` prints a placeholder; text forms with typed prefixes live in `spa-keys`.

use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::labels;

/// Length of every key in bytes.
pub const KEY_LEN: usize = 32;

/// See [`ClientPublic::is_canonical`].
pub(crate) fn is_canonical(u: &[u8; KEY_LEN]) -> bool {
    if u[31] & 0x80 != 0 {
        return false;
    }
    // u >= p = 2^255 - 19 exactly when u = 0x7fff...ff followed by a low byte >= 0xed.
    let top_all_ones = u[31] == 0x7f && u[1..31].iter().all(|&b| b == 0xff);
    !(top_all_ones && u[0] >= 0xed)
}

macro_rules! key_pair_types {
    ($(#[$sm:meta])* $secret:ident, $(#[$pm:meta])* $public:ident) => {
        $(#[$pm])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $public([u8; KEY_LEN]);

        impl $public {
            /// Wraps raw key bytes (no validation: X25519 accepts every 32-byte string).
            pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }
            /// The raw key bytes.
            pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
            /// Whether these bytes are the canonical encoding of a curve point: bit 255
            /// clear and the u-coordinate below 2^255 − 19. X25519 ignores bit 255 and
            /// reduces u, so a non-canonical string names the same key as a canonical one;
            /// spa refuses such keys so one private key has exactly one public text.
            /// Keys made by [`Self::from_bytes`] of a secret are always canonical.
            pub fn is_canonical(&self) -> bool {
                is_canonical(&self.0)
            }
            /// Short, non-secret identifier for logs and audit records (PROTOCOL.md §7).
            pub fn key_id(&self) -> KeyId {
                KeyId::of(&self.0)
            }
        }

        impl core::fmt::Debug for $public {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, concat!(stringify!($public), "({})"), self.key_id())
            }
        }

        $(#[$sm])*
        pub struct $secret {
            secret: StaticSecret,
            public: $public,
        }

        impl $secret {
            /// A fresh key from a cryptographically secure RNG.
            pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
                let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
                rng.fill_bytes(bytes.as_mut());
                Self::from_bytes(*bytes)
            }
            /// Wraps raw secret bytes (clamped by X25519 when used).
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                let secret = StaticSecret::from(bytes);
                let public = $public(PublicKey::from(&secret).to_bytes());
                Self { secret, public }
            }
            /// The raw secret bytes, in a buffer that wipes itself.
            pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
                Zeroizing::new(self.secret.to_bytes())
            }
            /// The matching public key.
            pub const fn public(&self) -> $public {
                self.public
            }
            pub(crate) fn dalek(&self) -> &StaticSecret {
                &self.secret
            }
        }

        impl Clone for $secret {
            fn clone(&self) -> Self {
                Self { secret: self.secret.clone(), public: self.public }
            }
        }

        impl core::fmt::Debug for $secret {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(concat!(stringify!($secret), "(<redacted>)"))
            }
        }

        // `StaticSecret` zeroizes itself on drop; the public half is not secret.
        impl ZeroizeOnDrop for $secret {}
    };
}

key_pair_types!(
    /// The server's static secret key.
    ServerSecret,
    /// The server's static public key: what every client's card carries.
    ServerPublic
);
key_pair_types!(
    /// A client's static secret key. It never leaves the client's machine.
    ClientSecret,
    /// A client's static public key: what the server's users store holds.
    ClientPublic
);

/// An optional per-user pre-shared key (selects `Noise_Xpsk1`).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Psk([u8; KEY_LEN]);

impl Psk {
    /// A fresh pre-shared key from a cryptographically secure RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut psk = Self([0u8; KEY_LEN]);
        rng.fill_bytes(&mut psk.0);
        psk
    }
    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl core::fmt::Debug for Psk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// `HASH("spa/key-id/v1" || public_key)[0..8]`, shown as 16 hex digits. Not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn of(public: &[u8; KEY_LEN]) -> Self {
        let digest = Sha256::new()
            .chain_update(labels::KEY_ID)
            .chain_update(public)
            .finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self(id)
    }
    /// The raw 8 bytes.
    pub const fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl core::fmt::Display for KeyId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl core::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "KeyId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn secrets_never_print() {
        let server = ServerSecret::generate(&mut OsRng);
        let client = ClientSecret::generate(&mut OsRng);
        let psk = Psk::generate(&mut OsRng);
        for (debug, bytes) in [
            (format!("{server:?}"), *server.to_bytes()),
            (format!("{client:?}"), *client.to_bytes()),
            (format!("{psk:?}"), *psk.as_bytes()),
        ] {
            assert!(debug.contains("<redacted>"), "{debug}");
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert!(!debug.contains(&hex));
            assert!(!debug.contains(&format!("{bytes:?}")));
        }
        assert_eq!(format!("{server:?}"), "ServerSecret(<redacted>)");
        assert_eq!(format!("{client:?}"), "ClientSecret(<redacted>)");
    }

    #[test]
    fn public_matches_secret_and_round_trips() {
        let client = ClientSecret::generate(&mut OsRng);
        let again = ClientSecret::from_bytes(*client.to_bytes());
        assert_eq!(client.public(), again.public());
        assert_ne!(client.public().as_bytes(), &*client.to_bytes());
    }

    #[test]
    fn canonical_encodings() {
        assert!(ClientPublic::from_bytes([0; 32]).is_canonical());
        let mut p = [0xff; 32];
        p[31] = 0x7f;
        p[0] = 0xec; // p - 1
        assert!(ClientPublic::from_bytes(p).is_canonical());
        p[0] = 0xed; // p
        assert!(!ClientPublic::from_bytes(p).is_canonical());
        let mut high = *ClientSecret::generate(&mut OsRng).public().as_bytes();
        assert!(ClientPublic::from_bytes(high).is_canonical());
        high[31] |= 0x80;
        assert!(!ClientPublic::from_bytes(high).is_canonical());
        for _ in 0..256 {
            assert!(ClientSecret::generate(&mut OsRng).public().is_canonical());
        }
    }

    #[test]
    fn key_id_is_stable_and_distinct() {
        let a = ClientPublic::from_bytes([1; 32]).key_id();
        let b = ClientPublic::from_bytes([2; 32]).key_id();
        assert_ne!(a, b);
        assert_eq!(a.to_string().len(), 16);
        assert_eq!(a, ClientPublic::from_bytes([1; 32]).key_id());
    }
}
