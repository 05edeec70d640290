//! The original system's seven MCP servers, each from its own image, served by
//! `mcpod serve` and set up as in `examples/`: every one answers `tools/list`
//! and a real `tools/call` through the router, and memory's graph survives a
//! stop and a new container. Needs the seven images (`make test-images`).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const PAGE_TEXT: &str = "mcpod fetched this page from the host";

/// Removes a named volume when the test ends (after mcpod removed its containers).
struct VolumeGuard(String);

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}

/// Serves one HTML page to every GET, on all addresses, in a background thread.
fn serve_page() -> u16 {
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let body = format!(
                    "<html><head><title>mcpod test</title></head><body><h1>Hello</h1>\
                     <p>{PAGE_TEXT}.</p></body></html>"
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    port
}

/// The host as containers on Podman's default bridge network see it: its gateway.
fn bridge_gateway() -> String {
    let output = Command::new("podman")
        .args([
            "network",
            "inspect",
            "podman",
            "--format",
            "{{range .Subnets}}{{.Gateway}}{{end}}",
        ])
        .output()
        .unwrap();
    let gateway = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success() && !gateway.is_empty(),
        "no gateway for the podman network: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    gateway
}

fn run(program: &str, dir: &Path, args: &[&str]) {
    let output = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `examples/{name}.yaml` with each `(from, to)` replaced; `from` must occur exactly once.
fn example(name: &str, replacements: &[(&str, String)]) -> (String, String) {
    let file = format!("{name}.yaml");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(&file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in replacements {
        assert_eq!(
            text.matches(from).count(),
            1,
            "{} has one {from:?}",
            path.display()
        );
        text = text.replace(from, to);
    }
    (file, text)
}

fn world_readable(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn tool_names(response: &Value) -> Vec<String> {
    response["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {response}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `tools/list`, then one `tools/call`; returns the call's text content.
async fn list_and_call(
    mcpod: &Mcpod,
    server: &str,
    expected_tool: &str,
    arguments: Value,
) -> String {
    let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
    let (status, response) = mcpod.mcp(server, list.to_string()).await;
    assert_eq!(status, 200, "{server} tools/list: {response}");
    let names = tool_names(&response);
    assert!(
        names.iter().any(|n| n == expected_tool),
        "{server} lists no {expected_tool}: {names:?}"
    );
    let (status, response) = mcpod
        .call_tool(server, json!(2), expected_tool, arguments)
        .await;
    assert_eq!(status, 200, "{server} {expected_tool}: {response}");
    assert_ne!(
        response["result"]["isError"], true,
        "{server} {expected_tool} failed: {response}"
    );
    text_of(&response)
}

#[tokio::test]
async fn all_seven_servers_answer_through_the_router_and_memory_persists() {
    let began = Instant::now();
    let id = unique_instance();

    // filesystem: a host folder, mounted read-only.
    let files = tempfile::tempdir().unwrap();
    world_readable(files.path());
    std::fs::write(files.path().join("hello.txt"), "hello from the host\n").unwrap();

    // git: a repository made here, under a host folder mounted at /repos.
    let repos = tempfile::tempdir().unwrap();
    world_readable(repos.path());
    let repo = repos.path().join("demo");
    std::fs::create_dir(&repo).unwrap();
    world_readable(&repo);
    run("git", &repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("README"), "demo\n").unwrap();
    run("git", &repo, &["add", "README"]);
    run(
        "git",
        &repo,
        &[
            "-c",
            "user.name=mcpod test",
            "-c",
            "user.email=test@mcpod.dev",
            "commit",
            "-q",
            "-m",
            "First commit from the seven-server test",
        ],
    );

    // memory: a named volume of its own.
    let volume = VolumeGuard(format!("mcpod-test-memory-{id}"));

    // fetch: a page on the host, reached over the bridge network.
    let port = serve_page();
    let url = format!("http://{}:{port}/page.html", bridge_gateway());

    // The examples as shipped, with only this run's host folders and volume swapped in.
    let manifests = [
        example(
            "filesystem",
            &[(
                "hostPath: /srv/mcpod/files,",
                format!("hostPath: {},", files.path().display()),
            )],
        ),
        example(
            "memory",
            &[(
                "volume: mcpod-memory-data,",
                format!("volume: {},", volume.0),
            )],
        ),
        example(
            "git",
            &[(
                "{volume: mcpod-git-repos, mountPath: /repos}",
                format!(
                    "{{hostPath: {}, mountPath: /repos, readOnly: true}}",
                    repos.path().display()
                ),
            )],
        ),
        // The page is on a private address and has no robots.txt.
        example(
            "fetch",
            &[(
                "  network: bridge\n",
                "  network: bridge\n  args: [--ignore-robots-txt, --allow-private-ips]\n".into(),
            )],
        ),
        example("everything", &[]),
        example("sequentialthinking", &[]),
        example("time", &[]),
    ];
    let manifests: Vec<(&str, String)> = manifests
        .iter()
        .map(|(name, text)| (name.as_str(), text.clone()))
        .collect();
    // This run's host folders are outside the default allowed host paths
    // (/srv/mcpod): allowed explicitly, as an operator would.
    let allowed = format!("{},{}", files.path().display(), repos.path().display());
    let mcpod = Mcpod::start(&manifests, &["--allow-host-path", &allowed]);
    let (_, servers) = mcpod.get("/servers").await;
    assert_eq!(
        servers.as_array().map(Vec::len),
        Some(7),
        "seven servers declared: {servers}"
    );

    let (filesystem, memory, git, fetch, everything, thinking, time) = tokio::join!(
        list_and_call(
            &mcpod,
            "filesystem",
            "read_text_file",
            json!({"path": "/data/hello.txt"})
        ),
        list_and_call(
            &mcpod,
            "memory",
            "create_entities",
            json!({"entities": [{"name": "mcpod", "entityType": "project",
                "observations": ["runs MCP servers on demand"]}]})
        ),
        list_and_call(
            &mcpod,
            "git",
            "git_log",
            json!({"repo_path": "/repos/demo", "max_count": 5})
        ),
        list_and_call(
            &mcpod,
            "fetch",
            "fetch",
            json!({"url": url, "max_length": 5000})
        ),
        list_and_call(&mcpod, "everything", "get-sum", json!({"a": 19, "b": 23})),
        list_and_call(
            &mcpod,
            "sequentialthinking",
            "sequentialthinking",
            json!({"thought": "Seven servers, one router.", "thoughtNumber": 1,
                "totalThoughts": 1, "nextThoughtNeeded": false})
        ),
        list_and_call(
            &mcpod,
            "time",
            "get_current_time",
            json!({"timezone": "Asia/Tokyo"})
        ),
    );
    assert_eq!(filesystem.trim(), "hello from the host", "filesystem");
    assert!(memory.contains("\"mcpod\""), "memory: {memory}");
    assert!(
        git.contains("First commit from the seven-server test"),
        "git: {git}"
    );
    assert!(fetch.contains(PAGE_TEXT), "fetch: {fetch}");
    assert!(everything.contains("42"), "everything: {everything}");
    let thought: Value = serde_json::from_str(&thinking)
        .unwrap_or_else(|e| panic!("sequentialthinking ({e}): {thinking}"));
    assert_eq!(thought["thoughtNumber"], 1, "{thought}");
    assert_eq!(thought["nextThoughtNeeded"], false, "{thought}");
    let time: Value = serde_json::from_str(&time).unwrap_or_else(|e| panic!("time ({e}): {time}"));
    assert_eq!(time["timezone"], "Asia/Tokyo", "{time}");

    for server in [
        "filesystem",
        "memory",
        "git",
        "fetch",
        "everything",
        "sequentialthinking",
        "time",
    ] {
        assert_eq!(mcpod.status(server).await["status"], "running", "{server}");
    }

    // Memory's graph lives on its volume: stop it, remove its container, read it back.
    let (status, stopped) = mcpod.post("/servers/memory/stop").await;
    assert_eq!(status, 200, "{stopped}");
    let first = inspect(&mcpod.container("memory")).expect("stopped container kept");
    assert_eq!(first["State"]["Running"], false);
    // Podman 4.3 may refuse for a moment to remove a container that just
    // stopped in a user namespace of its own ("userdata/shm: device or resource
    // busy"), as mcpod's own removal knows: retry, as a person would.
    let container = mcpod.container("memory");
    let mut refusal = String::new();
    wait_until(
        Duration::from_secs(60),
        "podman rm of the stopped container",
        || {
            let removed = Command::new("podman")
                .args(["rm", "-f", &container])
                .output()
                .unwrap();
            refusal = String::from_utf8_lossy(&removed.stderr).into_owned();
            removed.status.success()
        },
    );
    assert!(inspect(&container).is_none(), "removed: {refusal}");
    let (status, graph) = mcpod
        .call_tool("memory", json!(3), "read_graph", json!({}))
        .await;
    assert_eq!(status, 200, "{graph}");
    let graph: Value = serde_json::from_str(&text_of(&graph))
        .unwrap_or_else(|e| panic!("read_graph ({e}): {graph}"));
    assert_eq!(graph["entities"][0]["name"], "mcpod", "{graph}");
    assert_eq!(
        graph["entities"][0]["observations"][0], "runs MCP servers on demand",
        "{graph}"
    );
    let second = inspect(&mcpod.container("memory")).expect("a new container");
    assert_ne!(first["Id"], second["Id"], "memory runs in a new container");
    assert_eq!(mcpod.status("memory").await["starts"], 2);

    eprintln!("seven servers: {:?}", began.elapsed());
    assert!(
        began.elapsed() < Duration::from_secs(120),
        "took {:?}",
        began.elapsed()
    );
}
