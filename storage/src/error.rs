//! The storage crate's one error type.
//!
//! Expected failures caused by input (a bad path, a value that does not fit its stream, an unknown
//! stream, a bad cursor) are variants that carry the offending item, so the HTTP layer can name it
//! in a 4xx answer. I/O and sled failures are the fatal kind and surface as 5xx.

use std::path::PathBuf;

/// Result alias used across the storage crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A stream path broke one of the path rules.
    #[error("invalid stream path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Which rule it broke.
        reason: String,
    },
    /// A value does not fit the stream's type, or cannot be stored at all.
    #[error("invalid value for stream {stream:?}: {message}")]
    InvalidValue {
        /// The stream the value was meant for.
        stream: String,
        /// What is wrong with it.
        message: String,
    },
    /// A timestamp could not be parsed or lies outside the supported range.
    #[error("invalid timestamp {given}: {reason}")]
    InvalidTimestamp {
        /// The timestamp as given.
        given: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request argument (field, query parameter, cursor) is not acceptable.
    #[error("invalid {what}: {message}")]
    InvalidArgument {
        /// The name of the argument.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// The named stream does not exist.
    #[error("stream {path:?} not found")]
    StreamNotFound {
        /// The path that was asked for.
        path: String,
    },
    /// The request contradicts stored state (e.g. changing the type of a stream that has data).
    #[error("conflict on stream {path:?}: {message}")]
    Conflict {
        /// The stream concerned.
        path: String,
        /// What conflicts.
        message: String,
    },
    /// An I/O operation on a file of the store failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// sled reported an error.
    #[error("sled error: {0}")]
    Sled(#[from] sled::Error),
    /// Stored bytes could not be decoded: a bug or a damaged data directory.
    #[error("corrupt data in {what}: {message}")]
    Corrupt {
        /// Which structure was being decoded.
        what: &'static str,
        /// What was wrong.
        message: String,
    },
    /// The store has shut down (its writer thread is gone).
    #[error("the store is closed")]
    Closed,
}

impl StorageError {
    /// Shorthand for [`StorageError::InvalidArgument`].
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        StorageError::InvalidArgument {
            what: what.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`StorageError::Corrupt`].
    pub fn corrupt(what: &'static str, message: impl Into<String>) -> Self {
        StorageError::Corrupt {
            what,
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }
}
