//! The audit log: one JSON line per access decision, for MCP requests and
//! management operations. Who (subject, how authenticated), where (server,
//! session), what (method, the tool/prompt/resource name, request id), the
//! outcome and how long it took; never argument values. On a Podman host it
//! is a rotated file under the data directory (mode 0640, as every log);
//! on Kubernetes the router writes it to stdout for the cluster's log pipeline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::auth::{Caller, Via};
use crate::logs::RotatingFile;

/// How long an audit record may wait in memory before it is written: records
/// are formatted and written together, one write for a burst of requests, so
/// a request's own path neither formats its record nor makes a system call
/// for it (that cost ≈8 µs, a tenth of mcpod's whole share of a warm
/// request). A crash loses at most this much of the log; a clean stop writes
/// everything.
pub const WRITTEN_WITHIN: Duration = Duration::from_millis(100);
/// This many records waiting are written without waiting out [`WRITTEN_WITHIN`].
const WRITE_AT_RECORDS: usize = 512;
/// A writing thread that cannot keep up (a slow disk) makes the requests that
/// add records past this many write them themselves: memory stays bounded.
const WRITE_INLINE_AT_RECORDS: usize = 8 * WRITE_AT_RECORDS;

/// Where audit lines go.
#[derive(Default)]
pub enum Audit {
    /// Not kept (`--audit-log off`).
    #[default]
    Off,
    /// Kept: on standard output (the Kubernetes router's default) or in a file
    /// rotated by size (`serve`'s default: `<data-dir>/logs/audit/audit.log`).
    Kept(Arc<Writer>),
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Audit::Off => f.write_str("Off"),
            Audit::Kept(writer) => match &writer.path {
                Some(path) => write!(f, "File({})", path.display()),
                None => f.write_str("Stdout"),
            },
        }
    }
}

impl Audit {
    /// One line each on standard output.
    pub fn stdout() -> Audit {
        Audit::Kept(Writer::new(None, Sink::Stdout))
    }

    pub fn file(path: &Path, max_bytes: u64, keep: usize) -> Audit {
        let file = RotatingFile::open(path, max_bytes, keep);
        Audit::Kept(Writer::new(Some(path.to_path_buf()), Sink::File(file)))
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Audit::Kept(writer) => writer.path.as_deref(),
            Audit::Off => None,
        }
    }

    /// Whether records are kept (building one costs a clock read and a few strings).
    pub fn enabled(&self) -> bool {
        !matches!(self, Audit::Off)
    }

    /// Keeps one record: written within [`WRITTEN_WITHIN`]. A line that cannot
    /// be written is lost, not an error for the request (the rotating file
    /// reports it once, and `/health` lists it).
    pub fn record(&self, record: Record) {
        if let Audit::Kept(writer) = self {
            writer.add(record);
        }
    }

    /// Writes every record kept so far (a clean stop; tests reading the log).
    pub fn flush(&self) {
        if let Audit::Kept(writer) = self {
            writer.write_waiting();
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        if let Audit::Kept(writer) = self {
            writer.close();
        }
    }
}

/// Audit records on their way out: gathered in memory, formatted and written
/// by a thread of their own [`WRITTEN_WITHIN`] after the first of them (or as
/// soon as [`WRITE_AT_RECORDS`] wait). A std thread, not a task: records come
/// from sync code too, and writing a file blocks.
pub struct Writer {
    path: Option<PathBuf>,
    waiting: Mutex<Waiting>,
    /// Wakes the writing thread when records start waiting, or at close.
    woken: Condvar,
    /// Held while lines are written, so batches reach the sink in order.
    sink: Mutex<Sink>,
}

#[derive(Default)]
struct Waiting {
    records: Vec<Record>,
    thread_started: bool,
    closed: bool,
}

enum Sink {
    Stdout,
    File(RotatingFile),
}

impl Sink {
    fn write(&mut self, lines: &[u8]) {
        let _ = match self {
            Sink::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(lines).and_then(|()| stdout.flush())
            }
            Sink::File(file) => file.write_all(lines),
        };
    }
}

impl Writer {
    fn new(path: Option<PathBuf>, sink: Sink) -> Arc<Writer> {
        Arc::new(Writer {
            path,
            waiting: Mutex::new(Waiting::default()),
            woken: Condvar::new(),
            sink: Mutex::new(sink),
        })
    }

    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(self: &Arc<Self>, record: Record) {
        let mut waiting = self.waiting();
        let first = waiting.records.is_empty();
        waiting.records.push(record);
        let count = waiting.records.len();
        if waiting.closed || count >= WRITE_INLINE_AT_RECORDS {
            drop(waiting);
            self.write_waiting();
            return;
        }
        if !first && count != WRITE_AT_RECORDS {
            return; // the writing thread is already counting down
        }
        if !waiting.thread_started {
            waiting.thread_started = true;
            let writer = self.clone();
            let spawned = std::thread::Builder::new()
                .name("mcpod-audit".into())
                .spawn(move || writer.write_in_batches());
            if spawned.is_err() {
                // No thread: every record is written at once instead.
                waiting.closed = true;
                drop(waiting);
                self.write_waiting();
                return;
            }
        }
        drop(waiting);
        self.woken.notify_one();
    }

    /// The writing thread: sleeps until records wait, lets them gather for
    /// [`WRITTEN_WITHIN`], writes them; until the log is closed.
    fn write_in_batches(&self) {
        let mut waiting = self.waiting();
        loop {
            if waiting.closed {
                return;
            }
            if waiting.records.is_empty() {
                waiting = self.woken.wait(waiting).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let due = Instant::now() + WRITTEN_WITHIN;
            while !waiting.closed
                && waiting.records.len() < WRITE_AT_RECORDS
                && Instant::now() < due
            {
                let left = due.saturating_duration_since(Instant::now());
                waiting = match self.woken.wait_timeout(waiting, left) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                };
            }
            drop(waiting);
            self.write_waiting();
            waiting = self.waiting();
        }
    }

    /// Writes what waits, one JSON line per record, in order with any other batch.
    fn write_waiting(&self) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        let records = std::mem::take(&mut self.waiting().records);
        if records.is_empty() {
            return;
        }
        let mut lines = Vec::with_capacity(records.len() * 256);
        for record in &records {
            if serde_json::to_writer(&mut lines, record).is_ok() {
                lines.push(b'\n');
            }
        }
        sink.write(&lines);
    }

    /// Writes what waits and stops the thread; later records are written at once.
    fn close(&self) {
        self.waiting().closed = true;
        self.woken.notify_one();
        self.write_waiting();
    }
}

/// How a decision came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Allowed, and answered.
    Allowed,
    /// Refused by policy or a rate limit.
    Denied,
    /// Allowed, but the server failed or answered with a JSON-RPC error.
    Error,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// RFC 3339, UTC, milliseconds.
    #[serde(serialize_with = "rfc3339_millis")]
    pub time: chrono::DateTime<chrono::Utc>,
    pub subject: String,
    pub via: Via,
    pub server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The JSON-RPC method, the operation (`start`, `stop`, `logs`), or
    /// `connect` for a caller the server refuses outright.
    pub method: String,
    /// The tool or prompt name, or resource URI, the request names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Value>,
    pub outcome: Outcome,
    /// Why it was denied, or what failed (never argument values).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The JSON-RPC error code of a denial or error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    pub duration_ms: f64,
}

impl Record {
    pub fn new(caller: &Caller, server: &str, method: &str, outcome: Outcome) -> Record {
        Record {
            time: chrono::Utc::now(),
            subject: caller.subject.clone(),
            via: caller.via.clone(),
            server: server.to_string(),
            session: None,
            method: method.to_string(),
            name: None,
            request_id: None,
            outcome,
            reason: None,
            code: None,
            duration_ms: 0.0,
        }
    }

    pub fn took(mut self, duration: Duration) -> Record {
        // Microsecond precision is plenty, and keeps the line short.
        self.duration_ms = (duration.as_secs_f64() * 1e6).round() / 1e3;
        self
    }
}

/// RFC 3339 with milliseconds and `Z` (`2025-11-29T23:41:07.512Z`).
fn rfc3339_millis<S: serde::Serializer>(
    time: &chrono::DateTime<chrono::Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_are_json_lines_in_a_0640_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit/audit.log");
        let audit = Audit::file(&path, 1 << 20, 1);
        let mut record = Record::new(&Caller::local(), "time", "tools/call", Outcome::Allowed)
            .took(Duration::from_micros(1500));
        record.name = Some("get_current_time".into());
        record.request_id = Some(serde_json::json!(7));
        audit.record(record.clone());
        audit.record(Record::new(
            &Caller::local(),
            "time",
            "stop",
            Outcome::Denied,
        ));
        audit.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let time = lines[0]["time"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.len() == 24,
            "RFC 3339 with milliseconds and Z: {time}"
        );
        assert_eq!(lines[0]["subject"], "local");
        assert_eq!(lines[0]["via"], "local");
        assert_eq!(lines[0]["name"], "get_current_time");
        assert_eq!(lines[0]["requestId"], 7);
        assert_eq!(lines[0]["outcome"], "allowed");
        assert_eq!(lines[0]["durationMs"], 1.5);
        assert_eq!(lines[1]["outcome"], "denied");
        assert!(lines[1].get("session").is_none());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn records_are_written_together_soon_after_and_all_of_them_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let lines = || {
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let audit = Audit::file(&path, 1 << 20, 1);
        let record = Record::new(&Caller::local(), "time", "tools/call", Outcome::Allowed);
        let began = Instant::now();
        for _ in 0..3 {
            audit.record(record.clone());
        }
        assert_eq!(
            lines(),
            0,
            "a request's record waits, not written on its path"
        );
        while lines() < 3 {
            assert!(began.elapsed() < WRITTEN_WITHIN * 50, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            began.elapsed() >= WRITTEN_WITHIN,
            "written together after the wait"
        );
        // A full batch is written without waiting for close.
        let many = WRITE_AT_RECORDS;
        for _ in 0..many {
            audit.record(record.clone());
        }
        while lines() < 3 + many {
            assert!(began.elapsed() < WRITTEN_WITHIN * 50, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        // What is left when the log closes is written then.
        audit.record(record.clone());
        let expected = 3 + many + 1;
        drop(audit);
        assert_eq!(lines(), expected);
    }
}
