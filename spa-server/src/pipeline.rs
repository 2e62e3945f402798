//! One knock through the server, in the order of PROTOCOL.md §6: frame checks, mac1
//! under each accepted server key, rate limits, verification, then the replay commit.
//! The outcome says what to record and what to open; nothing here touches the firewall,
//! the clock or a socket, so every path is tested in-process.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use spa_proto::{Access, Action, KeyId, Reject};

use crate::directory::UserName;
use crate::limits::Limiter;
use crate::live::Live;
use crate::packet;
use crate::replay::{CommitError, ReplayStore};

/// An accepted knock: what the firewall must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Open or close.
    pub action: Action,
    /// The user.
    pub user: UserName,
    /// The key that knocked.
    pub key: KeyId,
    /// The datagram's source.
    pub src: IpAddr,
    /// The address to open.
    pub addr: IpAddr,
    /// What to open.
    pub access: Vec<Access>,
    /// For how long (0 for a close).
    pub duration_s: u32,
    /// What the knock asked for (access, duration), for the audit record.
    pub request: spa_proto::Request,
    /// The knock's id, for the audit record.
    pub knock_id: [u8; 16],
    /// When its frame was handled (for the grant's latency in the log).
    pub received: std::time::Instant,
    /// µs from the kernel's receipt of its frame until a capture thread took it from the
    /// ring, and until it was verified (for the log; set by the capture loop).
    pub picked_us: u64,
    /// See `picked_us`.
    pub verified_us: u64,
}

/// What became of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not a well-formed knock datagram (counted only).
    Dropped(packet::Drop),
    /// Refused before the sender was authenticated (counted only: sources can be forged).
    PreAuth(Reject),
    /// Refused after authentication: recorded with the user.
    Rejected {
        /// Why.
        reason: Reject,
        /// Who.
        user: UserName,
        /// With which key.
        key: KeyId,
        /// From where.
        src: IpAddr,
        /// What was asked for, when the payload was decrypted.
        request: Option<spa_proto::Request>,
    },
    /// Accepted and committed to the replay log: open (or close) now.
    Granted(Grant),
    /// Accepted, but the replay log could not be written, so the knock is refused (fail
    /// closed).
    Failed(String),
}

/// Counters per reason since start (for `status` and the audit aggregates).
pub struct Counters {
    rejects: [AtomicU64; Reject::ALL.len()],
    drops: [AtomicU64; packet::Drop::ALL.len()],
    granted: AtomicU64,
    failed: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            rejects: std::array::from_fn(|_| AtomicU64::new(0)),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            granted: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Counts `n` frames dropped for `reason` outside the pipeline (a full capture ring).
    pub fn add_drops(&self, reason: packet::Drop, n: u64) {
        if let Some(i) = packet::Drop::ALL.iter().position(|x| *x == reason) {
            self.drops[i].fetch_add(n, Ordering::Relaxed);
        }
    }

    fn count(&self, outcome: &Outcome) {
        let bump = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        match outcome {
            Outcome::Dropped(d) => {
                if let Some(i) = packet::Drop::ALL.iter().position(|x| x == d) {
                    bump(&self.drops[i]);
                }
            }
            Outcome::PreAuth(r) | Outcome::Rejected { reason: r, .. } => {
                if let Some(i) = Reject::ALL.iter().position(|x| x.code() == r.code()) {
                    bump(&self.rejects[i]);
                }
            }
            Outcome::Granted(_) => bump(&self.granted),
            Outcome::Failed(_) => bump(&self.failed),
        }
    }

    /// `(code, count)` for every reason with a non-zero count, plus `granted`/`failed`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<_> = Reject::ALL
            .iter()
            .zip(&self.rejects)
            .map(|(r, c)| (r.code(), c.load(Ordering::Relaxed)))
            .chain(
                packet::Drop::ALL
                    .iter()
                    .zip(&self.drops)
                    .map(|(d, c)| (d.code(), c.load(Ordering::Relaxed))),
            )
            .collect();
        out.push(("granted", self.granted.load(Ordering::Relaxed)));
        out.push(("failed", self.failed.load(Ordering::Relaxed)));
        out.retain(|&(_, n)| n > 0);
        out
    }

    /// The count for one reason code.
    pub fn get(&self, code: &str) -> u64 {
        self.snapshot()
            .into_iter()
            .find(|&(c, _)| c == code)
            .map_or(0, |(_, n)| n)
    }
}

/// The knock pipeline.
pub struct Pipeline {
    /// Keys and users.
    pub live: Arc<Live>,
    /// Replay state.
    pub replay: Arc<ReplayStore>,
    /// Step 4.
    pub limiter: Limiter,
    /// Counters per reason.
    pub counters: Counters,
    /// The SPA port.
    pub port: u16,
}

impl Pipeline {
    /// A captured frame (network header first) from `ethertype`.
    pub fn handle_frame(&self, ethertype: u16, frame: &[u8], now: SystemTime) -> Outcome {
        self.handle_frame_from(ethertype, frame, now).1
    }

    /// [`Self::handle_frame`], also giving the datagram's source when the frame has one
    /// (for the audit summaries).
    pub fn handle_frame_from(
        &self,
        ethertype: u16,
        frame: &[u8],
        now: SystemTime,
    ) -> (Option<IpAddr>, Outcome) {
        let outcome = match packet::parse(ethertype, frame, self.port) {
            Ok(d) => return (Some(d.src), self.handle(d.src, d.payload, now)),
            Err(drop) => Outcome::Dropped(drop),
        };
        self.counters.count(&outcome);
        (None, outcome)
    }

    /// A knock's UDP payload from `src`.
    pub fn handle(&self, src: IpAddr, payload: &[u8], now: SystemTime) -> Outcome {
        let outcome = self.decide(src, payload, now);
        self.counters.count(&outcome);
        outcome
    }

    fn decide(&self, src: IpAddr, payload: &[u8], now: SystemTime) -> Outcome {
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let snap = self.live.snapshot();
        // Steps 1–3 under each accepted server key (the current one first). An expired
        // previous key is skipped, so its knocks fail at mac1.
        let mut found = None;
        let mut first = Reject::BadMac1;
        for (i, id) in snap.identities.iter().enumerate() {
            if id.accept_until.is_some_and(|until| until <= now) {
                continue;
            }
            match id.verifier.check(payload) {
                Ok(checked) => {
                    found = Some((id, checked));
                    break;
                }
                Err(r) if i == 0 => first = r,
                Err(_) => {}
            }
        }
        let Some((id, checked)) = found else {
            return Outcome::PreAuth(first);
        };
        // Step 4: rate limits, before any Diffie-Hellman.
        if self.limiter.allow(src, now_ms).is_err() {
            return Outcome::PreAuth(Reject::RateLimited);
        }
        // Steps 5–16.
        let opened =
            match id
                .verifier
                .open_checked(checked, src, now_ms, &id.directory, &*self.replay)
            {
                Ok(o) => o,
                Err(r) => {
                    return match r.entry {
                        Some(e) => Outcome::Rejected {
                            reason: r.reason,
                            user: e.user.clone(),
                            key: e.key().key_id(),
                            src,
                            request: r.payload.map(|p| p.request),
                        },
                        None => Outcome::PreAuth(r.reason),
                    }
                }
            };
        let user = opened.entry.user.clone();
        let key = opened.entry.key().key_id();
        // Commit the timestamp before anything opens: strictly greater, atomically.
        match self
            .replay
            .commit(opened.entry.key(), opened.payload.timestamp_ms)
        {
            Ok(()) => {}
            Err(CommitError::Replay) => {
                return Outcome::Rejected {
                    reason: Reject::Replay,
                    user,
                    key,
                    src,
                    request: Some(opened.payload.request),
                }
            }
            Err(e @ CommitError::Io { .. }) => return Outcome::Failed(e.to_string()),
        }
        let request = &opened.payload.request;
        Outcome::Granted(Grant {
            action: request.action(),
            user,
            key,
            src,
            addr: opened.open_addr,
            access: request.access().to_vec(),
            duration_s: opened.duration_s,
            request: *request,
            knock_id: opened.payload.knock_id,
            received: std::time::Instant::now(),
            picked_us: 0,
            verified_us: 0,
        })
    }
}
