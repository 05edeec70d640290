//! Who may call mcpod, against the real binary and real containers: API keys on
//! every route, sessions that belong to their caller, the refusal to serve
//! unauthenticated off loopback, and cross-site protection tried from a real
//! browser (headless Chromium) on a foreign origin.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use common::{manifest, Mcpod, RawClient, FIXTURE_IMAGE};

/// `mcpod auth add-key SUBJECT --keys-file FILE`: the key it prints once.
fn add_key(keys: &Path, subject: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(["auth", "add-key", subject, "--keys-file"])
        .arg(keys)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let key = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("mcpod_"), "{key}");
    key
}

fn bearer_client(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// The official TypeScript SDK with a bearer token (tests/clients/ts_bearer_client.mjs).
fn ts_bearer(scenario: &str, url: &str, key: Option<&str>) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/ts_bearer_client.mjs");
    let mut command = Command::new("node");
    command.arg(script).args([scenario, url]);
    if let Some(key) = key {
        command.env("MCPOD_BEARER", key);
    }
    let output = command
        .output()
        .expect("test clients are installed (make test-clients)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

#[tokio::test]
async fn api_keys_guard_every_route_and_sessions_belong_to_their_caller() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("api-keys");
    let alice = add_key(&keys, "alice");
    let bob = add_key(&keys, "bob");
    let mut mcpod = Mcpod::start(
        &[("fixture.yaml", manifest("fixture", FIXTURE_IMAGE, ""))],
        &["--api-keys", keys.to_str().unwrap()],
    );
    let anonymous = mcpod.http.clone();
    mcpod.http = bearer_client(&alice);

    // Probes need no key; everything else does, and says how to get in.
    let health = anonymous
        .get(format!("{}/health", mcpod.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    for (method, path) in [
        ("GET", "/servers"),
        ("GET", "/servers/fixture"),
        ("GET", "/servers/fixture/logs"),
        ("GET", "/metrics"),
        ("POST", "/servers/fixture/start"),
        ("POST", "/servers/fixture/stop"),
        ("POST", "/mcp/fixture"),
        ("GET", "/sse/fixture"),
    ] {
        let response = anonymous
            .request(method.parse().unwrap(), format!("{}{path}", mcpod.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{method} {path}");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert_eq!(
            challenge,
            format!(
                "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource{path}\"",
                mcpod.url
            ),
            "{method} {path}"
        );
    }
    assert_eq!(mcpod.status("fixture").await["status"], "stopped");
    // Each refusal is a decision in the audit log: who is unknown, where and why are not.
    let is_refusal = |record: &&Value| record["method"] == "authenticate";
    let audit = common::audit_records(mcpod.data.path(), |records| {
        records.iter().filter(is_refusal).count() >= 8
    });
    let refusals: Vec<&Value> = audit.iter().filter(is_refusal).collect();
    assert_eq!(refusals.len(), 8, "{audit:#?}");
    let stop = refusals
        .iter()
        .find(|r| r["name"] == "/servers/fixture/stop")
        .unwrap_or_else(|| panic!("{audit:#?}"));
    assert_eq!(
        (&stop["outcome"], &stop["via"], &stop["server"]),
        (
            &json!("denied"),
            &json!("unauthenticated"),
            &json!("fixture")
        )
    );
    assert!(stop["reason"]
        .as_str()
        .unwrap()
        .contains("authentication required"));

    let forged = bearer_client("mcpod_not-a-key-anyone-made");
    let refused = forged
        .get(format!("{}/servers", mcpod.url))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

    let (status, servers) = mcpod.get("/servers").await;
    assert_eq!(status, 200);
    assert_eq!(servers[0]["name"], "fixture");

    // The official SDK: with a key it works end to end; without, it is refused.
    let url = format!("{}/servers/fixture/mcp", mcpod.url);
    let out = ts_bearer("call", &url, Some(&alice));
    assert_eq!(out["echo"], json!(["hello with a key"]), "{out}");
    assert!(out["tools"].as_array().unwrap().contains(&json!("echo")));
    let out = ts_bearer("denied", &url, None);
    assert_eq!(out["connected"], false, "{out}");
    assert_eq!(out["code"], 401, "{out}");

    // A session is its opener's: bob holding alice's session id finds nothing.
    let mut alices = RawClient::new(format!("{}/mcp/fixture", mcpod.url));
    alices.http = bearer_client(&alice);
    alices.initialize(json!({})).await;
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (status, _) = alices.post(&list).await;
    assert_eq!(status, 200);
    let mut bobs = RawClient::new(alices.url.clone());
    bobs.http = bearer_client(&bob);
    bobs.session = alices.session.clone();
    let (status, answer) = bobs.post(&list).await;
    assert_eq!(status, 404, "{answer:?}");
    let (status, _) = alices.post(&list).await;
    assert_eq!(status, 200, "alice's session survives bob's attempt");

    // The CLI sends MCPOD_TOKEN.
    let get = |token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mcpod"));
        command.args(["get", "--url", &mcpod.url]);
        match token {
            Some(token) => command.env("MCPOD_TOKEN", token),
            None => command.env_remove("MCPOD_TOKEN"),
        };
        command.output().unwrap()
    };
    let listed = get(Some(&bob));
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("fixture"));
    let refused = get(None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("MCPOD_TOKEN"),
        "{refused:?}"
    );

    // Keys are revoked by editing the file, without a restart.
    let kept: String = std::fs::read_to_string(&keys)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("bob "))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&keys, kept).unwrap();
    let bobs_client = bearer_client(&bob);
    common::wait_for(
        Duration::from_secs(10),
        "bob's key to be revoked",
        async || {
            let response = bobs_client
                .get(format!("{}/servers", mcpod.url))
                .send()
                .await
                .unwrap();
            response.status() == 401
        },
    )
    .await;
    assert_eq!(
        mcpod.get("/servers").await.0,
        200,
        "alice's key stays valid"
    );
}

#[test]
fn serving_unauthenticated_beyond_loopback_is_refused_unless_declared_insecure() {
    let manifests = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mcpod"))
            .arg("serve")
            .arg("--manifests")
            .arg(manifests.path())
            .arg("--data-dir")
            .arg(data.path())
            .args([
                "--listen",
                "0.0.0.0:0",
                "--instance",
                &common::unique_instance(),
            ])
            .args(extra)
            .env(
                "CONTAINER_HOST",
                format!("unix://{}", common::podman_socket().display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let refused = serve(&[]).wait_with_output().unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("without authentication")
            && message.contains("--insecure-allow-unauthenticated"),
        "{message}"
    );

    let mut insecure = serve(&["--insecure-allow-unauthenticated"]);
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(insecure.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = insecure.kill();
    let _ = insecure.wait();
    assert!(
        line.starts_with("mcpod listening on http://0.0.0.0:"),
        "{line}"
    );
}

#[tokio::test]
async fn a_rebound_host_name_is_refused_on_every_route() {
    let mcpod = Mcpod::start(
        &[("fixture.yaml", manifest("fixture", FIXTURE_IMAGE, ""))],
        &[],
    );
    let port = mcpod.url.rsplit(':').next().unwrap().to_string();
    // What a DNS-rebinding page sends: its own name as Host, and (same-origin)
    // as Origin, which the Host check alone has to stop.
    let rebound = format!("rebind.example:{port}");
    for (method, path) in [
        ("POST", "/servers/fixture/start"),
        ("GET", "/servers"),
        ("POST", "/mcp/fixture"),
        ("GET", "/health"),
    ] {
        let response = mcpod
            .http
            .request(method.parse().unwrap(), format!("{}{path}", mcpod.url))
            .header("host", &rebound)
            .header("origin", format!("http://{rebound}"))
            .header("content-type", "application/json")
            .body(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("DNS-rebinding"),
            "{body}"
        );
    }
    assert_eq!(mcpod.status("fixture").await["status"], "stopped");
}

/// The attacker's site: serves a page that tries to start mcpod's server with
/// a form POST and two `fetch`es, then reports back at `/done`.
struct AttackSite {
    url_port: u16,
    done: Arc<Mutex<Vec<String>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl AttackSite {
    async fn start(mcpod: &str) -> AttackSite {
        use warp::Filter;
        let done = Arc::new(Mutex::new(Vec::new()));
        let page = attack_page(mcpod);
        let attack = warp::path!("attack.html").map(move || warp::reply::html(page.clone()));
        let record = done.clone();
        let report = warp::path!("done")
            .and(warp::query::raw())
            .map(move |query: String| {
                record.lock().unwrap().push(query);
                "ok"
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(warp::serve(attack.or(report)).incoming(listener).run());
        AttackSite {
            url_port: port,
            done,
            _server: server,
        }
    }
}

fn attack_page(mcpod: &str) -> String {
    r#"<!doctype html>
<html><body>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="POST" action="MCPOD/servers/fixture/start" target="sink"></form>
<script>
const mcpod = "MCPOD";
const call = JSON.stringify({jsonrpc: "2.0", id: 1, method: "tools/call",
  params: {name: "echo", arguments: {text: "x"}}});
async function attack() {
  const seen = [];
  for (const [path, body] of [["/servers/fixture/start", null], ["/mcp/fixture", call]]) {
    try {
      await fetch(mcpod + path, {method: "POST", mode: "no-cors", body,
        headers: {"content-type": "text/plain"}});
      seen.push(path + ":sent");
    } catch (error) {
      seen.push(path + ":" + error);
    }
  }
  document.getElementById("sink").onload = () => fetch("/done?" + encodeURIComponent(seen.join(",")));
  document.getElementById("form").submit();
}
attack();
</script>
</body></html>"#
        .replace("MCPOD", mcpod)
}

/// Headless Chromium on `url`, with `evil.example` resolving to 127.0.0.1.
fn chromium(url: &str, profile: &Path) -> std::process::Child {
    Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP evil.example 127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium is installed (make setup)")
}

#[tokio::test]
async fn a_foreign_page_in_a_real_browser_changes_nothing() {
    let mcpod = Mcpod::start(
        &[("fixture.yaml", manifest("fixture", FIXTURE_IMAGE, ""))],
        &[],
    );
    let site = AttackSite::start(&mcpod.url).await;
    let profile = tempfile::tempdir().unwrap();

    // From a foreign origin: every attempt reaches mcpod and is refused.
    let mut browser = chromium(
        &format!("http://evil.example:{}/attack.html", site.url_port),
        profile.path(),
    );
    common::wait_for(
        Duration::from_secs(60),
        "the foreign page to finish",
        async || !site.done.lock().unwrap().is_empty(),
    )
    .await;
    let _ = browser.kill();
    let _ = browser.wait();
    let report = site.done.lock().unwrap().pop().unwrap();
    assert!(
        report.contains("sent"),
        "the page's requests went out: {report}"
    );
    assert_eq!(mcpod.status("fixture").await["status"], "stopped");

    // The same page on a loopback origin (a local tool the user runs) may: this
    // is what proves the attack above would have worked without the checks.
    let mut browser = chromium(
        &format!("http://127.0.0.1:{}/attack.html", site.url_port),
        profile.path(),
    );
    common::wait_for(
        Duration::from_secs(60),
        "the loopback page to finish",
        async || !site.done.lock().unwrap().is_empty(),
    )
    .await;
    let _ = browser.kill();
    let _ = browser.wait();
    let status = mcpod.status("fixture").await;
    assert_ne!(status["status"], "stopped", "{status}");
}
