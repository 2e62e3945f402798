//! spa-keys: every file that holds a key or a user, and the text forms of keys.
//!
//! | File | Holds | Secret | Written by | Read by |
//! |---|---|---|---|---|
//! | `~/.spa` (client profile) | client secret key, servers (card, services) | yes, 0600 | `spa-client keygen/import/add-server` | `spa-client`, as the user |
//! | bundle (`user provision --out`) | a complete client profile for one server | yes, 0600 | `spa-server user provision` | `spa-client --key FILE` or `import` |
//! | `/etc/spa/server.toml` | paths, port, knock and firewall settings | no, 0600 | `spa-server init`, `rotate-key` | every `spa-server` subcommand, as root |
//! | `/etc/spa/server.key` | server secret key | yes, 0600 | `spa-server init`, `rotate-key` | `spa-server run/card/check`, as root |
//! | `/etc/spa/users.jsonl` | users, their public keys, policy, optional psk | yes (psk), 0600 | `spa-server user ...` | `spa-server run` (reloads on change), as root |
//!
//! Secret files are created with mode 0600 and `O_EXCL` (never overwritten); files that
//! commands update are rewritten atomically (new 0600 file beside, fsync, rename). A
//! secret file that is group/world accessible or owned by another user is refused with
//! the fix. Errors name the file and line, never the content.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod card;
pub mod error;
pub mod fsutil;
pub mod hooks;
pub mod profile;
pub mod server;
pub mod services;
pub mod text;
pub mod users;

pub use error::{Error, Result};
