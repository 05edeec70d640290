//! The load generator every throughput figure comes from: concurrent clients
//! sending `tools/call` after `tools/call`, each request with an id of its own
//! (client << 32 | sequence), each answer matched to its request by id and
//! checked against what that request asked for. An answer that never comes, or
//! comes as an error, is *lost*; one that carries another request's id or text,
//! or answers an id twice, is *mismatched*; either fails the run
//! ([`Outcome::assert_clean`]) instead of becoming a smaller number.
//!
//! Four ways in: a direct stdio pipe into the server's container, Streamable
//! HTTP without a session (plain JSON), Streamable HTTP with a session (what the
//! SDKs and the Inspector do, answers as SSE or JSON as the bridge chooses), and
//! the legacy HTTP+SSE transport (answers on a GET stream, matched by id).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

use super::{initialize, try_sse_message, INITIALIZED};

/// How long one answer may take before its request counts as lost.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The server behind the bridge, which decides the call and its expected answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Server {
    /// server-everything's `echo`: the answer must carry the request's own text.
    Echo,
    /// mcp-server-time's `get_current_time` in UTC.
    Time,
}

impl Server {
    pub fn image(self) -> &'static str {
        match self {
            Server::Echo => "localhost/mcpod/everything:latest",
            Server::Time => "localhost/mcpod/time:latest",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Server::Echo => "everything",
            Server::Time => "time",
        }
    }

    pub fn call(self, id: u64) -> String {
        let (tool, arguments) = match self {
            Server::Echo => ("echo", json!({"message": format!("m{id}")})),
            Server::Time => ("get_current_time", json!({"timezone": "UTC"})),
        };
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":arguments}})
            .to_string()
    }

    /// Whether `answer` is the answer to request `id`.
    pub fn answers(self, id: u64, answer: &Value) -> bool {
        let text = answer["result"]["content"][0]["text"].as_str();
        answer["id"] == json!(id)
            && match self {
                Server::Echo => text == Some(&format!("Echo: m{id}")),
                Server::Time => text.is_some_and(|t| t.contains("UTC")),
            }
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// Routes an answer that arrived on a shared stream to the request waiting for
/// it; `false` when no request is waiting for that id (a duplicate or a stray).
fn deliver(pending: &Pending, message: Value) -> bool {
    let Some(id) = message["id"].as_u64() else {
        return true; // a notification, or an answer to a request without a numeric id
    };
    match pending.lock().unwrap().remove(&id) {
        Some(waiter) => {
            let _ = waiter.send(message);
            true
        }
        None => false,
    }
}

async fn wait(
    pending: &Pending,
    id: u64,
    answer: oneshot::Receiver<Value>,
) -> Result<Value, String> {
    let result = tokio::time::timeout(ANSWER_TIMEOUT, answer).await;
    pending.lock().unwrap().remove(&id);
    match result {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err("the stream ended".into()),
        Err(_) => Err("no answer in time".into()),
    }
}

/// A direct stdio pipe into a server's container (`podman run -i`), shared by
/// any number of clients: requests are written as lines, answers routed by id.
pub struct Pipe {
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    pending: Pending,
    /// Answers with an id nobody waited for.
    strays: Arc<AtomicU64>,
    child: Mutex<tokio::process::Child>,
}

impl Pipe {
    /// Runs `podman` with `args` and completes the handshake.
    pub async fn spawn(args: &[String]) -> Arc<Pipe> {
        let mut child = tokio::process::Command::new("podman")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("podman run");
        let stdout = child.stdout.take().unwrap();
        let pending: Pending = Arc::default();
        let strays = Arc::new(AtomicU64::new(0));
        let (routes, stray) = (pending.clone(), strays.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(message) = serde_json::from_str::<Value>(&line) {
                    if !deliver(&routes, message) {
                        stray.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let pipe = Arc::new(Pipe {
            stdin: tokio::sync::Mutex::new(child.stdin.take().unwrap()),
            pending,
            strays,
            child: Mutex::new(child),
        });
        // Ids stay below 2^53: JavaScript servers read them as doubles.
        let id = 0xF_FFFF << 32;
        let answer = pipe.request(id, initialize(id)).await;
        assert!(answer.is_ok(), "the server answers initialize: {answer:?}");
        pipe.write(INITIALIZED).await.unwrap();
        pipe
    }

    async fn write(&self, line: &str) -> std::io::Result<()> {
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(format!("{line}\n").as_bytes()).await?;
        stdin.flush().await
    }

    async fn request(&self, id: u64, body: String) -> Result<Value, String> {
        let (sender, answer) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, sender);
        self.write(&body).await.map_err(|e| e.to_string())?;
        wait(&self.pending, id, answer).await
    }

    /// The `podman run` client's process id (the pipe's own relay, for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id().unwrap_or(0)
    }

    /// Closes stdin, so the server exits and `--rm` removes its container.
    pub async fn close(&self) {
        let _ = self.stdin.lock().await.shutdown().await;
        let child = &self.child;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.lock().unwrap().try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How clients reach the server.
#[derive(Clone)]
pub enum Transport {
    Pipe(Arc<Pipe>),
    /// Streamable HTTP at `url`: `handshake` opens a session with `initialize`
    /// (and uses its id when the bridge gives one); `accept_sse` sends
    /// `Accept: application/json, text/event-stream`, as the SDKs do.
    Streamable {
        url: String,
        handshake: bool,
        accept_sse: bool,
    },
    /// Legacy HTTP+SSE: a GET stream at `url`, requests POSTed to the endpoint it names.
    LegacySse {
        url: String,
    },
}

/// One client's connection.
pub enum Conn {
    Pipe(Arc<Pipe>),
    Streamable {
        http: reqwest::Client,
        url: String,
        session: Option<String>,
        accept_sse: bool,
    },
    LegacySse {
        http: reqwest::Client,
        post: String,
        pending: Pending,
        reader: tokio::task::JoinHandle<()>,
    },
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Conn::LegacySse { reader, .. } = self {
            reader.abort();
        }
    }
}

/// What a legacy SSE stream brought that no request of its own waited for.
#[derive(Default)]
pub struct StreamCounts {
    /// Answers to other clients' requests: bridges that send every answer to
    /// every stream (supergateway does) — not an error of the run, but counted.
    pub foreign: AtomicU64,
    /// Answers to this client's ids that nobody waited for: mismatched.
    pub strays: AtomicU64,
}

impl Transport {
    /// Opens client `client`'s connection (and session, if it has one).
    pub async fn connect(
        &self,
        http: &reqwest::Client,
        client: u64,
        counts: &Arc<StreamCounts>,
    ) -> Result<Conn, String> {
        let handshake_id = client << 32;
        match self {
            Transport::Pipe(pipe) => Ok(Conn::Pipe(pipe.clone())),
            Transport::Streamable {
                url,
                handshake,
                accept_sse,
            } => {
                let mut conn = Conn::Streamable {
                    http: http.clone(),
                    url: url.clone(),
                    session: None,
                    accept_sse: *accept_sse,
                };
                if *handshake {
                    let response = conn.post(initialize(handshake_id)).await?;
                    let session = response
                        .headers()
                        .get("mcp-session-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    answer_of(response).await?;
                    if let Conn::Streamable { session: s, .. } = &mut conn {
                        *s = session;
                    }
                    conn.post(INITIALIZED.to_string()).await?;
                }
                Ok(conn)
            }
            Transport::LegacySse { url } => {
                legacy_connect(http, url, client, handshake_id, counts).await
            }
        }
    }
}

async fn legacy_connect(
    http: &reqwest::Client,
    url: &str,
    client: u64,
    handshake_id: u64,
    counts: &Arc<StreamCounts>,
) -> Result<Conn, String> {
    let response = http
        .get(url)
        .header("accept", "text/event-stream")
        .timeout(Duration::from_secs(24 * 3600))
        .send()
        .await
        .map_err(|e| chain(&e))?;
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let endpoint = loop {
        let chunk = stream
            .next()
            .await
            .ok_or("the SSE stream ended before its endpoint")?
            .map_err(|e| chain(&e))?;
        buffer.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"));
        if let Some(endpoint) = take_events(&mut buffer)
            .into_iter()
            .find(|(event, _)| event == "endpoint")
        {
            break endpoint.1;
        }
    };
    let post = if endpoint.starts_with("http") {
        endpoint
    } else {
        let origin = url.split('/').take(3).collect::<Vec<_>>().join("/");
        format!("{origin}{endpoint}")
    };
    let pending: Pending = Arc::default();
    let (routes, counts) = (pending.clone(), counts.clone());
    let reader = tokio::spawn(async move {
        loop {
            for (event, data) in take_events(&mut buffer) {
                let Ok(message) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if event != "message" && !event.is_empty() {
                    continue;
                }
                match message["id"].as_u64() {
                    Some(id) if id >> 32 != client => {
                        counts.foreign.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        if !deliver(&routes, message) {
                            counts.strays.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            match stream.next().await {
                Some(Ok(chunk)) => {
                    buffer.push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n"))
                }
                _ => return,
            }
        }
    });
    let conn = Conn::LegacySse {
        http: http.clone(),
        post,
        pending,
        reader,
    };
    // A bridge sharing one server between streams may answer a second
    // `initialize` with an error: any answer completes the handshake.
    conn.call(handshake_id, initialize(handshake_id)).await?;
    conn.notify(INITIALIZED).await?;
    Ok(conn)
}

/// Complete SSE events (event name, joined data) taken out of `buffer`.
fn take_events(buffer: &mut String) -> Vec<(String, String)> {
    let mut events = vec![];
    while let Some(end) = buffer.find("\n\n") {
        let block: String = buffer.drain(..end + 2).collect();
        let mut event = String::new();
        let mut data = vec![];
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
            }
        }
        if !data.is_empty() {
            events.push((event, data.join("\n")));
        }
    }
    events
}

/// The JSON-RPC message of a Streamable HTTP answer, JSON or SSE.
async fn answer_of(response: reqwest::Response) -> Result<Value, String> {
    let status = response.status();
    let sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let text = response.text().await.map_err(|e| chain(&e))?;
    if !status.is_success() {
        return Err(format!("HTTP {status}: {text}"));
    }
    if sse {
        try_sse_message(&text).ok_or_else(|| format!("no answer in the SSE body: {text}"))
    } else {
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }
}

impl Conn {
    async fn post(&self, body: String) -> Result<reqwest::Response, String> {
        let Conn::Streamable {
            http,
            url,
            session,
            accept_sse,
        } = self
        else {
            unreachable!("only Streamable HTTP posts bodies that are answered in the response")
        };
        let mut request = http
            .post(url)
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-06-18");
        if *accept_sse {
            request = request.header("accept", "application/json, text/event-stream");
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.body(body).send().await.map_err(|e| chain(&e))
    }

    async fn notify(&self, body: &str) -> Result<(), String> {
        if let Conn::LegacySse { http, post, .. } = self {
            let status = http
                .post(post)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| chain(&e))?
                .status();
            if !status.is_success() {
                return Err(format!("HTTP {status} for a notification"));
            }
        }
        Ok(())
    }

    /// Sends request `id` and returns its answer.
    pub async fn call(&self, id: u64, body: String) -> Result<Value, String> {
        match self {
            Conn::Pipe(pipe) => pipe.request(id, body).await,
            Conn::Streamable { .. } => answer_of(self.post(body).await?).await,
            Conn::LegacySse { pending, .. } => {
                let (sender, answer) = oneshot::channel();
                pending.lock().unwrap().insert(id, sender);
                if let Err(e) = self.notify(&body).await {
                    pending.lock().unwrap().remove(&id);
                    return Err(e);
                }
                wait(pending, id, answer).await
            }
        }
    }
}

/// When a run ends.
#[derive(Clone, Copy)]
pub enum Limit {
    Requests(u64),
    Time(Duration),
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub clients: usize,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub mismatched: u64,
    /// Clients that could not connect or whose warm-up failed.
    pub setup_failures: u64,
    pub foreign: u64,
    pub seconds: f64,
    pub latencies: Vec<Duration>,
    pub first_error: Option<String>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.answered as f64 / self.seconds
    }

    /// `None` when every request got its own answer and every client ran;
    /// otherwise what went wrong: the run failed, whatever its rate.
    pub fn failure(&self) -> Option<String> {
        let clean = self.lost == 0
            && self.mismatched == 0
            && self.setup_failures == 0
            && self.answered == self.sent;
        (!clean).then(|| {
            format!(
                "{} sent, {} answered, {} lost, {} mismatched, {} clients failed to start (first error: {})",
                self.sent,
                self.answered,
                self.lost,
                self.mismatched,
                self.setup_failures,
                self.first_error.as_deref().unwrap_or("none")
            )
        })
    }

    /// Fails the run on any lost or mismatched answer.
    pub fn assert_clean(&self, what: &str) {
        if let Some(failure) = self.failure() {
            panic!("{what}: {failure}");
        }
    }
}

/// Client `client`'s connection, warmed up with `warmup` checked requests.
async fn setup(
    transport: &Transport,
    http: &reqwest::Client,
    client: u64,
    counts: &Arc<StreamCounts>,
    server: Server,
    warmup: u64,
    n: &mut u64,
) -> Result<Conn, String> {
    let conn = transport
        .connect(http, client, counts)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    for _ in 0..warmup {
        *n += 1;
        let id = client << 32 | *n;
        match conn.call(id, server.call(id)).await {
            Ok(answer) if server.answers(id, &answer) => {}
            other => return Err(format!("warm-up request {id}: {other:?}")),
        }
    }
    Ok(conn)
}

/// An error with its causes (reqwest's own message leaves out why).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

#[derive(Default)]
struct Tally {
    setup_failures: AtomicU64,
    sent: AtomicU64,
    answered: AtomicU64,
    lost: AtomicU64,
    mismatched: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn error(&self, counter: &AtomicU64, error: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().unwrap().get_or_insert(error);
    }
}

/// `clients` concurrent clients, each connected (and its session opened)
/// before the clock starts, sending `server`'s call after call until `limit`
/// (requests per client, or a time). `warmup` requests per client go first,
/// uncounted.
pub async fn run(
    transport: &Transport,
    server: Server,
    clients: usize,
    warmup: u64,
    limit: Limit,
) -> Outcome {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(ANSWER_TIMEOUT)
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let counts = Arc::new(StreamCounts::default());
    let pipe_strays = match transport {
        Transport::Pipe(pipe) => pipe.strays.load(Ordering::Relaxed),
        _ => 0,
    };
    let ready = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let tasks: Vec<_> = (0..clients as u64)
        .map(|c| {
            let (transport, http, tally, counts, ready) = (
                transport.clone(),
                http.clone(),
                tally.clone(),
                counts.clone(),
                ready.clone(),
            );
            tokio::spawn(async move {
                // Ids start at 1: `c << 32` itself is the handshake's.
                let mut n = 0u64;
                let conn =
                    match setup(&transport, &http, c + 1, &counts, server, warmup, &mut n).await {
                        Ok(conn) => conn,
                        Err(e) => {
                            // Counted as a failure of the run; the others still start together.
                            tally.error(&tally.setup_failures, format!("client {c}: {e}"));
                            ready.wait().await;
                            return vec![];
                        }
                    };
                ready.wait().await;
                let began = Instant::now();
                let mut latencies = vec![];
                loop {
                    let done = match limit {
                        Limit::Requests(count) => latencies.len() as u64 >= count,
                        Limit::Time(duration) => began.elapsed() >= duration,
                    };
                    if done {
                        break;
                    }
                    n += 1;
                    let id = (c + 1) << 32 | n;
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    let sent = Instant::now();
                    let answer = conn.call(id, server.call(id)).await;
                    latencies.push(sent.elapsed());
                    match answer {
                        Ok(answer) if server.answers(id, &answer) => {
                            tally.answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(answer)
                            if answer.get("error").is_some() && answer["id"] == json!(id) =>
                        {
                            tally.error(&tally.lost, format!("request {id}: {answer}"))
                        }
                        Ok(answer) => {
                            tally.error(&tally.mismatched, format!("request {id} got {answer}"))
                        }
                        Err(e) => tally.error(&tally.lost, format!("request {id}: {e}")),
                    }
                }
                drop(conn);
                latencies
            })
        })
        .collect();
    ready.wait().await;
    let started = Instant::now();
    let mut latencies = vec![];
    for task in tasks {
        latencies.extend(task.await.expect("a client panicked"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let strays = counts.strays.load(Ordering::Relaxed)
        + match transport {
            Transport::Pipe(pipe) => pipe.strays.load(Ordering::Relaxed) - pipe_strays,
            _ => 0,
        };
    let first_error = tally.first_error.lock().unwrap().take();
    Outcome {
        clients,
        sent: tally.sent.load(Ordering::Relaxed),
        answered: tally.answered.load(Ordering::Relaxed),
        lost: tally.lost.load(Ordering::Relaxed),
        mismatched: tally.mismatched.load(Ordering::Relaxed) + strays,
        setup_failures: tally.setup_failures.load(Ordering::Relaxed),
        foreign: counts.foreign.load(Ordering::Relaxed),
        seconds,
        latencies,
        first_error,
    }
}
