//! The router's whole Kubernetes path on this machine, with a fake API server:
//! an MCP request makes the router annotate the MCPServer (wake), poll the pod
//! until it runs, attach to it over a WebSocket (the `v4.channel.k8s.io`
//! protocol the API server speaks for `pods/attach`) and talk MCP with a real
//! stdio server process (the fixture), whose stdout and stderr come back as
//! channels 1 and 2. Activity is then reported as an annotation, and a stop
//! deletes the pod.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warp::ws::{Message, WebSocket};
use warp::Filter;

use mcpod::crd::MCPServer;
use mcpod::kube::lease::LeaseSettings;
use mcpod::kube::ownership::Ownership;
use mcpod::kube::runtime::KubeRuntime;
use mcpod::manifests::{Loaded, Manifests};
use mcpod::reconcile::Reconciler;
use mcpod::router::{self, RouterConfig};
use mcpod::server::Settings;
use mcpod::workload::Defaults;

/// What the fake API server was asked, and the little cluster state it keeps.
#[derive(Default)]
struct Seen {
    wakes: usize,
    activity: Vec<String>,
    attaches: Vec<String>,
    /// The pod each attach went to, in order.
    attached_pods: Vec<String>,
    /// `initialize` requests that reached a server process through an attach.
    initializes: usize,
    deletes: usize,
    /// The pods deleted, in order.
    deleted: Vec<String>,
    /// The pod's creation time; `None`: the pod carries none.
    pod_created: Option<String>,
    /// The MCPServer's annotations, as the patches left them.
    annotations: BTreeMap<String, String>,
    /// JSON patches (RFC 6902) that were applied, and those refused (422).
    json_patches: Vec<Value>,
    refused_json_patches: usize,
    /// The shared pod's generation while it exists (its uid is `pod-<n>`); a wake
    /// makes one when there is none, as the operator would.
    shared_pod: Option<u32>,
    pods_made: u32,
    /// Leases by name, with the resourceVersion they were last written with.
    leases: BTreeMap<String, Value>,
    resource_version: u64,
    /// Lease writes refused for a stale resourceVersion or an existing name (409).
    lease_conflicts: usize,
}

impl Seen {
    fn lease_holder(&self) -> Option<String> {
        self.leases.get("mcpod-fix")?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_string)
    }
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_mcp.py")
}

fn mcp_server() -> Value {
    json!({"apiVersion": "mcpod.dev/v1alpha1", "kind": "MCPServer",
           "metadata": {"name": "fix", "namespace": "ns", "uid": "uid-1"},
           "spec": {"image": "localhost/mcpod-test/fixture:latest", "idleTimeout": "4s",
                    "requestTimeout": "1s"}})
}

fn isolated_server() -> Value {
    let mut server = mcp_server();
    server["spec"]["sessionMode"] = json!("Isolated");
    server
}

fn running_pod(created: Option<&str>) -> Value {
    let mut pod = running_pod_without_time();
    if let Some(created) = created {
        pod["metadata"]["creationTimestamp"] = json!(created);
    }
    pod
}

fn running_pod_without_time() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "mcpod-fix", "namespace": "ns",
                        "labels": {"app.kubernetes.io/managed-by": "mcpod", "mcpod.dev/server": "fix"}},
           "status": {"phase": "Running", "containerStatuses": [{"name": "server", "image": "x",
               "imageID": "", "ready": true, "restartCount": 0,
               "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}})
}

fn not_found() -> warp::reply::WithStatus<warp::reply::Json> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found"});
    warp::reply::with_status(
        warp::reply::json(&status),
        warp::http::StatusCode::NOT_FOUND,
    )
}

/// The session a pod name is for (`mcpod-fix-<session>`), if it is a session pod.
fn session_of(pod: &str) -> Option<&str> {
    pod.strip_prefix("mcpod-fix-")
}

/// `coordination.k8s.io/v1` Leases in `ns`: get, create (409 when it exists) and
/// update (409 unless the resourceVersion is the stored one), as the API server does.
fn lease_routes(
    seen: Arc<Mutex<Seen>>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let with_seen = warp::any().map(move || seen.clone());
    let conflict = || {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                            "reason": "Conflict", "code": 409, "message": "the object has been modified"});
        warp::reply::with_status(warp::reply::json(&status), warp::http::StatusCode::CONFLICT)
    };
    let store = |seen: &mut Seen, mut lease: Value| {
        seen.resource_version += 1;
        lease["metadata"]["resourceVersion"] = json!(seen.resource_version.to_string());
        let name = lease["metadata"]["name"].as_str().unwrap().to_string();
        seen.leases.insert(name, lease.clone());
        lease
    };
    let get = warp::path!(
        "apis" / "coordination.k8s.io" / "v1" / "namespaces" / "ns" / "leases" / String
    )
    .and(warp::get())
    .and(with_seen.clone())
    .map(
        |name: String, seen: Arc<Mutex<Seen>>| match seen.lock().unwrap().leases.get(&name) {
            Some(lease) => {
                warp::reply::with_status(warp::reply::json(lease), warp::http::StatusCode::OK)
            }
            None => not_found(),
        },
    );
    let create =
        warp::path!("apis" / "coordination.k8s.io" / "v1" / "namespaces" / "ns" / "leases")
            .and(warp::post())
            .and(warp::body::json())
            .and(with_seen.clone())
            .map(move |lease: Value, seen: Arc<Mutex<Seen>>| {
                let mut seen = seen.lock().unwrap();
                let name = lease["metadata"]["name"].as_str().unwrap_or_default();
                if seen.leases.contains_key(name) {
                    seen.lease_conflicts += 1;
                    return conflict();
                }
                let stored = store(&mut seen, lease);
                warp::reply::with_status(
                    warp::reply::json(&stored),
                    warp::http::StatusCode::CREATED,
                )
            });
    let update = warp::path!(
        "apis" / "coordination.k8s.io" / "v1" / "namespaces" / "ns" / "leases" / String
    )
    .and(warp::put())
    .and(warp::body::json())
    .and(with_seen)
    .map(move |name: String, lease: Value, seen: Arc<Mutex<Seen>>| {
        let mut seen = seen.lock().unwrap();
        let stored = seen
            .leases
            .get(&name)
            .map(|l| l["metadata"]["resourceVersion"].clone());
        if stored.is_none() || stored != Some(lease["metadata"]["resourceVersion"].clone()) {
            seen.lease_conflicts += 1;
            return conflict();
        }
        let stored = store(&mut seen, lease);
        warp::reply::with_status(warp::reply::json(&stored), warp::http::StatusCode::OK)
    });
    get.or(create).or(update)
}

/// Bridges one attach WebSocket to a fresh fixture process, as the kubelet
/// bridges it to the container: channel 0 in, channels 1 and 2 out.
async fn attach(socket: WebSocket, seen: Arc<Mutex<Seen>>) {
    let mut child = tokio::process::Command::new("python3")
        .arg(fixture())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the fixture");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (mut tx, mut rx) = socket.split();
    let (out_tx, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    for (channel, mut reader) in [
        (
            1u8,
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        ),
        (
            2u8,
            Box::new(stderr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        ),
    ] {
        let out_tx = out_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = reader.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut frame = vec![channel];
                frame.extend_from_slice(&buf[..n]);
                let _ = out_tx.send(frame);
            }
        });
    }
    drop(out_tx);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if tx.send(Message::binary(frame)).await.is_err() {
                return;
            }
        }
        // The process ended: the v4 status channel, then close.
        let _ = tx
            .send(Message::binary(
                [&[3u8][..], br#"{"status":"Success"}"#].concat(),
            ))
            .await;
        let _ = tx.close().await;
    });
    while let Some(Ok(message)) = rx.next().await {
        let bytes = message.as_bytes();
        if message.is_binary() && bytes.first() == Some(&0) {
            let text = String::from_utf8_lossy(&bytes[1..]);
            seen.lock().unwrap().initializes += text.matches(r#""method":"initialize""#).count();
            if stdin.write_all(&bytes[1..]).await.is_err() {
                break;
            }
        }
    }
    let _ = child.kill().await;
    let _ = writer.await;
}

/// Applies a patch of the MCPServer's annotations: a merge patch (an object;
/// null removes a key) or a JSON patch (an array of add/replace/remove/test on
/// `/metadata/annotations/...`). `false`: a JSON patch that cannot apply (422).
fn patch_annotations(seen: &mut Seen, patch: &Value) -> bool {
    if let Some(ops) = patch.as_array() {
        let mut annotations = seen.annotations.clone();
        for op in ops {
            let key = op["path"]
                .as_str()
                .and_then(|p| p.strip_prefix("/metadata/annotations/"))
                .map(|k| k.replace("~1", "/").replace("~0", "~"))
                .unwrap_or_default();
            let present = annotations.get(&key).cloned();
            let ok = match op["op"].as_str() {
                Some("add") => {
                    annotations.insert(key, op["value"].as_str().unwrap_or_default().into());
                    true
                }
                Some("replace") if present.is_some() => {
                    annotations.insert(key, op["value"].as_str().unwrap_or_default().into());
                    true
                }
                Some("remove") => annotations.remove(&key).is_some(),
                Some("test") => present.as_deref() == op["value"].as_str(),
                _ => false,
            };
            if !ok {
                seen.refused_json_patches += 1;
                return false;
            }
        }
        seen.annotations = annotations;
        seen.json_patches.push(patch.clone());
        return true;
    }
    for (key, value) in patch["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        match value.as_str() {
            Some(text) => {
                seen.annotations.insert(key.clone(), text.to_string());
            }
            None => {
                seen.annotations.remove(key);
            }
        }
    }
    true
}

/// The fake API server: the calls the router makes, and nothing else.
/// It plays the operator's part too: the shared pod runs once woken, and a
/// session's pod runs while the session's annotation is there.
async fn fake_api_server(seen: Arc<Mutex<Seen>>) -> String {
    let with_seen = {
        let seen = seen.clone();
        warp::any().map(move || seen.clone())
    };
    let patch_server =
        warp::path!("apis" / "mcpod.dev" / "v1alpha1" / "namespaces" / "ns" / "mcpservers" / "fix")
            .and(warp::patch())
            // A merge or JSON patch, so not `warp::body::json`.
            .and(warp::body::bytes())
            .and(with_seen.clone())
            .map(|body: bytes::Bytes, seen: Arc<Mutex<Seen>>| {
                let patch: Value = serde_json::from_slice(&body).unwrap_or_default();
                let annotations = &patch["metadata"]["annotations"];
                let mut seen = seen.lock().unwrap();
                if annotations.get("mcpod.dev/wake-requested-at").is_some() {
                    seen.wakes += 1;
                    if seen.shared_pod.is_none() {
                        seen.pods_made += 1;
                        seen.shared_pod = Some(seen.pods_made);
                    }
                }
                if let Some(at) = annotations["mcpod.dev/last-activity"].as_str() {
                    seen.activity.push(at.to_string());
                }
                if !patch_annotations(&mut seen, &patch) {
                    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                        "reason": "Invalid", "code": 422, "message": "the patch does not apply"});
                    return warp::reply::with_status(
                        warp::reply::json(&status),
                        warp::http::StatusCode::UNPROCESSABLE_ENTITY,
                    );
                }
                let mut server = mcp_server();
                server["metadata"]["annotations"] = json!(seen.annotations);
                warp::reply::with_status(warp::reply::json(&server), warp::http::StatusCode::OK)
            });
    let get_pod = warp::path!("api" / "v1" / "namespaces" / "ns" / "pods" / String)
        .and(warp::get())
        .and(with_seen.clone())
        .map(|name: String, seen: Arc<Mutex<Seen>>| {
            let seen = seen.lock().unwrap();
            let exists = match session_of(&name) {
                Some(session) => seen
                    .annotations
                    .contains_key(&format!("sessions.mcpod.dev/{session}")),
                None => name == "mcpod-fix" && seen.shared_pod.is_some(),
            };
            if !exists {
                return not_found();
            }
            let mut pod = running_pod(seen.pod_created.as_deref());
            pod["metadata"]["name"] = json!(name);
            if let (None, Some(generation)) = (session_of(&name), seen.shared_pod) {
                pod["metadata"]["uid"] = json!(format!("pod-{generation}"));
            }
            if let Some(session) = session_of(&name) {
                pod["metadata"]["labels"]["mcpod.dev/session"] = json!(session);
            }
            warp::reply::with_status(warp::reply::json(&pod), warp::http::StatusCode::OK)
        });
    let delete_pod = warp::path!("api" / "v1" / "namespaces" / "ns" / "pods" / String)
        .and(warp::delete())
        .and(with_seen.clone())
        .map(|name: String, seen: Arc<Mutex<Seen>>| {
            let mut seen = seen.lock().unwrap();
            seen.deletes += 1;
            if name == "mcpod-fix" {
                seen.shared_pod = None;
            }
            seen.deleted.push(name);
            // The operator's next pod is a new one.
            if seen.pod_created.is_some() {
                seen.pod_created =
                    Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            }
            warp::reply::json(&running_pod(None))
        });
    let attach_pod = warp::path!("api" / "v1" / "namespaces" / "ns" / "pods" / String / "attach")
        .and(warp::query::raw())
        .and(warp::ws())
        .and(with_seen)
        .map(
            |name: String, query: String, ws: warp::ws::Ws, seen: Arc<Mutex<Seen>>| {
                {
                    let mut seen = seen.lock().unwrap();
                    seen.attaches.push(query);
                    seen.attached_pods.push(name);
                }
                warp::reply::with_header(
                    ws.on_upgrade(move |socket| attach(socket, seen)),
                    "sec-websocket-protocol",
                    "v4.channel.k8s.io",
                )
            },
        );
    let routes = patch_server
        .or(get_pod)
        .or(delete_pod)
        .or(attach_pod)
        .or(lease_routes(seen.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    format!("http://{address}")
}

async fn post(
    routes: &(impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible>
          + Clone
          + 'static),
    body: Value,
) -> Value {
    let response = warp::test::request()
        .method("POST")
        .path("/mcp/fix")
        .json(&body)
        .reply(routes)
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.body());
    serde_json::from_slice(response.body()).unwrap()
}

/// A router over a `KubeRuntime` that talks to the fake API server.
async fn kube_router(
    seen: Arc<Mutex<Seen>>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone + 'static
{
    kube_router_for(seen, mcp_server()).await
}

/// [`kube_router`] for the MCPServer `server` (named `fix`, in `ns`).
async fn kube_router_for(
    seen: Arc<Mutex<Seen>>,
    server: Value,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone + 'static
{
    let url = fake_api_server(seen).await;
    let config = kube::Config::new(url.parse().unwrap());
    // mcpod's own client stack (TCP_NODELAY): attach's WebSocket upgrade goes through it.
    let client = mcpod::kube::client::client(config).unwrap();
    let runtime = Arc::new(
        KubeRuntime::new(client, "ns", false).with_poll_interval(Duration::from_millis(20)),
    );
    let reconciler =
        Reconciler::for_kubernetes(runtime, Defaults::default(), Settings::default(), "ns");
    let server: MCPServer = serde_json::from_value(server).unwrap();
    reconciler
        .apply(Manifests {
            servers: vec![Loaded {
                file: PathBuf::from("mcpservers/ns/fix"),
                server,
            }],
            ..Default::default()
        })
        .await;
    router::routes(reconciler, RouterConfig::default())
}

fn call(text: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
           "params": {"name": "echo", "arguments": {"text": text}}})
}

#[tokio::test]
async fn kube_router_replaces_a_pod_that_predates_it_instead_of_reinitializing_it() {
    let seen = Arc::new(Mutex::new(Seen {
        pod_created: Some("2020-01-01T00:00:00Z".into()),
        ..Seen::default()
    }));
    let routes = kube_router(seen.clone()).await;
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        post(&routes, call("fresh session")),
    )
    .await
    .expect("answered");
    assert_eq!(
        reply["result"]["content"][0]["text"], "fresh session",
        "{reply}"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.deletes, 1, "the old pod was deleted");
    assert_eq!(seen.wakes, 2, "and a new one requested");
    assert_eq!(seen.attaches.len(), 1, "only the new pod was attached to");
}

#[tokio::test]
async fn kube_router_wakes_attaches_and_talks_mcp_through_the_api_server() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let routes = kube_router(seen.clone()).await;

    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        post(&routes, call("through the cluster")),
    )
    .await
    .expect("answered");
    assert_eq!(
        reply["result"]["content"][0]["text"], "through the cluster",
        "{reply}"
    );
    let initialize = post(&routes, json!({"jsonrpc": "2.0", "id": 2, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}))
    .await;
    assert_eq!(initialize["result"]["serverInfo"]["name"], "fake-mcp");
    assert_eq!(
        post(&routes, call("again")).await["result"]["content"][0]["text"],
        "again"
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.wakes, 1, "one wake for one start");
        assert_eq!(seen.attaches.len(), 1, "one attach serves every request");
        let query = &seen.attaches[0];
        for part in [
            "stdin=true",
            "stdout=true",
            "stderr=true",
            "container=server",
        ] {
            assert!(query.contains(part), "{query}");
        }
    }
    // Traffic is reported to the cluster: every 1.5 s, a quarter of the 6 s
    // (request timeout + 5 s) the operator waits at least.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().activity.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no activity reported within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let activity = seen.lock().unwrap().activity.clone();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&activity[0]).is_ok(),
        "{activity:?}"
    );

    // A stop through the API deletes the pod; the next request wakes it again.
    let response = warp::test::request()
        .method("POST")
        .path("/servers/fix/stop")
        .reply(&routes)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(seen.lock().unwrap().deletes, 1);
    assert_eq!(
        post(&routes, call("woken again")).await["result"]["content"][0]["text"],
        "woken again"
    );
    let seen = seen.lock().unwrap();
    assert_eq!((seen.wakes, seen.attaches.len()), (2, 2));
}

/// Polls `check` every 20 ms until it holds; fails naming `what` after `limit`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize",
           "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                      "clientInfo": {"name": "t", "version": "1"}}})
}

/// Opens an MCP session; returns its id.
async fn open_session(
    routes: &(impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible>
          + Clone
          + 'static),
) -> String {
    let response = warp::test::request()
        .method("POST")
        .path("/mcp/fix")
        .header("accept", "application/json, text/event-stream")
        .json(&initialize(1))
        .reply(routes)
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.body());
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["result"]["serverInfo"]["name"], "fake-mcp", "{body}");
    response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string()
}

/// A request in session `session`, answered as JSON.
async fn session_call(
    routes: &(impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible>
          + Clone
          + 'static),
    session: &str,
    text: &str,
) -> Value {
    let response = warp::test::request()
        .method("POST")
        .path("/mcp/fix")
        .header("mcp-session-id", session)
        .json(&call(text))
        .reply(routes)
        .await;
    assert_eq!(response.status(), 200, "{:?}", response.body());
    serde_json::from_slice(response.body()).unwrap()
}

/// The session keys the MCPServer's annotations ask pods for.
fn session_annotations(seen: &Arc<Mutex<Seen>>) -> Vec<String> {
    seen.lock()
        .unwrap()
        .annotations
        .keys()
        .filter_map(|k| k.strip_prefix("sessions.mcpod.dev/"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn kube_router_gives_each_isolated_session_its_own_pod_until_it_ends() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let routes = kube_router_for(seen.clone(), isolated_server()).await;

    let first = tokio::time::timeout(Duration::from_secs(20), open_session(&routes))
        .await
        .expect("initialized");
    let sessions = session_annotations(&seen);
    assert_eq!(sessions.len(), 1, "one session annotation: {sessions:?}");
    let first_pod = format!("mcpod-fix-{}", sessions[0]);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.wakes, 0,
            "an Isolated server's shared pod is never asked for"
        );
        assert_eq!(seen.attached_pods, std::slice::from_ref(&first_pod));
        assert_eq!(seen.initializes, 1);
    }
    let reply = session_call(&routes, &first, "isolated").await;
    assert_eq!(reply["result"]["content"][0]["text"], "isolated", "{reply}");

    // A second session: a second annotation and a second pod.
    let second = open_session(&routes).await;
    let sessions = session_annotations(&seen);
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let attached = seen.lock().unwrap().attached_pods.clone();
    assert_eq!(attached.len(), 2, "{attached:?}");
    assert_ne!(
        attached[0], attached[1],
        "each session attaches to its own pod"
    );
    let second_pod = attached[1].clone();

    // Traffic refreshes the session's annotation in place (a JSON patch that
    // cannot recreate it), every 1.5 s here.
    let key = format!(
        "sessions.mcpod.dev/{}",
        second_pod.strip_prefix("mcpod-fix-").unwrap()
    );
    let at = |seen: &Seen| {
        chrono::DateTime::parse_from_rfc3339(&seen.annotations[&key]).expect("an RFC 3339 time")
    };
    let requested = at(&seen.lock().unwrap());
    session_call(&routes, &second, "busy").await;
    eventually(
        Duration::from_secs(10),
        "the second session's activity report",
        || at(&seen.lock().unwrap()) > requested,
    )
    .await;
    assert!(
        seen.lock()
            .unwrap()
            .json_patches
            .iter()
            .any(|p| p[0]["op"] == "replace"
                && p[0]["path"] == format!("/metadata/annotations/{}", key.replace('/', "~1"))),
        "refreshed with a JSON patch replace"
    );

    // DELETE ends the first session: its annotation and its pod go, the other stays.
    let response = warp::test::request()
        .method("DELETE")
        .path("/mcp/fix")
        .header("mcp-session-id", &first)
        .reply(&routes)
        .await;
    assert_eq!(response.status(), 200);
    let remaining = session_annotations(&seen);
    assert_eq!(
        remaining
            .iter()
            .map(|s| format!("mcpod-fix-{s}"))
            .collect::<Vec<_>>(),
        std::slice::from_ref(&second_pod)
    );
    assert!(seen.lock().unwrap().deleted.contains(&first_pod));
    assert!(!seen.lock().unwrap().deleted.contains(&second_pod));
    let reply = session_call(&routes, &second, "still here").await;
    assert_eq!(
        reply["result"]["content"][0]["text"], "still here",
        "{reply}"
    );
    let gone = warp::test::request()
        .method("POST")
        .path("/mcp/fix")
        .header("mcp-session-id", &first)
        .json(&call("too late"))
        .reply(&routes)
        .await;
    assert_eq!(gone.status(), 404, "the ended session is gone");
}

// --- several router replicas: one owner per server, the others forward ---

/// One router replica, serving HTTP on its own port, with its own Leases.
struct Replica {
    address: std::net::SocketAddr,
    reconciler: Arc<Reconciler>,
    ownership: Arc<Ownership>,
    serving: tokio::task::JoinHandle<()>,
    /// Requests that reached this replica forwarded by another.
    forwarded: Arc<std::sync::atomic::AtomicUsize>,
}

impl Replica {
    fn url(&self) -> String {
        format!("http://{}/mcp/fix", self.address)
    }

    fn forwarded_here(&self) -> usize {
        self.forwarded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests the fixture server answered for this replica.
    fn requests_served(&self) -> u64 {
        self.reconciler.server("fix").unwrap().status().requests
    }

    /// Stops serving HTTP; `release`: gives its Leases up (a graceful shutdown),
    /// else they run out (a crash).
    async fn stop(&self, release: bool) {
        self.serving.abort();
        self.ownership.shutdown(release).await;
    }
}

const FAST_LEASES: LeaseSettings = LeaseSettings {
    duration: Duration::from_secs(2),
    renew_interval: Duration::from_millis(250),
};

async fn replica(api_server: &str, identity: &str) -> Replica {
    replica_with(api_server, identity, mcp_server(), Settings::default()).await
}

async fn replica_with(
    api_server: &str,
    identity: &str,
    server: Value,
    settings: Settings,
) -> Replica {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let client = kube::Client::try_from(kube::Config::new(api_server.parse().unwrap())).unwrap();
    let ownership = Ownership::new(client.clone(), identity, &address.to_string(), FAST_LEASES);
    let runtime = KubeRuntime::new(client, "ns", false)
        .with_poll_interval(Duration::from_millis(20))
        .with_ownership(ownership.clone());
    let reconciler =
        Reconciler::for_kubernetes(Arc::new(runtime), Defaults::default(), settings, "ns");
    mcpod::kube::replicas::track_usage(&ownership, &reconciler);
    reconciler
        .apply(Manifests {
            servers: vec![Loaded {
                file: PathBuf::from("mcpservers/ns/fix"),
                server: serde_json::from_value(server).unwrap(),
            }],
            ..Default::default()
        })
        .await;
    let routes = router::routes(
        reconciler.clone(),
        RouterConfig {
            ownership: Some(ownership.clone()),
            ..RouterConfig::default()
        },
    );
    let forwarded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count_forwarded = {
        let forwarded = forwarded.clone();
        warp::header::optional::<String>(mcpod::kube::replicas::FORWARDED_BY)
            .map(move |by: Option<String>| {
                if by.is_some() {
                    forwarded.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .untuple_one()
    };
    // Served as `mcpod router` serves: through mcpod's own listener.
    let serving = tokio::spawn(mcpod::listener::serve(
        count_forwarded.and(routes),
        listener,
        mcpod::listener::Limits::default(),
        std::future::pending(),
    ));
    Replica {
        address,
        reconciler,
        ownership,
        serving,
        forwarded,
    }
}

async fn http_call(url: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the replica answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

fn echoed(body: &Value) -> &str {
    body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn kube_replicas_forward_to_the_owner_and_take_over_when_it_stops() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api_server = fake_api_server(seen.clone()).await;
    let a = replica(&api_server, "router-a").await;
    let b = replica(&api_server, "router-b").await;

    // The first request makes A the owner: it takes the Lease and attaches.
    let (status, _, body) = http_call(&a.url(), &call("on a")).await;
    assert_eq!((status, echoed(&body)), (200, "on a"), "{body}");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.lease_holder().as_deref(), Some("router-a"));
        assert_eq!(
            seen.leases["mcpod-fix"]["metadata"]["annotations"]["mcpod.dev/router-address"],
            a.address.to_string()
        );
    }

    // B forwards everything for `fix` to A: a session opened through B lives on A,
    // and its SSE answers stream back through B.
    let client = reqwest::Client::new();
    let response = client
        .post(b.url())
        .header("accept", "application/json, text/event-stream")
        .json(&initialize(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let session = response.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(a
        .reconciler
        .server("fix")
        .unwrap()
        .sessions()
        .get(&session)
        .is_some());
    assert!(b
        .reconciler
        .server("fix")
        .unwrap()
        .sessions()
        .get(&session)
        .is_none());
    let response = client
        .post(b.url())
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .json(&call("streamed through b"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = response.text().await.unwrap();
    assert_eq!(
        events.matches("streamed through b").count(),
        1,
        "answered once: {events}"
    );
    let (status, _, body) = http_call(&b.url(), &call("json through b")).await;
    assert_eq!((status, echoed(&body)), (200, "json through b"), "{body}");
    let ended = client
        .delete(b.url())
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    assert!(a
        .reconciler
        .server("fix")
        .unwrap()
        .sessions()
        .get(&session)
        .is_none());
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.attaches.len(), 1, "only the owner attached");
        assert_eq!(seen.initializes, 1, "one initialize reached the pod");
    }
    assert_eq!(a.requests_served(), 3);
    assert_eq!(b.requests_served(), 0, "B served nothing itself");

    // A crashes: it stops answering and renewing. While its Lease holds, B
    // answers 503 with Retry-After and a JSON-RPC error for the request.
    a.stop(false).await;
    let (status, headers, body) = http_call(&b.url(), &call("too early")).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(body["id"], 1, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("router-a") && message.contains("does not answer"),
        "{message}"
    );

    // Once it has run out, B takes the server over and replaces A's pod rather
    // than send it a second initialize.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, _, body) = http_call(&b.url(), &call("on b")).await;
        if status == 200 {
            break body;
        }
        assert_eq!(status, 503, "{body}");
        assert!(std::time::Instant::now() < deadline, "B never took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(echoed(&body), "on b", "{body}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.lease_holder().as_deref(), Some("router-b"));
    assert_eq!(seen.deleted, ["mcpod-fix"], "A's pod was replaced");
    assert_eq!(seen.attached_pods, ["mcpod-fix", "mcpod-fix"]);
    assert_eq!(seen.initializes, 2, "the new pod's own initialize");
    assert_eq!(b.requests_served(), 1);
}

#[tokio::test]
async fn kube_every_server_route_is_forwarded_to_the_owner_and_no_other() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api_server = fake_api_server(seen.clone()).await;
    let a = replica(&api_server, "router-a").await;
    let b = replica(&api_server, "router-b").await;
    let (status, _, _) = http_call(&a.url(), &call("a owns it")).await;
    assert_eq!(status, 200);
    let client = reqwest::Client::new();
    for declared in router::ROUTES {
        let before = a.forwarded_here();
        // A method no route takes: answered 405 wherever it is served, and
        // nothing runs (a start or a stop would).
        let response = client
            .patch(format!(
                "http://{}{}",
                b.address,
                declared.path_for("ns", "fix")
            ))
            .send()
            .await
            .unwrap();
        let reached_owner = a.forwarded_here() > before;
        // A path that names the server concerns it, declared so or not.
        assert_eq!(
            reached_owner,
            declared.pattern.contains("{name}"),
            "{} through B (forwarded to A: {reached_owner})",
            declared.pattern
        );
        // OAuth metadata paths serve nothing without an issuer configured.
        let served = if declared.pattern.starts_with("/.well-known/") {
            404
        } else {
            405
        };
        assert_eq!(
            response.status(),
            served,
            "{} is a route someone serves",
            declared.pattern
        );
    }
    assert_eq!(b.forwarded_here(), 0, "A never sends anything back");
    assert_eq!(a.requests_served(), 1, "no request reached the server");
}

#[tokio::test]
async fn kube_replica_that_shuts_down_hands_its_servers_over_at_once() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api_server = fake_api_server(seen.clone()).await;
    let a = replica(&api_server, "router-a").await;
    let b = replica(&api_server, "router-b").await;
    let (status, _, _) = http_call(&a.url(), &call("on a")).await;
    assert_eq!(status, 200);
    a.stop(true).await;
    assert_eq!(seen.lock().unwrap().lease_holder(), None, "released");
    // No 503 and no wait for the Lease to run out: B takes it at once.
    let (status, _, body) = http_call(&b.url(), &call("on b")).await;
    assert_eq!((status, echoed(&body)), (200, "on b"), "{body}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.lease_holder().as_deref(), Some("router-b"));
    assert_eq!(seen.deleted, ["mcpod-fix"], "A's pod was replaced");
    assert_eq!(seen.initializes, 2);
}

#[tokio::test]
async fn kube_forwarded_request_is_served_where_it_arrives() {
    // A request already forwarded once is never forwarded again, whatever the
    // Lease says: here B holds it, and A still serves the marked request.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api_server = fake_api_server(seen.clone()).await;
    let a = replica(&api_server, "router-a").await;
    let b = replica(&api_server, "router-b").await;
    let (status, _, _) = http_call(&b.url(), &call("b owns it")).await;
    assert_eq!(status, 200);
    let response = reqwest::Client::new()
        .post(a.url())
        .header(mcpod::kube::replicas::FORWARDED_BY, "router-b")
        .json(&json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"jsonrpc": "2.0", "id": 5, "result": {}}));
    assert_eq!(
        seen.lock().unwrap().lease_holder().as_deref(),
        Some("router-b")
    );
}

#[tokio::test]
async fn kube_only_the_owner_keeps_an_always_on_server_running() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api_server = fake_api_server(seen.clone()).await;
    let mut always_on = mcp_server();
    always_on["spec"]["desiredState"] = json!("AlwaysOn");
    // Supervisors look often, so each replica's would try many times below.
    let settings = Settings {
        idle_check_interval: Duration::from_millis(50),
        ..Settings::default()
    };
    let a = replica_with(&api_server, "router-a", always_on.clone(), settings.clone()).await;
    let b = replica_with(&api_server, "router-b", always_on, settings).await;
    eventually(Duration::from_secs(10), "one replica to attach", || {
        seen.lock().unwrap().attaches.len() == 1
    })
    .await;
    // Let the owner renew its Lease several times (renewals bump the
    // resourceVersion): both supervisors have run a few dozen times by then.
    let version = seen.lock().unwrap().resource_version;
    eventually(
        Duration::from_secs(10),
        "the owner to renew its lease",
        || seen.lock().unwrap().resource_version >= version + 4,
    )
    .await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.attaches.len(), 1, "only the owner attaches");
    let owner = seen.lease_holder().expect("held");
    let standby = if owner == "router-a" { &b } else { &a };
    let status = standby.reconciler.server("fix").unwrap().status();
    assert_ne!(
        status.status, "failed",
        "the other replica did not try: {status:?}"
    );
}

/// One JSON-RPC request to a replica's aggregated endpoint `/mcp`, as a plain JSON client.
async fn aggregated_call(replica: &Replica, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{}/mcp", replica.address))
        .header("accept", "application/json")
        .json(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("the replica answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn kube_mcp_asks_each_member_on_the_replica_that_owns_it() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api_server = fake_api_server(seen.clone()).await;
    let a = replica(&api_server, "router-a").await;
    let b = replica(&api_server, "router-b").await;
    // A owns `fix`: it took the Lease and attached.
    let (status, _, _) = http_call(&a.url(), &call("on a")).await;
    assert_eq!(status, 200);
    assert_eq!(a.forwarded_here(), 0);

    // B's /mcp asks `fix` on A, in fix's own names: a call...
    let namespaced = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
        "params": {"name": "fix__echo", "arguments": {"text": "via b's /mcp"}}});
    let (status, body) = aggregated_call(&b, &namespaced).await;
    assert_eq!((status, echoed(&body)), (200, "via b's /mcp"), "{body}");
    assert_eq!(body["id"], 9, "{body}");
    assert_eq!(a.forwarded_here(), 1, "one request went to the owner");
    // ...and a listing (B has no catalog of `fix`: A answers it from its pod).
    let (status, body) = aggregated_call(
        &b,
        &json!({"jsonrpc": "2.0", "id": 10, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {body}"))
        .iter()
        .map(|tool| tool["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"fix__echo"), "{names:?}");
    assert_eq!(a.forwarded_here(), 2);
    assert_eq!(b.requests_served(), 0, "B never asked the member itself");
    assert_eq!(a.requests_served(), 3, "A served the three requests");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.attaches.len(), 1, "only the owner attached");
    assert_eq!(seen.wakes, 1);
    assert_eq!(seen.lease_holder().as_deref(), Some("router-a"));
}
