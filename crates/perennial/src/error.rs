//! The library's error type.

use std::path::PathBuf;

/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the library. Data errors pass through unchanged.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading data or sampling failed.
    #[error(transparent)]
    Data(#[from] perennial_data::Error),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A run directory or checkpoint is missing or unusable.
    #[error("{path}: {reason}")]
    Run {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration {name} = {value}: {reason}")]
    Config {
        /// The setting.
        name: String,
        /// Its value.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Data-parallel training: joining the group of processes or a collective failed.
    #[error(transparent)]
    Distributed(#[from] perennial_dist::Error),
    /// Loaded parameters do not fit the model.
    #[error("parameter {name}: {reason}")]
    Parameters {
        /// The parameter's name.
        name: String,
        /// What does not fit.
        reason: String,
    },
}

impl Error {
    /// An [`Error::Run`].
    pub fn run(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Run {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// An [`Error::Config`].
    pub fn config(
        name: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config {
            name: name.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}
