//! `/groups/{name}/mcp` (and `/groups/{namespace}/{name}/mcp` on Kubernetes):
//! each MCPServerGroup served as one MCP endpoint, the aggregated endpoint of
//! `/mcp` scoped to the group's members ([`Aggregate`] with
//! [`Scope::Group`]); and `GET /groups`, every group with its members and
//! collisions.
//!
//! A group's endpoint (and its sessions) lives while the group is declared;
//! its membership is read on every request, so a server labelled in or out
//! counts at once, without a restart or a new session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::Filter;

use crate::aggregate::{legacy, Aggregate, MemberRoute, Scope, REQUEST_HEADERS};
use crate::auth::Caller;
use crate::crd::MCPServerGroup;
use crate::group::{self, Membership};
use crate::mcp::error::RequestError;
use crate::mcp::http::reply::{json_reply, HttpResponse};
use crate::mcp::http::{refuse, EndpointConfig};
use crate::reconcile::Reconciler;

/// The endpoints of the declared groups, made on first use.
pub struct GroupEndpoints {
    reconciler: Arc<Reconciler>,
    config: EndpointConfig,
    /// With several router replicas: where members another replica owns are asked.
    member_route: Option<Arc<dyn MemberRoute>>,
    endpoints: Mutex<HashMap<String, Arc<Aggregate>>>,
}

impl GroupEndpoints {
    pub fn new(
        reconciler: Arc<Reconciler>,
        config: &EndpointConfig,
        member_route: Option<Arc<dyn MemberRoute>>,
    ) -> Arc<GroupEndpoints> {
        Arc::new(GroupEndpoints {
            reconciler,
            config: config.clone(),
            member_route,
            endpoints: Mutex::default(),
        })
    }

    /// The endpoint of the group with this key, while the group is declared
    /// (a removed group's endpoint and sessions go with it).
    fn endpoint(&self, key: &str) -> Result<Arc<Aggregate>, RequestError> {
        let mut endpoints = self.endpoints.lock().unwrap();
        if self.reconciler.group(key).is_none() {
            endpoints.remove(key);
            return Err(RequestError::UnknownGroup(key.to_string()));
        }
        let endpoint = endpoints.entry(key.to_string()).or_insert_with(|| {
            let endpoint = Aggregate::scoped(
                self.reconciler.clone(),
                &self.config,
                Scope::Group(key.to_string()),
            );
            if let Some(route) = &self.member_route {
                endpoint.route_members(route.clone());
            }
            endpoint
        });
        Ok(endpoint.clone())
    }

    /// Name collisions the groups' listings found (beyond the prefix
    /// collisions the reconciler reports): what `/health` adds.
    pub fn problems(&self) -> Vec<String> {
        let endpoints = self.endpoints.lock().unwrap();
        endpoints
            .iter()
            .flat_map(|(key, endpoint)| {
                endpoint
                    .problems()
                    .into_iter()
                    .map(move |p| format!("MCPServerGroup {key}: {p}"))
            })
            .collect()
    }
}

/// What `GET /groups` shows of one group.
pub fn view(key: &str, group: &MCPServerGroup, membership: &Membership) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = group::status(group, membership, &now);
    json!({
        "name": key,
        "description": group.spec.description,
        "endpoint": format!("/groups/{key}/mcp"),
        "separator": group.spec.separator(),
        "members": status.members,
        "collisions": status.collisions,
        "conditions": status.conditions,
    })
}

/// `GET /groups`: every group, its members and collisions.
pub fn list(reconciler: &Reconciler) -> Value {
    let groups: Vec<Value> = reconciler
        .groups()
        .iter()
        .map(|(key, group, membership)| view(key, group, membership))
        .collect();
    json!(groups)
}

/// The collisions (with the group's key) that name `server`: what its status shows.
pub fn collisions_of(reconciler: &Reconciler, server: &str) -> Vec<String> {
    reconciler
        .groups()
        .iter()
        .flat_map(|(key, _, membership)| {
            membership
                .collisions
                .iter()
                .filter(|c| c.servers.iter().any(|s| s == server))
                .map(move |c| format!("MCPServerGroup {key}: {}", c.message))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `POST|GET|DELETE /groups/{name}/mcp` and `/groups/{namespace}/{name}/mcp`.
pub fn routes(
    groups: Arc<GroupEndpoints>,
    caller: BoxedFilter<(Caller,)>,
) -> BoxedFilter<(HttpResponse,)> {
    let (groups_for_legacy, caller_for_legacy) = (groups.clone(), caller.clone());
    let with = warp::any().map(move || groups.clone());
    let bare = warp::path!("groups" / String / "mcp")
        .and(with.clone())
        .map(|name: String, groups: Arc<GroupEndpoints>| (name, groups));
    let namespaced = warp::path!("groups" / String / String / "mcp")
        .and(with)
        .map(
            |namespace: String, name: String, groups: Arc<GroupEndpoints>| {
                (groups.reconciler.key_for(&namespace, &name), groups)
            },
        );
    let target = bare.or(namespaced).unify().untuple_one().boxed();
    let post =
        target
            .clone()
            .and(warp::post())
            .and(caller.clone())
            .and(warp::header::headers_cloned())
            .and(warp::body::stream())
            .then(
                |key: String,
                 groups: Arc<GroupEndpoints>,
                 caller: Caller,
                 headers: HeaderMap,
                 body| async move {
                    let endpoint = match groups.endpoint(&key) {
                        Ok(endpoint) => endpoint,
                        Err(error) => return refuse(error),
                    };
                    let span = tracing::debug_span!("mcp", group = %key, caller = %caller);
                    let answer = tracing::Instrument::instrument(
                        endpoint.post(caller, &headers, body),
                        span,
                    );
                    REQUEST_HEADERS.scope(headers.clone(), answer).await
                },
            );
    let get = target
        .clone()
        .and(warp::get())
        .and(caller.clone())
        .and(warp::header::headers_cloned())
        .map(
            |key: String, groups: Arc<GroupEndpoints>, caller: Caller, headers: HeaderMap| {
                match groups.endpoint(&key) {
                    Ok(endpoint) => endpoint.listen(caller, &headers),
                    Err(error) => refuse(error),
                }
            },
        );
    let delete = target
        .and(warp::delete())
        .and(caller)
        .and(warp::header::headers_cloned())
        .map(
            |key: String, groups: Arc<GroupEndpoints>, caller: Caller, headers: HeaderMap| {
                match groups.endpoint(&key) {
                    Ok(endpoint) => endpoint.delete(&caller, &headers),
                    Err(error) => refuse(error),
                }
            },
        );
    post.or(get)
        .unify()
        .or(delete)
        .unify()
        .or(legacy_routes(groups_for_legacy, caller_for_legacy))
        .unify()
        .boxed()
}

/// Legacy HTTP+SSE (2024-11-05) on a group: `GET /groups/{name}/sse` opens
/// the stream, which names `/groups/{name}/messages` for the client's POSTs
/// (`/groups/{namespace}/{name}/…` alike).
fn legacy_routes(
    groups: Arc<GroupEndpoints>,
    caller: BoxedFilter<(Caller,)>,
) -> BoxedFilter<(HttpResponse,)> {
    let with = warp::any().map(move || groups.clone());
    // The group's key and the path its requests were addressed to.
    let target = |tail: &'static str| {
        let bare = warp::path("groups")
            .and(warp::path::param::<String>())
            .and(warp::path(tail))
            .and(warp::path::end())
            .and(with.clone())
            .map(move |name: String, groups: Arc<GroupEndpoints>| {
                let path = format!("/groups/{name}");
                (name, path, groups)
            });
        let namespaced = warp::path("groups")
            .and(warp::path::param::<String>())
            .and(warp::path::param::<String>())
            .and(warp::path(tail))
            .and(warp::path::end())
            .and(with.clone())
            .map(
                move |namespace: String, name: String, groups: Arc<GroupEndpoints>| {
                    let key = groups.reconciler.key_for(&namespace, &name);
                    (key, format!("/groups/{namespace}/{name}"), groups)
                },
            );
        bare.or(namespaced).unify().untuple_one().boxed()
    };
    let open = target("sse").and(warp::get()).and(caller.clone()).map(
        |key: String, path: String, groups: Arc<GroupEndpoints>, caller: Caller| match groups
            .endpoint(&key)
        {
            Ok(endpoint) => legacy::open(endpoint, caller, &format!("{path}/messages")),
            Err(error) => refuse(error),
        },
    );
    let post = target("messages")
        .and(warp::post())
        .and(caller)
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            |key: String,
             _path: String,
             groups: Arc<GroupEndpoints>,
             caller: Caller,
             query: HashMap<String, String>,
             headers: HeaderMap,
             body| async move {
                match groups.endpoint(&key) {
                    Ok(endpoint) => {
                        let answer = legacy::post(endpoint, caller, query, body);
                        REQUEST_HEADERS.scope(headers, answer).await
                    }
                    Err(error) => refuse(error),
                }
            },
        );
    open.or(post).unify().boxed()
}

/// `GET /groups`.
pub fn list_route(
    reconciler: Arc<Reconciler>,
    caller: BoxedFilter<(Caller,)>,
) -> BoxedFilter<(HttpResponse,)> {
    warp::path!("groups")
        .and(warp::get())
        .and(caller)
        .map(move |_: Caller| json_reply(StatusCode::OK, &list(&reconciler)))
        .boxed()
}
