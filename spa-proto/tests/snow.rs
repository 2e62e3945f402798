//! Differential tests against the `snow` crate: our initiator to snow's responder and
//! snow's initiator to our responder, for both patterns, with random keys and payloads;
//! and a knock sealed by snow that our verifier opens.

use proptest::prelude::*;
use spa_proto::noise::{read_message, write_message, Pattern};

fn builder(pattern: Pattern, prologue: &[u8], psk: Option<&[u8; 32]>) -> snow::Builder<'static> {
    let params: snow::params::NoiseParams = pattern.protocol_name().parse().unwrap();
    // `Builder` borrows its inputs; leak these small test values to keep lifetimes simple.
    let prologue: &'static [u8] = Box::leak(prologue.to_vec().into_boxed_slice());
    let mut b = snow::Builder::new(params).prologue(prologue);
    if let Some(psk) = psk {
        let psk: &'static [u8; 32] = Box::leak(Box::new(*psk));
        b = b.psk(1, psk);
    }
    b
}

fn public(secret: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(*secret)).to_bytes()
}

/// (psk on, initiator static, initiator ephemeral, responder static, psk, prologue, payload)
type Case = (
    bool,
    [u8; 32],
    [u8; 32],
    [u8; 32],
    [u8; 32],
    Vec<u8>,
    Vec<u8>,
);

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..300),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn ours_to_snow((psk_on, s, e, rs, psk, prologue, payload) in case()) {
        let pattern = if psk_on { Pattern::Xpsk1 } else { Pattern::X };
        let psk = psk_on.then_some(psk);
        let rs_pub = public(&rs);
        let (msg, our_hash) =
            write_message(pattern, &prologue, &s, &e, &rs_pub, psk.as_ref(), &payload).unwrap();
        let mut responder = builder(pattern, &prologue, psk.as_ref())
            .local_private_key(&rs)
            .build_responder()
            .unwrap();
        let mut out = vec![0u8; msg.len()];
        let n = responder.read_message(&msg, &mut out).unwrap();
        prop_assert_eq!(&out[..n], &payload[..]);
        prop_assert_eq!(responder.get_remote_static().unwrap(), &public(&s)[..]);
        prop_assert_eq!(responder.get_handshake_hash(), &our_hash[..]);
    }

    #[test]
    fn snow_to_ours((psk_on, s, _e, rs, psk, prologue, payload) in case()) {
        let pattern = if psk_on { Pattern::Xpsk1 } else { Pattern::X };
        let psk = psk_on.then_some(psk);
        let rs_pub = public(&rs);
        let mut initiator = builder(pattern, &prologue, psk.as_ref())
            .local_private_key(&s)
            .remote_public_key(&rs_pub)
            .build_initiator()
            .unwrap();
        let mut msg = vec![0u8; 80 + payload.len() + 16];
        let n = initiator.write_message(&payload, &mut msg).unwrap();
        prop_assert_eq!(n, msg.len());
        let read = read_message(pattern, &prologue, &rs, psk.as_ref(), &msg).unwrap();
        prop_assert_eq!(&read.payload, &payload);
        prop_assert_eq!(read.remote_static, public(&s));
        prop_assert_eq!(initiator.get_handshake_hash(), &read.handshake_hash[..]);
    }

    #[test]
    fn knock_sealed_by_snow_opens(psk_on: bool, port in 1u16.., ts in 1u64..u64::MAX / 2) {
        use spa_proto::*;
        use std::{collections::HashMap, sync::Arc};
        let mut rng = rand::rngs::OsRng;
        let server = ServerSecret::generate(&mut rng);
        let client = ClientSecret::generate(&mut rng);
        let psk = psk_on.then(|| Psk::generate(&mut rng));
        let src = "198.51.100.4".parse().unwrap();
        let access = Access::tcp(port).unwrap();
        let request =
            Request::new(Action::Open, OpenAddr::Ip(src), "198.51.100.1".parse().unwrap(), &[access], 9).unwrap();
        let payload = Payload { request, timestamp_ms: ts, knock_id: [7; 16] };
        let pattern = if psk_on { Pattern::Xpsk1 } else { Pattern::X };

        let mut initiator = builder(pattern, &wire::prologue(pattern), psk.as_ref().map(Psk::as_bytes))
            .local_private_key(&*client.to_bytes())
            .remote_public_key(server.public().as_bytes())
            .build_initiator()
            .unwrap();
        let mut knock = [0u8; KNOCK_LEN];
        knock[..2].copy_from_slice(&wire::header(pattern));
        let n = initiator.write_message(&payload.encode(), &mut knock[2..wire::MAC1_AT]).unwrap();
        prop_assert_eq!(n, wire::MAC1_AT - 2);
        let mac1 = wire::Mac1Key::new(&server.public()).compute(&knock[..wire::MAC1_AT]);
        knock[wire::MAC1_AT..].copy_from_slice(&mac1);

        let policy = Arc::new(Policy { allowed: vec![access], max_duration_s: 60, nat_allowed: false });
        let entry = ClientEntry::new(&server, client.public(), psk, policy, ()).unwrap();
        let dir = HashMap::from([(client.public(), entry)]);
        let verifier = Verifier::new(server, VerifierConfig { window_ms: u64::MAX, ..Default::default() });
        let opened = verifier.open(src, ts, &knock, &dir, &HashMap::new()).unwrap();
        prop_assert_eq!(opened.payload, payload);
        prop_assert_eq!(opened.duration_s, 9);
    }
}

#[test]
fn golden_knock_is_what_snow_produces() {
    use spa_proto::*;
    let client = [0x11u8; 32];
    let server = ServerSecret::from_bytes([0x22; 32]);
    let request = Request::new(
        Action::Open,
        OpenAddr::Ip("192.0.2.10".parse().unwrap()),
        "192.0.2.1".parse().unwrap(),
        &[Access::tcp(22).unwrap()],
        60,
    )
    .unwrap();
    let payload = Payload {
        request,
        timestamp_ms: 1_700_000_000_000,
        knock_id: [0x33; 16],
    };
    let mut initiator = builder(Pattern::X, &wire::prologue(Pattern::X), None)
        .local_private_key(&client)
        .remote_public_key(server.public().as_bytes())
        .fixed_ephemeral_key_for_testing_only(&[0x44; 32])
        .build_initiator()
        .unwrap();
    let mut knock = [0u8; KNOCK_LEN];
    knock[..2].copy_from_slice(&wire::header(Pattern::X));
    initiator
        .write_message(&payload.encode(), &mut knock[2..wire::MAC1_AT])
        .unwrap();
    let mac1 = wire::Mac1Key::new(&server.public()).compute(&knock[..wire::MAC1_AT]);
    knock[wire::MAC1_AT..].copy_from_slice(&mac1);
    assert_eq!(
        hex::encode(knock),
        include_str!("data/golden-knock.hex").trim()
    );
}
