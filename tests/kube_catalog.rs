//! The catalog on Kubernetes: each MCPServer's catalog is a ConfigMap
//! (`mcpod-catalog-<name>`), so a router that starts with one answers
//! `tools/list` on `/mcp` without a pod, one call makes exactly one pod, what
//! the router learns from that pod is written back, another spec's catalog
//! never answers, and a catalog another replica writes reaches this one
//! through the watch.
//!
//! A fake API server answers exactly the calls the router makes and records
//! them (any other is answered 404 and fails the test); it plays the
//! operator's part (a wake makes the pod run) and bridges `pods/attach` to a
//! real stdio MCP server process (the fixture), as the kubelet would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warp::ws::{Message, WebSocket};
use warp::Filter;

use mcpod::catalog::Entry;
use mcpod::crd::MCPServer;
use mcpod::kube::catalog::{config_map, decode, KubeCatalogs};
use mcpod::kube::runtime::KubeRuntime;
use mcpod::manifests::{Loaded, Manifests};
use mcpod::reconcile::Reconciler;
use mcpod::router::{self, RouterConfig};
use mcpod::server::Settings;
use mcpod::workload::{Defaults, Target, Workload};

const PATIENCE: Duration = Duration::from_secs(20);

/// What the fake API server was asked, and the little cluster state it keeps.
#[derive(Default)]
struct Cluster {
    /// Wake requests, and the pods they made (the operator's part).
    wakes: usize,
    pods_made: usize,
    pod_running: bool,
    attaches: usize,
    /// The catalog ConfigMaps by name, as stored.
    config_maps: BTreeMap<String, Value>,
    /// Every write of a catalog ConfigMap: (field manager, content type, body).
    config_map_writes: Vec<(String, String, Value)>,
    resource_version: u64,
    /// Every change to the ConfigMaps, by resourceVersion: a watch from a
    /// resourceVersion gets those after it first, as from the API server.
    history: Vec<(u64, Value)>,
    /// Watches of the ConfigMaps, fed every stored change.
    watchers: Vec<tokio::sync::mpsc::UnboundedSender<Value>>,
    /// Requests the router should not have made.
    unexpected: Vec<String>,
}

impl Cluster {
    /// Stores a ConfigMap as the API server would, and tells the watches.
    fn store_config_map(&mut self, mut map: Value) {
        self.resource_version += 1;
        map["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let name = map["metadata"]["name"].as_str().unwrap().to_string();
        let kind = match self.config_maps.insert(name, map.clone()) {
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        let event = json!({"type": kind, "object": map});
        self.history.push((self.resource_version, event.clone()));
        self.watchers
            .retain(|watch| watch.send(event.clone()).is_ok());
    }
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_mcp.py")
}

fn mcp_server(image: &str) -> Value {
    json!({"apiVersion": "mcpod.dev/v1alpha1", "kind": "MCPServer",
           "metadata": {"name": "fix", "namespace": "ns", "uid": "uid-1"},
           "spec": {"image": image, "idleTimeout": "30s", "requestTimeout": "5s"}})
}

const IMAGE: &str = "localhost/mcpod-test/fixture:latest";

/// The spec hash the router computes for `mcp_server(image)`.
fn spec_hash(image: &str) -> String {
    let server: MCPServer = serde_json::from_value(mcp_server(image)).unwrap();
    Workload::resolve(
        "fix",
        &server.spec,
        &Defaults::default(),
        Target::Kubernetes,
    )
    .unwrap()
    .spec_hash
}

/// A catalog of the fixture as another router would have written it, with
/// one tool the fixture does not have (so a relearned catalog is told apart).
fn stored_catalog(spec_hash: &str, tools: &[&str]) -> Value {
    let entry = Entry {
        spec_hash: spec_hash.to_string(),
        recorded_at: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
        initialize: json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                           "serverInfo": {"name": "fake-mcp", "version": "1.0.0"}}),
        tools: Some(
            tools
                .iter()
                .map(|name| json!({"name": name, "inputSchema": {"type": "object"}}))
                .collect(),
        ),
        ..Entry::default()
    };
    let owner: MCPServer = serde_json::from_value(mcp_server(IMAGE)).unwrap();
    serde_json::to_value(config_map(&owner, &entry).unwrap()).unwrap()
}

fn running_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "mcpod-fix", "namespace": "ns", "uid": "pod-1",
                        "labels": {"app.kubernetes.io/managed-by": "mcpod", "mcpod.dev/server": "fix"}},
           "status": {"phase": "Running", "containerStatuses": [{"name": "server", "image": "x",
               "imageID": "", "ready": true, "restartCount": 0,
               "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}})
}

fn status(code: u16, reason: &str) -> warp::reply::WithStatus<warp::reply::Json> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "reason": reason, "code": code, "message": reason});
    warp::reply::with_status(
        warp::reply::json(&body),
        warp::http::StatusCode::from_u16(code).unwrap(),
    )
}

/// Bridges one attach WebSocket to a fresh fixture process (channel 0 in, 1 and 2 out).
async fn attach(socket: WebSocket) {
    let mut child = tokio::process::Command::new("python3")
        .arg(fixture())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs the fixture");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (mut tx, mut rx) = socket.split();
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let frame = [&[1u8][..], &buf[..n]].concat();
            if tx.send(Message::binary(frame)).await.is_err() {
                return;
            }
        }
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
async fn fake_api_server(cluster: Arc<Mutex<Cluster>>) -> String {
    let with = {
        let cluster = cluster.clone();
        warp::any().map(move || cluster.clone())
    };
    let server_path =
        warp::path!("apis" / "mcpod.dev" / "v1alpha1" / "namespaces" / "ns" / "mcpservers" / "fix");
    // The catalog writer reads the MCPServer for its uid (the owner reference).
    let get_server = server_path
        .and(warp::get())
        .map(|| warp::reply::json(&mcp_server(IMAGE)));
    // A wake makes the pod (the operator's part); activity reports are taken.
    let patch_server = server_path
        .and(warp::patch())
        .and(warp::body::bytes())
        .and(with.clone())
        .map(|body: bytes::Bytes, cluster: Arc<Mutex<Cluster>>| {
            let patch: Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut cluster = cluster.lock().unwrap();
            if patch["metadata"]["annotations"]
                .get("mcpod.dev/wake-requested-at")
                .is_some()
            {
                cluster.wakes += 1;
                if !cluster.pod_running {
                    cluster.pods_made += 1;
                    cluster.pod_running = true;
                }
            }
            warp::reply::json(&mcp_server(IMAGE))
        });
    let get_pod = warp::path!("api" / "v1" / "namespaces" / "ns" / "pods" / "mcpod-fix")
        .and(warp::get())
        .and(with.clone())
        .map(|cluster: Arc<Mutex<Cluster>>| {
            if cluster.lock().unwrap().pod_running {
                warp::reply::with_status(
                    warp::reply::json(&running_pod()),
                    warp::http::StatusCode::OK,
                )
            } else {
                status(404, "NotFound")
            }
        });
    let delete_pod = warp::path!("api" / "v1" / "namespaces" / "ns" / "pods" / "mcpod-fix")
        .and(warp::delete())
        .and(with.clone())
        .map(|cluster: Arc<Mutex<Cluster>>| {
            cluster.lock().unwrap().pod_running = false;
            warp::reply::json(&running_pod())
        });
    let attach_pod =
        warp::path!("api" / "v1" / "namespaces" / "ns" / "pods" / "mcpod-fix" / "attach")
            .and(warp::ws())
            .and(with.clone())
            .map(|ws: warp::ws::Ws, cluster: Arc<Mutex<Cluster>>| {
                cluster.lock().unwrap().attaches += 1;
                warp::reply::with_header(
                    ws.on_upgrade(attach),
                    "sec-websocket-protocol",
                    "v4.channel.k8s.io",
                )
            });
    // The catalog ConfigMaps: a list, then a watch fed by every write.
    let maps = warp::path!("api" / "v1" / "namespaces" / "ns" / "configmaps")
        .and(warp::get())
        .and(warp::query::<BTreeMap<String, String>>())
        .and(with.clone())
        .map(
            |query: BTreeMap<String, String>, cluster: Arc<Mutex<Cluster>>| {
                let selector = query.get("labelSelector").cloned().unwrap_or_default();
                let mut cluster = cluster.lock().unwrap();
                if !selector.contains("app.kubernetes.io/component=catalog") {
                    cluster.unexpected.push(format!(
                        "configmaps without the catalog selector: {query:?}"
                    ));
                }
                if query.get("watch").map(String::as_str) == Some("true") {
                    let (sender, events) = tokio::sync::mpsc::unbounded_channel::<Value>();
                    let since: u64 = query
                        .get("resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    for (_, event) in cluster.history.iter().filter(|(v, _)| *v > since) {
                        sender.send(event.clone()).unwrap();
                    }
                    cluster.watchers.push(sender);
                    let lines = futures::stream::unfold(events, |mut events| async move {
                        let event = events.recv().await?;
                        let line = bytes::Bytes::from(format!("{event}\n"));
                        Some((Ok::<_, std::convert::Infallible>(line), events))
                    });
                    return warp::reply::stream(lines).into_response();
                }
                let list = json!({"apiVersion": "v1", "kind": "ConfigMapList",
                    "metadata": {"resourceVersion": cluster.resource_version.to_string()},
                    "items": cluster.config_maps.values().collect::<Vec<_>>()});
                warp::reply::json(&list).into_response()
            },
        );
    let write_map = warp::path!("api" / "v1" / "namespaces" / "ns" / "configmaps" / String)
        .and(warp::patch())
        .and(warp::query::<BTreeMap<String, String>>())
        .and(warp::header::<String>("content-type"))
        .and(warp::body::bytes())
        .and(with.clone())
        .map(
            |name: String,
             query: BTreeMap<String, String>,
             content_type: String,
             body: bytes::Bytes,
             cluster: Arc<Mutex<Cluster>>| {
                let map: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(map["metadata"]["name"], name.as_str());
                let mut cluster = cluster.lock().unwrap();
                let manager = query.get("fieldManager").cloned().unwrap_or_default();
                let force = query.get("force").map(String::as_str) == Some("true");
                cluster.config_map_writes.push((
                    format!("{manager} force={force}"),
                    content_type,
                    map.clone(),
                ));
                cluster.store_config_map(map.clone());
                warp::reply::json(&map)
            },
        );
    let unexpected = warp::any()
        .and(warp::method())
        .and(warp::path::full())
        .and(with)
        .map(
            |method: warp::http::Method,
             path: warp::path::FullPath,
             cluster: Arc<Mutex<Cluster>>| {
                let call = format!("{method} {}", path.as_str());
                cluster.lock().unwrap().unexpected.push(call);
                status(404, "NotFound")
            },
        );
    use warp::Reply;
    let routes = get_server
        .map(|r: warp::reply::Json| r.into_response())
        .or(patch_server.map(|r: warp::reply::Json| r.into_response()))
        .unify()
        .or(get_pod.map(|r: warp::reply::WithStatus<_>| r.into_response()))
        .unify()
        .or(delete_pod.map(|r: warp::reply::Json| r.into_response()))
        .unify()
        .or(attach_pod.map(warp::Reply::into_response))
        .unify()
        .or(maps)
        .unify()
        .or(write_map.map(|r: warp::reply::Json| r.into_response()))
        .unify()
        .or(unexpected.map(|r: warp::reply::WithStatus<_>| r.into_response()))
        .unify();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    format!("http://{address}")
}

/// A router as `mcpod router` makes one: catalogs in ConfigMaps, listed
/// before it serves.
struct Router {
    reconciler: Arc<Reconciler>,
    routes: warp::filters::BoxedFilter<(warp::reply::Response,)>,
}

async fn router(cluster: Arc<Mutex<Cluster>>) -> Router {
    let url = fake_api_server(cluster).await;
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let runtime = Arc::new(
        KubeRuntime::new(client.clone(), "ns", false).with_poll_interval(Duration::from_millis(20)),
    );
    let catalogs = KubeCatalogs::new(client.clone());
    let settings = Settings {
        catalog_store: Some(catalogs.clone()),
        ..Settings::default()
    };
    let reconciler = Reconciler::for_kubernetes(runtime, Defaults::default(), settings, "ns");
    tokio::spawn(catalogs.clone().watch(
        kube::Api::<ConfigMap>::namespaced(client, "ns"),
        Arc::downgrade(&reconciler),
    ));
    assert!(
        catalogs.wait_listed(PATIENCE).await,
        "the catalog ConfigMaps were listed"
    );
    declare(&reconciler, IMAGE).await;
    let routes = router::routes(reconciler.clone(), RouterConfig::default())
        .map(warp::Reply::into_response)
        .boxed();
    Router { reconciler, routes }
}

async fn declare(reconciler: &Reconciler, image: &str) {
    reconciler
        .apply(Manifests {
            servers: vec![Loaded {
                file: PathBuf::from("mcpservers/ns/fix"),
                server: serde_json::from_value(mcp_server(image)).unwrap(),
            }],
            ..Default::default()
        })
        .await;
}

impl Router {
    /// One JSON-RPC request to the aggregated endpoint `/mcp`, as a plain JSON client.
    async fn aggregated(&self, request: Value) -> Value {
        self.post("/mcp", request).await
    }

    /// One JSON-RPC request to the endpoint at `path`, as a plain JSON client.
    async fn post(&self, path: &str, request: Value) -> Value {
        let response = warp::test::request()
            .method("POST")
            .path(path)
            .header("accept", "application/json")
            .json(&request)
            .reply(&self.routes)
            .await;
        assert_eq!(response.status(), 200, "{:?}", response.body());
        serde_json::from_slice(response.body()).unwrap()
    }

    async fn tool_names(&self) -> Vec<String> {
        let reply = self
            .aggregated(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .await;
        reply["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("no tools in {reply}"))
            .iter()
            .map(|tool| tool["name"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Polls `check` every 20 ms until it holds; fails naming `what` after `limit`.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The entry of the last catalog ConfigMap written, checked for its shape.
fn last_written(cluster: &Arc<Mutex<Cluster>>) -> Entry {
    let cluster = cluster.lock().unwrap();
    let (manager, content_type, map) = cluster.config_map_writes.last().expect("a write");
    assert_eq!(manager, "mcpod force=true", "a forced server-side apply");
    assert_eq!(content_type, "application/apply-patch+yaml");
    assert_eq!(map["metadata"]["name"], "mcpod-catalog-fix");
    assert_eq!(map["metadata"]["labels"]["mcpod.dev/server"], "fix");
    assert_eq!(
        map["metadata"]["labels"]["app.kubernetes.io/component"],
        "catalog"
    );
    let owner = &map["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["name"], &owner["uid"]),
        (&json!("MCPServer"), &json!("fix"), &json!("uid-1")),
        "{map}"
    );
    let map: ConfigMap = serde_json::from_value(map.clone()).unwrap();
    let (key, entry) = decode(&map).expect("a readable catalog");
    assert_eq!(key, "ns/fix");
    entry
}

fn tool_names(entry: &Entry) -> Vec<String> {
    entry
        .tools
        .iter()
        .flatten()
        .map(|tool| tool["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn kube_catalog_answers_mcp_with_no_pod_and_one_call_makes_one_pod_then_is_written() {
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    cluster
        .lock()
        .unwrap()
        .store_config_map(stored_catalog(&spec_hash(IMAGE), &["echo", "retired"]));
    let router = router(cluster.clone()).await;

    // A new router lists from the catalog another one wrote: no pod at all.
    assert_eq!(router.tool_names().await, ["fix__echo", "fix__retired"]);
    {
        let cluster = cluster.lock().unwrap();
        assert_eq!(
            (cluster.wakes, cluster.pods_made, cluster.attaches),
            (0, 0, 0)
        );
        assert!(cluster.config_map_writes.is_empty());
    }

    // One call: one pod, one attach.
    let reply = router
        .aggregated(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "fix__echo", "arguments": {"text": "from one pod"}}}))
        .await;
    assert_eq!(
        reply["result"]["content"][0]["text"], "from one pod",
        "{reply}"
    );
    {
        let cluster = cluster.lock().unwrap();
        assert_eq!(
            (cluster.wakes, cluster.pods_made, cluster.attaches),
            (1, 1, 1)
        );
    }

    // What the pod offers is learned and written back, for every replica.
    eventually("the learned catalog written", || {
        !cluster.lock().unwrap().config_map_writes.is_empty()
    })
    .await;
    let written = last_written(&cluster);
    assert_eq!(written.spec_hash, spec_hash(IMAGE));
    let names = tool_names(&written);
    assert!(names.contains(&"echo".to_string()), "{names:?}");
    assert!(!names.contains(&"retired".to_string()), "{names:?}");
    assert_eq!(written.initialize["serverInfo"]["name"], "fake-mcp");
    assert_eq!(router.tool_names().await, {
        let mut listed: Vec<_> = names.iter().map(|n| format!("fix__{n}")).collect();
        listed.sort();
        listed
    });
    let cluster = cluster.lock().unwrap();
    assert_eq!(cluster.pods_made, 1, "still one pod");
    assert!(cluster.unexpected.is_empty(), "{:?}", cluster.unexpected);
}

#[tokio::test]
async fn kube_catalog_of_another_spec_is_stale_and_a_new_spec_makes_it_stale() {
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    cluster
        .lock()
        .unwrap()
        .store_config_map(stored_catalog("0123456789abcdef", &["retired"]));
    let router = router(cluster.clone()).await;
    let server = router.reconciler.server("fix").unwrap();
    assert!(
        server.catalog_answering().is_none(),
        "learned from another container: it does not answer"
    );

    // Listing learns it from the pod, and the router writes it for this spec.
    let names = router.tool_names().await;
    assert!(names.contains(&"fix__echo".to_string()), "{names:?}");
    assert!(!names.contains(&"fix__retired".to_string()), "{names:?}");
    assert_eq!(cluster.lock().unwrap().pods_made, 1);
    eventually("the learned catalog written", || {
        !cluster.lock().unwrap().config_map_writes.is_empty()
    })
    .await;
    assert_eq!(last_written(&cluster).spec_hash, spec_hash(IMAGE));
    eventually("the written catalog seen through the watch", || {
        server.catalog().current(&spec_hash(IMAGE)).is_some()
    })
    .await;

    // A new image: the stored catalog no longer answers for it, and is kept
    // in the cluster (the replica that learns the new one overwrites it).
    let image = "localhost/mcpod-test/fixture:v2";
    declare(&router.reconciler, image).await;
    assert_ne!(spec_hash(image), spec_hash(IMAGE));
    assert!(server.catalog().current(&spec_hash(image)).is_none());
    assert!(server.catalog_answering().is_none());
    let cluster = cluster.lock().unwrap();
    assert!(cluster.config_maps.contains_key("mcpod-catalog-fix"));
    assert!(cluster.unexpected.is_empty(), "{:?}", cluster.unexpected);
}

#[tokio::test]
async fn kube_catalog_written_by_another_replica_reaches_this_one_through_the_watch() {
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    let router = router(cluster.clone()).await;
    let server = router.reconciler.server("fix").unwrap();
    assert!(server.catalog_answering().is_none(), "no catalog yet");

    // Another replica learned it: the watch brings it here.
    cluster
        .lock()
        .unwrap()
        .store_config_map(stored_catalog(&spec_hash(IMAGE), &["echo", "elsewhere"]));
    eventually("the catalog seen through the watch", || {
        server.catalog_answering().is_some()
    })
    .await;
    assert_eq!(router.tool_names().await, ["fix__echo", "fix__elsewhere"]);
    let cluster = cluster.lock().unwrap();
    assert_eq!(cluster.pods_made, 0, "listed with no pod");
    assert!(
        cluster.config_map_writes.is_empty(),
        "nothing learned here, nothing written"
    );
    assert!(cluster.unexpected.is_empty(), "{:?}", cluster.unexpected);
}

#[tokio::test]
async fn kube_group_lists_from_the_stored_catalog_with_no_pod_and_one_call_makes_one_pod() {
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    cluster
        .lock()
        .unwrap()
        .store_config_map(stored_catalog(&spec_hash(IMAGE), &["echo", "retired"]));
    let router = router(cluster.clone()).await;
    let group = json!({"apiVersion": "mcpod.dev/v1alpha1", "kind": "MCPServerGroup",
        "metadata": {"name": "kit", "namespace": "ns"},
        "spec": {"selector": {}, "prefixes": {"fix": "f"}}});
    router
        .reconciler
        .set_groups(vec![serde_json::from_value(group).unwrap()]);

    let listed = router
        .post(
            "/groups/kit/mcp",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {listed}"))
        .iter()
        .map(|tool| tool["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["f__echo", "f__retired"], "the group's prefix");
    {
        let cluster = cluster.lock().unwrap();
        assert_eq!(
            (cluster.wakes, cluster.pods_made, cluster.attaches),
            (0, 0, 0),
            "listed from the stored catalog"
        );
    }

    let reply = router
        .post(
            "/groups/kit/mcp",
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "f__echo", "arguments": {"text": "via the group"}}}),
        )
        .await;
    assert_eq!(
        (&reply["id"], &reply["result"]["content"][0]["text"]),
        (&json!(2), &json!("via the group")),
        "{reply}"
    );
    let cluster = cluster.lock().unwrap();
    assert_eq!(
        (cluster.wakes, cluster.pods_made, cluster.attaches),
        (1, 1, 1),
        "one pod for one call"
    );
    assert!(cluster.unexpected.is_empty(), "{:?}", cluster.unexpected);
}
