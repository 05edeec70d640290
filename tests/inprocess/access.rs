//! Authorization over API keys: `spec.access` decides who may use a server,
//! which tools each caller sees and may call, who may operate it, and how
//! often; every decision is a line in the audit log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};

use mcpod::access::audit::Audit;
use mcpod::access::spec::{Callers, Rate};
use mcpod::access::AccessControl;
use mcpod::auth::{keys, Auth, AuthConfig};
use mcpod::router::RouterConfig;
use mcpod::runtime::memory::MemoryRuntime;

use crate::harness::{call, fast_settings, server, Mcpod};

const POLICY: &str = "
access:
  callers:
    groups: [staff]
  operators:
    subjects: [alice]
  tools:
  - names: [echo]
    callers: {groups: [staff]}
  - names: [whoami, 'sl*']
    callers: {subjects: [alice]}
  rateLimit:
    perSubject: {requestsPerMinute: 60, burst: 5}
";

struct Secured {
    mcpod: Mcpod,
    keys: std::collections::HashMap<&'static str, String>,
    access: Arc<AccessControl>,
    audit: PathBuf,
    _dir: tempfile::TempDir,
}

/// mcpod with API keys for alice and bob (staff), carol (not staff) and root
/// (group admins, a router-wide operator), serving `manifests`.
async fn secured(manifests: &[String]) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys");
    let mut keys = std::collections::HashMap::new();
    for (subject, groups) in [
        ("alice", vec!["staff"]),
        ("bob", vec!["staff"]),
        ("carol", vec![]),
        ("root", vec!["admins"]),
    ] {
        let groups: Vec<String> = groups.into_iter().map(String::from).collect();
        keys.insert(
            subject,
            keys::add_key(&keys_file, subject, &groups).unwrap(),
        );
    }
    let verifier = keys::ApiKeys::load(&keys_file).unwrap();
    let auth = Auth::new(AuthConfig {
        verifiers: vec![Arc::new(verifier)],
        ..AuthConfig::default()
    });
    let audit = dir.path().join("audit/audit.log");
    let operators = Callers {
        groups: vec!["admins".into()],
        ..Callers::default()
    };
    let access = Arc::new(AccessControl::new(
        operators,
        Audit::file(&audit, 1 << 20, 1),
        Rate::new(6000, None),
        None,
    ));
    let settings = mcpod::server::Settings {
        access: access.clone(),
        ..fast_settings()
    };
    let config = RouterConfig {
        auth,
        ..RouterConfig::default()
    };
    let mcpod = Mcpod::with_router(MemoryRuntime::new(), settings, config, manifests).await;
    Secured {
        mcpod,
        keys,
        access,
        audit,
        _dir: dir,
    }
}

impl Secured {
    /// POSTs a JSON-RPC message to server `name` as `subject`: status, Retry-After, body.
    async fn post(&self, subject: &str, name: &str, body: &Value) -> (u16, Option<String>, Value) {
        let response = self
            .mcpod
            .http
            .post(format!("{}/mcp/{name}", self.mcpod.url))
            .bearer_auth(&self.keys[subject])
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry_after, response.json().await.unwrap())
    }

    async fn tools(&self, subject: &str) -> Vec<String> {
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let (status, _, body) = self.post(subject, "memory", &list).await;
        assert_eq!(status, 200, "{body}");
        let mut names: Vec<String> = body["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    async fn operate(&self, subject: &str, path: &str) -> u16 {
        let request = if path.ends_with("/logs") {
            self.mcpod.http.get(format!("{}{path}", self.mcpod.url))
        } else {
            self.mcpod.http.post(format!("{}{path}", self.mcpod.url))
        };
        let response = request
            .bearer_auth(&self.keys[subject])
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    }

    /// Every record so far (written out first: they wait to be written in batches).
    fn audit(&self) -> Vec<Value> {
        self.access.audit.flush();
        read_lines(&self.audit)
    }
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_sees_and_calls_only_what_the_policy_gives_them() {
    let secured = secured(&[server("memory", POLICY)]).await;
    assert_eq!(secured.tools("alice").await, ["echo", "sleep", "whoami"]);
    assert_eq!(secured.tools("bob").await, ["echo"]);

    let (status, _, body) = secured
        .post("alice", "memory", &call(json!("a-1"), "whoami", json!({})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["result"].is_object(), "{body}");

    // bob may not call whoami: refused with a JSON-RPC error carrying his id,
    // which reads the same as for a tool that does not exist.
    let secret = json!({"text": "secret-argument-value"});
    let (status, _, forbidden) = secured
        .post(
            "bob",
            "memory",
            &call(json!("b-1"), "whoami", secret.clone()),
        )
        .await;
    assert_eq!(status, 403, "{forbidden}");
    assert_eq!(forbidden["id"], "b-1");
    assert_eq!(forbidden["error"]["code"], -32602);
    let (status, _, missing) = secured
        .post(
            "bob",
            "memory",
            &call(json!("b-2"), "no-such-tool", json!({})),
        )
        .await;
    assert_eq!(status, 403, "{missing}");
    let message = |body: &Value, name: &str| {
        body["error"]["message"]
            .as_str()
            .unwrap()
            .replace(name, "NAME")
    };
    assert_eq!(
        message(&forbidden, "whoami"),
        message(&missing, "no-such-tool")
    );
    assert!(
        message(&forbidden, "whoami").contains("access denied"),
        "{forbidden}"
    );
    // The server never saw the refused call.
    let received: Vec<Value> = secured
        .mcpod
        .runtime
        .instances("memory")
        .iter()
        .flat_map(|i| i.received.clone())
        .filter(|m| m["method"] == "tools/call")
        .collect();
    assert_eq!(received.len(), 1, "{received:?}");

    // carol is not staff: the server refuses her outright, 403 with a JSON-RPC body.
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (status, _, body) = secured.post("carol", "memory", &list).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], -32600);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("carol"),
        "{body}"
    );

    let audit = secured.audit();
    let find = |subject: &str, id: Value| {
        audit
            .iter()
            .find(|r| r["subject"] == subject && r["requestId"] == id)
            .unwrap_or_else(|| panic!("no record of {subject} {id} in {audit:#?}"))
    };
    let allowed = find("alice", json!("a-1"));
    assert_eq!(allowed["outcome"], "allowed");
    assert_eq!(allowed["method"], "tools/call");
    assert_eq!(allowed["name"], "whoami");
    assert_eq!(allowed["server"], "memory");
    assert_eq!(allowed["via"], "apiKey");
    assert!(allowed["durationMs"].as_f64().unwrap() > 0.0);
    let denied = find("bob", json!("b-1"));
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["name"], "whoami");
    assert!(audit
        .iter()
        .any(|r| r["subject"] == "carol" && r["outcome"] == "denied"));
    let text = std::fs::read_to_string(&secured.audit).unwrap();
    assert!(
        !text.contains("secret-argument-value"),
        "arguments are never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_start_stop_and_read_logs() {
    let secured = secured(&[server("memory", POLICY)]).await;
    assert_eq!(secured.operate("bob", "/servers/memory/start").await, 403);
    assert_eq!(secured.operate("bob", "/servers/memory/logs").await, 403);
    assert_eq!(secured.mcpod.runtime.starts("memory"), 0);
    assert_eq!(secured.operate("alice", "/servers/memory/start").await, 200);
    assert_eq!(secured.operate("root", "/servers/memory/logs").await, 200);
    assert_eq!(secured.operate("root", "/servers/memory/stop").await, 200);
    let audit = secured.audit();
    let ops: Vec<(String, String, String)> = audit
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_string();
            (s("subject"), s("method"), s("outcome"))
        })
        .collect();
    for expected in [
        ("bob", "start", "denied"),
        ("bob", "logs", "denied"),
        ("alice", "start", "allowed"),
        ("root", "logs", "allowed"),
        ("root", "stop", "allowed"),
    ] {
        let expected = (expected.0.into(), expected.1.into(), expected.2.into());
        assert!(ops.contains(&expected), "{expected:?} in {ops:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_is_429_with_retry_after_and_the_requests_id() {
    let secured = secured(&[server("memory", POLICY)]).await;
    let ping = |id: u64| json!({"jsonrpc": "2.0", "id": id, "method": "ping"});
    for id in 0..5 {
        let (status, _, body) = secured.post("bob", "memory", &ping(id)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, retry_after, body) = secured.post("bob", "memory", &ping(77)).await;
    assert_eq!(status, 429, "{body}");
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(
        (1..=2).contains(&retry_after),
        "one a second: {retry_after}"
    );
    assert_eq!(body["id"], 77);
    assert_eq!(body["error"]["code"], -32006);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("bob"),
        "{body}"
    );
    // Per subject: alice still has her own bucket.
    let (status, _, _) = secured.post("alice", "memory", &ping(1)).await;
    assert_eq!(status, 200);
    let limited = secured
        .audit()
        .into_iter()
        .find(|r| r["requestId"] == 77)
        .expect("the refusal is audited");
    assert_eq!(limited["outcome"], "denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_policy_every_authenticated_caller_may_use_the_server() {
    let secured = secured(&[server("open", "")]).await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let (status, _, body) = secured.post("carol", "open", &list).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["tools"].as_array().unwrap().len(), 9);
    // … but only operators may operate it.
    assert_eq!(secured.operate("carol", "/servers/open/stop").await, 403);
    assert_eq!(secured.operate("root", "/servers/open/stop").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_tells_open_sessions_to_list_again() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut client = mcpod.client("memory");
    client.initialize(json!({})).await;
    let mut stream = client.request(reqwest::Method::GET).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    // Only the policy changes: the container stays, the lists each caller sees do not.
    mcpod.apply(&[server("memory", POLICY)]).await;
    let mut text = String::new();
    let mut heard = vec![];
    while !["tools", "prompts", "resources"]
        .iter()
        .all(|kind| heard.contains(&format!("notifications/{kind}/list_changed")))
    {
        let chunk = tokio::time::timeout(crate::harness::PATIENCE, stream.chunk())
            .await
            .expect("list_changed notifications on the GET stream")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        heard.extend(
            crate::common::take_events(&mut text)
                .into_iter()
                .filter_map(|e| e.data["method"].as_str().map(str::to_string)),
        );
    }
    assert_eq!(
        mcpod.runtime.starts("memory"),
        1,
        "the policy change restarted nothing"
    );
}
