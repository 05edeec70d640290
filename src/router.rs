//! The HTTP router (warp): the original system's management API and one MCP
//! endpoint per server. An MCP request becomes a lease on the server (starting
//! it if needed) and a line on its stdin; the answer comes back as the body.

use std::convert::Infallible;
use std::sync::Arc;

use serde_json::json;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::endpoint::{self, json_reply, EndpointConfig, HttpResponse};
use crate::forward::{self, Forwarding};
use crate::reconcile::Reconciler;
use crate::runtime::kube::lease::Ownership;
use crate::server::ServerError;

/// Router-wide settings.
#[derive(Debug, Clone, Default)]
pub struct RouterConfig {
    pub endpoint: EndpointConfig,
    /// Kubernetes with several router replicas: requests for a server another
    /// replica owns are forwarded to it (`None`: every request is served here).
    pub ownership: Option<Arc<Ownership>>,
}

#[derive(Clone)]
struct State {
    reconciler: Arc<Reconciler>,
}

impl State {
    fn statuses(&self) -> Vec<crate::server::Status> {
        self.reconciler
            .servers()
            .iter()
            .map(|s| s.status())
            .collect()
    }
}

fn text_reply(content_type: &str, text: String) -> HttpResponse {
    warp::http::Response::builder()
        .header("content-type", content_type)
        .body(text.into())
        .expect("static headers are valid")
}

/// All routes, with every rejection turned into a JSON error.
pub fn routes(
    reconciler: Arc<Reconciler>,
    config: RouterConfig,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    // Boxed: the composed filter types get too deep for the compiler otherwise.
    let mcp = endpoint::routes(reconciler.clone(), config.endpoint.clone()).boxed();
    let forwarding = Forwarding::new(
        reconciler.clone(),
        config.ownership.clone(),
        config.endpoint.max_body_bytes,
    );
    let state = State { reconciler };
    let with_state = warp::any().map(move || state.clone());

    let health = warp::path!("health")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: State| {
            json_reply(
                StatusCode::OK,
                &json!({
                    "status": "healthy",
                    "timestamp": chrono::Utc::now(),
                    "servers": state.reconciler.servers().len(),
                    "problems": state.reconciler.problems(),
                }),
            )
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: State| {
            let metrics = crate::metrics::render(&state.statuses());
            text_reply("text/plain; version=0.0.4", metrics)
        });
    let list = warp::path!("servers")
        .and(warp::get())
        .and(with_state.clone())
        .map(|state: State| json_reply(StatusCode::OK, &json!(state.statuses())));
    let show = warp::path!("servers" / String)
        .and(warp::get())
        .and(with_state.clone())
        .map(
            |name: String, state: State| match state.reconciler.server(&name) {
                Some(server) => json_reply(StatusCode::OK, &json!(server.status())),
                None => unknown_server(&name),
            },
        );
    let logs = warp::path!("servers" / String / "logs")
        .and(warp::get())
        .and(with_state.clone())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .map(
            |name: String, state: State, query: std::collections::HashMap<String, String>| {
                let Some(server) = state.reconciler.server(&name) else {
                    return unknown_server(&name);
                };
                let tail = query
                    .get("tail")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(100);
                let mut text = server.log().tail(tail).join("\n");
                text.push('\n');
                text_reply("text/plain; charset=utf-8", text)
            },
        );
    let start = warp::path!("servers" / String / "start")
        .and(warp::post())
        .and(with_state.clone())
        .then(start_server);
    let stop = warp::path!("servers" / String / "stop")
        .and(warp::post())
        .and(with_state.clone())
        .then(stop_server);

    let local = health
        .or(metrics)
        .unify()
        .or(list)
        .unify()
        .or(show)
        .unify()
        .or(logs)
        .unify()
        .or(start)
        .unify()
        .or(stop)
        .unify()
        .or(mcp)
        .unify()
        .boxed();
    // With several replicas, first of all: a request for a server another
    // replica owns goes there. A lone router skips the question.
    let served = match config.ownership {
        Some(_) => forward::gate(forwarding).or(local).unify().boxed(),
        None => local,
    };
    // No per-request trace here: the listener keeps a DEBUG span per request
    // (warp's INFO lines cost 14-20% of the CPU of a request) and counts them.
    served.recover(handle_rejection).unify()
}

fn unknown_server(name: &str) -> HttpResponse {
    json_reply(
        StatusCode::NOT_FOUND,
        &json!({"success": false, "error": "not found", "message": format!("no MCP server named '{name}'")}),
    )
}

async fn start_server(name: String, state: State) -> HttpResponse {
    let Some(server) = state.reconciler.server(&name) else {
        return unknown_server(&name);
    };
    match server.acquire().await {
        Ok(lease) => {
            drop(lease);
            json_reply(
                StatusCode::OK,
                &json!({"success": true, "message": "Server started"}),
            )
        }
        Err(e) => json_reply(
            status_of(&e),
            &json!({"success": false, "message": e.to_string()}),
        ),
    }
}

async fn stop_server(name: String, state: State) -> HttpResponse {
    let Some(server) = state.reconciler.server(&name) else {
        return unknown_server(&name);
    };
    server.stop("stopped through the API", true).await;
    json_reply(
        StatusCode::OK,
        &json!({"success": true, "message": "Server stopped"}),
    )
}

fn status_of(error: &ServerError) -> StatusCode {
    StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn handle_rejection(rejection: Rejection) -> Result<HttpResponse, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint".to_string())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this endpoint".to_string(),
        )
    } else {
        (StatusCode::BAD_REQUEST, format!("{rejection:?}"))
    };
    Ok(json_reply(
        status,
        &json!({"success": false, "error": status.canonical_reason(), "message": message}),
    ))
}
