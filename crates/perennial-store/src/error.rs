//! The store's error type.

use std::path::PathBuf;

/// What can go wrong opening, writing or searching a [`Store`](crate::Store).
///
/// [`Error::Corrupt`] and [`Error::Mismatch`] mean the files on disk were refused: a
/// command-line front end should report them and exit with status 2
/// ([`Error::is_refusal`]). None of the store's code panics on bad file contents.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file of the store.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A store file is damaged: bad magic, unknown version, checksum mismatch, a
    /// truncated snapshot, garbage in the middle of the log, an impossible record.
    #[error("corrupt store file {} at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset in that file where the damage was found.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The store on disk was created with another dimension or metric than the one asked
    /// for.
    #[error("store {} holds {stored}, but was opened for {requested}", path.display())]
    Mismatch {
        /// The store's directory.
        path: PathBuf,
        /// What the files say.
        stored: String,
        /// What the caller asked for.
        requested: String,
    },
    /// Another process (or another `Store` in this process) has the store open.
    #[error("store {} is in use by another process (lock file held)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A bad argument: wrong key length, non-finite or zero key, metadata too large,
    /// bad configuration.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The store refuses writes after an earlier write or `fsync` failed half-way: its
    /// log may hold bytes that were never acknowledged. Reopen it to recover.
    #[error("store is read-only after an earlier write failure ({0}); reopen it")]
    Poisoned(String),
}

impl Error {
    /// True for errors that mean the store's files were refused (damaged, or made for
    /// another configuration): exit status 2 in a command-line front end.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Corrupt { .. } | Error::Mismatch { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}

/// The store's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
