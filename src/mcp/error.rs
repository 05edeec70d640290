//! Why a request to an MCP endpoint got no answer from its server: one error
//! type for transport rule violations and server failures alike, which renders
//! itself as an HTTP status plus a JSON-RPC error body carrying the request's id.

use std::time::Duration;

use serde_json::{json, Value};
use warp::http::StatusCode;

use crate::mcp::http::reply::{json_reply, HttpResponse};
use crate::mcp::message as jsonrpc;

/// When a client refused for a full table may try again.
const TOO_MANY_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    // The server could not answer.
    #[error("MCP server '{0}' is disabled (desiredState: Disabled)")]
    Disabled(String),
    #[error("MCP server '{0}' was removed")]
    Removed(String),
    #[error("MCP server '{server}' failed to start: {reason}; next attempt in {}s", retry_in.as_secs().max(1))]
    StartFailed {
        server: String,
        reason: String,
        retry_in: Duration,
    },
    #[error("MCP server '{server}' did not become ready within {timeout:?}")]
    StartupTimeout { server: String, timeout: Duration },
    #[error("MCP server '{server}' stopped before answering: {reason}")]
    Crashed { server: String, reason: String },
    #[error("MCP server '{server}' did not answer within {timeout:?}")]
    RequestTimeout { server: String, timeout: Duration },
    #[error("the request waited {timeout:?} for its turn: {reason}")]
    Busy { timeout: Duration, reason: String },
    #[error("too many {what} (the limit is {limit}); try again later")]
    TooMany { what: &'static str, limit: usize },
    /// One client holds its share of something per server (sessions, isolated containers).
    #[error("too many {what} for one client (the limit is {limit}); end one or try again later")]
    ClientLimit { what: &'static str, limit: usize },

    // The request broke a transport rule.
    #[error("parse error: {0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    InvalidParams(String),
    #[error("Mcp-Session-Id header required")]
    MissingSession,
    #[error("session not found: it ended or expired; send initialize to start a new one")]
    SessionNotFound,
    #[error("no MCP server named '{0}'")]
    UnknownServer(String),
    #[error("no MCPServerGroup named '{0}' (GET /groups lists them)")]
    UnknownGroup(String),
    #[error("{0}")]
    Forbidden(String),
    /// A tool, prompt or resource the caller may not use (`spec.access`).
    #[error("{0}")]
    Denied(String),
    #[error("too many requests: over {limit}; try again in {}s", retry_after.as_secs_f64().ceil().max(1.0))]
    RateLimited {
        limit: String,
        retry_after: Duration,
    },
    #[error("request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("{0}")]
    NotAcceptable(&'static str),
    #[error("{message}")]
    UnsupportedVersion {
        requested: String,
        supported: Vec<&'static str>,
        message: String,
    },
    #[error("{0}")]
    HeaderMismatch(String),
    #[error("{0}")]
    MethodNotFound(String),
}

impl RequestError {
    /// An unknown protocol version, naming what is supported so a client can pick again.
    pub fn unsupported_version(requested: &str, supported: Vec<&'static str>) -> Self {
        RequestError::UnsupportedVersion {
            message: format!("unsupported protocol version {requested:?}"),
            requested: requested.to_string(),
            supported,
        }
    }

    pub fn code(&self) -> i64 {
        use RequestError::*;
        match self {
            RequestTimeout { .. } => jsonrpc::REQUEST_TIMEOUT,
            Crashed { .. } => jsonrpc::SERVER_CRASHED,
            Removed(_) => jsonrpc::SERVER_STOPPING,
            Disabled(_)
            | StartFailed { .. }
            | StartupTimeout { .. }
            | Busy { .. }
            | TooMany { .. } => jsonrpc::SERVER_UNAVAILABLE,
            Parse(_) => jsonrpc::PARSE_ERROR,
            // As MCP answers an unknown tool: a denial reads like a name that does not exist.
            InvalidParams(_) | Denied(_) => jsonrpc::INVALID_PARAMS,
            RateLimited { .. } | ClientLimit { .. } => jsonrpc::RATE_LIMITED,
            UnsupportedVersion { .. } => jsonrpc::UNSUPPORTED_PROTOCOL_VERSION,
            HeaderMismatch(_) => jsonrpc::HEADER_MISMATCH,
            MethodNotFound(_) => jsonrpc::METHOD_NOT_FOUND,
            Invalid(_) | MissingSession | SessionNotFound | UnknownServer(_) | UnknownGroup(_)
            | Forbidden(_) | BodyTooLarge(_) | NotAcceptable(_) => jsonrpc::INVALID_REQUEST,
        }
    }

    /// 503 for "not available now", 504 for timeouts, 502 for a server that died,
    /// 4xx for what the client must change.
    pub fn status(&self) -> StatusCode {
        use RequestError::*;
        match self {
            Disabled(_) | Removed(_) | StartFailed { .. } | Busy { .. } | TooMany { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            StartupTimeout { .. } | RequestTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Crashed { .. } => StatusCode::BAD_GATEWAY,
            Parse(_)
            | Invalid(_)
            | InvalidParams(_)
            | MissingSession
            | UnsupportedVersion { .. }
            | HeaderMismatch(_) => StatusCode::BAD_REQUEST,
            SessionNotFound | UnknownServer(_) | UnknownGroup(_) | MethodNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            Forbidden(_) | Denied(_) => StatusCode::FORBIDDEN,
            RateLimited { .. } | ClientLimit { .. } => StatusCode::TOO_MANY_REQUESTS,
            BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RequestError::StartFailed { retry_in, .. } => Some(*retry_in),
            // Sessions end and containers go as clients leave: worth a retry soon.
            RequestError::TooMany { .. } | RequestError::ClientLimit { .. } => Some(TOO_MANY_RETRY),
            RequestError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The JSON-RPC error response for request `id` (`null` for transport problems).
    pub fn to_jsonrpc(&self, id: Value) -> Value {
        let mut error = jsonrpc::error(id, self.code(), self.to_string());
        if let RequestError::UnsupportedVersion {
            requested,
            supported,
            ..
        } = self
        {
            error["error"]["data"] = json!({"supported": supported, "requested": requested});
        }
        error
    }

    /// The HTTP answer: status, JSON-RPC error body and, while a failed server
    /// backs off, `Retry-After`.
    pub fn reply(&self, id: Value) -> HttpResponse {
        let mut response = json_reply(self.status(), &self.to_jsonrpc(id));
        if let Some(retry_in) = self.retry_after() {
            let seconds = retry_in.as_secs_f64().ceil().max(1.0) as u64;
            response.headers_mut().insert("retry-after", seconds.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_http_statuses_and_codes() {
        let crashed = RequestError::Crashed {
            server: "s".into(),
            reason: "exit 1".into(),
        };
        assert_eq!(crashed.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(crashed.code(), jsonrpc::SERVER_CRASHED);
        let timeout = RequestError::RequestTimeout {
            server: "s".into(),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        let failed = RequestError::StartFailed {
            server: "s".into(),
            reason: "image missing".into(),
            retry_in: Duration::from_secs(4),
        };
        assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(failed.retry_after(), Some(Duration::from_secs(4)));
        assert!(failed.to_string().contains("image missing"));
        let reply = failed.reply(json!(3));
        assert_eq!(reply.headers()["retry-after"], "4");
        let limited = RequestError::RateLimited {
            limit: "the limit of requests for 'bob'".into(),
            retry_after: Duration::from_millis(1200),
        };
        let reply = limited.reply(json!("req-9"));
        assert_eq!(reply.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.headers()["retry-after"], "2");
        assert_eq!(limited.to_jsonrpc(json!("req-9"))["id"], "req-9");
        let version = RequestError::unsupported_version("2099-01-01", vec!["2025-11-25"]);
        let body = version.to_jsonrpc(json!(1));
        assert_eq!(body["error"]["code"], jsonrpc::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(body["error"]["data"]["supported"], json!(["2025-11-25"]));
    }
}
