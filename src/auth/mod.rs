//! Who is calling: every request to the router is authenticated once, here,
//! into a [`Caller`]; what a caller may then do is the `access` module's question.
//!
//! A bearer token (the `Authorization: Bearer …` header) is offered to each
//! configured [`Verify`] in turn — static API keys ([`keys`]), OAuth 2.1 JWTs
//! ([`jwt`]), Kubernetes ServiceAccount tokens ([`tokenreview`]) — and the first
//! that recognises it decides. With no verifier configured mcpod serves one
//! trusted local user ([`Caller::local`]), which [`check_exposure`] allows only
//! on a loopback listener unless the operator explicitly says otherwise.
//! Tokens are never passed on to the MCP servers.

pub mod filter;
pub mod host;
pub mod jwt;
pub mod keys;
pub mod metadata;
pub mod tokenreview;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use warp::http::HeaderMap;

use crate::route::{Concern, Route};

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Via {
    /// No authentication configured: the one trusted user of a loopback mcpod.
    Local,
    /// A static API key from the keys file or Secret.
    ApiKey,
    /// An OAuth 2.1 access token (JWT) from this issuer.
    Jwt { issuer: String },
    /// A Kubernetes ServiceAccount token, checked with a TokenReview.
    ServiceAccount,
    /// Nobody: no credentials, or refused ones (only in the audit log's
    /// records of refused requests).
    Unauthenticated,
}

/// An authenticated caller: who, in which groups, with which OAuth scopes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Caller {
    pub subject: String,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub via: Via,
}

impl Caller {
    /// The one trusted user of an mcpod with no authentication configured.
    pub fn local() -> Caller {
        Caller {
            subject: "local".to_string(),
            groups: vec![],
            scopes: vec![],
            via: Via::Local,
        }
    }

    /// The local user may do everything: no policy applies to them.
    pub fn is_local(&self) -> bool {
        self.via == Via::Local
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.subject)
    }
}

/// Why a request was not authenticated. Rendered as 401 with a
/// `WWW-Authenticate: Bearer` challenge (RFC 6750 §3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all: the challenge carries no `error` (RFC 6750 §3.1).
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    /// Credentials were sent but are not valid here (`error="invalid_token"`).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// A verifier could not reach what it checks against (JWKS, TokenReview):
    /// the caller is not refused for good, so this is 503, not 401.
    #[error("cannot check the token now: {0}")]
    Unavailable(String),
    /// A valid OAuth token without every `--oauth-required-scope`: 403 with
    /// `error="insufficient_scope"` (RFC 6750 §3.1). Holds the scopes lacking.
    #[error("insufficient scope: the token lacks {0}")]
    InsufficientScope(String),
}

/// What a verifier says about a token.
pub enum Verdict {
    /// Not a token this verifier knows (another one may).
    NotMine,
    Valid(Caller),
    Invalid(AuthError),
}

/// The resource a request is for, as OAuth sees it: the audiences a token must
/// name (RFC 8707 resource indicators) to be accepted there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The public base URL of mcpod, e.g. `https://mcp.example.com` (no trailing slash).
    pub base: String,
    /// The path of the endpoint called, e.g. `/mcp/time`.
    pub path: String,
    /// The server the path concerns, if any.
    pub server: Option<String>,
    /// Every path of that server (`/mcp/time`, `/servers/time/mcp`, …).
    pub server_paths: Vec<String>,
}

impl Resource {
    /// Audiences accepted for this request: the endpoint's own URL, the
    /// server's other URLs, and mcpod as a whole (its base URL). A token for
    /// another server is not among them.
    pub fn audiences(&self) -> Vec<String> {
        let mut audiences = vec![self.base.clone(), format!("{}/", self.base)];
        for path in self.server_paths.iter().chain([&self.path]) {
            let url = format!("{}{}", self.base, path);
            if !audiences.contains(&url) {
                audiences.push(url);
            }
        }
        audiences
    }

    /// This resource's URL: the `resource` of its metadata.
    pub fn url(&self) -> String {
        format!("{}{}", self.base, self.path)
    }

    /// The URL of this resource's Protected Resource Metadata (RFC 9728 §3.1:
    /// the well-known segment goes between the host and the path).
    pub fn metadata_url(&self) -> String {
        format!(
            "{}/.well-known/oauth-protected-resource{}",
            self.base,
            self.path.trim_end_matches('/')
        )
    }
}

/// A way of recognising callers from a bearer token.
#[async_trait::async_trait]
pub trait Verify: Send + Sync {
    /// For logs: "api-keys", "oauth", "tokenreview".
    fn name(&self) -> &'static str;
    async fn verify(&self, token: &str, resource: &Resource) -> Verdict;
}

/// Called with every refused authentication (the audit log records it).
pub type RefusalHook = Arc<dyn Fn(&Resource, &AuthError) + Send + Sync>;

/// Settings for authentication and the cross-site checks.
#[derive(Clone, Default)]
pub struct AuthConfig {
    pub verifiers: Vec<Arc<dyn Verify>>,
    /// The public base URL (`--public-url`); without it, `http://{Host}`.
    pub public_url: Option<String>,
    /// OAuth authorization servers named in the Protected Resource Metadata.
    pub authorization_servers: Vec<String>,
    /// Scopes named in the metadata and in `WWW-Authenticate` (`--oauth-scope`).
    pub scopes: Vec<String>,
    /// Scopes every OAuth token must hold (`--oauth-required-scope`).
    pub required_scopes: Vec<String>,
    /// Host names allowed besides loopback names and IP literals (`--allowed-host`).
    pub allowed_hosts: Vec<String>,
    /// Origins allowed besides loopback ones (`--allowed-origin`; `*` allows any).
    pub allowed_origins: Vec<String>,
    /// Told of every refused authentication (the audit log).
    pub on_refused: Option<RefusalHook>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "verifiers",
                &self.verifiers.iter().map(|v| v.name()).collect::<Vec<_>>(),
            )
            .field("public_url", &self.public_url)
            .field("authorization_servers", &self.authorization_servers)
            .field("scopes", &self.scopes)
            .field("required_scopes", &self.required_scopes)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("allowed_origins", &self.allowed_origins)
            .finish()
    }
}

/// Authentication for every route: shared by the router and the MCP endpoint.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub config: Arc<AuthConfig>,
}

impl Auth {
    pub fn new(config: AuthConfig) -> Auth {
        Auth {
            config: Arc::new(config),
        }
    }

    /// Whether any authentication is configured (otherwise: the local user).
    pub fn required(&self) -> bool {
        !self.config.verifiers.is_empty()
    }

    /// The resource a request for `path` is, seen from the client (`Host`);
    /// `routes` says which paths concern which server.
    pub fn resource(&self, headers: &HeaderMap, path: &str, routes: &'static [Route]) -> Resource {
        let base = match &self.config.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("http://{}", header(headers, "host").unwrap_or("localhost")),
        };
        let server = crate::route::find(routes, path).and_then(|m| {
            m.server()
                .map(|s| (s.namespace.map(str::to_string), s.name.to_string()))
        });
        let server_paths = match &server {
            Some((namespace, name)) => routes
                .iter()
                .filter(|r| r.concern == Concern::Server)
                .filter(|r| !r.pattern.starts_with(metadata::PREFIX))
                .filter(|r| r.pattern.contains("{namespace}") == namespace.is_some())
                .map(|r| r.path_for(namespace.as_deref().unwrap_or(""), name))
                .collect(),
            None => vec![],
        };
        Resource {
            base,
            path: path.to_string(),
            server: server.map(|(_, name)| name),
            server_paths,
        }
    }

    /// Who sent this request. Without authentication configured, the local user.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        resource: &Resource,
    ) -> Result<Caller, AuthError> {
        let outcome = self.identify(headers, resource).await;
        if let (Err(error), Some(hook)) = (&outcome, &self.config.on_refused) {
            hook(resource, error);
        }
        outcome
    }

    async fn identify(
        &self,
        headers: &HeaderMap,
        resource: &Resource,
    ) -> Result<Caller, AuthError> {
        if !self.required() {
            return Ok(Caller::local());
        }
        let token = bearer_token(headers)?;
        for verifier in &self.config.verifiers {
            match verifier.verify(token, resource).await {
                Verdict::NotMine => continue,
                Verdict::Valid(caller) => return self.check_scopes(caller),
                Verdict::Invalid(error) => {
                    tracing::debug!(verifier = verifier.name(), %error, "token refused");
                    return Err(error);
                }
            }
        }
        Err(AuthError::InvalidToken(
            "not a token mcpod recognises".to_string(),
        ))
    }

    /// OAuth callers must hold every required scope (RFC 6750 §3.1).
    fn check_scopes(&self, caller: Caller) -> Result<Caller, AuthError> {
        if !matches!(caller.via, Via::Jwt { .. }) {
            return Ok(caller);
        }
        let missing = jwt::missing_scopes(&caller, &self.config.required_scopes);
        if missing.is_empty() {
            Ok(caller)
        } else {
            Err(AuthError::InsufficientScope(missing.join(" ")))
        }
    }

    /// The `WWW-Authenticate` value for a 401 or 403 on `resource` (MCP
    /// "Authorization", RFC 9728 §5.1, RFC 6750 §3): where the Protected
    /// Resource Metadata is, the scopes to ask for (the required ones if
    /// any, else those supported), and why a token sent was refused.
    pub fn challenge(&self, resource: &Resource, error: &AuthError) -> String {
        let mut challenge = format!("Bearer resource_metadata=\"{}\"", resource.metadata_url());
        let scopes = if self.config.required_scopes.is_empty() {
            &self.config.scopes
        } else {
            &self.config.required_scopes
        };
        if !scopes.is_empty() {
            challenge.push_str(&format!(", scope=\"{}\"", scopes.join(" ")));
        }
        let (code, description) = match error {
            AuthError::InvalidToken(description) => ("invalid_token", description.clone()),
            AuthError::InsufficientScope(_) => ("insufficient_scope", error.to_string()),
            AuthError::Missing | AuthError::Unavailable(_) => return challenge,
        };
        challenge.push_str(&format!(
            ", error=\"{code}\", error_description=\"{}\"",
            description.replace(['"', '\\'], "'")
        ));
        challenge
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = header(headers, "authorization").ok_or(AuthError::Missing)?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| {
        AuthError::InvalidToken("Authorization must be 'Bearer <token>'".to_string())
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::InvalidToken(
            "Authorization must be 'Bearer <token>'".to_string(),
        ));
    }
    Ok(token.trim())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Refuses to serve unauthenticated on an address others can reach, unless the
/// operator said so with a flag whose name says it is insecure.
pub fn check_exposure(
    listen: SocketAddr,
    auth: &Auth,
    insecure_allow_unauthenticated: bool,
) -> Result<(), String> {
    if auth.required() || listen.ip().is_loopback() || insecure_allow_unauthenticated {
        if !auth.required() && !listen.ip().is_loopback() {
            tracing::warn!(
                %listen,
                "serving WITHOUT authentication on a non-loopback address \
                 (--insecure-allow-unauthenticated): anyone who can reach it can call every tool"
            );
        }
        return Ok(());
    }
    Err(format!(
        "refusing to listen on {listen} without authentication: anyone who can reach it could \
         call every tool and stop every server. Configure authentication (--api-keys FILE, \
         --oauth-issuer URL or --token-review-audience AUD), listen on a loopback address \
         (--listen 127.0.0.1:PORT), or accept the risk with --insecure-allow-unauthenticated"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(
                warp::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer abc")])),
            Ok("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "bearer  abc ")])),
            Ok("abc")
        );
        for bad in ["Basic abc", "Bearer", "Bearer   ", "abc"] {
            assert!(
                matches!(
                    bearer_token(&headers(&[("authorization", bad)])),
                    Err(AuthError::InvalidToken(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_server_resource_accepts_its_own_endpoints_and_mcpod_but_not_another_server() {
        let auth = Auth::default();
        let resource = auth.resource(
            &headers(&[("host", "127.0.0.1:8080")]),
            "/mcp/time",
            crate::router::ROUTES,
        );
        assert_eq!(resource.server.as_deref(), Some("time"));
        let audiences = resource.audiences();
        for accepted in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://127.0.0.1:8080/mcp/time",
            "http://127.0.0.1:8080/servers/time/mcp",
            "http://127.0.0.1:8080/sse/time",
        ] {
            assert!(audiences.iter().any(|a| a == accepted), "{accepted}");
        }
        assert!(!audiences.iter().any(|a| a.ends_with("/mcp/memory")));
        assert_eq!(
            resource.metadata_url(),
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp/time"
        );
    }

    #[test]
    fn challenges_name_the_metadata_the_scopes_and_why_a_token_was_refused() {
        let auth = Auth::new(AuthConfig {
            scopes: vec!["mcp:tools".into(), "mcp:read".into()],
            ..AuthConfig::default()
        });
        let resource = auth.resource(
            &headers(&[("host", "127.0.0.1:8080")]),
            "/mcp/time",
            crate::router::ROUTES,
        );
        let metadata = "resource_metadata=\"http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp/time\"";
        assert_eq!(
            auth.challenge(&resource, &AuthError::Missing),
            format!("Bearer {metadata}, scope=\"mcp:tools mcp:read\"")
        );
        let invalid = auth.challenge(&resource, &AuthError::InvalidToken("say \"no\"".into()));
        assert!(
            invalid.ends_with(", error=\"invalid_token\", error_description=\"say 'no'\""),
            "{invalid}"
        );
        // With required scopes, those are what a client must ask for.
        let strict = Auth::new(AuthConfig {
            scopes: vec!["mcp:tools".into(), "mcp:read".into()],
            required_scopes: vec!["mcp:tools".into()],
            ..AuthConfig::default()
        });
        let insufficient =
            strict.challenge(&resource, &AuthError::InsufficientScope("mcp:tools".into()));
        assert!(
            insufficient.starts_with(&format!(
                "Bearer {metadata}, scope=\"mcp:tools\", error=\"insufficient_scope\""
            )),
            "{insufficient}"
        );
        // The metadata URLs are not audiences a token may name.
        assert!(!resource
            .audiences()
            .iter()
            .any(|a| a.contains("/.well-known/")));
    }

    #[test]
    fn unauthenticated_serving_is_refused_off_loopback_unless_explicitly_insecure() {
        let open = Auth::default();
        assert!(check_exposure("127.0.0.1:8080".parse().unwrap(), &open, false).is_ok());
        assert!(check_exposure("[::1]:8080".parse().unwrap(), &open, false).is_ok());
        let refused = check_exposure("0.0.0.0:8080".parse().unwrap(), &open, false).unwrap_err();
        assert!(
            refused.contains("--insecure-allow-unauthenticated"),
            "{refused}"
        );
        assert!(check_exposure("0.0.0.0:8080".parse().unwrap(), &open, true).is_ok());
    }
}
