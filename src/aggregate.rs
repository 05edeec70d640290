//! `/mcp`: one MCP endpoint (Streamable HTTP) over every server mcpod serves.
//!
//! Tools and prompts are namespaced `<server><separator><name>` (default
//! separator `__`; server names never hold `_`, so the default cannot be
//! ambiguous); resources keep their URIs and are routed by the member that
//! lists them. Lists are the union of the members' lists, each answered as on
//! the member's own endpoint — from its catalog while it is stopped, so
//! listing starts no container — with access rules and `spec.expose` applied
//! per member. A call goes to its member only, through [`call::request`] with
//! the caller, starting that member alone. A name two members would both
//! answer to is listed by neither and refused, and `/health` names it.
//!
//! Members are the servers the caller may use, except `Disabled` ones and
//! `sessionMode: Isolated` ones (a container per session has no place in a
//! shared endpoint). Members are asked statelessly: a member's own requests to
//! the client (sampling, elicitation), progress and log messages do not reach
//! the aggregated session. What does is `list_changed`: a session's GET stream
//! carries one whenever a member's recorded list changes (the member said so,
//! or it started with other tools than the catalog had), so the union the
//! client lists next is already the new one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use serde_json::{json, Value};
use tracing::{debug, warn};
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
    accepts, body, header, refuse, streamable, EndpointConfig, SESSION_HEADER, VERSION_HEADER,
};
use crate::mcp::message::{self as jsonrpc, Kind, Method};
use crate::mcp::sessions::STANDALONE;
use crate::mcp::version;
use crate::reconcile::Reconciler;
use crate::server::Server;

pub use crate::mcp::http::DEFAULT_SEPARATOR;
/// Aggregated sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;
/// An aggregated session unused for this long is forgotten (the client re-initializes).
const SESSION_TTL: Duration = Duration::from_secs(3600);

/// One client's session of the aggregated endpoint: only who owns it and
/// when it was last used (members are asked statelessly).
struct AggregateSession {
    subject: String,
    via: crate::auth::Via,
    last_used: Instant,
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
    sessions: Mutex<HashMap<String, AggregateSession>>,
    /// Names two members would both answer to, by list: what `/health` shows.
    collisions: Mutex<BTreeMap<&'static str, Vec<String>>>,
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
        })
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

    fn open_session(&self, caller: &Caller) -> String {
        let bytes: [u8; 16] = rand::random();
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut sessions = self.sessions.lock().unwrap();
        sessions.retain(|_, s| s.last_used.elapsed() < SESSION_TTL);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            AggregateSession {
                subject: caller.subject.clone(),
                via: caller.via.clone(),
                last_used: Instant::now(),
            },
        );
        id
    }

    /// Whether `id` is a live session of `caller` (someone else's is not found).
    fn use_session(&self, id: &str, caller: &Caller) -> bool {
        let mut sessions = self.sessions.lock().unwrap();
        match sessions.get_mut(id) {
            Some(s) if s.subject == caller.subject && s.via == caller.via => {
                s.last_used = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// GET: the session's stream of `list_changed` notifications, from the
    /// members' catalogs (the members of when it opened).
    pub(crate) fn listen(self: Arc<Self>, caller: Caller, headers: &HeaderMap) -> HttpResponse {
        if !accepts(headers).sse {
            return refuse(RequestError::NotAcceptable(
                "GET needs Accept: text/event-stream",
            ));
        }
        let Some(id) = header(headers, SESSION_HEADER).map(str::to_string) else {
            return refuse(RequestError::MissingSession);
        };
        if !self.use_session(&id, &caller) {
            return refuse(RequestError::SessionNotFound);
        }
        let (sender, notifications) = tokio::sync::mpsc::channel::<Value>(64);
        for member in self.members(&caller) {
            let mut changes = member.catalog().subscribe();
            let sender = sender.clone();
            let (aggregate, id) = (Arc::downgrade(&self), id.clone());
            tokio::spawn(async move {
                loop {
                    let list = match changes.recv().await {
                        Ok(list) => list,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    };
                    // The session ended: so does its stream.
                    let alive = aggregate
                        .upgrade()
                        .is_some_and(|a| a.sessions.lock().unwrap().contains_key(&id));
                    let note = jsonrpc::notification(list.changed_notification(), None);
                    if !alive || sender.send(note).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(sender);
        debug!(session = %id, "aggregated GET stream opened");
        let events = futures::stream::unfold(notifications, |mut notifications| async move {
            let note = notifications.recv().await?;
            Some((reply::message_event(None, &note), notifications))
        });
        reply::sse(events)
    }

    pub(crate) fn end_session(&self, id: &str, caller: &Caller) -> bool {
        let owned = self.use_session(id, caller);
        if owned {
            self.sessions.lock().unwrap().remove(id);
        }
        owned
    }

    pub(crate) async fn post<S, B>(
        &self,
        caller: Caller,
        headers: &HeaderMap,
        body: S,
    ) -> HttpResponse
    where
        S: Stream<Item = Result<B, warp::Error>> + Unpin,
        B: Buf,
    {
        if let Some(requested) = header(headers, VERSION_HEADER) {
            if !version::is_known(requested) || version::is_per_request(requested) {
                return refuse(RequestError::UnsupportedVersion {
                    requested: requested.to_string(),
                    supported: version::HANDSHAKE.to_vec(),
                    message: format!(
                        "the aggregated endpoint /mcp speaks the handshake versions {}; \
                         {requested} is served on each server's own endpoint",
                        version::HANDSHAKE.join(", ")
                    ),
                });
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
        let kind = jsonrpc::classify(&message);
        if kind == Some(Kind::Request) && Method::of(&message) == Method::Initialize {
            let response = self.initialize(&caller, &message).await;
            let mut reply = json_reply(StatusCode::OK, &response);
            let id = self.open_session(&caller);
            reply.headers_mut().insert(
                SESSION_HEADER,
                id.parse().expect("hex is a valid header value"),
            );
            return reply;
        }
        match header(headers, SESSION_HEADER) {
            Some(id) if !self.use_session(id, &caller) => {
                return refuse(RequestError::SessionNotFound)
            }
            // A Streamable HTTP client must use its session; a plain JSON one may go without.
            None if accept.sse => return refuse(RequestError::MissingSession),
            _ => {}
        }
        match kind {
            None => json_reply(
                StatusCode::BAD_REQUEST,
                &streamable::invalid_request(&message),
            ),
            // Nothing for the members: they are asked statelessly.
            Some(Kind::Notification) | Some(Kind::Response) => status_only(StatusCode::ACCEPTED),
            Some(Kind::Request) => {
                let response = self.answer(&caller, message).await;
                json_reply(StatusCode::OK, &response)
            }
        }
    }

    /// The union of the members' introductions (from their catalogs while
    /// stopped; a member never seen running is started once to learn it).
    async fn initialize(&self, caller: &Caller, message: &Value) -> Value {
        let members = self.members(caller);
        let intros =
            futures::future::join_all(members.iter().map(|member| member.initialize_result()))
                .await;
        let mut capabilities = serde_json::Map::new();
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
                    capabilities.insert(name.to_string(), json!({"listChanged": true}));
                }
            }
            if offered.is_some_and(|c| c.contains_key("completions")) {
                capabilities.insert("completions".to_string(), json!({}));
            }
            if let Some(text) = intro.get("instructions").and_then(Value::as_str) {
                instructions.push(format!("## {}\n{text}", server.name()));
            }
        }
        let mut result = json!({
            "protocolVersion": streamable::negotiate_version(message),
            "capabilities": capabilities,
            "serverInfo": {"name": "mcpod", "version": env!("CARGO_PKG_VERSION")},
        });
        if !instructions.is_empty() {
            result["instructions"] = json!(instructions.join("\n\n"));
        }
        jsonrpc::result(jsonrpc::id(message), result)
    }

    /// One request of the aggregated session: its response.
    async fn answer(&self, caller: &Caller, message: Value) -> Value {
        let id = jsonrpc::id(&message);
        let method = Method::of(&message);
        match method {
            Method::Ping | Method::LoggingSetLevel => jsonrpc::result(id, json!({})),
            Method::ToolsList | Method::PromptsList => {
                let list = List::of(method).expect("a list method");
                jsonrpc::result(id, self.namespaced_list(caller, list).await)
            }
            Method::ResourcesList | Method::ResourcesTemplatesList => {
                let list = List::of(method).expect("a list method");
                let items: Vec<Value> = self
                    .lists(caller, list)
                    .await
                    .into_iter()
                    .flat_map(|(_, items)| items)
                    .collect();
                jsonrpc::result(id, json!({ list.key(): items }))
            }
            Method::ToolsCall | Method::PromptsGet => {
                let kind = if method == Method::ToolsCall { "tool" } else { "prompt" };
                let name = message.pointer("/params/name").and_then(Value::as_str);
                match name.map(|name| self.owner_by_name(caller, name)) {
                    Some(Ok((server, own))) => {
                        let mut message = message.clone();
                        message["params"]["name"] = json!(own);
                        self.forward(&server, caller, message).await
                    }
                    Some(Err(why)) => jsonrpc::error(id, jsonrpc::INVALID_PARAMS, why.of(kind)),
                    None => jsonrpc::error(id, jsonrpc::INVALID_PARAMS, format!("{kind} name required")),
                }
            }
            Method::ResourcesRead => {
                let uri = message.pointer("/params/uri").and_then(Value::as_str);
                let owner = match uri {
                    Some(uri) => self.owner_by_uri(caller, uri).await,
                    None => None,
                };
                match owner {
                    Some(server) => self.forward(&server, caller, message).await,
                    None => jsonrpc::error(
                        id,
                        jsonrpc::INVALID_PARAMS,
                        format!("Unknown resource: {}", uri.unwrap_or_default()),
                    ),
                }
            }
            Method::CompletionComplete => self.complete(caller, message).await,
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

    /// `completion/complete`: a prompt argument goes to the prompt's member,
    /// a resource template's to the template's.
    async fn complete(&self, caller: &Caller, mut message: Value) -> Value {
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
            Some(server) => self.forward(&server, caller, message).await,
            None => jsonrpc::error(id, jsonrpc::INVALID_PARAMS, "Unknown completion reference"),
        }
    }

    /// A request to one member, as a stateless client of its own endpoint.
    async fn forward(&self, server: &Arc<Server>, caller: &Caller, message: Value) -> Value {
        let id = jsonrpc::id(&message);
        if let Err(error) = access::rate_limit(server, caller, &message) {
            return error.to_jsonrpc(id);
        }
        debug!(
            member = server.name(),
            method = jsonrpc::method(&message).unwrap_or_default(),
            "aggregated request"
        );
        call::request(server, caller, None, STANDALONE, message)
            .await
            .unwrap_or_else(|error| error.to_jsonrpc(id))
    }

    /// Each member's items of `list`, all pages, as its own endpoint lists
    /// them for `caller`; a member that cannot answer is left out (and logged).
    async fn lists(&self, caller: &Caller, list: List) -> Vec<(Arc<Server>, Vec<Value>)> {
        let members = self.members(caller);
        let lists = members
            .iter()
            .map(|server| member_items(server, caller, list));
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

/// All pages of one member's `list`, asked as a stateless client of its endpoint.
async fn member_items(server: &Arc<Server>, caller: &Caller, list: List) -> Option<Vec<Value>> {
    // A member without such a list (method not found) has none to add.
    catalog::all_pages(list, |request| async move {
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

/// `POST|GET|DELETE /mcp`.
pub fn routes(
    aggregate: Arc<Aggregate>,
    caller: BoxedFilter<(Caller,)>,
) -> impl Filter<Extract = (HttpResponse,), Error = warp::Rejection> + Clone {
    let with = warp::any().map(move || aggregate.clone());
    let post = warp::path!("mcp")
        .and(warp::post())
        .and(with.clone())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |aggregate: Arc<Aggregate>, caller: Caller, headers: HeaderMap, body| async move {
                let span = tracing::info_span!("mcp", server = "*", caller = %caller);
                tracing::Instrument::instrument(aggregate.post(caller, &headers, body), span).await
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
    let delete = warp::path!("mcp")
        .and(warp::delete())
        .and(with)
        .and(caller)
        .and(warp::header::headers_cloned())
        .map(
            |aggregate: Arc<Aggregate>, caller: Caller, headers: HeaderMap| match header(
                &headers,
                SESSION_HEADER,
            ) {
                Some(id) if aggregate.end_session(id, &caller) => status_only(StatusCode::OK),
                Some(_) => refuse(RequestError::SessionNotFound),
                None => refuse(RequestError::MissingSession),
            },
        );
    post.or(get).unify().or(delete).unify()
}
