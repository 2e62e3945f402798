//! A server's files made the way an admin makes them: `spa-server init` in a temporary
//! directory, one service of the test's protected instead of ssh, and users provisioned
//! with `spa-server user provision`.

use std::path::{Path, PathBuf};

use crate::{run, Run};

/// The files of one server: `DIR/etc/server.toml` and what `init` wrote beside it. The
/// temporary directory is also HOME for the commands run on them, and is deleted on drop.
#[derive(Debug)]
pub struct ServerFiles {
    dir: tempfile::TempDir,
    /// The configuration file's path.
    pub config: String,
}

impl ServerFiles {
    /// `spa-server init --port PORT`, protecting `tcp/SERVICE` instead of ssh.
    pub fn init(port: u16, service: u16) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let etc = dir.path().join("etc");
        let r = run(
            "spa-server",
            &[
                "init",
                "--dir",
                etc.to_str().expect("UTF-8 path"),
                "--port",
                &port.to_string(),
            ],
            dir.path(),
        );
        assert!(r.ok, "{r:?}");
        let files = Self {
            config: etc.join("server.toml").display().to_string(),
            dir,
        };
        files.edit(
            "protect = [\"ssh\"]",
            &format!("protect = [\"tcp/{service}\"]"),
        );
        files
    }

    /// The temporary directory (HOME for the commands).
    pub fn home(&self) -> &Path {
        self.dir.path()
    }

    /// A file next to the configuration (`server.key`, `audit`, ...).
    pub fn etc(&self, name: &str) -> PathBuf {
        self.dir.path().join("etc").join(name)
    }

    /// Replaces `from`, which must be in the configuration, with `to`.
    pub fn edit(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read the configuration");
        assert!(text.contains(from), "the configuration has no {from:?}");
        std::fs::write(&self.config, text.replace(from, to)).expect("write the configuration");
    }

    /// Appends `more` to the configuration.
    pub fn append(&self, more: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read the configuration");
        std::fs::write(&self.config, format!("{text}\n{more}")).expect("write the configuration");
    }

    /// `spa-server --config CONFIG ARGS...`.
    pub fn admin(&self, args: &[&str]) -> Run {
        let mut all = vec!["--config", self.config.as_str()];
        all.extend_from_slice(args);
        run("spa-server", &all, self.home())
    }

    /// Provisions `user`, allowed `allow`, for a server at `endpoint`; returns the path of
    /// the user's bundle.
    pub fn provision(&self, user: &str, allow: &str, endpoint: &str) -> String {
        let bundle = self.home().join(format!("{user}.bundle"));
        let bundle = bundle.display().to_string();
        let r = self.admin(&[
            "user",
            "provision",
            user,
            "--allow",
            allow,
            "--endpoint",
            endpoint,
            "--out",
            &bundle,
        ]);
        assert!(r.ok, "{r:?}");
        bundle
    }
}
