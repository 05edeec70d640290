//! `/metrics` scraped by a real Prometheus (Debian's `prometheus`).

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
