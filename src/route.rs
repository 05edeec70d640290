//! The router's paths as data. The router declares every path it serves once,
//! in its route table (`router::ROUTES`), with what the path concerns: the
//! router as a whole, or one server. Replica forwarding reads the same table
//! to tell a server's requests (served by the replica that owns the server)
//! from the router's own, and the router answers 404 to a path its table does
//! not declare: a route cannot be served without saying whether it must be
//! forwarded.
//!
//! Patterns are paths whose segments are literals or placeholders: `{name}`
//! (the server's name), `{group}` (an MCPServerGroup's: a router route, since
//! a group spans servers) and `{namespace}` (on Kubernetes, a server or group
//! outside the router's own namespace). A path matches as warp's `path!` does: segment by
//! segment, placeholders never empty, one trailing slash allowed.

use warp::path::FullPath;
use warp::{Filter, Rejection};

/// What a route concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concern {
    /// The router as a whole (health, metrics, the list of servers): any
    /// replica answers it.
    Router,
    /// One server, named in the path: with several router replicas, the
    /// replica that owns the server answers it.
    Server,
}

/// One path the router serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `/servers/{name}/logs`: literals and placeholders, `/`-separated.
    pub pattern: &'static str,
    pub concern: Concern,
}

/// The server a path names: `{name}`, and `{namespace}` when the route has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerPath<'p> {
    pub namespace: Option<&'p str>,
    pub name: &'p str,
}

/// A path matched against a route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched<'p> {
    pub route: &'static Route,
    /// What the placeholders captured (`name`, `namespace`), if the route has them.
    pub name: Option<&'p str>,
    pub namespace: Option<&'p str>,
}

impl<'p> Matched<'p> {
    /// The server the request is for, when its route concerns one server.
    pub fn server(&self) -> Option<ServerPath<'p>> {
        match self.route.concern {
            Concern::Router => None,
            Concern::Server => Some(ServerPath {
                namespace: self.namespace,
                name: self.name?,
            }),
        }
    }
}

impl Route {
    /// A route of the router as a whole.
    pub const fn router(pattern: &'static str) -> Route {
        Route {
            pattern,
            concern: Concern::Router,
        }
    }

    /// A route of one server; its pattern holds `{name}`.
    pub const fn server(pattern: &'static str) -> Route {
        Route {
            pattern,
            concern: Concern::Server,
        }
    }

    /// Matches `path` (no query) against this route's pattern.
    pub fn matches<'p>(&'static self, path: &'p str) -> Option<Matched<'p>> {
        let mut matched = Matched {
            route: self,
            name: None,
            namespace: None,
        };
        let mut given = segments(path);
        for part in segments(self.pattern) {
            let segment = given.next()?;
            match part {
                "{name}" if !segment.is_empty() => matched.name = Some(segment),
                "{namespace}" if !segment.is_empty() => matched.namespace = Some(segment),
                "{group}" if !segment.is_empty() => {}
                literal if literal == segment && !literal.starts_with('{') => {}
                _ => return None,
            }
        }
        given.next().is_none().then_some(matched)
    }

    /// This route's path for one server: its placeholders filled in.
    pub fn path_for(&self, namespace: &str, name: &str) -> String {
        self.pattern
            .replace("{namespace}", namespace)
            .replace("{name}", name)
            .replace("{group}", name)
    }
}

/// The first route of `routes` that `path` matches.
pub fn find<'p>(routes: &'static [Route], path: &'p str) -> Option<Matched<'p>> {
    routes.iter().find_map(|route| route.matches(path))
}

/// Lets through only requests for a path `routes` declares; rejects the
/// others as not found (404), before any route sees them.
pub fn declared(routes: &'static [Route]) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::full()
        .and_then(move |path: FullPath| async move {
            match find(routes, path.as_str()) {
                Some(_) => Ok(()),
                None => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
}

/// A path's segments, as warp sees them: the leading slash and one trailing
/// slash dropped, empty segments kept (so `/mcp//fix` matches nothing).
fn segments(path: &str) -> std::str::Split<'_, char> {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.strip_suffix('/').unwrap_or(path).split('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    static TABLE: &[Route] = &[
        Route::router("/health"),
        Route::router("/servers"),
        Route::server("/servers/{name}"),
        Route::server("/servers/{name}/logs"),
        Route::server("/mcp/{name}"),
        Route::server("/mcp/{namespace}/{name}"),
        Route::router("/groups/{group}/mcp"),
    ];

    fn server(path: &str) -> Option<(Option<&str>, &str)> {
        let matched = find(TABLE, path)?;
        let server = matched.server()?;
        Some((server.namespace, server.name))
    }

    #[test]
    fn paths_match_their_route_and_name_their_server() {
        assert_eq!(find(TABLE, "/health").unwrap().route.pattern, "/health");
        assert_eq!(server("/health"), None, "the router's own");
        assert_eq!(server("/servers"), None);
        assert_eq!(server("/servers/time"), Some((None, "time")));
        assert_eq!(server("/servers/time/logs"), Some((None, "time")));
        assert_eq!(server("/mcp/time"), Some((None, "time")));
        assert_eq!(server("/mcp/tools/time"), Some((Some("tools"), "time")));
        // A group's endpoint is the router's: it names no one server.
        let group = find(TABLE, "/groups/all/mcp").unwrap();
        assert_eq!(group.route.pattern, "/groups/{group}/mcp");
        assert_eq!(server("/groups/all/mcp"), None);
        assert!(find(TABLE, "/groups//mcp").is_none());
    }

    #[test]
    fn matching_follows_warp_path_rules() {
        // One trailing slash is the same path; two are not.
        assert_eq!(server("/mcp/time/"), Some((None, "time")));
        assert_eq!(find(TABLE, "/health/").unwrap().route.pattern, "/health");
        assert!(find(TABLE, "/mcp/time//").is_none());
        // Placeholders are never empty; literals match exactly.
        assert!(find(TABLE, "/mcp//time").is_none());
        assert!(find(TABLE, "/mcp/").is_none());
        assert!(find(TABLE, "/MCP/time").is_none());
        // No prefix matches: a longer or shorter path is another path.
        assert!(find(TABLE, "/servers/time/logs/more").is_none());
        assert!(find(TABLE, "/mcp/a/b/c").is_none());
        assert!(find(TABLE, "/").is_none());
        assert!(find(TABLE, "").is_none());
    }

    #[test]
    fn path_for_fills_the_placeholders() {
        assert_eq!(
            Route::server("/mcp/{namespace}/{name}").path_for("ns", "fix"),
            "/mcp/ns/fix"
        );
        assert_eq!(Route::router("/health").path_for("ns", "fix"), "/health");
        assert_eq!(
            Route::router("/groups/{namespace}/{group}/mcp").path_for("ns", "fix"),
            "/groups/ns/fix/mcp"
        );
    }

    #[tokio::test]
    async fn undeclared_paths_are_not_found() {
        let filter = declared(TABLE).map(|| "served");
        let served = warp::test::request().path("/servers/time/logs?tail=5");
        assert_eq!(served.reply(&filter).await.status(), 200);
        let unknown = warp::test::request().path("/servers/time/unknown");
        assert_eq!(unknown.reply(&filter).await.status(), 404);
    }
}
