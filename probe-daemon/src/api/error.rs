//! The one error type of the HTTP API: a status and a message. The server turns every domain
//! error into one here (the only place that knows HTTP statuses); the client reads the same body.
use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};

use crate::{
    collector::FindError,
    discovery::CreationError,
    snapshot::{Refusal, RefusalReason},
};

/// An API error answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

/// The JSON body of every error answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    /// The error a client reads from an answer's status and body (`{"error": ...}`, else the body
    /// text).
    pub fn from_answer(status: u16, body: &str) -> Self {
        let message = serde_json::from_str::<ErrorBody>(body).map(|b| b.error).unwrap_or_else(|_| {
            if status == 401 {
                "unauthorized: set CHAINPROBE_API_TOKEN or --token-file".into()
            } else {
                body.trim().to_string()
            }
        });
        ApiError { status, message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.message })).into_response()
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match r.reason {
            RefusalReason::Disabled => 409,
            RefusalReason::UnknownProcess => 404,
            RefusalReason::NotGo => 422,
            RefusalReason::Cooldown | RefusalReason::HourlyCap => 429,
            RefusalReason::Stopped | RefusalReason::QueueFull => 503,
        };
        ApiError::new(status, r.message)
    }
}

impl From<CreationError> for ApiError {
    fn from(e: CreationError) -> Self {
        let status = match e {
            CreationError::GoDisabled => 409,
            CreationError::NotTracked(_) => 404,
            CreationError::Attach(_) => 422,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<FindError> for ApiError {
    fn from(e: FindError) -> Self {
        let status = match e {
            FindError::GoDisabled | FindError::Ambiguous { .. } => 409,
            FindError::NotFound(_) => 404,
        };
        ApiError::new(status, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_reads_what_the_server_writes() {
        let body = serde_json::to_string(&ErrorBody { error: "no snapshot x".into() }).unwrap();
        assert_eq!(ApiError::from_answer(404, &body), ApiError::new(404, "no snapshot x"));
        assert_eq!(ApiError::from_answer(429, "too many requests\n").message, "too many requests");
        assert!(ApiError::from_answer(401, "").message.contains("CHAINPROBE_API_TOKEN"));
    }

    #[test]
    fn domain_errors_get_their_statuses() {
        assert_eq!(ApiError::from(CreationError::NotTracked(7)).status, 404);
        assert_eq!(ApiError::from(FindError::Ambiguous { pod: "a/b".into(), pids: vec![1, 2] }).status, 409);
        assert_eq!(ApiError::from(Refusal { reason: RefusalReason::Cooldown, message: String::new() }).status, 429);
    }
}
