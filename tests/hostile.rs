//! Hostile input and noisy neighbours (issue 11), against the real `mcpod`
//! binary and real Podman containers: a client asking for a huge log tail, a
//! server flooding stderr, a fork bomb next to a healthy server, manifests
//! rewritten in place or declaring a name twice, manifests asking for the
//! host, and a server killed for its memory limit. Each case asserts the
//! bounded outcome and that mcpod keeps answering. Loopback only; every wait
//! has a deadline.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn fixture(name: &str, extra: &str) -> (String, String) {
    (format!("{name}.yaml"), manifest(name, FIXTURE_IMAGE, extra))
}

fn files(list: &[(String, String)]) -> Vec<(&str, String)> {
    list.iter().map(|(n, t)| (n.as_str(), t.clone())).collect()
}

async fn healthy(mcpod: &Mcpod) -> Value {
    let (status, health) = mcpod.get("/health").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "healthy");
    health
}

fn problems(health: &Value) -> Vec<String> {
    health["problems"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| p.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn echo(mcpod: &Mcpod, server: &str, id: u64) -> (u16, Value) {
    mcpod
        .call_tool(
            server,
            json!(id),
            "echo",
            json!({"text": format!("ping {id}")}),
        )
        .await
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test]
async fn a_huge_or_garbage_log_tail_is_refused_or_capped_and_mcpod_survives() {
    let mcpod = Mcpod::start(&files(&[fixture("tailed", "")]), &[]);
    assert_eq!(echo(&mcpod, "tailed", 1).await.0, 200);
    let logs = |query: &str| {
        let url = format!("{}/servers/tailed/logs{query}", mcpod.url);
        let http = mcpod.http.clone();
        async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // The request that aborted the process: answered from what the log holds.
    let (status, text) = logs("?tail=1000000000000").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("starting -> running"), "{text}");
    let (status, _) = logs(&format!("?tail={}", "9".repeat(300))).await;
    assert_eq!(status, 200);
    for garbage in ["?tail=abc", "?tail=-1", "?tail=1e12", "?tail="] {
        let (status, text) = logs(garbage).await;
        assert_eq!(status, 400, "{garbage}: {text}");
        assert!(text.contains("whole number"), "{garbage}: {text}");
    }
    let (status, text) = logs("?tail=2").await;
    assert_eq!(status, 200);
    assert_eq!(text.lines().count(), 2, "{text}");
    healthy(&mcpod).await;
    assert_eq!(echo(&mcpod, "tailed", 2).await.0, 200);
}

#[tokio::test]
async fn a_stderr_flood_stays_within_the_log_caps() {
    // 300,000 lines (about 4 MB) of stderr, while the server keeps serving.
    let flood = fixture(
        "flood",
        r#"command: [sh, -c, "(yes stderr-flood-line | head -n 300000) >&2 & exec python3 -u /usr/local/bin/fake_mcp.py"]"#,
    );
    let mcpod = Mcpod::start(
        &files(&[flood]),
        &[
            "--server-log-max-bytes",
            "100000",
            "--server-log-keep",
            "1",
            "--log-max-bytes",
            "100000",
            "--log-keep",
            "2",
            // The rotation caps alone: the rate limit has a test of its own.
            "--stderr-lines-per-second",
            "0",
        ],
    );
    assert_eq!(echo(&mcpod, "flood", 1).await.0, 200);
    let logs = mcpod.data.path().join("logs");
    let server_log = logs.join("containers/flood.log");
    let own_log = logs.join("router/mcpod.log");
    let container = mcpod.container("flood");
    let ctr_log = inspect(&container).unwrap()["HostConfig"]["LogConfig"]["Path"]
        .as_str()
        .unwrap()
        .to_string();
    // Until the flood is over: the container log no longer grows for a second.
    let mut last = (0, Instant::now());
    wait_until(Duration::from_secs(90), "the stderr flood to end", || {
        let now = size(Path::new(&ctr_log)) + size(&server_log);
        if now != last.0 {
            last = (now, Instant::now());
        }
        last.1.elapsed() > Duration::from_secs(1) && logs.join("containers/flood.log.1").exists()
    });
    let cap = 100_000 + 9 * 1024; // one line past the limit at most
    for file in [
        server_log.clone(),
        logs.join("containers/flood.log.1"),
        own_log.clone(),
    ] {
        assert!(
            size(&file) <= cap,
            "{}: {} bytes",
            file.display(),
            size(&file)
        );
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", file.display());
    }
    assert!(
        !logs.join("containers/flood.log.2").exists(),
        "one rotated file kept"
    );
    assert!(
        !logs.join("router/mcpod.log.3").exists(),
        "two rotated files kept"
    );
    // Podman's own copy (ctr.log) is bounded too.
    assert!(
        size(Path::new(&ctr_log)) <= mcpod::runtime::podman::CONTAINER_LOG_MAX_BYTES,
        "ctr.log is {} bytes",
        size(Path::new(&ctr_log))
    );
    healthy(&mcpod).await;
    assert_eq!(echo(&mcpod, "flood", 2).await.0, 200);
}

#[tokio::test]
async fn a_stderr_flood_is_rate_limited_and_what_was_dropped_is_noted() {
    // 300,000 lines at once, then one more line two seconds later.
    let flood = fixture(
        "chatty",
        r#"command: [sh, -c, "((yes stderr-flood-line | head -n 300000); sleep 2; echo after-the-flood) >&2 & exec python3 -u /usr/local/bin/fake_mcp.py"]"#,
    );
    let mcpod = Mcpod::start(&files(&[flood]), &[]);
    assert_eq!(echo(&mcpod, "chatty", 1).await.0, 200);
    let server_log = mcpod.data.path().join("logs/containers/chatty.log");
    wait_until(Duration::from_secs(60), "the line after the flood", || {
        std::fs::read_to_string(&server_log).is_ok_and(|log| log.contains("after-the-flood"))
    });
    let log = std::fs::read_to_string(&server_log).unwrap();
    let kept = log
        .lines()
        .filter(|l| l.contains("stderr-flood-line"))
        .count();
    assert!(
        (1..=1_300).contains(&kept),
        "the burst (1,000) and the rate (100/s) at most: {kept} kept"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("dropped") && l.contains("stderr lines")),
        "a note says what was dropped"
    );
    let own_log = std::fs::read_to_string(mcpod.data.path().join("logs/router/mcpod.log"))
        .unwrap_or_default();
    assert!(
        !own_log.contains("stderr-flood-line"),
        "server stderr is not copied into mcpod's own log"
    );
    healthy(&mcpod).await;
}

#[tokio::test]
async fn a_fork_bomb_does_not_take_down_its_neighbour() {
    // `bomb` answers initialize, then a second later forks without end.
    let bomb = fixture(
        "bomb",
        "resources: {limits: {memory: 256Mi, cpu: 500m}}\n\
         command: [sh, -c, \"b() { b | b & }; (sleep 1; b) & exec python3 -u /usr/local/bin/fake_mcp.py\"]",
    );
    let calm = fixture("calm", "resources: {limits: {cpu: 500m}}");
    let mcpod = Mcpod::start(&files(&[bomb, calm]), &[]);
    assert_eq!(echo(&mcpod, "calm", 1).await.0, 200);
    let (status, started) = mcpod.post("/servers/bomb/start").await;
    assert_eq!(status, 200, "{started}");
    // The bomb is going off: its container holds hundreds of processes.
    let bomb_container = mcpod.container("bomb");
    wait_until(
        Duration::from_secs(60),
        "the fork bomb to fill its container",
        || {
            let output = Command::new("podman")
                .args(["top", &bomb_container, "pid"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&output.stdout).lines().count() > 500
        },
    );
    // During it, the neighbour answers, starts threads for its tool calls, and
    // even starts a new container of itself (a cold start forks an init and a
    // Python process, which a shared per-uid process limit would refuse).
    let until = Instant::now() + Duration::from_secs(8);
    let mut id = 10;
    while Instant::now() < until {
        id += 1;
        let (status, reply) = echo(&mcpod, "calm", id).await;
        assert_eq!(status, 200, "calm failed during the fork bomb: {reply}");
        assert_eq!(text_of(&reply), format!("ping {id}"));
    }
    let (status, stopped) = mcpod.post("/servers/calm/stop").await;
    assert_eq!(status, 200, "{stopped}");
    let (status, reply) = echo(&mcpod, "calm", 1000).await;
    assert_eq!(
        status, 200,
        "calm could not restart during the fork bomb: {reply}"
    );
    // Each ran in a user namespace of its own: different host uids.
    let host_uid = |server: &str| {
        inspect(&mcpod.container(server)).unwrap()["HostConfig"]["IDMappings"]["UidMap"][0]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_ne!(host_uid("bomb"), host_uid("calm"));
    healthy(&mcpod).await;
}

#[tokio::test]
async fn a_manifest_rewritten_in_place_or_claimed_twice_keeps_its_server() {
    let keep = fixture("keep", "");
    let mcpod = Mcpod::start(&files(std::slice::from_ref(&keep)), &[]);
    assert_eq!(echo(&mcpod, "keep", 1).await.0, 200);
    let container_id = mcpod.status("keep").await["containerId"].clone();
    let file = mcpod.manifests.path().join("keep.yaml");

    // Truncated (as an editor or `>` does before writing): the server stays.
    std::fs::write(&file, "").unwrap();
    wait_for(
        Duration::from_secs(10),
        "the empty file to be noticed",
        async || {
            problems(&healthy(&mcpod).await)
                .iter()
                .any(|p| p.contains("keep.yaml") && p.contains("declares nothing now"))
        },
    )
    .await;
    assert_eq!(mcpod.status("keep").await["status"], "running");
    assert_eq!(echo(&mcpod, "keep", 2).await.0, 200);
    std::fs::write(&file, &keep.1).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the rewritten file to be read",
        async || problems(&healthy(&mcpod).await).is_empty(),
    )
    .await;
    let status = mcpod.status("keep").await;
    assert_eq!(status["status"], "running", "{status}");
    assert_eq!(
        status["containerId"], container_id,
        "the server was not restarted"
    );

    // A second file claiming the name (sorting first): a conflict, not a takeover.
    let intruder = mcpod.manifests.path().join("a-intruder.yaml");
    std::fs::write(&intruder, manifest("keep", TIME_IMAGE, "")).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the conflict to be reported",
        async || {
            problems(&healthy(&mcpod).await)
                .iter()
                .any(|p| p.contains("a-intruder.yaml") && p.contains("conflict"))
        },
    )
    .await;
    let status = mcpod.status("keep").await;
    assert_eq!(status["image"], FIXTURE_IMAGE, "{status}");
    assert_eq!(status["containerId"], container_id);
    assert_eq!(echo(&mcpod, "keep", 3).await.0, 200);
    std::fs::remove_file(&intruder).unwrap();

    // A file that stays gone removes its server, after the debounce.
    std::fs::remove_file(&file).unwrap();
    let gone_at = Instant::now();
    wait_for(
        Duration::from_secs(30),
        "the server to be removed",
        async || mcpod.get("/servers/keep").await.0 == 404,
    )
    .await;
    assert!(
        gone_at.elapsed() >= mcpod::reconcile::REMOVAL_DEBOUNCE,
        "removed after {:?}",
        gone_at.elapsed()
    );
}

#[tokio::test]
async fn manifests_asking_for_the_host_are_refused_by_rule() {
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    std::fs::write(&token, "s3cret").unwrap();
    let shared = tempfile::tempdir().unwrap();
    let big = format!(
        "{}# {}\n",
        manifest("big", FIXTURE_IMAGE, ""),
        "x".repeat(mcpod::manifests::MAX_MANIFEST_BYTES as usize)
    );
    let refused = [
        fixture("etc", "volumes: [{hostPath: /etc, mountPath: /host-etc}]"),
        fixture(
            "socket",
            "volumes: [{hostPath: /run/podman/podman.sock, mountPath: /sock}]",
        ),
        fixture("home", "volumes: [{hostPath: /home, mountPath: /home}]"),
        fixture("root", "security: {runAsUser: 0}"),
        fixture("caps", "security: {addCapabilities: [SYS_ADMIN]}"),
        fixture("shadow", "env: [{name: S, valueFromFile: /etc/shadow}]"),
        ("big.yaml".to_string(), big),
    ];
    let allowed = [
        fixture(
            "shared",
            &format!(
                "volumes: [{{hostPath: {}, mountPath: /shared, readOnly: true}}]",
                shared.path().display()
            ),
        ),
        fixture(
            "secret",
            &format!("env: [{{name: T, valueFromFile: {}}}]", token.display()),
        ),
    ];
    let mut all: Vec<(String, String)> = refused.to_vec();
    all.extend(allowed.iter().cloned());
    let mcpod = Mcpod::start(
        &files(&all),
        &[
            "--allow-host-path",
            &shared.path().display().to_string(),
            "--secrets-dir",
            &secrets.path().display().to_string(),
        ],
    );
    let problems = problems(&healthy(&mcpod).await);
    for (file, rule) in [
        ("etc.yaml", "refused by rule forbidden-host-path"),
        ("socket.yaml", "refused by rule forbidden-host-path"),
        ("home.yaml", "refused by rule allowed-host-paths"),
        ("root.yaml", "refused by rule no-root"),
        ("caps.yaml", "refused by rule no-added-capabilities"),
        ("shadow.yaml", "refused by rule secrets-dir"),
        ("big.yaml", "-byte limit for a manifest file"),
    ] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(file) && p.contains(rule)),
            "{file}: {rule} not in {problems:#?}"
        );
    }
    let (_, servers) = mcpod.get("/servers").await;
    let mut names: Vec<&str> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["secret", "shared"]);
    assert_eq!(echo(&mcpod, "shared", 1).await.0, 200);
}

/// A fixture server with an extra tool, `allocate`, that takes memory until the
/// kernel kills it (the fixture's own tools, patched in at start).
const HOG: &str = r#"command: [python3, -c, "import runpy; g = runpy.run_path('/usr/local/bin/fake_mcp.py', run_name='fixture')['main'].__globals__; real = g['call_tool']; g['call_tool'] = lambda rid, name, args: [b'x' * (8 << 20) for _ in iter(int, 1)] if name == 'allocate' else real(rid, name, args); g['main']()"]"#;

#[tokio::test]
async fn a_server_killed_for_its_memory_limit_is_reported_as_out_of_memory() {
    let hog = fixture(
        "hog",
        &format!("{HOG}\nresources: {{limits: {{memory: 64Mi}}}}"),
    );
    let greedy = fixture(
        "greedy",
        "resources: {limits: {memory: 32Mi}}\n\
         command: [python3, -c, \"x = [b'x' * (4 << 20) for _ in iter(int, 1)]\"]",
    );
    let mcpod = Mcpod::start(&files(&[hog, greedy]), &[]);
    assert_eq!(echo(&mcpod, "hog", 1).await.0, 200);
    let (status, reply) = mcpod
        .call_tool("hog", json!(2), "allocate", json!({}))
        .await;
    assert_eq!(status, 502, "{reply}");
    let wanted = "killed: out of memory (limit 64Mi)";
    let mut last = Value::Null;
    wait_for(
        Duration::from_secs(20),
        "the OOM kill in the status",
        async || {
            last = mcpod.status("hog").await;
            last["message"]
                .as_str()
                .unwrap_or_default()
                .contains(wanted)
        },
    )
    .await;
    assert_eq!(last["status"], "failed", "{last}");
    assert!(
        !last["message"].as_str().unwrap().contains("output ended"),
        "{last}"
    );
    let log = mcpod.get_text("/servers/hog/logs?tail=20").await;
    assert!(log.contains(wanted), "{log}");
    let metrics = mcpod.get_text("/metrics").await;
    assert!(
        metrics.contains("mcpod_server_oom_kills_total{server=\"hog\"} 1"),
        "{metrics}"
    );
    // The next request starts it again.
    assert_eq!(echo(&mcpod, "hog", 3).await.0, 200);

    // One that runs out of memory while starting says so in its start failure.
    let (status, failed) = mcpod.post("/servers/greedy/start").await;
    assert_eq!(status, 503, "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("killed: out of memory (limit 32Mi)"),
        "{failed}"
    );
    healthy(&mcpod).await;
}

#[tokio::test]
async fn a_data_directory_that_cannot_be_written_is_a_problem_not_an_outage() {
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("plain.yaml"), fixture("plain", "").1).unwrap();
    let data = tempfile::tempdir().unwrap();
    // A file where the logs folder belongs: nothing can be created under it
    // (as root, permission bits would not stop mcpod; this does).
    std::fs::write(data.path().join("logs"), "in the way").unwrap();
    let mcpod = Mcpod::start_in(manifests, data, &unique_instance(), &[]);
    assert_eq!(echo(&mcpod, "plain", 1).await.0, 200);
    let problems = problems(&healthy(&mcpod).await);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("logs/containers") && p.contains("cannot be written")),
        "{problems:#?}"
    );
    let stderr = mcpod.logs();
    assert!(stderr.contains("keeps serving"), "{stderr}");
    assert_eq!(echo(&mcpod, "plain", 2).await.0, 200);
}

/// An `initialize` POSTed to `server`: its status, `Retry-After`, session id and body.
async fn initialize(mcpod: &Mcpod, server: &str) -> (u16, Option<String>, Option<String>, Value) {
    let body = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"hostile","version":"1"}}});
    let response = mcpod
        .http
        .post(format!("{}/mcp/{server}", mcpod.url))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (retry_after, session) = (header("retry-after"), header("mcp-session-id"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, session, body)
}

#[tokio::test]
async fn one_client_gets_its_share_of_isolated_containers_and_sessions_not_more() {
    let lonely = fixture(
        "lonely",
        "sessionMode: Isolated\nlimits: {maxIsolatedPerClient: 2}",
    );
    let shared = fixture("crowded", "limits: {maxSessionsPerClient: 3}");
    let mcpod = Mcpod::start(&files(&[lonely, shared]), &["--max-isolated", "10"]);
    let mut sessions = vec![];
    for _ in 0..2 {
        let (status, _, session, body) = initialize(&mcpod, "lonely").await;
        assert_eq!(status, 200, "{body}");
        sessions.push(session.unwrap());
    }
    // The third of one (anonymous, local) client: 429, not a third container.
    let (status, retry_after, session, body) = initialize(&mcpod, "lonely").await;
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some(), "429 without Retry-After");
    assert!(session.is_none());
    assert_eq!(body["error"]["code"], -32006, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("for one client (the limit is 2)"),
        "{body}"
    );
    let isolated = || {
        containers_of(&mcpod.instance)
            .iter()
            .filter(|c| c.contains("lonely"))
            .count()
    };
    assert_eq!(isolated(), 2, "{:?}", containers_of(&mcpod.instance));
    // Ending one gives its place back.
    let ended = mcpod
        .http
        .delete(format!("{}/mcp/lonely", mcpod.url))
        .header("mcp-session-id", &sessions[0])
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    let (status, _, _, body) = initialize(&mcpod, "lonely").await;
    assert_eq!(status, 200, "{body}");

    // Sessions of a shared server: the spec's share per client.
    for _ in 0..3 {
        assert_eq!(initialize(&mcpod, "crowded").await.0, 200);
    }
    let (status, retry_after, _, body) = initialize(&mcpod, "crowded").await;
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some());
    healthy(&mcpod).await;
}

/// The stated bounds (README, Limits): mcpod's RSS during each hostile case,
/// and how far above its start it may stay afterwards.
const RSS_BOUND_MIB: f64 = 256.0;
const RSS_AFTER_MIB: f64 = 32.0;

/// Waits (at most 20 s: mcpod gives freed memory back every 5 s) for mcpod's
/// RSS to come back within the stated distance of `start`; the RSS then.
async fn rss_given_back(mcpod: &Mcpod, start: f64) -> f64 {
    let mut after = mcpod.rss_mib();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while after >= start + RSS_AFTER_MIB && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = mcpod.rss_mib();
    }
    after
}

/// A fixture server with an extra tool, `broadcast`: `count` tools/list_changed
/// notifications, each carrying `bytes` of padding (for every session at once).
const BROADCASTER: &str = r#"command: [python3, -c, "import runpy; g = runpy.run_path('/usr/local/bin/fake_mcp.py', run_name='fixture')['main'].__globals__; real = g['call_tool']; send = g['send']; g['call_tool'] = lambda rid, name, args: ([send({'jsonrpc': '2.0', 'method': 'notifications/tools/list_changed', 'params': {'_meta': {'n': n, 'pad': 'x' * int(args['bytes'])}}}) for n in range(int(args['count']))], g['tool_result'](rid, 'sent')) if name == 'broadcast' else real(rid, name, args); g['main']()"]"#;

/// Opens `count` sessions on `server`, `parallel` at a time.
async fn open_sessions(mcpod: &Mcpod, server: &str, count: usize, parallel: usize) -> Vec<String> {
    use futures::StreamExt;
    futures::stream::iter(0..count)
        .map(|_| async {
            let (status, _, session, body) = initialize(mcpod, server).await;
            assert_eq!(status, 200, "{body}");
            session.unwrap()
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

/// A GET stream of `session` on `server`.
async fn listen(mcpod: &Mcpod, server: &str, session: &str) -> reqwest::Response {
    let response = mcpod
        .http
        .get(format!("{}/mcp/{server}", mcpod.url))
        .header("accept", "text/event-stream")
        .header("mcp-session-id", session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
}

#[tokio::test]
async fn a_fan_out_to_20000_sessions_shares_one_copy_and_slow_consumers_are_cut_off() {
    let crowd = fixture("crowd", BROADCASTER);
    let slow = fixture("slow", BROADCASTER);
    let mcpod = Mcpod::start(
        &files(&[crowd, slow]),
        &[
            "--max-sessions",
            "20000",
            "--max-sessions-per-client",
            "20000",
            "--session-ttl",
            "15s",
        ],
    );
    assert_eq!(echo(&mcpod, "crowd", 1).await.0, 200);
    assert_eq!(echo(&mcpod, "slow", 1).await.0, 200);
    let start = mcpod.rss_mib();

    // 20,000 sessions, 50 of them listening, then two broadcasts of 64 KiB:
    // one copy each would be 2.6 GB.
    let began = Instant::now();
    let sessions = open_sessions(&mcpod, "crowd", 20_000, 64).await;
    eprintln!("20,000 sessions opened in {:?}", began.elapsed());
    let mut streams = vec![];
    // The newest ones: on a loaded machine the first may near their TTL.
    for session in sessions.iter().rev().take(50) {
        streams.push(listen(&mcpod, "crowd", session).await);
    }
    let (status, reply) = mcpod
        .call_tool(
            "crowd",
            json!(2),
            "broadcast",
            json!({"count": 2, "bytes": 65536}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let mut peak = mcpod.rss_mib();
    // Every listener gets both.
    for stream in &mut streams {
        let mut seen = String::new();
        while seen.matches("list_changed").count() < 2 {
            let chunk = tokio::time::timeout(Duration::from_secs(20), stream.chunk())
                .await
                .expect("a broadcast event within 20 s")
                .unwrap()
                .expect("the stream stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
            peak = peak.max(mcpod.rss_mib());
        }
    }
    drop(streams);

    // A slow consumer (a stream nobody reads) next to a fast one: 600 events
    // of 32 KiB. The slow one is cut off, its stream closed; mcpod does not
    // hold its backlog.
    let pair = open_sessions(&mcpod, "slow", 2, 2).await;
    let mut fast = listen(&mcpod, "slow", &pair[0]).await;
    let mut stalled = listen(&mcpod, "slow", &pair[1]).await;
    let http = mcpod.http.clone();
    let url = format!("{}/mcp/slow", mcpod.url);
    let reader = tokio::spawn(async move {
        let mut events = 0;
        while let Ok(Ok(Some(chunk))) =
            tokio::time::timeout(Duration::from_secs(5), fast.chunk()).await
        {
            events += String::from_utf8_lossy(&chunk)
                .matches("list_changed")
                .count();
            if events >= 600 {
                break;
            }
        }
        events
    });
    let _ = (http, url);
    let (status, reply) = mcpod
        .call_tool(
            "slow",
            json!(3),
            "broadcast",
            json!({"count": 600, "bytes": 32768}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    peak = peak.max(mcpod.rss_mib());
    let fast_events = reader.await.unwrap();
    assert!(fast_events > 0, "the fast consumer kept receiving");
    // The stalled stream, read now: what was queued, then its end.
    let mut stalled_events = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "the slow consumer's stream was not closed"
        );
        match tokio::time::timeout(Duration::from_secs(10), stalled.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                stalled_events += String::from_utf8_lossy(&chunk)
                    .matches("list_changed")
                    .count()
            }
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Err(_) => panic!("the slow consumer's stream neither ended nor sent within 10 s"),
        }
    }
    assert!(
        stalled_events < 600,
        "the slow consumer was cut off, not buffered for: {stalled_events} events"
    );
    assert!(
        peak < start + RSS_BOUND_MIB,
        "RSS peaked at {peak:.0} MiB (started at {start:.0} MiB)"
    );

    // The sessions expire (TTL 20 s): the memory is given back.
    drop(sessions);
    wait_for(
        Duration::from_secs(45),
        "the 20,000 sessions to expire",
        async || mcpod.status("crowd").await["sessions"] == 0,
    )
    .await;
    let after = rss_given_back(&mcpod, start).await;
    eprintln!("RSS: start {start:.0} MiB, peak {peak:.0} MiB, after {after:.0} MiB; slow consumer got {stalled_events} of 600, fast {fast_events}");
    assert!(
        after < start + RSS_AFTER_MIB,
        "RSS {after:.0} MiB after the sessions ended (started at {start:.0} MiB)"
    );
    healthy(&mcpod).await;
}

/// POSTs `body` (one message or a batch) to `server` without a session.
async fn post_raw(mcpod: &Mcpod, server: &str, body: String) -> (u16, Option<String>) {
    let response = mcpod
        .http
        .post(format!("{}/mcp/{server}", mcpod.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    (status, retry_after)
}

#[tokio::test]
async fn four_concurrent_3_mb_batches_stay_within_the_memory_bound() {
    let mcpod = Mcpod::start(&files(&[fixture("batched", "")]), &[]);
    assert_eq!(echo(&mcpod, "batched", 1).await.0, 200);
    let start = mcpod.rss_mib();
    let batch = |round: u64| {
        let calls: Vec<Value> = (0..100)
            .map(|n| {
                json!({"jsonrpc":"2.0","id":round * 1000 + n,"method":"tools/call",
                "params":{"name":"echo","arguments":{"text":"b".repeat(30_000)}}})
            })
            .collect();
        Value::Array(calls).to_string()
    };
    let mut peak = start;
    for round in 0..3 {
        let posts: Vec<_> = (0..4)
            .map(|n| post_raw(&mcpod, "batched", batch(round * 4 + n)))
            .collect();
        let sampling = async {
            let mut peak: f64 = 0.0;
            for _ in 0..200 {
                peak = peak.max(mcpod.rss_mib());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        };
        let (results, sampled) = tokio::join!(futures::future::join_all(posts), sampling);
        peak = peak.max(sampled);
        for (status, _) in results {
            assert_eq!(status, 200);
        }
    }
    let after = rss_given_back(&mcpod, start).await;
    eprintln!("RSS: start {start:.0} MiB, peak {peak:.0} MiB, after {after:.0} MiB");
    assert!(
        peak < start + RSS_BOUND_MIB,
        "RSS peaked at {peak:.0} MiB (started at {start:.0})"
    );
    assert!(
        after < start + RSS_AFTER_MIB,
        "RSS {after:.0} MiB after (started at {start:.0})"
    );
    healthy(&mcpod).await;
}

#[tokio::test]
async fn a_server_that_stops_reading_stdin_is_refused_at_once_not_buffered() {
    // Answers initialize, then never reads its stdin again.
    let deaf = fixture(
        "stuck",
        "requestTimeout: 5s\n\
         command: [python3, -c, \"import json, sys, time, runpy; g = runpy.run_path('/usr/local/bin/fake_mcp.py', run_name='fixture')['main'].__globals__; g['handle'](json.loads(sys.stdin.readline())); time.sleep(3600)\"]",
    );
    let mcpod = Mcpod::start(&files(&[deaf]), &[]);
    let (status, started) = mcpod.post("/servers/stuck/start").await;
    assert_eq!(status, 200, "{started}");
    let start = mcpod.rss_mib();
    // 160 requests of 1 MiB, 16 at a time: 160 MiB that cannot be written.
    use futures::StreamExt;
    let big = "s".repeat(1 << 20);
    let outcomes: Vec<(u16, Option<String>)> = futures::stream::iter(0..160u64)
        .map(|n| {
            let body = json!({"jsonrpc":"2.0","id":n,"method":"tools/call",
                "params":{"name":"echo","arguments":{"text":&big}}})
            .to_string();
            post_raw(&mcpod, "stuck", body)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let peak = mcpod.rss_mib();
    let refused: Vec<_> = outcomes.iter().filter(|(s, _)| *s == 503).collect();
    assert!(
        !refused.is_empty(),
        "a full stdin queue refuses: {outcomes:?}"
    );
    assert!(refused.iter().all(|(_, retry)| retry.is_some()));
    assert!(
        outcomes.iter().all(|(s, _)| [503, 504].contains(s)),
        "{outcomes:?}"
    );
    // While the deaf server runs, what waits for its stdin is held (at most
    // the 32 MiB budget); stopping it frees that too.
    assert_eq!(mcpod.post("/servers/stuck/stop").await.0, 200);
    let after = rss_given_back(&mcpod, start).await;
    eprintln!(
        "RSS: start {start:.0} MiB, peak {peak:.0} MiB, after {after:.0} MiB; {} refused",
        refused.len()
    );
    assert!(
        peak < start + RSS_BOUND_MIB,
        "RSS peaked at {peak:.0} MiB (started at {start:.0})"
    );
    assert!(
        after < start + RSS_AFTER_MIB,
        "RSS {after:.0} MiB after (started at {start:.0})"
    );
    healthy(&mcpod).await;
}
