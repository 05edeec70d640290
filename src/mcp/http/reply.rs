//! Building HTTP answers: JSON bodies, empty statuses and SSE streams.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;
use warp::http::{Response, StatusCode};
use warp::Reply;

pub type HttpResponse = warp::reply::Response;

/// How often an SSE stream with nothing to say sends a keep-alive comment.
pub const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long an SSE answer may hold its response head back waiting for its
/// first message; past it the stream goes out and keep-alive comments hold
/// the connection open behind proxies.
pub const SSE_COMMIT_AFTER: Duration = Duration::from_secs(15);
/// The reconnection delay an SSE stream suggests to its client (`retry:`).
pub const SSE_RETRY: Duration = Duration::from_secs(1);

pub fn json_reply(status: StatusCode, body: &Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body.to_string().into())
        .expect("static headers are valid")
}

pub fn text_reply(content_type: &str, text: String) -> HttpResponse {
    Response::builder()
        .header("content-type", content_type)
        .body(text.into())
        .expect("static headers are valid")
}

pub fn status_only(status: StatusCode) -> HttpResponse {
    Response::builder()
        .status(status)
        .body(Bytes::new().into())
        .expect("static response")
}

/// 405 naming the one method allowed.
pub fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = status_only(StatusCode::METHOD_NOT_ALLOWED);
    response
        .headers_mut()
        .insert("allow", allow.parse().expect("static header"));
    response
}

/// An SSE response of `events`, with keep-alive comments while it is quiet.
pub fn sse<S>(events: S) -> HttpResponse
where
    S: Stream<Item = warp::sse::Event> + Send + Sync + 'static,
{
    let events = events.map(Ok::<_, Infallible>);
    let keep_alive = warp::sse::keep_alive().interval(SSE_KEEP_ALIVE);
    warp::sse::reply(keep_alive.stream(events)).into_response()
}

/// One JSON-RPC message as an SSE `message` event, with an id when it has one.
pub fn message_event(id: Option<u64>, message: &Value) -> warp::sse::Event {
    let event = warp::sse::Event::default()
        .event("message")
        .data(message.to_string());
    match id {
        Some(id) => event.id(id.to_string()),
        None => event,
    }
}

/// The event a resumable stream starts with (2025-11-25): an event id and empty
/// data, plus the reconnection delay, so a client that loses the stream before
/// its first message can resume it with `Last-Event-ID`.
pub fn priming_event(id: u64) -> warp::sse::Event {
    warp::sse::Event::default()
        .id(id.to_string())
        .retry(SSE_RETRY)
        .data("")
}
