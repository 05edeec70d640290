//! The catalog: a stopped server's lists and introduction come from what it
//! offered when it last ran, with no start; it is relearned on `list_changed`,
//! survives a restart of mcpod (its data directory), and a spec change makes
//! it stale.

use serde_json::{json, Value};

use crate::common::wait_for;
use crate::harness::{call, fast_settings, server, Mcpod, IMAGE, PATIENCE};
use mcpod::runtime::memory::MemoryRuntime;
use mcpod::server::Settings;

fn list(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": method})
}

fn tool_names(response: &Value) -> Vec<String> {
    response["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {response}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

fn with_catalog(dir: &std::path::Path) -> Settings {
    Settings {
        catalog_dir: Some(dir.to_path_buf()),
        ..fast_settings()
    }
}

/// Lists `name` until the answer (from the server or its catalog) holds `tool`.
async fn wait_listed(mcpod: &Mcpod, name: &str, tool: &str) {
    wait_for(
        PATIENCE,
        &format!("{tool} in {name}'s catalog"),
        async || {
            let (_, _, body) = mcpod.post(name, &list("tools/list")).await;
            body["result"]["tools"]
                .as_array()
                .is_some_and(|tools| tools.iter().any(|t| t["name"] == tool))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_lists_and_introduces_itself_from_its_catalog_without_starting() {
    let dir = tempfile::tempdir().unwrap();
    let spec = "idleTimeout: 100ms";
    let mcpod = Mcpod::with(
        MemoryRuntime::new(),
        with_catalog(dir.path()),
        &[server("memory", spec)],
    )
    .await;
    // Never seen running: the first listing starts it once to learn.
    let (status, _, live) = mcpod.post("memory", &list("tools/list")).await;
    assert_eq!(status, 200, "{live}");
    assert_eq!(mcpod.runtime.starts("memory"), 1);
    wait_for(PATIENCE, "the catalog file", async || {
        dir.path().read_dir().unwrap().count() == 1
    })
    .await;
    mcpod.wait_status("memory", "stopped").await;

    let (status, _, cached) = mcpod.post("memory", &list("tools/list")).await;
    assert_eq!(status, 200, "{cached}");
    assert_eq!(tool_names(&cached), tool_names(&live));
    assert_eq!(cached["id"], 7, "the client's own id");
    // A list it never announced: method not found, without a start to learn that.
    let (_, _, prompts) = mcpod.post("memory", &list("prompts/list")).await;
    assert_eq!(prompts["error"]["code"], -32601, "{prompts}");
    // An SDK-style session: initialize and list, still no start.
    let mut client = mcpod.client("memory");
    let init = client.initialize(json!({})).await;
    assert_eq!(init["result"]["serverInfo"]["name"], "memory-mcp");
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    let (_, answers) = client.post(&list("tools/list")).await;
    assert_eq!(tool_names(&answers[0]), tool_names(&live));
    assert_eq!(mcpod.runtime.starts("memory"), 1, "nothing started to list");

    // Calling a tool starts it, as always.
    let (_, answers) = client
        .post(&call(json!(8), "echo", json!({"text": "hi"})))
        .await;
    assert_eq!(answers[0]["result"]["content"][0]["text"], "hi");
    assert_eq!(mcpod.runtime.starts("memory"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changed_relearns_and_a_restarted_mcpod_loads_the_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let spec = "idleTimeout: 300ms";
    let first = Mcpod::with(
        MemoryRuntime::new(),
        with_catalog(dir.path()),
        &[server("memory", spec)],
    )
    .await;
    // Learned in full first, so `fresh` can only come from the relearning.
    let (status, _, _) = first.post("memory", &list("tools/list")).await;
    assert_eq!(status, 200);
    wait_for(PATIENCE, "the catalog file", async || {
        dir.path().read_dir().unwrap().count() == 1
    })
    .await;
    let (_, grown) = first
        .call_tool("memory", json!(1), "grow", json!({"name": "fresh"}))
        .await;
    assert_eq!(crate::harness::text_of(&grown), "grown", "{grown}");
    first.wait_status("memory", "stopped").await;
    // Stopped: the answer is the catalog's, relearned after list_changed.
    wait_listed(&first, "memory", "fresh").await;
    assert_eq!(first.runtime.starts("memory"), 1);
    drop(first);

    // A new mcpod over the same data directory: nothing has run yet.
    let second = Mcpod::with(
        MemoryRuntime::new(),
        with_catalog(dir.path()),
        &[server("memory", spec)],
    )
    .await;
    let (status, _, body) = second.post("memory", &list("tools/list")).await;
    assert_eq!(status, 200, "{body}");
    assert!(tool_names(&body).contains(&"fresh".to_string()), "{body}");
    assert_eq!(second.runtime.starts("memory"), 0, "answered from disk");

    // Another image: what was learned describes another container.
    let changed = crate::common::manifest("memory", &format!("{IMAGE}-v2"), spec);
    second.apply(&[changed]).await;
    let (_, _, body) = second.post("memory", &list("tools/list")).await;
    assert!(!tool_names(&body).contains(&"fresh".to_string()), "{body}");
    assert_eq!(second.runtime.starts("memory"), 1, "started to learn anew");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_hides_and_renames_tools_in_lists_and_calls_from_the_server_or_the_catalog() {
    let spec = "idleTimeout: 200ms\nexpose:\n  tools:\n    deny: [crash, \"sl*\"]\n    overrides:\n      echo: {name: say, description: Says it back}";
    let mcpod = Mcpod::start(&[server("memory", spec)]).await;
    let expected = |body: &Value| {
        let names = tool_names(body);
        assert!(names.contains(&"say".to_string()), "{names:?}");
        for hidden in ["crash", "sleep", "echo"] {
            assert!(!names.contains(&hidden.to_string()), "{names:?}");
        }
        let say = &body["result"]["tools"].as_array().unwrap()
            [names.iter().position(|n| n == "say").unwrap()];
        assert_eq!(say["description"], "Says it back");
    };
    let (_, _, live) = mcpod.post("memory", &list("tools/list")).await;
    expected(&live);
    // What the server does not have is known once its catalog is.
    let memory = mcpod.reconciler.server("memory").unwrap();
    wait_for(PATIENCE, "the catalog", async || {
        memory
            .catalog()
            .current(&memory.workload().spec_hash)
            .is_some()
    })
    .await;

    let (status, said) = mcpod
        .call_tool("memory", json!(1), "say", json!({"text": "hello"}))
        .await;
    assert_eq!(
        (status, crate::harness::text_of(&said)),
        (200, "hello".into()),
        "{said}"
    );
    // Hidden, renamed away, or not there at all: one and the same answer.
    let mcpod = &mcpod;
    let refusal = |name: &'static str| async move {
        let (status, body) = mcpod.call_tool("memory", json!(2), name, json!({})).await;
        (status, body.to_string().replace(name, "NAME"))
    };
    let unknown = refusal("nonesuch").await;
    assert_eq!(unknown.0, 200);
    assert!(unknown.1.contains("-32602"), "{unknown:?}");
    assert_eq!(refusal("crash").await, unknown);
    assert_eq!(refusal("echo").await, unknown);
    assert_eq!(refusal("sleep").await, unknown);
    let reached: Vec<Value> = mcpod
        .runtime
        .instances("memory")
        .iter()
        .flat_map(|i| i.received.clone())
        .filter(|m| m["method"] == "tools/call")
        .collect();
    assert_eq!(
        reached.len(),
        1,
        "only the allowed call reached it: {reached:?}"
    );
    assert_eq!(
        reached[0]["params"]["name"], "echo",
        "under the server's name"
    );

    // Stopped: the catalog's answer is filtered alike.
    mcpod.wait_status("memory", "stopped").await;
    let (_, _, cached) = mcpod.post("memory", &list("tools/list")).await;
    expected(&cached);
    assert_eq!(mcpod.runtime.starts("memory"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_on_declaration_starts_the_server_once_to_learn_it_then_idles() {
    let spec = "idleTimeout: 100ms\ncatalog: OnDeclaration";
    let mcpod = Mcpod::start(&[server("eager", spec), server("lazy", "idleTimeout: 100ms")]).await;
    let eager = mcpod.reconciler.server("eager").unwrap();
    wait_for(PATIENCE, "eager's catalog, with no request", async || {
        eager
            .catalog()
            .current(&eager.workload().spec_hash)
            .is_some()
    })
    .await;
    mcpod.wait_status("eager", "stopped").await;
    let (_, _, body) = mcpod.post("eager", &list("tools/list")).await;
    assert!(tool_names(&body).contains(&"echo".to_string()), "{body}");
    assert_eq!(
        mcpod.runtime.starts("eager"),
        1,
        "learned once, listed without a start"
    );
    assert_eq!(
        mcpod.runtime.starts("lazy"),
        0,
        "OnFirstList waits for a listing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_server_refuses_listings_even_with_a_catalog() {
    let mcpod = Mcpod::start(&[server("off", "")]).await;
    let (status, _, _) = mcpod.post("off", &list("tools/list")).await;
    assert_eq!(status, 200);
    let off = mcpod.reconciler.server("off").unwrap();
    wait_for(PATIENCE, "the catalog", async || {
        off.catalog().current(&off.workload().spec_hash).is_some()
    })
    .await;
    mcpod
        .apply(&[server("off", "desiredState: Disabled")])
        .await;
    mcpod.wait_status("off", "stopped").await;
    let (status, _, body) = mcpod.post("off", &list("tools/list")).await;
    assert_eq!(status, 503, "{body}");
    let client = mcpod.client("off");
    let response = client
        .request(reqwest::Method::POST)
        .body(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
}
