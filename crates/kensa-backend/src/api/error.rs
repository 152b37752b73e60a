//! The API's error type and its wire shape, Sensu's `{"message": "...", "code": N}` with the
//! HTTP status that goes with the code (reference §3.8). Store and resource errors are
//! translated here, once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kensa_store::StoreError;
use kensa_types::ResourceError;

/// Sensu's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Internal = 0,
    InvalidArgument = 1,
    NotFound = 2,
    AlreadyExists = 3,
    PermissionDenied = 4,
    Unauthenticated = 5,
    PreconditionFailed = 7,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, Code::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, Code::AlreadyExists, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, Code::Unauthenticated, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, Code::PermissionDenied, message)
    }
    pub fn precondition_failed(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            Code::PreconditionFailed,
            message,
        )
    }
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::InvalidArgument,
            "method not allowed",
        )
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Code::Internal, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "api error");
        }
        let body = serde_json::json!({"message": self.message, "code": self.code as u32});
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::NotFound(_) => ApiError::not_found("not found"),
            StoreError::AlreadyExists(_) => ApiError::conflict("resource already exists"),
            StoreError::Conflict(what) => ApiError::precondition_failed(format!(
                "{what} was changed by another writer; read it again"
            )),
            StoreError::InvalidToken => ApiError::bad_request("invalid continue token"),
            StoreError::Unavailable(why) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Code::Internal,
                format!("store unavailable: {why}"),
            ),
            StoreError::Internal(why) => ApiError::internal(why),
        }
    }
}

impl From<ResourceError> for ApiError {
    fn from(err: ResourceError) -> ApiError {
        ApiError::bad_request(format!("resource is invalid: {err}"))
    }
}
