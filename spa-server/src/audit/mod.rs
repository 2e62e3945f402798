//! The audit log: every decision as one JSON line, chained by a forward-secure MAC so
//! tampering is detectable, with summaries for what an attacker could flood.
//!
//! - Authenticated decisions (granted, refreshed, closed, expired, and rejects after
//!   authentication) are one record each; a grant's record is written (write(2)) before
//!   the port opens, and if it cannot be written nothing opens.
//! - Authenticated rejects beyond [`Auditor::rejects_per_key`] per key and interval, and
//!   every reject before authentication, are summed into one record per reason (and key)
//!   per interval ([`aggregate`]), so the log grows with real use, not packet rates.
//! - [`chain`] is the MAC chain, [`log`] the files, [`read`] verification and queries.

pub mod aggregate;
pub mod chain;
pub mod log;
pub mod read;
pub mod record;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use spa_proto::{Access, KeyId, Reject, Request};

pub use aggregate::{Tally, Who};
pub use log::{AuditError, AuditLog, OpenReport};
pub use record::{Decision, Record};

/// Access entries as text (`tcp/22`).
pub fn access_list(access: &[Access]) -> Vec<String> {
    access.iter().map(Access::to_string).collect()
}

/// The skew a stale or future reject reports.
pub fn skew_of(reason: &Reject) -> Option<i64> {
    match *reason {
        Reject::Stale { skew_ms } | Reject::Future { skew_ms } => Some(skew_ms),
        _ => None,
    }
}

struct Pending {
    tally: Tally,
    since: SystemTime,
    per_key: HashMap<KeyId, u32>,
}

/// The daemon's side of the audit log, shared by all threads.
pub struct Auditor {
    log: Mutex<AuditLog>,
    pending: Mutex<Pending>,
    interval: Duration,
    /// Authenticated rejects recorded one by one per key and interval.
    pub rejects_per_key: u32,
    synced: Mutex<Option<(u64, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Auditor {
    /// Opens the log in `dir`.
    pub fn open(
        dir: &Path,
        rotate_bytes: u64,
        interval: Duration,
        rejects_per_key: u32,
        now: SystemTime,
    ) -> Result<(Self, OpenReport), AuditError> {
        let (log, report) = AuditLog::open(dir, rotate_bytes)?;
        Ok((
            Self {
                log: Mutex::new(log),
                pending: Mutex::new(Pending {
                    tally: Tally::default(),
                    since: now,
                    per_key: HashMap::new(),
                }),
                interval,
                rejects_per_key,
                synced: Mutex::new(None),
            },
            report,
        ))
    }

    /// Appends records (one write(2)).
    pub fn write(&self, records: &mut [Record]) -> Result<(), AuditError> {
        lock(&self.log).append(records)
    }

    /// An authenticated reject: its own record while the key is under its limit for this
    /// interval, otherwise counted into the interval's summary.
    #[allow(clippy::too_many_arguments)]
    pub fn rejected(
        &self,
        reason: &Reject,
        user: &str,
        key: KeyId,
        src: IpAddr,
        request: Option<&Request>,
        now: SystemTime,
    ) -> Result<(), AuditError> {
        {
            let mut p = lock(&self.pending);
            let n = p.per_key.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            if *n > self.rejects_per_key {
                let who = Who {
                    user: user.to_owned(),
                    key,
                };
                p.tally.add(reason.code(), Some(&who), Some(src));
                return Ok(());
            }
        }
        let mut r = Record::new(Decision::Rejected, now);
        r.reason = Some(reason.code().to_owned());
        r.user = Some(user.to_owned());
        r.key = Some(key.to_string());
        r.src = Some(src);
        r.skew_ms = skew_of(reason);
        if let Some(q) = request {
            r.requested = Some(access_list(q.access()));
            r.requested_s = Some(q.duration_s());
        }
        self.write(&mut [r])
    }

    /// Moves a capture thread's counts into the interval's summary.
    pub fn merge(&self, local: &mut Tally) {
        if !local.is_empty() {
            local.merge_into(&mut lock(&self.pending).tally);
        }
    }

    /// Writes the interval's summaries once it has passed (call often; cheap otherwise).
    /// `force` writes them now (at shutdown).
    pub fn tick(&self, now: SystemTime, force: bool) -> Result<(), AuditError> {
        let mut records = {
            let mut p = lock(&self.pending);
            let due = now.duration_since(p.since).unwrap_or(Duration::ZERO) >= self.interval;
            if !due && !force {
                return Ok(());
            }
            let since = std::mem::replace(&mut p.since, now);
            p.per_key.clear();
            p.tally.drain_records(since, now)
        };
        self.write(&mut records)
    }

    /// fdatasyncs the log and saves the chain state; the lock is not held while syncing,
    /// so grants are not delayed by the disk.
    pub fn flush(&self) -> Result<(), AuditError> {
        let Some(pending) = lock(&self.log).begin_flush()? else {
            return Ok(());
        };
        let head = pending.head();
        pending
            .finish()
            .inspect_err(|_| lock(&self.log).mark_dirty())?;
        *lock(&self.synced) = head;
        Ok(())
    }

    /// The last record known to be on disk (fdatasync'd), for the external anchor: an
    /// anchor never names a record a power loss could still take away.
    pub fn synced_head(&self) -> Option<(u64, String)> {
        lock(&self.synced).clone()
    }

    /// The last record written (in memory; it may not be on disk yet, see [`Self::synced_head`]).
    pub fn head(&self) -> Option<(u64, String)> {
        lock(&self.log).head()
    }
}
