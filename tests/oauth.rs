//! mcpod as an OAuth 2.1 resource server (MCP "Authorization"), against a real
//! authorization server (npm `oidc-provider`, tests/clients/oauth_server.mjs:
//! client_credentials, resource indicators, JWT access tokens) and the
//! official TypeScript and Python SDK clients going through discovery →
//! token → call on their own.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

const SCOPE: &str = "mcp:tools";

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// The authorization server, killed when dropped.
struct AuthServer {
    child: Child,
    port: u16,
    issuer: String,
    kid: String,
}

impl AuthServer {
    fn start() -> AuthServer {
        Self::start_on(0)
    }

    fn start_on(port: u16) -> AuthServer {
        let mut child = Command::new("node")
            .arg(clients_dir().join("oauth_server.mjs"))
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node and tests/clients installed (make test-clients)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let started: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("authorization server did not start ({e}): {line:?}"));
        let issuer = started["issuer"].as_str().unwrap().to_string();
        AuthServer {
            child,
            port: issuer.rsplit(':').next().unwrap().parse().unwrap(),
            issuer,
            kid: started["kid"].as_str().unwrap().to_string(),
        }
    }

    /// Stops it and starts it again on the same port: same issuer, new signing key.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Self::start_on(self.port);
    }

    /// An access token for `resource`, by the client_credentials grant.
    async fn token(&self, client: (&str, &str), resource: &str, scope: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client.0, Some(client.1))
            .form(&[
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ])
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {body}"))
            .to_string()
    }

    async fn expired_token(&self, resource: &str) -> String {
        let response = reqwest::Client::new()
            .post(format!("{}/test/expired", self.issuer))
            .query(&[("aud", resource)])
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const AGENT: (&str, &str) = ("mcp-agent", "agent-secret");
const READER: (&str, &str) = ("mcp-reader", "reader-secret");

fn start_mcpod(issuer: &str, extra: &[&str]) -> Mcpod {
    let mut args = vec!["--oauth-issuer", issuer, "--oauth-scope", SCOPE];
    args.extend_from_slice(extra);
    Mcpod::start(&[("fake.yaml", manifest("fake", FIXTURE_IMAGE, ""))], &args)
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}})
}

/// What mcpod answers an `initialize` sent with this bearer token (if any):
/// status, `WWW-Authenticate`, body.
async fn call(url: &str, token: Option<&str>, headers: &[(&str, &str)]) -> (u16, String, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(initialize().to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, challenge, body)
}

/// A parameter of a `WWW-Authenticate: Bearer` challenge.
fn param(challenge: &str, name: &str) -> Option<String> {
    let start = challenge.find(&format!("{name}=\""))? + name.len() + 2;
    let end = challenge[start..].find('"')? + start;
    Some(challenge[start..end].to_string())
}

/// Runs tests/clients/oauth_client.{mjs,py}: the SDK's own OAuth flow.
async fn sdk_oauth_client(language: &str, url: &str, issuer: &str) -> Value {
    let (url, issuer) = (url.to_string(), issuer.to_string());
    let language = language.to_string();
    tokio::task::spawn_blocking(move || {
        let mut command = match language.as_str() {
            "typescript" => {
                let mut c = Command::new("node");
                c.arg(clients_dir().join("oauth_client.mjs"));
                c
            }
            _ => {
                let mut c = Command::new(clients_dir().join(".venv/bin/python"));
                c.arg(clients_dir().join("oauth_client.py"));
                c
            }
        };
        let output = command
            .args([&url, &issuer, AGENT.0, AGENT.1])
            .output()
            .expect("test clients installed (make test-clients)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|e| {
            panic!(
                "{language} client printed no JSON ({e}): {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn official_sdks_discover_the_issuer_get_a_token_for_the_endpoint_and_call() {
    let issuer = AuthServer::start();
    let mcpod = start_mcpod(&issuer.issuer, &[]);
    let endpoint = format!("{}/mcp/fake", mcpod.url);
    for language in ["typescript", "python"] {
        let out = sdk_oauth_client(language, &endpoint, &issuer.issuer).await;
        assert!(out.get("error").is_none(), "{language}: {out}");
        assert_eq!(out["server"], "fake-mcp", "{language}: {out}");
        assert_eq!(out["echo"], json!(["hello over oauth"]), "{language}");
        // The SDK asked for this endpoint (RFC 8707) and the scope mcpod named.
        assert_eq!(out["claims"]["aud"], endpoint, "{language}: {out}");
        assert_eq!(out["claims"]["iss"], issuer.issuer, "{language}");
        assert_eq!(out["claims"]["scope"], SCOPE, "{language}");

        // The token stays with mcpod: nothing of it reaches the container.
        let token = out["token"].as_str().unwrap();
        let inspected = inspect(&mcpod.container("fake")).expect("fake runs");
        assert!(!inspected.to_string().contains(token), "{language}");
        let signature = token.rsplit('.').next().unwrap();
        assert!(!inspected.to_string().contains(signature));
    }
    // The same token is for this endpoint only: another server's URL is not its audience.
    let token = issuer.token(AGENT, &endpoint, SCOPE).await;
    let (status, _, _) = call(&format!("{}/mcp/other", mcpod.url), Some(&token), &[]).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn without_a_token_the_challenge_leads_to_the_metadata_and_the_issuer() {
    let issuer = AuthServer::start();
    let mcpod = start_mcpod(&issuer.issuer, &[]);
    let endpoint = format!("{}/mcp/fake", mcpod.url);
    let http = reqwest::Client::new();

    for version in ["2025-11-25", "2026-07-28"] {
        let (status, challenge, body) =
            call(&endpoint, None, &[("mcp-protocol-version", version)]).await;
        assert_eq!(status, 401, "{version}: {body}");
        assert!(challenge.starts_with("Bearer "), "{challenge}");
        assert_eq!(
            param(&challenge, "resource_metadata").as_deref(),
            Some(
                format!(
                    "{}/.well-known/oauth-protected-resource/mcp/fake",
                    mcpod.url
                )
                .as_str()
            )
        );
        assert_eq!(param(&challenge, "scope").as_deref(), Some(SCOPE));
        // No token, no error code (RFC 6750 §3.1).
        assert_eq!(param(&challenge, "error"), None, "{challenge}");
    }

    let (_, challenge, _) = call(&endpoint, None, &[]).await;
    let metadata_url = param(&challenge, "resource_metadata").unwrap();
    // Fetchable from a browser page on another origin, without a token.
    let response = http
        .get(&metadata_url)
        .header("origin", "https://client.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let metadata: Value = response.json().await.unwrap();
    assert_eq!(metadata["resource"], endpoint);
    assert_eq!(metadata["authorization_servers"], json!([issuer.issuer]));
    assert_eq!(metadata["scopes_supported"], json!([SCOPE]));
    assert_eq!(metadata["bearer_methods_supported"], json!(["header"]));
    let preflight = http
        .request(reqwest::Method::OPTIONS, &metadata_url)
        .header("origin", "https://client.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "mcp-protocol-version")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    // Every endpoint path has its own; mcpod as a whole has one too.
    for path in [
        "/servers/fake/mcp",
        "/sse/fake",
        "/servers/fake/sse",
        "/messages/fake",
        "/mcp/default/fake",
        // The aggregated endpoint over every server, and its legacy SSE paths.
        "/mcp",
        "/sse",
        "/messages",
        "",
    ] {
        let (status, metadata) = mcpod
            .get(&format!("/.well-known/oauth-protected-resource{path}"))
            .await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(metadata["resource"], format!("{}{path}", mcpod.url));
    }
    // The Host check still holds for them (DNS rebinding).
    let rebound = http
        .get(&metadata_url)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    // Other routes keep refusing foreign origins.
    let foreign = http
        .get(format!("{}/servers", mcpod.url))
        .header("origin", "https://client.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);

    // The issuer it names serves the metadata a client needs for its token.
    let issuer_metadata: Value = http
        .get(format!(
            "{}/.well-known/oauth-authorization-server",
            metadata["authorization_servers"][0].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(issuer_metadata["token_endpoint"].is_string());

    // Without an OAuth issuer there is no metadata to serve.
    let plain = Mcpod::start(&[], &[]);
    let (status, _) = plain
        .get("/.well-known/oauth-protected-resource/mcp/fake")
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn tokens_for_another_resource_expired_badly_signed_or_from_another_issuer_are_refused() {
    let issuer = AuthServer::start();
    let other_issuer = AuthServer::start();
    let mcpod = start_mcpod(&issuer.issuer, &[]);
    let endpoint = format!("{}/mcp/fake", mcpod.url);

    let refused = async |token: &str| {
        let (status, challenge, body) = call(&endpoint, Some(token), &[]).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(param(&challenge, "error").as_deref(), Some("invalid_token"));
        assert!(param(&challenge, "resource_metadata").is_some());
        param(&challenge, "error_description").unwrap_or_default()
    };

    for resource in [
        format!("{}/mcp/other", mcpod.url),
        "https://mcp.elsewhere.example/mcp/fake".to_string(),
    ] {
        let token = issuer.token(AGENT, &resource, SCOPE).await;
        let why = refused(&token).await;
        assert!(why.contains("not this resource"), "{why}");
        assert!(why.contains(&resource), "{why}");
    }

    let why = refused(&issuer.expired_token(&endpoint).await).await;
    assert!(why.contains("expired"), "{why}");

    // A real token whose claims were changed after signing.
    let token = issuer.token(AGENT, &endpoint, SCOPE).await;
    let parts: Vec<&str> = token.split('.').collect();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut claims: Value = serde_json::from_slice(&engine.decode(parts[1]).unwrap()).unwrap();
    claims["sub"] = json!("admin");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        engine.encode(claims.to_string()),
        parts[2]
    );
    let why = refused(&forged).await;
    assert!(why.contains("signature"), "{why}");

    // Signed properly, by an issuer mcpod does not trust.
    let foreign = other_issuer.token(AGENT, &endpoint, SCOPE).await;
    refused(&foreign).await;

    // The genuine token passes.
    let (status, _, body) = call(&endpoint, Some(&token), &[]).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_token_without_the_required_scope_is_403_insufficient_scope() {
    let issuer = AuthServer::start();
    let mcpod = start_mcpod(&issuer.issuer, &["--oauth-required-scope", SCOPE]);
    let endpoint = format!("{}/mcp/fake", mcpod.url);
    let token = issuer.token(READER, &endpoint, "mcp:read").await;
    let (status, challenge, body) = call(&endpoint, Some(&token), &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        param(&challenge, "error").as_deref(),
        Some("insufficient_scope")
    );
    assert_eq!(param(&challenge, "scope").as_deref(), Some(SCOPE));
    assert!(param(&challenge, "resource_metadata").is_some());
}

#[tokio::test]
async fn a_rotated_signing_key_is_picked_up_without_restarting_mcpod() {
    let mut issuer = AuthServer::start();
    let mcpod = start_mcpod(&issuer.issuer, &[]);
    let endpoint = format!("{}/mcp/fake", mcpod.url);
    let old_token = issuer.token(AGENT, &endpoint, SCOPE).await;
    let (status, _, body) = call(&endpoint, Some(&old_token), &[]).await;
    assert_eq!(status, 200, "{body}");

    let old_kid = issuer.kid.clone();
    issuer.restart();
    assert_ne!(issuer.kid, old_kid);
    let new_token = issuer.token(AGENT, &endpoint, SCOPE).await;
    // The unknown key makes mcpod fetch the key set again (at most every few seconds).
    wait_for(
        Duration::from_secs(20),
        "the new key to be accepted",
        async || call(&endpoint, Some(&new_token), &[]).await.0 == 200,
    )
    .await;
    // The old key is gone from the issuer's set, so from mcpod's.
    let (status, challenge, _) = call(&endpoint, Some(&old_token), &[]).await;
    assert_eq!(status, 401);
    let why = param(&challenge, "error_description").unwrap();
    assert!(why.contains(&old_kid), "{why}");
}

#[tokio::test]
async fn an_issuer_that_cannot_be_reached_makes_tokens_uncheckable_503_not_invalid() {
    let issuer = AuthServer::start();
    let url = issuer.issuer.clone();
    let token = issuer
        .token(AGENT, "http://127.0.0.1:1/mcp/fake", SCOPE)
        .await;
    drop(issuer);
    let mcpod = start_mcpod(&url, &[]);
    let (status, challenge, body) =
        call(&format!("{}/mcp/fake", mcpod.url), Some(&token), &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(challenge, "");
}
