//! spa-client as a library; `main.rs` only calls [`cli`].
#![forbid(unsafe_code)]

pub mod cli;
pub mod knock;
pub mod profile_cmds;
