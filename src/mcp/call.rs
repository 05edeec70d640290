//! One request, or one one-way message, on behalf of a client: the calls every
//! transport makes. A request takes a hold on its server (starting it if
//! needed) and is registered with the server's sessions while in flight, so
//! what the server sends about it finds its way back.

use std::sync::Arc;

use serde_json::{json, Value};
use tracing::{debug, Instrument};

use crate::access;
use crate::auth::Caller;
use crate::mcp::error::RequestError;
use crate::mcp::message::{self as jsonrpc, Kind, Method};
use crate::mcp::sessions::{Session, StreamKey};
use crate::server::Server;
use crate::telemetry;

/// Sends a request to the server (starting it if needed) on behalf of
/// `caller` in `session` (none: a stateless client), answering what mcpod
/// answers itself. The response carries the client's own id. Access decides
/// first, filters a list result and records the outcome; the whole is timed,
/// with its outcome, in the server's metrics.
pub async fn request(
    server: &Arc<Server>,
    caller: &Caller,
    session: Option<&Arc<Session>>,
    stream: StreamKey,
    message: Value,
) -> Result<Value, RequestError> {
    let began = std::time::Instant::now();
    let method = jsonrpc::method(&message).unwrap_or_default();
    let span = telemetry::request_span(server.name(), method, &message, session.map(|s| &*s.id));
    let timer = server.metrics().start(&message);
    let outcome = admit_and_forward(server, caller, session, stream, message)
        .instrument(span)
        .await;
    timer.finish(&outcome);
    let failed = outcome.as_ref().map_or(true, |r| r.get("error").is_some());
    crate::dashboard::history::record(server.name(), began.elapsed(), failed);
    outcome
}

async fn admit_and_forward(
    server: &Arc<Server>,
    caller: &Caller,
    session: Option<&Arc<Session>>,
    stream: StreamKey,
    mut message: Value,
) -> Result<Value, RequestError> {
    // `spec.expose` speaks the clients' names, `spec.access` the server's: translated first.
    let expose = server.workload().expose.clone();
    if let Some(expose) = &expose {
        let catalog = server.catalog().current(&server.workload().spec_hash);
        if let Err(unknown) = expose.inbound(catalog.as_deref(), &mut message) {
            return Ok(unknown);
        }
    }
    let method = Method::of(&message);
    let admitted = access::may_send(server, caller, session.map(|s| s.id.as_str()), &message)?;
    let mut response = forward(server, session, stream, message).await;
    admitted.finish(&mut response);
    if let (Some(expose), Ok(answer)) = (&expose, &mut response) {
        expose.outbound(method, answer);
    }
    response
}

async fn forward(
    server: &Arc<Server>,
    session: Option<&Arc<Session>>,
    stream: StreamKey,
    mut message: Value,
) -> Result<Value, RequestError> {
    let id = jsonrpc::id(&message);
    let method = Method::of(&message);
    let uri = message
        .pointer("/params/uri")
        .and_then(Value::as_str)
        .map(str::to_string);
    match (method, session, &uri) {
        // Liveness of mcpod itself: answered without waking the server.
        (Method::Ping, _, _) => return Ok(jsonrpc::result(id, json!({}))),
        // Another session still wants updates: only this session stops getting them.
        (Method::ResourcesUnsubscribe, Some(session), Some(uri))
            if server.sessions().others_subscribed(session, uri) =>
        {
            session.unsubscribe(uri);
            return Ok(jsonrpc::result(id, json!({})));
        }
        _ => {}
    }
    // A stopped server's lists come from its catalog: no container starts.
    if let Some(answer) = server.list_from_catalog(&message) {
        return Ok(answer);
    }
    // A request that may make the server ask its client something waits for
    // its turn, so such a question always has exactly one candidate answerer.
    let _turn = match session {
        Some(session) if method.may_ask_the_client() => {
            server
                .sessions()
                .take_turn(session, server.workload().timeouts.request)
                .await?
        }
        _ => None,
    };
    let hold = server.acquire().await?;
    let wire_id = hold.instance.bridge.next_wire_id();
    // Registered even for a stateless client: the routing rule counts every
    // request in flight that may have caused what the server says.
    let in_flight = server
        .sessions()
        .begin(session.map(|s| &**s), wire_id, stream, &mut message);
    let stdio = telemetry::stdio_span(server.name(), &mut message);
    let response = hold.request_as(wire_id, message).instrument(stdio).await;
    drop(in_flight);
    if let (Ok(response), Some(session), Some(uri)) = (&response, session, &uri) {
        if response.get("result").is_some() {
            match method {
                Method::ResourcesSubscribe => session.subscribe(uri),
                Method::ResourcesUnsubscribe => session.unsubscribe(uri),
                _ => {}
            }
        }
    }
    response
}

/// Notifications and responses from a client: they never start a server.
/// Cancellations and answers are accepted only from the session they concern.
pub fn one_way(server: &Arc<Server>, session: Option<&Session>, message: Value) {
    let to_server = match (jsonrpc::classify(&message), Method::of(&message), session) {
        // mcpod told the server it is initialized, once per process.
        (_, Method::Initialized, _) => None,
        (_, Method::Cancelled, Some(session)) => server.sessions().client_cancel(session, message),
        // Without a session a client can name no request of its own.
        (_, Method::Cancelled, None) => None,
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
