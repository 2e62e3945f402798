//! Key files, client profiles, server config and users store (see the keys issue).
#![forbid(unsafe_code)]
