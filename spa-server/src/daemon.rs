//! `spa-server run`: capture workers feed the pipeline; accepted knocks go to one gate
//! worker that batches firewall changes and keeps its own timer per grant (for expiry
//! records; the kernel's set timeout is the authority and closes the port even if the
//! daemon dies).
//!
//! The firewall sits behind [`Gate`], one narrow interface, so a separate privileged
//! helper process owns it ([`crate::privsep`]): this process holds no capability.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use spa_proto::{Access, Action};

use crate::audit::{self, Auditor, Decision, Record, Tally};
use crate::pipeline::{Grant, Outcome, Pipeline};

/// One change to the grant sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateChange {
    /// Add (or refresh) `addr` · `access` for `timeout`.
    Open {
        /// Address.
        addr: IpAddr,
        /// Protocol and port.
        access: Access,
        /// How long the kernel keeps it.
        timeout: Duration,
    },
    /// Remove it now.
    Close {
        /// Address.
        addr: IpAddr,
        /// Protocol and port.
        access: Access,
    },
}

/// The firewall, seen from the daemon.
pub trait Gate: Send {
    /// Applies all changes as one atomic batch.
    fn apply(&mut self, changes: &[GateChange]) -> std::io::Result<()>;
}

/// The gate worker's state: grants it opened and when it expects the kernel to close them.
#[derive(Default)]
pub struct GrantTimers {
    due: BTreeMap<(Instant, u64), (Arc<str>, IpAddr, Access)>,
    by_grant: std::collections::HashMap<(IpAddr, Access), (Instant, u64)>,
    seq: u64,
}

impl GrantTimers {
    /// The changes for a batch of accepted knocks: a repeated knock refreshes (one
    /// element, new timeout), a close removes at once. The timers are not touched (the
    /// changes do not depend on them); [`Self::commit`] follows once they are applied.
    pub fn plan(grants: &[Grant]) -> Vec<GateChange> {
        let mut out = Vec::new();
        for g in grants {
            for &access in &g.access {
                match g.action {
                    Action::Open => out.push(GateChange::Open {
                        addr: g.addr,
                        access,
                        timeout: Duration::from_secs(u64::from(g.duration_s.max(1))),
                    }),
                    Action::Close => out.push(GateChange::Close {
                        addr: g.addr,
                        access,
                    }),
                }
            }
        }
        out
    }

    /// Updates the timers for a batch the firewall has applied.
    pub fn commit(&mut self, grants: &[Grant], now: Instant) {
        for g in grants {
            for &access in &g.access {
                let key = (g.addr, access);
                if let Some(old) = self.by_grant.remove(&key) {
                    self.due.remove(&old);
                }
                if g.action == Action::Open {
                    let timeout = Duration::from_secs(u64::from(g.duration_s.max(1)));
                    self.seq += 1;
                    let at = (now + timeout, self.seq);
                    self.due.insert(at, (g.user.clone(), g.addr, access));
                    self.by_grant.insert(key, at);
                }
            }
        }
    }

    /// Grants whose time is up (the kernel has removed them): for expiry records.
    pub fn expired(&mut self, now: Instant) -> Vec<(Arc<str>, IpAddr, Access)> {
        let later = self.due.split_off(&(now, u64::MAX));
        let done = std::mem::replace(&mut self.due, later);
        done.into_values()
            .inspect(|v| {
                self.by_grant.remove(&(v.1, v.2));
            })
            .collect()
    }

    /// Whether `addr` · `access` is open (as far as this daemon knows).
    pub fn is_open(&self, addr: IpAddr, access: Access) -> bool {
        self.by_grant.contains_key(&(addr, access))
    }

    /// Grants open now: (user, address, access, time left).
    pub fn open(&self, now: Instant) -> Vec<(Arc<str>, IpAddr, Access, Duration)> {
        self.due
            .iter()
            .map(|((at, _), (u, a, x))| (u.clone(), *a, *x, at.saturating_duration_since(now)))
            .collect()
    }
}

/// The firewall side, shared by the capture threads and the gate worker. A capture thread
/// applies its grant itself when the gate is idle and nothing is queued (no thread
/// hand-off on the knock-to-open path); under load grants queue up and the gate worker
/// applies them in batches. Grants are applied in the order they were accepted: the
/// worker counts a queued grant as done only after applying it, under the lock.
pub struct GateHandle {
    state: std::sync::Mutex<(Box<dyn Gate>, GrantTimers)>,
    audit: Arc<Auditor>,
    hooks: std::sync::OnceLock<Arc<crate::privsep::Channel>>,
    queued: std::sync::atomic::AtomicUsize,
    tx: std::sync::Mutex<Option<Sender<Grant>>>,
}

impl GateHandle {
    /// A handle over `gate`, recording to `audit`, and the receiver its worker drains.
    pub fn new(gate: Box<dyn Gate>, audit: Arc<Auditor>) -> (Arc<Self>, Receiver<Grant>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = Self {
            state: std::sync::Mutex::new((gate, GrantTimers::default())),
            audit,
            hooks: std::sync::OnceLock::new(),
            queued: std::sync::atomic::AtomicUsize::new(0),
            tx: std::sync::Mutex::new(Some(tx)),
        };
        (Arc::new(h), rx)
    }

    /// Hands over an accepted knock; false once the daemon is stopping.
    pub fn submit(&self, g: Grant) -> bool {
        if self.queued.load(Ordering::SeqCst) == 0 {
            if let Ok(mut st) = self.state.try_lock() {
                if self.queued.load(Ordering::SeqCst) == 0 {
                    let (gate, timers) = &mut *st;
                    apply_batch(gate.as_mut(), timers, &self.audit, self.hooks.get(), &[g]);
                    return true;
                }
            }
        }
        self.queued.fetch_add(1, Ordering::SeqCst);
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.as_ref().is_some_and(|tx| tx.send(g).is_ok())
    }

    /// Sends grant events to the hook runner from now on.
    pub fn set_hooks(&self, channel: Arc<crate::privsep::Channel>) {
        let _ = self.hooks.set(channel);
    }

    /// Stops accepting queued grants (the worker then ends).
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Grants open now: (user, address, access, time left), for `spa-server status`.
    pub fn open_grants(&self, now: Instant) -> Vec<(Arc<str>, IpAddr, Access, Duration)> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.1.open(now)
    }
}

/// The audit record of an accepted knock, written before the firewall changes.
fn grant_record(g: &Grant, refreshed: bool, now: SystemTime) -> Record {
    let decision = match g.action {
        Action::Close => Decision::Closed,
        Action::Open if refreshed => Decision::Refreshed,
        Action::Open => Decision::Granted,
    };
    let mut r = Record::new(decision, now);
    r.user = Some(g.user.to_string());
    r.key = Some(g.key.to_string());
    r.src = Some(g.src);
    r.addr = Some(g.addr);
    r.requested = Some(audit::access_list(g.request.access()));
    if g.action == Action::Open {
        r.granted = Some(audit::access_list(&g.access));
        r.requested_s = Some(g.request.duration_s());
        r.duration_s = Some(g.duration_s);
        r.until = Some(
            humantime::format_rfc3339_millis(now + Duration::from_secs(u64::from(g.duration_s)))
                .to_string(),
        );
    }
    r
}

/// Hands hook events to the hook runner process without ever blocking: if its socket is
/// full, the event is dropped (and logged); a grant never waits for a hook.
fn send_hook_events(hooks: &crate::privsep::Channel, events: Vec<crate::hooks::HookEvent>) {
    for ev in events {
        let Ok(msg) = serde_json::to_vec(&ev) else {
            continue;
        };
        match hooks.try_send(&msg) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(event = %ev.event, "hook runner busy: hook event dropped"),
            Err(e) => tracing::warn!(error = %e, "hook runner gone: hook event dropped"),
        }
    }
}

fn apply_batch(
    gate: &mut dyn Gate,
    timers: &mut GrantTimers,
    audit: &Auditor,
    hooks: Option<&Arc<crate::privsep::Channel>>,
    batch: &[Grant],
) {
    // Record first (write(2)): if the record cannot be written, nothing opens.
    let now = SystemTime::now();
    let mut records: Vec<Record> = batch
        .iter()
        .map(|g| {
            let refreshed = g.access.iter().any(|&a| timers.is_open(g.addr, a));
            grant_record(g, refreshed, now)
        })
        .collect();
    if let Err(e) = audit.write(&mut records) {
        tracing::error!(error = %e, grants = batch.len(), "audit log not written; knocks refused, nothing opened (fail closed)");
        return;
    }
    // The timers follow the firewall: they change only once the batch is applied.
    let changes = GrantTimers::plan(batch);
    let applying = Instant::now();
    match gate.apply(&changes) {
        Ok(()) => {
            let applied = Instant::now();
            timers.commit(batch, applied);
            for g in batch {
                let queued_us = applying.saturating_duration_since(g.received).as_micros() as u64;
                let apply_us = applied.saturating_duration_since(applying).as_micros() as u64;
                let access: Vec<String> = g.access.iter().map(Access::to_string).collect();
                match g.action {
                    Action::Open => tracing::info!(
                        decision = "granted", picked_us = g.picked_us, verified_us = g.verified_us, queued_us, apply_us, user = %g.user, key = %g.key, addr = %g.addr,
                        access = %access.join(","), duration_s = g.duration_s, "grant open"
                    ),
                    Action::Close => tracing::info!(
                        decision = "closed", user = %g.user, key = %g.key, addr = %g.addr,
                        access = %access.join(","), "grant closed on request"
                    ),
                }
                if let Some(h) = hooks {
                    send_hook_events(h, crate::hooks::HookEvent::from_grant(g));
                }
            }
        }
        Err(e) => {
            if e.kind() == std::io::ErrorKind::TimedOut {
                tracing::error!(error = %e, grants = batch.len(), "the firewall helper did not answer in time; these grants may still open");
            } else {
                tracing::error!(error = %e, grants = batch.len(), "firewall update failed; nothing opened");
            }
            let mut failed: Vec<Record> = batch
                .iter()
                .map(|g| {
                    let mut r = grant_record(g, false, now);
                    r.decision = Decision::Failed;
                    r.error = Some(format!("firewall update failed: {e}"));
                    r
                })
                .collect();
            if let Err(e) = audit.write(&mut failed) {
                tracing::error!(error = %e, "audit log not written");
            }
        }
    }
}

/// Runs the gate worker until the handle is closed: applies queued grants in batches and
/// logs expiries.
pub fn gate_worker(rx: Receiver<Grant>, handle: Arc<GateHandle>) {
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(g) => Some(g),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut st = handle.state.lock().unwrap_or_else(|p| p.into_inner());
        let (gate, timers) = &mut *st;
        if let Some(first) = first {
            let mut batch = vec![first];
            batch.extend(rx.try_iter().take(1023));
            apply_batch(
                gate.as_mut(),
                timers,
                &handle.audit,
                handle.hooks.get(),
                &batch,
            );
            handle.queued.fetch_sub(batch.len(), Ordering::SeqCst);
        }
        let expired = timers.expired(Instant::now());
        drop(st);
        let now = SystemTime::now();
        let mut records: Vec<Record> = expired
            .into_iter()
            .map(|(user, addr, access)| {
                tracing::info!(decision = "expired", user = %user, addr = %addr, access = %access, "grant expired");
                if let Some(h) = handle.hooks.get() {
                    send_hook_events(h, vec![crate::hooks::HookEvent::expired(&user, addr, access)]);
                }
                let mut r = Record::new(Decision::Expired, now);
                r.user = Some(user.to_string());
                r.addr = Some(addr);
                r.granted = Some(vec![access.to_string()]);
                r
            })
            .collect();
        if let Err(e) = handle
            .audit
            .write(&mut records)
            .and_then(|()| handle.audit.tick(now, false))
        {
            tracing::error!(error = %e, "audit log not written");
        }
    }
}

/// Runs one capture worker until `stop` is set: frames are taken from the socket's
/// receive ring in batches of up to [`BATCH`], each goes through the pipeline in place.
pub fn capture_worker(
    mut socket: crate::capture::PacketSocket,
    interfaces: Arc<Vec<i32>>,
    pipeline: Arc<Pipeline>,
    grants: Arc<GateHandle>,
    stop: Arc<AtomicBool>,
) {
    // Rejects before authentication are counted here, without a lock, and handed to the
    // audit summaries about once a second.
    let mut tally = Tally::default();
    let mut merged = Instant::now();
    let mut gate_gone = false;
    while !stop.load(Ordering::Relaxed) && !gate_gone {
        let mut clock = None;
        let got = socket.recv_each(BATCH, |info, frame| {
            if info.len == 0 || (!interfaces.is_empty() && !interfaces.contains(&info.ifindex)) {
                return true;
            }
            // The clock is read once per batch, and again when a stamp does not fit it
            // (the batch may have waited, e.g. for a grant applied above).
            let mut picked = *clock.get_or_insert_with(SystemTime::now);
            let at = arrival(info.at, picked).unwrap_or_else(|| {
                picked = SystemTime::now();
                clock = Some(picked);
                arrival(info.at, picked).unwrap_or(picked)
            });
            match handle(&pipeline, &grants, &mut tally, info, (at, picked), frame) {
                Flow::Next => {}
                // Applying a grant can take a while: the next frame reads the clock.
                Flow::Granted => clock = None,
                Flow::GateGone => gate_gone = true,
            }
            !gate_gone
        });
        let got = match got {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "capture failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if merged.elapsed() >= Duration::from_secs(1) {
            count_ring_drops(&socket, &pipeline, &mut tally);
            grants.audit.merge(&mut tally);
            merged = Instant::now();
        }
        if (2..BATCH).contains(&got) {
            std::thread::sleep(COALESCE);
        }
    }
    count_ring_drops(&socket, &pipeline, &mut tally);
    grants.audit.merge(&mut tally);
}

/// Frames the kernel could not put in a full ring: counted (status, audit summaries) and
/// logged, never silent.
fn count_ring_drops(socket: &crate::capture::PacketSocket, pipeline: &Pipeline, tally: &mut Tally) {
    if let Ok(n @ 1..) = socket.take_drops() {
        tracing::warn!(frames = n, "capture ring full: the kernel dropped frames");
        let ring_full = crate::packet::Drop::RingFull;
        pipeline.counters.add_drops(ring_full, u64::from(n));
        tally.add_n(ring_full.code(), None, None, u64::from(n));
    }
}

/// The most frames a capture thread handles between two looks at its stop flag.
pub const BATCH: usize = 64;

/// How long before the clock reading a frame's kernel timestamp may lie and be believed:
/// more than a frame can wait in the ring (a batch held up by the helper's reply timeout),
/// far less than the knock time window, and nowhere near a monotonic time (seconds since
/// boot).
pub const ARRIVAL_SKEW: Duration = Duration::from_secs(10);
/// How far after it: frames that arrive while a batch is handled are newer than the
/// batch's clock reading; a stamp further ahead makes the loop read the clock again.
pub const ARRIVAL_LEAD: Duration = Duration::from_millis(10);

/// A frame's time: when the kernel received it (`stamped`, the ring slot's timestamp:
/// exact, and no clock read per frame), when that fits `wall`, a clock reading: at most
/// [`ARRIVAL_SKEW`] before it and [`ARRIVAL_LEAD`] after. Otherwise None:
/// it is not wall-clock time (kernels before 5.18 could pass on a monotonic delivery
/// time, or a sender's chosen transmit time) or `wall` is stale; the caller reads the
/// clock again.
pub fn arrival(stamped: SystemTime, wall: SystemTime) -> Option<SystemTime> {
    let fits = match wall.duration_since(stamped) {
        Ok(before) => before <= ARRIVAL_SKEW,
        Err(after) => after.duration() <= ARRIVAL_LEAD,
    };
    fits.then_some(stamped)
}

/// What became of a frame, for the capture loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Go on.
    Next,
    /// A grant was handed to the gate (and perhaps applied, which takes a while).
    Granted,
    /// The gate worker is gone: stop.
    GateGone,
}

/// Interrupt moderation for the capture threads. A wake-up that finds several frames
/// waiting means frames arrive faster than the thread wakes; it then pauses this long
/// before it looks at the ring again, so under a flood one wake-up serves many frames
/// instead of one wake-up (a few µs of kernel time) per frame. A lone knock finds one
/// frame and the thread goes straight back to poll(2), so knock-to-open is not delayed;
/// during a flood a knock waits at most this (plus timer slack) longer.
pub const COALESCE: Duration = Duration::from_micros(200);

/// At most this many reject lines per second; the rest are counted and summarised, so
/// resent captured knocks (authenticated, so attributable) cannot flood the log.
pub const REJECT_LINES_PER_SEC: u64 = 50;

static REJECT_WINDOW: std::sync::Mutex<(u64, u64, u64)> = std::sync::Mutex::new((0, 0, 0));

/// Whether this reject may be logged now; logs a summary of suppressed lines once a second.
fn reject_line_allowed(now: SystemTime) -> bool {
    let sec = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut w = REJECT_WINDOW.lock().unwrap_or_else(|p| p.into_inner());
    if w.0 != sec {
        if w.2 > 0 {
            tracing::warn!(suppressed = w.2, "authenticated rejects beyond {REJECT_LINES_PER_SEC}/s not logged one by one (see the counters)");
        }
        *w = (sec, 0, 0);
    }
    if w.1 < REJECT_LINES_PER_SEC {
        w.1 += 1;
        true
    } else {
        w.2 += 1;
        false
    }
}

/// One frame through the pipeline.
fn handle(
    pipeline: &Pipeline,
    grants: &GateHandle,
    tally: &mut Tally,
    info: &crate::capture::FrameInfo,
    (now, picked): (SystemTime, SystemTime),
    frame: &[u8],
) -> Flow {
    match pipeline.handle_frame_from(info.ethertype, frame, now) {
        (_, Outcome::Granted(mut g)) => {
            let since = |t: SystemTime| t.duration_since(now).map_or(0, |d| d.as_micros() as u64);
            g.picked_us = since(picked);
            g.verified_us = since(SystemTime::now());
            return if grants.submit(g) {
                Flow::Granted
            } else {
                Flow::GateGone
            };
        }
        (
            _,
            Outcome::Rejected {
                reason,
                user,
                key,
                src,
                request,
            },
        ) => {
            if let Err(e) = grants
                .audit
                .rejected(&reason, &user, key, src, request.as_ref(), now)
            {
                tracing::error!(error = %e, "audit log not written");
            }
            if reject_line_allowed(now) {
                let skew = audit::skew_of(&reason);
                tracing::warn!(decision = "rejected", reason = reason.code(), user = %user, key = %key, src = %src, skew_ms = ?skew, "knock refused");
            }
        }
        (_, Outcome::Failed(e)) => {
            tracing::error!(error = %e, "replay state not written; knock refused (fail closed)")
        }
        (src, Outcome::PreAuth(reason)) => tally.add(reason.code(), None, src),
        (src, Outcome::Dropped(drop)) => tally.add(drop.code(), None, src),
    }
    Flow::Next
}

/// How often the daemon logs the audit log's head (when it moved).
pub const AUDIT_ANCHOR_EVERY: Duration = Duration::from_secs(60);

fn log_head(head: &Option<(u64, String)>) {
    if let Some((seq, mac)) = head {
        tracing::info!(
            audit_head = %format!("{seq}:{mac}"),
            "audit head (keep it: `spa-server audit --verify --head` detects a log cut off before it)"
        );
    }
}

/// Opens the audit log and records the start; refuses to run without it (fail closed).
fn open_audit(config: &spa_keys::server::ServerConfig) -> Result<Auditor, String> {
    let now = SystemTime::now();
    let (audit, report) = Auditor::open(
        &config.audit_dir,
        config.audit_rotate_bytes,
        config.audit_interval,
        config.audit_rejects_per_key,
        now,
    )
    .map_err(|e| format!("audit log: {e}"))?;
    if report.torn_bytes > 0 {
        tracing::warn!(
            bytes = report.torn_bytes,
            "audit log: a torn last line (crash mid-write) was cut off"
        );
    }
    if report.missing > 0 {
        tracing::error!(records = report.missing, "audit log: records the chain state counts are missing (the log was cut off); `spa-server audit --verify` will report it");
    }
    if report.tail_mismatch {
        tracing::error!("audit log: the last record does not match the chain key (altered?); `spa-server audit --verify` will report it");
    }
    let mut started = [Record::new(Decision::Started, now)];
    audit
        .write(&mut started)
        .and_then(|()| audit.flush())
        .map_err(|e| format!("audit log: {e}"))?;
    log_head(&audit.synced_head());
    Ok(audit)
}

/// `spa-server run`: everything until SIGTERM/SIGINT. The firewall table stays in place
/// afterwards, so protected services stay closed while the daemon is down.
pub fn run(config: &spa_keys::server::ServerConfig) -> Result<(), String> {
    use crate::capture::{self, PacketSocket};
    use crate::limits::{LimitConfig, Limiter};
    use crate::live::Live;
    use crate::nft::{self, TableConfig};
    use crate::replay::ReplayStore;

    let started = Instant::now();
    let mut destinations =
        capture::host_addresses().map_err(|e| format!("listing host addresses: {e}"))?;
    destinations.extend(config.destinations.iter().copied());
    let vc = spa_proto::VerifierConfig {
        window_ms: config.window_ms,
        default_duration_s: config.default_duration_s,
        destinations,
    };
    let live = Arc::new(Live::load(config, &vc, SystemTime::now()).map_err(|e| e.to_string())?);
    capture::trim_heap();
    let replay = Arc::new(
        ReplayStore::open(&config.state_dir)
            .map_err(|e| format!("replay state {}: {e}", config.state_dir.display()))?,
    );
    let audit = Arc::new(open_audit(config)?);
    let table = TableConfig {
        table: config.table.clone(),
        spa_port: config.port,
        protect: config.protect.clone(),
        forward: config.forward,
    };
    nft::install(&table).map_err(|e| format!("installing table inet {}: {e}", config.table))?;
    let interfaces: Vec<i32> = config
        .interfaces
        .iter()
        .map(|i| capture::ifindex(i))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let pipeline = Arc::new(Pipeline {
        live: live.clone(),
        replay: replay.clone(),
        limiter: Limiter::new(LimitConfig {
            per_source_burst: f64::from(config.per_source_burst),
            per_source_rate: config.per_source_per_sec,
            global_dh_per_sec: f64::from(config.dh_per_sec),
            ..LimitConfig::default()
        }),
        counters: Default::default(),
        port: config.port,
    });

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let filter = crate::packet::bpf_filter(config.port);
    let group = (std::process::id() & 0xffff) as u16;
    let sockets = (0..workers)
        .map(|_| {
            PacketSocket::open(
                &filter,
                Some(group),
                Duration::from_millis(200),
                capture::ring_frames(workers),
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("opening the capture socket: {e}"))?;
    // Privilege separation (crate::privsep): the firewall helper keeps CAP_NET_ADMIN; this
    // process drops every capability before it starts a thread or parses a packet.
    let (firewall, remote) = crate::privsep::start_firewall(&table.table)?;
    // The hook runner, only when hooks are configured: it keeps CAP_SETUID, CAP_SETGID and
    // CAP_KILL, and hears only validated grant events.
    let hook_runner = if config.hooks.rules.is_empty() {
        None
    } else {
        Some(crate::privsep::start_hooks(&config.path)?)
    };
    let status_gid = config.status_group.as_deref().map(crate::privsep::group_id);
    let status_gid = status_gid
        .transpose()
        .map_err(|e| format!("[status] group: {e}"))?;
    let status = crate::status::StatusServer::bind(&config.status_socket, status_gid)
        .map_err(|e| e.to_string())?;
    crate::privsep::restrict(&[]).map_err(|e| format!("dropping capabilities: {e}"))?;
    let helper_died = Arc::new(AtomicBool::new(false));
    let firewall = {
        let (stop, died) = (stop.clone(), helper_died.clone());
        firewall.watch(move |role, status| {
            if !stop.load(Ordering::SeqCst) {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                tracing::error!(helper = role.subcommand(), %status, "the firewall helper exited; stopping (nothing can open without it; open grants expire on their own)");
                died.store(true, Ordering::SeqCst);
            }
            stop.store(true, Ordering::SeqCst);
        })
    }
    .map_err(|e| e.to_string())?;
    tracing::info!(helper_pid = firewall.pid(), "capabilities dropped: this process holds none; the firewall helper holds only CAP_NET_ADMIN");
    let (handle, rx) = GateHandle::new(Box::new(remote), audit.clone());
    let hook_runner = match hook_runner {
        Some(child) => {
            handle.set_hooks(child.channel());
            let stop = stop.clone();
            Some(
                child
                    .watch(move |_, status| {
                        if !stop.load(Ordering::SeqCst) {
                            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                            tracing::error!(%status, "the hook runner exited; grants go on, hooks no longer run");
                        }
                    })
                    .map_err(|e| e.to_string())?,
            )
        }
        None => None,
    };
    let status = crate::status::spawn(
        status,
        started,
        pipeline.clone(),
        handle.clone(),
        stop.clone(),
    )
    .map_err(|e| e.to_string())?;
    let gate = {
        let handle = handle.clone();
        std::thread::Builder::new()
            .name("gate".into())
            .spawn(move || gate_worker(rx, handle))
            .map_err(|e| e.to_string())?
    };
    let watcher = {
        let (live, stop) = (live.clone(), stop.clone());
        std::thread::spawn(move || {
            live.watch(Duration::from_millis(200), || stop.load(Ordering::Relaxed), |r| match r {
                Ok(r @ crate::live::Reloaded::KeysChanged(_)) => {
                    capture::trim_heap();
                    tracing::info!(result = ?r, "server keys reloaded (a key rotation)")
                }
                Ok(r) => {
                    capture::trim_heap();
                    tracing::info!(result = ?r, "users store reloaded")
                }
                Err(e) => tracing::error!(error = %e, "users store not reloaded; the previous one stays in force"),
            })
        })
    };
    let flusher = {
        let (replay, audit, stop) = (replay.clone(), audit.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut anchored = (Instant::now(), None);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if let Err(e) = replay.flush() {
                    tracing::error!(error = %e, "replay log fdatasync failed");
                }
                if let Err(e) = audit.flush() {
                    tracing::error!(error = %e, "audit log fdatasync failed");
                }
                // The external anchor: the head, to the journal, once a minute if it moved.
                if anchored.0.elapsed() >= AUDIT_ANCHOR_EVERY {
                    let head = audit.synced_head();
                    if head.is_some() && head != anchored.1 {
                        log_head(&head);
                    }
                    anchored = (Instant::now(), head);
                }
            }
        })
    };
    let interfaces = Arc::new(interfaces);
    // Capture thread i runs on the i-th CPU this process may use, so the threads never
    // share a CPU, and the firewall helper, which moves to the CPU a request names
    // (crate::privsep), answers a capture thread on that thread's own CPU. "running" is
    // said once all are placed.
    let cpus = crate::privsep::allowed_cpus();
    let (placed_tx, placed) = std::sync::mpsc::channel::<()>();
    let capture: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let cpu = cpus.get(i).copied();
            let (interfaces, pipeline, handle, stop, placed) = (
                interfaces.clone(),
                pipeline.clone(),
                handle.clone(),
                stop.clone(),
                placed_tx.clone(),
            );
            std::thread::Builder::new()
                .name(format!("capture-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        // Best effort: where it is refused, the thread runs anywhere.
                        if !crate::privsep::move_to(cpu) {
                            tracing::debug!(cpu, "capture thread not pinned");
                        }
                    }
                    let _ = placed.send(());
                    capture_worker(socket, interfaces, pipeline, handle, stop)
                })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    // Each thread says it is placed (none waits: if one cannot be started, run returns;
    // with our sender dropped, one that dies before it says so ends the wait too).
    drop(placed_tx);
    for _ in 0..workers {
        let _ = placed.recv();
    }
    tracing::info!(
        port = config.port,
        workers,
        keys = live.snapshot().identities[0].directory.len(),
        table = %config.table,
        "spa-server running"
    );
    for t in capture {
        let _ = t.join();
    }
    handle.close();
    let _ = gate.join();
    let _ = watcher.join();
    let _ = flusher.join();
    let _ = status.join();
    if let Some(h) = hook_runner {
        // Hooks already queued finish, each within its timeout.
        if !h.stop(config.hooks.timeout + Duration::from_secs(2)) {
            tracing::warn!("the hook runner did not exit; it is killed with this process");
        }
    }
    if !firewall.stop(Duration::from_secs(3)) {
        tracing::warn!("the firewall helper did not exit; it is killed with this process");
    }
    replay
        .flush()
        .map_err(|e| format!("final replay flush: {e}"))?;
    let now = SystemTime::now();
    let mut stopped = [Record::new(Decision::Stopped, now)];
    audit
        .tick(now, true)
        .and_then(|()| audit.write(&mut stopped))
        .and_then(|()| audit.flush())
        .map_err(|e| format!("final audit flush: {e}"))?;
    log_head(&audit.synced_head());
    tracing::info!(counters = ?pipeline.counters.snapshot(), "spa-server stopped; table inet {} left in place", config.table);
    if helper_died.load(Ordering::SeqCst) {
        return Err(
            "stopped: the firewall helper exited (grants already open expire on their own)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(action: Action, port: u16, secs: u32) -> Grant {
        Grant {
            action,
            user: Arc::from("alice"),
            key: spa_proto::ClientPublic::from_bytes([1; 32]).key_id(),
            src: "192.0.2.1".parse().unwrap(),
            addr: "192.0.2.1".parse().unwrap(),
            access: vec![Access::tcp(port).unwrap()],
            duration_s: secs,
            request: spa_proto::Request::new(
                action,
                spa_proto::OpenAddr::Ip("192.0.2.1".parse().unwrap()),
                "192.0.2.100".parse().unwrap(),
                &[Access::tcp(port).unwrap()],
                secs,
            )
            .unwrap(),
            knock_id: [0; 16],
            received: Instant::now(),
            picked_us: 0,
            verified_us: 0,
        }
    }

    #[derive(Clone, Default)]
    struct FakeGate(Arc<std::sync::Mutex<Vec<GateChange>>>);

    impl Gate for FakeGate {
        fn apply(&mut self, changes: &[GateChange]) -> std::io::Result<()> {
            self.0.lock().unwrap().extend_from_slice(changes);
            Ok(())
        }
    }

    fn auditor(dir: &std::path::Path, rotate_bytes: u64) -> Arc<Auditor> {
        let key = spa_keys::text::AuditKey::from_bytes([5; 32]);
        crate::audit::log::create_chain(dir, &key).unwrap();
        let (a, _) = Auditor::open(
            dir,
            rotate_bytes,
            Duration::from_secs(60),
            10,
            SystemTime::now(),
        )
        .unwrap();
        Arc::new(a)
    }

    fn decisions(dir: &std::path::Path) -> Vec<Decision> {
        let mut out = Vec::new();
        crate::audit::read::for_each(dir, |r| {
            out.push(r.unwrap().decision);
            Ok(())
        })
        .unwrap();
        out
    }

    struct FailingGate;

    impl Gate for FailingGate {
        fn apply(&mut self, _: &[GateChange]) -> std::io::Result<()> {
            Err(std::io::Error::other("nf_tables said no"))
        }
    }

    #[test]
    fn a_frame_is_timed_by_the_kernel_unless_its_stamp_is_not_wall_clock_time() {
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = Duration::from_millis;
        // Received a moment ago (or, with clocks read on two CPUs, a moment "ahead").
        assert_eq!(arrival(wall - ms(3), wall), Some(wall - ms(3)));
        assert_eq!(arrival(wall + ms(1), wall), Some(wall + ms(1)));
        assert_eq!(arrival(wall + ms(10), wall), Some(wall + ms(10)));
        assert_eq!(arrival(wall - ms(10_000), wall), Some(wall - ms(10_000)));
        // A monotonic stamp (seconds since boot), a stamp from the future (a sender's
        // chosen transmit time), or a stale clock reading: not believed.
        let boot = SystemTime::UNIX_EPOCH + Duration::from_secs(4_000);
        assert_eq!(arrival(boot, wall), None);
        assert_eq!(arrival(wall - ms(10_001), wall), None);
        assert_eq!(arrival(wall + ms(11), wall), None);
        assert_eq!(arrival(wall + Duration::from_secs(60), wall), None);
    }

    #[test]
    fn a_failed_firewall_change_is_recorded_and_leaves_the_timers_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let (h, _rx) = GateHandle::new(Box::new(FailingGate), auditor(&dir, 1 << 20));
        assert!(h.submit(grant(Action::Open, 22, 30)));
        assert!(h.open_grants(Instant::now()).is_empty(), "nothing opened");
        assert!(h.submit(grant(Action::Open, 22, 30)));
        assert_eq!(
            decisions(&dir),
            [
                Decision::Granted,
                Decision::Failed,
                Decision::Granted,
                Decision::Failed
            ],
            "a knock after a failure is not a refresh of something that never opened"
        );
    }

    #[test]
    fn every_grant_is_recorded_before_the_gate_and_nothing_opens_without_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("audit");
        let gate = FakeGate::default();
        let (h, _rx) = GateHandle::new(Box::new(gate.clone()), auditor(&dir, 1 << 20));
        assert!(h.submit(grant(Action::Open, 22, 30)));
        assert!(h.submit(grant(Action::Open, 22, 30)));
        assert!(h.submit(grant(Action::Close, 22, 0)));
        assert_eq!(
            decisions(&dir),
            [Decision::Granted, Decision::Refreshed, Decision::Closed]
        );
        assert_eq!(gate.0.lock().unwrap().len(), 3);

        // An audit log that cannot be written: the next grant does not reach the gate.
        let dir2 = tmp.path().join("audit2");
        let gate2 = FakeGate::default();
        let (h2, _rx2) = GateHandle::new(Box::new(gate2.clone()), auditor(&dir2, 1));
        assert!(h2.submit(grant(Action::Open, 22, 30)));
        assert_eq!(gate2.0.lock().unwrap().len(), 1);
        // Rotation (forced by the 1-byte limit) now fails: the directory is gone.
        std::fs::remove_dir_all(&dir2).unwrap();
        h2.submit(grant(Action::Open, 443, 30));
        assert_eq!(
            gate2.0.lock().unwrap().len(),
            1,
            "a grant whose record could not be written must not open"
        );
    }

    /// Plans a batch and commits it, as the gate does after a successful apply.
    fn applied(t: &mut GrantTimers, grants: &[Grant], now: Instant) -> Vec<GateChange> {
        t.commit(grants, now);
        GrantTimers::plan(grants)
    }

    #[test]
    fn refresh_keeps_one_timer_and_close_removes_it() {
        let mut t = GrantTimers::default();
        let t0 = Instant::now();
        let c = applied(&mut t, &[grant(Action::Open, 22, 30)], t0);
        assert_eq!(c.len(), 1);
        let c = applied(
            &mut t,
            &[grant(Action::Open, 22, 60)],
            t0 + Duration::from_secs(10),
        );
        assert_eq!(
            c,
            vec![GateChange::Open {
                addr: "192.0.2.1".parse().unwrap(),
                access: Access::tcp(22).unwrap(),
                timeout: Duration::from_secs(60)
            }]
        );
        assert_eq!(t.open(t0).len(), 1, "a refresh never duplicates");
        assert!(
            t.expired(t0 + Duration::from_secs(40)).is_empty(),
            "refreshed to 70 s"
        );
        assert_eq!(t.expired(t0 + Duration::from_secs(71)).len(), 1);
        applied(&mut t, &[grant(Action::Open, 22, 30)], t0);
        let c = applied(&mut t, &[grant(Action::Close, 22, 0)], t0);
        assert!(matches!(c[0], GateChange::Close { .. }));
        assert!(t.open(t0).is_empty());
    }
}
