//! What the benches share: the real `mcpod` binary started on a manifest
//! folder, JSON-RPC bodies, percentiles, SSE bodies, and a process tree's CPU
//! time and memory read from `/proc`. Each bench uses part of it.

#![allow(dead_code)]

pub mod http;
pub mod load;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

pub fn initialize(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}).to_string()
}

pub const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

pub struct Stats {
    pub median: Duration,
    pub p90: Duration,
    pub p99: Duration,
}

pub fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The JSON-RPC message of an SSE answer: the `data:` lines of the event that
/// holds one (a priming event carries only an id).
pub fn sse_message(text: &str) -> Value {
    try_sse_message(text).unwrap_or_else(|| panic!("no JSON-RPC answer in the SSE body: {text}"))
}

/// [`sse_message`], or `None` when the body holds no answer (a stream cut short).
pub fn try_sse_message(text: &str) -> Option<Value> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            serde_json::from_str::<Value>(&data.join("\n")).ok()
        })
        .find(|message| message.get("id").is_some())
}

/// A minimal MCPServer manifest.
pub fn manifest(name: &str, image: &str) -> (String, String) {
    (
        format!("{name}.yaml"),
        format!("apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata: {{name: {name}}}\nspec: {{image: {image}}}\n"),
    )
}

/// The real `mcpod serve` on a folder of manifests, on a loopback port of its own.
pub struct Mcpod {
    pub child: std::process::Child,
    pub url: String,
    pub manifests: tempfile::TempDir,
    _data: tempfile::TempDir,
    pub instance: String,
}

impl Drop for Mcpod {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let _ = Command::new("podman")
            .args([
                "rm",
                "-f",
                "--filter",
                &format!("label=mcpod.dev/instance={}", self.instance),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Mcpod {
    /// Starts mcpod on `files` (file name, YAML) with extra arguments, at
    /// `RUST_LOG=info`, the level the shipped unit and manifests use.
    pub fn start(files: &[(String, String)], args: &[&str]) -> Mcpod {
        let manifests = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(manifests.path().join(name), text).unwrap();
        }
        Self::start_on(manifests, args)
    }

    pub fn start_on(manifests: tempfile::TempDir, args: &[&str]) -> Mcpod {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let data = tempfile::tempdir().unwrap();
        let instance = format!(
            "bench{}x{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::SeqCst)
        );
        // MCPOD_BENCH_BIN measures another build (say, the last release) the same way.
        let binary = std::env::var("MCPOD_BENCH_BIN").unwrap_or(env!("CARGO_BIN_EXE_mcpod").into());
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--manifests")
            .arg(manifests.path())
            .args(["--listen", "127.0.0.1:0", "--instance", &instance])
            .arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("mcpod listening on ")
            .expect("mcpod started")
            .to_string();
        Mcpod {
            child,
            url,
            manifests,
            _data: data,
            instance,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A process and all its descendants, from the parent links in `/proc/*/stat`.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents = vec![];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(fields) = stat_fields(pid) {
            if let Ok(ppid) = fields[1].parse::<u32>() {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut at = 0;
    while at < tree.len() {
        let parent = tree[at];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        at += 1;
    }
    tree
}

/// The fields of `/proc/PID/stat` after the command name (state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    Some(after_name.split(' ').map(str::to_string).collect())
}

/// CPU time (user + system) the processes have used, in seconds.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|pid| stat_fields(*pid))
        .map(|f| {
            // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name.
            f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)
        })
        .sum::<f64>()
        / ticks
}

/// Resident memory of the processes together, in MiB (`VmRSS`, summed).
pub fn rss_mib(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .sum::<f64>()
        / 1024.0
}

/// The process trees of the containers carrying `label` (each from its conmon
/// down: conmon and the server), which a bridge's own tree does not hold.
pub fn container_trees(label: &str) -> Vec<u32> {
    let output = Command::new("podman")
        .args([
            "ps",
            "--filter",
            &format!("label={label}"),
            "--format",
            "{{.ID}}",
        ])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if ids.is_empty() {
        return vec![];
    }
    let output = Command::new("podman")
        .arg("inspect")
        .args(&ids)
        .args(["--format", "{{.State.ConmonPid}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .flat_map(process_tree)
        .collect()
}

/// Removes the containers carrying `label`.
pub fn remove_containers(label: &str) {
    let _ = Command::new("podman")
        .args(["rm", "-f", "-t", "1", "--filter", &format!("label={label}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
