//! Errors that name the file (and line), never its content.

use std::path::{Path, PathBuf};

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A problem with a key, a file or a user. Messages never contain secret material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file to create exists already.
    #[error("{}: already exists; refusing to overwrite it (move it away first if you really mean to replace it)", .0.display())]
    Exists(PathBuf),
    /// A secret file is readable or writable by group or others.
    #[error("{}: holds a secret but its mode is {mode:04o} (group/other can access it); fix with: chmod 600 {}", path.display(), path.display())]
    LoosePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret file is owned by another user.
    #[error("{}: holds a secret but is owned by uid {owner}, not by you (uid {me}); fix with: chown {me} {}", path.display(), path.display())]
    WrongOwner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The current effective uid.
        me: u32,
    },
    /// The file does not parse or does not validate.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong (no content from the file).
        message: String,
    },
    /// A key's text form is wrong (prefix, checksum, length).
    #[error("{0}")]
    Key(#[from] crate::text::KeyTextError),
    /// Something the user typed is not valid (a name, an access entry, a duration...).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
    /// A validation error in `path`.
    pub fn invalid(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.to_owned(),
            line,
            message: message.into(),
        }
    }
}
