//! The MCP endpoint of each server, over three transports:
//! - Streamable HTTP (handshake era, 2025-03-26 and later) at `/mcp/{name}`
//!   and `/servers/{name}/mcp` ([`streamable`]);
//! - the per-request era (2026-07-28) on the same paths, chosen by the
//!   `MCP-Protocol-Version` header ([`per_request`]);
//! - legacy HTTP+SSE (2024-11-05) at `/sse/{name}` or `/servers/{name}/sse`
//!   plus `/messages/{name}` ([`legacy_sse`]).
//!
//! Every request first passes [`Endpoint::admit`]: origin, server, version.

pub mod body;
pub mod legacy_sse;
pub mod origin;
pub mod per_request;
pub mod reply;
pub mod streamable;

use std::sync::Arc;

use warp::http::HeaderMap;
use warp::Filter;

use crate::mcp::error::RequestError;
use crate::mcp::version;
use crate::reconcile::Reconciler;
use crate::server::Server;
use reply::HttpResponse;

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const VERSION_HEADER: &str = "mcp-protocol-version";

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
    /// The checks every request passes first: Origin, server, protocol version.
    pub fn admit(&self, name: &str, headers: &HeaderMap) -> Result<Arc<Server>, RequestError> {
        if !origin::allowed(headers, &self.config.allowed_origins) {
            return Err(RequestError::Forbidden(format!(
                "origin {} is not allowed",
                header(headers, "origin").unwrap_or("")
            )));
        }
        let server = self
            .reconciler
            .server(name)
            .ok_or_else(|| RequestError::UnknownServer(name.to_string()))?;
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
) -> impl Filter<Extract = (HttpResponse,), Error = warp::Rejection> + Clone {
    let endpoint = Endpoint {
        reconciler,
        config: Arc::new(config),
    };
    let with = warp::any().map(move || endpoint.clone());
    // `/mcp/{name}`, `/servers/{name}/mcp`, or on Kubernetes
    // `/mcp/{namespace}/{name}` for other namespaces.
    let key_in_namespace = with.clone().map(|e: Endpoint| e.reconciler).and(
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
