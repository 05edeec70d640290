//! The router over the Kubernetes runtime: `/mcp/{name}` finds servers in the
//! router's own namespace, `/mcp/{namespace}/{name}` any watched one. `ping`
//! is answered without waking a server, so no API call is made here.

use std::path::PathBuf;

use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

use mcpod::crd::MCPServer;
use mcpod::kube::runtime::KubeRuntime;
use mcpod::manifests::{Loaded, Manifests};
use mcpod::reconcile::Reconciler;
use mcpod::router::{self, RouterConfig};
use mcpod::server::Settings;
use mcpod::workload::Defaults;

fn server(namespace: &str, name: &str) -> Loaded {
    let server: MCPServer = serde_json::from_value(json!({
        "apiVersion": "mcpod.dev/v1alpha1", "kind": "MCPServer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"image": "localhost/mcpod/time:latest", "idleTimeout": "30s"},
    }))
    .unwrap();
    Loaded {
        file: PathBuf::from(format!("mcpservers/{namespace}/{name}")),
        server,
    }
}

async fn ping(
    routes: &(impl warp::Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible>
          + Clone
          + 'static),
    path: &str,
) -> (u16, Value) {
    let response = warp::test::request()
        .method("POST")
        .path(path)
        .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "ping"}))
        .reply(routes)
        .await;
    (
        response.status().as_u16(),
        serde_json::from_slice(response.body()).unwrap(),
    )
}

#[tokio::test]
async fn kube_router_routes_by_namespace_and_name() {
    let (service, _handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let runtime = std::sync::Arc::new(KubeRuntime::new(Client::new(service, "home"), "home", true));
    let reconciler =
        Reconciler::for_kubernetes(runtime, Defaults::default(), Settings::default(), "home");
    reconciler
        .apply(Manifests {
            servers: vec![server("home", "time"), server("other", "tools")],
            ..Default::default()
        })
        .await;
    let routes = router::routes(reconciler.clone(), RouterConfig::default());
    assert_eq!(
        ping(&routes, "/mcp/time").await,
        (200, json!({"jsonrpc": "2.0", "id": 7, "result": {}}))
    );
    assert_eq!(ping(&routes, "/mcp/home/time").await.0, 200);
    assert_eq!(ping(&routes, "/mcp/other/tools").await.0, 200);
    let (status, body) = ping(&routes, "/mcp/tools").await;
    assert_eq!(status, 404, "not in the router's namespace: {body}");
    let (status, body) = ping(&routes, "/mcp/elsewhere/time").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'elsewhere/time'"),
        "{body}"
    );
    // The router never stops a server for idleness: the operator does, from cluster activity.
    let time = reconciler.server("time").unwrap();
    assert_eq!(time.workload().timeouts.idle, None);
    // Listed in key order: `other/tools`, then `time`.
    let names: Vec<_> = reconciler
        .servers()
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    assert_eq!(names, ["tools", "time"]);
}
