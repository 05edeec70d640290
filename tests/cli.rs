//! The commands a person types, run as the real `mcpod` binary: relative path
//! options, `get`/`status` against a running mcpod, `validate` with the errors
//! `serve` reports, `connect`, `completions` and `logs -f`. Needs Podman and
//! the fixture image (`make test-images`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{manifest, unique_instance, Mcpod, FIXTURE_IMAGE};
use serde_json::{json, Value};

fn run_mcpod(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Lines a child prints, read on a thread so a test can wait with a deadline.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    /// The next line that satisfies `wanted`, or a panic naming what came instead.
    fn wait_for(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = vec![];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.0.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line with {what}; got {seen:#?}"),
            }
        }
    }
}

/// Kills a child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The case: `--data-dir state` (relative) with no Podman service
/// running, so mcpod starts its own at `state/run/podman.sock`. Before, the
/// socket URL `unix://state/…` read `state` as a host name and start-up hung.
#[test]
fn relative_data_dir_and_manifests_work_with_the_podman_service_mcpod_starts() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("m")).unwrap();
    std::fs::write(
        cwd.path().join("m/fixture.yaml"),
        manifest("fixture", FIXTURE_IMAGE, ""),
    )
    .unwrap();
    let instance = unique_instance();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .current_dir(cwd.path())
        .args([
            "serve",
            "--manifests",
            "m",
            "--data-dir",
            "state",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--instance", &instance])
        // No service to find: mcpod must start its own, under the relative data dir.
        .env_remove("CONTAINER_HOST")
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(cwd.path().join("mcpod.log")).unwrap())
        .spawn()
        .unwrap();
    let lines = Lines::of(&mut child);
    let child = Killed(child);
    let _cleanup = scopeguard(instance.clone());
    let line = lines.wait_for("the listening URL", |l| {
        l.starts_with("mcpod listening on ")
    });
    let url = line.trim_start_matches("mcpod listening on ").to_string();
    assert!(cwd.path().join("state/run/podman.sock").exists());
    let log = std::fs::read_to_string(cwd.path().join("mcpod.log")).unwrap();
    assert!(
        log.contains("starting one"),
        "mcpod started its own service: {log}"
    );
    // A server really runs through that service.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    let answer = curl_post(&format!("{url}/mcp/fixture"), &body);
    assert_eq!(answer["result"]["tools"][0]["name"], "echo", "{answer}");
    // The data dir is where it was asked to be, relative to where mcpod ran.
    assert!(cwd
        .path()
        .join("state/logs/containers/fixture.log")
        .exists());
    drop(child);
}

/// Removes an instance's containers when dropped.
struct InstanceGuard(String);
impl Drop for InstanceGuard {
    fn drop(&mut self) {
        common::remove_instance_containers(&self.0);
    }
}
fn scopeguard(instance: String) -> InstanceGuard {
    InstanceGuard(instance)
}

fn curl_post(url: &str, body: &str) -> Value {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn get_shows_the_servers_of_a_running_mcpod_as_table_json_and_yaml() {
    let mcpod = Mcpod::start(
        &[(
            "a.yaml",
            manifest("fixture", FIXTURE_IMAGE, "idleTimeout: 300s"),
        )],
        &[],
    );
    let url = mcpod.url.clone();
    let table = tokio::task::spawn_blocking({
        let url = url.clone();
        move || mcpod_ok(&["get", "--url", &url])
    })
    .await
    .unwrap();
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for column in [
        "NAME",
        "STATUS",
        "IMAGE",
        "SESSIONS",
        "LAST ACTIVITY",
        "IDLE STOP IN",
        "RESTARTS",
        "MESSAGE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["fixture", "stopped", FIXTURE_IMAGE], "{table}");

    let (status, _) = mcpod.post("/servers/fixture/start").await;
    assert_eq!(status, 200);
    let url2 = url.clone();
    let (json_text, yaml_text, alias) = tokio::task::spawn_blocking(move || {
        (
            mcpod_ok(&["get", "fixture", "-o", "json", "--url", &url2]),
            mcpod_ok(&["get", "-o", "yaml", "--url", &url2]),
            mcpod_ok(&["status", "--url", &url2]),
        )
    })
    .await
    .unwrap();
    let one: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(one["status"], "running");
    assert_eq!(one["idleTimeoutSeconds"], 300);
    let all: Value = serde_yaml::from_str(&yaml_text).unwrap();
    assert_eq!(all[0]["name"], "fixture");
    // Running, idle for 300 s: the countdown shows minutes left.
    let row = alias.lines().nth(1).unwrap();
    assert!(
        row.contains("running") && (row.contains(" 4m") || row.contains(" 5m0s")),
        "{alias}"
    );

    // Watching: a stop through the API is printed as a new row.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(["get", "-w", "--interval", "100ms", "--url", &url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(&mut watch);
    let _watch = Killed(watch);
    lines.wait_for("the running row", |l| {
        l.starts_with("fixture") && l.contains("running")
    });
    let (status, _) = mcpod.post("/servers/fixture/stop").await;
    assert_eq!(status, 200);
    tokio::task::spawn_blocking(move || {
        lines.wait_for("the stopped row", |l| {
            l.starts_with("fixture") && l.contains("stopped")
        })
    })
    .await
    .unwrap();

    let missing = tokio::task::spawn_blocking(move || run_mcpod(&["get", "nope", "--url", &url]))
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("no MCP server named 'nope'"),
        "{}",
        stderr(&missing)
    );
}

fn mcpod_ok(args: &[&str]) -> String {
    let output = run_mcpod(args);
    assert!(
        output.status.success(),
        "mcpod {args:?}: {}",
        stderr(&output)
    );
    stdout(&output)
}

#[test]
fn get_without_a_running_mcpod_says_where_it_looked() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = run_mcpod(&["get", "--url", &format!("http://127.0.0.1:{port}")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("no mcpod answers at"),
        "{}",
        stderr(&output)
    );
}

/// `validate` reports, word for word, the problems `serve` shows in /health.
#[tokio::test(flavor = "multi_thread")]
async fn validate_gives_the_errors_serve_gives_and_an_exit_status() {
    let files = [
        ("good.yaml", manifest("good", FIXTURE_IMAGE, "")),
        (
            "memory.yaml",
            manifest(
                "memory",
                FIXTURE_IMAGE,
                "resources: {limits: {memory: lots}}",
            ),
        ),
        (
            "typo.yaml",
            manifest("typo", FIXTURE_IMAGE, "idleTimout: 5s"),
        ),
        ("dup.yaml", manifest("good", FIXTURE_IMAGE, "")),
    ];
    let mcpod = Mcpod::start(&files, &[]);
    let (_, health) = mcpod.get("/health").await;
    let problems: Vec<String> = serde_json::from_value(health["problems"].clone()).unwrap();
    assert_eq!(problems.len(), 3, "{problems:?}");
    let dir = mcpod.manifests.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_mcpod"))
            .arg("validate")
            .arg(&dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let reported = stderr(&output);
    for problem in &problems {
        assert!(
            reported.contains(&format!("invalid: {problem}")),
            "{problem}\nnot in\n{reported}"
        );
    }
    assert!(reported.contains("3 problems found"), "{reported}");

    // One valid file, and the shipped examples: exit 0, names listed.
    let good = mcpod.manifests.path().join("good.yaml");
    let output = mcpod_output(&["validate", good.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("1 valid MCPServer (good)"),
        "{}",
        stdout(&output)
    );
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let output = mcpod_output(&["validate", examples.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("7 valid MCPServers"),
        "{}",
        stdout(&output)
    );
    // For the cluster, valueFromFile is a problem the operator would report.
    let file = tempfile::tempdir().unwrap();
    std::fs::write(
        file.path().join("s.yaml"),
        manifest(
            "s",
            FIXTURE_IMAGE,
            "env: [{name: T, valueFromFile: /etc/hostname}]",
        ),
    )
    .unwrap();
    // On a Podman host the secrets directory decides (the policy `serve` applies).
    let refused = mcpod_output(&["validate", file.path().to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("refused by rule secrets-dir"),
        "{}",
        stderr(&refused)
    );
    assert!(mcpod_output(&[
        "validate",
        "--secrets-dir",
        "/etc",
        file.path().to_str().unwrap()
    ])
    .status
    .success());
    let output = mcpod_output(&[
        "validate",
        "--target",
        "kubernetes",
        file.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("valueFromFile reads a file on a Podman host"),
        "{}",
        stderr(&output)
    );
    let output = mcpod_output(&["validate", "/nonexistent/dir"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
}

fn mcpod_output(args: &[&str]) -> Output {
    run_mcpod(args)
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_prints_client_configuration_for_the_servers_mcpod_serves() {
    let mcpod = Mcpod::start(
        &[
            ("a.yaml", manifest("alpha", FIXTURE_IMAGE, "")),
            ("b.yaml", manifest("beta", FIXTURE_IMAGE, "")),
        ],
        &[],
    );
    let url = mcpod.url.clone();
    let (vscode, code, one) = tokio::task::spawn_blocking(move || {
        (
            run_mcpod(&["connect", "vscode", "--url", &url]),
            mcpod_ok(&["connect", "claude-code", "--url", &url]),
            mcpod_ok(&["connect", "cursor", "beta", "--url", &url]),
        )
    })
    .await
    .unwrap();
    assert!(vscode.status.success());
    assert!(
        stderr(&vscode).contains(".vscode/mcp.json"),
        "where it goes: {}",
        stderr(&vscode)
    );
    let config: Value = serde_json::from_str(&stdout(&vscode)).unwrap();
    let url = &mcpod.url;
    assert_eq!(
        config["servers"]["alpha"]["url"],
        format!("{url}/servers/alpha/mcp")
    );
    assert_eq!(config["servers"]["beta"]["type"], "http");
    assert!(
        code.contains(&format!(
            "claude mcp add --transport http beta {url}/servers/beta/mcp"
        )),
        "{code}"
    );
    let cursor: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(cursor["mcpServers"].as_object().unwrap().len(), 1);
}

#[test]
fn completions_are_printed_for_each_shell() {
    let bash = mcpod_ok(&["completions", "bash"]);
    assert!(
        bash.contains("complete -F _mcpod") && bash.contains("validate"),
        "{bash}"
    );
    assert!(mcpod_ok(&["completions", "zsh"]).starts_with("#compdef mcpod"));
    assert!(mcpod_ok(&["completions", "fish"]).contains("complete -c mcpod"));
    assert_eq!(run_mcpod(&["completions", "tcsh"]).status.code(), Some(2));
}

/// `logs -f` prints the tail, then appended lines, and carries on after a rotation.
#[test]
fn logs_follow_prints_new_lines_across_a_rotation() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("logs/containers");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("srv.log");
    std::fs::write(&log, "old 1\nold 2\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(["logs", "-f", "srv", "--tail", "1", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::of(&mut child);
    let _child = Killed(child);
    assert_eq!(lines.wait_for("the tail", |_| true), "old 2");
    let append = |path: &Path, text: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    append(&log, "new 1\n");
    assert_eq!(lines.wait_for("an appended line", |_| true), "new 1");
    std::fs::rename(&log, dir.join("srv.log.1")).unwrap();
    append(&log, "after rotation\n");
    assert_eq!(
        lines.wait_for("a line of the new file", |_| true),
        "after rotation"
    );
}
