//! `/metrics` scraped by a real Prometheus (Debian's `prometheus`): the
//! lifecycle counters, and every panel of the Grafana dashboard
//! (`dashboards/mcpod.json`) run as PromQL against what Prometheus scraped from
//! the real mcpod under traffic; the alerting rules checked by `promtool`.
//! And `--log-format json` for mcpod's own log and a server's log.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_prometheus(target: &str) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: mcpod\n    static_configs: [{{targets: ['{target}']}}]\n"),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus installed (make setup)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// What Grafana's template variables stand for when the dashboard shows
/// every server over the test's few minutes.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__range", "5m")
        .replace("$server", ".+")
        .replace("$job", ".+")
}

/// The labels a panel's legend names (`{{server}} {{method}}` → server, method).
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(label, _)| label.trim().to_string())
        .collect()
}

/// Every `(panel title, expr, legend)` of the dashboard.
fn panel_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut queries = vec![];
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
                target["legendFormat"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    queries
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A range query, as Grafana runs a panel: the series Prometheus returned.
async fn query_range(
    http: &reqwest::Client,
    prometheus: &str,
    promql: &str,
    start: f64,
) -> Result<Vec<Value>, String> {
    let response = http
        .get(format!("{prometheus}/api/v1/query_range"))
        .query(&[
            ("query", promql.to_string()),
            ("start", format!("{start:.3}")),
            ("end", format!("{:.3}", unix_now())),
            ("step", "1".to_string()),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(body.to_string());
    }
    Ok(body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

async fn query(http: &reqwest::Client, prometheus: &str, promql: &str) -> Option<f64> {
    let response = http
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", promql)])
        .send()
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test]
async fn prometheus_scrapes_server_lifecycle_metrics() {
    let files = vec![("fake.yaml", manifest("fake", FIXTURE_IMAGE, ""))];
    let mcpod = Mcpod::start(&files, &[]);
    let (status, _) = mcpod
        .call_tool("fake", json!(1), "echo", json!({"text": "x"}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = mcpod
        .call_tool("fake", json!(2), "echo", json!({"text": "y"}))
        .await;
    assert_eq!(status, 200);

    let text = mcpod.get_text("/metrics").await;
    assert!(
        text.contains("# TYPE mcpod_server_starts_total counter"),
        "{text}"
    );

    let prometheus = start_prometheus(mcpod.url.trim_start_matches("http://"));
    let http = reqwest::Client::new();
    let mut seen = (None, None, None);
    wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape mcpod",
        async || {
            seen = (
                query(
                    &http,
                    &prometheus.url,
                    "mcpod_server_starts_total{server=\"fake\"}",
                )
                .await,
                query(&http, &prometheus.url, "mcpod_server_up{server=\"fake\"}").await,
                query(
                    &http,
                    &prometheus.url,
                    "mcpod_server_requests_total{server=\"fake\"}",
                )
                .await,
            );
            seen.0.is_some() && seen.1.is_some() && seen.2.is_some()
        },
    )
    .await;
    assert_eq!(seen, (Some(1.0), Some(1.0), Some(2.0)));
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn alert_rules_pass_promtool_and_the_chart_ships_the_same_files() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/alerts.yaml");
    let output = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("promtool installed (make setup)");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 5 rules found"), "{text}");
    // The chart's copies (Helm reads only files inside the chart).
    for (plain, chart) in [
        (
            "dashboards/mcpod.json",
            "charts/mcpod/files/mcpod-dashboard.json",
        ),
        ("dashboards/alerts.yaml", "charts/mcpod/files/alerts.yaml"),
    ] {
        assert!(
            repo_file(plain) == repo_file(chart),
            "{chart} differs from {plain}: cp {plain} {chart}"
        );
    }
}

#[tokio::test]
async fn every_dashboard_panel_returns_series_with_its_labels_from_a_real_prometheus() {
    let files = vec![(
        "fake.yaml",
        manifest("fake", FIXTURE_IMAGE, "idleTimeout: 3s"),
    )];
    let mcpod = Mcpod::start(&files, &["--usage-interval", "1s"]);
    let start = unix_now() - 5.0;
    let prometheus = start_prometheus(mcpod.url.trim_start_matches("http://"));
    let http = reqwest::Client::new();
    wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape mcpod",
        async || query(&http, &prometheus.url, "up{job=\"mcpod\"}").await == Some(1.0),
    )
    .await;

    // Traffic: a cold start, methods, tools, a JSON-RPC error and a tool error.
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    assert_eq!(mcpod.mcp("fake", list.to_string()).await.0, 200);
    let (_, unknown) = mcpod.call_tool("fake", json!(2), "nope", json!({})).await;
    assert!(unknown.get("error").is_some(), "{unknown}");
    // Until Prometheus has the container's usage (sampled every second), the
    // server is kept busy: an idle one would be stopped after 3 s.
    let mut n = 10;
    wait_for(
        Duration::from_secs(60),
        "container usage in Prometheus",
        async || {
            n += 1;
            let (status, _) = mcpod
                .call_tool("fake", json!(n), "echo", json!({"text": "x"}))
                .await;
            assert_eq!(status, 200);
            query(
                &http,
                &prometheus.url,
                "mcpod_container_memory_working_set_bytes{server=\"fake\"}",
            )
            .await
            .is_some()
                && query(
                    &http,
                    &prometheus.url,
                    "mcpod_container_cpu_seconds_total{server=\"fake\"}",
                )
                .await
                .is_some()
        },
    )
    .await;
    let status = mcpod.status("fake").await;
    assert!(status["cpuSeconds"].as_f64().unwrap() > 0.0, "{status}");
    assert!(status["memoryBytes"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(status["memoryLimitBytes"], 512 * 1024 * 1024, "{status}");

    // Auto-shutdown, then a second cold start.
    mcpod
        .wait_status("fake", "stopped", Duration::from_secs(30))
        .await;
    let (status, _) = mcpod
        .call_tool("fake", json!(100), "echo", json!({"text": "y"}))
        .await;
    assert_eq!(status, 200);
    wait_for(
        Duration::from_secs(30),
        "Prometheus to see the idle stop and restart",
        async || {
            query(
                &http,
                &prometheus.url,
                "mcpod_server_idle_stops_total{server=\"fake\"}",
            )
            .await
                == Some(1.0)
                && query(
                    &http,
                    &prometheus.url,
                    "mcpod_server_cold_start_seconds_count{server=\"fake\"}",
                )
                .await
                    == Some(2.0)
        },
    )
    .await;
    let text = mcpod.get_text("/metrics").await;
    for line in [
        "mcpod_request_duration_seconds_count{server=\"fake\",method=\"tools/list\"} 1",
        "mcpod_tool_call_duration_seconds_count{server=\"fake\",tool=\"nope\"} 1",
        "mcpod_request_errors_total{server=\"fake\",kind=\"jsonrpc_error\"} 1",
        "mcpod_server_idle_stops_total{server=\"fake\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }

    // Every panel as Grafana would run it over the test's minutes.
    let dashboard: Value = serde_json::from_str(&repo_file("dashboards/mcpod.json")).unwrap();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 30, "{}", queries.len());
    let mut failures = vec![];
    for (title, expr, legend) in &queries {
        let promql = substitute(expr);
        let series = match query_range(&http, &prometheus.url, &promql, start).await {
            Ok(series) => series,
            Err(e) => {
                failures.push(format!("{title}: {promql}: {e}"));
                continue;
            }
        };
        if series.is_empty() {
            failures.push(format!("{title}: {promql}: no series"));
        }
        for label in legend_labels(legend) {
            if let Some(s) = series.iter().find(|s| s["metric"].get(&label).is_none()) {
                failures.push(format!(
                    "{title}: {promql}: a series without '{label}': {s}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn log_format_json_writes_mcpods_log_and_server_logs_as_json_lines() {
    let files = vec![("fake.yaml", manifest("fake", FIXTURE_IMAGE, ""))];
    let mcpod = Mcpod::start(&files, &["--log-format", "json"]);
    let (status, _) = mcpod
        .call_tool("fake", json!(1), "echo", json!({"text": "x"}))
        .await;
    assert_eq!(status, 200);
    let data = mcpod.data.path().to_path_buf();
    let json_lines = |path: std::path::PathBuf| -> Vec<Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", path.display()))
            })
            .collect()
    };
    let mut own = vec![];
    wait_until(Duration::from_secs(10), "mcpod to log the start", || {
        own = json_lines(data.join("logs/router/mcpod.log"));
        own.iter().any(|l| l["fields"]["message"] == "started")
    });
    let started = own
        .iter()
        .find(|l| l["fields"]["message"] == "started")
        .unwrap();
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["span"]["server"], "fake", "{started}");
    // The same on stderr.
    let stderr = mcpod.logs();
    assert!(stderr.lines().any(|l| serde_json::from_str::<Value>(l)
        .is_ok_and(|v| v["fields"]["message"] == "router listening")));
    let server = json_lines(data.join("logs/containers/fake.log"));
    let phase = server
        .iter()
        .find(|l| l["source"] == "mcpod" && l["message"] == "starting -> running")
        .unwrap_or_else(|| panic!("{server:?}"));
    assert_eq!(phase["server"], "fake");
    assert!(phase["timestamp"].as_str().unwrap().ends_with('Z'));
}
