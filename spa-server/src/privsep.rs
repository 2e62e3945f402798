//! Privilege separation: the process that parses packets holds no capability at all; the
//! firewall is changed by a separate helper process that holds only CAP_NET_ADMIN and
//! hears nothing but typed, validated grant changes over a socketpair. Threads share
//! memory, so only a process boundary separates.
//!
//! ```text
//!  spa-server run  (the verifier: parses packets)       spa-server firewall-helper --fd N
//!  uid 0, no capabilities, empty bounding set,          uid 0, only CAP_NET_ADMIN (effective,
//!  no_new_privs; its AF_PACKET sockets were opened      permitted, bounding), no_new_privs,
//!  before the drop                                      killed when its parent dies
//!        RemoteGate ──── SOCK_SEQPACKET socketpair ────► serve() ──► NetlinkGate ──► nf_tables
//! ```
//!
//! Start-up order in `daemon::run`: install the table (the `nft` binary), open the packet
//! sockets, [`Child::spawn`] the helper (it re-executes `/proc/self/exe` with a hidden
//! subcommand and [`enter`]s its role first thing), bind the status socket, then
//! [`restrict`] the verifier to nothing before it starts a single thread (capabilities
//! and no_new_privs belong to a thread and are inherited by the threads it creates).
//!
//! If the helper dies, the verifier's watcher thread sees it exit and stops the daemon
//! with an error; if the verifier dies, the helper gets SIGKILL (PR_SET_PDEATHSIG) or
//! reads end-of-file and exits. Grants already in the kernel expire by the set timeout.
//!
//! [`Role`] and [`Child::spawn`] are generic: another role (a hook runner keeping only
//! CAP_SETUID and CAP_SETGID) is one more variant.
//!
//! # The firewall channel, version 2
//!
//! One SOCK_SEQPACKET message per request and per reply (the kernel keeps the message
//! boundaries); integers are big-endian.
//!
//! ```text
//! request  = version:u8 (2) | seq:u32 | cpu:u16 (the sender's CPU; 0xffff: none)
//!            | count:u16 (1..=MAX_CHANGES) | change × count
//! change   = op:u8 (1 open, 2 close) | family:u8 (4, 6) | addr:[u8;16] (IPv4 in the first
//!            4 bytes, the other 12 zero) | proto:u8 (6 tcp, 17 udp) | port:u16 (not 0)
//!            | timeout_s:u32 (open: 1..=MAX_TIMEOUT_S; close: 0)
//! reply    = version:u8 (2) | seq:u32 (the request's) | status:u8 (0 ok, 1 error)
//!            | message: UTF-8, at most MAX_ERROR bytes, empty when ok
//! ```
//!
//! The helper's first message is a reply with seq 0: ready (status 0) or why it could
//! not start. The helper treats the verifier as untrusted: a request that is not exactly
//! this layout is refused whole (an error reply, nothing applied) and one longer than the
//! largest valid request is discarded by the kernel's MSG_TRUNC before it is parsed.
//!
//! `cpu` is only a hint: the helper moves itself to that CPU before it applies the
//! request (the verifier's capture threads each keep to one CPU), so that the request
//! and its reply are switches between two processes on one CPU, not wake-ups of another,
//! possibly idle, CPU (hundreds of µs on a virtual machine). A CPU that cannot be used is
//! ignored; it never fails a request.
//!
//! This module and [`crate::capture`] are the only ones with `unsafe`: prctl(2), the
//! socketpair, and what runs between fork and exec, each commented.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use caps::{CapSet, Capability, CapsHashSet};
use spa_proto::{Access, Proto};

use crate::daemon::{Gate, GateChange};

/// Changes in one request: the gate worker's largest batch (1024 grants of up to 4
/// entries each), so one batch is one request and one netlink transaction, all or
/// nothing. [`RemoteGate`] splits anything larger.
pub const MAX_CHANGES: usize = 4096;
/// The longest grant the helper applies: the longest duration a configuration allows.
pub const MAX_TIMEOUT_S: u32 = 30 * 86_400;
/// The longest error text in a reply.
pub const MAX_ERROR: usize = 512;
/// How long the verifier waits for a reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the verifier waits for a new helper to be ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

const VERSION: u8 = 2;
const HEADER_LEN: usize = 9;
/// `cpu` in a request that names none.
const NO_CPU: u16 = u16::MAX;
const CHANGE_LEN: usize = 25;
const MAX_REQUEST: usize = HEADER_LEN + MAX_CHANGES * CHANGE_LEN;
const REPLY_HEADER_LEN: usize = 6;
const MAX_REPLY: usize = REPLY_HEADER_LEN + MAX_ERROR;
const OP_OPEN: u8 = 1;
const OP_CLOSE: u8 = 2;

/// A child process role: what it runs and the only capabilities it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Applies grant changes to our nftables sets over netlink.
    Firewall,
    /// Runs the admin's hook programs as an unprivileged user ([`crate::hooks`]).
    Hooks,
}

impl Role {
    /// The hidden subcommand that runs the role.
    pub const fn subcommand(self) -> &'static str {
        match self {
            Role::Firewall => "firewall-helper",
            Role::Hooks => "hook-runner",
        }
    }

    /// The capabilities the role keeps (effective, permitted and bounding); everything
    /// else is dropped.
    pub const fn capabilities(self) -> &'static [Capability] {
        match self {
            Role::Firewall => &[Capability::CAP_NET_ADMIN],
            // Become the run_as user, and kill a hook's process group (which then
            // belongs to that user) at its timeout.
            Role::Hooks => &[
                Capability::CAP_SETUID,
                Capability::CAP_SETGID,
                Capability::CAP_KILL,
            ],
        }
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn caps_err(what: &str, e: caps::errors::CapsError) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

/// Capability masks and no_new_privs of the calling thread, as the kernel reports them in
/// `/proc/thread-self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    /// CapInh.
    pub inheritable: u64,
    /// CapPrm.
    pub permitted: u64,
    /// CapEff.
    pub effective: u64,
    /// CapBnd.
    pub bounding: u64,
    /// CapAmb.
    pub ambient: u64,
    /// NoNewPrivs.
    pub no_new_privs: bool,
}

impl Privileges {
    /// Parses a `/proc/.../status` file's text.
    pub fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let mask = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        Some(Self {
            inheritable: mask("CapInh")?,
            permitted: mask("CapPrm")?,
            effective: mask("CapEff")?,
            bounding: mask("CapBnd")?,
            ambient: mask("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
        })
    }

    /// The calling thread's.
    pub fn current() -> io::Result<Self> {
        let text = std::fs::read_to_string("/proc/thread-self/status")?;
        Self::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "/proc/thread-self/status has no capability lines",
            )
        })
    }
}

/// The mask of `caps`.
pub fn mask(caps: &[Capability]) -> u64 {
    caps.iter().fold(0, |m, c| m | c.bitmask())
}

/// Keeps only `keep` (effective and permitted), empties the inheritable and ambient sets,
/// reduces the bounding set to `keep`, stops root from regaining capabilities through
/// execve (SECBIT_NOROOT, locked) and sets no_new_privs; then checks the kernel's own view
/// of the result. All of this belongs to the calling thread and is inherited by the
/// threads and processes it creates afterwards: call it before starting any thread.
pub fn restrict(keep: &[Capability]) -> io::Result<Privileges> {
    let keep_mask = mask(keep);
    // The bounding set first, while CAP_SETPCAP is still effective; every capability the
    // kernel knows, not only those this build has names for.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let has = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if has < 0 {
            break; // EINVAL: past the kernel's last capability.
        }
        if has == 1 && keep_mask & (1 << cap) == 0 {
            // SAFETY: as above.
            check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) })
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("dropping capability {cap} from the bounding set: {e} (this needs CAP_SETPCAP at start)"),
                    )
                })?;
        }
    }
    // Root gains no capability through execve, and raises no ambient one, for good.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        // SAFETY: prctl with integer arguments only.
        let bits = check(unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) })?;
        let want = bits
            | libc::SECBIT_NOROOT
            | libc::SECBIT_NOROOT_LOCKED
            | libc::SECBIT_NO_CAP_AMBIENT_RAISE
            | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
        if want != bits {
            // SAFETY: as above.
            check(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, want as libc::c_ulong, 0, 0, 0) })
                .map_err(|e| io::Error::new(e.kind(), format!("setting securebits: {e}")))?;
        }
    }
    let keep_set: CapsHashSet = keep.iter().copied().collect();
    caps::clear(None, CapSet::Ambient).map_err(|e| caps_err("clearing ambient set", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| caps_err("clearing inheritable set", e))?;
    caps::set(None, CapSet::Effective, &keep_set)
        .map_err(|e| caps_err("setting effective set", e))?;
    caps::set(None, CapSet::Permitted, &keep_set)
        .map_err(|e| caps_err("setting permitted set", e))?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    let now = Privileges::current()?;
    let want = Privileges {
        inheritable: 0,
        permitted: keep_mask,
        effective: keep_mask,
        bounding: keep_mask,
        ambient: 0,
        no_new_privs: true,
    };
    if now != want {
        return Err(io::Error::other(format!(
            "capabilities not dropped as asked: have {now:x?}, want {want:x?}"
        )));
    }
    Ok(now)
}

/// A child's first steps, before it touches anything else: die with the parent (again:
/// an exec of a file with capabilities would have cleared it) and keep only what its
/// role needs.
pub fn enter(role: Role) -> io::Result<Privileges> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    restrict(role.capabilities())
}

/// The gid of a group name (or a number).
pub fn group_id(name: &str) -> io::Result<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name with NUL"))?;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        // SAFETY: a zeroed `group` is a valid value of this plain C struct.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer refers to live memory of the length passed; the strings
        // the result points into live in `buf`, and only gr_gid (a number) is read.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut group,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no group named {name:?}"),
            ));
        }
        return Ok(group.gr_gid);
    }
}

/// One end of a SOCK_SEQPACKET socketpair: whole messages, in order, never merged.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair (both ends close-on-exec).
    pub fn pair() -> io::Result<(Self, Self)> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair(2) writes.
        check(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        })?;
        // SAFETY: two new descriptors that nothing else owns.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // Never 0, 1 or 2 (if this process was started with one closed): a child's stdio
        // would land on it.
        let above_stdio = |fd: OwnedFd| -> io::Result<OwnedFd> {
            if fd.as_raw_fd() > 2 {
                return Ok(fd);
            }
            // SAFETY: fcntl on our own descriptor; the copy is new and owned here.
            let raw = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
            // SAFETY: as above.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        };
        Ok((
            Self {
                fd: above_stdio(a)?,
            },
            Self {
                fd: above_stdio(b)?,
            },
        ))
    }

    /// Takes over the descriptor a child inherited; refuses anything that is not an open
    /// SOCK_SEQPACKET socket above stderr.
    pub fn inherit(fd: RawFd) -> io::Result<Self> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("--fd {fd}: {m}"));
        if fd < 3 {
            return Err(bad("must be above 2"));
        }
        // SAFETY: fcntl on a number; fails with EBADF if it is not open.
        let flags =
            check(unsafe { libc::fcntl(fd, libc::F_GETFD) }).map_err(|e| bad(&e.to_string()))?;
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `kind` and `len` are live and sized for SO_TYPE's int.
        check(unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&mut kind as *mut libc::c_int).cast(),
                &mut len,
            )
        })
        .map_err(|e| bad(&e.to_string()))?;
        if kind != libc::SOCK_SEQPACKET {
            return Err(bad("not a SOCK_SEQPACKET socket"));
        }
        // SAFETY: fcntl on a descriptor just checked to be open.
        check(unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) })?;
        // SAFETY: the descriptor is open and was handed to this process to own.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends one message.
    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.send_flags(msg, 0)
    }

    /// Sends one message if the socket can take it now; false (the message dropped) if its
    /// buffer is full. For messages whose loss is acceptable, never for grants.
    pub fn try_send(&self, msg: &[u8]) -> io::Result<bool> {
        match self.send_flags(msg, libc::MSG_DONTWAIT) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn send_flags(&self, msg: &[u8], flags: libc::c_int) -> io::Result<()> {
        loop {
            // SAFETY: `msg` is live for its length; MSG_NOSIGNAL: EPIPE, not SIGPIPE.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    libc::MSG_NOSIGNAL | flags,
                )
            };
            if n >= 0 {
                return if n as usize == msg.len() {
                    Ok(())
                } else {
                    Err(io::Error::other("short send on a SOCK_SEQPACKET socket"))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one message into `buf`: its length, or `None` at end of file (the peer
    /// closed). A message longer than `buf` is discarded and reported as InvalidData.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: `buf` is live and writable for its length; MSG_TRUNC makes the
            // kernel return the message's real length without writing past `buf`.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))
                    }
                    _ => return Err(e),
                }
            }
            let n = n as usize;
            if n == 0 {
                return Ok(None);
            }
            if n > buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a {n}-byte message is longer than the largest valid one"),
                ));
            }
            return Ok(Some(n));
        }
    }

    /// How long [`Self::recv`] waits (None: forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let t = timeout.unwrap_or(Duration::ZERO);
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(t.subsec_micros()),
        };
        // SAFETY: `tv` is a live timeval of the size passed.
        check(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })
        .map(drop)
    }

    /// Shuts both directions down: the peer reads end of file even while other handles to
    /// this end are still open.
    pub fn shutdown(&self) {
        // SAFETY: shutdown(2) on our own descriptor.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

/// Marks descriptors `lo..=hi` close-on-exec. Async-signal-safe (it runs between fork and
/// exec): close_range(2), or before Linux 5.11 fcntl(2) on each up to RLIMIT_NOFILE.
fn cloexec_range(lo: libc::c_uint, hi: libc::c_uint) {
    if lo > hi {
        return;
    }
    // SAFETY: system calls with integer arguments and a live, local `rlimit`.
    unsafe {
        if libc::syscall(libc::SYS_close_range, lo, hi, libc::CLOSE_RANGE_CLOEXEC) == 0 {
            return;
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as libc::c_uint
        } else {
            4096
        };
        for fd in lo..=hi.min(max) {
            let flags = libc::fcntl(fd as libc::c_int, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd as libc::c_int, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// A child role process, started and connected.
#[derive(Debug)]
pub struct Child {
    role: Role,
    child: std::process::Child,
    channel: Arc<Channel>,
}

impl Child {
    /// Starts `role`: `/proc/self/exe ROLE --fd N ARGS...` (the running binary, even if the
    /// file was replaced since) with an empty environment (but RUST_LOG), stdin and stdout
    /// on /dev/null, stderr shared (the log), in `/`, with a SOCK_SEQPACKET channel as fd N.
    /// It is killed if the thread that calls this exits (PR_SET_PDEATHSIG): call it from
    /// the daemon's main thread. The child drops to `role.capabilities()` itself
    /// ([`enter`]) before anything else.
    pub fn spawn(role: Role, args: &[&str]) -> io::Result<Self> {
        let (ours, theirs) = Channel::pair()?;
        let fd = theirs.fd.as_raw_fd();
        let parent = std::process::id();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("spa-server")
            .arg(role.subcommand())
            .arg("--fd")
            .arg(fd.to_string())
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .current_dir("/");
        if let Some(v) = std::env::var_os("RUST_LOG") {
            cmd.env("RUST_LOG", v);
        }
        // SAFETY: between fork and exec only async-signal-safe system calls run (prctl,
        // getppid, close_range, getrlimit, fcntl), nothing allocates or takes a lock.
        unsafe {
            cmd.pre_exec(move || {
                check(libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ))?;
                // The parent may have died before the prctl: then nobody would kill us.
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                // Only the child's end crosses exec: ours is close-on-exec already, and so
                // is made every descriptor this process inherited without the flag from
                // whoever started it.
                cloexec_range(3, fd as libc::c_uint - 1);
                cloexec_range(fd as libc::c_uint + 1, libc::c_uint::MAX);
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(theirs);
        Ok(Self {
            role,
            child,
            channel: Arc::new(ours),
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Our end of the channel.
    pub fn channel(&self) -> Arc<Channel> {
        self.channel.clone()
    }

    /// Waits for the child on a thread of its own; `on_exit` runs there when it ends
    /// (expected or not). Call it after [`restrict`]: the thread inherits the caller's
    /// capabilities.
    pub fn watch(
        self,
        on_exit: impl FnOnce(Role, io::Result<ExitStatus>) + Send + 'static,
    ) -> io::Result<Watched> {
        let Self {
            role,
            mut child,
            channel,
        } = self;
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("watch-{}", role.subcommand()))
            .spawn(move || {
                let status = child.wait();
                on_exit(role, status);
                let _ = tx.send(());
            })?;
        Ok(Watched {
            role,
            pid,
            channel,
            exited: rx,
        })
    }
}

/// A child role process whose exit a thread waits for.
#[derive(Debug)]
pub struct Watched {
    role: Role,
    pid: u32,
    channel: Arc<Channel>,
    exited: Receiver<()>,
}

impl Watched {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Closes the channel (the child reads end of file and exits) and waits up to `limit`
    /// for it; false if it is still running (it is killed when this process exits).
    pub fn stop(self, limit: Duration) -> bool {
        self.channel.shutdown();
        !matches!(
            self.exited.recv_timeout(limit),
            Err(RecvTimeoutError::Timeout)
        )
    }
}

fn encode_change(out: &mut Vec<u8>, c: &GateChange) {
    let (op, addr, access, timeout_s) = match *c {
        GateChange::Open {
            addr,
            access,
            timeout,
        } => {
            let secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
            (
                OP_OPEN,
                addr,
                access,
                u32::try_from(secs).unwrap_or(u32::MAX),
            )
        }
        GateChange::Close { addr, access } => (OP_CLOSE, addr, access, 0),
    };
    let (family, bytes) = match addr {
        IpAddr::V4(a) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&a.octets());
            (4, b)
        }
        IpAddr::V6(a) => (6, a.octets()),
    };
    out.push(op);
    out.push(family);
    out.extend_from_slice(&bytes);
    out.push(access.proto().number());
    out.extend_from_slice(&access.port().to_be_bytes());
    out.extend_from_slice(&timeout_s.to_be_bytes());
}

/// A request: its sequence number, the CPU its sender runs on, and the changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the reply.
    pub seq: u32,
    /// Where the sender waits for the reply (a hint).
    pub cpu: Option<u16>,
    /// What to apply, all or nothing.
    pub changes: Vec<GateChange>,
}

/// A request carrying `changes` (at most [`MAX_CHANGES`]).
pub fn encode_request(seq: u32, cpu: Option<u16>, changes: &[GateChange]) -> Vec<u8> {
    assert!(
        (1..=MAX_CHANGES).contains(&changes.len()),
        "1 to {MAX_CHANGES} changes per request"
    );
    let mut out = Vec::with_capacity(HEADER_LEN + changes.len() * CHANGE_LEN);
    out.push(VERSION);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&cpu.unwrap_or(NO_CPU).to_be_bytes());
    out.extend_from_slice(&(changes.len() as u16).to_be_bytes());
    for c in changes {
        encode_change(&mut out, c);
    }
    out
}

fn decode_change(b: &[u8]) -> Result<GateChange, String> {
    let (op, family) = (b[0], b[1]);
    let addr = match family {
        4 if b[6..18].iter().all(|&x| x == 0) => IpAddr::V4(Ipv4Addr::new(b[2], b[3], b[4], b[5])),
        4 => return Err("IPv4 address with bytes beyond the fourth".into()),
        6 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(&b[2..18]).expect("16 bytes"),
        )),
        f => return Err(format!("unknown address family {f}")),
    };
    let proto = Proto::from_number(b[18]).ok_or_else(|| format!("unknown protocol {}", b[18]))?;
    let port = u16::from_be_bytes([b[19], b[20]]);
    let access = Access::new(proto, port).map_err(|e| e.to_string())?;
    let timeout_s = u32::from_be_bytes([b[21], b[22], b[23], b[24]]);
    match op {
        OP_OPEN if (1..=MAX_TIMEOUT_S).contains(&timeout_s) => Ok(GateChange::Open {
            addr,
            access,
            timeout: Duration::from_secs(u64::from(timeout_s)),
        }),
        OP_OPEN => Err(format!("timeout {timeout_s} s outside 1..={MAX_TIMEOUT_S}")),
        OP_CLOSE if timeout_s == 0 => Ok(GateChange::Close { addr, access }),
        OP_CLOSE => Err("a close with a timeout".into()),
        op => Err(format!("unknown operation {op}")),
    }
}

/// Parses and validates a whole request, or gives (the sequence number when readable,
/// why it was refused).
pub fn decode_request(msg: &[u8]) -> Result<Request, (u32, String)> {
    if msg.len() < HEADER_LEN {
        return Err((0, format!("a {}-byte request is too short", msg.len())));
    }
    let seq = u32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]);
    if msg[0] != VERSION {
        return Err((seq, format!("unknown version {}", msg[0])));
    }
    let cpu = Some(u16::from_be_bytes([msg[5], msg[6]])).filter(|&c| c != NO_CPU);
    let count = usize::from(u16::from_be_bytes([msg[7], msg[8]]));
    if !(1..=MAX_CHANGES).contains(&count) {
        return Err((seq, format!("{count} changes (1 to {MAX_CHANGES} allowed)")));
    }
    if msg.len() != HEADER_LEN + count * CHANGE_LEN {
        return Err((seq, format!("{} bytes for {count} changes", msg.len())));
    }
    msg[HEADER_LEN..]
        .chunks_exact(CHANGE_LEN)
        .enumerate()
        .map(|(i, b)| decode_change(b).map_err(|e| (seq, format!("change {i}: {e}"))))
        .collect::<Result<Vec<_>, _>>()
        .map(|changes| Request { seq, cpu, changes })
}

/// A reply; an error text is cut to [`MAX_ERROR`] bytes (at a character boundary).
pub fn encode_reply(seq: u32, result: Result<(), &str>) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend_from_slice(&seq.to_be_bytes());
    match result {
        Ok(()) => out.push(0),
        Err(e) => {
            out.push(1);
            let mut end = e.len().min(MAX_ERROR);
            while !e.is_char_boundary(end) {
                end -= 1;
            }
            out.extend_from_slice(&e.as_bytes()[..end]);
        }
    }
    out
}

/// Parses a reply: its sequence number and result.
pub fn decode_reply(msg: &[u8]) -> io::Result<(u32, Result<(), String>)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("firewall helper: {m}"));
    if msg.len() < REPLY_HEADER_LEN || msg.len() > MAX_REPLY || msg[0] != VERSION {
        return Err(bad("malformed reply"));
    }
    let seq = u32::from_be_bytes([msg[1], msg[2], msg[3], msg[4]]);
    match (msg[5], &msg[REPLY_HEADER_LEN..]) {
        (0, []) => Ok((seq, Ok(()))),
        (1, text) => Ok((seq, Err(String::from_utf8_lossy(text).into_owned()))),
        _ => Err(bad("malformed reply")),
    }
}

/// The firewall as the verifier sees it: each batch goes to the helper and waits for its
/// answer.
#[derive(Debug)]
pub struct RemoteGate {
    channel: Arc<Channel>,
    seq: u32,
    buf: Vec<u8>,
}

impl RemoteGate {
    /// Over `channel`; waits up to `ready_within` for the helper's ready message.
    pub fn connect(channel: Arc<Channel>, ready_within: Duration) -> io::Result<Self> {
        let gate = Self {
            channel,
            seq: 0,
            buf: vec![0; MAX_REPLY],
        };
        wait_ready(&gate.channel, ready_within)?;
        gate.channel.set_read_timeout(Some(REPLY_TIMEOUT))?;
        Ok(gate)
    }

    /// How long [`Gate::apply`] waits for each reply ([`REPLY_TIMEOUT`] unless changed);
    /// at least 1 ms (a zero socket timeout would mean forever).
    pub fn set_reply_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.channel
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
    }

    /// The reply to request `seq`; older replies (to requests that timed out) are skipped.
    fn reply(&mut self, seq: u32) -> io::Result<Result<(), String>> {
        loop {
            let n = match self.channel.recv(&mut self.buf) {
                Ok(n) => n,
                // Not "failed": the helper may still apply it. Said so, for the record.
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the firewall helper gave no answer in time: the change may still \
                         be applied late, and then lasts its full duration from then",
                    ))
                }
                Err(e) => return Err(e),
            }
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the firewall helper is gone")
            })?;
            let (got, result) = decode_reply(&self.buf[..n])?;
            if got == seq {
                return Ok(result);
            }
        }
    }
}

impl Gate for RemoteGate {
    fn apply(&mut self, changes: &[GateChange]) -> io::Result<()> {
        let cpu = nix::sched::sched_getcpu()
            .ok()
            .and_then(|c| u16::try_from(c).ok());
        for chunk in changes.chunks(MAX_CHANGES) {
            self.seq = self.seq.wrapping_add(1).max(1);
            self.channel.send(&encode_request(self.seq, cpu, chunk))?;
            self.reply(self.seq)?
                .map_err(|e| io::Error::other(format!("firewall helper: {e}")))?;
        }
        Ok(())
    }
}

/// Serves requests on `channel` with `gate` until the verifier closes it (Ok) or the
/// channel fails. Every request is validated whole before anything is applied. With
/// `follow`, the calling thread first moves to the CPU a request names.
pub fn serve(channel: &Channel, gate: &mut dyn Gate, follow: bool) -> io::Result<()> {
    let mut buf = vec![0; MAX_REQUEST];
    let mut here = None;
    loop {
        let reply = match channel.recv(&mut buf) {
            Ok(None) => return Ok(()),
            Ok(Some(n)) => match decode_request(&buf[..n]) {
                Ok(req) => {
                    if follow && req.cpu.is_some() && req.cpu != here {
                        here = req.cpu.filter(|&c| move_to(usize::from(c)));
                    }
                    match gate.apply(&req.changes) {
                        Ok(()) => encode_reply(req.seq, Ok(())),
                        Err(e) => encode_reply(req.seq, Err(&e.to_string())),
                    }
                }
                Err((seq, why)) => {
                    tracing::warn!(error = %why, "firewall helper: request refused");
                    encode_reply(seq, Err(&format!("request refused: {why}")))
                }
            },
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!(error = %e, "firewall helper: request refused");
                encode_reply(0, Err(&format!("request refused: {e}")))
            }
            Err(e) => return Err(e),
        };
        channel.send(&reply)?;
    }
}

/// The CPUs the calling thread may run on (none when that cannot be read).
pub fn allowed_cpus() -> Vec<usize> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect()
}

/// Pins the calling thread to `cpu`; false (and left where it was) when that is refused,
/// e.g. a CPU that does not exist or is not allowed.
pub fn move_to(cpu: usize) -> bool {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set))
        .is_ok()
}

fn valid_table(table: &str) -> bool {
    (1..=32).contains(&table.len())
        && table.starts_with(|c: char| c.is_ascii_alphabetic())
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A child role's start, the other side of [`wait_ready`]: takes the channel on `fd`,
/// ignores the group's SIGTERM and SIGINT, drops to `role`'s privileges, runs `start`, and
/// only then says ready, or why it could not start. `name` prefixes its errors.
fn start_role<T>(
    fd: RawFd,
    role: Role,
    name: &str,
    start: impl FnOnce() -> Result<T, String>,
) -> Result<(Channel, T), String> {
    let channel = Channel::inherit(fd).map_err(|e| e.to_string())?;
    // The daemon decides when this process ends: it closes the channel, or it dies and
    // PR_SET_PDEATHSIG kills us. A SIGTERM or Ctrl-C sent to the whole group is ignored,
    // so the daemon's own orderly stop is not mistaken for a child's crash.
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::new(AtomicBool::new(false)))
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let started = enter(role)
        .map_err(|e| format!("dropping privileges: {e}"))
        .and_then(|_| start());
    match started {
        Ok(value) => {
            channel
                .send(&encode_reply(0, Ok(())))
                .map_err(|e| format!("{name}: {e}"))?;
            Ok((channel, value))
        }
        Err(e) => {
            let _ = channel.send(&encode_reply(0, Err(&e)));
            Err(format!("{name}: {e}"))
        }
    }
}

/// `spa-server firewall-helper --fd N --table T`: the firewall role's process.
pub fn firewall_helper(fd: RawFd, table: &str) -> Result<(), String> {
    let (channel, mut gate) = start_role(fd, Role::Firewall, "firewall helper", || {
        if !valid_table(table) {
            return Err("not a valid table name".into());
        }
        crate::netlink::NetlinkGate::open(table).map_err(|e| format!("netlink socket: {e}"))
    })?;
    tracing::debug!(table, "firewall helper ready");
    serve(&channel, &mut gate, true).map_err(|e| format!("firewall helper: channel: {e}"))
}

/// The longest hook event message (JSON); longer ones are discarded unread.
pub const MAX_HOOK_EVENT: usize = 1024;

/// `spa-server hook-runner --fd N`: the hooks role's process. It reads the `[hooks]`
/// section of the configuration and runs hooks for the events the daemon sends, one JSON
/// [`crate::hooks::HookEvent`] per message (validated again here).
pub fn hook_runner(fd: RawFd, config: &std::path::Path) -> Result<(), String> {
    let (channel, runner) = start_role(fd, Role::Hooks, "hook runner", || {
        let config = spa_keys::server::ServerConfig::load(config).map_err(|e| e.to_string())?;
        crate::hooks::HookRunner::start(&config.hooks, crate::hooks::HookLimits::default(), None)
            .map_err(|e| e.to_string())
    })?;
    let mut buf = vec![0u8; MAX_HOOK_EVENT];
    loop {
        match channel.recv(&mut buf) {
            Ok(None) => break,
            Ok(Some(n)) => match serde_json::from_slice::<crate::hooks::HookEvent>(&buf[..n]) {
                Ok(event) => {
                    runner.submit(event);
                }
                Err(_) => tracing::warn!("hook runner: an event that does not parse was dropped"),
            },
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::warn!("hook runner: an overlong event was dropped")
            }
            Err(e) => return Err(format!("hook runner: channel: {e}")),
        }
    }
    let stats = runner.finish();
    tracing::debug!(?stats, "hook runner stopped");
    Ok(())
}

/// Starts the hook runner, reading `[hooks]` from the configuration at `config`, and
/// waits until it is ready (its privileges dropped).
pub fn start_hooks(config: &std::path::Path) -> Result<Child, String> {
    let path = config
        .to_str()
        .ok_or("the configuration path is not UTF-8")?
        .to_owned();
    let child = Child::spawn(Role::Hooks, &["--config", &path])
        .map_err(|e| format!("starting the hook runner: {e}"))?;
    wait_ready(&child.channel(), READY_TIMEOUT).map_err(|e| format!("hook runner: {e}"))?;
    Ok(child)
}

/// Waits for a child role's first message: ready, or why it could not start.
fn wait_ready(channel: &Channel, within: Duration) -> io::Result<()> {
    channel.set_read_timeout(Some(within))?;
    let mut buf = vec![0; MAX_REPLY];
    let n = channel
        .recv(&mut buf)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "exited before it was ready"))?;
    channel.set_read_timeout(None)?;
    match decode_reply(&buf[..n])? {
        (0, Ok(())) => Ok(()),
        (0, Err(e)) => Err(io::Error::other(format!("could not start: {e}"))),
        (seq, _) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a reply to request {seq} before ready"),
        )),
    }
}

/// Starts the firewall helper for `table` and waits until it is ready.
pub fn start_firewall(table: &str) -> Result<(Child, RemoteGate), String> {
    let child = Child::spawn(Role::Firewall, &["--table", table])
        .map_err(|e| format!("starting the firewall helper: {e}"))?;
    let gate = RemoteGate::connect(child.channel(), READY_TIMEOUT)
        .map_err(|e| format!("firewall helper: {e}"))?;
    Ok((child, gate))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sample() -> Vec<GateChange> {
        vec![
            GateChange::Open {
                addr: v4("192.0.2.1"),
                access: Access::tcp(22).unwrap(),
                timeout: Duration::from_secs(30),
            },
            GateChange::Close {
                addr: "2001:db8::1".parse().unwrap(),
                access: Access::udp(51820).unwrap(),
            },
        ]
    }

    #[test]
    fn requests_round_trip_and_anything_else_is_refused_whole() {
        let msg = encode_request(7, Some(1), &sample());
        assert_eq!(msg.len(), HEADER_LEN + 2 * CHANGE_LEN);
        let want = Request {
            seq: 7,
            cpu: Some(1),
            changes: sample(),
        };
        assert_eq!(decode_request(&msg).as_ref(), Ok(&want));
        // No CPU, or the one value that means none.
        for cpu in [None, Some(NO_CPU)] {
            let got = decode_request(&encode_request(7, cpu, &sample())).unwrap();
            assert_eq!(got.cpu, None);
        }
        // A sub-second timeout rounds up, never down to 0.
        let short = [GateChange::Open {
            addr: v4("192.0.2.1"),
            access: Access::tcp(22).unwrap(),
            timeout: Duration::from_millis(1500),
        }];
        match &decode_request(&encode_request(1, None, &short))
            .unwrap()
            .changes[0]
        {
            GateChange::Open { timeout, .. } => assert_eq!(*timeout, Duration::from_secs(2)),
            c => panic!("{c:?}"),
        }

        let refused = |f: &dyn Fn(&mut Vec<u8>), why: &str| {
            let mut m = msg.clone();
            f(&mut m);
            let err = decode_request(&m).unwrap_err();
            assert!(err.1.contains(why), "{err:?} (wanted {why:?})");
        };
        let change = |i: usize| HEADER_LEN + i;
        refused(&|m| m[0] = 1, "version");
        refused(&|m| m.truncate(3), "too short");
        refused(&|m| m.push(0), "bytes for 2 changes");
        refused(&|m| m.truncate(m.len() - 1), "bytes for 2 changes");
        refused(
            &|m| m[7..9].copy_from_slice(&0u16.to_be_bytes()),
            "0 changes",
        );
        refused(
            &|m| m[7..9].copy_from_slice(&(MAX_CHANGES as u16 + 1).to_be_bytes()),
            "4097 changes",
        );
        refused(&|m| m[change(0)] = 3, "unknown operation");
        refused(&|m| m[change(1)] = 5, "address family");
        refused(&|m| m[change(10)] = 1, "beyond the fourth");
        refused(&|m| m[change(18)] = 1, "unknown protocol");
        refused(&|m| m[change(19)..change(21)].fill(0), "port 0");
        refused(&|m| m[change(21)..change(25)].fill(0), "timeout 0 s");
        refused(
            &|m| m[change(21)..change(25)].copy_from_slice(&(MAX_TIMEOUT_S + 1).to_be_bytes()),
            "outside",
        );
        // The second change (a close) carrying a timeout.
        refused(
            &|m| m[change(CHANGE_LEN + 24)] = 1,
            "change 1: a close with a timeout",
        );
    }

    #[test]
    fn replies_round_trip_and_are_bounded() {
        assert_eq!(decode_reply(&encode_reply(9, Ok(()))).unwrap(), (9, Ok(())));
        let long = "é".repeat(MAX_ERROR);
        let msg = encode_reply(3, Err(&long));
        assert!(msg.len() <= MAX_REPLY);
        let (seq, r) = decode_reply(&msg).unwrap();
        assert_eq!(seq, 3);
        assert_eq!(r.unwrap_err(), "é".repeat(MAX_ERROR / 2));
        assert!(
            decode_reply(&[VERSION, 0, 0, 0, 1, 0, b'x']).is_err(),
            "ok with text"
        );
        assert!(decode_reply(&[VERSION, 0, 0]).is_err());
        assert!(decode_reply(&[1, 0, 0, 0, 1, 0]).is_err(), "version 1");
        let mut too_long = encode_reply(1, Err("x"));
        too_long.resize(MAX_REPLY + 1, b'x');
        assert!(decode_reply(&too_long).is_err());
    }

    #[derive(Default)]
    struct Recorder(Vec<GateChange>, bool);

    impl Gate for Recorder {
        fn apply(&mut self, changes: &[GateChange]) -> io::Result<()> {
            if self.1 {
                return Err(io::Error::other("netlink says no"));
            }
            self.0.extend_from_slice(changes);
            Ok(())
        }
    }

    /// Records, with each batch, the CPUs the applying thread may run on.
    struct WhereApplied(Vec<Vec<usize>>);

    impl Gate for WhereApplied {
        fn apply(&mut self, _: &[GateChange]) -> io::Result<()> {
            self.0.push(allowed_cpus());
            Ok(())
        }
    }

    #[test]
    fn the_helper_moves_to_the_cpu_a_request_names_and_ignores_one_it_cannot_use() {
        let (ours, theirs) = Channel::pair().unwrap();
        // The serving thread is a throwaway one: only it is moved.
        let helper = std::thread::spawn(move || {
            let mut gate = WhereApplied(Vec::new());
            serve(&theirs, &mut gate, true).unwrap();
            gate.0
        });
        let me = nix::sched::sched_getcpu().unwrap() as u16;
        let mut buf = [0; MAX_REPLY];
        let mut ask = |seq: u32, cpu: Option<u16>| {
            ours.send(&encode_request(seq, cpu, &sample())).unwrap();
            let n = ours.recv(&mut buf).unwrap().unwrap();
            assert_eq!(decode_reply(&buf[..n]).unwrap(), (seq, Ok(())), "{cpu:?}");
        };
        ask(1, Some(me));
        // CPUs that do not exist: applied all the same, and the thread stays where it was.
        ask(2, Some(4000));
        ask(3, Some(NO_CPU - 1));
        ask(4, None);
        ours.shutdown();
        let seen = helper.join().unwrap();
        assert_eq!(seen.len(), 4);
        for cpus in &seen {
            assert_eq!(cpus, &[usize::from(me)]);
        }
    }

    #[test]
    fn remote_gate_over_a_socketpair() {
        let (ours, theirs) = Channel::pair().unwrap();
        let helper = std::thread::spawn(move || {
            theirs.send(&encode_reply(0, Ok(()))).unwrap();
            let mut gate = Recorder::default();
            serve(&theirs, &mut gate, false).unwrap();
            gate.0
        });
        let ours = Arc::new(ours);
        let mut gate = RemoteGate::connect(ours.clone(), Duration::from_secs(5)).unwrap();
        gate.apply(&sample()).unwrap();
        // Batches larger than one request are split.
        let many: Vec<GateChange> = (0..MAX_CHANGES as u16 + 5)
            .map(|p| GateChange::Close {
                addr: v4("192.0.2.9"),
                access: Access::tcp(p + 1).unwrap(),
            })
            .collect();
        gate.apply(&many).unwrap();
        // A hostile message: refused with an error reply, the channel keeps working.
        ours.send(&[1, 0, 0, 0, 42, 0]).unwrap();
        let mut buf = [0; MAX_REPLY];
        let n = ours.recv(&mut buf).unwrap().unwrap();
        let (seq, r) = decode_reply(&buf[..n]).unwrap();
        assert_eq!(seq, 0);
        assert!(r.unwrap_err().contains("too short"));
        ours.send(&vec![0; MAX_REQUEST + 1]).unwrap();
        let n = ours.recv(&mut buf).unwrap().unwrap();
        assert!(decode_reply(&buf[..n])
            .unwrap()
            .1
            .unwrap_err()
            .contains("longer"));
        // The stale replies above are skipped by sequence number.
        gate.apply(&sample()[..1]).unwrap();
        ours.shutdown();
        let applied = helper.join().unwrap();
        assert_eq!(applied.len(), 2 + many.len() + 1);
        assert_eq!(applied[..2], sample()[..]);
        // The helper is gone: apply fails instead of hanging.
        let err = gate.apply(&sample()).unwrap_err();
        assert!(matches!(err.kind(), io::ErrorKind::BrokenPipe), "{err}");
    }

    #[test]
    fn helper_errors_reach_the_verifier_and_silence_times_out() {
        let (ours, theirs) = Channel::pair().unwrap();
        let helper = std::thread::spawn(move || {
            theirs.send(&encode_reply(0, Ok(()))).unwrap();
            serve(&theirs, &mut Recorder(Vec::new(), true), false).unwrap();
        });
        let mut gate = RemoteGate::connect(Arc::new(ours), Duration::from_secs(5)).unwrap();
        let err = gate.apply(&sample()).unwrap_err().to_string();
        assert!(err.contains("netlink says no"), "{err}");
        drop(gate);
        helper.join().unwrap();

        let (ours, _theirs) = Channel::pair().unwrap();
        let err = RemoteGate::connect(Arc::new(ours), Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // A helper that takes the request and never answers: the error says the change
        // may still happen, rather than that it failed.
        let (ours, theirs) = Channel::pair().unwrap();
        theirs.send(&encode_reply(0, Ok(()))).unwrap();
        let gate = RemoteGate::connect(Arc::new(ours), Duration::from_secs(5));
        let mut gate = gate.unwrap();
        gate.set_reply_timeout(Duration::from_millis(100)).unwrap();
        let err = gate.apply(&sample()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("may still be applied"), "{err}");
        let mut buf = vec![0; MAX_REQUEST];
        let n = theirs.recv(&mut buf).unwrap().unwrap();
        assert_eq!(decode_request(&buf[..n]).unwrap().changes, sample());
    }

    #[test]
    fn inherit_refuses_what_is_not_a_channel() {
        assert!(Channel::inherit(1).is_err());
        assert!(Channel::inherit(987_654).is_err());
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let err = Channel::inherit(file.as_raw_fd()).unwrap_err().to_string();
        assert!(
            err.contains("SOCK_SEQPACKET") || err.contains("socket"),
            "{err}"
        );
    }

    #[test]
    fn privileges_parse_proc_status() {
        let text = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000001000\n\
                    CapEff:\t0000000000001000\nCapBnd:\t0000000000001000\n\
                    CapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let p = Privileges::parse(text).unwrap();
        assert_eq!(p.effective, mask(Role::Firewall.capabilities()));
        assert_eq!(p.effective, 1 << 12);
        assert!(p.no_new_privs);
        assert!(Privileges::parse("Name:\tx\n").is_none());
    }

    /// Capabilities belong to a thread: this test drops them on a thread of its own, so
    /// the rest of the test process keeps its own.
    #[test]
    fn restrict_keeps_only_what_is_asked_and_cannot_be_undone() {
        let start = Privileges::current().unwrap();
        if start.effective & mask(&[Capability::CAP_SETPCAP, Capability::CAP_NET_ADMIN])
            != mask(&[Capability::CAP_SETPCAP, Capability::CAP_NET_ADMIN])
        {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI runs the tests as root"
            );
            eprintln!("\n!!!!!!!! SKIPPED restrict_keeps_only_what_is_asked: not root !!!!!!!!\n");
            return;
        }
        std::thread::spawn(|| {
            let p = restrict(&[Capability::CAP_NET_ADMIN]).unwrap();
            assert_eq!(p.effective, 1 << 12);
            assert_eq!(p.bounding, 1 << 12);
            assert!(p.no_new_privs);
            // Nothing comes back.
            assert!(caps::raise(None, CapSet::Effective, Capability::CAP_NET_RAW).is_err());
            assert!(caps::set(None, CapSet::Permitted, &caps::all()).is_err());
            // SAFETY: prctl with integer arguments only.
            let bits = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
            assert_ne!(bits & libc::SECBIT_NOROOT_LOCKED, 0);
            // A packet socket needs CAP_NET_RAW, which is gone.
            let err = crate::capture::PacketSocket::open(&[], None, Duration::from_millis(10), 512)
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        })
        .join()
        .unwrap();
        std::thread::spawn(|| {
            let p = restrict(&[]).unwrap();
            assert_eq!((p.effective, p.permitted, p.bounding), (0, 0, 0));
            assert_eq!((p.inheritable, p.ambient), (0, 0));
        })
        .join()
        .unwrap();
        assert_eq!(
            Privileges::current().unwrap(),
            start,
            "only that thread dropped"
        );
    }
}
