//! Creating, rewriting and reading files that hold secrets.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Largest file we read (a users store with 100,000 users is well under this).
pub const MAX_FILE_LEN: u64 = 256 << 20;

/// Creates `path` with mode 0600 and `O_EXCL`: never overwrites an existing file.
pub fn create_secret(path: &Path, contents: &str) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Exists(path.to_owned()),
        _ => Error::io(path, e),
    })?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(path, e))?;
    sync_parent(path)
}

/// Rewrites `path` atomically: a new 0600 file beside it, fsync, rename over, fsync dir.
pub fn write_atomic(path: &Path, contents: &str) -> Result<()> {
    let dir = parent(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".spa-tmp-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600));
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::io(path, e))?;
    tmp.write_all(contents.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    sync_parent(path)
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(parent(path))
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(path, e))?;
    // Elsewhere (Windows) a directory cannot be opened to sync; the rename is what counts.
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Reads a file that holds a secret, refusing it when group/world accessible or owned by
/// someone else (checked on the open file, so it cannot change in between).
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    check_private(path, &file)?;
    read_capped(path, file)
}

/// Reads a file that holds nothing secret.
pub fn read_public(path: &Path) -> Result<Zeroizing<String>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    read_capped(path, file)
}

fn read_capped(path: &Path, file: File) -> Result<Zeroizing<String>> {
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(Error::invalid(
            path,
            None,
            format!("larger than {MAX_FILE_LEN} bytes"),
        ));
    }
    match std::str::from_utf8(&bytes) {
        Ok(s) => Ok(Zeroizing::new(s.to_owned())),
        Err(e) => {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            Err(Error::invalid(path, Some(line), "not valid UTF-8 text"))
        }
    }
}

/// Refuses a secret file that group/others can access or that another user owns.
pub fn check_private(path: &Path, file: &File) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(Error::LoosePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(Error::WrongOwner {
                path: path.to_owned(),
                owner: meta.uid(),
                me,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, file);
    Ok(())
}

/// Maps byte offsets to 1-based line numbers in O(log n).
pub struct LineIndex(Vec<usize>);

impl LineIndex {
    /// Indexes the newlines of `text`.
    pub fn new(text: &str) -> Self {
        Self(text.match_indices('\n').map(|(i, _)| i).collect())
    }
    /// The 1-based line holding byte `offset`.
    pub fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

/// Turns a TOML parse error into one that names the line but never quotes the file.
pub fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> Error {
    let line = err.span().map(|span| LineIndex::new(text).line(span.start));
    Error::invalid(path, line, redact_quoted(err.message()))
}

/// Replaces every double-quoted string in a message by `"…"`: serde quotes values it
/// could not use, and a value may be a secret.
pub fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        if c == '"' {
            if !inside {
                out.push_str("\"…");
            }
            inside = !inside;
            if !inside {
                out.push('"');
            }
        } else if !inside {
            out.push(c);
        }
    }
    if inside {
        out.push('"');
    }
    out.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create_secret(&path, "one").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(matches!(create_secret(&path, "two"), Err(Error::Exists(_))));
        assert_eq!(&*read_secret(&path).unwrap(), "one");
    }

    #[cfg(unix)]
    #[test]
    fn loose_permissions_are_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        create_secret(&path, "secret").unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o666] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_secret(&path).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
            assert!(!msg.contains("secret\n") && !msg.contains(": secret"));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(read_secret(&path).is_ok());
    }

    #[test]
    fn atomic_rewrite_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        write_atomic(&path, "a").unwrap();
        write_atomic(&path, "b").unwrap();
        assert_eq!(&*read_secret(&path).unwrap(), "b");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn line_index() {
        // a(0) \n(1) b(2) c(3) \n(4) \n(5) d(6)
        let idx = LineIndex::new("a\nbc\n\nd");
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 6].map(|o| idx.line(o)),
            [1, 1, 2, 2, 2, 3, 4]
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_quoted("invalid type: string \"SPA-CLIENT-SECRET-KEY-1ABC\", expected u16"),
            "invalid type: string \"…\", expected u16"
        );
        assert_eq!(
            redact_quoted("unknown field `foo`, expected `bar`"),
            "unknown field `foo`, expected `bar`"
        );
    }
}
