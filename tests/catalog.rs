//! The catalog over real containers: a server's lists survive a restart of
//! mcpod (its data directory), and a stopped server introduces itself and lists
//! its tools with no container started (counted with Podman); a call starts it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{manifest, wait_until, Mcpod, RawClient, TIME_IMAGE};
use serde_json::json;

fn running(instance: &str) -> usize {
    let output = Command::new("podman")
        .args(["ps", "-q", "--filter"])
        .arg(format!("label=mcpod.dev/instance={instance}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_mcpod_lists_a_stopped_server_from_its_catalog_without_a_container() {
    let spec = "idleTimeout: 1s\nargs: [--local-timezone, UTC]";
    let files = [("time.yaml", manifest("time", TIME_IMAGE, spec))];
    let first = Mcpod::start(&files, &[]);
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (status, live) = first.mcp("time", list.to_string()).await;
    assert_eq!(status, 200, "{live}");
    let catalog = first.data.path().join("catalog");
    wait_until(Duration::from_secs(60), "the catalog on disk", || {
        std::fs::read_dir(&catalog).is_ok_and(|d| d.count() == 1)
    });
    first
        .wait_status("time", "stopped", Duration::from_secs(60))
        .await;
    let (manifests, data, instance) = first.into_dirs();

    let second = Mcpod::start_in(manifests, data, &instance, &[]);
    assert_eq!(running(&instance), 0);
    let mut client = RawClient::new(format!("{}/mcp/time", second.url));
    let init = client.initialize(json!({})).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "mcp-time", "{init}");
    let (_, answers) = client.post(&list).await;
    assert_eq!(answers[0]["result"]["tools"], live["result"]["tools"]);
    assert_eq!(running(&instance), 0, "no container for listing");
    assert_eq!(second.status("time").await["starts"], 0);

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "get_current_time", "arguments": {"timezone": "UTC"}}});
    let (status, answers) = client.post(&call).await;
    assert_eq!(status, 200);
    assert!(answers[0]["result"]["content"].is_array(), "{answers:?}");
    assert_eq!(running(&instance), 1, "the call started it");
}
