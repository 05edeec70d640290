//! Test harness: runs the real `mcpod` binary against real Podman, each test
//! under its own instance name so tests never touch each other's containers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const FIXTURE_IMAGE: &str = "localhost/mcpod-test/fixture:latest";
pub const TIME_IMAGE: &str = "localhost/mcpod/time:latest";

/// One Podman service per test binary, shared by its tests; it exits by itself when idle.
pub fn podman_socket() -> &'static Path {
    static SOCKET: OnceLock<PathBuf> = OnceLock::new();
    SOCKET.get_or_init(|| {
        let socket =
            std::env::temp_dir().join(format!("mcpod-test-podman-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        // Not waited for: it exits by itself after 120 s without clients.
        #[allow(clippy::zombie_processes)]
        let _service = Command::new("podman")
            .args(["system", "service", "--time=120"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("podman must be installed (make setup)");
        wait_until(Duration::from_secs(20), "podman service socket", || {
            socket.exists()
        });
        socket
    })
}

pub fn unique_instance() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub async fn wait_for(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An MCPServer manifest.
pub fn manifest(name: &str, image: &str, extra_spec: &str) -> String {
    let mut text = format!(
        "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata:\n  name: {name}\nspec:\n  image: {image}\n"
    );
    for line in extra_spec.lines().filter(|l| !l.trim().is_empty()) {
        text.push_str(&format!("  {line}\n"));
    }
    text
}

pub struct Mcpod {
    child: Option<Child>,
    pub url: String,
    pub instance: String,
    pub manifests: tempfile::TempDir,
    pub data: tempfile::TempDir,
    pub http: reqwest::Client,
    pub log: PathBuf,
}

impl Mcpod {
    /// Starts mcpod serving `files` (name → YAML) with extra CLI args.
    pub fn start(files: &[(&str, String)], args: &[&str]) -> Mcpod {
        let manifests = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(manifests.path().join(name), text).unwrap();
        }
        let data = tempfile::tempdir().unwrap();
        Self::start_in(manifests, data, &unique_instance(), args)
    }

    pub fn start_in(
        manifests: tempfile::TempDir,
        data: tempfile::TempDir,
        instance: &str,
        args: &[&str],
    ) -> Mcpod {
        let log = data.path().join("mcpod.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcpod"))
            .arg("serve")
            .arg("--manifests")
            .arg(manifests.path())
            .args(["--listen", "127.0.0.1:0", "--instance", instance])
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env(
                "CONTAINER_HOST",
                format!("unix://{}", podman_socket().display()),
            )
            .env("RUST_LOG", "info,mcpod=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("mcpod listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "mcpod did not start: {line:?}\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })
            .to_string();
        Mcpod {
            child: Some(child),
            url,
            instance: instance.to_string(),
            manifests,
            data,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            log,
        }
    }

    /// mcpod's process id (for its memory in `/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("mcpod is running").id()
    }

    /// mcpod's resident memory in MiB, from `/proc/PID/status`.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib / 1024.0
    }

    pub fn container(&self, server: &str) -> String {
        format!("mcpod-{}-{server}", self.instance)
    }

    /// POSTs one JSON-RPC message (or raw text) to `/mcp/{server}` the way the
    /// original system's API is used: plain JSON, no session.
    pub async fn mcp(&self, server: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/mcp/{server}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn call_tool(
        &self,
        server: &str,
        id: Value,
        tool: &str,
        arguments: Value,
    ) -> (u16, Value) {
        let request = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}});
        self.mcp(server, request.to_string()).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(format!("{}{path}", self.url)))
            .await
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        self.send(self.http.post(format!("{}{path}", self.url)))
            .await
    }

    /// The body of a text endpoint (`/metrics`, `/servers/{name}/logs`).
    pub async fn get_text(&self, path: &str) -> String {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        response.text().await.unwrap()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn status(&self, server: &str) -> Value {
        self.get(&format!("/servers/{server}")).await.1
    }

    pub async fn wait_status(&self, server: &str, wanted: &str, limit: Duration) -> Value {
        let mut last = Value::Null;
        wait_for(limit, &format!("{server} to be {wanted}"), async || {
            last = self.status(server).await;
            last["status"] == wanted
        })
        .await;
        last
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills mcpod without letting it clean up, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops mcpod gracefully (SIGTERM) and waits for it; kills it after 30 s.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    eprintln!("mcpod did not exit 30 s after SIGTERM; killing it");
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }

    /// Hands the manifests and data directories over, for a restarted mcpod.
    pub fn into_dirs(mut self) -> (tempfile::TempDir, tempfile::TempDir, String) {
        self.kill();
        let manifests = std::mem::replace(&mut self.manifests, tempfile::tempdir().unwrap());
        let data = std::mem::replace(&mut self.data, tempfile::tempdir().unwrap());
        let instance = std::mem::replace(&mut self.instance, unique_instance());
        (manifests, data, instance)
    }
}

impl Drop for Mcpod {
    fn drop(&mut self) {
        self.terminate();
        remove_instance_containers(&self.instance);
        if std::thread::panicking() {
            eprintln!("---- mcpod log ----\n{}", self.logs());
        }
    }
}

pub fn remove_instance_containers(instance: &str) {
    let _ = Command::new("podman")
        .args([
            "rm",
            "-f",
            "-t",
            "0",
            "--filter",
            &format!("label=mcpod.dev/instance={instance}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `podman inspect` of one container, or None when it does not exist.
pub fn inspect(container: &str) -> Option<Value> {
    let output = Command::new("podman")
        .args(["inspect", container])
        .output()
        .unwrap();
    if !output.status.success() {
        return None;
    }
    let list: Value = serde_json::from_slice(&output.stdout).unwrap();
    list.get(0).cloned()
}

/// Containers of one mcpod instance, by name.
pub fn containers_of(instance: &str) -> Vec<String> {
    let output = Command::new("podman")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("label=mcpod.dev/instance={instance}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn text_of(response: &Value) -> String {
    response["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Runs one scenario of an official SDK client (tests/clients), returning the JSON it printed.
pub fn sdk_client(language: &str, scenario: &str, url: &str) -> Value {
    sdk_client_with(language, scenario, url, &[])
}

/// [`sdk_client`] with extra environment variables for the scenario.
pub fn sdk_client_with(language: &str, scenario: &str, url: &str, env: &[(&str, &str)]) -> Value {
    let clients = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let mut command = match language {
        "python" => {
            let mut c = Command::new(clients.join(".venv/bin/python"));
            c.arg(clients.join("py_client.py"));
            c
        }
        "typescript" => {
            let mut c = Command::new("node");
            c.arg(clients.join("ts_client.mjs"));
            c
        }
        // The TypeScript SDK v2 (`@modelcontextprotocol/client`).
        "typescript2" => {
            let mut c = Command::new("node");
            c.arg(clients.join("ts2_client.mjs"));
            c
        }
        other => panic!("no {other} client"),
    };
    let output = command
        .args([scenario, url])
        .envs(env.iter().copied())
        .output()
        .expect("test clients are installed (make test-clients)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{language} client {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{language} client printed no JSON ({e}): {stdout}"))
}

/// Runs the MCP Inspector CLI against an HTTP endpoint; returns its stdout.
pub fn inspector(url: &str, args: &[&str]) -> String {
    // The CLI finds its own package.json relative to the working directory.
    let build = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients/node_modules/@modelcontextprotocol/inspector-cli/build");
    let output = Command::new("node")
        .current_dir(&build)
        .arg("index.js")
        .args([url, "--transport", "http"])
        .args(args)
        .output()
        .expect("inspector CLI installed (make test-clients)");
    assert!(
        output.status.success(),
        "inspector failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One SSE event as a client sees it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Value,
    /// The reconnection delay the server suggests (`retry:`), in ms.
    pub retry: Option<String>,
}

impl Event {
    /// A stream's priming event: an id to resume from, and no message.
    pub fn is_priming(&self) -> bool {
        self.id.is_some() && self.data == Value::String(String::new())
    }
}

/// Parses complete SSE events out of `buffer`, leaving any partial one.
pub fn take_events(buffer: &mut String) -> Vec<Event> {
    let mut events = vec![];
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let (mut id, mut event, mut data, mut retry) = (None, None, String::new(), None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("retry:") {
                retry = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("id:") {
                id = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("event:") {
                event = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if id.is_some() || !data.is_empty() {
            let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
            events.push(Event {
                id,
                event,
                data,
                retry,
            });
        }
    }
    events
}

/// A hand-driven Streamable HTTP client, for the transport rules SDKs hide.
pub struct RawClient {
    pub http: reqwest::Client,
    pub url: String,
    pub session: Option<String>,
    pub version: String,
}

impl RawClient {
    pub fn new(url: String) -> Self {
        RawClient {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            url,
            session: None,
            version: "2025-06-18".into(),
        }
    }

    pub fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, &self.url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", &self.version);
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        request
    }

    /// A POST from a client that accepts only JSON: what the server sends while
    /// handling it goes to the session's GET stream.
    pub fn json_only_post(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(&self.url)
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", &self.version)
            .body(body.to_string());
        if let Some(session) = &self.session {
            request = request.header("mcp-session-id", session);
        }
        request
    }

    pub async fn initialize(&mut self, capabilities: Value) -> Value {
        let body = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion": self.version, "capabilities": capabilities,
            "clientInfo": {"name": "raw", "version": "1"}}});
        let response = self
            .request(reqwest::Method::POST)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        self.session = response
            .headers()
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_string());
        assert!(self.session.is_some(), "initialize must issue a session");
        let result: Value = response.json().await.unwrap();
        let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        let status = self
            .request(reqwest::Method::POST)
            .body(initialized.to_string())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 202);
        result
    }

    /// POSTs a message; returns the status and every JSON-RPC message in the reply
    /// (one for JSON, all events for SSE).
    pub async fn post(&self, body: &Value) -> (u16, Vec<Value>) {
        self.post_with(body, &[]).await
    }

    /// Like [`RawClient::post`], with extra headers.
    pub async fn post_with(&self, body: &Value, headers: &[(&str, &str)]) -> (u16, Vec<Value>) {
        let mut request = self.request(reqwest::Method::POST);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.body(body.to_string()).send().await.unwrap();
        let status = response.status().as_u16();
        let is_sse = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
        let mut text = response.text().await.unwrap();
        if is_sse {
            (
                status,
                take_events(&mut text)
                    .into_iter()
                    .filter(|e| !e.is_priming())
                    .map(|e| e.data)
                    .collect(),
            )
        } else if text.is_empty() {
            (status, vec![])
        } else {
            (
                status,
                vec![serde_json::from_str(&text).unwrap_or(Value::String(text))],
            )
        }
    }
}

/// Running containers of one mcpod instance, by name.
#[allow(dead_code)]
pub fn running_containers(instance: &str) -> Vec<String> {
    let output = Command::new("podman")
        .args(["ps", "--format", "{{.Names}}", "--filter"])
        .arg(format!("label=mcpod.dev/instance={instance}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `name`s of a list result's `key` items (`tools`, `prompts`).
#[allow(dead_code)]
pub fn names_in(answer: &Value, key: &str) -> Vec<String> {
    answer["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key}: {answer}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[allow(dead_code)]
impl Mcpod {
    /// How often each of `servers` has started.
    pub async fn starts(&self, servers: &[&str]) -> Vec<u64> {
        let mut starts = vec![];
        for name in servers {
            starts.push(self.status(name).await["starts"].as_u64().unwrap());
        }
        starts
    }

    /// Runs each of `servers` once (a `tools/list` on its own endpoint), waits
    /// until their catalogs are on disk, they have stopped when idle and no
    /// container runs; returns their tools as `/mcp` names them (`<server>__<tool>`).
    pub async fn learn_catalogs_then_stop(&self, servers: &[&str]) -> Vec<String> {
        let mut own = vec![];
        for name in servers {
            let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
            let (status, answer) = self.mcp(name, list.to_string()).await;
            assert_eq!(status, 200, "{name}: {answer}");
            own.extend(
                names_in(&answer, "tools")
                    .into_iter()
                    .map(|t| format!("{name}__{t}")),
            );
        }
        let catalog = self.data.path().join("catalog");
        let recorded = || {
            std::fs::read_dir(&catalog).map_or(0, |d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "json")
                })
                .count()
            })
        };
        wait_until(Duration::from_secs(60), "the catalogs on disk", || {
            recorded() == servers.len()
        });
        for name in servers {
            self.wait_status(name, "stopped", Duration::from_secs(60))
                .await;
        }
        wait_until(Duration::from_secs(30), "no running container", || {
            running_containers(&self.instance).is_empty()
        });
        own
    }
}

/// The records of mcpod's audit log under `data`, once `complete` holds for
/// them: records reach the file in order within `WRITTEN_WITHIN`, so waiting
/// for the last decision a test made means every earlier one is there too.
pub fn audit_records(data: &Path, complete: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let path = data.join("logs/audit/audit.log");
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let records = read();
        if complete(&records) || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
