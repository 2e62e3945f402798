//! The forward-secure MAC chain. Record `n` carries `prev` (record `n-1`'s MAC) and
//! `mac = HMAC-SHA256(k_n, line before the MAC)`, where `k_0` is the key the admin was
//! given at `init` and `k_{n+1} = SHA-256(label ‖ k_n)`. The daemon holds only the key
//! for the next record and overwrites the old one, so whoever takes the host later can
//! neither recompute the MACs of records already written nor rewrite them; `--verify`
//! starts from `k_0` and walks the chain.

use hmac::Mac;
use sha2::{Digest, Sha256};
use spa_keys::text::AuditKey;
use zeroize::Zeroizing;

use super::record::{self, Record};

const EVOLVE_LABEL: &[u8] = b"spa audit key evolve v1";

type HmacSha256 = hmac::Hmac<Sha256>;

/// The next key: `SHA-256(label ‖ k)`.
fn evolve(key: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(EVOLVE_LABEL);
    h.update(key);
    Zeroizing::new(h.finalize().into())
}

fn hmac(key: &[u8; 32]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length")
}

/// Where a chain stands: the key and sequence number of the next record, and the MAC of
/// the last one. Never printed.
#[derive(Clone)]
pub struct Chain {
    key: Zeroizing<[u8; 32]>,
    next_seq: u64,
    prev: [u8; 32],
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// Why a line does not continue the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// Not a record line at all.
    #[error("not an audit record (edited or corrupted)")]
    Malformed,
    /// Its sequence number is beyond the next expected: records are missing.
    #[error("records {expected} to {} are missing (deleted)", .found - 1)]
    Missing {
        /// The sequence number expected.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// Its sequence number was seen already.
    #[error("sequence number {found} where {expected} was expected (reordered or duplicated)")]
    Reordered {
        /// The sequence number expected.
        expected: u64,
        /// The one found.
        found: u64,
    },
    /// It does not name the previous record's MAC.
    #[error("does not follow the previous record (reordered or spliced)")]
    Unlinked,
    /// Its MAC does not match its content.
    #[error("its MAC does not match (edited)")]
    BadMac,
}

impl Chain {
    /// The start of a chain: `k_0`, sequence 0.
    pub fn start(key: &AuditKey) -> Self {
        Self {
            key: Zeroizing::new(*key.expose_secret()),
            next_seq: 0,
            prev: [0; 32],
        }
    }

    /// A chain resumed from saved state: the key for `next_seq`.
    pub fn resume(key: [u8; 32], next_seq: u64, prev: [u8; 32]) -> Self {
        Self {
            key: Zeroizing::new(key),
            next_seq,
            prev,
        }
    }

    /// The sequence number of the next record.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last record's MAC (all zeros before the first).
    pub fn head(&self) -> [u8; 32] {
        self.prev
    }

    /// The key for the next record (to save the state; wiped when dropped).
    pub fn key(&self) -> Zeroizing<[u8; 32]> {
        self.key.clone()
    }

    /// Moves the key forward to `seq` (≥ `next_seq`) after records written past the
    /// saved state, taking `prev` as the last record's MAC.
    pub fn fast_forward(&mut self, seq: u64, prev: [u8; 32]) {
        while self.next_seq < seq {
            self.key = evolve(&self.key);
            self.next_seq += 1;
        }
        self.prev = prev;
    }

    /// Seals `rec` as the next record and returns its line (with the newline).
    pub fn seal(&mut self, rec: &mut Record) -> String {
        rec.seq = self.next_seq;
        rec.prev = hex::encode(self.prev);
        let body = serde_json::to_string(rec).expect("records always serialise");
        let mut mac = hmac(&self.key);
        mac.update(body.as_bytes());
        let tag: [u8; 32] = mac.finalize().into_bytes().into();
        self.advance(tag);
        record::join(&body, &tag)
    }

    fn advance(&mut self, tag: [u8; 32]) {
        self.key = evolve(&self.key);
        self.next_seq += 1;
        self.prev = tag;
    }

    /// Checks that `line` (without its newline) is the next record, and moves on.
    pub fn check(&mut self, line: &str) -> Result<Record, Broken> {
        let (body, tag) = record::split(line).ok_or(Broken::Malformed)?;
        let rec: Record = serde_json::from_str(&body).map_err(|_| Broken::Malformed)?;
        if rec.seq > self.next_seq {
            return Err(Broken::Missing {
                expected: self.next_seq,
                found: rec.seq,
            });
        }
        if rec.seq < self.next_seq {
            return Err(Broken::Reordered {
                expected: self.next_seq,
                found: rec.seq,
            });
        }
        let mut mac = hmac(&self.key);
        mac.update(body.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&tag).map_err(|_| Broken::BadMac)?;
        if rec.prev != hex::encode(self.prev) {
            return Err(Broken::Unlinked);
        }
        self.advance(tag);
        Ok(rec)
    }

    /// Checks only that the MAC of `line` is right for the current key, without moving
    /// on (to test the tail of a log at start-up).
    pub fn mac_matches(&self, line: &str) -> bool {
        let Some((body, tag)) = record::split(line) else {
            return false;
        };
        let mut mac = hmac(&self.key);
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::Decision;

    fn lines(n: usize) -> (AuditKey, Vec<String>) {
        let key = AuditKey::from_bytes([9; 32]);
        let mut c = Chain::start(&key);
        let out = (0..n)
            .map(|i| {
                let mut r = Record::new(Decision::Granted, std::time::UNIX_EPOCH);
                r.user = Some(format!("u{i}"));
                c.seal(&mut r)
            })
            .collect();
        (key, out)
    }

    fn check_all(key: &AuditKey, lines: &[String]) -> Result<(), (usize, Broken)> {
        let mut c = Chain::start(key);
        for (i, l) in lines.iter().enumerate() {
            c.check(l.trim_end()).map_err(|e| (i, e))?;
        }
        Ok(())
    }

    #[test]
    fn an_intact_chain_verifies_and_every_tampering_is_named() {
        let (key, l) = lines(4);
        assert_eq!(check_all(&key, &l), Ok(()));
        assert!(matches!(
            check_all(&AuditKey::from_bytes([8; 32]), &l),
            Err((0, Broken::BadMac))
        ));
        let mut edited = l.clone();
        edited[2] = edited[2].replace("u2", "u9");
        assert_eq!(check_all(&key, &edited), Err((2, Broken::BadMac)));
        let mut deleted = l.clone();
        deleted.remove(1);
        assert!(matches!(
            check_all(&key, &deleted),
            Err((
                1,
                Broken::Missing {
                    expected: 1,
                    found: 2
                }
            ))
        ));
        let mut swapped = l.clone();
        swapped.swap(1, 2);
        assert!(matches!(
            check_all(&key, &swapped),
            Err((1, Broken::Missing { .. }))
        ));
        let mut dup = l.clone();
        dup.insert(2, l[1].clone());
        assert!(matches!(
            check_all(&key, &dup),
            Err((2, Broken::Reordered { .. }))
        ));
        let mut junk = l.clone();
        junk[3] = "{\"seq\":3}".into();
        assert_eq!(check_all(&key, &junk), Err((3, Broken::Malformed)));
    }

    #[test]
    fn a_later_key_cannot_forge_an_earlier_record() {
        // The intruder holds the state after record 1 (the key for seq 2) and rewrites
        // record 1: its MAC needs k_1, which is gone.
        let (key, l) = lines(3);
        let mut c = Chain::start(&key);
        c.check(l[0].trim_end()).unwrap();
        let mut thief = c.clone();
        thief.check(l[1].trim_end()).unwrap();
        // With k_2 the thief can only seal seq 2 onward.
        let mut forged = Record::new(Decision::Granted, std::time::UNIX_EPOCH);
        let mut t2 = thief.clone();
        t2.next_seq = 1;
        t2.prev = c.head();
        let line = t2.seal(&mut forged);
        assert_eq!(c.check(line.trim_end()), Err(Broken::BadMac));
    }

    #[test]
    fn debug_shows_no_key() {
        let c = Chain::start(&AuditKey::from_bytes([0xAB; 32]));
        let d = format!("{c:?}");
        assert!(
            !d.contains("171") && !d.to_lowercase().contains("ab, ab"),
            "{d}"
        );
    }
}
