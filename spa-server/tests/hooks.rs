//! Hooks for real: programs spawned as `nobody`, their environment, timeouts, failures,
//! hostile names, and a full queue. Switching to `nobody` needs root: outside CI a
//! non-root run skips loudly; under `CI=true` it fails.
//!
//! Files a hook writes go to a directory this test makes and chowns to `nobody`; scripts
//! live in its parent (mode 0755, so `nobody` can run them).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use spa_keys::hooks::{HookRule, HooksConfig};
use spa_proto::Access;
use spa_server::hooks::{
    resolve_run_as, HookEvent, HookEventKind, HookLimits, HookReport, HookRunner, HookStatus,
    HOOK_PATH,
};

fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (hooks switch to the nobody user); CI runs as root");
    }
    eprintln!("\n!!!!!!!! SKIPPED {test}: not root. This test runs in CI (as root). !!!!!!!!\n");
    false
}

struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// Writable by nobody.
    out: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = root.join("out");
    std::fs::create_dir(&out).unwrap();
    let nobody = resolve_run_as("nobody").expect("the nobody user");
    std::os::unix::fs::chown(&out, Some(nobody.uid), Some(nobody.gid)).unwrap();
    Scratch {
        _dir: dir,
        root,
        out,
    }
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn rule(on_open: &[&str], on_close: &[&str]) -> HookRule {
    HookRule {
        user: None,
        access: None,
        on_open: on_open.iter().map(|s| s.to_string()).collect(),
        on_close: on_close.iter().map(|s| s.to_string()).collect(),
    }
}

fn config(timeout_s: u64, rules: Vec<HookRule>) -> HooksConfig {
    HooksConfig {
        run_as: "nobody".into(),
        timeout: Duration::from_secs(timeout_s),
        rules,
    }
}

fn event(kind: HookEventKind, user: &str) -> HookEvent {
    HookEvent {
        event: kind,
        user: user.into(),
        addr: "192.0.2.7".parse().unwrap(),
        access: Access::tcp(22).unwrap(),
        duration_s: if kind == HookEventKind::Open { 30 } else { 0 },
    }
}

/// Everything logged in this test binary, as text.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_log() -> LogBuffer {
    static LOG: std::sync::OnceLock<LogBuffer> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let log = LogBuffer::default();
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        log
    })
    .clone()
}

fn reports(rx: &Receiver<HookReport>, n: usize) -> Vec<HookReport> {
    let mut out: Vec<HookReport> = (0..n)
        .map(|i| {
            rx.recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("report {} of {n} never came", i + 1))
        })
        .collect();
    out.sort_by_key(|r| r.rule);
    out
}

#[test]
fn a_hook_sees_exactly_the_expected_environment_and_credentials() {
    if !privileged("a_hook_sees_exactly_the_expected_environment_and_credentials") {
        return;
    }
    let mut bob = rule(&["/bin/true"], &[]);
    bob.user = Some("bob".into());
    let mut https = rule(&["/bin/true"], &[]);
    https.access = Some(Access::tcp(443).unwrap());
    let config = config(
        10,
        vec![
            rule(&["/usr/bin/env", "-0"], &["/bin/cat", "/proc/self/status"]),
            bob,
            https,
        ],
    );
    let (tx, rx) = channel();
    let runner = HookRunner::start(&config, HookLimits::default(), Some(tx)).unwrap();
    assert!(runner.submit(event(HookEventKind::Open, "alice")));
    let open = reports(&rx, 1).remove(0);
    assert_eq!(open.status, HookStatus::Exited(0), "{open:?}");
    let env: BTreeMap<String, String> = open
        .output
        .split(|&b| b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = std::str::from_utf8(kv).unwrap().split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let expected: BTreeMap<String, String> = [
        ("PATH", HOOK_PATH),
        ("SPA_EVENT", "open"),
        ("SPA_USER", "alice"),
        ("SPA_ADDRESS", "192.0.2.7"),
        ("SPA_ACCESS", "tcp/22"),
        ("SPA_DURATION", "30"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(env, expected);

    assert!(runner.submit(event(HookEventKind::Expire, "alice")));
    let close = reports(&rx, 1).remove(0);
    assert_eq!(close.status, HookStatus::Exited(0), "{close:?}");
    let status = String::from_utf8(close.output).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("{name} not in {status}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid"), ["65534"; 4], "real, effective, saved, fs uid");
    assert_eq!(field("Gid"), ["65534"; 4]);
    assert!(field("Groups").is_empty(), "no supplementary groups");
    assert_eq!(field("CapEff"), ["0000000000000000"]);
    assert_eq!(field("NSpgid"), field("NSpid"), "its own process group");
    let stats = runner.finish();
    assert_eq!(
        (stats.runs, stats.failures),
        (2, 0),
        "the bob and tcp/443 rules never matched"
    );
}

#[test]
fn a_hanging_hook_is_killed_with_its_process_group_at_the_timeout() {
    if !privileged("a_hanging_hook_is_killed_with_its_process_group_at_the_timeout") {
        return;
    }
    let s = scratch();
    // A background child in the same group, then a hang.
    let hang = script(&s.root, "hang", "sleep 100 &\necho $!\nsleep 100\n");
    let (tx, rx) = channel();
    let runner = HookRunner::start(
        &config(1, vec![rule(&[&hang], &[])]),
        HookLimits::default(),
        Some(tx),
    )
    .unwrap();
    let t0 = Instant::now();
    assert!(runner.submit(event(HookEventKind::Open, "alice")));
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "submit never waits"
    );
    let r = reports(&rx, 1).remove(0);
    assert_eq!(r.status, HookStatus::TimedOut);
    assert_eq!(r.status.to_string(), "killed at timeout");
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(5)).contains(&r.elapsed),
        "{:?}",
        r.elapsed
    );
    let bg: u32 = String::from_utf8(r.output).unwrap().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Gone, or a zombie waiting for whoever adopted it.
        match std::fs::read_to_string(format!("/proc/{bg}/stat")) {
            Err(_) => break,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .unwrap()
                    .trim_start()
                    .starts_with('Z') =>
            {
                break
            }
            Ok(stat) => assert!(
                Instant::now() < deadline,
                "the hook's background child {bg} survived: {stat}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = runner.finish();
    assert_eq!((stats.runs, stats.failures), (1, 1));
}

#[test]
fn a_failing_hooks_exit_status_and_output_are_reported() {
    if !privileged("a_failing_hooks_exit_status_and_output_are_reported") {
        return;
    }
    let log = capture_log();
    let s = scratch();
    let fail = script(&s.root, "fail", "echo 'no route to notify' >&2\nexit 7\n");
    let (tx, rx) = channel();
    let runner = HookRunner::start(
        &config(
            10,
            vec![rule(&[&fail], &[]), rule(&["/nonexistent/spa-hook"], &[])],
        ),
        HookLimits::default(),
        Some(tx),
    )
    .unwrap();
    assert!(runner.submit(event(HookEventKind::Open, "alice")));
    let r = reports(&rx, 2);
    assert_eq!(r[0].status, HookStatus::Exited(7));
    assert_eq!(r[0].status.to_string(), "exit status 7");
    assert_eq!(r[0].output, b"no route to notify\n");
    assert!(
        matches!(&r[1].status, HookStatus::Failed(e) if e.contains("/nonexistent/spa-hook")),
        "{:?}",
        r[1].status
    );
    let stats = runner.finish();
    assert_eq!((stats.runs, stats.failures), (2, 2));
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains(&format!("hook={fail} ")))
        .unwrap_or_else(|| panic!("no log line for {fail}: {log}"));
    assert!(
        line.contains(" WARN spa_server::hooks: hook failed ")
            && line.contains(" event=open user=alice addr=192.0.2.7 access=tcp/22 ")
            && line.contains(" status=exit status 7 ")
            && line.ends_with(r#"output="no route to notify""#),
        "{line}"
    );
    eprintln!("{line}");
}

#[test]
fn hostile_names_cannot_inject_a_command() {
    if !privileged("hostile_names_cannot_inject_a_command") {
        return;
    }
    let s = scratch();
    let out = s.out.display().to_string();
    let hostile = [
        format!("alice; touch {out}/pwned1"),
        format!("$(touch {out}/pwned2)"),
        format!("`touch {out}/pwned3`"),
        format!("alice\ntouch {out}/pwned4"),
        format!("alice' && touch {out}/pwned5 && echo '"),
        format!("alice\" ; touch {out}/pwned6 ; \""),
        format!("-rf {out}/pwned7 | touch {out}/pwned8 > {out}/pwned9"),
    ];
    // What a careless admin might write: an unquoted expansion, a quoted one, and the
    // value handed to another program as an argument. None re-parses the value.
    let careless = script(
        &s.root,
        "careless",
        "echo $SPA_USER $SPA_ACCESS > /dev/null\n/usr/bin/printf '%s' \"$SPA_USER\"\n",
    );
    let (tx, rx) = channel();
    let runner = HookRunner::start(
        &config(10, vec![rule(&[&careless], &[])]),
        HookLimits::default(),
        Some(tx),
    )
    .unwrap();
    for name in &hostile {
        assert!(runner.submit(event(HookEventKind::Open, name)));
    }
    let mut seen: Vec<String> = reports(&rx, hostile.len())
        .into_iter()
        .map(|r| {
            assert_eq!(r.status, HookStatus::Exited(0), "{r:?}");
            assert_eq!(r.event.user.as_bytes(), &r.output[..], "arrives verbatim");
            String::from_utf8(r.output).unwrap()
        })
        .collect();
    runner.finish();
    seen.sort();
    let mut expected = hostile.to_vec();
    expected.sort();
    assert_eq!(seen, expected);
    let made: Vec<_> = std::fs::read_dir(&s.out).unwrap().collect();
    assert!(made.is_empty(), "a hook created files: {made:?}");
}

#[test]
fn a_full_queue_drops_without_blocking() {
    if !privileged("a_full_queue_drops_without_blocking") {
        return;
    }
    let (tx, rx) = channel();
    let runner = HookRunner::start(
        &config(10, vec![rule(&["/bin/sleep", "0.3"], &[])]),
        HookLimits {
            queue: 4,
            concurrent: 1,
        },
        Some(tx),
    )
    .unwrap();
    let t0 = Instant::now();
    let accepted = (0..1000)
        .filter(|_| runner.submit(event(HookEventKind::Open, "alice")))
        .count();
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(200),
        "1000 submits took {took:?}"
    );
    // The queue (4), the one the dispatcher holds waiting for a slot, and the one running.
    assert!((4..=6).contains(&accepted), "{accepted}");
    let stats = runner.stats();
    assert_eq!(stats.dropped as usize, 1000 - accepted);
    assert_eq!(stats.queued as usize, accepted);
    let stats = runner.finish();
    assert_eq!(stats.runs as usize, accepted);
    assert_eq!(rx.try_iter().count(), accepted);
    assert!(
        !runner_accepts_invalid(),
        "an event with a NUL in the user name is refused"
    );
}

fn runner_accepts_invalid() -> bool {
    let runner = HookRunner::start(&config(1, vec![]), HookLimits::default(), None).unwrap();
    let ok = runner.submit(event(HookEventKind::Open, "al\0ice"));
    assert_eq!(runner.finish().invalid, 1);
    ok
}

#[test]
fn check_looks_up_run_as_and_refuses_root() {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let report = spa_keys::server::init(dir.path(), Some(23456), &mut rand::rngs::OsRng).unwrap();
    let text = std::fs::read_to_string(&report.config).unwrap();
    let config = report.config.to_str().unwrap();
    let cli =
        spa_server::cli::Cli::try_parse_from(["spa-server", "--config", config, "check"]).unwrap();
    for (run_as, expect) in [
        (
            "nobody",
            Ok("hooks: 1 rule, run as nobody (uid 65534, gid 65534), timeout 10s"),
        ),
        ("root", Err("has uid or gid 0")),
        (
            "no-such-user-spa-test",
            Err("no user \"no-such-user-spa-test\""),
        ),
    ] {
        std::fs::write(
            &report.config,
            format!("{text}\n[hooks]\nrun_as = \"{run_as}\"\n[[hooks.rule]]\non_open = [\"/bin/true\"]\n"),
        )
        .unwrap();
        let mut out = Vec::new();
        let got = spa_server::admin::run(&cli, &mut out);
        match expect {
            Ok(line) => {
                assert!(got.is_ok(), "{got:?}");
                let out = String::from_utf8(out).unwrap();
                assert!(out.lines().any(|l| l == line), "{out}");
            }
            Err(part) => {
                let err = got.unwrap_err().to_string();
                assert!(err.starts_with(config) && err.contains(part), "{err}");
            }
        }
    }
}
