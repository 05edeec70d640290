//! Authorization end to end: the real binary with API keys, the real
//! `server-everything` in a container, the official TypeScript SDK as two
//! different subjects; the audit log it writes; a rate limit's 429.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

const EVERYTHING_IMAGE: &str = "localhost/mcpod/everything:latest";

const POLICY: &str = "
access:
  tools:
  - names: [echo]
    callers: {subjects: ['*']}
  - names: ['get-*', 'trigger-*']
    callers: {groups: [power-users]}
";

const LIMITED: &str = "
access:
  rateLimit:
    requestsPerMinute: 60
    burst: 2
";

fn add_key(file: &Path, subject: &str, groups: &[&str]) -> String {
    let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
    mcpod::auth::keys::add_key(file, subject, &groups).unwrap()
}

#[tokio::test]
async fn two_subjects_see_and_call_different_tools_through_the_typescript_sdk() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("keys");
    let alice = add_key(&keys, "alice", &["power-users"]);
    let bob = add_key(&keys, "bob", &[]);
    let mcpod = Mcpod::start(
        &[(
            "everything.yaml",
            manifest("everything", EVERYTHING_IMAGE, POLICY),
        )],
        &["--api-keys", keys.to_str().unwrap()],
    );
    let url = format!("{}/mcp/everything", mcpod.url);
    let out = tokio::task::spawn_blocking(move || {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/authz_client.mjs");
        let output = Command::new("node")
            .arg(script)
            .args([&url, &alice, &bob])
            .output()
            .expect("node and the test clients (make test-clients)");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "client failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str::<Value>(stdout.lines().last().unwrap_or_default()).unwrap()
    })
    .await
    .unwrap();

    assert_eq!(out["bobTools"], json!(["echo"]), "{out}");
    let alice_tools: Vec<&str> = out["aliceTools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(alice_tools.len() > 2, "{out}");
    assert!(
        alice_tools
            .iter()
            .all(|t| *t == "echo" || t.starts_with("get-") || t.starts_with("trigger-")),
        "only what the policy gives: {alice_tools:?}"
    );
    assert_eq!(out["bobEcho"][0], "Echo: top-secret-argument", "{out}");
    assert_eq!(out["bobForbidden"]["refused"], true, "{out}");
    assert_eq!(out["bobForbidden"]["code"], -32602, "{out}");
    assert_eq!(out["bobMissing"]["code"], -32602, "{out}");
    let forbidden = out["forbiddenTool"].as_str().unwrap();
    let message = |v: &Value, name: &str| v["message"].as_str().unwrap().replace(name, "NAME");
    assert_eq!(
        message(&out["bobForbidden"], forbidden),
        message(&out["bobMissing"], "no-such-tool"),
        "a forbidden tool reads like a missing one"
    );
    assert_eq!(out["aliceAllowed"]["refused"], false, "{out}");

    let matches = |r: &Value, subject: &str, method: &str, name: Option<&str>, outcome: &str| {
        r["subject"] == subject
            && r["method"] == method
            && name.is_none_or(|n| r["name"] == n)
            && r["outcome"] == outcome
    };
    // alice's allowed call was the last decision made.
    let records = audit_records(mcpod.data.path(), |records| {
        records
            .iter()
            .any(|r| matches(r, "alice", "tools/call", Some(forbidden), "allowed"))
    });
    let has = |subject: &str, method: &str, name: Option<&str>, outcome: &str| {
        records.iter().any(|r| {
            r["subject"] == subject
                && r["method"] == method
                && name.is_none_or(|n| r["name"] == n)
                && r["outcome"] == outcome
                && r["server"] == "everything"
                && r["via"] == "apiKey"
                && r["session"].is_string()
                && r["requestId"].is_number()
        })
    };
    assert!(has("alice", "tools/list", None, "allowed"), "{records:#?}");
    assert!(has("bob", "tools/list", None, "allowed"), "{records:#?}");
    assert!(
        has("bob", "tools/call", Some("echo"), "allowed"),
        "{records:#?}"
    );
    assert!(
        has("bob", "tools/call", Some(forbidden), "denied"),
        "{records:#?}"
    );
    assert!(
        has("bob", "tools/call", Some("no-such-tool"), "denied"),
        "{records:#?}"
    );
    assert!(
        has("alice", "tools/call", Some(forbidden), "allowed"),
        "{records:#?}"
    );
    let text = std::fs::read_to_string(mcpod.data.path().join("logs/audit/audit.log")).unwrap();
    assert!(!text.contains("top-secret-argument"), "no argument values");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(mcpod.data.path().join("logs/audit/audit.log"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o640);
}

#[tokio::test]
async fn over_a_servers_rate_limit_is_429_with_retry_after_and_the_requests_id() {
    let keys_dir = tempfile::tempdir().unwrap();
    let keys = keys_dir.path().join("keys");
    let key = add_key(&keys, "carol", &[]);
    let mcpod = Mcpod::start(
        &[(
            "limited.yaml",
            manifest("limited", EVERYTHING_IMAGE, LIMITED),
        )],
        &["--api-keys", keys.to_str().unwrap()],
    );
    // `ping` is answered by mcpod itself: no container needed to count requests.
    let ping = |id: u64| {
        mcpod
            .http
            .post(format!("{}/mcp/limited", mcpod.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(json!({"jsonrpc": "2.0", "id": id, "method": "ping"}).to_string())
            .send()
    };
    for id in 1..=2 {
        assert_eq!(ping(id).await.unwrap().status(), 200);
    }
    let response = ping(42).await.unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 42);
    assert_eq!(body["error"]["code"], -32006);
    let refused =
        |r: &Value| r["requestId"] == 42 && r["outcome"] == "denied" && r["subject"] == "carol";
    let records = audit_records(mcpod.data.path(), |records| records.iter().any(refused));
    assert!(records.iter().any(refused), "{records:#?}");
    // Without a key: 401, and nothing about the server is revealed.
    let anonymous = mcpod
        .http
        .post(format!("{}/mcp/limited", mcpod.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}
