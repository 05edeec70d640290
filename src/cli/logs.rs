//! `mcpod logs -f NAME`: the last lines of a server's log, then every line
//! appended to it, across rotations (`<name>.log` moved to `<name>.log.1` and
//! begun anew), until interrupted. A log that does not exist yet is waited
//! for: a server declared a moment ago has written nothing.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use super::CliResult;

/// How often the file is looked at for new lines.
const POLL: Duration = Duration::from_millis(200);

pub fn follow(path: &Path, tail: usize) -> CliResult {
    let stdout = std::io::stdout();
    if !path.exists() {
        eprintln!("waiting for {} (no log yet)", path.display());
    }
    let mut printed_tail = false;
    loop {
        let Ok(file) = File::open(path) else {
            std::thread::sleep(POLL);
            continue;
        };
        let inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
        let mut reader = BufReader::new(file);
        if !printed_tail {
            // The tail is taken from what this read sees, and following goes on
            // from exactly there: a line written meanwhile is neither lost nor doubled.
            let mut text = String::new();
            let _ = reader.read_to_string(&mut text);
            let complete = text.rfind('\n').map_or(0, |i| i + 1);
            let lines: Vec<&str> = text[..complete].lines().collect();
            let mut out = stdout.lock();
            for line in &lines[lines.len().saturating_sub(tail)..] {
                let _ = writeln!(out, "{line}");
            }
            let _ = out.flush();
            drop(out);
            // A partial last line is printed once it is complete.
            let _ = reader.seek(SeekFrom::Start(complete as u64));
            printed_tail = true;
        }
        copy_appended(&mut reader, path, inode, &stdout);
    }
}

/// Prints lines as they are appended, until the file is replaced (rotated)
/// or truncated; the caller then opens the new one from its start.
fn copy_appended(reader: &mut BufReader<File>, path: &Path, inode: u64, stdout: &std::io::Stdout) {
    let mut partial = String::new();
    loop {
        let mut chunk = String::new();
        match reader.read_line(&mut chunk) {
            Ok(0) | Err(_) => {
                let position = reader.stream_position().unwrap_or(0);
                match std::fs::metadata(path) {
                    Ok(meta) if meta.ino() == inode && meta.len() >= position => {
                        std::thread::sleep(POLL)
                    }
                    // Rotated, removed or truncated: what remains of this file
                    // was read; the next one starts from the beginning.
                    _ => return,
                }
            }
            Ok(_) => {
                partial.push_str(&chunk);
                if partial.ends_with('\n') {
                    let mut out = stdout.lock();
                    let _ = out.write_all(partial.as_bytes());
                    let _ = out.flush();
                    partial.clear();
                }
            }
        }
    }
}
