//! The server side: verifying a knock, step by step in the order of PROTOCOL.md §6.
//!
//! Pure: the caller passes the source address, the time, the client directory and the
//! replay state, and gets back an [`Opened`] grant decision or a [`Rejection`]. Nothing
//! here changes state; the caller commits the timestamp and changes the firewall.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::keys::{ClientPublic, Psk, ServerPublic, ServerSecret, KEY_LEN};
use crate::noise::{self, NoiseError, Pattern, SymmetricState, TAG_LEN};
use crate::payload::{Access, Action, OpenAddr, Payload, PAYLOAD_LEN};
use crate::reject::Reject;
use crate::wire::{self, Mac1Key, E_AT, KNOCK_LEN, MAC1_AT, PAYLOAD_AT, STATIC_AT};

/// Server-wide verification settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierConfig {
    /// Accepted clock difference either way, in milliseconds (default 120 000).
    pub window_ms: u64,
    /// Grant duration when a knock asks for 0 seconds (default 30).
    pub default_duration_s: u32,
    /// Addresses a knock may name as its destination; empty accepts any (step 15).
    pub destinations: Vec<IpAddr>,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        Self {
            window_ms: 120_000,
            default_duration_s: 30,
            destinations: Vec::new(),
        }
    }
}

/// What a user may open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Access entries the user may request.
    pub allowed: Vec<Access>,
    /// Longest grant, in seconds; longer requests are clamped.
    pub max_duration_s: u32,
    /// Whether the user may use NAT mode ("open the address the packet comes from").
    pub nat_allowed: bool,
}

/// A client public key that cannot be provisioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidClientKey {
    /// A low-order point: every DH with it is all zero.
    #[error("client public key {0} is a low-order point")]
    LowOrder(crate::keys::KeyId),
    /// Not the canonical encoding (bit 255 set, or u ≥ 2^255 − 19): it would name the
    /// same private key as another string.
    #[error("client public key {0} is not canonically encoded")]
    NonCanonical(crate::keys::KeyId),
}

/// One provisioned client key, with its precomputed static-static DH.
pub struct ClientEntry<U> {
    key: ClientPublic,
    ss: Zeroizing<[u8; KEY_LEN]>,
    psk: Option<Psk>,
    /// Revoked keys authenticate but are refused (step 10).
    pub revoked: bool,
    /// The user's policy (shared by all of the user's keys).
    pub policy: Arc<Policy>,
    /// Whatever the server attaches (user name, ...).
    pub user: U,
}

impl<U> ClientEntry<U> {
    /// Precomputes `ss = DH(server, key)`: the one X25519 a knock no longer costs.
    pub fn new(
        server: &ServerSecret,
        key: ClientPublic,
        psk: Option<Psk>,
        policy: Arc<Policy>,
        user: U,
    ) -> Result<Self, InvalidClientKey> {
        if !key.is_canonical() {
            return Err(InvalidClientKey::NonCanonical(key.key_id()));
        }
        let ss = noise::dh(server.dalek(), key.as_bytes())
            .map_err(|_| InvalidClientKey::LowOrder(key.key_id()))?;
        Ok(Self {
            key,
            ss,
            psk,
            revoked: false,
            policy,
            user,
        })
    }
    /// The same key with new details, reusing the precomputed `ss` (a reload of the users
    /// store changes policy, psk or revocation without another Diffie-Hellman).
    pub fn rebind<V>(
        &self,
        psk: Option<Psk>,
        revoked: bool,
        policy: Arc<Policy>,
        user: V,
    ) -> ClientEntry<V> {
        ClientEntry {
            key: self.key,
            ss: self.ss.clone(),
            psk,
            revoked,
            policy,
            user,
        }
    }
    /// The client's public key.
    pub const fn key(&self) -> &ClientPublic {
        &self.key
    }
    /// Whether the key was provisioned with a pre-shared key.
    pub const fn has_psk(&self) -> bool {
        self.psk.is_some()
    }
}

impl<U: core::fmt::Debug> core::fmt::Debug for ClientEntry<U> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ClientEntry")
            .field("key", &self.key)
            .field("ss", &"<redacted>")
            .field("psk", &self.psk.as_ref().map(|_| "<redacted>"))
            .field("revoked", &self.revoked)
            .field("policy", &self.policy)
            .field("user", &self.user)
            .finish()
    }
}

/// Looks up provisioned client keys (step 7).
pub trait Directory {
    /// What the server attaches to each key.
    type User;
    /// The entry for `key`, if provisioned.
    fn lookup(&self, key: &ClientPublic) -> Option<&ClientEntry<Self::User>>;
}

impl<U, S: BuildHasher> Directory for HashMap<ClientPublic, ClientEntry<U>, S> {
    type User = U;
    fn lookup(&self, key: &ClientPublic) -> Option<&ClientEntry<U>> {
        self.get(key)
    }
}

impl<U, S: BuildHasher> Directory for HashMap<ClientPublic, Arc<ClientEntry<U>>, S> {
    type User = U;
    fn lookup(&self, key: &ClientPublic) -> Option<&ClientEntry<U>> {
        self.get(key).map(|e| &**e)
    }
}

/// The last accepted timestamp per key (step 13). The server keeps it durable.
pub trait ReplayState {
    /// The last accepted timestamp for `key`, if any knock from it was accepted.
    fn last_accepted(&self, key: &ClientPublic) -> Option<u64>;
}

impl<S: BuildHasher> ReplayState for HashMap<ClientPublic, u64, S> {
    fn last_accepted(&self, key: &ClientPublic) -> Option<u64> {
        self.get(key).copied()
    }
}

/// A knock that passed steps 1–3 (length, header, mac1) for one verifier's key.
#[derive(Debug, Clone, Copy)]
pub struct Checked<'p> {
    packet: &'p [u8; KNOCK_LEN],
    pattern: Pattern,
    /// The key whose mac1 matched: `open_checked` of another verifier refuses it.
    server: ServerPublic,
}

/// An accepted knock: what to open, for whom, for how long.
#[derive(Debug)]
pub struct Opened<'d, U> {
    /// The authenticated key and its user.
    pub entry: &'d ClientEntry<U>,
    /// The decoded payload (request, timestamp, knock id).
    pub payload: Payload,
    /// The address to open (the source address, checked against the payload).
    pub open_addr: IpAddr,
    /// Seconds to open for, after default and clamping; 0 for a close knock.
    pub duration_s: u32,
}

/// A refused knock: the reason and, from step 10 on, who sent it.
#[derive(Debug)]
pub struct Rejection<'d, U> {
    /// Why.
    pub reason: Reject,
    /// The authenticated sender; `Some` exactly when `reason.is_authenticated()`.
    pub entry: Option<&'d ClientEntry<U>>,
    /// The payload, when it parsed (step 12 on).
    pub payload: Option<Payload>,
}

impl<U> From<Reject> for Rejection<'_, U> {
    fn from(reason: Reject) -> Self {
        Self {
            reason,
            entry: None,
            payload: None,
        }
    }
}

/// Verifies knocks for one server identity. During a key rotation the server holds one
/// verifier per identity and routes each knock by [`Verifier::check`].
pub struct Verifier {
    secret: ServerSecret,
    mac1: Mac1Key,
    start_x: SymmetricState,
    start_xpsk1: SymmetricState,
    config: VerifierConfig,
}

impl core::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Verifier")
            .field("public", &self.secret.public())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Longest accepted window: 30 days (a wider one could let a far-future timestamp
    /// push a key's replay mark out of reach).
    pub const MAX_WINDOW_MS: u64 = 30 * 86_400_000;

    /// Precomputes `mac1_key` and, per message type, the state after steps 2–4 of §5.
    /// The window is capped at [`Self::MAX_WINDOW_MS`] and the default duration raised to
    /// at least 1 s.
    pub fn new(secret: ServerSecret, mut config: VerifierConfig) -> Self {
        config.window_ms = config.window_ms.min(Self::MAX_WINDOW_MS);
        config.default_duration_s = config.default_duration_s.max(1);
        let public = secret.public();
        let start = |p| SymmetricState::start(p, &wire::prologue(p), public.as_bytes());
        Self {
            mac1: Mac1Key::new(&public),
            start_x: start(Pattern::X),
            start_xpsk1: start(Pattern::Xpsk1),
            secret,
            config,
        }
    }

    /// This verifier's public key.
    pub const fn public(&self) -> ServerPublic {
        self.secret.public()
    }

    /// The settings.
    pub const fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Steps 1–3, no Diffie-Hellman and no state: exact length, header, mac1.
    pub fn check<'p>(&self, packet: &'p [u8]) -> Result<Checked<'p>, Reject> {
        // Steps 1–2: exact length, then a known version and message type.
        let (packet, pattern) = wire::parse_header(packet)?;
        // Step 3: mac1, in constant time.
        self.mac1.verify(packet)?;
        Ok(Checked {
            packet,
            pattern,
            server: self.secret.public(),
        })
    }

    /// Steps 1–16 in one call (without the server's rate limits of step 4).
    pub fn open<'d, D: Directory>(
        &self,
        src: IpAddr,
        now_ms: u64,
        packet: &[u8],
        directory: &'d D,
        replay: &impl ReplayState,
    ) -> Result<Opened<'d, D::User>, Rejection<'d, D::User>> {
        let checked = self.check(packet)?;
        self.open_checked(checked, src, now_ms, directory, replay)
    }

    /// Steps 5–16 on a knock that passed [`Verifier::check`] (and the server's step 4).
    pub fn open_checked<'d, D: Directory>(
        &self,
        checked: Checked<'_>,
        src: IpAddr,
        now_ms: u64,
        directory: &'d D,
        replay: &impl ReplayState,
    ) -> Result<Opened<'d, D::User>, Rejection<'d, D::User>> {
        let Checked {
            packet,
            pattern,
            server,
        } = checked;
        if server != self.secret.public() {
            // Checked by another identity's mac1: refuse before any work.
            return Err(Reject::BadMac1.into());
        }
        let mut state = match pattern {
            Pattern::X => self.start_x.clone(),
            Pattern::Xpsk1 => self.start_xpsk1.clone(),
        };
        // Step 5: e (MixHash, and MixKey with a psk), es = DH(rs, E) not all zero, MixKey.
        let mut e = [0u8; KEY_LEN];
        e.copy_from_slice(&packet[E_AT..STATIC_AT]);
        noise::responder_e_es(&mut state, pattern, self.secret.dalek(), &e)
            .map_err(|_| Reject::BadEphemeral)?;
        // Step 6: S = DecryptAndHash(c_s).
        let client = noise::responder_s(&mut state, &packet[STATIC_AT..PAYLOAD_AT])
            .map_err(|_| Reject::BadStatic)?;
        let client = ClientPublic::from_bytes(client);
        // Step 7: the key is provisioned (still pre-authentication).
        let entry = directory.lookup(&client).ok_or(Reject::UnknownKey)?;
        // Step 8: the message type matches the key's psk setting.
        if entry.has_psk() != (pattern == Pattern::Xpsk1) {
            return Err(Reject::PskMismatch.into());
        }
        // Step 9: MixKey(ss) with the precomputed ss, [MixKeyAndHash(psk)], decrypt payload.
        let mut plaintext = Zeroizing::new([0u8; PAYLOAD_LEN]);
        noise::responder_finish(
            &mut state,
            &entry.ss,
            entry.psk.as_ref().map(Psk::as_bytes),
            &packet[PAYLOAD_AT..MAC1_AT],
            plaintext.as_mut(),
        )
        .map_err(|e| match e {
            NoiseError::Decrypt => Reject::BadAuth,
            NoiseError::LowOrder | NoiseError::Length | NoiseError::Psk | NoiseError::NoKey => {
                Reject::BadAuth
            }
        })?;
        debug_assert_eq!(PAYLOAD_AT + PAYLOAD_LEN + TAG_LEN, MAC1_AT);
        // Authenticated from here on: rejects name the sender.
        let reject = |reason, payload| Rejection {
            reason,
            entry: Some(entry),
            payload,
        };
        // Step 10: not revoked.
        if entry.revoked {
            return Err(reject(Reject::Revoked, None));
        }
        // Step 11: the payload parses, padding zero.
        let payload = Payload::decode(&plaintext).map_err(|r| reject(r, None))?;
        let request = &payload.request;
        // Step 12: time window, naming the offset.
        let skew_ms = i64::try_from(i128::from(payload.timestamp_ms) - i128::from(now_ms))
            .unwrap_or(if payload.timestamp_ms > now_ms {
                i64::MAX
            } else {
                i64::MIN
            });
        let window = i64::try_from(self.config.window_ms).unwrap_or(i64::MAX);
        if skew_ms < -window {
            return Err(reject(Reject::Stale { skew_ms }, Some(payload)));
        }
        if skew_ms > window {
            return Err(reject(Reject::Future { skew_ms }, Some(payload)));
        }
        // Step 13: strictly newer than the last accepted timestamp for this key.
        if replay
            .last_accepted(&client)
            .is_some_and(|last| payload.timestamp_ms <= last)
        {
            return Err(reject(Reject::Replay, Some(payload)));
        }
        // Step 14: address binding.
        let open_addr = match request.open_addr() {
            OpenAddr::Ip(ip) if ip == src => ip,
            OpenAddr::Ip(_) => return Err(reject(Reject::AddressMismatch, Some(payload))),
            OpenAddr::FromPacket if entry.policy.nat_allowed => src,
            OpenAddr::FromPacket => return Err(reject(Reject::NatNotAllowed, Some(payload))),
        };
        // Step 15: aimed at one of this server's addresses.
        let dests = &self.config.destinations;
        if !dests.is_empty() && !dests.contains(&request.destination()) {
            return Err(reject(Reject::WrongDestination, Some(payload)));
        }
        // Step 16: policy; clamp the duration.
        if !request
            .access()
            .iter()
            .all(|a| entry.policy.allowed.contains(a))
        {
            return Err(reject(Reject::AccessDenied, Some(payload)));
        }
        let duration_s = match request.action() {
            Action::Close => 0,
            Action::Open => {
                let asked = match request.duration_s() {
                    0 => self.config.default_duration_s,
                    s => s,
                };
                // At least one second: an open never looks like a close.
                asked.min(entry.policy.max_duration_s).max(1)
            }
        };
        Ok(Opened {
            entry,
            payload,
            open_addr,
            duration_s,
        })
    }
}
