//! The legacy HTTP+SSE transport (protocol 2024-11-05) on the aggregated
//! endpoint: `GET /sse` opens a session whose first event names where to POST
//! (`/messages?sessionId=…`); every answer, responses included, arrives on
//! that stream, and the session (with its member sessions) lives as long as
//! the stream does.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::{Buf, Filter};

use super::session::{AggregateSession, STREAM_QUEUE};
use super::{spawn_for_request, Aggregate, REQUEST_HEADERS};
use crate::auth::Caller;
use crate::mcp::error::RequestError;
use crate::mcp::http::reply::{self, json_reply, status_only, HttpResponse};
use crate::mcp::http::streamable::{invalid_request, negotiate_version};
use crate::mcp::http::{body, refuse};
use crate::mcp::message::{self as jsonrpc, Kind, Method};
use crate::mcp::sessions::ClientCapabilities;
use crate::mcp::version;

/// `GET /sse`, `POST /messages`.
pub fn routes(
    aggregate: Arc<Aggregate>,
    caller: BoxedFilter<(Caller,)>,
) -> impl Filter<Extract = (HttpResponse,), Error = warp::Rejection> + Clone {
    let with = warp::any().map(move || aggregate.clone());
    let open = warp::path!("sse")
        .and(warp::get())
        .and(with.clone())
        .and(caller.clone())
        .map(|aggregate, caller| open(aggregate, caller, "/messages"));
    let post = warp::path!("messages")
        .and(warp::post())
        .and(with)
        .and(caller)
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(|aggregate, caller, query, headers, body| {
            REQUEST_HEADERS.scope(headers, post(aggregate, caller, query, body))
        });
    open.or(post).unify()
}

/// The stream opens first and names where to POST (`post_path`, plus the session).
pub(crate) fn open(aggregate: Arc<Aggregate>, caller: Caller, post_path: &str) -> HttpResponse {
    let session = AggregateSession::new(
        Arc::new(caller.clone()),
        version::LEGACY_SSE,
        ClientCapabilities::default(),
        true,
    );
    let (outlet, messages) = mpsc::channel(STREAM_QUEUE);
    session.attach(outlet.clone());
    tokio::spawn(
        aggregate
            .clone()
            .watch_lists(caller, outlet, session.ended()),
    );
    let first = warp::sse::Event::default()
        .event("endpoint")
        .data(format!("{post_path}?sessionId={}", session.id));
    let guard = Ends {
        aggregate: aggregate.clone(),
        id: session.id.clone(),
    };
    aggregate.keep_session(session);
    let messages = futures::stream::unfold((messages, guard), |(mut messages, guard)| async move {
        let message = messages.recv().await?;
        Some((reply::message_event(None, &message), (messages, guard)))
    });
    reply::sse(futures::stream::iter([first]).chain(messages))
}

pub(crate) async fn post<S, B>(
    aggregate: Arc<Aggregate>,
    caller: Caller,
    query: HashMap<String, String>,
    body: S,
) -> HttpResponse
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let Some(session) = query
        .get("sessionId")
        .and_then(|id| aggregate.session(id, &caller))
    else {
        return refuse(RequestError::SessionNotFound);
    };
    let message = match body::read_json(body, aggregate.max_body_bytes).await {
        Ok(message) => message,
        Err(error) => return refuse(error),
    };
    match jsonrpc::classify(&message) {
        None => return json_reply(StatusCode::BAD_REQUEST, &invalid_request(&message)),
        Some(Kind::Request) => {
            let task = async move {
                let answer = if Method::of(&message) == Method::Initialize {
                    let capabilities = ClientCapabilities::from_initialize(&message);
                    session.negotiated(negotiate_version(&message), capabilities);
                    aggregate.initialize(&caller, &message).await
                } else {
                    aggregate
                        .answer(&caller, Some(&session), message, None)
                        .await
                };
                session.send(answer).await;
            };
            // The POST's span goes on until the answer is sent.
            spawn_for_request(task);
        }
        _ => session.one_way(message),
    }
    status_only(StatusCode::ACCEPTED)
}

/// Ends the session when its stream is dropped.
struct Ends {
    aggregate: Arc<Aggregate>,
    id: String,
}

impl Drop for Ends {
    fn drop(&mut self) {
        let ended = self.aggregate.sessions.lock().unwrap().remove(&self.id);
        if let Some(session) = ended {
            session.close();
        }
    }
}
