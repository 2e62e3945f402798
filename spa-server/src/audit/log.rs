//! The audit log on disk: `audit.jsonl` (the current file, appended with write(2)),
//! `audit-<first seq>.jsonl` (rotated files), and `chain.state` (0600): the sequence
//! number and key of the next record, rewritten in place after each fdatasync of the log.
//!
//! The state may lag the log (records written since the last flush); on start the chain
//! is moved forward past the records found, so nothing is lost. It never runs ahead of
//! the log on disk, because the log is synced first. Whoever reads the state file holds
//! the key for records from its sequence number on, never for earlier ones.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use spa_keys::text::AuditKey;
use zeroize::Zeroizing;

use super::chain::Chain;
use super::record::{self, Record};

/// The current file.
pub const CURRENT: &str = "audit.jsonl";
/// The chain state.
pub const STATE: &str = "chain.state";
const STATE_LEN: usize = 8 + 32;
/// How far past the saved state the last record may be (records written since the last
/// state save; the state is saved every flush, so this is generous).
const MAX_LAG: u64 = 1 << 20;

/// An audit log error. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The directory holds no chain state.
    #[error("{}: no audit chain state (`spa-server init` creates it)", .0.display())]
    NoChain(PathBuf),
    /// A chain exists already.
    #[error("{}: an audit chain exists already", .0.display())]
    Exists(PathBuf),
    /// The state file is not private, or not ours.
    #[error("{0}")]
    Unsafe(String),
    /// The state file is damaged.
    #[error("{}: damaged (expected {STATE_LEN} bytes)", .0.display())]
    Damaged(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The log's files, oldest first (rotated ones by first sequence number, then the
/// current one if present).
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_prefix("audit-")
            .and_then(|s| s.strip_suffix(".jsonl"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            rotated.push((seq, entry.path()));
        }
    }
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let current = dir.join(CURRENT);
    if current.exists() {
        out.push(current);
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn state_bytes(next_seq: u64, key: &[u8; 32]) -> Zeroizing<[u8; STATE_LEN]> {
    let mut b = Zeroizing::new([0u8; STATE_LEN]);
    b[..8].copy_from_slice(&next_seq.to_be_bytes());
    b[8..].copy_from_slice(key);
    b
}

/// Starts a new chain in `dir` (created 0700 if missing) whose first key is `key`.
/// Refuses if a chain exists there.
pub fn create_chain(dir: &Path, key: &AuditKey) -> Result<(), AuditError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let path = dir.join(STATE);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => AuditError::Exists(dir.to_owned()),
            _ => AuditError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
    f.write_all(&*state_bytes(0, key.expose_secret()))
        .and_then(|()| f.sync_all())
        .map_err(io(&path))?;
    sync_dir(dir)
}

/// The last complete line of `path`, if any, and the file's length up to it (a torn
/// last line, from a crash mid-write, is not counted).
fn last_line(path: &Path) -> Result<(Option<String>, u64), AuditError> {
    let mut f = File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let mut start = len.saturating_sub(64 * 1024);
    loop {
        f.seek(SeekFrom::Start(start)).map_err(io(path))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io(path))?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            if start == 0 {
                return Ok((None, 0));
            }
            start = start.saturating_sub(64 * 1024);
            continue;
        };
        let begin = buf[..end].iter().rposition(|&b| b == b'\n');
        if begin.is_none() && start > 0 {
            start = start.saturating_sub(64 * 1024);
            continue;
        }
        let line = &buf[begin.map_or(0, |b| b + 1)..end];
        return Ok((
            Some(String::from_utf8_lossy(line).into_owned()),
            start + end as u64 + 1,
        ));
    }
}

/// What opening the log found, for the daemon's log (and the admin).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Bytes of a torn last line cut off (a crash mid-write).
    pub torn_bytes: u64,
    /// Records the state says were written but are not in the log (a cut-off tail).
    pub missing: u64,
    /// The last record's MAC does not match the key (the tail was altered).
    pub tail_mismatch: bool,
}

/// The open log, appended by one writer at a time (the daemon wraps it in a mutex).
pub struct AuditLog {
    dir: PathBuf,
    file: File,
    len: u64,
    first_seq: Option<u64>,
    rotate_bytes: u64,
    chain: Chain,
    state: File,
    dirty: bool,
    /// The current file was rotated away and not opened again yet.
    reopen: bool,
}

impl AuditLog {
    /// Opens the log in `dir`, resuming the chain after the last record found.
    pub fn open(dir: &Path, rotate_bytes: u64) -> Result<(Self, OpenReport), AuditError> {
        let state_path = dir.join(STATE);
        let mut state = match OpenOptions::new().read(true).write(true).open(&state_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AuditError::NoChain(dir.to_owned()))
            }
            Err(e) => return Err(io(&state_path)(e)),
        };
        spa_keys::fsutil::check_private(&state_path, &state)
            .map_err(|e| AuditError::Unsafe(e.to_string()))?;
        let mut bytes = Zeroizing::new([0u8; STATE_LEN]);
        state
            .read_exact(bytes.as_mut())
            .map_err(|_| AuditError::Damaged(state_path.clone()))?;
        let saved_seq = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[8..]);
        let mut chain = Chain::resume(key, saved_seq, [0; 32]);
        zeroize::Zeroize::zeroize(&mut key);

        let mut report = OpenReport::default();
        let current = dir.join(CURRENT);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&current)
            .map_err(io(&current))?;
        let mut len = file.metadata().map_err(io(&current))?.len();
        // The newest record: in the current file, or the newest rotated one.
        let mut tail = None;
        for path in files(dir)?.iter().rev() {
            let (line, complete) = last_line(path)?;
            if path == &current && complete < len {
                report.torn_bytes = len - complete;
                file.set_len(complete).map_err(io(&current))?;
                len = complete;
            }
            if let Some(line) = line {
                tail = Some(line);
                break;
            }
        }
        let mut first_seq = None;
        if let Some(line) = tail {
            let parsed = record::split(&line)
                .and_then(|(body, mac)| Some((serde_json::from_str::<Record>(&body).ok()?, mac)));
            match parsed {
                // The state lags the log by at most one flush interval of records; a tail
                // claiming far more is damaged or forged, and is not walked to.
                Some((rec, mac)) if rec.seq >= saved_seq && rec.seq - saved_seq < MAX_LAG => {
                    chain.fast_forward(rec.seq, [0; 32]);
                    report.tail_mismatch = !chain.mac_matches(&line);
                    chain.fast_forward(rec.seq + 1, mac);
                }
                Some((rec, mac)) if rec.seq < saved_seq => {
                    // The state is ahead: records saved to disk are gone.
                    report.missing = saved_seq - rec.seq - 1;
                    chain = Chain::resume(*chain.key(), saved_seq, mac);
                }
                Some((_, mac)) => {
                    report.tail_mismatch = true;
                    chain = Chain::resume(*chain.key(), saved_seq, mac);
                }
                None => report.tail_mismatch = true,
            }
            if len > 0 {
                first_seq = first_line_seq(&current)?;
            }
        } else {
            report.missing = saved_seq;
        }
        Ok((
            Self {
                dir: dir.to_owned(),
                file,
                len,
                first_seq,
                rotate_bytes,
                chain,
                state,
                dirty: false,
                reopen: false,
            },
            report,
        ))
    }

    /// Seals and appends `records` with one write(2). On error nothing is counted as
    /// written (a partial write is cut off again) and the chain stays where it was.
    pub fn append(&mut self, records: &mut [Record]) -> Result<(), AuditError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut chain = self.chain.clone();
        let first = chain.next_seq();
        let mut buf = String::new();
        for r in records.iter_mut() {
            buf.push_str(&chain.seal(r));
        }
        let current = self.dir.join(CURRENT);
        if self.reopen {
            self.file = open_private(&current)?;
            self.reopen = false;
        }
        if self.len > 0 && self.len + buf.len() as u64 > self.rotate_bytes {
            self.rotate()?;
        }
        if let Err(e) = self.file.write_all(buf.as_bytes()) {
            let _ = self.file.set_len(self.len);
            return Err(AuditError::Io {
                path: current,
                source: e,
            });
        }
        self.len += buf.len() as u64;
        self.first_seq.get_or_insert(first);
        self.chain = chain;
        self.dirty = true;
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let current = self.dir.join(CURRENT);
        self.file.sync_data().map_err(io(&current))?;
        let first = self.first_seq.unwrap_or(self.chain.next_seq());
        let to = self.dir.join(format!("audit-{first:020}.jsonl"));
        // A link never replaces an existing file (unlike rename): a rotated file is never
        // overwritten, whatever went wrong before.
        std::fs::hard_link(&current, &to).map_err(io(&to))?;
        std::fs::remove_file(&current).map_err(io(&current))?;
        // From here the records are safe under the new name; the current file is gone
        // until it is opened again (here, or by the next append if this fails).
        self.len = 0;
        self.first_seq = None;
        self.reopen = true;
        self.file = open_private(&current)?;
        self.reopen = false;
        sync_dir(&self.dir)
    }

    /// fdatasyncs the log, then saves the chain state (the key for the next record,
    /// overwriting the older one). Nothing to do when nothing was written.
    pub fn flush(&mut self) -> Result<(), AuditError> {
        match self.begin_flush()? {
            Some(p) => p.finish().inspect_err(|_| self.mark_dirty()),
            None => Ok(()),
        }
    }

    /// What a flush must do, taken under the writer's lock; [`PendingFlush::finish`]
    /// does the slow part without it. Records appended meanwhile go to the next flush.
    pub fn begin_flush(&mut self) -> Result<Option<PendingFlush>, AuditError> {
        if !self.dirty {
            return Ok(None);
        }
        let current = self.dir.join(CURRENT);
        let state_path = self.dir.join(STATE);
        let p = PendingFlush {
            log: self.file.try_clone().map_err(io(&current))?,
            state: self.state.try_clone().map_err(io(&state_path))?,
            bytes: state_bytes(self.chain.next_seq(), &self.chain.key()),
            current,
            state_path,
            head: self.head(),
        };
        self.dirty = false;
        Ok(Some(p))
    }

    /// A flush failed: try again next time.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The head: the last record's sequence number and MAC (hex), the external anchor
    /// that `--verify --head` checks.
    pub fn head(&self) -> Option<(u64, String)> {
        let next = self.chain.next_seq();
        (next > 0).then(|| (next - 1, hex::encode(self.chain.head())))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A flush in progress (see [`AuditLog::begin_flush`]).
pub struct PendingFlush {
    log: File,
    state: File,
    bytes: Zeroizing<[u8; STATE_LEN]>,
    current: PathBuf,
    state_path: PathBuf,
    head: Option<(u64, String)>,
}

impl PendingFlush {
    /// The head this flush makes durable.
    pub fn head(&self) -> Option<(u64, String)> {
        self.head.clone()
    }

    /// Syncs the log, then writes and syncs the state: the state never runs ahead of
    /// the records on disk.
    pub fn finish(self) -> Result<(), AuditError> {
        self.log.sync_data().map_err(io(&self.current))?;
        self.state
            .write_all_at(&*self.bytes, 0)
            .and_then(|()| self.state.sync_data())
            .map_err(io(&self.state_path))
    }
}

fn open_private(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))
}

fn first_line_seq(path: &Path) -> Result<Option<u64>, AuditError> {
    let f = File::open(path).map_err(io(path))?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(f), &mut line).map_err(io(path))?;
    Ok(record::split(line.trim_end())
        .and_then(|(body, _)| serde_json::from_str::<Record>(&body).ok())
        .map(|r| r.seq))
}
