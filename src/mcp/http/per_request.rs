//! Protocol version 2026-07-28, the per-request era: no `initialize`, no
//! session. Each POST is self-contained — its `params._meta` carries the
//! protocol version and the client's capabilities, mirrored by the
//! `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers — and is answered
//! on its own, as JSON or as an SSE stream that ends with the response.
//!
//! mcpod speaks it to clients while the stdio servers behind it keep speaking
//! the handshake era: a request becomes a request on the server's shared
//! conversation, rewritten like a session's (ids, progress tokens). Three things
//! of the new era are translated:
//! - `server/discover` is answered from the server's `InitializeResult`;
//! - a request the server makes of the client while handling one (sampling,
//!   elicitation, roots) ends that round with an `InputRequiredResult`; the
//!   request stays in flight, parked under its `requestState`, and the client's
//!   retry carries the answers back to the server;
//! - `subscriptions/listen` is a stream of the change notifications the client
//!   opted in to (resource subscriptions are made on the server for it).
//!
//! A client that closes a response stream cancels its request.

use std::sync::{Arc, Weak};

use base64::Engine;
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, Instrument};
use warp::http::{HeaderMap, StatusCode};

use super::reply::{self, json_reply, HttpResponse};
use super::{header, VERSION_HEADER};
use crate::auth::Caller;
use crate::crd::SessionMode;
use crate::mcp::call;
use crate::mcp::error::RequestError;
use crate::mcp::message::{self as jsonrpc, Kind, Method};
use crate::mcp::sessions::{
    log_severity, ClientCapabilities, ListenFilter, Session, SseEvent, SUBSCRIPTION_ID_META_KEY,
};
use crate::mcp::version;
use crate::server::Server;

const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
const CLIENT_CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
const CLIENT_INFO_KEY: &str = "io.modelcontextprotocol/clientInfo";
const LOG_LEVEL_KEY: &str = "io.modelcontextprotocol/logLevel";
const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";

const METHOD_HEADER: &str = "mcp-method";
pub const NAME_HEADER: &str = "mcp-name";

/// Methods of the handshake era that 2026-07-28 removed.
const REMOVED_METHODS: &[Method] = &[
    Method::Initialize,
    Method::Ping,
    Method::LoggingSetLevel,
    Method::ResourcesSubscribe,
    Method::ResourcesUnsubscribe,
];

/// Whether a request asks for the per-request era (by its version header).
pub fn requested(headers: &HeaderMap) -> bool {
    header(headers, VERSION_HEADER).is_some_and(version::is_per_request)
}

/// The HTTP status of a JSON-RPC error a server answered with, in this era.
fn status_for(code: i64) -> StatusCode {
    match code {
        jsonrpc::PARSE_ERROR
        | jsonrpc::INVALID_REQUEST
        | jsonrpc::INVALID_PARAMS
        | jsonrpc::HEADER_MISMATCH
        | jsonrpc::UNSUPPORTED_PROTOCOL_VERSION
        | -32021 => StatusCode::BAD_REQUEST,
        jsonrpc::METHOD_NOT_FOUND => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    }
}

/// A checked 2026-07-28 request.
struct Request {
    id: Value,
    /// The method as sent, and as mcpod knows it.
    method: String,
    kind: Method,
    message: Value,
    capabilities: ClientCapabilities,
    log_severity: Option<u8>,
}

impl Request {
    fn param(&self, name: &str) -> Option<&Value> {
        self.message.get("params").and_then(|p| p.get(name))
    }

    fn progress_token(&self) -> Option<Value> {
        self.message.pointer("/params/_meta/progressToken").cloned()
    }

    /// The name a retry must repeat: the tool, prompt or resource it is about.
    fn subject(&self) -> Option<String> {
        let key = if self.kind == Method::ResourcesRead {
            "uri"
        } else {
            "name"
        };
        self.param(key).and_then(Value::as_str).map(str::to_string)
    }

    /// The request as the handshake-era server gets it: without the envelope
    /// keys and without the multi-round fields mcpod handles itself.
    fn for_server(&self) -> Value {
        let mut message = self.message.clone();
        if let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) {
            params.remove("inputResponses");
            params.remove("requestState");
            if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
                for key in [
                    PROTOCOL_VERSION_KEY,
                    CLIENT_CAPABILITIES_KEY,
                    CLIENT_INFO_KEY,
                    LOG_LEVEL_KEY,
                ] {
                    meta.remove(key);
                }
                if meta.is_empty() {
                    params.remove("_meta");
                }
            }
        }
        message
    }
}

/// A POST in the per-request era. Returns the one reply it gets.
pub async fn post(
    server: Arc<Server>,
    caller: Arc<Caller>,
    headers: &HeaderMap,
    sse: bool,
    message: Value,
) -> HttpResponse {
    let request = match check(headers, message) {
        Ok(Some(request)) => request,
        // A notification: nothing in this era acts on one (a client cancels by
        // closing its stream), but clients send them; accept and drop.
        Ok(None) => return reply::status_only(StatusCode::ACCEPTED),
        Err((id, error)) => return error.reply(id),
    };
    if server.workload().session_mode == SessionMode::Isolated {
        // Per-client state needs a session of its own: the handshake gives one.
        return RequestError::UnsupportedVersion {
            requested: version::PER_REQUEST[0].to_string(),
            supported: version::HANDSHAKE.to_vec(),
            message: format!(
                "MCP server '{}' has sessionMode Isolated (a container per client session): \
                 connect with the initialize handshake",
                server.name()
            ),
        }
        .reply(request.id);
    }
    debug!(method = %request.method, "per-request (2026-07-28) request");
    match request.kind {
        Method::ServerDiscover => discover(&server, request.id).await,
        Method::SubscriptionsListen if !sse => RequestError::NotAcceptable(
            "subscriptions/listen answers with a stream: Accept must allow text/event-stream",
        )
        .reply(Value::Null),
        Method::SubscriptionsListen => listen(server, caller, request).await,
        method if REMOVED_METHODS.contains(&method) => RequestError::MethodNotFound(format!(
            "{} is not part of protocol version 2026-07-28",
            request.method
        ))
        .reply(request.id),
        _ => exchange(server, caller, request, sse).await,
    }
}

/// The envelope checks of [`post`] for an endpoint that answers some requests
/// itself (the aggregated `/mcp`): the request's id and method, `None` for a
/// notification, or the error refusing it (with the id it answers).
pub fn envelope(
    headers: &HeaderMap,
    message: Value,
) -> Result<Option<(Value, Method)>, (Value, RequestError)> {
    check(headers, message).map(|checked| checked.map(|request| (request.id, request.kind)))
}

/// A response mcpod made itself, as this era answers it: a result with
/// `resultType` and cache hints, an error with its HTTP status.
pub fn local_reply(method: Method, mut response: Value) -> HttpResponse {
    if let Some(code) = response.pointer("/error/code").and_then(Value::as_i64) {
        return json_reply(status_for(code), &response);
    }
    let result = response["result"].take();
    response["result"] = complete(method, result, &Value::Null);
    json_reply(StatusCode::OK, &response)
}

/// The envelope checks, in the specification's order: one request or
/// notification; `_meta` with the version and capabilities; headers that agree
/// with the body; a version mcpod speaks.
fn check(headers: &HeaderMap, message: Value) -> Result<Option<Request>, (Value, RequestError)> {
    let single = || {
        RequestError::Invalid("the body must be one JSON-RPC request or notification object".into())
    };
    if !message.is_object() {
        return Err((Value::Null, single()));
    }
    match jsonrpc::classify(&message) {
        Some(Kind::Notification) => return Ok(None),
        Some(Kind::Request) => {}
        _ => return Err((jsonrpc::id(&message), single())),
    }
    let id = jsonrpc::id(&message);
    let mismatch = |what: String| (id.clone(), RequestError::HeaderMismatch(what));
    for name in [VERSION_HEADER, METHOD_HEADER, NAME_HEADER] {
        if headers.get_all(name).iter().count() > 1 {
            return Err(mismatch(format!(
                "the {name} header appears more than once"
            )));
        }
    }
    let meta = message.pointer("/params/_meta").and_then(Value::as_object);
    let Some(meta) = meta.filter(|m| {
        m.contains_key(PROTOCOL_VERSION_KEY) && m.contains_key(CLIENT_CAPABILITIES_KEY)
    }) else {
        return Err((
            id,
            RequestError::InvalidParams(format!(
                "params._meta must carry {PROTOCOL_VERSION_KEY:?} and {CLIENT_CAPABILITIES_KEY:?}"
            )),
        ));
    };
    let requested = &meta[PROTOCOL_VERSION_KEY];
    let method = jsonrpc::method(&message).unwrap_or_default().to_string();
    let kind = Method::parse(&method);
    if header(headers, VERSION_HEADER) != requested.as_str() {
        return Err(mismatch(
            "MCP-Protocol-Version does not match the request's protocol version".into(),
        ));
    }
    if header(headers, METHOD_HEADER) != Some(method.as_str()) {
        return Err(mismatch(
            "Mcp-Method does not match the request's method".into(),
        ));
    }
    let named = match kind {
        Method::ToolsCall | Method::PromptsGet => message.pointer("/params/name"),
        Method::ResourcesRead => message.pointer("/params/uri"),
        _ => None,
    };
    if let Some(named) = named.and_then(Value::as_str) {
        if header(headers, NAME_HEADER)
            .and_then(decode_header_value)
            .as_deref()
            != Some(named)
        {
            return Err(mismatch(
                "Mcp-Name does not match the request's name".into(),
            ));
        }
    }
    let requested = requested.as_str().unwrap_or_default();
    if !version::is_per_request(requested) {
        return Err((
            id,
            RequestError::unsupported_version(requested, version::PER_REQUEST.to_vec()),
        ));
    }
    let log_severity = meta
        .get(LOG_LEVEL_KEY)
        .and_then(Value::as_str)
        .and_then(log_severity);
    Ok(Some(Request {
        id,
        capabilities: ClientCapabilities::from_declared(meta.get(CLIENT_CAPABILITIES_KEY)),
        log_severity,
        method,
        kind,
        message,
    }))
}

/// A header value as sent, or the text inside the `=?base64?…?=` wrapper that
/// clients use for values a header cannot carry.
fn decode_header_value(value: &str) -> Option<String> {
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok()),
        None => Some(value.to_string()),
    }
}

/// Results a client may cache; this era requires the cache hints on them.
const CACHEABLE_METHODS: &[Method] = &[
    Method::ServerDiscover,
    Method::ToolsList,
    Method::PromptsList,
    Method::ResourcesList,
    Method::ResourcesTemplatesList,
    Method::ResourcesRead,
];

/// A result as this era has it: `resultType` always, cache hints where they
/// are required, and the server's identity.
fn complete(method: Method, mut result: Value, server_info: &Value) -> Value {
    if !result.is_object() {
        result = json!({});
    }
    if result.get("resultType").is_none() {
        result["resultType"] = json!("complete");
    }
    if CACHEABLE_METHODS.contains(&method) && result["resultType"] == "complete" {
        // A handshake-era server says nothing about caching: stale at once, and
        // never shared across users, since mcpod cannot tell what is per-user.
        if result.get("ttlMs").is_none() {
            result["ttlMs"] = json!(0);
        }
        if result.get("cacheScope").is_none() {
            result["cacheScope"] = json!("private");
        }
    }
    if !server_info.is_null()
        && result
            .pointer(&format!("/_meta/{}", SERVER_INFO_KEY.replace('/', "~1")))
            .is_none()
    {
        if !result["_meta"].is_object() {
            result["_meta"] = json!({});
        }
        result["_meta"][SERVER_INFO_KEY] = server_info.clone();
    }
    result
}

/// `server/discover`: what the server told mcpod when it started.
async fn discover(server: &Arc<Server>, id: Value) -> HttpResponse {
    let init = &match server.initialize_result().await {
        Ok(init) => init,
        Err(error) => return error.reply(id),
    };
    let mut result = json!({
        "supportedVersions": version::PER_REQUEST,
        "capabilities": init.get("capabilities").cloned().unwrap_or_else(|| json!({})),
    });
    if let Some(instructions) = init.get("instructions").filter(|i| i.is_string()) {
        result["instructions"] = instructions.clone();
    }
    let result = complete(
        Method::ServerDiscover,
        result,
        init.get("serverInfo").unwrap_or(&Value::Null),
    );
    json_reply(StatusCode::OK, &jsonrpc::result(id, result))
}

/// One 2026-07-28 request in flight on the server, possibly over several
/// rounds of input from the client. Dropped unfinished (the client closed its
/// stream, or never came back with the input), it withdraws the request and
/// refuses what the server asked of the client. It holds its server weakly: a
/// parked exchange lives in the server's sessions and must not keep it alive.
pub struct Exchange {
    server: Weak<Server>,
    /// The request's own conversation: progress, log messages and server
    /// requests that belong to it arrive on `events`.
    session: Arc<Session>,
    events: mpsc::Receiver<SseEvent>,
    outcome: oneshot::Receiver<Result<Value, RequestError>>,
    /// Waits for the server's response; aborted when the client gives up.
    waiter: tokio::task::JoinHandle<()>,
    /// The id of the client's latest round, which the final response carries.
    client_id: Value,
    /// The server's view of the first round's id (cancellation names it).
    first_client_id: Value,
    /// The progress token of the client's latest round: a retry may bring a new one.
    progress_token: Option<Value>,
    method: Method,
    subject: Option<String>,
    server_name: String,
    server_info: Value,
    finished: bool,
}

/// What an exchange produces next for the client.
enum RoundEvent {
    /// A notification about the request (progress, a log message).
    Notify(Value),
    /// The server asks the client something: the round ends with input required.
    Ask(Value),
    /// The server's response, or why there is none.
    Done(Result<Value, RequestError>),
}

impl Exchange {
    fn start(
        server: Arc<Server>,
        caller: Arc<Caller>,
        request: &Request,
        server_info: Value,
    ) -> Exchange {
        let session = server.sessions().ephemeral(
            caller,
            version::PER_REQUEST[0],
            request.capabilities,
            request.log_severity,
        );
        let key = server.sessions().new_stream_key();
        let (_, events) = session.open_request_stream(key);
        let (done, outcome) = oneshot::channel();
        let message = request.for_server();
        let (task_server, task_session) = (server.clone(), session.clone());
        let waiter = tokio::spawn(
            async move {
                let response = call::request(
                    &task_server,
                    &task_session.owner,
                    Some(&task_session),
                    key,
                    message,
                )
                .await;
                let _ = done.send(response);
            }
            .in_current_span(),
        );
        Exchange {
            server_name: server.name().to_string(),
            server: Arc::downgrade(&server),
            session,
            events,
            outcome,
            waiter,
            client_id: request.id.clone(),
            first_client_id: request.id.clone(),
            progress_token: request.progress_token(),
            method: request.kind,
            subject: request.subject(),
            server_info,
            finished: false,
        }
    }

    async fn next(&mut self) -> RoundEvent {
        tokio::select! {
            // Events first: what the server sent before its response comes before it.
            biased;
            Some(event) = self.events.recv() => match jsonrpc::classify(&event.message) {
                Some(Kind::Request) => RoundEvent::Ask(Arc::unwrap_or_clone(event.message)),
                _ if event.message.is_null() => RoundEvent::Notify(Value::Null),
                _ => RoundEvent::Notify(for_round(
                    self.progress_token.as_ref(),
                    Arc::unwrap_or_clone(event.message),
                )),
            },
            outcome = &mut self.outcome => {
                self.finished = true;
                RoundEvent::Done(outcome.unwrap_or_else(|_| Err(RequestError::Removed(self.server_name.clone()))))
            }
        }
    }

    /// The next event worth a reply: notifications are skipped for a JSON-only
    /// client, and the stream's priming event for everyone (no ids in this era).
    async fn next_for(&mut self, sse: bool) -> RoundEvent {
        loop {
            match self.next().await {
                RoundEvent::Notify(message) if message.is_null() => continue,
                RoundEvent::Notify(_) if !sse => continue,
                event => return event,
            }
        }
    }

    /// The server's final response for the client's latest round.
    fn final_message(&self, outcome: Result<Value, RequestError>) -> Value {
        match outcome {
            Ok(mut response) => {
                response["id"] = self.client_id.clone();
                if let Some(result) = response.get_mut("result") {
                    *result = complete(self.method, result.take(), &self.server_info);
                }
                response
            }
            Err(e) => e.to_jsonrpc(self.client_id.clone()),
        }
    }

    /// Ends the round: the exchange waits under a new `requestState` for the
    /// client's answer to `ask`, and the client gets an `InputRequiredResult`.
    fn park(self, ask: Value) -> Value {
        let state = random_state();
        let key = ask["id"].as_str().unwrap_or_default().to_string();
        let mut input = json!({"method": ask["method"]});
        if let Some(params) = ask.get("params") {
            input["params"] = params.clone();
        }
        let id = self.client_id.clone();
        let result = json!({
            "resultType": "input_required",
            "inputRequests": {key: input},
            "requestState": state,
        });
        debug!(method = %ask["method"], "input required from the client; request parked");
        if let Some(server) = self.server.upgrade() {
            server.sessions().park(state, Box::new(self));
        }
        jsonrpc::result(id, result)
    }

    /// The client's retry: its answers go to the server under the server's ids.
    fn resume(&mut self, request: &Request) -> Result<(), RequestError> {
        if request.kind != self.method || request.subject() != self.subject {
            return Err(RequestError::InvalidParams(
                "requestState belongs to a different request".into(),
            ));
        }
        let Some(server) = self.server.upgrade() else {
            return Err(RequestError::Removed(self.server_name.clone()));
        };
        self.client_id = request.id.clone();
        self.progress_token = request.progress_token();
        let answers = request
            .param("inputResponses")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (key, result) in answers {
            let response = json!({"jsonrpc": "2.0", "id": key, "result": result});
            call::one_way(&server, Some(&self.session), response);
        }
        Ok(())
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        debug!(
            method = self.method.name(),
            "request abandoned by its client; cancelling it"
        );
        // The server need not answer a cancelled request: stop waiting for it.
        self.waiter.abort();
        let Some(server) = self.server.upgrade() else {
            return;
        };
        let cancel = jsonrpc::notification(
            Method::Cancelled,
            Some(
                json!({"requestId": self.first_client_id, "reason": "the client closed its request"}),
            ),
        );
        call::one_way(&server, Some(&self.session), cancel);
        let Some(instance) = server.running_instance() else {
            return;
        };
        for server_id in self.session.unanswered_server_requests() {
            instance.bridge.notify(jsonrpc::error(
                server_id,
                jsonrpc::INTERNAL_ERROR,
                "mcpod: the client abandoned the request this was part of",
            ));
        }
    }
}

/// Progress carries the token of the round the client is listening to: a
/// retry after input may bring a new one.
fn for_round(progress_token: Option<&Value>, mut notification: Value) -> Value {
    if let Some(token) = progress_token {
        if Method::of(&notification) == Method::Progress {
            notification["params"]["progressToken"] = token.clone();
        }
    }
    notification
}

fn random_state() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request other than discover and listen: a new exchange, or the next round
/// of a parked one.
async fn exchange(
    server: Arc<Server>,
    caller: Arc<Caller>,
    request: Request,
    sse: bool,
) -> HttpResponse {
    let state = request.param("requestState").and_then(Value::as_str);
    let exchange = match state {
        Some(state) => {
            let parked = server
                .sessions()
                .unpark(state)
                .and_then(|parked| parked.downcast::<Exchange>().ok());
            // Someone else's exchange is unknown to this caller (and stays parked).
            let parked = match parked {
                Some(exchange) if !exchange.session.belongs_to(&caller) => {
                    server.sessions().park(state.to_string(), exchange);
                    None
                }
                parked => parked,
            };
            let Some(mut exchange) = parked else {
                return RequestError::InvalidParams(
                    "requestState is unknown or expired: send the request again without it".into(),
                )
                .reply(request.id);
            };
            if let Err(error) = exchange.resume(&request) {
                server.sessions().park(state.to_string(), exchange);
                return error.reply(request.id);
            }
            *exchange
        }
        None => {
            // The server's identity is stamped on results: start it (or find it) first.
            let server_info = match server.server_info().await {
                Ok(server_info) => server_info,
                Err(error) => return error.reply(request.id),
            };
            Exchange::start(server, caller, &request, server_info)
        }
    };
    answer(exchange, sse).await
}

/// Answers one round: as JSON when the round ends before anything else needs
/// saying, else as an SSE stream (when the client accepts one).
async fn answer(mut exchange: Exchange, sse: bool) -> HttpResponse {
    let event = if sse {
        match tokio::time::timeout(reply::SSE_COMMIT_AFTER, exchange.next_for(true)).await {
            Ok(event) => event,
            Err(_) => return stream(exchange, None),
        }
    } else {
        exchange.next_for(false).await
    };
    match event {
        RoundEvent::Notify(notification) => stream(exchange, Some(notification)),
        RoundEvent::Ask(ask) => json_reply(StatusCode::OK, &exchange.park(ask)),
        RoundEvent::Done(Err(error)) => error.reply(exchange.client_id.clone()),
        RoundEvent::Done(outcome) => {
            let message = exchange.final_message(outcome);
            let status = message
                .pointer("/error/code")
                .and_then(Value::as_i64)
                .map_or(StatusCode::OK, status_for);
            json_reply(status, &message)
        }
    }
}

/// The rest of a round as SSE: notifications, then the response or an
/// `InputRequiredResult`. A client that goes away drops the exchange, which
/// cancels the request.
fn stream(mut exchange: Exchange, first: Option<Value>) -> HttpResponse {
    let (frames, receiver) = mpsc::unbounded_channel();
    if let Some(first) = first {
        let _ = frames.send(first);
    }
    let relay = async move {
        loop {
            tokio::select! {
                _ = frames.closed() => return,
                event = exchange.next_for(true) => match event {
                    RoundEvent::Notify(message) => { let _ = frames.send(message); }
                    RoundEvent::Ask(ask) => { let _ = frames.send(exchange.park(ask)); return; }
                    RoundEvent::Done(outcome) => { let _ = frames.send(exchange.final_message(outcome)); return; }
                },
            }
        }
    };
    tokio::spawn(relay.in_current_span());
    sse(receive(receiver))
}

fn receive(
    mut frames: mpsc::UnboundedReceiver<Value>,
) -> impl futures::Stream<Item = Value> + Send + Sync {
    futures::stream::poll_fn(move |cx| frames.poll_recv(cx))
}

fn sse(frames: impl futures::Stream<Item = Value> + Send + Sync + 'static) -> HttpResponse {
    reply::sse(frames.map(|message| reply::message_event(None, &message)))
}

/// `subscriptions/listen`: acknowledges what will be delivered (what the client
/// asked for and the server can send), then streams it until the client leaves
/// or mcpod ends the stream gracefully with the listen result.
async fn listen(server: Arc<Server>, caller: Arc<Caller>, request: Request) -> HttpResponse {
    if let Err(error) = crate::access::may_listen(
        &server,
        &caller,
        &request.id,
        request.param("notifications"),
    ) {
        return error.reply(request.id);
    }
    let hold = match server.acquire().await {
        Ok(hold) => hold,
        Err(error) => return error.reply(request.id),
    };
    let capabilities = &hold.instance.initialize_result["capabilities"];
    let asked = request.param("notifications").cloned().unwrap_or_default();
    let honored = honored_filter(&asked, capabilities);
    for uri in &honored.resource_subscriptions {
        if !server.sessions().anyone_subscribed(uri) {
            let subscribe =
                jsonrpc::request(json!(0), Method::ResourcesSubscribe, json!({"uri": uri}));
            if let Err(error) = hold.request(subscribe).await {
                return error.reply(request.id);
            }
        }
    }
    drop(hold);
    let subscription_id = request.id.clone();
    let (listener, frames) = server
        .sessions()
        .listen(subscription_id.clone(), honored.clone());
    let ack = jsonrpc::notification(
        Method::SubscriptionsAcknowledged,
        Some(
            json!({"notifications": filter_json(&honored), "_meta": {SUBSCRIPTION_ID_META_KEY: subscription_id}}),
        ),
    );
    debug!(?honored, "listen stream opened");
    let guard = ListenGuard { server, listener };
    let frames = futures::stream::iter([ack]).chain(receive(frames).map(move |frame| {
        // The guard lives as long as the stream: the client's leaving drops it.
        let _ = &guard;
        frame
    }));
    sse(frames)
}

/// The part of the client's listen filter that the server's capabilities can honor.
fn honored_filter(asked: &Value, capabilities: &Value) -> ListenFilter {
    let asked_for = |key: &str| asked.get(key).and_then(Value::as_bool).unwrap_or(false);
    let can = |pointer: &str| {
        capabilities
            .pointer(pointer)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let uris: Vec<String> = asked
        .get("resourceSubscriptions")
        .and_then(Value::as_array)
        .map(|uris| {
            uris.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    ListenFilter {
        tools_list_changed: asked_for("toolsListChanged") && can("/tools/listChanged"),
        prompts_list_changed: asked_for("promptsListChanged") && can("/prompts/listChanged"),
        resources_list_changed: asked_for("resourcesListChanged") && can("/resources/listChanged"),
        resource_subscriptions: if can("/resources/subscribe") {
            uris
        } else {
            vec![]
        },
    }
}

fn filter_json(filter: &ListenFilter) -> Value {
    let mut json = Map::new();
    for (key, on) in [
        ("toolsListChanged", filter.tools_list_changed),
        ("promptsListChanged", filter.prompts_list_changed),
        ("resourcesListChanged", filter.resources_list_changed),
    ] {
        if on {
            json.insert(key.to_string(), json!(true));
        }
    }
    if !filter.resource_subscriptions.is_empty() {
        json.insert(
            "resourceSubscriptions".to_string(),
            json!(filter.resource_subscriptions),
        );
    }
    Value::Object(json)
}

/// Closes a listen stream when its client goes: the server is unsubscribed from
/// the resources nobody else listens to.
struct ListenGuard {
    server: Arc<Server>,
    listener: u64,
}

impl Drop for ListenGuard {
    fn drop(&mut self) {
        let unwanted = self.server.sessions().unlisten(self.listener);
        let Some(instance) = self.server.running_instance() else {
            return;
        };
        let timeout = self.server.workload().timeouts.request;
        for uri in unwanted {
            let bridge = instance.bridge.clone();
            let unsubscribe =
                jsonrpc::request(json!(0), Method::ResourcesUnsubscribe, json!({"uri": uri}));
            tokio::spawn(async move {
                if let Err(e) = bridge.request(unsubscribe, timeout).await {
                    debug!(error = %e, "unsubscribing after a listen stream failed");
                }
            });
        }
        debug!("listen stream closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                warp::http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn call(version: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
            "name": "echo", "arguments": {},
            "_meta": {PROTOCOL_VERSION_KEY: version, CLIENT_CAPABILITIES_KEY: {"sampling": {}}, LOG_LEVEL_KEY: "info"}}})
    }

    fn code(checked: Result<Option<Request>, (Value, RequestError)>) -> (u16, i64) {
        let (_, error) = checked.err().expect("rejected");
        (error.status().as_u16(), error.code())
    }

    #[test]
    fn the_envelope_ladder_rejects_in_order() {
        let good = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "echo"),
        ];
        let request = check(&headers(&good), call("2026-07-28")).unwrap().unwrap();
        assert!(request.capabilities.sampling && !request.capabilities.roots);
        assert_eq!(request.log_severity, Some(1));
        let stripped = request.for_server();
        assert!(stripped["params"].get("_meta").is_none(), "{stripped}");

        let mut no_meta = call("2026-07-28");
        no_meta["params"].as_object_mut().unwrap().remove("_meta");
        assert_eq!(
            code(check(&headers(&good), no_meta)),
            (400, jsonrpc::INVALID_PARAMS)
        );
        let wrong_name = [good[0], good[1], ("mcp-name", "other")];
        assert_eq!(
            code(check(&headers(&wrong_name), call("2026-07-28"))),
            (400, jsonrpc::HEADER_MISMATCH)
        );
        let twice = [good[0], good[0], good[1], good[2]];
        assert_eq!(
            code(check(&headers(&twice), call("2026-07-28"))),
            (400, jsonrpc::HEADER_MISMATCH)
        );
        let future = [("mcp-protocol-version", "2099-01-01"), good[1], good[2]];
        assert_eq!(
            code(check(&headers(&future), call("2099-01-01"))),
            (400, jsonrpc::UNSUPPORTED_PROTOCOL_VERSION)
        );
        let notification = json!({"jsonrpc": "2.0", "method": "notifications/cancelled"});
        assert!(check(&headers(&good), notification).unwrap().is_none());
        assert_eq!(
            code(check(&headers(&good), json!([1]))),
            (400, jsonrpc::INVALID_REQUEST)
        );
    }

    #[test]
    fn progress_follows_the_latest_round() {
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
            "params": {"progressToken": "first", "progress": 2}});
        let moved = for_round(Some(&json!("second")), progress.clone());
        assert_eq!(moved["params"]["progressToken"], "second");
        assert_eq!(for_round(None, progress.clone()), progress);
        let log = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {}});
        assert_eq!(for_round(Some(&json!("second")), log.clone()), log);
    }

    #[test]
    fn base64_wrapped_names_are_decoded() {
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
        assert_eq!(
            decode_header_value("=?base64?w6l0w6k=?=").as_deref(),
            Some("été")
        );
        assert_eq!(decode_header_value("=?base64?!!?="), None);
    }

    #[test]
    fn listen_honors_only_what_the_server_can_send() {
        let asked = json!({"toolsListChanged": true, "promptsListChanged": true, "resourceSubscriptions": ["a://1"]});
        let caps = json!({"tools": {"listChanged": true}, "prompts": {}, "resources": {"subscribe": true}});
        let honored = honored_filter(&asked, &caps);
        assert_eq!(
            filter_json(&honored),
            json!({"toolsListChanged": true, "resourceSubscriptions": ["a://1"]})
        );
    }

    #[test]
    fn results_carry_their_type_and_the_servers_identity() {
        let info = json!({"name": "s", "version": "1"});
        let result = complete(Method::ToolsList, json!({"tools": []}), &info);
        assert_eq!(result["resultType"], "complete");
        assert_eq!(result["_meta"][SERVER_INFO_KEY], info);
        assert_eq!(
            (&result["ttlMs"], &result["cacheScope"]),
            (&json!(0), &json!("private"))
        );
        let called = complete(Method::ToolsCall, json!({"content": []}), &info);
        assert!(
            called.get("ttlMs").is_none(),
            "only cacheable results get hints"
        );
        let asked = complete(
            Method::ToolsCall,
            json!({"resultType": "input_required"}),
            &Value::Null,
        );
        assert_eq!(asked["resultType"], "input_required");
    }
}
