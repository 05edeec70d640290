//! What one server's requests cost, recorded where each request finishes
//! (`mcp::call`) and in the server's lifecycle: latency histograms per MCP
//! method and per tool, errors by kind, cold starts, idle stops and the bytes
//! through its stdio.
//!
//! Recording is on the request path, so it stays lock-free and allocation-free:
//! a histogram is a fixed array of atomic counters, a method's histogram is
//! found by the method's index, and a tool's by its slot, taken once under a
//! read lock before the request goes out (a new tool name allocates once).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::mcp::error::RequestError;
use crate::mcp::message::Method;
use crate::runtime::Usage;

/// Upper bounds (seconds) of the request-duration buckets: from a cached
/// answer (about a millisecond) to the default request timeout.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds (seconds) of the cold-start buckets: container start plus `initialize`.
pub const COLD_START_BUCKETS: &[f64] =
    &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];

/// Distinct tool names one server gets a histogram of its own for; calls to
/// any other name (a client can send any) are counted under `other`.
pub const MAX_TOOLS: usize = 32;
/// Tool names longer than this are counted under `other`.
const MAX_TOOL_NAME: usize = 64;

/// A Prometheus histogram of durations: one atomic counter per bucket.
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Writes `name_bucket`, `name_sum` and `name_count` with `labels`
    /// (already rendered, e.g. `server="a",method="b"`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Why a request failed, as the `kind` label of `mcpod_request_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server did not answer within the request timeout.
    Timeout,
    /// The server's container exited while the request waited.
    Crashed,
    /// The server could not be started (failed, or backing off after failures).
    StartFailed,
    /// The server did not become ready within its startup timeout.
    StartupTimeout,
    /// Disabled, removed, busy, or a limit reached: try later.
    Unavailable,
    /// Refused by authorization.
    Forbidden,
    /// The request broke a protocol rule.
    Invalid,
    /// The server answered with a JSON-RPC error.
    JsonrpcError,
    /// A tool call whose result says `isError: true`.
    ToolError,
    /// The client went away before the answer.
    Abandoned,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Timeout,
        ErrorKind::Crashed,
        ErrorKind::StartFailed,
        ErrorKind::StartupTimeout,
        ErrorKind::Unavailable,
        ErrorKind::Forbidden,
        ErrorKind::Invalid,
        ErrorKind::JsonrpcError,
        ErrorKind::ToolError,
        ErrorKind::Abandoned,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Crashed => "crashed",
            ErrorKind::StartFailed => "start_failed",
            ErrorKind::StartupTimeout => "startup_timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Invalid => "invalid",
            ErrorKind::JsonrpcError => "jsonrpc_error",
            ErrorKind::ToolError => "tool_error",
            ErrorKind::Abandoned => "abandoned",
        }
    }

    /// The kind of a request's outcome, `None` for a success.
    pub fn of(outcome: &Result<Value, RequestError>) -> Option<ErrorKind> {
        use RequestError::*;
        let error = match outcome {
            Ok(response) if response.get("error").is_some() => {
                return Some(ErrorKind::JsonrpcError)
            }
            Ok(response) if response.pointer("/result/isError") == Some(&Value::Bool(true)) => {
                return Some(ErrorKind::ToolError)
            }
            Ok(_) => return None,
            Err(error) => error,
        };
        Some(match error {
            RequestTimeout { .. } => ErrorKind::Timeout,
            Crashed { .. } => ErrorKind::Crashed,
            StartFailed { .. } => ErrorKind::StartFailed,
            StartupTimeout { .. } => ErrorKind::StartupTimeout,
            Disabled(_) | Removed(_) | Busy { .. } | TooMany { .. } | ClientLimit { .. } => {
                ErrorKind::Unavailable
            }
            Forbidden(_) => ErrorKind::Forbidden,
            _ => ErrorKind::Invalid,
        })
    }
}

/// Bytes through one server's stdio, over all its containers.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Written to the server's stdin (with the newlines).
    pub to_server: AtomicU64,
    /// Read from the server's stdout.
    pub from_server: AtomicU64,
}

/// One method's histogram and, once it has been used, the method's wire name.
struct MethodSlot {
    name: OnceLock<&'static str>,
    durations: Histogram,
}

/// Every figure of one server that is not in its `Status` (the server's own).
pub struct ServerMetrics {
    /// Indexed by `Method as usize` ([`Method::Other`] is the last variant).
    methods: Box<[MethodSlot]>,
    /// Tool names seen, in order; a slot's index never changes.
    tool_names: RwLock<Vec<Box<str>>>,
    /// `tools[i]` is the histogram of `tool_names[i]`; the last is `other`.
    tools: Box<[Histogram]>,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    pub cold_starts: Histogram,
    /// Thawing a paused container for a request (`spec.pauseAfter`).
    pub resumes: Histogram,
    idle_stops: AtomicU64,
    pub traffic: std::sync::Arc<Traffic>,
    /// The latest resource usage of the running container, from the sampler.
    usage: Mutex<Option<Usage>>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            methods: (0..=Method::Other as usize)
                .map(|_| MethodSlot {
                    name: OnceLock::new(),
                    durations: Histogram::new(REQUEST_BUCKETS),
                })
                .collect(),
            tool_names: RwLock::new(Vec::new()),
            tools: (0..=MAX_TOOLS)
                .map(|_| Histogram::new(REQUEST_BUCKETS))
                .collect(),
            errors: Default::default(),
            cold_starts: Histogram::new(COLD_START_BUCKETS),
            resumes: Histogram::new(REQUEST_BUCKETS),
            idle_stops: AtomicU64::new(0),
            traffic: Default::default(),
            usage: Mutex::new(None),
        }
    }
}

/// A request being timed: recorded by [`RequestTimer::finish`], or as
/// [`ErrorKind::Abandoned`] if it is dropped first (its client went away).
pub struct RequestTimer<'a> {
    metrics: &'a ServerMetrics,
    began: Instant,
    method: Method,
    /// `(method name, tool slot)` of a `tools/call`.
    tool: Option<usize>,
    done: bool,
}

impl RequestTimer<'_> {
    pub fn finish(mut self, outcome: &Result<Value, RequestError>) {
        self.done = true;
        self.record(ErrorKind::of(outcome));
    }

    fn record(&self, error: Option<ErrorKind>) {
        let elapsed = self.began.elapsed();
        let slot = &self.metrics.methods[self.method as usize];
        let _ = slot.name.set(match self.method {
            Method::Other => "other",
            known => known.name(),
        });
        slot.durations.observe(elapsed);
        if let Some(tool) = self.tool {
            self.metrics.tools[tool].observe(elapsed);
        }
        if let Some(kind) = error {
            self.metrics.count_error(kind);
        }
    }
}

impl Drop for RequestTimer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.record(Some(ErrorKind::Abandoned));
        }
    }
}

impl ServerMetrics {
    /// Starts timing `message` (a request), before it is sent on.
    pub fn start(&self, message: &Value) -> RequestTimer<'_> {
        let method = Method::of(message);
        let tool = (method == Method::ToolsCall).then(|| {
            let name = message.pointer("/params/name").and_then(Value::as_str);
            self.tool_slot(name.unwrap_or(""))
        });
        RequestTimer {
            metrics: self,
            began: Instant::now(),
            method,
            tool,
            done: false,
        }
    }

    /// The slot of tool `name`, taking a new one while fewer than
    /// [`MAX_TOOLS`] are taken; `MAX_TOOLS` itself is `other`.
    fn tool_slot(&self, name: &str) -> usize {
        if name.is_empty() || name.len() > MAX_TOOL_NAME {
            return MAX_TOOLS;
        }
        let find = |names: &[Box<str>]| names.iter().position(|n| **n == *name);
        if let Some(slot) = find(&self.tool_names.read().unwrap()) {
            return slot;
        }
        let mut names = self.tool_names.write().unwrap();
        if let Some(slot) = find(&names) {
            return slot;
        }
        if names.len() == MAX_TOOLS {
            return MAX_TOOLS;
        }
        names.push(name.into());
        names.len() - 1
    }

    pub fn count_error(&self, kind: ErrorKind) {
        let index = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.errors[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        let index = ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.errors[index].load(Ordering::Relaxed)
    }

    /// The server was stopped for being idle (scale to zero).
    pub fn count_idle_stop(&self) {
        self.idle_stops.fetch_add(1, Ordering::Relaxed);
    }

    pub fn idle_stops(&self) -> u64 {
        self.idle_stops.load(Ordering::Relaxed)
    }

    pub fn set_usage(&self, usage: Option<Usage>) {
        *self.usage.lock().unwrap() = usage;
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage.lock().unwrap().clone()
    }

    /// Each used method's histogram: `(method, histogram)`.
    pub fn methods(&self) -> impl Iterator<Item = (&'static str, &Histogram)> {
        self.methods
            .iter()
            .filter_map(|slot| Some((*slot.name.get()?, &slot.durations)))
    }

    /// Calls `each(tool, histogram)` for every tool called at least once.
    pub fn for_each_tool(&self, mut each: impl FnMut(&str, &Histogram)) {
        let names = self.tool_names.read().unwrap();
        for (name, histogram) in names.iter().zip(self.tools.iter()) {
            each(name, histogram);
        }
        let other = &self.tools[MAX_TOOLS];
        if other.count() > 0 {
            each("other", other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_histogram_is_cumulative_with_sum_and_count() {
        let histogram = Histogram::new(&[0.01, 0.1]);
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_millis(50));
        histogram.observe(Duration::from_secs(2));
        let mut out = String::new();
        histogram.render(&mut out, "x_seconds", "server=\"s\"");
        assert!(out.contains("x_seconds_bucket{server=\"s\",le=\"0.01\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{server=\"s\",le=\"0.1\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{server=\"s\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_sum{server=\"s\"} 2.055\n"), "{out}");
        assert!(out.contains("x_seconds_count{server=\"s\"} 3\n"));
    }

    fn call(tool: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}})
    }

    #[test]
    fn requests_are_timed_per_method_and_tool_with_tools_bounded() {
        let metrics = ServerMetrics::default();
        metrics
            .start(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .finish(&Ok(json!({"result": {}})));
        metrics
            .start(&json!({"jsonrpc": "2.0", "id": 1, "method": "x/custom"}))
            .finish(&Ok(json!({"error": {"code": -32601}})));
        for n in 0..MAX_TOOLS + 5 {
            metrics
                .start(&call(&format!("t{n}")))
                .finish(&Ok(json!({"result": {"isError": n == 0}})));
        }
        metrics
            .start(&call("t1"))
            .finish(&Ok(json!({"result": {}})));
        let methods: Vec<_> = metrics.methods().map(|(m, h)| (m, h.count())).collect();
        assert_eq!(
            methods,
            [
                ("tools/list", 1),
                ("tools/call", MAX_TOOLS as u64 + 6),
                ("other", 1)
            ]
        );
        let mut tools = vec![];
        metrics.for_each_tool(|name, h| tools.push((name.to_string(), h.count())));
        assert_eq!(tools.len(), MAX_TOOLS + 1);
        assert_eq!(tools[1], ("t1".to_string(), 2));
        assert_eq!(tools[MAX_TOOLS], ("other".to_string(), 5));
        assert_eq!(metrics.errors(ErrorKind::JsonrpcError), 1);
        assert_eq!(metrics.errors(ErrorKind::ToolError), 1);
    }

    #[test]
    fn a_request_dropped_before_its_answer_counts_as_abandoned() {
        let metrics = ServerMetrics::default();
        drop(metrics.start(&call("slow")));
        let timeout = RequestError::RequestTimeout {
            server: "s".into(),
            timeout: Duration::from_secs(1),
        };
        metrics.start(&call("slow")).finish(&Err(timeout));
        assert_eq!(metrics.errors(ErrorKind::Abandoned), 1);
        assert_eq!(metrics.errors(ErrorKind::Timeout), 1);
        let mut tools = vec![];
        metrics.for_each_tool(|name, h| tools.push((name.to_string(), h.count())));
        assert_eq!(tools, [("slow".to_string(), 2)]);
    }
}
