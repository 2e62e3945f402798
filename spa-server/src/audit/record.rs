//! One audit record: a JSON object on one line, ending in a MAC that chains it to the
//! record before (see [`super::chain`]). The MAC covers the exact bytes of the line
//! before it, so any edit, even of white space, is detected without canonicalisation.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// A port was opened.
    Granted,
    /// An open grant's timeout was renewed by a repeated knock.
    Refreshed,
    /// A grant was removed at the user's request.
    Closed,
    /// A grant's time ran out (the kernel removed it).
    Expired,
    /// A knock was refused (`reason` says why; `count` > 1 for a summary).
    Rejected,
    /// A knock was accepted but the firewall could not be changed: nothing opened. Or
    /// the firewall helper gave no answer in time, which `error` says: then the change
    /// may still be applied late, and lasts its full duration from then.
    Failed,
    /// The daemon started.
    Started,
    /// The daemon stopped cleanly.
    Stopped,
}

impl Decision {
    /// Every decision, for help text and parsing.
    pub const ALL: [Decision; 8] = [
        Decision::Granted,
        Decision::Refreshed,
        Decision::Closed,
        Decision::Expired,
        Decision::Rejected,
        Decision::Failed,
        Decision::Started,
        Decision::Stopped,
    ];

    /// The name used in the log.
    pub fn name(self) -> &'static str {
        match self {
            Decision::Granted => "granted",
            Decision::Refreshed => "refreshed",
            Decision::Closed => "closed",
            Decision::Expired => "expired",
            Decision::Rejected => "rejected",
            Decision::Failed => "failed",
            Decision::Started => "started",
            Decision::Stopped => "stopped",
        }
    }
}

impl std::str::FromStr for Decision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Decision::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Decision::ALL.iter().map(|d| d.name()).collect();
                format!("unknown decision (one of {})", names.join(", "))
            })
    }
}

/// A source address and how many rejects came from it, in a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceCount {
    /// The source address (as seen; before authentication it may be forged).
    pub src: IpAddr,
    /// Rejects from it.
    pub count: u64,
}

/// One record. Fields that do not apply are left out of the line. Field order is the
/// line's order, and `prev` comes last so the MAC can follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the chain, from 0, continuous across rotated files.
    pub seq: u64,
    /// When, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// What was decided.
    pub decision: Decision,
    /// For rejects: the protocol's reject reason code (docs/PROTOCOL.md), or a frame
    /// drop code before the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The authenticated user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The key's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The datagram's source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    /// The address opened (or that would have been).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    /// Access requested (e.g. `tcp/22`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<Vec<String>>,
    /// Access granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted: Option<Vec<String>>,
    /// Seconds requested (0: the server's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_s: Option<u32>,
    /// Seconds granted, after clamping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<u32>,
    /// When the grant ends (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// For stale/future knocks: the client's clock minus ours, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_ms: Option<i64>,
    /// For a summary: how many rejects it stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For a summary: the start of its interval (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// For a summary: the first sources seen, with counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<SourceCount>>,
    /// For a summary: rejects from sources beyond that table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_sources: Option<u64>,
    /// For a failure: what went wrong (never key material).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The previous record's MAC (hex); all zeros for the first.
    pub prev: String,
}

impl Record {
    /// An empty record of `decision` at `time`; the chain fills `seq` and `prev`.
    pub fn new(decision: Decision, time: std::time::SystemTime) -> Self {
        Self {
            seq: 0,
            time: humantime::format_rfc3339_millis(time).to_string(),
            decision,
            reason: None,
            user: None,
            key: None,
            src: None,
            addr: None,
            requested: None,
            granted: None,
            requested_s: None,
            duration_s: None,
            until: None,
            skew_ms: None,
            count: None,
            since: None,
            sources: None,
            other_sources: None,
            error: None,
            prev: String::new(),
        }
    }

    /// The record's time.
    pub fn time(&self) -> Option<std::time::SystemTime> {
        humantime::parse_rfc3339(&self.time).ok()
    }
}

/// `,"mac":"` + 64 hex digits + `"}`.
const MAC_SUFFIX_LEN: usize = 8 + 64 + 2;

/// The body a MAC covers (the record as JSON) and the line that carries both.
pub fn join(body: &str, mac: &[u8; 32]) -> String {
    debug_assert!(body.ends_with('}'));
    let mut line = String::with_capacity(body.len() + MAC_SUFFIX_LEN + 1);
    line.push_str(&body[..body.len() - 1]);
    line.push_str(",\"mac\":\"");
    line.push_str(&hex::encode(mac));
    line.push_str("\"}\n");
    line
}

/// Splits a line (without its newline) into the body the MAC covers and the MAC.
pub fn split(line: &str) -> Option<(String, [u8; 32])> {
    let cut = line.len().checked_sub(MAC_SUFFIX_LEN)?;
    let (head, tail) = (line.get(..cut)?, line.get(cut..)?);
    let hexmac = tail.strip_prefix(",\"mac\":\"")?.strip_suffix("\"}")?;
    let mut mac = [0u8; 32];
    hex::decode_to_slice(hexmac, &mut mac).ok()?;
    Some((format!("{head}}}"), mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_split_round_trip() {
        let mut r = Record::new(Decision::Granted, std::time::UNIX_EPOCH);
        r.user = Some("alice".into());
        r.prev = "00".repeat(32);
        let body = serde_json::to_string(&r).unwrap();
        let line = join(&body, &[7; 32]);
        assert!(line.ends_with("\"}\n"));
        let (b, m) = split(line.trim_end()).unwrap();
        assert_eq!((b.as_str(), m), (body.as_str(), [7; 32]));
        let back: Record = serde_json::from_str(&b).unwrap();
        assert_eq!(back, r);
        assert!(split("{}").is_none());
        assert!(split(&line.trim_end().replace("\"mac\"", "\"mak\"")).is_none());
    }
}
