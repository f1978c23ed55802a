//! [`ApiError`]: what a request gets instead of its answer, `{"error":
//! "..."}` with the status that says what kind of failure it is, and the
//! one mapping from each library error to it.

use crate::authz::{self};
use crate::registry::RegistryError;
use crate::store::StoreError;
use crate::tokens::TokenError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// What a request gets instead of its answer; the body is
/// `{"error": "..."}` naming what failed.
#[derive(Debug)]
pub enum ApiError {
    /// 400: a malformed request, naming the field.
    BadRequest(String),
    /// 401: nothing more is said.
    Unauthorized,
    /// 403: the missing permission and namespace.
    Forbidden(String),
    /// 404.
    NotFound(String),
    /// 409.
    Conflict(String),
    /// 413: a body larger than the route accepts.
    TooLarge(String),
    /// 429: too many failed authentications from this address.
    TooMany,
    /// 429: a namespace's quota is reached (names it).
    Quota(String),
    /// 503: the audit log cannot be written, so nothing was done.
    Unavailable(String),
    /// 500.
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized".into()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            ApiError::TooMany => {
                (StatusCode::TOO_MANY_REQUESTS, "too many failed authentications; wait a minute".into())
            }
            ApiError::Quota(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, m),
        };
        let mut resp = (status, Json(json!({ "error": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::Staged { .. } => ApiError::Conflict(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::backend::BackendError> for ApiError {
    fn from(e: crate::backend::BackendError) -> Self {
        use crate::backend::BackendError as B;
        match e {
            B::Store(e) => e.into(),
            e @ B::NotFound { .. } => ApiError::NotFound(e.to_string()),
            e @ (B::Unsupported { .. } | B::Config { .. }) => ApiError::BadRequest(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Invalid(m) => ApiError::BadRequest(m),
            TokenError::NotFound(m) => ApiError::NotFound(m),
            TokenError::Conflict(m) => ApiError::Conflict(m),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            e @ (RegistryError::Invalid(_) | RegistryError::Plugin(_)) => ApiError::BadRequest(e.to_string()),
            e @ RegistryError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            e @ (RegistryError::Pending { .. } | RegistryError::Conflict(_)) => ApiError::Conflict(e.to_string()),
            RegistryError::Quota(m) => ApiError::TooLarge(m),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::executions::RecordError> for ApiError {
    fn from(e: crate::executions::RecordError) -> Self {
        match e {
            e @ crate::executions::RecordError::NotFound(_) => ApiError::NotFound(e.to_string()),
            crate::executions::RecordError::Quota(m) => ApiError::Quota(m),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<authz::Forbidden> for ApiError {
    fn from(e: authz::Forbidden) -> Self {
        ApiError::Forbidden(e.to_string())
    }
}

impl From<crate::service::ServiceError> for ApiError {
    fn from(e: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError as S;
        match e {
            S::Forbidden(m) => ApiError::Forbidden(m),
            S::Invalid(m) => ApiError::BadRequest(m),
            S::Diagnostics(d) => ApiError::BadRequest(d.to_string()),
            S::NotFound(m) => ApiError::NotFound(m),
            S::Conflict(m) => ApiError::Conflict(m),
            e @ S::AuditFailed(_) => ApiError::Unavailable(e.to_string()),
            S::Backend(e) => e.into(),
            S::Quota(m) => ApiError::TooLarge(m),
            S::OverLimit(m) => ApiError::Quota(m),
            e @ (S::Tampered(_) | S::Host(_)) => ApiError::Internal(e.to_string()),
        }
    }
}
