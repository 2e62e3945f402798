//! The real `spa-server run` inside a test's namespace, with its log collected, and the
//! waits every namespace test makes.

use std::io::{BufRead, BufReader};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bin;
use crate::netns::Netns;

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
pub fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `addr` has an element in our table's grant set of its family (`inet spa`).
pub fn in_set(ns: &Netns, addr: &str) -> bool {
    let set = if addr.contains(':') {
        "grants6"
    } else {
        "grants4"
    };
    let out = ns.run(&["nft", "-j", "list", "set", "inet", "spa", set]);
    String::from_utf8_lossy(&out.stdout).contains(&format!("\"{addr}\""))
}

/// Waits until something accepts TCP connections on `port` inside `ns`.
pub fn wait_listening(ns: &Netns, port: u16) {
    until("listener", Duration::from_secs(5), || {
        ns.try_run(&[
            "python3",
            "-c",
            &format!("import socket; socket.create_connection(('127.0.0.1',{port}),timeout=1)"),
        ])
    });
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `spa-server --config CONFIG run` in `ns` and waits until it is running.
    pub fn start(ns: &Netns, config: &str) -> Self {
        let mut child = ns.spawn(&[
            bin("spa-server").to_str().unwrap(),
            "--config",
            config,
            "run",
        ]);
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let d = Self { child, log };
        d.wait_log("spa-server running", Duration::from_secs(30));
        d
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Every line it logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Its log so far, one string.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// How many lines so far contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until a line contains `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        self.wait_log_n(needle, 1, limit);
    }

    /// Waits until `n` lines contain `needle`.
    pub fn wait_log_n(&self, needle: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.count_log(needle) < n {
            assert!(
                Instant::now() < deadline,
                "daemon never logged {needle:?} {n} times: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up or write anything more.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and a clean exit within 10 s.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "daemon exited with {status}: {:#?}",
                    self.log.lock().unwrap()
                );
                return;
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
