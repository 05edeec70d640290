//! `make bench` (part two): mcpod next to the bridges people run instead, and
//! next to a direct stdio pipe, in one interleaved run on the same servers in
//! the same containers. Every peer launches its server the way its users do,
//! `podman run -i --rm IMAGE`:
//! - supergateway (npm; its shared-server mode is the legacy HTTP+SSE transport),
//! - mcp-proxy from PyPI and mcp-proxy from npm (Streamable HTTP, with and
//!   without sessions),
//! - IBM ContextForge's `mcpgateway.translate` (PyPI `mcp-contextforge-gateway`),
//!
//! installed in `bench/peers/` by `make bench-peers`. It measures p50/p99 at one
//! client and throughput at 8/64/256 clients (every figure from the load
//! generator in `common::load`, which fails the run on a lost or mismatched
//! answer), CPU time per request of the bridge's process tree, the idle memory
//! of the seven example servers behind each, cold start, and mcpod at scale:
//! 1,000 declared servers, 10,000 sessions on one server. Prints one table with
//! ratios to mcpod and writes the raw figures to `target/bench/results.json`.
//!
//! `BENCH_ROUNDS` (2) and `BENCH_SECONDS` (3, per throughput round) scale it.
//! Nothing here asserts a time.

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::load::{self, Conn, Limit, Pipe, Server, StreamCounts, Transport};
use common::{
    container_trees, cpu_seconds, ms, process_tree, remove_containers, rss_mib, stats, Mcpod,
};

const LEVELS: [usize; 3] = [8, 64, 256];
const SEQUENTIAL: u64 = 200;
const WARMUP: u64 = 20;
const COLD_ROUNDS: usize = 3;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether `BENCH_PARTS` (a comma-separated subset of warm,fleet,cold,scale; all by default) names `name`.
fn part(name: &str) -> bool {
    std::env::var("BENCH_PARTS").map_or(true, |parts| parts.split(',').any(|p| p.trim() == name))
}

fn peers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/peers")
}

/// The label on every container this run starts, so all of them can be found and removed.
fn run_label() -> String {
    format!("mcpod-bench={}", std::process::id())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The bridges measured next to mcpod.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    Supergateway,
    McpProxyPypi,
    McpProxyNpm,
    ContextForge,
}

const PEERS: [Peer; 4] = [
    Peer::Supergateway,
    Peer::McpProxyPypi,
    Peer::McpProxyNpm,
    Peer::ContextForge,
];

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Supergateway => "supergateway",
            Peer::McpProxyPypi => "mcp-proxy (PyPI)",
            Peer::McpProxyNpm => "mcp-proxy (npm)",
            Peer::ContextForge => "ContextForge translate",
        }
    }

    fn executable(self) -> PathBuf {
        let dir = peers_dir();
        match self {
            Peer::Supergateway => dir.join("node_modules/.bin/supergateway"),
            Peer::McpProxyNpm => dir.join("node_modules/.bin/mcp-proxy"),
            Peer::McpProxyPypi => dir.join(".venv-mcp-proxy/bin/mcp-proxy"),
            Peer::ContextForge => dir.join(".venv-contextforge/bin/python"),
        }
    }

    fn installed(self) -> bool {
        self.executable().exists()
    }

    /// The command its users run: the bridge around `podman run -i --rm …`.
    fn command(self, port: u16, podman: &[String], stateless: bool) -> Command {
        let line = std::iter::once("podman".to_string())
            .chain(podman.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ");
        let mut command = Command::new(self.executable());
        let port = port.to_string();
        match self {
            Peer::Supergateway => {
                command.args(["--stdio", &line, "--port", &port, "--logLevel", "none"]);
            }
            Peer::McpProxyPypi | Peer::McpProxyNpm => {
                command.args(["--port", &port, "--host", "127.0.0.1"]);
                if stateless {
                    command.arg("--stateless");
                }
                if self == Peer::McpProxyPypi {
                    command.args(["--log-level", "WARNING"]);
                }
                command.arg("--").arg("podman").args(podman);
            }
            Peer::ContextForge => {
                command
                    .args([
                        "-m",
                        "mcpgateway.translate",
                        "--stdio",
                        &line,
                        "--port",
                        &port,
                    ])
                    .args([
                        "--host",
                        "127.0.0.1",
                        "--expose-sse",
                        "--expose-streamable-http",
                    ])
                    .args(["--logLevel", "warning"])
                    // It refuses to start with its placeholder secret; the bench never signs anything.
                    .env(
                        "JWT_SECRET_KEY",
                        "mcpod-bench-only-0123456789abcdef0123456789abcdef",
                    );
            }
        }
        command
    }

    /// The ways clients reach it: (path name, session kind, transport).
    fn paths(self, port: u16, stateless_port: u16) -> Vec<(&'static str, Kind, Transport)> {
        let base = format!("http://127.0.0.1:{port}");
        let streamable = |port: u16, handshake| Transport::Streamable {
            url: format!("http://127.0.0.1:{port}/mcp"),
            handshake,
            accept_sse: true,
        };
        match self {
            Peer::Supergateway => vec![(
                "legacy SSE",
                Kind::Session,
                Transport::LegacySse {
                    url: format!("{base}/sse"),
                },
            )],
            Peer::McpProxyPypi | Peer::McpProxyNpm => vec![
                (
                    "no session (--stateless)",
                    Kind::Plain,
                    streamable(stateless_port, false),
                ),
                ("session", Kind::Session, streamable(port, true)),
            ],
            Peer::ContextForge => vec![
                ("no session", Kind::Plain, streamable(port, false)),
                (
                    "legacy SSE",
                    Kind::Session,
                    Transport::LegacySse {
                        url: format!("{base}/sse"),
                    },
                ),
            ],
        }
    }

    /// Whether a second instance runs for the path without sessions.
    fn needs_stateless_instance(self) -> bool {
        matches!(self, Peer::McpProxyPypi | Peer::McpProxyNpm)
    }
}

fn shell_quote(arg: &str) -> String {
    if arg
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Plain JSON without a session, or a session (answers as SSE, or on a legacy SSE stream).
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Plain,
    Session,
}

/// A bridge process the bench started, in a process group of its own; ending
/// it ends the group and removes the containers it started.
struct Bridge {
    child: Child,
    label: String,
}

impl Bridge {
    fn spawn(mut command: Command, label: String) -> Bridge {
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{command:?}: {e} (run `make bench-peers`)"));
        Bridge { child, label }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: signals our own child's process group.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
        remove_containers(&self.label);
    }
}

/// `podman run -i --rm` of `image` with `extra` arguments, labelled `label`.
fn podman_run(label: &str, extra: &[String], image: &str, args: &[String]) -> Vec<String> {
    let mut run: Vec<String> = ["run", "-i", "--rm", "--label", label]
        .iter()
        .map(|s| s.to_string())
        .collect();
    run.extend(extra.iter().cloned());
    run.push(image.to_string());
    run.extend(args.iter().cloned());
    run
}

/// Connects to `transport` and gets one answer from the server behind it,
/// retrying until `limit`: a bridge that is still starting refuses or fails.
async fn ready(transport: &Transport, limit: Duration) -> Result<(), String> {
    // With a handshake even where the path has none: a bridge without sessions
    // passes the first client's `initialize` to a server that needs one (mcp-server-time).
    let transport = &match transport {
        Transport::Streamable {
            url, accept_sse, ..
        } => Transport::Streamable {
            url: url.clone(),
            handshake: true,
            accept_sse: *accept_sse,
        },
        other => other.clone(),
    };
    let http = reqwest::Client::new();
    let counts = Arc::new(StreamCounts::default());
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match transport.connect(&http, 0xF_FFF0, &counts).await {
            Ok(conn) => match list(&conn).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            },
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(last)
}

async fn list(conn: &Conn) -> Result<(), String> {
    let id = 0xF_FFF0u64 << 32 | 1;
    let answer = conn
        .call(
            id,
            json!({"jsonrpc":"2.0","id":id,"method":"tools/list"}).to_string(),
        )
        .await?;
    if answer["result"]["tools"].is_array() {
        Ok(())
    } else {
        Err(format!("tools/list answered {answer}"))
    }
}

/// One row of the table: a way to reach the server, and the process tree it costs.
struct Row {
    name: String,
    kind: Kind,
    transport: Transport,
    /// The process whose tree is the bridge's CPU and memory (for the pipe, `podman run`).
    pid: u32,
    latencies: Vec<Duration>,
    /// (answered, seconds) summed over rounds, per level.
    rates: Vec<(u64, f64)>,
    cpu_seconds: f64,
    cpu_requests: u64,
    foreign: u64,
    /// Per level: why a run at that level failed (a lost or mismatched answer).
    failures: Vec<Option<String>>,
    /// mcpod or the pipe, which may not fail.
    ours: bool,
}

impl Row {
    fn new(name: String, kind: Kind, transport: Transport, pid: u32) -> Row {
        Row {
            ours: name.starts_with("mcpod") || name.starts_with("stdio"),
            name,
            kind,
            transport,
            pid,
            latencies: vec![],
            rates: vec![(0, 0.0); LEVELS.len()],
            cpu_seconds: 0.0,
            cpu_requests: 0,
            foreign: 0,
            failures: vec![None; LEVELS.len()],
        }
    }

    /// Requests per second at `level`; NaN when a run there failed.
    fn rate(&self, level: usize) -> f64 {
        let (answered, seconds) = self.rates[level];
        if self.failures[level].is_some() {
            return f64::NAN;
        }
        answered as f64 / seconds
    }

    fn cpu_us(&self) -> f64 {
        self.cpu_seconds / self.cpu_requests.max(1) as f64 * 1e6
    }
}

/// Everything that serves one server image during the warm measurements.
struct Lineup {
    rows: Vec<Row>,
    _bridges: Vec<Bridge>,
    pipe: Arc<Pipe>,
    _mcpod: Mcpod,
}

async fn lineup(server: Server) -> Lineup {
    let label = run_label();
    let image = server.image();
    let pipe = Pipe::spawn(&podman_run(&label, &[], image, &[])).await;
    let mut rows = vec![Row::new(
        "stdio pipe (podman run -i)".into(),
        Kind::Plain,
        Transport::Pipe(pipe.clone()),
        pipe.pid(),
    )];
    let mcpod = Mcpod::start(&[common::manifest(server.name(), image)], &[]);
    let endpoint = format!("{}/mcp/{}", mcpod.url, server.name());
    for (name, kind, handshake) in [
        ("mcpod, plain JSON", Kind::Plain, false),
        ("mcpod, session (SSE)", Kind::Session, true),
    ] {
        let transport = Transport::Streamable {
            url: endpoint.clone(),
            handshake,
            accept_sse: handshake,
        };
        rows.push(Row::new(name.into(), kind, transport, mcpod.pid()));
    }
    ready(&rows[1].transport, Duration::from_secs(60))
        .await
        .expect("mcpod serves");
    let mut bridges = vec![];
    for peer in PEERS.into_iter().filter(|p| p.installed()) {
        let (port, stateless_port) = (free_port(), free_port());
        let run = podman_run(&label, &[], image, &[]);
        let main = Bridge::spawn(peer.command(port, &run, false), label.clone());
        let stateless = peer
            .needs_stateless_instance()
            .then(|| Bridge::spawn(peer.command(stateless_port, &run, true), label.clone()));
        for (path, kind, transport) in peer.paths(port, stateless_port) {
            if let Err(e) = ready(&transport, Duration::from_secs(90)).await {
                panic!("{} ({path}) did not answer: {e}", peer.name());
            }
            let pid = match (&stateless, kind) {
                (Some(stateless), Kind::Plain) => stateless.pid(),
                _ => main.pid(),
            };
            rows.push(Row::new(
                format!("{}, {path}", peer.name()),
                kind,
                transport,
                pid,
            ));
        }
        bridges.push(main);
        bridges.extend(stateless);
    }
    Lineup {
        rows,
        _bridges: bridges,
        pipe,
        _mcpod: mcpod,
    }
}

/// The warm measurements, interleaved: each round measures every row at one
/// client, then every row at each level, so load elsewhere on the machine
/// falls on all of them alike.
async fn warm(server: Server, rounds: u64, seconds: u64, throughput: bool) -> Vec<Row> {
    let mut lineup = lineup(server).await;
    for round in 0..rounds {
        for row in &mut lineup.rows {
            let outcome = load::run(
                &row.transport,
                server,
                1,
                WARMUP,
                Limit::Requests(SEQUENTIAL),
            )
            .await;
            outcome.assert_clean(&format!("{} ({}), one client", row.name, server.name()));
            row.latencies.extend(outcome.latencies);
        }
        if !throughput {
            continue;
        }
        for (level, clients) in LEVELS.into_iter().enumerate() {
            for row in &mut lineup.rows {
                let tree = process_tree(row.pid);
                let cpu_before = cpu_seconds(&tree);
                let outcome = load::run(
                    &row.transport,
                    server,
                    clients,
                    1,
                    Limit::Time(Duration::from_secs(seconds)),
                )
                .await;
                let cpu = cpu_seconds(&process_tree(row.pid)) - cpu_before;
                let what = format!("{} ({}), {clients} clients", row.name, server.name());
                if let Some(failure) = outcome.failure() {
                    // mcpod and the pipe must never lose an answer: that fails the bench.
                    // A peer that does gets no figure at that level, only the failure.
                    assert!(!row.ours, "{what}: {failure}");
                    eprintln!("  {what}: FAILED: {failure}");
                    row.failures[level].get_or_insert(failure);
                    continue;
                }
                row.rates[level].0 += outcome.answered;
                row.rates[level].1 += outcome.seconds;
                row.cpu_seconds += cpu;
                row.cpu_requests += outcome.answered;
                row.foreign += outcome.foreign;
                eprintln!(
                    "  round {round}, {clients:>3} clients: {:<44} {:>7.0} req/s",
                    row.name,
                    outcome.rate()
                );
            }
        }
    }
    lineup.pipe.close().await;
    lineup.rows
}

fn print_table(server: Server, rows: &[Row], throughput: bool) -> Value {
    let reference = |kind: Kind| {
        let name = match kind {
            Kind::Plain => "mcpod, plain JSON",
            Kind::Session => "mcpod, session (SSE)",
        };
        rows.iter().find(|r| r.name == name).unwrap()
    };
    println!(
        "\n{} ({}): ratios are to mcpod's path of the same kind (no session → plain JSON; session or SSE → session)",
        server.name(),
        server.image()
    );
    if throughput {
        println!(
            "{:<46} {:>7} {:>7} {:>6} {:>7} {:>7} {:>7} {:>6} {:>8} {:>6}",
            "",
            "p50 ms",
            "p99 ms",
            "×p50",
            "8 cl/s",
            "64 cl/s",
            "256cl/s",
            "×64cl",
            "CPU µs/r",
            "×CPU"
        );
    } else {
        println!("{:<46} {:>7} {:>7} {:>6}", "", "p50 ms", "p99 ms", "×p50");
    }
    let mut out = vec![];
    for row in rows {
        let s = stats(row.latencies.clone());
        let base = reference(row.kind);
        let b = stats(base.latencies.clone());
        let p50_ratio = ms(s.median) / ms(b.median);
        let mut line = format!(
            "{:<46} {:>7.3} {:>7.3} {:>5.2}×",
            row.name,
            ms(s.median),
            ms(s.p99),
            p50_ratio
        );
        let mut figures = json!({
            "path": row.name,
            "kind": format!("{:?}", row.kind),
            "p50_ms": ms(s.median),
            "p99_ms": ms(s.p99),
            "p50_ratio_to_mcpod": p50_ratio,
            "samples": row.latencies.len(),
        });
        if throughput {
            let rates: Vec<f64> = (0..LEVELS.len()).map(|l| row.rate(l)).collect();
            let rate_ratio = rates[1] / base.rate(1);
            let cpu_ratio = row.cpu_us() / base.cpu_us();
            let rate = |r: f64| {
                if r.is_nan() {
                    "FAILED".to_string()
                } else {
                    format!("{r:.0}")
                }
            };
            line += &format!(
                " {:>7} {:>7} {:>7} {:>5.2}× {:>8.0} {:>5.2}×",
                rate(rates[0]),
                rate(rates[1]),
                rate(rates[2]),
                rate_ratio,
                row.cpu_us(),
                cpu_ratio
            );
            figures["failures"] = json!(LEVELS
                .iter()
                .zip(&row.failures)
                .filter_map(|(l, f)| f.as_ref().map(|f| (l.to_string(), json!(f))))
                .collect::<serde_json::Map<_, _>>());
            figures["throughput_req_per_s"] = json!(LEVELS
                .iter()
                .zip(&rates)
                .map(|(l, r)| (l.to_string(), json!(r)))
                .collect::<serde_json::Map<_, _>>());
            figures["throughput_64_ratio_to_mcpod"] = json!(rate_ratio);
            figures["cpu_us_per_request"] = json!(row.cpu_us());
            figures["cpu_ratio_to_mcpod"] = json!(cpu_ratio);
            figures["answers_to_other_clients_received"] = json!(row.foreign);
        }
        println!("{line}");
        out.push(figures);
    }
    json!(out)
}

/// The seven example servers, with this run's host folder and volumes swapped
/// in: (name, manifest text, spec).
fn fleet_manifests(files: &std::path::Path) -> Vec<(String, String, Value)> {
    let pid = std::process::id();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut manifests: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    manifests.sort();
    manifests
        .into_iter()
        .filter_map(|path| {
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("/srv/mcpod/files", &files.display().to_string())
                .replace("mcpod-git-repos", &format!("mcpod-bench-git-{pid}"))
                .replace("mcpod-memory-data", &format!("mcpod-bench-memory-{pid}"));
            // The seven servers; examples/ also holds a group (several documents).
            let manifest = serde_yaml::from_str::<Value>(&text).ok()?;
            if manifest["kind"] != "MCPServer" {
                return None;
            }
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            Some((name, text, manifest["spec"].clone()))
        })
        .collect()
}

/// The `podman run` options a user writes for `spec`: network, environment, volumes.
fn podman_options(spec: &Value) -> (Vec<String>, Vec<String>) {
    let mut options = vec![];
    if let Some(network) = spec["network"].as_str() {
        options.extend(["--network".into(), network.into()]);
    }
    for env in spec["env"].as_array().into_iter().flatten() {
        options.extend([
            "-e".into(),
            format!(
                "{}={}",
                env["name"].as_str().unwrap(),
                env["value"].as_str().unwrap_or("")
            ),
        ]);
    }
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let source = volume["hostPath"]
            .as_str()
            .or(volume["volume"].as_str())
            .unwrap();
        let read_only = if volume["readOnly"] == json!(true) {
            ":ro"
        } else {
            ""
        };
        options.extend([
            "-v".into(),
            format!(
                "{source}:{}{read_only}",
                volume["mountPath"].as_str().unwrap()
            ),
        ]);
    }
    let args = spec["args"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    (options, args)
}

/// Memory of the seven example servers behind mcpod (scaled to zero, and all
/// running) and behind seven bridges of each peer (each with its server running).
async fn fleet() -> Value {
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("hello.txt"), "hello\n").unwrap();
    let manifests = fleet_manifests(files.path());
    let mut results = serde_json::Map::new();
    let mut printed = vec![];

    let mcpod = Mcpod::start(
        &manifests
            .iter()
            .map(|(n, t, _)| (format!("{n}.yaml"), t.clone()))
            .collect::<Vec<_>>(),
        &["--allow-host-path", &files.path().display().to_string()],
    );
    // Its servers are declared, none started: what an idle fleet costs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib(&process_tree(mcpod.pid()));
    printed.push(("mcpod, seven servers scaled to zero".to_string(), idle));
    let http = reqwest::Client::new();
    for (name, _, _) in &manifests {
        let transport = Transport::Streamable {
            url: format!("{}/mcp/{name}", mcpod.url),
            handshake: true,
            accept_sse: true,
        };
        ready(&transport, Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{name} through mcpod: {e}"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running = rss_mib(&process_tree(mcpod.pid()))
        + rss_mib(&container_trees(&format!(
            "mcpod.dev/instance={}",
            mcpod.instance
        )));
    printed.push(("mcpod, all seven running".to_string(), running));
    drop(http);
    drop(mcpod);

    // A stdio client's own `podman run -i` per server, then each peer.
    {
        let label = format!("{}-fleet-pipe", run_label());
        let mut pipes = vec![];
        for (_, _, spec) in &manifests {
            let (options, args) = podman_options(spec);
            pipes.push(
                Pipe::spawn(&podman_run(
                    &label,
                    &options,
                    spec["image"].as_str().unwrap(),
                    &args,
                ))
                .await,
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pids: Vec<u32> = pipes.iter().flat_map(|p| process_tree(p.pid())).collect();
        let total = rss_mib(&pids) + rss_mib(&container_trees(&label));
        printed.push((
            "stdio pipes (podman run -i), seven running".to_string(),
            total,
        ));
        for pipe in &pipes {
            pipe.close().await;
        }
        remove_containers(&label);
    }
    for peer in PEERS.into_iter().filter(|p| p.installed()) {
        let label = format!("{}-fleet-{}", run_label(), peer as u8);
        let mut bridges = vec![];
        for (name, _, spec) in &manifests {
            let (options, args) = podman_options(spec);
            let port = free_port();
            let run = podman_run(&label, &options, spec["image"].as_str().unwrap(), &args);
            bridges.push(Bridge::spawn(
                peer.command(port, &run, false),
                label.clone(),
            ));
            let (_, _, transport) = peer.paths(port, port).pop().unwrap();
            ready(&transport, Duration::from_secs(120))
                .await
                .unwrap_or_else(|e| panic!("{name} behind {}: {e}", peer.name()));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pids: Vec<u32> = bridges.iter().flat_map(|b| process_tree(b.pid())).collect();
        let total = rss_mib(&pids) + rss_mib(&container_trees(&label));
        printed.push((format!("{}, seven running", peer.name()), total));
        drop(bridges);
    }
    for volume in ["git", "memory"] {
        let _ = Command::new("podman")
            .args([
                "volume",
                "rm",
                "-f",
                &format!("mcpod-bench-{volume}-{}", std::process::id()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    println!("\nidle fleet of the seven example servers (RSS of the bridge's process tree and its containers, summed)");
    for (name, mib) in &printed {
        println!("{name:<46} {mib:>8.0} MiB {:>7.1}× mcpod idle", mib / idle);
        results.insert(
            name.clone(),
            json!({"rss_mib": mib, "ratio_to_mcpod_idle": mib / idle}),
        );
    }
    Value::Object(results)
}

/// Cold start on `everything`: from nothing running to the first answer.
async fn cold() -> Value {
    let label = format!("{}-cold", run_label());
    let image = Server::Echo.image();
    let mut samples: Vec<(String, Vec<Duration>)> = vec![];
    let mut record = |name: &str, d: Duration| match samples.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(d),
        None => samples.push((name.to_string(), vec![d])),
    };
    let mcpod = Mcpod::start(&[common::manifest("everything", image)], &[]);
    let http = reqwest::Client::new();
    let transport = Transport::Streamable {
        url: format!("{}/mcp/everything", mcpod.url),
        handshake: false,
        accept_sse: false,
    };
    let counts = Arc::new(StreamCounts::default());
    for _ in 0..COLD_ROUNDS {
        let began = Instant::now();
        let pipe = Pipe::spawn(&podman_run(&label, &[], image, &[])).await;
        record("raw podman run -i + initialize", began.elapsed());
        pipe.close().await;

        http.post(format!("{}/servers/everything/stop", mcpod.url))
            .send()
            .await
            .unwrap();
        let began = Instant::now();
        let conn = transport.connect(&http, 1, &counts).await.unwrap();
        let answer = conn
            .call(1 << 32 | 1, Server::Echo.call(1 << 32 | 1))
            .await
            .unwrap();
        assert!(Server::Echo.answers(1 << 32 | 1, &answer), "{answer}");
        record("mcpod, first request to a stopped server", began.elapsed());

        for peer in PEERS.into_iter().filter(|p| p.installed()) {
            let port = free_port();
            let began = Instant::now();
            let bridge = Bridge::spawn(
                peer.command(port, &podman_run(&label, &[], image, &[]), false),
                label.clone(),
            );
            let (_, _, transport) = peer.paths(port, port).pop().unwrap();
            ready(&transport, Duration::from_secs(120)).await.unwrap();
            record(
                &format!("{}: start + first answer", peer.name()),
                began.elapsed(),
            );
            drop(bridge);
        }
    }
    drop(mcpod);
    remove_containers(&label);
    let reference = ms(stats(samples[1].1.clone()).median);
    let raw = ms(stats(samples[0].1.clone()).median);
    println!("\ncold start, everything (median of {COLD_ROUNDS})");
    let mut out = serde_json::Map::new();
    for (name, times) in samples {
        let median = ms(stats(times.clone()).median);
        println!(
            "{name:<46} {median:>8.0} ms {:>6.2}× mcpod {:>+8.0} ms over raw",
            median / reference,
            median - raw
        );
        out.insert(
            name,
            json!({"median_ms": median, "ratio_to_mcpod": median / reference,
            "samples_ms": times.iter().map(|d| ms(*d)).collect::<Vec<_>>()}),
        );
    }
    Value::Object(out)
}

/// 1,000 declared servers, all scaled to zero: how long until `mcpod serve`
/// lists them all, and its memory then.
async fn thousand_servers() -> Value {
    let files: Vec<(String, String)> = (0..1000)
        .map(|i| common::manifest(&format!("s{i:04}"), Server::Echo.image()))
        .collect();
    let began = Instant::now();
    let mcpod = Mcpod::start(&files, &[]);
    let listening = began.elapsed();
    let http = reqwest::Client::new();
    loop {
        let servers: Value = http
            .get(format!("{}/servers", mcpod.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let count = servers
            .as_array()
            .or(servers["servers"].as_array())
            .map_or(0, Vec::len);
        if count == 1000 {
            break;
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "only {count} of 1000 listed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let reconciled = began.elapsed();
    let rss = rss_mib(&[mcpod.pid()]);
    println!(
        "\n1,000 declared servers, all scaled to zero: listening after {:.0} ms, all 1,000 listed after {:.0} ms; mcpod RSS {rss:.1} MiB",
        ms(listening),
        ms(reconciled)
    );
    json!({"servers": 1000, "listening_ms": ms(listening), "all_listed_ms": ms(reconciled), "mcpod_rss_mib": rss})
}

/// 10,000 client sessions open at once on one server, each having called
/// `echo` once, then each calling it again (proving all are alive): mcpod's
/// memory per session.
async fn ten_thousand_sessions() -> Value {
    const SESSIONS: usize = 10_000;
    const CONNECTIONS: usize = 256;
    let mcpod = Mcpod::start(
        &[common::manifest("everything", Server::Echo.image())],
        // Room for the readiness probe's session too; every session here is one local caller's.
        &[
            "--max-sessions",
            "10100",
            "--max-sessions-per-client",
            "10100",
        ],
    );
    let endpoint = format!("{}/mcp/everything", mcpod.url);
    let transport = Transport::Streamable {
        url: endpoint,
        handshake: true,
        accept_sse: true,
    };
    ready(&transport, Duration::from_secs(60)).await.unwrap();
    // The readiness probe's own session, and allocator warm-up, before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_mib(&[mcpod.pid()]);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let counts = Arc::new(StreamCounts::default());
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    let began = Instant::now();
    let opened: Vec<_> = (0..SESSIONS as u64)
        .map(|c| {
            let (transport, http, counts, gate) = (
                transport.clone(),
                http.clone(),
                counts.clone(),
                gate.clone(),
            );
            tokio::spawn(async move {
                let _turn = gate.acquire().await.unwrap();
                let conn = transport.connect(&http, c + 1, &counts).await.unwrap();
                let id = (c + 1) << 32 | 1;
                let answer = conn.call(id, Server::Echo.call(id)).await;
                assert!(
                    answer.is_ok_and(|a| Server::Echo.answers(id, &a)),
                    "session {c}"
                );
                conn
            })
        })
        .collect();
    let mut conns = vec![];
    for task in opened {
        conns.push(task.await.unwrap());
    }
    let opening = began.elapsed();
    let after = rss_mib(&[mcpod.pid()]);
    // Every session again, each answer checked: all 10,000 are still there.
    let conns: Vec<Arc<Conn>> = conns.into_iter().map(Arc::new).collect();
    let again: Vec<_> = conns
        .iter()
        .enumerate()
        .map(|(c, conn)| {
            let (conn, gate) = (conn.clone(), gate.clone());
            tokio::spawn(async move {
                let _turn = gate.acquire().await.unwrap();
                let id = (c as u64 + 1) << 32 | 2;
                conn.call(id, Server::Echo.call(id))
                    .await
                    .is_ok_and(|a| Server::Echo.answers(id, &a))
            })
        })
        .collect();
    let mut answered = 0;
    for task in again {
        answered += task.await.unwrap() as usize;
    }
    assert_eq!(answered, SESSIONS, "every session answers its second call");
    let per_session_kib = (after - before) * 1024.0 / SESSIONS as f64;
    println!(
        "10,000 concurrent sessions on one server ({CONNECTIONS} connections): opened in {:.1} s; mcpod RSS {before:.1} → {after:.1} MiB, {per_session_kib:.1} KiB per session; all 10,000 answered again",
        opening.as_secs_f64()
    );
    json!({"sessions": SESSIONS, "connections": CONNECTIONS, "open_seconds": opening.as_secs_f64(),
        "mcpod_rss_before_mib": before, "mcpod_rss_after_mib": after, "kib_per_session": per_session_kib,
        "answered_again": answered})
}

/// Removes every container this run labelled, also when it fails half-way (a
/// `podman run` client killed before its server exits leaves the container).
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let run = run_label();
        let mut labels = vec![
            run.clone(),
            format!("{run}-cold"),
            format!("{run}-fleet-pipe"),
        ];
        labels.extend(PEERS.iter().map(|p| format!("{run}-fleet-{}", *p as u8)));
        for label in labels {
            remove_containers(&label);
        }
    }
}

fn results_path() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp: the results go next to it.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("bench/results.json")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to test here
    }
    mcpod::listener::raise_descriptor_limit();
    let rounds = setting("BENCH_ROUNDS", 2);
    let seconds = setting("BENCH_SECONDS", 3);
    let missing: Vec<_> = PEERS
        .iter()
        .filter(|p| !p.installed())
        .map(|p| p.name())
        .collect();
    if !missing.is_empty() {
        println!("not installed, left out (make bench-peers): {missing:?}");
    }
    let began = Instant::now();
    let _cleanup = Cleanup;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        println!("mcpod vs peers: {rounds} interleaved rounds, {seconds} s per throughput figure");
        let mut result = json!({
            "machine": machine(),
            "rounds": rounds,
            "throughput_seconds": seconds,
        });
        if part("warm") {
            let echo = warm(Server::Echo, rounds, seconds, true).await;
            let echo = print_table(Server::Echo, &echo, true);
            let time = warm(Server::Time, rounds, seconds, false).await;
            let time = print_table(Server::Time, &time, false);
            result["warm"] = json!({"everything": echo, "time": time});
        }
        if part("fleet") {
            result["fleet"] = fleet().await;
        }
        if part("cold") {
            result["cold_start"] = cold().await;
        }
        if part("scale") {
            result["scale"] = json!({
                "declared_servers": thousand_servers().await,
                "sessions": ten_thousand_sessions().await,
            });
        }
        result
    });
    let mut result = result;
    result["bench_seconds"] = json!(began.elapsed().as_secs_f64());
    let path = results_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string_pretty(&result).unwrap()).unwrap();
    println!(
        "\nraw results: {} ({:.0} s)",
        path.display(),
        began.elapsed().as_secs_f64()
    );
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({"cpus": cpus, "cpu": model, "os": os, "loadavg_at_end": load.trim()})
}
