//! The HTTP router (warp): the original system's management API and one MCP
//! endpoint per server. An MCP request becomes a lease on the server (starting
//! it if needed) and a line on its stdin; the answer comes back as the body.

use std::convert::Infallible;
use std::sync::Arc;

use serde_json::json;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::access::{self, Operation};
use crate::auth::{self, Auth, Caller};
use crate::group_endpoint::{self, GroupEndpoints};
use crate::kube::ownership::Ownership;
use crate::kube::replicas::{self, ReplicaGate};
use crate::logs;
use crate::mcp::http::reply::{json_reply, text_reply, HttpResponse};
use crate::mcp::http::{self as endpoint, EndpointConfig};
use crate::reconcile::Reconciler;
use crate::route::{self, Route};

/// Every path the router serves, each declared once with what it concerns.
/// A path not declared here is answered 404 whatever filter would serve it,
/// and with several router replicas a `Route::server` path is served by the
/// replica that owns the server: a new route is one line here.
pub const ROUTES: &[Route] = &[
    Route::router("/health"),
    // The dashboard (src/dashboard): the page and its files, and its figures.
    Route::router("/"),
    Route::router("/dashboard/app.js"),
    Route::router("/dashboard/app.css"),
    Route::router("/dashboard/data"),
    Route::router("/metrics"),
    Route::router("/servers"),
    // One MCP endpoint over every server (src/aggregate.rs), and one per
    // MCPServerGroup (src/group_endpoint.rs): any replica serves them.
    Route::router("/mcp"),
    Route::router("/sse"),
    Route::router("/messages"),
    Route::router("/groups"),
    Route::router("/groups/{group}/mcp"),
    Route::router("/groups/{namespace}/{group}/mcp"),
    Route::router("/groups/{group}/sse"),
    Route::router("/groups/{namespace}/{group}/sse"),
    Route::router("/groups/{group}/messages"),
    Route::router("/groups/{namespace}/{group}/messages"),
    Route::server("/servers/{name}"),
    Route::server("/servers/{name}/logs"),
    Route::server("/servers/{name}/start"),
    Route::server("/servers/{name}/stop"),
    Route::server("/mcp/{name}"),
    Route::server("/mcp/{namespace}/{name}"),
    Route::server("/servers/{name}/mcp"),
    Route::server("/sse/{name}"),
    Route::server("/servers/{name}/sse"),
    Route::server("/messages/{name}"),
    // OAuth Protected Resource Metadata (RFC 9728) of mcpod and of each MCP endpoint.
    Route::router("/.well-known/oauth-protected-resource"),
    Route::router("/.well-known/oauth-protected-resource/mcp"),
    Route::router("/.well-known/oauth-protected-resource/sse"),
    Route::router("/.well-known/oauth-protected-resource/messages"),
    Route::router("/.well-known/oauth-protected-resource/groups/{group}/mcp"),
    Route::router("/.well-known/oauth-protected-resource/groups/{namespace}/{group}/mcp"),
    Route::router("/.well-known/oauth-protected-resource/groups/{group}/sse"),
    Route::router("/.well-known/oauth-protected-resource/groups/{namespace}/{group}/sse"),
    Route::router("/.well-known/oauth-protected-resource/groups/{group}/messages"),
    Route::router("/.well-known/oauth-protected-resource/groups/{namespace}/{group}/messages"),
    Route::server("/.well-known/oauth-protected-resource/mcp/{name}"),
    Route::server("/.well-known/oauth-protected-resource/mcp/{namespace}/{name}"),
    Route::server("/.well-known/oauth-protected-resource/servers/{name}/mcp"),
    Route::server("/.well-known/oauth-protected-resource/sse/{name}"),
    Route::server("/.well-known/oauth-protected-resource/servers/{name}/sse"),
    Route::server("/.well-known/oauth-protected-resource/messages/{name}"),
];

/// Router-wide settings.
#[derive(Debug, Clone, Default)]
pub struct RouterConfig {
    pub endpoint: EndpointConfig,
    /// Who may call: authentication and the cross-site checks (default: the
    /// local user, loopback only).
    pub auth: Auth,
    /// Kubernetes with several router replicas: requests for a server another
    /// replica owns are forwarded to it (`None`: every request is served here).
    pub ownership: Option<Arc<Ownership>>,
}

#[derive(Clone)]
struct State {
    reconciler: Arc<Reconciler>,
    aggregate: Arc<crate::aggregate::Aggregate>,
    groups: Arc<GroupEndpoints>,
}

impl State {
    fn statuses(&self) -> Vec<serde_json::Value> {
        self.reconciler
            .servers()
            .iter()
            .map(|s| self.status(s))
            .collect()
    }

    /// A server's status, with the group collisions that leave it out of a group.
    fn status(&self, server: &crate::server::Server) -> serde_json::Value {
        let mut status = json!(server.status());
        let collisions = group_endpoint::collisions_of(&self.reconciler, server.name());
        if !collisions.is_empty() {
            status["groupCollisions"] = json!(collisions);
        }
        status
    }
}

/// All routes, with every rejection turned into a JSON error.
pub fn routes(
    reconciler: Arc<Reconciler>,
    config: RouterConfig,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    // Every route but /health is authenticated, once its path and method matched.
    let caller = auth::filter::caller(config.auth.clone(), ROUTES).boxed();
    // Boxed: the composed filter types get too deep for the compiler otherwise.
    let mcp = endpoint::routes(reconciler.clone(), config.endpoint.clone(), caller.clone()).boxed();
    let gate = ReplicaGate::new(
        reconciler.clone(),
        config.ownership.clone(),
        ROUTES,
        config.endpoint.max_body_bytes,
    );
    let dashboard = crate::dashboard::routes(reconciler.clone(), caller.clone());
    let aggregate = crate::aggregate::Aggregate::new(reconciler.clone(), &config.endpoint);
    // With several replicas, a member is asked on the replica that owns it.
    let member_route = config.ownership.as_ref().map(|ownership| {
        let route: Arc<dyn crate::aggregate::MemberRoute> =
            crate::kube::members::OwnerReplicas::new(ownership.clone());
        route
    });
    if let Some(route) = &member_route {
        aggregate.route_members(route.clone());
    }
    let aggregated = crate::aggregate::routes(aggregate.clone(), caller.clone()).boxed();
    let groups = GroupEndpoints::new(reconciler.clone(), &config.endpoint, member_route);
    let grouped = group_endpoint::routes(groups.clone(), caller.clone())
        .or(group_endpoint::list_route(
            reconciler.clone(),
            caller.clone(),
        ))
        .unify()
        .boxed();
    let state = State {
        reconciler,
        aggregate,
        groups,
    };
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
                    "problems": problems(&state),
                }),
            )
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(caller.clone())
        .and(with_state.clone())
        .map(|_: Caller, state: State| {
            let metrics = crate::metrics::render(&state.reconciler.servers());
            text_reply("text/plain; version=0.0.4", metrics)
        });
    let list = warp::path!("servers")
        .and(warp::get())
        .and(caller.clone())
        .and(with_state.clone())
        .map(|_: Caller, state: State| json_reply(StatusCode::OK, &json!(state.statuses())));
    let show = warp::path!("servers" / String)
        .and(warp::get())
        .and(caller.clone())
        .and(with_state.clone())
        .map(
            |name: String, _: Caller, state: State| match state.reconciler.server(&name) {
                Some(server) => json_reply(StatusCode::OK, &state.status(&server)),
                None => unknown_server(&name),
            },
        );
    let logs = warp::path!("servers" / String / "logs")
        .and(warp::get())
        .and(caller.clone())
        .and(with_state.clone())
        .and(warp::query::<std::collections::HashMap<String, String>>())
        .map(
            |name: String,
             caller: Caller,
             state: State,
             query: std::collections::HashMap<String, String>| {
                let Some(server) = state.reconciler.server(&name) else {
                    return unknown_server(&name);
                };
                if let Err(message) = access::may_operate(&server, &caller, Operation::Logs) {
                    return forbidden(message);
                }
                let tail = match parse_tail(query.get("tail").map(String::as_str)) {
                    Ok(tail) => tail,
                    Err(message) => {
                        return json_reply(
                            StatusCode::BAD_REQUEST,
                            &json!({"success": false, "error": "bad request", "message": message}),
                        )
                    }
                };
                let mut text = server.log().tail(tail).join("\n");
                text.push('\n');
                text_reply("text/plain; charset=utf-8", text)
            },
        );
    let start = warp::path!("servers" / String / "start")
        .and(warp::post())
        .and(caller.clone())
        .and(with_state.clone())
        .then(start_server);
    let stop = warp::path!("servers" / String / "stop")
        .and(warp::post())
        .and(caller)
        .and(with_state.clone())
        .then(stop_server);

    let resource_metadata = auth::metadata::routes(config.auth.clone(), ROUTES);
    // The MCP endpoints first: nearly every request is one of theirs, and
    // each route tried before costs it a path match (paths never overlap).
    let local = mcp
        .or(health)
        .unify()
        .or(resource_metadata)
        .unify()
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
        .or(dashboard)
        .unify()
        .or(aggregated)
        .unify()
        .or(grouped)
        .unify()
        .boxed();
    // With several replicas, first of all: a request for a server another
    // replica owns goes there. A lone router skips the question.
    let served = match config.ownership {
        Some(_) => replicas::gate(gate).or(local).unify().boxed(),
        None => local,
    };
    // Only declared paths are served, so none can bypass the gate above; and
    // nothing is served to a foreign Host or Origin.
    let served = route::declared(ROUTES)
        .and(auth::filter::cross_site(config.auth.clone()))
        .and(served)
        .boxed();
    // No per-request trace here: the listener keeps a DEBUG span per request
    // (warp's INFO lines cost 14-20% of the CPU of a request) and counts them.
    served.recover(handle_rejection).unify()
}

/// What a listener of its own (`mcpod router --health-listen`) serves without
/// authentication: `GET /health` and `GET /metrics`, for kubelet probes and
/// Prometheus, which carry no credentials. Nothing else is answered there but
/// 404: the same routes as [`routes`], limited to these two paths.
pub fn probe_routes(
    reconciler: Arc<Reconciler>,
) -> impl Filter<Extract = (HttpResponse,), Error = Infallible> + Clone {
    const PROBE_ROUTES: &[Route] = &[Route::router("/health"), Route::router("/metrics")];
    route::declared(PROBE_ROUTES)
        .and(routes(reconciler, RouterConfig::default()))
        .map(Reply::into_response)
        .recover(handle_rejection)
        .unify()
}

/// Lines `GET /servers/{name}/logs` returns without `?tail=`.
const DEFAULT_TAIL_LINES: usize = 100;

/// `?tail=N`: a whole number of lines, capped at [`logs::MAX_TAIL_LINES`]
/// (a larger N gets the cap: nothing is ever sized by the client's number).
fn parse_tail(tail: Option<&str>) -> Result<usize, String> {
    let Some(text) = tail else {
        return Ok(DEFAULT_TAIL_LINES);
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "tail must be a whole number of lines (at most {}), not '{}'",
            logs::MAX_TAIL_LINES,
            text.chars().take(32).collect::<String>()
        ));
    }
    // All digits: a parse failure can only be an overflow, i.e. over the cap.
    Ok(text
        .parse::<usize>()
        .map_or(logs::MAX_TAIL_LINES, |n| n.min(logs::MAX_TAIL_LINES)))
}

/// What `/health` lists: refused or conflicting manifests, and logs that
/// cannot be written.
fn problems(state: &State) -> Vec<String> {
    let mut problems = state.reconciler.problems();
    problems.extend(logs::write_problems());
    problems.extend(state.aggregate.problems());
    problems.extend(state.groups.problems());
    problems
}

fn unknown_server(name: &str) -> HttpResponse {
    json_reply(
        StatusCode::NOT_FOUND,
        &json!({"success": false, "error": "not found", "message": format!("no MCP server named '{name}'")}),
    )
}

fn forbidden(message: String) -> HttpResponse {
    json_reply(
        StatusCode::FORBIDDEN,
        &json!({"success": false, "error": "forbidden", "message": message}),
    )
}

async fn start_server(name: String, caller: Caller, state: State) -> HttpResponse {
    let Some(server) = state.reconciler.server(&name) else {
        return unknown_server(&name);
    };
    if let Err(message) = access::may_operate(&server, &caller, Operation::Start) {
        return forbidden(message);
    }
    match server.acquire().await {
        Ok(hold) => {
            drop(hold);
            json_reply(
                StatusCode::OK,
                &json!({"success": true, "message": "Server started"}),
            )
        }
        Err(e) => json_reply(
            e.status(),
            &json!({"success": false, "message": e.to_string()}),
        ),
    }
}

async fn stop_server(name: String, caller: Caller, state: State) -> HttpResponse {
    let Some(server) = state.reconciler.server(&name) else {
        return unknown_server(&name);
    };
    if let Err(message) = access::may_operate(&server, &caller, Operation::Stop) {
        return forbidden(message);
    }
    server.stop("stopped through the API", true).await;
    json_reply(
        StatusCode::OK,
        &json!({"success": true, "message": "Server stopped"}),
    )
}

async fn handle_rejection(rejection: Rejection) -> Result<HttpResponse, Infallible> {
    if let Some(refused) = rejection.find::<auth::filter::Refused>() {
        return Ok(refused.reply());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Concern;

    /// The forwarding gate finds a route's server through `route::find` over
    /// this table: every route whose path names a server must be declared a
    /// server's and name it there; no other route may (it would be forwarded).
    #[test]
    fn every_server_route_names_its_server_for_the_forwarding_gate() {
        for declared in ROUTES {
            assert_eq!(
                declared.concern == Concern::Server,
                declared.pattern.contains("{name}"),
                "{}: a path that names a server is that server's route",
                declared.pattern
            );
            let path = declared.path_for("ns", "fix");
            let matched = route::find(ROUTES, &path)
                .unwrap_or_else(|| panic!("{} does not match itself", declared.pattern));
            assert_eq!(
                matched.route, declared,
                "{path} is taken by an earlier route"
            );
            let server = matched.server();
            match declared.concern {
                Concern::Server => {
                    let server = server.unwrap_or_else(|| {
                        panic!("{} concerns a server but names none", declared.pattern)
                    });
                    assert_eq!(server.name, "fix", "{}", declared.pattern);
                    let namespaced = declared.pattern.contains("{namespace}");
                    assert_eq!(server.namespace, namespaced.then_some("ns"));
                }
                Concern::Router => assert_eq!(server, None, "{}", declared.pattern),
            }
            let unknown = declared
                .pattern
                .split('/')
                .filter(|s| s.starts_with('{'))
                .find(|s| !matches!(*s, "{name}" | "{namespace}" | "{group}"));
            assert_eq!(unknown, None, "{}: unknown placeholder", declared.pattern);
        }
    }

    #[test]
    fn tail_is_validated_and_capped() {
        assert_eq!(parse_tail(None), Ok(DEFAULT_TAIL_LINES));
        assert_eq!(parse_tail(Some("5")), Ok(5));
        assert_eq!(parse_tail(Some("0")), Ok(0));
        assert_eq!(parse_tail(Some("1000000000000")), Ok(logs::MAX_TAIL_LINES));
        assert_eq!(parse_tail(Some(&"9".repeat(400))), Ok(logs::MAX_TAIL_LINES));
        for garbage in ["", "-1", "ten", "1e9", "5 ", "0x10", "+3"] {
            let error = parse_tail(Some(garbage)).unwrap_err();
            assert!(error.contains("whole number"), "{garbage}: {error}");
        }
    }
}
