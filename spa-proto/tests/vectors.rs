//! The published cacophony vectors for Noise_X and Noise_Xpsk1, byte for byte.

use serde_json::Value;
use spa_proto::noise::{read_message, write_message, Pattern};

fn hex32(v: &Value) -> [u8; 32] {
    hex::decode(v.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn hexv(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn cacophony_first_message_and_handshake_hash() {
    let data: Value = serde_json::from_str(include_str!("data/noise-x.json")).unwrap();
    let mut seen = Vec::new();
    for v in data["vectors"].as_array().unwrap() {
        let name = v["protocol_name"].as_str().unwrap();
        let pattern = match name {
            "Noise_X_25519_ChaChaPoly_SHA256" => Pattern::X,
            "Noise_Xpsk1_25519_ChaChaPoly_SHA256" => Pattern::Xpsk1,
            other => panic!("unexpected protocol {other}"),
        };
        assert_eq!(pattern.protocol_name(), name);
        let psk = v.get("init_psks").map(|p| hex32(&p[0]));
        let resp_psk = v.get("resp_psks").map(|p| hex32(&p[0]));
        let msg = &v["messages"][0];
        let want_ct = hexv(&msg["ciphertext"]);
        let want_hash = hex32(&v["handshake_hash"]);

        // Initiator: our bytes equal the vector's bytes.
        let (ct, hash) = write_message(
            pattern,
            &hexv(&v["init_prologue"]),
            &hex32(&v["init_static"]),
            &hex32(&v["init_ephemeral"]),
            &hex32(&v["init_remote_static"]),
            psk.as_ref(),
            &hexv(&msg["payload"]),
        )
        .unwrap();
        assert_eq!(
            hex::encode(&ct),
            hex::encode(&want_ct),
            "{name}: ciphertext"
        );
        assert_eq!(hash, want_hash, "{name}: handshake hash");

        // Responder: the vector's bytes open to the vector's payload.
        let read = read_message(
            pattern,
            &hexv(&v["resp_prologue"]),
            &hex32(&v["resp_static"]),
            resp_psk.as_ref(),
            &want_ct,
        )
        .unwrap();
        assert_eq!(read.payload, hexv(&msg["payload"]), "{name}: payload");
        assert_eq!(read.handshake_hash, want_hash, "{name}: responder hash");
        let init_pub = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(hex32(
            &v["init_static"],
        )));
        assert_eq!(&read.remote_static, init_pub.as_bytes());

        // A one-byte change anywhere in the vector's message fails to open.
        for i in 0..want_ct.len() {
            let mut bad = want_ct.clone();
            bad[i] ^= 0x01;
            assert!(
                read_message(
                    pattern,
                    &hexv(&v["resp_prologue"]),
                    &hex32(&v["resp_static"]),
                    resp_psk.as_ref(),
                    &bad
                )
                .is_err(),
                "{name}: flip at {i} accepted"
            );
        }
        seen.push(pattern);
    }
    assert_eq!(seen, [Pattern::X, Pattern::Xpsk1]);
}
