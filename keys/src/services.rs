//! Service names: `ssh` → `tcp/22`, lists such as `ssh,tcp/8443`, and durations.

use std::time::Duration;

use spa_proto::Access;

use crate::error::{Error, Result};

/// Well-known service names and what they open.
pub const WELL_KNOWN: &[(&str, &str)] = &[
    ("ssh", "tcp/22"),
    ("http", "tcp/80"),
    ("https", "tcp/443"),
    ("imaps", "tcp/993"),
    ("smtp", "tcp/25"),
    ("submission", "tcp/587"),
    ("rdp", "tcp/3389"),
    ("vnc", "tcp/5900"),
    ("postgres", "tcp/5432"),
    ("mysql", "tcp/3306"),
    ("wireguard", "udp/51820"),
    ("openvpn", "udp/1194"),
];

/// `tcp/PORT`, `udp/PORT` or a well-known name.
pub fn parse_access(text: &str) -> Result<Access> {
    let text = text.trim();
    if let Some((_, spec)) = WELL_KNOWN
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(text))
    {
        return Ok(spec.parse().expect("the well-known table is valid"));
    }
    text.parse().map_err(|_| {
        Error::Usage(format!(
            "unknown service {:?}: use tcp/PORT, udp/PORT or one of: {}",
            text.chars().take(40).collect::<String>(),
            WELL_KNOWN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// A comma-separated list such as `ssh,tcp/8443` (duplicates removed, order kept).
pub fn parse_access_list(text: &str) -> Result<Vec<Access>> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let a = parse_access(part)?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        return Err(Error::Usage(
            "an empty access list opens nothing: name at least one service".into(),
        ));
    }
    Ok(out)
}

/// The well-known name of an access entry, if it has one.
pub fn name_of(access: Access) -> Option<&'static str> {
    let text = access.to_string();
    WELL_KNOWN
        .iter()
        .find(|(_, spec)| *spec == text)
        .map(|(n, _)| *n)
}

/// `30s`, `10m`, `1h`, `1h30m`: at least 1 s, at most 30 days, whole seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let d = humantime::parse_duration(text.trim()).map_err(|_| {
        Error::Usage(format!(
            "not a duration: {:?} (examples: 30s, 10m, 1h)",
            text.trim()
        ))
    })?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(30 * 86_400) || d.subsec_nanos() != 0 {
        return Err(Error::Usage(format!(
            "duration {:?} must be whole seconds between 1s and 30 days",
            text.trim()
        )));
    }
    Ok(d)
}

/// Formats seconds as `1h`, `30m`, `45s`...
pub fn format_duration(seconds: u32) -> String {
    humantime::format_duration(Duration::from_secs(u64::from(seconds))).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lists() {
        assert_eq!(parse_access("ssh").unwrap(), Access::tcp(22).unwrap());
        assert_eq!(parse_access("SSH").unwrap(), Access::tcp(22).unwrap());
        assert_eq!(
            parse_access_list("ssh,tcp/8443, ssh").unwrap(),
            vec![Access::tcp(22).unwrap(), Access::tcp(8443).unwrap()]
        );
        assert!(parse_access("gopher")
            .unwrap_err()
            .to_string()
            .contains("tcp/PORT"));
        assert!(parse_access_list(",").is_err());
        assert_eq!(name_of(Access::udp(51820).unwrap()), Some("wireguard"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        for bad in ["0s", "500ms", "31days", "soon", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(3600), "1h");
    }
}
