//! Summaries of rejects that must not grow the log with an attacker's packet rate.
//!
//! Before authentication a source address can be forged and a flood costs the sender
//! nothing, so those rejects are only counted: per reason, with the first
//! [`MAX_SOURCES`] sources and their counts, and one summary record per reason and
//! interval. Each capture thread counts into its own [`Tally`] (no lock on the junk
//! path) and merges it into the shared one about once a second.

use std::net::IpAddr;

use spa_proto::KeyId;

use super::record::{Decision, Record, SourceCount};

/// Sources listed per summary; more are only counted.
pub const MAX_SOURCES: usize = 8;

/// Who an authenticated summary is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The user.
    pub user: String,
    /// The key.
    pub key: KeyId,
}

#[derive(Debug, Clone)]
struct Entry {
    reason: &'static str,
    who: Option<Who>,
    count: u64,
    sources: Vec<SourceCount>,
    other_sources: u64,
}

impl Entry {
    fn add_source(&mut self, src: IpAddr, n: u64) {
        if let Some(s) = self.sources.iter_mut().find(|s| s.src == src) {
            s.count += n;
        } else if self.sources.len() < MAX_SOURCES {
            self.sources.push(SourceCount { src, count: n });
        } else {
            self.other_sources += n;
        }
    }
}

/// Counts per reason (and per key, for authenticated rejects beyond the per-key limit).
/// Its size is bounded by the number of reasons and keys, never by the packet count.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    entries: Vec<Entry>,
}

impl Tally {
    /// Counts one reject (`src` is `None` for a frame too broken to have one).
    pub fn add(&mut self, reason: &'static str, who: Option<&Who>, src: Option<IpAddr>) {
        self.add_n(reason, who, src, 1);
    }

    /// Counts `n` rejects of one kind at once.
    pub fn add_n(&mut self, reason: &'static str, who: Option<&Who>, src: Option<IpAddr>, n: u64) {
        let e = match self
            .entries
            .iter_mut()
            .position(|e| e.reason == reason && e.who.as_ref() == who)
        {
            Some(i) => &mut self.entries[i],
            None => {
                self.entries.push(Entry {
                    reason,
                    who: who.cloned(),
                    count: 0,
                    sources: Vec::new(),
                    other_sources: 0,
                });
                self.entries.last_mut().expect("just pushed")
            }
        };
        e.count += n;
        if let Some(src) = src {
            e.add_source(src, n);
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Moves everything counted here into `into`.
    pub fn merge_into(&mut self, into: &mut Tally) {
        for e in self.entries.drain(..) {
            match into
                .entries
                .iter_mut()
                .find(|x| x.reason == e.reason && x.who == e.who)
            {
                Some(x) => {
                    x.count += e.count;
                    x.other_sources += e.other_sources;
                    for s in e.sources {
                        x.add_source(s.src, s.count);
                    }
                }
                None => into.entries.push(e),
            }
        }
    }

    /// The summary records for an interval that began at `since`, emptying the tally.
    pub fn drain_records(
        &mut self,
        since: std::time::SystemTime,
        now: std::time::SystemTime,
    ) -> Vec<Record> {
        let since = humantime::format_rfc3339_millis(since).to_string();
        self.entries
            .drain(..)
            .map(|e| {
                let mut r = Record::new(Decision::Rejected, now);
                r.reason = Some(e.reason.to_owned());
                if let Some(w) = e.who {
                    r.user = Some(w.user);
                    r.key = Some(w.key.to_string());
                }
                r.count = Some(e.count);
                r.since = Some(since.clone());
                r.sources = Some(e.sources);
                r.other_sources = (e.other_sources > 0).then_some(e.other_sources);
                r
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_from_many_sources_stays_one_bounded_record_per_reason() {
        let mut local = Tally::default();
        for i in 0..100_000u32 {
            let src = IpAddr::from((i | 0x0a00_0000).to_be_bytes());
            local.add("bad_mac1", None, Some(src));
            if i % 10 == 0 {
                local.add("short", None, None);
            }
        }
        let mut shared = Tally::default();
        local.merge_into(&mut shared);
        assert!(local.is_empty());
        let recs = shared.drain_records(std::time::UNIX_EPOCH, std::time::UNIX_EPOCH);
        assert_eq!(recs.len(), 2);
        let mac1 = recs
            .iter()
            .find(|r| r.reason.as_deref() == Some("bad_mac1"))
            .unwrap();
        assert_eq!(mac1.count, Some(100_000));
        assert_eq!(mac1.sources.as_ref().unwrap().len(), MAX_SOURCES);
        assert_eq!(mac1.other_sources, Some(100_000 - MAX_SOURCES as u64));
        assert!(shared.is_empty());
    }

    #[test]
    fn merging_adds_counts_for_the_same_source() {
        let src: IpAddr = "192.0.2.7".parse().unwrap();
        let (mut a, mut b, mut shared) = (Tally::default(), Tally::default(), Tally::default());
        a.add("rate_limited", None, Some(src));
        b.add("rate_limited", None, Some(src));
        b.add("rate_limited", None, Some(src));
        a.merge_into(&mut shared);
        b.merge_into(&mut shared);
        let r = shared.drain_records(std::time::UNIX_EPOCH, std::time::UNIX_EPOCH);
        assert_eq!(r[0].count, Some(3));
        assert_eq!(r[0].sources, Some(vec![SourceCount { src, count: 3 }]));
    }
}
