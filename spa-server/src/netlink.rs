//! Grants over netlink: each batch of changes is ONE nfnetlink transaction
//! (NFNL_MSG_BATCH_BEGIN … END) of set-element messages, built here byte by byte (no
//! permissively licensed crate builds nftables messages) and sent on a netlink-sys socket.
//! Microseconds per batch instead of the milliseconds of forking `nft`.
//!
//! Per set, a batch is: NEWSETELEM of every touched element without a timeout (ensures it
//! exists; no NLM_F_EXCL, so an existing one is fine), DELSETELEM of all of them, then
//! NEWSETELEM of the opened ones with their timeouts. In one transaction this refreshes
//! timeouts on every kernel (re-adding an existing element does not update its timeout
//! before Linux 6.12), never duplicates an element, and never fails on a close of a
//! missing one. The layout matches what `nft --debug=mnl add element` sends.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use spa_proto::Access;

use crate::daemon::{Gate, GateChange};

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;
/// Elements per message, so no message nears netlink's size limits.
const CHUNK: usize = 256;

/// The set key of `addr . proto . port`: each field in a 4-byte register.
pub fn element_key(addr: IpAddr, access: Access) -> Vec<u8> {
    let mut key = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    key.extend_from_slice(&[access.proto().number(), 0, 0, 0]);
    key.extend_from_slice(&access.port().to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        buf.extend_from_slice(&[family, 0]); // nfgenmsg: family, version 0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Self {
            buf,
            nests: Vec::new(),
        }
    }
    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
    fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }
    fn begin(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }
    fn end(&mut self) {
        let at = self.nests.pop().expect("balanced nests");
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }
    fn finish(mut self, out: &mut Vec<u8>) {
        debug_assert!(self.nests.is_empty());
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&self.buf);
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn setelem(
    out: &mut Vec<u8>,
    kind: u16,
    seq: u32,
    table: &str,
    set: &str,
    elems: &[(Vec<u8>, Option<Duration>)],
) {
    let flags = NLM_F_REQUEST
        | NLM_F_ACK
        | if kind == NFT_MSG_NEWSETELEM {
            NLM_F_CREATE
        } else {
            0
        };
    let mut m = Msg::new(
        (NFNL_SUBSYS_NFTABLES << 8) | kind,
        flags,
        seq,
        NFPROTO_INET,
        0,
    );
    m.attr(NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
    m.attr(NFTA_SET_ELEM_LIST_SET, &cstr(set));
    m.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
    for (key, timeout) in elems {
        m.begin(NFTA_LIST_ELEM);
        if let Some(t) = timeout {
            m.attr(NFTA_SET_ELEM_TIMEOUT, &(t.as_millis() as u64).to_be_bytes());
        }
        m.begin(NFTA_SET_ELEM_KEY);
        m.attr(NFTA_DATA_VALUE, key);
        m.end();
        m.end();
    }
    m.end();
    m.finish(out);
}

/// The whole transaction for `changes`; returns the bytes and how many ACKs to expect.
pub fn batch(table: &str, changes: &[GateChange], first_seq: u32) -> (Vec<u8>, u32) {
    // The last change to an element wins; keyed per set.
    let mut per_set: BTreeMap<&str, BTreeMap<Vec<u8>, Option<Duration>>> = BTreeMap::new();
    for c in changes {
        let (addr, access, timeout) = match *c {
            GateChange::Open {
                addr,
                access,
                timeout,
            } => (addr, access, Some(timeout.max(Duration::from_secs(1)))),
            GateChange::Close { addr, access } => (addr, access, None),
        };
        let set = if addr.is_ipv4() { "grants4" } else { "grants6" };
        per_set
            .entry(set)
            .or_default()
            .insert(element_key(addr, access), timeout);
    }
    let mut out = Vec::new();
    let mut seq = first_seq;
    let mut acks = 0;
    Msg::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish(&mut out);
    for (set, elems) in &per_set {
        let all: Vec<(Vec<u8>, Option<Duration>)> =
            elems.keys().map(|k| (k.clone(), None)).collect();
        let opens: Vec<(Vec<u8>, Option<Duration>)> = elems
            .iter()
            .filter(|(_, t)| t.is_some())
            .map(|(k, t)| (k.clone(), *t))
            .collect();
        for (kind, list) in [
            (NFT_MSG_NEWSETELEM, &all),
            (NFT_MSG_DELSETELEM, &all),
            (NFT_MSG_NEWSETELEM, &opens),
        ] {
            for chunk in list.chunks(CHUNK) {
                seq = seq.wrapping_add(1);
                setelem(&mut out, kind, seq, table, set, chunk);
                acks += 1;
            }
        }
    }
    seq = seq.wrapping_add(1);
    Msg::new(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish(&mut out);
    (out, acks)
}

/// Reads the responses to a batch that began with sequence number `first` and carried
/// `expected` messages asking for an ACK (`first + 1 ..= first + expected`). On an error
/// the kernel aborts the whole transaction but still answers every message, so all
/// responses are read (none is left for the next batch to mistake for its own) and the
/// first error is returned. Responses to older batches are skipped by sequence number;
/// an error naming the batch header itself (e.g. out of memory) ends the batch at once.
fn read_acks(socket: &Socket, first: u32, expected: u32) -> io::Result<()> {
    let mut got = 0;
    let mut failed = None;
    while got < expected {
        let (buf, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
            if len < 16 || at + len > buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "malformed netlink reply",
                ));
            }
            if kind == NLMSG_ERROR {
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
                let code = buf
                    .get(at + 16..at + 20)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "short netlink error")
                    })?;
                if seq == first && code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                if seq.wrapping_sub(first.wrapping_add(1)) < expected {
                    if code != 0 && failed.is_none() {
                        failed = Some(io::Error::from_raw_os_error(-code));
                    }
                    got += 1;
                }
            }
            at += (len + 3) & !3;
        }
    }
    failed.map_or(Ok(()), Err)
}

/// A gate that talks netlink to nf_tables.
pub struct NetlinkGate {
    socket: Socket,
    table: String,
    seq: u32,
}

impl NetlinkGate {
    /// Opens a NETLINK_NETFILTER socket (needs CAP_NET_ADMIN to change anything).
    pub fn open(table: &str) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            table: table.to_owned(),
            seq: 1,
        })
    }
}

impl Gate for NetlinkGate {
    fn apply(&mut self, changes: &[GateChange]) -> io::Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let first = self.seq;
        let (bytes, acks) = batch(&self.table, changes, first);
        self.seq = self.seq.wrapping_add(acks + 2);
        self.socket.send(&bytes, 0)?;
        read_acks(&self.socket, first, acks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_matches_what_nft_sends() {
        // From `nft --debug=mnl add element inet spa grants4 '{ 10.0.0.1 . tcp . 22 timeout 30s }'`.
        let key = element_key("10.0.0.1".parse().unwrap(), Access::tcp(22).unwrap());
        assert_eq!(key, [0x0a, 0, 0, 1, 6, 0, 0, 0, 0, 0x16, 0, 0]);
        let mut out = Vec::new();
        setelem(
            &mut out,
            NFT_MSG_NEWSETELEM,
            1,
            "spa",
            "grants4",
            &[(key, Some(Duration::from_secs(30)))],
        );
        let u16s = |v: u16| v.to_ne_bytes().to_vec();
        let mut want = Vec::new();
        want.extend_from_slice(&(out.len() as u32).to_ne_bytes());
        want.extend(u16s(0x0a0c));
        want.extend(u16s(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE));
        want.extend_from_slice(&1u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[1, 0, 0, 0]);
        want.extend(u16s(8));
        want.extend(u16s(1));
        want.extend_from_slice(b"spa\0");
        want.extend(u16s(12));
        want.extend(u16s(2));
        want.extend_from_slice(b"grants4\0");
        want.extend(u16s(40));
        want.extend(u16s(3 | NLA_F_NESTED));
        want.extend(u16s(36));
        want.extend(u16s(1 | NLA_F_NESTED));
        want.extend(u16s(12));
        want.extend(u16s(4));
        want.extend_from_slice(&30_000u64.to_be_bytes());
        want.extend(u16s(20));
        want.extend(u16s(1 | NLA_F_NESTED));
        want.extend(u16s(16));
        want.extend(u16s(1));
        want.extend_from_slice(&[0x0a, 0, 0, 1, 6, 0, 0, 0, 0, 0x16, 0, 0]);
        assert_eq!(out, want);
    }

    #[test]
    fn batch_refreshes_dedups_and_groups() {
        let a = "192.0.2.1".parse().unwrap();
        let six = "2001:db8::1".parse().unwrap();
        let ssh = Access::tcp(22).unwrap();
        let changes = [
            GateChange::Open {
                addr: a,
                access: ssh,
                timeout: Duration::from_secs(5),
            },
            GateChange::Open {
                addr: a,
                access: ssh,
                timeout: Duration::from_secs(30),
            },
            GateChange::Close {
                addr: six,
                access: ssh,
            },
        ];
        let (bytes, acks) = batch("spa", &changes, 100);
        // grants4: new, del, new-with-timeout; grants6 (close only): new, del, (no opens).
        assert_eq!(acks, 5);
        let kinds: Vec<u16> = {
            let mut v = Vec::new();
            let mut at = 0;
            while at < bytes.len() {
                let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                v.push(u16::from_ne_bytes(
                    bytes[at + 4..at + 6].try_into().unwrap(),
                ));
                at += len;
            }
            v
        };
        assert_eq!(kinds, [16, 0x0a0c, 0x0a0e, 0x0a0c, 0x0a0c, 0x0a0e, 17]);
        // One element in grants4, with the last timeout.
        assert_eq!(
            bytes
                .windows(8)
                .filter(|w| *w == 30_000u64.to_be_bytes())
                .count(),
            1
        );
        assert_eq!(
            bytes
                .windows(8)
                .filter(|w| *w == 5_000u64.to_be_bytes())
                .count(),
            0
        );
    }
}
