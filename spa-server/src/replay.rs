//! Durable replay state: the last accepted timestamp of every client key.
//!
//! Design (see docs/REPLAY.md): an append-only log of fixed 40-byte records
//! (32-byte key, u64 big-endian timestamp), written with write(2) *before* the firewall
//! changes, fdatasync'd at least every 200 ms by a background flusher (group commit), and
//! compacted into a snapshot on start and whenever it grows past a bound proportional to
//! the number of keys. write(2) puts the record in the kernel before the grant, so a crash
//! or `kill -9` of the daemon at any moment cannot lose an accepted timestamp; a power
//! loss can lose at most the last flush interval. Memory and disk are O(keys).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use spa_proto::{ClientPublic, ReplayState};

const RECORD: usize = 40;
const LOG: &str = "replay.log";
const SNAPSHOT: &str = "replay.snapshot";

/// Why a timestamp could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Not newer than the last accepted (a copy raced ahead, or a replay).
    #[error("replay")]
    Replay,
    /// The log could not be written: fail closed, the knock is refused.
    #[error("replay log {}: {source}", path.display())]
    Io {
        /// The log.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

struct Inner {
    last: HashMap<ClientPublic, u64>,
    log: File,
    records: usize,
}

/// The replay store.
pub struct ReplayStore {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

fn read_records(path: &Path, into: &mut HashMap<ClientPublic, u64>) -> std::io::Result<usize> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    // A torn last record (a crash mid-write) is ignored: it was never acknowledged.
    let mut n = 0;
    for rec in bytes.chunks_exact(RECORD) {
        let key = ClientPublic::from_bytes(rec[..32].try_into().expect("32 bytes"));
        let ts = u64::from_be_bytes(rec[32..].try_into().expect("8 bytes"));
        let e = into.entry(key).or_insert(ts);
        *e = (*e).max(ts);
        n += 1;
    }
    Ok(n)
}

fn write_snapshot(dir: &Path, last: &HashMap<ClientPublic, u64>) -> std::io::Result<()> {
    let tmp = dir.join(".replay.snapshot.tmp");
    let mut buf = Vec::with_capacity(last.len() * RECORD);
    for (k, ts) in last {
        buf.extend_from_slice(k.as_bytes());
        buf.extend_from_slice(&ts.to_be_bytes());
    }
    let mut f = private_file(&tmp, true)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT))?;
    File::open(dir)?.sync_all()
}

fn private_file(path: &Path, truncate: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true);
    if truncate {
        o.write(true).truncate(true);
    } else {
        o.append(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

impl ReplayStore {
    /// Opens the store in `dir` (created 0700 if missing): reads snapshot and log,
    /// compacts them into a new snapshot and starts an empty log.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut last = HashMap::new();
        read_records(&dir.join(SNAPSHOT), &mut last)?;
        read_records(&dir.join(LOG), &mut last)?;
        write_snapshot(dir, &last)?;
        let log = private_file(&dir.join(LOG), true)?;
        log.sync_all()?;
        Ok(Self {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                last,
                log,
                records: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Atomically raises `key`'s high-water mark to `ts` and appends it to the log (in
    /// the kernel before this returns). Call it after every other check passed and
    /// before the firewall changes.
    pub fn commit(&self, key: &ClientPublic, ts: u64) -> Result<(), CommitError> {
        let mut inner = self.lock();
        if inner.last.get(key).is_some_and(|&last| ts <= last) {
            return Err(CommitError::Replay);
        }
        let mut rec = [0u8; RECORD];
        rec[..32].copy_from_slice(key.as_bytes());
        rec[32..].copy_from_slice(&ts.to_be_bytes());
        let io = |source| CommitError::Io {
            path: self.dir.join(LOG),
            source,
        };
        inner.log.write_all(&rec).map_err(io)?;
        inner.last.insert(*key, ts);
        inner.records += 1;
        // Keep disk O(keys): compact when the log holds several records per key.
        if inner.records > 1024 + 4 * inner.last.len() {
            write_snapshot(&self.dir, &inner.last).map_err(io)?;
            inner.log = private_file(&self.dir.join(LOG), true).map_err(io)?;
            inner.records = 0;
        }
        Ok(())
    }

    /// fdatasync the log (the background flusher calls this every 200 ms).
    pub fn flush(&self) -> std::io::Result<()> {
        let log = self.lock().log.try_clone()?;
        log.sync_data()
    }

    /// Number of keys with a recorded timestamp.
    pub fn len(&self) -> usize {
        self.lock().last.len()
    }

    /// Whether no key has a recorded timestamp.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReplayState for ReplayStore {
    fn last_accepted(&self, key: &ClientPublic) -> Option<u64> {
        self.lock().last.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ClientPublic {
        ClientPublic::from_bytes([n; 32])
    }

    #[test]
    fn strictly_increasing_and_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReplayStore::open(dir.path()).unwrap();
        store.commit(&key(1), 100).unwrap();
        assert!(matches!(
            store.commit(&key(1), 100),
            Err(CommitError::Replay)
        ));
        assert!(matches!(
            store.commit(&key(1), 99),
            Err(CommitError::Replay)
        ));
        store.commit(&key(1), 101).unwrap();
        store.commit(&key(2), 5).unwrap();
        // No flush, no clean shutdown: what write(2) put in the kernel is enough.
        drop(store);
        let store = ReplayStore::open(dir.path()).unwrap();
        assert_eq!(store.last_accepted(&key(1)), Some(101));
        assert_eq!(store.last_accepted(&key(2)), Some(5));
        assert!(matches!(
            store.commit(&key(1), 101),
            Err(CommitError::Replay)
        ));
    }

    #[test]
    fn torn_record_is_ignored_and_disk_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = ReplayStore::open(dir.path()).unwrap();
        for ts in 1..=20_000u64 {
            store.commit(&key((ts % 3) as u8), ts).unwrap();
        }
        let log_len = std::fs::metadata(dir.path().join(LOG)).unwrap().len();
        assert!(
            log_len <= (1024 + 4 * 3 + 1) as u64 * RECORD as u64,
            "log {log_len} bytes"
        );
        drop(store);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG))
            .unwrap();
        f.write_all(&[7u8; 17]).unwrap();
        let store = ReplayStore::open(dir.path()).unwrap();
        assert_eq!(store.len(), 3);
        assert_eq!(
            store.last_accepted(&key((20_000u64 % 3) as u8)),
            Some(20_000)
        );
        let snap = std::fs::metadata(dir.path().join(SNAPSHOT)).unwrap().len();
        assert_eq!(snap, 3 * RECORD as u64);
    }
}
