//! `/mcp`: one MCP endpoint over every server mcpod serves, in every
//! transport the per-server endpoints speak: Streamable HTTP (handshake era,
//! 2025-03-26 batches included), the 2026-07-28 per-request era on the same
//! path, and legacy HTTP+SSE (2024-11-05) at `GET /sse` + `POST /messages`
//! ([`legacy`]).
//!
//! Tools and prompts are namespaced `<server><separator><name>` (default
//! separator `__`; server names never hold `_`, so the default cannot be
//! ambiguous); resources keep their URIs and are routed by the member that
//! lists them (or a URI template of it). Lists are the union of the members'
//! lists, each answered as on the member's own endpoint — from its catalog
//! while it is stopped, so listing starts no container — with access rules
//! and `spec.expose` applied per member. A call goes to its member only,
//! through [`call::request`] with the caller, starting that member alone. A
//! name two members would both answer to is listed by neither and refused,
//! and `/health` names it.
//!
//! Members are the servers the caller may use, except `Disabled` ones and
//! `sessionMode: Isolated` ones (a container per session has no place in a
//! shared endpoint). An aggregated session holds a real session on each
//! member it sent a request to ([`session`]), with the client's version and
//! capabilities: a member's requests to the client (sampling, elicitation,
//! roots), progress and log messages reach the client on the request's SSE
//! stream or the GET stream, its request ids prefixed with its name;
//! cancellations, answers, `roots/list_changed`, resource subscriptions and
//! `logging/setLevel` reach the members they concern. The GET stream also
//! carries `list_changed` whenever a member's recorded list changes or
//! members come or go, so the union the client lists next is already the new one.

pub(crate) mod legacy;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::{Buf, Filter};

use crate::access;
use crate::auth::Caller;
use crate::catalog::{self, List};
use crate::crd::{DesiredState, SessionMode};
use crate::mcp::call;
use crate::mcp::error::RequestError;
use crate::mcp::http::reply::{self, json_reply, status_only, HttpResponse};
use crate::mcp::http::{
    accepts, body, header, per_request, refuse, streamable, EndpointConfig, SESSION_HEADER,
    VERSION_HEADER,
};
use crate::mcp::message::{self as jsonrpc, Kind, Method};
use crate::mcp::sessions::{ClientCapabilities, STANDALONE, SUBSCRIPTION_ID_META_KEY};
use crate::mcp::version;
use crate::reconcile::Reconciler;
use crate::server::Server;
use session::AggregateSession;

pub use crate::mcp::http::DEFAULT_SEPARATOR;
/// Aggregated sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;
/// An aggregated session unused for this long is forgotten (the client re-initializes).
const SESSION_TTL: Duration = Duration::from_secs(3600);

/// Where a member is asked when not here: with several router replicas, the
/// replica that owns it (`src/kube/members.rs`). Called wherever a member
/// is asked; `None`: ask it here.
#[async_trait::async_trait]
pub trait MemberRoute: Send + Sync {
    /// The member's answer to `message` (its own names), when given elsewhere.
    async fn ask(&self, member: &Arc<Server>, message: &Value) -> Option<Value>;
}

tokio::task_local! {
    /// The headers of the aggregated request being answered: a request a
    /// [`MemberRoute`] sends elsewhere carries the client's credentials.
    pub static REQUEST_HEADERS: HeaderMap;
}

/// Which servers an aggregated endpoint serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `/mcp`: every server, each prefixed with its name.
    All,
    /// `/groups/…/mcp`: the members of the MCPServerGroup with this key (as
    /// `Reconciler::group` finds it), under the group's prefixes and separator.
    Group(String),
}

/// The aggregated endpoint's state.
pub struct Aggregate {
    reconciler: Arc<Reconciler>,
    scope: Scope,
    separator: String,
    max_body_bytes: usize,
    sessions: Mutex<HashMap<String, Arc<AggregateSession>>>,
    /// Names two members would both answer to, by list: what `/health` shows.
    collisions: Mutex<BTreeMap<&'static str, Vec<String>>>,
    /// Set with several router replicas: members another replica owns are asked there.
    member_route: OnceLock<Arc<dyn MemberRoute>>,
}

/// Where a request that one member answers goes, with the member's own names.
enum Routed {
    Member(Arc<Server>, Value),
    /// mcpod's own answer (the name reaches no member).
    Answered(Value),
}

impl Aggregate {
    pub fn new(reconciler: Arc<Reconciler>, config: &EndpointConfig) -> Arc<Aggregate> {
        Self::scoped(reconciler, config, Scope::All)
    }

    /// An endpoint over `scope`'s servers only.
    pub fn scoped(
        reconciler: Arc<Reconciler>,
        config: &EndpointConfig,
        scope: Scope,
    ) -> Arc<Aggregate> {
        Arc::new(Aggregate {
            reconciler,
            scope,
            separator: config.tool_separator.clone(),
            max_body_bytes: config.max_body_bytes,
            sessions: Mutex::default(),
            collisions: Mutex::default(),
            member_route: OnceLock::new(),
        })
    }

    /// Asks members through `route` from now on (set once).
    pub fn route_members(&self, route: Arc<dyn MemberRoute>) {
        let _ = self.member_route.set(route);
    }

    /// Name collisions found when the aggregated lists were last made.
    pub fn problems(&self) -> Vec<String> {
        self.collisions
            .lock()
            .unwrap()
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// The servers `caller` reaches through this endpoint, by name: the one
    /// place membership is decided (a group's is read anew on every call, so
    /// a server relabelled in or out counts at once).
    fn members(&self, caller: &Caller) -> Vec<Arc<Server>> {
        let servers = match &self.scope {
            Scope::All => self.reconciler.servers(),
            Scope::Group(key) => match self.reconciler.group(key) {
                Some((group, membership)) => membership
                    .members
                    .iter()
                    .filter_map(|m| self.reconciler.group_member(&group, &m.server))
                    .collect(),
                None => vec![],
            },
        };
        let mut members: Vec<Arc<Server>> = servers
            .into_iter()
            .filter(|server| {
                let workload = server.workload();
                workload.session_mode == SessionMode::Shared
                    && workload.desired_state != DesiredState::Disabled
                    && access::may_use(server, caller).is_ok()
            })
            .collect();
        members.sort_by(|a, b| a.name().cmp(b.name()));
        members
    }

    /// What `server`'s tools and prompts are prefixed with here.
    fn prefix(&self, server: &Server) -> String {
        let Scope::Group(key) = &self.scope else {
            return server.name().to_string();
        };
        let own = server.name().rsplit('/').next().unwrap_or_default();
        self.reconciler
            .group(key)
            .and_then(|(_, membership)| membership.prefix_of(own).map(str::to_string))
            .unwrap_or_else(|| own.to_string())
    }

    /// The separator between a prefix and a member's own name here.
    fn separator(&self) -> String {
        match &self.scope {
            Scope::All => self.separator.clone(),
            Scope::Group(key) => self
                .reconciler
                .group(key)
                .map(|(group, _)| group.spec.separator().to_string())
                .unwrap_or_else(|| self.separator.clone()),
        }
    }

    /// The group's own instructions, put before its members'.
    fn scope_instructions(&self) -> Option<String> {
        let Scope::Group(key) = &self.scope else {
            return None;
        };
        self.reconciler.group(key)?.0.spec.instructions
    }

    /// Keeps a new session; expired ones (and the least recently used one
    /// past the limit) end, with their member sessions.
    fn keep_session(&self, session: Arc<AggregateSession>) {
        let ended = {
            let mut sessions = self.sessions.lock().unwrap();
            let mut ended: Vec<Arc<AggregateSession>> = vec![];
            sessions.retain(|_, s| {
                let keep = s.idle() < SESSION_TTL;
                if !keep {
                    ended.push(s.clone());
                }
                keep
            });
            if sessions.len() >= MAX_SESSIONS {
                let oldest = sessions
                    .values()
                    .min_by_key(|s| s.last_used())
                    .map(|s| s.id.clone());
                ended.extend(oldest.and_then(|id| sessions.remove(&id)));
            }
            sessions.insert(session.id.clone(), session);
            ended
        };
        for session in ended {
            session.close();
        }
    }

    /// `caller`'s live session `id` (someone else's is not found).
    fn session(&self, id: &str, caller: &Caller) -> Option<Arc<AggregateSession>> {
        let session = self
            .sessions
            .lock()
            .unwrap()
            .get(id)
            .filter(|s| s.belongs_to(caller))
            .cloned()?;
        session.touch();
        Some(session)
    }

    /// DELETE: the client ends its session, and with it every member session.
    pub(crate) fn delete(&self, caller: &Caller, headers: &HeaderMap) -> HttpResponse {
        if per_request::requested(headers) {
            return reply::method_not_allowed("POST");
        }
        match header(headers, SESSION_HEADER) {
            Some(id) if self.end_session(id, caller) => status_only(StatusCode::OK),
            Some(_) => refuse(RequestError::SessionNotFound),
            None => refuse(RequestError::MissingSession),
        }
    }

    fn end_session(&self, id: &str, caller: &Caller) -> bool {
        let Some(session) = self.session(id, caller) else {
            return false;
        };
        self.sessions.lock().unwrap().remove(id);
        session.close();
        true
    }

    /// GET: the session's stream of what its members send on their own
    /// (server→client requests, resource updates, log messages), and
    /// `list_changed` when a member's list or the set of members changes.
    pub(crate) fn listen(self: Arc<Self>, caller: Caller, headers: &HeaderMap) -> HttpResponse {
        // 2026-07-28 has no GET stream: `subscriptions/listen` is a POST.
        if per_request::requested(headers) {
            return reply::method_not_allowed("POST");
        }
        if !accepts(headers).sse {
            return refuse(RequestError::NotAcceptable(
                "GET needs Accept: text/event-stream",
            ));
        }
        let Some(id) = header(headers, SESSION_HEADER) else {
            return refuse(RequestError::MissingSession);
        };
        let Some(session) = self.session(id, &caller) else {
            return refuse(RequestError::SessionNotFound);
        };
        let (outlet, messages) = mpsc::channel(session::STREAM_QUEUE);
        session.attach(outlet.clone());
        tokio::spawn(self.watch_lists(caller, outlet, session.ended()));
        debug!(session = %session.id, "aggregated GET stream opened");
        events_of(messages)
    }

    /// Sends `list_changed` on `outlet` when a member's recorded list changes
    /// or members come or go, until the session or its stream ends.
    /// Subscribes at once (a change right after the stream opens counts);
    /// the returned task sends.
    fn watch_lists(
        self: Arc<Self>,
        caller: Caller,
        outlet: mpsc::Sender<Value>,
        ended: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut members = self.members(&caller);
        let (changed, mut changes) = mpsc::channel::<Value>(16);
        for member in &members {
            tokio::spawn(catalog_changes(member, changed.clone()));
        }
        let mut servers = self.reconciler.changes();
        async move {
            tokio::pin!(ended);
            loop {
                let note = tokio::select! {
                    _ = &mut ended => return,
                    _ = outlet.closed() => return,
                    Some(note) = changes.recv() => vec![note],
                    Ok(()) = servers.changed() => {
                        let now = self.members(&caller);
                        let names = |m: &[Arc<Server>]| m.iter().map(|s| s.name().to_string()).collect::<Vec<_>>();
                        if names(&now) == names(&members) {
                            continue;
                        }
                        for member in now.iter().filter(|m| !members.iter().any(|old| Arc::ptr_eq(old, m))) {
                            tokio::spawn(catalog_changes(member, changed.clone()));
                        }
                        members = now;
                        [List::Tools, List::Prompts, List::Resources]
                            .into_iter()
                            .map(|list| jsonrpc::notification(list.changed_notification(), None))
                            .collect()
                    }
                };
                for note in note {
                    if outlet.send(note).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    pub(crate) async fn post<S, B>(
        self: Arc<Self>,
        caller: Caller,
        headers: &HeaderMap,
        body: S,
    ) -> HttpResponse
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin,
        B: Buf,
    {
        if let Some(requested) = header(headers, VERSION_HEADER) {
            if !version::is_known(requested) {
                return refuse(RequestError::unsupported_version(requested, version::all()));
            }
        }
        let accept = accepts(headers);
        if !accept.json && !accept.sse {
            return refuse(RequestError::NotAcceptable(
                "Accept must allow application/json or text/event-stream",
            ));
        }
        let message = match body::read_json(body, self.max_body_bytes).await {
            Ok(message) => message,
            Err(error) => return refuse(error),
        };
        // 2026-07-28 and later: one self-contained request, no session.
        if per_request::requested(headers) {
            return self.per_request(caller, headers, accept.sse, message).await;
        }
        let kind = jsonrpc::classify(&message);
        if kind == Some(Kind::Request) && Method::of(&message) == Method::Initialize {
            let response = self.initialize(&caller, &message).await;
            let mut reply = json_reply(StatusCode::OK, &response);
            let session = AggregateSession::new(
                Arc::new(caller),
                streamable::negotiate_version(&message),
                ClientCapabilities::from_initialize(&message),
                false,
            );
            reply.headers_mut().insert(
                SESSION_HEADER,
                session.id.parse().expect("hex is a valid header value"),
            );
            self.keep_session(session);
            return reply;
        }
        let session = match header(headers, SESSION_HEADER) {
            Some(id) => match self.session(id, &caller) {
                Some(session) => Some(session),
                None => return refuse(RequestError::SessionNotFound),
            },
            // A Streamable HTTP client must use its session; a plain JSON one may go without.
            None if accept.sse => return refuse(RequestError::MissingSession),
            None => None,
        };
        if let Value::Array(batch) = message {
            return self.batch(&caller, session, headers, batch).await;
        }
        match kind {
            None => json_reply(
                StatusCode::BAD_REQUEST,
                &streamable::invalid_request(&message),
            ),
            Some(Kind::Notification) | Some(Kind::Response) => {
                if let Some(session) = session {
                    session.one_way(message);
                }
                status_only(StatusCode::ACCEPTED)
            }
            Some(Kind::Request) => match session {
                Some(session) if accept.sse => self.sse_answer(caller, session, message),
                session => {
                    let response = self.answer(&caller, session.as_ref(), message, None).await;
                    json_reply(StatusCode::OK, &response)
                }
            },
        }
    }

    /// Answers one request with an SSE stream: what its member sends about
    /// it (questions for the client, progress, log messages), then the response.
    fn sse_answer(
        self: Arc<Self>,
        caller: Caller,
        session: Arc<AggregateSession>,
        message: Value,
    ) -> HttpResponse {
        let (events, messages) = mpsc::channel(session::STREAM_QUEUE);
        let task = async move {
            let response = self
                .answer(&caller, Some(&session), message, Some(&events))
                .await;
            let _ = events.send(response).await;
        };
        spawn_for_request(task);
        events_of(messages)
    }

    /// JSON-RPC batches exist only in protocol version 2025-03-26.
    async fn batch(
        &self,
        caller: &Caller,
        session: Option<Arc<AggregateSession>>,
        headers: &HeaderMap,
        batch: Vec<Value>,
    ) -> HttpResponse {
        let version =
            streamable::batch_version(session.as_ref().map(|s| s.protocol_version()), headers);
        let request = |message| {
            let session = session.clone();
            async move { self.answer(caller, session.as_ref(), message, None).await }
        };
        let one_way = |message| {
            if let Some(session) = &session {
                session.one_way(message);
            }
        };
        streamable::answer_batch(&version, batch, request, one_way).await
    }

    /// A 2026-07-28 request: lists and `server/discover` answered here, a
    /// request for one member handed to that member's per-request endpoint
    /// under its own names.
    async fn per_request(
        self: &Arc<Self>,
        caller: Caller,
        headers: &HeaderMap,
        sse: bool,
        message: Value,
    ) -> HttpResponse {
        let (id, method) = match per_request::envelope(headers, message.clone()) {
            Ok(Some(checked)) => checked,
            Ok(None) => return status_only(StatusCode::ACCEPTED),
            Err((id, error)) => return error.reply(id),
        };
        let response = match method {
            Method::ServerDiscover => {
                let mut intro = self.introduction(&caller).await;
                intro.remove("protocolVersion");
                intro.insert("supportedVersions".into(), json!(version::PER_REQUEST));
                jsonrpc::result(id, Value::Object(intro))
            }
            Method::ToolsList
            | Method::PromptsList
            | Method::ResourcesList
            | Method::ResourcesTemplatesList => self.list(&caller, message).await,
            Method::SubscriptionsListen => {
                return self.clone().listen_to_lists(caller, sse, id, &message)
            }
            Method::ToolsCall
            | Method::PromptsGet
            | Method::ResourcesRead
            | Method::CompletionComplete => match self.route(&caller, message).await {
                Routed::Member(server, message) => {
                    let mut headers = headers.clone();
                    if let Some(name) = message.pointer("/params/name").and_then(Value::as_str) {
                        if let Ok(name) = name.parse() {
                            headers.insert(per_request::NAME_HEADER, name);
                        }
                    }
                    return per_request::post(server, Arc::new(caller), &headers, sse, message)
                        .await;
                }
                Routed::Answered(response) => response,
            },
            _ => jsonrpc::error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                format!(
                    "{} is not served by the aggregated endpoint /mcp in protocol version \
                     2026-07-28; use the server's own endpoint /mcp/{{name}}",
                    jsonrpc::method(&message).unwrap_or_default()
                ),
            ),
        };
        per_request::local_reply(method, response)
    }

    /// 2026-07-28 `subscriptions/listen`: a stream of the list changes the
    /// client asked for — a member's list changed, or members came or went —
    /// each stamped with the subscription's id. Resource subscriptions are a
    /// member's own: they are not honored here (the acknowledgement says so),
    /// but on the member's endpoint.
    fn listen_to_lists(
        self: Arc<Self>,
        caller: Caller,
        sse: bool,
        id: Value,
        message: &Value,
    ) -> HttpResponse {
        if !sse {
            return RequestError::NotAcceptable(
                "subscriptions/listen answers with a stream: Accept must allow text/event-stream",
            )
            .reply(id);
        }
        let asked = message
            .pointer("/params/notifications")
            .cloned()
            .unwrap_or_default();
        let honored: Vec<(&str, Method)> = [
            ("toolsListChanged", Method::ToolsListChanged),
            ("promptsListChanged", Method::PromptsListChanged),
            ("resourcesListChanged", Method::ResourcesListChanged),
        ]
        .into_iter()
        .filter(|(key, _)| asked.get(*key).and_then(Value::as_bool) == Some(true))
        .collect();
        let acknowledged: serde_json::Map<String, Value> = honored
            .iter()
            .map(|(key, _)| (key.to_string(), json!(true)))
            .collect();
        let ack = jsonrpc::notification(
            Method::SubscriptionsAcknowledged,
            Some(json!({"notifications": acknowledged, "_meta": {SUBSCRIPTION_ID_META_KEY: id}})),
        );
        let (outlet, changes) = mpsc::channel(session::STREAM_QUEUE);
        // Ends when the client leaves (the outlet closes with the stream).
        tokio::spawn(self.watch_lists(caller, outlet, std::future::pending()));
        let wanted: Vec<Method> = honored.into_iter().map(|(_, method)| method).collect();
        let frames = futures::stream::unfold(changes, move |mut changes| {
            let (wanted, id) = (wanted.clone(), id.clone());
            async move {
                loop {
                    let mut note = changes.recv().await?;
                    if wanted.contains(&Method::of(&note)) {
                        note["params"]["_meta"][SUBSCRIPTION_ID_META_KEY] = id;
                        return Some((note, changes));
                    }
                }
            }
        });
        let events = futures::stream::iter([ack])
            .chain(frames)
            .map(|frame| reply::message_event(None, &frame));
        reply::sse(events)
    }

    /// `initialize`: the members' introductions as one.
    async fn initialize(&self, caller: &Caller, message: &Value) -> Value {
        let mut intro = self.introduction(caller).await;
        intro.insert(
            "protocolVersion".into(),
            json!(streamable::negotiate_version(message)),
        );
        jsonrpc::result(jsonrpc::id(message), Value::Object(intro))
    }

    /// The union of the members' introductions (from their catalogs while
    /// stopped; a member never seen running is started once to learn it).
    async fn introduction(&self, caller: &Caller) -> serde_json::Map<String, Value> {
        let members = self.members(caller);
        let intros =
            futures::future::join_all(members.iter().map(|member| member.initialize_result()))
                .await;
        // Logging is mcpod's own: it remembers the level for every member.
        let mut capabilities = serde_json::Map::from_iter([("logging".to_string(), json!({}))]);
        let mut instructions: Vec<String> = self.scope_instructions().into_iter().collect();
        for (server, intro) in members.iter().zip(intros) {
            let intro = match intro {
                Ok(intro) => intro,
                Err(error) => {
                    warn!(server = server.name(), %error, "member left out of /mcp's initialize");
                    continue;
                }
            };
            let offered = intro.get("capabilities").and_then(Value::as_object);
            for name in ["tools", "prompts", "resources"] {
                if offered.is_some_and(|c| c.contains_key(name)) {
                    let entry = capabilities
                        .entry(name)
                        .or_insert_with(|| json!({"listChanged": true}));
                    let subscribe = offered
                        .and_then(|c| c.get(name))
                        .and_then(|c| c.get("subscribe"))
                        .and_then(Value::as_bool);
                    if name == "resources" && subscribe == Some(true) {
                        entry["subscribe"] = json!(true);
                    }
                }
            }
            if offered.is_some_and(|c| c.contains_key("completions")) {
                capabilities.insert("completions".to_string(), json!({}));
            }
            if let Some(text) = intro.get("instructions").and_then(Value::as_str) {
                instructions.push(format!("## {}\n{text}", server.name()));
            }
        }
        let mut result = serde_json::Map::from_iter([
            ("capabilities".to_string(), Value::Object(capabilities)),
            (
                "serverInfo".to_string(),
                json!({"name": "mcpod", "version": env!("CARGO_PKG_VERSION")}),
            ),
        ]);
        if !instructions.is_empty() {
            result.insert("instructions".into(), json!(instructions.join("\n\n")));
        }
        result
    }

    /// One request of the aggregated session (none: a stateless client): its
    /// response, always one, with the request's id. With `events`, what the
    /// member sends about it goes there first.
    async fn answer(
        &self,
        caller: &Caller,
        session: Option<&Arc<AggregateSession>>,
        message: Value,
        events: Option<&mpsc::Sender<Value>>,
    ) -> Value {
        let id = jsonrpc::id(&message);
        match (Method::of(&message), session) {
            (Method::Ping, _) => jsonrpc::result(id, json!({})),
            (Method::LoggingSetLevel, Some(session)) => session.set_level(caller, &message).await,
            (Method::LoggingSetLevel, None) => jsonrpc::result(id, json!({})),
            (
                Method::ToolsList
                | Method::PromptsList
                | Method::ResourcesList
                | Method::ResourcesTemplatesList,
                _,
            ) => self.list(caller, message).await,
            (
                Method::ToolsCall
                | Method::PromptsGet
                | Method::ResourcesRead
                | Method::ResourcesSubscribe
                | Method::ResourcesUnsubscribe
                | Method::CompletionComplete,
                _,
            ) => match self.route(caller, message).await {
                Routed::Member(server, message) => {
                    self.forward(&server, caller, session, message, events)
                        .await
                }
                Routed::Answered(response) => response,
            },
            _ => jsonrpc::error(
                id,
                jsonrpc::METHOD_NOT_FOUND,
                format!(
                    "{} is not served by the aggregated endpoint /mcp; use the server's own endpoint /mcp/{{name}}",
                    jsonrpc::method(&message).unwrap_or_default()
                ),
            ),
        }
    }

    /// A list request: the union of the members' lists.
    async fn list(&self, caller: &Caller, message: Value) -> Value {
        let id = jsonrpc::id(&message);
        let Some(list) = List::of(Method::of(&message)) else {
            return jsonrpc::error(id, jsonrpc::METHOD_NOT_FOUND, "not a list");
        };
        let result = match list {
            List::Tools | List::Prompts => self.namespaced_list(caller, list).await,
            List::Resources | List::ResourceTemplates => {
                let items: Vec<Value> = self
                    .lists(caller, list)
                    .await
                    .into_iter()
                    .flat_map(|(_, items)| items)
                    .collect();
                json!({ list.key(): items })
            }
        };
        jsonrpc::result(id, result)
    }

    /// The member a request for one tool, prompt, resource or completion goes
    /// to, and the request under the member's own names.
    async fn route(&self, caller: &Caller, mut message: Value) -> Routed {
        let id = jsonrpc::id(&message);
        let method = Method::of(&message);
        match method {
            Method::ToolsCall | Method::PromptsGet => {
                let kind = if method == Method::ToolsCall {
                    "tool"
                } else {
                    "prompt"
                };
                let name = message.pointer("/params/name").and_then(Value::as_str);
                match name.map(|name| self.owner_by_name(caller, name)) {
                    Some(Ok((server, own))) => {
                        message["params"]["name"] = json!(own);
                        Routed::Member(server, message)
                    }
                    Some(Err(why)) => {
                        Routed::Answered(jsonrpc::error(id, jsonrpc::INVALID_PARAMS, why.of(kind)))
                    }
                    None => Routed::Answered(jsonrpc::error(
                        id,
                        jsonrpc::INVALID_PARAMS,
                        format!("{kind} name required"),
                    )),
                }
            }
            Method::CompletionComplete => self.complete(caller, message).await,
            // resources/read, subscribe and unsubscribe: to the URI's owner.
            _ => {
                let uri = message.pointer("/params/uri").and_then(Value::as_str);
                let owner = match uri {
                    Some(uri) => self.owner_by_uri(caller, uri).await,
                    None => None,
                };
                match owner {
                    Some(server) => Routed::Member(server, message),
                    None => Routed::Answered(jsonrpc::error(
                        id,
                        jsonrpc::INVALID_PARAMS,
                        format!("Unknown resource: {}", uri.unwrap_or_default()),
                    )),
                }
            }
        }
    }

    /// `completion/complete`: a prompt argument goes to the prompt's member,
    /// a resource template's to the template's.
    async fn complete(&self, caller: &Caller, mut message: Value) -> Routed {
        let id = jsonrpc::id(&message);
        let reference = message.pointer("/params/ref").cloned().unwrap_or_default();
        let owner = match reference["type"].as_str() {
            Some("ref/prompt") => match reference["name"].as_str() {
                Some(name) => match self.owner_by_name(caller, name) {
                    Ok((server, own)) => {
                        message["params"]["ref"]["name"] = json!(own);
                        Some(server)
                    }
                    Err(_) => None,
                },
                None => None,
            },
            Some("ref/resource") => match reference["uri"].as_str() {
                Some(uri) => self.owner_by_uri(caller, uri).await,
                None => None,
            },
            _ => None,
        };
        match owner {
            Some(server) => Routed::Member(server, message),
            None => Routed::Answered(jsonrpc::error(
                id,
                jsonrpc::INVALID_PARAMS,
                "Unknown completion reference",
            )),
        }
    }

    /// A request to one member: in the member session of `session`, or as a
    /// stateless client of the member's endpoint. Whatever happens to the
    /// member, the answer is one response with the request's id.
    async fn forward(
        &self,
        server: &Arc<Server>,
        caller: &Caller,
        session: Option<&Arc<AggregateSession>>,
        message: Value,
        events: Option<&mpsc::Sender<Value>>,
    ) -> Value {
        let id = jsonrpc::id(&message);
        if let Some(answer) = ask_elsewhere(self.member_route.get(), server, &message).await {
            return answer;
        }
        if let Err(error) = access::rate_limit(server, caller, &message) {
            return error.to_jsonrpc(id);
        }
        debug!(
            member = server.name(),
            method = jsonrpc::method(&message).unwrap_or_default(),
            "aggregated request"
        );
        let outcome = match session {
            Some(session) => session.forward(server, caller, message, events).await,
            None => call::request(server, caller, None, STANDALONE, message).await,
        };
        let mut response = outcome.unwrap_or_else(|error| error.to_jsonrpc(id.clone()));
        // The member's answer carries the client's id already; made sure of.
        response["id"] = id;
        response
    }

    /// Each member's items of `list`, all pages, as its own endpoint lists
    /// them for `caller`; a member that cannot answer is left out (and logged).
    async fn lists(&self, caller: &Caller, list: List) -> Vec<(Arc<Server>, Vec<Value>)> {
        let members = self.members(caller);
        let lists = members
            .iter()
            .map(|server| member_items(self.member_route.get(), server, caller, list));
        let lists = futures::future::join_all(lists).await;
        members
            .into_iter()
            .zip(lists)
            .filter_map(|(server, items)| items.map(|items| (server, items)))
            .collect()
    }

    /// The union of the members' tools or prompts under namespaced names; a
    /// name two members share is listed by neither, and reported.
    async fn namespaced_list(&self, caller: &Caller, list: List) -> Value {
        let mut by_name: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        for (server, items) in self.lists(caller, list).await {
            for mut item in items {
                let Some(own) = item.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let name = format!("{}{}{own}", self.prefix(&server), self.separator());
                item["name"] = json!(name);
                by_name
                    .entry(name)
                    .or_default()
                    .push((server.name().to_string(), item));
            }
        }
        let mut collisions = vec![];
        let mut items = vec![];
        for (name, mut offers) in by_name {
            if offers.len() == 1 {
                items.push(offers.pop().expect("one").1);
            } else {
                let owners: Vec<String> = offers.into_iter().map(|(server, _)| server).collect();
                collisions.push(format!(
                    "/mcp: the {} name '{name}' is offered by {}: neither is listed or callable there \
                     (rename one with spec.expose.{}.overrides, or choose another --tool-separator)",
                    &list.key()[..list.key().len() - 1],
                    owners.join(" and "),
                    list.key()
                ));
            }
        }
        for collision in &collisions {
            warn!("{collision}");
        }
        self.collisions
            .lock()
            .unwrap()
            .insert(list.key(), collisions);
        json!({ list.key(): items })
    }

    /// The member whose tool or prompt a namespaced `name` is, and that
    /// member's own name for it.
    fn owner_by_name(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(Arc<Server>, String), NotRouted> {
        let mut owners: Vec<(Arc<Server>, String)> = self
            .members(caller)
            .into_iter()
            .filter_map(|server| {
                let prefix = format!("{}{}", self.prefix(&server), self.separator());
                let own = name.strip_prefix(&prefix)?.to_string();
                (!own.is_empty()).then_some((server, own))
            })
            .collect();
        match owners.len() {
            0 => Err(NotRouted::Unknown(name.to_string())),
            1 => Ok(owners.pop().expect("one")),
            _ => Err(NotRouted::Ambiguous(
                name.to_string(),
                owners.iter().map(|(s, _)| s.name().to_string()).collect(),
            )),
        }
    }

    /// The member that lists resource `uri`, or a template that covers it.
    async fn owner_by_uri(&self, caller: &Caller, uri: &str) -> Option<Arc<Server>> {
        for (server, items) in self.lists(caller, List::Resources).await {
            if items.iter().any(|r| r["uri"].as_str() == Some(uri)) {
                return Some(server);
            }
        }
        for (server, items) in self.lists(caller, List::ResourceTemplates).await {
            let covers = |template: &str| {
                let prefix = template.split('{').next().unwrap_or_default();
                !prefix.is_empty() && uri.starts_with(prefix)
            };
            if items
                .iter()
                .any(|t| t["uriTemplate"].as_str().is_some_and(covers))
            {
                return Some(server);
            }
        }
        None
    }
}

/// Why a namespaced name reaches no member.
enum NotRouted {
    Unknown(String),
    Ambiguous(String, Vec<String>),
}

impl NotRouted {
    fn of(&self, kind: &str) -> String {
        match self {
            NotRouted::Unknown(name) => format!("Unknown {kind}: {name}"),
            NotRouted::Ambiguous(name, owners) => format!(
                "the {kind} name '{name}' is offered by {} (a collision, see /health): call it on \
                 the server's own endpoint",
                owners.join(" and ")
            ),
        }
    }
}

/// Spawns the task that answers a request, in the request's span and with
/// its headers (task-locals do not cross `tokio::spawn`).
fn spawn_for_request<F>(task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let headers = REQUEST_HEADERS
        .try_with(HeaderMap::clone)
        .unwrap_or_default();
    tokio::spawn(REQUEST_HEADERS.scope(headers, task).in_current_span());
}

/// The answer of a member asked elsewhere through `route`, if it was.
async fn ask_elsewhere(
    route: Option<&Arc<dyn MemberRoute>>,
    server: &Arc<Server>,
    message: &Value,
) -> Option<Value> {
    route?.ask(server, message).await
}

/// All pages of one member's `list`, asked as a stateless client of its endpoint.
async fn member_items(
    route: Option<&Arc<dyn MemberRoute>>,
    server: &Arc<Server>,
    caller: &Caller,
    list: List,
) -> Option<Vec<Value>> {
    // A member without such a list (method not found) has none to add.
    catalog::all_pages(list, |request| async move {
        if let Some(answer) = ask_elsewhere(route, server, &request).await {
            return Some(answer);
        }
        match call::request(server, caller, None, STANDALONE, request).await {
            Ok(response) => Some(response),
            Err(error) => {
                warn!(member = server.name(), list = list.key(), %error, "member left out of /mcp's list");
                None
            }
        }
    })
    .await
}

/// An SSE response of one aggregated stream's messages, each with its own
/// event id (these streams are not resumed: a client re-sends or re-opens).
fn events_of(messages: mpsc::Receiver<Value>) -> HttpResponse {
    let events = futures::stream::unfold((messages, 0u64), |(mut messages, n)| async move {
        let message = messages.recv().await?;
        Some((
            reply::message_event(Some(n + 1), &message),
            (messages, n + 1),
        ))
    });
    reply::sse(events)
}

/// Sends `list_changed` to `changed` whenever `member`'s recorded list
/// changes, until nobody listens (subscribed at once, sent by the task).
fn catalog_changes(
    member: &Arc<Server>,
    changed: mpsc::Sender<Value>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let changes = member.catalog().subscribe();
    send_catalog_changes(changes, changed)
}

async fn send_catalog_changes(
    mut changes: tokio::sync::broadcast::Receiver<List>,
    changed: mpsc::Sender<Value>,
) {
    loop {
        let list = tokio::select! {
            _ = changed.closed() => return,
            list = changes.recv() => match list {
                Ok(list) => list,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        };
        let note = jsonrpc::notification(list.changed_notification(), None);
        if changed.send(note).await.is_err() {
            return;
        }
    }
}

/// `POST|GET|DELETE /mcp`, and the legacy `GET /sse` + `POST /messages`.
pub fn routes(
    aggregate: Arc<Aggregate>,
    caller: BoxedFilter<(Caller,)>,
) -> impl Filter<Extract = (HttpResponse,), Error = warp::Rejection> + Clone {
    let aggregate_for_legacy = aggregate.clone();
    let with = warp::any().map(move || aggregate.clone());
    let post = warp::path!("mcp")
        .and(warp::post())
        .and(with.clone())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |aggregate: Arc<Aggregate>, caller: Caller, headers: HeaderMap, body| async move {
                let span = tracing::debug_span!("mcp", server = "*", caller = %caller);
                let answer = aggregate.post(caller, &headers, body).instrument(span);
                REQUEST_HEADERS.scope(headers.clone(), answer).await
            },
        );
    let get = warp::path!("mcp")
        .and(warp::get())
        .and(with.clone())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .map(
            |aggregate: Arc<Aggregate>, caller: Caller, headers: HeaderMap| {
                aggregate.listen(caller, &headers)
            },
        );
    let legacy = legacy::routes(aggregate_for_legacy, caller.clone());
    let delete = warp::path!("mcp")
        .and(warp::delete())
        .and(with)
        .and(caller)
        .and(warp::header::headers_cloned())
        .map(
            |aggregate: Arc<Aggregate>, caller: Caller, headers: HeaderMap| {
                aggregate.delete(&caller, &headers)
            },
        );
    post.or(get).unify().or(delete).unify().or(legacy).unify()
}
