//! mcpod's own accept loop: every HTTP connection mcpod serves goes through
//! [`serve`], which hands each request to a warp filter (`warp::service`) over
//! hyper's HTTP/1.1 and bounds what a client can hold:
//!
//! - `TCP_NODELAY` on every accepted socket. Without it an SSE answer, written
//!   in several small pieces, waits for the client's delayed ACK (Nagle), about
//!   40 ms per request on the session path real clients use. `warp::serve`
//!   does not set it.
//! - A header timeout (a request's headers must be complete this long after
//!   the connection opened or the request's first byte: slowloris), an idle
//!   timeout (a keep-alive connection with no request), a body timeout (a stall
//!   between two pieces of a request body ends the body with an error, and the
//!   answer becomes `408` with `Connection: close`).
//! - A cap on open connections: past it, a new connection gets an immediate
//!   `503` and is closed, logged once per burst and counted in `/metrics`.
//!
//! Per-request lines are DEBUG (a span per request, one line per answer); the
//! counts are in `/metrics` ([`render_metrics`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use warp::http::{header, HeaderValue, Request, Response, StatusCode};

/// What one client may hold; `None` disables a timeout.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest time from a connection's opening (or a request's first byte) to
    /// the end of the request's headers.
    pub header_timeout: Option<Duration>,
    /// Longest time a keep-alive connection may wait for its next request.
    pub keep_alive_timeout: Option<Duration>,
    /// Longest stall between two pieces of a request body.
    pub body_timeout: Option<Duration>,
    /// Open connections at most; new ones past it are refused with 503.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Some(Duration::from_secs(30)),
            keep_alive_timeout: Some(Duration::from_secs(120)),
            body_timeout: Some(Duration::from_secs(60)),
            max_connections: 8192,
        }
    }
}

/// File descriptors kept for everything but client connections: containers'
/// streams, the Podman or Kubernetes API, log files, manifests.
const RESERVED_DESCRIPTORS: u64 = 1024;
/// Refusals being written at once; past it a refused connection is just closed.
const MAX_REFUSING: usize = 256;
/// How long a refused client gets to read its 503 before the socket closes.
const REFUSAL_GRACE: Duration = Duration::from_secs(2);
/// Pause after an accept error that is not the client's (out of descriptors):
/// the pending connection stays queued and would fail again at once.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

impl Limits {
    /// Fits `max_connections` to the process's descriptor limit: raises the
    /// soft `RLIMIT_NOFILE` to the hard one (what Go and systemd services do),
    /// and if that is still short, lowers the cap with a warning, so that the
    /// clear 503 comes before accept() starts failing.
    pub fn fit_to_descriptors(mut self) -> Self {
        let Some(available) = raise_descriptor_limit() else {
            return self;
        };
        let needed = self.max_connections as u64 + RESERVED_DESCRIPTORS;
        if available < needed {
            let fitted = available
                .saturating_sub(RESERVED_DESCRIPTORS)
                .max(available / 2) as usize;
            warn!(
                max_connections = self.max_connections,
                descriptor_limit = available,
                serving_at_most = fitted,
                "--max-connections needs more file descriptors than RLIMIT_NOFILE allows; raise LimitNOFILE (or ulimit -n)"
            );
            self.max_connections = fitted;
        }
        self
    }
}

/// Raises the soft descriptor limit to the hard one; returns the limit now in force.
pub fn raise_descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    Some(limit.rlim_cur)
}

/// Counters for `/metrics`, process-wide.
struct Counters {
    accepted: AtomicU64,
    closed: AtomicU64,
    refused: AtomicU64,
    requests: AtomicU64,
    header_timeouts: AtomicU64,
    keep_alive_timeouts: AtomicU64,
    body_timeouts: AtomicU64,
}

static COUNTERS: Counters = Counters {
    accepted: AtomicU64::new(0),
    closed: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    requests: AtomicU64::new(0),
    header_timeouts: AtomicU64::new(0),
    keep_alive_timeouts: AtomicU64::new(0),
    body_timeouts: AtomicU64::new(0),
};

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Appends the connection and request counts in the Prometheus text format.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write;
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let accepted = get(&COUNTERS.accepted);
    let open = accepted.saturating_sub(get(&COUNTERS.closed));
    let simple = [
        (
            "mcpod_http_connections_open",
            "gauge",
            "HTTP connections open now.",
            open,
        ),
        (
            "mcpod_http_connections_total",
            "counter",
            "HTTP connections accepted and served.",
            accepted,
        ),
        (
            "mcpod_http_connections_refused_total",
            "counter",
            "HTTP connections refused with 503 at the --max-connections cap.",
            get(&COUNTERS.refused),
        ),
        (
            "mcpod_http_requests_total",
            "counter",
            "HTTP requests received.",
            get(&COUNTERS.requests),
        ),
    ];
    for (name, kind, help, value) in simple {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let name = "mcpod_http_timeouts_total";
    let _ = writeln!(
        out,
        "# HELP {name} HTTP connections closed (header, idle) or requests ended (body) by a timeout.\n# TYPE {name} counter"
    );
    for (kind, counter) in [
        ("header", &COUNTERS.header_timeouts),
        ("keep_alive", &COUNTERS.keep_alive_timeouts),
        ("body", &COUNTERS.body_timeouts),
    ] {
        let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {}", get(counter));
    }
}

/// Serves `filter` on `listener` until `shutdown` completes; then stops
/// accepting, lets every connection finish its requests (idle ones close at
/// once) and returns when all are closed. Callers bound that wait: a stream
/// that never ends would hold it forever.
pub async fn serve<F>(
    filter: F,
    listener: TcpListener,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let service = TowerToHyperService::new(warp::service(filter));
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let stopping = CancellationToken::new();
    // Every connection task holds a sender: all closed when `recv` sees none.
    let (open_tx, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let mut refusals = Burst::default();
    let mut accept_errors = Burst::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_client_error(&e) => continue,
                Err(e) => {
                    if accept_errors.begin() {
                        warn!(error = %e, "accepting connections fails; retrying");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        if let Some(failed) = accept_errors.end() {
            info!(failed, "accepting connections again");
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            count(&COUNTERS.refused);
            if refusals.begin() {
                warn!(
                    max_connections = limits.max_connections,
                    "too many open connections: refusing new ones with 503 (--max-connections)"
                );
            }
            refuse(stream, limits.max_connections, &refusing);
            continue;
        };
        if let Some(refused) = refusals.end() {
            info!(refused, "below the connection cap again: accepting");
        }
        count(&COUNTERS.accepted);
        let connection = Connection {
            limits: limits.clone(),
            stopping: stopping.clone(),
            _permit: permit,
            _open: open_tx.clone(),
        };
        tokio::spawn(connection.serve(stream, service.clone()));
    }
    drop(listener);
    stopping.cancel();
    drop(open_tx);
    let _ = all_closed.recv().await;
}

/// Errors of one client's connection attempt, not of the listener.
fn is_client_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A run of events logged once: at its start, and with its count at its end.
#[derive(Default)]
struct Burst(Option<u64>);

impl Burst {
    /// Counts one event; true for the first of a burst.
    fn begin(&mut self) -> bool {
        let first = self.0.is_none();
        *self.0.get_or_insert(0) += 1;
        first
    }

    /// Ends a burst; its count, if one was going on.
    fn end(&mut self) -> Option<u64> {
        self.0.take()
    }
}

/// Answers a connection over the cap with 503 and closes it, without holding
/// the accept loop. The client's request is read and dropped after the answer
/// so that closing does not reset the connection before the client reads it.
fn refuse(mut stream: TcpStream, max_connections: usize, refusing: &Arc<Semaphore>) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return; // a flood: closed at once
    };
    tokio::spawn(async move {
        let _permit = permit;
        let body = format!(
            "mcpod: too many open connections (the limit is {max_connections}); try again shortly\n"
        );
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.set_nodelay(true);
        let _ = tokio::time::timeout(REFUSAL_GRACE, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
    });
}

/// One accepted connection and what it holds until it closes.
struct Connection {
    limits: Arc<Limits>,
    stopping: CancellationToken,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _open: tokio::sync::mpsc::Sender<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        count(&COUNTERS.closed);
    }
}

impl Connection {
    async fn serve<S, B>(self, stream: TcpStream, service: S)
    where
        S: hyper::service::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // The reason for this module: answers go out as they are written.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let activity = Arc::new(Activity::new(self.limits.clone()));
        let io = TokioIo::new(Watched {
            stream,
            activity: activity.clone(),
        });
        let service = Requests {
            inner: service,
            activity: activity.clone(),
            body_timeout: self.limits.body_timeout,
        };
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            // The header timeout is this module's (it also covers the idle time
            // before a request, which hyper's would count against the headers).
            .header_read_timeout(None)
            .serve_connection(io, service);
        tokio::pin!(connection);
        // One timer per connection, moved rather than made anew (see `Activity::arm`).
        let check = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(check);
        let mut stopping = false;
        loop {
            let next_check = activity.arm();
            if let Some(at) = next_check {
                if at != check.deadline() {
                    check.as_mut().reset(at);
                }
            }
            tokio::select! {
                result = &mut connection => {
                    if let Err(e) = result {
                        debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = activity.changed.notified() => {}
                _ = &mut check, if next_check.is_some() => {
                    if let Some(expired) = activity.expired() {
                        count(expired.counter());
                        debug!(timeout = expired.name(), "closing the connection: timed out");
                        return;
                    }
                }
                _ = self.stopping.cancelled(), if !stopping => {
                    // Idle connections close at once; others after their answer.
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Where a connection is between requests, for its timeouts.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's headers, since the connection opened or the
    /// request's first byte arrived.
    Headers { since: Instant },
    /// No request and no byte of one since the last answer.
    Idle { since: Instant },
    /// Requests whose answers are not fully sent (an SSE stream stays here).
    Busy { requests: usize },
}

#[derive(Debug, Clone, Copy)]
enum Expired {
    Header,
    Idle,
}

impl Expired {
    fn name(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Idle => "keep_alive",
        }
    }

    fn counter(self) -> &'static AtomicU64 {
        match self {
            Expired::Header => &COUNTERS.header_timeouts,
            Expired::Idle => &COUNTERS.keep_alive_timeouts,
        }
    }
}

/// A connection's phase, shared by its socket (bytes read), its requests
/// (started, answered) and its watcher (the timeouts). A std mutex: held for
/// a few instructions, never across an await.
///
/// The watcher wakes at the checks [`Activity::arm`] sets, and a phase change
/// wakes it only when the new phase needs a check before the one set: a
/// request on a kept-alive connection changes phase three times and wakes
/// nobody (a wake and a new timer each time cost every request a few µs).
struct Activity {
    limits: Arc<Limits>,
    state: Mutex<Timing>,
    /// Wakes the watcher when a phase change needs an earlier check.
    changed: Notify,
    /// Set when a request body timed out: its answer becomes 408.
    body_timed_out: std::sync::atomic::AtomicBool,
}

struct Timing {
    phase: Phase,
    /// When the watcher checks next (`None`: it sleeps until woken).
    check_at: Option<Instant>,
}

impl Activity {
    fn new(limits: Arc<Limits>) -> Self {
        Activity {
            limits,
            state: Mutex::new(Timing {
                phase: Phase::Headers {
                    since: Instant::now(),
                },
                check_at: None,
            }),
            changed: Notify::new(),
            body_timed_out: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Timing> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes arrived: on an idle connection, a request has begun.
    fn bytes_read(&self) {
        let mut state = self.state();
        if matches!(state.phase, Phase::Idle { .. }) {
            let since = Instant::now();
            self.enter(&mut state, Phase::Headers { since });
        }
    }

    /// A request's headers are in; the returned guard lasts until its answer is sent.
    fn request_started(self: &Arc<Self>) -> Answering {
        let mut state = self.state();
        let requests = match state.phase {
            Phase::Busy { requests } => requests + 1,
            _ => 1,
        };
        self.enter(&mut state, Phase::Busy { requests });
        Answering(self.clone())
    }

    fn request_answered(&self) {
        let mut state = self.state();
        let next = match state.phase {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        };
        self.enter(&mut state, next);
    }

    /// Moves to `phase`, waking the watcher only if it must check sooner.
    fn enter(&self, state: &mut Timing, phase: Phase) {
        state.phase = phase;
        let Some(needed) = next_check(phase, Instant::now(), &self.limits) else {
            return;
        };
        if state.check_at.is_none_or(|at| needed < at) {
            self.changed.notify_one();
        }
    }

    /// The watcher's next check, from now: recorded, so that phase changes
    /// know whether they must wake it.
    fn arm(&self) -> Option<Instant> {
        let mut state = self.state();
        state.check_at = next_check(state.phase, Instant::now(), &self.limits);
        state.check_at
    }

    fn expired(&self) -> Option<Expired> {
        let phase = self.state().phase;
        let deadline = deadline(phase, &self.limits)?;
        if Instant::now() < deadline {
            return None;
        }
        match phase {
            Phase::Headers { .. } => Some(Expired::Header),
            Phase::Idle { .. } => Some(Expired::Idle),
            Phase::Busy { .. } => None,
        }
    }
}

/// When `phase` runs out (`None`: it cannot).
fn deadline(phase: Phase, limits: &Limits) -> Option<Instant> {
    match phase {
        Phase::Headers { since } => limits.header_timeout.map(|t| since + t),
        Phase::Idle { since } => limits.keep_alive_timeout.map(|t| since + t),
        Phase::Busy { .. } => None,
    }
}

/// When the watcher should next look at a connection in `phase`: never later
/// than the phase's deadline, and never later than the deadline of a phase it
/// may pass into without waking the watcher. An idle connection is looked at
/// once a header timeout after it went idle (its next request's headers run
/// out no sooner), and a busy one every header timeout (its answer may end at
/// any moment, and the idle time after it no sooner).
fn next_check(phase: Phase, now: Instant, limits: &Limits) -> Option<Instant> {
    let soonest = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match phase {
        Phase::Headers { .. } => deadline(phase, limits),
        Phase::Idle { since } => {
            let header_check = limits.header_timeout.map(|t| since + t);
            match (header_check, deadline(phase, limits)) {
                (Some(check), Some(end)) if check > now && check < end => Some(check),
                (Some(check), None) if check > now => Some(check),
                (_, end) => end,
            }
        }
        Phase::Busy { .. } => {
            soonest(limits.header_timeout, limits.keep_alive_timeout).map(|every| now + every)
        }
    }
}

/// Held from a request's headers until its answer is sent (or dropped).
struct Answering(Arc<Activity>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.request_answered();
    }
}

/// The socket, telling its connection's [`Activity`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Each request of a connection: its body timed, its answer tracked, a DEBUG
/// span around it.
#[derive(Clone)]
struct Requests<S> {
    inner: S,
    activity: Arc<Activity>,
    body_timeout: Option<Duration>,
}

type Answer<B> = Response<Tracked<B>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Requests<S>
where
    S: hyper::service::Service<Request<TimedBody>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Body,
{
    type Response = Answer<B>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Answer<B>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        count(&COUNTERS.requests);
        let answering = self.activity.request_started();
        let span = tracing::debug_span!(
            "request",
            method = %request.method(),
            path = %request.uri().path()
        );
        let traced =
            crate::telemetry::http_span(request.method(), request.uri().path(), request.headers());
        let timeout = self.body_timeout;
        let activity = self.activity.clone();
        let request = request.map(|body| TimedBody::new(body, timeout, activity.clone()));
        let answer = self.inner.call(request);
        let status_of = traced.clone();
        let began = std::time::Instant::now();
        Box::pin(
            async move {
                let Ok(mut response) = answer.await;
                if activity.body_timed_out.swap(false, Ordering::Relaxed) {
                    // The body was cut short: say so, and drop the connection,
                    // whose next bytes would be the rest of this body.
                    *response.status_mut() = StatusCode::REQUEST_TIMEOUT;
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                status_of.record("http.response.status_code", response.status().as_u16());
                debug!(
                    status = response.status().as_u16(),
                    elapsed_us = began.elapsed().as_micros() as u64,
                    "answered"
                );
                Ok(response.map(|body| Tracked {
                    body,
                    _answering: answering,
                }))
            }
            .instrument(traced)
            .instrument(span),
        )
    }
}

/// An answer's body, holding its request's [`Answering`] until hyper drops
/// it, which is when it is fully sent or the connection is gone.
struct Tracked<B> {
    body: B,
    _answering: Answering,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body stalled for longer than the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no more of the request body for {0:?} (--body-timeout)")]
pub struct BodyTimeout(Duration);

/// A request body whose stalls are bounded: while the client sends nothing,
/// a timer runs; when it runs out the body ends with [`BodyTimeout`].
pub struct TimedBody {
    inner: Incoming,
    timeout: Option<Duration>,
    /// Running while the body waits for the client (created on the first wait).
    stall: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    timed_out: bool,
    activity: Arc<Activity>,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Option<Duration>, activity: Arc<Activity>) -> Self {
        TimedBody {
            inner,
            timeout,
            stall: None,
            waiting: false,
            timed_out: false,
            activity,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let Some(timeout) = this.timeout else {
            return Poll::Pending;
        };
        if !this.waiting {
            // The client owes the next piece from now on.
            this.waiting = true;
            let deadline = Instant::now() + timeout;
            match &mut this.stall {
                Some(stall) => stall.as_mut().reset(deadline),
                None => this.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let Some(stall) = &mut this.stall else {
            return Poll::Pending;
        };
        ready!(stall.as_mut().poll(cx));
        this.timed_out = true;
        count(&COUNTERS.body_timeouts);
        this.activity.body_timed_out.store(true, Ordering::Relaxed);
        debug!(?timeout, "request body stalled: ending it");
        Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn limits() -> Limits {
        Limits {
            header_timeout: Some(Duration::from_secs(1)),
            keep_alive_timeout: Some(Duration::from_secs(5)),
            body_timeout: None,
            max_connections: 1,
        }
    }

    fn activity(limits: Limits) -> Arc<Activity> {
        Arc::new(Activity::new(Arc::new(limits)))
    }

    /// Whether the watcher was woken since it last looked.
    fn woken(activity: &Activity) -> bool {
        use futures::FutureExt;
        activity.changed.notified().now_or_never().is_some()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_runs_out_of_header_or_keep_alive_time_but_never_while_answering() {
        let activity = activity(limits());
        advance(Duration::from_millis(999)).await;
        assert!(activity.expired().is_none());
        // More bytes of the same headers do not buy time.
        activity.bytes_read();
        advance(Duration::from_millis(1)).await;
        assert!(matches!(activity.expired(), Some(Expired::Header)));

        let answering = activity.request_started();
        assert_eq!(deadline(activity.state().phase, &activity.limits), None);
        advance(Duration::from_secs(3600)).await;
        assert!(activity.expired().is_none(), "a long SSE answer");

        drop(answering);
        advance(Duration::from_secs(4)).await;
        assert!(activity.expired().is_none());
        // The next request's first byte: its headers have the header timeout.
        activity.bytes_read();
        advance(Duration::from_millis(999)).await;
        assert!(activity.expired().is_none());
        advance(Duration::from_millis(1)).await;
        assert!(matches!(activity.expired(), Some(Expired::Header)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_runs_out_of_keep_alive_time() {
        let activity = activity(limits());
        drop(activity.request_started());
        advance(Duration::from_millis(4999)).await;
        assert!(activity.expired().is_none());
        advance(Duration::from_millis(1)).await;
        assert!(matches!(activity.expired(), Some(Expired::Idle)));
        let off = self::activity(Limits {
            keep_alive_timeout: None,
            ..limits()
        });
        drop(off.request_started());
        advance(Duration::from_secs(3600)).await;
        assert!(off.expired().is_none(), "0 disables it");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_on_a_kept_alive_connection_wake_nobody() {
        let activity = activity(limits());
        activity.arm();
        for _ in 0..3 {
            let answering = activity.request_started();
            advance(Duration::from_millis(10)).await;
            drop(answering);
            advance(Duration::from_millis(10)).await;
            activity.bytes_read();
            assert!(!woken(&activity), "no wake-up for a request's phases");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_phase_that_runs_out_sooner_than_the_watcher_looks_wakes_it() {
        // A keep-alive timeout shorter than the header timeout: an answered
        // request's idle time runs out before the check set for its headers.
        let activity = activity(Limits {
            header_timeout: Some(Duration::from_secs(5)),
            keep_alive_timeout: Some(Duration::from_secs(1)),
            ..limits()
        });
        activity.arm();
        let answering = activity.request_started();
        drop(answering);
        assert!(woken(&activity));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_looks_no_later_than_any_deadline() {
        let activity = activity(limits());
        // Busy: looked at every header timeout; nothing runs out meanwhile.
        let answering = activity.request_started();
        for _ in 0..3 {
            assert_eq!(
                activity.arm(),
                Some(Instant::now() + Duration::from_secs(1))
            );
            advance(Duration::from_secs(1)).await;
            assert!(activity.expired().is_none());
        }
        drop(answering);
        // Idle: looked at once a header timeout in (a request begun by then
        // runs out no sooner), then at the keep-alive deadline.
        let idle_since = Instant::now();
        assert_eq!(activity.arm(), Some(idle_since + Duration::from_secs(1)));
        advance(Duration::from_secs(1)).await;
        assert!(activity.expired().is_none());
        assert_eq!(activity.arm(), Some(idle_since + Duration::from_secs(5)));
        advance(Duration::from_secs(4)).await;
        assert!(matches!(activity.expired(), Some(Expired::Idle)));
    }

    #[test]
    fn a_burst_is_reported_at_its_start_and_counted_at_its_end() {
        let mut burst = Burst::default();
        assert_eq!(burst.end(), None);
        assert!(burst.begin());
        assert!(!burst.begin());
        assert_eq!(burst.end(), Some(2));
        assert!(burst.begin());
    }
}
