//! `make bench`: mcpod's router against baselines measured in the same run, on
//! the same real MCP server (`mcp-server-time` in its container):
//! - warm requests: HTTP through mcpod vs. a direct stdio pipe (`podman run -i`, and
//!   one into a container with mcpod's limits and hardening; `echo` on server-everything too),
//!   in the handshake era and in the per-request era of protocol 2026-07-28,
//!   interleaved in blocks, every path driven by a blocking client as
//!   lean as the pipe's (and once more through reqwest, for reference);
//! - the session path real clients (the SDKs, the Inspector) use: a session and
//!   `Accept: application/json, text/event-stream`, answered as SSE, against the
//!   plain-JSON path in the same run;
//! - throughput at 8/64/256 clients, plain JSON and sessions; at 64, against one
//!   direct pipe with 64 requests in flight;
//! - cold start: first reply through mcpod vs. raw `podman start -ai` plus the first reply;
//! - resume: first reply from a paused server (`spec.pauseAfter`) vs. that cold start;
//! - `tools/list` on the aggregated endpoint `/mcp` with its server scaled to
//!   zero (answered from the catalog) vs. on the running server's own endpoint.
//!
//! mcpod runs with `RUST_LOG=info`, the level the shipped unit and manifests use.
//!
//! Results are ratios, printed; nothing here asserts a time.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

use common::http::Http1;
use common::{initialize, ms, sse_message, stats, Mcpod, Stats, INITIALIZED};

const IMAGE: &str = "localhost/mcpod/time:latest";
const WARM_ROUNDS: usize = 300;
/// Warm requests measured per block (see [`interleave`]), after
/// `WARM_BLOCK_SKIPPED` that wake the path's server up again.
const WARM_BLOCK: usize = 30;
const WARM_BLOCK_SKIPPED: usize = 5;
/// Blocks per path: 1,200 interleaved samples each (about 1 ms apiece).
const WARM_BLOCKS: usize = 40;
const COLD_ROUNDS: usize = 5;

/// `server-everything`, whose `echo` answers in a fraction of mcp-server-time's
/// time: there mcpod's cost weighs most.
const FAST_IMAGE: &str = "localhost/mcpod/everything:latest";

fn echo(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"message":"bench"}}}).to_string()
}

fn call(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"get_current_time","arguments":{"timezone":"UTC"}}}).to_string()
}

/// The same call as a 2026-07-28 client sends it: the envelope in `_meta`.
fn call_per_request(id: u64) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"get_current_time","arguments":{"timezone":"UTC"},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}).to_string()
}

/// The server's container on a direct stdio pipe, past the MCP handshake.
fn initialized_pipe(
    image: &str,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    initialized_pipe_with(image, &[])
}

/// What mcpod's own container of a server has by default (`create_spec`):
/// its user, read-only root with a tmpfs `/tmp`, no capabilities, CPU, memory
/// and process limits, rlimits, and a user namespace of its own. The pipe into
/// a container like this is "a direct stdio pipe into the same container".
const MCPOD_CONTAINER: &[&str] = &[
    "--user",
    "65534",
    "--read-only",
    "--tmpfs",
    "/tmp",
    "--cap-drop",
    "all",
    "--security-opt",
    "no-new-privileges",
    "--cpus",
    "1",
    "--memory",
    "512m",
    "--memory-swap",
    "512m",
    "--pids-limit",
    "1024",
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=1024:1024",
    "--uidmap",
    "0:2000000000:65536",
    "--gidmap",
    "0:2000000000:65536",
];

/// [`initialized_pipe`] with extra `podman run` options.
fn initialized_pipe_with(
    image: &str,
    options: &[&str],
) -> (
    std::process::Child,
    std::process::ChildStdin,
    BufReader<std::process::ChildStdout>,
) {
    let mut child = Command::new("podman")
        .args(["run", "-i", "--rm", "--network", "none", "--init"])
        .args(options)
        .arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("podman run");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    writeln!(stdin, "{}", initialize(0)).unwrap();
    stdout.read_line(&mut line).unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    (child, stdin, stdout)
}

/// A direct pipe asked one request at a time; closing it ends its container.
struct PipeClient {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    line: String,
}

impl PipeClient {
    fn open(image: &str, options: &[&str]) -> PipeClient {
        let (child, stdin, stdout) = initialized_pipe_with(image, options);
        PipeClient {
            child,
            stdin: Some(stdin),
            stdout,
            line: String::new(),
        }
    }

    /// Sends `request` and reads until the answer with `id`, past any
    /// notification the server sends of its own (list changes, logs).
    fn ask(&mut self, request: &str, id: u64) {
        // One write, as mcpod makes one: `writeln!` would write the newline
        // apart, and the server would wait for a second relay of it.
        let line = format!("{request}\n");
        self.stdin
            .as_mut()
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
        loop {
            self.line.clear();
            self.stdout.read_line(&mut self.line).unwrap();
            let message: Value = serde_json::from_str(&self.line).unwrap();
            if message.get("id").is_some() {
                assert_eq!(message["id"], id, "{message}");
                return;
            }
        }
    }
}

impl Drop for PipeClient {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Requests per second over one direct stdio pipe with `in_flight` requests
/// outstanding at any time: the baseline for mcpod's throughput at as many clients.
fn pipe_throughput(in_flight: usize) -> f64 {
    let (mut child, mut stdin, mut stdout) = initialized_pipe(IMAGE);
    let mut line = String::new();
    // The writer keeps `in_flight` requests outstanding: one more per answer.
    let (answered, answers) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        let mut id = 0u64;
        let mut send = |stdin: &mut std::process::ChildStdin| {
            id += 1;
            stdin.write_all(format!("{}\n", call(id)).as_bytes())
        };
        for _ in 0..in_flight {
            send(&mut stdin).unwrap();
        }
        while answers.recv().is_ok() {
            if send(&mut stdin).is_err() {
                break;
            }
        }
    });
    let began = Instant::now();
    let until = began + Duration::from_secs(THROUGHPUT_SECONDS);
    let mut seen = std::collections::HashSet::new();
    while Instant::now() < until {
        line.clear();
        stdout.read_line(&mut line).unwrap();
        let reply: Value = serde_json::from_str(&line).unwrap();
        assert!(reply["result"].is_object(), "{reply}");
        assert!(seen.insert(reply["id"].as_u64().unwrap()), "{reply}");
        answered.send(()).unwrap();
    }
    let rate = seen.len() as f64 / began.elapsed().as_secs_f64();
    drop(answered);
    writer.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    rate
}

/// `podman start -ai` of an existing container until the reply to `initialize`.
fn raw_cold_starts() -> Vec<Duration> {
    let name = format!("mcpod-bench-raw-{}", std::process::id());
    let created = Command::new("podman")
        .args([
            "create",
            "-i",
            "--name",
            &name,
            "--network",
            "none",
            "--init",
            IMAGE,
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(created.success());
    let mut samples = vec![];
    for _ in 0..COLD_ROUNDS {
        let began = Instant::now();
        let mut child = Command::new("podman")
            .args(["start", "-ai", &name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        writeln!(stdin, "{}", initialize(0)).unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        samples.push(began.elapsed());
        drop(stdin);
        let _ = child.wait();
    }
    let _ = Command::new("podman")
        .args(["rm", "-f", &name])
        .stdout(Stdio::null())
        .status();
    samples
}

fn start_mcpod() -> Mcpod {
    Mcpod::start(
        &[
            common::manifest("time", IMAGE),
            common::manifest("everything", FAST_IMAGE),
        ],
        &[],
    )
}

/// mcpod's resident memory, from /proc.
fn rss_mib(mcpod: &Mcpod) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", mcpod.child.id())).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// mcpod's resident memory once the load has gone: the lowest reading over two
/// of its memory-trimming intervals (freed heap goes back to the system then).
fn rss_once_idle(mcpod: &Mcpod) -> f64 {
    let until = Instant::now() + 2 * mcpod::memory::TRIM_INTERVAL + Duration::from_secs(1);
    let mut lowest = rss_mib(mcpod);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
        lowest = lowest.min(rss_mib(mcpod));
    }
    lowest
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> Value {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Warm round trips on each path, interleaved in blocks so that every path
/// sees the same machine: the direct pipe, and through mcpod plain
/// JSON, a session answered as SSE, and the 2026-07-28 per-request era. Each
/// HTTP path has a kept-alive connection of a blocking client as lean as the
/// pipe's ([`Http1`]): the ratios are mcpod's cost, not an HTTP library's.
struct Warm {
    pipe: Vec<Duration>,
    /// The pipe into a container with mcpod's limits and hardening.
    pipe_like_mcpod: Vec<Duration>,
    plain: Vec<Duration>,
    session: Vec<Duration>,
    per_request: Vec<Duration>,
}

fn warm_interleaved(mcpod: &Mcpod) -> Warm {
    const PATH: &str = "/mcp/time";
    const SSE: (&str, &str) = ("accept", "application/json, text/event-stream");
    const VERSION: (&str, &str) = ("mcp-protocol-version", "2025-06-18");
    let mut direct = PipeClient::open(IMAGE, &[]);
    let mut like_mcpod = PipeClient::open(IMAGE, MCPOD_CONTAINER);
    let mut plain = Http1::connect(&mcpod.url);
    let mut per_request = Http1::connect(&mcpod.url);
    let mut session = Http1::connect(&mcpod.url);
    let opened = session.post(PATH, &[SSE, VERSION], &initialize(0));
    let session_id = opened
        .header("mcp-session-id")
        .expect("initialize opens a session")
        .to_string();
    let in_session = [SSE, VERSION, ("mcp-session-id", session_id.as_str())];
    assert_eq!(session.post(PATH, &in_session, INITIALIZED).status, 202);
    let era_headers = [
        ("accept", "application/json"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "get_current_time"),
    ];
    let mut pipe = |id: u64| direct.ask(&call(id), id);
    let mut pipe_like_mcpod = |id: u64| like_mcpod.ask(&call(id), id);
    let mut plain = |id: u64| {
        answers(
            &plain.post(PATH, &[("accept", "application/json")], &call(id)),
            id,
        )
    };
    let mut session = |id: u64| {
        let reply = session.post(PATH, &in_session, &call(id));
        assert_eq!(
            reply.header("content-type"),
            Some("text/event-stream"),
            "a session request accepting SSE is answered as SSE: {}",
            reply.body
        );
        assert_eq!(sse_message(&reply.body)["id"], id, "{}", reply.body);
    };
    let mut per_request = |id: u64| {
        answers(
            &per_request.post(PATH, &era_headers, &call_per_request(id)),
            id,
        )
    };
    let [pipe, pipe_like_mcpod, plain, session, per_request] = interleave([
        &mut pipe,
        &mut pipe_like_mcpod,
        &mut plain,
        &mut session,
        &mut per_request,
    ]);
    Warm {
        pipe,
        pipe_like_mcpod,
        plain,
        session,
        per_request,
    }
}

/// Checks that a JSON reply answers request `id`.
fn answers(reply: &common::http::Reply, id: u64) {
    let reply: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(reply["id"], id, "{reply}");
}

/// Runs each path in blocks of consecutive requests, the paths taking turns:
/// each path's server is as warm as it is under steady traffic (a server left
/// idle while the others ran answers its next request slower), and a drift of
/// the machine over the run reaches every path alike. Returns each path's
/// measured round trips.
fn interleave<const N: usize>(paths: [&mut dyn FnMut(u64); N]) -> [Vec<Duration>; N] {
    let mut samples: [Vec<Duration>; N] = std::array::from_fn(|_| vec![]);
    let mut id = 0;
    for round in 0..WARM_BLOCKS {
        for k in turns(N, round) {
            for n in 0..(WARM_BLOCK + WARM_BLOCK_SKIPPED) {
                id += 1;
                let began = Instant::now();
                paths[k](id);
                if n >= WARM_BLOCK_SKIPPED {
                    samples[k].push(began.elapsed());
                }
            }
        }
    }
    samples
}

/// The order of `n` paths in `round`: each path goes first as often as the
/// others, and follows each other path as often. What ran just before a
/// block leaves traces in it (which CPU each process was last woken on, whose
/// caches are warm): with a fixed order one path would always pay for its
/// predecessor. `n` must be prime for the steps to cover every order.
fn turns(n: usize, round: usize) -> impl Iterator<Item = usize> {
    let first = round % n;
    let step = 1 + (round / n) % (n - 1).max(1);
    (0..n).map(move |k| (first + k * step) % n)
}

/// `echo` on server-everything: a direct pipe against mcpod's plain JSON, interleaved.
fn warm_echo(mcpod: &Mcpod) -> (Vec<Duration>, Vec<Duration>) {
    let mut direct = PipeClient::open(FAST_IMAGE, &[]);
    let mut http = Http1::connect(&mcpod.url);
    let mut pipe = |id: u64| direct.ask(&echo(id), id);
    let mut plain = |id: u64| {
        let reply = http.post(
            "/mcp/everything",
            &[("accept", "application/json")],
            &echo(id),
        );
        answers(&reply, id)
    };
    let [pipe, plain] = interleave([&mut pipe, &mut plain]);
    // Scaled to zero again: the catalog listing below answers from catalogs.
    let stopped = http.post("/servers/everything/stop", &[], "");
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    (pipe, plain)
}

async fn through_router(mcpod: &Mcpod) -> (Vec<Duration>, Vec<Duration>) {
    let client = reqwest::Client::new();
    let endpoint = format!("{}/mcp/time", mcpod.url);
    let mut cold = vec![];
    for _ in 0..COLD_ROUNDS {
        client
            .post(format!("{}/servers/time/stop", mcpod.url))
            .send()
            .await
            .unwrap();
        let began = Instant::now();
        // A call, not `initialize`: a stopped server introduces itself from its catalog.
        let reply = post(&client, &endpoint, call(0)).await;
        assert!(reply["result"].is_object(), "{reply}");
        cold.push(began.elapsed());
    }
    let mut warm = vec![];
    for id in 1..=(WARM_ROUNDS as u64 + 20) {
        let began = Instant::now();
        let reply = post(&client, &endpoint, call(id)).await;
        assert_eq!(reply["id"], id, "{reply}");
        if id > 20 {
            warm.push(began.elapsed());
        }
    }
    (warm, cold)
}

/// The first reply from a paused server (the same image with `pauseAfter`,
/// declared last so it is not part of `/mcp`'s listing above); each round
/// waits until it is paused.
async fn resume_from_paused(mcpod: &Mcpod) -> Vec<Duration> {
    std::fs::write(
        mcpod.manifests.path().join("paused.yaml"),
        format!("apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata: {{name: paused}}\nspec: {{image: {IMAGE}, pauseAfter: 200ms}}\n"),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let endpoint = format!("{}/mcp/paused", mcpod.url);
    let status = format!("{}/servers/paused", mcpod.url);
    let declared = Instant::now() + Duration::from_secs(30);
    while client.get(&status).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < declared, "paused.yaml was not picked up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut resumed = vec![];
    for id in 0..=(COLD_ROUNDS as u64 * 2) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let paused = async || {
            let response = client.get(&status).send().await.unwrap();
            response.json::<Value>().await.unwrap()["status"] == "paused"
        };
        while id > 0 && !paused().await {
            assert!(Instant::now() < deadline, "never paused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let began = Instant::now();
        let reply = post(&client, &endpoint, call(id)).await;
        assert!(reply["result"].is_object(), "{reply}");
        if id > 0 {
            resumed.push(began.elapsed()); // round 0 is its cold start
        }
    }
    resumed
}

/// `tools/list` on the running server's endpoint, then on `/mcp` with the
/// server stopped (from the catalog: it must stay stopped).
async fn catalog_listing(mcpod: &Mcpod) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let client = reqwest::Client::new();
    // A group of every server, served at /groups/bench/mcp once the manifest is read.
    std::fs::write(
        mcpod.manifests.path().join("group.yaml"),
        "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServerGroup\nmetadata: {name: bench}\nspec: {selector: {}}\n",
    )
    .unwrap();
    let list = |id: u64| json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}).to_string();
    let own = format!("{}/mcp/time", mcpod.url);
    let aggregate = format!("{}/mcp", mcpod.url);
    let mut running = vec![];
    for id in 1..=(WARM_ROUNDS as u64 + 20) {
        let began = Instant::now();
        let reply = post(&client, &own, list(id)).await;
        assert_eq!(reply["id"], id, "{reply}");
        if id > 20 {
            running.push(began.elapsed());
        }
    }
    let stop = format!("{}/servers/time/stop", mcpod.url);
    client.post(&stop).send().await.unwrap();
    let mut stopped = vec![];
    for id in 1..=(WARM_ROUNDS as u64 + 20) {
        let began = Instant::now();
        let reply = post(&client, &aggregate, list(id)).await;
        assert!(reply["result"]["tools"][0]["name"].is_string(), "{reply}");
        if id > 20 {
            stopped.push(began.elapsed());
        }
    }
    let groups = format!("{}/groups", mcpod.url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed: Value = client
            .get(&groups)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listed.to_string().contains("/groups/bench/mcp") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group was not read: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let group = format!("{}/groups/bench/mcp", mcpod.url);
    let mut grouped = vec![];
    for id in 1..=(WARM_ROUNDS as u64 + 20) {
        let began = Instant::now();
        let reply = post(&client, &group, list(id)).await;
        assert!(reply["result"]["tools"][0]["name"].is_string(), "{reply}");
        if id > 20 {
            grouped.push(began.elapsed());
        }
    }
    let status: Value = client
        .get(format!("{}/servers/time", mcpod.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "stopped", "listing started it: {status}");
    (running, stopped, grouped)
}

/// Requests in flight on the direct pipe whose throughput mcpod's at as many clients is compared with.
const PIPE_IN_FLIGHT: usize = 64;

/// How long each throughput round runs.
const THROUGHPUT_SECONDS: u64 = 5;

/// Requests per second `clients` concurrent clients get through mcpod, each
/// sending `tools/call` after `tools/call` for a few seconds: plain JSON
/// without a session, or (`session`) the way SDK clients do — a session of
/// their own, accepting SSE, answered as SSE.
async fn throughput(mcpod: &Mcpod, clients: usize, session: bool) -> f64 {
    let endpoint = format!("{}/mcp/time", mcpod.url);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(THROUGHPUT_SECONDS);
    let began = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (http, endpoint) = (http.clone(), endpoint.clone());
            tokio::spawn(async move {
                let base = |request: reqwest::RequestBuilder| {
                    request
                        .header("content-type", "application/json")
                        .header("mcp-protocol-version", "2025-06-18")
                };
                let mut session_id = None;
                if session {
                    let response = base(http.post(&endpoint))
                        .header("accept", "application/json, text/event-stream")
                        .body(initialize(0))
                        .send()
                        .await
                        .unwrap();
                    session_id = Some(
                        response.headers()["mcp-session-id"]
                            .to_str()
                            .unwrap()
                            .to_string(),
                    );
                    response.bytes().await.unwrap();
                }
                let mut done = 0u64;
                let mut id = (c as u64) << 32;
                while Instant::now() < until {
                    id += 1;
                    let mut request = base(http.post(&endpoint)).body(call(id));
                    if let Some(session) = &session_id {
                        request = request
                            .header("accept", "application/json, text/event-stream")
                            .header("mcp-session-id", session);
                    }
                    let text = request.send().await.unwrap().text().await.unwrap();
                    let reply = if session {
                        sse_message(&text)
                    } else {
                        serde_json::from_str(&text).unwrap()
                    };
                    assert_eq!(reply["id"], id, "{reply}");
                    done += 1;
                }
                // As an SDK client closing its transport does.
                if let Some(session) = &session_id {
                    let ended = base(http.delete(&endpoint))
                        .header("mcp-session-id", session)
                        .send()
                        .await
                        .unwrap()
                        .status();
                    assert!(ended.is_success(), "DELETE of a session: {ended}");
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    total as f64 / began.elapsed().as_secs_f64()
}

/// One row of the table: the median and p90, in ms.
fn row(what: &str, stats: &Stats) {
    println!(
        "{what:<44} {:>10.3} {:>10.3}",
        ms(stats.median),
        ms(stats.p90)
    );
}

/// A row of times long enough for one decimal.
fn row_coarse(what: &str, stats: &Stats) {
    println!(
        "{what:<44} {:>10.1} {:>10.1}",
        ms(stats.median),
        ms(stats.p90)
    );
}

/// The ratio of two medians, and how much longer the first took.
fn ratio(what: &str, of: &Stats, to: &Stats) {
    println!(
        "{what}, median: {:.2}x  (+{:.3} ms)",
        ms(of.median) / ms(to.median),
        ms(of.median) - ms(to.median)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to test here
    }
    println!(
        "mcpod benchmark: {IMAGE}, {} interleaved warm requests per path, {COLD_ROUNDS} cold starts\n",
        WARM_BLOCKS * WARM_BLOCK
    );
    let raw_cold = stats(raw_cold_starts());
    let pipe_rate = pipe_throughput(PIPE_IN_FLIGHT);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mcpod = start_mcpod();
    let (warm_reqwest, cold) = runtime.block_on(through_router(&mcpod));
    let interleaved = warm_interleaved(&mcpod);
    let (echo_pipe, echo_mcpod) = warm_echo(&mcpod);
    let (echo_pipe, echo_mcpod) = (stats(echo_pipe), stats(echo_mcpod));
    let direct = stats(interleaved.pipe);
    let direct_like_mcpod = stats(interleaved.pipe_like_mcpod);
    let warm = stats(interleaved.plain);
    let modern = stats(interleaved.per_request);
    let session = stats(interleaved.session);
    let rss_before = rss_mib(&mcpod);
    let rates: Vec<(usize, f64, f64)> = [8, 64, 256]
        .into_iter()
        .map(|clients| {
            let plain = runtime.block_on(throughput(&mcpod, clients, false));
            let sse = runtime.block_on(throughput(&mcpod, clients, true));
            (clients, plain, sse)
        })
        .collect();
    let rss_after = rss_mib(&mcpod);
    let rss_settled = rss_once_idle(&mcpod);
    let (listed_running, listed_stopped, listed_group) = runtime.block_on(catalog_listing(&mcpod));
    let resumed = stats(runtime.block_on(resume_from_paused(&mcpod)));
    let (listed_running, listed_stopped, listed_group) = (
        stats(listed_running),
        stats(listed_stopped),
        stats(listed_group),
    );
    drop(mcpod);
    let (warm_reqwest, cold) = (stats(warm_reqwest), stats(cold));

    println!("{:<44} {:>10} {:>10}", "", "median ms", "p90 ms");
    row("warm: direct stdio pipe (baseline)", &direct);
    row(
        "warm: pipe, container like mcpod's (baseline)",
        &direct_like_mcpod,
    );
    row("warm: HTTP through mcpod", &warm);
    row("warm echo (everything): direct pipe", &echo_pipe);
    row("warm echo (everything): through mcpod", &echo_mcpod);
    row("warm: HTTP through mcpod, reqwest client", &warm_reqwest);
    row("warm: HTTP through mcpod, protocol 2026-07-28", &modern);
    row("warm: HTTP through mcpod, session (SSE)", &session);
    row_coarse("cold: podman start -ai + first reply (baseline)", &raw_cold);
    row_coarse("cold: first request through mcpod", &cold);
    row_coarse("resume: first request to a paused server", &resumed);
    row("tools/list: the running server (baseline)", &listed_running);
    row(
        "tools/list: /mcp, scaled to zero (catalog)",
        &listed_stopped,
    );
    row(
        "tools/list: a group, scaled to zero (catalog)",
        &listed_group,
    );
    println!();
    println!(
        "catalog ratio (/mcp scaled to zero / running server's tools/list, median): {:.2}x",
        ms(listed_stopped.median) / ms(listed_running.median)
    );
    println!(
        "catalog ratio (a group scaled to zero / running server's tools/list, median): {:.2}x",
        ms(listed_group.median) / ms(listed_running.median)
    );
    ratio("warm ratio (mcpod / direct pipe)", &warm, &direct);
    ratio(
        "warm ratio (mcpod / pipe into a container like mcpod's)",
        &warm,
        &direct_like_mcpod,
    );
    ratio(
        "warm ratio, echo on everything (mcpod / direct pipe)",
        &echo_mcpod,
        &echo_pipe,
    );
    ratio(
        "warm ratio, 2026-07-28 (mcpod / direct pipe)",
        &modern,
        &direct,
    );
    ratio(
        "session ratio (session SSE / plain JSON through mcpod)",
        &session,
        &warm,
    );
    println!(
        "cold ratio (mcpod / raw podman start, median): {:.2}x",
        ms(cold.median) / ms(raw_cold.median)
    );
    println!(
        "resume ratio (paused server / cold start through mcpod, median): {:.3}x",
        ms(resumed.median) / ms(cold.median)
    );
    println!();
    println!(
        "mcpod RSS: {rss_before:.1} MiB before the throughput rounds, {rss_after:.1} MiB right after them, \
         {rss_settled:.1} MiB once idle ({} sessions ended, their connections closed)",
        8 + 64 + 256
    );
    let through_mcpod = rates
        .iter()
        .find(|(clients, _, _)| *clients == PIPE_IN_FLIGHT)
        .map_or(0.0, |(_, plain, _)| *plain);
    println!(
        "throughput at {PIPE_IN_FLIGHT} clients (mcpod plain JSON / one direct pipe with {PIPE_IN_FLIGHT} in flight): {:.2}x  ({through_mcpod:.0} / {pipe_rate:.0} req/s)",
        through_mcpod / pipe_rate
    );
    println!();
    println!(
        "{:<10} {:>16} {:>16} {:>22}",
        "clients", "plain JSON req/s", "session req/s", "session / plain JSON"
    );
    for (clients, plain, sse) in rates {
        println!(
            "{clients:<10} {plain:>16.0} {sse:>16.0} {:>21.2}x",
            sse / plain
        );
    }
}
