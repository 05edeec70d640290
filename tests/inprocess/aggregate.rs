//! `/mcp`: one endpoint over every server. Lists are the namespaced union of
//! the members' catalogs (no start once learned); a call starts its member only;
//! a name two members share is refused and reported, never shadowed.

use serde_json::{json, Value};

use crate::common::{wait_for, RawClient};
use crate::harness::{call, fast_settings, server, Mcpod, PATIENCE};
use mcpod::mcp::http::EndpointConfig;
use mcpod::router::RouterConfig;
use mcpod::runtime::memory::MemoryRuntime;

fn names(response: &Value, key: &str) -> Vec<String> {
    response["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {response}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

async fn learned(mcpod: &Mcpod, name: &str) {
    let server = mcpod.reconciler.server(name).unwrap();
    wait_for(PATIENCE, &format!("{name}'s catalog"), async || {
        server
            .catalog()
            .current(&server.workload().spec_hash)
            .is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_lists_the_namespaced_union_from_catalogs_and_a_call_starts_only_its_server() {
    let spec = "idleTimeout: 100ms";
    let expose = "idleTimeout: 100ms\nexpose:\n  tools:\n    allow: [echo]\n    overrides:\n      echo: {name: say}";
    let mcpod = Mcpod::start(&[server("alpha", spec), server("beta", expose)]).await;
    let mut client = RawClient::new(format!("{}/mcp", mcpod.url));
    // Never seen running: the introduction starts each once to learn it.
    let init = client.initialize(json!({})).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "mcpod");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    learned(&mcpod, "alpha").await;
    learned(&mcpod, "beta").await;
    mcpod.wait_status("alpha", "stopped").await;
    mcpod.wait_status("beta", "stopped").await;
    let starts = |mcpod: &Mcpod| (mcpod.runtime.starts("alpha"), mcpod.runtime.starts("beta"));
    assert_eq!(starts(&mcpod), (1, 1));

    let (status, answers) = client
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .await;
    assert_eq!(status, 200, "{answers:?}");
    let tools = names(&answers[0], "tools");
    assert!(tools.contains(&"alpha__echo".to_string()), "{tools:?}");
    assert!(tools.contains(&"alpha__whoami".to_string()), "{tools:?}");
    assert_eq!(
        tools
            .iter()
            .filter(|t| t.starts_with("beta__"))
            .collect::<Vec<_>>(),
        ["beta__say"],
        "beta's spec.expose applies"
    );
    assert_eq!(starts(&mcpod), (1, 1), "listing started nothing");

    let (_, answers) = client
        .post(&call(json!(2), "beta__say", json!({"text": "hi"})))
        .await;
    assert_eq!(answers[0]["id"], 2);
    assert_eq!(crate::harness::text_of(&answers[0]), "hi", "{answers:?}");
    assert_eq!(starts(&mcpod), (1, 2), "only beta started");
    // Hidden on beta, unknown anywhere, or no member at all: the unknown-tool answer.
    for name in ["beta__whoami", "beta__echo", "gamma__echo", "echo"] {
        let (_, answers) = client.post(&call(json!(3), name, json!({}))).await;
        assert_eq!(answers[0]["error"]["code"], -32602, "{name}: {answers:?}");
    }
    assert_eq!(starts(&mcpod), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_list_changed_reaches_the_aggregated_get_stream() {
    let mcpod = Mcpod::start(&[server("alpha", ""), server("beta", "")]).await;
    let mut client = RawClient::new(format!("{}/mcp", mcpod.url));
    let init = client.initialize(json!({})).await;
    assert_eq!(init["result"]["capabilities"]["tools"]["listChanged"], true);
    learned(&mcpod, "alpha").await;
    let mut stream = client.request(reqwest::Method::GET).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let (_, answers) = client
        .post(&call(json!(1), "alpha__grow", json!({"name": "fresh"})))
        .await;
    assert_eq!(crate::harness::text_of(&answers[0]), "grown", "{answers:?}");
    let mut buffer = String::new();
    let note = loop {
        let chunk = tokio::time::timeout(PATIENCE, stream.chunk())
            .await
            .expect("list_changed on the GET stream")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(event) = crate::common::take_events(&mut buffer).into_iter().next() {
            break event.data;
        }
    };
    assert_eq!(note["method"], "notifications/tools/list_changed");
    // Sent once the catalog has the new list: the union already shows it.
    let (_, answers) = client
        .post(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await;
    assert!(names(&answers[0], "tools").contains(&"alpha__fresh".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_two_servers_share_is_listed_by_neither_refused_and_reported() {
    let config = RouterConfig {
        endpoint: EndpointConfig {
            tool_separator: "-".into(),
            ..EndpointConfig::default()
        },
        ..RouterConfig::default()
    };
    // `a` renames echo to `x-echo`, so `a-x-echo` is also `a-x`'s echo.
    let renames = "expose:\n  tools:\n    overrides:\n      echo: {name: x-echo}";
    let mcpod = Mcpod::with_router(
        MemoryRuntime::new(),
        fast_settings(),
        config,
        &[server("a", renames), server("a-x", "")],
    )
    .await;
    let mut client = RawClient::new(format!("{}/mcp", mcpod.url));
    client.initialize(json!({})).await;
    let (_, answers) = client
        .post(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .await;
    let tools = names(&answers[0], "tools");
    assert!(!tools.contains(&"a-x-echo".to_string()), "{tools:?}");
    assert!(tools.contains(&"a-whoami".to_string()), "{tools:?}");
    let (_, answers) = client
        .post(&call(json!(2), "a-x-echo", json!({"text": "?"})))
        .await;
    let message = answers[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("collision"), "{answers:?}");
    let health: Value = reqwest::get(format!("{}/health", mcpod.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let problems = health["problems"].to_string();
    assert!(
        problems.contains("a-x-echo") && problems.contains("a and a-x"),
        "{problems}"
    );
}
