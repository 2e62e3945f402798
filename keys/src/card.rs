//! The server's card: what a client needs to knock, as one line to copy:
//! `spa://spaserver1…@HOST:PORT` (IPv6 literals in brackets).

use core::fmt;
use core::str::FromStr;
use std::net::IpAddr;

use spa_proto::ServerPublic;

use crate::error::Error;
use crate::text::public_text;

/// A server's public key and where to knock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// The server's static public key.
    pub key: ServerPublic,
    /// Host name or address.
    pub host: String,
    /// The SPA port.
    pub port: u16,
}

/// A host name or IP address as a person would type it.
pub fn valid_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Splits `HOST[:PORT]` / `[V6]:PORT` / bare IPv6; the port is optional.
pub fn split_endpoint(text: &str) -> Result<(String, Option<u16>), Error> {
    let bad = || {
        Error::Usage(format!(
            "not a HOST[:PORT] endpoint: {:?} (IPv6 with a port: [2001:db8::1]:PORT)",
            text.chars().take(80).collect::<String>()
        ))
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else if text.parse::<IpAddr>().is_ok() {
        (text, None)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?),
    };
    if !valid_host(host) {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

impl fmt::Display for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = public_text(&self.key);
        if self.host.contains(':') {
            write!(f, "spa://{key}@[{}]:{}", self.host, self.port)
        } else {
            write!(f, "spa://{key}@{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Card {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        let rest = s.strip_prefix("spa://").ok_or_else(|| {
            Error::Usage("a server card starts with spa:// (get one with `spa-server card`)".into())
        })?;
        let (key, endpoint) = rest
            .split_once('@')
            .ok_or_else(|| Error::Usage("a server card is spa://KEY@HOST:PORT".into()))?;
        let key = crate::text::parse_public::<ServerPublic>(key)?;
        let (host, port) = split_endpoint(endpoint)?;
        let port = port.ok_or_else(|| Error::Usage("the server card has no port".into()))?;
        Ok(Card { key, host, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn round_trip_v4_v6_names() {
        let key = spa_proto::ServerSecret::generate(&mut OsRng).public();
        for host in ["203.0.113.1", "2001:db8::1", "spa.example.org"] {
            let card = Card {
                key,
                host: host.into(),
                port: 23456,
            };
            let text = card.to_string();
            assert!(text.starts_with("spa://spaserver1"));
            assert_eq!(text.parse::<Card>().unwrap(), card);
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            split_endpoint("h.example:22").unwrap(),
            ("h.example".into(), Some(22))
        );
        assert_eq!(
            split_endpoint("[2001:db8::1]:22").unwrap(),
            ("2001:db8::1".into(), Some(22))
        );
        assert_eq!(
            split_endpoint("2001:db8::1").unwrap(),
            ("2001:db8::1".into(), None)
        );
        assert_eq!(split_endpoint("h").unwrap(), ("h".into(), None));
        for bad in [
            "",
            "h:0",
            "h:x",
            "[::1",
            "bad host",
            "-h",
            "h:70000",
            "a;rm -rf /",
        ] {
            assert!(split_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_cards() {
        assert!("spaserver1abc@h:1".parse::<Card>().is_err());
        let key = spa_proto::ServerSecret::generate(&mut OsRng).public();
        let good = Card {
            key,
            host: "h".into(),
            port: 1,
        }
        .to_string();
        assert!(good.replace(":1", "").parse::<Card>().is_err());
        assert!(good
            .replace("spaserver1", "spaclient1")
            .parse::<Card>()
            .is_err());
    }
}
