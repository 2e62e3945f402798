//! Mutation run: feeds mutated valid knocks (bit flips, byte changes, truncations,
//! extensions, splices, random data; half of them with mac1 recomputed so they reach the
//! Diffie-Hellman and the AEADs) to the verifier on every core. Fails if any input other
//! than an original knock is accepted, or if the verifier panics.
//!
//! ```text
//! cargo run --release --locked -p spa-proto --example mutate -- --count 10000000
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use spa_proto::wire::{Mac1Key, KNOCK_LEN, MAC1_AT};
use spa_proto::*;

const NOW: u64 = 1_764_000_000_000;

struct Target {
    verifier: Verifier,
    mac1: Mac1Key,
    dir: HashMap<ClientPublic, ClientEntry<()>>,
    originals: Vec<[u8; KNOCK_LEN]>,
    src: IpAddr,
}

fn target(seed: u64) -> Target {
    let mut rng = StdRng::seed_from_u64(seed);
    let server = ServerSecret::generate(&mut rng);
    let src: IpAddr = "198.51.100.7".parse().unwrap();
    let ssh = Access::tcp(22).unwrap();
    let policy = Arc::new(Policy {
        allowed: vec![ssh],
        max_duration_s: 60,
        nat_allowed: true,
    });
    let mut dir = HashMap::new();
    let mut originals = Vec::new();
    for (i, open) in [OpenAddr::Ip(src), OpenAddr::FromPacket]
        .into_iter()
        .enumerate()
    {
        let client = ClientSecret::generate(&mut rng);
        let psk = (i == 1).then(|| Psk::generate(&mut rng));
        let req = Request::new(Action::Open, open, src, &[ssh], 30).unwrap();
        let knock = seal(&client, &server.public(), psk.as_ref(), &req, NOW, &mut rng).unwrap();
        originals.push(knock);
        let entry = ClientEntry::new(&server, client.public(), psk, policy.clone(), ()).unwrap();
        dir.insert(client.public(), entry);
    }
    Target {
        mac1: Mac1Key::new(&server.public()),
        verifier: Verifier::new(server, VerifierConfig::default()),
        dir,
        originals,
        src,
    }
}

fn mutate(rng: &mut StdRng, t: &Target, out: &mut Vec<u8>) {
    let base = &t.originals[rng.gen_range(0..t.originals.len())];
    out.clear();
    out.extend_from_slice(base);
    match rng.gen_range(0..8) {
        0 => {
            let bit = rng.gen_range(0..KNOCK_LEN * 8);
            out[bit / 8] ^= 1 << (bit % 8);
        }
        1 => {
            for _ in 0..rng.gen_range(2..9) {
                let bit = rng.gen_range(0..KNOCK_LEN * 8);
                out[bit / 8] ^= 1 << (bit % 8);
            }
        }
        2 => {
            let at = rng.gen_range(0..KNOCK_LEN);
            out[at] = rng.gen();
        }
        3 => out.truncate(rng.gen_range(0..KNOCK_LEN)),
        4 => {
            let extra = rng.gen_range(1..64);
            out.extend((0..extra).map(|_| rng.gen::<u8>()));
        }
        5 => {
            let other = &t.originals[rng.gen_range(0..t.originals.len())];
            let at = rng.gen_range(0..KNOCK_LEN);
            out[at..].copy_from_slice(&other[at..]);
            let bit = rng.gen_range(0..KNOCK_LEN * 8);
            out[bit / 8] ^= 1 << (bit % 8);
        }
        6 => {
            let a = rng.gen_range(0..KNOCK_LEN);
            let b = rng.gen_range(a..=KNOCK_LEN);
            rng.fill(&mut out[a..b]);
        }
        _ => {
            let len = if rng.gen_bool(0.9) {
                KNOCK_LEN
            } else {
                rng.gen_range(0..600)
            };
            out.resize(len, 0);
            rng.fill(&mut out[..]);
            if len >= 2 && rng.gen_bool(0.5) {
                out[0] = 1;
                out[1] = rng.gen_range(1..=2);
            }
        }
    }
    if out.len() == KNOCK_LEN && rng.gen_bool(0.5) {
        let mac1 = t.mac1.compute(&out[..MAC1_AT]);
        out[MAC1_AT..].copy_from_slice(&mac1);
    }
}

fn main() {
    let mut count: u64 = 10_000_000;
    let mut seed: u64 = 1;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match arg.as_str() {
            "--count" => count = value(),
            "--seed" => seed = value(),
            "--threads" => threads = value() as usize,
            _ => usage(),
        }
    }
    let threads = threads.max(1);
    let started = Instant::now();
    let results: Vec<(BTreeMap<&'static str, u64>, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let n = count / threads as u64 + u64::from((i as u64) < count % threads as u64);
                scope.spawn(move || run(seed, i as u64, n))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    let mut by_reason = BTreeMap::new();
    let mut unchanged = 0;
    for (counts, same) in results {
        unchanged += same;
        for (k, v) in counts {
            *by_reason.entry(k).or_insert(0) += v;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("mutation run: {count} inputs, seed {seed}, {threads} threads, {secs:.1} s ({:.0} inputs/s)", count as f64 / secs);
    println!("  unchanged originals (skipped): {unchanged}");
    for (reason, n) in &by_reason {
        println!("  {reason:<16} {n}");
    }
    println!("accepted mutations: 0; panics: 0");
}

fn run(seed: u64, worker: u64, n: u64) -> (BTreeMap<&'static str, u64>, u64) {
    let t = target(seed);
    let mut rng = StdRng::seed_from_u64(seed ^ (worker + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut input = Vec::with_capacity(KNOCK_LEN + 64);
    let mut counts = BTreeMap::new();
    let mut unchanged = 0;
    let replay: HashMap<ClientPublic, u64> = HashMap::new();
    for _ in 0..n {
        mutate(&mut rng, &t, &mut input);
        if t.originals.iter().any(|o| o[..] == input[..]) {
            unchanged += 1;
            continue;
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.verifier
                .open(t.src, NOW, &input, &t.dir, &replay)
                .map(|_| ())
                .map_err(|r| r.reason)
        }));
        match result {
            Err(_) => fail("verifier panicked", &input),
            Ok(Ok(())) => fail("mutated knock ACCEPTED", &input),
            Ok(Err(reason)) => *counts.entry(reason.code()).or_insert(0) += 1,
        }
    }
    (counts, unchanged)
}

fn fail(what: &str, input: &[u8]) -> ! {
    let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
    eprintln!("FAIL: {what}; input ({} bytes): {hex}", input.len());
    std::process::exit(1);
}

fn usage() -> ! {
    eprintln!("usage: mutate [--count N] [--seed S] [--threads T]");
    std::process::exit(2);
}
