//! Helpers for spa's end-to-end tests: the real binaries, run as a user would.
#![forbid(unsafe_code)]

pub mod daemon;
pub mod netns;
pub mod server;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of a workspace binary (`spa-server`, `spa-client`), built by
/// `cargo build --workspace --bins` (the README's test command does this first).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Output of one command run, with everything it printed.
#[derive(Debug)]
pub struct Run {
    /// Exit status success.
    pub ok: bool,
    /// Exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            ok: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs a workspace binary with arguments and an empty environment except PATH and HOME.
pub fn run(name: &str, args: &[&str], home: &std::path::Path) -> Run {
    Command::new(bin(name))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .output()
        .expect("spawn")
        .into()
}
