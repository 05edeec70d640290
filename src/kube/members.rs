//! `/mcp` with several router replicas: a member of the aggregated endpoint is
//! asked on the replica that owns it (the holder of its Lease,
//! [`super::ownership`]), as the member's own endpoint is ([`super::replicas`]):
//! only the owner may attach to the member's pod.
//!
//! The aggregated endpoint stays where the client's session is; what goes to
//! the owner is the one JSON-RPC request for the member, in the member's own
//! names, to the owner's endpoint of that server (`/mcp/{namespace}/{name}`),
//! as a plain JSON client without a session, with the client's credentials,
//! marked [`FORWARDED_BY`] so the owner serves it whatever its Lease says by
//! then. The owner applies the member's access rules and rate limits to the
//! caller. A listing this replica can answer from the member's catalog (a
//! stopped member; the catalog is shared through the cluster,
//! [`super::catalog`]) is answered here, and claims no Lease.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tracing::{debug, info, warn};
use warp::http::{HeaderMap, HeaderValue, Request};

use super::ownership::{Owner, Ownership, Placement};
use super::replicas::{connect, ForwardBody, FORWARDED_BY, HOP_BY_HOP};
use crate::aggregate::{MemberRoute, REQUEST_HEADERS};
use crate::catalog::List;
use crate::mcp::message::{self as jsonrpc, Method};
use crate::server::Server;

/// Headers of the client's request not passed on: this request has its own
/// body, answer type and (no) session.
const NOT_PASSED_ON: &[&str] = &["accept", "content-type", "mcp-session-id", "last-event-id"];

/// The longest answer read from an owner: the longest message a server may
/// send by default (`Settings::max_message_bytes`), with room for its envelope.
const MAX_ANSWER_BYTES: usize = 17 * 1024 * 1024;

/// Asks each member on the replica that owns it.
pub struct OwnerReplicas {
    ownership: Arc<Ownership>,
}

/// Why an owner gave no answer.
enum Failure {
    /// No connection: the owner may be gone (failed over).
    Unreached(String),
    /// The request may have reached the member: not sent again.
    Failed(String),
}

impl OwnerReplicas {
    pub fn new(ownership: Arc<Ownership>) -> Arc<OwnerReplicas> {
        Arc::new(OwnerReplicas { ownership })
    }

    /// Sends `message` to the owner's endpoint of `namespace/name`; its JSON-RPC answer.
    async fn send(
        &self,
        owner: &Owner,
        namespace: &str,
        name: &str,
        message: &Value,
    ) -> Result<Value, Failure> {
        let mut connection = connect(&owner.address).await.map_err(Failure::Unreached)?;
        let body = Bytes::from(serde_json::to_vec(message).expect("JSON-RPC is JSON"));
        let length = body.len();
        let frames: ForwardBody =
            StreamBody::new(futures::stream::once(async move { Ok(Frame::data(body)) }).boxed());
        let mut request = Request::builder()
            .method("POST")
            .uri(format!("/mcp/{namespace}/{name}"));
        let client_headers = REQUEST_HEADERS
            .try_with(HeaderMap::clone)
            .unwrap_or_default();
        for (header, value) in client_headers.iter() {
            let header_name = header.as_str();
            if !HOP_BY_HOP.contains(&header_name) && !NOT_PASSED_ON.contains(&header_name) {
                request = request.header(header, value);
            }
        }
        let identity = HeaderValue::from_str(self.ownership.identity())
            .unwrap_or(HeaderValue::from_static("replica"));
        let request = request
            .header("host", owner.address.as_str())
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .header("content-length", length)
            .header(FORWARDED_BY, identity)
            .body(frames)
            .map_err(|e| Failure::Failed(format!("cannot forward the request: {e}")))?;
        let response = connection
            .send_request(request)
            .await
            .map_err(|e| Failure::Failed(format!("the request failed on its way: {e}")))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Failure::Failed(format!("reading the answer failed: {e}")))?
            .to_bytes();
        // Refusals (401, 403, 429, …) are JSON-RPC errors too: passed on as they are.
        match serde_json::from_slice::<Value>(&body) {
            Ok(answer) if jsonrpc::classify(&answer) == Some(jsonrpc::Kind::Response) => Ok(answer),
            _ => Err(Failure::Failed(format!(
                "answered {status} without a JSON-RPC response"
            ))),
        }
    }

    /// The owner could not be reached: take the server over when its Lease
    /// allows (`None`: served here), else say who has it until when.
    async fn fail_over(
        &self,
        namespace: &str,
        name: &str,
        owner: &Owner,
        error: &str,
        message: &Value,
    ) -> Option<Value> {
        warn!(member = name, owner = %owner.identity, address = %owner.address, %error, "the owning replica does not answer: failing over");
        let why = match self.ownership.failover(namespace, name).await {
            Ok(Placement::Local) => {
                info!(member = name, previous = %owner.identity, "took the server over");
                return None;
            }
            Ok(Placement::Remote(current)) => format!(
                "it is served by router replica {} at {}, which does not answer ({error}); \
                 another replica takes over when its lease runs out at {}",
                current.identity, current.address, current.expires_at
            ),
            Err(e) => format!(
                "its router replica {} does not answer ({error}), and taking over failed: {e}",
                owner.identity
            ),
        };
        Some(unavailable(message, name, &why))
    }
}

#[async_trait::async_trait]
impl MemberRoute for OwnerReplicas {
    async fn ask(&self, member: &Arc<Server>, message: &Value) -> Option<Value> {
        let listing = List::of(Method::of(message)).is_some();
        if listing && member.catalog_answering().is_some() {
            return None;
        }
        let (namespace, name) = member.key().split_once('/')?;
        let owner = match self.ownership.placement(namespace, name).await {
            Ok(Placement::Local) => return None,
            Ok(Placement::Remote(owner)) => owner,
            Err(e) => {
                let why = format!("cannot tell which router replica serves it: {e}");
                return Some(unavailable(message, name, &why));
            }
        };
        debug!(member = name, owner = %owner.identity, method = jsonrpc::method(message).unwrap_or_default(), "asking the member on its owner");
        match self.send(&owner, namespace, name, message).await {
            Ok(answer) => Some(answer),
            Err(Failure::Unreached(error)) => {
                self.fail_over(namespace, name, &owner, &error, message)
                    .await
            }
            Err(Failure::Failed(error)) => {
                warn!(member = name, owner = %owner.identity, %error, "asking the member on its owner failed");
                let why = format!(
                    "asking it on router replica {} at {} failed: {error}; the request may or may \
                     not have reached the server",
                    owner.identity, owner.address
                );
                Some(unavailable(message, name, &why))
            }
        }
    }
}

/// A JSON-RPC error for `message`: member `name` cannot be asked, and why.
fn unavailable(message: &Value, name: &str, why: &str) -> Value {
    jsonrpc::error(
        jsonrpc::id(message),
        jsonrpc::SERVER_UNAVAILABLE,
        format!("MCP server '{name}': {why}"),
    )
}
