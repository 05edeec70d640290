//! Client sessions of the Streamable HTTP transport, in front of one stdio
//! server that all of them share.
//!
//! Each session sees a private MCP conversation: its SSE streams get event ids
//! and can be resumed; progress tokens, cancellations and server→client requests
//! are rewritten so they reach exactly the session they belong to; and every
//! message the server sends on its own reaches each interested session once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::debug;

use crate::jsonrpc;
use crate::stdio::ServerMessage;

/// Which SSE stream of a session a message goes on: the standalone GET stream,
/// or the stream answering one POSTed request (keyed by its wire id).
pub type StreamKey = u64;
pub const STANDALONE: StreamKey = 0;

/// How many events a session keeps for replay after a reconnect.
const EVENT_LOG_LIMIT: usize = 1000;
const PROGRESS_PREFIX: &str = "mcpod-p";
const SERVER_REQUEST_PREFIX: &str = "mcpod-s";

#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: u64,
    pub message: Value,
}

/// What the client declared it can answer, from its `initialize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCapabilities {
    pub roots: bool,
    pub sampling: bool,
    pub elicitation: bool,
}

impl ClientCapabilities {
    pub fn from_initialize(initialize: &Value) -> Self {
        Self::from_declared(initialize.pointer("/params/capabilities"))
    }

    /// From a `capabilities` object (an `initialize`, or a 2026-07-28 request's `_meta`).
    pub fn from_declared(caps: Option<&Value>) -> Self {
        let has = |name: &str| caps.and_then(|c| c.get(name)).is_some_and(|v| !v.is_null());
        ClientCapabilities {
            roots: has("roots"),
            sampling: has("sampling"),
            elicitation: has("elicitation"),
        }
    }

    fn can_answer(&self, method: &str) -> bool {
        match method {
            "roots/list" => self.roots,
            "sampling/createMessage" => self.sampling,
            "elicitation/create" => self.elicitation,
            _ => false,
        }
    }
}

/// What a `subscriptions/listen` stream (protocol 2026-07-28) receives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenFilter {
    pub tools_list_changed: bool,
    pub prompts_list_changed: bool,
    pub resources_list_changed: bool,
    pub resource_subscriptions: Vec<String>,
}

impl ListenFilter {
    fn wants(&self, method: &str, notification: &Value) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools_list_changed,
            "notifications/prompts/list_changed" => self.prompts_list_changed,
            "notifications/resources/list_changed" => self.resources_list_changed,
            "notifications/resources/updated" => notification
                .pointer("/params/uri")
                .and_then(Value::as_str)
                .is_some_and(|uri| self.resource_subscriptions.iter().any(|u| u == uri)),
            _ => false,
        }
    }
}

/// One open `subscriptions/listen` stream.
struct Listener {
    id: u64,
    /// The JSON-RPC id of the `subscriptions/listen` request, stamped on every frame.
    subscription_id: Value,
    filter: ListenFilter,
    frames: mpsc::UnboundedSender<Value>,
}

/// The `_meta` key naming the listen stream a frame belongs to.
pub const SUBSCRIPTION_ID_META_KEY: &str = "io.modelcontextprotocol/subscriptionId";

/// Severity of a `notifications/message` level, lowest first (RFC 5424 order).
pub fn log_severity(level: &str) -> Option<u8> {
    const LEVELS: [&str; 8] = [
        "debug",
        "info",
        "notice",
        "warning",
        "error",
        "critical",
        "alert",
        "emergency",
    ];
    LEVELS.iter().position(|l| *l == level).map(|p| p as u8)
}

struct Logged {
    event: SseEvent,
    stream: StreamKey,
    delivered: bool,
}

#[derive(Default)]
struct Stream {
    live: Option<mpsc::UnboundedSender<SseEvent>>,
    finished: bool,
}

#[derive(Default)]
struct SessionState {
    next_event_id: u64,
    log: VecDeque<Logged>,
    streams: HashMap<StreamKey, Stream>,
    subscriptions: HashSet<String>,
    /// Client-facing id of a server→client request → the server's own id.
    server_requests: HashMap<String, Value>,
    /// The client's id of an in-flight request (as JSON text) → its wire id.
    in_flight: HashMap<String, u64>,
}

pub struct Session {
    pub id: String,
    protocol_version: RwLock<String>,
    capabilities: RwLock<ClientCapabilities>,
    /// The 2024-11-05 HTTP+SSE transport: every message, responses too, goes on the one stream.
    pub legacy: bool,
    /// A 2026-07-28 request that opted in to log messages: the lowest severity it wants.
    log_severity: Option<u8>,
    state: Mutex<SessionState>,
    last_seen: Mutex<Instant>,
}

impl Session {
    pub fn touch(&self) {
        *self.last_seen.lock().unwrap() = Instant::now();
    }

    pub fn capabilities(&self) -> ClientCapabilities {
        *self.capabilities.read().unwrap()
    }

    pub fn protocol_version(&self) -> String {
        self.protocol_version.read().unwrap().clone()
    }

    /// Records what the client negotiated (the legacy transport learns it after the stream opens).
    pub fn negotiated(&self, protocol_version: &str, capabilities: ClientCapabilities) {
        *self.protocol_version.write().unwrap() = protocol_version.to_string();
        *self.capabilities.write().unwrap() = capabilities;
    }

    pub fn idle_for(&self) -> Duration {
        self.last_seen.lock().unwrap().elapsed()
    }

    /// Sends `message` on `stream`; a request stream that is gone (or a JSON-mode
    /// request, which has none) falls back to the standalone stream. Every message
    /// is logged for replay, and delivered on exactly one stream.
    pub fn send(&self, stream: StreamKey, message: Value) {
        let mut state = self.state.lock().unwrap();
        // A request stream that was dropped by the client keeps its messages in the
        // log for a resume; one that never existed (JSON mode) or has ended does not.
        let open = |s: &Stream| !s.finished;
        let stream = if self.legacy || !state.streams.get(&stream).is_some_and(open) {
            STANDALONE
        } else {
            stream
        };
        state.next_event_id += 1;
        let event = SseEvent {
            id: state.next_event_id,
            message,
        };
        let delivered = match state.streams.get_mut(&stream).and_then(|s| s.live.as_ref()) {
            Some(live) if live.send(event.clone()).is_ok() => true,
            Some(_) => {
                state.streams.get_mut(&stream).unwrap().live = None;
                false
            }
            None => false,
        };
        state.log.push_back(Logged {
            event,
            stream,
            delivered,
        });
        if state.log.len() > EVENT_LOG_LIMIT {
            state.log.pop_front();
        }
    }

    /// Opens the SSE stream that will answer one POSTed request.
    pub fn open_request_stream(&self, key: StreamKey) -> mpsc::UnboundedReceiver<SseEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state.lock().unwrap().streams.insert(
            key,
            Stream {
                live: Some(tx),
                finished: false,
            },
        );
        rx
    }

    /// Ends a request stream after its response; a later resume replays it from the log.
    pub fn finish_stream(&self, key: StreamKey) {
        if let Some(stream) = self.state.lock().unwrap().streams.get_mut(&key) {
            stream.finished = true;
            stream.live = None;
        }
    }

    /// Connects a GET stream. With `last_event_id`, replays what followed that event
    /// on its stream and continues that stream; without, delivers the standalone
    /// messages no stream has carried yet and continues live.
    pub fn attach(&self, last_event_id: Option<u64>) -> mpsc::UnboundedReceiver<SseEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.state.lock().unwrap();
        let key = last_event_id
            .and_then(|last| {
                state
                    .log
                    .iter()
                    .find(|l| l.event.id == last)
                    .map(|l| l.stream)
            })
            .unwrap_or(STANDALONE);
        for logged in state.log.iter_mut().filter(|l| l.stream == key) {
            let wanted = match last_event_id {
                Some(last) => logged.event.id > last,
                None => !logged.delivered,
            };
            if wanted {
                let _ = tx.send(logged.event.clone());
                logged.delivered = true;
            }
        }
        let stream = state.streams.entry(key).or_default();
        if !stream.finished {
            // A newer connection replaces an older one: one live stream per key.
            stream.live = Some(tx);
        }
        rx
    }

    pub fn subscribe(&self, uri: &str) {
        self.state
            .lock()
            .unwrap()
            .subscriptions
            .insert(uri.to_string());
    }

    pub fn unsubscribe(&self, uri: &str) {
        self.state.lock().unwrap().subscriptions.remove(uri);
    }

    pub fn is_subscribed(&self, uri: &str) -> bool {
        self.state.lock().unwrap().subscriptions.contains(uri)
    }

    fn subscriptions(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .subscriptions
            .iter()
            .cloned()
            .collect()
    }

    /// The server's ids of the requests it made of this client that are still unanswered.
    pub fn unanswered_server_requests(&self) -> Vec<Value> {
        let mut state = self.state.lock().unwrap();
        state.server_requests.drain().map(|(_, id)| id).collect()
    }

    fn has_live(&self, key: StreamKey) -> bool {
        let state = self.state.lock().unwrap();
        state
            .streams
            .get(&key)
            .is_some_and(|s| s.live.is_some() && !s.finished)
    }
}

/// Every session of one MCP server, and the routes of what is in flight.
#[derive(Default)]
pub struct Sessions {
    sessions: RwLock<HashMap<String, Arc<Session>>>,
    /// Open `subscriptions/listen` streams (protocol 2026-07-28).
    listeners: Mutex<Vec<Listener>>,
    next_listener: std::sync::atomic::AtomicU64,
    /// 2026-07-28 requests waiting for the client to supply input, by `requestState`.
    parked: Mutex<HashMap<String, (crate::modern::Exchange, Instant)>>,
    /// Rewritten progress token → where its notifications go.
    progress: Mutex<HashMap<String, ProgressRoute>>,
    /// Requests in flight, oldest first: the candidates for server→client requests.
    active: Mutex<Vec<Active>>,
    next_server_request: Mutex<u64>,
    next_stream: std::sync::atomic::AtomicU64,
}

struct ProgressRoute {
    session: Arc<Session>,
    token: Value,
    stream: StreamKey,
}

struct Active {
    session: Arc<Session>,
    stream: StreamKey,
}

/// Registered while a request is in flight; unregisters on drop.
pub struct InFlight {
    sessions: Arc<Sessions>,
    session: Arc<Session>,
    stream: StreamKey,
    client_id: String,
    progress_token: Option<String>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(token) = &self.progress_token {
            self.sessions.progress.lock().unwrap().remove(token);
        }
        self.sessions
            .active
            .lock()
            .unwrap()
            .retain(|a| !(Arc::ptr_eq(&a.session, &self.session) && a.stream == self.stream));
        self.session
            .state
            .lock()
            .unwrap()
            .in_flight
            .remove(&self.client_id);
    }
}

/// A cryptographically random session id: 32 hex digits, visible ASCII only.
fn new_session_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_session(
    protocol_version: &str,
    capabilities: ClientCapabilities,
    legacy: bool,
    log_severity: Option<u8>,
) -> Arc<Session> {
    Arc::new(Session {
        id: new_session_id(),
        protocol_version: RwLock::new(protocol_version.to_string()),
        capabilities: RwLock::new(capabilities),
        legacy,
        log_severity,
        state: Mutex::new(SessionState::default()),
        last_seen: Mutex::new(Instant::now()),
    })
}

impl Sessions {
    pub fn create(
        &self,
        protocol_version: &str,
        capabilities: ClientCapabilities,
        legacy: bool,
    ) -> Arc<Session> {
        let session = new_session(protocol_version, capabilities, legacy, None);
        self.sessions
            .write()
            .unwrap()
            .insert(session.id.clone(), session.clone());
        debug!(session = %session.id, protocol_version, legacy, "session created");
        session
    }

    /// The conversation of one 2026-07-28 request: routed like a session's
    /// request while in flight, but never listed (it gets no broadcasts).
    pub fn ephemeral(
        &self,
        protocol_version: &str,
        capabilities: ClientCapabilities,
        log_severity: Option<u8>,
    ) -> Arc<Session> {
        new_session(protocol_version, capabilities, false, log_severity)
    }

    /// Opens a `subscriptions/listen` stream; returns its id and its frames.
    pub fn listen(
        &self,
        subscription_id: Value,
        filter: ListenFilter,
    ) -> (u64, mpsc::UnboundedReceiver<Value>) {
        let (frames, receiver) = mpsc::unbounded_channel();
        let id = self
            .next_listener
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.listeners.lock().unwrap().push(Listener {
            id,
            subscription_id,
            filter,
            frames,
        });
        (id, receiver)
    }

    /// The client closed a listen stream. Returns the resource URIs nobody wants any more.
    pub fn unlisten(&self, id: u64) -> Vec<String> {
        let removed: Vec<Listener> = {
            let mut listeners = self.listeners.lock().unwrap();
            let (gone, kept) = std::mem::take(&mut *listeners)
                .into_iter()
                .partition(|l| l.id == id);
            *listeners = kept;
            gone
        };
        removed
            .into_iter()
            .flat_map(|l| l.filter.resource_subscriptions)
            .filter(|uri| !self.anyone_subscribed(uri))
            .collect()
    }

    /// Ends every listen stream gracefully: its last frame is the listen result.
    fn close_listeners(&self) {
        for listener in std::mem::take(&mut *self.listeners.lock().unwrap()) {
            let id = listener.subscription_id;
            let result = json!({"resultType": "complete", "_meta": {SUBSCRIPTION_ID_META_KEY: id}});
            let _ = listener.frames.send(jsonrpc::result(id, result));
        }
    }

    /// Parks a 2026-07-28 request until the client's retry names `state`.
    pub fn park(&self, state: String, exchange: crate::modern::Exchange) {
        self.parked
            .lock()
            .unwrap()
            .insert(state, (exchange, Instant::now()));
    }

    pub fn unpark(&self, state: &str) -> Option<crate::modern::Exchange> {
        self.parked
            .lock()
            .unwrap()
            .remove(state)
            .map(|(exchange, _)| exchange)
    }

    /// A key for a new request stream (never [`STANDALONE`]).
    pub fn new_stream_key(&self) -> StreamKey {
        self.next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.read().unwrap().get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.sessions.read().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends a session; its streams close. Returns whether it existed.
    pub fn end(&self, id: &str) -> bool {
        let removed = self.sessions.write().unwrap().remove(id);
        if let Some(session) = &removed {
            let mut state = session.state.lock().unwrap();
            for stream in state.streams.values_mut() {
                stream.live = None;
                stream.finished = true;
            }
        }
        removed.is_some()
    }

    /// Ends every session, listen stream and parked request.
    pub fn end_all(&self) {
        let ids: Vec<String> = self.sessions.read().unwrap().keys().cloned().collect();
        for id in ids {
            self.end(&id);
        }
        self.close_listeners();
        // Dropped outside the lock: a dropped exchange withdraws its request.
        let parked = std::mem::take(&mut *self.parked.lock().unwrap());
        drop(parked);
    }

    /// Ends sessions idle for longer than `ttl`; returns their ids.
    pub fn expire(&self, ttl: Duration) -> Vec<String> {
        let expired: Vec<String> = self
            .sessions
            .read()
            .unwrap()
            .values()
            .filter(|s| s.idle_for() > ttl)
            .map(|s| s.id.clone())
            .collect();
        for id in &expired {
            self.end(id);
        }
        let stale: Vec<_> = {
            let mut parked = self.parked.lock().unwrap();
            let states: Vec<String> = parked
                .iter()
                .filter(|(_, (_, since))| since.elapsed() > ttl)
                .map(|(state, _)| state.clone())
                .collect();
            states.iter().filter_map(|s| parked.remove(s)).collect()
        };
        drop(stale);
        expired
    }

    /// Registers a request from `session` about to go to the server under `wire_id`:
    /// rewrites its progress token so progress finds its way back.
    pub fn begin(
        self: &Arc<Self>,
        session: &Arc<Session>,
        wire_id: u64,
        stream: StreamKey,
        message: &mut Value,
    ) -> InFlight {
        let client_id = message["id"].to_string();
        let progress_token = match message.pointer_mut("/params/_meta/progressToken") {
            Some(token) => {
                let rewritten = format!("{PROGRESS_PREFIX}{wire_id}");
                let original = std::mem::replace(token, json!(rewritten));
                self.progress.lock().unwrap().insert(
                    rewritten.clone(),
                    ProgressRoute {
                        session: session.clone(),
                        token: original,
                        stream,
                    },
                );
                Some(rewritten)
            }
            None => None,
        };
        session
            .state
            .lock()
            .unwrap()
            .in_flight
            .insert(client_id.clone(), wire_id);
        self.active.lock().unwrap().push(Active {
            session: session.clone(),
            stream,
        });
        InFlight {
            sessions: self.clone(),
            session: session.clone(),
            stream,
            client_id,
            progress_token,
        }
    }

    /// The client cancels one of its requests: the same notification, with the wire id.
    pub fn client_cancel(&self, session: &Session, mut notification: Value) -> Option<Value> {
        let client_id = notification.pointer("/params/requestId")?.to_string();
        let wire_id = *session.state.lock().unwrap().in_flight.get(&client_id)?;
        notification["params"]["requestId"] = json!(wire_id);
        Some(notification)
    }

    /// The client answers a server→client request: the same response, with the server's id.
    pub fn client_response(&self, session: &Session, mut response: Value) -> Option<Value> {
        let id = response.get("id")?.as_str()?.to_string();
        let server_id = session.state.lock().unwrap().server_requests.remove(&id)?;
        response["id"] = server_id;
        Some(response)
    }

    /// Every resource URI some session or listen stream is subscribed to (to renew after a restart).
    pub fn subscribed_uris(&self) -> HashSet<String> {
        let mut uris: HashSet<String> = self
            .sessions
            .read()
            .unwrap()
            .values()
            .flat_map(|s| s.subscriptions())
            .collect();
        let listeners = self.listeners.lock().unwrap();
        uris.extend(
            listeners
                .iter()
                .flat_map(|l| l.filter.resource_subscriptions.iter().cloned()),
        );
        uris
    }

    /// Whether any session other than `except`, or any listen stream, is subscribed to `uri`.
    pub fn others_subscribed(&self, except: &Session, uri: &str) -> bool {
        self.sessions
            .read()
            .unwrap()
            .values()
            .any(|s| s.id != except.id && s.is_subscribed(uri))
            || self.listened(uri)
    }

    /// Whether any session or listen stream is subscribed to `uri`.
    pub fn anyone_subscribed(&self, uri: &str) -> bool {
        self.sessions
            .read()
            .unwrap()
            .values()
            .any(|s| s.is_subscribed(uri))
            || self.listened(uri)
    }

    fn listened(&self, uri: &str) -> bool {
        self.listeners
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.filter.resource_subscriptions.iter().any(|u| u == uri))
    }

    fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.read().unwrap().values().cloned().collect()
    }

    /// Routes a message the server sent on its own. Returns a reply for the server
    /// when mcpod answers it itself (a ping, or a request no session can answer).
    pub fn route(&self, message: ServerMessage) -> Option<Value> {
        match message {
            ServerMessage::Notification(notification) => {
                self.route_notification(notification);
                None
            }
            ServerMessage::Request(request) => self.route_request(request),
        }
    }

    fn route_notification(&self, mut notification: Value) {
        let method = jsonrpc::method(&notification)
            .unwrap_or_default()
            .to_string();
        match method.as_str() {
            "notifications/progress" => {
                let token = notification
                    .pointer("/params/progressToken")
                    .and_then(Value::as_str);
                let routes = self.progress.lock().unwrap();
                let Some(route) = token.and_then(|t| routes.get(t)) else {
                    debug!("progress for a request no longer in flight; dropped");
                    return;
                };
                notification["params"]["progressToken"] = route.token.clone();
                route.session.send(route.stream, notification);
            }
            "notifications/resources/updated" => {
                let uri = notification
                    .pointer("/params/uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                for session in self.all().into_iter().filter(|s| s.is_subscribed(uri)) {
                    session.send(STANDALONE, notification.clone());
                }
                self.notify_listeners(&method, &notification);
            }
            "notifications/cancelled" => {
                // The server withdraws a request it made of a client.
                let Some(server_id) = notification.pointer("/params/requestId").cloned() else {
                    return;
                };
                for session in self.all() {
                    let mut state = session.state.lock().unwrap();
                    let found = state
                        .server_requests
                        .iter()
                        .find(|(_, id)| **id == server_id)
                        .map(|(client_facing, _)| client_facing.clone());
                    if let Some(client_facing) = found {
                        state.server_requests.remove(&client_facing);
                        drop(state);
                        notification["params"]["requestId"] = json!(client_facing);
                        session.send(STANDALONE, notification);
                        return;
                    }
                }
            }
            _ => {
                // list_changed, logging and the like concern every session.
                for session in self.all() {
                    session.send(STANDALONE, notification.clone());
                }
                if method == "notifications/message" {
                    self.log_to_requests(&notification);
                }
                self.notify_listeners(&method, &notification);
            }
        }
    }

    /// Change notifications for the listen streams that asked for them, each
    /// stamped with its stream's subscription id.
    fn notify_listeners(&self, method: &str, notification: &Value) {
        let listeners = self.listeners.lock().unwrap();
        for listener in listeners
            .iter()
            .filter(|l| l.filter.wants(method, notification))
        {
            let mut frame = notification.clone();
            if !frame["params"].is_object() {
                frame["params"] = json!({});
            }
            frame["params"]["_meta"][SUBSCRIPTION_ID_META_KEY] = listener.subscription_id.clone();
            let _ = listener.frames.send(frame);
        }
    }

    /// A log message goes to the 2026-07-28 requests in flight that opted in at
    /// its level (the server's log cannot tell which request it is about).
    fn log_to_requests(&self, notification: &Value) {
        let Some(severity) = notification
            .pointer("/params/level")
            .and_then(Value::as_str)
            .and_then(log_severity)
        else {
            return;
        };
        let active = self.active.lock().unwrap();
        for a in active
            .iter()
            .filter(|a| a.session.log_severity.is_some_and(|min| severity >= min))
        {
            a.session.send(a.stream, notification.clone());
        }
    }

    fn route_request(&self, mut request: Value) -> Option<Value> {
        let server_id = jsonrpc::id(&request);
        let method = jsonrpc::method(&request).unwrap_or_default().to_string();
        if method == "ping" {
            return Some(jsonrpc::result(server_id, json!({})));
        }
        let Some((session, stream)) = self.pick_session_for(&method) else {
            return Some(jsonrpc::error(
                server_id,
                jsonrpc::METHOD_NOT_FOUND,
                format!("mcpod: no connected client session can answer {method}"),
            ));
        };
        let client_facing = {
            let mut next = self.next_server_request.lock().unwrap();
            *next += 1;
            format!("{SERVER_REQUEST_PREFIX}{}", *next)
        };
        session
            .state
            .lock()
            .unwrap()
            .server_requests
            .insert(client_facing.clone(), server_id);
        request["id"] = json!(client_facing);
        session.send(stream, request);
        None
    }

    /// The session whose in-flight request most likely caused a server→client
    /// request (the newest one whose client can answer it), else a connected one.
    fn pick_session_for(&self, method: &str) -> Option<(Arc<Session>, StreamKey)> {
        let active = self.active.lock().unwrap();
        if let Some(a) = active
            .iter()
            .rev()
            .find(|a| a.session.capabilities().can_answer(method))
        {
            return Some((a.session.clone(), a.stream));
        }
        drop(active);
        let capable: Vec<Arc<Session>> = self
            .all()
            .into_iter()
            .filter(|s| s.capabilities().can_answer(method))
            .collect();
        capable
            .iter()
            .find(|s| s.has_live(STANDALONE))
            .or(capable.first())
            .map(|s| (s.clone(), STANDALONE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(roots: bool) -> ClientCapabilities {
        ClientCapabilities {
            roots,
            ..Default::default()
        }
    }

    #[test]
    fn progress_goes_back_to_its_request_with_the_clients_token() {
        let sessions = Arc::new(Sessions::default());
        let a = sessions.create("2025-06-18", caps(false), false);
        let b = sessions.create("2025-06-18", caps(false), false);
        let mut stream_a = a.open_request_stream(11);
        let mut stream_b = b.open_request_stream(12);
        let mut req_a = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":7}}});
        let mut req_b = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":7}}});
        let _guard_a = sessions.begin(&a, 11, 11, &mut req_a);
        let _guard_b = sessions.begin(&b, 12, 12, &mut req_b);
        let wire_b = req_b["params"]["_meta"]["progressToken"].clone();
        assert_ne!(req_a["params"]["_meta"]["progressToken"], wire_b);
        let progress = json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":wire_b,"progress":1}});
        assert_eq!(sessions.route(ServerMessage::Notification(progress)), None);
        let event = stream_b.try_recv().unwrap();
        assert_eq!(event.message["params"]["progressToken"], 7);
        assert!(stream_a.try_recv().is_err(), "only the owner gets it");
    }

    #[test]
    fn server_requests_reach_a_capable_session_and_answers_map_back() {
        let sessions = Arc::new(Sessions::default());
        let plain = sessions.create("2025-06-18", caps(false), false);
        let rooted = sessions.create("2025-06-18", caps(true), false);
        let mut rooted_stream = rooted.attach(None);
        let mut plain_stream = plain.attach(None);
        let request = json!({"jsonrpc":"2.0","id":42,"method":"roots/list"});
        assert_eq!(sessions.route(ServerMessage::Request(request)), None);
        let event = rooted_stream.try_recv().unwrap();
        let client_facing = event.message["id"].clone();
        assert!(plain_stream.try_recv().is_err());
        let answer = json!({"jsonrpc":"2.0","id":client_facing,"result":{"roots":[]}});
        let to_server = sessions.client_response(&rooted, answer).unwrap();
        assert_eq!(to_server["id"], 42);
        // Nobody can sample: the server gets an error at once; ping is answered by mcpod.
        let refused = sessions
            .route(ServerMessage::Request(
                json!({"jsonrpc":"2.0","id":"s","method":"sampling/createMessage"}),
            ))
            .unwrap();
        assert_eq!(refused["error"]["code"], jsonrpc::METHOD_NOT_FOUND);
        let pong = sessions
            .route(ServerMessage::Request(
                json!({"jsonrpc":"2.0","id":3,"method":"ping"}),
            ))
            .unwrap();
        assert_eq!(pong["result"], json!({}));
    }

    #[test]
    fn reconnect_with_last_event_id_loses_nothing() {
        let sessions = Sessions::default();
        let session = sessions.create("2025-06-18", caps(false), false);
        let mut first = session.attach(None);
        session.send(STANDALONE, json!({"n": 1}));
        let seen = first.try_recv().unwrap();
        drop(first); // the connection drops
        session.send(STANDALONE, json!({"n": 2}));
        session.send(STANDALONE, json!({"n": 3}));
        let mut second = session.attach(Some(seen.id));
        let replayed: Vec<_> = std::iter::from_fn(|| second.try_recv().ok())
            .map(|e| e.message["n"].clone())
            .collect();
        assert_eq!(replayed, [json!(2), json!(3)]);
        session.send(STANDALONE, json!({"n": 4}));
        assert_eq!(second.try_recv().unwrap().message["n"], 4);
    }

    #[test]
    fn notifications_reach_every_session_once_and_updates_only_subscribers() {
        let sessions = Sessions::default();
        let a = sessions.create("2025-06-18", caps(false), false);
        let b = sessions.create("2025-06-18", caps(false), false);
        let (mut sa, mut sb) = (a.attach(None), b.attach(None));
        a.subscribe("file:///x");
        sessions.route(ServerMessage::Notification(
            json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}),
        ));
        sessions.route(ServerMessage::Notification(json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///x"}})));
        assert_eq!(
            sa.try_recv().unwrap().message["method"],
            "notifications/tools/list_changed"
        );
        assert_eq!(
            sa.try_recv().unwrap().message["method"],
            "notifications/resources/updated"
        );
        assert_eq!(
            sb.try_recv().unwrap().message["method"],
            "notifications/tools/list_changed"
        );
        assert!(sb.try_recv().is_err());
        assert!(sa.try_recv().is_err());
    }

    #[test]
    fn cancellation_maps_the_clients_id_to_the_wire_id() {
        let sessions = Arc::new(Sessions::default());
        let session = sessions.create("2025-06-18", caps(false), false);
        let mut request = json!({"jsonrpc":"2.0","id":"abc","method":"tools/call"});
        let guard = sessions.begin(&session, 99, STANDALONE, &mut request);
        let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"abc"}});
        assert_eq!(
            sessions.client_cancel(&session, cancel.clone()).unwrap()["params"]["requestId"],
            99
        );
        drop(guard);
        assert!(sessions.client_cancel(&session, cancel).is_none());
    }

    #[test]
    fn session_ids_are_random_visible_ascii() {
        let sessions = Sessions::default();
        let a = sessions.create("2025-06-18", caps(false), false);
        let b = sessions.create("2025-06-18", caps(false), false);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        assert!(a.id.bytes().all(|c| (0x21..=0x7e).contains(&c)));
        assert!(sessions.end(&a.id));
        assert!(sessions.get(&a.id).is_none());
        assert!(!sessions.end(&a.id));
    }
}
