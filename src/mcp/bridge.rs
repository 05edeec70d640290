//! The bridge to one running MCP server's stdio: one JSON-RPC message per line
//! each way. Requests get router-assigned ids on the way in (so clients' ids
//! never collide) and their own ids back on the way out. When the server's
//! output ends, every pending request fails at once with the reason.
//!
//! One reader task frames and classifies what the server writes and hands each
//! message on in order; one writer task owns stdin. The bridge's own state
//! (answers awaited, health probes, activity, the stderr tail) is one lock.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn, Instrument};

use crate::logs::ServerLog;
use crate::mcp::framing::LineFramer;
use crate::mcp::message::{self as jsonrpc, Kind, Method};
use crate::metrics::requests::Traffic;
use crate::runtime::Output;

/// Why a request through the bridge got no answer from the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    #[error("server closed its output: {0}")]
    Closed(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The server is not reading its stdin fast enough: more than the budget
    /// already waits to be written, so the request is refused at once.
    #[error("more than {0} bytes already wait for the server's stdin")]
    InputFull(usize),
}

/// Bytes that may wait to be written to one server's stdin. A server that
/// stops reading makes further requests fail at once instead of piling up in
/// mcpod's memory (one message larger than this still goes when none waits).
pub const STDIN_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// Called, in order, for each message the server sends on its own; what it returns
/// is sent back to the server at once (e.g. an error for a request nobody can answer).
/// Called inline by the reader, so such a message is routed before any response
/// that followed it on stdout is delivered: progress never overtakes its result.
pub type MessageHandler = Arc<dyn Fn(ServerMessage) -> Option<Value> + Send + Sync>;

/// Sizes of the buffer for a server's stdout (the original system's STDIO_BUFFER_SIZE).
#[derive(Debug, Clone)]
pub struct Buffers {
    pub initial_bytes: usize,
    /// Longer lines are discarded with a warning.
    pub max_message_bytes: usize,
    /// Where the bytes through stdin and stdout are counted (`/metrics`).
    pub traffic: Arc<Traffic>,
}

/// A message the server sent on its own: a notification or a request for a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    Notification(Value),
    Request(Value),
}

enum Outbound {
    Line(String),
    CloseStdin,
}

struct Pending {
    client_id: Value,
    reply: oneshot::Sender<Value>,
}

struct State {
    pending: HashMap<u64, Pending>,
    /// Wire ids of health probes: they must not count as activity.
    quiet: std::collections::HashSet<u64>,
    last_activity: Instant,
    stderr_tail: VecDeque<String>,
}

struct Shared {
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Bytes queued for stdin and not yet written (see [`STDIN_BUDGET_BYTES`]).
    queued: Arc<AtomicUsize>,
}

/// Removes a pending request's entry when its waiter is gone.
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    wire_id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.wire_id);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("bridge state lock poisoned")
    }
}

#[derive(Clone)]
pub struct StdioBridge {
    outbound: mpsc::UnboundedSender<Outbound>,
    shared: Arc<Shared>,
    closed: watch::Receiver<Option<String>>,
}

const STDERR_TAIL_LINES: usize = 20;

impl StdioBridge {
    /// Starts the reader and writer tasks over a container's stdio. Messages the
    /// server sends on its own go to `events`.
    pub fn spawn(
        server: &str,
        output: BoxStream<'static, std::io::Result<Output>>,
        stdin: Pin<Box<dyn AsyncWrite + Send>>,
        handler: MessageHandler,
        log: Arc<ServerLog>,
        buffers: Buffers,
    ) -> StdioBridge {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                quiet: Default::default(),
                last_activity: Instant::now(),
                stderr_tail: VecDeque::new(),
            }),
            next_id: AtomicU64::new(1),
            queued: Arc::new(AtomicUsize::new(0)),
        });
        let (outbound, outbound_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed) = watch::channel(None);
        let span = tracing::info_span!(parent: None, "stdio", server = %server);
        tokio::spawn(
            write_loop(
                stdin,
                outbound_rx,
                shared.queued.clone(),
                buffers.traffic.clone(),
            )
            .instrument(span.clone()),
        );
        tokio::spawn(
            read_loop(
                output,
                shared.clone(),
                handler,
                log,
                outbound.clone(),
                closed_tx,
                buffers,
            )
            .instrument(span),
        );
        StdioBridge {
            outbound,
            shared,
            closed,
        }
    }

    /// Sends a request and waits for its response, which carries the caller's id.
    pub async fn request(&self, message: Value, timeout: Duration) -> Result<Value, BridgeError> {
        self.request_as(self.next_wire_id(), message, timeout).await
    }

    /// A fresh id for a request to this server (see [`StdioBridge::request_as`]).
    pub fn next_wire_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Like [`StdioBridge::request`], under an id taken from [`StdioBridge::next_wire_id`],
    /// so the caller can map a later cancellation to it.
    pub async fn request_as(
        &self,
        wire_id: u64,
        mut message: Value,
        timeout: Duration,
    ) -> Result<Value, BridgeError> {
        let client_id = std::mem::replace(&mut message["id"], json!(wire_id));
        let (reply, response) = oneshot::channel();
        self.shared
            .lock()
            .pending
            .insert(wire_id, Pending { client_id, reply });
        // Checked after inserting: a close that races with us drains the entry.
        if let Some(reason) = self.closed_reason() {
            self.shared.lock().pending.remove(&wire_id);
            return Err(BridgeError::Closed(reason));
        }
        if let Err(full) = self.send_line(&message) {
            self.shared.lock().pending.remove(&wire_id);
            return Err(full);
        }
        // A caller that stops waiting (its client went away) leaves no entry behind.
        let _forget = ForgetOnDrop {
            shared: &self.shared,
            wire_id,
        };
        match tokio::time::timeout(timeout, response).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(BridgeError::Closed(
                self.closed_reason()
                    .unwrap_or_else(|| "bridge stopped".into()),
            )),
            Err(_) => {
                self.shared.lock().pending.remove(&wire_id);
                // Tell the server to stop working on it (MCP cancellation).
                self.notify(jsonrpc::notification(
                    Method::Cancelled,
                    Some(json!({"requestId": wire_id, "reason": "mcpod: request timed out"})),
                ));
                Err(BridgeError::Timeout(timeout))
            }
        }
    }

    /// A health probe: a `ping` that must be answered within `timeout`. Unlike
    /// client traffic it does not count as activity, so it never keeps an idle
    /// server from being stopped.
    pub async fn probe(&self, timeout: Duration) -> Result<(), BridgeError> {
        let wire_id = self.next_wire_id();
        let (reply, response) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            state.quiet.insert(wire_id);
            state.pending.insert(
                wire_id,
                Pending {
                    client_id: json!(wire_id),
                    reply,
                },
            );
        }
        let ping = jsonrpc::request(json!(wire_id), Method::Ping, json!({}));
        enqueue(&self.outbound, &self.shared.queued, ping.to_string());
        let result = match tokio::time::timeout(timeout, response).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BridgeError::Closed(
                self.closed_reason()
                    .unwrap_or_else(|| "bridge stopped".into()),
            )),
            Err(_) => {
                self.shared.lock().pending.remove(&wire_id);
                Err(BridgeError::Timeout(timeout))
            }
        };
        self.shared.lock().quiet.remove(&wire_id);
        result
    }

    /// Sends a notification, or a response to a request the server made.
    pub fn notify(&self, message: Value) {
        if let Err(full) = self.send_line(&message) {
            warn!(error = %full, "message for the server dropped");
        }
    }

    /// Queues one message for stdin, within the budget of bytes waiting.
    fn send_line(&self, message: &Value) -> Result<(), BridgeError> {
        // serde_json never emits raw newlines: one message is one line.
        let line = message.to_string();
        let waiting = self.shared.queued.load(Ordering::Relaxed);
        if waiting > 0 && waiting + line.len() > STDIN_BUDGET_BYTES {
            return Err(BridgeError::InputFull(STDIN_BUDGET_BYTES));
        }
        self.shared.lock().last_activity = Instant::now();
        enqueue(&self.outbound, &self.shared.queued, line);
        Ok(())
    }

    /// Closes the server's stdin: the first step of MCP's stdio shutdown.
    pub fn close_stdin(&self) {
        let _ = self.outbound.send(Outbound::CloseStdin);
    }

    pub fn closed_reason(&self) -> Option<String> {
        self.closed.borrow().clone()
    }

    /// Resolves when the server's output has ended, with the reason.
    pub async fn closed(&self) -> String {
        let mut closed = self.closed.clone();
        let reason = match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "bridge stopped".into(),
        };
        reason
    }

    pub fn last_activity(&self) -> Instant {
        self.shared.lock().last_activity
    }

    /// Bytes waiting to be written to the server's stdin.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Requests sent to the server and not yet answered.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// The last lines the server wrote to stderr, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.shared.lock().stderr_tail.iter().cloned().collect()
    }
}

/// Puts a line on the stdin queue, counting its bytes until it is written.
fn enqueue(outbound: &mpsc::UnboundedSender<Outbound>, queued: &AtomicUsize, line: String) {
    queued.fetch_add(line.len(), Ordering::Relaxed);
    let _ = outbound.send(Outbound::Line(line));
}

/// Bytes of queued lines the writer gathers into one write; a line longer than
/// this goes alone.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Owns the server's stdin. What is queued while a write is under way goes
/// out together in the next write: one write and one flush for many requests
/// under load, not one each.
async fn write_loop(
    mut stdin: Pin<Box<dyn AsyncWrite + Send>>,
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
    traffic: Arc<Traffic>,
) {
    let mut batch: Vec<u8> = Vec::new();
    while let Some(first) = outbound.recv().await {
        let mut close = false;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Outbound::Line(line) => {
                    queued.fetch_sub(line.len(), Ordering::Relaxed);
                    batch.extend_from_slice(line.as_bytes());
                    batch.push(b'\n');
                }
                Outbound::CloseStdin => {
                    close = true;
                    break;
                }
            }
            if batch.len() < WRITE_BATCH_BYTES {
                next = outbound.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            traffic
                .to_server
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let written = match stdin.write_all(&batch).await {
                Ok(()) => stdin.flush().await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                warn!(error = %e, "writing to the server's stdin failed");
                return;
            }
            batch.clear();
            // One huge message does not pin its buffer for the server's life.
            batch.shrink_to(WRITE_BATCH_BYTES);
        }
        if close {
            let _ = stdin.shutdown().await;
            debug!("stdin closed");
            return;
        }
    }
}

async fn read_loop(
    mut output: BoxStream<'static, std::io::Result<Output>>,
    shared: Arc<Shared>,
    handler: MessageHandler,
    log: Arc<ServerLog>,
    outbound: mpsc::UnboundedSender<Outbound>,
    closed: watch::Sender<Option<String>>,
    buffers: Buffers,
) {
    let mut stdout = LineFramer::with_capacity(buffers.initial_bytes, buffers.max_message_bytes);
    let mut stderr = LineFramer::new(64 * 1024);
    let reason = loop {
        match output.next().await {
            Some(Ok(Output::Stdout(bytes))) => {
                let read = bytes.len() as u64;
                buffers
                    .traffic
                    .from_server
                    .fetch_add(read, Ordering::Relaxed);
                for line in stdout.push(&bytes) {
                    dispatch(&line, &shared, &handler, &outbound);
                }
            }
            Some(Ok(Output::Stderr(bytes))) => {
                for line in stderr.push(&bytes) {
                    record_stderr(&line, &shared, &log);
                }
            }
            Some(Err(e)) => break format!("reading its output failed: {e}"),
            None => break "its output ended (the process exited)".to_string(),
        }
    };
    info!(reason = %reason, "server output closed");
    let pending: Vec<Pending> = {
        let _ = closed.send(Some(reason.clone()));
        shared.lock().pending.drain().map(|(_, p)| p).collect()
    };
    // Dropping the senders wakes every waiting request with `Closed`.
    drop(pending);
}

fn dispatch(
    line: &[u8],
    shared: &Shared,
    handler: &MessageHandler,
    outbound: &mpsc::UnboundedSender<Outbound>,
) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        warn!(line = %truncate(text, 200), "server wrote a line that is not JSON to stdout; ignored");
        return;
    };
    {
        let mut state = shared.lock();
        let is_probe_answer = message
            .get("id")
            .and_then(Value::as_u64)
            .is_some_and(|id| state.quiet.contains(&id));
        if !is_probe_answer {
            state.last_activity = Instant::now();
        }
    }
    let reply = match jsonrpc::classify(&message) {
        Some(Kind::Response) => {
            deliver_response(message, shared);
            None
        }
        Some(Kind::Request) => handler(ServerMessage::Request(message)),
        Some(Kind::Notification) => handler(ServerMessage::Notification(message)),
        None => {
            warn!(line = %truncate(text, 200), "server wrote JSON that is not JSON-RPC; ignored");
            None
        }
    };
    if let Some(reply) = reply {
        enqueue(outbound, &shared.queued, reply.to_string());
    }
}

fn deliver_response(mut message: Value, shared: &Shared) {
    let Some(wire_id) = message.get("id").and_then(Value::as_u64) else {
        warn!(id = %message["id"], "response with an id mcpod never sent; ignored");
        return;
    };
    let Some(pending) = shared.lock().pending.remove(&wire_id) else {
        debug!(
            wire_id,
            "response to a request that already timed out; dropped"
        );
        return;
    };
    message["id"] = pending.client_id;
    let _ = pending.reply.send(message);
}

fn record_stderr(line: &[u8], shared: &Shared, log: &ServerLog) {
    let text = String::from_utf8_lossy(line).trim_end().to_string();
    if text.is_empty() {
        return;
    }
    // The server's own log only: copying it into mcpod's log would let one
    // chatty server fill mcpod's disk.
    log.write_stderr(&text);
    let mut state = shared.lock();
    let tail = &mut state.stderr_tail;
    if tail.len() == STDERR_TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(text);
}

fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// A fake server: echoes each request's method back as its result, in reverse
    /// order of arrival within a batch of two, to prove ids are matched, not ordered.
    fn fake_server() -> (
        StdioBridge,
        mpsc::UnboundedReceiver<ServerMessage>,
        mpsc::UnboundedSender<std::io::Result<Output>>,
        tokio::io::DuplexStream,
    ) {
        let (to_router, from_server) = mpsc::unbounded_channel();
        let (stdin_router, stdin_server) = tokio::io::duplex(1 << 16);
        let (events_tx, events) = mpsc::unbounded_channel();
        let events_tx: MessageHandler = Arc::new(move |message| {
            let _ = events_tx.send(message);
            None
        });
        let output = tokio_stream_from(from_server);
        let log = Arc::new(ServerLog::open(None, "test"));
        let bridge = StdioBridge::spawn(
            "test",
            output,
            Box::pin(stdin_router),
            events_tx,
            log,
            Buffers {
                initial_bytes: 8192,
                max_message_bytes: 1 << 20,
                traffic: Default::default(),
            },
        );
        (bridge, events, to_router, stdin_server)
    }

    fn tokio_stream_from(
        mut rx: mpsc::UnboundedReceiver<std::io::Result<Output>>,
    ) -> BoxStream<'static, std::io::Result<Output>> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    fn out(line: &str) -> std::io::Result<Output> {
        Ok(Output::Stdout(Bytes::from(format!("{line}\n"))))
    }

    #[tokio::test]
    async fn colliding_client_ids_get_their_own_answers() {
        let (bridge, _events, server_out, server_in) = fake_server();
        let mut lines = BufReader::new(server_in).lines();
        let a = bridge.request(
            json!({"jsonrpc":"2.0","id":1,"method":"a"}),
            Duration::from_secs(5),
        );
        let b = bridge.request(
            json!({"jsonrpc":"2.0","id":1,"method":"b"}),
            Duration::from_secs(5),
        );
        let server = async {
            let first: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            let second: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            assert_ne!(first["id"], second["id"], "wire ids must differ");
            for request in [second, first] {
                let reply = json!({"jsonrpc":"2.0","id":request["id"],"result":{"method":request["method"]}});
                server_out.send(out(&reply.to_string())).unwrap();
            }
        };
        let (a, b, ()) = tokio::join!(a, b, server);
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a["id"], 1);
        assert_eq!(a["result"]["method"], "a");
        assert_eq!(b["id"], 1);
        assert_eq!(b["result"]["method"], "b");
    }

    #[tokio::test]
    async fn a_server_that_stops_reading_makes_requests_fail_at_once_not_pile_up() {
        // `_server_in` is never read: once the pipe is full, writes wait forever.
        let (bridge, _events, _server_out, _server_in) = fake_server();
        let big = "x".repeat(1 << 20);
        let mut refused = None;
        for n in 0..64 {
            let request = json!({"jsonrpc":"2.0","id":n,"method":"echo","params":{"text":big}});
            let attempt = tokio::time::timeout(
                Duration::from_millis(50),
                bridge.request(request, Duration::from_secs(60)),
            )
            .await;
            if let Ok(result) = attempt {
                refused = Some(result);
                break;
            }
        }
        assert_eq!(
            refused,
            Some(Err(BridgeError::InputFull(STDIN_BUDGET_BYTES))),
            "within the budget, a request is refused at once"
        );
        assert!(bridge.shared.queued.load(Ordering::Relaxed) <= STDIN_BUDGET_BYTES + (1 << 21));
    }

    #[tokio::test]
    async fn exit_fails_pending_requests_at_once() {
        let (bridge, _events, server_out, _server_in) = fake_server();
        let waiting = bridge.request(
            json!({"jsonrpc":"2.0","id":"x","method":"slow"}),
            Duration::from_secs(60),
        );
        let crash = async { drop(server_out) };
        let (result, ()) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(waiting, crash)
        })
        .await
        .expect("a pending request must not hang when the server exits");
        assert!(matches!(result, Err(BridgeError::Closed(_))), "{result:?}");
        // And later requests fail at once too.
        let later = bridge
            .request(
                json!({"jsonrpc":"2.0","id":2,"method":"x"}),
                Duration::from_secs(60),
            )
            .await;
        assert!(matches!(later, Err(BridgeError::Closed(_))));
    }

    #[tokio::test]
    async fn timeout_cancels_on_the_server() {
        let (bridge, _events, _server_out, server_in) = fake_server();
        let mut lines = BufReader::new(server_in).lines();
        let result = bridge
            .request(
                json!({"jsonrpc":"2.0","id":7,"method":"slow"}),
                Duration::from_millis(50),
            )
            .await;
        assert_eq!(result, Err(BridgeError::Timeout(Duration::from_millis(50))));
        let sent: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        let cancel: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(cancel["method"], "notifications/cancelled");
        assert_eq!(cancel["params"]["requestId"], sent["id"]);
        assert_eq!(bridge.pending(), 0);
    }

    #[tokio::test]
    async fn garbage_and_server_messages_are_sorted_out() {
        let (bridge, mut events, server_out, _server_in) = fake_server();
        server_out.send(out("this is not json")).unwrap();
        server_out
            .send(out(
                r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#,
            ))
            .unwrap();
        server_out
            .send(out(r#"{"jsonrpc":"2.0","id":"s1","method":"roots/list"}"#))
            .unwrap();
        server_out
            .send(Ok(Output::Stderr(Bytes::from("banner line\n"))))
            .unwrap();
        let first = events.recv().await.unwrap();
        assert!(
            matches!(first, ServerMessage::Notification(ref m) if m["method"] == "notifications/tools/list_changed")
        );
        let second = events.recv().await.unwrap();
        assert!(matches!(second, ServerMessage::Request(ref m) if m["id"] == "s1"));
        drop(server_out);
        bridge.closed().await;
        assert_eq!(bridge.stderr_tail(), ["banner line"]);
    }

    #[tokio::test]
    async fn a_notification_before_a_response_is_routed_before_the_response_arrives() {
        let (bridge, mut events, server_out, server_in) = fake_server();
        let mut lines = BufReader::new(server_in).lines();
        let request = bridge.request(
            json!({"jsonrpc":"2.0","id":1,"method":"slow"}),
            Duration::from_secs(5),
        );
        let server = async {
            let sent: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            let progress = json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":3}});
            let reply = json!({"jsonrpc":"2.0","id":sent["id"],"result":{}});
            server_out
                .send(out(&format!("{progress}\n{reply}")))
                .unwrap();
        };
        let (response, ()) = tokio::join!(request, server);
        response.unwrap();
        let routed = events
            .try_recv()
            .expect("the notification was routed first");
        assert!(
            matches!(routed, ServerMessage::Notification(ref m) if m["params"]["progress"] == 3)
        );
    }

    #[tokio::test]
    async fn a_probe_is_answered_without_counting_as_activity() {
        let (bridge, _events, server_out, server_in) = fake_server();
        let mut lines = BufReader::new(server_in).lines();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let before = bridge.last_activity();
        let probe = bridge.probe(Duration::from_secs(5));
        let server = async {
            let ping: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            assert_eq!(ping["method"], "ping");
            server_out
                .send(out(
                    &json!({"jsonrpc":"2.0","id":ping["id"],"result":{}}).to_string()
                ))
                .unwrap();
        };
        let (result, ()) = tokio::join!(probe, server);
        assert_eq!(result, Ok(()));
        assert_eq!(bridge.last_activity(), before);
        let silent = bridge.probe(Duration::from_millis(50)).await;
        assert_eq!(silent, Err(BridgeError::Timeout(Duration::from_millis(50))));
    }
}
