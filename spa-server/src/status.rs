//! `spa-server status`: the running daemon answers on a Unix stream socket, one request
//! and one JSON reply per connection.
//!
//! The socket is created 0600 (root only), or 0660 with the configured group, inside a
//! private temporary directory and renamed into place, so it is never reachable with
//! looser modes. The verifier process serves it (it holds no capability; the socket is
//! bound before the drop). One connection at a time, each with a bounded request and
//! read/write timeouts, so a client that stalls delays others by a second at most.
//!
//! ```text
//! request = {"version":1,"request":"status"} and a newline (at most 256 bytes)
//! reply   = {"version":1,"pid":..,"uptime_s":..,"grants":[{"user","addr","access",
//!           "seconds_left"}],"counters":{"reason":count,...}}  or  {"version":1,"error":".."}
//! ```

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::daemon::GateHandle;
use crate::pipeline::Pipeline;

/// The protocol version in requests and replies.
pub const VERSION: u32 = 1;
/// The longest request the daemon reads.
pub const MAX_REQUEST: u64 = 256;
/// The longest reply the client reads.
pub const MAX_REPLY: u64 = 16 << 20;
/// The daemon's read and write timeout per connection.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the client waits for the reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    version: u32,
    request: String,
}

/// One grant open now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenGrant {
    /// The user.
    pub user: String,
    /// The address it is open for.
    pub addr: IpAddr,
    /// `tcp/PORT` or `udp/PORT`.
    pub access: String,
    /// Seconds until the kernel closes it (rounded up).
    pub seconds_left: u64,
}

/// The daemon's state, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Protocol version.
    pub version: u32,
    /// The daemon's (the verifier's) process id.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// Grants open now, soonest to close first.
    pub grants: Vec<OpenGrant>,
    /// Counts per outcome since start (`granted`, `failed`, and each reject or drop
    /// reason); reasons never seen are left out.
    pub counters: BTreeMap<String, u64>,
}

impl Status {
    /// The running daemon's state now.
    pub fn collect(started: Instant, pipeline: &Pipeline, grants: &GateHandle) -> Self {
        let now = Instant::now();
        let mut open: Vec<OpenGrant> = grants
            .open_grants(now)
            .into_iter()
            .map(|(user, addr, access, left)| OpenGrant {
                user: user.to_string(),
                addr,
                access: access.to_string(),
                seconds_left: left.as_secs() + u64::from(left.subsec_nanos() > 0),
            })
            .collect();
        open.sort_by_key(|g| g.seconds_left);
        Self {
            version: VERSION,
            pid: std::process::id(),
            uptime_s: now.saturating_duration_since(started).as_secs(),
            grants: open,
            counters: pipeline
                .counters
                .snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        }
    }
}

/// Text from the daemon, made safe for a terminal (no control characters).
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    use std::fmt::Write as _;
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[String]| {
        let mut l = String::from("  ");
        for (i, (w, c)) in width.iter().zip(cells).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        line(r);
    }
}

/// The readable form.
pub fn render(s: &Status) -> String {
    let dur = |secs: u64| humantime::format_duration(Duration::from_secs(secs)).to_string();
    let mut out = format!(
        "spa-server running for {} (pid {})\n\n",
        dur(s.uptime_s),
        s.pid
    );
    if s.grants.is_empty() {
        out.push_str("grants open now: none\n");
    } else {
        out.push_str(&format!("grants open now: {}\n", s.grants.len()));
        let rows: Vec<Vec<String>> = s
            .grants
            .iter()
            .map(|g| {
                vec![
                    printable(&g.user),
                    g.addr.to_string(),
                    printable(&g.access),
                    dur(g.seconds_left),
                ]
            })
            .collect();
        table(&mut out, &["USER", "ADDRESS", "ACCESS", "LEFT"], &rows);
    }
    out.push('\n');
    if s.counters.is_empty() {
        out.push_str("counters since start: none (no knock seen yet)\n");
    } else {
        out.push_str("counters since start:\n");
        let rows: Vec<Vec<String>> = s
            .counters
            .iter()
            .map(|(k, v)| vec![printable(k), v.to_string()])
            .collect();
        table(&mut out, &["OUTCOME", "COUNT"], &rows);
    }
    out
}

/// The daemon's listening status socket.
#[derive(Debug)]
pub struct StatusServer {
    listener: UnixListener,
    path: PathBuf,
    id: (u64, u64),
}

fn other(path: &Path, m: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("status socket {}: {m}", path.display()))
}

impl StatusServer {
    /// Binds `path`: mode 0600, or 0660 with group `gid`. Makes its directory if missing
    /// (0700, or 0750 with the group). A socket left by a daemon that died is replaced;
    /// one a running daemon answers on, or any other kind of file, is refused.
    pub fn bind(path: &Path, gid: Option<u32>) -> io::Result<Self> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .ok_or_else(|| other(path, "not a file name"))?;
        if !dir.exists() {
            let mode = if gid.is_some() { 0o750 } else { 0o700 };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(|e| other(path, format!("making {}: {e}", dir.display())))?;
            // The umask (systemd's UMask=0077) may have taken the group's bits.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| other(path, format!("chmod {}: {e}", dir.display())))?;
            if let Some(gid) = gid {
                std::os::unix::fs::chown(dir, None, Some(gid))
                    .map_err(|e| other(path, format!("chown {}: {e}", dir.display())))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(other(path, "another spa-server answers on it")),
                Err(_) => std::fs::remove_file(path).map_err(|e| other(path, e))?,
            },
            Ok(_) => {
                return Err(other(
                    path,
                    "exists and is not a socket; refusing to replace it",
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(other(path, e)),
        }
        // Bound in a private directory, given its mode and group, then renamed into place.
        let tmp = dir.join(format!(".spa-status.{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|e| other(path, format!("making {}: {e}", tmp.display())))?;
        let placed = (|| {
            let at = tmp.join(name);
            let listener = UnixListener::bind(&at)?;
            std::fs::set_permissions(
                &at,
                std::fs::Permissions::from_mode(if gid.is_some() { 0o660 } else { 0o600 }),
            )?;
            if let Some(gid) = gid {
                std::os::unix::fs::chown(&at, None, Some(gid))?;
            }
            std::fs::rename(&at, path)?;
            Ok::<_, io::Error>(listener)
        })();
        let _ = std::fs::remove_file(tmp.join(name));
        let _ = std::fs::remove_dir(&tmp);
        let listener = placed.map_err(|e| other(path, e))?;
        let m = std::fs::symlink_metadata(path).map_err(|e| other(path, e))?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            id: (m.dev(), m.ino()),
        })
    }

    /// Answers requests until `stop` is set (checked every 100 ms), then removes the
    /// socket file if it is still ours.
    pub fn serve(self, stop: &AtomicBool, status: impl Fn() -> Status) {
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    if let Err(e) = answer(conn, &status) {
                        tracing::debug!(error = %e, "status request not answered");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "status socket accept failed");
                    std::thread::sleep(Duration::from_millis(100))
                }
            }
        }
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn answer(conn: UnixStream, status: &impl Fn() -> Status) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(SERVER_TIMEOUT))?;
    conn.set_write_timeout(Some(SERVER_TIMEOUT))?;
    let mut line = Vec::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_until(b'\n', &mut line)?;
    let reply = match serde_json::from_slice::<Request>(&line) {
        Ok(r) if r.version == VERSION && r.request == "status" => serde_json::to_vec(&status()),
        Ok(_) => serde_json::to_vec(
            &serde_json::json!({"version": VERSION, "error": "unknown request or version"}),
        ),
        Err(_) => {
            serde_json::to_vec(&serde_json::json!({"version": VERSION, "error": "not a request"}))
        }
    }
    .map_err(io::Error::other)?;
    let mut w = &conn;
    w.write_all(&reply)?;
    w.write_all(b"\n")?;
    w.flush()
}

/// Serves `server` on a thread: the daemon's wiring.
pub fn spawn(
    server: StatusServer,
    started: Instant,
    pipeline: Arc<Pipeline>,
    grants: Arc<GateHandle>,
    stop: Arc<AtomicBool>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("status".into())
        .spawn(move || server.serve(&stop, || Status::collect(started, &pipeline, &grants)))
}

/// Asks the daemon listening on `path`.
pub fn query(path: &Path) -> Result<Status, String> {
    let p = path.display();
    let conn = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => {
            format!("the daemon is not running (no status socket {p}; start it with `spa-server run` or `systemctl start spa-server`)")
        }
        io::ErrorKind::ConnectionRefused => {
            format!("the daemon is not running (nothing answers on {p}, left by a daemon that died)")
        }
        io::ErrorKind::PermissionDenied => {
            format!("{p}: permission denied (the status socket is for root, or the group set in [status] group)")
        }
        _ => format!("{p}: {e}"),
    })?;
    let talk = || -> io::Result<Vec<u8>> {
        conn.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        conn.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        let mut w = &conn;
        serde_json::to_writer(
            &mut w,
            &Request {
                version: VERSION,
                request: "status".into(),
            },
        )?;
        w.write_all(b"\n")?;
        conn.shutdown(std::net::Shutdown::Write)?;
        let mut reply = Vec::new();
        (&conn).take(MAX_REPLY).read_to_end(&mut reply)?;
        Ok(reply)
    };
    let reply = talk().map_err(|e| format!("{p}: {e}"))?;
    let value: serde_json::Value = serde_json::from_slice(&reply)
        .map_err(|_| format!("{p}: the daemon's reply is not JSON"))?;
    if let Some(e) = value.get("error").and_then(|e| e.as_str()) {
        return Err(format!("the daemon refused the request: {}", printable(e)));
    }
    serde_json::from_value(value).map_err(|e| format!("{p}: unexpected reply: {e}"))
}

/// `spa-server status [--json]`.
pub fn show(path: &Path, json: bool, out: &mut impl Write) -> Result<(), String> {
    let status = query(path)?;
    let text = if json {
        serde_json::to_string_pretty(&status).map_err(|e| e.to_string())? + "\n"
    } else {
        render(&status)
    };
    out.write_all(text.as_bytes()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            version: VERSION,
            pid: 4242,
            uptime_s: 3723,
            grants: vec![
                OpenGrant {
                    user: "alice".into(),
                    addr: "192.0.2.7".parse().unwrap(),
                    access: "tcp/22".into(),
                    seconds_left: 29,
                },
                OpenGrant {
                    user: "bob\x1b[2J".into(),
                    addr: "2001:db8::5".parse().unwrap(),
                    access: "udp/51820".into(),
                    seconds_left: 600,
                },
            ],
            counters: [("granted".to_string(), 2), ("bad_mac1".to_string(), 17)]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn renders_a_table() {
        let text = render(&sample());
        assert_eq!(
            text,
            "spa-server running for 1h 2m 3s (pid 4242)\n\n\
             grants open now: 2\n\
             \x20 USER     ADDRESS      ACCESS     LEFT\n\
             \x20 alice    192.0.2.7    tcp/22     29s\n\
             \x20 bob?[2J  2001:db8::5  udp/51820  10m\n\n\
             counters since start:\n\
             \x20 OUTCOME   COUNT\n\
             \x20 bad_mac1  17\n\
             \x20 granted   2\n"
        );
        let empty = Status {
            grants: vec![],
            counters: BTreeMap::new(),
            ..sample()
        };
        let text = render(&empty);
        assert!(text.contains("grants open now: none"), "{text}");
        assert!(text.contains("counters since start: none"), "{text}");
    }

    #[test]
    fn json_round_trips() {
        let s = sample();
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""seconds_left":29"#), "{text}");
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), s);
    }

    fn serving(path: &Path) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let server = StatusServer::bind(path, None).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let t = std::thread::spawn(move || server.serve(&flag, sample));
        (stop, t)
    }

    #[test]
    fn serves_one_reply_per_request_and_survives_bad_clients() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/spa/status.sock");
        let (stop, t) = serving(&path);
        let m = std::fs::metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert_eq!(query(&path).unwrap(), sample());

        // A client that says nothing is dropped after the timeout; one that floods is cut
        // off at the request limit; garbage gets an error; others are served meanwhile.
        let silent = UnixStream::connect(&path).unwrap();
        let mut flood = UnixStream::connect(&path).unwrap();
        let _ = flood.write_all(&[b'x'; 4096]);
        let mut junk = UnixStream::connect(&path).unwrap();
        junk.write_all(b"{\"version\":1,\"request\":\"shutdown\"}\n")
            .unwrap();
        let mut reply = String::new();
        junk.read_to_string(&mut reply).unwrap();
        assert!(reply.contains("unknown request"), "{reply}");
        assert_eq!(query(&path).unwrap(), sample());
        drop((silent, flood));

        // A second daemon cannot take over the socket of a live one.
        let err = StatusServer::bind(&path, None).unwrap_err().to_string();
        assert!(err.contains("another spa-server"), "{err}");

        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(!path.exists(), "the socket is removed at stop");
        let err = query(&path).unwrap_err();
        assert!(err.contains("not running"), "{err}");
    }

    #[test]
    fn a_stale_socket_is_replaced_and_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        drop(UnixListener::bind(&path).unwrap());
        let err = query(&path).unwrap_err();
        assert!(err.contains("died"), "{err}");
        let (stop, t) = serving(&path);
        assert_eq!(query(&path).unwrap().pid, 4242);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();

        std::fs::write(&path, "not a socket").unwrap();
        let err = StatusServer::bind(&path, None).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().count() == 1,
            "no temporary directory left behind"
        );
    }

    #[test]
    fn a_group_socket_is_0660_with_that_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/status.sock");
        // A group this process may give files to: the temporary directory's own.
        let gid = std::fs::metadata(dir.path()).unwrap().gid();
        assert_eq!(crate::privsep::group_id(&gid.to_string()).unwrap(), gid);
        let server = StatusServer::bind(&path, Some(gid)).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o660);
        assert_eq!(m.gid(), gid);
        let d = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(d.permissions().mode() & 0o777, 0o750);
        drop(server);
        assert!(
            crate::privsep::group_id("root").is_ok_and(|g| g == 0)
                || !Path::new("/etc/group").exists()
        );
        assert!(crate::privsep::group_id("no-such-group-spa").is_err());
    }
}
