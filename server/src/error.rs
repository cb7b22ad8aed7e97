//! The one place where errors become HTTP answers: `{"error": {"status", "message"}}`.
//!
//! Client errors carry a message that names the offending item. Server errors are logged with
//! their details and answered with a generic message.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use meterstream_storage::StorageError;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A storage error; its kind decides the status.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the configured limit.
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// No such route.
    #[error("{0}")]
    NotFound(String),
    /// The body's content type is not understood.
    #[error("unsupported content type {0:?}: send application/json or application/msgpack")]
    UnsupportedMediaType(String),
    /// The method is not allowed on this route.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// No valid credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// The credentials do not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// Too many failed attempts from this address; retry after this many seconds.
    #[error("too many failed attempts from this address; retry in {0} s")]
    TooManyAttempts(i64),
    /// The request conflicts with the state of what it names (e.g. cancelling a finished
    /// command).
    #[error("{0}")]
    Conflict(String),
    /// The request cannot be served now (a cluster partition moving, the log unreachable);
    /// retry after this many seconds.
    #[error("{message}")]
    Unavailable {
        /// What is unavailable, for the client.
        message: String,
        /// Seconds after which a retry may succeed.
        retry_after: u32,
    },
    /// A blocking task failed (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Shorthand for a 400 naming a query parameter.
    pub fn param(name: &str, message: impl std::fmt::Display) -> Self {
        ApiError::BadRequest(format!("invalid query parameter {name}: {message}"))
    }
}

impl ApiError {
    /// An error with this HTTP status and message (an item's status, for instance, turned into
    /// the answer's error); a server status becomes [`ApiError::Internal`].
    pub fn with_status(status: u16, message: String) -> ApiError {
        match status {
            401 => ApiError::Unauthorized(message),
            403 => ApiError::Forbidden(message),
            404 => ApiError::NotFound(message),
            409 => ApiError::Conflict(message),
            s if s >= 500 => ApiError::Internal(message),
            _ => ApiError::BadRequest(message),
        }
    }

    /// The message a client may see: the error itself for client errors; for server errors a
    /// generic text, the details going to the log.
    pub fn public_message(&self) -> String {
        let status = self.status_code();
        if let ApiError::Unavailable { message, .. } = self {
            tracing::warn!(error = %message, "request answered 503");
            return message.clone();
        }
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
            match status {
                StatusCode::SERVICE_UNAVAILABLE => "the store is not accepting writes".to_string(),
                _ => "internal error; see the server log".to_string(),
            }
        } else {
            self.to_string()
        }
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

/// HTTP status of a storage error.
pub fn storage_status(e: &StorageError) -> StatusCode {
    match e {
        StorageError::InvalidPath { .. }
        | StorageError::InvalidValue { .. }
        | StorageError::InvalidTimestamp { .. }
        | StorageError::InvalidArgument { .. } => StatusCode::BAD_REQUEST,
        StorageError::StreamNotFound { .. } => StatusCode::NOT_FOUND,
        StorageError::Conflict { .. } => StatusCode::CONFLICT,
        StorageError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        StorageError::Io { .. } | StorageError::Sled(_) | StorageError::Corrupt { .. } => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The JSON error body.
pub fn error_body(status: StatusCode, message: &str) -> serde_json::Value {
    serde_json::json!({"error": {"status": status.as_u16(), "message": message}})
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Storage(e) => storage_status(e),
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let message = self.public_message();
        let mut r = HttpResponse::build(status);
        match self {
            ApiError::Unauthorized(_) => {
                r.insert_header(("www-authenticate", "Basic realm=\"meterstream\", Bearer"));
            }
            ApiError::TooManyAttempts(secs) => {
                r.insert_header(("retry-after", secs.to_string()));
            }
            ApiError::Unavailable { retry_after, .. } => {
                r.insert_header(("retry-after", retry_after.to_string()));
            }
            _ => {}
        }
        r.json(error_body(status, &message))
    }
}
