//! nfnetlink messages for our grant sets, built and parsed byte by byte. Pure functions:
//! no socket here, so every byte is unit-tested against what `nft` 1.0.6 sends.
//!
//! Layout (host byte order for netlink headers and attribute headers, network byte order
//! inside `nfgenmsg.res_id` and attribute payloads):
//!
//! ```text
//! nlmsghdr   len u32 | type u16 = subsys << 8 | msg | flags u16 | seq u32 | pid u32
//! nfgenmsg   family u8 | version u8 = 0 | res_id be16
//! attribute  len u16 | type u16 (| NLA_F_NESTED) | payload, padded to 4 bytes
//! ```
//!
//! A set element message is `TABLE`, `SET`, then a nested `ELEMENTS` list of nested
//! `LIST_ELEM`s, each with an optional `TIMEOUT` (milliseconds, be64) and a nested `KEY`
//! holding one `DATA_VALUE`: the concatenated key, each field in 4-byte registers.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use spa_proto::{Access, Proto};

use super::{Change, SET4, SET6};

pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
/// In an error reply's flags: the echoed request is capped to its header.
const NLM_F_CAPPED: u16 = 0x100;
/// In an error reply's flags: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

pub(super) const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub(super) const NFNL_MSG_BATCH_BEGIN: u16 = 16;
pub(super) const NFNL_MSG_BATCH_END: u16 = 17;
pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(super) const NFT_MSG_GETSETELEM: u16 = 13;
pub(super) const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_EXPIRATION: u16 = 5;
const NFTA_DATA_VALUE: u16 = 1;

/// Elements per message: a nested attribute's length is a u16, and an IPv6 element with
/// a timeout takes 52 bytes, so 256 elements (13 KiB) stay far below 64 KiB.
pub(super) const ELEMS_PER_MSG: usize = 256;
/// Distinct elements per transaction. Each costs three entries (ensure, delete, add), at
/// most 132 bytes for IPv6; 1024 of them stay below the 208 KiB default netlink send
/// buffer (`net.core.wmem_default`), over which the kernel refuses the whole send.
pub(super) const ELEMS_PER_TXN: usize = 1024;

/// The set key of `addr . proto . port`, as nft lays it out: the address (4 or 16 bytes),
/// the protocol number in a 4-byte register, the port big-endian in a 4-byte register.
pub(super) fn element_key(addr: IpAddr, access: Access) -> Vec<u8> {
    let mut key = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    key.extend_from_slice(&[access.proto().number(), 0, 0, 0]);
    key.extend_from_slice(&access.port().to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

/// The inverse of [`element_key`]; `None` for a key spa never writes (another length, a
/// protocol other than TCP or UDP, port 0, non-zero padding).
pub(super) fn decode_key(key: &[u8]) -> Option<(IpAddr, Access)> {
    let (addr, rest): (IpAddr, &[u8]) = match key.len() {
        12 => {
            let a: [u8; 4] = key[..4].try_into().ok()?;
            (Ipv4Addr::from(a).into(), &key[4..])
        }
        28 => {
            let a: [u8; 16] = key[..16].try_into().ok()?;
            (Ipv6Addr::from(a).into(), &key[16..])
        }
        _ => return None,
    };
    if rest[1..4] != [0, 0, 0] || rest[6..8] != [0, 0] {
        return None;
    }
    let proto = Proto::from_number(rest[0])?;
    let port = u16::from_be_bytes([rest[4], rest[5]]);
    Some((addr, Access::new(proto, port).ok()?))
}

/// The set that holds grants for `addr`.
pub(super) fn set_for(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => SET4,
        IpAddr::V6(_) => SET6,
    }
}

/// A grant's timeout in whole milliseconds, rounded up (a sub-millisecond timeout must not
/// become 0, which the kernel reads as "no timeout": open forever).
pub(super) fn timeout_ms(timeout: Duration) -> io::Result<u64> {
    if timeout.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a grant needs a timeout above zero",
        ));
    }
    let ms = timeout.as_nanos().div_ceil(1_000_000);
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Appends one netlink message to a buffer; attributes and nests are written in place.
struct Msg<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    nests: Vec<usize>,
}

impl<'a> Msg<'a> {
    fn new(out: &'a mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let start = out.len();
        out.extend_from_slice(&0u32.to_ne_bytes()); // length, written by `finish`
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes()); // port id 0: the kernel
        out.extend_from_slice(&[family, 0]);
        out.extend_from_slice(&res_id.to_be_bytes());
        Self {
            out,
            start,
            nests: Vec::new(),
        }
    }

    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).expect("attribute under 64 KiB");
        self.out.extend_from_slice(&len.to_ne_bytes());
        self.out.extend_from_slice(&kind.to_ne_bytes());
        self.out.extend_from_slice(data);
        self.out.resize(self.out.len().next_multiple_of(4), 0);
    }

    fn attr_str(&mut self, kind: u16, s: &str) {
        self.attr(kind, &[s.as_bytes(), &[0]].concat());
    }

    fn begin(&mut self, kind: u16) {
        self.nests.push(self.out.len());
        self.out.extend_from_slice(&[0, 0]);
        self.out
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn end(&mut self) {
        let at = self.nests.pop().expect("balanced nests");
        let len = u16::try_from(self.out.len() - at).expect("nest under 64 KiB");
        self.out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(self) {
        debug_assert!(self.nests.is_empty());
        let len = u32::try_from(self.out.len() - self.start).expect("message under 4 GiB");
        self.out[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// NFNL_MSG_BATCH_BEGIN or _END: opens or commits one nf_tables transaction.
pub(super) fn batch_marker(out: &mut Vec<u8>, kind: u16, seq: u32) {
    Msg::new(
        out,
        kind,
        NLM_F_REQUEST,
        seq,
        NFPROTO_UNSPEC,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish();
}

/// One NEWSETELEM or DELSETELEM message for `elems` (key, optional timeout in ms).
/// NEWSETELEM carries NLM_F_CREATE without NLM_F_EXCL: an existing element is no error.
pub(super) fn setelem(
    out: &mut Vec<u8>,
    msg: u16,
    seq: u32,
    table: &str,
    set: &str,
    elems: &[(&[u8], Option<u64>)],
) {
    let create = if msg == NFT_MSG_NEWSETELEM {
        NLM_F_CREATE
    } else {
        0
    };
    let mut m = Msg::new(
        out,
        (NFNL_SUBSYS_NFTABLES << 8) | msg,
        NLM_F_REQUEST | NLM_F_ACK | create,
        seq,
        NFPROTO_INET,
        0,
    );
    m.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
    m.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    m.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
    for (key, timeout) in elems {
        m.begin(NFTA_LIST_ELEM);
        if let Some(ms) = timeout {
            m.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        m.begin(NFTA_SET_ELEM_KEY);
        m.attr(NFTA_DATA_VALUE, key);
        m.end();
        m.end();
    }
    m.end();
    m.finish();
}

/// A GETSETELEM dump request for one set.
pub(super) fn dump_request(table: &str, set: &str, seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut m = Msg::new(
        &mut out,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_INET,
        0,
    );
    m.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
    m.attr_str(NFTA_SET_ELEM_LIST_SET, set);
    m.finish();
    out
}

/// One nf_tables transaction, ready to send.
#[derive(Debug)]
pub(super) struct Transaction {
    /// BATCH_BEGIN, the set element messages, BATCH_END.
    pub bytes: Vec<u8>,
    /// Sequence number of BATCH_BEGIN; the element messages follow it, then BATCH_END.
    pub first_seq: u32,
    /// What each element message does, in order (`first_seq + 1 + i`), for error text.
    pub messages: Vec<&'static str>,
}

impl Transaction {
    /// Which message (index into `messages`) a reply's sequence number answers, if any:
    /// `Some(None)` for the batch markers, `None` for a number outside this transaction.
    pub fn message_of(&self, seq: u32) -> Option<Option<usize>> {
        let offset = usize::try_from(seq.wrapping_sub(self.first_seq)).ok()?;
        match offset {
            0 => Some(None),
            o if o <= self.messages.len() => Some(Some(o - 1)),
            o if o == self.messages.len() + 1 => Some(None),
            _ => None,
        }
    }
}

/// Turns `changes` into transactions; `seq` is the next free sequence number.
///
/// The last change to an element wins (a grant then a revoke of the same element revokes
/// it). Per set and transaction the messages are: NEWSETELEM of every touched element
/// without a timeout (ensures it exists), DELSETELEM of all of them, NEWSETELEM of the
/// granted ones with their timeouts. Committed together, this refreshes the timeout of an
/// existing element on every kernel (before Linux 6.12 re-adding an element leaves its
/// timeout alone), never duplicates one, and never fails on revoking a missing one. An
/// element's three steps always share a transaction; more than [`ELEMS_PER_TXN`] distinct
/// elements are split over several transactions.
pub(super) fn transactions(
    table: &str,
    changes: &[Change],
    seq: &mut u32,
) -> io::Result<Vec<Transaction>> {
    let mut last: BTreeMap<(IpAddr, Access), Option<u64>> = BTreeMap::new();
    for change in changes {
        match *change {
            Change::Grant {
                addr,
                access,
                timeout,
            } => last.insert((addr, access), Some(timeout_ms(timeout)?)),
            Change::Revoke { addr, access } => last.insert((addr, access), None),
        };
    }
    // BTreeMap order puts every IPv4 address before every IPv6 one.
    let elems: Vec<(&'static str, Vec<u8>, Option<u64>)> = last
        .into_iter()
        .map(|((addr, access), t)| (set_for(addr), element_key(addr, access), t))
        .collect();
    let mut txns = Vec::new();
    for part in elems.chunks(ELEMS_PER_TXN) {
        let mut bytes = Vec::with_capacity(part.len() * 132 + 64);
        let first_seq = *seq;
        let mut messages = Vec::new();
        batch_marker(&mut bytes, NFNL_MSG_BATCH_BEGIN, first_seq);
        for set in [SET4, SET6] {
            let all: Vec<(&[u8], Option<u64>)> = part
                .iter()
                .filter(|e| e.0 == set)
                .map(|e| (&e.1[..], None))
                .collect();
            let grants: Vec<(&[u8], Option<u64>)> = part
                .iter()
                .filter(|e| e.0 == set && e.2.is_some())
                .map(|e| (&e.1[..], e.2))
                .collect();
            for (msg, list, what) in [
                (NFT_MSG_NEWSETELEM, &all, "ensure elements exist"),
                (NFT_MSG_DELSETELEM, &all, "delete elements"),
                (NFT_MSG_NEWSETELEM, &grants, "add elements with timeouts"),
            ] {
                for chunk in list.chunks(ELEMS_PER_MSG) {
                    messages.push(what);
                    let s = first_seq.wrapping_add(messages.len() as u32);
                    setelem(&mut bytes, msg, s, table, set, chunk);
                }
            }
        }
        let end = first_seq.wrapping_add(messages.len() as u32 + 1);
        batch_marker(&mut bytes, NFNL_MSG_BATCH_END, end);
        *seq = end.wrapping_add(1);
        txns.push(Transaction {
            bytes,
            first_seq,
            messages,
        });
    }
    Ok(txns)
}

/// One netlink message received from the kernel.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply<'a> {
    /// NLMSG_ERROR with code 0: the request `seq` succeeded.
    Ack { seq: u32 },
    /// NLMSG_ERROR with a code: the request `seq` failed with `errno`; `text` is the
    /// kernel's extended-ack message, if it sent one.
    Error {
        seq: u32,
        errno: i32,
        text: Option<String>,
    },
    /// NLMSG_DONE: the end of a dump; `errno` is 0 unless the dump failed.
    Done { seq: u32, errno: i32 },
    /// Anything else (dump data): its type, sequence number and payload after nlmsghdr.
    Data {
        kind: u16,
        seq: u32,
        payload: &'a [u8],
    },
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed netlink reply: {what}"),
    )
}

fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn ne_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Splits one received datagram into messages. Never panics; a length that does not fit
/// is an `InvalidData` error.
pub(super) fn parse_replies(buf: &[u8]) -> io::Result<Vec<Reply<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let len = ne_u32(buf, at).ok_or_else(|| malformed("truncated header"))? as usize;
        if len < NLMSG_HDRLEN || len > buf.len() - at {
            return Err(malformed("message length out of bounds"));
        }
        let msg = &buf[at..at + len];
        let kind = ne_u16(msg, 4).ok_or_else(|| malformed("truncated header"))?;
        let flags = ne_u16(msg, 6).ok_or_else(|| malformed("truncated header"))?;
        let seq = ne_u32(msg, 8).ok_or_else(|| malformed("truncated header"))?;
        let payload = &msg[NLMSG_HDRLEN..];
        out.push(match kind {
            NLMSG_ERROR => {
                let errno = ne_i32(payload, 0).ok_or_else(|| malformed("short error"))?;
                // The error is about the request whose header is echoed after the code.
                let req_seq = ne_u32(payload, 4 + 8).ok_or_else(|| malformed("short error"))?;
                if errno == 0 {
                    Reply::Ack { seq: req_seq }
                } else {
                    Reply::Error {
                        seq: req_seq,
                        errno: errno.saturating_neg(),
                        text: ack_text(payload, flags),
                    }
                }
            }
            NLMSG_DONE => Reply::Done {
                seq,
                errno: ne_i32(payload, 0).unwrap_or(0).saturating_neg(),
            },
            _ => Reply::Data { kind, seq, payload },
        });
        at += len.next_multiple_of(4).min(buf.len() - at);
    }
    Ok(out)
}

/// The extended-ack message of an error reply (`NLMSGERR_ATTR_MSG`), if present.
fn ack_text(payload: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // errno, then the request: its header only when capped, else all of it.
    let echoed = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        (ne_u32(payload, 4)? as usize).next_multiple_of(4)
    };
    let tlvs = payload.get(4 + echoed..)?;
    let (_, text) = attrs(tlvs)
        .ok()?
        .into_iter()
        .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)?;
    let text = text.split(|&b| b == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(text).into_owned())
}

/// The attributes in `buf`: (type without flags, payload).
pub(super) fn attrs(mut buf: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = ne_u16(buf, 0).ok_or_else(|| malformed("attribute"))? as usize;
        let kind = ne_u16(buf, 2).ok_or_else(|| malformed("attribute"))? & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(malformed("attribute length out of bounds"));
        }
        out.push((kind, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

fn attr<'a>(list: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    list.iter().find(|(t, _)| *t == kind).map(|(_, v)| *v)
}

/// The elements in one set element message's payload (after nlmsghdr): for each, its key
/// and the milliseconds until it expires (`None`: no timeout).
pub(super) fn parse_elements(payload: &[u8]) -> io::Result<Vec<(Vec<u8>, Option<u64>)>> {
    let top = attrs(payload.get(4..).ok_or_else(|| malformed("no nfgenmsg"))?)?;
    let Some(list) = attr(&top, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (kind, elem) in attrs(list)? {
        if kind != NFTA_LIST_ELEM {
            continue;
        }
        let fields = attrs(elem)?;
        let key = attr(&fields, NFTA_SET_ELEM_KEY)
            .map(attrs)
            .transpose()?
            .and_then(|k| attr(&k, NFTA_DATA_VALUE))
            .ok_or_else(|| malformed("set element without a key"))?;
        let expires = match attr(&fields, NFTA_SET_ELEM_EXPIRATION) {
            Some(b) => Some(u64::from_be_bytes(
                b.try_into().map_err(|_| malformed("expiration"))?,
            )),
            None => None,
        };
        out.push((key.to_vec(), expires));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A netlink header in host byte order, as the kernel and nft write it.
    fn header(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        [
            &len.to_ne_bytes()[..],
            &kind.to_ne_bytes(),
            &flags.to_ne_bytes(),
            &seq.to_ne_bytes(),
            &0u32.to_ne_bytes(),
        ]
        .concat()
    }

    // `strace -e sendmsg -xx nft add element inet spa grants4 '{ 10.0.0.1 . tcp . 22
    // timeout 30s }'` (nft 1.0.6): the NEWSETELEM's attributes. nft also sends
    // NFTA_SET_ELEM_LIST_SET_ID (`08 00 04 00 00 00 00 01`) between SET and ELEMENTS,
    // which only names a set created in the same transaction; we leave it out.
    const NFT_ADD_V4: &str = "08 00 01 00 73 70 61 00  0c 00 02 00 67 72 61 6e 74 73 34 00
        28 00 03 80 24 00 01 80 0c 00 04 00 00 00 00 00 00 00 75 30
        14 00 01 80 10 00 01 00 0a 00 00 01 06 00 00 00 00 16 00 00";
    // `nft delete element inet spa grants4 '{ 10.0.0.1 . tcp . 22 }'`, same caveat.
    const NFT_DEL_V4: &str = "08 00 01 00 73 70 61 00  0c 00 02 00 67 72 61 6e 74 73 34 00
        1c 00 03 80 18 00 01 80 14 00 01 80 10 00 01 00 0a 00 00 01 06 00 00 00 00 16 00 00";
    // `nft --debug=mnl add element inet spa grants6 '{ 2001:db8::1 . udp . 51820
    // timeout 1500ms }'`.
    const NFT_ADD_V6: &str = "08 00 01 00 73 70 61 00  0c 00 02 00 67 72 61 6e 74 73 36 00
        34 00 03 80 30 00 01 80 0c 00 04 00 00 00 00 00 00 00 05 dc
        20 00 01 80 1c 00 01 00 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01
        11 00 00 00 ca 6c 00 00";

    fn v4() -> (IpAddr, Access) {
        ("10.0.0.1".parse().unwrap(), Access::tcp(22).unwrap())
    }

    #[test]
    fn keys_match_nft() {
        let (a, ssh) = v4();
        assert_eq!(element_key(a, ssh), unhex("0a000001 06000000 00160000"));
        let six = "2001:db8::1".parse().unwrap();
        let wg = Access::udp(51820).unwrap();
        assert_eq!(
            element_key(six, wg),
            unhex("20010db8 00000000 00000000 00000001 11000000 ca6c0000")
        );
        assert_eq!(decode_key(&element_key(a, ssh)), Some((a, ssh)));
        assert_eq!(decode_key(&element_key(six, wg)), Some((six, wg)));
        assert_eq!(decode_key(&unhex("0a000001 01000000 00160000")), None); // icmp
        assert_eq!(decode_key(&unhex("0a000001 06000000 00000000")), None); // port 0
        assert_eq!(decode_key(&unhex("0a000001 06000000 0016")), None); // short
        assert_eq!(decode_key(&unhex("0a000001 06000100 00160000")), None); // padding
    }

    #[test]
    fn set_element_messages_match_nft() {
        let (a, ssh) = v4();
        let key = element_key(a, ssh);
        let mut out = Vec::new();
        setelem(
            &mut out,
            NFT_MSG_NEWSETELEM,
            1,
            "spa",
            "grants4",
            &[(&key, Some(30_000))],
        );
        let body = unhex(NFT_ADD_V4);
        let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK; // nft: no NLM_F_ACK
        let mut want = header(20 + body.len() as u32, 0x0a0c, flags, 1);
        want.extend_from_slice(&[1, 0, 0, 0]); // inet, version 0, res_id 0
        want.extend_from_slice(&body);
        assert_eq!(out, want);

        out.clear();
        setelem(
            &mut out,
            NFT_MSG_DELSETELEM,
            7,
            "spa",
            "grants4",
            &[(&key, None)],
        );
        let body = unhex(NFT_DEL_V4);
        let mut want = header(20 + body.len() as u32, 0x0a0e, NLM_F_REQUEST | NLM_F_ACK, 7);
        want.extend_from_slice(&[1, 0, 0, 0]);
        want.extend_from_slice(&body);
        assert_eq!(out, want);

        out.clear();
        let key = element_key("2001:db8::1".parse().unwrap(), Access::udp(51820).unwrap());
        setelem(
            &mut out,
            NFT_MSG_NEWSETELEM,
            2,
            "spa",
            "grants6",
            &[(&key, Some(1500))],
        );
        assert_eq!(out[20..], unhex(NFT_ADD_V6));
    }

    #[test]
    fn batch_markers_match_nft() {
        // nft: BATCH_BEGIN seq 0 and BATCH_END, flags REQUEST, res_id htons(10).
        let mut out = Vec::new();
        batch_marker(&mut out, NFNL_MSG_BATCH_BEGIN, 0);
        let mut want = header(20, 16, NLM_F_REQUEST, 0);
        want.extend_from_slice(&[0, 0, 0, 10]);
        assert_eq!(out, want);
    }

    fn kinds(bytes: &[u8]) -> Vec<(u16, u32)> {
        let mut v = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = ne_u32(bytes, at).unwrap() as usize;
            v.push((
                ne_u16(bytes, at + 4).unwrap(),
                ne_u32(bytes, at + 8).unwrap(),
            ));
            at += len;
        }
        assert_eq!(at, bytes.len());
        v
    }

    #[test]
    fn transaction_refreshes_dedups_and_revokes() {
        let (a, ssh) = v4();
        let six: IpAddr = "2001:db8::1".parse().unwrap();
        let changes = [
            Change::Grant {
                addr: a,
                access: ssh,
                timeout: Duration::from_secs(5),
            },
            Change::Grant {
                addr: a,
                access: ssh,
                timeout: Duration::from_secs(30),
            },
            Change::Revoke {
                addr: six,
                access: ssh,
            },
        ];
        let mut seq = u32::MAX - 2; // wraps inside the transaction
        let txns = transactions("spa", &changes, &mut seq).unwrap();
        assert_eq!(txns.len(), 1);
        let t = &txns[0];
        // grants4: ensure, delete, add with timeout; grants6 (revoke only): ensure, delete.
        let got = kinds(&t.bytes);
        let want_kinds = [16, 0x0a0c, 0x0a0e, 0x0a0c, 0x0a0c, 0x0a0e, 17];
        assert_eq!(got.iter().map(|k| k.0).collect::<Vec<_>>(), want_kinds);
        let seqs: Vec<u32> = got.iter().map(|k| k.1).collect();
        assert_eq!(seqs[0], u32::MAX - 2);
        assert_eq!(seqs[6], 3);
        assert_eq!(seq, 4);
        assert_eq!(t.messages.len(), 5);
        assert_eq!(t.message_of(u32::MAX - 2), Some(None));
        assert_eq!(t.message_of(u32::MAX - 1), Some(Some(0)));
        assert_eq!(t.message_of(2), Some(Some(4)));
        assert_eq!(t.message_of(3), Some(None));
        assert_eq!(t.message_of(4), None);
        // The last grant's timeout, once; the first is gone.
        let count = |v: u64| t.bytes.windows(8).filter(|w| *w == v.to_be_bytes()).count();
        assert_eq!(count(30_000), 1);
        assert_eq!(count(5_000), 0);
        // A grant after a revoke of the same element grants it.
        let mut seq = 1;
        let again = [
            Change::Revoke {
                addr: a,
                access: ssh,
            },
            Change::Grant {
                addr: a,
                access: ssh,
                timeout: Duration::from_millis(1),
            },
        ];
        let t = &transactions("spa", &again, &mut seq).unwrap()[0];
        assert_eq!(kinds(&t.bytes).len(), 5);
    }

    #[test]
    fn timeouts_round_up_and_zero_is_refused() {
        assert_eq!(timeout_ms(Duration::from_nanos(1)).unwrap(), 1);
        assert_eq!(timeout_ms(Duration::from_micros(1500)).unwrap(), 2);
        assert_eq!(timeout_ms(Duration::from_secs(30)).unwrap(), 30_000);
        assert_eq!(timeout_ms(Duration::MAX).unwrap(), u64::MAX);
        let e = timeout_ms(Duration::ZERO).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let mut seq = 0;
        let zero = [Change::Grant {
            addr: v4().0,
            access: v4().1,
            timeout: Duration::ZERO,
        }];
        assert!(transactions("spa", &zero, &mut seq).is_err());
    }

    #[test]
    fn big_batches_split_into_transactions_that_fit_the_send_buffer() {
        let changes: Vec<Change> = (0..2500u32)
            .map(|i| Change::Grant {
                addr: IpAddr::V6(Ipv6Addr::from(u128::from(i) | 0x2001_0db8_u128 << 96)),
                access: Access::tcp(22).unwrap(),
                timeout: Duration::from_secs(30),
            })
            .collect();
        let mut seq = 1;
        let txns = transactions("a_table_name_of_32_characters_xx", &changes, &mut seq).unwrap();
        assert_eq!(txns.len(), 3);
        for t in &txns {
            assert!(t.bytes.len() < 200 * 1024, "{} bytes", t.bytes.len());
            // 1024 elements: 4 messages of each of the three kinds.
            assert!(t.messages.len() <= 12);
        }
        assert_eq!(txns[1].first_seq, txns[0].first_seq + 14);
    }

    #[test]
    fn replies_parse_acks_errors_and_extack_text() {
        // An ack for seq 5 and, in the same datagram, an error for seq 6 with an
        // extended-ack message (capped: only the request header is echoed).
        let mut buf = header(36, NLMSG_ERROR, 0x100, 5);
        buf.extend_from_slice(&0i32.to_ne_bytes());
        buf.extend(header(88, 0x0a0c, 0x405, 5));
        let text = b"No such set\0";
        let tlv_len = 4 + text.len();
        let len = 36 + tlv_len;
        buf.extend(header(len as u32, NLMSG_ERROR, 0x300, 6));
        buf.extend_from_slice(&(-2i32).to_ne_bytes());
        buf.extend(header(88, 0x0a0e, 0x5, 6));
        buf.extend_from_slice(&(tlv_len as u16).to_ne_bytes());
        buf.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        buf.extend_from_slice(text);
        let r = parse_replies(&buf).unwrap();
        assert_eq!(r[0], Reply::Ack { seq: 5 });
        assert_eq!(
            r[1],
            Reply::Error {
                seq: 6,
                errno: 2,
                text: Some("No such set".into())
            }
        );
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        assert!(parse_replies(&[]).unwrap().is_empty());
        assert!(parse_replies(&[1, 2, 3]).is_err());
        assert!(parse_replies(&header(15, 2, 0, 0)).is_err());
        assert!(parse_replies(&header(200, 2, 0, 0)).is_err());
        assert!(parse_replies(&header(16, NLMSG_ERROR, 0, 0)).is_err()); // no code
        let mut short_tlv = header(44, NLMSG_ERROR, 0x300, 1);
        short_tlv.extend_from_slice(&(-1i32).to_ne_bytes());
        short_tlv.extend(header(16, 0, 0, 1));
        short_tlv.extend_from_slice(&[0xff, 0xff, 1, 0, 0, 0, 0, 0]);
        let r = parse_replies(&short_tlv).unwrap();
        assert!(matches!(
            r[0],
            Reply::Error {
                errno: 1,
                text: None,
                ..
            }
        ));
        assert!(attrs(&[3, 0, 1, 0]).is_err());
        assert!(attrs(&[9, 0, 1, 0, 0]).is_err());
        assert!(parse_elements(&[1]).is_err());
        // Fuzz the parsers with random bytes: errors are fine, panics are not.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for n in 0..20_000 {
            let buf: Vec<u8> = (0..n % 97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 7) as u8 * 7 // small values make plausible lengths
                })
                .collect();
            let _ = parse_replies(&buf);
            let _ = parse_elements(&buf);
            let _ = decode_key(&buf);
        }
    }

    #[test]
    fn dump_elements_parse() {
        // A NEWSETELEM as the kernel dumps it: the nft add body plus an expiration.
        let (a, ssh) = v4();
        let key = element_key(a, ssh);
        let mut out = Vec::new();
        setelem(
            &mut out,
            NFT_MSG_NEWSETELEM,
            1,
            "spa",
            "grants4",
            &[(&key, Some(30_000))],
        );
        // Append EXPIRATION (12 bytes) inside the LIST_ELEM and fix the nest lengths.
        let mut m = out[NLMSG_HDRLEN..].to_vec();
        let elements_at = 4 + 8 + 12;
        let elem_at = elements_at + 4;
        for at in [elements_at, elem_at] {
            let len = ne_u16(&m, at).unwrap() + 12;
            m[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        m.extend_from_slice(&12u16.to_ne_bytes());
        m.extend_from_slice(&NFTA_SET_ELEM_EXPIRATION.to_ne_bytes());
        m.extend_from_slice(&29_968u64.to_be_bytes());
        assert_eq!(parse_elements(&m).unwrap(), vec![(key, Some(29_968))]);
        let req = dump_request("spa", "grants4", 9);
        assert_eq!(kinds(&req), [(0x0a0d, 9)]);
        assert_eq!(ne_u16(&req, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
    }
}
