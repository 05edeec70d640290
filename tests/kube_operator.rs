//! The operator and the Kubernetes runtime against a mocked API server: each
//! scenario lists the requests a reconcile must make, in order (method, path,
//! what the body says), with the replies the API server gives; a request that
//! is missing, extra, or different fails the test, and a timeout catches calls
//! that never come. Every test name starts with `kube_` (`cargo test kube`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::Client;
use serde_json::{json, Value};

use mcpod::crd::MCPServer;
use mcpod::kube::operator::{self, Context};
use mcpod::kube::pod::pod_for;
use mcpod::kube::runtime::KubeRuntime;
use mcpod::runtime::Runtime;
use mcpod::workload::{Defaults, Target, Workload};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const SERVERS: &str = "/apis/mcpod.dev/v1alpha1/namespaces/ns/mcpservers";
const POD: &str = "/api/v1/namespaces/ns/pods/mcpod-time";
const PODS: &str = "/api/v1/namespaces/ns/pods";
const POLICY: &str = "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/mcpod-time";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/mcpod-time";

/// One expected request and the reply to it.
struct Exchange {
    method: Method,
    path: String,
    /// Text the request's query must contain (a label selector).
    query: Option<&'static str>,
    check: Box<dyn Fn(&Value) + Send>,
    status: u16,
    reply: Value,
}

/// The requests a scenario expects, in order.
#[derive(Default)]
struct Scenario(Vec<Exchange>);

impl Scenario {
    fn expect(
        mut self,
        method: Method,
        path: &str,
        check: impl Fn(&Value) + Send + 'static,
        status: u16,
        reply: Value,
    ) -> Self {
        self.0.push(Exchange {
            method,
            path: path.into(),
            query: None,
            check: Box::new(check),
            status,
            reply,
        });
        self
    }

    /// An Event with this reason and type is published.
    fn event(self, reason: &'static str, kind: &'static str) -> Self {
        self.expect(
            Method::POST,
            EVENTS,
            event_reason(reason, kind),
            201,
            json!({}),
        )
    }

    /// The status is patched to Failed with a message containing `cause`.
    fn failed_status(self, cause: &'static str) -> Self {
        self.expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            move |patch| {
                status_phase("Failed")(patch);
                let message = patch["status"]["message"].as_str().unwrap();
                assert!(message.contains(cause), "{message}");
            },
            200,
            json!(null),
        )
    }

    /// The server's pods are listed by label, and these are found.
    fn list_pods(mut self, items: Vec<Value>) -> Self {
        self = self.expect(
            Method::GET,
            PODS,
            |_| {},
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
        );
        self.0.last_mut().unwrap().query =
            Some("app.kubernetes.io%2Fmanaged-by%3Dmcpod%2Cmcpod.dev%2Fserver%3Dtime");
        self
    }

    fn get_pod(self, pod: Option<Value>) -> Self {
        match pod {
            Some(pod) => self.expect(Method::GET, POD, |_| {}, 200, pod),
            None => self.expect(Method::GET, POD, |_| {}, 404, not_found()),
        }
    }

    /// Serves the expected requests in order, then checks that no other comes.
    fn serve(self, mut handle: Handle) -> tokio::task::JoinHandle<Handle> {
        tokio::spawn(async move {
            for (index, exchange) in self.0.into_iter().enumerate() {
                let (request, send) =
                    tokio::time::timeout(Duration::from_secs(2), handle.next_request())
                        .await
                        .unwrap_or_else(|_| {
                            panic!(
                                "request {index} ({} {}) never came",
                                exchange.method, exchange.path
                            )
                        })
                        .expect("the client is gone");
                assert_eq!(
                    request.method(),
                    exchange.method,
                    "request {index}: {}",
                    request.uri()
                );
                assert_eq!(request.uri().path(), exchange.path, "request {index}");
                if let Some(query) = exchange.query {
                    let actual = request.uri().query().unwrap_or_default();
                    assert!(actual.contains(query), "request {index}: {actual}");
                }
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                (exchange.check)(&body);
                // Null stands for "the MCPServer as stored".
                let reply_body = match exchange.reply {
                    Value::Null => server(json!({}), json!({}), json!(null)),
                    other => other,
                };
                let reply = Response::builder()
                    .status(exchange.status)
                    .body(Body::from(serde_json::to_vec(&reply_body).unwrap()))
                    .unwrap();
                send.send_response(reply);
            }
            let extra =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
            if let Ok(Some((request, _))) = extra {
                panic!("unexpected request: {} {}", request.method(), request.uri());
            }
            handle
        })
    }
}

fn mock() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "ns"), handle)
}

/// Runs one reconcile of `server` against `scenario`.
async fn reconcile(server: Value, scenario: Scenario) -> (mcpod::Result<Action>, Arc<Context>) {
    let (client, handle) = mock();
    let ctx = Context::new(client, Defaults::default());
    let (result, _) = reconcile_with(&ctx, handle, server, scenario).await;
    (result, ctx)
}

/// One reconcile with a given context (and its API server's handle, given back).
async fn reconcile_with(
    ctx: &Arc<Context>,
    handle: Handle,
    server: Value,
    scenario: Scenario,
) -> (mcpod::Result<Action>, Handle) {
    let api_server = scenario.serve(handle);
    let server: MCPServer = serde_json::from_value(server).unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        operator::reconcile(Arc::new(server), ctx.clone()),
    )
    .await
    .expect("reconcile finished");
    let handle = tokio::time::timeout(Duration::from_secs(5), api_server)
        .await
        .expect("scenario finished")
        .expect("scenario held");
    (result, handle)
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "pods \"mcpod-time\" not found", "reason": "NotFound", "code": 404})
}

fn ago(seconds: i64) -> String {
    (Utc::now() - chrono::Duration::seconds(seconds)).to_rfc3339()
}

/// An MCPServer `time` in namespace `ns`, with mcpod's finalizer.
fn server(annotations: Value, spec: Value, status: Value) -> Value {
    let mut spec_all = json!({"image": "localhost/mcpod/time:latest"});
    spec_all
        .as_object_mut()
        .unwrap()
        .extend(spec.as_object().cloned().unwrap_or_default());
    json!({
        "apiVersion": "mcpod.dev/v1alpha1", "kind": "MCPServer",
        "metadata": {"name": "time", "namespace": "ns", "uid": "uid-1", "generation": 3,
                     "resourceVersion": "7", "finalizers": [operator::FINALIZER],
                     "annotations": annotations},
        "spec": spec_all,
        "status": status,
    })
}

fn workload() -> Workload {
    let spec = serde_json::from_value(json!({"image": "localhost/mcpod/time:latest"})).unwrap();
    Workload::resolve("time", &spec, &Defaults::default(), Target::Kubernetes).unwrap()
}

fn owner() -> Value {
    json!({"apiVersion": "mcpod.dev/v1alpha1", "kind": "MCPServer", "name": "time",
           "uid": "uid-1", "controller": true})
}

/// The pod the operator would create, as the API server returns it, in a state.
fn pod(owned: bool, status: Value) -> Value {
    let mut pod = serde_json::to_value(pod_for(&workload(), Some("ns"), None)).unwrap();
    if owned {
        pod["metadata"]["ownerReferences"] = json!([owner()]);
    }
    pod["metadata"]["uid"] = json!("pod-uid");
    pod["status"] = status;
    pod
}

fn running(started_seconds_ago: i64) -> Value {
    json!({"phase": "Running",
           "conditions": [{"type": "PodScheduled", "status": "True"}],
           "containerStatuses": [{"name": "server", "image": "localhost/mcpod/time:latest",
               "imageID": "", "ready": true, "restartCount": 0, "containerID": "containerd://c1",
               "state": {"running": {"startedAt": ago(started_seconds_ago)}}}]})
}

fn waiting(reason: &str, message: &str, restarts: i32) -> Value {
    json!({"phase": if reason == "CrashLoopBackOff" { "Running" } else { "Pending" },
           "conditions": [{"type": "PodScheduled", "status": "True"}],
           "containerStatuses": [{"name": "server", "image": "localhost/mcpod/time:latest",
               "imageID": "", "ready": false, "restartCount": restarts,
               "state": {"waiting": {"reason": reason, "message": message}},
               "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]})
}

fn event_reason(expected: &'static str, kind: &'static str) -> impl Fn(&Value) + Send {
    move |event| {
        assert_eq!(event["reason"], expected, "{event}");
        assert_eq!(event["type"], kind, "{event}");
        assert_eq!(event["regarding"]["name"], "time");
        assert_eq!(event["reportingController"], "mcpod");
    }
}

fn status_phase(phase: &'static str) -> impl Fn(&Value) + Send {
    move |patch| {
        // Server-side apply of a whole status, with the object's type.
        assert_eq!(patch["apiVersion"], "mcpod.dev/v1alpha1");
        assert_eq!(patch["kind"], "MCPServer");
        assert_eq!(patch["status"]["phase"], phase, "{patch}");
        assert_eq!(patch["status"]["observedGeneration"], 3);
    }
}

#[tokio::test]
async fn kube_finalizer_is_added_before_anything_else() {
    let mut object = server(json!({}), json!({}), json!(null));
    object["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("finalizers");
    let scenario = Scenario::default().expect(
        Method::PATCH,
        &format!("{SERVERS}/time"),
        |patch| {
            let ops = patch.as_array().expect("a JSON patch");
            assert!(
                ops.iter()
                    .any(|op| op["op"] == "add" && op["value"] == json!([operator::FINALIZER])),
                "{patch}"
            );
        },
        200,
        server(json!({}), json!({}), json!(null)),
    );
    let (result, _) = reconcile(object, scenario).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn kube_wake_creates_pod_with_policy_and_status() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(1)}),
        json!({}),
        json!(null),
    );
    let scenario = Scenario::default()
        .get_pod(None)
        .expect(
            Method::PATCH,
            POLICY,
            |policy| {
                assert_eq!(policy["kind"], "NetworkPolicy");
                assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
                assert_eq!(policy["spec"]["egress"], json!([]), "network: none denies egress");
                assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            },
            200,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "mcpod-time"}}),
        )
        .expect(
            Method::POST,
            PODS,
            |pod| {
                assert_eq!(pod["metadata"]["name"], "mcpod-time");
                assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/managed-by"], "mcpod");
                assert_eq!(pod["metadata"]["labels"]["mcpod.dev/server"], "time");
                assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "uid-1");
                assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
                let container = &pod["spec"]["containers"][0];
                assert_eq!(container["stdin"], true);
                assert_eq!(container["stdinOnce"], false);
                assert_eq!(container["tty"], false);
                assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
            },
            201,
            pod(true, json!({"phase": "Pending"})),
        )
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            |patch| {
                status_phase("Starting")(patch);
                assert_eq!(patch["status"]["podName"], "mcpod-time");
                let ready = &patch["status"]["conditions"][0];
                assert_eq!((ready["type"].as_str(), ready["status"].as_str()), (Some("Ready"), Some("False")));
            },
            200,
            json!(null),
        );
    let (result, _) = reconcile(object, scenario).await;
    result.unwrap();
}

#[tokio::test]
async fn kube_running_pod_gives_running_status_and_one_started_event() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(2)}),
        json!({}),
        json!({"phase": "Starting", "podName": "mcpod-time"}),
    );
    let scenario = Scenario::default()
        .get_pod(Some(pod(true, running(1))))
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            |patch| {
                status_phase("Running")(patch);
                assert_eq!(patch["status"]["containerId"], "containerd://c1");
                assert_eq!(patch["status"]["restartCount"], 0);
                assert!(patch["status"]["lastActivity"].is_string());
                assert!(patch["status"]["startedAt"].is_string());
            },
            200,
            json!(null),
        )
        .event("Started", "Normal");
    let (result, _) = reconcile(object, scenario).await;
    // Looked at again when the idle timeout (300 s) could run out, not before.
    let action = result.unwrap();
    assert!(
        action != Action::requeue(Duration::from_secs(300 + 1)),
        "{action:?}"
    );
}

#[tokio::test]
async fn kube_unchanged_running_server_writes_nothing() {
    // A first reconcile computes the status; a second one with that status
    // stored must make no write and publish no event.
    let annotations = json!({"mcpod.dev/wake-requested-at": ago(2)});
    let running_pod = pod(true, running(1));
    let stored = Arc::new(std::sync::Mutex::new(Value::Null));
    let keep = stored.clone();
    let scenario = Scenario::default()
        .get_pod(Some(running_pod.clone()))
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            move |patch| *keep.lock().unwrap() = patch["status"].clone(),
            200,
            json!(null),
        )
        .expect(Method::POST, EVENTS, |_| {}, 201, json!({}));
    reconcile(
        server(annotations.clone(), json!({}), json!(null)),
        scenario,
    )
    .await
    .0
    .unwrap();
    let status = stored.lock().unwrap().clone();
    let scenario = Scenario::default().get_pod(Some(running_pod.clone()));
    reconcile(
        server(annotations.clone(), json!({}), status.clone()),
        scenario,
    )
    .await
    .0
    .unwrap();
    // The group controller's condition (its own field manager) is not this
    // controller's to write back or remove: still nothing to write.
    let mut with_collision = status;
    with_collision["conditions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "GroupCollision", "status": "True", "reason": "PrefixCollision"}));
    let scenario = Scenario::default().get_pod(Some(running_pod));
    reconcile(server(annotations, json!({}), with_collision), scenario)
        .await
        .0
        .unwrap();
}

#[tokio::test]
async fn kube_idle_server_is_scaled_to_zero() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(3600), "mcpod.dev/last-activity": ago(400)}),
        json!({"idleTimeout": "300s"}),
        json!({"phase": "Running", "podName": "mcpod-time"}),
    );
    let scenario = Scenario::default()
        .get_pod(Some(pod(true, running(3500))))
        .expect(Method::DELETE, POD, |_| {}, 200, pod(true, running(3500)))
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            |patch| {
                status_phase("Stopped")(patch);
                assert!(patch["status"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("scaled to zero"));
                assert!(patch["status"].get("podName").is_none());
            },
            200,
            json!(null),
        )
        .expect(
            Method::POST,
            EVENTS,
            |event| {
                event_reason("ScaledToZero", "Normal")(event);
                assert!(
                    event["note"]
                        .as_str()
                        .unwrap()
                        .contains("no activity for 6m"),
                    "{event}"
                );
            },
            201,
            json!({}),
        );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_recent_activity_keeps_the_pod() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(3600), "mcpod.dev/last-activity": ago(100)}),
        json!({"idleTimeout": "300s"}),
        json!({"phase": "Running", "podName": "mcpod-time"}),
    );
    let scenario = Scenario::default()
        .get_pod(Some(pod(true, running(3500))))
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            status_phase("Running"),
            200,
            json!(null),
        );
    let action = reconcile(object, scenario).await.0.unwrap();
    // Due again when the 300 s since the last activity (100 s ago) run out.
    let due = [199, 200, 201].map(|s| Action::requeue(Duration::from_secs(s)));
    assert!(due.contains(&action), "{action:?}");
}

#[tokio::test]
async fn kube_never_woken_server_gets_no_pod() {
    let object = server(json!({}), json!({}), json!(null));
    let scenario = Scenario::default().get_pod(None).expect(
        Method::PATCH,
        &format!("{SERVERS}/time/status"),
        status_phase("Stopped"),
        200,
        json!(null),
    );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_always_on_server_is_created_without_wake() {
    let object = server(
        json!({}),
        json!({"desiredState": "AlwaysOn", "network": "bridge"}),
        json!(null),
    );
    let scenario = Scenario::default()
        .get_pod(None)
        .expect(
            Method::PATCH,
            POLICY,
            |policy| assert_eq!(policy["spec"]["egress"], json!([{}]), "bridge allows egress"),
            200,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "mcpod-time"}}),
        )
        .expect(Method::POST, PODS, |_| {}, 201, pod(true, json!({"phase": "Pending"})))
        .expect(Method::PATCH, &format!("{SERVERS}/time/status"), status_phase("Starting"), 200, json!(null));
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_deleted_server_loses_its_pod_then_its_finalizer() {
    let mut object = server(json!({}), json!({}), json!({"phase": "Running"}));
    object["metadata"]["deletionTimestamp"] = json!(ago(1));
    let scenario = Scenario::default()
        .expect(Method::DELETE, POD, |_| {}, 200, pod(true, running(10)))
        .expect(Method::DELETE, LEASE, |_| {}, 200, json!({}))
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time"),
            |patch| {
                let ops = patch.as_array().expect("a JSON patch");
                assert!(
                    ops.iter()
                        .any(|op| op["op"] == "remove" && op["path"] == "/metadata/finalizers/0"),
                    "{patch}"
                );
            },
            200,
            json!(null),
        );
    let (result, _) = reconcile(object, scenario).await;
    assert_eq!(result.unwrap(), Action::await_change());
}

#[tokio::test]
async fn kube_cleanup_of_a_pod_already_gone_succeeds() {
    let mut object = server(json!({}), json!({}), json!(null));
    object["metadata"]["deletionTimestamp"] = json!(ago(1));
    let scenario = Scenario::default()
        .expect(Method::DELETE, POD, |_| {}, 404, not_found())
        .expect(Method::DELETE, LEASE, |_| {}, 404, not_found())
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time"),
            |_| {},
            200,
            json!(null),
        );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_crash_loop_is_failed_with_the_exit_and_a_warning() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(5)}),
        json!({}),
        json!({"phase": "Starting", "podName": "mcpod-time"}),
    );
    let scenario = Scenario::default()
        .get_pod(Some(pod(
            true,
            waiting("CrashLoopBackOff", "back-off 20s restarting", 3),
        )))
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            |patch| {
                status_phase("Failed")(patch);
                let message = patch["status"]["message"].as_str().unwrap();
                assert!(message.contains("exited with code 1 (Error)"), "{message}");
                assert!(message.contains("CrashLoopBackOff"), "{message}");
                assert_eq!(patch["status"]["restartCount"], 3);
            },
            200,
            json!(null),
        )
        .event("Failed", "Warning");
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_image_pull_error_is_failed_with_its_own_event() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(5)}),
        json!({}),
        json!(null),
    );
    let scenario = Scenario::default()
        .get_pod(Some(pod(
            true,
            waiting("ImagePullBackOff", "Back-off pulling image", 0),
        )))
        .failed_status("localhost/mcpod/time:latest cannot be pulled")
        .event("ImagePullError", "Warning");
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_failed_pod_is_replaced_on_wake() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(1)}),
        json!({}),
        json!(null),
    );
    let failed = pod(
        true,
        json!({"phase": "Failed", "message": "The node was low on resource: memory."}),
    );
    let scenario = Scenario::default()
        .get_pod(Some(failed.clone()))
        .expect(Method::DELETE, POD, |_| {}, 200, failed)
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            status_phase("Stopped"),
            200,
            json!(null),
        );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_errors_back_off_per_server() {
    let (client, _handle) = mock();
    let ctx = Context::new(client, Defaults::default());
    let object: Arc<MCPServer> =
        Arc::new(serde_json::from_value(server(json!({}), json!({}), json!(null))).unwrap());
    let error = mcpod::Error::Cluster("boom".into());
    let delays: Vec<Action> = (0..4)
        .map(|_| operator::error_policy(object.clone(), &error, ctx.clone()))
        .collect();
    let expected: Vec<Action> = [1, 2, 4, 8]
        .map(|s| Action::requeue(Duration::from_secs(s)))
        .to_vec();
    assert_eq!(delays, expected);
    assert_eq!(mcpod::backoff::backoff(40), Duration::from_secs(300));
}

#[tokio::test]
async fn kube_existing_pod_is_adopted_not_replaced() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(2)}),
        json!({}),
        json!(null),
    );
    let scenario = Scenario::default()
        .get_pod(Some(pod(false, running(60))))
        .expect(
            Method::PATCH,
            POD,
            |patch| {
                assert_eq!(
                    patch["metadata"]["ownerReferences"][0]["uid"], "uid-1",
                    "{patch}"
                )
            },
            200,
            pod(true, running(60)),
        )
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            |patch| {
                status_phase("Running")(patch);
                assert_eq!(patch["status"]["podName"], "mcpod-time");
            },
            200,
            json!(null),
        )
        .event("Started", "Normal");
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_foreign_pod_with_the_same_name_is_an_error() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(2)}),
        json!({}),
        json!(null),
    );
    let mut foreign = pod(false, running(60));
    foreign["metadata"]["labels"] = json!({"app": "something-else"});
    let (result, _) = reconcile(object, Scenario::default().get_pod(Some(foreign))).await;
    let message = result.unwrap_err().to_string();
    assert!(message.contains("not managed by mcpod"), "{message}");
}

#[tokio::test]
async fn kube_spec_change_replaces_the_pod() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(2)}),
        json!({}),
        json!(null),
    );
    let mut old = pod(true, running(60));
    old["metadata"]["labels"]["mcpod.dev/spec-hash"] = json!("0000000000000000");
    let scenario = Scenario::default()
        .get_pod(Some(old.clone()))
        .expect(Method::DELETE, POD, |_| {}, 200, old)
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            status_phase("Stopping"),
            200,
            json!(null),
        );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_forbidden_is_reported_with_what_to_fix() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(2)}),
        json!({}),
        json!(null),
    );
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "pods \"mcpod-time\" is forbidden: User \"system:serviceaccount:mcpod:mcpod\" cannot get resource \"pods\" in API group \"\" in the namespace \"ns\"",
        "reason": "Forbidden", "code": 403});
    let scenario = Scenario::default().expect(Method::GET, POD, |_| {}, 403, forbidden);
    let message = reconcile(object, scenario).await.0.unwrap_err().to_string();
    assert!(
        message.contains("get pod ns/mcpod-time: forbidden"),
        "{message}"
    );
    assert!(
        message.contains("cannot get resource \"pods\""),
        "{message}"
    );
    assert!(message.contains("rbac.yaml"), "{message}");
}

#[tokio::test]
async fn kube_forbidden_status_write_is_an_error_too() {
    let object = server(json!({}), json!({}), json!(null));
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "mcpservers.mcpod.dev \"time\" is forbidden: cannot patch resource \"mcpservers/status\"",
        "reason": "Forbidden", "code": 403});
    let scenario = Scenario::default().get_pod(None).expect(
        Method::PATCH,
        &format!("{SERVERS}/time/status"),
        |_| {},
        403,
        forbidden,
    );
    let message = reconcile(object, scenario).await.0.unwrap_err().to_string();
    assert!(
        message.contains("write the status of MCPServer ns/time: forbidden"),
        "{message}"
    );
}

// --- the router's side: KubeRuntime ---

#[tokio::test]
async fn kube_runtime_wakes_then_waits_for_running() {
    let (client, handle) = mock();
    let runtime =
        KubeRuntime::new(client, "ns", false).with_poll_interval(Duration::from_millis(10));
    let scenario = Scenario::default()
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time"),
            |patch| {
                let at = patch["metadata"]["annotations"]["mcpod.dev/wake-requested-at"]
                    .as_str()
                    .unwrap();
                assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{patch}");
                assert!(patch.get("spec").is_none() && patch.get("status").is_none());
            },
            200,
            server(json!({}), json!({}), json!(null)),
        )
        .get_pod(None)
        .get_pod(Some(pod(true, json!({"phase": "Pending"}))))
        .get_pod(Some(pod(true, running(0))));
    let api_server = scenario.serve(handle);
    runtime.request_wake("ns", "time").await.unwrap();
    let pod: Pod = runtime
        .wait_running("ns", "time", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(pod.metadata.name.as_deref(), Some("mcpod-time"));
    api_server.await.unwrap();
}

#[tokio::test]
async fn kube_runtime_fails_fast_on_a_pod_that_cannot_run() {
    let (client, handle) = mock();
    let runtime =
        KubeRuntime::new(client, "ns", false).with_poll_interval(Duration::from_millis(10));
    let api_server = Scenario::default()
        .get_pod(Some(pod(true, waiting("ErrImagePull", "not found", 0))))
        .serve(handle);
    let error = runtime
        .wait_running("ns", "time", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cannot be pulled"), "{error}");
    api_server.await.unwrap();
}

#[tokio::test]
async fn kube_runtime_wait_is_bounded() {
    let (client, handle) = mock();
    let runtime =
        KubeRuntime::new(client, "ns", false).with_poll_interval(Duration::from_millis(40));
    let api_server = tokio::spawn(async move {
        let mut handle = handle;
        // Answer "no pod" for as long as asked.
        while let Some((_, send)) = handle.next_request().await {
            send.send_response(
                Response::builder()
                    .status(404)
                    .body(Body::from(serde_json::to_vec(&not_found()).unwrap()))
                    .unwrap(),
            );
        }
    });
    let error = runtime
        .wait_running("ns", "time", Duration::from_millis(150))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(message.contains("did not run within"), "{message}");
    assert!(message.contains("is `mcpod operator` running"), "{message}");
    drop(runtime);
    api_server.abort();
}

#[tokio::test]
async fn kube_runtime_stop_deletes_the_pod_and_lists_by_label() {
    let (client, handle) = mock();
    let runtime = KubeRuntime::new(client, "ns", false);
    let api_server = Scenario::default()
        .expect(Method::DELETE, POD, |_| {}, 404, not_found())
        .expect(
            Method::GET,
            PODS,
            |_| {},
            200,
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod(true, running(5))]}),
        )
        .serve(handle);
    runtime.stop("ns/time", Duration::ZERO).await.unwrap();
    let managed = runtime.list().await.unwrap();
    assert_eq!(managed.len(), 1);
    assert_eq!(managed[0].server, "time");
    assert!(managed[0].running);
    api_server.await.unwrap();
}

#[tokio::test]
async fn kube_error_backoff_grows_then_resets_after_a_success() {
    let (client, handle) = mock();
    let ctx = Context::new(client, Defaults::default());
    let object = server(json!({}), json!({}), json!(null));
    let typed: Arc<MCPServer> = Arc::new(serde_json::from_value(object.clone()).unwrap());
    let forbidden = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "forbidden", "reason": "Forbidden", "code": 403});
    let mut handle = handle;
    let mut delays = vec![];
    for _ in 0..3 {
        let scenario = Scenario::default().expect(Method::GET, POD, |_| {}, 403, forbidden.clone());
        let (result, back) = reconcile_with(&ctx, handle, object.clone(), scenario).await;
        handle = back;
        let error = result.unwrap_err();
        delays.push(operator::error_policy(typed.clone(), &error, ctx.clone()));
    }
    let expected: Vec<Action> = [1, 2, 4]
        .map(|s| Action::requeue(Duration::from_secs(s)))
        .to_vec();
    assert_eq!(delays, expected);
    // A successful reconcile forgets the failures: the next error waits 1 s again.
    let scenario = Scenario::default().get_pod(None).expect(
        Method::PATCH,
        &format!("{SERVERS}/time/status"),
        status_phase("Stopped"),
        200,
        json!(null),
    );
    let (result, _) = reconcile_with(&ctx, handle, object, scenario).await;
    result.unwrap();
    let error = mcpod::Error::Cluster("again".into());
    assert_eq!(
        operator::error_policy(typed, &error, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
}

#[tokio::test]
async fn kube_idle_timeout_never_undercuts_a_request() {
    // idleTimeout 10s but requestTimeout 60s: 20 s after the last write the
    // answer may still come, so the pod stays.
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(20)}),
        json!({"idleTimeout": "10s", "requestTimeout": "60s"}),
        json!({"phase": "Running", "podName": "mcpod-time"}),
    );
    let scenario = Scenario::default()
        .get_pod(Some(pod(true, running(19))))
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            status_phase("Running"),
            200,
            json!(null),
        );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_disabled_server_loses_its_pod_without_an_event() {
    let object = server(
        json!({"mcpod.dev/wake-requested-at": ago(1)}),
        json!({"desiredState": "Disabled"}),
        json!({"phase": "Running", "podName": "mcpod-time"}),
    );
    let scenario = Scenario::default()
        .get_pod(Some(pod(true, running(30))))
        .expect(Method::DELETE, POD, |_| {}, 200, pod(true, running(30)))
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            |patch| {
                status_phase("Stopped")(patch);
                assert_eq!(patch["status"]["message"], "disabled");
            },
            200,
            json!(null),
        );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_invalid_spec_is_failed_and_named() {
    let object = server(
        json!({}),
        json!({"resources": {"limits": {"memory": "12XB"}}}),
        json!(null),
    );
    let scenario = Scenario::default()
        .get_pod(None)
        .failed_status("spec.resources.limits.memory")
        .event("Failed", "Warning");
    reconcile(object, scenario).await.0.unwrap();
}

// --- sessionMode: Isolated: one pod per client session ---

const SESSION: &str = "s0a1b2c3d";
const SESSION_POD: &str = "/api/v1/namespaces/ns/pods/mcpod-time-s0a1b2c3d";

fn isolated(annotations: Value, spec: Value, status: Value) -> Value {
    let mut spec = spec;
    spec["sessionMode"] = json!("Isolated");
    server(annotations, spec, status)
}

fn session_annotation(seconds_ago: i64) -> Value {
    json!({format!("sessions.mcpod.dev/{SESSION}"): ago(seconds_ago)})
}

/// The pod the operator makes for session [`SESSION`], as the API server returns it.
fn session_pod(status: Value) -> Value {
    let mut pod = serde_json::to_value(mcpod::kube::pod::session_pod_for(
        &workload(),
        SESSION,
        Some("ns"),
        None,
    ))
    .unwrap();
    pod["metadata"]["ownerReferences"] = json!([owner()]);
    pod["metadata"]["uid"] = json!("session-pod-uid");
    pod["status"] = status;
    pod
}

fn session_pods(count: i64, phase: &'static str) -> impl Fn(&Value) + Send {
    move |patch| {
        status_phase(phase)(patch);
        assert_eq!(patch["status"]["sessionPods"], count, "{patch}");
        assert!(patch["status"].get("podName").is_none(), "{patch}");
    }
}

#[tokio::test]
async fn kube_session_annotation_creates_a_session_pod() {
    let object = isolated(session_annotation(1), json!({}), json!(null));
    let scenario = Scenario::default()
        .list_pods(vec![])
        .expect(
            Method::PATCH,
            POLICY,
            |policy| {
                // The server's one NetworkPolicy selects its session pods too.
                let selector = &policy["spec"]["podSelector"]["matchLabels"];
                assert_eq!(selector["mcpod.dev/server"], "time", "{policy}");
                assert!(selector.get("mcpod.dev/session").is_none(), "{policy}");
            },
            200,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "mcpod-time"}}),
        )
        .expect(
            Method::POST,
            PODS,
            |pod| {
                assert_eq!(pod["metadata"]["name"], "mcpod-time-s0a1b2c3d");
                let labels = &pod["metadata"]["labels"];
                assert_eq!(labels["mcpod.dev/server"], "time");
                assert_eq!(labels["mcpod.dev/session"], SESSION);
                assert_eq!(labels["app.kubernetes.io/managed-by"], "mcpod");
                assert_eq!(pod["metadata"]["ownerReferences"][0]["uid"], "uid-1");
                // The same pod spec as a shared pod: the one workload step made it.
                let shared = pod_for(&workload(), Some("ns"), None);
                assert_eq!(pod["spec"], serde_json::to_value(shared.spec).unwrap());
                assert_eq!(
                    labels["mcpod.dev/spec-hash"],
                    shared.metadata.labels.unwrap()["mcpod.dev/spec-hash"]
                );
            },
            201,
            session_pod(json!({"phase": "Pending"})),
        )
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            session_pods(1, "Starting"),
            200,
            json!(null),
        );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_running_session_pod_is_kept_and_counted() {
    let object = isolated(
        session_annotation(5),
        json!({"idleTimeout": "300s"}),
        json!({"phase": "Starting", "sessionPods": 1}),
    );
    let scenario = Scenario::default()
        .list_pods(vec![session_pod(running(3))])
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            |patch| {
                session_pods(1, "Running")(patch);
                assert_eq!(patch["status"]["message"], "1 of 1 session pods running");
                assert!(patch["status"]["lastActivity"].is_string());
            },
            200,
            json!(null),
        )
        .event("Started", "Normal");
    let action = reconcile(object, scenario).await.0.unwrap();
    // Looked at again when the session would go stale (300 s after 5 s ago).
    let due = [295, 296, 297].map(|s| Action::requeue(Duration::from_secs(s)));
    assert!(due.contains(&action), "{action:?}");
}

#[tokio::test]
async fn kube_session_pod_goes_when_its_annotation_does() {
    let object = isolated(
        json!({}),
        json!({}),
        json!({"phase": "Running", "sessionPods": 1}),
    );
    let scenario = Scenario::default()
        .list_pods(vec![session_pod(running(30))])
        .expect(
            Method::DELETE,
            SESSION_POD,
            |_| {},
            200,
            session_pod(running(30)),
        )
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            |patch| {
                session_pods(0, "Stopped")(patch);
                assert!(
                    patch["status"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("no client sessions"),
                    "{patch}"
                );
            },
            200,
            json!(null),
        );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_stale_session_loses_its_pod_and_its_annotation() {
    let annotations = session_annotation(400);
    let seen = annotations[format!("sessions.mcpod.dev/{SESSION}")].clone();
    let object = isolated(
        annotations,
        json!({"idleTimeout": "300s"}),
        json!({"phase": "Running", "sessionPods": 1}),
    );
    let scenario = Scenario::default()
        .list_pods(vec![session_pod(running(400))])
        .expect(
            Method::DELETE,
            SESSION_POD,
            |_| {},
            200,
            session_pod(running(400)),
        )
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time"),
            move |patch| {
                // Removed only if no router refreshed it since it was read.
                let path = "/metadata/annotations/sessions.mcpod.dev~1s0a1b2c3d";
                assert_eq!(
                    patch,
                    &json!([{"op": "test", "path": path, "value": seen},
                            {"op": "remove", "path": path}])
                );
            },
            200,
            json!(null),
        )
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            session_pods(0, "Stopped"),
            200,
            json!(null),
        )
        .event("ScaledToZero", "Normal");
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_stale_session_refreshed_meanwhile_is_kept() {
    let object = isolated(
        session_annotation(400),
        json!({"idleTimeout": "300s"}),
        json!(null),
    );
    let changed = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "the server rejected our request due to an error in our request", "code": 422});
    let scenario = Scenario::default()
        .list_pods(vec![])
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time"),
            |_| {},
            422,
            changed,
        )
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            session_pods(0, "Stopped"),
            200,
            json!(null),
        );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_isolated_server_never_gets_a_shared_pod() {
    // A wake (from a router of an older version, or from before the switch to
    // Isolated) makes no shared pod, and a shared pod left running is deleted.
    let object = isolated(
        json!({"mcpod.dev/wake-requested-at": ago(1)}),
        json!({"desiredState": "AlwaysOn"}),
        json!({"phase": "Running", "podName": "mcpod-time"}),
    );
    let scenario = Scenario::default()
        .list_pods(vec![pod(true, running(60))])
        .expect(Method::DELETE, POD, |_| {}, 200, pod(true, running(60)))
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            session_pods(0, "Stopped"),
            200,
            json!(null),
        );
    reconcile(object, scenario).await.0.unwrap();
    let object = isolated(
        json!({"mcpod.dev/wake-requested-at": ago(1)}),
        json!({}),
        json!(null),
    );
    let scenario = Scenario::default().list_pods(vec![]).expect(
        Method::PATCH,
        &format!("{SERVERS}/time/status"),
        session_pods(0, "Stopped"),
        200,
        json!(null),
    );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_deleted_isolated_server_loses_its_session_pods() {
    let mut object = isolated(session_annotation(1), json!({}), json!(null));
    object["metadata"]["deletionTimestamp"] = json!(ago(1));
    let scenario = Scenario::default()
        .expect(Method::DELETE, POD, |_| {}, 404, not_found())
        .list_pods(vec![session_pod(running(10))])
        .expect(
            Method::DELETE,
            SESSION_POD,
            |_| {},
            200,
            session_pod(running(10)),
        )
        .expect(Method::DELETE, LEASE, |_| {}, 404, not_found())
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time"),
            |patch| {
                assert!(
                    patch.as_array().is_some(),
                    "the finalizer's removal: {patch}"
                )
            },
            200,
            json!(null),
        );
    reconcile(object, scenario).await.0.unwrap();
}

#[tokio::test]
async fn kube_runtime_session_pod_is_removed_with_its_annotation_first() {
    let (client, handle) = mock();
    let runtime = KubeRuntime::new(client.clone(), "ns", false);
    let key = runtime.session_key("ns/time", SESSION);
    assert_eq!(key, "ns/time#s0a1b2c3d");
    let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "the server rejected our request due to an error in our request", "code": 422});
    let api_server = Scenario::default()
        // The annotation first, so that the operator does not make the pod again.
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time"),
            |patch| {
                assert_eq!(
                    patch,
                    &json!({"metadata": {"annotations": {"sessions.mcpod.dev/s0a1b2c3d": null}}})
                )
            },
            200,
            json!(null),
        )
        .expect(Method::DELETE, SESSION_POD, |_| {}, 404, not_found())
        // An activity report after the session ended must not bring the annotation back.
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time"),
            |patch| {
                assert_eq!(patch[0]["op"], "replace", "{patch}");
                assert_eq!(
                    patch[0]["path"],
                    "/metadata/annotations/sessions.mcpod.dev~1s0a1b2c3d"
                );
            },
            422,
            gone,
        )
        .serve(handle);
    runtime.remove(&key).await.unwrap();
    let servers: kube::Api<MCPServer> = kube::Api::namespaced(client, "ns");
    let refreshed = mcpod::kube::annotations::refresh_annotation(
        &servers,
        "time",
        &format!("sessions.mcpod.dev/{SESSION}"),
        Utc::now(),
    )
    .await
    .unwrap();
    assert!(!refreshed, "a removed session annotation stays removed");
    api_server.await.unwrap();
}
