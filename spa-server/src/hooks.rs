//! Hooks: programs the admin configures (`[hooks]` in server.toml) to run when a grant
//! opens, is closed on request, or expires. docs/OPERATIONS.md describes them for admins.
//!
//! What a hook can and cannot see, and why nothing from a knock can become a command:
//! - The runner consumes [`HookEvent`]s: a validated grant (event, user name, address,
//!   access entry, duration), never packet bytes. Address and access are typed values.
//! - The program and its arguments come only from the configuration. The event reaches
//!   the program only as environment variables, which no shell has parsed:
//!   `SPA_EVENT`, `SPA_USER`, `SPA_ADDRESS`, `SPA_ACCESS`, `SPA_DURATION`, plus a fixed
//!   `PATH`. Nothing else is inherited (`env_clear`).
//! - The program runs as the configured `run_as` user and its primary group, with no
//!   supplementary groups, stdin from /dev/null, stdout and stderr captured (the first
//!   [`OUTPUT_LIMIT`] bytes are logged), working directory `/`, in a process group of its
//!   own. At its timeout the whole group is killed; when the program exits, whatever it
//!   left behind in its group is killed too, so nothing a hook starts outlives it (short
//!   of `setsid`).
//! - [`HookRunner::submit`] never blocks: events go through a bounded queue, and a full
//!   queue drops the event and counts it. At most [`HookLimits::concurrent`] hooks run at
//!   once, so a burst of grants cannot become a burst of processes.
//!
//! The runner needs CAP_SETUID and CAP_SETGID (to become `run_as`) and CAP_KILL (to kill
//! a hook's process group, which belongs to another user); nothing else. It is meant to
//! run in a process of its own fed with [`HookEvent`]s (which serialize with serde), but
//! it works the same in-process.

use std::fmt;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, User};
use serde::{Deserialize, Serialize};
use spa_keys::hooks::{HookRule, HooksConfig};
use spa_proto::{Access, Action};

use crate::pipeline::Grant;

/// The `PATH` hooks get (the same as systemd gives services).
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// At most this much of a hook's output is kept (the rest is read and discarded).
pub const OUTPUT_LIMIT: usize = 4096;
/// Longest user name an event may carry (the users store allows 32 bytes).
pub const MAX_USER_LEN: usize = 256;

/// What happened to a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HookEventKind {
    /// A grant was opened (or refreshed by a repeated knock).
    Open,
    /// A grant was closed on the user's request.
    Close,
    /// A grant's time ran out.
    Expire,
}

impl HookEventKind {
    /// `open`, `close` or `expire`: the value of `SPA_EVENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Close => "close",
            Self::Expire => "expire",
        }
    }
}

impl fmt::Display for HookEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One grant event for one access entry: everything a hook is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookEvent {
    /// Open, close or expire.
    pub event: HookEventKind,
    /// The user's name (from the users store).
    pub user: String,
    /// The address the grant is for.
    pub addr: IpAddr,
    /// The access entry (`tcp/22`).
    #[serde(with = "access_text")]
    pub access: Access,
    /// Seconds granted for `open`; 0 for `close` and `expire`.
    pub duration_s: u32,
}

mod access_text {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    use spa_proto::Access;

    pub fn serialize<S: Serializer>(a: &Access, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Access, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
        text.parse().map_err(D::Error::custom)
    }
}

impl HookEvent {
    /// The events of an applied grant: one per access entry.
    pub fn from_grant(g: &Grant) -> Vec<HookEvent> {
        let (event, duration_s) = match g.action {
            Action::Open => (HookEventKind::Open, g.duration_s),
            Action::Close => (HookEventKind::Close, 0),
        };
        g.access
            .iter()
            .map(|&access| HookEvent {
                event,
                user: g.user.to_string(),
                addr: g.addr,
                access,
                duration_s,
            })
            .collect()
    }

    /// The event of a grant whose time ran out.
    pub fn expired(user: &str, addr: IpAddr, access: Access) -> HookEvent {
        HookEvent {
            event: HookEventKind::Expire,
            user: user.to_owned(),
            addr,
            access,
            duration_s: 0,
        }
    }

    /// Whether the event can be passed on. The runner's safety does not depend on names
    /// being tame (they travel as environment values, never through a shell); this only
    /// refuses what an environment cannot hold or what no users store produces.
    pub fn is_valid(&self) -> bool {
        (1..=MAX_USER_LEN).contains(&self.user.len()) && !self.user.contains('\0')
    }

    /// The hook's environment, `PATH` included: exactly these variables and no others.
    pub fn environment(&self) -> [(&'static str, String); 6] {
        [
            ("PATH", HOOK_PATH.to_owned()),
            ("SPA_EVENT", self.event.as_str().to_owned()),
            ("SPA_USER", self.user.clone()),
            ("SPA_ADDRESS", self.addr.to_string()),
            ("SPA_ACCESS", self.access.to_string()),
            ("SPA_DURATION", self.duration_s.to_string()),
        ]
    }
}

/// Why the runner cannot start.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// `run_as` names no user.
    #[error("hooks: run_as: no user {0:?} on this system")]
    NoSuchUser(String),
    /// `run_as` is root or has the root group.
    #[error("hooks: run_as: {0:?} has uid or gid 0; hooks must run as an unprivileged user")]
    Privileged(String),
    /// The user database could not be read.
    #[error("hooks: run_as: looking up {0:?}: {1}")]
    Lookup(String, nix::Error),
    /// The dispatcher thread could not start.
    #[error("hooks: starting the hook dispatcher: {0}")]
    Thread(std::io::Error),
}

/// The credentials hooks run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
}

/// Looks `name` up in the user database; refuses root and the root group. What
/// `spa-server check` and [`HookRunner::start`] run.
pub fn resolve_run_as(name: &str) -> Result<RunAs, HookError> {
    let user = User::from_name(name)
        .map_err(|e| HookError::Lookup(name.to_owned(), e))?
        .ok_or_else(|| HookError::NoSuchUser(name.to_owned()))?;
    if user.uid.is_root() || user.gid == Gid::from_raw(0) {
        return Err(HookError::Privileged(name.to_owned()));
    }
    Ok(RunAs {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// Sizes of the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookLimits {
    /// Events waiting to be dispatched; more are dropped and counted.
    pub queue: usize,
    /// Hooks running at once; further events wait in the queue.
    pub concurrent: usize,
}

impl Default for HookLimits {
    fn default() -> Self {
        Self {
            queue: 1024,
            concurrent: 16,
        }
    }
}

/// How one hook run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it (not ours).
    Signaled(i32),
    /// It ran past the timeout; its process group was killed.
    TimedOut,
    /// It could not be started (or waited for).
    Failed(String),
}

impl HookStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == HookStatus::Exited(0)
    }
}

impl fmt::Display for HookStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(c) => write!(f, "exit status {c}"),
            Self::Signaled(s) => write!(f, "killed by signal {s}"),
            Self::TimedOut => f.write_str("killed at timeout"),
            Self::Failed(e) => write!(f, "not run: {e}"),
        }
    }
}

/// One hook run, as logged (and sent to an observer, for tests and status).
#[derive(Debug, Clone)]
pub struct HookReport {
    /// The event that triggered it.
    pub event: HookEvent,
    /// The rule (1-based, in file order).
    pub rule: usize,
    /// The program.
    pub program: String,
    /// How it ended.
    pub status: HookStatus,
    /// How long it ran.
    pub elapsed: Duration,
    /// The first [`OUTPUT_LIMIT`] bytes of its stdout and stderr, interleaved.
    pub output: Vec<u8>,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookStats {
    /// Events accepted into the queue.
    pub queued: u64,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// Events refused as invalid.
    pub invalid: u64,
    /// Hooks that ran (or were tried).
    pub runs: u64,
    /// Runs that did not exit with status 0.
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    dropped: AtomicU64,
    invalid: AtomicU64,
    runs: AtomicU64,
    failures: AtomicU64,
}

/// A counting semaphore bounding the hooks running at once.
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
    max: usize,
}

impl Slots {
    fn acquire(self: &Arc<Self>) -> SlotGuard {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= self.max {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += 1;
        SlotGuard(self.clone())
    }

    fn wait_idle(&self) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used > 0 {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Frees its slot when dropped (even if the hook thread panics).
struct SlotGuard(Arc<Slots>);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        *self.0.used.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0.freed.notify_all();
    }
}

struct Shared {
    rules: Vec<HookRule>,
    run_as: RunAs,
    timeout: Duration,
    counters: Counters,
    slots: Arc<Slots>,
    observer: Option<Sender<HookReport>>,
}

/// Runs hooks for grant events, off the caller's thread.
pub struct HookRunner {
    tx: Option<SyncSender<HookEvent>>,
    shared: Arc<Shared>,
    dispatcher: Option<JoinHandle<()>>,
}

impl HookRunner {
    /// Resolves `run_as` and starts the dispatcher thread. `observer`, when given, also
    /// receives every [`HookReport`] (they are always logged).
    pub fn start(
        config: &HooksConfig,
        limits: HookLimits,
        observer: Option<Sender<HookReport>>,
    ) -> Result<Self, HookError> {
        let run_as = resolve_run_as(&config.run_as)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(limits.queue.max(1));
        let shared = Arc::new(Shared {
            rules: config.rules.clone(),
            run_as,
            timeout: config.timeout,
            counters: Counters::default(),
            slots: Arc::new(Slots {
                used: Mutex::new(0),
                freed: Condvar::new(),
                max: limits.concurrent.max(1),
            }),
            observer,
        });
        let dispatcher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("hooks".into())
                .spawn(move || dispatch(rx, shared))
                .map_err(HookError::Thread)?
        };
        Ok(Self {
            tx: Some(tx),
            shared,
            dispatcher: Some(dispatcher),
        })
    }

    /// Hands over one event; never blocks. False when it was dropped: invalid, or the
    /// queue is full (both counted, and logged now and then).
    pub fn submit(&self, event: HookEvent) -> bool {
        let c = &self.shared.counters;
        if !event.is_valid() {
            let n = c.invalid.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    invalid = n,
                    "hook event with an empty, overlong or NUL-bearing user name dropped"
                );
            }
            return false;
        }
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(event) {
            Ok(()) => {
                c.queued.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let n = c.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n,
                        "hook queue full: event dropped (hooks are slower than grants)"
                    );
                }
                false
            }
        }
    }

    /// Counters since start.
    pub fn stats(&self) -> HookStats {
        let c = &self.shared.counters;
        HookStats {
            queued: c.queued.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            invalid: c.invalid.load(Ordering::Relaxed),
            runs: c.runs.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
        }
    }

    /// Stops taking events, runs those already queued and waits for every hook to end
    /// (each is bounded by the timeout). Dropping the runner instead stops taking events
    /// without waiting.
    pub fn finish(mut self) -> HookStats {
        self.tx.take();
        if let Some(d) = self.dispatcher.take() {
            let _ = d.join();
        }
        self.shared.slots.wait_idle();
        self.stats()
    }
}

fn dispatch(rx: Receiver<HookEvent>, shared: Arc<Shared>) {
    for event in rx {
        for (i, rule) in shared.rules.iter().enumerate() {
            if !rule.matches(&event.user, event.access) {
                continue;
            }
            let argv = match event.event {
                HookEventKind::Open => &rule.on_open,
                HookEventKind::Close | HookEventKind::Expire => &rule.on_close,
            };
            if argv.is_empty() {
                continue;
            }
            // Waits here (not in `submit`) while all slots are busy; the queue absorbs
            // the wait and overflows into the drop counter.
            let slot = shared.slots.acquire();
            let (shared2, event2, argv) = (shared.clone(), event.clone(), argv.clone());
            let spawned = std::thread::Builder::new()
                .name("hook".into())
                .spawn(move || {
                    let _slot = slot;
                    run_hook(&shared2, event2, i + 1, &argv);
                });
            if let Err(e) = spawned {
                shared.counters.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, rule = i + 1, "hook not run: no thread");
            }
        }
    }
}

fn run_hook(shared: &Shared, event: HookEvent, rule: usize, argv: &[String]) {
    let started = Instant::now();
    let mut output = Vec::new();
    let status =
        spawn_and_wait(shared, &event, argv, &mut output).unwrap_or_else(HookStatus::Failed);
    let report = HookReport {
        event,
        rule,
        program: argv[0].clone(),
        status,
        elapsed: started.elapsed(),
        output,
    };
    shared.counters.runs.fetch_add(1, Ordering::Relaxed);
    log_report(&report);
    if !report.status.success() {
        shared.counters.failures.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(obs) = &shared.observer {
        let _ = obs.send(report);
    }
}

fn log_report(r: &HookReport) {
    let e = &r.event;
    // Quoted and escaped (Debug), so a hook's output cannot forge log lines.
    let output: String = String::from_utf8_lossy(&r.output)
        .trim_end()
        .chars()
        .take(512)
        .collect();
    let elapsed_ms = r.elapsed.as_millis() as u64;
    if r.status.success() {
        tracing::info!(hook = %r.program, rule = r.rule, event = %e.event, user = %e.user, addr = %e.addr,
            access = %e.access, status = %r.status, elapsed_ms, output = ?output, "hook finished");
    } else {
        tracing::warn!(hook = %r.program, rule = r.rule, event = %e.event, user = %e.user, addr = %e.addr,
            access = %e.access, status = %r.status, elapsed_ms, output = ?output, "hook failed");
    }
}

/// Reads what is there without blocking; keeps up to [`OUTPUT_LIMIT`] bytes. False at EOF.
fn drain(pipe: &mut std::fs::File, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => {
                let keep = n.min(OUTPUT_LIMIT.saturating_sub(out.len()));
                out.extend_from_slice(&buf[..keep]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

fn spawn_and_wait(
    shared: &Shared,
    event: &HookEvent,
    argv: &[String],
    output: &mut Vec<u8>,
) -> Result<HookStatus, String> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| format!("pipe: {e}"))?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(event.environment())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(
            write.try_clone().map_err(|e| format!("pipe: {e}"))?,
        ))
        .stderr(Stdio::from(write))
        // std also clears the supplementary groups (setgroups(0)) before setuid.
        .gid(shared.run_as.gid)
        .uid(shared.run_as.uid)
        .process_group(0);
    let spawned = cmd.spawn();
    // Our copies of the pipe's write end go with `cmd`, so EOF means every writer is gone.
    drop(cmd);
    let mut child = spawned.map_err(|e| format!("{}: {e}", argv[0]))?;
    let mut pipe = std::fs::File::from(read);
    let pid = Pid::from_raw(child.id() as i32);
    let deadline = Instant::now() + shared.timeout;
    let mut pause = Duration::from_millis(1);
    let mut open = true;
    let timed_out = loop {
        if open {
            open = drain(&mut pipe, output);
        }
        // WNOWAIT: the exited program stays a zombie, so its pid, which is also its
        // process group's id, cannot be reused before we kill the group below.
        match waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        ) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => break false,
            Err(e) => return Err(format!("waiting for {}: {e}", argv[0])),
        }
        let now = Instant::now();
        if now >= deadline {
            break true;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(25));
    };
    // Whatever is left of the group (everything, at a timeout). The group belongs to
    // run_as, so this needs CAP_KILL.
    if let Err(e) = killpg(pid, Signal::SIGKILL) {
        if timed_out || e != nix::errno::Errno::ESRCH {
            tracing::error!(hook = %argv[0], error = %e, "cannot kill the hook's process group (CAP_KILL missing?)");
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {}: {e}", argv[0]))?;
    if open {
        drain(&mut pipe, output);
    }
    Ok(if timed_out {
        HookStatus::TimedOut
    } else if let Some(code) = status.code() {
        HookStatus::Exited(code)
    } else {
        HookStatus::Signaled(status.signal().unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_serializes_with_typed_fields_and_refuses_hostile_access() {
        let e = HookEvent {
            event: HookEventKind::Open,
            user: "alice".into(),
            addr: "192.0.2.7".parse().unwrap(),
            access: Access::tcp(22).unwrap(),
            duration_s: 30,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"event":"open","user":"alice","addr":"192.0.2.7","access":"tcp/22","duration_s":30}"#
        );
        assert_eq!(serde_json::from_str::<HookEvent>(&json).unwrap(), e);
        for bad in [
            json.replace("tcp/22", "tcp/22; touch /tmp/pwned"),
            json.replace("tcp/22", "$(touch x)"),
            json.replace("192.0.2.7", "192.0.2.7`id`"),
            json.replace("\"open\"", "\"rm\""),
            json.replace("}", r#","packet":"AAAA"}"#),
        ] {
            assert!(serde_json::from_str::<HookEvent>(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_is_exactly_six_variables() {
        let e = HookEvent::expired(
            "alice",
            "2001:db8::1".parse().unwrap(),
            Access::udp(51820).unwrap(),
        );
        let env: Vec<(&str, String)> = e.environment().into();
        assert_eq!(
            env,
            vec![
                ("PATH", HOOK_PATH.to_owned()),
                ("SPA_EVENT", "expire".to_owned()),
                ("SPA_USER", "alice".to_owned()),
                ("SPA_ADDRESS", "2001:db8::1".to_owned()),
                ("SPA_ACCESS", "udp/51820".to_owned()),
                ("SPA_DURATION", "0".to_owned()),
            ]
        );
        assert!(e.is_valid());
        let mut bad = e.clone();
        bad.user = "a\0b".into();
        assert!(!bad.is_valid());
        bad.user = String::new();
        assert!(!bad.is_valid());
    }

    #[test]
    fn root_is_refused_as_run_as() {
        assert!(matches!(
            resolve_run_as("root"),
            Err(HookError::Privileged(_))
        ));
        assert!(matches!(
            resolve_run_as("no-such-user-spa-test"),
            Err(HookError::NoSuchUser(_))
        ));
    }
}
