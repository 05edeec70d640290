//! `mcpod add` end to end: an npm and a PyPI MCP server that are not among the
//! seven of examples/ are resolved, built on the project's bases, written as
//! MCPServers into the directory a running `mcpod serve` watches, picked up,
//! started, and answer a real `tools/list` through the router. A second `add`
//! of the same package reuses the recorded resolution and the built image.
//! Needs Podman, the node-build/node-base/python-base images (`make
//! test-images`) and the npm and PyPI registries.

mod common;

use std::process::Command;

use common::Mcpod;
use serde_json::{json, Value};

fn tool_names(answer: &Value) -> Vec<String> {
    answer["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {answer}"))
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect()
}

async fn added_server_lists_its_tools(
    name: &str,
    source: &[&str],
    expected_tool: &str,
    image: &str,
) {
    let mcpod = Mcpod::start(&[], &[]);
    // Kept between runs (under target/): a second `cargo test` reuses the
    // recorded resolution and the built image instead of the registries.
    let data = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mcpod-add");
    std::fs::create_dir_all(&data).unwrap();
    let args: Vec<&str> = [&[name][..], source].concat();
    let output = tokio::task::spawn_blocking({
        let (mcpod_url, manifests, data) = (
            mcpod.url.clone(),
            mcpod.manifests.path().to_path_buf(),
            data.clone(),
        );
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || {
            Command::new(env!("CARGO_BIN_EXE_mcpod"))
                .arg("add")
                .args(&args)
                .arg("--manifests")
                .arg(&manifests)
                .arg("--data-dir")
                .arg(&data)
                .args(["--url", &mcpod_url])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "mcpod add {args:?} failed:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{name} is running: {}/servers/{name}/mcp",
            mcpod.url
        )),
        "{stderr}"
    );

    // The manifest names the pinned image and keeps the strict defaults.
    let yaml =
        std::fs::read_to_string(mcpod.manifests.path().join(format!("{name}.yaml"))).unwrap();
    assert!(yaml.contains(&format!("image: {image}")), "{yaml}");
    assert!(yaml.contains("network: none"), "{yaml}");
    // Served and started by the running mcpod: a real tools/list.
    let (status, answer) = mcpod
        .mcp(
            name,
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        tool_names(&answer).iter().any(|t| t == expected_tool),
        "{answer}"
    );
    // Non-root, as built.
    let inspect = common::inspect(&mcpod.container(name)).expect("the server's container");
    assert_eq!(inspect["Config"]["User"], "65534");

    // Again, with --force on the YAML only: the recorded versions and the image are reused.
    let again = tokio::task::spawn_blocking({
        let (url, manifests, data) = (
            mcpod.url.clone(),
            mcpod.manifests.path().to_path_buf(),
            data.clone(),
        );
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || {
            let mut yaml_only = args.clone();
            yaml_only.push("--no-start".into());
            let _ = std::fs::remove_file(manifests.join(format!("{}.yaml", args[0])));
            Command::new(env!("CARGO_BIN_EXE_mcpod"))
                .arg("add")
                .args(&yaml_only)
                .arg("--manifests")
                .arg(&manifests)
                .arg("--data-dir")
                .arg(&data)
                .args(["--url", &url])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("as recorded in"), "{stderr}");
    assert!(
        stderr.contains("cached (its build inputs are unchanged)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn add_npm_server_is_built_served_and_answers_tools_list() {
    added_server_lists_its_tools(
        "github",
        &["--npm", "@modelcontextprotocol/server-github@2025.4.8"],
        "search_repositories",
        "localhost/mcpod/github:2025.4.8",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn add_pypi_server_is_built_served_and_answers_tools_list() {
    added_server_lists_its_tools(
        "calculator",
        &["--pypi", "mcp-server-calculator==0.2.1"],
        "calculate",
        "localhost/mcpod/calculator:0.2.1",
    )
    .await;
}

#[test]
fn add_refuses_to_replace_a_manifest_and_bad_package_specs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.yaml"), "kept").unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mcpod"))
            .arg("add")
            .args(args)
            .arg("--manifests")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let output = run(&["x", "--image", "localhost/x"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("pass --force"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("x.yaml")).unwrap(),
        "kept"
    );
    let output = run(&["y", "--npm", "a;b", "--no-start"]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run(&["Bad_Name", "--image", "x", "--no-start"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a valid name"));
    // A name another file declares would be a duplicate.
    std::fs::write(
        dir.path().join("more.yaml"),
        "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata: {name: taken}\nspec: {image: x}\n",
    )
    .unwrap();
    let output = run(&["taken", "--image", "x", "--no-start"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("already declares an MCPServer named taken"));
    // --image writes a manifest without building anything.
    let output = run(&[
        "img",
        "--image",
        "localhost/mcpod/time:latest",
        "--no-start",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let yaml = std::fs::read_to_string(dir.path().join("img.yaml")).unwrap();
    assert!(yaml.contains("imagePullPolicy: IfNotPresent"), "{yaml}");
}
