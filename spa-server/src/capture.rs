//! The capture socket: AF_PACKET, SOCK_DGRAM (frames start at the network header), with
//! the classic BPF filter of [`crate::packet::bpf_filter`] attached *before* the socket is
//! bound to a protocol, so it never queues a frame the filter would refuse. Nothing ever
//! listens on the SPA port: the kernel hands us copies of frames our ruleset then drops.
//! (An AF_INET raw socket would not see packets the firewall drops on input.)
//!
//! Frames arrive in a PACKET_MMAP receive ring (TPACKET_V2) shared with the kernel: under
//! load they are handled in place, without a system call, socket queue, copy or clock
//! read per frame (each slot carries the kernel's receive time); poll(2) waits only when
//! the ring is empty, and the capture loop's interrupt moderation
//! ([`crate::daemon::COALESCE`]) keeps a flood from costing one wake-up per frame. The
//! rings total 4 MiB of kernel memory.
//!
//! This module and [`crate::privsep`] are the only ones with `unsafe`: here the socket
//! system calls, each commented.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use crate::packet::SockFilter;

/// `sll_pkttype` of frames this host sends; never knocks.
const PACKET_OUTGOING: u8 = 4;

/// One received frame's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Bytes in the buffer.
    pub len: usize,
    /// Link-layer protocol (0x0800, 0x86dd).
    pub ethertype: u16,
    /// Receiving interface.
    pub ifindex: i32,
    /// When the kernel received it (the ring slot's timestamp).
    pub at: std::time::SystemTime,
}

/// A packet socket with our filter, and its receive ring.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ring: Ring,
    read_timeout: Duration,
}

/// The size of a ring slot. For SOCK_DGRAM the frame's network header starts at 80 (the
/// 32-byte frame header, the sockaddr_ll, alignment), which leaves 944 bytes: a knock is
/// at most 60 + 8 + 242 (IPv4 with options) or 40 + 8 + 242 (IPv6). Longer frames are cut
/// to the slot and dropped as truncated by the parser.
const RING_FRAME_SIZE: usize = 1024;
/// Where a slot's sockaddr_ll starts: TPACKET_ALIGN(sizeof(tpacket2_hdr)) = 32.
const SLL_OFFSET: usize = (size_of::<libc::tpacket2_hdr>() + 15) & !15;
/// Where a slot's frame area starts: after the frame header and the sockaddr_ll
/// (TPACKET2_HDRLEN); the kernel puts the network header further on (80).
const FRAME_AREA: usize = SLL_OFFSET + size_of::<libc::sockaddr_ll>();
/// Slots per ring block: 64 KiB blocks, a whole number of pages on every page size.
const RING_BLOCK_FRAMES: usize = 64;
/// Slots for all capture sockets together (4 MiB of kernel memory), split among them;
/// each gets at least 512 and at most 4096. With interrupt moderation a thread looks at
/// its ring at least every 200 µs while frames arrive: 2048 slots hold 10 ms of a
/// 200,000 packet/s flood.
const RING_TOTAL_FRAMES: usize = 4096;

/// A PACKET_MMAP (TPACKET_V2) receive ring: the kernel writes frames into memory shared
/// with us, so under load frames are taken without a system call or a socket queue per
/// frame; we sleep in poll(2) only when the ring is empty.
#[derive(Debug)]
struct Ring {
    map: *mut u8,
    len: usize,
    frames: usize,
    next: usize,
}

// SAFETY: the mapping belongs to this socket alone and is used by the one thread that
// owns the socket; moving it to that thread is fine.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: `map` and `len` are exactly what mmap returned; unmapped once.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}

impl Ring {
    /// The start of slot `i`.
    fn slot(&self, i: usize) -> *mut u8 {
        assert!(i < self.frames, "ring slot out of range");
        // SAFETY: i < frames, so the slot lies inside the map.
        unsafe { self.map.add(i * RING_FRAME_SIZE) }
    }

    fn status(&self, i: usize) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: tp_status is the first, 4-byte aligned field of a slot inside the live
        // map, shared with the kernel, which is why it is only accessed atomically.
        unsafe { &*(self.slot(i) as *const std::sync::atomic::AtomicU32) }
    }
}

/// Asks the CPU to start loading a slot's first 384 bytes (its header, and a knock's
/// network and UDP headers and payload) into the cache. Only a hint: nothing is read.
fn prefetch(slot: *const u8) {
    #[cfg(target_arch = "x86_64")]
    for line in 0..6 {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of every x86_64 CPU, and a prefetch reads no memory (it
        // cannot fault, whatever the address).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(slot.wrapping_add(line * 64).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = slot;
}

/// Ring slots for each of `sockets` capture sockets.
pub fn ring_frames(sockets: usize) -> usize {
    let per = (RING_TOTAL_FRAMES / sockets.max(1)).clamp(512, 4096);
    per / RING_BLOCK_FRAMES * RING_BLOCK_FRAMES
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size we pass; the kernel copies it.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

impl PacketSocket {
    /// Opens the socket: filter first, then bind to all protocols on all interfaces
    /// (frames from interfaces not configured are dropped by the caller by ifindex).
    /// `fanout` joins a PACKET_FANOUT group so several sockets share the load.
    pub fn open(
        filter: &[SockFilter],
        fanout: Option<u16>,
        read_timeout: Duration,
        ring_frames: usize,
    ) -> io::Result<Self> {
        let frames = ring_frames.max(RING_BLOCK_FRAMES) / RING_BLOCK_FRAMES * RING_BLOCK_FRAMES;
        // SAFETY: plain socket(2); protocol 0 means no frame is queued before bind.
        let raw = check(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut prog: Vec<libc::sock_filter> = filter
            .iter()
            .map(|f| libc::sock_filter {
                code: f.code,
                jt: f.jt,
                jf: f.jf,
                k: f.k,
            })
            .collect();
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
        // Best effort (Linux 4.20+): do not even copy our own outgoing frames to us.
        let _ = setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &1 as &libc::c_int,
        );
        // (No SO_RCVBUF or SO_RCVTIMEO: with a receive ring the ring is the buffer, and
        // waiting is poll(2)'s.)
        let version = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
        let req = libc::tpacket_req {
            tp_block_size: (RING_FRAME_SIZE * RING_BLOCK_FRAMES) as libc::c_uint,
            tp_block_nr: (frames / RING_BLOCK_FRAMES) as libc::c_uint,
            tp_frame_size: RING_FRAME_SIZE as libc::c_uint,
            tp_frame_nr: frames as libc::c_uint,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let len = frames * RING_FRAME_SIZE;
        // SAFETY: maps the ring the kernel just allocated for this socket; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ring = Ring {
            map: map.cast(),
            len,
            frames,
            next: 0,
        };

        // SAFETY: an all-zero sockaddr_ll is valid; we fill the fields bind needs.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = 0;
        // SAFETY: `sll` is a valid sockaddr_ll and we pass its exact size.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        if let Some(group) = fanout {
            // Hash by flow: one client's datagrams stay on one worker, in order, so two
            // quick knocks of one key are never verified out of order.
            let arg: libc::c_int = i32::from(group) | ((libc::PACKET_FANOUT_HASH as i32) << 16);
            setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg)?;
        }
        Ok(Self {
            fd,
            ring,
            read_timeout,
        })
    }

    /// Frames the kernel dropped because the ring was full, since the last call (reading
    /// the socket's statistics resets them).
    pub fn take_drops(&self) -> io::Result<u32> {
        // SAFETY: an all-zero tpacket_stats is valid; getsockopt fills it.
        let mut stats: libc::tpacket_stats = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are live and describe a buffer of exactly that size.
        check(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        })?;
        Ok(stats.tp_drops)
    }

    /// Waits up to the read timeout for a frame, then hands each waiting frame, up to
    /// `max`, to `f` in place in the ring (no copy), and gives its slot back to the kernel
    /// when `f` returns. Frames this host sent are handed over with `len` 0. Stops early
    /// when `f` returns false. Returns how many frames were handed over. (`&mut self`: a
    /// slot handed to `f` cannot be handed back to the kernel by a nested call.)
    pub fn recv_each(
        &mut self,
        max: usize,
        mut f: impl FnMut(&FrameInfo, &[u8]) -> bool,
    ) -> io::Result<usize> {
        let ring = &mut self.ring;
        if ring
            .status(ring.next)
            .load(std::sync::atomic::Ordering::Acquire)
            & libc::TP_STATUS_USER
            == 0
        {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            };
            let ms = self
                .read_timeout
                .as_micros()
                .div_ceil(1000)
                .min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::Interrupted {
                    Ok(0)
                } else {
                    Err(e)
                };
            }
        }
        let mut handed = 0;
        while handed < max {
            let i = ring.next;
            let status = ring.status(i);
            if status.load(std::sync::atomic::Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                break;
            }
            let slot = ring.slot(i);
            // SAFETY: the slot is ours (TP_STATUS_USER) until we hand it back below, and
            // lies inside the map. Fields are read by value (the status word is shared
            // with the kernel and accessed only atomically); the sockaddr_ll is at
            // TPACKET_ALIGN(sizeof(tpacket2_hdr)) = 32.
            let (net, snaplen, sll, sec, nsec) = unsafe {
                let h = slot.cast::<libc::tpacket2_hdr>();
                let net = usize::from(std::ptr::read(std::ptr::addr_of!((*h).tp_net)));
                let snaplen = std::ptr::read(std::ptr::addr_of!((*h).tp_snaplen)) as usize;
                let sec = std::ptr::read(std::ptr::addr_of!((*h).tp_sec));
                let nsec = std::ptr::read(std::ptr::addr_of!((*h).tp_nsec));
                let sll = std::ptr::read(slot.add(SLL_OFFSET).cast::<libc::sockaddr_ll>());
                (net, snaplen, sll, sec, nsec)
            };
            // SAFETY: the slot's frame area, after the header and sockaddr_ll (so not the
            // status word), inside the map and ours until handed back after `f` returns
            // (the kernel writes a slot only while its status is not USER).
            let area = unsafe {
                std::slice::from_raw_parts(
                    slot.add(FRAME_AREA) as *const u8,
                    RING_FRAME_SIZE - FRAME_AREA,
                )
            };
            // Offsets the kernel wrote are checked, never trusted to stay in the area.
            let data = net
                .checked_sub(FRAME_AREA)
                .and_then(|at| area.get(at..))
                .map(|d| &d[..snaplen.min(d.len())])
                .unwrap_or(&[]);
            let outgoing = sll.sll_pkttype == PACKET_OUTGOING;
            let info = FrameInfo {
                len: if outgoing { 0 } else { data.len() },
                ethertype: u16::from_be(sll.sll_protocol),
                ifindex: sll.sll_ifindex,
                at: std::time::UNIX_EPOCH + Duration::new(u64::from(sec), nsec.min(999_999_999)),
            };
            // The next slot's lines were written on the CPU that received the frame:
            // start fetching them while this frame is handled.
            prefetch(ring.slot((i + 1) % ring.frames));
            let more = f(&info, if outgoing { &[] } else { data });
            status.store(libc::TP_STATUS_KERNEL, std::sync::atomic::Ordering::Release);
            ring.next = (i + 1) % ring.frames;
            handed += 1;
            if !more {
                break;
            }
        }
        Ok(handed)
    }
}

/// The index of interface `name`, from sysfs (no system call needed).
pub fn ifindex(name: &str) -> io::Result<i32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .map_err(|e| io::Error::new(e.kind(), format!("interface {name:?}: {e}")))?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("interface {name:?}: bad ifindex"),
        )
    })
}

/// Returns freed heap memory to the system (glibc's malloc_trim): called after loading or
/// reloading a large users store, whose parse leaves much freed memory behind.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it is always safe to call.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Every address configured on this host's interfaces (in this network namespace): the
/// destinations a knock may name (PROTOCOL.md §6 step 15), besides configured extras.
pub fn host_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
    check(unsafe { libc::getifaddrs(&mut head) })?;
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: family AF_INET means the sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(std::net::IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ));
            } else if family == libc::AF_INET6 {
                // SAFETY: family AF_INET6 means the sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(std::net::IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_share_a_fixed_budget_in_whole_blocks() {
        assert_eq!(ring_frames(1), 4096);
        assert_eq!(ring_frames(2), 2048);
        assert_eq!(ring_frames(4), 1024);
        assert_eq!(ring_frames(128), 512, "never fewer than 512 per socket");
        for n in 1..300 {
            assert_eq!(ring_frames(n) % RING_BLOCK_FRAMES, 0);
        }
    }

    #[test]
    fn host_addresses_include_loopback() {
        let addrs = host_addresses().unwrap();
        assert!(addrs.contains(&"127.0.0.1".parse().unwrap()), "{addrs:?}");
    }
}
