//! The one error type of the data crate.

use std::path::PathBuf;

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when reading data or sampling episodes.
///
/// Each variant names the file or the parameter at fault, so the CLI can print one
/// line that tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A required file is missing.
    #[error("{what} not found: {path}{hint}")]
    Missing {
        /// What was looked for.
        what: String,
        /// Where it was looked for.
        path: PathBuf,
        /// An optional hint on how to get it (starts with a separator).
        hint: String,
    },
    /// A file exists but its content is not what the format requires.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An image could not be decoded.
    #[error("cannot decode image {path}: {reason}")]
    BadImage {
        /// The image file (or archive member).
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// A parameter is out of range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParameter {
        /// The parameter's name as the user wrote it (e.g. `--ways`).
        name: String,
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An episode asks for more classes than the split has.
    #[error("cannot sample {ways}-way episodes: the {split} split has only {available} classes")]
    NotEnoughClasses {
        /// The number of classes asked for.
        ways: usize,
        /// The split's name.
        split: String,
        /// The number of classes it has.
        available: usize,
    },
    /// An episode asks for more examples of a class than it has.
    #[error("class {class} has {found} examples, but {needed} are needed (shots + queries)")]
    NotEnoughExamples {
        /// The class's name.
        class: String,
        /// Examples needed per class.
        needed: usize,
        /// Examples the class has.
        found: usize,
    },
    /// A download failed or gave the wrong bytes.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The source.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Corrupt`] for `path`.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::InvalidParameter`].
    pub fn invalid(
        name: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidParameter {
            name: name.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
