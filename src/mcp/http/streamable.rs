//! Streamable HTTP, the handshake era (2025-03-26 and later): `initialize`
//! opens a session, later requests name it in `Mcp-Session-Id`, each request is
//! answered as JSON or as an SSE stream carrying what the server sends while
//! handling it, and GET opens the stream for what the server sends on its own.
//! Clients that send no `Accept: text/event-stream` and no session (plain
//! `curl`, the original system's API) are served without a session.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tracing::{debug, debug_span, Instrument};
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::{Buf, Filter};

use super::per_request;
use super::reply::{self, json_reply, status_only, HttpResponse};
use super::{accepts, body, header, refuse, Endpoint, SESSION_HEADER, VERSION_HEADER};
use crate::access;
use crate::auth::Caller;
use crate::crd::SessionMode;
use crate::mcp::call;
use crate::mcp::error::RequestError;
use crate::mcp::message::{self as jsonrpc, Kind, Method};
use crate::mcp::sessions::{ClientCapabilities, Session, SseEvent, STANDALONE};
use crate::mcp::version;
use crate::server::Server;

/// Messages one JSON-RPC batch may hold (its bytes are bounded by the body limit).
const MAX_BATCH_MESSAGES: usize = 100;

/// A client session and the server that holds it (for `sessionMode: Isolated`,
/// the session's own server).
pub type SessionOnServer = (Arc<Server>, Arc<Session>);

pub fn routes(
    key: BoxedFilter<(String,)>,
    with: BoxedFilter<(Endpoint, Caller)>,
) -> impl Filter<Extract = (HttpResponse,), Error = warp::Rejection> + Clone {
    let post = key
        .clone()
        .and(warp::post())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |name: String, endpoint: Endpoint, caller: Caller, headers, body| {
                // DEBUG, like the listener's request span: an INFO span costs
                // every request its fields formatted, whether a line is written or not.
                let span = debug_span!("mcp", server = %name, caller = %caller);
                async move { post(&endpoint, &name, &headers, Arc::new(caller), body).await }
                    .instrument(span)
            },
        );
    let get = key
        .clone()
        .and(warp::get())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .map(
            |name: String, endpoint: Endpoint, caller: Caller, headers: HeaderMap| {
                get(&endpoint, &name, &headers, &caller)
            },
        );
    let delete = key
        .and(warp::delete())
        .and(with)
        .and(warp::header::headers_cloned())
        .then(
            |name: String, endpoint: Endpoint, caller: Caller, headers: HeaderMap| async move {
                delete(&endpoint, &name, &headers, &caller).await
            },
        );
    post.or(get).unify().or(delete).unify()
}

/// The session named by `Mcp-Session-Id` and the server that holds it: 404
/// once it has ended, or when it is not `caller`'s.
pub fn session(
    server: &Arc<Server>,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<Option<SessionOnServer>, RequestError> {
    let Some(id) = header(headers, SESSION_HEADER) else {
        return Ok(None);
    };
    let (holder, session) =
        find_session(server, id, caller).ok_or(RequestError::SessionNotFound)?;
    session.touch();
    Ok(Some((holder, session)))
}

fn require_session(
    server: &Arc<Server>,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<SessionOnServer, RequestError> {
    session(server, headers, caller)?.ok_or(RequestError::MissingSession)
}

/// `caller`'s session `id` of `server` and the server holding it: `server`
/// itself, or for `sessionMode: Isolated` the session's own server. Someone
/// else's session is not found, as if it did not exist.
pub fn find_session(server: &Arc<Server>, id: &str, caller: &Caller) -> Option<SessionOnServer> {
    let found = match server.sessions().get(id) {
        Some(session) => Some((server.clone(), session)),
        None => server
            .isolated_for(id)
            .and_then(|child| child.sessions().get(id).map(|session| (child, session))),
    };
    found.filter(|(_, session)| session.belongs_to(caller))
}

async fn post<S, B>(
    endpoint: &Endpoint,
    name: &str,
    headers: &HeaderMap,
    caller: Arc<Caller>,
    body: S,
) -> HttpResponse
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let server = match endpoint.admit(name, headers, &caller) {
        Ok(server) => server,
        Err(error) => return refuse(error),
    };
    let accept = accepts(headers);
    if !accept.json && !accept.sse {
        return refuse(RequestError::NotAcceptable(
            "Accept must allow application/json or text/event-stream",
        ));
    }
    let message = match body::read_json(body, endpoint.config.max_body_bytes).await {
        Ok(message) => message,
        Err(error) => return refuse(error),
    };
    if let Err(error) = access::rate_limit(&server, &caller, &message) {
        return error.reply(jsonrpc::id(&message));
    }
    // 2026-07-28 and later: one self-contained request, no session.
    if per_request::requested(headers) {
        return per_request::post(server, caller, headers, accept.sse, message).await;
    }
    if jsonrpc::classify(&message) == Some(Kind::Request)
        && Method::of(&message) == Method::Initialize
    {
        return initialize(&server, caller, message).await;
    }
    let (server, session) = match session(&server, headers, &caller) {
        Ok(Some((holder, session))) => (holder, Some(session)),
        Ok(None) => (server, None),
        Err(error) => return refuse(error),
    };
    // A Streamable HTTP client (it accepts SSE) must use its session; a plain
    // JSON client without one is served statelessly, as the original API was.
    if session.is_none() && accept.sse {
        return refuse(RequestError::MissingSession);
    }
    if let Value::Array(batch) = message {
        return self::batch(&server, &caller, session, headers, batch).await;
    }
    match jsonrpc::classify(&message) {
        None => json_reply(StatusCode::BAD_REQUEST, &invalid_request(&message)),
        Some(Kind::Notification) | Some(Kind::Response) => {
            call::one_way(&server, session.as_deref(), message);
            status_only(StatusCode::ACCEPTED)
        }
        Some(Kind::Request) => match session {
            Some(session) if accept.sse => sse_request(server, session, message).await,
            session => {
                let id = jsonrpc::id(&message);
                match call::request(&server, &caller, session.as_ref(), STANDALONE, message).await {
                    Ok(response) => json_reply(StatusCode::OK, &response),
                    Err(error) => error.reply(id),
                }
            }
        },
    }
}

/// JSON-RPC batches exist only in protocol version 2025-03-26.
async fn batch(
    server: &Arc<Server>,
    caller: &Caller,
    session: Option<Arc<Session>>,
    headers: &HeaderMap,
    batch: Vec<Value>,
) -> HttpResponse {
    let version = batch_version(session.as_ref().map(|s| s.protocol_version()), headers);
    let request = |message| {
        let session = session.clone();
        async move {
            let id = jsonrpc::id(&message);
            call::request(server, caller, session.as_ref(), STANDALONE, message)
                .await
                .unwrap_or_else(|e| e.to_jsonrpc(id))
        }
    };
    let one_way = |message| call::one_way(server, session.as_deref(), message);
    answer_batch(&version, batch, request, one_way).await
}

/// The protocol version a batch is judged by: the session's, else the header's.
pub fn batch_version(session_version: Option<String>, headers: &HeaderMap) -> String {
    session_version
        .or_else(|| header(headers, VERSION_HEADER).map(str::to_string))
        .unwrap_or_else(|| version::ASSUMED_WITHOUT_HEADER.to_string())
}

/// Answers a batch in protocol `version`: each request by `request`, each
/// notification or response handed to `one_way`; the responses in one reply.
pub async fn answer_batch<R, F>(
    version: &str,
    batch: Vec<Value>,
    request: R,
    one_way: impl Fn(Value),
) -> HttpResponse
where
    R: Fn(Value) -> F,
    F: std::future::Future<Output = Value>,
{
    if !version::allows_batches(version) {
        return refuse(RequestError::Invalid(format!(
            "JSON-RPC batches are not part of protocol version {version}"
        )));
    }
    if batch.len() > MAX_BATCH_MESSAGES {
        return refuse(RequestError::Invalid(format!(
            "a batch holds at most {MAX_BATCH_MESSAGES} messages; this one holds {}",
            batch.len()
        )));
    }
    if batch.is_empty() {
        return json_reply(StatusCode::BAD_REQUEST, &invalid_request(&Value::Null));
    }
    let (request, one_way) = (&request, &one_way);
    // Each message is handled when its turn comes in the joined futures, in
    // the batch's order, as when the batch was answered one message at a time.
    let answers = batch.into_iter().map(|message| async move {
        match jsonrpc::classify(&message) {
            None => Some(invalid_request(&message)),
            Some(Kind::Request) if Method::of(&message) == Method::Initialize => {
                Some(jsonrpc::error(
                    jsonrpc::id(&message),
                    jsonrpc::INVALID_REQUEST,
                    "initialize cannot be part of a batch",
                ))
            }
            Some(Kind::Request) => Some(request(message).await),
            _ => {
                one_way(message);
                None
            }
        }
    });
    let responses: Vec<Value> = futures::future::join_all(answers)
        .await
        .into_iter()
        .flatten()
        .collect();
    if responses.is_empty() {
        status_only(StatusCode::ACCEPTED)
    } else {
        json_reply(StatusCode::OK, &Value::Array(responses))
    }
}

/// GET: the stream for what the server sends on its own; `Last-Event-ID` resumes.
fn get(endpoint: &Endpoint, name: &str, headers: &HeaderMap, caller: &Caller) -> HttpResponse {
    let server = match endpoint.admit(name, headers, caller) {
        Ok(server) => server,
        Err(error) => return refuse(error),
    };
    if per_request::requested(headers) {
        return reply::method_not_allowed("POST");
    }
    if !accepts(headers).sse {
        return refuse(RequestError::NotAcceptable(
            "GET needs Accept: text/event-stream",
        ));
    }
    let (_, session) = match require_session(&server, headers, caller) {
        Ok(found) => found,
        Err(error) => return refuse(error),
    };
    let last_event_id = header(headers, "last-event-id").and_then(|v| v.parse().ok());
    debug!(session = %session.id, ?last_event_id, "GET stream opened");
    let (priming, events) = session.attach(last_event_id);
    sse_reply(primed(&session, priming), events)
}

/// DELETE: the client ends its session.
async fn delete(
    endpoint: &Endpoint,
    name: &str,
    headers: &HeaderMap,
    caller: &Caller,
) -> HttpResponse {
    let server = match endpoint.admit(name, headers, caller) {
        Ok(server) => server,
        Err(error) => return refuse(error),
    };
    if per_request::requested(headers) {
        return reply::method_not_allowed("POST");
    }
    match require_session(&server, headers, caller) {
        Ok((holder, session)) => {
            holder.sessions().end(&session.id);
            // An isolated session's container goes with it.
            server.end_isolated(&session.id).await;
            debug!(session = %session.id, "session ended by the client");
            status_only(StatusCode::OK)
        }
        Err(error) => refuse(error),
    }
}

pub fn invalid_request(message: &Value) -> Value {
    jsonrpc::error(
        message.get("id").cloned().unwrap_or(Value::Null),
        jsonrpc::INVALID_REQUEST,
        "invalid request: expected a JSON-RPC 2.0 message with jsonrpc \"2.0\" and a method, or a result or error",
    )
}

/// A client's `initialize`: answered from the server's own result, with a new session.
async fn initialize(parent: &Arc<Server>, caller: Arc<Caller>, message: Value) -> HttpResponse {
    let id = jsonrpc::id(&message);
    // `sessionMode: Isolated`: this session gets a container of its own.
    let isolated = parent.workload().session_mode == SessionMode::Isolated;
    let server = &if isolated {
        match parent.spawn_isolated(&caller) {
            Ok(child) => child,
            Err(error) => return error.reply(id),
        }
    } else {
        parent.clone()
    };
    let created = initialize_result(server, &message)
        .await
        .and_then(|response| {
            let version = negotiate_version(&message);
            let capabilities = ClientCapabilities::from_initialize(&message);
            let session = server
                .sessions()
                .create(caller.clone(), version, capabilities, false)?;
            Ok((response, session, capabilities))
        });
    match created {
        Ok((response, session, capabilities)) => {
            if isolated {
                parent.attach_isolated(&session, server.clone());
            }
            if capabilities.roots {
                // A client that has roots arrived: let the server ask for them
                // again; its question goes to this session.
                roots_changed(server, &session);
            }
            let mut reply = json_reply(StatusCode::OK, &response);
            reply.headers_mut().insert(
                SESSION_HEADER,
                session.id.parse().expect("hex is a valid header value"),
            );
            reply
        }
        Err(error) => {
            if isolated {
                parent.abandon_isolated(&caller);
                server.remove().await;
            }
            error.reply(id)
        }
    }
}

/// Tells the server the roots changed because of `session`: the `roots/list`
/// it may send next is that session's to answer.
pub fn roots_changed(server: &Arc<Server>, session: &Session) {
    server.sessions().expect_roots_question(session);
    call::one_way(
        server,
        None,
        jsonrpc::notification(Method::RootsListChanged, None),
    );
}

pub async fn initialize_result(
    server: &Arc<Server>,
    message: &Value,
) -> Result<Value, RequestError> {
    // A stopped server with a catalog introduces itself from it: no start.
    let mut result = server.initialize_result().await?;
    result["protocolVersion"] = json!(negotiate_version(message));
    Ok(jsonrpc::result(jsonrpc::id(message), result))
}

/// The client's version when mcpod speaks it, else the newest mcpod speaks.
pub fn negotiate_version(initialize: &Value) -> &'static str {
    version::negotiate(
        initialize
            .pointer("/params/protocolVersion")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    )
}

/// Answers one request with an SSE stream: what the server sends while handling
/// it, then its response.
async fn sse_request(server: Arc<Server>, session: Arc<Session>, message: Value) -> HttpResponse {
    let key = server.sessions().new_stream_key();
    let (priming, events) = session.open_request_stream(key);
    let priming = primed(&session, priming);
    let task = async move {
        let id = jsonrpc::id(&message);
        let response = call::request(&server, &session.owner, Some(&session), key, message)
            .await
            .unwrap_or_else(|e| e.to_jsonrpc(id));
        session.answer(key, response);
    };
    tokio::spawn(task.in_current_span());
    sse_answer(priming, events).await
}

/// The stream's priming event id, for a session whose client expects one.
fn primed(session: &Session, priming: u64) -> Option<u64> {
    version::primes_streams(&session.protocol_version()).then_some(priming)
}

/// How long a request's SSE answer with a priming event waits for its first
/// message before the response goes out: the priming event makes the stream
/// resumable and should come soon after the request.
const PRIMING_WAITS_FOR_FIRST_MESSAGE: std::time::Duration = std::time::Duration::from_millis(5);

/// The SSE answer to one request. The response waits for the stream's first
/// message, so that a quick answer leaves in one write with the response head
/// (and the priming event): one segment and one wake-up of the client, as a
/// JSON answer. With a priming event it waits only
/// [`PRIMING_WAITS_FOR_FIRST_MESSAGE`]; without, up to
/// [`reply::SSE_COMMIT_AFTER`] (as the per-request era does), after which
/// the stream goes out and keep-alive comments hold it open.
pub async fn sse_answer(
    priming: Option<u64>,
    mut events: tokio::sync::mpsc::Receiver<SseEvent>,
) -> HttpResponse {
    let wait = if priming.is_some() {
        PRIMING_WAITS_FOR_FIRST_MESSAGE
    } else {
        reply::SSE_COMMIT_AFTER
    };
    let (first, ended) = match tokio::time::timeout(wait, events.recv()).await {
        Ok(Some(event)) => (Some(event), false),
        Ok(None) => (None, true),
        Err(_) => (None, false), // still waiting: the stream goes out now
    };
    let live = (!ended).then_some(events);
    sse_events(priming, first.into_iter().collect(), live)
}

/// An SSE stream of a session's events, after its priming event, at once.
pub fn sse_reply(
    priming: Option<u64>,
    events: tokio::sync::mpsc::Receiver<SseEvent>,
) -> HttpResponse {
    sse_events(priming, vec![], Some(events))
}

/// The priming event, the events already `received`, then the `live` ones.
fn sse_events(
    priming: Option<u64>,
    received: Vec<SseEvent>,
    live: Option<tokio::sync::mpsc::Receiver<SseEvent>>,
) -> HttpResponse {
    let message = |event: SseEvent| reply::message_event(Some(event.id), &event.message);
    let ready = priming
        .map(reply::priming_event)
        .into_iter()
        .chain(received.into_iter().map(message));
    let live = futures::stream::unfold(live, move |live| async move {
        let mut events = live?;
        let event = events.recv().await?;
        Some((message(event), Some(events)))
    });
    reply::sse(futures::stream::iter(ready).chain(live))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_parsing() {
        let mut headers = HeaderMap::new();
        let a = accepts(&headers);
        assert!(a.json && !a.sse);
        headers.insert(
            "accept",
            "application/json, text/event-stream".parse().unwrap(),
        );
        let a = accepts(&headers);
        assert!(a.json && a.sse);
        headers.insert("accept", "text/html".parse().unwrap());
        let a = accepts(&headers);
        assert!(!a.json && !a.sse);
    }

    /// The body's frames: each poll of the body as hyper makes it, `None` where
    /// the body was not ready (hyper would flush what it had by then).
    async fn frames_as_polled(response: HttpResponse) -> Vec<Option<String>> {
        use futures::FutureExt;
        use http_body_util::BodyExt;
        let mut body = response.into_body();
        let mut polled = vec![];
        loop {
            let frame = match body.frame().now_or_never() {
                Some(frame) => frame,
                None => {
                    polled.push(None);
                    body.frame().await
                }
            };
            let Some(frame) = frame else { return polled };
            let data = frame.unwrap().into_data().unwrap_or_default();
            polled.push(Some(String::from_utf8_lossy(&data).into_owned()));
        }
    }

    fn answer() -> SseEvent {
        SseEvent {
            id: 8,
            message: Arc::new(serde_json::json!({"jsonrpc":"2.0","id":1,"result":{}})),
        }
    }

    /// An SSE answer whose message comes `after` the request, read as hyper reads it.
    async fn answered_after(
        after: std::time::Duration,
        priming: Option<u64>,
    ) -> Vec<Option<String>> {
        let (events, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            events.send(answer()).await.unwrap(); // the stream ends with its sender
        });
        frames_as_polled(sse_answer(priming, receiver).await).await
    }

    fn position(polled: &[Option<String>], text: &str) -> usize {
        polled
            .iter()
            .position(|frame| frame.as_ref().is_some_and(|f| f.contains(text)))
            .unwrap_or_else(|| panic!("no frame with {text}: {polled:?}"))
    }

    #[tokio::test]
    async fn a_quick_answer_leaves_in_one_write_with_the_head_and_the_priming_event() {
        let polled = answered_after(std::time::Duration::ZERO, Some(7)).await;
        assert_eq!(position(&polled, "id:7"), 0, "{polled:?}");
        assert_eq!(position(&polled, r#""id":1"#), 1, "{polled:?}");
        assert!(
            polled.iter().all(Option::is_some),
            "never waited: {polled:?}"
        );
    }

    #[tokio::test]
    async fn a_slow_answer_finds_its_stream_primed_first() {
        let polled = answered_after(PRIMING_WAITS_FOR_FIRST_MESSAGE * 4, Some(7)).await;
        let (priming, answer) = (position(&polled, "id:7"), position(&polled, r#""id":1"#));
        assert!(
            polled[priming..answer].iter().any(Option::is_none),
            "primed before the answer came: {polled:?}"
        );
    }

    #[tokio::test]
    async fn without_a_priming_event_the_head_waits_for_the_answer() {
        let polled = answered_after(PRIMING_WAITS_FOR_FIRST_MESSAGE * 4, None).await;
        assert_eq!(position(&polled, r#""id":1"#), 0, "{polled:?}");
        assert!(polled.iter().all(Option::is_some), "one write: {polled:?}");
    }
}
