//! The provisioning flows with the real binaries: client-generated keys and one-step
//! bundles both end in a profile whose knock the server's verifier accepts; every refusal
//! is clear; no command prints a secret.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use rand::rngs::OsRng;
use spa_e2e::{run, Run};
use spa_keys::profile::Profile;
use spa_keys::server::ServerConfig;
use spa_keys::users::Users;
use spa_proto::{seal, Action, OpenAddr, Reject, Request, Verifier, VerifierConfig};

const NOW: u64 = 1_764_000_000_000;

struct Lab {
    dir: tempfile::TempDir,
    outputs: Vec<String>,
}

impl Lab {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            outputs: Vec::new(),
        }
    }
    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).display().to_string()
    }
    fn cmd(&mut self, name: &str, args: &[&str]) -> Run {
        let r = run(name, args, self.dir.path());
        self.outputs.push(format!("{}{}", r.stdout, r.stderr));
        r
    }
    fn ok(&mut self, name: &str, args: &[&str]) -> String {
        let r = self.cmd(name, args);
        assert!(r.ok, "{name} {args:?} failed: {}{}", r.stdout, r.stderr);
        r.stdout
    }
    fn fails(&mut self, name: &str, args: &[&str], needle: &str) -> String {
        let r = self.cmd(name, args);
        assert!(
            !r.ok && r.code == Some(1),
            "{name} {args:?} should fail: {r:?}"
        );
        assert!(
            r.stderr.contains(needle),
            "{name} {args:?}: expected {needle:?} in {:?}",
            r.stderr
        );
        r.stderr
    }
    fn server(&mut self, args: &[&str]) -> String {
        let config = self.path("etc/server.toml");
        let mut all = vec!["--config", &config];
        all.extend_from_slice(args);
        self.ok("spa-server", &all)
    }
}

/// Seals a knock with the profile at `path` for `server` and opens it with the server's
/// verifier built from its config and users store, as the daemon would.
fn knock(profile: &Path, server: &str, config: &Path) -> Result<String, Reject> {
    let profile = Profile::load(profile).unwrap();
    let (_, entry) = profile.find_server(server).expect("server in profile");
    let src: IpAddr = "198.51.100.9".parse().unwrap();
    let dest: IpAddr = entry.card.host.parse().unwrap();
    let req = Request::new(
        Action::Open,
        OpenAddr::Ip(src),
        dest,
        &entry.resolve("ssh").unwrap(),
        0,
    )
    .unwrap();
    let packet = seal(
        entry.secret(&profile),
        &entry.card.key,
        entry.psk.as_ref(),
        &req,
        NOW,
        &mut OsRng,
    )
    .unwrap();
    let config = ServerConfig::load(config).unwrap();
    let key = config.secret_key().unwrap();
    assert_eq!(
        key.public(),
        entry.card.key,
        "the card carries the server's key"
    );
    let users = Users::load(&config.users_file).unwrap();
    let (dir, _) = spa_server::directory::build(&key, &users, None);
    let verifier = Verifier::new(key, VerifierConfig::default());
    let replay: HashMap<_, u64> = HashMap::new();
    verifier
        .open(src, NOW, &packet, &dir, &replay)
        .map(|o| o.entry.user.to_string())
        .map_err(|r| r.reason)
}

#[test]
fn client_generated_and_bundle_flows_open_and_revocation_closes() {
    let mut lab = Lab::new();
    let etc = lab.path("etc");
    let config = lab.path("etc/server.toml");
    let init = lab.ok("spa-server", &["init", "--dir", &etc, "--port", "23456"]);
    assert!(init.contains("udp/23456"), "{init}");

    // Client-generated: the secret never leaves the client.
    let alice = lab.path("alice.spa");
    let alice_pub = lab
        .ok("spa-client", &["--key", &alice, "keygen"])
        .trim()
        .to_string();
    assert!(alice_pub.starts_with("spaclient1"), "{alice_pub}");
    lab.server(&[
        "user",
        "add",
        "alice",
        "--pubkey",
        &alice_pub,
        "--allow",
        "ssh,tcp/8443",
        "--max-duration",
        "1h",
    ]);
    let card = lab
        .server(&["card", "--endpoint", "192.0.2.1"])
        .trim()
        .to_string();
    assert!(
        card.starts_with("spa://spaserver1") && card.ends_with("@192.0.2.1:23456"),
        "{card}"
    );
    lab.ok("spa-client", &["--key", &alice, "add-server", "web", &card]);
    assert_eq!(
        knock(Path::new(&alice), "web", Path::new(&config)),
        Ok("alice".into())
    );

    // One-step bundle with a psk, used directly and imported into another profile.
    let bundle = lab.path("bob.bundle");
    lab.server(&[
        "user",
        "provision",
        "bob",
        "--allow",
        "ssh",
        "--endpoint",
        "192.0.2.1",
        "--out",
        &bundle,
        "--psk",
    ]);
    assert_eq!(
        knock(Path::new(&bundle), "192.0.2.1", Path::new(&config)),
        Ok("bob".into())
    );
    let bob = lab.path("bob.spa");
    lab.ok("spa-client", &["--key", &bob, "keygen"]);
    lab.ok("spa-client", &["--key", &bob, "import", &bundle]);
    assert_eq!(
        knock(Path::new(&bob), "192.0.2.1", Path::new(&config)),
        Ok("bob".into())
    );
    let show = lab.ok("spa-client", &["--key", &bob, "show"]);
    assert!(
        show.contains("server 192.0.2.1") && show.contains("psk") && show.contains("own key"),
        "{show}"
    );
    // Importing into a profile that does not exist yet creates it.
    let fresh = lab.path("fresh.spa");
    lab.ok("spa-client", &["--key", &fresh, "import", &bundle]);
    assert_eq!(
        knock(Path::new(&fresh), "192.0.2.1", Path::new(&config)),
        Ok("bob".into())
    );

    // Listing, showing, policy changes.
    let list = lab.server(&["user", "list"]);
    assert!(
        list.contains("alice") && list.contains("bob") && list.contains("tcp/22,tcp/8443"),
        "{list}"
    );
    let json = lab.server(&["user", "list", "--json"]);
    assert_eq!(json.lines().count(), 2);
    assert!(
        json.contains("\"psk\":true") && json.contains("\"psk\":false"),
        "{json}"
    );
    lab.server(&["user", "deny", "alice", "ssh"]);
    assert_eq!(
        knock(Path::new(&alice), "web", Path::new(&config)),
        Err(Reject::AccessDenied)
    );
    lab.server(&["user", "allow", "alice", "ssh"]);
    assert_eq!(
        knock(Path::new(&alice), "web", Path::new(&config)),
        Ok("alice".into())
    );

    // Revocation, per user and per key; a second device.
    lab.server(&["user", "revoke", "bob"]);
    assert_eq!(
        knock(Path::new(&bob), "192.0.2.1", Path::new(&config)),
        Err(Reject::Revoked)
    );
    lab.server(&["user", "unrevoke", "bob"]);
    assert_eq!(
        knock(Path::new(&bob), "192.0.2.1", Path::new(&config)),
        Ok("bob".into())
    );
    let phone = lab.path("phone.spa");
    let phone_pub = lab
        .ok("spa-client", &["--key", &phone, "keygen"])
        .trim()
        .to_string();
    lab.server(&["user", "add-key", "alice", "--pubkey", &phone_pub]);
    lab.ok("spa-client", &["--key", &phone, "add-server", "web", &card]);
    lab.server(&["user", "revoke", "alice", "--key", &alice_pub]);
    assert_eq!(
        knock(Path::new(&alice), "web", Path::new(&config)),
        Err(Reject::Revoked)
    );
    assert_eq!(
        knock(Path::new(&phone), "web", Path::new(&config)),
        Ok("alice".into())
    );
    let shown = lab.server(&["user", "show", "alice"]);
    assert!(
        shown.contains("REVOKED") && shown.matches("spaclient1").count() == 2,
        "{shown}"
    );
    lab.server(&["user", "remove", "alice"]);
    assert_eq!(
        knock(Path::new(&phone), "web", Path::new(&config)),
        Err(Reject::UnknownKey)
    );
    let check = lab.server(&["check"]);
    assert!(check.contains("ok") && check.contains("1 users"), "{check}");

    // Rotation: the new card's key is current; the old key is still accepted for a while.
    lab.server(&["rotate-key", "--accept-old-for", "7d"]);
    let new_card = lab
        .server(&["card", "--endpoint", "192.0.2.1"])
        .trim()
        .to_string();
    assert_ne!(new_card, card);
    let cfg = ServerConfig::load(Path::new(&config)).unwrap();
    assert_eq!(
        cfg.previous_secret_keys(std::time::SystemTime::now())
            .unwrap()
            .len(),
        1
    );

    // No command printed a secret.
    let secrets = secret_texts(&lab);
    assert!(secrets.len() >= 6, "{}", secrets.len());
    for out in &lab.outputs {
        for s in &secrets {
            assert!(!out.contains(s.as_str()), "a secret was printed: {out}");
            assert!(
                !out.contains(&s[s.len() - 20..]),
                "part of a secret was printed: {out}"
            );
        }
    }
}

/// Every secret key text in the lab's files.
fn secret_texts(lab: &Lab) -> Vec<String> {
    let mut found = Vec::new();
    for entry in walk(lab.dir.path()) {
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        for word in text.split(|c: char| c == '"' || c.is_whitespace()) {
            if word.starts_with("SPA-") && word.len() > 40 {
                found.push(word.to_string());
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn refusals_are_clear() {
    let mut lab = Lab::new();
    let etc = lab.path("etc");
    let config = lab.path("etc/server.toml");
    lab.ok("spa-server", &["init", "--dir", &etc, "--port", "23456"]);
    lab.fails(
        "spa-server",
        &["init", "--dir", &etc],
        "already exists; refusing to overwrite",
    );

    let key = lab.path("me.spa");
    let pubkey = lab
        .ok("spa-client", &["--key", &key, "keygen"])
        .trim()
        .to_string();
    lab.fails(
        "spa-client",
        &["--key", &key, "keygen"],
        "refusing to overwrite",
    );

    // Loose permissions: refused with the fix, for the profile and for the server's files.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    lab.fails(
        "spa-client",
        &["--key", &key, "show"],
        &format!("chmod 600 {key}"),
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server_key = lab.path("etc/server.key");
    std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    lab.fails(
        "spa-server",
        &["--config", &config, "check"],
        &format!("chmod 600 {server_key}"),
    );
    std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Wrong prefix, bad checksum, duplicate user, hostile names.
    let card = lab
        .server(&["card", "--endpoint", "h.example"])
        .trim()
        .to_string();
    let server_pub = card
        .trim_start_matches("spa://")
        .split('@')
        .next()
        .unwrap()
        .to_string();
    let add = |k: &str| -> Vec<String> {
        [
            "--config", &config, "user", "add", "u1", "--pubkey", k, "--allow", "ssh",
        ]
        .map(String::from)
        .to_vec()
    };
    lab.fails(
        "spa-server",
        &refs(&add(&server_pub)),
        "expected a client public key",
    );
    let mut typo: Vec<char> = pubkey.chars().collect();
    typo[20] = if typo[20] == 'q' { 'p' } else { 'q' };
    let typo: String = typo.into_iter().collect();
    lab.fails("spa-server", &refs(&add(&typo)), "checksum");
    lab.server(&["user", "add", "u1", "--pubkey", &pubkey, "--allow", "ssh"]);
    let other = lab.path("other.spa");
    let other_pub = lab
        .ok("spa-client", &["--key", &other, "keygen"])
        .trim()
        .to_string();
    let dup = [
        "--config", &config, "user", "add", "u1", "--pubkey", &other_pub, "--allow", "ssh",
    ];
    lab.fails("spa-server", &dup, "exists already");
    let same_key = [
        "--config", &config, "user", "add", "u2", "--pubkey", &pubkey, "--allow", "ssh",
    ];
    lab.fails("spa-server", &same_key, "already a key of user");
    let hostile = [
        "--config",
        &config,
        "user",
        "add",
        "x;rm -rf /",
        "--pubkey",
        &other_pub,
        "--allow",
        "ssh",
    ];
    lab.fails("spa-server", &hostile, "user name");
    let bad_access = [
        "--config", &config, "user", "add", "u3", "--pubkey", &other_pub, "--allow", "gopher",
    ];
    lab.fails("spa-server", &bad_access, "unknown service");

    // Unknown field: check names the file and line, and exits non-zero.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("forward = false", "forward = false\nfowrard = true"),
    )
    .unwrap();
    let line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("fowrard"))
        .unwrap()
        + 1;
    lab.fails(
        "spa-server",
        &["--config", &config, "check"],
        &format!("{config}:{line}:"),
    );
    std::fs::write(&config, text).unwrap();

    // Profile errors say what to do.
    let missing = lab.path("missing.spa");
    lab.fails(
        "spa-client",
        &["--key", &missing, "show"],
        "spa-client keygen",
    );
    lab.fails(
        "spa-client",
        &["--key", &key, "add-server", "web", "spa://nope"],
        "spa://",
    );
    lab.fails(
        "spa-client",
        &["--key", &key, "add-server", "bad name", &card],
        "server name",
    );
    // A bundle is never overwritten.
    let bundle = lab.path("b.bundle");
    std::fs::write(&bundle, "existing").unwrap();
    let provision = [
        "--config",
        &config,
        "user",
        "provision",
        "u4",
        "--allow",
        "ssh",
        "--endpoint",
        "h.example",
        "--out",
        &bundle,
    ];
    lab.fails("spa-server", &provision, "refusing to overwrite");
    let users = Users::load(Path::new(&lab.path("etc/users.jsonl"))).unwrap();
    assert!(
        users.get("u4").is_none(),
        "a failed provision registers nobody"
    );

    // The audit key: written 0600 by init, never printed, required and checked by --verify.
    let audit_key = lab.path("etc/audit-verify.key");
    let mode = std::fs::metadata(&audit_key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let a = |args: &[&str]| {
        let mut all = vec!["--config", config.as_str(), "audit"];
        all.extend_from_slice(args);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = a(&["--verify", "--key", &audit_key]);
    let out = lab.ok("spa-server", &refs(&args));
    assert!(
        out.contains("0 records") && out.contains("chain intact"),
        "{out}"
    );
    let r = lab.cmd("spa-server", &refs(&a(&["--verify"])));
    assert_eq!(r.code, Some(2), "--verify needs --key: {r:?}");
    lab.fails(
        "spa-server",
        &refs(&a(&["--decision", "opened"])),
        "unknown decision (one of granted",
    );
    lab.fails(
        "spa-server",
        &refs(&a(&["--reason", "nope"])),
        "unknown reason (one of",
    );
    lab.fails(
        "spa-server",
        &refs(&a(&["--since", "yesterday-ish"])),
        "neither a duration",
    );
    let args = a(&["--verify", "--key", &audit_key, "--head", "3:zz"]);
    lab.fails("spa-server", &refs(&args), "--head: expected SEQ:MAC");
    // A loose key file is refused.
    std::fs::set_permissions(&audit_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    lab.fails(
        "spa-server",
        &refs(&a(&["--verify", "--key", &audit_key])),
        "chmod 600",
    );
    // init never overwrites a key file it was pointed at.
    let taken = lab.path("taken.key");
    std::fs::write(&taken, "x").unwrap();
    let dir3 = lab.path("third");
    lab.fails(
        "spa-server",
        &["init", "--dir", &dir3, "--audit-key-out", &taken],
        "refusing to overwrite",
    );
}
