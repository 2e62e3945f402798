//! The server pipeline in-process with a fake clock: every reject reason lands where it
//! belongs (counted before authentication, attributed after), and grants carry exactly
//! what the firewall must open.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::rngs::OsRng;
use spa_keys::server::{init, ServerConfig};
use spa_keys::users::{User, UserKey, Users};
use spa_proto::*;
use spa_server::limits::{LimitConfig, Limiter};
use spa_server::live::Live;
use spa_server::packet;
use spa_server::pipeline::{Outcome, Pipeline};
use spa_server::replay::ReplayStore;

const PORT: u16 = 23456;

struct Lab {
    _dir: tempfile::TempDir,
    config: ServerConfig,
    server: ServerPublic,
    alice: ClientSecret,
    bob: ClientSecret,
    bob_psk: Psk,
    t0: SystemTime,
    src: IpAddr,
    dest: IpAddr,
}

fn user(name: &str, key: ClientPublic, allow: &[Access], nat: bool, psk: Option<Psk>) -> User {
    let now = SystemTime::now();
    User {
        name: name.into(),
        created: now,
        allow: allow.to_vec(),
        max_duration_s: 600,
        nat,
        psk,
        keys: vec![UserKey {
            key,
            revoked: false,
            added: now,
        }],
    }
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let report = init(dir.path(), Some(PORT), &mut OsRng).unwrap();
        let config = ServerConfig::load(&report.config).unwrap();
        let alice = ClientSecret::generate(&mut OsRng);
        let bob = ClientSecret::generate(&mut OsRng);
        let bob_psk = Psk::generate(&mut OsRng);
        let ssh = [Access::tcp(22).unwrap()];
        let mut users = Users::default();
        users
            .add(user("alice", alice.public(), &ssh, false, None))
            .unwrap();
        users
            .add(user("bob", bob.public(), &ssh, true, Some(bob_psk.clone())))
            .unwrap();
        users.save(&config.users_file).unwrap();
        Self {
            server: report.public,
            config,
            _dir: dir,
            alice,
            bob,
            bob_psk,
            t0: SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000),
            src: "198.51.100.7".parse().unwrap(),
            dest: "203.0.113.1".parse().unwrap(),
        }
    }

    fn pipeline(&self, limits: LimitConfig) -> Pipeline {
        let vc = VerifierConfig {
            destinations: vec![self.dest],
            ..Default::default()
        };
        Pipeline {
            live: Arc::new(Live::load(&self.config, &vc, self.t0).unwrap()),
            replay: Arc::new(ReplayStore::open(&self.config.state_dir).unwrap()),
            limiter: Limiter::new(limits),
            counters: Default::default(),
            port: PORT,
        }
    }

    fn ms(&self, t: SystemTime) -> u64 {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    fn knock(
        &self,
        who: &ClientSecret,
        psk: Option<&Psk>,
        open: OpenAddr,
        access: &[Access],
        at: SystemTime,
    ) -> [u8; KNOCK_LEN] {
        let req = Request::new(Action::Open, open, self.dest, access, 60).unwrap();
        seal(who, &self.server, psk, &req, self.ms(at), &mut OsRng).unwrap()
    }

    fn alice(&self, at: SystemTime) -> [u8; KNOCK_LEN] {
        self.knock(
            &self.alice,
            None,
            OpenAddr::Ip(self.src),
            &[Access::tcp(22).unwrap()],
            at,
        )
    }
}

fn rejected(o: &Outcome) -> (Reject, &str) {
    match o {
        Outcome::Rejected { reason, user, .. } => (*reason, user),
        other => panic!("expected an authenticated reject, got {other:?}"),
    }
}

#[test]
fn grant_then_replays_are_rejected_also_after_restart() {
    let lab = Lab::new();
    let p = lab.pipeline(LimitConfig::default());
    let knock = lab.alice(lab.t0);
    let Outcome::Granted(g) = p.handle(lab.src, &knock, lab.t0) else {
        panic!()
    };
    assert_eq!(
        (&*g.user, g.addr, g.duration_s, g.action),
        ("alice", lab.src, 60, Action::Open)
    );
    assert_eq!(g.access, vec![Access::tcp(22).unwrap()]);
    assert_eq!(g.key, lab.alice.public().key_id());
    // Same bytes, same source; and from another source.
    assert_eq!(
        rejected(&p.handle(lab.src, &knock, lab.t0 + Duration::from_secs(1))),
        (Reject::Replay, "alice")
    );
    let other: IpAddr = "192.0.2.99".parse().unwrap();
    assert_eq!(rejected(&p.handle(other, &knock, lab.t0)).0, Reject::Replay);
    // After a restart (a new store over the same directory, as after kill -9).
    drop(p);
    let p = lab.pipeline(LimitConfig::default());
    assert_eq!(
        rejected(&p.handle(lab.src, &knock, lab.t0)),
        (Reject::Replay, "alice")
    );
    // A fresh knock is fine.
    assert!(matches!(
        p.handle(
            lab.src,
            &lab.alice(lab.t0 + Duration::from_millis(1)),
            lab.t0
        ),
        Outcome::Granted(_)
    ));
    assert_eq!(p.counters.get("replay"), 1);
    assert_eq!(p.counters.get("granted"), 1);
}

#[test]
fn every_reason_lands_where_it_belongs() {
    let lab = Lab::new();
    let p = lab.pipeline(LimitConfig::default());
    let ssh = [Access::tcp(22).unwrap()];
    let t = |s: u64| lab.t0 + Duration::from_millis(s);
    let pre = |o: Outcome| match o {
        Outcome::PreAuth(r) => r,
        other => panic!("expected a pre-authentication reject, got {other:?}"),
    };
    // Pre-authentication: counted only.
    assert_eq!(
        pre(p.handle(lab.src, &[0u8; 10], lab.t0)),
        Reject::BadLength
    );
    assert_eq!(
        pre(p.handle(lab.src, &[9u8; KNOCK_LEN], lab.t0)),
        Reject::BadHeader
    );
    let mut junk = [0x5au8; KNOCK_LEN];
    junk[..2].copy_from_slice(&[1, 1]);
    assert_eq!(pre(p.handle(lab.src, &junk, lab.t0)), Reject::BadMac1);
    let other_server = ServerSecret::generate(&mut OsRng).public();
    let req = Request::new(Action::Open, OpenAddr::Ip(lab.src), lab.dest, &ssh, 0).unwrap();
    let wrong_server = seal(
        &lab.alice,
        &other_server,
        None,
        &req,
        lab.ms(t(1)),
        &mut OsRng,
    )
    .unwrap();
    assert_eq!(
        pre(p.handle(lab.src, &wrong_server, lab.t0)),
        Reject::BadMac1
    );
    let mallory = ClientSecret::generate(&mut OsRng);
    assert_eq!(
        pre(p.handle(
            lab.src,
            &lab.knock(&mallory, None, OpenAddr::Ip(lab.src), &ssh, t(2)),
            lab.t0
        )),
        Reject::UnknownKey
    );
    assert_eq!(
        pre(p.handle(
            lab.src,
            &lab.knock(&lab.bob, None, OpenAddr::FromPacket, &ssh, t(3)),
            lab.t0
        )),
        Reject::PskMismatch
    );
    let wrong_psk = Psk::generate(&mut OsRng);
    assert_eq!(
        pre(p.handle(
            lab.src,
            &lab.knock(&lab.bob, Some(&wrong_psk), OpenAddr::FromPacket, &ssh, t(4)),
            lab.t0
        )),
        Reject::BadAuth
    );
    let mut flipped = lab.alice(t(5));
    flipped[40] ^= 1;
    let m =
        spa_proto::wire::Mac1Key::new(&lab.server).compute(&flipped[..spa_proto::wire::MAC1_AT]);
    flipped[spa_proto::wire::MAC1_AT..].copy_from_slice(&m);
    assert_eq!(pre(p.handle(lab.src, &flipped, lab.t0)), Reject::BadStatic);

    // Authenticated: attributed to the user.
    let stale = p.handle(
        lab.src,
        &lab.alice(lab.t0 - Duration::from_secs(121)),
        lab.t0,
    );
    assert!(
        matches!(
            stale,
            Outcome::Rejected {
                reason: Reject::Stale { skew_ms: -121_000 },
                ..
            }
        ),
        "{stale:?}"
    );
    let future = p.handle(
        lab.src,
        &lab.alice(lab.t0 + Duration::from_secs(300)),
        lab.t0,
    );
    assert!(
        matches!(
            future,
            Outcome::Rejected {
                reason: Reject::Future { skew_ms: 300_000 },
                ..
            }
        ),
        "{future:?}"
    );
    let spoofed: IpAddr = "198.51.100.8".parse().unwrap();
    assert_eq!(
        rejected(&p.handle(spoofed, &lab.alice(t(6)), lab.t0)),
        (Reject::AddressMismatch, "alice")
    );
    let nat = lab.knock(&lab.alice, None, OpenAddr::FromPacket, &ssh, t(7));
    assert_eq!(
        rejected(&p.handle(lab.src, &nat, lab.t0)),
        (Reject::NatNotAllowed, "alice")
    );
    let https = lab.knock(
        &lab.alice,
        None,
        OpenAddr::Ip(lab.src),
        &[Access::tcp(443).unwrap()],
        t(8),
    );
    assert_eq!(
        rejected(&p.handle(lab.src, &https, lab.t0)),
        (Reject::AccessDenied, "alice")
    );
    let req = Request::new(
        Action::Open,
        OpenAddr::Ip(lab.src),
        "203.0.113.99".parse().unwrap(),
        &ssh,
        0,
    )
    .unwrap();
    let elsewhere = seal(
        &lab.alice,
        &lab.server,
        None,
        &req,
        lab.ms(t(9)),
        &mut OsRng,
    )
    .unwrap();
    assert_eq!(
        rejected(&p.handle(lab.src, &elsewhere, lab.t0)),
        (Reject::WrongDestination, "alice")
    );
    // Bob, NAT mode, from wherever he is.
    let bob = lab.knock(
        &lab.bob,
        Some(&lab.bob_psk),
        OpenAddr::FromPacket,
        &ssh,
        t(10),
    );
    let Outcome::Granted(g) = p.handle(spoofed, &bob, lab.t0) else {
        panic!()
    };
    assert_eq!((&*g.user, g.addr), ("bob", spoofed));

    // Revoked, after a reload.
    let mut users = Users::load(&lab.config.users_file).unwrap();
    users
        .update("alice", |u| {
            u.keys[0].revoked = true;
            Ok(())
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(10));
    users.save(&lab.config.users_file).unwrap();
    p.live.reload_if_changed().unwrap();
    assert_eq!(
        rejected(&p.handle(lab.src, &lab.alice(t(11)), lab.t0)),
        (Reject::Revoked, "alice")
    );

    for code in [
        "bad_length",
        "bad_header",
        "bad_static",
        "unknown_key",
        "psk_mismatch",
        "bad_auth",
        "stale",
        "future",
        "address_mismatch",
        "nat_not_allowed",
        "access_denied",
        "wrong_destination",
        "revoked",
    ] {
        assert_eq!(p.counters.get(code), 1, "{code}");
    }
    assert_eq!(p.counters.get("bad_mac1"), 2);
}

#[test]
fn rate_limits_come_before_any_diffie_hellman() {
    let lab = Lab::new();
    let p = lab.pipeline(LimitConfig {
        per_source_burst: 2.0,
        per_source_rate: 0.001,
        ..Default::default()
    });
    let mallory = ClientSecret::generate(&mut OsRng);
    let ssh = [Access::tcp(22).unwrap()];
    let flood: Vec<_> = (0..5)
        .map(|i| {
            lab.knock(
                &mallory,
                None,
                OpenAddr::Ip(lab.src),
                &ssh,
                lab.t0 + Duration::from_millis(i),
            )
        })
        .collect();
    let outcomes: Vec<_> = flood.iter().map(|k| p.handle(lab.src, k, lab.t0)).collect();
    assert_eq!(
        outcomes[..2],
        [
            Outcome::PreAuth(Reject::UnknownKey),
            Outcome::PreAuth(Reject::UnknownKey)
        ]
    );
    assert!(outcomes[2..]
        .iter()
        .all(|o| *o == Outcome::PreAuth(Reject::RateLimited)));
    // Junk failing mac1 never spends a token, and another source is unaffected.
    assert!(matches!(
        p.handle(lab.src, &[1u8; KNOCK_LEN], lab.t0),
        Outcome::PreAuth(Reject::BadMac1)
    ));
    let other: IpAddr = "198.51.100.77".parse().unwrap();
    let knock = lab.knock(&lab.alice, None, OpenAddr::Ip(other), &ssh, lab.t0);
    assert!(matches!(
        p.handle(other, &knock, lab.t0),
        Outcome::Granted(_)
    ));
}

#[test]
fn rotated_key_is_accepted_until_its_date() {
    let lab = Lab::new();
    let old_card = lab.server;
    spa_keys::server::rotate_key(
        &lab.config,
        SystemTime::now() + Duration::from_secs(3600),
        &mut OsRng,
    )
    .unwrap();
    let config = ServerConfig::load(&lab.config.path).unwrap();
    let vc = VerifierConfig {
        destinations: vec![lab.dest],
        ..Default::default()
    };
    let live = Arc::new(Live::load(&config, &vc, SystemTime::now()).unwrap());
    let until = live.snapshot().identities[1].accept_until.unwrap();
    let p = Pipeline {
        live,
        replay: Arc::new(ReplayStore::open(&config.state_dir).unwrap()),
        limiter: Limiter::new(LimitConfig::default()),
        counters: Default::default(),
        port: PORT,
    };
    let now = SystemTime::now();
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let req = Request::new(
        Action::Open,
        OpenAddr::Ip(lab.src),
        lab.dest,
        &[Access::tcp(22).unwrap()],
        0,
    )
    .unwrap();
    let old = seal(&lab.alice, &old_card, None, &req, ms(now), &mut OsRng).unwrap();
    assert!(matches!(p.handle(lab.src, &old, now), Outcome::Granted(_)));
    let later = until + Duration::from_secs(1);
    let old = seal(&lab.alice, &old_card, None, &req, ms(later), &mut OsRng).unwrap();
    assert_eq!(
        p.handle(lab.src, &old, later),
        Outcome::PreAuth(Reject::BadMac1)
    );
    let new_card = config.secret_key().unwrap().public();
    let new = seal(&lab.alice, &new_card, None, &req, ms(later) + 1, &mut OsRng).unwrap();
    assert!(matches!(
        p.handle(lab.src, &new, later),
        Outcome::Granted(_)
    ));
}

#[test]
fn frames_go_through_the_parser_first() {
    let lab = Lab::new();
    let p = lab.pipeline(LimitConfig::default());
    let knock = lab.alice(lab.t0);
    let frame = |port: u16| {
        let mut f = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 198, 51, 100, 7, 203, 0, 113, 1,
        ];
        let total = (20 + 8 + knock.len()) as u16;
        f[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&((8 + knock.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&knock);
        f
    };
    assert_eq!(
        p.handle_frame(packet::ETH_P_IP, &frame(PORT + 1), lab.t0),
        Outcome::Dropped(packet::Drop::WrongPort)
    );
    assert!(matches!(
        p.handle_frame(packet::ETH_P_IP, &frame(PORT), lab.t0),
        Outcome::Granted(_)
    ));
    assert_eq!(p.counters.get("wrong_port"), 1);
}
