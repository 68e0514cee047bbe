//! Errors with stable machine codes. The HTTP layer maps [`ErrorKind`] to a
//! status; the `code` is what scripts match on and never changes meaning.

use std::fmt;

/// What kind of mistake an error is; decides the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the request could not be parsed.
    BadRequest,
    /// 401: no or unknown credentials.
    Unauthorized,
    /// 403: known credentials, not allowed.
    Forbidden,
    /// 404: no such resource, or not the caller's.
    NotFound,
    /// 409: conflicts with the current state (revision, in use, exhausted).
    Conflict,
    /// 422: well-formed but invalid.
    Invalid,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Invalid => 422,
        }
    }
}

/// An error a caller can act on: a kind, a stable code and a message that
/// says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub message: String,
}

impl ModelError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self { kind, code, message: message.into() }
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, code, message)
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", format!("{what} {id} does not exist"))
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, "bad_request", message)
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ModelError {}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
