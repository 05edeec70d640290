//! A runtime held in memory, for tests: each "container" is an in-process MCP
//! server speaking newline-delimited JSON-RPC over in-memory pipes
//! (`tokio::io::duplex` for stdin, a channel for stdout and stderr).
//! Everything above the [`Runtime`] trait — the stdio bridge, the server
//! lifecycle, sessions, the reconciler, the HTTP router — runs exactly as over
//! Podman; only the container is fake. So the lifecycle and transport rules are
//! tested in-process in milliseconds, and the real-Podman suite is kept for
//! what only real containers show.
//!
//! The runtime records what it was asked to do ([`Record`]) and what each
//! instance read from its stdin ([`InstanceRecord`]) for tests to assert on.
//!
//! The in-process server mirrors `tests/fixtures/fake_mcp.py`. Its tools:
//! `echo {text}`; `whoami` (its container id and a pid unique per instance);
//! `sleep {ms}` (honours `notifications/cancelled`); `progress {count}` (that
//! many `notifications/progress` with the request's token, then the answer);
//! `log {text}` (a `notifications/message`, then the answer); `elicit
//! {message}` and `sample {prompt}` (ask the client with `elicitation/create` /
//! `sampling/createMessage` and return its whole answer as the tool's text, so
//! a test sees who answered; `after_ms` delays the question, so that several
//! calls are in flight when it is asked); `crash {code}` (the process exits mid-request).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Attached, Managed, Output, Runtime};
use crate::workload::Workload;
use crate::{Error, Result};

/// Room in the stdin pipe; a full pipe makes the writer wait, as a real one does.
const STDIN_PIPE_BYTES: usize = 64 * 1024;
/// Exit code of a process that was killed (128 + SIGKILL).
const KILLED: i32 = 137;
/// How many stderr lines `exit_reason` quotes.
const EXIT_REASON_LINES: usize = 5;

/// How an in-process server behaves; set per server or for the whole runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Behaviour {
    /// A well-behaved MCP server.
    #[default]
    Serve,
    /// `start` fails with this message (as a missing image makes Podman fail).
    FailStart(String),
    /// Starts, but never answers `initialize`.
    NoInitialize,
    /// Writes a line to stderr and exits with code 3 before reading anything.
    ExitAtStart,
    /// Answers `initialize`, then nothing: a hung server.
    Deaf,
    /// Ignores the end of its stdin: stopping it waits out the grace period and kills it.
    Stubborn,
}

/// One thing the runtime was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Remove,
    Pause,
    Resume,
}

/// What the runtime was asked to do, on which container key, for which server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub action: Action,
    pub key: String,
    pub server: String,
}

/// A snapshot of one instance (one process) the runtime started.
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub key: String,
    pub server: String,
    pub container_id: String,
    /// Unique per instance, like a process id: tells a new instance from a reused one.
    pub pid: u64,
    /// Every message it read from its stdin, in order.
    pub received: Vec<Value>,
    /// `None` while it runs.
    pub exit_code: Option<i32>,
}

/// A [`Runtime`] whose containers are in-process MCP servers.
pub struct MemoryRuntime {
    state: Mutex<State>,
    /// `false` while a test holds starts: they are recorded, then wait.
    starts_open: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    default_behaviour: Behaviour,
    behaviours: HashMap<String, Behaviour>,
    containers: BTreeMap<String, Container>,
    /// Every process ever started, oldest first.
    processes: Vec<Arc<Process>>,
    records: Vec<Record>,
    next_id: u64,
}

struct Container {
    id: String,
    server: String,
    spec_hash: String,
    /// The last process started in it (running or not).
    process: Option<Arc<Process>>,
}

impl Default for MemoryRuntime {
    fn default() -> Self {
        MemoryRuntime {
            state: Mutex::new(State::default()),
            starts_open: watch::Sender::new(true),
        }
    }
}

impl MemoryRuntime {
    pub fn new() -> Self {
        Self::default()
    }

    /// How every server behaves unless [`MemoryRuntime::set_behaviour`] says otherwise.
    pub fn set_default_behaviour(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().default_behaviour = behaviour;
    }

    /// How the server named `server` (its MCPServer name) behaves from its next start.
    pub fn set_behaviour(&self, server: &str, behaviour: Behaviour) {
        let mut state = self.state.lock().unwrap();
        state.behaviours.insert(server.to_string(), behaviour);
    }

    /// Starts are recorded, then wait until [`MemoryRuntime::release_starts`]:
    /// a test can act while a start is under way.
    pub fn hold_starts(&self) {
        self.starts_open.send_replace(false);
    }

    pub fn release_starts(&self) {
        self.starts_open.send_replace(true);
    }

    /// Everything the runtime was asked to do, in order.
    pub fn records(&self) -> Vec<Record> {
        self.state.lock().unwrap().records.clone()
    }

    /// How many times `action` was asked for server `server` (any of its keys).
    pub fn count(&self, server: &str, action: Action) -> usize {
        let state = self.state.lock().unwrap();
        state
            .records
            .iter()
            .filter(|r| r.server == server && r.action == action)
            .count()
    }

    pub fn starts(&self, server: &str) -> usize {
        self.count(server, Action::Start)
    }

    pub fn stops(&self, server: &str) -> usize {
        self.count(server, Action::Stop)
    }

    pub fn removes(&self, server: &str) -> usize {
        self.count(server, Action::Remove)
    }

    /// How many instances are running, of every server.
    pub fn running(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.processes.iter().filter(|p| p.is_running()).count()
    }

    /// Every instance ever started for `server`, oldest first.
    pub fn instances(&self, server: &str) -> Vec<InstanceRecord> {
        let state = self.state.lock().unwrap();
        state
            .processes
            .iter()
            .filter(|p| p.server == server)
            .map(|p| p.record())
            .collect()
    }

    /// Kills the running instance under `key` from outside (as `podman kill`
    /// does); returns whether one was running.
    pub fn kill(&self, key: &str) -> bool {
        let process = self.process(key).filter(|p| p.is_running());
        if let Some(process) = &process {
            process.log("killed");
            process.exit(KILLED);
        }
        process.is_some()
    }

    /// Whether the instance under `key` is paused now.
    pub fn is_paused(&self, key: &str) -> bool {
        self.process(key).is_some_and(|p| *p.frozen.borrow())
    }

    fn freeze(&self, key: &str, action: Action, frozen: bool) -> Result<()> {
        let process = {
            let mut state = self.state.lock().unwrap();
            Self::record(&mut state, action, key);
            state.containers.get(key).and_then(|c| c.process.clone())
        };
        match process.filter(|p| p.is_running()) {
            Some(process) => {
                process.frozen.send_replace(frozen);
                Ok(())
            }
            None => Err(Error::Runtime(format!(
                "{key}: no running container to {action:?}"
            ))),
        }
    }

    fn process(&self, key: &str) -> Option<Arc<Process>> {
        let state = self.state.lock().unwrap();
        state.containers.get(key).and_then(|c| c.process.clone())
    }

    fn record(state: &mut State, action: Action, key: &str) {
        // A key whose start failed has no container, but its start was recorded.
        let server = match state.containers.get(key) {
            Some(container) => container.server.clone(),
            None => state
                .records
                .iter()
                .rev()
                .find(|r| r.key == key)
                .map(|r| r.server.clone())
                .unwrap_or_default(),
        };
        state.records.push(Record {
            action,
            key: key.to_string(),
            server,
        });
    }

    async fn wait_until_starts_open(&self) {
        let mut open = self.starts_open.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = open.wait_for(|open| *open).await;
    }

    /// Creates (or reuses, when the spec is unchanged) the container under
    /// `key` and a new process in it; a process still running there is killed.
    fn create_process(
        &self,
        key: &str,
        workload: &Workload,
        behaviour: Behaviour,
    ) -> (
        Arc<Process>,
        mpsc::UnboundedReceiver<std::io::Result<Output>>,
    ) {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let pid = state.next_id;
        let reusable = state
            .containers
            .get(key)
            .filter(|c| c.spec_hash == workload.spec_hash)
            .map(|c| c.id.clone());
        let container_id = reusable.unwrap_or_else(|| format!("memory{pid:06}"));
        let (output, output_rx) = mpsc::unbounded_channel();
        let process = Arc::new(Process {
            key: key.to_string(),
            server: workload.name.clone(),
            container_id: container_id.clone(),
            pid,
            behaviour,
            output: Mutex::new(Some(output)),
            exit_code: Mutex::new(None),
            exited: CancellationToken::new(),
            frozen: watch::Sender::new(false),
            received: Mutex::new(vec![]),
            stderr: Mutex::new(vec![]),
            asked: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            next_ask: AtomicU64::new(1),
            grown: Mutex::new(vec![]),
        });
        let previous = state.containers.insert(
            key.to_string(),
            Container {
                id: container_id,
                server: workload.name.clone(),
                spec_hash: workload.spec_hash.clone(),
                process: Some(process.clone()),
            },
        );
        state.processes.push(process.clone());
        drop(state);
        if let Some(old) = previous.and_then(|c| c.process) {
            old.exit(KILLED);
        }
        (process, output_rx)
    }
}

#[async_trait]
impl Runtime for MemoryRuntime {
    async fn start(&self, key: &str, workload: &Workload) -> Result<Attached> {
        let behaviour = {
            let mut state = self.state.lock().unwrap();
            state.records.push(Record {
                action: Action::Start,
                key: key.to_string(),
                server: workload.name.clone(),
            });
            state
                .behaviours
                .get(&workload.name)
                .unwrap_or(&state.default_behaviour)
                .clone()
        };
        self.wait_until_starts_open().await;
        if let Behaviour::FailStart(message) = &behaviour {
            return Err(Error::Runtime(format!("{key}: {message}")));
        }
        let (process, mut output) = self.create_process(key, workload, behaviour);
        let (stdin, server_stdin) = tokio::io::duplex(STDIN_PIPE_BYTES);
        tokio::spawn(process.clone().run(server_stdin));
        Ok(Attached {
            container_id: process.container_id.clone(),
            output: futures::stream::poll_fn(move |cx| output.poll_recv(cx)).boxed(),
            stdin: Box::pin(stdin),
        })
    }

    async fn stop(&self, key: &str, grace: Duration) -> Result<()> {
        let process = {
            let mut state = self.state.lock().unwrap();
            Self::record(&mut state, Action::Stop, key);
            state.containers.get(key).and_then(|c| c.process.clone())
        };
        if let Some(process) = process {
            // By now its stdin is closed: a well-behaved server exits by itself.
            if tokio::time::timeout(grace, process.exited.cancelled())
                .await
                .is_err()
            {
                process.exit(KILLED);
            }
        }
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let container = {
            let mut state = self.state.lock().unwrap();
            Self::record(&mut state, Action::Remove, key);
            state.containers.remove(key)
        };
        if let Some(process) = container.and_then(|c| c.process) {
            process.exit(KILLED);
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Managed>> {
        let state = self.state.lock().unwrap();
        Ok(state
            .containers
            .iter()
            .map(|(key, c)| Managed {
                key: key.clone(),
                server: c.server.clone(),
                id: c.id.clone(),
                running: c.process.as_ref().is_some_and(|p| p.is_running()),
                paused: c.process.as_ref().is_some_and(|p| *p.frozen.borrow()),
                spec_hash: c.spec_hash.clone(),
            })
            .collect())
    }

    async fn pause(&self, key: &str) -> Result<()> {
        self.freeze(key, Action::Pause, true)
    }

    async fn resume(&self, key: &str) -> Result<()> {
        self.freeze(key, Action::Resume, false)
    }

    async fn exit_reason(&self, key: &str) -> Option<String> {
        let process = self.process(key)?;
        let code = (*process.exit_code.lock().unwrap())?;
        let mut reason = format!("exited with code {code}");
        let stderr = process.stderr.lock().unwrap();
        let tail = &stderr[stderr.len().saturating_sub(EXIT_REASON_LINES)..];
        if !tail.is_empty() {
            reason.push_str(&format!("; last output: {}", tail.join(" | ")));
        }
        Some(reason)
    }
}

/// One in-process MCP server: what a container's process would be.
struct Process {
    key: String,
    server: String,
    container_id: String,
    pid: u64,
    behaviour: Behaviour,
    /// Its stdout and stderr; dropped when it exits, which ends the output.
    output: Mutex<Option<mpsc::UnboundedSender<std::io::Result<Output>>>>,
    exit_code: Mutex<Option<i32>>,
    exited: CancellationToken,
    /// `true` while paused: it reads nothing (what is written waits in the pipe).
    frozen: watch::Sender<bool>,
    received: Mutex<Vec<Value>>,
    stderr: Mutex<Vec<String>>,
    /// Requests it made of the client, by id, waiting for the answer.
    asked: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    /// Tool calls under way, by request id, so `notifications/cancelled` can stop them.
    calls: Mutex<HashMap<String, CancellationToken>>,
    next_ask: AtomicU64,
    /// Tools added by the `grow` tool, announced with `list_changed`.
    grown: Mutex<Vec<String>>,
}

/// What a tool call ends with.
enum Answer {
    Text(String),
    Error(i64, String),
    /// Nothing is sent: the call was cancelled, or the process died.
    Nothing,
}

/// JSON-RPC ids as map keys: `1` and `"1"` stay different.
fn id_key(id: &Value) -> String {
    id.to_string()
}

impl Process {
    fn is_running(&self) -> bool {
        !self.exited.is_cancelled()
    }

    fn record(&self) -> InstanceRecord {
        InstanceRecord {
            key: self.key.clone(),
            server: self.server.clone(),
            container_id: self.container_id.clone(),
            pid: self.pid,
            received: self.received.lock().unwrap().clone(),
            exit_code: *self.exit_code.lock().unwrap(),
        }
    }

    fn send(&self, message: &Value) {
        // serde_json never writes a raw newline: one message is one line.
        let line = format!("{message}\n");
        if let Some(output) = &*self.output.lock().unwrap() {
            let _ = output.send(Ok(Output::Stdout(Bytes::from(line))));
        }
    }

    fn log(&self, text: &str) {
        self.stderr.lock().unwrap().push(text.to_string());
        if let Some(output) = &*self.output.lock().unwrap() {
            let _ = output.send(Ok(Output::Stderr(Bytes::from(format!("{text}\n")))));
        }
    }

    /// The process ends: what it wrote is still read, then its output ends.
    fn exit(&self, code: i32) {
        let output = self.output.lock().unwrap().take();
        if output.is_some() {
            // Set before the output ends, so `exit_reason` finds it.
            *self.exit_code.lock().unwrap() = Some(code);
            debug!(key = %self.key, pid = self.pid, code, "in-memory server exited");
        }
        drop(output);
        self.exited.cancel();
    }

    async fn run(self: Arc<Self>, stdin: DuplexStream) {
        self.log("memory-mcp starting");
        if self.behaviour == Behaviour::ExitAtStart {
            self.log("memory-mcp: configured to fail at start");
            self.exit(3);
            return;
        }
        let mut lines = BufReader::new(stdin).lines();
        loop {
            let line = tokio::select! {
                line = lines.next_line() => line,
                () = self.exited.cancelled() => return,
            };
            // A frozen process runs nothing: the line waits until it thaws.
            let mut frozen = self.frozen.subscribe();
            tokio::select! {
                _ = frozen.wait_for(|frozen| !frozen) => {}
                () = self.exited.cancelled() => return,
            }
            match line {
                Ok(Some(line)) => self.handle_line(&line),
                Ok(None) | Err(_) => break,
            }
        }
        // Its stdin closed: a well-behaved server exits; a stubborn one waits to be killed.
        if self.behaviour == Behaviour::Stubborn {
            self.exited.cancelled().await;
        } else {
            self.exit(0);
        }
    }

    fn handle_line(self: &Arc<Self>, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            self.log(&format!("memory-mcp: not JSON on stdin: {line}"));
            return;
        };
        self.received.lock().unwrap().push(message.clone());
        let id = message.get("id").cloned();
        let Some(method) = message.get("method").and_then(Value::as_str) else {
            // The client's answer to a request this server made.
            let waiter = id.and_then(|id| self.asked.lock().unwrap().remove(&id_key(&id)));
            if let Some(waiter) = waiter {
                let _ = waiter.send(message);
            }
            return;
        };
        let ignored = match self.behaviour {
            Behaviour::NoInitialize => method == "initialize",
            Behaviour::Deaf => method != "initialize",
            _ => false,
        };
        if ignored {
            return;
        }
        match id {
            Some(id) => self.request(id, method, &message),
            None => self.notification(method, &message),
        }
    }

    fn request(self: &Arc<Self>, id: Value, method: &str, message: &Value) {
        let result = match method {
            "initialize" => json!({
                "protocolVersion": message.pointer("/params/protocolVersion").cloned().unwrap_or(Value::Null),
                "capabilities": {
                    "tools": {"listChanged": true},
                    "resources": {"subscribe": true},
                    "logging": {},
                },
                "serverInfo": {"name": "memory-mcp", "version": "1.0.0"},
            }),
            "ping" | "resources/subscribe" | "resources/unsubscribe" | "logging/setLevel" => {
                json!({})
            }
            "tools/list" => {
                let mut tools = tools();
                for name in self.grown.lock().unwrap().iter() {
                    tools.as_array_mut().unwrap().push(json!({"name": name,
                        "description": "Added by grow", "inputSchema": {"type": "object"}}));
                }
                json!({"tools": tools})
            }
            "tools/call" => {
                let cancel = CancellationToken::new();
                self.calls
                    .lock()
                    .unwrap()
                    .insert(id_key(&id), cancel.clone());
                let params = message.get("params").cloned().unwrap_or(Value::Null);
                tokio::spawn(self.clone().call_tool(id, params, cancel));
                return;
            }
            _ => {
                let error = json!({"code": -32601, "message": format!("no method {method}")});
                self.send(&json!({"jsonrpc": "2.0", "id": id, "error": error}));
                return;
            }
        };
        self.send(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }

    fn notification(&self, method: &str, message: &Value) {
        if method == "notifications/cancelled" {
            let call = message
                .pointer("/params/requestId")
                .and_then(|id| self.calls.lock().unwrap().remove(&id_key(id)));
            if let Some(call) = call {
                call.cancel();
            }
        }
    }

    async fn call_tool(self: Arc<Self>, id: Value, params: Value, cancel: CancellationToken) {
        let answer = tokio::select! {
            answer = self.tool(&params) => answer,
            // MCP: a cancelled request gets no response.
            () = cancel.cancelled() => Answer::Nothing,
            () = self.exited.cancelled() => Answer::Nothing,
        };
        self.calls.lock().unwrap().remove(&id_key(&id));
        match answer {
            Answer::Text(text) => self.send(&json!({"jsonrpc": "2.0", "id": id, "result": {
                "content": [{"type": "text", "text": text}], "isError": false}})),
            Answer::Error(code, message) => self.send(&json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": code, "message": message}})),
            Answer::Nothing => {}
        }
    }

    async fn tool(&self, params: &Value) -> Answer {
        let args = &params["arguments"];
        let number = |name: &str, default: u64| args[name].as_u64().unwrap_or(default);
        let text = |name: &str| args[name].as_str().unwrap_or_default().to_string();
        match params["name"].as_str().unwrap_or_default() {
            "echo" => Answer::Text(text("text")),
            "whoami" => Answer::Text(
                json!({"container": self.container_id, "pid": self.pid, "key": self.key})
                    .to_string(),
            ),
            "sleep" => {
                tokio::time::sleep(Duration::from_millis(number("ms", 1000))).await;
                Answer::Text("slept".into())
            }
            "progress" => {
                let count = number("count", 1);
                if let Some(token) = params.pointer("/_meta/progressToken") {
                    for n in 1..=count {
                        self.send(
                            &json!({"jsonrpc": "2.0", "method": "notifications/progress",
                            "params": {"progressToken": token, "progress": n, "total": count}}),
                        );
                    }
                }
                Answer::Text(format!("sent {count}"))
            }
            "log" => {
                self.send(&json!({"jsonrpc": "2.0", "method": "notifications/message",
                    "params": {"level": "info", "logger": "memory-mcp", "data": text("text")}}));
                Answer::Text("logged".into())
            }
            "elicit" => {
                self.pause(number("after_ms", 0)).await;
                let params = json!({"message": text("message"), "requestedSchema": {
                    "type": "object", "properties": {"answer": {"type": "string"}}}});
                Answer::Text(self.ask("elicitation/create", params).await.to_string())
            }
            "sample" => {
                self.pause(number("after_ms", 0)).await;
                let params = json!({"maxTokens": 16, "messages": [
                    {"role": "user", "content": {"type": "text", "text": text("prompt")}}]});
                Answer::Text(self.ask("sampling/createMessage", params).await.to_string())
            }
            "grow" => {
                self.grown.lock().unwrap().push(text("name"));
                self.send(&json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
                Answer::Text("grown".into())
            }
            "crash" => {
                self.log("memory-mcp: crashing on request");
                self.exit(i32::try_from(number("code", 7)).unwrap_or(7));
                Answer::Nothing
            }
            other => Answer::Error(-32602, format!("unknown tool {other}")),
        }
    }

    async fn pause(&self, millis: u64) {
        if millis > 0 {
            tokio::time::sleep(Duration::from_millis(millis)).await;
        }
    }

    /// Sends a request to the client and waits for its answer (the whole response).
    async fn ask(&self, method: &str, params: Value) -> Value {
        let id = json!(format!(
            "ask-{}",
            self.next_ask.fetch_add(1, Ordering::Relaxed)
        ));
        let (answer, answered) = oneshot::channel();
        self.asked.lock().unwrap().insert(id_key(&id), answer);
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        answered.await.unwrap_or(Value::Null)
    }
}

fn tools() -> Value {
    let object = |properties: Value| json!({"type": "object", "properties": properties});
    let tool = |name: &str, description: &str, properties: Value| json!({"name": name, "description": description, "inputSchema": object(properties)});
    json!([
        tool("echo", "Echo text", json!({"text": {"type": "string"}})),
        tool("whoami", "Container id and pid of this instance", json!({})),
        tool(
            "sleep",
            "Answer after ms milliseconds",
            json!({"ms": {"type": "integer"}})
        ),
        tool(
            "progress",
            "Send count progress notifications, then answer",
            json!({"count": {"type": "integer"}})
        ),
        tool(
            "log",
            "Send a log message, then answer",
            json!({"text": {"type": "string"}})
        ),
        tool(
            "elicit",
            "Ask the client (elicitation) and return its answer",
            json!({"message": {"type": "string"}, "after_ms": {"type": "integer"}})
        ),
        tool(
            "sample",
            "Ask the client (sampling) and return its answer",
            json!({"prompt": {"type": "string"}, "after_ms": {"type": "integer"}})
        ),
        tool(
            "grow",
            "Add a tool called name, then say the tool list changed",
            json!({"name": {"type": "string"}})
        ),
        tool("crash", "Exit now", json!({"code": {"type": "integer"}})),
    ])
}
