//! The router's whole Kubernetes path on this machine, with a fake API server:
//! an MCP request makes the router annotate the MCPServer (wake), poll the pod
//! until it runs, attach to it over a WebSocket (the `v4.channel.k8s.io`
//! protocol the API server speaks for `pods/attach`) and talk MCP with a real
//! stdio server process (the fixture), whose stdout and stderr come back as
//! channels 1 and 2. Activity is then reported as an annotation, and a stop
//! deletes the pod.

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
use mcpod::manifests::{Loaded, Manifests};
use mcpod::reconcile::Reconciler;
use mcpod::router::{self, RouterConfig};
use mcpod::runtime::kube::KubeRuntime;
use mcpod::server::Settings;
use mcpod::workload::Defaults;

/// What the fake API server was asked.
#[derive(Default)]
struct Seen {
    wakes: usize,
    activity: Vec<String>,
    attaches: Vec<String>,
    deletes: usize,
    /// The pod's creation time; `None`: the pod carries none.
    pod_created: Option<String>,
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

/// Bridges one attach WebSocket to a fresh fixture process, as the kubelet
/// bridges it to the container: channel 0 in, channels 1 and 2 out.
async fn attach(socket: WebSocket) {
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
        if message.is_binary()
            && bytes.first() == Some(&0)
            && stdin.write_all(&bytes[1..]).await.is_err()
        {
            break;
        }
    }
    let _ = child.kill().await;
    let _ = writer.await;
}

/// The fake API server: the calls the router makes, and nothing else.
async fn fake_api_server(seen: Arc<Mutex<Seen>>) -> String {
    let with_seen = {
        let seen = seen.clone();
        warp::any().map(move || seen.clone())
    };
    let patch_server =
        warp::path!("apis" / "mcpod.dev" / "v1alpha1" / "namespaces" / "ns" / "mcpservers" / "fix")
            .and(warp::patch())
            // A merge patch (application/merge-patch+json), so not `warp::body::json`.
            .and(warp::body::bytes())
            .and(with_seen.clone())
            .map(|body: bytes::Bytes, seen: Arc<Mutex<Seen>>| {
                let patch: Value = serde_json::from_slice(&body).unwrap_or_default();
                let annotations = &patch["metadata"]["annotations"];
                let mut seen = seen.lock().unwrap();
                if annotations.get("mcpod.dev/wake-requested-at").is_some() {
                    seen.wakes += 1;
                }
                if let Some(at) = annotations["mcpod.dev/last-activity"].as_str() {
                    seen.activity.push(at.to_string());
                }
                warp::reply::json(&mcp_server())
            });
    let get_pod = warp::path!("api" / "v1" / "namespaces" / "ns" / "pods" / "mcpod-fix")
        .and(warp::get())
        .and(with_seen.clone())
        .map(|seen: Arc<Mutex<Seen>>| {
            let seen = seen.lock().unwrap();
            if seen.wakes > 0 {
                warp::reply::with_status(
                    warp::reply::json(&running_pod(seen.pod_created.as_deref())),
                    warp::http::StatusCode::OK,
                )
            } else {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404, "message": "not found"});
                warp::reply::with_status(
                    warp::reply::json(&status),
                    warp::http::StatusCode::NOT_FOUND,
                )
            }
        });
    let delete_pod = warp::path!("api" / "v1" / "namespaces" / "ns" / "pods" / "mcpod-fix")
        .and(warp::delete())
        .and(with_seen.clone())
        .map(|seen: Arc<Mutex<Seen>>| {
            let mut seen = seen.lock().unwrap();
            seen.deletes += 1;
            // The operator's next pod is a new one.
            if seen.pod_created.is_some() {
                seen.pod_created =
                    Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            }
            warp::reply::json(&running_pod(None))
        });
    let attach_pod =
        warp::path!("api" / "v1" / "namespaces" / "ns" / "pods" / "mcpod-fix" / "attach")
            .and(warp::query::raw())
            .and(warp::ws())
            .and(with_seen)
            .map(|query: String, ws: warp::ws::Ws, seen: Arc<Mutex<Seen>>| {
                seen.lock().unwrap().attaches.push(query);
                warp::reply::with_header(
                    ws.on_upgrade(attach),
                    "sec-websocket-protocol",
                    "v4.channel.k8s.io",
                )
            });
    let routes = patch_server.or(get_pod).or(delete_pod).or(attach_pod);
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
    let url = fake_api_server(seen).await;
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let runtime = Arc::new(
        KubeRuntime::new(client, "ns", false).with_poll_interval(Duration::from_millis(20)),
    );
    let reconciler =
        Reconciler::for_kubernetes(runtime, Defaults::default(), Settings::default(), "ns");
    let server: MCPServer = serde_json::from_value(mcp_server()).unwrap();
    reconciler
        .apply(Manifests {
            servers: vec![Loaded {
                file: PathBuf::from("mcpservers/ns/fix"),
                server,
            }],
            broken_files: Default::default(),
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
