//! The router authenticating Kubernetes ServiceAccount tokens with TokenReviews,
//! against a mocked API server: each test lists the reviews the API server
//! receives (the request body is checked: the caller's token and mcpod's
//! audience) and how it answers; a review that is missing, extra or different
//! fails the test. Every test name starts with `kube_` (`cargo test kube`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

use mcpod::auth::tokenreview::{Settings, TokenReviewer};
use mcpod::auth::{Auth, AuthConfig};
use mcpod::crd::MCPServer;
use mcpod::kube::runtime::KubeRuntime;
use mcpod::manifests::{Loaded, Manifests};
use mcpod::reconcile::Reconciler;
use mcpod::router::{self, RouterConfig};
use mcpod::server::Settings as ServerSettings;
use mcpod::workload::Defaults;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const AUDIENCE: &str = "mcpod";
/// JWT-shaped tokens (the reviewer sends nothing else to the API server).
const AGENT_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZ2VudCJ9.c2lnbmF0dXJl";
const OTHER_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvdGhlciJ9.c2lnbmF0dXJl";
const AGENT: &str = "system:serviceaccount:agents:bot";

/// How the mocked API server answers one review.
enum Answer {
    /// 201 with this `status`.
    Reviewed(Value),
    /// An API error (e.g. 403: mcpod lacks the RBAC rule).
    ApiError(u16),
    /// The connection fails: the API server is unreachable.
    Unreachable,
}

fn authenticated(user: &str, audiences: &[&str]) -> Answer {
    Answer::Reviewed(json!({
        "authenticated": true,
        "audiences": audiences,
        "user": {"username": user, "uid": "1234", "groups": ["system:serviceaccounts", "system:serviceaccounts:agents"]},
    }))
}

/// Answers TokenReviews, in order: each must be a POST to the TokenReview
/// endpoint carrying the expected token and mcpod's audience. Counts them.
fn api_server(mut handle: Handle, answers: Vec<(&'static str, Answer)>) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        for (token, answer) in answers {
            let (request, send) = handle.next_request().await.expect("a TokenReview");
            seen.fetch_add(1, Ordering::SeqCst);
            assert_eq!(request.method(), Method::POST);
            assert_eq!(request.uri().path(), REVIEWS);
            let body: Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                    .unwrap();
            assert_eq!(body["kind"], "TokenReview");
            assert_eq!(body["apiVersion"], "authentication.k8s.io/v1");
            assert_eq!(body["spec"]["token"], token, "{body}");
            assert_eq!(body["spec"]["audiences"], json!([AUDIENCE]), "{body}");
            let (status, reply) = match answer {
                Answer::Reviewed(status) => (
                    201,
                    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                           "metadata": {}, "spec": body["spec"], "status": status}),
                ),
                Answer::ApiError(code) => (
                    code,
                    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                           "message": "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:mcpod:mcpod\" cannot create resource \"tokenreviews\"",
                           "reason": "Forbidden", "code": code}),
                ),
                Answer::Unreachable => {
                    send.send_error(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "connection refused",
                    ));
                    continue;
                }
            };
            send.send_response(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                    .unwrap(),
            );
        }
        // Anything after the expected reviews is a failure of the test.
        if let Some((request, _)) = handle.next_request().await {
            seen.fetch_add(1, Ordering::SeqCst);
            panic!(
                "unexpected API call: {} {}",
                request.method(),
                request.uri()
            );
        }
    });
    count
}

type Routes = warp::filters::BoxedFilter<(warp::reply::Response,)>;

/// The router with one server (`time`) and TokenReview authentication.
async fn router(answers: Vec<(&'static str, Answer)>) -> (Routes, Arc<AtomicUsize>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "home");
    let reviews = api_server(handle, answers);
    let reviewer = TokenReviewer::with_settings(
        client.clone(),
        AUDIENCE,
        Settings {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            capacity: 16,
        },
    );
    let runtime = Arc::new(KubeRuntime::new(client, "home", false));
    let reconciler = Reconciler::for_kubernetes(
        runtime,
        Defaults::default(),
        ServerSettings::default(),
        "home",
    );
    let server: MCPServer = serde_json::from_value(json!({
        "apiVersion": "mcpod.dev/v1alpha1", "kind": "MCPServer",
        "metadata": {"name": "time", "namespace": "home"},
        "spec": {"image": "localhost/mcpod/time:latest"},
    }))
    .unwrap();
    reconciler
        .apply(Manifests {
            servers: vec![Loaded {
                file: PathBuf::from("mcpservers/home/time"),
                server,
            }],
            ..Default::default()
        })
        .await;
    let auth = Auth::new(AuthConfig {
        verifiers: vec![Arc::new(reviewer)],
        // As the chart sets it: the Service's DNS names.
        allowed_hosts: vec!["mcpod.home.svc".to_string()],
        ..AuthConfig::default()
    });
    let routes = router::routes(
        reconciler,
        RouterConfig {
            auth,
            ..RouterConfig::default()
        },
    )
    .map(warp::Reply::into_response);
    use warp::Filter;
    (routes.boxed(), reviews)
}

/// `GET /servers` with this bearer token (none: no Authorization header).
async fn list(routes: &Routes, token: Option<&str>) -> warp::http::Response<bytes::Bytes> {
    let mut request = warp::test::request()
        .method("GET")
        .path("/servers")
        .header("host", "mcpod.home.svc");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    request.reply(routes).await
}

fn body(response: &warp::http::Response<bytes::Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap()
}

fn challenge(response: &warp::http::Response<bytes::Bytes>) -> String {
    response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn kube_tokenreview_a_service_account_token_for_mcpods_audience_is_served() {
    let (routes, reviews) = router(vec![(AGENT_TOKEN, authenticated(AGENT, &[AUDIENCE]))]).await;
    let response = list(&routes, Some(AGENT_TOKEN)).await;
    assert_eq!(response.status(), 200, "{:?}", response.body());
    assert_eq!(body(&response)[0]["name"], "time");
    assert_eq!(reviews.load(Ordering::SeqCst), 1);
    // No token at all: 401 with the challenge, and no review.
    let response = list(&routes, None).await;
    assert_eq!(response.status(), 401);
    assert!(
        challenge(&response).starts_with("Bearer resource_metadata="),
        "{}",
        challenge(&response)
    );
    // Not JWT-shaped: not sent to the API server either.
    assert_eq!(list(&routes, Some("not-a-jwt")).await.status(), 401);
    assert_eq!(reviews.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn kube_tokenreview_refused_tokens_get_401_with_the_challenge() {
    let (routes, reviews) = router(vec![
        (
            OTHER_TOKEN,
            Answer::Reviewed(json!({"authenticated": false, "error": "token has expired"})),
        ),
        // Authenticated, but for the API server's audience only (an unprojected token).
        (AGENT_TOKEN, authenticated(AGENT, &[])),
    ])
    .await;
    let response = list(&routes, Some(OTHER_TOKEN)).await;
    assert_eq!(response.status(), 401);
    let header = challenge(&response);
    assert!(
        header.starts_with("Bearer resource_metadata=\"http://mcpod.home.svc/.well-known/oauth-protected-resource/servers\""),
        "{header}"
    );
    assert!(header.contains("error=\"invalid_token\""), "{header}");
    assert!(header.contains("token has expired"), "{header}");
    let response = list(&routes, Some(AGENT_TOKEN)).await;
    assert_eq!(response.status(), 401);
    assert!(
        challenge(&response).contains("not for audience 'mcpod'"),
        "{}",
        challenge(&response)
    );
    assert_eq!(reviews.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn kube_tokenreview_answers_are_cached_for_their_ttl() {
    let (routes, reviews) = router(vec![
        (AGENT_TOKEN, authenticated(AGENT, &[AUDIENCE])),
        (
            OTHER_TOKEN,
            Answer::Reviewed(json!({"authenticated": false})),
        ),
        // After the refusal's short TTL: asked again.
        (
            OTHER_TOKEN,
            Answer::Reviewed(json!({"authenticated": false})),
        ),
        // After the valid answer's TTL: asked again.
        (AGENT_TOKEN, authenticated(AGENT, &[AUDIENCE])),
    ])
    .await;
    for _ in 0..3 {
        assert_eq!(list(&routes, Some(AGENT_TOKEN)).await.status(), 200);
    }
    assert_eq!(
        reviews.load(Ordering::SeqCst),
        1,
        "one review for three requests"
    );
    for _ in 0..2 {
        assert_eq!(list(&routes, Some(OTHER_TOKEN)).await.status(), 401);
    }
    assert_eq!(reviews.load(Ordering::SeqCst), 2);
    // A refusal is kept only briefly: a token that becomes valid is not locked out.
    tokio::time::advance(Duration::from_secs(6)).await;
    assert_eq!(list(&routes, Some(OTHER_TOKEN)).await.status(), 401);
    assert_eq!(reviews.load(Ordering::SeqCst), 3);
    assert_eq!(list(&routes, Some(AGENT_TOKEN)).await.status(), 200);
    assert_eq!(reviews.load(Ordering::SeqCst), 3, "still within the TTL");
    // A revoked token is refused within the TTL: the answer is not kept longer.
    tokio::time::advance(Duration::from_secs(25)).await;
    assert_eq!(list(&routes, Some(AGENT_TOKEN)).await.status(), 200);
    assert_eq!(reviews.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn kube_tokenreview_an_api_server_that_cannot_answer_gives_503_and_is_asked_again() {
    let (routes, reviews) = router(vec![
        (AGENT_TOKEN, Answer::ApiError(403)),
        (AGENT_TOKEN, Answer::Unreachable),
        (AGENT_TOKEN, authenticated(AGENT, &[AUDIENCE])),
    ])
    .await;
    let response = list(&routes, Some(AGENT_TOKEN)).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    assert!(response.headers().get("www-authenticate").is_none());
    let message = body(&response)["message"].as_str().unwrap().to_string();
    assert!(message.contains("cannot create resource"), "{message}");
    assert_eq!(list(&routes, Some(AGENT_TOKEN)).await.status(), 503);
    // Not cached: the next request is reviewed and served.
    assert_eq!(list(&routes, Some(AGENT_TOKEN)).await.status(), 200);
    assert_eq!(reviews.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn kube_tokenreview_health_and_metrics_have_an_unauthenticated_listener_of_their_own() {
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let runtime = Arc::new(KubeRuntime::new(
        Client::new(service, "home"),
        "home",
        false,
    ));
    let reconciler = Reconciler::for_kubernetes(
        runtime,
        Defaults::default(),
        ServerSettings::default(),
        "home",
    );
    let probes = router::probe_routes(reconciler);
    let get = |path: &'static str| {
        warp::test::request()
            .method("GET")
            .path(path)
            .header("host", "10.1.2.3:8082")
    };
    assert_eq!(get("/health").reply(&probes).await.status(), 200);
    let metrics = get("/metrics").reply(&probes).await;
    assert_eq!(metrics.status(), 200);
    assert!(!metrics.body().is_empty());
    // Nothing else: not the management API, not the MCP endpoints.
    for path in ["/servers", "/servers/time/stop", "/mcp/time"] {
        assert_eq!(get(path).reply(&probes).await.status(), 404, "{path}");
    }
    let stop = warp::test::request()
        .method("POST")
        .path("/servers/time/stop")
        .header("host", "10.1.2.3:8082")
        .reply(&probes)
        .await;
    assert_eq!(stop.status(), 404);
}
