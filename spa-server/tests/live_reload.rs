//! Revocation and policy changes reach a running verifier without a restart, and knocks
//! in flight finish on the view they started with.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::OsRng;
use spa_keys::server::{init, ServerConfig};
use spa_keys::users::{User, UserKey, Users};
use spa_proto::{seal, Access, Action, ClientSecret, OpenAddr, Reject, Request, VerifierConfig};
use spa_server::live::{Live, Reloaded};

const SRC: &str = "198.51.100.20";

fn knock(
    live: &Live,
    client: &ClientSecret,
    server: &spa_proto::ServerPublic,
    ts: u64,
) -> Result<String, Reject> {
    let src = SRC.parse().unwrap();
    let req = Request::new(
        Action::Open,
        OpenAddr::Ip(src),
        src,
        &[Access::tcp(22).unwrap()],
        0,
    )
    .unwrap();
    let packet = seal(client, server, None, &req, ts, &mut OsRng).unwrap();
    let snap = live.snapshot();
    let id = &snap.identities[0];
    let replay: HashMap<_, u64> = HashMap::new();
    id.verifier
        .open(src, ts, &packet, &id.directory, &replay)
        .map(|o| o.entry.user.to_string())
        .map_err(|r| r.reason)
}

/// A users store with one user, alice, allowed tcp/22.
fn alice_only(alice: &ClientSecret, now: SystemTime) -> Users {
    let mut users = Users::default();
    users
        .add(User {
            name: "alice".into(),
            created: now,
            allow: vec![Access::tcp(22).unwrap()],
            max_duration_s: 60,
            nat: false,
            psk: None,
            keys: vec![UserKey {
                key: alice.public(),
                revoked: false,
                added: now,
            }],
        })
        .unwrap();
    users
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    // A hang guard, not a performance claim (bench/reload.sh measures the reload time).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} never took effect");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn revoke_and_policy_changes_reach_a_running_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let report = init(dir.path(), Some(23456), &mut OsRng).unwrap();
    let config = ServerConfig::load(&report.config).unwrap();
    let alice = ClientSecret::generate(&mut OsRng);
    let now = SystemTime::now();
    let mut users = alice_only(&alice, now);
    users.save(&config.users_file).unwrap();

    let live = Arc::new(Live::load(&config, &VerifierConfig::default(), now).unwrap());
    let server = live.snapshot().identities[0].verifier.public();
    let ts = 1_764_000_000_000u64;
    assert_eq!(knock(&live, &alice, &server, ts), Ok("alice".into()));

    let stop = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let watcher = {
        let (live, stop, reports) = (live.clone(), stop.clone(), reports.clone());
        std::thread::spawn(move || {
            live.watch(
                Duration::from_millis(100),
                || stop.load(Ordering::Relaxed),
                |r| reports.lock().unwrap().push(r.map_err(|e| e.to_string())),
            )
        })
    };

    // A knock in flight holds the old view across the reload and still completes on it.
    let in_flight = live.snapshot();
    users
        .update("alice", |u| {
            u.keys[0].revoked = true;
            Ok(())
        })
        .unwrap();
    users.save(&config.users_file).unwrap();
    wait_for("revocation", || {
        knock(&live, &alice, &server, ts) == Err(Reject::Revoked)
    });
    assert!(
        !in_flight.identities[0].directory[&alice.public()].revoked,
        "the old view is untouched"
    );
    drop(in_flight);

    users
        .update("alice", |u| {
            u.keys[0].revoked = false;
            u.allow = vec![Access::tcp(443).unwrap()];
            Ok(())
        })
        .unwrap();
    users.save(&config.users_file).unwrap();
    wait_for("policy change", || {
        knock(&live, &alice, &server, ts) == Err(Reject::AccessDenied)
    });

    // A broken hand edit keeps the last good view and reports the error.
    std::fs::write(&config.users_file, "{ not json\n").unwrap();
    wait_for("error report", || {
        reports.lock().unwrap().iter().any(|r| r.is_err())
    });
    assert_eq!(knock(&live, &alice, &server, ts), Err(Reject::AccessDenied));

    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let reports = reports.lock().unwrap();
    let swaps: Vec<_> = reports
        .iter()
        .filter_map(|r| match r {
            Ok(Reloaded::Swapped(s)) => Some(*s),
            _ => None,
        })
        .collect();
    assert!(swaps.len() >= 2, "{reports:?}");
    assert!(
        swaps.iter().all(|s| s.computed == 0 && s.reused == 1),
        "reloads reuse the DH: {swaps:?}"
    );
}

/// `spa-server rotate-key` on a running server: knocks sealed for the new key open at once,
/// knocks for the old key still open until its date, and the old key's directory is
/// reused (no DH recomputed for it).
#[test]
fn a_key_rotation_reaches_a_running_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let report = init(dir.path(), Some(23456), &mut OsRng).unwrap();
    let config = ServerConfig::load(&report.config).unwrap();
    let alice = ClientSecret::generate(&mut OsRng);
    let now = SystemTime::now();
    let users = alice_only(&alice, now);
    users.save(&config.users_file).unwrap();
    let live = Live::load(&config, &VerifierConfig::default(), now).unwrap();
    let old = live.snapshot().identities[0].verifier.public();
    assert_eq!(
        live.reload_keys_if_changed(now).unwrap(),
        Reloaded::Unchanged
    );

    // The rotation rewrites the configuration (new key current, old one accepted a day).
    // Coarse file times could hide a rewrite in the same tick; the stamp also has the inode.
    let (_, new_key) =
        spa_keys::server::rotate_key(&config, now + Duration::from_secs(86_400), &mut OsRng)
            .unwrap();
    let r = live.reload_keys_if_changed(now).unwrap();
    let Reloaded::KeysChanged(stats) = r else {
        panic!("{r:?}")
    };
    assert_eq!(
        (stats.computed, stats.reused),
        (1, 1),
        "only the new key's DH is computed"
    );
    let snap = live.snapshot();
    assert_eq!(snap.identities.len(), 2);
    assert_eq!(snap.identities[0].verifier.public(), new_key.public());
    assert_eq!(snap.identities[1].verifier.public(), old);
    drop(snap);
    // A knock for the new key opens on the current identity.
    let ts = 1_764_000_000_000u64;
    assert_eq!(
        knock(&live, &alice, &new_key.public(), ts),
        Ok("alice".into())
    );
    assert_eq!(
        live.reload_keys_if_changed(now).unwrap(),
        Reloaded::Unchanged
    );

    // A broken configuration keeps the view and reports the error.
    std::fs::write(&config.path, "port = \"nope\"\n").unwrap();
    assert!(live.reload_keys_if_changed(now).is_err());
    assert_eq!(
        live.reload_keys_if_changed(now).unwrap(),
        Reloaded::Unchanged,
        "reported once, not at every poll"
    );
    assert_eq!(live.snapshot().identities.len(), 2);
}
