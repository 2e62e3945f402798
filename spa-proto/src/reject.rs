//! Every reason a knock can be refused, one variant each (PROTOCOL.md §8). The outside
//! world sees nothing; the audit log sees [`Reject::code`].

/// Why a knock was refused, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Reject {
    /// Step 1: not `KNOCK_LEN` bytes.
    #[error("datagram is not a knock's length")]
    BadLength,
    /// Step 2: unknown version or message type.
    #[error("unknown version or message type")]
    BadHeader,
    /// Step 3: mac1 does not match this server's key.
    #[error("mac1 does not match")]
    BadMac1,
    /// Step 4: per-source or global Diffie-Hellman budget exhausted (server policy).
    #[error("rate limited")]
    RateLimited,
    /// Step 5: low-order ephemeral key.
    #[error("low-order ephemeral key")]
    BadEphemeral,
    /// Step 6: the encrypted static key does not decrypt.
    #[error("encrypted static key does not decrypt")]
    BadStatic,
    /// Step 7: the static key is not provisioned.
    #[error("unknown client key")]
    UnknownKey,
    /// Step 8: message type does not match the key's psk setting.
    #[error("message type does not match the key's pre-shared key setting")]
    PskMismatch,
    /// Step 9: the payload does not decrypt.
    #[error("payload does not authenticate")]
    BadAuth,
    /// Step 10: the key is revoked.
    #[error("key revoked")]
    Revoked,
    /// Step 11: a payload field is malformed.
    #[error("malformed payload")]
    BadPayload,
    /// Step 11: padding or an unused slot is not zero.
    #[error("non-zero padding")]
    NonzeroPadding,
    /// Step 12: timestamp older than the window; `skew_ms` = timestamp − now.
    #[error("timestamp {skew_ms} ms behind the server's clock")]
    Stale {
        /// Timestamp minus server time, in milliseconds (negative).
        skew_ms: i64,
    },
    /// Step 12: timestamp newer than the window; `skew_ms` = timestamp − now.
    #[error("timestamp {skew_ms} ms ahead of the server's clock")]
    Future {
        /// Timestamp minus server time, in milliseconds (positive).
        skew_ms: i64,
    },
    /// Step 13: timestamp not newer than the last accepted for this key.
    #[error("replayed or reordered knock")]
    Replay,
    /// Step 14: the payload names another address than the source.
    #[error("address to open is not the source address")]
    AddressMismatch,
    /// Step 14: NAT mode for a user without it.
    #[error("NAT mode not allowed for this user")]
    NatNotAllowed,
    /// Step 15: aimed at an address that is not this server's.
    #[error("destination is not one of this server's addresses")]
    WrongDestination,
    /// Step 16: an access entry the user may not open.
    #[error("access not allowed for this user")]
    AccessDenied,
}

impl Reject {
    /// Every reason, in check order.
    pub const ALL: [Reject; 19] = [
        Reject::BadLength,
        Reject::BadHeader,
        Reject::BadMac1,
        Reject::RateLimited,
        Reject::BadEphemeral,
        Reject::BadStatic,
        Reject::UnknownKey,
        Reject::PskMismatch,
        Reject::BadAuth,
        Reject::Revoked,
        Reject::BadPayload,
        Reject::NonzeroPadding,
        Reject::Stale { skew_ms: 0 },
        Reject::Future { skew_ms: 0 },
        Reject::Replay,
        Reject::AddressMismatch,
        Reject::NatNotAllowed,
        Reject::WrongDestination,
        Reject::AccessDenied,
    ];

    /// The reason code used in the audit log and in PROTOCOL.md.
    pub const fn code(&self) -> &'static str {
        match self {
            Reject::BadLength => "bad_length",
            Reject::BadHeader => "bad_header",
            Reject::BadMac1 => "bad_mac1",
            Reject::RateLimited => "rate_limited",
            Reject::BadEphemeral => "bad_ephemeral",
            Reject::BadStatic => "bad_static",
            Reject::UnknownKey => "unknown_key",
            Reject::PskMismatch => "psk_mismatch",
            Reject::BadAuth => "bad_auth",
            Reject::Revoked => "revoked",
            Reject::BadPayload => "bad_payload",
            Reject::NonzeroPadding => "nonzero_padding",
            Reject::Stale { .. } => "stale",
            Reject::Future { .. } => "future",
            Reject::Replay => "replay",
            Reject::AddressMismatch => "address_mismatch",
            Reject::NatNotAllowed => "nat_not_allowed",
            Reject::WrongDestination => "wrong_destination",
            Reject::AccessDenied => "access_denied",
        }
    }

    /// Whether the sender was authenticated when this reason was found (step 10 on).
    /// Only such rejects may be attributed to a user.
    pub const fn is_authenticated(&self) -> bool {
        !matches!(
            self,
            Reject::BadLength
                | Reject::BadHeader
                | Reject::BadMac1
                | Reject::RateLimited
                | Reject::BadEphemeral
                | Reject::BadStatic
                | Reject::UnknownKey
                | Reject::PskMismatch
                | Reject::BadAuth
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_distinct_and_snake_case() {
        let codes: HashSet<_> = Reject::ALL.iter().map(Reject::code).collect();
        assert_eq!(codes.len(), Reject::ALL.len());
        for c in codes {
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
                "{c}"
            );
        }
        assert_eq!(
            Reject::ALL.iter().filter(|r| r.is_authenticated()).count(),
            10
        );
    }

    #[test]
    fn authentication_matches_the_protocol_table() {
        // §8's table: | `code` | step | yes/no | meaning |
        let doc = include_str!("../../docs/PROTOCOL.md");
        let section = doc.split("## 8. Reject reasons").nth(1).unwrap();
        let mut checked = 0;
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let cols: Vec<&str> = line.split('|').map(str::trim).collect();
            let authenticated = match cols[3] {
                "yes" => true,
                "no" => false,
                other => panic!("bad column {other:?} in {line}"),
            };
            for code in cols[1].split('/').map(|c| c.trim().trim_matches('`')) {
                let r = Reject::ALL
                    .iter()
                    .find(|r| r.code() == code)
                    .unwrap_or_else(|| panic!("{code}"));
                assert_eq!(r.is_authenticated(), authenticated, "{code}");
                checked += 1;
            }
        }
        assert_eq!(checked, Reject::ALL.len());
    }

    #[test]
    fn protocol_doc_lists_every_code() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        for r in Reject::ALL {
            assert!(
                doc.contains(&format!("`{}`", r.code())),
                "{} missing from PROTOCOL.md",
                r.code()
            );
        }
    }
}
