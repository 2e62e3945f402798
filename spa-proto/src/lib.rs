//! spa-proto: the spa knock, sans-IO.
//!
//! One UDP datagram of [`KNOCK_LEN`] bytes carries a Noise `X` (or `Xpsk1`) handshake
//! message from a client to a server that never answers. This crate seals knocks
//! ([`seal`]) and verifies them ([`Verifier`]) exactly as `docs/PROTOCOL.md` specifies.
//! It does no I/O: time, randomness, the client directory and the replay state are
//! parameters, so every path is testable without sockets or clocks.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Arc;
//! use spa_proto::*;
//!
//! let mut rng = rand::rngs::OsRng;
//! let server = ServerSecret::generate(&mut rng);
//! let client = ClientSecret::generate(&mut rng);
//! let src = "192.0.2.10".parse().unwrap();
//!
//! let ssh = Access::tcp(22).unwrap();
//! let policy = Arc::new(Policy { allowed: vec![ssh], max_duration_s: 3600, nat_allowed: false });
//! let entry = ClientEntry::new(&server, client.public(), None, policy, "alice").unwrap();
//! let directory = HashMap::from([(client.public(), entry)]);
//! let replay: HashMap<ClientPublic, u64> = HashMap::new();
//!
//! let request = Request::new(Action::Open, OpenAddr::Ip(src),
//!     "192.0.2.1".parse().unwrap(), &[ssh], 60).unwrap();
//! let now = 1_700_000_000_000;
//! let knock = seal(&client, &server.public(), None, &request, now, &mut rng).unwrap();
//!
//! let verifier = Verifier::new(server, VerifierConfig::default());
//! let opened = verifier.open(src, now, &knock, &directory, &replay).unwrap();
//! assert_eq!(opened.entry.user, "alice");
//! assert_eq!(opened.duration_s, 60);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod keys;
pub mod labels;
pub mod noise;
pub mod payload;
pub mod reject;
pub mod seal;
pub mod verify;
pub mod wire;

pub use keys::{ClientPublic, ClientSecret, KeyId, Psk, ServerPublic, ServerSecret};
pub use payload::{Access, Action, OpenAddr, Payload, Proto, Request, RequestError};
pub use reject::Reject;
pub use seal::{seal, SealError};
pub use verify::{
    Checked, ClientEntry, Directory, InvalidClientKey, Opened, Policy, Rejection, ReplayState,
    Verifier, VerifierConfig,
};
pub use wire::KNOCK_LEN;
