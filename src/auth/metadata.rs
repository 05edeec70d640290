//! OAuth 2.0 Protected Resource Metadata (RFC 9728), which MCP clients read to
//! find the authorization server: for mcpod as a whole at
//! `/.well-known/oauth-protected-resource`, and for each MCP endpoint at that
//! path followed by the endpoint's (§3.1), the URL a 401's
//! `WWW-Authenticate: Bearer resource_metadata=…` names.
//!
//! The documents are public and carry no state, so they are served without
//! authentication, to any origin (browser-based clients fetch them
//! cross-site; `Access-Control-Allow-Origin: *`), but only to a `Host` mcpod
//! serves. Without an OAuth issuer configured there is nothing to say: 404.

use serde_json::{json, Map, Value};
use warp::http::{HeaderMap, Method, Response, StatusCode};
use warp::path::FullPath;
use warp::{Filter, Rejection};

use super::Auth;
use crate::mcp::http::reply::{json_reply, HttpResponse};
use crate::route::Route;

/// The well-known path; an endpoint's metadata is this followed by its path.
pub const PREFIX: &str = "/.well-known/oauth-protected-resource";

/// Whether `path` is a metadata document's.
pub fn is_metadata_path(path: &str) -> bool {
    path.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Whether a request only reads public metadata: exempt from the Origin check.
pub fn is_public_read(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::OPTIONS) && is_metadata_path(path)
}

/// `GET` (and the CORS preflight `OPTIONS`) of every metadata path `routes`
/// declares (the router declares them; undeclared ones never get here).
pub fn routes(
    auth: Auth,
    routes: &'static [Route],
) -> impl Filter<Extract = (HttpResponse,), Error = Rejection> + Clone {
    let configured = !auth.config.authorization_servers.is_empty();
    // Only metadata paths, and only with an issuer to name: 404 otherwise,
    // whatever the method.
    let metadata_path = warp::path::full()
        .and_then(move |path: FullPath| async move {
            if configured && is_metadata_path(path.as_str()) {
                Ok(path)
            } else {
                Err(warp::reject::not_found())
            }
        })
        .boxed();
    let get = metadata_path
        .clone()
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .map(move |path: FullPath, headers: HeaderMap| {
            let endpoint = &path.as_str()[PREFIX.len()..];
            let resource = auth.resource(&headers, endpoint, routes).url();
            public(json_reply(StatusCode::OK, &document(&auth, &resource)))
        });
    // A browser asks first when its GET carries MCP-Protocol-Version.
    let preflight = metadata_path.and(warp::options()).map(|_: FullPath| {
        let response = Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header("access-control-allow-methods", "GET, OPTIONS")
            .header("access-control-allow-headers", "*")
            .header("access-control-max-age", "86400")
            .body(bytes::Bytes::new().into())
            .expect("static headers are valid");
        public(response)
    });
    get.or(preflight).unify()
}

/// Readable from any origin.
fn public(mut response: HttpResponse) -> HttpResponse {
    response
        .headers_mut()
        .insert("access-control-allow-origin", "*".parse().expect("valid"));
    response
}

/// The metadata of `resource` (RFC 9728 §2).
fn document(auth: &Auth, resource: &str) -> Value {
    let config = &auth.config;
    let mut document = Map::new();
    document.insert("resource".into(), json!(resource));
    document.insert(
        "authorization_servers".into(),
        json!(config.authorization_servers),
    );
    let mut scopes = config.scopes.clone();
    for required in &config.required_scopes {
        if !scopes.contains(required) {
            scopes.push(required.clone());
        }
    }
    if !scopes.is_empty() {
        document.insert("scopes_supported".into(), json!(scopes));
    }
    document.insert("bearer_methods_supported".into(), json!(["header"]));
    document.insert("resource_name".into(), json!("mcpod"));
    Value::Object(document)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthConfig;

    #[test]
    fn metadata_paths_are_the_well_known_one_and_those_under_it() {
        assert!(is_metadata_path(PREFIX));
        assert!(is_metadata_path(&format!("{PREFIX}/mcp/time")));
        assert!(!is_metadata_path(&format!("{PREFIX}x/mcp/time")));
        assert!(!is_metadata_path("/mcp/time"));
        assert!(is_public_read(&Method::GET, PREFIX));
        assert!(!is_public_read(&Method::POST, PREFIX));
    }

    #[test]
    fn the_document_names_the_resource_its_servers_and_scopes() {
        let auth = Auth::new(AuthConfig {
            authorization_servers: vec!["https://as.example".into()],
            scopes: vec!["mcp:tools".into()],
            required_scopes: vec!["mcp:call".into()],
            ..AuthConfig::default()
        });
        let document = document(&auth, "https://mcp.example/mcp/time");
        assert_eq!(
            document,
            json!({
                "resource": "https://mcp.example/mcp/time",
                "authorization_servers": ["https://as.example"],
                "scopes_supported": ["mcp:tools", "mcp:call"],
                "bearer_methods_supported": ["header"],
                "resource_name": "mcpod",
            })
        );
    }
}
