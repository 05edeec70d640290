//! The bridge to one running MCP server's stdio: one JSON-RPC message per line
//! each way. Requests get router-assigned ids on the way in (so clients' ids
//! never collide) and their own ids back on the way out. When the server's
//! output ends, every pending request fails at once with the reason.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn, Instrument};

use crate::jsonrpc::{self, Kind};
use crate::logs::ServerLog;
use crate::runtime::Output;

/// Why a request through the bridge got no answer from the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    #[error("server closed its output: {0}")]
    Closed(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// Called, in order, for each message the server sends on its own; what it returns
/// is sent back to the server at once (e.g. an error for a request nobody can answer).
/// Called inline by the reader, so such a message is routed before any response
/// that followed it on stdout is delivered: progress never overtakes its result.
pub type MessageHandler = Arc<dyn Fn(ServerMessage) -> Option<Value> + Send + Sync>;

/// Sizes of the buffer for a server's stdout (the original system's STDIO_BUFFER_SIZE).
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    pub initial_bytes: usize,
    /// Longer lines are discarded with a warning.
    pub max_message_bytes: usize,
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

struct Shared {
    pending: Mutex<HashMap<u64, Pending>>,
    /// Wire ids of health probes: they must not count as activity.
    quiet: Mutex<std::collections::HashSet<u64>>,
    next_id: AtomicU64,
    last_activity: Mutex<Instant>,
    stderr_tail: Mutex<VecDeque<String>>,
}

/// Removes a pending request's entry when its waiter is gone.
struct ForgetOnDrop<'a> {
    shared: &'a Shared,
    wire_id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.shared.pending.lock().unwrap().remove(&self.wire_id);
    }
}

impl Shared {
    fn touch(&self) {
        *self.last_activity.lock().unwrap() = Instant::now();
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
            pending: Mutex::new(HashMap::new()),
            quiet: Mutex::new(Default::default()),
            next_id: AtomicU64::new(1),
            last_activity: Mutex::new(Instant::now()),
            stderr_tail: Mutex::new(VecDeque::new()),
        });
        let (outbound, outbound_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed) = watch::channel(None);
        let span = tracing::info_span!(parent: None, "stdio", server = %server);
        tokio::spawn(write_loop(stdin, outbound_rx).instrument(span.clone()));
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
            .pending
            .lock()
            .unwrap()
            .insert(wire_id, Pending { client_id, reply });
        // Checked after inserting: a close that races with us drains the entry.
        if let Some(reason) = self.closed_reason() {
            self.shared.pending.lock().unwrap().remove(&wire_id);
            return Err(BridgeError::Closed(reason));
        }
        self.send_line(&message);
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
                self.shared.pending.lock().unwrap().remove(&wire_id);
                // Tell the server to stop working on it (MCP cancellation).
                self.notify(
                    json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                    "params": {"requestId": wire_id, "reason": "mcpod: request timed out"}}),
                );
                Err(BridgeError::Timeout(timeout))
            }
        }
    }

    /// A health probe: a `ping` that must be answered within `timeout`. Unlike
    /// client traffic it does not count as activity, so it never keeps an idle
    /// server from being stopped.
    pub async fn probe(&self, timeout: Duration) -> Result<(), BridgeError> {
        let wire_id = self.next_wire_id();
        self.shared.quiet.lock().unwrap().insert(wire_id);
        let (reply, response) = oneshot::channel();
        self.shared.pending.lock().unwrap().insert(
            wire_id,
            Pending {
                client_id: json!(wire_id),
                reply,
            },
        );
        let ping = json!({"jsonrpc": "2.0", "id": wire_id, "method": "ping"});
        let _ = self.outbound.send(Outbound::Line(ping.to_string()));
        let result = match tokio::time::timeout(timeout, response).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BridgeError::Closed(
                self.closed_reason()
                    .unwrap_or_else(|| "bridge stopped".into()),
            )),
            Err(_) => {
                self.shared.pending.lock().unwrap().remove(&wire_id);
                Err(BridgeError::Timeout(timeout))
            }
        };
        self.shared.quiet.lock().unwrap().remove(&wire_id);
        result
    }

    /// Sends a notification, or a response to a request the server made.
    pub fn notify(&self, message: Value) {
        self.send_line(&message);
    }

    fn send_line(&self, message: &Value) {
        self.shared.touch();
        // serde_json never emits raw newlines: one message is one line.
        let _ = self.outbound.send(Outbound::Line(message.to_string()));
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
        *self.shared.last_activity.lock().unwrap()
    }

    /// Requests sent to the server and not yet answered.
    pub fn pending(&self) -> usize {
        self.shared.pending.lock().unwrap().len()
    }

    /// The last lines the server wrote to stderr, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        self.shared
            .stderr_tail
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect()
    }
}

async fn write_loop(
    mut stdin: Pin<Box<dyn AsyncWrite + Send>>,
    mut outbound: mpsc::UnboundedReceiver<Outbound>,
) {
    while let Some(message) = outbound.recv().await {
        let result = match message {
            Outbound::Line(line) => {
                let mut bytes = line.into_bytes();
                bytes.push(b'\n');
                match stdin.write_all(&bytes).await {
                    Ok(()) => stdin.flush().await,
                    Err(e) => Err(e),
                }
            }
            Outbound::CloseStdin => {
                let _ = stdin.shutdown().await;
                debug!("stdin closed");
                return;
            }
        };
        if let Err(e) = result {
            warn!(error = %e, "writing to the server's stdin failed");
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
    let mut stdout = LineBuffer::with_capacity(buffers.initial_bytes, buffers.max_message_bytes);
    let mut stderr = LineBuffer::new(64 * 1024);
    let reason = loop {
        match output.next().await {
            Some(Ok(Output::Stdout(bytes))) => {
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
        shared
            .pending
            .lock()
            .unwrap()
            .drain()
            .map(|(_, p)| p)
            .collect()
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
    let is_probe_answer = message
        .get("id")
        .and_then(Value::as_u64)
        .is_some_and(|id| shared.quiet.lock().unwrap().contains(&id));
    if !is_probe_answer {
        shared.touch();
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
        let _ = outbound.send(Outbound::Line(reply.to_string()));
    }
}

fn deliver_response(mut message: Value, shared: &Shared) {
    let Some(wire_id) = message.get("id").and_then(Value::as_u64) else {
        warn!(id = %message["id"], "response with an id mcpod never sent; ignored");
        return;
    };
    let Some(pending) = shared.pending.lock().unwrap().remove(&wire_id) else {
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
    info!(target: "mcpod::server_stderr", "{text}");
    log.write("stderr", &text);
    let mut tail = shared.stderr_tail.lock().unwrap();
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

/// Splits a byte stream into `\n`-terminated lines, discarding (with a warning)
/// any line longer than `max` so one bad message cannot exhaust memory.
pub struct LineBuffer {
    buffer: BytesMut,
    max: usize,
    discarding: bool,
}

impl LineBuffer {
    pub fn new(max: usize) -> Self {
        Self::with_capacity(0, max)
    }

    pub fn with_capacity(initial: usize, max: usize) -> Self {
        LineBuffer {
            buffer: BytesMut::with_capacity(initial.min(max)),
            max,
            discarding: false,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        self.buffer.extend_from_slice(bytes);
        let mut lines = vec![];
        while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
            let line = self.buffer.split_to(end + 1);
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            lines.push(line[..end].to_vec());
        }
        if self.buffer.len() > self.max {
            if !self.discarding {
                warn!(max = self.max, "message longer than the limit; discarded");
            }
            self.discarding = true;
            self.buffer.advance(self.buffer.len());
        }
        lines
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

    #[test]
    fn line_buffer_reassembles_and_bounds() {
        let mut buffer = LineBuffer::new(10);
        assert!(buffer.push(b"{\"a\"").is_empty());
        assert_eq!(
            buffer.push(b":1}\n{\"b\":2}\n"),
            vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]
        );
        assert!(buffer.push(b"0123456789abcdef").is_empty());
        assert_eq!(buffer.push(b"tail\nok\n"), vec![b"ok".to_vec()]);
    }
}
