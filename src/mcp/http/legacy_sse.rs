//! The legacy HTTP+SSE transport (protocol 2024-11-05): the client opens a GET
//! stream whose first event names where to POST; every answer, responses
//! included, arrives on that stream, and the session lives as long as it does.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tracing::Instrument;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::{Buf, Filter};

use super::reply::{self, json_reply, status_only, HttpResponse};
use super::streamable::{
    find_session, initialize_result, invalid_request, negotiate_version, roots_changed,
};
use super::{body, refuse, Endpoint};
use crate::access;
use crate::auth::Caller;
use crate::crd::SessionMode;
use crate::mcp::call;
use crate::mcp::error::RequestError;
use crate::mcp::message::{self as jsonrpc, Kind, Method};
use crate::mcp::sessions::{ClientCapabilities, STANDALONE};
use crate::mcp::version;
use crate::server::Server;

pub fn routes(
    stream_key: impl Filter<Extract = (String,), Error = warp::Rejection>
        + Clone
        + Send
        + Sync
        + 'static,
    with: BoxedFilter<(Endpoint, Caller)>,
) -> impl Filter<Extract = (HttpResponse,), Error = warp::Rejection> + Clone {
    let open = stream_key
        .and(warp::get())
        .and(with.clone())
        .and(warp::header::headers_cloned())
        .map(
            |name: String, endpoint: Endpoint, caller: Caller, headers: HeaderMap| {
                open_stream(&endpoint, &name, &headers, caller)
            },
        );
    let post = warp::path!("messages" / String)
        .and(warp::post())
        .and(with)
        .and(warp::header::headers_cloned())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::body::stream())
        .then(
            |name: String, endpoint: Endpoint, caller: Caller, headers, query, body| async move {
                post(&endpoint, &name, &headers, &caller, query, body).await
            },
        );
    open.or(post).unify()
}

/// The stream opens first and names where to POST.
fn open_stream(
    endpoint: &Endpoint,
    name: &str,
    headers: &HeaderMap,
    caller: Caller,
) -> HttpResponse {
    let server = match endpoint.admit(name, headers, &caller) {
        Ok(server) => server,
        Err(error) => return refuse(error),
    };
    let isolated = server.workload().session_mode == SessionMode::Isolated;
    let holder = if isolated {
        match server.spawn_isolated(&caller) {
            Ok(child) => child,
            Err(error) => return refuse(error),
        }
    } else {
        server.clone()
    };
    let caller = Arc::new(caller);
    let created = holder.sessions().create(
        caller.clone(),
        version::LEGACY_SSE,
        ClientCapabilities::default(),
        true,
    );
    let session = match created {
        Ok(session) => session,
        Err(error) => {
            if isolated {
                server.abandon_isolated(&caller);
            }
            return refuse(error);
        }
    };
    if isolated {
        server.attach_isolated(&session, holder);
    }
    let endpoint_url = format!("/messages/{name}?sessionId={}", session.id);
    let (_, events) = session.attach(None);
    // The session lives as long as this stream.
    let guard = SessionGuard {
        server: server.clone(),
        id: session.id.clone(),
    };
    let first = warp::sse::Event::default()
        .event("endpoint")
        .data(endpoint_url);
    let messages = futures::stream::unfold((events, guard), |(mut events, guard)| async move {
        let event = events.recv().await?;
        let sse = reply::message_event(Some(event.id), &event.message);
        Some((sse, (events, guard)))
    });
    reply::sse(futures::stream::iter([first]).chain(messages))
}

async fn post<S, B>(
    endpoint: &Endpoint,
    name: &str,
    headers: &HeaderMap,
    caller: &Caller,
    query: HashMap<String, String>,
    body: S,
) -> HttpResponse
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let server = match endpoint.admit(name, headers, caller) {
        Ok(server) => server,
        Err(error) => return refuse(error),
    };
    let Some((server, session)) = query
        .get("sessionId")
        .and_then(|id| find_session(&server, id, caller))
    else {
        return refuse(RequestError::SessionNotFound);
    };
    session.touch();
    let message = match body::read_json(body, endpoint.config.max_body_bytes).await {
        Ok(message) => message,
        Err(error) => return refuse(error),
    };
    if let Err(error) = access::rate_limit(&server, caller, &message) {
        return error.reply(jsonrpc::id(&message));
    }
    match jsonrpc::classify(&message) {
        None => return json_reply(StatusCode::BAD_REQUEST, &invalid_request(&message)),
        Some(Kind::Request) => {
            tokio::spawn(
                async move {
                    let id = jsonrpc::id(&message);
                    let answer = if Method::of(&message) == Method::Initialize {
                        let capabilities = ClientCapabilities::from_initialize(&message);
                        session.negotiated(negotiate_version(&message), capabilities);
                        let result = initialize_result(&server, &message).await;
                        if result.is_ok() && capabilities.roots {
                            roots_changed(&server, &session);
                        }
                        result
                    } else {
                        call::request(&server, &session.owner, Some(&session), STANDALONE, message)
                            .await
                    };
                    session.send(STANDALONE, answer.unwrap_or_else(|e| e.to_jsonrpc(id)));
                }
                // The POST's span (and its trace) goes on until the answer is sent.
                .in_current_span(),
            );
        }
        _ => call::one_way(&server, Some(&session), message),
    }
    status_only(StatusCode::ACCEPTED)
}

/// Ends a legacy session when its stream is dropped.
struct SessionGuard {
    server: Arc<Server>,
    id: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.server.sessions().end(&self.id);
        if self.server.isolated_for(&self.id).is_some() {
            let (server, id) = (self.server.clone(), self.id.clone());
            tokio::spawn(async move { server.end_isolated(&id).await });
        }
    }
}
