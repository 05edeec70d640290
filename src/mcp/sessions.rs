//! The one owner of a server's protocol state towards its clients.
//!
//! Many client sessions share one stdio server process. Everything that ties a
//! message to a client lives here, under one lock (`Shared::state`): the
//! sessions and their SSE event logs, the requests in flight and who asked
//! them, progress routes, server→client requests awaiting an answer, resource
//! subscriptions, `subscriptions/listen` streams and parked per-request
//! exchanges. The lock is a std mutex, as in mini-redis's `db.rs`: it is never
//! held across an `.await`, and nothing under it calls out of this module.
//!
//! # The routing rule
//! Over stdio a server→client request (sampling, elicitation, roots) or a log
//! message carries nothing that says which client request caused it, so mcpod
//! never guesses: it goes to a client only when mcpod knows it belongs there —
//! it carries the progress token of a request in flight, or exactly one request
//! that may have caused it is in flight. To make that the normal case, a
//! request from a client that can answer sampling or elicitation takes the
//! server's *turn* exclusively (other requests that may ask the client wait),
//! while requests from clients that cannot answer share it. A question mcpod
//! cannot attribute is refused to the server with an error naming the reason,
//! so the tool call fails visibly instead of asking the wrong user.

use std::any::Any;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};
use tracing::debug;

use crate::auth::Caller;
use crate::limits::client_key;
use crate::mcp::bridge::ServerMessage;
use crate::mcp::error::RequestError;
use crate::mcp::message::{self as jsonrpc, Method};

/// Which SSE stream of a session a message goes on: the standalone GET stream,
/// or the stream answering one POSTed request.
pub type StreamKey = u64;
pub const STANDALONE: StreamKey = 0;

/// How many events a session keeps for replay after a reconnect.
const EVENT_LOG_LIMIT: usize = 1000;
/// Replay entries all sessions of a server keep for broadcasts, together:
/// a broadcast is one shared message, but each session's log holds an entry
/// for it, so with many sessions each keeps a shorter history (10,000
/// sessions: the last 50 events each; at most ~20 MB of entries in all).
const BROADCAST_LOG_BUDGET: usize = 500_000;

/// The replay depth each of `sessions` sessions keeps once a broadcast reaches them.
fn broadcast_log_limit(sessions: usize) -> usize {
    (BROADCAST_LOG_BUDGET / sessions.max(1)).clamp(1, EVENT_LOG_LIMIT)
}
/// Finished request streams whose events a session keeps for a resume
/// (`Last-Event-ID`); an older one's events leave the replay log, so a session
/// that makes many requests holds a few answers, not one per request it made.
const RESUMABLE_FINISHED_STREAMS: usize = 8;
/// Events queued for one live SSE connection; a client that falls this far
/// behind loses the connection (it can resume from the event log).
const LIVE_QUEUE: usize = 256;
const PROGRESS_PREFIX: &str = "mcpod-p";
const SERVER_REQUEST_PREFIX: &str = "mcpod-s";

/// The `_meta` key naming the listen stream a frame belongs to.
pub const SUBSCRIPTION_ID_META_KEY: &str = "io.modelcontextprotocol/subscriptionId";

/// One event of a session's stream. The message is shared: a notification
/// broadcast to every session is one allocation, referenced from each
/// session's event log and live queue, never copied per session.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: u64,
    pub message: Arc<Value>,
}

/// What the client declared it can answer.
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

    fn can_answer(&self, method: Method) -> bool {
        match method {
            Method::RootsList => self.roots,
            Method::SamplingCreateMessage => self.sampling,
            Method::ElicitationCreate => self.elicitation,
            _ => false,
        }
    }

    /// A client that may be asked questions only its own user should see.
    fn answers_personal_questions(&self) -> bool {
        self.sampling || self.elicitation
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
    fn wants(&self, method: Method, notification: &Value) -> bool {
        match method {
            Method::ToolsListChanged => self.tools_list_changed,
            Method::PromptsListChanged => self.prompts_list_changed,
            Method::ResourcesListChanged => self.resources_list_changed,
            Method::ResourcesUpdated => uri_of(notification)
                .is_some_and(|uri| self.resource_subscriptions.iter().any(|u| u == uri)),
            _ => false,
        }
    }
}

fn uri_of(message: &Value) -> Option<&str> {
    message.pointer("/params/uri").and_then(Value::as_str)
}

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

/// One open `subscriptions/listen` stream.
struct Listener {
    id: u64,
    /// The JSON-RPC id of the `subscriptions/listen` request, stamped on every frame.
    subscription_id: Value,
    filter: ListenFilter,
    frames: mpsc::UnboundedSender<Value>,
}

struct Logged {
    event: SseEvent,
    stream: StreamKey,
    delivered: bool,
}

/// An open stream: the standalone one, or a request's until its response.
/// A finished request stream has no entry (its events stay in the log).
#[derive(Default)]
struct Stream {
    live: Option<mpsc::Sender<SseEvent>>,
}

/// Everything mcpod knows of one client session.
struct SessionState {
    /// Who opened the session: only they may use it.
    owner: Arc<Caller>,
    protocol_version: String,
    capabilities: ClientCapabilities,
    /// A 2026-07-28 request that opted in to log messages: the lowest severity it wants.
    log_severity: Option<u8>,
    /// Listed sessions are found by id and get broadcasts; a per-request
    /// exchange's conversation is not.
    listed: bool,
    /// The 2024-11-05 HTTP+SSE transport: every message, responses too, goes on the one stream.
    legacy: bool,
    last_seen: Instant,
    next_event_id: u64,
    log: VecDeque<Logged>,
    streams: HashMap<StreamKey, Stream>,
    /// The last finished request streams, oldest first (see [`RESUMABLE_FINISHED_STREAMS`]).
    finished: VecDeque<StreamKey>,
    subscriptions: HashSet<String>,
    /// Client-facing id of a server→client request → the server's own id.
    server_requests: HashMap<String, Value>,
    /// The client's id of an in-flight request (as JSON text) → its wire id.
    in_flight: HashMap<String, u64>,
}

impl SessionState {
    /// Sends `message` on `stream`; a request stream that is gone (or a JSON-mode
    /// request, which has none) falls back to the standalone stream. Every message
    /// is logged for replay, and delivered on exactly one stream.
    fn send(&mut self, stream: StreamKey, message: Value) {
        self.send_shared(stream, Arc::new(message));
    }

    /// [`SessionState::send`] of a message shared with `sessions` sessions:
    /// the replay log is cut to this session's share of the broadcast budget.
    fn send_broadcast(&mut self, message: Arc<Value>, sessions: usize) {
        self.send_shared(STANDALONE, message);
        let limit = broadcast_log_limit(sessions);
        while self.log.len() > limit {
            self.log.pop_front();
        }
    }

    /// [`SessionState::send`] of a message shared with other sessions.
    fn send_shared(&mut self, stream: StreamKey, message: Arc<Value>) {
        let stream = if self.legacy || !self.streams.contains_key(&stream) {
            STANDALONE
        } else {
            stream
        };
        let event = SseEvent {
            id: self.next_event_id(),
            message,
        };
        let delivered = match self.streams.get_mut(&stream) {
            Some(s) => deliver(s, &event),
            None => false,
        };
        self.remember(event, stream, delivered);
    }

    fn next_event_id(&mut self) -> u64 {
        self.next_event_id += 1;
        self.next_event_id
    }

    fn remember(&mut self, event: SseEvent, stream: StreamKey, delivered: bool) {
        self.log.push_back(Logged {
            event,
            stream,
            delivered,
        });
        if self.log.len() > EVENT_LOG_LIMIT {
            self.log.pop_front();
        }
    }

    /// A priming event for `stream`: an id (with no message) a client can resume from.
    fn prime(&mut self, stream: StreamKey) -> u64 {
        let id = self.next_event_id();
        let event = SseEvent {
            id,
            message: Arc::new(Value::Null),
        };
        self.remember(event, stream, true);
        id
    }

    /// A request stream got its response: it closes, and the oldest finished
    /// stream beyond [`RESUMABLE_FINISHED_STREAMS`] leaves the replay log.
    fn finish(&mut self, key: StreamKey) {
        if self.streams.remove(&key).is_none() {
            return;
        }
        self.finished.push_back(key);
        if self.finished.len() > RESUMABLE_FINISHED_STREAMS {
            if let Some(oldest) = self.finished.pop_front() {
                self.log.retain(|l| l.stream != oldest);
            }
        }
    }

    fn wants_log(&self, severity: Option<u8>) -> bool {
        match (self.listed, self.log_severity) {
            // A session: the server's log level (logging/setLevel) decides.
            (true, _) => true,
            (false, Some(min)) => severity.is_some_and(|s| s >= min),
            (false, None) => false,
        }
    }
}

/// Hands `event` to a live connection; a connection whose client is gone or
/// too far behind is let go (the event stays in the log for a resume).
fn deliver(stream: &mut Stream, event: &SseEvent) -> bool {
    let Some(live) = &stream.live else {
        return false;
    };
    match live.try_send(event.clone()) {
        Ok(()) => true,
        Err(_) => {
            stream.live = None;
            false
        }
    }
}

/// A request in flight on the server, and who asked it.
struct Active {
    wire_id: u64,
    /// `None`: a stateless client, which nothing can be routed to.
    session: Option<String>,
    stream: StreamKey,
    /// Whether handling it may make the server ask the client something.
    may_ask: bool,
}

struct ProgressRoute {
    session: String,
    token: Value,
    stream: StreamKey,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, SessionState>,
    /// Listed sessions per client (`crate::limits::client_key`): the limits
    /// are checked on every `initialize`, without a scan of every session.
    listed_by_client: HashMap<String, usize>,
    listeners: Vec<Listener>,
    next_listener: u64,
    /// 2026-07-28 requests waiting for the client to supply input, by `requestState`.
    parked: HashMap<String, (Box<dyn Any + Send>, Instant)>,
    /// Rewritten progress token → where its notifications go.
    progress: HashMap<String, ProgressRoute>,
    /// Requests in flight, oldest first.
    active: Vec<Active>,
    next_server_request: u64,
    next_stream: StreamKey,
    /// The session whose roots change mcpod announced last: an unsolicited
    /// `roots/list` that follows is that session's to answer.
    roots_asker: Option<String>,
    /// The session holding the server's turn alone, and how many of its
    /// requests share it.
    turn_holder: Option<TurnHeld>,
}

impl State {
    fn add_session(&mut self, id: String, session: SessionState) {
        if session.listed {
            *self
                .listed_by_client
                .entry(client_key(&session.owner))
                .or_default() += 1;
        }
        self.sessions.insert(id, session);
    }

    fn remove_session(&mut self, id: &str) -> Option<SessionState> {
        let session = self.sessions.remove(id)?;
        if session.listed {
            let client = client_key(&session.owner);
            if let Some(count) = self.listed_by_client.get_mut(&client) {
                *count -= 1;
                if *count == 0 {
                    self.listed_by_client.remove(&client);
                }
            }
        }
        Some(session)
    }

    fn listed(&self) -> usize {
        self.listed_by_client.values().sum()
    }

    /// Where a message about the requests in flight goes: the request whose
    /// progress token it carries, else the only candidate in flight.
    fn attribute(&self, message: &Value, candidates: &[&Active]) -> Attribution {
        let token = message
            .pointer("/params/_meta/progressToken")
            .and_then(Value::as_str);
        if let Some(route) = token.and_then(|t| self.progress.get(t)) {
            return Attribution::To(route.session.clone(), route.stream);
        }
        match candidates {
            [] => Attribution::Nobody,
            [only] => match &only.session {
                Some(session) => Attribution::To(session.clone(), only.stream),
                None => Attribution::Stateless,
            },
            // Several requests, all of one session: that client's, whichever caused it.
            [first, rest @ ..]
                if first.session.is_some() && rest.iter().all(|a| a.session == first.session) =>
            {
                Attribution::To(first.session.clone().unwrap_or_default(), first.stream)
            }
            many => Attribution::Ambiguous(many.len()),
        }
    }
}

enum Attribution {
    To(String, StreamKey),
    /// The one request in flight came from a client without a session.
    Stateless,
    Nobody,
    Ambiguous(usize),
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("session state lock poisoned")
    }
}

/// Every session of one MCP server, and the routes of what is in flight.
pub struct Sessions {
    shared: Arc<Shared>,
    /// Listed sessions held at most, in all and per client (`crate::limits`).
    limit: AtomicUsize,
    per_client: AtomicUsize,
    /// The server's turn: exclusive for requests of clients that answer
    /// personal questions (sampling, elicitation), shared for the others.
    turn: Arc<RwLock<()>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions::with_limit(usize::MAX)
    }
}

impl Sessions {
    /// Sessions of one server, at most `limit` of them at a time.
    pub fn with_limit(limit: usize) -> Self {
        Sessions {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
            }),
            limit: AtomicUsize::new(limit),
            per_client: AtomicUsize::new(limit),
            turn: Arc::new(RwLock::new(())),
        }
    }

    /// Sets the limits (a spec change takes effect for the next `initialize`).
    pub fn set_limits(&self, limit: usize, per_client: usize) {
        self.limit.store(limit, Ordering::Relaxed);
        self.per_client.store(per_client, Ordering::Relaxed);
    }
}

/// A handle on one client session; the session's state lives in [`Sessions`].
pub struct Session {
    pub id: String,
    /// Who opened it (see [`Session::belongs_to`]).
    pub owner: Arc<Caller>,
    /// The 2024-11-05 HTTP+SSE transport: every message, responses too, goes on the one stream.
    pub legacy: bool,
    shared: Arc<Shared>,
    /// A per-request exchange's conversation ends with its handle.
    ephemeral: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.ephemeral {
            self.shared.lock().remove_session(&self.id);
        }
    }
}

impl Session {
    fn with<T>(&self, f: impl FnOnce(&mut SessionState) -> T) -> Option<T> {
        self.shared.lock().sessions.get_mut(&self.id).map(f)
    }

    /// Whether `caller` may use this session: only the one who opened it
    /// (a session id that leaks is no key to someone else's conversation).
    pub fn belongs_to(&self, caller: &Caller) -> bool {
        self.owner.subject == caller.subject && self.owner.via == caller.via
    }

    pub fn touch(&self) {
        self.with(|s| s.last_seen = Instant::now());
    }

    pub fn capabilities(&self) -> ClientCapabilities {
        self.with(|s| s.capabilities).unwrap_or_default()
    }

    pub fn protocol_version(&self) -> String {
        self.with(|s| s.protocol_version.clone())
            .unwrap_or_default()
    }

    /// Records what the client negotiated (the legacy transport learns it after the stream opens).
    pub fn negotiated(&self, protocol_version: &str, capabilities: ClientCapabilities) {
        self.with(|s| {
            s.protocol_version = protocol_version.to_string();
            s.capabilities = capabilities;
        });
    }

    pub fn send(&self, stream: StreamKey, message: Value) {
        self.with(|s| s.send(stream, message));
    }

    /// Opens the SSE stream that will answer one POSTed request: its priming
    /// event id and its events.
    pub fn open_request_stream(&self, key: StreamKey) -> (u64, mpsc::Receiver<SseEvent>) {
        let (tx, rx) = mpsc::channel(LIVE_QUEUE);
        let primed = self.with(|s| {
            s.streams.insert(key, Stream { live: Some(tx) });
            s.prime(key)
        });
        (primed.unwrap_or_default(), rx)
    }

    /// Sends a request's response on its stream and ends the stream, at once:
    /// the connection sees the last event and the end together, and writes
    /// them in one piece.
    pub fn answer(&self, key: StreamKey, response: Value) {
        self.with(|s| {
            s.send(key, response);
            s.finish(key);
        });
    }

    /// Ends a request stream after its response; a later resume replays it from the log.
    pub fn finish_stream(&self, key: StreamKey) {
        self.with(|s| s.finish(key));
    }

    /// Connects a GET stream. With `last_event_id`, replays what followed that event
    /// on its stream and continues that stream; without, delivers the standalone
    /// messages no stream has carried yet and continues live. Returns the
    /// stream's priming event id and its events.
    pub fn attach(&self, last_event_id: Option<u64>) -> (u64, mpsc::Receiver<SseEvent>) {
        let (tx, rx) = mpsc::channel(LIVE_QUEUE);
        let primed = self.with(|s| {
            let key = last_event_id
                .and_then(|last| s.log.iter().find(|l| l.event.id == last).map(|l| l.stream))
                .unwrap_or(STANDALONE);
            let mut backlog = vec![];
            for logged in s.log.iter_mut().filter(|l| l.stream == key) {
                let wanted = match last_event_id {
                    Some(last) => logged.event.id > last,
                    None => !logged.delivered,
                };
                if wanted && !logged.event.message.is_null() {
                    backlog.push(logged.event.clone());
                    logged.delivered = true;
                }
            }
            let primed = s.prime(key);
            // The backlog first; a backlog larger than the queue is cut, and the
            // client resumes again from the last event it saw.
            let mut live = Some(tx);
            for event in backlog {
                if live.as_ref().is_some_and(|l| l.try_send(event).is_err()) {
                    live = None;
                }
            }
            // A finished request stream ends after its replay; the standalone
            // stream and an open request stream continue live, a newer
            // connection replacing an older one: one live stream per key.
            if key == STANDALONE || s.streams.contains_key(&key) {
                s.streams.entry(key).or_default().live = live;
            }
            primed
        });
        (primed.unwrap_or_default(), rx)
    }

    pub fn subscribe(&self, uri: &str) {
        self.with(|s| s.subscriptions.insert(uri.to_string()));
    }

    pub fn unsubscribe(&self, uri: &str) {
        self.with(|s| s.subscriptions.remove(uri));
    }

    pub fn is_subscribed(&self, uri: &str) -> bool {
        self.with(|s| s.subscriptions.contains(uri))
            .unwrap_or(false)
    }

    /// The server's ids of the requests it made of this client that are still unanswered.
    pub fn unanswered_server_requests(&self) -> Vec<Value> {
        self.with(|s| s.server_requests.drain().map(|(_, id)| id).collect())
            .unwrap_or_default()
    }
}

/// Registered while a request is in flight; unregisters on drop.
pub struct InFlight {
    shared: Arc<Shared>,
    wire_id: u64,
    session: Option<(String, String)>,
    progress_token: Option<String>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(token) = &self.progress_token {
            state.progress.remove(token);
        }
        state.active.retain(|a| a.wire_id != self.wire_id);
        if let Some((session, client_id)) = &self.session {
            if let Some(s) = state.sessions.get_mut(session) {
                s.in_flight.remove(client_id);
            }
        }
    }
}

/// A request's turn on the server (see the routing rule); held, never read.
#[allow(dead_code)]
pub enum Turn {
    Shared(OwnedRwLockReadGuard<()>),
    /// One of the requests of the session that holds the turn alone: its
    /// client may call again while it answers a question (still one client).
    Exclusive(TurnHolder),
}

/// One request of the session holding the exclusive turn; the last one to go
/// releases the turn.
pub struct TurnHolder {
    shared: Arc<Shared>,
}

impl Drop for TurnHolder {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let Some(holder) = &mut state.turn_holder else {
            return;
        };
        holder.requests -= 1;
        if holder.requests == 0 {
            let released = state.turn_holder.take();
            drop(state);
            drop(released);
        }
    }
}

/// The session holding the server's turn alone, with the turn itself.
struct TurnHeld {
    session: String,
    requests: usize,
    _guard: OwnedRwLockWriteGuard<()>,
}

/// A cryptographically random session id: 32 hex digits, visible ASCII only.
fn new_session_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    fn insert(
        &self,
        owner: Arc<Caller>,
        protocol_version: &str,
        capabilities: ClientCapabilities,
        legacy: bool,
        log_severity: Option<u8>,
        listed: bool,
    ) -> Arc<Session> {
        let id = new_session_id();
        self.lock().add_session(
            id.clone(),
            SessionState {
                owner: owner.clone(),
                protocol_version: protocol_version.to_string(),
                capabilities,
                log_severity,
                listed,
                legacy,
                last_seen: Instant::now(),
                next_event_id: 0,
                log: VecDeque::new(),
                streams: HashMap::new(),
                finished: VecDeque::new(),
                subscriptions: HashSet::new(),
                server_requests: HashMap::new(),
                in_flight: HashMap::new(),
            },
        );
        Arc::new(Session {
            id,
            owner,
            legacy,
            shared: self.shared.clone(),
            ephemeral: !listed,
        })
    }

    /// A new session, unless the server holds its limit of them already.
    pub fn create(
        &self,
        owner: Arc<Caller>,
        protocol_version: &str,
        capabilities: ClientCapabilities,
        legacy: bool,
    ) -> Result<Arc<Session>, RequestError> {
        let (limit, per_client) = (
            self.limit.load(Ordering::Relaxed),
            self.per_client.load(Ordering::Relaxed),
        );
        let (all, own) = self.count_for(&owner);
        if all >= limit {
            return Err(RequestError::TooMany {
                what: "client sessions of this server",
                limit,
            });
        }
        if own >= per_client {
            return Err(RequestError::ClientLimit {
                what: "sessions of this server",
                limit: per_client,
            });
        }
        let session = self.insert(owner, protocol_version, capabilities, legacy, None, true);
        debug!(session = %session.id, protocol_version, legacy, "session created");
        Ok(session)
    }

    /// The conversation of one 2026-07-28 request: routed like a session's
    /// request while in flight, but never listed (it gets no broadcasts); it
    /// ends when its handle is dropped.
    pub fn ephemeral(
        &self,
        owner: Arc<Caller>,
        protocol_version: &str,
        capabilities: ClientCapabilities,
        log_severity: Option<u8>,
    ) -> Arc<Session> {
        self.insert(
            owner,
            protocol_version,
            capabilities,
            false,
            log_severity,
            false,
        )
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        let state = self.lock();
        let session = state.sessions.get(id).filter(|s| s.listed)?;
        Some(Arc::new(Session {
            id: id.to_string(),
            owner: session.owner.clone(),
            legacy: session.legacy,
            shared: self.shared.clone(),
            ephemeral: false,
        }))
    }

    pub fn len(&self) -> usize {
        self.lock().listed()
    }

    /// Listed sessions in all, and those opened by `caller`'s client.
    fn count_for(&self, caller: &Caller) -> (usize, usize) {
        let state = self.lock();
        let own = state.listed_by_client.get(&client_key(caller));
        (state.listed(), own.copied().unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for `session`'s turn to send a request that may make the server
    /// ask its client something (see the routing rule), at most `timeout`.
    pub async fn take_turn(
        &self,
        session: &Session,
        timeout: Duration,
    ) -> Result<Option<Turn>, RequestError> {
        let exclusive = session.capabilities().answers_personal_questions();
        let turn = self.turn.clone();
        let holder = || TurnHolder {
            shared: self.shared.clone(),
        };
        if exclusive {
            if let Some(held) = &mut self.lock().turn_holder {
                if held.session == session.id {
                    held.requests += 1;
                    return Ok(Some(Turn::Exclusive(holder())));
                }
            }
        }
        let waited = if exclusive {
            match tokio::time::timeout(timeout, turn.write_owned()).await {
                Ok(guard) => {
                    self.lock().turn_holder = Some(TurnHeld {
                        session: session.id.clone(),
                        requests: 1,
                        _guard: guard,
                    });
                    Ok(Turn::Exclusive(holder()))
                }
                Err(elapsed) => Err(elapsed),
            }
        } else {
            tokio::time::timeout(timeout, turn.read_owned())
                .await
                .map(Turn::Shared)
        };
        waited.map(Some).map_err(|_| RequestError::Busy {
            timeout,
            reason: "another client's request that may ask its client questions is in flight"
                .into(),
        })
    }

    /// The next unsolicited `roots/list` from the server is `session`'s to answer.
    pub fn expect_roots_question(&self, session: &Session) {
        self.lock().roots_asker = Some(session.id.clone());
    }

    /// Opens a `subscriptions/listen` stream; returns its id and its frames.
    pub fn listen(
        &self,
        subscription_id: Value,
        filter: ListenFilter,
    ) -> (u64, mpsc::UnboundedReceiver<Value>) {
        let (frames, receiver) = mpsc::unbounded_channel();
        let mut state = self.lock();
        state.next_listener += 1;
        let id = state.next_listener;
        state.listeners.push(Listener {
            id,
            subscription_id,
            filter,
            frames,
        });
        (id, receiver)
    }

    /// The client closed a listen stream. Returns the resource URIs nobody wants any more.
    pub fn unlisten(&self, id: u64) -> Vec<String> {
        let mut state = self.lock();
        let Some(at) = state.listeners.iter().position(|l| l.id == id) else {
            return vec![];
        };
        let removed = state.listeners.remove(at);
        removed
            .filter
            .resource_subscriptions
            .into_iter()
            .filter(|uri| !anyone_subscribed(&state, uri, None))
            .collect()
    }

    /// Parks a 2026-07-28 exchange until the client's retry names `state`.
    pub fn park(&self, state: String, exchange: Box<dyn Any + Send>) {
        self.lock().parked.insert(state, (exchange, Instant::now()));
    }

    pub fn unpark(&self, state: &str) -> Option<Box<dyn Any + Send>> {
        self.lock()
            .parked
            .remove(state)
            .map(|(exchange, _)| exchange)
    }

    /// A key for a new request stream (never [`STANDALONE`]).
    pub fn new_stream_key(&self) -> StreamKey {
        let mut state = self.lock();
        state.next_stream += 1;
        state.next_stream
    }

    /// Ends a session; its streams close. Returns whether it existed.
    pub fn end(&self, id: &str) -> bool {
        self.lock().remove_session(id).is_some()
    }

    /// Ends every session, listen stream and parked request.
    pub fn end_all(&self) {
        let (listeners, parked) = {
            let mut state = self.lock();
            state.sessions.retain(|_, s| !s.listed);
            state.listed_by_client.clear();
            (
                std::mem::take(&mut state.listeners),
                std::mem::take(&mut state.parked),
            )
        };
        // Listen streams end gracefully: their last frame is the listen result.
        for listener in listeners {
            let id = listener.subscription_id;
            let result = json!({"resultType": "complete", "_meta": {SUBSCRIPTION_ID_META_KEY: id}});
            let _ = listener.frames.send(jsonrpc::result(id, result));
        }
        // Dropped outside the lock: a dropped exchange withdraws its request.
        drop(parked);
    }

    /// Ends sessions idle for longer than `ttl` and parked requests older than
    /// `parked_ttl`; returns the ended sessions' ids.
    pub fn expire(&self, ttl: Duration, parked_ttl: Duration) -> Vec<String> {
        let (expired, stale) = {
            let mut state = self.lock();
            let expired: Vec<String> = state
                .sessions
                .iter()
                .filter(|(_, s)| s.listed && s.last_seen.elapsed() > ttl)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                state.remove_session(id);
            }
            let old: Vec<String> = state
                .parked
                .iter()
                .filter(|(_, (_, since))| since.elapsed() > parked_ttl)
                .map(|(key, _)| key.clone())
                .collect();
            let stale: Vec<_> = old.iter().filter_map(|k| state.parked.remove(k)).collect();
            (expired, stale)
        };
        drop(stale);
        expired
    }

    /// Registers a request about to go to the server under `wire_id`, from
    /// `session` (none: a stateless client): rewrites its progress token so
    /// progress finds its way back.
    pub fn begin(
        &self,
        session: Option<&Session>,
        wire_id: u64,
        stream: StreamKey,
        message: &mut Value,
    ) -> InFlight {
        let may_ask = Method::of(message).may_ask_the_client();
        let client_id = message["id"].to_string();
        let mut state = self.lock();
        let progress_token = match (session, message.pointer_mut("/params/_meta/progressToken")) {
            (Some(session), Some(token)) => {
                let rewritten = format!("{PROGRESS_PREFIX}{wire_id}");
                let original = std::mem::replace(token, json!(rewritten));
                state.progress.insert(
                    rewritten.clone(),
                    ProgressRoute {
                        session: session.id.clone(),
                        token: original,
                        stream,
                    },
                );
                Some(rewritten)
            }
            _ => None,
        };
        if let Some(s) = session.and_then(|s| state.sessions.get_mut(&s.id)) {
            s.in_flight.insert(client_id.clone(), wire_id);
        }
        state.active.push(Active {
            wire_id,
            session: session.map(|s| s.id.clone()),
            stream,
            may_ask,
        });
        InFlight {
            shared: self.shared.clone(),
            wire_id,
            session: session.map(|s| (s.id.clone(), client_id)),
            progress_token,
        }
    }

    /// The client cancels one of its own requests: the same notification, with
    /// the wire id. A request of another session cannot be named.
    pub fn client_cancel(&self, session: &Session, mut notification: Value) -> Option<Value> {
        let client_id = notification.pointer("/params/requestId")?.to_string();
        let wire_id = *self
            .lock()
            .sessions
            .get(&session.id)?
            .in_flight
            .get(&client_id)?;
        notification["params"]["requestId"] = json!(wire_id);
        Some(notification)
    }

    /// The client answers a server→client request it was asked: the same
    /// response, with the server's id.
    pub fn client_response(&self, session: &Session, mut response: Value) -> Option<Value> {
        let id = response.get("id")?.as_str()?.to_string();
        let server_id = self
            .lock()
            .sessions
            .get_mut(&session.id)?
            .server_requests
            .remove(&id)?;
        response["id"] = server_id;
        Some(response)
    }

    /// Every resource URI some session or listen stream is subscribed to (to renew after a restart).
    pub fn subscribed_uris(&self) -> HashSet<String> {
        let state = self.lock();
        let mut uris: HashSet<String> = state
            .sessions
            .values()
            .flat_map(|s| s.subscriptions.iter().cloned())
            .collect();
        uris.extend(
            state
                .listeners
                .iter()
                .flat_map(|l| l.filter.resource_subscriptions.iter().cloned()),
        );
        uris
    }

    /// Whether any session other than `except`, or any listen stream, is subscribed to `uri`.
    pub fn others_subscribed(&self, except: &Session, uri: &str) -> bool {
        anyone_subscribed(&self.lock(), uri, Some(&except.id))
    }

    /// Whether any session or listen stream is subscribed to `uri`.
    pub fn anyone_subscribed(&self, uri: &str) -> bool {
        anyone_subscribed(&self.lock(), uri, None)
    }

    /// Routes a message the server sent on its own. Returns a reply for the server
    /// when mcpod answers it itself (a ping, or a request it cannot route).
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
        let method = Method::of(&notification);
        let mut state = self.lock();
        match method {
            Method::Progress => {
                let token = notification
                    .pointer("/params/progressToken")
                    .and_then(Value::as_str);
                let Some(route) = token.and_then(|t| state.progress.get(t)) else {
                    debug!("progress for a request no longer in flight; dropped");
                    return;
                };
                notification["params"]["progressToken"] = route.token.clone();
                let (session, stream) = (route.session.clone(), route.stream);
                send_to(&mut state, &session, stream, notification);
            }
            Method::ResourcesUpdated => {
                let uri = uri_of(&notification).unwrap_or_default().to_string();
                let shared = Arc::new(notification.clone());
                let sessions = state.sessions.len();
                for s in state
                    .sessions
                    .values_mut()
                    .filter(|s| s.listed && s.subscriptions.contains(&uri))
                {
                    s.send_broadcast(shared.clone(), sessions);
                }
                notify_listeners(&state, method, &notification);
            }
            Method::Cancelled => {
                // The server withdraws a request it made of a client.
                let Some(server_id) = notification.pointer("/params/requestId").cloned() else {
                    return;
                };
                let found = state.sessions.iter_mut().find_map(|(id, s)| {
                    let key = s
                        .server_requests
                        .iter()
                        .find(|(_, sid)| **sid == server_id)
                        .map(|(k, _)| k.clone())?;
                    s.server_requests.remove(&key);
                    Some((id.clone(), key))
                });
                if let Some((session, client_facing)) = found {
                    notification["params"]["requestId"] = json!(client_facing);
                    send_to(&mut state, &session, STANDALONE, notification);
                }
            }
            Method::LogMessage => route_log(&mut state, notification),
            _ => {
                // list_changed and the like describe the server, not a request:
                // every session hears of them once, all from one shared copy.
                let shared = Arc::new(notification.clone());
                let sessions = state.sessions.len();
                for s in state.sessions.values_mut().filter(|s| s.listed) {
                    s.send_broadcast(shared.clone(), sessions);
                }
                notify_listeners(&state, method, &notification);
            }
        }
    }

    fn route_request(&self, mut request: Value) -> Option<Value> {
        let server_id = jsonrpc::id(&request);
        let method = Method::of(&request);
        if method == Method::Ping {
            return Some(jsonrpc::result(server_id, json!({})));
        }
        let mut state = self.lock();
        let (session, stream) = match who_answers(&mut state, method, &request) {
            Ok(target) => target,
            Err((code, reason)) => {
                let name = jsonrpc::method(&request).unwrap_or_default();
                debug!(method = name, %reason, "server request refused");
                return Some(jsonrpc::error(
                    server_id,
                    code,
                    format!("mcpod cannot route {name} to a client: {reason}"),
                ));
            }
        };
        state.next_server_request += 1;
        let client_facing = format!("{SERVER_REQUEST_PREFIX}{}", state.next_server_request);
        let s = state.sessions.get_mut(&session)?;
        s.server_requests.insert(client_facing.clone(), server_id);
        request["id"] = json!(client_facing);
        s.send(stream, request);
        None
    }
}

/// Sends `message` to session `id` on `stream`, if the session still exists.
fn send_to(state: &mut State, id: &str, stream: StreamKey, message: Value) {
    if let Some(s) = state.sessions.get_mut(id) {
        s.send(stream, message);
    }
}

/// The routing rule for a server→client request: the session (and stream) that
/// must answer it, or the error code and the reason why no session may: -32601
/// when the client it belongs to (or every client) cannot answer it, -32005
/// when mcpod cannot tell which client it belongs to.
fn who_answers(
    state: &mut State,
    method: Method,
    request: &Value,
) -> Result<(String, StreamKey), (i64, String)> {
    let cannot = |reason: &str| (jsonrpc::METHOD_NOT_FOUND, reason.to_string());
    let candidates: Vec<&Active> = state.active.iter().filter(|a| a.may_ask).collect();
    let can_answer = |state: &State, id: &str| {
        state
            .sessions
            .get(id)
            .is_some_and(|s| s.capabilities.can_answer(method))
    };
    match state.attribute(request, &candidates) {
        Attribution::To(session, stream) if can_answer(state, &session) => Ok((session, stream)),
        Attribution::To(..) | Attribution::Stateless => Err(cannot(
            "the client whose request caused it did not declare that capability",
        )),
        Attribution::Ambiguous(n) => Err((
            jsonrpc::UNROUTABLE,
            format!(
                "{n} client requests in flight could have caused it; for per-client questions \
                 use sessionMode: Isolated"
            ),
        )),
        Attribution::Nobody => {
            // Roots are asked for after mcpod announced one session's roots.
            let asker = match method {
                Method::RootsList => state.roots_asker.take(),
                _ => None,
            };
            match asker {
                Some(session) if can_answer(state, &session) => Ok((session, STANDALONE)),
                _ => Err(cannot(
                    "no client request is in flight that could have caused it",
                )),
            }
        }
    }
}

/// The routing rule for a log message: to the one request it can be about,
/// when that request's client wants it; otherwise to nobody.
fn route_log(state: &mut State, notification: Value) {
    let severity = notification
        .pointer("/params/level")
        .and_then(Value::as_str)
        .and_then(log_severity);
    let candidates: Vec<&Active> = state.active.iter().collect();
    match state.attribute(&notification, &candidates) {
        Attribution::To(session, stream) => {
            if state
                .sessions
                .get(&session)
                .is_some_and(|s| s.wants_log(severity))
            {
                send_to(state, &session, stream, notification);
            }
        }
        _ => debug!("log message not attributable to one request; not sent to clients"),
    }
}

/// Change notifications for the listen streams that asked for them, each
/// stamped with its stream's subscription id.
fn notify_listeners(state: &State, method: Method, notification: &Value) {
    for listener in state
        .listeners
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

fn anyone_subscribed(state: &State, uri: &str, except: Option<&str>) -> bool {
    state
        .sessions
        .iter()
        .any(|(id, s)| Some(id.as_str()) != except && s.subscriptions.contains(uri))
        || state
            .listeners
            .iter()
            .any(|l| l.filter.resource_subscriptions.iter().any(|u| u == uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Arc<Caller> {
        Arc::new(Caller::local())
    }

    /// A session of the local user (protocol 2025-06-18) with `capabilities`.
    fn open(sessions: &Sessions, capabilities: ClientCapabilities) -> Arc<Session> {
        sessions
            .create(local(), "2025-06-18", capabilities, false)
            .unwrap()
    }

    fn caps(roots: bool) -> ClientCapabilities {
        ClientCapabilities {
            roots,
            ..Default::default()
        }
    }

    fn sampling() -> ClientCapabilities {
        ClientCapabilities {
            sampling: true,
            ..Default::default()
        }
    }

    fn call(id: i64) -> Value {
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"x"}})
    }

    #[test]
    fn progress_goes_back_to_its_request_with_the_clients_token() {
        let sessions = Sessions::default();
        let a = open(&sessions, caps(false));
        let b = open(&sessions, caps(false));
        let (_, mut stream_a) = a.open_request_stream(11);
        let (_, mut stream_b) = b.open_request_stream(12);
        let mut req_a = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":7}}});
        let mut req_b = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":7}}});
        let _guard_a = sessions.begin(Some(&a), 11, 11, &mut req_a);
        let _guard_b = sessions.begin(Some(&b), 12, 12, &mut req_b);
        let wire_b = req_b["params"]["_meta"]["progressToken"].clone();
        assert_ne!(req_a["params"]["_meta"]["progressToken"], wire_b);
        let progress = json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":wire_b,"progress":1}});
        assert_eq!(sessions.route(ServerMessage::Notification(progress)), None);
        let event = stream_b.try_recv().unwrap();
        assert_eq!(event.message["params"]["progressToken"], 7);
        assert!(stream_a.try_recv().is_err(), "only the owner gets it");
    }

    #[test]
    fn a_server_request_goes_to_the_one_request_in_flight_and_answers_map_back() {
        let sessions = Sessions::default();
        let plain = open(&sessions, caps(false));
        let asking = open(&sessions, sampling());
        let (_, mut asking_stream) = asking.open_request_stream(5);
        let (_, mut plain_stream) = plain.attach(None);
        let guard = sessions.begin(Some(&asking), 9, 5, &mut call(1));
        let request = json!({"jsonrpc":"2.0","id":42,"method":"sampling/createMessage"});
        assert_eq!(sessions.route(ServerMessage::Request(request)), None);
        let event = asking_stream.try_recv().unwrap();
        assert_eq!(event.message["method"], "sampling/createMessage");
        assert!(plain_stream.try_recv().is_err());
        let answer = json!({"jsonrpc":"2.0","id":event.message["id"],"result":{}});
        assert!(
            sessions.client_response(&plain, answer.clone()).is_none(),
            "another session cannot answer it"
        );
        let to_server = sessions.client_response(&asking, answer).unwrap();
        assert_eq!(to_server["id"], 42);
        drop(guard);
        // Nothing in flight: the server gets an error at once; ping is answered by mcpod.
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
    fn with_two_requests_in_flight_a_server_request_is_never_guessed() {
        let sessions = Sessions::default();
        let a = open(&sessions, caps(true));
        let b = open(&sessions, caps(true));
        let (_, mut sa) = a.open_request_stream(1);
        let (_, mut sb) = b.open_request_stream(2);
        let _ga = sessions.begin(Some(&a), 1, 1, &mut call(1));
        let _gb = sessions.begin(Some(&b), 2, 2, &mut call(1));
        let refused = sessions
            .route(ServerMessage::Request(
                json!({"jsonrpc":"2.0","id":1,"method":"roots/list"}),
            ))
            .unwrap();
        assert_eq!(refused["error"]["code"], jsonrpc::UNROUTABLE);
        assert!(refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Isolated"));
        let log = json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}});
        sessions.route(ServerMessage::Notification(log));
        assert!(
            sa.try_recv().is_err() && sb.try_recv().is_err(),
            "a log message two requests could have caused reaches neither"
        );
    }

    #[test]
    fn an_unsolicited_roots_question_goes_to_the_session_that_announced_roots() {
        let sessions = Sessions::default();
        let rooted = open(&sessions, caps(true));
        let (_, mut stream) = rooted.attach(None);
        sessions.expect_roots_question(&rooted);
        let ask = json!({"jsonrpc":"2.0","id":7,"method":"roots/list"});
        assert_eq!(sessions.route(ServerMessage::Request(ask.clone())), None);
        let event = stream.try_recv().unwrap();
        assert_eq!(event.message["method"], "roots/list");
        // Only once: a second unsolicited question has no known asker.
        assert!(sessions.route(ServerMessage::Request(ask)).is_some());
    }

    #[tokio::test]
    async fn clients_that_answer_personal_questions_take_the_turn_alone() {
        let sessions = Sessions::default();
        let asking = open(&sessions, sampling());
        let plain = open(&sessions, caps(false));
        let wait = Duration::from_millis(50);
        let first = sessions.take_turn(&plain, wait).await.unwrap();
        let second = sessions.take_turn(&plain, wait).await.unwrap();
        assert!(
            sessions.take_turn(&asking, wait).await.is_err(),
            "exclusive while others share"
        );
        drop((first, second));
        let exclusive = sessions.take_turn(&asking, wait).await.unwrap();
        assert!(sessions.take_turn(&plain, wait).await.is_err());
        drop(exclusive);
        assert!(sessions.take_turn(&plain, wait).await.is_ok());
    }

    #[tokio::test]
    async fn the_session_holding_the_turn_may_call_again_and_its_questions_still_reach_it() {
        let sessions = Sessions::default();
        let asking = open(&sessions, sampling());
        let plain = open(&sessions, caps(false));
        let wait = Duration::from_millis(50);
        let first = sessions.take_turn(&asking, wait).await.unwrap();
        let again = sessions.take_turn(&asking, wait).await.unwrap();
        assert!(sessions.take_turn(&plain, wait).await.is_err());
        let (_, mut stream) = asking.open_request_stream(7);
        let _a = sessions.begin(Some(&asking), 1, 7, &mut call(1));
        let _b = sessions.begin(Some(&asking), 2, 8, &mut call(2));
        let ask = json!({"jsonrpc":"2.0","id":5,"method":"sampling/createMessage"});
        assert_eq!(sessions.route(ServerMessage::Request(ask)), None);
        assert_eq!(
            stream.try_recv().unwrap().message["method"],
            "sampling/createMessage",
            "two requests of one client: the question is that client's"
        );
        drop(first);
        assert!(
            sessions.take_turn(&plain, wait).await.is_err(),
            "held while any of the session's requests is"
        );
        drop(again);
        assert!(sessions.take_turn(&plain, wait).await.is_ok());
        assert!(sessions.lock().turn_holder.is_none());
    }

    #[test]
    fn reconnect_with_last_event_id_loses_nothing() {
        let sessions = Sessions::default();
        let session = open(&sessions, caps(false));
        let (primed, mut first) = session.attach(None);
        session.send(STANDALONE, json!({"n": 1}));
        let seen = first.try_recv().unwrap();
        assert!(seen.id > primed);
        drop(first); // the connection drops
        session.send(STANDALONE, json!({"n": 2}));
        session.send(STANDALONE, json!({"n": 3}));
        let (_, mut second) = session.attach(Some(seen.id));
        let replayed: Vec<_> = std::iter::from_fn(|| second.try_recv().ok())
            .map(|e| e.message["n"].clone())
            .collect();
        assert_eq!(replayed, [json!(2), json!(3)]);
        session.send(STANDALONE, json!({"n": 4}));
        assert_eq!(second.try_recv().unwrap().message["n"], 4);
        // Resuming from the priming event alone replays everything after it.
        let (_, mut third) = session.attach(Some(primed));
        assert_eq!(third.try_recv().unwrap().message["n"], 1);
    }

    #[test]
    fn a_session_keeps_a_few_finished_request_streams_not_one_per_request() {
        let sessions = Sessions::default();
        let session = open(&sessions, caps(false));
        let mut answered = vec![];
        for n in 0..1_000 {
            let key = sessions.new_stream_key();
            let (primed, mut events) = session.open_request_stream(key);
            session.send(key, json!({"n": n}));
            session.finish_stream(key);
            assert_eq!(events.try_recv().unwrap().message["n"], n);
            assert!(events.try_recv().is_err(), "a finished stream closes");
            answered.push(primed);
        }
        let (streams, logged) = session.with(|s| (s.streams.len(), s.log.len())).unwrap();
        assert_eq!(streams, 0, "no entry is left for a finished stream");
        assert!(
            logged <= 2 * RESUMABLE_FINISHED_STREAMS,
            "{logged} events kept"
        );
        // The last request's answer can still be resumed, and the stream then ends.
        let (_, mut resumed) = session.attach(answered.last().copied());
        assert_eq!(resumed.try_recv().unwrap().message["n"], 999);
        assert!(matches!(
            resumed.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }

    #[test]
    fn notifications_reach_every_session_once_and_updates_only_subscribers() {
        let sessions = Sessions::default();
        let a = open(&sessions, caps(false));
        let b = open(&sessions, caps(false));
        let ((_, mut sa), (_, mut sb)) = (a.attach(None), b.attach(None));
        a.subscribe("file:///x");
        sessions.route(ServerMessage::Notification(
            json!({"jsonrpc":"2.0","method":"notifications/tools/list_changed"}),
        ));
        sessions.route(ServerMessage::Notification(json!({"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"file:///x"}})));
        let methods = |rx: &mut mpsc::Receiver<SseEvent>| -> Vec<Value> {
            std::iter::from_fn(|| rx.try_recv().ok())
                .map(|e| e.message["method"].clone())
                .collect()
        };
        assert_eq!(
            methods(&mut sa),
            [
                json!("notifications/tools/list_changed"),
                json!("notifications/resources/updated")
            ]
        );
        assert_eq!(
            methods(&mut sb),
            [json!("notifications/tools/list_changed")]
        );
    }

    #[test]
    fn cancellation_maps_the_clients_id_to_the_wire_id_of_its_own_session_only() {
        let sessions = Sessions::default();
        let session = open(&sessions, caps(false));
        let other = open(&sessions, caps(false));
        let mut request = json!({"jsonrpc":"2.0","id":"abc","method":"tools/call"});
        let guard = sessions.begin(Some(&session), 99, STANDALONE, &mut request);
        let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"abc"}});
        assert!(sessions.client_cancel(&other, cancel.clone()).is_none());
        assert_eq!(
            sessions.client_cancel(&session, cancel.clone()).unwrap()["params"]["requestId"],
            99
        );
        drop(guard);
        assert!(sessions.client_cancel(&session, cancel).is_none());
    }

    #[test]
    fn a_server_holds_at_most_its_limit_of_sessions() {
        let sessions = Sessions::with_limit(2);
        let a = open(&sessions, caps(false));
        let _b = open(&sessions, caps(false));
        let Err(refused) = sessions.create(local(), "2025-06-18", caps(false), false) else {
            panic!("a third session past the limit of two");
        };
        assert_eq!(
            refused.status(),
            warp::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(refused.retry_after().is_some());
        let _exchange = sessions.ephemeral(local(), "2026-07-28", caps(false), None);
        sessions.end(&a.id);
        assert!(sessions
            .create(local(), "2025-06-18", caps(false), false)
            .is_ok());
    }

    #[test]
    fn broadcasts_keep_the_sessions_replay_logs_within_one_shared_budget() {
        let sessions = Sessions::with_limit(100_000);
        let opened: Vec<_> = (0..2_000).map(|_| open(&sessions, caps(false))).collect();
        for n in 0..1_000 {
            let changed = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                                 "params": {"_meta": {"n": n}}});
            sessions.route(ServerMessage::Notification(changed));
        }
        let state = sessions.lock();
        let entries: usize = state.sessions.values().map(|s| s.log.len()).sum();
        assert!(entries <= BROADCAST_LOG_BUDGET, "{entries} entries");
        let one = &state.sessions[&opened[0].id];
        assert_eq!(one.log.len(), broadcast_log_limit(2_000));
        // The newest events are the ones kept: a client resumes from the latest.
        let last = one.log.back().unwrap();
        assert_eq!(last.event.message["params"]["_meta"]["n"], 999);
        assert_eq!(broadcast_log_limit(1), EVENT_LOG_LIMIT);
        assert_eq!(broadcast_log_limit(10_000), 50);
    }

    #[test]
    fn one_client_holds_at_most_its_share_of_sessions() {
        let sessions = Sessions::with_limit(10);
        sessions.set_limits(10, 2);
        let mut alice = Caller::local();
        alice.subject = "alice".into();
        alice.via = crate::auth::Via::ApiKey;
        let alice = Arc::new(alice);
        let first = sessions
            .create(alice.clone(), "2025-06-18", caps(false), false)
            .unwrap();
        let _second = sessions
            .create(alice.clone(), "2025-06-18", caps(false), false)
            .unwrap();
        let Err(refused) = sessions.create(alice.clone(), "2025-06-18", caps(false), false) else {
            panic!("a third session for one client past its share of two");
        };
        assert_eq!(refused.status(), warp::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.retry_after().is_some());
        assert_eq!(refused.code(), jsonrpc::RATE_LIMITED);
        // Another client is not held back by alice's sessions.
        assert!(sessions
            .create(local(), "2025-06-18", caps(false), false)
            .is_ok());
        sessions.end(&first.id);
        assert!(sessions
            .create(alice, "2025-06-18", caps(false), false)
            .is_ok());
    }

    #[test]
    fn session_ids_are_random_visible_ascii_and_ephemeral_ones_vanish() {
        let sessions = Sessions::default();
        let a = open(&sessions, caps(false));
        let b = open(&sessions, caps(false));
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        assert!(a.id.bytes().all(|c| (0x21..=0x7e).contains(&c)));
        let once = sessions.ephemeral(local(), "2026-07-28", caps(false), None);
        assert_eq!(sessions.len(), 2, "an exchange is not listed");
        assert!(sessions.get(&once.id).is_none());
        drop(once);
        assert_eq!(
            sessions.lock().sessions.len(),
            2,
            "and leaves nothing behind"
        );
        assert!(sessions.end(&a.id));
        assert!(sessions.get(&a.id).is_none());
        assert!(!sessions.end(&a.id));
    }
}
