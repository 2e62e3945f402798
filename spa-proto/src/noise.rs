//! The Noise `X` and `Xpsk1` one-way handshake (Noise rev. 34) over 25519, ChaChaPoly and
//! SHA256, built from the chosen primitive crates. Only the first handshake message exists
//! in spa, so there is no `Split()` and no transport state.
//!
//! The responder side is split into the steps of PROTOCOL.md §6 so the verifier can insert
//! its key lookup between decrypting the static key and the `ss` token, and use a
//! precomputed `ss`. [`write_message`] and [`read_message`] compose the same steps for the
//! published test vectors and the differential tests against `snow`.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::keys::KEY_LEN;

/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Length of `e` plus the encrypted `s`: the part of the message before the payload.
pub const HANDSHAKE_PREFIX_LEN: usize = KEY_LEN + KEY_LEN + TAG_LEN;

/// Which of the two supported patterns a message uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// `Noise_X_25519_ChaChaPoly_SHA256`
    X,
    /// `Noise_Xpsk1_25519_ChaChaPoly_SHA256`
    Xpsk1,
}

impl Pattern {
    /// The Noise protocol name.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            Pattern::X => "Noise_X_25519_ChaChaPoly_SHA256",
            Pattern::Xpsk1 => "Noise_Xpsk1_25519_ChaChaPoly_SHA256",
        }
    }
    const fn has_psk(self) -> bool {
        matches!(self, Pattern::Xpsk1)
    }
}

/// A Noise operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    /// A DH output was all zero: the peer's key is a low-order point.
    #[error("non-contributory Diffie-Hellman result (low-order public key)")]
    LowOrder,
    /// AEAD authentication failed.
    #[error("decryption failed")]
    Decrypt,
    /// The message has the wrong length for this call.
    #[error("message length")]
    Length,
    /// The pattern needs a psk and none was given, or the reverse.
    #[error("pre-shared key missing or unexpected for this pattern")]
    Psk,
    /// Encryption before any key was mixed in (impossible in `X`).
    #[error("no cipher key yet")]
    NoKey,
}

/// Noise's SymmetricState (with its CipherState folded in).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct SymmetricState {
    ck: [u8; 32],
    h: [u8; 32],
    k: Option<[u8; 32]>,
    n: u64,
}

impl SymmetricState {
    /// `InitializeSymmetric(protocol_name)`.
    pub(crate) fn initialize(pattern: Pattern) -> Self {
        let name = pattern.protocol_name().as_bytes();
        let mut h = [0u8; 32];
        if name.len() <= h.len() {
            h[..name.len()].copy_from_slice(name);
        } else {
            h = Sha256::digest(name).into();
        }
        Self {
            ck: h,
            h,
            k: None,
            n: 0,
        }
    }

    /// `InitializeSymmetric`, `MixHash(prologue)` and the pre-message `<- s`: everything
    /// that depends only on the server's key and the prologue, so it can be precomputed.
    pub(crate) fn start(pattern: Pattern, prologue: &[u8], responder_static: &[u8; 32]) -> Self {
        let mut st = Self::initialize(pattern);
        st.mix_hash(prologue);
        st.mix_hash(responder_static);
        st
    }

    /// `MixHash(data)`: `h = HASH(h || data)`.
    pub(crate) fn mix_hash(&mut self, data: &[u8]) {
        self.h = Sha256::new()
            .chain_update(self.h)
            .chain_update(data)
            .finalize()
            .into();
    }

    fn hkdf<const N: usize>(&self, ikm: &[u8]) -> Zeroizing<[u8; N]> {
        let mut okm = Zeroizing::new([0u8; N]);
        Hkdf::<Sha256>::new(Some(&self.ck), ikm)
            .expand(&[], okm.as_mut())
            .expect("64 or 96 bytes is within HKDF-SHA256's output limit");
        okm
    }

    /// `MixKey(ikm)`.
    pub(crate) fn mix_key(&mut self, ikm: &[u8]) {
        let okm = self.hkdf::<64>(ikm);
        self.ck.copy_from_slice(&okm[..32]);
        self.set_key(&okm[32..64]);
    }

    /// `MixKeyAndHash(ikm)`.
    pub(crate) fn mix_key_and_hash(&mut self, ikm: &[u8]) {
        let okm = self.hkdf::<96>(ikm);
        self.ck.copy_from_slice(&okm[..32]);
        self.mix_hash(&okm[32..64]);
        self.set_key(&okm[64..96]);
    }

    fn set_key(&mut self, key: &[u8]) {
        let k = self.k.get_or_insert([0u8; 32]);
        k.copy_from_slice(key);
        self.n = 0;
    }

    fn nonce(&self) -> Nonce {
        // 32 bits of zeros followed by the 64-bit little-endian counter.
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.n.to_le_bytes());
        nonce.into()
    }

    /// `EncryptAndHash`: `buf` holds the plaintext followed by `TAG_LEN` bytes of room;
    /// on return it holds the ciphertext with its tag. In `X` a key is always set (the
    /// first encryption follows `es`); without one this refuses rather than send
    /// plaintext.
    pub(crate) fn encrypt_and_hash(&mut self, buf: &mut [u8]) -> Result<(), NoiseError> {
        let (plain, tag_room) = buf.split_at_mut(buf.len() - TAG_LEN);
        let Some(k) = &self.k else {
            return Err(NoiseError::NoKey);
        };
        let cipher = ChaCha20Poly1305::new(k.into());
        let tag = cipher
            .encrypt_in_place_detached(&self.nonce(), &self.h, plain)
            .expect("plaintexts here are far below ChaCha20Poly1305's limit");
        tag_room.copy_from_slice(&tag);
        self.n += 1;
        self.mix_hash(buf);
        Ok(())
    }

    /// `DecryptAndHash`: `ciphertext` (with tag) is decrypted into `out`, which must be
    /// `TAG_LEN` shorter. On failure `out` is wiped.
    pub(crate) fn decrypt_and_hash(
        &mut self,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<(), NoiseError> {
        if ciphertext.len() != out.len() + TAG_LEN {
            return Err(NoiseError::Length);
        }
        let (body, tag) = ciphertext.split_at(out.len());
        out.copy_from_slice(body);
        let Some(k) = &self.k else {
            return Err(NoiseError::NoKey);
        };
        let cipher = ChaCha20Poly1305::new(k.into());
        if cipher
            .decrypt_in_place_detached(&self.nonce(), &self.h, out, Tag::from_slice(tag))
            .is_err()
        {
            out.zeroize();
            return Err(NoiseError::Decrypt);
        }
        self.n += 1;
        self.mix_hash(ciphertext);
        Ok(())
    }

    /// The handshake hash `h`.
    pub(crate) fn handshake_hash(&self) -> [u8; 32] {
        self.h
    }
}

/// `DH(secret, public)`, refusing an all-zero (non-contributory) result.
pub(crate) fn dh(
    secret: &StaticSecret,
    public: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, NoiseError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(NoiseError::LowOrder);
    }
    Ok(Zeroizing::new(*shared.as_bytes()))
}

/// Initiator: writes `e, es, s, ss[, psk]` and the payload into `out`, which must be
/// exactly `HANDSHAKE_PREFIX_LEN + payload.len() + TAG_LEN` bytes. Returns the handshake
/// hash. `state` is the precomputed [`SymmetricState::start`] for `Xpsk1` when a psk is
/// given and for `X` otherwise.
pub(crate) fn initiator_write(
    mut state: SymmetricState,
    s: &StaticSecret,
    e: &StaticSecret,
    rs: &[u8; 32],
    psk: Option<&[u8; 32]>,
    payload: &[u8],
    out: &mut [u8],
) -> Result<[u8; 32], NoiseError> {
    if out.len() != HANDSHAKE_PREFIX_LEN + payload.len() + TAG_LEN {
        return Err(NoiseError::Length);
    }
    let (e_out, rest) = out.split_at_mut(KEY_LEN);
    let (s_out, p_out) = rest.split_at_mut(KEY_LEN + TAG_LEN);
    // e: MixHash(E); with a psk also MixKey(E).
    let e_pub = PublicKey::from(e).to_bytes();
    e_out.copy_from_slice(&e_pub);
    state.mix_hash(&e_pub);
    if psk.is_some() {
        state.mix_key(&e_pub);
    }
    // es: MixKey(DH(e, rs)).
    state.mix_key(dh(e, rs)?.as_ref());
    // s: EncryptAndHash(S).
    s_out[..KEY_LEN].copy_from_slice(PublicKey::from(s).as_bytes());
    state.encrypt_and_hash(s_out)?;
    // ss: MixKey(DH(s, rs)).
    state.mix_key(dh(s, rs)?.as_ref());
    // psk: MixKeyAndHash(psk).
    if let Some(psk) = psk {
        state.mix_key_and_hash(psk);
    }
    // payload: EncryptAndHash(payload).
    p_out[..payload.len()].copy_from_slice(payload);
    state.encrypt_and_hash(p_out)?;
    Ok(state.handshake_hash())
}

/// Responder steps `e` and `es` (PROTOCOL.md §6 step 5).
pub(crate) fn responder_e_es(
    state: &mut SymmetricState,
    pattern: Pattern,
    responder: &StaticSecret,
    e: &[u8; 32],
) -> Result<(), NoiseError> {
    state.mix_hash(e);
    if pattern.has_psk() {
        state.mix_key(e);
    }
    let es = dh(responder, e)?;
    state.mix_key(es.as_ref());
    Ok(())
}

/// Responder step `s` (step 6): decrypts the initiator's static public key.
pub(crate) fn responder_s(
    state: &mut SymmetricState,
    encrypted_static: &[u8],
) -> Result<[u8; 32], NoiseError> {
    let mut s = [0u8; KEY_LEN];
    state.decrypt_and_hash(encrypted_static, &mut s)?;
    Ok(s)
}

/// Responder steps `ss`, `psk` and the payload (step 9), given `DH(rs, S)`.
pub(crate) fn responder_finish(
    state: &mut SymmetricState,
    ss: &[u8; 32],
    psk: Option<&[u8; 32]>,
    encrypted_payload: &[u8],
    payload_out: &mut [u8],
) -> Result<(), NoiseError> {
    state.mix_key(ss);
    if let Some(psk) = psk {
        state.mix_key_and_hash(psk);
    }
    state.decrypt_and_hash(encrypted_payload, payload_out)
}

/// A generic Noise `X`/`Xpsk1` initiator for arbitrary prologues and payloads, with the
/// ephemeral key given explicitly. For test vectors and differential tests.
pub fn write_message(
    pattern: Pattern,
    prologue: &[u8],
    initiator_static: &[u8; 32],
    initiator_ephemeral: &[u8; 32],
    responder_static_public: &[u8; 32],
    psk: Option<&[u8; 32]>,
    payload: &[u8],
) -> Result<(Vec<u8>, [u8; 32]), NoiseError> {
    if pattern.has_psk() != psk.is_some() {
        return Err(NoiseError::Psk);
    }
    let s = StaticSecret::from(*initiator_static);
    let e = StaticSecret::from(*initiator_ephemeral);
    let state = SymmetricState::start(pattern, prologue, responder_static_public);
    let mut out = vec![0u8; HANDSHAKE_PREFIX_LEN + payload.len() + TAG_LEN];
    let hash = initiator_write(
        state,
        &s,
        &e,
        responder_static_public,
        psk,
        payload,
        &mut out,
    )?;
    Ok((out, hash))
}

/// What the generic responder learned from a message.
#[derive(Debug)]
pub struct ReadMessage {
    /// The initiator's static public key.
    pub remote_static: [u8; 32],
    /// The decrypted payload.
    pub payload: Vec<u8>,
    /// The handshake hash.
    pub handshake_hash: [u8; 32],
}

/// A generic Noise `X`/`Xpsk1` responder for arbitrary prologues and payloads, computing
/// `ss` directly. For test vectors and differential tests.
pub fn read_message(
    pattern: Pattern,
    prologue: &[u8],
    responder_static: &[u8; 32],
    psk: Option<&[u8; 32]>,
    message: &[u8],
) -> Result<ReadMessage, NoiseError> {
    if message.len() < HANDSHAKE_PREFIX_LEN + TAG_LEN {
        return Err(NoiseError::Length);
    }
    if pattern.has_psk() != psk.is_some() {
        return Err(NoiseError::Psk);
    }
    let rs = StaticSecret::from(*responder_static);
    let rs_pub = PublicKey::from(&rs).to_bytes();
    let mut state = SymmetricState::start(pattern, prologue, &rs_pub);
    let (e, rest) = message.split_at(KEY_LEN);
    let (c_s, c_p) = rest.split_at(KEY_LEN + TAG_LEN);
    let e: [u8; 32] = e.try_into().map_err(|_| NoiseError::Length)?;
    responder_e_es(&mut state, pattern, &rs, &e)?;
    let remote_static = responder_s(&mut state, c_s)?;
    let ss = dh(&rs, &remote_static)?;
    let mut payload = vec![0u8; c_p.len() - TAG_LEN];
    responder_finish(&mut state, &ss, psk, c_p, &mut payload)?;
    Ok(ReadMessage {
        remote_static,
        payload,
        handshake_hash: state.handshake_hash(),
    })
}
