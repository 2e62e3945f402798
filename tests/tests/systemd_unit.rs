//! dist/spa-server.service: `systemd-analyze verify` accepts it, its offline security
//! exposure does not regress, and its command lines are ones the real binary accepts.
//! systemd need not be PID 1 (containers, CI); `systemd-analyze` must be installed
//! (Debian package `systemd`, which scripts/test.sh installs). Without it this test skips
//! loudly, and fails under `CI=true`. It installs nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use spa_e2e::bin;

/// `systemd-analyze security --offline=true` exposure, in tenths (2.4 → 24), as recorded
/// in docs/OPERATIONS.md. Lower it when the unit gets tighter; never raise it quietly.
/// (Raised from 2.3 for `SystemCallFilter=sched_setaffinity`, 0.1: the capture threads'
/// and the firewall helper's CPU placement, which cut the helper round trip from about
/// 600 to about 115 µs; see docs/OPERATIONS.md.)
const MAX_EXPOSURE: u32 = 24;

const INSTALLED_BINARY: &str = "/usr/local/bin/spa-server";

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/spa-server.service")
}

fn systemd_analyze(test: &str) -> bool {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: systemd-analyze is missing; scripts/test.sh installs the Debian package `systemd`");
    }
    eprintln!("\n!!!!!!!! SKIPPED {test}: systemd-analyze is missing (apt-get install systemd). This test runs in CI. !!!!!!!!\n");
    false
}

fn lines<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn unit_verifies_and_its_security_exposure_does_not_regress() {
    if !systemd_analyze("unit_verifies_and_its_security_exposure_does_not_regress") {
        return;
    }
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // verify checks that the programs exist: point it at the binary just built. It would
    // look the Documentation= man pages up with man(1), which a fresh machine may lack:
    // they are checked against the generated pages instead.
    let staged = dir.path().join("spa-server.service");
    std::fs::write(
        &staged,
        unit.replace(INSTALLED_BINARY, bin("spa-server").to_str().unwrap()),
    )
    .unwrap();
    let docs = dir.path().join("docs");
    let out = Command::new(bin("spa-server"))
        .arg("generate-docs")
        .arg(&docs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    for doc in lines(&unit, "Documentation") {
        for page in doc.split_whitespace() {
            let name = page
                .strip_prefix("man:")
                .and_then(|p| p.strip_suffix("(1)"))
                .unwrap_or_else(|| panic!("Documentation={page}: expected man:NAME(1)"));
            assert!(
                docs.join("man").join(format!("{name}.1")).exists(),
                "Documentation={page}: no such page is generated"
            );
        }
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&staged)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {out:?}"
    );

    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(format!("--threshold={MAX_EXPOSURE}"))
        .arg(unit_path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("(no overall line)");
    assert!(
        out.status.success(),
        "exposure above {}.{}: {overall}\n{report}{}",
        MAX_EXPOSURE / 10,
        MAX_EXPOSURE % 10,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{overall}");
}

#[test]
fn unit_command_lines_are_accepted_by_the_binary() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    let config = spa_keys::server::DEFAULT_CONFIG;
    assert_eq!(
        lines(&unit, "ExecStart"),
        [format!("{INSTALLED_BINARY} run --config {config}")]
    );
    assert_eq!(
        lines(&unit, "ExecStartPre"),
        [format!("{INSTALLED_BINARY} check --config {config}")]
    );
    // The same argument lists against a fresh configuration: `check` passes, and `run`
    // gets past argument parsing to the configuration (a usage error exits 2).
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let out = Command::new(bin("spa-server"))
        .args(["init", "--port", "23456", "--dir"])
        .arg(&etc)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let fresh = etc.join("server.toml");
    let out = Command::new(bin("spa-server"))
        .args(["check", "--config"])
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let missing = dir.path().join("missing.toml");
    let out = Command::new(bin("spa-server"))
        .args(["run", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");

    // The writable directories are the ones `spa-server init` puts in /etc/spa/server.toml.
    for (key, value) in [
        ("StateDirectory", "spa"),
        ("LogsDirectory", "spa"),
        ("RuntimeDirectory", "spa"),
        ("ProtectSystem", "strict"),
        ("UMask", "0077"),
    ] {
        assert_eq!(lines(&unit, key), [value], "{key}");
    }
    assert!(spa_keys::server::DEFAULT_STATUS_SOCKET.starts_with("/run/spa/"));
}
