//! Step 4 of PROTOCOL.md §6: a per-source token bucket and a global cap on
//! Diffie-Hellman operations per second, both in fixed memory, checked after mac1 and
//! before any DH.
//!
//! The per-source table has a fixed number of slots indexed by a keyed hash of the source
//! address; a slot remembers which address it holds, and a different address takes the
//! slot over with a full bucket. So a person never shares a bucket with an attacker, one
//! source cannot spend more than its bucket, and sources rotated by a spoofing attacker
//! are stopped by the global cap instead (sources of unauthenticated packets can be forged,
//! so nothing here bans anyone).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

/// Limits (defaults never throttle a person: a person knocks a few times a minute).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    /// Knocks a source may send at once.
    pub per_source_burst: f64,
    /// Knocks per second a source regains.
    pub per_source_rate: f64,
    /// Diffie-Hellman operations per second for all sources together.
    pub global_dh_per_sec: f64,
    /// Slots in the per-source table (memory: about 40 bytes each).
    pub source_slots: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            per_source_burst: 20.0,
            per_source_rate: 5.0,
            global_dh_per_sec: 20_000.0,
            source_slots: 16_384,
        }
    }
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn take(&mut self, now_ms: u64, rate: f64, burst: f64) -> bool {
        let dt = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at_ms = self.at_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Copy)]
struct Slot {
    source: Option<IpAddr>,
    bucket: Bucket,
}

/// Which limit refused a knock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// The source's bucket is empty.
    Source,
    /// The global DH budget is spent.
    Global,
}

/// The limiter.
pub struct Limiter {
    config: LimitConfig,
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[Mutex<Vec<Slot>>]>,
    global: Mutex<Bucket>,
}

const SHARDS: usize = 16;

impl Limiter {
    /// A limiter with `config`.
    pub fn new(config: LimitConfig) -> Self {
        let per_shard = config.source_slots.div_ceil(SHARDS).max(1);
        let empty = Slot {
            source: None,
            bucket: Bucket {
                tokens: 0.0,
                at_ms: 0,
            },
        };
        Self {
            config,
            hasher: Default::default(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![empty; per_shard]))
                .collect(),
            global: Mutex::new(Bucket {
                tokens: Self::global_burst(&config),
                at_ms: 0,
            }),
        }
    }

    fn global_burst(c: &LimitConfig) -> f64 {
        (c.global_dh_per_sec / 10.0).max(1.0)
    }

    /// Takes one token for `src` and one from the global DH budget.
    pub fn allow(&self, src: IpAddr, now_ms: u64) -> Result<(), Limited> {
        let hash = self.hasher.hash_one(src) as usize;
        let c = &self.config;
        {
            let mut shard = self.shards[hash % SHARDS]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let n = shard.len();
            let slot = &mut shard[(hash / SHARDS) % n];
            if slot.source != Some(src) {
                *slot = Slot {
                    source: Some(src),
                    bucket: Bucket {
                        tokens: c.per_source_burst,
                        at_ms: now_ms,
                    },
                };
            }
            if !slot
                .bucket
                .take(now_ms, c.per_source_rate, c.per_source_burst)
            {
                return Err(Limited::Source);
            }
        }
        let mut global = self.global.lock().unwrap_or_else(|p| p.into_inner());
        if global.take(now_ms, c.global_dh_per_sec, Self::global_burst(c)) {
            Ok(())
        } else {
            Err(Limited::Global)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_bucket_refills_and_is_per_source() {
        let l = Limiter::new(LimitConfig {
            per_source_burst: 3.0,
            per_source_rate: 1.0,
            ..Default::default()
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.allow(a, 1000), Ok(()));
        }
        assert_eq!(l.allow(a, 1000), Err(Limited::Source));
        assert_eq!(l.allow(b, 1000), Ok(()), "another source is not affected");
        assert_eq!(l.allow(a, 1999), Err(Limited::Source));
        assert_eq!(l.allow(a, 2000), Ok(()), "one token per second");
    }

    #[test]
    fn global_cap_bounds_dh_per_second() {
        let l = Limiter::new(LimitConfig {
            global_dh_per_sec: 100.0,
            ..Default::default()
        });
        let allowed = (0..1000u32)
            .filter(|i| {
                l.allow(IpAddr::from([10, 0, (i >> 8) as u8, *i as u8]), 5000)
                    .is_ok()
            })
            .count();
        assert_eq!(allowed, 10, "burst is a tenth of a second's budget");
        let later = (0..1000u32)
            .filter(|i| {
                l.allow(IpAddr::from([10, 1, (i >> 8) as u8, *i as u8]), 6000)
                    .is_ok()
            })
            .count();
        assert_eq!(later, 10, "refilled, capped at the burst");
    }

    #[test]
    fn memory_is_fixed() {
        let l = Limiter::new(LimitConfig {
            source_slots: 64,
            ..Default::default()
        });
        for i in 0..100_000u32 {
            let _ = l.allow(IpAddr::from(i.to_be_bytes()), u64::from(i));
        }
        let slots: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(slots, 64);
    }
}
