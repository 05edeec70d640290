//! The MCP endpoint of each server: Streamable HTTP (2025-03-26 and later) at
//! `/mcp/{name}`, and the legacy HTTP+SSE transport (2024-11-05) at
//! `/sse/{name}` + `/messages/{name}`.
//!
//! A POSTed request becomes a lease on the server and a line on its stdin; the
//! answer comes back as JSON or as an SSE stream that first carries what the
//! server sends while handling it. Clients that send no `Accept:
//! text/event-stream` and no session (plain `curl`, the original system's API)
//! are served without a session.

// Handlers return `Result<_, HttpResponse>` so `?` yields the error reply; the
// response is built once per request, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, info_span, Instrument};
use warp::http::{HeaderMap, Response, StatusCode};
use warp::{Buf, Filter, Reply};

use crate::crd::SessionMode;
use crate::jsonrpc::{self, Kind};
use crate::modern;
use crate::reconcile::Reconciler;
use crate::server::{Server, ServerError, SUPPORTED_PROTOCOL_VERSIONS};
use crate::session::{ClientCapabilities, Session, SseEvent, StreamKey, STANDALONE};

pub type HttpResponse = warp::reply::Response;
/// A client session and the server that holds it.
type Held = (Arc<Server>, Arc<Session>);

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";
/// How much of an oversized body is read and dropped before answering 413.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
/// Assumed when a client sends no version header and nothing else tells.
const DEFAULT_VERSION: &str = "2025-03-26";

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub max_body_bytes: usize,
    /// Origins allowed besides the loopback ones; `*` allows any.
    pub allowed_origins: Vec<String>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_body_bytes: 4 * 1024 * 1024,
            allowed_origins: vec![],
        }
    }
}

#[derive(Clone)]
struct Endpoint {
    reconciler: Arc<Reconciler>,
    config: Arc<EndpointConfig>,
}

/// `POST|GET|DELETE /mcp/{name}`, `GET /sse/{name}`, `POST /messages/{name}`.
pub fn routes(
    reconciler: Arc<Reconciler>,
    config: EndpointConfig,
) -> impl Filter<Extract = (HttpResponse,), Error = warp::Rejection> + Clone {
    let endpoint = Endpoint {
        reconciler,
        config: Arc::new(config),
    };
    let with = warp::any().map(move || endpoint.clone());
    // `/mcp/{name}`, or on Kubernetes `/mcp/{namespace}/{name}` for other namespaces.
    let reconciler = with.clone().map(|e: Endpoint| e.reconciler);
    let mcp_key = warp::path!("mcp" / String)
        .or(warp::path!("mcp" / String / String).and(reconciler).map(
            |namespace: String, name: String, reconciler: Arc<Reconciler>| {
                reconciler.key_for(&namespace, &name)
            },
        ))
        .unify();
    let post = mcp_key
        .clone()
        .and(warp::post())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(|name: String, endpoint: Endpoint, headers, body| {
            let span = info_span!("mcp", server = %name);
            async move { endpoint.post(&name, &headers, body).await }.instrument(span)
        });
    let get = mcp_key
        .clone()
        .and(warp::get())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .map(|name: String, endpoint: Endpoint, headers: HeaderMap| endpoint.get(&name, &headers));
    let delete = mcp_key
        .and(warp::delete())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .then(
            |name: String, endpoint: Endpoint, headers: HeaderMap| async move {
                endpoint.delete(&name, &headers).await
            },
        );
    let legacy_stream = warp::path!("sse" / String)
        .and(warp::get())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .map(|name: String, endpoint: Endpoint, headers: HeaderMap| {
            endpoint.legacy_stream(&name, &headers)
        });
    let legacy_post = warp::path!("messages" / String)
        .and(warp::post())
        .and(with)
        .and(warp::header::headers_cloned())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .and(warp::body::stream())
        .then(
            |name: String, endpoint: Endpoint, headers, query, body| async move {
                endpoint.legacy_post(&name, &headers, query, body).await
            },
        );
    post.or(get)
        .unify()
        .or(delete)
        .unify()
        .or(legacy_stream)
        .unify()
        .or(legacy_post)
        .unify()
}

pub fn json_reply(status: StatusCode, body: &Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string().into())
        .expect("static headers are valid")
}

pub(crate) fn status_only(status: StatusCode) -> HttpResponse {
    Response::builder()
        .status(status)
        .body(Bytes::new().into())
        .expect("static response")
}

/// An HTTP error with a JSON-RPC error body without id (transport-level problems).
pub(crate) fn transport_error(
    status: StatusCode,
    code: i64,
    message: impl Into<String>,
) -> HttpResponse {
    json_reply(status, &jsonrpc::error(Value::Null, code, message))
}

/// A JSON-RPC error for a request mcpod could not get answered, with
/// `Retry-After` while a failed server is backing off.
pub fn server_error_reply(id: Value, error: &ServerError) -> HttpResponse {
    let status = StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = json_reply(
        status,
        &jsonrpc::error(id, error.jsonrpc_code(), error.to_string()),
    );
    if let Some(retry_in) = error.retry_after() {
        let seconds = retry_in.as_secs_f64().ceil().max(1.0) as u64;
        response.headers_mut().insert("retry-after", seconds.into());
    }
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What the client's `Accept` allows.
struct Accepts {
    json: bool,
    sse: bool,
}

fn accepts(headers: &HeaderMap) -> Accepts {
    let accept = header(headers, "accept").unwrap_or("").to_ascii_lowercase();
    let any = accept.is_empty() || accept.contains("*/*");
    Accepts {
        json: any || accept.contains("application/json") || accept.contains("application/*"),
        sse: accept.contains("text/event-stream"),
    }
}

impl Endpoint {
    /// DNS-rebinding protection: a browser's Origin must be loopback or allowed.
    fn origin_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = header(headers, "origin") else {
            return true;
        };
        if self
            .config
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o == origin)
        {
            return true;
        }
        let host = origin
            .split("://")
            .nth(1)
            .unwrap_or("")
            .trim_end_matches('/');
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.split(':').next().unwrap_or(""),
        };
        matches!(host, "localhost" | "127.0.0.1" | "::1")
    }

    /// The checks every request passes first: Origin, server, protocol version.
    fn admit(&self, name: &str, headers: &HeaderMap) -> Result<Arc<Server>, HttpResponse> {
        if !self.origin_allowed(headers) {
            return Err(transport_error(
                StatusCode::FORBIDDEN,
                jsonrpc::INVALID_REQUEST,
                format!(
                    "origin {} is not allowed",
                    header(headers, "origin").unwrap_or("")
                ),
            ));
        }
        let server = self.reconciler.server(name).ok_or_else(|| {
            transport_error(
                StatusCode::NOT_FOUND,
                jsonrpc::INVALID_REQUEST,
                format!("no MCP server named '{name}'"),
            )
        })?;
        if let Some(version) = header(headers, VERSION_HEADER) {
            let all: Vec<&str> = SUPPORTED_PROTOCOL_VERSIONS
                .iter()
                .chain(modern::MODERN_PROTOCOL_VERSIONS)
                .copied()
                .collect();
            if !all.contains(&version) {
                return Err(modern::unsupported_version(Value::Null, version, &all));
            }
        }
        Ok(server)
    }

    /// The session named by `Mcp-Session-Id` and the server that holds it (for
    /// `sessionMode: Isolated`, the session's own one): 404 once it has ended.
    fn session(server: &Arc<Server>, headers: &HeaderMap) -> Result<Option<Held>, HttpResponse> {
        let Some(id) = header(headers, SESSION_HEADER) else {
            return Ok(None);
        };
        match find_session(server, id) {
            Some((holder, session)) => {
                session.touch();
                Ok(Some((holder, session)))
            }
            None => Err(transport_error(
                StatusCode::NOT_FOUND,
                jsonrpc::INVALID_REQUEST,
                "session not found: it ended or expired; send initialize to start a new one",
            )),
        }
    }

    fn require_session(server: &Arc<Server>, headers: &HeaderMap) -> Result<Held, HttpResponse> {
        Self::session(server, headers)?.ok_or_else(|| {
            transport_error(
                StatusCode::BAD_REQUEST,
                jsonrpc::INVALID_REQUEST,
                "Mcp-Session-Id header required",
            )
        })
    }

    async fn post<S, B>(&self, name: &str, headers: &HeaderMap, body: S) -> HttpResponse
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin,
        B: Buf,
    {
        let server = match self.admit(name, headers) {
            Ok(server) => server,
            Err(response) => return response,
        };
        let accept = accepts(headers);
        if !accept.json && !accept.sse {
            return transport_error(
                StatusCode::NOT_ACCEPTABLE,
                jsonrpc::INVALID_REQUEST,
                "Accept must allow application/json or text/event-stream",
            );
        }
        let message = match read_json(body, self.config.max_body_bytes).await {
            Ok(message) => message,
            Err(response) => return response,
        };
        // 2026-07-28 and later: one self-contained request, no session.
        if modern::requested(headers) {
            return modern::post(server, headers, accept.sse, message).await;
        }
        let is_initialize = jsonrpc::classify(&message) == Some(Kind::Request)
            && jsonrpc::method(&message) == Some("initialize");
        if is_initialize {
            return initialize(&server, message).await;
        }
        let (server, session) = match Self::session(&server, headers) {
            Ok(Some((holder, session))) => (holder, Some(session)),
            Ok(None) => (server, None),
            Err(response) => return response,
        };
        // A Streamable HTTP client (it accepts SSE) must use its session; a plain
        // JSON client without one is served statelessly, as the original API was.
        if session.is_none() && accept.sse {
            return transport_error(
                StatusCode::BAD_REQUEST,
                jsonrpc::INVALID_REQUEST,
                "Mcp-Session-Id header required",
            );
        }
        if let Value::Array(batch) = message {
            return self.batch(&server, session, headers, batch).await;
        }
        match jsonrpc::classify(&message) {
            None => json_reply(StatusCode::BAD_REQUEST, &invalid_request(&message)),
            Some(Kind::Notification) | Some(Kind::Response) => {
                one_way(&server, session.as_deref(), message);
                status_only(StatusCode::ACCEPTED)
            }
            Some(Kind::Request) => match session {
                Some(session) if accept.sse => sse_request(server, session, message),
                session => {
                    let id = jsonrpc::id(&message);
                    match forward(&server, session.as_ref(), STANDALONE, message).await {
                        Ok(response) => json_reply(StatusCode::OK, &response),
                        Err(e) => server_error_reply(id, &e),
                    }
                }
            },
        }
    }

    /// JSON-RPC batches exist only in protocol version 2025-03-26.
    async fn batch(
        &self,
        server: &Arc<Server>,
        session: Option<Arc<Session>>,
        headers: &HeaderMap,
        batch: Vec<Value>,
    ) -> HttpResponse {
        let version = session
            .as_ref()
            .map(|s| s.protocol_version())
            .or_else(|| header(headers, VERSION_HEADER).map(str::to_string))
            .unwrap_or_else(|| DEFAULT_VERSION.to_string());
        if version != "2025-03-26" {
            return transport_error(
                StatusCode::BAD_REQUEST,
                jsonrpc::INVALID_REQUEST,
                format!("JSON-RPC batches are not part of protocol version {version}"),
            );
        }
        if batch.is_empty() {
            return json_reply(StatusCode::BAD_REQUEST, &invalid_request(&Value::Null));
        }
        let answers = batch.into_iter().map(|message| {
            let server = server.clone();
            let session = session.clone();
            async move {
                match jsonrpc::classify(&message) {
                    None => Some(invalid_request(&message)),
                    Some(Kind::Request) if jsonrpc::method(&message) == Some("initialize") => {
                        Some(jsonrpc::error(
                            jsonrpc::id(&message),
                            jsonrpc::INVALID_REQUEST,
                            "initialize cannot be part of a batch",
                        ))
                    }
                    Some(Kind::Request) => {
                        let id = jsonrpc::id(&message);
                        Some(
                            forward(&server, session.as_ref(), STANDALONE, message)
                                .await
                                .unwrap_or_else(|e| {
                                    jsonrpc::error(id, e.jsonrpc_code(), e.to_string())
                                }),
                        )
                    }
                    _ => {
                        one_way(&server, session.as_deref(), message);
                        None
                    }
                }
            }
        });
        let responses: Vec<Value> = futures::future::join_all(answers)
            .await
            .into_iter()
            .flatten()
            .collect();
        if responses.is_empty() {
            status_only(StatusCode::ACCEPTED)
        } else {
            json_reply(StatusCode::OK, &Value::Array(responses))
        }
    }

    /// GET: the stream for what the server sends on its own; `Last-Event-ID` resumes.
    fn get(&self, name: &str, headers: &HeaderMap) -> HttpResponse {
        let server = match self.admit(name, headers) {
            Ok(server) => server,
            Err(response) => return response,
        };
        if modern::requested(headers) {
            return modern::method_not_allowed();
        }
        if !accepts(headers).sse {
            return transport_error(
                StatusCode::NOT_ACCEPTABLE,
                jsonrpc::INVALID_REQUEST,
                "GET needs Accept: text/event-stream",
            );
        }
        let (_, session) = match Self::require_session(&server, headers) {
            Ok(found) => found,
            Err(response) => return response,
        };
        let last_event_id = header(headers, "last-event-id").and_then(|v| v.parse().ok());
        debug!(session = %session.id, ?last_event_id, "GET stream opened");
        sse_reply(session.attach(last_event_id), None)
    }

    /// DELETE: the client ends its session.
    async fn delete(&self, name: &str, headers: &HeaderMap) -> HttpResponse {
        let server = match self.admit(name, headers) {
            Ok(server) => server,
            Err(response) => return response,
        };
        if modern::requested(headers) {
            return modern::method_not_allowed();
        }
        match Self::require_session(&server, headers) {
            Ok((holder, session)) => {
                holder.sessions().end(&session.id);
                // An isolated session's container goes with it.
                server.end_isolated(&session.id).await;
                debug!(session = %session.id, "session ended by the client");
                status_only(StatusCode::OK)
            }
            Err(response) => response,
        }
    }

    /// Legacy transport: the stream opens first and names where to POST.
    fn legacy_stream(&self, name: &str, headers: &HeaderMap) -> HttpResponse {
        let server = match self.admit(name, headers) {
            Ok(server) => server,
            Err(response) => return response,
        };
        let isolated = server.workload().session_mode == SessionMode::Isolated;
        let holder = if isolated {
            server.spawn_isolated()
        } else {
            server.clone()
        };
        let session = holder
            .sessions()
            .create("2024-11-05", ClientCapabilities::default(), true);
        if isolated {
            server.attach_isolated(&session.id, holder);
        }
        let endpoint = format!("/messages/{name}?sessionId={}", session.id);
        let events = session.attach(None);
        // The session lives as long as this stream.
        let guard = SessionGuard {
            server: server.clone(),
            id: session.id.clone(),
        };
        sse_reply(events, Some((endpoint, guard)))
    }

    async fn legacy_post<S, B>(
        &self,
        name: &str,
        headers: &HeaderMap,
        query: std::collections::HashMap<String, String>,
        body: S,
    ) -> HttpResponse
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin,
        B: Buf,
    {
        let server = match self.admit(name, headers) {
            Ok(server) => server,
            Err(response) => return response,
        };
        let Some((server, session)) = query
            .get("sessionId")
            .and_then(|id| find_session(&server, id))
        else {
            return transport_error(
                StatusCode::NOT_FOUND,
                jsonrpc::INVALID_REQUEST,
                "unknown or ended sessionId",
            );
        };
        session.touch();
        let message = match read_json(body, self.config.max_body_bytes).await {
            Ok(message) => message,
            Err(response) => return response,
        };
        match jsonrpc::classify(&message) {
            None => return json_reply(StatusCode::BAD_REQUEST, &invalid_request(&message)),
            Some(Kind::Request) => {
                tokio::spawn(async move {
                    let id = jsonrpc::id(&message);
                    let answer = if jsonrpc::method(&message) == Some("initialize") {
                        session.negotiated(
                            negotiate_version(&message),
                            ClientCapabilities::from_initialize(&message),
                        );
                        initialize_result(&server, &message).await
                    } else {
                        forward(&server, Some(&session), STANDALONE, message).await
                    };
                    let response = answer
                        .unwrap_or_else(|e| jsonrpc::error(id, e.jsonrpc_code(), e.to_string()));
                    session.send(STANDALONE, response);
                });
            }
            _ => one_way(&server, Some(&session), message),
        }
        status_only(StatusCode::ACCEPTED)
    }
}

/// Session `id` of `server` and the server holding it: `server` itself, or for
/// `sessionMode: Isolated` the session's own server.
fn find_session(server: &Arc<Server>, id: &str) -> Option<Held> {
    match server.sessions().get(id) {
        Some(session) => Some((server.clone(), session)),
        None => server
            .isolated_for(id)
            .and_then(|child| child.sessions().get(id).map(|session| (child, session))),
    }
}

/// Ends a legacy session when its stream is dropped.
struct SessionGuard {
    server: Arc<Server>,
    id: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.server.sessions().end(&self.id);
        if self.server.isolated_for(&self.id).is_some() {
            let (server, id) = (self.server.clone(), self.id.clone());
            tokio::spawn(async move { server.end_isolated(&id).await });
        }
    }
}

fn invalid_request(message: &Value) -> Value {
    jsonrpc::error(
        message.get("id").cloned().unwrap_or(Value::Null),
        jsonrpc::INVALID_REQUEST,
        "invalid request: expected a JSON-RPC 2.0 message with jsonrpc \"2.0\" and a method, or a result or error",
    )
}

/// Reads a JSON body up to `limit` bytes, whether it has a Content-Length or is chunked.
async fn read_json<S, B>(body: S, limit: usize) -> Result<Value, HttpResponse>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut body = body;
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|e| {
            transport_error(
                StatusCode::BAD_REQUEST,
                jsonrpc::PARSE_ERROR,
                format!("reading the body failed: {e}"),
            )
        })?;
        if collected.len() + chunk.remaining() > limit {
            // Read (and drop) the rest, up to a bound, so the client gets the 413
            // instead of a connection reset from unread data.
            let mut drained = 0usize;
            while let Some(Ok(chunk)) = body.next().await {
                drained += chunk.remaining();
                if drained > DRAIN_LIMIT {
                    break;
                }
            }
            return Err(transport_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                jsonrpc::INVALID_REQUEST,
                format!("request body exceeds the limit of {limit} bytes"),
            ));
        }
        collected.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    serde_json::from_slice(&collected).map_err(|e| {
        transport_error(
            StatusCode::BAD_REQUEST,
            jsonrpc::PARSE_ERROR,
            format!("parse error: {e}"),
        )
    })
}

/// A client's `initialize`: answered from the server's own result, with a new session.
async fn initialize(parent: &Arc<Server>, message: Value) -> HttpResponse {
    let id = jsonrpc::id(&message);
    // `sessionMode: Isolated`: this session gets a container of its own.
    let isolated = parent.workload().session_mode == SessionMode::Isolated;
    let server = &if isolated {
        parent.spawn_isolated()
    } else {
        parent.clone()
    };
    match initialize_result(server, &message).await {
        Ok(response) => {
            let version = negotiate_version(&message);
            let capabilities = ClientCapabilities::from_initialize(&message);
            let session = server.sessions().create(version, capabilities, false);
            if isolated {
                parent.attach_isolated(&session.id, server.clone());
            }
            if capabilities.roots {
                // A client that has roots arrived: let the server ask for them again.
                one_way(
                    server,
                    None,
                    json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}),
                );
            }
            let mut reply = json_reply(StatusCode::OK, &response);
            reply.headers_mut().insert(
                SESSION_HEADER,
                session.id.parse().expect("hex is a valid header value"),
            );
            reply
        }
        Err(e) => {
            if isolated {
                server.remove().await;
            }
            server_error_reply(id, &e)
        }
    }
}

async fn initialize_result(server: &Arc<Server>, message: &Value) -> Result<Value, ServerError> {
    let lease = server.acquire().await?;
    let mut result = lease.instance.initialize_result.clone();
    result["protocolVersion"] = json!(negotiate_version(message));
    Ok(jsonrpc::result(jsonrpc::id(message), result))
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

/// Notifications and responses from a client: never start a server.
pub(crate) fn one_way(server: &Arc<Server>, session: Option<&Session>, message: Value) {
    let to_server = match (
        jsonrpc::classify(&message),
        jsonrpc::method(&message),
        session,
    ) {
        // mcpod told the server it is initialized, once per process.
        (_, Some("notifications/initialized"), _) => None,
        (_, Some("notifications/cancelled"), Some(session)) => {
            server.sessions().client_cancel(session, message)
        }
        (Some(Kind::Response), _, Some(session)) => {
            server.sessions().client_response(session, message)
        }
        (Some(Kind::Response), _, None) => None,
        _ => Some(message),
    };
    match (to_server, server.running_instance()) {
        (Some(message), Some(instance)) => instance.bridge.notify(message),
        (Some(message), None) => debug!(
            method = jsonrpc::method(&message).unwrap_or("response"),
            "server not running; dropped"
        ),
        _ => {}
    }
}

/// Sends a request to the server (starting it if needed) on behalf of `session`,
/// answering what mcpod answers itself.
pub(crate) async fn forward(
    server: &Arc<Server>,
    session: Option<&Arc<Session>>,
    stream: StreamKey,
    mut message: Value,
) -> Result<Value, ServerError> {
    let id = jsonrpc::id(&message);
    let method = jsonrpc::method(&message).unwrap_or_default().to_string();
    let uri = message
        .pointer("/params/uri")
        .and_then(Value::as_str)
        .map(str::to_string);
    match (method.as_str(), session, &uri) {
        // Liveness of mcpod itself: answered without waking the server.
        ("ping", _, _) => return Ok(jsonrpc::result(id, json!({}))),
        // Another session still wants updates: only this session stops getting them.
        ("resources/unsubscribe", Some(session), Some(uri))
            if server.sessions().others_subscribed(session, uri) =>
        {
            session.unsubscribe(uri);
            return Ok(jsonrpc::result(id, json!({})));
        }
        _ => {}
    }
    let lease = server.acquire().await?;
    let wire_id = lease.instance.bridge.next_wire_id();
    let in_flight = session.map(|s| server.sessions().begin(s, wire_id, stream, &mut message));
    let response = lease.request_as(wire_id, message).await;
    drop(in_flight);
    if let (Ok(response), Some(session), Some(uri)) = (&response, session, &uri) {
        if response.get("result").is_some() {
            match method.as_str() {
                "resources/subscribe" => session.subscribe(uri),
                "resources/unsubscribe" => session.unsubscribe(uri),
                _ => {}
            }
        }
    }
    response
}

/// Answers one request with an SSE stream: what the server sends while handling
/// it, then its response.
fn sse_request(server: Arc<Server>, session: Arc<Session>, message: Value) -> HttpResponse {
    let key = server.sessions().new_stream_key();
    let events = session.open_request_stream(key);
    let task = async move {
        let id = jsonrpc::id(&message);
        let response = forward(&server, Some(&session), key, message)
            .await
            .unwrap_or_else(|e| jsonrpc::error(id, e.jsonrpc_code(), e.to_string()));
        session.send(key, response);
        session.finish_stream(key);
    };
    tokio::spawn(task.in_current_span());
    sse_reply(events, None)
}

fn sse_reply(
    events: mpsc::UnboundedReceiver<SseEvent>,
    legacy: Option<(String, SessionGuard)>,
) -> HttpResponse {
    let (first, guard) = match legacy {
        Some((endpoint, guard)) => (
            Some(warp::sse::Event::default().event("endpoint").data(endpoint)),
            Some(guard),
        ),
        None => (None, None),
    };
    let messages = futures::stream::unfold((events, guard), |(mut events, guard)| async move {
        let event = events.recv().await?;
        let sse = warp::sse::Event::default()
            .id(event.id.to_string())
            .event("message")
            .data(event.message.to_string());
        Some((Ok::<_, Infallible>(sse), (events, guard)))
    });
    let stream = futures::stream::iter(first.map(Ok)).chain(messages);
    let keep_alive = warp::sse::keep_alive().interval(Duration::from_secs(15));
    warp::sse::reply(keep_alive.stream(stream)).into_response()
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

    #[test]
    fn accept_header_parsing() {
        let mut headers = HeaderMap::new();
        let a = accepts(&headers);
        assert!(a.json && !a.sse);
        headers.insert(
            "accept",
            "application/json, text/event-stream".parse().unwrap(),
        );
        let a = accepts(&headers);
        assert!(a.json && a.sse);
        headers.insert("accept", "text/html".parse().unwrap());
        let a = accepts(&headers);
        assert!(!a.json && !a.sse);
    }
}
