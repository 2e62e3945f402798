//! The capture socket: AF_PACKET, SOCK_DGRAM (frames start at the network header), with
//! the classic BPF filter of [`crate::packet::bpf_filter`] attached *before* the socket is
//! bound to a protocol, so it never queues a frame the filter would refuse. Nothing ever
//! listens on the SPA port: the kernel hands us copies of frames our ruleset then drops.
//! (An AF_INET raw socket would not see packets the firewall drops on input.)
//!
//! This is the only module with `unsafe`: the socket system calls, each commented.
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
}

/// A packet socket with our filter.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
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
    ) -> io::Result<Self> {
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
        let rcvbuf: libc::c_int = 4 << 20;
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf).is_err() {
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf)?;
        }
        let tv = libc::timeval {
            tv_sec: read_timeout.as_secs() as libc::time_t,
            tv_usec: read_timeout.subsec_micros() as libc::suseconds_t,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;

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
        Ok(Self { fd })
    }

    /// Receives up to a batch's worth of frames with one recvmmsg(2) call (blocking for
    /// the first until the read timeout). Frames this host sent are reported with `len` 0.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<()> {
        batch.infos.clear();
        let n = batch.bufs.len();
        // Re-point the headers at the batch's own buffers: no allocation per call.
        for i in 0..n {
            batch.iovs[i] = libc::iovec {
                iov_base: batch.bufs[i].as_mut_ptr().cast(),
                iov_len: batch.bufs[i].len(),
            };
            // SAFETY: an all-zero mmsghdr is valid; we set the pointers we use.
            let mut m: libc::mmsghdr = unsafe { zeroed() };
            m.msg_hdr.msg_name = (&mut batch.addrs[i] as *mut libc::sockaddr_ll).cast();
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &mut batch.iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            batch.msgs[i] = m;
        }
        // SAFETY: `msgs` holds `n` valid headers pointing into `batch`, which outlives the
        // call. MSG_WAITFORONE: block for the first frame only, then take what is queued.
        let got = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                batch.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(()),
                _ => Err(e),
            };
        }
        for i in 0..got as usize {
            let sll = &batch.addrs[i];
            let len = if sll.sll_pkttype == PACKET_OUTGOING {
                0
            } else {
                batch.msgs[i].msg_len as usize
            };
            batch.infos.push(FrameInfo {
                len,
                ethertype: u16::from_be(sll.sll_protocol),
                ifindex: sll.sll_ifindex,
            });
        }
        Ok(())
    }
}

/// The buffers and headers of one recvmmsg call, allocated once per capture thread.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_ll>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    infos: Vec<FrameInfo>,
}

impl RecvBatch {
    /// Room for `frames` frames of up to `frame_len` bytes each.
    pub fn new(frames: usize, frame_len: usize) -> Self {
        Self {
            bufs: vec![vec![0u8; frame_len]; frames],
            // SAFETY: all-zero sockaddr_ll, iovec and mmsghdr are valid values.
            addrs: vec![unsafe { zeroed() }; frames],
            iovs: vec![unsafe { zeroed() }; frames],
            msgs: vec![unsafe { zeroed() }; frames],
            infos: Vec::with_capacity(frames),
        }
    }

    /// The frames the last call received (a frame longer than a buffer is cut to it).
    pub fn frames(&self) -> impl Iterator<Item = (&FrameInfo, &[u8])> {
        self.infos
            .iter()
            .zip(&self.bufs)
            .map(|(info, buf)| (info, &buf[..info.len.min(buf.len())]))
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
    fn host_addresses_include_loopback() {
        let addrs = host_addresses().unwrap();
        assert!(addrs.contains(&"127.0.0.1".parse().unwrap()), "{addrs:?}");
    }
}
