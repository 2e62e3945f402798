//! Reload cost and memory with many users: loads a users store of N users (default
//! 100,000; DH precomputed on all cores), revokes one user the way `spa-server user
//! revoke` does, and times the reload that makes it live. Prints RSS before and after.
//!
//! ```text
//! cargo run --release -p spa-server --example reload_100k -- [N]
//! ```

use std::time::{Duration, Instant, SystemTime};

use rand::rngs::OsRng;
use spa_keys::server::{init, ServerConfig};
use spa_keys::users::{User, UserKey, Users};
use spa_proto::{Access, ClientSecret, VerifierConfig};
use spa_server::live::{Live, Reloaded};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    kb / 1024.0
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let report = init(dir.path(), Some(23456), &mut OsRng).expect("init");
    let config = ServerConfig::load(&report.config).expect("config");
    let created = SystemTime::now();
    let mut users = Users::default();
    for i in 0..n {
        let key = ClientSecret::generate(&mut OsRng).public();
        users
            .add(User {
                name: format!("user{i}"),
                created,
                allow: vec![Access::tcp(22).unwrap()],
                max_duration_s: 3600,
                nat: false,
                psk: None,
                keys: vec![UserKey {
                    key,
                    revoked: false,
                    added: created,
                }],
            })
            .expect("add");
    }
    users.save(&config.users_file).expect("save");
    drop(users);
    let rss0 = rss_mib();
    let t = Instant::now();
    let live = Live::load(&config, &VerifierConfig::default(), SystemTime::now()).expect("load");
    let startup = t.elapsed();
    let rss1 = rss_mib();

    // What `spa-server user revoke user42` does: load, change, atomic rewrite.
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    let mut users = Users::load(&config.users_file).expect("load users");
    let key = users.get("user42").expect("user42").keys[0].key;
    users
        .update("user42", |u| {
            u.keys[0].revoked = true;
            Ok(())
        })
        .expect("revoke");
    users.save(&config.users_file).expect("save");
    drop(users);
    let cli = t.elapsed();
    let t = Instant::now();
    let r = live.reload_if_changed().expect("reload");
    let reload = t.elapsed();
    assert!(
        matches!(r, Reloaded::Swapped(s) if s.computed == 0),
        "{r:?}"
    );
    let snap = live.snapshot();
    assert!(snap.identities[0].directory[&key].revoked);
    let rss2 = rss_mib();
    println!("users: {n}");
    println!("startup (parse + {n} DH on all cores): {startup:.2?}");
    println!("revoke command (load + atomic rewrite): {cli:.2?}");
    println!("reload after revoke (parse + rebuild, 0 DH): {reload:.2?}");
    println!("RSS: {rss0:.1} MiB before load, {rss1:.1} MiB loaded, {rss2:.1} MiB after reload");
}
