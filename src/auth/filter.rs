//! The two warp filters every route passes: [`cross_site`] for the whole
//! listener, then [`caller`] on each authenticated route.

use serde_json::{json, Value};
use warp::http::{HeaderMap, Method, StatusCode};
use warp::path::FullPath;
use warp::{Filter, Rejection};

use super::host::{host_allowed, origin_allowed};
use super::{Auth, AuthError, Caller};
use crate::mcp::http::reply::{json_reply, HttpResponse};
use crate::route::Route;

/// A request refused before it reached any route: rendered by the router's
/// rejection handler.
#[derive(Debug)]
pub struct Refused {
    status: StatusCode,
    /// `WWW-Authenticate` of a 401.
    challenge: Option<String>,
    message: String,
}

impl warp::reject::Reject for Refused {}

impl Refused {
    /// The answer: a JSON-RPC-shaped error (MCP clients read it) that also
    /// carries the management API's `success`/`message` fields.
    pub fn reply(&self) -> HttpResponse {
        let body: Value = json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": {"code": crate::mcp::message::INVALID_REQUEST, "message": self.message},
            "success": false,
            "message": self.message,
        });
        let mut response = json_reply(self.status, &body);
        if let Some(challenge) = &self.challenge {
            if let Ok(value) = challenge.parse() {
                response.headers_mut().insert("www-authenticate", value);
            }
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert("retry-after", 5.into());
        }
        response
    }
}

/// DNS-rebinding and cross-site protection for every route (see [`super::host`]):
/// a foreign `Host` is refused whatever the method; a foreign `Origin` on any
/// request (a browser names its page on everything but a same-origin GET)
/// but the reads of public OAuth metadata ([`super::metadata`]).
pub fn cross_site(auth: Auth) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and_then(move |method: Method, path: FullPath, headers: HeaderMap| {
            let verdict = check_cross_site(&auth, &method, path.as_str(), &headers);
            async move { verdict.map_err(warp::reject::custom) }
        })
        .untuple_one()
}

fn check_cross_site(
    auth: &Auth,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(), Refused> {
    let config = &auth.config;
    if !host_allowed(headers, &config.allowed_hosts) {
        return Err(forbidden_header(
            headers,
            "host",
            "is not a name this mcpod serves (DNS-rebinding protection); an operator can \
             allow it with --allowed-host",
        ));
    }
    if !origin_allowed(headers, &config.allowed_origins)
        && !same_origin(headers)
        && !super::metadata::is_public_read(method, path)
    {
        return Err(forbidden_header(
            headers,
            "origin",
            "is not allowed (cross-site protection); an operator can allow it with \
             --allowed-origin",
        ));
    }
    Ok(())
}

/// 403 naming the header value that was refused, and why.
fn forbidden_header(headers: &HeaderMap, name: &str, why: &str) -> Refused {
    let value = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Refused {
        status: StatusCode::FORBIDDEN,
        challenge: None,
        message: format!("{name} '{}' {why}", printable(value)),
    }
}

/// A page mcpod served itself (its dashboard) sends its own origin: the same
/// authority as `Host`, which passed the Host check.
fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    match (header("origin"), header("host")) {
        (Some(origin), Some(host)) => {
            origin.split_once("://").is_some_and(|(scheme, authority)| {
                matches!(scheme, "http" | "https") && authority.eq_ignore_ascii_case(host)
            })
        }
        _ => false,
    }
}

/// Who sent the request (401 with a `WWW-Authenticate` challenge if unknown).
pub fn caller(
    auth: Auth,
    routes: &'static [Route],
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    warp::path::full()
        .and(warp::header::headers_cloned())
        .and_then(move |path: FullPath, headers: HeaderMap| {
            let auth = auth.clone();
            async move {
                // Nothing to check: no resource URLs to build for every request.
                if !auth.required() {
                    return Ok(Caller::local());
                }
                let resource = auth.resource(&headers, path.as_str(), routes);
                auth.authenticate(&headers, &resource)
                    .await
                    .map_err(|error| {
                        let status = match error {
                            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                            AuthError::InsufficientScope(_) => StatusCode::FORBIDDEN,
                            AuthError::Missing | AuthError::InvalidToken(_) => {
                                StatusCode::UNAUTHORIZED
                            }
                        };
                        let challenge = (status != StatusCode::SERVICE_UNAVAILABLE)
                            .then(|| auth.challenge(&resource, &error));
                        warp::reject::custom(Refused {
                            status,
                            challenge,
                            message: error.to_string(),
                        })
                    })
            }
        })
}

/// At most 100 printable characters of a client-sent value, for a message.
fn printable(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn a_page_on_mcpods_own_origin_passes_and_a_foreign_one_does_not() {
        let auth = Auth::default();
        let post = Method::POST;
        let own = headers(&[
            ("host", "10.0.0.5:8080"),
            ("origin", "http://10.0.0.5:8080"),
        ]);
        assert!(check_cross_site(&auth, &post, "/servers/x/stop", &own).is_ok());
        let foreign = headers(&[
            ("host", "10.0.0.5:8080"),
            ("origin", "https://evil.example"),
        ]);
        let refused = check_cross_site(&auth, &post, "/servers/x/stop", &foreign).unwrap_err();
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        let rebound = headers(&[
            ("host", "evil.example:8080"),
            ("origin", "http://evil.example:8080"),
        ]);
        let refused = check_cross_site(&auth, &post, "/servers/x/stop", &rebound).unwrap_err();
        assert!(
            refused.message.contains("DNS-rebinding"),
            "{}",
            refused.message
        );
        assert!(check_cross_site(
            &auth,
            &post,
            "/servers/x/stop",
            &headers(&[("host", "127.0.0.1:1")])
        )
        .is_ok());
    }

    #[test]
    fn oauth_metadata_is_readable_cross_site_but_only_under_a_host_mcpod_serves() {
        let auth = Auth::default();
        let path = "/.well-known/oauth-protected-resource/mcp/time";
        let foreign = headers(&[("host", "10.0.0.5:8080"), ("origin", "https://app.example")]);
        assert!(check_cross_site(&auth, &Method::GET, path, &foreign).is_ok());
        assert!(check_cross_site(&auth, &Method::OPTIONS, path, &foreign).is_ok());
        assert!(check_cross_site(&auth, &Method::POST, path, &foreign).is_err());
        assert!(check_cross_site(&auth, &Method::GET, "/servers", &foreign).is_err());
        let rebound = headers(&[("host", "evil.example"), ("origin", "http://evil.example")]);
        assert!(check_cross_site(&auth, &Method::GET, path, &rebound).is_err());
    }
}
