//! The HTTP router (warp): the original system's management API and one MCP
//! endpoint per server. An MCP request becomes a lease on the server (starting
//! it if needed) and a line on its stdin; the answer comes back as the body.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tracing::{info_span, Instrument};
use warp::http::{Response, StatusCode};
use warp::{Buf, Filter, Rejection, Reply};

use crate::jsonrpc::{self, Kind};
use crate::reconcile::Reconciler;
use crate::server::{Server, ServerError, SUPPORTED_PROTOCOL_VERSIONS};

/// Router-wide settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Clone)]
struct State {
    reconciler: Arc<Reconciler>,
    config: RouterConfig,
}

/// All routes, with every rejection turned into a JSON error.
pub fn routes(
    reconciler: Arc<Reconciler>,
    config: RouterConfig,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let state = State { reconciler, config };
    let with_state = warp::any().map(move || state.clone());

    let health = warp::path!("health")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: State| {
            json_reply(
                StatusCode::OK,
                &json!({
                    "status": "healthy",
                    "timestamp": chrono::Utc::now(),
                    "servers": state.reconciler.servers().len(),
                    "problems": state.reconciler.problems(),
                }),
            )
        });
    let list = warp::path!("servers")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: State| {
            let statuses: Vec<_> = state
                .reconciler
                .servers()
                .iter()
                .map(|s| s.status())
                .collect();
            json_reply(StatusCode::OK, &json!(statuses))
        });
    let show = warp::path!("servers" / String)
        .and(warp::get())
        .and(with_state.clone())
        .map(
            |name: String, state: State| match state.reconciler.server(&name) {
                Some(server) => json_reply(StatusCode::OK, &json!(server.status())),
                None => unknown_server(&name),
            },
        );
    let start = warp::path!("servers" / String / "start")
        .and(warp::post())
        .and(with_state.clone())
        .then(start_server);
    let stop = warp::path!("servers" / String / "stop")
        .and(warp::post())
        .and(with_state.clone())
        .then(stop_server);
    let mcp = warp::path!("mcp" / String)
        .and(warp::post())
        .and(with_state.clone())
        .and(warp::body::stream())
        .then(|name: String, state: State, body| async move {
            let span = info_span!("mcp", server = %name);
            handle_mcp(name, state, body).instrument(span).await
        });
    // Kubernetes: a server in any namespace the router watches.
    let mcp_namespaced = warp::path!("mcp" / String / String)
        .and(warp::post())
        .and(with_state.clone())
        .and(warp::body::stream())
        .then(
            |namespace: String, name: String, state: State, body| async move {
                let key = state.reconciler.key_for(&namespace, &name);
                let span = info_span!("mcp", server = %key);
                handle_mcp(key, state, body).instrument(span).await
            },
        );

    health
        .or(list)
        .unify()
        .or(show)
        .unify()
        .or(start)
        .unify()
        .or(stop)
        .unify()
        .or(mcp)
        .unify()
        .or(mcp_namespaced)
        .unify()
        .recover(handle_rejection)
        .unify()
        .with(warp::trace::request())
}

type HttpResponse = warp::reply::Response;

fn json_reply(status: StatusCode, body: &Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string().into())
        .expect("static headers are valid")
}

fn unknown_server(name: &str) -> HttpResponse {
    json_reply(
        StatusCode::NOT_FOUND,
        &json!({"success": false, "error": "not found", "message": format!("no MCP server named '{name}'")}),
    )
}

async fn start_server(name: String, state: State) -> HttpResponse {
    let Some(server) = state.reconciler.server(&name) else {
        return unknown_server(&name);
    };
    match server.acquire().await {
        Ok(lease) => {
            drop(lease);
            json_reply(
                StatusCode::OK,
                &json!({"success": true, "message": "Server started"}),
            )
        }
        Err(e) => json_reply(
            status_of(&e),
            &json!({"success": false, "message": e.to_string()}),
        ),
    }
}

async fn stop_server(name: String, state: State) -> HttpResponse {
    let Some(server) = state.reconciler.server(&name) else {
        return unknown_server(&name);
    };
    server.stop("stopped through the API", true).await;
    json_reply(
        StatusCode::OK,
        &json!({"success": true, "message": "Server stopped"}),
    )
}

fn status_of(error: &ServerError) -> StatusCode {
    StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Reads a body up to `limit` bytes, whether it has a Content-Length or is chunked.
async fn read_body<S, B>(body: S, limit: usize) -> Result<Bytes, HttpResponse>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut body = body;
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            json_reply(
                StatusCode::BAD_REQUEST,
                &jsonrpc::error(
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    format!("reading the body failed: {e}"),
                ),
            )
        })?;
        if collected.len() + chunk.remaining() > limit {
            return Err(json_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &jsonrpc::error(
                    Value::Null,
                    jsonrpc::INVALID_REQUEST,
                    format!("request body exceeds the limit of {limit} bytes"),
                ),
            ));
        }
        collected.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    Ok(collected.freeze())
}

async fn handle_mcp<S, B>(name: String, state: State, body: S) -> HttpResponse
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let Some(server) = state.reconciler.server(&name) else {
        return json_reply(
            StatusCode::NOT_FOUND,
            &jsonrpc::error(
                Value::Null,
                jsonrpc::INVALID_REQUEST,
                format!("no MCP server named '{name}'"),
            ),
        );
    };
    let body = match read_body(body, state.config.max_body_bytes).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let message: Value = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(e) => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                &jsonrpc::error(
                    Value::Null,
                    jsonrpc::PARSE_ERROR,
                    format!("parse error: {e}"),
                ),
            )
        }
    };
    match jsonrpc::classify(&message) {
        None => json_reply(
            StatusCode::BAD_REQUEST,
            &jsonrpc::error(
                message.get("id").cloned().unwrap_or(Value::Null),
                jsonrpc::INVALID_REQUEST,
                "invalid request: expected one JSON-RPC 2.0 message with jsonrpc \"2.0\" and a method, or a result or error",
            ),
        ),
        Some(Kind::Notification) | Some(Kind::Response) => {
            forward_one_way(&server, message);
            accepted()
        }
        Some(Kind::Request) => {
            let id = jsonrpc::id(&message);
            match answer_request(&server, message).await {
                Ok(response) => json_reply(StatusCode::OK, &response),
                Err(e) => error_reply(id, &e),
            }
        }
    }
}

/// A JSON-RPC error for a request mcpod could not get answered, with
/// `Retry-After` while a failed server is backing off.
fn error_reply(id: Value, error: &ServerError) -> HttpResponse {
    let mut response = json_reply(
        status_of(error),
        &jsonrpc::error(id, error.jsonrpc_code(), error.to_string()),
    );
    if let Some(retry_in) = error.retry_after() {
        let seconds = retry_in.as_secs_f64().ceil().max(1.0) as u64;
        response.headers_mut().insert("retry-after", seconds.into());
    }
    response
}

fn accepted() -> HttpResponse {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .body(Bytes::new().into())
        .expect("static response")
}

/// Notifications and responses never start a server; they go to a running one.
fn forward_one_way(server: &Arc<Server>, message: Value) {
    // mcpod already told the server it is initialized, once per process.
    if jsonrpc::method(&message) == Some("notifications/initialized") {
        return;
    }
    if let Some(instance) = server.running_instance() {
        instance.bridge.notify(message);
    }
}

async fn answer_request(server: &Arc<Server>, message: Value) -> Result<Value, ServerError> {
    let id = jsonrpc::id(&message);
    match jsonrpc::method(&message) {
        // Liveness of mcpod itself: answered without waking the server.
        Some("ping") => Ok(jsonrpc::result(id, json!({}))),
        Some("initialize") => {
            let lease = server.acquire().await?;
            let mut result = lease.instance.initialize_result.clone();
            result["protocolVersion"] = json!(negotiate_version(&message));
            Ok(jsonrpc::result(id, result))
        }
        _ => server.acquire().await?.request(message).await,
    }
}

/// The client's version when mcpod speaks it, else the newest mcpod speaks.
pub fn negotiate_version(initialize: &Value) -> &'static str {
    let requested = initialize
        .pointer("/params/protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    SUPPORTED_PROTOCOL_VERSIONS
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(SUPPORTED_PROTOCOL_VERSIONS[SUPPORTED_PROTOCOL_VERSIONS.len() - 1])
}

async fn handle_rejection(rejection: Rejection) -> Result<HttpResponse, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint".to_string(),
        )
    } else {
        (StatusCode::BAD_REQUEST, format!("{rejection:?}"))
    };
    Ok(json_reply(
        status,
        &json!({"success": false, "error": status.canonical_reason(), "message": message}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_negotiation() {
        let ask = |v: &str| json!({"params": {"protocolVersion": v}});
        assert_eq!(negotiate_version(&ask("2025-03-26")), "2025-03-26");
        assert_eq!(negotiate_version(&ask("1999-01-01")), "2025-11-25");
    }
}
