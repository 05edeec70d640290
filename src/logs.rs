//! Each server's log: what it wrote to stderr and mcpod's notes on its
//! lifecycle, one timestamped line each, in `<data-dir>/logs/containers/<name>.log`.
//! Rotated once at a size limit, so a chatty server cannot fill the disk.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Size at which `<name>.log` is moved to `<name>.log.1` and a new file begun.
const MAX_LOG_BYTES: u64 = 10 * 1024 * 1024;

pub struct ServerLog {
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
}

impl ServerLog {
    /// A log in `dir` (created if needed), or one that keeps nothing without a dir.
    pub fn open(dir: Option<&Path>, server: &str) -> ServerLog {
        let path = dir.map(|d| d.join(format!("{server}.log")));
        let file = path.as_ref().and_then(|p| {
            std::fs::create_dir_all(p.parent()?).ok()?;
            open_append(p)
        });
        ServerLog {
            path,
            file: Mutex::new(file),
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
            .is_some_and(|m| m.len() > MAX_LOG_BYTES)
        {
            let _ = std::fs::rename(path, path.with_extension("log.1"));
            *file = open_append(path);
        }
        if let Some(file) = file.as_mut() {
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
            let _ = writeln!(file, "{now} {source} {line}");
        }
    }

    /// The last `lines` lines (fewer if the log is shorter).
    pub fn tail(&self, lines: usize) -> Vec<String> {
        self.path
            .as_deref()
            .map(|p| tail_file(p, lines))
            .unwrap_or_default()
    }
}

fn open_append(path: &Path) -> Option<File> {
    OpenOptions::new().create(true).append(true).open(path).ok()
}

/// The last `lines` lines of a file; empty when it does not exist.
pub fn tail_file(path: &Path, lines: usize) -> Vec<String> {
    let Ok(file) = File::open(path) else {
        return vec![];
    };
    let mut tail = std::collections::VecDeque::with_capacity(lines + 1);
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
    }

    #[test]
    fn without_a_dir_nothing_is_kept() {
        let log = ServerLog::open(None, "x");
        log.write("stderr", "gone");
        assert!(log.tail(10).is_empty());
    }
}
