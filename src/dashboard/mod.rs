//! The router dashboard: `GET /` in a browser shows every server, live.
//!
//! The page and its script and style are embedded in the binary (no CDN, no
//! internet) and hold no data, so they are served without authentication; the
//! figures come from `GET /dashboard/data` and the start/stop controls POST to
//! `/servers/{name}/start|stop`, which are authenticated like the rest of the
//! API. With authentication configured the page asks for an API key, keeps it
//! in the tab's `sessionStorage` and sends it as `Authorization: Bearer` on
//! its own requests only. A strict Content-Security-Policy lets the page load
//! nothing but its own files and talk to nothing but its own origin.

pub mod history;

use std::sync::Arc;

use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::{Filter, Reply};

use crate::auth::Caller;
use crate::mcp::http::reply::{json_reply, HttpResponse};
use crate::reconcile::Reconciler;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Only the page's own files and its own origin: an injected script could
/// neither load nor send anything elsewhere, and no other site may frame it.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes (declared in `router::ROUTES`): the page and its
/// assets, open; the data, behind `caller`.
pub fn routes(
    reconciler: Arc<Reconciler>,
    caller: BoxedFilter<(Caller,)>,
) -> BoxedFilter<(HttpResponse,)> {
    let page = warp::path::end()
        .and(warp::get())
        .map(|| asset("text/html; charset=utf-8", INDEX_HTML));
    let script = warp::path!("dashboard" / "app.js")
        .and(warp::get())
        .map(|| asset("text/javascript; charset=utf-8", APP_JS));
    let style = warp::path!("dashboard" / "app.css")
        .and(warp::get())
        .map(|| asset("text/css; charset=utf-8", APP_CSS));
    let data = warp::path!("dashboard" / "data")
        .and(warp::get())
        .and(caller)
        .map(move |_: Caller| {
            let mut response = json_reply(StatusCode::OK, &data(&reconciler));
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        });
    page.or(script)
        .unify()
        .or(style)
        .unify()
        .or(data)
        .unify()
        .boxed()
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    let mut response = warp::reply::with_status(body, StatusCode::OK).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Embedded in the binary: a new mcpod may bring new files under the same name.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Every server's status (as `/servers` shows it) with its live figures and
/// last hour, and the router's clock (the page counts idle time down from it,
/// whatever the browser's clock says).
pub fn data(reconciler: &Reconciler) -> Value {
    let servers = reconciler.servers();
    let names: Vec<String> = servers.iter().map(|s| s.name().to_string()).collect();
    history::HISTORY.retain(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let servers: Vec<Value> = servers
        .iter()
        .map(|server| {
            let mut status = json!(server.status());
            let (live, points) = history::HISTORY.of(server.name());
            if let Some(object) = status.as_object_mut() {
                object.insert("live".into(), json!(live));
                object.insert("history".into(), json!(points));
            }
            status
        })
        .collect();
    json!({"now": chrono::Utc::now(), "servers": servers})
}
