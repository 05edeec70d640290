//! The paused tier on real Podman (`spec.pauseAfter`): libpod's pause freezes
//! the container, the stdio attach survives, the next request thaws it and is
//! answered, a crowd arriving while it is paused gets one answer each, the
//! idle timeout still stops it, and a restarted mcpod stops what it finds paused.

mod common;

use std::time::Duration;

use common::*;
use futures::future::join_all;
use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(30);

fn state_of(container: &str) -> Value {
    inspect(container).expect("the container exists")["State"].clone()
}

async fn wait_podman_status(container: &str, wanted: &str) -> Value {
    let mut state = Value::Null;
    wait_for(
        PATIENCE,
        &format!("{container} to be {wanted}"),
        async || {
            state = state_of(container);
            state["Status"] == wanted
        },
    )
    .await;
    state
}

#[tokio::test]
async fn a_quiet_server_is_paused_resumed_by_requests_and_stopped_after_its_idle_timeout() {
    let spec = "pauseAfter: 1s\nidleTimeout: 8s";
    let files = [("nap.yaml", manifest("nap", FIXTURE_IMAGE, spec))];
    let mcpod = Mcpod::start(&files, &[]);
    let container = mcpod.container("nap");
    let (status, response) = mcpod
        .call_tool("nap", json!(1), "echo", json!({"text": "awake"}))
        .await;
    assert_eq!(status, 200, "{response}");
    let started_at = state_of(&container)["StartedAt"].clone();

    mcpod.wait_status("nap", "paused", PATIENCE).await;
    let frozen = state_of(&container);
    assert_eq!(frozen["Status"], "paused", "{frozen}");
    assert_eq!(frozen["Paused"], true, "{frozen}");

    // The next request thaws it, over the same attach (same process).
    let (status, response) = mcpod
        .call_tool("nap", json!(2), "echo", json!({"text": "thawed"}))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(text_of(&response), "thawed");
    let thawed = state_of(&container);
    assert_eq!(thawed["Status"], "running", "{thawed}");
    assert_eq!(thawed["StartedAt"], started_at, "resumed, not restarted");

    // A crowd arriving while it is paused: one resume, one answer each.
    mcpod.wait_status("nap", "paused", PATIENCE).await;
    let ids: Vec<u64> = (100..132).collect();
    let calls = ids
        .iter()
        .map(|id| mcpod.call_tool("nap", json!(id), "echo", json!({"text": format!("m{id}")})));
    for (id, (status, response)) in ids.iter().zip(join_all(calls).await) {
        assert_eq!(status, 200, "{response}");
        assert_eq!(response["id"], *id, "{response}");
        assert_eq!(text_of(&response), format!("m{id}"));
    }
    let server = mcpod.status("nap").await;
    assert_eq!(server["starts"], 1, "{server}");
    assert_eq!(server["resumes"], 2, "{server}");
    assert_eq!(server["requestFailures"], 0, "{server}");
    assert_eq!(state_of(&container)["StartedAt"], started_at);

    // Paused again, then stopped at the idle timeout: thawed first, it read
    // the end of its stdin and exited by itself (code 0, no SIGKILL).
    mcpod.wait_status("nap", "paused", PATIENCE).await;
    let stopped = mcpod.wait_status("nap", "stopped", PATIENCE).await;
    assert!(
        stopped["message"].as_str().unwrap().contains("idle"),
        "{stopped}"
    );
    let state = state_of(&container);
    assert_eq!(state["Status"], "exited", "{state}");
    assert_eq!(state["ExitCode"], 0, "{state}");
    let metrics = mcpod.get_text("/metrics").await;
    assert!(metrics.contains("mcpod_server_pauses_total{server=\"nap\"} 3"));
    assert!(metrics.contains("mcpod_server_resume_seconds_count{server=\"nap\"} 2"));
}

#[tokio::test]
async fn a_restarted_mcpod_stops_the_container_it_finds_paused() {
    let spec = "pauseAfter: 1s\nidleTimeout: 1h";
    let files = [("left.yaml", manifest("left", FIXTURE_IMAGE, spec))];
    let mcpod = Mcpod::start(&files, &[]);
    let container = mcpod.container("left");
    let (status, response) = mcpod
        .call_tool("left", json!(1), "echo", json!({"text": "a"}))
        .await;
    assert_eq!(status, 200, "{response}");
    mcpod.wait_status("left", "paused", PATIENCE).await;
    let (manifests, data, instance) = mcpod.into_dirs(); // SIGKILL: the container stays paused
    assert_eq!(state_of(&container)["Status"], "paused");

    let mcpod = Mcpod::start_in(manifests, data, &instance, &[]);
    // Its MCP session died with the old mcpod, and it was idle: it is stopped.
    wait_podman_status(&container, "exited").await;
    assert_eq!(mcpod.status("left").await["status"], "stopped");
    let (status, response) = mcpod
        .call_tool("left", json!(2), "echo", json!({"text": "fresh"}))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(text_of(&response), "fresh");
    assert_eq!(containers_of(&instance), vec![container]);
}
