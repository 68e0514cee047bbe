//! The one mapping from errors to HTTP responses:
//! `{"error": {"code", "message"}}` with the status of the error's kind.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use evnet_model::{ErrorBody, ErrorDetail, ModelError};
use evnet_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into() }
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown bearer token; send `Authorization: Bearer TOKEN` (the CLI reads EVNET_TOKEN)",
        )
    }
    pub fn forbidden(what: &str) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", format!("this token may not {what}"))
    }
    pub fn conflict_retry() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "concurrent_modification",
            "the resources changed too often while this request ran; retry it",
        )
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        let status = StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        Self { status, code: e.code.to_string(), message: e.message }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        match e {
            // Nothing of the write was made; reads still work; writes work
            // again once the server's disk has space.
            StoreError::Full(_) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "store_full",
                "the server's store has no disk space left; nothing was changed; retry once space is freed",
            ),
            e => Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", format!("the store failed: {e}; retry later")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message } };
        (self.status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
