//! Operator leader election against a mocked API server: each scenario answers
//! the Lease requests in the order they must come; a request that is missing,
//! extra or different fails the test. Names start with `kube_` (`cargo test kube`).

use std::time::Duration;

use chrono::Utc;
use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

use mcpod::kube::election::Election;
use mcpod::kube::lease::LeaseSettings;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/mcpod-operator";

fn election(name: &str) -> (Election, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let settings = LeaseSettings {
        duration: Duration::from_secs(2),
        renew_interval: Duration::from_millis(100),
    };
    let client = Client::new(service, "ns");
    (Election::new(client, "ns", name, settings), handle)
}

/// Waits for the next request, checks its method and path, and answers it with
/// what `reply` makes of its body. Returns the body.
async fn answer(
    handle: &mut Handle,
    method: Method,
    path: &str,
    reply: impl FnOnce(&Value) -> (u16, Value),
) -> Value {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("{method} {path} never came"))
        .expect("the client is gone");
    assert_eq!((request.method(), request.uri().path()), (&method, path));
    let bytes = http_body_util::BodyExt::collect(request.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (status, reply) = reply(&body);
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
    body
}

fn failure(code: u16, reason: &str) -> (u16, Value) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": reason, "code": code, "message": reason});
    (code, status)
}

/// The written Lease back, as the API server stores it under `version`.
fn stored(version: &'static str) -> impl FnOnce(&Value) -> (u16, Value) {
    move |body| {
        let mut lease = body.clone();
        lease["metadata"]["resourceVersion"] = json!(version);
        (200, lease)
    }
}

fn lease(holder: &str, renewed_secs_ago: i64) -> Value {
    let renewed = Utc::now() - chrono::Duration::seconds(renewed_secs_ago);
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "mcpod-operator", "namespace": "ns", "resourceVersion": "5"},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                    "renewTime": renewed.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
                    "leaseTransitions": 0}})
}

#[tokio::test]
async fn kube_leader_takes_a_free_lease_renews_it_and_stops_when_another_takes_it() {
    let (election, mut handle) = election("op-a");
    let election = std::sync::Arc::new(election);
    let leading = tokio::spawn({
        let election = election.clone();
        async move { election.lead().await.expect("leads") }
    });
    answer(&mut handle, Method::GET, LEASE, |_| {
        failure(404, "NotFound")
    })
    .await;
    let created = answer(&mut handle, Method::POST, LEASES, stored("1")).await;
    assert_eq!(created["spec"]["holderIdentity"], "op-a");
    assert_eq!(created["spec"]["leaseDurationSeconds"], 2);
    let lease = leading.await.unwrap();

    let kept = tokio::spawn({
        let election = election.clone();
        async move { election.keep(lease).await }
    });
    let renewed = answer(&mut handle, Method::PUT, LEASE, stored("2")).await;
    assert_eq!(
        renewed["metadata"]["resourceVersion"], "1",
        "renewed against what it read"
    );
    assert_eq!(renewed["spec"]["holderIdentity"], "op-a");
    assert_ne!(renewed["spec"]["renewTime"], created["spec"]["renewTime"]);
    let again = answer(&mut handle, Method::PUT, LEASE, |_| {
        failure(409, "Conflict")
    })
    .await;
    assert_eq!(again["metadata"]["resourceVersion"], "2");
    let lost = kept.await.unwrap();
    assert!(
        lost.to_string().contains("another replica took it"),
        "{lost}"
    );
}

#[tokio::test]
async fn kube_leader_stands_by_while_another_leads_and_takes_over_when_its_lease_runs_out() {
    let (election, mut handle) = election("op-a");
    let leading = tokio::spawn(async move {
        let lease = election.lead().await.expect("leads");
        (election, lease)
    });
    // op-b renewed just now: op-a only looks, and looks again a renew interval later.
    answer(&mut handle, Method::GET, LEASE, |_| (200, lease("op-b", 0))).await;
    // op-b has not renewed for longer than its lease lasts: op-a takes it over.
    answer(&mut handle, Method::GET, LEASE, |_| {
        (200, lease("op-b", 20))
    })
    .await;
    let taken = answer(&mut handle, Method::PUT, LEASE, stored("6")).await;
    assert_eq!(taken["metadata"]["resourceVersion"], "5");
    assert_eq!(taken["spec"]["holderIdentity"], "op-a");
    assert_eq!(taken["spec"]["leaseTransitions"], 1);
    let (election, lease) = leading.await.unwrap();

    // Stopping hands the lead over at once: the holder is cleared.
    let releasing = tokio::spawn(async move { election.release(lease).await });
    let released = answer(&mut handle, Method::PUT, LEASE, stored("7")).await;
    assert!(
        released["spec"].get("holderIdentity").is_none(),
        "{released}"
    );
    releasing.await.unwrap();
}

#[tokio::test]
async fn kube_leader_loses_a_race_for_the_lease_and_keeps_standing_by() {
    let (election, mut handle) = election("op-a");
    let leading = tokio::spawn(async move { election.lead().await });
    answer(&mut handle, Method::GET, LEASE, |_| {
        failure(404, "NotFound")
    })
    .await;
    // op-b created it first.
    answer(&mut handle, Method::POST, LEASES, |_| {
        failure(409, "AlreadyExists")
    })
    .await;
    answer(&mut handle, Method::GET, LEASE, |_| (200, lease("op-b", 0))).await;
    answer(&mut handle, Method::GET, LEASE, |_| (200, lease("op-b", 0))).await;
    assert!(!leading.is_finished(), "op-a must not lead while op-b does");
    leading.abort();
}
