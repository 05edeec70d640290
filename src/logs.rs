//! Each server's log: what it wrote to stderr and mcpod's notes on its
//! lifecycle, one timestamped line each, in `<data-dir>/logs/containers/<name>.log`;
//! and mcpod's own log file ([`RotatingFile`]). Both are bounded on disk: rotated
//! at a size limit with a fixed number of old files kept, and a server's stderr
//! is rate-limited, so a chatty or hostile server cannot fill the disk.
//!
//! Log files are created mode 0640. A log that cannot be written (read-only or
//! full data directory) is reported once, loudly, and listed by
//! [`write_problems`] (shown in `/health`); mcpod keeps serving without it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use tracing::{error, info};

/// Mode of every log file mcpod creates: the servers' stderr may hold secrets.
pub const LOG_FILE_MODE: u32 = 0o640;
/// Longest line kept in a server's log; the rest is cut (and said so).
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Most lines `tail` returns, whatever is asked (`GET /servers/{name}/logs?tail=N`).
pub const MAX_TAIL_LINES: usize = 10_000;

/// How much a server's log may hold and how fast its stderr may come in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogLimits {
    /// Size at which `<name>.log` is rotated to `<name>.log.1`.
    pub max_bytes: u64,
    /// Rotated files kept (`<name>.log.1` … `.N`); at least one.
    pub keep: usize,
    /// Stderr lines per second a server may write to its log (0 = no limit).
    pub stderr_lines_per_second: u32,
    /// Stderr lines a server may write in a burst above that rate.
    pub stderr_burst: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_bytes: 10 * 1024 * 1024,
            keep: 1,
            stderr_lines_per_second: 100,
            stderr_burst: 1000,
        }
    }
}

static LIMITS: OnceLock<LogLimits> = OnceLock::new();
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// How mcpod writes its own log and each server's: `text` lines for people,
/// or one JSON object per line for Loki, Elasticsearch and the like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Sets the format of every [`ServerLog`] line written afterwards (once, at
/// start-up; later calls are ignored). Without it, lines are text.
pub fn configure_format(format: LogFormat) {
    let _ = FORMAT.set(format);
}

fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// Sets the limits of every [`ServerLog`] opened afterwards (once, at start-up;
/// later calls are ignored). Without it, [`LogLimits::default`] applies.
pub fn configure(limits: LogLimits) {
    let _ = LIMITS.set(limits);
}

fn limits() -> LogLimits {
    LIMITS.get().copied().unwrap_or_default()
}

/// Log files that could not be written, with why: the data directory is
/// read-only or full. Cleared for a file once a write to it succeeds again.
pub fn write_problems() -> Vec<String> {
    problems().lock().unwrap().values().cloned().collect()
}

fn problems() -> &'static Mutex<BTreeMap<PathBuf, String>> {
    static PROBLEMS: OnceLock<Mutex<BTreeMap<PathBuf, String>>> = OnceLock::new();
    PROBLEMS.get_or_init(Default::default)
}

/// Records that `path` cannot be written; true the first time (so the caller
/// warns once, not once per line).
fn record_write_failure(path: &Path, error: &std::io::Error) -> bool {
    let problem = format!(
        "cannot write log {}: {error} (is the data directory read-only or full?); logs are being lost",
        path.display()
    );
    problems()
        .lock()
        .unwrap()
        .insert(path.to_path_buf(), problem)
        .is_none()
}

fn record_write_success(path: &Path) -> bool {
    let mut problems = problems().lock().unwrap();
    !problems.is_empty() && problems.remove(path).is_some()
}

/// Checks that `dir` can be written (creating it if needed), recording a
/// problem for `/health` when it cannot; the error is returned for one warning.
pub fn check_writable(dir: &Path) -> std::result::Result<(), String> {
    let probe = dir.join(".mcpod-write-check");
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"ok"))
        .and_then(|()| std::fs::remove_file(&probe));
    match result {
        Ok(()) => {
            record_write_success(dir);
            Ok(())
        }
        Err(e) => {
            let problem = format!(
                "data directory {} cannot be written: {e}; mcpod keeps serving, but logs and state are lost",
                dir.display()
            );
            problems()
                .lock()
                .unwrap()
                .insert(dir.to_path_buf(), problem.clone());
            Err(problem)
        }
    }
}

/// Opens `path` for appending, creating it with [`LOG_FILE_MODE`] (and
/// tightening an existing file that is more open).
fn open_append(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(LOG_FILE_MODE)
        .open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & !LOG_FILE_MODE != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(LOG_FILE_MODE))?;
    }
    Ok(file)
}

/// Moves `path` to `path.1`, `path.1` to `path.2`, … keeping `keep` old files.
fn rotate(path: &Path, keep: usize) {
    let numbered = |n: usize| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    let keep = keep.max(1);
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    let _ = std::fs::rename(path, numbered(1));
}

/// An append-only file rotated at `max_bytes`, keeping `keep` old files:
/// mcpod's own log (`<data-dir>/logs/router/mcpod.log`).
pub struct RotatingFile {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    max_bytes: u64,
    keep: usize,
    failing: bool,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> RotatingFile {
        let mut rotating = RotatingFile {
            path: path.to_path_buf(),
            file: None,
            written: 0,
            max_bytes,
            keep,
            failing: false,
        };
        rotating.reopen();
        rotating
    }

    fn reopen(&mut self) {
        let opened = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| open_append(&self.path));
        match opened {
            Ok(file) => {
                self.written = file.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(file);
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Reported on stderr, not through `tracing`: this is `tracing`'s own writer.
    fn failed(&mut self, e: &std::io::Error) {
        self.file = None;
        if record_write_failure(&self.path, e) && !self.failing {
            eprintln!(
                "mcpod: WARNING: cannot write its log {}: {e}; logging to stderr only",
                self.path.display()
            );
        }
        self.failing = true;
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.max_bytes > 0 && self.written + buf.len() as u64 > self.max_bytes {
            rotate(&self.path, self.keep);
            self.reopen();
        } else if self.file.is_none() && self.failing {
            self.reopen(); // the disk may have room again
        }
        if let Some(file) = self.file.as_mut() {
            match file.write_all(buf) {
                Ok(()) => {
                    self.written += buf.len() as u64;
                    if self.failing {
                        self.failing = false;
                        record_write_success(&self.path);
                    }
                }
                Err(e) => self.failed(&e),
            }
        }
        // A log line that cannot be kept must not fail the caller.
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A token bucket of lines: `rate` per second, up to `burst` at once.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl RateLimit {
    fn new(rate: u32, burst: u32) -> RateLimit {
        let burst = f64::from(burst.max(1));
        RateLimit {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// Whether one more line may pass at `now`; counts the ones that may not.
    fn admit(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

pub struct ServerLog {
    /// The key the log is named after (the server, or its isolated instance).
    server: String,
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
    limits: LogLimits,
    stderr: Mutex<RateLimit>,
}

impl ServerLog {
    /// A log in `dir` (created if needed), or one that keeps nothing without a dir.
    pub fn open(dir: Option<&Path>, server: &str) -> ServerLog {
        let limits = limits();
        let path = dir.map(|d| d.join(format!("{server}.log")));
        let file = path.as_ref().and_then(|p| {
            let opened = p
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| open_append(p));
            opened.map_err(|e| warn_unwritable(p, &e)).ok()
        });
        ServerLog {
            server: server.to_string(),
            path,
            file: Mutex::new(file),
            limits,
            stderr: Mutex::new(RateLimit::new(
                limits.stderr_lines_per_second,
                limits.stderr_burst,
            )),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Appends one line, prefixed with the time and its source (`stderr`, `mcpod`).
    pub fn write(&self, source: &str, line: &str) {
        let Some(path) = &self.path else { return };
        let mut file = self.file.lock().unwrap();
        if file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() > self.limits.max_bytes)
        {
            rotate(path, self.limits.keep);
            *file = None;
        }
        if file.is_none() {
            // First line, after a rotation, or the directory may be writable again.
            *file = open_append(path)
                .map_err(|e| warn_unwritable(path, &e))
                .ok();
        }
        let Some(handle) = file.as_mut() else { return };
        let line = cut(line, MAX_LINE_BYTES);
        match writeln!(handle, "{}", self.format_line(format(), source, &line)) {
            Ok(()) => {
                if record_write_success(path) {
                    info!(log = %path.display(), "server log writable again");
                }
            }
            Err(e) => {
                warn_unwritable(path, &e);
                *file = None;
            }
        }
    }

    /// One line of the log, in the configured [`LogFormat`].
    fn format_line(&self, format: LogFormat, source: &str, line: &str) -> String {
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
        match format {
            LogFormat::Text => format!("{now} {source} {line}"),
            LogFormat::Json => serde_json::json!({
                "timestamp": now.to_string(),
                "server": self.server,
                "source": source,
                "message": line,
            })
            .to_string(),
        }
    }

    /// Appends one line the server wrote to stderr, unless it writes faster
    /// than `stderr_lines_per_second` (beyond a burst): such lines are dropped
    /// and counted, and one "dropped N lines" note precedes the next line that
    /// passes. Returns whether the line was kept.
    pub fn write_stderr(&self, line: &str) -> bool {
        let dropped = {
            let mut limit = self.stderr.lock().unwrap();
            if !limit.admit(Instant::now()) {
                return false;
            }
            std::mem::take(&mut limit.dropped)
        };
        if dropped > 0 {
            let note = format!(
                "dropped {dropped} stderr lines (over {} lines/s)",
                self.limits.stderr_lines_per_second
            );
            self.write("mcpod", &note);
        }
        self.write("stderr", line);
        true
    }

    /// The last `lines` lines (fewer if the log is shorter; at most
    /// [`MAX_TAIL_LINES`]).
    pub fn tail(&self, lines: usize) -> Vec<String> {
        self.path
            .as_deref()
            .map(|p| tail_file(p, lines))
            .unwrap_or_default()
    }
}

fn warn_unwritable(path: &Path, e: &std::io::Error) {
    if record_write_failure(path, e) {
        error!(log = %path.display(), error = %e, "cannot write a server log (is the data directory read-only or full?); its lines are lost until it can");
    }
}

/// `line` cut to at most `max` bytes (on a character boundary), saying so.
fn cut(line: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if line.len() <= max {
        return line.into();
    }
    let mut end = max;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &line[..end], line.len() - end).into()
}

/// The last `lines` lines of a file (at most [`MAX_TAIL_LINES`]); empty when
/// it does not exist. Memory grows with the lines found, never with `lines`.
pub fn tail_file(path: &Path, lines: usize) -> Vec<String> {
    let lines = lines.min(MAX_TAIL_LINES);
    let Ok(file) = File::open(path) else {
        return vec![];
    };
    let mut tail = std::collections::VecDeque::new();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        tail.push_back(line);
        if tail.len() > lines {
            tail.pop_front();
        }
    }
    tail.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn writes_timestamped_lines_and_tails_them() {
        let dir = tempfile::tempdir().unwrap();
        let log = ServerLog::open(Some(&dir.path().join("containers")), "time");
        for n in 0..5 {
            log.write("stderr", &format!("line {n}"));
        }
        let tail = log.tail(2);
        assert_eq!(tail.len(), 2);
        assert!(tail[0].ends_with(" stderr line 3"), "{tail:?}");
        assert!(tail[1].ends_with(" stderr line 4"));
        assert!(tail[1].contains('T') && tail[1].contains('Z'));
        assert_eq!(log.path().unwrap(), dir.path().join("containers/time.log"));
        let mode = std::fs::metadata(log.path().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn json_lines_carry_time_server_source_and_message() {
        let log = ServerLog::open(None, "time");
        let line = log.format_line(LogFormat::Json, "stderr", "said \"hi\"\n");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["server"], "time");
        assert_eq!(value["source"], "stderr");
        assert_eq!(value["message"], "said \"hi\"\n");
        assert!(value["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(!line.contains('\n'), "one line: {line}");
        let text = log.format_line(LogFormat::Text, "mcpod", "stopped");
        assert!(text.ends_with("Z mcpod stopped"), "{text}");
    }

    #[test]
    fn a_huge_tail_allocates_by_the_file_not_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let log = ServerLog::open(Some(dir.path()), "x");
        log.write("mcpod", "only line");
        assert_eq!(log.tail(usize::MAX).len(), 1);
        assert_eq!(log.tail(0).len(), 0);
    }

    #[test]
    fn without_a_dir_nothing_is_kept() {
        let log = ServerLog::open(None, "x");
        log.write("stderr", "gone");
        assert!(log.tail(10).is_empty());
    }

    #[test]
    fn the_rate_limit_drops_a_flood_and_counts_it() {
        let start = Instant::now();
        let mut limit = RateLimit::new(10, 5);
        let passed = (0..100).filter(|_| limit.admit(start)).count();
        assert_eq!(passed, 5, "only the burst passes at once");
        assert_eq!(limit.dropped, 95);
        // Half a second later, five more tokens.
        let later = start + Duration::from_millis(500);
        let passed = (0..100).filter(|_| limit.admit(later)).count();
        assert_eq!(passed, 5);
        let unlimited = &mut RateLimit::new(0, 0);
        assert!((0..10_000).all(|_| unlimited.admit(start)));
    }

    #[test]
    fn write_stderr_notes_what_it_dropped_once_it_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let log = ServerLog {
            stderr: Mutex::new(RateLimit::new(100, 3)),
            ..ServerLog::open(Some(dir.path()), "noisy")
        };
        let kept = (0..10)
            .filter(|n| log.write_stderr(&format!("flood {n}")))
            .count();
        assert_eq!(kept, 3);
        std::thread::sleep(Duration::from_millis(20)); // the bucket refills
        assert!(log.write_stderr("after"));
        let tail = log.tail(10);
        assert_eq!(tail.len(), 5, "{tail:?}");
        assert!(
            tail[3].ends_with("mcpod dropped 7 stderr lines (over 100 lines/s)"),
            "{tail:?}"
        );
        assert!(tail[4].ends_with("stderr after"));
    }

    #[test]
    fn long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let log = ServerLog::open(Some(dir.path()), "long");
        log.write("stderr", &"é".repeat(MAX_LINE_BYTES));
        let line = &log.tail(1)[0];
        assert!(line.len() < MAX_LINE_BYTES + 100, "{}", line.len());
        assert!(line.ends_with(&format!("({} bytes cut)", MAX_LINE_BYTES)));
    }

    #[test]
    fn rotation_keeps_a_fixed_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router/mcpod.log");
        let mut file = RotatingFile::open(&path, 100, 2);
        for n in 0..50 {
            writeln!(file, "line {n:04} of the router log").unwrap();
        }
        let mut names: Vec<String> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["mcpod.log", "mcpod.log.1", "mcpod.log.2"]);
        for name in names {
            let meta = std::fs::metadata(path.parent().unwrap().join(name)).unwrap();
            assert!(meta.len() <= 100);
            assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        }
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("line 0049"));
    }

    #[test]
    fn an_unwritable_directory_is_a_problem_not_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "not a directory").unwrap();
        let bad = blocker.join("logs");
        assert!(check_writable(&bad).is_err());
        assert!(write_problems()
            .iter()
            .any(|p| p.contains(&bad.display().to_string())));
        let log = ServerLog::open(Some(&bad), "x");
        log.write("mcpod", "lost, quietly after one warning");
        assert!(write_problems()
            .iter()
            .any(|p| p.contains("cannot write log") && p.contains("x.log")));
        assert!(check_writable(dir.path()).is_ok());
    }
}
