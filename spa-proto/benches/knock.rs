//! The cost of a knock: seal, reject of junk, full open, against one bare X25519 measured
//! in the same run (the ratio is what PROTOCOL.md's design promises: a valid knock costs
//! the server about one X25519). `bench/proto.sh` prints the medians and the ratio.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spa_proto::wire::{Mac1Key, KNOCK_LEN, MAC1_AT};
use spa_proto::*;
use x25519_dalek::{PublicKey, StaticSecret};

const NOW: u64 = 1_764_000_000_000;

fn knock(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let server = ServerSecret::generate(&mut rng);
    let server_public = server.public();
    let client = ClientSecret::generate(&mut rng);
    let src: IpAddr = "198.51.100.7".parse().unwrap();
    let ssh = Access::tcp(22).unwrap();
    let request = Request::new(Action::Open, OpenAddr::Ip(src), src, &[ssh], 30).unwrap();
    let policy = Arc::new(Policy {
        allowed: vec![ssh],
        max_duration_s: 60,
        nat_allowed: false,
    });

    // A directory of 10,000 clients, so the lookup is not a toy.
    let mut dir = HashMap::new();
    for _ in 0..10_000 {
        let other = ClientSecret::generate(&mut rng);
        dir.insert(
            other.public(),
            ClientEntry::new(&server, other.public(), None, policy.clone(), ()).unwrap(),
        );
    }
    dir.insert(
        client.public(),
        ClientEntry::new(&server, client.public(), None, policy, ()).unwrap(),
    );
    let replay: HashMap<ClientPublic, u64> = HashMap::new();
    let mac1 = Mac1Key::new(&server_public);
    let dh_secret = StaticSecret::random_from_rng(&mut rng);
    let dh_public = PublicKey::from(&StaticSecret::random_from_rng(&mut rng));
    let verifier = Verifier::new(server, VerifierConfig::default());

    let mut g = c.benchmark_group("knock");
    g.bench_function("x25519", |b| {
        b.iter(|| black_box(&dh_secret).diffie_hellman(black_box(&dh_public)))
    });
    g.bench_function("seal", |b| {
        b.iter(|| {
            seal(
                &client,
                &server_public,
                None,
                black_box(&request),
                NOW,
                &mut rng,
            )
            .unwrap()
        })
    });
    let valid = seal(&client, &server_public, None, &request, NOW, &mut rng).unwrap();
    g.bench_function("open_valid", |b| {
        b.iter(|| {
            let opened = verifier
                .open(src, NOW, black_box(&valid), &dir, &replay)
                .unwrap();
            black_box(opened.duration_s)
        })
    });
    // Junk of the right length with a valid header: the worst case for junk, it costs
    // the mac1 HMAC.
    let mut junk_rng = StdRng::seed_from_u64(8);
    g.bench_function("reject_junk_mac1", |b| {
        b.iter_batched_ref(
            || {
                let mut j = [0u8; KNOCK_LEN];
                junk_rng.fill(&mut j[..]);
                j[0] = 1;
                j[1] = 1;
                j
            },
            |j| {
                assert_eq!(
                    verifier.check(black_box(&j[..])).unwrap_err(),
                    Reject::BadMac1
                )
            },
            BatchSize::SmallInput,
        )
    });
    // Junk of random length: rejected on length alone.
    g.bench_function("reject_junk_length", |b| {
        let j = [0xa5u8; 1400];
        b.iter(|| verifier.check(black_box(&j[..100])).unwrap_err())
    });
    // A knock under our mac1 but otherwise forged: costs the DH, fails at the AEAD.
    let mut forged = valid;
    forged[100] ^= 1;
    let m = mac1.compute(&forged[..MAC1_AT]);
    forged[MAC1_AT..].copy_from_slice(&m);
    g.bench_function("reject_forged_after_dh", |b| {
        b.iter(|| {
            verifier
                .open(src, NOW, black_box(&forged), &dir, &replay)
                .unwrap_err()
                .reason
        })
    });
    g.finish();
}

criterion_group!(benches, knock);
criterion_main!(benches);
