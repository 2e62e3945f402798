//! The verifier attacked the way an adversary would: every single-bit flip, every
//! truncation and extension, each named reject reason, random bytes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use proptest::prelude::*;
use rand::rngs::OsRng;
use spa_proto::payload::PAYLOAD_LEN;
use spa_proto::seal::{seal_payload, seal_plaintext};
use spa_proto::verify::InvalidClientKey;
use spa_proto::wire::{self, Mac1Key, KNOCK_LEN, MAC1_AT, PAYLOAD_AT};
use spa_proto::*;
use x25519_dalek::StaticSecret;

const NOW: u64 = 1_764_000_000_000;

struct Lab {
    server: ServerPublic,
    verifier: Verifier,
    mac1: Mac1Key,
    dir: HashMap<ClientPublic, ClientEntry<&'static str>>,
    replay: HashMap<ClientPublic, u64>,
    alice: ClientSecret,
    bob: ClientSecret,
    bob_psk: Psk,
    src: IpAddr,
    dest: IpAddr,
    ssh: Access,
}

impl Lab {
    fn new() -> Self {
        let server = ServerSecret::generate(&mut OsRng);
        let alice = ClientSecret::generate(&mut OsRng);
        let bob = ClientSecret::generate(&mut OsRng);
        let bob_psk = Psk::generate(&mut OsRng);
        let ssh = Access::tcp(22).unwrap();
        let alice_policy = Arc::new(Policy {
            allowed: vec![ssh],
            max_duration_s: 600,
            nat_allowed: false,
        });
        let bob_policy = Arc::new(Policy {
            allowed: vec![ssh, Access::udp(51820).unwrap()],
            max_duration_s: 60,
            nat_allowed: true,
        });
        let dir = HashMap::from([
            (
                alice.public(),
                ClientEntry::new(&server, alice.public(), None, alice_policy, "alice").unwrap(),
            ),
            (
                bob.public(),
                ClientEntry::new(
                    &server,
                    bob.public(),
                    Some(bob_psk.clone()),
                    bob_policy,
                    "bob",
                )
                .unwrap(),
            ),
        ]);
        let dest: IpAddr = "203.0.113.1".parse().unwrap();
        let config = VerifierConfig {
            destinations: vec![dest, "2001:db8::1".parse().unwrap()],
            ..Default::default()
        };
        Self {
            server: server.public(),
            mac1: Mac1Key::new(&server.public()),
            verifier: Verifier::new(server, config),
            dir,
            replay: HashMap::new(),
            alice,
            bob,
            bob_psk,
            src: "198.51.100.7".parse().unwrap(),
            dest,
            ssh,
        }
    }

    fn request(&self, open: OpenAddr, access: &[Access], duration_s: u32) -> Request {
        Request::new(Action::Open, open, self.dest, access, duration_s).unwrap()
    }

    fn alice_knock(&self, ts: u64) -> [u8; KNOCK_LEN] {
        let req = self.request(OpenAddr::Ip(self.src), &[self.ssh], 0);
        seal(&self.alice, &self.server, None, &req, ts, &mut OsRng).unwrap()
    }

    fn open(
        &self,
        src: IpAddr,
        now: u64,
        knock: &[u8],
    ) -> Result<(u32, IpAddr, &'static str), Reject> {
        self.verifier
            .open(src, now, knock, &self.dir, &self.replay)
            .map(|o| (o.duration_s, o.open_addr, o.entry.user))
            .map_err(|r| {
                // Attribution exactly from step 10 on.
                assert_eq!(
                    r.entry.is_some(),
                    r.reason.is_authenticated(),
                    "{:?}",
                    r.reason
                );
                r.reason
            })
    }

    fn remac(&self, knock: &mut [u8; KNOCK_LEN]) {
        let mac1 = self.mac1.compute(&knock[..MAC1_AT]);
        knock[MAC1_AT..].copy_from_slice(&mac1);
    }
}

#[test]
fn valid_knock_opens_with_default_duration() {
    let lab = Lab::new();
    let knock = lab.alice_knock(NOW);
    assert_eq!(knock.len(), 242);
    assert_eq!(lab.open(lab.src, NOW, &knock), Ok((30, lab.src, "alice")));
}

#[test]
fn every_single_bit_flip_is_rejected_before_authentication() {
    let lab = Lab::new();
    let knock = lab.alice_knock(NOW);
    assert!(lab.open(lab.src, NOW, &knock).is_ok());
    for bit in 0..KNOCK_LEN * 8 {
        let (byte, mask) = (bit / 8, 1u8 << (bit % 8));
        let mut flipped = knock;
        flipped[byte] ^= mask;
        // With the original mac1: the header or mac1 catches it.
        let want = if byte < 2 {
            Reject::BadHeader
        } else {
            Reject::BadMac1
        };
        assert_eq!(
            lab.open(lab.src, NOW, &flipped),
            Err(want),
            "bit {bit}, original mac1"
        );
        // With mac1 recomputed after the flip, the flip reaches the AEAD.
        if byte < MAC1_AT {
            lab.remac(&mut flipped);
            let got = lab.open(lab.src, NOW, &flipped);
            let want = match byte {
                0 | 1 => Reject::BadHeader,
                // A changed `e` changes h (and es), so the static key no longer decrypts.
                b if b < PAYLOAD_AT => Reject::BadStatic,
                _ => Reject::BadAuth,
            };
            assert_eq!(got, Err(want), "bit {bit}, mac1 recomputed");
        }
    }
}

#[test]
fn every_truncation_and_extension_is_rejected() {
    let lab = Lab::new();
    let knock = lab.alice_knock(NOW);
    for len in 0..KNOCK_LEN {
        assert_eq!(
            lab.open(lab.src, NOW, &knock[..len]),
            Err(Reject::BadLength),
            "len {len}"
        );
    }
    for extra in [1usize, 2, 14, 15, 16, 64, 1500, 65_507] {
        let mut long = knock.to_vec();
        long.resize(KNOCK_LEN + extra, 0);
        assert_eq!(
            lab.open(lab.src, NOW, &long),
            Err(Reject::BadLength),
            "+{extra}"
        );
    }
}

#[test]
fn header_changes_are_rejected() {
    let lab = Lab::new();
    let knock = lab.alice_knock(NOW);
    for (v, t) in [(0u8, 1u8), (2, 1), (1, 0), (1, 3), (0xff, 0xff)] {
        let mut k = knock;
        k[0] = v;
        k[1] = t;
        lab.remac(&mut k);
        assert_eq!(lab.open(lab.src, NOW, &k), Err(Reject::BadHeader));
    }
    // Type 1 relabelled as type 2 (Xpsk1): the prologue differs, nothing decrypts.
    let mut k = knock;
    k[1] = 2;
    lab.remac(&mut k);
    assert_eq!(lab.open(lab.src, NOW, &k), Err(Reject::BadStatic));
}

#[test]
fn knock_for_another_server() {
    let lab = Lab::new();
    let other = ServerSecret::generate(&mut OsRng);
    let req = lab.request(OpenAddr::Ip(lab.src), &[lab.ssh], 0);
    let mut knock = seal(&lab.alice, &other.public(), None, &req, NOW, &mut OsRng).unwrap();
    assert_eq!(lab.open(lab.src, NOW, &knock), Err(Reject::BadMac1));
    // Even with our mac1 (anyone holding our card can compute it), es fails.
    lab.remac(&mut knock);
    assert_eq!(lab.open(lab.src, NOW, &knock), Err(Reject::BadStatic));
}

#[test]
fn unknown_client_key() {
    let lab = Lab::new();
    let mallory = ClientSecret::generate(&mut OsRng);
    let req = lab.request(OpenAddr::Ip(lab.src), &[lab.ssh], 0);
    let knock = seal(&mallory, &lab.server, None, &req, NOW, &mut OsRng).unwrap();
    assert_eq!(lab.open(lab.src, NOW, &knock), Err(Reject::UnknownKey));
}

#[test]
fn psk_mismatch_and_wrong_psk() {
    let lab = Lab::new();
    let req = lab.request(OpenAddr::FromPacket, &[lab.ssh], 0);
    // Bob has a psk and must use Xpsk1.
    let ok = seal(
        &lab.bob,
        &lab.server,
        Some(&lab.bob_psk),
        &req,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    assert_eq!(ok[1], 2);
    assert_eq!(lab.open(lab.src, NOW, &ok), Ok((30, lab.src, "bob")));
    let no_psk = seal(&lab.bob, &lab.server, None, &req, NOW, &mut OsRng).unwrap();
    assert_eq!(lab.open(lab.src, NOW, &no_psk), Err(Reject::PskMismatch));
    let wrong = seal(
        &lab.bob,
        &lab.server,
        Some(&Psk::generate(&mut OsRng)),
        &req,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    assert_eq!(lab.open(lab.src, NOW, &wrong), Err(Reject::BadAuth));
    // Alice has none and must not use Xpsk1.
    let req = lab.request(OpenAddr::Ip(lab.src), &[lab.ssh], 0);
    let alice_psk = seal(
        &lab.alice,
        &lab.server,
        Some(&lab.bob_psk),
        &req,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    assert_eq!(lab.open(lab.src, NOW, &alice_psk), Err(Reject::PskMismatch));
}

/// A Noise X initiator written out by hand from the primitives, so a test can claim any
/// static key and use any `ss`: what a forger who knows Alice's public key can do.
fn forge(
    server: &ServerPublic,
    claimed: &ClientPublic,
    ss: &[u8; 32],
    payload: &[u8; PAYLOAD_LEN],
) -> [u8; KNOCK_LEN] {
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    use sha2::{Digest, Sha256};
    let hash = |h: &[u8; 32], d: &[u8]| -> [u8; 32] {
        Sha256::new()
            .chain_update(h)
            .chain_update(d)
            .finalize()
            .into()
    };
    let hkdf = |ck: &[u8; 32], ikm: &[u8]| -> ([u8; 32], [u8; 32]) {
        let mut okm = [0u8; 64];
        hkdf::Hkdf::<Sha256>::new(Some(ck), ikm)
            .expand(&[], &mut okm)
            .unwrap();
        (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
    };
    let seal = |k: &[u8; 32], h: &[u8; 32], buf: &mut Vec<u8>| {
        let c = chacha20poly1305::ChaCha20Poly1305::new(k.into());
        c.encrypt_in_place(&[0u8; 12].into(), h, buf).unwrap();
    };
    let mut h = [0u8; 32];
    h[..31].copy_from_slice(b"Noise_X_25519_ChaChaPoly_SHA256");
    let ck = h;
    let h = hash(
        &hash(&h, &wire::prologue(spa_proto::noise::Pattern::X)),
        server.as_bytes(),
    );
    let e = StaticSecret::random_from_rng(OsRng);
    let e_pub = x25519_dalek::PublicKey::from(&e);
    let h = hash(&h, e_pub.as_bytes());
    let es = e.diffie_hellman(&x25519_dalek::PublicKey::from(*server.as_bytes()));
    let (ck, k) = hkdf(&ck, es.as_bytes());
    let mut c_s = claimed.as_bytes().to_vec();
    seal(&k, &h, &mut c_s);
    let h = hash(&h, &c_s);
    let (_, k) = hkdf(&ck, ss);
    let mut c_p = payload.to_vec();
    seal(&k, &h, &mut c_p);
    let mut knock = [0u8; KNOCK_LEN];
    knock[..2].copy_from_slice(&wire::header(spa_proto::noise::Pattern::X));
    knock[2..34].copy_from_slice(e_pub.as_bytes());
    knock[34..PAYLOAD_AT].copy_from_slice(&c_s);
    knock[PAYLOAD_AT..MAC1_AT].copy_from_slice(&c_p);
    let mac1 = Mac1Key::new(server).compute(&knock[..MAC1_AT]);
    knock[MAC1_AT..].copy_from_slice(&mac1);
    knock
}

#[test]
fn forged_knock_claiming_a_known_key_fails_at_the_payload() {
    // Mallory knows Alice's public key and the server's card: she can make Alice's key
    // decrypt at step 6, but cannot compute ss, so step 9 fails, unattributed.
    let lab = Lab::new();
    let req = lab.request(OpenAddr::Ip(lab.src), &[lab.ssh], 0);
    let payload = Payload {
        request: req,
        timestamp_ms: NOW,
        knock_id: [0; 16],
    }
    .encode();
    // The forger is a correct Noise implementation: with the real ss it opens.
    let real_ss = lab.alice.to_bytes();
    let real_ss = x25519_dalek::StaticSecret::from(*real_ss)
        .diffie_hellman(&x25519_dalek::PublicKey::from(*lab.server.as_bytes()));
    let honest = forge(
        &lab.server,
        &lab.alice.public(),
        real_ss.as_bytes(),
        &payload,
    );
    assert_eq!(lab.open(lab.src, NOW, &honest), Ok((30, lab.src, "alice")));
    // Without it (her own DH, or a guess), it is rejected before authentication.
    let mallory = ClientSecret::generate(&mut OsRng);
    let guesses = [
        *x25519_dalek::StaticSecret::from(*mallory.to_bytes())
            .diffie_hellman(&x25519_dalek::PublicKey::from(*lab.server.as_bytes()))
            .as_bytes(),
        [0u8; 32],
        *lab.alice.public().as_bytes(),
    ];
    for ss in guesses {
        let forged = forge(&lab.server, &lab.alice.public(), &ss, &payload);
        let r = lab
            .verifier
            .open(lab.src, NOW, &forged, &lab.dir, &lab.replay)
            .unwrap_err();
        assert_eq!(r.reason, Reject::BadAuth);
        assert!(r.entry.is_none(), "a forgery is never attributed to alice");
    }
}

#[test]
fn step_precedence_follows_the_spec() {
    let mut lab = Lab::new();
    let ssh = [lab.ssh];
    // 11 before 12: a malformed payload with a stale timestamp is bad_payload.
    let req = lab.request(OpenAddr::Ip(lab.src), &ssh, 0);
    let mut bad = Payload {
        request: req,
        timestamp_ms: NOW - 500_000,
        knock_id: [0; 16],
    }
    .encode();
    bad[0] = 0x02;
    assert_eq!(
        lab.open(lab.src, NOW, &sealed_plaintext(&lab, &bad)),
        Err(Reject::BadPayload)
    );
    // 12 before 13: stale and replayed is stale.
    lab.replay.insert(lab.alice.public(), NOW);
    assert!(matches!(
        lab.open(lab.src, NOW, &lab.alice_knock(NOW - 200_000)),
        Err(Reject::Stale { .. })
    ));
    // 13 before 14: replayed from elsewhere is replay.
    let elsewhere: IpAddr = "192.0.2.200".parse().unwrap();
    assert_eq!(
        lab.open(elsewhere, NOW, &lab.alice_knock(NOW)),
        Err(Reject::Replay)
    );
    lab.replay.clear();
    // 14 before 15 before 16.
    let https = Access::tcp(443).unwrap();
    let req = Request::new(
        Action::Open,
        OpenAddr::Ip(lab.src),
        "203.0.113.77".parse().unwrap(),
        &[https],
        0,
    )
    .unwrap();
    let k = seal(&lab.alice, &lab.server, None, &req, NOW, &mut OsRng).unwrap();
    assert_eq!(lab.open(elsewhere, NOW, &k), Err(Reject::AddressMismatch));
    assert_eq!(lab.open(lab.src, NOW, &k), Err(Reject::WrongDestination));
    let req = Request::new(
        Action::Open,
        OpenAddr::FromPacket,
        "203.0.113.77".parse().unwrap(),
        &[https],
        0,
    )
    .unwrap();
    let k = seal(&lab.alice, &lab.server, None, &req, NOW, &mut OsRng).unwrap();
    assert_eq!(lab.open(lab.src, NOW, &k), Err(Reject::NatNotAllowed));
    // 10 before 11: revoked wins over a malformed payload.
    lab.dir.get_mut(&lab.alice.public()).unwrap().revoked = true;
    assert_eq!(
        lab.open(lab.src, NOW, &sealed_plaintext(&lab, &bad)),
        Err(Reject::Revoked)
    );
}

#[test]
fn psk_knock_flips_and_relabel() {
    let lab = Lab::new();
    let req = lab.request(OpenAddr::FromPacket, &[lab.ssh], 0);
    let knock = seal(
        &lab.bob,
        &lab.server,
        Some(&lab.bob_psk),
        &req,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    assert!(lab.open(lab.src, NOW, &knock).is_ok());
    for bit in 16..MAC1_AT * 8 {
        let mut k = knock;
        k[bit / 8] ^= 1 << (bit % 8);
        lab.remac(&mut k);
        let want = if bit / 8 < PAYLOAD_AT {
            Reject::BadStatic
        } else {
            Reject::BadAuth
        };
        assert_eq!(lab.open(lab.src, NOW, &k), Err(want), "bit {bit}");
    }
    let mut k = knock;
    k[1] = 1;
    lab.remac(&mut k);
    assert_eq!(lab.open(lab.src, NOW, &k), Err(Reject::BadStatic));
}

#[test]
fn checked_by_one_identity_is_refused_by_another() {
    let lab = Lab::new();
    let other = Verifier::new(
        ServerSecret::generate(&mut OsRng),
        VerifierConfig::default(),
    );
    let knock = lab.alice_knock(NOW);
    let checked = lab.verifier.check(&knock).unwrap();
    let r = other
        .open_checked(checked, lab.src, NOW, &lab.dir, &lab.replay)
        .unwrap_err();
    assert_eq!(r.reason, Reject::BadMac1);
}

#[test]
fn window_extremes_saturate() {
    let lab = Lab::new();
    assert_eq!(
        lab.open(lab.src, u64::MAX, &lab.alice_knock(0)),
        Err(Reject::Stale { skew_ms: i64::MIN })
    );
    // A configured window beyond 30 days is capped, so u64::MAX can never be accepted.
    let server = ServerSecret::generate(&mut OsRng);
    let v = Verifier::new(
        server.clone(),
        VerifierConfig {
            window_ms: u64::MAX,
            ..Default::default()
        },
    );
    assert_eq!(v.config().window_ms, Verifier::MAX_WINDOW_MS);
    let policy = Arc::new(Policy {
        allowed: vec![lab.ssh],
        max_duration_s: 0,
        nat_allowed: false,
    });
    let dir = HashMap::from([(
        lab.alice.public(),
        ClientEntry::new(&server, lab.alice.public(), None, policy, "a").unwrap(),
    )]);
    let req = lab.request(OpenAddr::Ip(lab.src), &[lab.ssh], 0);
    let k = seal(
        &lab.alice,
        &server.public(),
        None,
        &req,
        u64::MAX,
        &mut OsRng,
    )
    .unwrap();
    let r = v.open(lab.src, 0, &k, &dir, &HashMap::new()).unwrap_err();
    assert!(matches!(r.reason, Reject::Future { .. }));
    // A zero maximum still opens for a second, never "0 = close".
    let k = seal(&lab.alice, &server.public(), None, &req, NOW, &mut OsRng).unwrap();
    assert_eq!(
        v.open(lab.src, NOW, &k, &dir, &HashMap::new())
            .unwrap()
            .duration_s,
        1
    );
}

#[test]
fn non_canonical_and_debug() {
    let server = ServerSecret::generate(&mut OsRng);
    let client = ClientSecret::generate(&mut OsRng);
    let mut alias = *client.public().as_bytes();
    alias[31] |= 0x80;
    let policy = Arc::new(Policy {
        allowed: vec![],
        max_duration_s: 1,
        nat_allowed: false,
    });
    let r = ClientEntry::new(
        &server,
        ClientPublic::from_bytes(alias),
        None,
        policy.clone(),
        (),
    );
    assert!(matches!(r, Err(InvalidClientKey::NonCanonical(_))));
    let psk = Psk::generate(&mut OsRng);
    let entry = ClientEntry::new(&server, client.public(), Some(psk.clone()), policy, ()).unwrap();
    let debug = format!("{entry:?}");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let ss = x25519_dalek::StaticSecret::from(*server.to_bytes())
        .diffie_hellman(&x25519_dalek::PublicKey::from(*client.public().as_bytes()));
    for secret in [
        hex(psk.as_bytes()),
        hex(ss.as_bytes()),
        format!("{:?}", ss.as_bytes()),
        format!("{:?}", psk.as_bytes()),
    ] {
        assert!(!debug.contains(&secret), "{debug}");
    }
    assert!(debug.contains("<redacted>"));
}

#[test]
fn revoked_key_is_named_after_authentication() {
    let mut lab = Lab::new();
    lab.dir.get_mut(&lab.alice.public()).unwrap().revoked = true;
    let knock = lab.alice_knock(NOW);
    let r = lab
        .verifier
        .open(lab.src, NOW, &knock, &lab.dir, &lab.replay)
        .unwrap_err();
    assert_eq!(r.reason, Reject::Revoked);
    assert_eq!(r.entry.unwrap().user, "alice");
}

#[test]
fn time_window_names_the_offset() {
    let lab = Lab::new();
    let w = 120_000;
    assert!(lab.open(lab.src, NOW, &lab.alice_knock(NOW - w)).is_ok());
    assert!(lab.open(lab.src, NOW, &lab.alice_knock(NOW + w)).is_ok());
    assert_eq!(
        lab.open(lab.src, NOW, &lab.alice_knock(NOW - w - 1)),
        Err(Reject::Stale {
            skew_ms: -(w as i64) - 1
        })
    );
    assert_eq!(
        lab.open(lab.src, NOW, &lab.alice_knock(NOW + w + 1)),
        Err(Reject::Future {
            skew_ms: w as i64 + 1
        })
    );
    assert_eq!(
        lab.open(lab.src, NOW, &lab.alice_knock(0)),
        Err(Reject::Stale {
            skew_ms: -(NOW as i64)
        })
    );
    assert_eq!(
        lab.open(lab.src, 0, &lab.alice_knock(u64::MAX)),
        Err(Reject::Future { skew_ms: i64::MAX })
    );
}

#[test]
fn replayed_timestamp() {
    let mut lab = Lab::new();
    let first = lab.alice_knock(NOW);
    assert!(lab.open(lab.src, NOW, &first).is_ok());
    lab.replay.insert(lab.alice.public(), NOW);
    assert_eq!(lab.open(lab.src, NOW, &first), Err(Reject::Replay));
    assert_eq!(
        lab.open(lab.src, NOW + 5, &lab.alice_knock(NOW)),
        Err(Reject::Replay)
    );
    assert_eq!(
        lab.open(lab.src, NOW, &lab.alice_knock(NOW - 1)),
        Err(Reject::Replay)
    );
    assert!(lab.open(lab.src, NOW, &lab.alice_knock(NOW + 1)).is_ok());
    // The high-water mark is per key: bob is unaffected.
    let req = lab.request(OpenAddr::FromPacket, &[lab.ssh], 0);
    let bob = seal(
        &lab.bob,
        &lab.server,
        Some(&lab.bob_psk),
        &req,
        NOW - 1,
        &mut OsRng,
    )
    .unwrap();
    assert!(lab.open(lab.src, NOW, &bob).is_ok());
}

#[test]
fn address_binding() {
    let lab = Lab::new();
    let knock = lab.alice_knock(NOW);
    // The same bytes resent from (or spoofed as) another address.
    for other in ["198.51.100.8", "::ffff:198.51.100.7", "2001:db8::7"] {
        assert_eq!(
            lab.open(other.parse().unwrap(), NOW, &knock),
            Err(Reject::AddressMismatch),
            "{other}"
        );
    }
    // NAT mode only for users allowed it.
    let req = lab.request(OpenAddr::FromPacket, &[lab.ssh], 0);
    let alice_nat = seal(&lab.alice, &lab.server, None, &req, NOW, &mut OsRng).unwrap();
    assert_eq!(
        lab.open(lab.src, NOW, &alice_nat),
        Err(Reject::NatNotAllowed)
    );
    let bob_nat = seal(
        &lab.bob,
        &lab.server,
        Some(&lab.bob_psk),
        &req,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    let elsewhere: IpAddr = "192.0.2.99".parse().unwrap();
    assert_eq!(
        lab.open(elsewhere, NOW, &bob_nat),
        Ok((30, elsewhere, "bob"))
    );
}

#[test]
fn wrong_destination() {
    let lab = Lab::new();
    let req = Request::new(
        Action::Open,
        OpenAddr::Ip(lab.src),
        "203.0.113.2".parse().unwrap(),
        &[lab.ssh],
        0,
    )
    .unwrap();
    let knock = seal(&lab.alice, &lab.server, None, &req, NOW, &mut OsRng).unwrap();
    assert_eq!(
        lab.open(lab.src, NOW, &knock),
        Err(Reject::WrongDestination)
    );
    let v6 = Request::new(
        Action::Open,
        OpenAddr::Ip(lab.src),
        "2001:db8::1".parse().unwrap(),
        &[lab.ssh],
        0,
    )
    .unwrap();
    assert!(lab
        .open(
            lab.src,
            NOW,
            &seal(&lab.alice, &lab.server, None, &v6, NOW, &mut OsRng).unwrap()
        )
        .is_ok());
}

#[test]
fn policy_access_and_duration() {
    let lab = Lab::new();
    let https = Access::tcp(443).unwrap();
    let udp22 = Access::udp(22).unwrap();
    for access in [vec![https], vec![lab.ssh, https], vec![udp22]] {
        let req = lab.request(OpenAddr::Ip(lab.src), &access, 0);
        let knock = seal(&lab.alice, &lab.server, None, &req, NOW, &mut OsRng).unwrap();
        assert_eq!(
            lab.open(lab.src, NOW, &knock),
            Err(Reject::AccessDenied),
            "{access:?}"
        );
    }
    for (asked, granted) in [(0, 30), (1, 1), (600, 600), (601, 600), (u32::MAX, 600)] {
        let req = lab.request(OpenAddr::Ip(lab.src), &[lab.ssh], asked);
        let knock = seal(&lab.alice, &lab.server, None, &req, NOW, &mut OsRng).unwrap();
        assert_eq!(
            lab.open(lab.src, NOW, &knock),
            Ok((granted, lab.src, "alice")),
            "asked {asked}"
        );
    }
    let close = Request::new(
        Action::Close,
        OpenAddr::Ip(lab.src),
        lab.dest,
        &[lab.ssh],
        0,
    )
    .unwrap();
    let knock = seal(&lab.alice, &lab.server, None, &close, NOW, &mut OsRng).unwrap();
    let opened = lab
        .verifier
        .open(lab.src, NOW, &knock, &lab.dir, &lab.replay)
        .unwrap();
    assert_eq!(
        (opened.payload.request.action(), opened.duration_s),
        (Action::Close, 0)
    );
}

fn sealed_plaintext(lab: &Lab, plaintext: &[u8; PAYLOAD_LEN]) -> [u8; KNOCK_LEN] {
    seal_plaintext(
        &lab.alice,
        &lab.server,
        None,
        plaintext,
        &StaticSecret::random_from_rng(OsRng),
    )
    .unwrap()
}

#[test]
fn authenticated_malformed_payloads() {
    let lab = Lab::new();
    let req = lab.request(OpenAddr::Ip(lab.src), &[lab.ssh], 0);
    let good = Payload {
        request: req,
        timestamp_ms: NOW,
        knock_id: [1; 16],
    }
    .encode();
    assert!(lab
        .open(lab.src, NOW, &sealed_plaintext(&lab, &good))
        .is_ok());
    for at in 76..PAYLOAD_LEN {
        let mut p = good;
        p[at] = 0x80;
        assert_eq!(
            lab.open(lab.src, NOW, &sealed_plaintext(&lab, &p)),
            Err(Reject::NonzeroPadding),
            "byte {at}"
        );
    }
    let mut p = good;
    p[0] = 0x04;
    assert_eq!(
        lab.open(lab.src, NOW, &sealed_plaintext(&lab, &p)),
        Err(Reject::BadPayload)
    );
    let mut p = good;
    p[63] = 0;
    assert_eq!(
        lab.open(lab.src, NOW, &sealed_plaintext(&lab, &p)),
        Err(Reject::BadPayload)
    );
}

#[test]
fn low_order_points_are_refused() {
    let lab = Lab::new();
    // u = 0 and u = 1 are low-order on Curve25519.
    let mut zero = [0u8; 32];
    let mut one = [0u8; 32];
    one[0] = 1;
    for point in [zero, one] {
        let mut knock = lab.alice_knock(NOW);
        knock[2..34].copy_from_slice(&point);
        lab.remac(&mut knock);
        assert_eq!(lab.open(lab.src, NOW, &knock), Err(Reject::BadEphemeral));
        let server = ServerSecret::generate(&mut OsRng);
        let policy = Arc::new(Policy {
            allowed: vec![],
            max_duration_s: 1,
            nat_allowed: false,
        });
        assert!(
            ClientEntry::new(&server, ClientPublic::from_bytes(point), None, policy, ()).is_err()
        );
        let req = lab.request(OpenAddr::Ip(lab.src), &[lab.ssh], 0);
        let sealed = seal(
            &lab.alice,
            &ServerPublic::from_bytes(point),
            None,
            &req,
            NOW,
            &mut OsRng,
        );
        assert_eq!(sealed, Err(SealError::LowOrderServerKey));
    }
    zero[31] = 0x80; // bit 255 is masked: still u = 0
    let mut knock = lab.alice_knock(NOW);
    knock[2..34].copy_from_slice(&zero);
    lab.remac(&mut knock);
    assert_eq!(lab.open(lab.src, NOW, &knock), Err(Reject::BadEphemeral));
}

#[test]
fn exact_bytes_are_reproducible() {
    // seal_payload with a fixed ephemeral gives fixed bytes; a golden knock for a second
    // implementation. Changing any label, layout or primitive changes these bytes.
    let client = ClientSecret::from_bytes([0x11; 32]);
    let server = ServerSecret::from_bytes([0x22; 32]);
    let req = Request::new(
        Action::Open,
        OpenAddr::Ip("192.0.2.10".parse().unwrap()),
        "192.0.2.1".parse().unwrap(),
        &[Access::tcp(22).unwrap()],
        60,
    )
    .unwrap();
    let payload = Payload {
        request: req,
        timestamp_ms: 1_700_000_000_000,
        knock_id: [0x33; 16],
    };
    let e = StaticSecret::from([0x44; 32]);
    let a = seal_payload(&client, &server.public(), None, &payload, &e).unwrap();
    let b = seal_payload(&client, &server.public(), None, &payload, &e).unwrap();
    assert_eq!(a, b);
    let golden = include_str!("data/golden-knock.hex").trim();
    assert_eq!(hex::encode(a), golden);
    let verifier = Verifier::new(server, VerifierConfig::default());
    let policy = Arc::new(Policy {
        allowed: vec![Access::tcp(22).unwrap()],
        max_duration_s: 60,
        nat_allowed: false,
    });
    let dir = HashMap::from([(
        client.public(),
        ClientEntry::new(
            &ServerSecret::from_bytes([0x22; 32]),
            client.public(),
            None,
            policy,
            (),
        )
        .unwrap(),
    )]);
    let opened = verifier
        .open(
            "192.0.2.10".parse().unwrap(),
            1_700_000_000_000,
            &a,
            &dir,
            &HashMap::new(),
        )
        .unwrap();
    assert_eq!(opened.payload, payload);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn seal_open_round_trip(
        ts in 0u64..u64::MAX,
        ports in proptest::collection::btree_set(1u16.., 1..=4),
        udp: bool,
        duration in any::<u32>(),
        v6: bool,
        close: bool,
    ) {
        let server = ServerSecret::generate(&mut OsRng);
        let client = ClientSecret::generate(&mut OsRng);
        let access: Vec<Access> =
            ports.iter().map(|&p| if udp { Access::udp(p) } else { Access::tcp(p) }.unwrap()).collect();
        let src: IpAddr = if v6 { "2001:db8::42".parse().unwrap() } else { "192.0.2.42".parse().unwrap() };
        let action = if close { Action::Close } else { Action::Open };
        let req = Request::new(action, OpenAddr::Ip(src), src, &access, duration).unwrap();
        let knock = seal(&client, &server.public(), None, &req, ts, &mut OsRng).unwrap();
        let policy = Arc::new(Policy { allowed: access.clone(), max_duration_s: u32::MAX, nat_allowed: false });
        let dir = HashMap::from([(client.public(), ClientEntry::new(&server, client.public(), None, policy, ()).unwrap())]);
        let verifier = Verifier::new(server, VerifierConfig::default());
        let opened = verifier.open(src, ts, &knock, &dir, &HashMap::new()).unwrap();
        prop_assert_eq!(opened.payload.request, req);
        prop_assert_eq!(opened.payload.timestamp_ms, ts);
        let want = match (close, duration) { (true, _) => 0, (false, 0) => 30, (false, d) => d };
        prop_assert_eq!(opened.duration_s, want);
    }

    #[test]
    fn random_authenticated_plaintext_never_panics(plain in proptest::collection::vec(any::<u8>(), PAYLOAD_LEN)) {
        // Reaches the payload parser behind a valid AEAD.
        let lab = Lab::new();
        let plain: [u8; PAYLOAD_LEN] = plain.try_into().unwrap();
        let r = lab.open(lab.src, NOW, &sealed_plaintext(&lab, &plain));
        if let Ok(p) = Payload::decode(&plain) {
            prop_assert_eq!(p.encode(), plain, "decode/encode round trip");
        } else {
            prop_assert!(matches!(r, Err(Reject::BadPayload) | Err(Reject::NonzeroPadding)), "{:?}", r);
        }
    }

    #[test]
    fn random_bytes_never_panic_or_open(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let lab = Lab::new();
        prop_assert!(lab.open(lab.src, NOW, &bytes).is_err());
    }

    #[test]
    fn random_body_with_valid_header_and_mac1_never_opens(body in proptest::collection::vec(any::<u8>(), KNOCK_LEN - 2), psk: bool) {
        // Reaches the Diffie-Hellman and both AEADs.
        let lab = Lab::new();
        let mut knock = [0u8; KNOCK_LEN];
        knock[0] = 1;
        knock[1] = if psk { 2 } else { 1 };
        knock[2..].copy_from_slice(&body);
        lab.remac(&mut knock);
        let r = lab.open(lab.src, NOW, &knock);
        prop_assert!(matches!(r, Err(Reject::BadStatic) | Err(Reject::BadEphemeral)), "{:?}", r);
    }
}
