//! End-to-end tests of `mcpod serve` on real Podman with real MCP servers:
//! `mcp-server-time` from PyPI, and a fixture server with failure modes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn fixture(name: &str, extra: &str) -> (String, String) {
    (format!("{name}.yaml"), manifest(name, FIXTURE_IMAGE, extra))
}

fn files(list: &[(String, String)]) -> Vec<(&str, String)> {
    list.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()
}

#[tokio::test]
async fn real_time_server_starts_on_demand_with_limits_and_hardening() {
    let time = (
        "time.yaml".to_string(),
        manifest(
            "time",
            TIME_IMAGE,
            "resources: {limits: {memory: 256Mi, cpu: 500m}}\nargs: [--local-timezone, UTC]",
        ),
    );
    let mcpod = Mcpod::start(&files(&[time]), &[]);
    assert_eq!(mcpod.status("time").await["status"], "stopped");
    assert!(
        inspect(&mcpod.container("time")).is_none(),
        "nothing runs before the first request"
    );

    let (status, response) = mcpod
        .call_tool(
            "time",
            json!(1),
            "get_current_time",
            json!({"timezone": "Europe/Paris"}),
        )
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["id"], 1);
    let text = text_of(&response);
    assert!(
        text.contains("Europe/Paris") && text.contains("datetime"),
        "{response}"
    );

    let server = mcpod.status("time").await;
    assert_eq!(server["status"], "running");
    assert_eq!(server["serverInfo"]["name"], "mcp-time", "{server}");

    let container = inspect(&mcpod.container("time")).expect("container exists");
    let host = &container["HostConfig"];
    assert_eq!(host["Memory"], 256 * 1024 * 1024);
    assert_eq!(host["CpuQuota"], 50_000);
    assert_eq!(host["CpuPeriod"], 100_000);
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(host["Init"], true);
    assert!(
        host["SecurityOpt"]
            .to_string()
            .contains("no-new-privileges"),
        "{}",
        host["SecurityOpt"]
    );
    assert_eq!(container["Config"]["User"], "65534");
    assert!(
        container["EffectiveCaps"]
            .as_array()
            .is_none_or(|caps| caps.is_empty()),
        "{}",
        container["EffectiveCaps"]
    );
    let labels = &container["Config"]["Labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "mcpod");
    assert_eq!(labels["mcpod.dev/server"], "time");
    assert!(labels["mcpod.dev/spec-hash"]
        .as_str()
        .is_some_and(|h| h.len() == 16));

    // Many clients share one server: ids are rewritten and restored.
    let (a, b) = tokio::join!(
        mcpod.call_tool(
            "time",
            json!("same"),
            "get_current_time",
            json!({"timezone": "Asia/Tokyo"})
        ),
        mcpod.call_tool(
            "time",
            json!("same"),
            "get_current_time",
            json!({"timezone": "America/New_York"})
        ),
    );
    assert_eq!(a.1["id"], "same");
    assert_eq!(b.1["id"], "same");
    assert!(text_of(&a.1).contains("Asia/Tokyo"), "{}", a.1);
    assert!(text_of(&b.1).contains("America/New_York"), "{}", b.1);
}

#[tokio::test]
async fn initialize_is_answered_from_the_servers_own_result() {
    let mcpod = Mcpod::start(&files(&[fixture("fake", "")]), &[]);
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"test","version":"1"}}});
    let (status, response) = mcpod.mcp("fake", init.to_string()).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["id"], 0);
    assert_eq!(response["result"]["serverInfo"]["name"], "fake-mcp");
    assert_eq!(response["result"]["protocolVersion"], "2025-03-26");
    assert!(response["result"]["capabilities"]["tools"].is_object());
    // A second client initializing does not start a second process.
    mcpod.mcp("fake", init.to_string()).await;
    let (_, who) = mcpod.call_tool("fake", json!(1), "whoami", json!({})).await;
    let who: Value = serde_json::from_str(&text_of(&who)).unwrap();
    assert_eq!(who["uid"], 65534);
    assert_eq!(mcpod.status("fake").await["starts"], 1);
}

#[tokio::test]
async fn idle_server_stops_and_the_next_request_starts_it_again() {
    let mcpod = Mcpod::start(&files(&[fixture("idle", "idleTimeout: 2s")]), &[]);
    let (status, _) = mcpod
        .call_tool("idle", json!(1), "echo", json!({"text": "a"}))
        .await;
    assert_eq!(status, 200);
    let began = Instant::now();
    let stopped = mcpod
        .wait_status("idle", "stopped", Duration::from_secs(30))
        .await;
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "stopped too early: {:?}",
        began.elapsed()
    );
    assert!(
        stopped["message"].as_str().unwrap().contains("idle"),
        "{stopped}"
    );
    let state = inspect(&mcpod.container("idle")).unwrap();
    assert_eq!(state["State"]["Running"], false);
    // Closing stdin was enough: no SIGKILL was needed (exit code 0).
    assert_eq!(state["State"]["ExitCode"], 0);

    let (status, response) = mcpod
        .call_tool("idle", json!(2), "echo", json!({"text": "again"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(text_of(&response), "again");
    let server = mcpod.status("idle").await;
    assert_eq!(server["starts"], 2);
    assert_eq!(server["stops"], 1);
}

#[tokio::test]
async fn a_server_with_a_request_in_flight_is_not_stopped_for_idleness() {
    let mcpod = Mcpod::start(&files(&[fixture("busy", "idleTimeout: 1s")]), &[]);
    let (status, response) = mcpod
        .call_tool("busy", json!(1), "sleep", json!({"seconds": 3}))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(text_of(&response), "slept");
    assert_eq!(mcpod.status("busy").await["stops"], 0);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_start() {
    let mcpod = Mcpod::start(&files(&[fixture("burst", "")]), &[]);
    let calls = (0..12)
        .map(|i| mcpod.call_tool("burst", json!(i), "echo", json!({"text": format!("n{i}")})));
    let results = futures::future::join_all(calls).await;
    for (i, (status, response)) in results.iter().enumerate() {
        assert_eq!(*status, 200, "{response}");
        assert_eq!(response["id"], i);
        assert_eq!(text_of(response), format!("n{i}"));
    }
    let server = mcpod.status("burst").await;
    assert_eq!(server["starts"], 1, "{server}");
    assert_eq!(containers_of(&mcpod.instance).len(), 1);
}

#[tokio::test]
async fn a_request_during_a_stop_waits_and_is_served_by_a_new_instance() {
    // `stubborn` ignores stdin EOF and SIGTERM: the stop takes the full SIGKILL path (~3 s).
    let mcpod = Mcpod::start(
        &files(&[fixture(
            "slowstop",
            "env: [{name: FAKE_MODE, value: stubborn}]",
        )]),
        &[],
    );
    assert_eq!(mcpod.post("/servers/slowstop/start").await.0, 200);
    let first_id = mcpod.status("slowstop").await["containerId"].clone();
    let stop = mcpod.post("/servers/slowstop/stop");
    let request = async {
        mcpod
            .wait_status("slowstop", "stopping", Duration::from_secs(10))
            .await;
        mcpod
            .call_tool(
                "slowstop",
                json!("during"),
                "echo",
                json!({"text": "served"}),
            )
            .await
    };
    let ((stop_status, _), (status, response)) = tokio::join!(stop, request);
    assert_eq!(stop_status, 200);
    assert_eq!(status, 200, "{response}");
    assert_eq!(text_of(&response), "served");
    let server = mcpod.status("slowstop").await;
    assert_eq!(server["status"], "running");
    assert_eq!(server["starts"], 2);
    assert_eq!(
        server["containerId"], first_id,
        "the same container is reused, not duplicated"
    );
    assert_eq!(containers_of(&mcpod.instance).len(), 1);
}

#[tokio::test]
async fn a_killed_container_fails_pending_requests_at_once_and_the_next_request_recovers() {
    let mcpod = Mcpod::start(&files(&[fixture("victim", "requestTimeout: 60s")]), &[]);
    assert_eq!(mcpod.post("/servers/victim/start").await.0, 200);
    let container = mcpod.container("victim");
    let began = Instant::now();
    let pending = mcpod.call_tool("victim", json!(9), "sleep", json!({"seconds": 50}));
    let killer = async {
        mcpod
            .wait_status("victim", "running", Duration::from_secs(5))
            .await;
        wait_for(Duration::from_secs(10), "request in flight", async || {
            mcpod.status("victim").await["inFlight"] == 1
        })
        .await;
        let status = std::process::Command::new("podman")
            .args(["kill", &container])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let ((status, response), ()) = tokio::join!(pending, killer);
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "the pending request hung until a timeout"
    );
    assert_eq!(status, 502, "{response}");
    assert_eq!(response["id"], 9);
    assert_eq!(response["error"]["code"], -32003);
    let failed = mcpod
        .wait_status("victim", "failed", Duration::from_secs(10))
        .await;
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("exited unexpectedly"),
        "{failed}"
    );

    let (status, response) = mcpod
        .call_tool("victim", json!(10), "echo", json!({"text": "back"}))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(text_of(&response), "back");
    assert_eq!(mcpod.status("victim").await["restartCount"], 1);
}

#[tokio::test]
async fn a_crash_inside_a_tool_call_is_an_error_for_that_call_only() {
    let mcpod = Mcpod::start(&files(&[fixture("crashy", "")]), &[]);
    let (status, response) = mcpod
        .call_tool("crashy", json!("c"), "crash", json!({"code": 5}))
        .await;
    assert_eq!(status, 502, "{response}");
    assert_eq!(response["error"]["code"], -32003);
    let (status, _) = mcpod
        .call_tool("crashy", json!("d"), "echo", json!({"text": "ok"}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn request_timeout_answers_with_an_error_and_the_server_keeps_serving() {
    let mcpod = Mcpod::start(&files(&[fixture("slow", "requestTimeout: 1s")]), &[]);
    let (status, response) = mcpod
        .call_tool("slow", json!(1), "sleep", json!({"seconds": 4}))
        .await;
    assert_eq!(status, 504, "{response}");
    assert_eq!(response["id"], 1);
    assert_eq!(response["error"]["code"], -32001);
    assert!(response["error"]["message"]
        .as_str()
        .unwrap()
        .contains("did not answer within"));
    let (status, _) = mcpod
        .call_tool("slow", json!(2), "echo", json!({"text": "x"}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn start_failures_name_the_cause_and_back_off() {
    let list = [
        (
            "missing.yaml".to_string(),
            manifest(
                "missing",
                "localhost/mcpod-test/no-such-image:latest",
                "imagePullPolicy: Never",
            ),
        ),
        fixture("dies", "env: [{name: FAKE_MODE, value: exit-at-start}]"),
        fixture(
            "mute",
            "env: [{name: FAKE_MODE, value: no-init}]\nstartupTimeout: 2s",
        ),
    ];
    let mcpod = Mcpod::start(&files(&list), &[]);

    let (status, response) = mcpod
        .call_tool("missing", json!(1), "echo", json!({}))
        .await;
    assert_eq!(status, 503, "{response}");
    let message = response["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no-such-image") && message.contains("not present locally"),
        "{message}"
    );
    let server = mcpod.status("missing").await;
    assert_eq!(server["status"], "failed");
    assert!(server["message"]
        .as_str()
        .unwrap()
        .contains("no-such-image"));
    // Within the backoff the answer comes at once, without another attempt.
    let (status, _) = mcpod
        .call_tool("missing", json!(2), "echo", json!({}))
        .await;
    assert_eq!(status, 503);
    assert_eq!(mcpod.status("missing").await["startFailures"], 1);

    let (status, response) = mcpod.call_tool("dies", json!(1), "echo", json!({})).await;
    assert_eq!(status, 503, "{response}");
    let message = response["error"]["message"].as_str().unwrap();
    assert!(message.contains("exited with code 3"), "{message}");
    assert!(message.contains("configured to fail at start"), "{message}");

    let began = Instant::now();
    let (status, response) = mcpod.call_tool("mute", json!(1), "echo", json!({})).await;
    assert_eq!(status, 504, "{response}");
    assert!(began.elapsed() < Duration::from_secs(15));
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not become ready"),
        "{response}"
    );
    let state = inspect(&mcpod.container("mute")).unwrap();
    assert_eq!(
        state["State"]["Running"], false,
        "a server that never became ready is not left running"
    );
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let mcpod = Mcpod::start(
        &files(&[fixture("strict", "")]),
        &["--max-body-bytes", "1024"],
    );
    let (status, body) = mcpod.mcp("strict", "{not json").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], -32700);
    assert_eq!(body["id"], Value::Null);

    let (status, body) = mcpod
        .mcp("strict", r#"{"jsonrpc":"1.0","id":4,"method":"x"}"#)
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], -32600);
    assert_eq!(body["id"], 4);

    let (status, body) = mcpod
        .mcp(
            "nobody",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
        )
        .await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nobody"));

    let big = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x".repeat(4096)}}});
    let (status, _) = mcpod.mcp("strict", big.to_string()).await;
    assert_eq!(status, 413);
    // A chunked body over the limit is refused the same way.
    let chunks = futures::stream::iter((0..8).map(|_| Ok::<_, std::io::Error>("x".repeat(256))));
    let (status, _) = mcpod
        .mcp("strict", reqwest::Body::wrap_stream(chunks))
        .await;
    assert_eq!(status, 413);

    let (status, body) = mcpod
        .mcp(
            "strict",
            r#"{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}"#,
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(body, Value::String(String::new()));
    assert_eq!(
        mcpod.status("strict").await["status"],
        "stopped",
        "a notification does not start a server"
    );

    let (status, body) = mcpod
        .mcp("strict", r#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#)
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["result"], json!({}));

    let (status, body) = mcpod
        .mcp("strict", r#"{"jsonrpc":"2.0","id":5,"method":"no/such"}"#)
        .await;
    assert_eq!(status, 200, "the server's own error is passed through");
    assert_eq!(body["error"]["code"], -32601);
    assert_eq!(body["id"], 5);

    let (status, health) = mcpod.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "healthy");
    assert!(health["timestamp"].as_str().unwrap().contains('T'));
    assert_eq!(mcpod.post("/servers/nobody/start").await.0, 404);
    assert_eq!(mcpod.get("/no/such/path").await.0, 404);
}

#[tokio::test]
async fn restarted_mcpod_adopts_its_containers_and_removes_orphans() {
    // Most stdio servers exit when mcpod's attach (their stdin) goes away; `stubborn`
    // keeps running, as a server that ignores stdin EOF would.
    let list = [
        fixture("keep", "env: [{name: FAKE_MODE, value: stubborn}]"),
        fixture("drop", ""),
    ];
    let mcpod = Mcpod::start(&files(&list), &[]);
    assert_eq!(mcpod.post("/servers/keep/start").await.0, 200);
    assert_eq!(mcpod.post("/servers/drop/start").await.0, 200);
    let keep = mcpod.container("keep");
    let drop_name = mcpod.container("drop");
    let before = inspect(&keep).unwrap();
    let (manifests, data, instance) = mcpod.into_dirs(); // SIGKILL: containers keep running
    assert_eq!(inspect(&keep).unwrap()["State"]["Running"], true);
    std::fs::remove_file(manifests.path().join("drop.yaml")).unwrap();

    let mcpod = Mcpod::start_in(manifests, data, &instance, &[]);
    // The orphan goes; the declared one is restarted cleanly (fresh MCP session), not duplicated.
    wait_for(Duration::from_secs(20), "orphan removal", async || {
        inspect(&drop_name).is_none()
    })
    .await;
    let server = mcpod
        .wait_status("keep", "running", Duration::from_secs(20))
        .await;
    let after = inspect(&keep).unwrap();
    assert_eq!(after["Id"], before["Id"], "same container adopted");
    assert_ne!(
        after["State"]["StartedAt"], before["State"]["StartedAt"],
        "restarted cleanly"
    );
    assert_eq!(containers_of(&instance), vec![keep.clone()]);
    assert_eq!(server["starts"], 1);
    let (status, response) = mcpod
        .call_tool("keep", json!(1), "echo", json!({"text": "adopted"}))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(text_of(&response), "adopted");
}

#[tokio::test]
async fn manifest_changes_are_reconciled_and_bad_files_reported() {
    let mcpod = Mcpod::start(&files(&[fixture("first", "")]), &[]);
    let dir = mcpod.manifests.path().to_path_buf();
    assert_eq!(
        mcpod
            .call_tool("first", json!(1), "echo", json!({"text": "1"}))
            .await
            .0,
        200
    );
    let old_id = mcpod.status("first").await["containerId"].clone();

    // Added file → new server; broken file → reported, others untouched.
    std::fs::write(
        dir.join("second.yaml"),
        manifest("second", FIXTURE_IMAGE, ""),
    )
    .unwrap();
    std::fs::write(
        dir.join("broken.yaml"),
        manifest(
            "third",
            FIXTURE_IMAGE,
            "resources: {limits: {memory: 12XB}}",
        ),
    )
    .unwrap();
    wait_for(Duration::from_secs(10), "second server", async || {
        mcpod.get("/servers/second").await.0 == 200
    })
    .await;
    let (_, health) = mcpod.get("/health").await;
    let problems = health["problems"].to_string();
    assert!(
        problems.contains("broken.yaml") && problems.contains("spec.resources.limits.memory"),
        "{problems}"
    );
    assert_eq!(
        mcpod
            .call_tool("second", json!(1), "echo", json!({"text": "2"}))
            .await
            .0,
        200
    );

    // Changed spec → the running container is replaced on the next start.
    std::fs::write(
        dir.join("first.yaml"),
        manifest(
            "first",
            FIXTURE_IMAGE,
            "resources: {limits: {memory: 300Mi}}",
        ),
    )
    .unwrap();
    mcpod
        .wait_status("first", "stopped", Duration::from_secs(10))
        .await;
    assert_eq!(
        mcpod
            .call_tool("first", json!(2), "echo", json!({"text": "3"}))
            .await
            .0,
        200
    );
    let server = mcpod.status("first").await;
    assert_ne!(server["containerId"], old_id);
    assert_eq!(
        inspect(&mcpod.container("first")).unwrap()["HostConfig"]["Memory"],
        300 * 1024 * 1024
    );

    // Deleted file → server gone, container removed.
    std::fs::remove_file(dir.join("second.yaml")).unwrap();
    wait_for(Duration::from_secs(10), "second removed", async || {
        mcpod.get("/servers/second").await.0 == 404
    })
    .await;
    wait_for(
        Duration::from_secs(10),
        "second's container removed",
        async || inspect(&mcpod.container("second")).is_none(),
    )
    .await;
}

#[tokio::test]
async fn disabled_servers_refuse_with_a_reason_and_always_on_ones_start_alone() {
    let list = [
        fixture("off", "desiredState: Disabled"),
        fixture("on", "desiredState: AlwaysOn"),
    ];
    let mcpod = Mcpod::start(&files(&list), &[]);
    let (status, response) = mcpod.call_tool("off", json!(1), "echo", json!({})).await;
    assert_eq!(status, 503);
    assert!(response["error"]["message"]
        .as_str()
        .unwrap()
        .contains("disabled"));
    mcpod
        .wait_status("on", "running", Duration::from_secs(20))
        .await;
}

#[tokio::test]
async fn a_server_that_stops_answering_pings_is_marked_failed_and_restarted() {
    let list = [
        fixture(
            "deaf",
            "env: [{name: FAKE_MODE, value: deaf}]\nhealthCheckInterval: 1s\nrequestTimeout: 1s",
        ),
        fixture("healthy", "healthCheckInterval: 1s"),
    ];
    let mcpod = Mcpod::start(&files(&list), &[]);
    assert_eq!(mcpod.post("/servers/deaf/start").await.0, 200);
    assert_eq!(mcpod.post("/servers/healthy/start").await.0, 200);
    let mut deaf = Value::Null;
    wait_for(
        Duration::from_secs(30),
        "a failed health check",
        async || {
            deaf = mcpod.status("deaf").await;
            deaf["healthCheckFailures"].as_u64() >= Some(1) && deaf["starts"].as_u64() >= Some(2)
        },
    )
    .await;
    assert!(
        deaf["message"]
            .as_str()
            .unwrap_or("")
            .contains("health-check ping"),
        "{deaf}"
    );
    // A healthy server is probed too, answers, and is left alone; the probes do
    // not count as activity (its idle clock is not reset).
    let healthy = mcpod.status("healthy").await;
    assert_eq!(healthy["healthCheckFailures"], 0, "{healthy}");
    assert_eq!(healthy["starts"], 1);
}

#[tokio::test]
async fn each_servers_stderr_and_lifecycle_are_logged_and_readable() {
    let mcpod = Mcpod::start(&files(&[fixture("chatty", "")]), &[]);
    assert_eq!(
        mcpod
            .call_tool("chatty", json!(1), "echo", json!({"text": "x"}))
            .await
            .0,
        200
    );
    let response = mcpod
        .http
        .get(format!("{}/servers/chatty/logs?tail=50", mcpod.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("stderr fake-mcp starting"), "{text}");
    assert!(text.contains("mcpod stopped -> starting"), "{text}");
    assert!(text.contains("mcpod starting -> running"), "{text}");

    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(["logs", "chatty", "--tail", "5", "--data-dir"])
        .arg(mcpod.data.path())
        .output()
        .unwrap();
    assert!(cli.status.success());
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(printed.contains("fake-mcp starting"), "{printed}");
    assert!(printed.lines().count() <= 5);
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(["logs", "nobody", "--data-dir"])
        .arg(mcpod.data.path())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no log for this server yet"));

    let own = std::fs::read_to_string(mcpod.data.path().join("logs/router/mcpod.log")).unwrap();
    assert!(own.contains("router listening"), "{own}");
}

/// The fixture with one more tool, `getenv`, answering a variable's value.
const GETENV: &str = r#"command: [python3, -c, "import os, runpy; g = runpy.run_path('/usr/local/bin/fake_mcp.py', run_name='fixture')['main'].__globals__; real = g['call_tool']; g['call_tool'] = lambda rid, name, args: g['tool_result'](rid, os.environ.get(args['name'], '<unset>')) if name == 'getenv' else real(rid, name, args); g['main']()"]"#;

/// Removes a Podman secret when dropped: a failed test leaves none behind.
struct SecretGuard(String);

impl Drop for SecretGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["secret", "rm", &self.0])
            .output();
    }
}

fn secret_exists(name: &str) -> bool {
    std::process::Command::new("podman")
        .args(["secret", "inspect", name])
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn values_from_files_reach_the_server_as_podman_secrets_that_inspect_does_not_show() {
    let secrets = tempfile::tempdir().unwrap();
    let value = format!("s3cret-{}", unique_instance());
    let token = secrets.path().join("token");
    std::fs::write(&token, format!("{value}\n")).unwrap();
    let vault = fixture(
        "vault",
        &format!(
            "{GETENV}\nenv: [{{name: API_TOKEN, valueFromFile: {}}}, {{name: MODE, value: plain}}]",
            token.display()
        ),
    );
    let mcpod = Mcpod::start(
        &files(&[vault]),
        &["--secrets-dir", &secrets.path().display().to_string()],
    );
    let container = mcpod.container("vault");
    let _guard = SecretGuard(format!("{container}.env.API_TOKEN"));
    let (status, reply) = mcpod
        .call_tool("vault", json!(1), "getenv", json!({"name": "API_TOKEN"}))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(text_of(&reply), value, "the server sees the file's content");
    let (_, reply) = mcpod
        .call_tool("vault", json!(2), "getenv", json!({"name": "MODE"}))
        .await;
    assert_eq!(text_of(&reply), "plain");

    let inspected = inspect(&container).expect("the container exists");
    let text = inspected.to_string();
    assert!(!text.contains(&value), "podman inspect shows the secret");
    assert!(text.contains("MODE=plain"), "plain env stays env");
    let secret = format!("{container}.env.API_TOKEN");
    assert!(secret_exists(&secret), "{secret}");

    // A new value (read when the manifest is reloaded) reaches a new container:
    // Podman 4.3 copies a secret into the container when it creates it.
    let rotated = format!("{value}-rotated");
    std::fs::write(&token, &rotated).unwrap();
    let manifest = mcpod.manifests.path().join("vault.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}\n# rotated\n")).unwrap();
    let mut id = 3;
    wait_for(Duration::from_secs(60), "the rotated value", async || {
        id += 1;
        let (_, reply) = mcpod
            .call_tool("vault", json!(id), "getenv", json!({"name": "API_TOKEN"}))
            .await;
        text_of(&reply) == rotated
    })
    .await;
    let text = inspect(&container).unwrap().to_string();
    assert!(
        !text.contains(&rotated),
        "podman inspect shows the new secret"
    );

    // The server goes away with its manifest: its container and its secret too.
    std::fs::remove_file(mcpod.manifests.path().join("vault.yaml")).unwrap();
    wait_until(
        Duration::from_secs(30),
        "the server's secret removed",
        || inspect(&container).is_none() && !secret_exists(&secret),
    );
}

/// One server's stdio reached both ways mcpod attaches: conmon's attach socket
/// (the default on this host) and the Podman service's attach endpoint. Each
/// answers a message larger than one attach packet whole, keeps stderr apart
/// from stdout, and closes the server's stdin when it goes idle.
#[tokio::test]
async fn stdio_through_conmons_socket_and_through_the_service_alike() {
    for (args, via) in [
        (&[][..], "via=\"conmon\""),
        (&["--podman-attach", "service"][..], "via=\"service\""),
    ] {
        let mcpod = Mcpod::start(&files(&[fixture("both", "idleTimeout: 2s")]), args);
        // Four times conmon's 32 KiB stdin packet, answered in 8 KiB packets.
        let long = "é".repeat(64 * 1024);
        let (status, answer) = mcpod
            .call_tool("both", json!(1), "echo", json!({ "text": long }))
            .await;
        assert_eq!(status, 200, "{via}: {answer}");
        assert_eq!(text_of(&answer), long, "{via}");
        let logs = mcpod.logs();
        assert!(
            logs.lines()
                .any(|l| l.contains("container started") && l.contains(via)),
            "expected a start {via}:\n{logs}"
        );
        // The server's stderr went to its own log, not into a response.
        wait_for(Duration::from_secs(10), "the server's stderr", async || {
            mcpod
                .get_text("/servers/both/logs?tail=50")
                .await
                .contains("stderr fake-mcp starting")
        })
        .await;
        mcpod
            .wait_status("both", "stopped", Duration::from_secs(30))
            .await;
        let state = inspect(&mcpod.container("both")).unwrap();
        assert_eq!(
            state["State"]["ExitCode"], 0,
            "{via}: stdin closed, no kill"
        );
        let (status, _) = mcpod
            .call_tool("both", json!(2), "echo", json!({"text": "again"}))
            .await;
        assert_eq!(status, 200, "{via}: restarted");
    }
}
