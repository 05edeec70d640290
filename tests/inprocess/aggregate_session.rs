//! `/mcp` as a full session endpoint: each member gets a real session of the
//! aggregated one, so members' questions, progress and cancellations route
//! to and from the right member; members coming or going reach the GET
//! stream; every request gets exactly one response; the legacy SSE and
//! 2026-07-28 transports serve the same union.

use serde_json::{json, Value};

use crate::common::{take_events, wait_for, Event, RawClient};
use crate::harness::{call, server, text_of, Mcpod, Stream, PATIENCE};

fn aggregated(mcpod: &Mcpod) -> RawClient {
    RawClient::new(format!("{}/mcp", mcpod.url))
}

/// The next SSE event of a long-lived response.
async fn next_event(response: &mut reqwest::Response, buffer: &mut String) -> Event {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let mut block: String = buffer.drain(..end + 2).collect();
            if let Some(event) = take_events(&mut block).into_iter().next() {
                return event;
            }
            continue;
        }
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .expect("an SSE event")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The next response on a legacy stream (list_changed may come first: a
/// member never seen running starts once to be introduced).
async fn next_response(response: &mut reqwest::Response, buffer: &mut String) -> Value {
    loop {
        let data = next_event(response, buffer).await.data;
        if data.get("id").is_some() {
            return data;
        }
    }
}

/// A tool's answer holding the JSON-RPC response its server got from the client.
fn answer_seen_by_server(response: &Value) -> Value {
    serde_json::from_str(&text_of(response)).unwrap_or_else(|_| panic!("{response}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_questions_get_ids_unique_across_members_and_answers_return_to_the_asker() {
    let mcpod = Mcpod::start(&[server("alpha", ""), server("beta", "")]).await;
    let mut client = aggregated(&mcpod);
    client
        .initialize(json!({"sampling": {}, "elicitation": {}}))
        .await;
    let mut on_alpha = Stream::post(
        &client,
        &call(json!("a"), "alpha__sample", json!({"prompt": "2+2?"})),
    )
    .await;
    let mut on_beta = Stream::post(
        &client,
        &call(json!("b"), "beta__elicit", json!({"message": "colour?"})),
    )
    .await;
    let asked_alpha = on_alpha.next().await.expect("alpha's question");
    let asked_beta = on_beta.next().await.expect("beta's question");
    assert_eq!(asked_alpha["method"], "sampling/createMessage");
    assert_eq!(asked_beta["method"], "elicitation/create");
    let (alpha_id, beta_id) = (
        asked_alpha["id"].as_str().unwrap(),
        asked_beta["id"].as_str().unwrap(),
    );
    assert!(alpha_id.starts_with("alpha#"), "{asked_alpha}");
    assert!(beta_id.starts_with("beta#"), "{asked_beta}");
    assert_ne!(alpha_id, beta_id);
    // Each member numbers its questions alike: without the prefix they would collide.
    assert_eq!(
        alpha_id.split_once('#').unwrap().1,
        beta_id.split_once('#').unwrap().1
    );

    // Answered in the other order, each answer reaches the member that asked.
    let elicited = json!({"action": "accept", "content": {"answer": "blue"}});
    let sampled =
        json!({"role": "assistant", "model": "m", "content": {"type": "text", "text": "4"}});
    for (id, result) in [(beta_id, &elicited), (alpha_id, &sampled)] {
        let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
        assert_eq!(client.post(&reply).await.0, 202);
    }
    let alpha_done = on_alpha.next().await.expect("alpha's response");
    let beta_done = on_beta.next().await.expect("beta's response");
    assert_eq!(
        (&alpha_done["id"], &beta_done["id"]),
        (&json!("a"), &json!("b"))
    );
    assert_eq!(answer_seen_by_server(&alpha_done)["result"], sampled);
    assert_eq!(answer_seen_by_server(&beta_done)["result"], elicited);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_reaches_the_request_stream_under_the_clients_token() {
    let mcpod = Mcpod::start(&[server("alpha", "")]).await;
    let mut client = aggregated(&mcpod);
    client.initialize(json!({})).await;
    let request = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "alpha__progress", "arguments": {"count": 3}, "_meta": {"progressToken": "mine"}}});
    let messages = Stream::post(&client, &request).await.rest().await;
    assert_eq!(
        messages.len(),
        4,
        "3 progress then the response: {messages:?}"
    );
    for (n, message) in messages[..3].iter().enumerate() {
        assert_eq!(message["method"], "notifications/progress");
        assert_eq!(message["params"]["progressToken"], "mine");
        assert_eq!(message["params"]["progress"], n + 1);
    }
    assert_eq!(messages[3]["id"], 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_goes_to_the_member_handling_the_request() {
    let slow = "requestTimeout: 60s";
    let mcpod = Mcpod::start(&[server("alpha", slow), server("beta", slow)]).await;
    let mut client = aggregated(&mcpod);
    client.initialize(json!({})).await;
    // alpha has a session too, with a request of its own in flight.
    let _alpha = Stream::post(
        &client,
        &call(json!(4), "alpha__sleep", json!({"ms": 60_000})),
    )
    .await;
    let _beta = Stream::post(
        &client,
        &call(json!(5), "beta__sleep", json!({"ms": 60_000})),
    )
    .await;
    let beta_wire_id = mcpod.wait_received_call("beta", "sleep").await;
    mcpod.wait_received_call("alpha", "sleep").await;
    let cancel =
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}});
    assert_eq!(client.post(&cancel).await.0, 202);
    let cancelled = |name: &str| {
        mcpod.runtime.instances(name)[0]
            .received
            .iter()
            .filter(|m| m["method"] == "notifications/cancelled")
            .map(|m| m["params"]["requestId"].clone())
            .collect::<Vec<_>>()
    };
    wait_for(PATIENCE, "beta's cancellation", async || {
        cancelled("beta") == [beta_wire_id.clone()]
    })
    .await;
    assert!(
        cancelled("alpha").is_empty(),
        "alpha was not asked to cancel"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_one_response_when_a_member_crashes_mid_request() {
    let mcpod = Mcpod::start(&[server("alpha", ""), server("beta", "")]).await;
    let mut client = aggregated(&mcpod);
    client.initialize(json!({})).await;
    let mut crashing = Stream::post(
        &client,
        &call(json!("c"), "alpha__crash", json!({"code": 5})),
    )
    .await;
    let mut sleeping = Stream::post(
        &client,
        &call(json!("s"), "beta__sleep", json!({"ms": 200})),
    )
    .await;
    let (crashed, slept) = tokio::join!(crashing.rest(), sleeping.rest());
    let responses = |messages: &[Value]| -> Vec<Value> {
        messages
            .iter()
            .filter(|m| m.get("result").is_some() || m.get("error").is_some())
            .cloned()
            .collect()
    };
    let (crashed, slept) = (responses(&crashed), responses(&slept));
    assert_eq!(crashed.len(), 1, "{crashed:?}");
    assert_eq!(crashed[0]["id"], "c");
    assert!(crashed[0]["error"].is_object(), "{crashed:?}");
    assert_eq!(slept.len(), 1, "{slept:?}");
    assert_eq!(
        (&slept[0]["id"], text_of(&slept[0])),
        (&json!("s"), "slept".to_string())
    );
    // A JSON-only client gets its one response too, and the member restarts for it.
    let response: Value = client
        .json_only_post(&call(json!(7), "alpha__echo", json!({"text": "back"})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&response["id"], text_of(&response)),
        (&json!(7), "back".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_sends_list_changed_on_the_get_stream() {
    let mcpod = Mcpod::start(&[server("alpha", "")]).await;
    let mut client = aggregated(&mcpod);
    client.initialize(json!({})).await;
    let mut stream = client.request(reqwest::Method::GET).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    mcpod
        .apply(&[server("alpha", ""), server("beta", "")])
        .await;
    let mut buffer = String::new();
    let note = next_event(&mut stream, &mut buffer).await.data;
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    let (_, answers) = client
        .post(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .await;
    assert!(answers[0].to_string().contains("beta__echo"), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_on_the_aggregated_endpoint_answers_on_its_stream() {
    let mcpod = Mcpod::start(&[server("alpha", "")]).await;
    let http = reqwest::Client::new();
    let mut stream = http
        .get(format!("{}/sse", mcpod.url))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut buffer = String::new();
    let endpoint = next_event(&mut stream, &mut buffer).await;
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    let path = endpoint.data.as_str().unwrap().to_string();
    assert!(path.starts_with("/messages?sessionId="), "{path}");
    let post = async |body: Value| {
        http.post(format!("{}{path}", mcpod.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    assert_eq!(post(init).await, 202);
    let introduced = next_response(&mut stream, &mut buffer).await;
    assert_eq!(introduced["result"]["protocolVersion"], "2024-11-05");
    assert_eq!(
        post(call(json!(1), "alpha__echo", json!({"text": "old"}))).await,
        202
    );
    let answered = next_response(&mut stream, &mut buffer).await;
    assert_eq!(
        (&answered["id"], text_of(&answered)),
        (&json!(1), "old".to_string()),
        "{answered}"
    );
    // Another session's id, or none: not found.
    let stranger = http
        .post(format!("{}/messages?sessionId=nope", mcpod.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(stranger.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_request_on_the_aggregated_endpoint_lists_and_calls_by_namespaced_name() {
    let mcpod = Mcpod::start(&[server("alpha", "")]).await;
    let http = reqwest::Client::new();
    let send = async |method: &str, name: Option<&str>, params: Value| -> (u16, Value) {
        let mut params = params;
        params["_meta"] = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}});
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut request = http
            .post(format!("{}/mcp", mcpod.url))
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method);
        if let Some(name) = name {
            request = request.header("mcp-name", name);
        }
        let response = request.body(body.to_string()).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    };
    let (status, listed) = send("tools/list", None, json!({})).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["result"]["resultType"], "complete");
    assert!(listed.to_string().contains("alpha__echo"), "{listed}");
    let (status, called) = send(
        "tools/call",
        Some("alpha__echo"),
        json!({"name": "alpha__echo", "arguments": {"text": "new era"}}),
    )
    .await;
    assert_eq!(
        (status, text_of(&called)),
        (200, "new era".to_string()),
        "{called}"
    );
    let (status, discovered) = send("server/discover", None, json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        discovered["result"]["supportedVersions"],
        json!(["2026-07-28"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_ends_every_member_session() {
    let mcpod = Mcpod::start(&[server("alpha", ""), server("beta", "")]).await;
    let mut client = aggregated(&mcpod);
    client.initialize(json!({})).await;
    for tool in ["alpha__echo", "beta__echo"] {
        let (_, answers) = client
            .post(&call(json!(1), tool, json!({"text": "x"})))
            .await;
        assert_eq!(text_of(&answers[0]), "x", "{answers:?}");
    }
    let sessions = |name: &str| mcpod.reconciler.server(name).unwrap().sessions().len();
    assert_eq!((sessions("alpha"), sessions("beta")), (1, 1));
    let status = client
        .request(reqwest::Method::DELETE)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    assert_eq!((sessions("alpha"), sessions("beta")), (0, 0));
    let (status, _) = client.post(&call(json!(2), "alpha__echo", json!({}))).await;
    assert_eq!(status, 404, "the aggregated session is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_level_is_remembered_and_applied_when_a_member_session_begins() {
    let mcpod = Mcpod::start(&[server("alpha", "")]).await;
    let mut client = aggregated(&mcpod);
    client.initialize(json!({})).await;
    let starts = mcpod.runtime.starts("alpha");
    let level = json!({"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": {"level": "debug"}});
    let (status, answers) = client.post(&level).await;
    assert_eq!((status, &answers[0]["result"]), (200, &json!({})));
    assert_eq!(
        mcpod.runtime.starts("alpha"),
        starts,
        "setLevel started nothing"
    );
    let messages = Stream::post(
        &client,
        &call(json!(2), "alpha__log", json!({"text": "hello"})),
    )
    .await
    .rest()
    .await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["method"], "notifications/message");
    assert_eq!(messages[0]["params"]["data"], "hello");
    let received = mcpod
        .runtime
        .instances("alpha")
        .last()
        .unwrap()
        .received
        .clone();
    let set = received
        .iter()
        .position(|m| m["method"] == "logging/setLevel" && m["params"]["level"] == "debug");
    let called = received.iter().position(|m| m["method"] == "tools/call");
    assert!(
        set.is_some() && set < called,
        "setLevel came first: {received:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_and_declared_again_gets_a_new_member_session() {
    let mcpod = Mcpod::start(&[server("alpha", ""), server("beta", "")]).await;
    let mut client = aggregated(&mcpod);
    client.initialize(json!({})).await;
    let echo = async |id: i64| {
        let (_, answers) = client
            .post(&call(json!(id), "alpha__echo", json!({"text": "x"})))
            .await;
        text_of(&answers[0])
    };
    assert_eq!(echo(1).await, "x");
    // Stopped and started again: the same server keeps its sessions.
    assert_eq!(mcpod.admin("/servers/alpha/stop").await, 200);
    assert_eq!(echo(2).await, "x");
    let before = mcpod.reconciler.server("alpha").unwrap();
    mcpod.apply(&[server("beta", "")]).await;
    wait_for(PATIENCE, "alpha removed", async || {
        mcpod.apply(&[server("beta", "")]).await;
        mcpod.reconciler.server("alpha").is_none()
    })
    .await;
    assert_eq!(before.sessions().len(), 0, "its sessions ended with it");
    mcpod
        .apply(&[server("alpha", ""), server("beta", "")])
        .await;
    let alpha = mcpod.reconciler.server("alpha").unwrap();
    assert!(!std::sync::Arc::ptr_eq(&before, &alpha));
    assert_eq!(echo(3).await, "x", "a new member session on the new server");
    assert_eq!(alpha.sessions().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2025_03_26_batch_gets_one_response_per_request() {
    let mcpod = Mcpod::start(&[server("alpha", ""), server("beta", "")]).await;
    let mut client = aggregated(&mcpod);
    client.version = "2025-03-26".into();
    client.initialize(json!({})).await;
    let batch = json!([
        call(json!(1), "alpha__echo", json!({"text": "a"})),
        call(json!(2), "beta__crash", json!({})),
        {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
        call(json!(3), "nobody__echo", json!({})),
    ]);
    let (status, answers) = client.post(&batch).await;
    assert_eq!(status, 200, "{answers:?}");
    let answers = answers[0].as_array().unwrap();
    let ids: Vec<&Value> = answers.iter().map(|a| &a["id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(2), &json!(3)], "{answers:?}");
    assert_eq!(text_of(&answers[0]), "a");
    assert!(answers[1]["error"].is_object() && answers[2]["error"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2026_listen_on_the_aggregated_endpoint_streams_the_list_changes_asked_for() {
    let mcpod = Mcpod::start(&[server("alpha", "")]).await;
    let listen = json!({"jsonrpc": "2.0", "id": "watch-1", "method": "subscriptions/listen",
        "params": {"notifications": {"toolsListChanged": true},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                      "io.modelcontextprotocol/clientCapabilities": {}}}});
    let mut stream = reqwest::Client::new()
        .post(format!("{}/mcp", mcpod.url))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(listen.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut buffer = String::new();
    let ack = next_event(&mut stream, &mut buffer).await.data;
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(
        ack["params"]["notifications"],
        json!({"toolsListChanged": true}),
        "only what was asked for: {ack}"
    );
    mcpod
        .apply(&[server("alpha", ""), server("beta", "")])
        .await;
    let note = next_event(&mut stream, &mut buffer).await.data;
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    assert_eq!(
        note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "watch-1",
        "{note}"
    );
}
