//! The router dashboard (`GET /`) in real headless Chromium, driven by
//! puppeteer-core (tests/clients/dashboard.mjs), against the real mcpod binary
//! and real server containers. `MCPOD_SCREENSHOTS=docs` saves the README's
//! screenshots there.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Runs one scenario of the browser driver; returns the JSON it printed.
fn browser(args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/dashboard.mjs");
    let output = Command::new("node")
        .arg(script)
        .args(args)
        .output()
        .expect("node and the test clients are installed (make test-clients)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "dashboard driver {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the driver printed no JSON ({e}): {stdout}"))
}

fn screenshots() -> String {
    std::env::var("MCPOD_SCREENSHOTS").unwrap_or_default()
}

#[test]
fn dashboard_shows_servers_start_idle_stop_and_stops_one_on_request() {
    let mcpod = Mcpod::start(
        &[
            (
                "fixture.yaml",
                manifest("fixture", FIXTURE_IMAGE, "idleTimeout: 5s"),
            ),
            ("time.yaml", manifest("time", TIME_IMAGE, "")),
        ],
        &[],
    );
    let shots = screenshots();
    let shown = browser(&["lifecycle", &mcpod.url, "fixture", "time", &shots]);

    assert_eq!(shown["problems"], serde_json::json!([]), "{shown:#}");
    assert_eq!(shown["title"], "mcpod dashboard");
    let mut servers: Vec<&str> = shown["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    servers.sort();
    assert_eq!(servers, ["fixture", "time"]);
    assert_eq!(shown["before"], "Stopped");
    assert_eq!(shown["answer"], "hi", "{shown:#}");
    assert_eq!(
        shown["seen"],
        serde_json::json!(["Running", "Stopped", "Running", "Stopped"])
    );
    let countdown = shown["countdown"].as_str().unwrap();
    assert!(countdown.contains("Stops when idle in"), "{countdown}");
    // Three requests, one of them answered with a JSON-RPC error.
    assert_eq!(shown["requestsLastHour"], "3");
    // One in three (a minute boundary between them weighs the minutes apart a little).
    let error_rate: f64 = shown["errorRate"]
        .as_str()
        .and_then(|r| r.strip_suffix(" %"))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("{shown:#}"));
    assert!((30.0..=37.0).contains(&error_rate), "{error_rate}");
    assert_ne!(shown["p95"], "–");
    assert_eq!(shown["coldStarts"], "1");
    assert!(
        shown["log"]
            .as_str()
            .unwrap()
            .contains("starting -> running"),
        "{shown:#}"
    );
    let idle = shown["idleMessage"].as_str().unwrap();
    assert!(idle.contains("idle for"), "{idle}");
    assert_eq!(shown["stopOutcome"], "Stopped.");
    assert!(
        shown["stopMessage"]
            .as_str()
            .unwrap()
            .contains("stopped through the API"),
        "{shown:#}"
    );

    // The stop control really stopped the container.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(mcpod.status("fixture"));
    assert_eq!(status["status"], "stopped");
    assert_eq!(status["stops"], 2, "the idle stop and the page's stop");
    let running = inspect(&mcpod.container("fixture"))
        .map(|state| state["State"]["Running"] == true)
        .unwrap_or(false);
    assert!(
        !running,
        "the container still runs after the page stopped it"
    );
}

#[test]
fn with_api_keys_the_page_asks_for_a_key_and_uses_it() {
    let keys = tempfile::tempdir().unwrap();
    let keys_file = keys.path().join("keys");
    let output = Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(["auth", "add-key", "dashboard-user", "--keys-file"])
        .arg(&keys_file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let key = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let mcpod = Mcpod::start(
        &[("fixture.yaml", manifest("fixture", FIXTURE_IMAGE, ""))],
        // Start/stop are an operator's (spec.access / --operator), as for the API.
        &[
            "--api-keys",
            keys_file.to_str().unwrap(),
            "--operator",
            "dashboard-user",
        ],
    );
    // The data is not served without the key (the page itself holds none).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (status, _) = runtime.block_on(mcpod.get("/dashboard/data"));
    assert_eq!(status, 401);
    let page = runtime.block_on(mcpod.get_text("/"));
    assert!(page.contains("<title>mcpod dashboard</title>"), "{page}");

    let shots = screenshots();
    let shown = browser(&["auth", &mcpod.url, &key, "fixture", &shots]);
    assert_eq!(shown["cardsBeforeKey"], 0);
    assert!(
        shown["wrongKey"].as_str().unwrap().contains("not accepted"),
        "{shown:#}"
    );
    assert_eq!(shown["stored"], true);
    assert_eq!(shown["status"], "Stopped");
    // Chromium reports each 401 answer as a console error; nothing else may appear.
    for problem in shown["problems"].as_array().unwrap() {
        let problem = problem.as_str().unwrap();
        assert!(
            problem.contains("401 (Unauthorized)"),
            "unexpected: {problem}"
        );
    }
    wait_until(Duration::from_secs(30), "fixture running", || {
        inspect(&mcpod.container("fixture")).is_some_and(|s| s["State"]["Running"] == true)
    });
}
