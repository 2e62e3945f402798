//! Writes a users store with N generated users (for benchmarks: reload time, RSS with
//! 100,000 users) and reports how long loading it takes.
//!
//! ```text
//! cargo run --release -p spa-keys --example gen_users -- OUT.jsonl 100000
//! ```

use std::time::{Duration, Instant, SystemTime};

use rand::rngs::OsRng;
use spa_keys::users::{User, UserKey, Users};
use spa_proto::{Access, ClientSecret};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(out), Some(n)) = (
        args.next(),
        args.next().and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: gen_users OUT.jsonl COUNT");
        std::process::exit(2);
    };
    let created = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
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
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let path = std::path::Path::new(&out);
    users.save(path).unwrap_or_else(|e| panic!("{e}"));
    let t = Instant::now();
    let loaded = Users::load(path).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{} users, {} bytes, loaded in {:?}",
        loaded.len(),
        std::fs::metadata(path).unwrap().len(),
        t.elapsed()
    );
}
