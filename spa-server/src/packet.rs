//! Parsing captured frames into UDP datagrams, and the kernel pre-filter that selects them.
//!
//! The server captures knocks with an `AF_PACKET` socket of type `SOCK_DGRAM`: each frame
//! starts at the IP header, and its link-layer protocol (`ETH_P_IP` or `ETH_P_IPV6`) comes
//! from `sockaddr_ll.sll_protocol`. [`parse`] turns one frame into a [`Datagram`] or a named
//! [`Drop`] reason; [`bpf_filter`] is the classic BPF program attached to the socket so that
//! the kernel only wakes us for unfragmented UDP to the knock port. Everything here is pure:
//! no sockets, no clocks, no `unsafe`, and no input can make it panic.
//!
//! Why not a raw `AF_INET`/`AF_INET6` socket: the IP stack hands a datagram to raw sockets
//! only when it delivers it locally, after netfilter's `input` hook, and spa's firewall
//! drops everything there, knocks included. A packet socket sees frames as the driver hands
//! them up, before netfilter, so the knock port stays closed and nothing ever binds it. One
//! packet socket also serves both families (an IPv6 raw socket would not give us the IP
//! header). The price is that it also sees frames for other hosts and our own outgoing
//! frames: the capture loop drops those by `sll_pkttype` (`PACKET_OTHERHOST`,
//! `PACKET_OUTGOING`) before calling [`parse`].
//!
//! Why checksums are not verified (neither the IPv4 header checksum nor the UDP checksum):
//! they detect line noise, not attackers. Every byte of a knock is covered by `mac1` and the
//! AEAD, and the addresses are bound by the protocol (steps 14 and 15), so a corrupted knock
//! fails verification anyway. And a packet socket sees a frame before any checksum offload
//! is resolved: on veth, and for locally generated packets, the UDP checksum field holds
//! only the pseudo-header sum (`CHECKSUM_PARTIAL`), so checking it would drop valid knocks.
//!
//! [`parse`] does not check the payload length: a datagram to the knock port that is not
//! `spa_proto::KNOCK_LEN` bytes is the verifier's `bad_length` (step 1), counted there.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Link-layer protocol of IPv4 (`ETH_P_IP`), as in `sockaddr_ll.sll_protocol` (host order).
pub const ETH_P_IP: u16 = 0x0800;
/// Link-layer protocol of IPv6 (`ETH_P_IPV6`).
pub const ETH_P_IPV6: u16 = 0x86DD;
/// The largest frame we look at: the largest IPv4 packet. (A non-jumbo IPv6 packet can
/// reach 65575 bytes, but no packet that long is a knock.)
pub const MAX_FRAME: usize = 65535;

const IPPROTO_UDP: u8 = 17;
const IPV6_FRAGMENT: u8 = 44;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const UDP_HEADER_LEN: usize = 8;
/// IPv4 "more fragments" flag and fragment offset, in the 16-bit field at offset 6.
const IPV4_MF_AND_OFFSET: u16 = 0x3fff;

/// A UDP datagram to the knock port, borrowed from the captured frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Source address from the IP header.
    pub src: IpAddr,
    /// Destination address from the IP header.
    pub dst: IpAddr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port (always the knock port).
    pub dst_port: u16,
    /// The UDP payload: exactly the UDP length field minus the header, without link padding.
    pub payload: &'a [u8],
}

/// Why a captured frame is not a datagram for us, in the order the checks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Drop {
    /// The link-layer protocol is neither IPv4 nor IPv6.
    UnknownEthertype,
    /// Longer than [`MAX_FRAME`], or an IPv6 payload length of 0 (a jumbogram, RFC 2675).
    Jumbo,
    /// Shorter than the fixed IP header (20 bytes for IPv4, 40 for IPv6).
    TooShort,
    /// The IP version nibble does not match the link-layer protocol.
    BadVersion,
    /// IPv4 header length (IHL) below 5 words.
    BadIhl,
    /// IPv4 options present (IHL above 5). Knocks never carry options.
    IpOptions,
    /// IPv4 total length smaller than the IPv4 header.
    BadIpLength,
    /// The frame ends before the length the IP header claims.
    Truncated,
    /// An IPv4 fragment (MF set or a non-zero offset) or an IPv6 Fragment header.
    Fragment,
    /// An IPv6 extension header other than Fragment. We do not walk extension headers.
    Ipv6ExtHeader,
    /// Not UDP.
    NotUdp,
    /// The IP payload is shorter than a UDP header, or the UDP length field is not the IP
    /// payload length.
    BadUdpLength,
    /// UDP to another port.
    WrongPort,
    /// The capture ring was full: the kernel dropped the frame before the daemon saw it.
    /// Never returned by [`parse`]; counted from the socket's statistics.
    RingFull,
}

impl Drop {
    /// Every reason, in check order.
    pub const ALL: [Drop; 14] = [
        Drop::UnknownEthertype,
        Drop::Jumbo,
        Drop::TooShort,
        Drop::BadVersion,
        Drop::BadIhl,
        Drop::IpOptions,
        Drop::BadIpLength,
        Drop::Truncated,
        Drop::Fragment,
        Drop::Ipv6ExtHeader,
        Drop::NotUdp,
        Drop::BadUdpLength,
        Drop::WrongPort,
        Drop::RingFull,
    ];

    /// The reason code used in counters and logs.
    pub const fn code(&self) -> &'static str {
        match self {
            Drop::UnknownEthertype => "unknown_ethertype",
            Drop::Jumbo => "jumbo",
            Drop::TooShort => "too_short",
            Drop::BadVersion => "bad_version",
            Drop::BadIhl => "bad_ihl",
            Drop::IpOptions => "ip_options",
            Drop::BadIpLength => "bad_ip_length",
            Drop::Truncated => "truncated",
            Drop::Fragment => "fragment",
            Drop::Ipv6ExtHeader => "ipv6_ext_header",
            Drop::NotUdp => "not_udp",
            Drop::BadUdpLength => "bad_udp_length",
            Drop::WrongPort => "wrong_port",
            Drop::RingFull => "ring_full",
        }
    }
}

impl fmt::Display for Drop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl std::error::Error for Drop {}

/// Parses a frame captured on a `SOCK_DGRAM` packet socket (starting at the IP header) as a
/// UDP datagram to `spa_port`. `ethertype` is `sll_protocol` in host order. Bytes after the
/// IP packet's length (link-layer padding) are ignored. Checksums are not verified (see the
/// module documentation).
pub fn parse(ethertype: u16, frame: &[u8], spa_port: u16) -> Result<Datagram<'_>, Drop> {
    if ethertype != ETH_P_IP && ethertype != ETH_P_IPV6 {
        return Err(Drop::UnknownEthertype);
    }
    if frame.len() > MAX_FRAME {
        return Err(Drop::Jumbo);
    }
    let (src, dst, udp) = if ethertype == ETH_P_IP {
        ipv4(frame)?
    } else {
        ipv6(frame)?
    };
    let (header, payload) = udp
        .split_first_chunk::<UDP_HEADER_LEN>()
        .ok_or(Drop::BadUdpLength)?;
    if usize::from(u16::from_be_bytes([header[4], header[5]])) != udp.len() {
        return Err(Drop::BadUdpLength);
    }
    let dst_port = u16::from_be_bytes([header[2], header[3]]);
    if dst_port != spa_port {
        return Err(Drop::WrongPort);
    }
    Ok(Datagram {
        src,
        dst,
        src_port: u16::from_be_bytes([header[0], header[1]]),
        dst_port,
        payload,
    })
}

/// The IPv4 header (RFC 791): returns the addresses and the IP payload, which must be UDP.
fn ipv4(frame: &[u8]) -> Result<(IpAddr, IpAddr, &[u8]), Drop> {
    let h = frame
        .first_chunk::<IPV4_HEADER_LEN>()
        .ok_or(Drop::TooShort)?;
    if h[0] >> 4 != 4 {
        return Err(Drop::BadVersion);
    }
    let header_len = usize::from(h[0] & 0x0f) * 4;
    if header_len < IPV4_HEADER_LEN {
        return Err(Drop::BadIhl);
    }
    if header_len > IPV4_HEADER_LEN {
        return Err(Drop::IpOptions);
    }
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if total_len < IPV4_HEADER_LEN {
        return Err(Drop::BadIpLength);
    }
    // Cut at the total length: anything after it is link-layer padding.
    let packet = frame.get(..total_len).ok_or(Drop::Truncated)?;
    if u16::from_be_bytes([h[6], h[7]]) & IPV4_MF_AND_OFFSET != 0 {
        return Err(Drop::Fragment);
    }
    if h[9] != IPPROTO_UDP {
        return Err(Drop::NotUdp);
    }
    // Bytes 10..12, the header checksum, are deliberately not verified.
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    let udp = packet.get(IPV4_HEADER_LEN..).ok_or(Drop::Truncated)?;
    Ok((src.into(), dst.into(), udp))
}

/// The IPv6 header (RFC 8200): returns the addresses and the payload, which must be UDP
/// directly after the fixed header.
fn ipv6(frame: &[u8]) -> Result<(IpAddr, IpAddr, &[u8]), Drop> {
    let (h, addresses) = frame.split_first_chunk::<8>().ok_or(Drop::TooShort)?;
    let (src, addresses) = addresses.split_first_chunk::<16>().ok_or(Drop::TooShort)?;
    let dst = addresses.first_chunk::<16>().ok_or(Drop::TooShort)?;
    if h[0] >> 4 != 6 {
        return Err(Drop::BadVersion);
    }
    let payload_len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if payload_len == 0 {
        return Err(Drop::Jumbo);
    }
    // Cut at the payload length: anything after it is link-layer padding.
    let packet = frame
        .get(..IPV6_HEADER_LEN + payload_len)
        .ok_or(Drop::Truncated)?;
    match h[6] {
        IPPROTO_UDP => {}
        IPV6_FRAGMENT => return Err(Drop::Fragment),
        next if is_ipv6_extension_header(next) => return Err(Drop::Ipv6ExtHeader),
        _ => return Err(Drop::NotUdp),
    }
    let udp = packet.get(IPV6_HEADER_LEN..).ok_or(Drop::Truncated)?;
    let (src, dst) = (Ipv6Addr::from(*src), Ipv6Addr::from(*dst));
    Ok((src.into(), dst.into(), udp))
}

/// The IANA "IPv6 Extension Header Types" registry (created by RFC 7045): Hop-by-Hop, Routing, Fragment,
/// ESP, AH, Destination Options, Mobility, HIP, Shim6, and the two experimental values.
fn is_ipv6_extension_header(next_header: u8) -> bool {
    matches!(
        next_header,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// One classic BPF instruction, laid out like the kernel's `struct sock_filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFilter {
    /// Opcode: class, size, mode or operation, source.
    pub code: u16,
    /// Jump offset if true (relative to the next instruction).
    pub jt: u8,
    /// Jump offset if false.
    pub jf: u8,
    /// Constant operand.
    pub k: u32,
}

// Opcode fields (linux/bpf_common.h).
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_JEQ: u16 = 0x10;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;

// The only opcodes the filter uses, and so the only ones `bpf_accepts` runs.
/// `ldh [k]`: A = the 16-bit big-endian word at offset k (or an ancillary value).
const LDH_ABS: u16 = BPF_LD | BPF_H | BPF_ABS;
/// `ldb [k]`: A = the byte at offset k.
const LDB_ABS: u16 = BPF_LD | BPF_B | BPF_ABS;
/// `ldh [x + k]`: A = the 16-bit big-endian word at offset X + k.
const LDH_IND: u16 = BPF_LD | BPF_H | BPF_IND;
/// `ldxb 4*([k]&0xf)`: X = 4 * the low nibble of byte k (the IPv4 header length).
const LDXB_MSH: u16 = BPF_LDX | BPF_B | BPF_MSH;
/// `jeq #k, jt, jf`: jump by jt if A == k, else by jf.
const JEQ_K: u16 = BPF_JMP | BPF_JEQ | BPF_K;
/// `jset #k, jt, jf`: jump by jt if A & k is non-zero, else by jf.
const JSET_K: u16 = BPF_JMP | BPF_JSET | BPF_K;
/// `ret #k`: keep k bytes of the packet (0 drops it).
const RET_K: u16 = BPF_RET | BPF_K;

/// `SKF_AD_OFF + SKF_AD_PROTOCOL`: the ancillary load of `skb->protocol` (the ethertype,
/// host order); for a `SOCK_DGRAM` packet socket, offset 0 is the network header.
const SKF_AD_PROTOCOL: u32 = 0xffff_f000;
/// The return value that keeps the whole packet (`ret #262144`, as tcpdump uses).
const ACCEPT_LEN: u32 = 0x40000;

const fn stmt(code: u16, k: u32) -> SockFilter {
    SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> SockFilter {
    SockFilter { code, jt, jf, k }
}

/// The classic BPF program for the capture socket: accept unfragmented UDP to `spa_port`
/// over IPv4 (any header length) or over IPv6 (UDP right after the fixed header), reject
/// everything else. It never rejects a frame [`parse`] accepts; [`parse`] then drops the
/// rest (IPv4 options, inconsistent lengths, ...) with a named reason.
pub fn bpf_filter(spa_port: u16) -> Vec<SockFilter> {
    // Jump targets, as instruction indices; jumps are relative: pc + 1 + jt (or jf).
    const IPV6: u8 = 9;
    const ACCEPT: u8 = 14;
    const REJECT: u8 = 15;
    const fn to(from: u8, target: u8) -> u8 {
        target - from - 1
    }
    let port = u32::from(spa_port);
    let prog = vec![
        // 0: A = ethertype (ancillary load; the frame itself has no link-layer header).
        stmt(LDH_ABS, SKF_AD_PROTOCOL),
        // 1: IPv4? Otherwise try IPv6.
        jump(JEQ_K, ETH_P_IP.into(), 0, to(1, IPV6)),
        // 2: A = IPv4 protocol.
        stmt(LDB_ABS, 9),
        // 3: UDP? Otherwise reject.
        jump(JEQ_K, IPPROTO_UDP.into(), 0, to(3, REJECT)),
        // 4: A = flags and fragment offset.
        stmt(LDH_ABS, 6),
        // 5: MF set or a non-zero offset: a fragment, reject.
        jump(JSET_K, IPV4_MF_AND_OFFSET.into(), to(5, REJECT), 0),
        // 6: X = IPv4 header length (4 * IHL), so options do not hide the UDP header.
        stmt(LDXB_MSH, 0),
        // 7: A = UDP destination port.
        stmt(LDH_IND, 2),
        // 8: The knock port? Accept, otherwise reject.
        jump(JEQ_K, port, to(8, ACCEPT), to(8, REJECT)),
        // 9 (IPV6): IPv6? A still holds the ethertype. Otherwise reject.
        jump(JEQ_K, ETH_P_IPV6.into(), 0, to(9, REJECT)),
        // 10: A = IPv6 next header.
        stmt(LDB_ABS, 6),
        // 11: UDP directly after the fixed header? Otherwise (extension headers) reject.
        jump(JEQ_K, IPPROTO_UDP.into(), 0, to(11, REJECT)),
        // 12: A = UDP destination port (fixed header 40 + 2).
        stmt(LDH_ABS, 42),
        // 13: The knock port? Accept, otherwise reject.
        jump(JEQ_K, port, to(13, ACCEPT), to(13, REJECT)),
        // 14 (ACCEPT): keep the packet.
        stmt(RET_K, ACCEPT_LEN),
        // 15 (REJECT): drop it.
        stmt(RET_K, 0),
    ];
    debug_assert_eq!(prog.len(), usize::from(REJECT) + 1);
    prog
}

/// Runs a filter from [`bpf_filter`] on a frame as the kernel would, for tests: true if it
/// returns non-zero. Interprets only the opcodes [`bpf_filter`] emits and only the
/// `SKF_AD_PROTOCOL` ancillary load; anything else, and any load past the end of the frame
/// or a fall off the program's end, rejects (the kernel returns 0 for an out-of-bounds
/// load, and would refuse to attach a program it cannot check).
pub fn bpf_accepts(prog: &[SockFilter], ethertype: u16, frame: &[u8]) -> bool {
    run(prog, ethertype, frame).is_some_and(|ret| ret != 0)
}

/// The interpreter behind [`bpf_accepts`]; `None` means "returns 0".
fn run(prog: &[SockFilter], ethertype: u16, frame: &[u8]) -> Option<u32> {
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    loop {
        let insn = prog.get(pc)?;
        pc += 1;
        match insn.code {
            LDH_ABS | LDB_ABS if insn.k == SKF_AD_PROTOCOL => a = ethertype.into(),
            LDH_ABS => a = load(frame, insn.k, 2)?,
            LDB_ABS => a = load(frame, insn.k, 1)?,
            LDH_IND => a = load(frame, x.checked_add(insn.k)?, 2)?,
            LDXB_MSH => x = 4 * (load(frame, insn.k, 1)? & 0x0f),
            JEQ_K | JSET_K => {
                let taken = if insn.code == JEQ_K {
                    a == insn.k
                } else {
                    a & insn.k != 0
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            RET_K => return Some(insn.k),
            _ => return None,
        }
    }
}

/// A big-endian load of `len` bytes at `offset`; `None` if it does not fit in the frame.
fn load(frame: &[u8], offset: u32, len: usize) -> Option<u32> {
    let start = usize::try_from(offset).ok()?;
    let bytes = frame.get(start..start.checked_add(len)?)?;
    Some(bytes.iter().fold(0, |acc, &b| acc << 8 | u32::from(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use spa_proto::KNOCK_LEN;
    use std::collections::HashSet;

    const PORT: u16 = 62201;
    const V4_SRC: [u8; 4] = [192, 0, 2, 10];
    const V4_DST: [u8; 4] = [198, 51, 100, 1];
    const V6_SRC: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
    ];
    const V6_DST: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
    ];

    /// A UDP header plus payload; the checksum is left 0 (not verified).
    fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(UDP_HEADER_LEN + payload.len()).unwrap();
        let mut d = Vec::new();
        for field in [src_port, dst_port, len, 0] {
            d.extend_from_slice(&field.to_be_bytes());
        }
        d.extend_from_slice(payload);
        d
    }

    /// A valid IPv4 UDP frame (DF set, header checksum left 0: not verified).
    fn v4(src: [u8; 4], dst: [u8; 4], dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let udp = udp(40000, dst_port, payload);
        let total = u16::try_from(IPV4_HEADER_LEN + udp.len()).unwrap();
        let mut f = vec![0x45, 0];
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, 64, IPPROTO_UDP, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&udp);
        f
    }

    /// A valid IPv6 UDP frame.
    fn v6(src: [u8; 16], dst: [u8; 16], dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let udp = udp(40000, dst_port, payload);
        let len = u16::try_from(udp.len()).unwrap();
        let mut f = vec![0x60, 0, 0, 0];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[IPPROTO_UDP, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&udp);
        f
    }

    fn knock_v4() -> Vec<u8> {
        v4(V4_SRC, V4_DST, PORT, &[0xab; KNOCK_LEN])
    }

    fn knock_v6() -> Vec<u8> {
        v6(V6_SRC, V6_DST, PORT, &[0xab; KNOCK_LEN])
    }

    fn with(mut frame: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
        frame[at..at + bytes.len()].copy_from_slice(bytes);
        frame
    }

    fn cut(mut frame: Vec<u8>, by: usize) -> Vec<u8> {
        frame.truncate(frame.len() - by);
        frame
    }

    /// Minimal frames for each reason; the match is exhaustive so a new reason needs one.
    fn crafted(reason: Drop) -> Vec<(u16, Vec<u8>)> {
        let (ip, ip6) = (ETH_P_IP, ETH_P_IPV6);
        match reason {
            Drop::UnknownEthertype => vec![(0x0806, knock_v4()), (0, knock_v6())],
            Drop::Jumbo => vec![
                (ip6, with(knock_v6(), 4, &[0, 0])),
                (ip, vec![0; MAX_FRAME + 1]),
                (ip, {
                    let mut f = knock_v4();
                    f.resize(MAX_FRAME + 1, 0);
                    f
                }),
            ],
            Drop::TooShort => vec![
                (ip, vec![]),
                (ip, knock_v4()[..19].to_vec()),
                (ip6, knock_v6()[..39].to_vec()),
            ],
            Drop::BadVersion => vec![
                (ip, with(knock_v4(), 0, &[0x65])),
                (ip, knock_v6()),
                (ip6, with(knock_v6(), 0, &[0x40])),
            ],
            Drop::BadIhl => vec![
                (ip, with(knock_v4(), 0, &[0x44])),
                (ip, with(knock_v4(), 0, &[0x40])),
            ],
            Drop::IpOptions => {
                // A well-formed packet with one word of options (four NOPs).
                let mut f = knock_v4();
                f.splice(20..20, [1, 1, 1, 1]);
                let total = u16::try_from(f.len()).unwrap();
                vec![(ip, with(with(f, 0, &[0x46]), 2, &total.to_be_bytes()))]
            }
            Drop::BadIpLength => vec![
                (ip, with(knock_v4(), 2, &[0, 19])),
                (ip, with(knock_v4(), 2, &[0, 0])),
            ],
            Drop::Truncated => vec![
                (ip, cut(knock_v4(), 1)),
                (ip6, cut(knock_v6(), 1)),
                (ip, with(knock_v4(), 2, &[0xff, 0xff])),
            ],
            Drop::Fragment => vec![
                (ip, with(knock_v4(), 6, &[0x20, 0x00])),
                (ip, with(knock_v4(), 6, &[0x00, 0x01])),
                (ip, with(knock_v4(), 6, &[0x1f, 0xff])),
                (ip6, with(knock_v6(), 6, &[IPV6_FRAGMENT])),
            ],
            Drop::Ipv6ExtHeader => [0, 43, 50, 51, 60, 135, 139, 140, 253, 254]
                .into_iter()
                .map(|next| (ip6, with(knock_v6(), 6, &[next])))
                .collect(),
            Drop::NotUdp => vec![
                (ip, with(knock_v4(), 9, &[6])),
                (ip, with(knock_v4(), 9, &[1])),
                (ip6, with(knock_v6(), 6, &[6])),
                (ip6, with(knock_v6(), 6, &[59])),
            ],
            Drop::BadUdpLength => {
                let udp_len = u16::try_from(UDP_HEADER_LEN + KNOCK_LEN).unwrap();
                vec![
                    (ip, with(knock_v4(), 24, &(udp_len + 1).to_be_bytes())),
                    (ip, with(knock_v4(), 24, &(udp_len - 1).to_be_bytes())),
                    (ip6, with(knock_v6(), 44, &(udp_len + 1).to_be_bytes())),
                    (ip6, with(knock_v6(), 44, &[0, 0])),
                    // An IP payload shorter than a UDP header, padding after it.
                    (ip, with(knock_v4(), 2, &[0, 27])),
                    (ip6, with(knock_v6(), 4, &[0, 7])),
                ]
            }
            Drop::WrongPort => vec![
                (ip, v4(V4_SRC, V4_DST, PORT + 1, &[0; KNOCK_LEN])),
                (ip6, v6(V6_SRC, V6_DST, 0, &[0; KNOCK_LEN])),
            ],
            // Not a parse result: the kernel's count of frames a full ring could not take.
            Drop::RingFull => vec![],
        }
    }

    #[test]
    fn codes_are_distinct_and_snake_case() {
        let codes: HashSet<_> = Drop::ALL.iter().map(Drop::code).collect();
        assert_eq!(codes.len(), Drop::ALL.len());
        for c in codes {
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{c}"
            );
        }
        assert_eq!(Drop::IpOptions.to_string(), "ip_options");
    }

    #[test]
    fn each_reason_has_a_frame_that_produces_it() {
        for reason in Drop::ALL {
            let frames = crafted(reason);
            // RingFull is counted from the socket, not parsed: tests/capture_netns.rs.
            assert_eq!(frames.is_empty(), reason == Drop::RingFull, "{reason}");
            for (i, (ethertype, frame)) in frames.iter().enumerate() {
                assert_eq!(
                    parse(*ethertype, frame, PORT),
                    Err(reason),
                    "{} example {i}",
                    reason.code()
                );
            }
        }
    }

    #[test]
    fn valid_knocks_parse_with_their_addresses() {
        let f = knock_v4();
        let d = parse(ETH_P_IP, &f, PORT).unwrap();
        assert_eq!(d.src, IpAddr::from(V4_SRC));
        assert_eq!(d.dst, IpAddr::from(V4_DST));
        assert_eq!((d.src_port, d.dst_port), (40000, PORT));
        assert_eq!(d.payload, &[0xab; KNOCK_LEN][..]);

        let f = knock_v6();
        let d = parse(ETH_P_IPV6, &f, PORT).unwrap();
        assert_eq!(d.src, IpAddr::from(V6_SRC));
        assert_eq!(d.dst, IpAddr::from(V6_DST));
        assert_eq!((d.src_port, d.dst_port), (40000, PORT));
        assert_eq!(d.payload, &[0xab; KNOCK_LEN][..]);
    }

    #[test]
    fn checksums_and_df_are_ignored() {
        // Garbage IPv4 header and UDP checksums, DF and the reserved flag set.
        let f = with(with(knock_v4(), 10, &[0xde, 0xad]), 26, &[0xbe, 0xef]);
        let f = with(f, 6, &[0xc0, 0x00]);
        assert!(parse(ETH_P_IP, &f, PORT).is_ok());
        assert!(bpf_accepts(&bpf_filter(PORT), ETH_P_IP, &f));
        let f = with(knock_v6(), 46, &[0xbe, 0xef]);
        assert!(parse(ETH_P_IPV6, &f, PORT).is_ok());
    }

    #[test]
    fn trailing_link_padding_is_ignored() {
        let prog = bpf_filter(PORT);
        for (ethertype, frame) in [(ETH_P_IP, knock_v4()), (ETH_P_IPV6, knock_v6())] {
            let mut padded = frame.clone();
            padded.extend_from_slice(&[0xee; 18]);
            let d = parse(ethertype, &padded, PORT).unwrap();
            assert_eq!(d, parse(ethertype, &frame, PORT).unwrap());
            assert_eq!(d.payload.len(), KNOCK_LEN);
            assert!(bpf_accepts(&prog, ethertype, &padded));
        }
        // An Ethernet-minimum frame: a 1-byte datagram padded to 46 bytes.
        let f = v4(V4_SRC, V4_DST, PORT, &[7]);
        let mut padded = f.clone();
        padded.resize(46, 0);
        assert_eq!(parse(ETH_P_IP, &padded, PORT).unwrap().payload, &[7]);
    }

    #[test]
    fn filter_accepts_knocks_to_the_port_only() {
        let prog = bpf_filter(PORT);
        assert!(bpf_accepts(&prog, ETH_P_IP, &knock_v4()));
        assert!(bpf_accepts(&prog, ETH_P_IPV6, &knock_v6()));
        let other = |p| {
            (
                v4(V4_SRC, V4_DST, p, &[0; 4]),
                v6(V6_SRC, V6_DST, p, &[0; 4]),
            )
        };
        for p in [0, 22, PORT - 1, PORT + 1, PORT.swap_bytes()] {
            let (f4, f6) = other(p);
            assert!(!bpf_accepts(&prog, ETH_P_IP, &f4), "{p}");
            assert!(!bpf_accepts(&prog, ETH_P_IPV6, &f6), "{p}");
        }
        // The same frames on the wrong ethertype.
        assert!(!bpf_accepts(&prog, 0x0806, &knock_v4()));
        assert!(!bpf_accepts(&prog, ETH_P_IPV6, &knock_v4()));
        // Another filter's port.
        assert!(!bpf_accepts(&bpf_filter(PORT + 1), ETH_P_IP, &knock_v4()));
    }

    #[test]
    fn filter_rejects_tcp_fragments_and_extension_headers() {
        let prog = bpf_filter(PORT);
        let rejected = [
            (ETH_P_IP, with(knock_v4(), 9, &[6])),
            (ETH_P_IPV6, with(knock_v6(), 6, &[6])),
            (ETH_P_IP, with(knock_v4(), 6, &[0x20, 0x00])),
            (ETH_P_IP, with(knock_v4(), 6, &[0x00, 0x08])),
            (ETH_P_IPV6, with(knock_v6(), 6, &[IPV6_FRAGMENT])),
            (ETH_P_IPV6, with(knock_v6(), 6, &[0])),
            (ETH_P_IP, vec![]),
            (ETH_P_IP, knock_v4()[..23].to_vec()),
            (ETH_P_IPV6, knock_v6()[..43].to_vec()),
        ];
        for (i, (ethertype, frame)) in rejected.iter().enumerate() {
            assert!(!bpf_accepts(&prog, *ethertype, frame), "frame {i}");
        }
    }

    #[test]
    fn filter_finds_the_port_after_ipv4_options() {
        // The filter walks IHL, so options do not hide the port; parse drops them.
        let prog = bpf_filter(PORT);
        let (ethertype, frame) = crafted(Drop::IpOptions).remove(0);
        assert!(bpf_accepts(&prog, ethertype, &frame));
        assert!(!bpf_accepts(&prog, ethertype, &with(frame, 26, &[0])));
    }

    #[test]
    fn reasons_the_filter_also_catches() {
        let prog = bpf_filter(PORT);
        for reason in [
            Drop::UnknownEthertype,
            Drop::TooShort,
            Drop::Fragment,
            Drop::Ipv6ExtHeader,
            Drop::NotUdp,
            Drop::WrongPort,
        ] {
            for (ethertype, frame) in crafted(reason) {
                assert!(!bpf_accepts(&prog, ethertype, &frame), "{}", reason.code());
            }
        }
    }

    #[test]
    fn filter_is_a_program_the_kernel_accepts() {
        let prog = bpf_filter(PORT);
        assert!(prog.len() <= 4096, "BPF_MAXINSNS");
        assert_eq!(prog.last().map(|i| i.code), Some(RET_K));
        for (pc, insn) in prog.iter().enumerate() {
            assert!(
                [LDH_ABS, LDB_ABS, LDH_IND, LDXB_MSH, JEQ_K, JSET_K, RET_K].contains(&insn.code),
                "{pc}: {insn:?}"
            );
            if insn.code == JEQ_K || insn.code == JSET_K {
                for off in [insn.jt, insn.jf] {
                    assert!(pc + 1 + usize::from(off) < prog.len(), "{pc}: {insn:?}");
                }
            } else {
                assert_eq!((insn.jt, insn.jf), (0, 0), "{pc}: {insn:?}");
            }
        }
        // The well-known encodings (tcpdump -dd).
        assert_eq!(prog[0], stmt(0x28, 0xffff_f000));
        assert_eq!(prog[6], stmt(0xb1, 0));
        assert_eq!(prog[7], stmt(0x48, 2));
        assert_eq!(prog[14], stmt(0x06, 262_144));
        assert_eq!(prog[15], stmt(0x06, 0));
    }

    #[test]
    fn interpreter_rejects_what_it_cannot_run() {
        let frame = knock_v4();
        let runs = |prog: &[SockFilter]| bpf_accepts(prog, ETH_P_IP, &frame);
        assert!(runs(&[stmt(LDB_ABS, 0), stmt(RET_K, 1)]));
        // An opcode it does not know (BPF_LD | BPF_W | BPF_ABS), another ancillary load.
        assert!(!runs(&[stmt(0x20, 0), stmt(RET_K, 1)]));
        assert!(!runs(&[stmt(LDH_ABS, 0xffff_f004), stmt(RET_K, 1)]));
        // Falling off the end.
        assert!(!runs(&[stmt(LDH_ABS, 0)]));
        assert!(!runs(&[]));
        // Out-of-bounds loads return 0, with or without X.
        assert!(!runs(&[stmt(LDB_ABS, 1 << 20), stmt(RET_K, 1)]));
        assert!(!runs(&[stmt(LDH_IND, u32::MAX), stmt(RET_K, 1)]));
    }

    /// A random valid frame: family, addresses, ports (often the knock port), payload,
    /// link-layer padding.
    fn valid_frame() -> impl Strategy<Value = (u16, Vec<u8>)> {
        let port = prop_oneof![Just(PORT), any::<u16>()];
        let payload = prop_oneof![
            Just(vec![0x5a; KNOCK_LEN]),
            proptest::collection::vec(any::<u8>(), 0..300)
        ];
        (
            any::<bool>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            port,
            payload,
            0..24usize,
        )
            .prop_map(|(is_v6, src, dst, port, payload, pad)| {
                let (ethertype, mut f) = if is_v6 {
                    (ETH_P_IPV6, v6(src, dst, port, &payload))
                } else {
                    let (s, d) = (&src[..4], &dst[..4]);
                    let f = v4(s.try_into().unwrap(), d.try_into().unwrap(), port, &payload);
                    (ETH_P_IP, f)
                };
                f.resize(f.len() + pad, 0);
                (ethertype, f)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn parse_and_filter_never_panic(
            ethertype in prop_oneof![Just(ETH_P_IP), Just(ETH_P_IPV6), any::<u16>()],
            frame in proptest::collection::vec(any::<u8>(), 0..600),
            port in any::<u16>(),
        ) {
            let _ = parse(ethertype, &frame, port);
            let _ = bpf_accepts(&bpf_filter(port), ethertype, &frame);
        }

        #[test]
        fn valid_frames_parse_exactly((ethertype, frame) in valid_frame()) {
            let udp_at = if ethertype == ETH_P_IP { IPV4_HEADER_LEN } else { IPV6_HEADER_LEN };
            let dst_port = u16::from_be_bytes([frame[udp_at + 2], frame[udp_at + 3]]);
            let accepted = bpf_accepts(&bpf_filter(PORT), ethertype, &frame);
            match parse(ethertype, &frame, PORT) {
                Ok(d) => {
                    prop_assert_eq!(d.dst_port, PORT);
                    prop_assert!(accepted);
                    let len = u16::from_be_bytes([frame[udp_at + 4], frame[udp_at + 5]]);
                    prop_assert_eq!(d.payload.len() + UDP_HEADER_LEN, usize::from(len));
                }
                Err(e) => {
                    prop_assert_eq!(e, Drop::WrongPort);
                    prop_assert_ne!(dst_port, PORT);
                    prop_assert!(!accepted);
                }
            }
        }

        /// The filter is a pre-filter: it never rejects a frame `parse` accepts.
        #[test]
        fn filter_never_rejects_what_parse_accepts(
            (ethertype, frame) in valid_frame(),
            mutations in proptest::collection::vec((any::<Index>(), any::<u8>()), 0..4),
            truncate in proptest::option::weighted(0.2, any::<Index>()),
            swap_family in proptest::bool::weighted(0.1),
        ) {
            let mut frame = frame;
            // Mutate the headers (the first 48 bytes), where every check looks.
            for (at, byte) in mutations {
                let at = at.index(frame.len().min(48));
                frame[at] = byte;
            }
            if let Some(at) = truncate {
                frame.truncate(at.index(frame.len() + 1));
            }
            let ethertype = match (swap_family, ethertype) {
                (false, e) => e,
                (true, ETH_P_IP) => ETH_P_IPV6,
                (true, _) => ETH_P_IP,
            };
            if !bpf_accepts(&bpf_filter(PORT), ethertype, &frame) {
                prop_assert!(parse(ethertype, &frame, PORT).is_err());
            }
        }
    }
}
