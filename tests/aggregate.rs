//! The aggregated endpoint `/mcp` over real containers, driven by the official
//! SDK clients: with every container stopped, listing the namespaced union of
//! everything, time and memory starts none (counted with Podman), and one call
//! starts exactly one — its own server's. An aggregated session carries a
//! member's sampling and elicitation requests, progress, cancellation and
//! resource updates, and hears of a member added; legacy SSE and 2026-07-28
//! clients use the same union.

mod common;

use common::{manifest, running_containers, sdk_client, sdk_client_with, Mcpod, TIME_IMAGE};
use serde_json::json;

const SERVERS: [&str; 3] = ["everything", "time", "memory"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_list_the_union_with_no_container_and_one_call_starts_one() {
    let idle = "idleTimeout: 2s";
    let files = [
        (
            "everything.yaml",
            manifest("everything", "localhost/mcpod/everything:latest", idle),
        ),
        (
            "time.yaml",
            manifest(
                "time",
                TIME_IMAGE,
                &format!("{idle}\nargs: [--local-timezone, UTC]"),
            ),
        ),
        (
            "memory.yaml",
            manifest(
                "memory",
                "localhost/mcpod/memory:latest",
                &format!("{idle}\nenv:\n- {{name: MEMORY_FILE_PATH, value: /tmp/memory.jsonl}}"),
            ),
        ),
    ];
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (*n, t.clone())).collect();
    let mcpod = Mcpod::start(&files, &[]);

    // Each server runs once, and its catalog is recorded (what each lists on its own).
    let mut own = mcpod.learn_catalogs_then_stop(&SERVERS).await;
    let before = mcpod.starts(&SERVERS).await;

    // The Python SDK lists the namespaced union: nothing starts.
    let url = format!("{}/mcp", mcpod.url);
    let listed = sdk_client("python", "aggregate-list", &url);
    let mut union: Vec<String> = serde_json::from_value(listed["tools"].clone()).unwrap();
    union.sort();
    own.sort();
    assert_eq!(union, own, "{listed}");
    assert!(union.contains(&"time__get_current_time".to_string()));
    assert!(
        listed["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("everything__")),
        "{listed}"
    );
    assert_eq!(listed["server"], "mcpod");
    assert!(
        running_containers(&mcpod.instance).is_empty(),
        "listing started a container"
    );
    assert_eq!(mcpod.starts(&SERVERS).await, before);

    // The TypeScript SDK calls time's tool: time alone starts.
    let called = sdk_client("typescript", "aggregate-call", &url);
    assert!(
        called["time"][0].as_str().unwrap().contains("Asia/Tokyo"),
        "{called}"
    );
    let after = mcpod.starts(&SERVERS).await;
    assert_eq!(
        after,
        vec![before[0], before[1] + 1, before[2]],
        "only time started"
    );
    let up = running_containers(&mcpod.instance);
    assert_eq!(
        up,
        vec![mcpod.container("time")],
        "exactly one container runs"
    );

    // The union's health: no collisions.
    let (_, health) = mcpod.get("/health").await;
    assert!(!health["problems"].to_string().contains("/mcp"), "{health}");
}

/// The TypeScript SDK's session on an aggregated endpoint (`url`): a member's
/// sampling and elicitation requests reach it and its answers come back,
/// progress arrives, a call is cancelled, a subscribed resource is updated,
/// and a server `added` (declared during the session) is announced and listed.
fn session_scenario(mcpod: &Mcpod, url: &str, added: &str) {
    let manifest_text = manifest(added, TIME_IMAGE, "args: [--local-timezone, UTC]");
    let path = mcpod.manifests.path().join(format!("{added}.yaml"));
    let env = [
        ("MCPOD_NEW_MANIFEST", manifest_text.as_str()),
        ("MCPOD_NEW_MANIFEST_PATH", path.to_str().unwrap()),
    ];
    let out = sdk_client_with("typescript", "aggregate-session", url, &env);
    assert!(
        out["sampling"]
            .to_string()
            .contains("sampled by ts-aggregate-session"),
        "the client's sampling answer reached the tool's result: {out}"
    );
    assert_eq!(out["elicited"], 1, "{out}");
    assert!(out["elicitation"].to_string().contains("declined"), "{out}");
    assert_eq!(out["progress"], json!([1, 2, 3]), "{out}");
    assert_eq!(out["cancelled"], true, "{out}");
    assert!(out["cancelledWithinMs"].as_u64().unwrap() < 30_000, "{out}");
    assert_eq!(out["echoAfterCancel"], json!(["Echo: still here"]), "{out}");
    assert_eq!(out["updated"], out["subscribed"], "{out}");
    assert_eq!(out["listChanged"], true, "{out}");
    let new_tool = json!(format!("{added}__get_current_time"));
    assert!(
        out["tools"].as_array().unwrap().contains(&new_tool),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_get_members_requests_progress_updates_and_new_members_through_mcp() {
    let everything = manifest("everything", "localhost/mcpod/everything:latest", "");
    // A group of every server: the same endpoint, scoped (its turn comes last).
    let group = "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServerGroup\nmetadata: {name: all}\nspec: {selector: {}}\n";
    let mcpod = Mcpod::start(
        &[
            ("everything.yaml", everything),
            ("group.yaml", group.to_string()),
        ],
        &[],
    );
    let url = format!("{}/mcp", mcpod.url);
    session_scenario(&mcpod, &url, "time");

    // The Python SDK over legacy HTTP+SSE on the aggregated endpoint.
    let legacy = sdk_client("python", "aggregate-legacy", &format!("{}/sse", mcpod.url));
    assert_eq!(legacy["server"], "mcpod", "{legacy}");
    assert_eq!(legacy["echo"], json!(["Echo: over legacy sse"]), "{legacy}");
    assert!(legacy["tools"]
        .to_string()
        .contains("time__get_current_time"));

    // The Python SDK in protocol 2026-07-28 on /mcp.
    let modern = sdk_client("python", "aggregate-modern", &url);
    assert_eq!(modern["protocol"], "2026-07-28", "{modern}");
    assert_eq!(modern["echo"], json!(["Echo: hello from 2026"]), "{modern}");
    assert!(modern["tools"].to_string().contains("everything__echo"));
    assert!(
        modern["sampling"].to_string().contains("sampled"),
        "{modern}"
    );

    // The same through an MCPServerGroup's endpoint: a member's questions,
    // progress and updates reach the group's session, and a new member
    // (labelled into the group by its selector) is announced.
    session_scenario(&mcpod, &format!("{}/groups/all/mcp", mcpod.url), "clock");
    // Legacy HTTP+SSE on the group.
    let legacy = sdk_client(
        "python",
        "aggregate-legacy",
        &format!("{}/groups/all/sse", mcpod.url),
    );
    assert_eq!(legacy["echo"], json!(["Echo: over legacy sse"]), "{legacy}");
    assert!(legacy["tools"]
        .to_string()
        .contains("clock__get_current_time"));
}
