//! Scale to zero (/work/shared/reference/scale-to-zero.md): single flight,
//! held requests, idle stop, stops that never drop a request, crashes, start
//! failures and backoff, removal.

use std::time::{Duration, Instant};

use futures::future::join_all;
use mcpod::runtime::memory::{Action, Behaviour, MemoryRuntime};
use serde_json::json;

use crate::common::wait_for;
use crate::harness::{fast_settings, pid_of, server, text_of, Mcpod, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_stopped_server_share_one_start() {
    let mcpod = Mcpod::start(&[server("burst", "")]).await;
    let calls = (0..16).map(|i| mcpod.call_tool("burst", json!(i), "whoami", json!({})));
    let answers = join_all(calls).await;
    for (i, (status, response)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "{response}");
        assert_eq!(response["id"], i);
    }
    let pids: Vec<u64> = answers.iter().map(|(_, r)| pid_of(r)).collect();
    assert!(pids.iter().all(|p| *p == pids[0]), "one instance: {pids:?}");
    assert_eq!(mcpod.runtime.starts("burst"), 1);
    assert_eq!(mcpod.runtime.running(), 1);
    assert_eq!(mcpod.status("burst").await["starts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_during_a_start_are_held_then_served_by_it() {
    let runtime = MemoryRuntime::new();
    runtime.hold_starts();
    let mcpod = Mcpod::with(runtime, fast_settings(), &[server("held", "")]).await;
    let first = tokio::spawn({
        let (http, url) = (mcpod.http.clone(), mcpod.url.clone());
        async move { post_whoami(&http, &url, 1).await }
    });
    wait_for(PATIENCE, "the start to begin", async || {
        mcpod.runtime.starts("held") == 1
    })
    .await;
    assert_eq!(mcpod.status("held").await["status"], "starting");
    let later: Vec<_> = (2..5)
        .map(|i| {
            let (http, url) = (mcpod.http.clone(), mcpod.url.clone());
            tokio::spawn(async move { post_whoami(&http, &url, i).await })
        })
        .collect();
    // Still starting: nothing may have been answered (refused, or failed) yet.
    assert_eq!(mcpod.status("held").await["status"], "starting");
    assert!(!first.is_finished() && later.iter().all(|t| !t.is_finished()));

    mcpod.runtime.release_starts();
    let mut pids = vec![];
    for (i, task) in std::iter::once(first).chain(later).enumerate() {
        let (status, response) = task.await.unwrap();
        assert_eq!(status, 200, "{response}");
        assert_eq!(response["id"], i + 1);
        pids.push(pid_of(&response));
    }
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    assert_eq!(mcpod.runtime.starts("held"), 1);
}

async fn post_whoami(http: &reqwest::Client, url: &str, id: u64) -> (u16, serde_json::Value) {
    let body = crate::harness::call(json!(id), "whoami", json!({}));
    let response = http
        .post(format!("{url}/mcp/held"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_stops_and_the_next_request_starts_a_new_instance() {
    let mcpod = Mcpod::start(&[server("idle", "idleTimeout: 100ms")]).await;
    let (status, first) = mcpod.call_tool("idle", json!(1), "whoami", json!({})).await;
    assert_eq!(status, 200, "{first}");
    let answered = Instant::now();
    let stopped = mcpod.wait_status("idle", "stopped").await;
    assert!(
        answered.elapsed() >= Duration::from_millis(50),
        "stopped before its idleTimeout: {:?}",
        answered.elapsed()
    );
    assert!(
        stopped["message"].as_str().unwrap().contains("idle"),
        "{stopped}"
    );
    assert_eq!(mcpod.runtime.running(), 0);
    // Closing its stdin was enough: it exited by itself, not killed.
    assert_eq!(mcpod.runtime.instances("idle")[0].exit_code, Some(0));

    let (status, second) = mcpod.call_tool("idle", json!(2), "whoami", json!({})).await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(pid_of(&first), pid_of(&second), "a new instance");
    assert_eq!(mcpod.runtime.starts("idle"), 2);
    assert_eq!(mcpod.runtime.stops("idle"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_arriving_during_an_idle_stop_waits_and_is_served_by_a_new_instance() {
    let runtime = MemoryRuntime::new();
    // It ignores its stdin closing: the stop waits out the grace period, then kills.
    runtime.set_behaviour("slowstop", Behaviour::Stubborn);
    let settings = mcpod::server::Settings {
        stop_grace: Duration::from_millis(300),
        ..fast_settings()
    };
    let manifest = server("slowstop", "idleTimeout: 50ms");
    let mcpod = Mcpod::with(runtime, settings, &[manifest]).await;
    let (status, first) = mcpod
        .call_tool("slowstop", json!(1), "whoami", json!({}))
        .await;
    assert_eq!(status, 200, "{first}");
    let stopping = mcpod.wait_status("slowstop", "stopping").await;
    assert!(
        stopping["message"].as_str().unwrap().contains("idle"),
        "{stopping}"
    );
    let (status, response) = mcpod
        .call_tool("slowstop", json!("during"), "whoami", json!({}))
        .await;
    assert_eq!(status, 200, "{response}");
    let instances = mcpod.runtime.instances("slowstop");
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert_eq!(pid_of(&first), instances[0].pid);
    assert_eq!(pid_of(&response), instances[1].pid, "served by the new one");
    assert_eq!(instances[0].exit_code, Some(137), "the old one was killed");
    let actions: Vec<Action> = mcpod.runtime.records().iter().map(|r| r.action).collect();
    assert_eq!(
        actions[..3],
        [Action::Start, Action::Stop, Action::Start],
        "the new start waited for the stop to finish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_request_in_flight_is_not_stopped_for_idleness() {
    let mcpod = Mcpod::start(&[server("busy", "idleTimeout: 50ms")]).await;
    let (status, response) = mcpod
        .call_tool("busy", json!(1), "sleep", json!({"ms": 400}))
        .await;
    // Stopped mid-request, it would have answered 502.
    assert_eq!(status, 200, "{response}");
    assert_eq!(text_of(&response), "slept");
    assert_eq!(mcpod.runtime.starts("busy"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_fails_the_pending_request_at_once_and_the_next_request_starts_anew() {
    let mcpod = Mcpod::start(&[server("victim", "requestTimeout: 60s")]).await;
    let pending = mcpod.call_tool("victim", json!(9), "sleep", json!({"ms": 60_000}));
    let killer = async {
        mcpod.wait_received_call("victim", "sleep").await;
        assert!(mcpod.runtime.kill("victim"));
        Instant::now()
    };
    let ((status, response), killed_at) = tokio::join!(pending, killer);
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "the pending request waited for a timeout"
    );
    assert_eq!(status, 502, "{response}");
    assert_eq!(response["id"], 9);
    assert_eq!(response["error"]["code"], -32003);
    let failed = mcpod.wait_status("victim", "failed").await;
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("exited unexpectedly"),
        "{failed}"
    );

    let (status, response) = mcpod
        .call_tool("victim", json!(10), "whoami", json!({}))
        .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(pid_of(&response), mcpod.runtime.instances("victim")[1].pid);
    assert_eq!(mcpod.runtime.starts("victim"), 2);
    assert_eq!(mcpod.status("victim").await["restartCount"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_names_its_cause_with_retry_after_and_backs_off() {
    let runtime = MemoryRuntime::new();
    runtime.set_behaviour(
        "missing",
        Behaviour::FailStart("image localhost/nope:latest is not present locally".into()),
    );
    let mcpod = Mcpod::with(runtime, fast_settings(), &[server("missing", "")]).await;
    let echo = crate::harness::call(json!(1), "echo", json!({"text": "x"}));

    let (status, retry_after, response) = mcpod.post("missing", &echo).await;
    assert_eq!(status, 503, "{response}");
    assert_eq!(retry_after.as_deref(), Some("1"), "first backoff: 1 s");
    assert_eq!(response["id"], 1);
    let message = response["error"]["message"].as_str().unwrap();
    assert!(message.contains("not present locally"), "{message}");
    let failed = mcpod.status("missing").await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["message"].as_str().unwrap().contains("nope"));

    // Within the backoff: answered at once, without another attempt.
    let (status, retry_after, _) = mcpod.post("missing", &echo).await;
    assert_eq!(status, 503);
    assert!(retry_after.is_some());
    assert_eq!(mcpod.runtime.starts("missing"), 1, "no hammering");
    assert_eq!(
        mcpod.runtime.stops("missing"),
        1,
        "the failed start was cleaned up"
    );

    // A changed spec retries at once; the next failure backs off longer.
    mcpod
        .apply(&[server("missing", "requestTimeout: 6s")])
        .await;
    let (status, retry_after, _) = mcpod.post("missing", &echo).await;
    assert_eq!(status, 503);
    assert_eq!(mcpod.runtime.starts("missing"), 2);
    assert_eq!(retry_after.as_deref(), Some("2"), "the backoff grew");
    assert_eq!(mcpod.status("missing").await["startFailures"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_exits_at_start_is_reported_with_its_exit_code_and_output() {
    let runtime = MemoryRuntime::new();
    runtime.set_behaviour("dies", Behaviour::ExitAtStart);
    let mcpod = Mcpod::with(runtime, fast_settings(), &[server("dies", "")]).await;
    let (status, response) = mcpod.call_tool("dies", json!(1), "echo", json!({})).await;
    assert_eq!(status, 503, "{response}");
    let message = response["error"]["message"].as_str().unwrap();
    assert!(message.contains("exited with code 3"), "{message}");
    assert!(message.contains("configured to fail at start"), "{message}");
}

/// One deadline bounds a start: a container that starts at once but never
/// answers `initialize` is a startup timeout (504), not a failed start racing
/// it on the same timer tick (once 503 with a backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_initialize_times_out_with_504() {
    let runtime = MemoryRuntime::new();
    runtime.set_behaviour("mute", Behaviour::NoInitialize);
    let mcpod = Mcpod::with(
        runtime,
        fast_settings(),
        &[server("mute", "startupTimeout: 200ms")],
    )
    .await;
    let (status, response) = mcpod.call_tool("mute", json!(1), "echo", json!({})).await;
    assert_eq!(status, 504, "{response}");
    assert_eq!(response["id"], 1);
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not become ready"),
        "{response}"
    );
    assert_eq!(
        mcpod.runtime.running(),
        0,
        "a server that never became ready is not left running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_slower_than_the_startup_timeout_gets_504() {
    let runtime = MemoryRuntime::new();
    // The runtime never finishes starting it (an image pull that hangs, say).
    runtime.hold_starts();
    let mcpod = Mcpod::with(
        runtime,
        fast_settings(),
        &[server("slow", "startupTimeout: 200ms")],
    )
    .await;
    let (status, response) = mcpod.call_tool("slow", json!(1), "echo", json!({})).await;
    assert_eq!(status, 504, "{response}");
    assert_eq!(response["id"], 1);
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not become ready within 200ms"),
        "{response}"
    );
    assert_eq!(mcpod.status("slow").await["status"], "failed");
    assert_eq!(mcpod.runtime.running(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_server_answers_its_pending_requests_and_removes_its_container() {
    let mcpod = Mcpod::start(&[server("doomed", "requestTimeout: 60s")]).await;
    let pending = mcpod.call_tool("doomed", json!(3), "sleep", json!({"ms": 60_000}));
    let remove = async {
        mcpod.wait_received_call("doomed", "sleep").await;
        mcpod.apply(&[]).await;
        Instant::now()
    };
    let ((status, response), removed_at) = tokio::join!(pending, remove);
    assert!(
        removed_at.elapsed() < Duration::from_secs(5),
        "answered at once"
    );
    assert!(status >= 500, "{status} {response}");
    assert_eq!(response["id"], 3);
    assert!(response["error"]["code"].is_i64(), "{response}");
    assert_eq!(mcpod.runtime.removes("doomed"), 1);
    assert_eq!(mcpod.runtime.running(), 0);
    let (status, _) = mcpod.call_tool("doomed", json!(4), "echo", json!({})).await;
    assert_eq!(status, 404, "no longer declared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_server_ends_its_sessions_and_their_open_streams() {
    let mcpod = Mcpod::start(&[server("gone", "")]).await;
    let mut client = mcpod.client("gone");
    client.initialize(json!({})).await;
    let mut stream = client.request(reqwest::Method::GET).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    mcpod.apply(&[]).await;
    // The GET stream ends (its session with it) instead of staying open.
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(_chunk) = stream.chunk().await.unwrap_or(None) {}
    })
    .await;
    assert!(ended.is_ok(), "the session's stream ended with its server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_server_refuses_with_a_reason_and_is_stopped() {
    let mcpod = Mcpod::start(&[server("off", "")]).await;
    let (status, _) = mcpod.call_tool("off", json!(1), "echo", json!({})).await;
    assert_eq!(status, 200);
    mcpod
        .apply(&[server("off", "desiredState: Disabled")])
        .await;
    let (status, response) = mcpod.call_tool("off", json!(2), "echo", json!({})).await;
    assert_eq!(status, 503, "{response}");
    assert!(
        response["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disabled"),
        "{response}"
    );
    wait_for(PATIENCE, "the disabled server to stop", async || {
        mcpod.runtime.running() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_pings_is_marked_failed_and_restarted() {
    let runtime = MemoryRuntime::new();
    // Answers `initialize`, then nothing: hung.
    runtime.set_behaviour("hung", Behaviour::Deaf);
    let spec = "healthCheckInterval: 50ms\nrequestTimeout: 100ms";
    let mcpod = Mcpod::with(runtime, fast_settings(), &[server("hung", spec)]).await;
    assert_eq!(mcpod.admin("/servers/hung/start").await, 200);
    wait_for(
        PATIENCE,
        "a restart after a failed health check",
        async || mcpod.runtime.starts("hung") >= 2,
    )
    .await;
    let status = mcpod.status("hung").await;
    assert!(
        status["healthCheckFailures"].as_u64().unwrap() >= 1,
        "{status}"
    );
    let first = &mcpod.runtime.instances("hung")[0];
    assert!(
        first.received.iter().any(|m| m["method"] == "ping"),
        "it was probed with a ping: {:?}",
        first.received
    );
    assert!(first.exit_code.is_some(), "the hung instance was stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_quiet_stream_does_not_keep_a_server_up_and_its_session_outlives_the_stop() {
    let mcpod = Mcpod::start(&[server("quiet", "idleTimeout: 100ms")]).await;
    let mut client = mcpod.client("quiet");
    client.initialize(json!({})).await;
    let echo = crate::harness::call(json!(1), "echo", json!({"text": "again"}));
    assert_eq!(client.post(&echo).await.0, 200);
    let stream = client.request(reqwest::Method::GET).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    mcpod.wait_status("quiet", "stopped").await;
    let (status, messages) = client.post(&echo).await;
    assert_eq!(status, 200, "the same session, served by a new instance");
    assert_eq!(text_of(&messages[0]), "again");
    assert_eq!(mcpod.runtime.starts("quiet"), 2);
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_pings_do_not_count_as_activity() {
    let spec = "idleTimeout: 150ms\nhealthCheckInterval: 20ms";
    let mcpod = Mcpod::start(&[server("probed", spec)]).await;
    assert_eq!(mcpod.admin("/servers/probed/start").await, 200);
    let stopped = mcpod.wait_status("probed", "stopped").await;
    assert!(
        stopped["message"].as_str().unwrap().contains("idle"),
        "{stopped}"
    );
    let pings = mcpod.runtime.instances("probed")[0]
        .received
        .iter()
        .filter(|m| m["method"] == "ping")
        .count();
    assert!(pings >= 1, "it was probed meanwhile");
}
