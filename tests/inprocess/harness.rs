//! mcpod served in-process over a [`MemoryRuntime`]: the real reconciler,
//! server lifecycle, stdio bridge, sessions and HTTP router on 127.0.0.1:0 in
//! the test's own tokio runtime; only the containers are fake. Tests talk HTTP
//! to it and read the runtime's records.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mcpod::manifests::{self, Loaded, Manifests};
use mcpod::reconcile::Reconciler;
use mcpod::router::{self, RouterConfig};
use mcpod::runtime::memory::MemoryRuntime;
use mcpod::server::Settings;
use mcpod::workload::Defaults;
use serde_json::{json, Value};

use crate::common::{take_events, wait_for, RawClient};

/// What an in-process server's manifests name as image (nothing pulls it).
pub const IMAGE: &str = "localhost/mcpod-test/memory:latest";
/// Longest a test waits for something that should take milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// An MCPServer manifest for an in-process server; `extra` is spec YAML.
pub fn server(name: &str, extra: &str) -> String {
    crate::common::manifest(name, IMAGE, extra)
}

pub struct Mcpod {
    pub runtime: Arc<MemoryRuntime>,
    pub reconciler: Arc<Reconciler>,
    pub url: String,
    pub http: reqwest::Client,
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Mcpod {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// Settings that make the lifecycle's background duties act in milliseconds.
pub fn fast_settings() -> Settings {
    Settings {
        idle_check_interval: Duration::from_millis(10),
        stop_grace: Duration::from_millis(200),
        // `apply` stands for a deliberate edit, not a file being rewritten.
        removal_debounce: Duration::ZERO,
        ..Settings::default()
    }
}

impl Mcpod {
    /// Serves `manifests` over a fresh runtime where every server behaves well.
    pub async fn start(manifests: &[String]) -> Mcpod {
        Self::with(MemoryRuntime::new(), fast_settings(), manifests).await
    }

    pub async fn with(runtime: MemoryRuntime, settings: Settings, manifests: &[String]) -> Mcpod {
        Self::with_router(runtime, settings, RouterConfig::default(), manifests).await
    }

    /// With router settings of its own (authentication, for one).
    pub async fn with_router(
        runtime: MemoryRuntime,
        settings: Settings,
        config: RouterConfig,
        manifests: &[String],
    ) -> Mcpod {
        let runtime = Arc::new(runtime);
        let defaults = Defaults {
            startup_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            // Health checks only where a test asks for them.
            health_check_interval: Duration::ZERO,
            ..Defaults::default()
        };
        let reconciler = Reconciler::new(runtime.clone(), defaults, settings);
        reconciler.apply(parse(manifests)).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let routes = router::routes(reconciler.clone(), config);
        let serving = tokio::spawn(warp::serve(routes).incoming(listener).run());
        Mcpod {
            runtime,
            reconciler,
            url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            serving,
        }
    }

    /// Reconciles to exactly `manifests`, as a changed manifests directory would.
    pub async fn apply(&self, manifests: &[String]) {
        self.reconciler.apply(parse(manifests)).await;
    }

    /// A Streamable HTTP client of server `name`.
    pub fn client(&self, name: &str) -> RawClient {
        RawClient::new(format!("{}/mcp/{name}", self.url))
    }

    /// POSTs one JSON-RPC message the plain way (JSON only, no session); the
    /// status, the `Retry-After` header and the body.
    pub async fn post(&self, name: &str, body: &Value) -> (u16, Option<String>, Value) {
        let response = self
            .http
            .post(format!("{}/mcp/{name}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, retry_after, body)
    }

    pub async fn call_tool(&self, name: &str, id: Value, tool: &str, args: Value) -> (u16, Value) {
        let (status, _, body) = self.post(name, &call(id, tool, args)).await;
        (status, body)
    }

    pub async fn status(&self, name: &str) -> Value {
        let response = self
            .http
            .get(format!("{}/servers/{name}", self.url))
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }

    pub async fn wait_status(&self, name: &str, wanted: &str) -> Value {
        let mut last = Value::Null;
        wait_for(PATIENCE, &format!("{name} to be {wanted}"), async || {
            last = self.status(name).await;
            last["status"] == wanted
        })
        .await;
        last
    }

    /// Waits until an instance of `name` has read a `tools/call` of `tool`;
    /// returns the id it arrived under (the router's wire id).
    pub async fn wait_received_call(&self, name: &str, tool: &str) -> Value {
        let mut wire_id = Value::Null;
        wait_for(PATIENCE, &format!("{name} to receive {tool}"), async || {
            let found = self
                .runtime
                .instances(name)
                .iter()
                .flat_map(|i| i.received.clone())
                .find(|m| m["method"] == "tools/call" && m["params"]["name"] == tool);
            if let Some(message) = found {
                wire_id = message["id"].clone();
            }
            !wire_id.is_null()
        })
        .await;
        wire_id
    }

    /// POSTs on the admin API (`/servers/{name}/start|stop`); the status.
    pub async fn admin(&self, path: &str) -> u16 {
        self.http
            .post(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

fn parse(texts: &[String]) -> Manifests {
    let mut servers = vec![];
    for text in texts {
        for server in manifests::parse(text).expect("test manifests are valid") {
            let file = PathBuf::from(format!("{}.yaml", server.metadata.name.clone().unwrap()));
            servers.push(Loaded { file, server });
        }
    }
    Manifests {
        servers,
        ..Default::default()
    }
}

pub fn call(id: Value, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
}

/// The text of a tool result.
pub fn text_of(response: &Value) -> String {
    crate::common::text_of(response)
}

/// Which instance answered a `whoami`.
pub fn pid_of(response: &Value) -> u64 {
    let who: Value = serde_json::from_str(&text_of(response)).unwrap_or(Value::Null);
    who["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("not a whoami answer: {response}"))
}

/// An open SSE response, read message by message.
pub struct Stream {
    response: reqwest::Response,
    buffer: String,
    /// Messages parsed from the buffer and not yet returned.
    ready: VecDeque<Value>,
}

impl Stream {
    /// POSTs `body` in `client`'s session and opens the SSE answer.
    pub async fn post(client: &RawClient, body: &Value) -> Stream {
        let response = client
            .request(reqwest::Method::POST)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "POST {body}");
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Stream {
            response,
            buffer: String::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next JSON-RPC message, or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Some(message);
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("an SSE event or the end of the stream")
                .unwrap()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            let events = take_events(&mut self.buffer);
            // A stream's priming event carries an id to resume from, no message.
            self.ready.extend(
                events
                    .into_iter()
                    .filter(|e| e.id.is_some() && !e.is_priming())
                    .map(|e| e.data),
            );
        }
    }

    /// Every message until the stream ends.
    pub async fn rest(&mut self) -> Vec<Value> {
        let mut messages = vec![];
        while let Some(message) = self.next().await {
            messages.push(message);
        }
        messages
    }
}
