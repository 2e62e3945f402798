//! The audit log as an intruder would attack it: every kind of tampering is detected and
//! named, the chain survives crashes and rotation, queries return exactly what matches,
//! a flood stays small, and no key appears anywhere.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spa_keys::text::{AuditKey, KeyText};
use spa_server::audit::log::{self, create_chain, AuditLog};
use spa_server::audit::read::{self, Filter, VerifyError};
use spa_server::audit::{Auditor, Decision, Record, Tally};

const K0: [u8; 32] = [0x42; 32];

fn key() -> AuditKey {
    AuditKey::from_bytes(K0)
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn rec(i: u64) -> Record {
    let decision = [Decision::Granted, Decision::Rejected, Decision::Expired][(i % 3) as usize];
    let mut r = Record::new(decision, t(i * 60));
    r.user = Some(["alice", "bob"][(i % 2) as usize].into());
    r.src = Some(IpAddr::from([192, 0, 2, (i % 5) as u8 + 1]));
    if decision == Decision::Rejected {
        r.reason = Some(["replay", "stale"][(i % 2) as usize].into());
    }
    r
}

/// A log of `n` records in `dir`, rotated every ~`rotate` bytes, flushed at the end.
fn write_log(dir: &Path, n: u64, rotate: u64) {
    create_chain(dir, &key()).unwrap();
    let (mut log, report) = AuditLog::open(dir, rotate).unwrap();
    assert_eq!(report, Default::default());
    for i in 0..n {
        log.append(&mut [rec(i)]).unwrap();
    }
    log.flush().unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect()
}

fn put(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.concat()).unwrap();
}

fn current(dir: &Path) -> PathBuf {
    dir.join(log::CURRENT)
}

fn bad_at(dir: &Path) -> (String, usize, String) {
    match read::verify(dir, &key(), None) {
        Err(VerifyError::Bad {
            file, line, what, ..
        }) => (
            file.file_name().unwrap().to_string_lossy().into_owned(),
            line,
            what,
        ),
        other => panic!("expected a bad record, got {other:?}"),
    }
}

#[test]
fn an_untouched_log_verifies_across_rotated_files() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 50, 2_000);
    let files = log::files(tmp.path()).unwrap();
    assert!(files.len() > 3, "rotation happened: {files:?}");
    let v = read::verify(tmp.path(), &key(), None).unwrap();
    assert_eq!((v.records, v.files), (50, files.len()));
    let (seq, mac) = v.head.unwrap();
    assert_eq!(seq, 49);
    // The head is the anchor the daemon logs; the log reaches it.
    read::verify(tmp.path(), &key(), Some((49, &mac))).unwrap();
    // The wrong first key fails at the first record.
    let wrong = AuditKey::from_bytes([1; 32]);
    assert!(matches!(
        read::verify(tmp.path(), &wrong, None),
        Err(VerifyError::Bad {
            line: 1,
            seq: Some(0),
            ..
        })
    ));
}

#[test]
fn an_edited_record_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 10, 1 << 20);
    let mut l = lines(&current(tmp.path()));
    l[4] = l[4].replace("alice", "mallory");
    put(&current(tmp.path()), &l);
    let (file, line, what) = bad_at(tmp.path());
    assert_eq!((file.as_str(), line), ("audit.jsonl", 5));
    assert!(what.contains("edited"), "{what}");
    // Even a change of white space.
    let mut l = lines(&current(tmp.path()));
    l[4] = l[4].replace("mallory", "alice").replacen(',', ", ", 1);
    put(&current(tmp.path()), &l);
    assert_eq!(bad_at(tmp.path()).1, 5);
}

#[test]
fn a_deleted_record_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 10, 1 << 20);
    let mut l = lines(&current(tmp.path()));
    l.remove(3);
    put(&current(tmp.path()), &l);
    let (_, line, what) = bad_at(tmp.path());
    assert_eq!(line, 4);
    assert!(what.contains("records 3 to 3 are missing"), "{what}");
}

#[test]
fn reordered_records_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 10, 1 << 20);
    let mut l = lines(&current(tmp.path()));
    l.swap(6, 7);
    put(&current(tmp.path()), &l);
    assert_eq!(bad_at(tmp.path()).1, 7);
    // A record copied over another (same position, other content).
    let mut l = lines(&current(tmp.path()));
    l.swap(6, 7);
    l[8] = l[2].clone();
    put(&current(tmp.path()), &l);
    let (_, line, what) = bad_at(tmp.path());
    assert_eq!(line, 9);
    assert!(what.contains("reordered"), "{what}");
}

#[test]
fn truncation_is_detected_by_the_anchor_and_the_chain_state() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 10, 1 << 20);
    let head = read::verify(tmp.path(), &key(), None)
        .unwrap()
        .head
        .unwrap();
    let mut l = lines(&current(tmp.path()));
    l.truncate(7);
    put(&current(tmp.path()), &l);
    // The saved chain state counts 10 records.
    let e = read::verify(tmp.path(), &key(), None).unwrap_err();
    assert!(
        matches!(e, VerifyError::Truncated { last: Some(6), .. }),
        "{e}"
    );
    // Even with the state file rolled back, the logged anchor says record 9 existed.
    std::fs::remove_file(tmp.path().join(log::STATE)).unwrap();
    let e = read::verify(tmp.path(), &key(), Some((head.0, &head.1))).unwrap_err();
    assert!(e.to_string().contains("anchor names record 9"), "{e}");
    // A line cut in the middle.
    let mut l = lines(&current(tmp.path()));
    l[6].truncate(20);
    put(&current(tmp.path()), &l);
    assert!(bad_at(tmp.path()).2.contains("incomplete"));
}

#[test]
fn a_deleted_rotated_file_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 30, 1_500);
    let files = log::files(tmp.path()).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    let (_, line, what) = bad_at(tmp.path());
    assert_eq!(line, 1);
    assert!(what.contains("missing"), "{what}");
    // And the oldest one.
    std::fs::remove_file(&files[0]).unwrap();
    assert!(bad_at(tmp.path()).2.contains("records 0 to"));
}

#[test]
fn an_intruder_holding_the_current_key_cannot_rewrite_the_past() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 10, 1 << 20);
    // The intruder reads chain.state (the key for record 10), rewrites record 9 and
    // re-seals it with the only key they have.
    let state = std::fs::read(tmp.path().join(log::STATE)).unwrap();
    let mut k = [0u8; 32];
    k.copy_from_slice(&state[8..40]);
    let mut l = lines(&current(tmp.path()));
    let (body, _) = spa_server::audit::record::split(l[8].trim_end()).unwrap();
    let prev: Record = serde_json::from_str(&body).unwrap();
    let mut chain = spa_server::audit::chain::Chain::resume(
        k,
        9,
        hex::decode(&prev.prev).unwrap().try_into().unwrap(),
    );
    // (prev of record 9 is the MAC of record 8; take it from record 9's own line.)
    let (body9, _) = spa_server::audit::record::split(l[9].trim_end()).unwrap();
    let r9: Record = serde_json::from_str(&body9).unwrap();
    chain.fast_forward(9, hex::decode(&r9.prev).unwrap().try_into().unwrap());
    let mut forged = Record::new(Decision::Granted, t(0));
    forged.user = Some("nobody-was-here".into());
    l[9] = chain.seal(&mut forged);
    put(&current(tmp.path()), &l);
    let (_, line, what) = bad_at(tmp.path());
    assert_eq!(line, 10);
    assert!(what.contains("edited"), "{what}");
}

#[test]
fn a_crash_loses_nothing_and_the_chain_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    create_chain(tmp.path(), &key()).unwrap();
    {
        let (mut log, _) = AuditLog::open(tmp.path(), 1 << 20).unwrap();
        log.append(&mut [rec(0), rec(1)]).unwrap();
        log.flush().unwrap();
        // Written but never flushed: the state lags by two records.
        log.append(&mut [rec(2)]).unwrap();
        log.append(&mut [rec(3)]).unwrap();
    }
    // A torn line, as if the process died mid-write.
    let mut l = lines(&current(tmp.path()));
    l.push("{\"seq\":4,\"ti".into());
    put(&current(tmp.path()), &l);
    let (mut log, report) = AuditLog::open(tmp.path(), 1 << 20).unwrap();
    assert!(report.torn_bytes > 0 && report.missing == 0 && !report.tail_mismatch);
    log.append(&mut [rec(4)]).unwrap();
    log.flush().unwrap();
    let v = read::verify(tmp.path(), &key(), None).unwrap();
    assert_eq!(v.records, 5);
}

#[test]
fn no_key_appears_in_the_log_the_state_report_or_errors() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 5, 1 << 20);
    let text = key().to_text();
    let hexkey = hex::encode(K0);
    let all: String = log::files(tmp.path())
        .unwrap()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(!all.contains(text.as_str()) && !all.contains(&hexkey));
    assert!(!format!("{:?}", key()).contains(&hexkey));
    let mut l = lines(&current(tmp.path()));
    l[1] = l[1].replace("alice", "eve").replace("bob", "eve");
    put(&current(tmp.path()), &l);
    let e = read::verify(tmp.path(), &key(), None)
        .unwrap_err()
        .to_string();
    assert!(!e.contains(&hexkey) && !e.contains(text.as_str()), "{e}");
    // The state file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join(log::STATE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_loose_state_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    create_chain(tmp.path(), &key()).unwrap();
    let state = tmp.path().join(log::STATE);
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = AuditLog::open(tmp.path(), 1 << 20)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("chmod") || e.contains("accessible"), "{e}");
    assert!(
        create_chain(tmp.path(), &key()).is_err(),
        "never overwritten"
    );
}

#[test]
fn queries_return_exactly_the_matching_records() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 60, 3_000);
    let mut all = Vec::new();
    read::for_each(tmp.path(), |r| {
        all.push(r.unwrap());
        Ok(())
    })
    .unwrap();
    assert_eq!(all.len(), 60);
    let filters = [
        Filter {
            user: Some("alice".into()),
            ..Default::default()
        },
        Filter {
            decision: Some(Decision::Rejected),
            reason: Some("stale".into()),
            ..Default::default()
        },
        Filter {
            since: Some(t(600)),
            until: Some(t(1200)),
            ..Default::default()
        },
        Filter {
            source: Some(IpAddr::from([192, 0, 2, 3])),
            user: Some("bob".into()),
            ..Default::default()
        },
    ];
    for f in &filters {
        let got: Vec<u64> = all.iter().filter(|r| f.matches(r)).map(|r| r.seq).collect();
        // The same question answered from the generator, independently.
        let want: Vec<u64> = (0..60u64)
            .filter(|&i| {
                let r = rec(i);
                f.user.as_ref().is_none_or(|u| r.user.as_ref() == Some(u))
                    && f.decision.is_none_or(|d| r.decision == d)
                    && f.reason
                        .as_ref()
                        .is_none_or(|x| r.reason.as_ref() == Some(x))
                    && f.since.is_none_or(|s| t(i * 60) >= s)
                    && f.until.is_none_or(|u| t(i * 60) < u)
                    && f.source.is_none_or(|a| r.src == Some(a))
            })
            .collect();
        assert!(!want.is_empty(), "{f:?} selects something");
        assert_eq!(got, want, "{f:?}");
    }
}

#[test]
fn a_flood_leaves_the_log_small() {
    let tmp = tempfile::tempdir().unwrap();
    create_chain(tmp.path(), &key()).unwrap();
    let (audit, _) = Auditor::open(tmp.path(), 1 << 20, Duration::from_secs(60), 10, t(0)).unwrap();
    let mut per_thread = [Tally::default(), Tally::default()];
    // 200,000 junk packets from 65,536 (spoofed) sources, and 5,000 replays of one
    // captured knock, over two intervals.
    let replayer = spa_proto::ClientPublic::from_bytes([7; 32]).key_id();
    for interval in 0..2u64 {
        for i in 0..100_000u32 {
            let src = Some(IpAddr::from([10, 9, (i >> 8) as u8, i as u8]));
            per_thread[(i % 2) as usize].add(["bad_mac1", "short"][(i % 2) as usize], None, src);
        }
        for _ in 0..2_500 {
            audit
                .rejected(
                    &spa_proto::Reject::Replay,
                    "alice",
                    replayer,
                    "192.0.2.9".parse().unwrap(),
                    None,
                    t(interval * 60),
                )
                .unwrap();
        }
        for tally in &mut per_thread {
            audit.merge(tally);
        }
        audit.tick(t(interval * 60 + 60), false).unwrap();
    }
    audit.flush().unwrap();
    let mut recs = Vec::new();
    read::for_each(tmp.path(), |r| {
        recs.push(r.unwrap());
        Ok(())
    })
    .unwrap();
    // Per interval: 10 replays one by one, one summary for the rest, one per junk reason.
    assert_eq!(recs.len(), 2 * (10 + 1 + 2), "{recs:#?}");
    let size: u64 = log::files(tmp.path())
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(size < 16 * 1024, "log is {size} bytes");
    let replays: u64 = recs
        .iter()
        .filter(|r| r.reason.as_deref() == Some("replay"))
        .map(|r| r.count.unwrap_or(1))
        .sum();
    assert_eq!(replays, 5_000, "every replay is accounted for");
    let junk: u64 = recs
        .iter()
        .filter(|r| r.user.is_none())
        .map(|r| r.count.unwrap())
        .sum();
    assert_eq!(junk, 200_000);
    read::verify(tmp.path(), &key(), None).unwrap();
}

#[test]
fn follow_sees_new_records_across_a_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    create_chain(tmp.path(), &key()).unwrap();
    let (mut log, _) = AuditLog::open(tmp.path(), 600).unwrap();
    log.append(&mut [rec(0)]).unwrap();
    // A query showed record 0; record 1 lands before --follow starts: it must not be lost.
    log.append(&mut [rec(1)]).unwrap();
    let dir = tmp.path().to_owned();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let follower = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let stop_seen = seen.clone();
            read::follow(
                &dir,
                Some(0),
                || stop_seen.lock().unwrap().len() >= 8 || std::time::Instant::now() > deadline,
                |r| {
                    seen.lock().unwrap().push(r.unwrap().seq);
                    Ok(())
                },
            )
            .unwrap();
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    for i in 2..9 {
        // Small rotation size: the records spread over several files.
        log.append(&mut [rec(i)]).unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    follower.join().unwrap();
    assert!(log::files(tmp.path()).unwrap().len() > 2);
    assert_eq!(*seen.lock().unwrap(), (1..9).collect::<Vec<u64>>());
}

#[test]
fn a_rotation_never_overwrites_a_rotated_file_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    create_chain(tmp.path(), &key()).unwrap();
    let (mut log, _) = AuditLog::open(tmp.path(), 400).unwrap();
    log.append(&mut [rec(0)]).unwrap();
    // Something already holds the name the current file would rotate to.
    let squatter = tmp.path().join(format!("audit-{:020}.jsonl", 0));
    std::fs::write(&squatter, "precious\n").unwrap();
    let mut big = rec(1);
    big.user = Some("x".repeat(400));
    assert!(
        log.append(&mut [big.clone()]).is_err(),
        "refused, not replaced"
    );
    assert_eq!(std::fs::read_to_string(&squatter).unwrap(), "precious\n");
    // Nothing was counted as written: the chain goes on from record 1 once the name is free.
    std::fs::rename(&squatter, tmp.path().join("elsewhere")).unwrap();
    log.append(&mut [big]).unwrap();
    log.append(&mut [rec(2)]).unwrap();
    log.flush().unwrap();
    assert_eq!(read::verify(tmp.path(), &key(), None).unwrap().records, 3);
}

#[test]
fn the_anchor_names_only_records_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    create_chain(tmp.path(), &key()).unwrap();
    let (audit, _) = Auditor::open(tmp.path(), 1 << 20, Duration::from_secs(60), 10, t(0)).unwrap();
    audit.write(&mut [rec(0), rec(1)]).unwrap();
    assert_eq!(audit.synced_head(), None, "written, not yet synced");
    assert_eq!(audit.head().unwrap().0, 1);
    audit.flush().unwrap();
    assert_eq!(audit.synced_head(), audit.head());
    audit.write(&mut [rec(2)]).unwrap();
    assert_eq!(audit.synced_head().unwrap().0, 1);
    let (seq, mac) = audit.synced_head().unwrap();
    read::verify(tmp.path(), &key(), Some((seq, &mac))).unwrap();
}

#[test]
fn a_byte_that_is_not_utf8_is_an_edit_at_its_line_not_an_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    write_log(tmp.path(), 5, 1 << 20);
    let path = current(tmp.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(2)
        .unwrap()
        .0
        + 10;
    bytes[at] = 0xff;
    std::fs::write(&path, bytes).unwrap();
    let (_, line, what) = bad_at(tmp.path());
    assert_eq!(line, 4);
    assert!(
        what.contains("edited") || what.contains("not an audit record"),
        "{what}"
    );
    // A query goes on past it, reporting that one line.
    let (mut ok, mut bad) = (0, 0);
    read::for_each(tmp.path(), |r| {
        if r.is_ok() {
            ok += 1
        } else {
            bad += 1
        }
        Ok(())
    })
    .unwrap();
    assert_eq!((ok, bad), (4, 1));
}
