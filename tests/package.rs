//! `spec.package`: a server declared by its PyPI package (not among the seven)
//! is built by `mcpod serve` on first use, with the build visible in its status
//! and log, then served; a second start reuses the image. Needs the bases
//! (`make test-images`) and the PyPI registry.

mod common;

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use common::Mcpod;

const SERVER: &str = "calc-pkg";

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman").args(args).output().unwrap()
}

#[tokio::test]
async fn a_package_server_is_built_on_first_use_then_served() {
    let yaml = format!(
        "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {SERVER}\n\
         spec:\n  package: {{pypi: mcp-server-calculator==0.2.1}}\n  idleTimeout: 300s\n"
    );
    let mcpod = Mcpod::start(&[("calc.yaml", yaml)], &[]);
    let status = mcpod.status(SERVER).await;
    assert_eq!(status["status"], "stopped", "{status}");
    let image = status["image"].as_str().unwrap().to_string();
    assert!(
        image.starts_with(&format!("localhost/mcpod/{SERVER}:pkg-")),
        "{image}"
    );
    // A first use for real: whatever an earlier run built is gone.
    podman(&["rmi", "-f", &image]);

    // The first request waits for the build and the start, and gets its answer;
    // meanwhile the status says what is happening.
    let first = {
        let (http, url) = (mcpod.http.clone(), mcpod.url.clone());
        tokio::spawn(async move {
            let response = http
                .post(format!("{url}/mcp/{SERVER}"))
                .header("content-type", "application/json")
                .body(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string())
                .timeout(Duration::from_secs(600))
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        })
    };
    let mut seen = Value::Null;
    common::wait_for(
        Duration::from_secs(120),
        "the build to show in the status",
        async || {
            seen = mcpod.status(SERVER).await;
            seen["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("building image"))
        },
    )
    .await;
    assert_eq!(seen["status"], "starting", "{seen}");
    let (code, answer) = first.await.unwrap();
    assert_eq!(code, 200, "{answer}");
    let tools: Vec<&str> = answer["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(tools.contains(&"calculate"), "{tools:?}");

    // Built as `mcpod add` builds: labelled with its package, run as 65534.
    let label = podman(&[
        "image",
        "inspect",
        "--format",
        "{{index .Labels \"mcpod.dev/package\"}} {{.Config.User}}",
        &image,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&label.stdout).trim(),
        "pypi:mcp-server-calculator 65534"
    );
    let log = mcpod.get_text(&format!("/servers/{SERVER}/logs")).await;
    assert!(log.contains("building image"), "{log}");
    assert!(log.contains("built localhost/mcpod/"), "{log}");

    // A second start reuses the image: nothing is built again.
    assert_eq!(mcpod.post(&format!("/servers/{SERVER}/stop")).await.0, 200);
    assert_eq!(mcpod.post(&format!("/servers/{SERVER}/start")).await.0, 200);
    let log = mcpod
        .get_text(&format!("/servers/{SERVER}/logs?tail=10000"))
        .await;
    assert_eq!(log.matches("building image").count(), 1, "{log}");
}

#[test]
fn a_package_must_be_alone_and_valid() {
    let dir = tempfile::tempdir().unwrap();
    let write = |yaml: &str| {
        std::fs::write(
            dir.path().join("s.yaml"),
            format!("apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: s\nspec:\n{yaml}"),
        )
        .unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_mcpod"))
            .arg("validate")
            .arg(dir.path())
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    assert!(write("  package: {npm: \"@scope/pkg@1.0.0\"}\n").0);
    let (ok, out) = write("  image: x\n  package: {npm: pkg}\n");
    assert!(!ok && out.contains("not both"), "{out}");
    let (ok, out) = write("  package: {npm: pkg, pypi: pkg}\n");
    assert!(!ok && out.contains("exactly one"), "{out}");
    let (ok, out) = write("  package: {npm: \"a;b\"}\n");
    assert!(!ok && out.contains("spec.package"), "{out}");
    let (ok, out) = write("  idleTimeout: 10s\n");
    assert!(!ok && out.contains("spec.image"), "{out}");
}
