//! The datagram layout (PROTOCOL.md §3): header, Noise message, mac1.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::keys::ServerPublic;
use crate::labels;
use crate::noise::{Pattern, HANDSHAKE_PREFIX_LEN, TAG_LEN};
use crate::payload::PAYLOAD_LEN;
use crate::reject::Reject;

/// Protocol version in byte 0.
pub const VERSION: u8 = 1;
/// Length of the header (version, type).
pub const HEADER_LEN: usize = 2;
/// Length of `mac1`.
pub const MAC1_LEN: usize = 16;
/// Offset of `e`.
pub const E_AT: usize = HEADER_LEN;
/// Offset of the encrypted static key.
pub const STATIC_AT: usize = E_AT + 32;
/// Offset of the encrypted payload.
pub const PAYLOAD_AT: usize = HEADER_LEN + HANDSHAKE_PREFIX_LEN;
/// Offset of `mac1`; also the length of `body`.
pub const MAC1_AT: usize = PAYLOAD_AT + PAYLOAD_LEN + TAG_LEN;
/// The one length of every knock.
pub const KNOCK_LEN: usize = MAC1_AT + MAC1_LEN;

const _: () = assert!(KNOCK_LEN == 242 && KNOCK_LEN <= 256);

/// Message type byte for a pattern.
pub const fn message_type(pattern: Pattern) -> u8 {
    match pattern {
        Pattern::X => 1,
        Pattern::Xpsk1 => 2,
    }
}

/// The two header bytes for a pattern.
pub const fn header(pattern: Pattern) -> [u8; HEADER_LEN] {
    [VERSION, message_type(pattern)]
}

/// Steps 1 and 2: exact length, then a known header.
pub fn parse_header(packet: &[u8]) -> Result<(&[u8; KNOCK_LEN], Pattern), Reject> {
    let packet: &[u8; KNOCK_LEN] = packet.try_into().map_err(|_| Reject::BadLength)?;
    let pattern = match (packet[0], packet[1]) {
        (VERSION, 1) => Pattern::X,
        (VERSION, 2) => Pattern::Xpsk1,
        _ => return Err(Reject::BadHeader),
    };
    Ok((packet, pattern))
}

/// `prologue = "spa/knock/v1" || header`.
pub fn prologue(pattern: Pattern) -> [u8; labels::PROLOGUE.len() + HEADER_LEN] {
    let mut p = [0u8; labels::PROLOGUE.len() + HEADER_LEN];
    p[..labels::PROLOGUE.len()].copy_from_slice(labels::PROLOGUE);
    p[labels::PROLOGUE.len()..].copy_from_slice(&header(pattern));
    p
}

/// A keyed mac1 computer for one server public key. Keying is done once; each knock then
/// clones the keyed state.
#[derive(Clone)]
pub struct Mac1Key(Hmac<Sha256>);

impl core::fmt::Debug for Mac1Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Mac1Key")
    }
}

impl Mac1Key {
    /// `mac1_key = HASH("spa/mac1/v1" || server_static_public)`.
    pub fn new(server: &ServerPublic) -> Self {
        let key = Sha256::new()
            .chain_update(labels::MAC1)
            .chain_update(server.as_bytes())
            .finalize();
        Self(Hmac::new_from_slice(&key).expect("HMAC accepts any key length"))
    }

    /// `mac1 = HMAC(mac1_key, body)[0..16]`.
    pub fn compute(&self, body: &[u8]) -> [u8; MAC1_LEN] {
        let mut mac = self.0.clone();
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; MAC1_LEN];
        out.copy_from_slice(&full[..MAC1_LEN]);
        out
    }

    /// Step 3: constant-time comparison of the knock's `mac1`.
    pub fn verify(&self, packet: &[u8; KNOCK_LEN]) -> Result<(), Reject> {
        let expected = self.compute(&packet[..MAC1_AT]);
        if bool::from(expected.ct_eq(&packet[MAC1_AT..])) {
            Ok(())
        } else {
            Err(Reject::BadMac1)
        }
    }
}
