//! The request a knock carries, and its 128-byte encoding (PROTOCOL.md §4).

use core::fmt;
use core::str::FromStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::reject::Reject;

/// Length of the plaintext payload.
pub const PAYLOAD_LEN: usize = 128;
/// At most this many access entries per knock.
pub const MAX_ACCESS: usize = 4;

mod offset {
    pub const FLAGS: usize = 0;
    pub const TIMESTAMP: usize = 1;
    pub const KNOCK_ID: usize = 9;
    pub const OPEN_KIND: usize = 25;
    pub const OPEN_ADDR: usize = 26;
    pub const DEST_KIND: usize = 42;
    pub const DEST_ADDR: usize = 43;
    pub const DURATION: usize = 59;
    pub const COUNT: usize = 63;
    pub const SLOTS: usize = 64;
    pub const SLOT_LEN: usize = 3;
    pub const PADDING: usize = 76;
}

const FLAG_CLOSE: u8 = 0x01;
const KIND_FROM_PACKET: u8 = 0;
const KIND_V4: u8 = 4;
const KIND_V6: u8 = 6;

/// Transport protocol of an access entry (IANA protocol numbers on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
}

impl Proto {
    /// The IANA protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
    /// The protocol with this IANA number, if supported.
    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// One `protocol/port` a knock asks to open, e.g. `tcp/22`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Access {
    proto: Proto,
    port: u16,
}

/// A request that cannot be encoded, or access text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Port 0 cannot be opened.
    #[error("port 0 is not a valid port")]
    PortZero,
    /// Between 1 and 4 access entries are required.
    #[error("a knock carries 1 to {MAX_ACCESS} access entries, not {0}")]
    AccessCount(usize),
    /// The same entry twice.
    #[error("access entry {0} is listed twice")]
    Duplicate(Access),
    /// Not of the form `tcp/PORT` or `udp/PORT`.
    #[error("expected tcp/PORT or udp/PORT (PORT 1-65535), got {0:?}")]
    Syntax(String),
}

impl Access {
    /// An access entry; port 0 is refused.
    pub const fn new(proto: Proto, port: u16) -> Result<Self, RequestError> {
        if port == 0 {
            return Err(RequestError::PortZero);
        }
        Ok(Self { proto, port })
    }
    /// `tcp/PORT`.
    pub const fn tcp(port: u16) -> Result<Self, RequestError> {
        Self::new(Proto::Tcp, port)
    }
    /// `udp/PORT`.
    pub const fn udp(port: u16) -> Result<Self, RequestError> {
        Self::new(Proto::Udp, port)
    }
    /// The protocol.
    pub const fn proto(self) -> Proto {
        self.proto
    }
    /// The port (never 0).
    pub const fn port(self) -> u16 {
        self.port
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{proto}/{}", self.port)
    }
}

impl FromStr for Access {
    type Err = RequestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || RequestError::Syntax(s.chars().take(40).collect());
        let (proto, port) = s.split_once('/').ok_or_else(syntax)?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            _ => return Err(syntax()),
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let port: u16 = port.parse().map_err(|_| syntax())?;
        Access::new(proto, port)
    }
}

/// Which address the server should open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAddr {
    /// This address, which must be the knock's source address.
    Ip(IpAddr),
    /// NAT mode: whatever address the knock arrives from.
    FromPacket,
}

/// Open a grant, or close it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open (or refresh) the grant.
    Open,
    /// Remove the grant at once.
    Close,
}

/// What a client asks for. Always valid: 1 to 4 distinct access entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    action: Action,
    open: OpenAddr,
    destination: IpAddr,
    access: [Access; MAX_ACCESS],
    count: u8,
    duration_s: u32,
}

impl Request {
    /// A request; `duration_s` of 0 asks for the server's default.
    pub fn new(
        action: Action,
        open: OpenAddr,
        destination: IpAddr,
        access: &[Access],
        duration_s: u32,
    ) -> Result<Self, RequestError> {
        if access.is_empty() || access.len() > MAX_ACCESS {
            return Err(RequestError::AccessCount(access.len()));
        }
        for (i, a) in access.iter().enumerate() {
            if access[..i].contains(a) {
                return Err(RequestError::Duplicate(*a));
            }
        }
        let mut slots = [access[0]; MAX_ACCESS];
        slots[..access.len()].copy_from_slice(access);
        Ok(Self {
            action,
            open,
            destination,
            access: slots,
            count: access.len() as u8,
            duration_s,
        })
    }
    /// Open or close.
    pub const fn action(&self) -> Action {
        self.action
    }
    /// The address to open.
    pub const fn open_addr(&self) -> OpenAddr {
        self.open
    }
    /// The server address the client aimed at.
    pub const fn destination(&self) -> IpAddr {
        self.destination
    }
    /// The access entries (1 to 4, distinct).
    pub fn access(&self) -> &[Access] {
        &self.access[..usize::from(self.count)]
    }
    /// Requested seconds; 0 = the server's default.
    pub const fn duration_s(&self) -> u32 {
        self.duration_s
    }
}

/// A decoded payload: the request plus the fields that make each knock unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    /// What is asked for.
    pub request: Request,
    /// Client time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Random identifier of this knock.
    pub knock_id: [u8; 16],
}

fn put_addr(buf: &mut [u8], kind_at: usize, addr_at: usize, addr: Option<IpAddr>) {
    match addr {
        None => buf[kind_at] = KIND_FROM_PACKET,
        Some(IpAddr::V4(a)) => {
            buf[kind_at] = KIND_V4;
            buf[addr_at..addr_at + 4].copy_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            buf[kind_at] = KIND_V6;
            buf[addr_at..addr_at + 16].copy_from_slice(&a.octets());
        }
    }
}

/// Decodes an address field; `Ok(None)` is kind 0 (only where `allow_from_packet`).
fn get_addr(
    buf: &[u8; PAYLOAD_LEN],
    kind_at: usize,
    addr_at: usize,
    allow_from_packet: bool,
) -> Result<Option<IpAddr>, Reject> {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&buf[addr_at..addr_at + 16]);
    match buf[kind_at] {
        KIND_FROM_PACKET if allow_from_packet && bytes == [0; 16] => Ok(None),
        KIND_V4 if bytes[4..] == [0; 12] => Ok(Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        )))),
        KIND_V6 => Ok(Some(IpAddr::V6(Ipv6Addr::from(bytes)))),
        _ => Err(Reject::BadPayload),
    }
}

impl Payload {
    /// The 128-byte plaintext.
    pub fn encode(&self) -> [u8; PAYLOAD_LEN] {
        use offset::*;
        let r = &self.request;
        let mut buf = [0u8; PAYLOAD_LEN];
        buf[FLAGS] = match r.action {
            Action::Open => 0,
            Action::Close => FLAG_CLOSE,
        };
        buf[TIMESTAMP..TIMESTAMP + 8].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        buf[KNOCK_ID..KNOCK_ID + 16].copy_from_slice(&self.knock_id);
        let open = match r.open {
            OpenAddr::Ip(ip) => Some(ip),
            OpenAddr::FromPacket => None,
        };
        put_addr(&mut buf, OPEN_KIND, OPEN_ADDR, open);
        put_addr(&mut buf, DEST_KIND, DEST_ADDR, Some(r.destination));
        buf[DURATION..DURATION + 4].copy_from_slice(&r.duration_s.to_be_bytes());
        buf[COUNT] = r.count;
        for (i, a) in r.access().iter().enumerate() {
            let at = SLOTS + i * SLOT_LEN;
            buf[at] = a.proto.number();
            buf[at + 1..at + 3].copy_from_slice(&a.port.to_be_bytes());
        }
        buf
    }

    /// Parses the plaintext (PROTOCOL.md §4, step 11 of §6).
    pub fn decode(buf: &[u8; PAYLOAD_LEN]) -> Result<Self, Reject> {
        use offset::*;
        let action = match buf[FLAGS] {
            0 => Action::Open,
            FLAG_CLOSE => Action::Close,
            _ => return Err(Reject::BadPayload),
        };
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&buf[TIMESTAMP..TIMESTAMP + 8]);
        let mut knock_id = [0u8; 16];
        knock_id.copy_from_slice(&buf[KNOCK_ID..KNOCK_ID + 16]);
        let open = match get_addr(buf, OPEN_KIND, OPEN_ADDR, true)? {
            Some(ip) => OpenAddr::Ip(ip),
            None => OpenAddr::FromPacket,
        };
        let destination = get_addr(buf, DEST_KIND, DEST_ADDR, false)?.ok_or(Reject::BadPayload)?;
        let mut duration = [0u8; 4];
        duration.copy_from_slice(&buf[DURATION..DURATION + 4]);
        let count = usize::from(buf[COUNT]);
        if count == 0 || count > MAX_ACCESS {
            return Err(Reject::BadPayload);
        }
        let mut access = [Access {
            proto: Proto::Tcp,
            port: 1,
        }; MAX_ACCESS];
        for (i, slot) in buf[SLOTS..PADDING].chunks_exact(SLOT_LEN).enumerate() {
            if i >= count {
                if slot != [0; SLOT_LEN] {
                    return Err(Reject::NonzeroPadding);
                }
                continue;
            }
            let proto = Proto::from_number(slot[0]).ok_or(Reject::BadPayload)?;
            let port = u16::from_be_bytes([slot[1], slot[2]]);
            let entry = Access::new(proto, port).map_err(|_| Reject::BadPayload)?;
            if access[..i].contains(&entry) {
                return Err(Reject::BadPayload);
            }
            access[i] = entry;
        }
        if buf[PADDING..].iter().any(|&b| b != 0) {
            return Err(Reject::NonzeroPadding);
        }
        let request = Request::new(
            action,
            open,
            destination,
            &access[..count],
            u32::from_be_bytes(duration),
        )
        .map_err(|_| Reject::BadPayload)?;
        Ok(Self {
            request,
            timestamp_ms: u64::from_be_bytes(ts),
            knock_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Payload {
        let request = Request::new(
            Action::Open,
            OpenAddr::Ip("192.0.2.7".parse().unwrap()),
            "2001:db8::1".parse().unwrap(),
            &[Access::tcp(22).unwrap(), Access::udp(51820).unwrap()],
            3600,
        )
        .unwrap();
        Payload {
            request,
            timestamp_ms: 0x0102_0304_0506_0708,
            knock_id: [0xab; 16],
        }
    }

    #[test]
    fn layout_is_as_specified() {
        let buf = sample().encode();
        assert_eq!(buf[0], 0);
        assert_eq!(&buf[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&buf[9..25], &[0xab; 16]);
        assert_eq!(buf[25], 4);
        assert_eq!(&buf[26..30], &[192, 0, 2, 7]);
        assert_eq!(&buf[30..42], &[0; 12]);
        assert_eq!(buf[42], 6);
        assert_eq!(&buf[43..45], &[0x20, 0x01]);
        assert_eq!(&buf[59..63], &3600u32.to_be_bytes());
        assert_eq!(buf[63], 2);
        assert_eq!(&buf[64..70], &[6, 0, 22, 17, 0xca, 0x6c]);
        assert!(buf[70..].iter().all(|&b| b == 0));
        assert_eq!(Payload::decode(&buf), Ok(sample()));
    }

    #[test]
    fn access_text() {
        assert_eq!(
            "tcp/22".parse::<Access>().unwrap(),
            Access::tcp(22).unwrap()
        );
        assert_eq!("UDP/53".parse::<Access>().unwrap().to_string(), "udp/53");
        for bad in [
            "tcp/0",
            "tcp/65536",
            "tcp/",
            "icmp/1",
            "22",
            "tcp/+22",
            "tcp/2 2",
        ] {
            assert!(bad.parse::<Access>().is_err(), "{bad}");
        }
    }

    #[test]
    fn request_validation() {
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Access::tcp(22).unwrap();
        let open = OpenAddr::FromPacket;
        assert!(Request::new(Action::Open, open, ip, &[], 0).is_err());
        assert!(Request::new(Action::Open, open, ip, &[t, t], 0).is_err());
        let five: Vec<Access> = (1..=5).map(|p| Access::tcp(p).unwrap()).collect();
        assert!(Request::new(Action::Open, open, ip, &five, 0).is_err());
        assert!(Request::new(Action::Open, open, ip, &five[..4], 0).is_ok());
    }

    #[test]
    fn each_malformation_is_named() {
        let good = sample().encode();
        let cases: &[(usize, u8, Reject)] = &[
            (0, 2, Reject::BadPayload),       // unknown flag
            (25, 5, Reject::BadPayload),      // unknown open kind
            (30, 1, Reject::BadPayload),      // IPv4 with trailing bytes
            (42, 0, Reject::BadPayload),      // destination "from packet"
            (63, 0, Reject::BadPayload),      // no access
            (63, 5, Reject::BadPayload),      // too many
            (64, 1, Reject::BadPayload),      // unknown proto
            (70, 6, Reject::NonzeroPadding),  // unused slot
            (127, 1, Reject::NonzeroPadding), // padding
            (0, 3, Reject::BadPayload),       // close plus an unknown flag
            (0, 0x81, Reject::BadPayload),    // high flag bit
            (42, 5, Reject::BadPayload),      // unknown destination kind
            (72, 1, Reject::NonzeroPadding),  // unused slot 2, port byte
            (73, 1, Reject::NonzeroPadding),  // unused slot 3
        ];
        for &(at, value, want) in cases {
            let mut buf = good;
            buf[at] = value;
            assert_eq!(Payload::decode(&buf), Err(want), "byte {at} = {value}");
        }
        let mut port_zero = good;
        port_zero[65..67].copy_from_slice(&[0, 0]);
        assert_eq!(Payload::decode(&port_zero), Err(Reject::BadPayload));
        let mut dup = good;
        dup[67..70].copy_from_slice(&[6, 0, 22]);
        assert_eq!(Payload::decode(&dup), Err(Reject::BadPayload));
        let mut dest_v4_tail = good;
        dest_v4_tail[42] = 4;
        dest_v4_tail[50] = 1;
        assert_eq!(Payload::decode(&dest_v4_tail), Err(Reject::BadPayload));
        let mut nat_with_addr = good;
        nat_with_addr[25] = 0;
        assert_eq!(Payload::decode(&nat_with_addr), Err(Reject::BadPayload));
    }
}
