//! Reading the log: `spa-server audit` queries and `--verify`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use spa_keys::text::AuditKey;

use super::chain::Chain;
use super::log::{files, AuditError, CURRENT, STATE};
use super::record::{self, Decision, Record};

/// What `--verify` found when the chain is intact.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Files read.
    pub files: usize,
    /// The last record's sequence number and MAC (hex).
    pub head: Option<(u64, String)>,
}

/// Why `--verify` failed: the first bad record, or where the log ends too early.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A file could not be read.
    #[error(transparent)]
    Io(#[from] AuditError),
    /// A record is not the one the chain expects.
    #[error("{}:{line}: record {}: {what}", file.display(), seq.map_or("?".to_string(), |s| s.to_string()))]
    Bad {
        /// The file.
        file: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The record's sequence number, if it has one.
        seq: Option<u64>,
        /// What is wrong.
        what: String,
    },
    /// The log ends before a record known to exist.
    #[error("the log ends at record {}, but {what}: records were cut off the end (truncated)", last.map_or("(none)".to_string(), |s| s.to_string()))]
    Truncated {
        /// The last record found.
        last: Option<u64>,
        /// What says more exist.
        what: String,
    },
}

fn seq_of(line: &str) -> Option<u64> {
    record::split(line)
        .and_then(|(body, _)| serde_json::from_str::<Record>(&body).ok())
        .map(|r| r.seq)
}

/// Reads the state's sequence number (how many records the daemon had synced at least).
fn state_seq(dir: &Path) -> Option<u64> {
    let mut b = [0u8; 8];
    File::open(dir.join(STATE)).ok()?.read_exact(&mut b).ok()?;
    Some(u64::from_be_bytes(b))
}

/// Walks the whole chain from `k_0`. `anchor` is a head logged by the daemon
/// (sequence number, MAC hex): the log must reach it with that MAC.
pub fn verify(
    dir: &Path,
    key: &AuditKey,
    anchor: Option<(u64, &str)>,
) -> Result<Verified, VerifyError> {
    // The state first: it never runs ahead of the synced log, so records a running daemon
    // writes while we read cannot make a healthy log look cut off.
    let saved = state_seq(dir);
    let list = files(dir)?;
    let mut chain = Chain::start(key);
    let mut anchor_ok = anchor.is_none();
    for (fi, path) in list.iter().enumerate() {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|source| AuditError::Io {
                path: path.clone(),
                source,
            })?;
        // A byte that is not UTF-8 was edited in: read lossily, and its line's MAC fails.
        let text = String::from_utf8_lossy(&bytes);
        let bad = |line: usize, l: &str, what: String| VerifyError::Bad {
            file: path.clone(),
            line,
            seq: seq_of(l),
            what,
        };
        let mut rest: &str = &text;
        let mut n = 0;
        while !rest.is_empty() {
            n += 1;
            let Some(end) = rest.find('\n') else {
                let what = if fi + 1 == list.len() {
                    "the last line is incomplete (truncated mid-record)"
                } else {
                    "a rotated file ends mid-record"
                };
                return Err(bad(n, rest, what.into()));
            };
            let line = &rest[..end];
            rest = &rest[end + 1..];
            let rec = chain.check(line).map_err(|e| bad(n, line, e.to_string()))?;
            if let Some((seq, mac)) = anchor {
                if rec.seq == seq {
                    if hex::encode(chain.head()) != mac.to_ascii_lowercase() {
                        return Err(bad(n, line, "its MAC differs from the anchor's".into()));
                    }
                    anchor_ok = true;
                }
            }
        }
    }
    let next = chain.next_seq();
    let last = next.checked_sub(1);
    if !anchor_ok {
        let (seq, _) = anchor.expect("checked");
        return Err(VerifyError::Truncated {
            last,
            what: format!("the anchor names record {seq}"),
        });
    }
    if let Some(saved) = saved {
        if saved > next {
            return Err(VerifyError::Truncated {
                last,
                what: format!("the chain state says {saved} records were written"),
            });
        }
    }
    Ok(Verified {
        records: next,
        files: list.len(),
        head: last.map(|s| (s, hex::encode(chain.head()))),
    })
}

/// Which records a query wants. Empty fields match everything.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Only this user.
    pub user: Option<String>,
    /// At or after.
    pub since: Option<SystemTime>,
    /// Before.
    pub until: Option<SystemTime>,
    /// Only this decision.
    pub decision: Option<Decision>,
    /// Only this reason code.
    pub reason: Option<String>,
    /// Only records naming this address (source, address opened, or a summary's source).
    pub source: Option<IpAddr>,
}

impl Filter {
    /// Whether `r` matches.
    pub fn matches(&self, r: &Record) -> bool {
        let t = r.time();
        self.user
            .as_ref()
            .is_none_or(|u| r.user.as_ref() == Some(u))
            && self.decision.is_none_or(|d| r.decision == d)
            && self
                .reason
                .as_ref()
                .is_none_or(|x| r.reason.as_ref() == Some(x))
            && self.since.is_none_or(|s| t.is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| t.is_some_and(|t| t < u))
            && self.source.is_none_or(|a| {
                r.src == Some(a)
                    || r.addr == Some(a)
                    || r.sources
                        .as_ref()
                        .is_some_and(|v| v.iter().any(|s| s.src == a))
            })
    }
}

/// Every record of the log in order (no MAC check: that is `--verify`), with lines that
/// do not parse reported as errors.
pub fn for_each(
    dir: &Path,
    mut f: impl FnMut(Result<Record, String>) -> std::io::Result<()>,
) -> Result<(), AuditError> {
    for path in files(dir)? {
        let file = File::open(&path).map_err(|source| AuditError::Io {
            path: path.clone(),
            source,
        })?;
        read_lines(&path, BufReader::new(file), &mut f)?;
    }
    Ok(())
}

fn parse(line: &str) -> Option<Record> {
    record::split(line).and_then(|(body, _)| serde_json::from_str(&body).ok())
}

fn read_lines(
    path: &Path,
    mut reader: impl BufRead,
    f: &mut impl FnMut(Result<Record, String>) -> std::io::Result<()>,
) -> Result<(), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_owned(),
        source,
    };
    let mut raw = Vec::new();
    let mut n = 0;
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw).map_err(io)? == 0 {
            return Ok(());
        }
        n += 1;
        let line = String::from_utf8_lossy(&raw);
        let r = parse(line.trim_end())
            .ok_or_else(|| format!("{}:{n}: not an audit record", path.display()));
        f(r).map_err(io)?;
    }
}

/// After [`for_each`] (which saw records up to `after`), follows the current file (and
/// the files it rotates into) for new records until `stop` returns true. The current file
/// is read again from its start and records up to `after` are skipped, so nothing written
/// between the two calls is lost and nothing is shown twice.
pub fn follow(
    dir: &Path,
    after: Option<u64>,
    mut stop: impl FnMut() -> bool,
    mut deliver: impl FnMut(Result<Record, String>) -> std::io::Result<()>,
) -> Result<(), AuditError> {
    let mut past = after.is_none();
    let mut f = |r: Result<Record, String>| match &r {
        Ok(rec) if after.is_some_and(|a| rec.seq <= a) => Ok(()),
        Ok(_) => {
            past = true;
            deliver(r)
        }
        Err(_) if !past => Ok(()),
        Err(_) => deliver(r),
    };
    use std::os::unix::fs::MetadataExt;
    let current = dir.join(CURRENT);
    let io = |source| AuditError::Io {
        path: current.clone(),
        source,
    };
    let open = || -> Result<(File, u64), AuditError> {
        let file = File::open(&current).map_err(io)?;
        let ino = file.metadata().map_err(io)?.ino();
        Ok((file, ino))
    };
    let (file, mut ino) = open()?;
    let mut reader = BufReader::new(file);
    let mut partial = String::new();
    while !stop() {
        let mut raw = Vec::new();
        reader.read_until(b'\n', &mut raw).map_err(io)?;
        let chunk = String::from_utf8_lossy(&raw);
        if !chunk.is_empty() {
            partial.push_str(&chunk);
            if partial.ends_with('\n') {
                let r = parse(partial.trim_end())
                    .ok_or_else(|| format!("{}: not an audit record", current.display()));
                partial.clear();
                f(r).map_err(io)?;
            }
            continue;
        }
        // At the end: has the file been rotated away?
        match std::fs::metadata(&current) {
            Ok(m) if m.ino() != ino => {
                // Rotated: finish the old file (records may have landed after our last
                // read and before the rename), then go on with the new one.
                let mut rest = Vec::new();
                reader.read_to_end(&mut rest).map_err(io)?;
                partial.push_str(&String::from_utf8_lossy(&rest));
                for line in partial.split_inclusive('\n') {
                    let r = parse(line.trim_end())
                        .ok_or_else(|| format!("{}: not an audit record", current.display()));
                    f(r).map_err(io)?;
                }
                partial.clear();
                let (file, new) = open()?;
                ino = new;
                reader = BufReader::new(file);
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
    Ok(())
}

/// One record as a table row.
pub fn row(r: &Record) -> String {
    let time = r.time.get(..19).unwrap_or(&r.time).replace('T', " ");
    let dash = || "-".to_string();
    let access = r
        .granted
        .as_ref()
        .or(r.requested.as_ref())
        .map_or_else(dash, |a| a.join(","));
    let detail = match (&r.reason, r.count) {
        (Some(reason), Some(n)) => format!("{reason} x{n}"),
        (Some(reason), None) => match r.skew_ms {
            Some(s) => format!("{reason} (clock {s:+} ms)"),
            None => reason.clone(),
        },
        (None, _) => r
            .duration_s
            .map_or_else(|| r.error.clone().unwrap_or_default(), |d| format!("{d}s")),
    };
    let src = match (&r.src, &r.sources) {
        (Some(s), _) => s.to_string(),
        (None, Some(v)) if !v.is_empty() => {
            let more = v.len() as u64 - 1 + r.other_sources.map_or(0, |_| 1);
            if more > 0 {
                format!("{} +more", v[0].src)
            } else {
                v[0].src.to_string()
            }
        }
        _ => dash(),
    };
    format!(
        "{time:<19}  {:<9}  {:<12}  {:<22}  {:<22}  {:<14}  {detail}",
        r.decision.name(),
        r.user.clone().unwrap_or_else(dash),
        src,
        r.addr.map_or_else(dash, |a| a.to_string()),
        access,
    )
}

/// The table's header.
pub fn header() -> String {
    format!(
        "{:<19}  {:<9}  {:<12}  {:<22}  {:<22}  {:<14}  DETAIL",
        "TIME (UTC)", "DECISION", "USER", "SOURCE", "OPENED", "ACCESS"
    )
}
