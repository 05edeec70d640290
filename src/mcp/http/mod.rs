//! The MCP endpoint of each server, over three transports:
//! - Streamable HTTP (handshake era, 2025-03-26 and later) at `/mcp/{name}`
//!   and `/servers/{name}/mcp` ([`streamable`]);
//! - the per-request era (2026-07-28) on the same paths, chosen by the
//!   `MCP-Protocol-Version` header ([`per_request`]);
//! - legacy HTTP+SSE (2024-11-05) at `/sse/{name}` or `/servers/{name}/sse`
//!   plus `/messages/{name}` ([`legacy_sse`]).
//!
//! Every request has passed the router's cross-site checks and authentication
//! (it comes with its [`Caller`]); then [`Endpoint::admit`]: server, access, version.

pub mod body;
pub mod legacy_sse;
pub mod per_request;
pub mod reply;
pub mod streamable;

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::http::HeaderMap;
use warp::Filter;

use crate::access;
use crate::auth::Caller;
use crate::mcp::error::RequestError;
use crate::mcp::version;
use crate::reconcile::Reconciler;
use crate::server::Server;
use reply::HttpResponse;

/// The default between a server's name and its tool's or prompt's.
pub const DEFAULT_SEPARATOR: &str = "__";

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub max_body_bytes: usize,
    /// The aggregated endpoint `/mcp`: between a server's name and its tool's.
    pub tool_separator: String,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_body_bytes: 4 * 1024 * 1024,
            tool_separator: DEFAULT_SEPARATOR.to_string(),
        }
    }
}

/// What every transport handler gets: the servers and the endpoint settings.
#[derive(Clone)]
pub struct Endpoint {
    pub reconciler: Arc<Reconciler>,
    pub config: Arc<EndpointConfig>,
}

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What the client's `Accept` allows.
pub struct Accepts {
    pub json: bool,
    pub sse: bool,
}

pub fn accepts(headers: &HeaderMap) -> Accepts {
    let accept = header(headers, "accept").unwrap_or("").to_ascii_lowercase();
    let any = accept.is_empty() || accept.contains("*/*");
    Accepts {
        json: any || accept.contains("application/json") || accept.contains("application/*"),
        sse: accept.contains("text/event-stream"),
    }
}

impl Endpoint {
    /// The checks every request passes first: server, access, protocol version.
    pub fn admit(
        &self,
        name: &str,
        headers: &HeaderMap,
        caller: &Caller,
    ) -> Result<Arc<Server>, RequestError> {
        let server = self
            .reconciler
            .server(name)
            .ok_or_else(|| RequestError::UnknownServer(name.to_string()))?;
        access::may_use(&server, caller)?;
        if let Some(requested) = header(headers, VERSION_HEADER) {
            if !version::is_known(requested) {
                return Err(RequestError::unsupported_version(requested, version::all()));
            }
        }
        Ok(server)
    }
}

/// A transport-level error reply (no request id known).
pub fn refuse(error: RequestError) -> HttpResponse {
    error.reply(serde_json::Value::Null)
}

/// `POST|GET|DELETE /mcp/{name}` (and `/servers/{name}/mcp`), `GET /sse/{name}`
/// (and `/servers/{name}/sse`), `POST /messages/{name}`.
pub fn routes(
    reconciler: Arc<Reconciler>,
    config: EndpointConfig,
    caller: BoxedFilter<(Caller,)>,
) -> impl Filter<Extract = (HttpResponse,), Error = warp::Rejection> + Clone {
    let endpoint = Endpoint {
        reconciler,
        config: Arc::new(config),
    };
    let reconciler = endpoint.reconciler.clone();
    // After the path and method: a request is authenticated once its route is known.
    let with = warp::any().map(move || endpoint.clone()).and(caller);
    // `/mcp/{name}`, `/servers/{name}/mcp`, or on Kubernetes
    // `/mcp/{namespace}/{name}` for other namespaces.
    let key_in_namespace = warp::any().map(move || reconciler.clone()).and(
        warp::path!("mcp" / String / String)
            .map(|namespace: String, name: String| (namespace, name))
            .untuple_one(),
    );
    let mcp_key = warp::path!("mcp" / String)
        .or(warp::path!("servers" / String / "mcp"))
        .unify()
        .or(key_in_namespace.map(
            |reconciler: Arc<Reconciler>, namespace: String, name: String| {
                reconciler.key_for(&namespace, &name)
            },
        ))
        .unify()
        .boxed();
    let legacy_key = warp::path!("sse" / String)
        .or(warp::path!("servers" / String / "sse"))
        .unify();
    streamable::routes(mcp_key, with.clone().boxed())
        .or(legacy_sse::routes(legacy_key, with.boxed()))
        .unify()
}
