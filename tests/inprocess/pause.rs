//! The paused tier (`spec.pauseAfter`): frozen when quiet, resumed by the next
//! request, stopped after the full idle timeout, and no request lost or
//! answered twice across a pause and a resume.

use std::time::Duration;

use futures::future::join_all;
use mcpod::runtime::memory::Action;
use serde_json::json;

use crate::common::wait_for;
use crate::harness::{pid_of, server, Mcpod, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_server_is_paused_and_the_next_request_resumes_the_same_instance() {
    let manifest = server("nap", "pauseAfter: 50ms\nidleTimeout: 1h");
    let mcpod = Mcpod::start(&[manifest]).await;
    let (status, first) = mcpod.call_tool("nap", json!(1), "whoami", json!({})).await;
    assert_eq!(status, 200, "{first}");
    let paused = mcpod.wait_status("nap", "paused").await;
    assert!(mcpod.runtime.is_paused("nap"));
    assert_eq!(paused["pauses"], 1, "{paused}");
    assert_eq!(paused["pauseAfterSeconds"], 0, "{paused}");
    assert!(paused["message"].as_str().unwrap().contains("paused"));
    let metrics = mcpod.http.get(format!("{}/metrics", mcpod.url));
    let metrics = metrics.send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("mcpod_server_paused{server=\"nap\"} 1"));
    assert!(metrics.contains("mcpod_server_pauses_total{server=\"nap\"} 1"));

    let (status, second) = mcpod.call_tool("nap", json!(2), "whoami", json!({})).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(pid_of(&first), pid_of(&second), "the same process, thawed");
    assert!(!mcpod.runtime.is_paused("nap"));
    let running = mcpod.status("nap").await;
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["resumes"], 1, "{running}");
    assert_eq!(running["starts"], 1, "{running}");
    let actions: Vec<Action> = mcpod.runtime.records().iter().map(|r| r.action).collect();
    assert_eq!(actions, [Action::Start, Action::Pause, Action::Resume]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_a_paused_server_share_one_resume_and_each_get_one_answer() {
    let manifest = server("crowd", "pauseAfter: 30ms\nidleTimeout: 1h");
    let mcpod = Mcpod::start(&[manifest]).await;
    let mut next_id = 0u64;
    let mut pids = vec![];
    for _ in 0..3 {
        mcpod
            .call_tool("crowd", json!("wake"), "whoami", json!({}))
            .await;
        let before = mcpod.wait_status("crowd", "paused").await["resumes"].clone();
        let ids: Vec<u64> = (0..24).map(|i| next_id + i).collect();
        next_id += 24;
        let calls = ids.iter().map(|id| {
            mcpod.call_tool(
                "crowd",
                json!(id),
                "echo",
                json!({"text": format!("m{id}")}),
            )
        });
        for (id, (status, response)) in ids.iter().zip(join_all(calls).await) {
            assert_eq!(status, 200, "{response}");
            assert_eq!(response["id"], *id, "{response}");
            let text = response["result"]["content"][0]["text"].as_str().unwrap();
            assert!(text.contains(&format!("m{id}")), "{response}");
        }
        let status = mcpod.status("crowd").await;
        let resumes = status["resumes"].as_u64().unwrap();
        assert_eq!(
            resumes,
            before.as_u64().unwrap() + 1,
            "one resume: {status}"
        );
        let (_, who) = mcpod
            .call_tool("crowd", json!("who"), "whoami", json!({}))
            .await;
        pids.push(pid_of(&who));
    }
    assert!(pids.iter().all(|p| *p == pids[0]), "{pids:?}");
    assert_eq!(mcpod.runtime.starts("crowd"), 1);
}

/// Requests sent at random moments around the pause delay: some arrive while
/// it is running, some while it pauses, some while paused; every one is
/// answered, under its own id, by the one instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_the_pause_are_all_answered_once() {
    let manifest = server("race", "pauseAfter: 15ms\nidleTimeout: 1h");
    let mcpod = Mcpod::start(&[manifest]).await;
    let senders = (0..4u64).map(|sender| {
        let mcpod = &mcpod;
        async move {
            for n in 0..25u64 {
                let id = sender * 1000 + n;
                let (status, response) = mcpod
                    .call_tool("race", json!(id), "whoami", json!({}))
                    .await;
                assert_eq!(status, 200, "{response}");
                assert_eq!(response["id"], id, "{response}");
                // Gaps around the 15 ms pause delay, different per sender.
                let gap = 5 + (id * 7919 % 25);
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
        }
    });
    join_all(senders).await;
    let status = mcpod.status("race").await;
    assert!(status["pauses"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(mcpod.runtime.starts("race"), 1, "{status}");
    assert_eq!(status["requestFailures"], 0, "{status}");
    assert_eq!(status["requests"], 100, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_is_thawed_and_stopped_after_its_idle_timeout() {
    let manifest = server("sleepy", "pauseAfter: 20ms\nidleTimeout: 300ms");
    let mcpod = Mcpod::start(&[manifest]).await;
    let (status, first) = mcpod
        .call_tool("sleepy", json!(1), "whoami", json!({}))
        .await;
    assert_eq!(status, 200, "{first}");
    mcpod.wait_status("sleepy", "paused").await;
    let stopped = mcpod.wait_status("sleepy", "stopped").await;
    assert!(
        stopped["message"].as_str().unwrap().contains("idle"),
        "{stopped}"
    );
    // Thawed first, it read the end of its stdin and exited by itself.
    assert_eq!(mcpod.runtime.instances("sleepy")[0].exit_code, Some(0));
    let actions: Vec<Action> = mcpod.runtime.records().iter().map(|r| r.action).collect();
    assert_eq!(
        actions,
        [Action::Start, Action::Pause, Action::Resume, Action::Stop]
    );
    let (status, second) = mcpod
        .call_tool("sleepy", json!(2), "whoami", json!({}))
        .await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(
        pid_of(&first),
        pid_of(&second),
        "a cold start after the stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_is_not_health_checked_and_a_disabled_one_is_stopped() {
    let spec = "pauseAfter: 20ms\nidleTimeout: 1h\nhealthCheckInterval: 30ms";
    let mcpod = Mcpod::start(&[server("frozen", spec)]).await;
    mcpod
        .call_tool("frozen", json!(1), "whoami", json!({}))
        .await;
    mcpod.wait_status("frozen", "paused").await;
    // A ping may come before the pause (a health check is not activity);
    // none may come while paused.
    let pings = || {
        mcpod.runtime.instances("frozen")[0]
            .received
            .iter()
            .filter(|m| m["method"] == "ping")
            .count()
    };
    let before = pings();
    // Several health-check intervals pass: a ping to a frozen server would go
    // unanswered and restart it.
    let quiet = tokio::time::Instant::now() + Duration::from_millis(300);
    wait_for(PATIENCE, "300 ms of being paused", async || {
        tokio::time::Instant::now() >= quiet
    })
    .await;
    let status = mcpod.wait_status("frozen", "paused").await;
    assert_eq!(status["healthCheckFailures"], 0, "{status}");
    assert_eq!(pings(), before, "a paused server is not probed");

    let disabled = server("frozen", &format!("{spec}\ndesiredState: Disabled"));
    mcpod.apply(&[disabled]).await;
    mcpod.wait_status("frozen", "stopped").await;
    assert_eq!(mcpod.runtime.instances("frozen")[0].exit_code, Some(0));
    assert!(!mcpod.runtime.is_paused("frozen"));
}
