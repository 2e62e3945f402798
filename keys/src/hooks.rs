//! The `[hooks]` section of the server configuration: programs run when a grant opens,
//! closes or expires (spa-server's `hooks` module runs them; docs/OPERATIONS.md).
//!
//! ```toml
//! [hooks]
//! run_as = "nobody"      # unprivileged user (and its primary group) hooks run as
//! timeout = "10s"        # a hook still running then is killed, with its process group
//! [[hooks.rule]]
//! user = "alice"         # optional: only this user
//! access = "ssh"         # optional: only this access entry (a name or tcp/PORT, udp/PORT)
//! on_open = ["/usr/local/bin/notify", "opened"]   # argv, never a shell string
//! on_close = ["/usr/local/bin/notify", "closed"]  # also runs when a grant expires
//! ```
//!
//! Only the shape is checked here; that `run_as` names an existing, non-root user is
//! checked by `spa-server check` and at start, where the user database is read.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use spa_proto::Access;

use crate::error::{Error, Result};
use crate::services::{parse_access, parse_duration};
use crate::users::valid_user_name;

/// Shortest accepted hook timeout.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest accepted hook timeout.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Most arguments (program included) a hook command may have.
pub const MAX_ARGS: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HooksFile {
    run_as: String,
    timeout: String,
    rule: Vec<RuleFile>,
}

impl Default for HooksFile {
    fn default() -> Self {
        Self {
            run_as: "nobody".into(),
            timeout: "10s".into(),
            rule: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    access: Option<String>,
    #[serde(default)]
    on_open: Vec<String>,
    #[serde(default)]
    on_close: Vec<String>,
}

/// The validated `[hooks]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HooksConfig {
    /// The user hooks run as, with its primary group and no supplementary groups.
    pub run_as: String,
    /// A hook still running after this is killed (its whole process group).
    pub timeout: Duration,
    /// Rules in file order; every matching rule runs.
    pub rules: Vec<HookRule>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        Self {
            run_as: "nobody".into(),
            timeout: Duration::from_secs(10),
            rules: Vec::new(),
        }
    }
}

/// One `[[hooks.rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRule {
    /// Only grants of this user (any user when `None`).
    pub user: Option<String>,
    /// Only grants of this access entry (any when `None`).
    pub access: Option<Access>,
    /// Run when a grant opens: program (an absolute path) and arguments; empty for none.
    pub on_open: Vec<String>,
    /// Run when a grant is closed on request or expires; empty for none.
    pub on_close: Vec<String>,
}

impl HookRule {
    /// Whether this rule applies to a grant of `user` for `access`.
    pub fn matches(&self, user: &str, access: Access) -> bool {
        self.user.as_deref().is_none_or(|u| u == user) && self.access.is_none_or(|a| a == access)
    }
}

fn check_argv(argv: &[String]) -> std::result::Result<(), String> {
    let Some(program) = argv.first() else {
        return Ok(());
    };
    if !Path::new(program).is_absolute() {
        return Err("the program must be an absolute path (no PATH search, no shell)".into());
    }
    if argv.len() > MAX_ARGS {
        return Err(format!("at most {MAX_ARGS} arguments"));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("arguments cannot contain NUL".into());
    }
    Ok(())
}

impl HooksConfig {
    /// Validates the section; errors name `path` and the line of the offending rule.
    pub(crate) fn from_file(file: HooksFile, path: &Path, text: &str) -> Result<Self> {
        let line_of = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(key))
                .map(|i| i + 1)
        };
        let section = text
            .lines()
            .position(|l| l.trim() == "[hooks]")
            .map(|i| i + 1);
        let rule_lines: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.trim() == "[[hooks.rule]]")
            .map(|(i, _)| i + 1)
            .collect();
        let run_as = file.run_as;
        if run_as.is_empty() || run_as.len() > 32 || run_as.contains(['\0', '/', ':']) {
            return Err(Error::invalid(
                path,
                section.or_else(|| line_of("run_as")),
                "hooks: run_as: not a user name",
            ));
        }
        let timeout = parse_duration(&file.timeout)
            .ok()
            .filter(|t| (MIN_TIMEOUT..=MAX_TIMEOUT).contains(t))
            .ok_or_else(|| {
                Error::invalid(
                    path,
                    section.or_else(|| line_of("timeout")),
                    "hooks: timeout: must be whole seconds between 1s and 10m",
                )
            })?;
        let mut rules = Vec::new();
        for (i, r) in file.rule.into_iter().enumerate() {
            let invalid = |m: String| {
                Error::invalid(
                    path,
                    rule_lines.get(i).copied(),
                    format!("hooks.rule {}: {m}", i + 1),
                )
            };
            if let Some(u) = &r.user {
                if !valid_user_name(u) {
                    return Err(invalid("user: not a valid user name".into()));
                }
            }
            let access = r
                .access
                .as_deref()
                .map(parse_access)
                .transpose()
                .map_err(|e| invalid(format!("access: {e}")))?;
            check_argv(&r.on_open).map_err(|m| invalid(format!("on_open: {m}")))?;
            check_argv(&r.on_close).map_err(|m| invalid(format!("on_close: {m}")))?;
            if r.on_open.is_empty() && r.on_close.is_empty() {
                return Err(invalid("give on_open, on_close or both".into()));
            }
            rules.push(HookRule {
                user: r.user,
                access,
                on_open: r.on_open,
                on_close: r.on_close,
            });
        }
        Ok(Self {
            run_as,
            timeout,
            rules,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{init, ServerConfig};
    use rand::rngs::OsRng;

    fn load_with(extra: &str) -> Result<ServerConfig> {
        let dir = tempfile::tempdir().unwrap();
        let report = init(dir.path(), Some(23456), &mut OsRng).unwrap();
        let text = std::fs::read_to_string(&report.config).unwrap();
        std::fs::write(&report.config, format!("{text}\n{extra}")).unwrap();
        ServerConfig::load(&report.config)
    }

    #[test]
    fn absent_section_means_no_hooks() {
        let config = load_with("").unwrap();
        assert_eq!(config.hooks, HooksConfig::default());
        assert!(config.hooks.rules.is_empty());
    }

    #[test]
    fn rules_parse_and_match() {
        let config = load_with(
            r#"[hooks]
run_as = "spa-hooks"
timeout = "30s"
[[hooks.rule]]
user = "alice"
access = "ssh"
on_open = ["/usr/local/bin/notify", "opened"]
[[hooks.rule]]
on_close = ["/usr/local/bin/notify", "closed"]
"#,
        )
        .unwrap();
        let h = &config.hooks;
        assert_eq!(h.run_as, "spa-hooks");
        assert_eq!(h.timeout, Duration::from_secs(30));
        assert_eq!(h.rules.len(), 2);
        let ssh = Access::tcp(22).unwrap();
        assert!(h.rules[0].matches("alice", ssh));
        assert!(!h.rules[0].matches("bob", ssh));
        assert!(!h.rules[0].matches("alice", Access::tcp(443).unwrap()));
        assert!(h.rules[1].matches("bob", Access::udp(1194).unwrap()));
        assert!(h.rules[1].on_open.is_empty());
    }

    #[test]
    fn bad_hooks_are_refused_with_the_rule_line() {
        for (extra, expect) in [
            ("[hooks]\ntimeout = \"0s\"\n", "timeout"),
            ("[hooks]\ntimeout = \"2h\"\n", "timeout"),
            ("[hooks]\nrun_as = \"\"\n", "run_as"),
            ("[hooks]\nrun_as = \"a:b\"\n", "run_as"),
            ("[hooks]\nshell = true\n", "shell"),
            ("[[hooks.rule]]\non_open = [\"notify\"]\n", "absolute path"),
            (
                "[[hooks.rule]]\non_open = [\"/bin/true\", \"a\\u0000b\"]\n",
                "NUL",
            ),
            (
                "[[hooks.rule]]\nuser = \"Alice; rm\"\non_open = [\"/bin/true\"]\n",
                "user",
            ),
            (
                "[[hooks.rule]]\naccess = \"gopher\"\non_open = [\"/bin/true\"]\n",
                "access",
            ),
            ("[[hooks.rule]]\nuser = \"alice\"\n", "on_open, on_close"),
            // A shell string instead of an argv list.
            (
                "[[hooks.rule]]\non_open = \"/bin/true opened\"\n",
                "expected a sequence",
            ),
        ] {
            let err = load_with(extra).unwrap_err().to_string();
            assert!(err.contains(expect), "{extra:?}: {err}");
            if extra.starts_with("[[hooks.rule]]") && !expect.starts_with("expected") {
                assert!(err.contains(": hooks.rule 1: "), "{err}");
            }
        }
    }
}
