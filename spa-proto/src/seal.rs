//! The client side: sealing a request into one knock (PROTOCOL.md §5).

use rand_core::CryptoRngCore;
use x25519_dalek::StaticSecret;

use crate::keys::{ClientSecret, Psk, ServerPublic};
use crate::noise::{self, NoiseError, Pattern, SymmetricState};
use crate::payload::{Payload, Request, PAYLOAD_LEN};
use crate::wire::{self, Mac1Key, E_AT, KNOCK_LEN, MAC1_AT};

/// A knock could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The server's public key is a low-order point: a DH with it would be all zero.
    #[error("the server public key is a low-order point; check the server card")]
    LowOrderServerKey,
}

/// Seals `request` for `server` at client time `now_ms` (milliseconds since the Unix
/// epoch). The caller keeps `now_ms` strictly increasing across knocks to one server.
pub fn seal(
    client: &ClientSecret,
    server: &ServerPublic,
    psk: Option<&Psk>,
    request: &Request,
    now_ms: u64,
    rng: &mut impl CryptoRngCore,
) -> Result<[u8; KNOCK_LEN], SealError> {
    let mut knock_id = [0u8; 16];
    rng.fill_bytes(&mut knock_id);
    let payload = Payload {
        request: *request,
        timestamp_ms: now_ms,
        knock_id,
    };
    let ephemeral = StaticSecret::random_from_rng(&mut *rng);
    seal_payload(client, server, psk, &payload, &ephemeral)
}

/// [`seal`] with the payload and ephemeral key given: for tests that need exact bytes.
pub fn seal_payload(
    client: &ClientSecret,
    server: &ServerPublic,
    psk: Option<&Psk>,
    payload: &Payload,
    ephemeral: &StaticSecret,
) -> Result<[u8; KNOCK_LEN], SealError> {
    let plaintext = zeroize::Zeroizing::new(payload.encode());
    seal_plaintext(client, server, psk, &plaintext, ephemeral)
}

/// Seals arbitrary plaintext bytes, valid or not: for tests that attack the verifier's
/// payload checks with correctly authenticated knocks. Clients use [`seal`].
pub fn seal_plaintext(
    client: &ClientSecret,
    server: &ServerPublic,
    psk: Option<&Psk>,
    plaintext: &[u8; PAYLOAD_LEN],
    ephemeral: &StaticSecret,
) -> Result<[u8; KNOCK_LEN], SealError> {
    // 1. type from the psk; header = version || type.
    let pattern = if psk.is_some() {
        Pattern::Xpsk1
    } else {
        Pattern::X
    };
    let mut knock = [0u8; KNOCK_LEN];
    knock[..E_AT].copy_from_slice(&wire::header(pattern));
    // 2–4. InitializeSymmetric, MixHash(prologue), MixHash(RS).
    let state = SymmetricState::start(pattern, &wire::prologue(pattern), server.as_bytes());
    // 5–10. e, es, s, ss, [psk], payload.
    noise::initiator_write(
        state,
        client.dalek(),
        ephemeral,
        server.as_bytes(),
        psk.map(Psk::as_bytes),
        plaintext,
        &mut knock[E_AT..MAC1_AT],
    )
    .map_err(|e| match e {
        NoiseError::LowOrder => SealError::LowOrderServerKey,
        // Lengths and the psk/pattern pairing are fixed above.
        NoiseError::Decrypt | NoiseError::Length | NoiseError::Psk | NoiseError::NoKey => {
            unreachable!("seal_payload sizes its buffers and pattern itself")
        }
    })?;
    // 11. mac1 over the body.
    let mac1 = Mac1Key::new(server).compute(&knock[..MAC1_AT]);
    knock[MAC1_AT..].copy_from_slice(&mac1);
    Ok(knock)
}
