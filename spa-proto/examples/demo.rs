//! A narrated walk through one knock and the attacks it withstands (the README's demo,
//! until the network-namespace lab exists).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::OsRng;
use spa_proto::wire::{Mac1Key, MAC1_AT};
use spa_proto::*;

fn main() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let server = ServerSecret::generate(&mut OsRng);
    let card = server.public();
    let alice = ClientSecret::generate(&mut OsRng);
    let laptop: IpAddr = "198.51.100.7".parse().unwrap();
    let host: IpAddr = "203.0.113.1".parse().unwrap();
    let ssh = Access::tcp(22).unwrap();
    println!(
        "server key id {}, alice's key id {}",
        card.key_id(),
        alice.public().key_id()
    );

    let policy = Arc::new(Policy {
        allowed: vec![ssh],
        max_duration_s: 3600,
        nat_allowed: false,
    });
    let entry = ClientEntry::new(&server, alice.public(), None, policy, "alice").unwrap();
    let mut dir = HashMap::from([(alice.public(), entry)]);
    let mut replay: HashMap<ClientPublic, u64> = HashMap::new();
    let verifier = Verifier::new(
        server,
        VerifierConfig {
            destinations: vec![host],
            ..Default::default()
        },
    );

    let request = Request::new(Action::Open, OpenAddr::Ip(laptop), host, &[ssh], 60).unwrap();
    let knock = seal(&alice, &card, None, &request, now, &mut OsRng).unwrap();
    println!(
        "\nalice seals one {}-byte knock asking for {ssh} for 60 s from {laptop}",
        knock.len()
    );

    let show = |what: &str, r: Result<Opened<'_, &str>, Rejection<'_, &str>>| match r {
        Ok(o) => println!(
            "  {what:<52} GRANTED {} for {} to {} for {} s",
            o.payload.request.access()[0],
            o.entry.user,
            o.open_addr,
            o.duration_s
        ),
        Err(r) => println!(
            "  {what:<52} rejected: {} ({})",
            r.reason.code(),
            if r.reason.is_authenticated() {
                "audited with the user"
            } else {
                "counted, pre-authentication"
            }
        ),
    };

    show(
        "the knock, from alice's laptop",
        verifier.open(laptop, now, &knock, &dir, &replay),
    );
    replay.insert(alice.public(), now);
    println!("  (the server records alice's timestamp before opening the port)");
    show(
        "the same bytes again (captured and replayed)",
        verifier.open(laptop, now + 500, &knock, &dir, &replay),
    );
    let attacker: IpAddr = "192.0.2.66".parse().unwrap();
    show(
        "the same bytes from the attacker's address",
        verifier.open(attacker, now, &knock, &dir, &replay),
    );
    let mut flipped = knock;
    flipped[100] ^= 0x01;
    show(
        "one bit flipped",
        verifier.open(laptop, now, &flipped, &dir, &replay),
    );
    let m = Mac1Key::new(&card).compute(&flipped[..MAC1_AT]);
    flipped[MAC1_AT..].copy_from_slice(&m);
    show(
        "one bit flipped, mac1 recomputed from the card",
        verifier.open(laptop, now, &flipped, &dir, &replay),
    );
    show(
        "random junk",
        verifier.open(laptop, now, &[0x5a; 242], &dir, &replay),
    );
    let mallory = ClientSecret::generate(&mut OsRng);
    let req = Request::new(Action::Open, OpenAddr::Ip(attacker), host, &[ssh], 60).unwrap();
    let k = seal(&mallory, &card, None, &req, now + 1, &mut OsRng).unwrap();
    show(
        "a knock from a key the server never provisioned",
        verifier.open(attacker, now, &k, &dir, &replay),
    );
    let https = Access::tcp(443).unwrap();
    let req = Request::new(Action::Open, OpenAddr::Ip(laptop), host, &[https], 60).unwrap();
    let k = seal(&alice, &card, None, &req, now + 2, &mut OsRng).unwrap();
    show(
        "alice asks for tcp/443, which she may not open",
        verifier.open(laptop, now, &k, &dir, &replay),
    );
    let k = seal(&alice, &card, None, &request, now - 600_000, &mut OsRng).unwrap();
    show(
        "alice's clock is 10 minutes slow",
        verifier.open(laptop, now, &k, &dir, &replay),
    );
    dir.get_mut(&alice.public()).unwrap().revoked = true;
    let k = seal(&alice, &card, None, &request, now + 3, &mut OsRng).unwrap();
    show(
        "alice's key after the admin revoked it",
        verifier.open(laptop, now, &k, &dir, &replay),
    );
    println!("\nnothing is ever sent back, whatever the outcome.");
    println!("the network demo (namespaces, nftables, sshd) arrives with the lab issue.");
}
