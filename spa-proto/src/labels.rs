//! Every domain-separation label (PROTOCOL.md §7). Protocol names live in
//! [`crate::noise::Pattern::protocol_name`].

/// Prologue prefix; the header bytes follow it.
pub const PROLOGUE: &[u8] = b"spa/knock/v1";
/// Derives `mac1_key` from the server's public key.
pub const MAC1: &[u8] = b"spa/mac1/v1";
/// Derives a key id from a public key.
pub const KEY_ID: &[u8] = b"spa/key-id/v1";
