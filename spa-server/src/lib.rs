//! spa-server as a library, so tests drive it in-process; `main.rs` only calls [`cli`].
//! `unsafe` is denied everywhere but [`capture`], which makes the socket system calls, and
//! [`privsep`], which drops capabilities and starts the privileged helper.
#![deny(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod capture;
pub mod cli;
pub mod daemon;
pub mod directory;
pub mod hooks;
pub mod limits;
pub mod live;
pub mod netlink;
pub mod nft;
pub mod packet;
pub mod pipeline;
pub mod privsep;
pub mod replay;
pub mod status;
