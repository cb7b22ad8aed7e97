//! The agent's error type: expected failures carry what a person needs to fix them.

/// Anything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration or a meter profile is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A meter answered something that cannot be used.
    #[error("meter: {0}")]
    Meter(String),
    /// The spool on disk failed or holds something unreadable.
    #[error("spool {path}: {message}")]
    Spool {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What happened.
        message: String,
    },
    /// Uploading failed.
    #[error("upload: {0}")]
    Upload(String),
}

impl AgentError {
    /// A spool error about `path`.
    pub fn spool(path: &std::path::Path, e: impl std::fmt::Display) -> AgentError {
        AgentError::Spool {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// The agent's result type.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;
