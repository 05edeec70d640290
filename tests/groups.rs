//! MCPServerGroup on Podman, over real containers, driven by the official SDK
//! clients: a group of everything, time and memory (selected by label) served
//! at `/groups/starter/mcp` lists the namespaced union with every container
//! stopped and starts none (counted with Podman); one call starts exactly one.
//! A server outside the group is neither listed nor callable there, a prefix
//! collision is reported in the group's status (and the servers'), and
//! relabelling a server moves it out of the group without a restart.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{manifest, names_in, running_containers, sdk_client, wait_for, Mcpod, TIME_IMAGE};
use serde_json::{json, Value};

const MEMBERS: [&str; 3] = ["everything", "time", "memory"];

const GROUPS: &str = "\
apiVersion: mcpod.dev/v1alpha1
kind: MCPServerGroup
metadata: {name: starter}
spec:
  selector:
    matchLabels: {group: starter}
---
apiVersion: mcpod.dev/v1alpha1
kind: MCPServerGroup
metadata: {name: clash}
spec:
  selector:
    matchExpressions: [{key: group, operator: In, values: [starter]}]
  prefixes: {time: t, memory: t}
";

/// One JSON-RPC request to `path` as a plain JSON client (no session).
async fn rpc(mcpod: &Mcpod, path: &str, request: Value) -> (u16, Value) {
    let response = mcpod
        .http
        .post(format!("{}{path}", mcpod.url))
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .body(request.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn group<'a>(groups: &'a Value, name: &str) -> &'a Value {
    groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no group {name} in {groups}"))
}

fn member_names(group: &Value) -> Vec<String> {
    group["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["server"].as_str().unwrap().to_string())
        .collect()
}

fn memory(labelled: bool) -> String {
    let text = manifest(
        "memory",
        "localhost/mcpod/memory:latest",
        "idleTimeout: 2s\nenv:\n- {name: MEMORY_FILE_PATH, value: /tmp/memory.jsonl}",
    );
    labelled_if(text, labelled)
}

fn labelled_if(text: String, labelled: bool) -> String {
    match labelled {
        true => text.replacen("metadata:\n", "metadata:\n  labels: {group: starter}\n", 1),
        false => text,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_lists_its_members_union_with_no_container_and_one_call_starts_one() {
    let idle = "idleTimeout: 2s";
    let time_spec = format!("{idle}\nargs: [--local-timezone, UTC]");
    let files = [
        (
            "everything.yaml",
            labelled_if(
                manifest("everything", "localhost/mcpod/everything:latest", idle),
                true,
            ),
        ),
        (
            "time.yaml",
            labelled_if(manifest("time", TIME_IMAGE, &time_spec), true),
        ),
        ("memory.yaml", memory(true)),
        // The same server, not labelled into the group.
        ("clock.yaml", manifest("clock", TIME_IMAGE, &time_spec)),
        ("groups.yaml", GROUPS.to_string()),
    ];
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (*n, t.clone())).collect();
    let mcpod = Mcpod::start(&files, &[]);

    // Each member runs once, and its catalog is recorded.
    let mut own = mcpod.learn_catalogs_then_stop(&MEMBERS).await;
    let all = ["everything", "time", "memory", "clock"];
    let before = mcpod.starts(&all).await;
    assert_eq!(before[3], 0, "clock never ran");

    // The Python SDK lists the group's namespaced union: nothing starts.
    let url = format!("{}/groups/starter/mcp", mcpod.url);
    let listed = sdk_client("python", "aggregate-list", &url);
    let mut union: Vec<String> = serde_json::from_value(listed["tools"].clone()).unwrap();
    union.sort();
    own.sort();
    assert_eq!(union, own, "{listed}");
    assert!(
        !union.iter().any(|t| t.starts_with("clock__")),
        "a server outside the group is listed: {listed}"
    );
    assert!(
        running_containers(&mcpod.instance).is_empty(),
        "listing started a container"
    );
    assert_eq!(mcpod.starts(&all).await, before);

    // The TypeScript SDK lists and calls time's tool: time alone starts.
    let called = sdk_client("typescript", "aggregate-call", &url);
    let mut ts_union: Vec<String> = serde_json::from_value(called["tools"].clone()).unwrap();
    ts_union.sort();
    assert_eq!(ts_union, own, "{called}");
    assert!(
        called["time"][0].as_str().unwrap().contains("Asia/Tokyo"),
        "{called}"
    );
    assert_eq!(
        mcpod.starts(&all).await,
        vec![before[0], before[1] + 1, before[2], 0],
        "only time started"
    );
    assert_eq!(
        running_containers(&mcpod.instance),
        vec![mcpod.container("time")],
        "exactly one container runs"
    );

    // The server outside the group cannot be called through it.
    let call = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "clock__get_current_time", "arguments": {"timezone": "UTC"}}});
    let (status, answer) = rpc(&mcpod, "/groups/starter/mcp", call).await;
    assert_eq!(status, 200, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("Unknown tool"), "{answer}");
    assert_eq!(mcpod.status("clock").await["starts"], 0);

    // An unknown group is a 404 with a JSON-RPC error that names it.
    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let (status, answer) = rpc(&mcpod, "/groups/nope/mcp", ping).await;
    assert_eq!(status, 404, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("MCPServerGroup named 'nope'"), "{answer}");

    // The collision is in the group's status, the servers' and /health.
    let (status, groups) = mcpod.get("/groups").await;
    assert_eq!(status, 200, "{groups}");
    let clash = group(&groups, "clash");
    assert_eq!(member_names(clash), ["everything"], "{clash}");
    assert_eq!(clash["collisions"][0]["servers"], json!(["memory", "time"]));
    assert_eq!(clash["collisions"][0]["name"], "t__");
    let collision = clash["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "GroupCollision")
        .unwrap();
    assert_eq!(collision["status"], "True", "{clash}");
    let starter = group(&groups, "starter");
    assert_eq!(member_names(starter), ["everything", "memory", "time"]);
    assert!(
        starter["collisions"].as_array().unwrap().is_empty(),
        "{starter}"
    );
    let time = mcpod.status("time").await;
    assert!(
        time["groupCollisions"][0]
            .as_str()
            .is_some_and(|c| c.starts_with("MCPServerGroup clash:")),
        "{time}"
    );
    assert!(mcpod
        .status("everything")
        .await
        .get("groupCollisions")
        .is_none());
    let (_, health) = mcpod.get("/health").await;
    assert!(
        health["problems"]
            .to_string()
            .contains("MCPServerGroup clash"),
        "{health}"
    );
    // `mcpod get` shows the groups after the servers, and why time is left out of one.
    let get = Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(["get", "--url", &mcpod.url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&get.stdout);
    assert!(get.status.success(), "{table}");
    let row = |start: &str| {
        table
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start} row in:\n{table}"))
            .to_string()
    };
    assert!(row("time ").contains("MCPServerGroup clash"), "{table}");
    let clash_row = row("clash ");
    assert!(
        clash_row.contains("/groups/clash/mcp") && clash_row.contains("memory+time"),
        "{table}"
    );
    assert!(
        row("starter ").contains("everything,memory,time"),
        "{table}"
    );

    // Neither colliding member is served by the clashing group.
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let (_, answer) = rpc(&mcpod, "/groups/clash/mcp", list.clone()).await;
    let clash_tools = names_in(&answer, "tools");
    assert!(
        !clash_tools.is_empty() && clash_tools.iter().all(|t| t.starts_with("everything__")),
        "{answer}"
    );

    // Relabelled out, memory leaves the group without a restart.
    std::fs::write(mcpod.manifests.path().join("memory.yaml"), memory(false)).unwrap();
    wait_for(
        Duration::from_secs(30),
        "memory to leave the group",
        async || {
            let (_, groups) = mcpod.get("/groups").await;
            member_names(group(&groups, "starter")) == ["everything", "time"]
        },
    )
    .await;
    let (_, answer) = rpc(&mcpod, "/groups/starter/mcp", list).await;
    let tools = names_in(&answer, "tools");
    assert!(tools.iter().any(|t| t.starts_with("time__")), "{answer}");
    assert!(!tools.iter().any(|t| t.starts_with("memory__")), "{answer}");
    assert_eq!(
        mcpod.status("memory").await["starts"],
        before[2],
        "relabelling did not start memory"
    );
}

/// `mcpod validate` checks groups too: their members, and a collision is a problem.
#[test]
fn validate_names_group_members_and_refuses_a_collision() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["time", "memory"] {
        let text = labelled_if(manifest(name, TIME_IMAGE, ""), true);
        std::fs::write(dir.path().join(format!("{name}.yaml")), text).unwrap();
    }
    let starter = GROUPS.split("---").next().unwrap();
    std::fs::write(dir.path().join("groups.yaml"), starter).unwrap();
    let validate = |path: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_mcpod"))
            .arg("validate")
            .arg(path)
            .output()
            .unwrap()
    };
    let valid = validate(dir.path());
    let out = String::from_utf8_lossy(&valid.stdout);
    assert!(
        valid.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&valid.stderr)
    );
    assert!(
        out.contains("valid MCPServerGroup starter: 2 members (memory, time)"),
        "{out}"
    );
    std::fs::write(dir.path().join("groups.yaml"), GROUPS).unwrap();
    let clashing = validate(dir.path());
    let err = String::from_utf8_lossy(&clashing.stderr);
    assert!(!clashing.status.success());
    assert!(
        err.contains("MCPServerGroup clash") && err.contains("memory and time"),
        "{err}"
    );
    let bad = "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServerGroup\nmetadata: {name: bad}\n\
               spec: {selector: {matchExpressions: [{key: group, operator: In}]}}\n";
    std::fs::write(dir.path().join("groups.yaml"), bad).unwrap();
    let refused = validate(dir.path());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("matchExpressions[0]") && err.contains("groups.yaml"),
        "{err}"
    );
}
