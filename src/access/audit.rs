//! The audit log: one JSON line per access decision, for MCP requests and
//! management operations. Who (subject, how authenticated), where (server,
//! session), what (method, the tool/prompt/resource name, request id), the
//! outcome and how long it took; never argument values. On a Podman host it
//! is a rotated file under the data directory (mode 0640, as every log);
//! on Kubernetes the router writes it to stdout for the cluster's log pipeline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::auth::{Caller, Via};
use crate::logs::RotatingFile;

/// Where audit lines go.
#[derive(Default)]
pub enum Audit {
    /// Not kept (`--audit-log off`).
    #[default]
    Off,
    /// Standard output, one line each (the Kubernetes router's default).
    Stdout,
    /// A file rotated by size (`serve`'s default: `<data-dir>/logs/audit/audit.log`).
    File {
        path: PathBuf,
        file: Mutex<RotatingFile>,
    },
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Audit::Off => f.write_str("Off"),
            Audit::Stdout => f.write_str("Stdout"),
            Audit::File { path, .. } => write!(f, "File({})", path.display()),
        }
    }
}

impl Audit {
    pub fn file(path: &Path, max_bytes: u64, keep: usize) -> Audit {
        Audit::File {
            path: path.to_path_buf(),
            file: Mutex::new(RotatingFile::open(path, max_bytes, keep)),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Audit::File { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Whether records are kept (building one costs a clock read and a few strings).
    pub fn enabled(&self) -> bool {
        !matches!(self, Audit::Off)
    }

    /// Writes one record; a line that cannot be written is lost, not an error
    /// for the request (the rotating file reports it once, and `/health` lists it).
    pub fn record(&self, record: &Record) {
        if matches!(self, Audit::Off) {
            return;
        }
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(_) => return,
        };
        line.push(b'\n');
        match self {
            Audit::Off => {}
            Audit::Stdout => {
                let _ = std::io::stdout().lock().write_all(&line);
            }
            Audit::File { file, .. } => {
                let _ = file.lock().unwrap().write_all(&line);
            }
        }
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
    pub time: String,
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
            // RFC 3339 with milliseconds and `Z`, without parsing a format string each time.
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
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
        audit.record(&record);
        audit.record(&Record::new(
            &Caller::local(),
            "time",
            "stop",
            Outcome::Denied,
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
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
}
