//! Several router replicas behind one Service: every request for a server goes
//! through [`ReplicaGate::decide`], the one place that says "served here, or by
//! the replica that owns the server". Which requests are a server's comes from
//! the router's route table ([`crate::route`]): a route declared as concerning
//! one server is forwarded, so a new route cannot skip this gate. The owner is
//! the holder of the server's Lease ([`super::ownership`]); a request for a
//! server another replica owns is sent to that replica unchanged (method, path,
//! query, headers, body) and its answer is streamed back as it comes (SSE
//! included).
//!
//! A forwarded request carries [`FORWARDED_BY`] and is always served where it
//! arrives, so a misconfiguration costs one hop, never a loop. An owner that does
//! not answer is failed over: its Lease is taken if it was released or ran out,
//! else the client gets 503 with `Retry-After` until it runs out; every JSON-RPC
//! request gets exactly one answer either way.

// Handlers return `Result<_, HttpResponse>`-like values built once per request.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::client::conn::http1::SendRequest;
use serde_json::Value;
use tracing::{debug, info, warn, Instrument};
use warp::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use warp::{Filter, Rejection, Reply};

use super::ownership::{Owner, Ownership, Placement};
use crate::mcp::http::reply::{json_reply, HttpResponse};
use crate::mcp::message as jsonrpc;
use crate::reconcile::Reconciler;
use crate::route::{self, Route};

/// Marks a request one replica forwarded to another (the value: who forwarded it).
pub const FORWARDED_BY: &str = "x-mcpod-forwarded-by";
/// How long an owner may take to accept a connection before it counts as gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Response chunks buffered between the owner's connection and the client's.
const RESPONSE_CHUNKS: usize = 16;
/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
pub(super) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

pub(super) type ForwardBody =
    StreamBody<futures::stream::BoxStream<'static, Result<Frame<Bytes>, warp::Error>>>;

/// What the router needs to decide where a request is served.
#[derive(Clone)]
pub struct ReplicaGate {
    reconciler: Arc<Reconciler>,
    /// `None`: the only replica; everything is served here.
    ownership: Option<Arc<Ownership>>,
    /// The router's route table: which paths name one server.
    routes: &'static [Route],
    /// Bytes of a body kept to name the request in an error answer.
    max_body_bytes: usize,
}

/// A request this replica does not serve itself.
enum Elsewhere {
    /// Sent to the owner, over a connection already open to it.
    Forward {
        owner: Owner,
        connection: SendRequest<ForwardBody>,
    },
    /// Nobody can serve it now: answered 503.
    Unavailable {
        message: String,
        retry_after: Duration,
    },
}

/// The rejection that lets a request through to this replica's own routes.
fn serve_here() -> Rejection {
    warp::reject::not_found()
}

/// Answers requests that another replica serves; rejects (so that the routes
/// after it serve them) those served here. Put it before every route.
pub fn gate(
    gate: ReplicaGate,
) -> impl Filter<Extract = (HttpResponse,), Error = Rejection> + Clone {
    let with = warp::any().map(move || gate.clone());
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::path::full()
        .and(warp::header::headers_cloned())
        .and(with.clone())
        .and_then(
            |path: warp::path::FullPath, headers: HeaderMap, gate: ReplicaGate| async move {
                gate.decide(path.as_str(), &headers).await
            },
        )
        .and(warp::method())
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with)
        .then(
            |elsewhere: Elsewhere,
             method: Method,
             path: warp::path::FullPath,
             query: String,
             headers: HeaderMap,
             body,
             gate: ReplicaGate| async move {
                let uri = match query.is_empty() {
                    true => path.as_str().to_string(),
                    false => format!("{}?{query}", path.as_str()),
                };
                gate.answer(elsewhere, method, uri, headers, body).await
            },
        )
}

impl ReplicaGate {
    /// `routes`: the router's route table, read for which paths name a server.
    pub fn new(
        reconciler: Arc<Reconciler>,
        ownership: Option<Arc<Ownership>>,
        routes: &'static [Route],
        max_body_bytes: usize,
    ) -> Self {
        ReplicaGate {
            reconciler,
            ownership,
            routes,
            max_body_bytes,
        }
    }

    /// The one decision: is this request served here (rejected, for the routes
    /// after the gate), or by the replica that owns its server?
    async fn decide(&self, path: &str, headers: &HeaderMap) -> Result<Elsewhere, Rejection> {
        let Some(ownership) = &self.ownership else {
            return Err(serve_here());
        };
        // One hop at most: whatever the Lease says now, a forwarded request stays.
        if headers.contains_key(FORWARDED_BY) {
            return Err(serve_here());
        }
        // Not a server's path, or no such server (answered 404 here).
        let Some(key) = self.server_key(path) else {
            return Err(serve_here());
        };
        let (namespace, server) = key.split_once('/').unwrap_or(("", key.as_str()));
        match ownership.placement(namespace, server).await {
            Ok(Placement::Local) => Err(serve_here()),
            Ok(Placement::Remote(owner)) => self.reach(ownership, namespace, server, owner).await,
            Err(e) => Ok(Elsewhere::Unavailable {
                message: format!(
                    "cannot tell which router replica serves MCP server '{server}': {e}"
                ),
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// The runtime key (`namespace/name`) of the server a path is for: `None`
    /// for the router's own routes and for servers it does not know (answered
    /// 404 here).
    fn server_key(&self, path: &str) -> Option<String> {
        let server = route::find(self.routes, path)?.server()?;
        let lookup = match server.namespace {
            Some(namespace) => self.reconciler.key_for(namespace, server.name),
            None => server.name.to_string(),
        };
        self.reconciler
            .server(&lookup)
            .map(|server| server.key().to_string())
    }

    /// Opens a connection to the owner; one that does not answer is failed over.
    async fn reach(
        &self,
        ownership: &Ownership,
        namespace: &str,
        server: &str,
        owner: Owner,
    ) -> Result<Elsewhere, Rejection> {
        let error = match connect(&owner.address).await {
            Ok(connection) => return Ok(Elsewhere::Forward { owner, connection }),
            Err(e) => e,
        };
        warn!(server, owner = %owner.identity, address = %owner.address, %error, "the owning replica does not answer: failing over");
        match ownership.failover(namespace, server).await {
            Ok(Placement::Local) => {
                info!(server, previous = %owner.identity, "took the server over");
                Err(serve_here())
            }
            Ok(Placement::Remote(current)) => {
                let left = (current.expires_at - chrono::Utc::now())
                    .to_std()
                    .unwrap_or_default();
                Ok(Elsewhere::Unavailable {
                    message: format!(
                        "MCP server '{server}' is served by router replica {} at {}, which does not \
                         answer ({error}); another replica takes over when its lease runs out",
                        current.identity, current.address
                    ),
                    retry_after: left.max(Duration::from_secs(1)),
                })
            }
            Err(e) => Ok(Elsewhere::Unavailable {
                message: format!(
                    "MCP server '{server}': its router replica {} does not answer ({error}), and \
                     taking over failed: {e}",
                    owner.identity
                ),
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    async fn answer<S, B>(
        &self,
        elsewhere: Elsewhere,
        method: Method,
        uri: String,
        headers: HeaderMap,
        body: S,
    ) -> HttpResponse
    where
        S: Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
        B: Buf + Send + 'static,
    {
        let (start, rest) = read_start(body, self.max_body_bytes).await;
        let id = rest.is_none().then(|| request_id(&start)).flatten();
        match elsewhere {
            Elsewhere::Unavailable {
                message,
                retry_after,
            } => unavailable(id, message, retry_after),
            Elsewhere::Forward { owner, connection } => {
                let span = tracing::info_span!("forward", owner = %owner.identity, %uri);
                self.send_to_owner(connection, &owner, method, uri, headers, start, rest, id)
                    .instrument(span)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_to_owner(
        &self,
        mut connection: SendRequest<ForwardBody>,
        owner: &Owner,
        method: Method,
        uri: String,
        headers: HeaderMap,
        start: Bytes,
        rest: Option<futures::stream::BoxStream<'static, Result<Bytes, warp::Error>>>,
        id: Option<Value>,
    ) -> HttpResponse {
        let complete = rest.is_none();
        let length = start.len();
        let frames = futures::stream::once(async move { Ok(start) })
            .chain(rest.unwrap_or_else(|| futures::stream::empty().boxed()))
            .map(|chunk| chunk.map(Frame::data))
            .boxed();
        let mut request = Request::builder().method(method).uri(&uri);
        for (name, value) in headers.iter() {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                request = request.header(name, value);
            }
        }
        let identity = self
            .ownership
            .as_ref()
            .map_or("", |o| o.identity())
            .to_string();
        request = request.header("host", owner.address.as_str()).header(
            FORWARDED_BY,
            HeaderValue::from_str(&identity).unwrap_or(HeaderValue::from_static("replica")),
        );
        if complete {
            request = request.header("content-length", length);
        }
        let request = match request.body(StreamBody::new(frames)) {
            Ok(request) => request,
            Err(e) => return bad_gateway(id, format!("cannot forward the request: {e}")),
        };
        debug!("forwarding to the owning replica");
        match connection.send_request(request).await {
            Ok(response) => relay(response),
            Err(e) => bad_gateway(
                id,
                format!(
                    "forwarding to router replica {} at {} failed: {e}; the request may or may \
                     not have reached the server",
                    owner.identity, owner.address
                ),
            ),
        }
    }
}

/// Renew a server's Lease while this replica still serves it: a pod attached or
/// being started, requests in flight, or client sessions (they live in this
/// replica's memory, and would be lost to a new owner).
pub fn track_usage(ownership: &Ownership, reconciler: &Arc<Reconciler>) {
    let reconciler = Arc::downgrade(reconciler);
    ownership.track_usage(Box::new(move |namespace, server| {
        let Some(reconciler) = reconciler.upgrade() else {
            return false;
        };
        let Some(server) = reconciler.server(&reconciler.key_for(namespace, server)) else {
            return false;
        };
        let status = server.status();
        matches!(
            status.phase,
            crate::crd::Phase::Starting
                | crate::crd::Phase::Running
                | crate::crd::Phase::Paused
                | crate::crd::Phase::Stopping
        ) || status.in_flight > 0
            || status.sessions > 0
            || status.isolated_instances > 0
    }));
}

/// A TCP connection to another replica, with `TCP_NODELAY`: a forwarded
/// body must not wait behind its headers for the peer's delayed ACK.
async fn dial(address: &str) -> Result<tokio::net::TcpStream, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
    Ok(stream)
}

/// Opens an HTTP/1 connection to `address`, driven by a task of its own.
pub(super) async fn connect(address: &str) -> Result<SendRequest<ForwardBody>, String> {
    let stream = dial(address).await?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "connection to the owning replica ended");
        }
    });
    Ok(sender)
}

/// Reads up to `limit` bytes of a body: `(all of it, None)`, or, for a longer
/// one, `(what was read, the rest)` so it is still passed on whole.
async fn read_start<S, B>(
    mut body: S,
    limit: usize,
) -> (
    Bytes,
    Option<futures::stream::BoxStream<'static, Result<Bytes, warp::Error>>>,
)
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin + 'static,
    B: Buf + Send + 'static,
{
    let mut start = BytesMut::new();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(mut chunk) => start.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining())),
            Err(e) => {
                let failed = futures::stream::once(async move { Err(e) }).boxed();
                return (start.freeze(), Some(failed));
            }
        }
        if start.len() > limit {
            let rest = body.map(|chunk| chunk.map(|mut c| c.copy_to_bytes(c.remaining())));
            return (start.freeze(), Some(rest.boxed()));
        }
    }
    (start.freeze(), None)
}

/// The id of a JSON-RPC request body, to answer it when the owner cannot.
fn request_id(body: &[u8]) -> Option<Value> {
    let message: Value = serde_json::from_slice(body).ok()?;
    (jsonrpc::classify(&message) == Some(jsonrpc::Kind::Request)).then(|| jsonrpc::id(&message))
}

fn error_reply(status: StatusCode, id: Option<Value>, message: String) -> HttpResponse {
    json_reply(
        status,
        &jsonrpc::error(
            id.unwrap_or(Value::Null),
            jsonrpc::SERVER_UNAVAILABLE,
            message,
        ),
    )
}

fn unavailable(id: Option<Value>, message: String, retry_after: Duration) -> HttpResponse {
    let mut response = error_reply(StatusCode::SERVICE_UNAVAILABLE, id, message);
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    response.headers_mut().insert("retry-after", seconds.into());
    response
}

fn bad_gateway(id: Option<Value>, message: String) -> HttpResponse {
    warn!(%message, "forwarding failed");
    error_reply(StatusCode::BAD_GATEWAY, id, message)
}

/// The owner's response, streamed to the client chunk by chunk as it arrives
/// (an SSE stream is never buffered): a task moves the body into a channel.
fn relay(response: hyper::Response<hyper::body::Incoming>) -> HttpResponse {
    let (parts, mut body) = response.into_parts();
    let (mut tx, rx) =
        futures::channel::mpsc::channel::<Result<Bytes, hyper::Error>>(RESPONSE_CHUNKS);
    tokio::spawn(
        async move {
            while let Some(frame) = body.frame().await {
                let chunk = match frame {
                    Ok(frame) => match frame.into_data() {
                        Ok(data) => Ok(data),
                        Err(_) => continue, // trailers: none in MCP
                    },
                    Err(e) => Err(e),
                };
                // The client went away: dropping the body closes the owner's stream too.
                if tx.send(chunk).await.is_err() {
                    return;
                }
            }
        }
        .in_current_span(),
    );
    let mut reply = warp::reply::stream(rx).into_response();
    *reply.status_mut() = parts.status;
    for (name, value) in parts.headers.iter() {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            reply.headers_mut().append(name, value.clone());
        }
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn connections_to_other_replicas_set_tcp_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = dial(&listener.local_addr().unwrap().to_string())
            .await
            .unwrap();
        assert!(stream.nodelay().unwrap());
    }

    #[test]
    fn kube_forward_names_the_request_it_answers() {
        let request = br#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#;
        assert_eq!(request_id(request), Some(json!(7)));
        let notification = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert_eq!(request_id(notification), None);
        assert_eq!(request_id(b"not json"), None);
        let reply = unavailable(
            Some(json!(7)),
            "owner gone".into(),
            Duration::from_millis(1500),
        );
        assert_eq!(reply.status(), 503);
        assert_eq!(reply.headers()["retry-after"], "2");
    }
}
