//! The MCP endpoint as the specification has it, proven with the official
//! clients (Python and TypeScript SDKs, MCP Inspector CLI) against real servers
//! (`server-everything` from npm, `mcp-server-time` from PyPI) in containers,
//! and with a hand-driven client for the transport rules.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const EVERYTHING_IMAGE: &str = "localhost/mcpod/everything:latest";

fn servers() -> Vec<(&'static str, String)> {
    vec![
        (
            "everything.yaml",
            manifest("everything", EVERYTHING_IMAGE, ""),
        ),
        ("time.yaml", manifest("time", TIME_IMAGE, "")),
        ("fake.yaml", manifest("fake", FIXTURE_IMAGE, "")),
    ]
}

#[tokio::test]
async fn python_sdk_holds_a_full_conversation() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let url = format!("{}/mcp/everything", mcpod.url);
    let out = tokio::task::spawn_blocking(move || sdk_client("python", "everything", &url))
        .await
        .unwrap();
    assert_eq!(out["server"], "mcp-servers/everything");
    assert_eq!(out["protocol"], "2025-11-25");
    assert!(
        out["tools"]
            .as_array()
            .unwrap()
            .contains(&json!("trigger-sampling-request")),
        "{out}"
    );
    assert_eq!(out["echo"], json!(["Echo: hello from python"]));
    assert_eq!(out["sum"], json!(["The sum of 2 and 40 is 42."]));
    assert_eq!(out["resource"]["contents"], 1);
    assert!(out["prompts"]
        .as_array()
        .unwrap()
        .contains(&json!("simple-prompt")));
    assert_eq!(
        out["progress"],
        json!([1.0, 2.0, 3.0, 4.0]),
        "every progress notification, in order"
    );
    assert!(
        out["sampling"].to_string().contains("sampled by python"),
        "{out}"
    );
    assert!(
        out["roots"]
            .to_string()
            .contains("file:///workspace/python-client"),
        "{out}"
    );

    let url = format!("{}/mcp/time", mcpod.url);
    let out = tokio::task::spawn_blocking(move || sdk_client("python", "time", &url))
        .await
        .unwrap();
    assert_eq!(out["server"], "mcp-time");
    assert!(out["time"].to_string().contains("Asia/Tokyo"), "{out}");
}

#[tokio::test]
async fn typescript_sdk_holds_a_full_conversation_and_ends_its_session() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let url = format!("{}/mcp/everything", mcpod.url);
    let out = tokio::task::spawn_blocking(move || sdk_client("typescript", "everything", &url))
        .await
        .unwrap();
    assert_eq!(out["server"], "mcp-servers/everything");
    assert_eq!(out["echo"], json!(["Echo: hello from ts"]));
    assert_eq!(out["resource"], 1);
    assert_eq!(out["prompt"], 1);
    assert_eq!(out["progress"], json!([1, 2, 3]));
    assert!(
        out["sampling"].to_string().contains("sampled by ts-client"),
        "{out}"
    );
    assert!(
        out["roots"]
            .to_string()
            .contains("file:///workspace/ts-client"),
        "{out}"
    );
    assert_eq!(
        out["afterDelete"], 404,
        "an ended session is refused with 404"
    );
    let session = out["sessionId"].as_str().unwrap();
    assert!(session.len() >= 32 && session.bytes().all(|b| (0x21..=0x7e).contains(&b)));
}

#[tokio::test]
async fn many_sessions_with_colliding_ids_each_get_their_own_answers() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let url = format!("{}/mcp/everything", mcpod.url);
    let out = tokio::task::spawn_blocking(move || sdk_client("typescript", "concurrent", &url))
        .await
        .unwrap();
    assert_eq!(out["total"], 30);
    assert_eq!(out["mismatched"], json!([]), "{out}");
    assert_eq!(
        mcpod.status("everything").await["starts"],
        1,
        "one process served every session"
    );
}

#[tokio::test]
async fn concurrent_sampling_sessions_each_see_only_their_own_question() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let url = format!("{}/mcp/everything", mcpod.url);
    let out =
        tokio::task::spawn_blocking(move || sdk_client("typescript", "concurrent-sampling", &url))
            .await
            .unwrap();
    assert_eq!(out["total"], 6);
    assert_eq!(
        out["askedCounts"],
        json!([1, 1, 1, 1, 1, 1]),
        "each client is asked exactly its own one question: {out}"
    );
    assert_eq!(out["wrongQuestions"], json!([]), "{out}");
    assert_eq!(out["wrongAnswers"], json!([]), "{out}");
    assert_eq!(
        mcpod.status("everything").await["starts"],
        1,
        "one shared process served every session"
    );
}

#[tokio::test]
async fn legacy_sse_transport_serves_old_clients() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let url = format!("{}/sse/everything", mcpod.url);
    let out = tokio::task::spawn_blocking(move || sdk_client("typescript", "legacy", &url))
        .await
        .unwrap();
    assert_eq!(out["echo"], json!(["Echo: over legacy sse"]));
    let url = format!("{}/sse/time", mcpod.url);
    let out = tokio::task::spawn_blocking(move || sdk_client("python", "time-legacy", &url))
        .await
        .unwrap();
    assert!(out["time"].to_string().contains("Asia/Tokyo"), "{out}");
}

#[tokio::test]
async fn inspector_cli_lists_and_calls_tools() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let url = format!("{}/mcp/time", mcpod.url);
    let (listed, called) = tokio::task::spawn_blocking(move || {
        (
            inspector(&url, &["--method", "tools/list"]),
            inspector(
                &url,
                &[
                    "--method",
                    "tools/call",
                    "--tool-name",
                    "get_current_time",
                    "--tool-arg",
                    "timezone=UTC",
                ],
            ),
        )
    })
    .await
    .unwrap();
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let names: Vec<_> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].clone())
        .collect();
    assert!(
        names.contains(&json!("get_current_time")) && names.contains(&json!("convert_time")),
        "{listed}"
    );
    assert!(
        called.contains("\"timezone\": \"UTC\"")
            || called.contains("\\\"timezone\\\": \\\"UTC\\\""),
        "{called}"
    );
}

#[tokio::test]
async fn transport_rules_are_enforced() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let mut client = RawClient::new(format!("{}/mcp/fake", mcpod.url));
    let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});

    let (status, body) = client.post(&list).await;
    assert_eq!(status, 400, "a Streamable HTTP client needs a session");
    assert!(body[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Mcp-Session-Id"));

    client.initialize(json!({})).await;
    let (status, body) = client.post(&list).await;
    assert_eq!(status, 200);
    assert_eq!(body.last().unwrap()["id"], 1);
    assert!(body.last().unwrap()["result"]["tools"].is_array());

    let real_session = client.session.clone();
    client.session = Some("not-a-session".into());
    assert_eq!(client.post(&list).await.0, 404);
    client.session = real_session;

    client.version = "1999-01-01".into();
    assert_eq!(
        client.post(&list).await.0,
        400,
        "unsupported MCP-Protocol-Version"
    );
    client.version = "2025-06-18".into();

    let foreign = client
        .request(reqwest::Method::POST)
        .header("origin", "https://evil.example")
        .body(list.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let local = client
        .request(reqwest::Method::POST)
        .header("origin", "http://localhost:3000")
        .body(list.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200);

    // Batches exist only in 2025-03-26.
    let batch = json!([list, {"jsonrpc":"2.0","id":2,"method":"ping"}]);
    assert_eq!(client.post(&batch).await.0, 400);
    let mut old = RawClient::new(format!("{}/mcp/fake", mcpod.url));
    old.version = "2025-03-26".into();
    old.initialize(json!({})).await;
    let (status, body) = old.post(&batch).await;
    assert_eq!(status, 200);
    let ids: Vec<_> = body[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids, [json!(1), json!(2)]);

    // A notification or response gets 202 and no body.
    let (status, body) = client
        .post(&json!({"jsonrpc":"2.0","method":"notifications/roots/list_changed"}))
        .await;
    assert_eq!((status, body.len()), (202, 0));

    let get = client
        .http
        .get(&client.url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 400, "GET without a session");
    let get = client
        .http
        .get(&client.url)
        .header("accept", "application/json")
        .header("mcp-session-id", client.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 406, "GET must accept text/event-stream");

    let delete = client
        .request(reqwest::Method::DELETE)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 200);
    assert_eq!(client.post(&list).await.0, 404, "the session ended");
}

/// Reads SSE events from a streaming response until `count` arrived.
async fn read_events(
    response: &mut reqwest::Response,
    buffer: &mut String,
    count: usize,
) -> Vec<Event> {
    let mut events = vec![];
    while events.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk())
            .await
            .expect("an event within 20 s")
            .unwrap()
            .expect("stream still open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        events.extend(
            take_events(buffer)
                .into_iter()
                .filter(|e| e.id.is_some() && !e.is_priming()),
        );
    }
    events
}

/// Reads the first event of a stream, which must be its priming event.
async fn read_priming(response: &mut reqwest::Response, buffer: &mut String) -> Event {
    loop {
        if let Some(event) = take_events(buffer).into_iter().next() {
            return event;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(20), response.chunk())
            .await
            .expect("an event within 20 s")
            .unwrap()
            .expect("stream still open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn every_sse_stream_starts_with_a_priming_event_to_resume_from() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let mut client = RawClient::new(format!("{}/mcp/fake", mcpod.url));
    client.version = "2025-11-25".into(); // the first version with priming events
    client.initialize(json!({})).await;
    let mut stream = client.request(reqwest::Method::GET).send().await.unwrap();
    let mut buffer = String::new();
    let priming = read_priming(&mut stream, &mut buffer).await;
    assert!(priming.is_priming(), "{priming:?}");
    assert!(priming.retry.is_some(), "a retry hint: {priming:?}");
    drop(stream); // lost before its first message

    // Sent while no stream is open, it is replayed from the priming event on.
    let notify = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"notify","arguments":{"count":1}}});
    let sent = client.json_only_post(&notify).send().await.unwrap();
    assert_eq!(sent.status(), 200);
    let mut resumed = client
        .request(reqwest::Method::GET)
        .header("last-event-id", priming.id.clone().unwrap())
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    assert!(read_priming(&mut resumed, &mut buffer).await.is_priming());
    let replayed = read_events(&mut resumed, &mut buffer, 1).await;
    assert_eq!(replayed[0].data["params"]["data"], "note 1 of 1");

    // A request answered as SSE starts with one too.
    let mut answer = client
        .request(reqwest::Method::POST)
        .body(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}).to_string())
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    assert!(read_priming(&mut answer, &mut buffer).await.is_priming());
    let response = read_events(&mut answer, &mut buffer, 1).await;
    assert_eq!(response[0].data["id"], 2);
}

/// Clients before 2025-11-25 parse every event's data as JSON: an empty
/// priming event would break them (the official SDKs send them none either).
/// Their streams start with a message, each event still carrying an id.
#[tokio::test]
async fn clients_before_2025_11_25_get_no_priming_event() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let mut client = RawClient::new(format!("{}/mcp/fake", mcpod.url));
    assert_eq!(client.version, "2025-06-18");
    client.initialize(json!({})).await;
    let answer = client
        .request(reqwest::Method::POST)
        .body(json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["content-type"], "text/event-stream");
    let mut buffer = answer.text().await.unwrap();
    let events = take_events(&mut buffer);
    assert_eq!(events.len(), 1, "the answer alone: {events:?}");
    assert!(!events[0].is_priming(), "{events:?}");
    assert_eq!(events[0].data["id"], 2);
    assert!(events[0].id.is_some(), "still resumable from its id");
}

#[tokio::test]
async fn get_stream_resumes_with_last_event_id_and_loses_nothing() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let mut client = RawClient::new(format!("{}/mcp/fake", mcpod.url));
    client.initialize(json!({})).await;
    let notify = |count: u64| json!({"jsonrpc":"2.0","id":count,"method":"tools/call","params":{"name":"notify","arguments":{"count":count}}});
    let json_only = |client: &RawClient, body: Value| {
        // JSON-only request: what the server sends meanwhile goes to the GET stream.
        client.json_only_post(&body).send()
    };

    let mut stream = client.request(reqwest::Method::GET).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut buffer = String::new();
    assert_eq!(json_only(&client, notify(1)).await.unwrap().status(), 200);
    let first = read_events(&mut stream, &mut buffer, 1).await;
    assert_eq!(first[0].data["params"]["data"], "note 1 of 1");
    drop(stream); // the connection drops

    assert_eq!(json_only(&client, notify(3)).await.unwrap().status(), 200);
    let mut resumed = client
        .request(reqwest::Method::GET)
        .header("last-event-id", first[0].id.clone().unwrap())
        .send()
        .await
        .unwrap();
    let replayed = read_events(&mut resumed, &mut buffer, 3).await;
    let notes: Vec<_> = replayed
        .iter()
        .map(|e| e.data["params"]["data"].clone())
        .collect();
    assert_eq!(
        notes,
        [
            json!("note 1 of 3"),
            json!("note 2 of 3"),
            json!("note 3 of 3")
        ]
    );
    let ids: Vec<u64> = replayed
        .iter()
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1])
            && ids[0] > first[0].id.as_ref().unwrap().parse::<u64>().unwrap()
    );
}

#[tokio::test]
async fn sse_response_carries_related_messages_before_the_response() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let mut client = RawClient::new(format!("{}/mcp/everything", mcpod.url));
    client.initialize(json!({})).await;
    let call = json!({"jsonrpc":"2.0","id":"op","method":"tools/call","params":{
        "name":"trigger-long-running-operation","arguments":{"duration":1,"steps":3},"_meta":{"progressToken":"mine"}}});
    let (status, messages) = client.post(&call).await;
    assert_eq!(status, 200);
    let progress: Vec<_> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{messages:?}");
    assert!(
        progress
            .iter()
            .all(|p| p["params"]["progressToken"] == "mine"),
        "the client's own token comes back"
    );
    let last = messages.last().unwrap();
    assert_eq!(last["id"], "op", "the stream ends with the response");
    assert!(last["result"].is_object());
}

#[tokio::test]
async fn a_session_outlives_scale_to_zero() {
    let files = vec![(
        "fake.yaml",
        manifest("fake", FIXTURE_IMAGE, "idleTimeout: 1s"),
    )];
    let mcpod = Mcpod::start(&files, &[]);
    let mut client = RawClient::new(format!("{}/mcp/fake", mcpod.url));
    client.initialize(json!({})).await;
    let echo = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"before"}}});
    assert_eq!(client.post(&echo).await.0, 200);
    // An open GET stream that carries nothing does not keep the server alive.
    let _idle_stream = client.request(reqwest::Method::GET).send().await.unwrap();
    mcpod
        .wait_status("fake", "stopped", Duration::from_secs(20))
        .await;
    let (status, body) = client.post(&echo).await;
    assert_eq!(status, 200, "same session, new instance");
    assert_eq!(
        body.last().unwrap()["result"]["content"][0]["text"],
        "before"
    );
    assert_eq!(mcpod.status("fake").await["starts"], 2);
}

#[tokio::test]
async fn a_server_request_no_session_can_answer_gets_an_error_at_once() {
    let mcpod = Mcpod::start(&servers(), &[]);
    // This client declares no sampling: the server's sampling request must fail fast.
    let mut client = RawClient::new(format!("{}/mcp/everything", mcpod.url));
    client.initialize(json!({})).await;
    let call = json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"trigger-sampling-request","arguments":{"prompt":"x"}}});
    let began = std::time::Instant::now();
    let (status, messages) = client.post(&call).await;
    assert_eq!(status, 200);
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "no wait for a timeout"
    );
    let last = messages.last().unwrap();
    assert_eq!(last["id"], 5);
    assert!(last.to_string().to_lowercase().contains("error"), "{last}");
}

#[tokio::test]
async fn isolated_sessions_get_containers_of_their_own() {
    let files = vec![(
        "solo.yaml",
        manifest("solo", FIXTURE_IMAGE, "sessionMode: Isolated"),
    )];
    let mcpod = Mcpod::start(&files, &[]);
    let url = format!("{}/mcp/solo", mcpod.url);
    let (mut a, mut b) = (RawClient::new(url.clone()), RawClient::new(url));
    a.initialize(json!({})).await;
    b.initialize(json!({})).await;
    assert_eq!(
        containers_of(&mcpod.instance).len(),
        2,
        "one container per session"
    );
    let whoami = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{}}});
    let names = containers_of(&mcpod.instance);
    assert_ne!(names[0], names[1]);
    let prefix = mcpod.container("solo-s");
    assert!(names.iter().all(|n| n.starts_with(&prefix)), "{names:?}");
    assert_eq!(a.post(&whoami).await.0, 200);
    assert_eq!(b.post(&whoami).await.0, 200);
    let server = mcpod.status("solo").await;
    assert_eq!(server["isolatedInstances"], 2, "{server}");
    assert_eq!(server["sessions"], 2);

    // Ending a session removes its container; the other session keeps working.
    let delete = a.request(reqwest::Method::DELETE).send().await.unwrap();
    assert_eq!(delete.status(), 200);
    assert_eq!(containers_of(&mcpod.instance).len(), 1);
    assert_eq!(a.post(&whoami).await.0, 404);
    assert_eq!(b.post(&whoami).await.0, 200);
}

#[tokio::test]
async fn idle_sessions_expire_and_their_clients_get_404() {
    let files = vec![("fake.yaml", manifest("fake", FIXTURE_IMAGE, ""))];
    let mcpod = Mcpod::start(&files, &["--session-ttl", "1s"]);
    let mut client = RawClient::new(format!("{}/mcp/fake", mcpod.url));
    client.initialize(json!({})).await;
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"ping"});
    assert_eq!(client.post(&ping).await.0, 200);
    let began = std::time::Instant::now();
    wait_for(
        Duration::from_secs(15),
        "the session to expire",
        async || {
            // Only look once the TTL has passed: each request renews the session.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            client.post(&ping).await.0 == 404
        },
    )
    .await;
    assert!(began.elapsed() >= Duration::from_secs(1));
    // A fresh initialize starts a new session.
    client.initialize(json!({})).await;
    assert_eq!(client.post(&ping).await.0, 200);
}

#[tokio::test]
async fn legacy_sse_clients_of_an_isolated_server_get_their_own_container_too() {
    let files = vec![(
        "solo.yaml",
        manifest("solo", EVERYTHING_IMAGE, "sessionMode: Isolated"),
    )];
    let mcpod = Mcpod::start(&files, &[]);
    let url = format!("{}/sse/solo", mcpod.url);
    let out = tokio::task::spawn_blocking(move || sdk_client("typescript", "legacy", &url))
        .await
        .unwrap();
    assert_eq!(out["echo"], json!(["Echo: over legacy sse"]));
    let server = mcpod.status("solo").await;
    assert_eq!(
        server["starts"], 0,
        "the shared server never started: {server}"
    );
    // The client closed its stream: its session and container are gone.
    wait_for(
        Duration::from_secs(20),
        "the session's container to be removed",
        async || containers_of(&mcpod.instance).is_empty(),
    )
    .await;
}

/// Protocol 2026-07-28, as the Python SDK's `Client` speaks it by default: it
/// discovers instead of initializing, and every request stands alone. mcpod
/// translates onto the handshake-era server: progress on the request's stream,
/// the server's sampling request as an input-required round, listen streams.
#[tokio::test]
async fn python_sdk_speaks_the_per_request_era() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let url = format!("{}/mcp/everything", mcpod.url);
    let out = tokio::task::spawn_blocking(move || sdk_client("python", "modern", &url))
        .await
        .unwrap();
    assert_eq!(out["protocol"], "2026-07-28", "{out}");
    assert_eq!(out["discovered"], true, "no handshake fallback: {out}");
    assert_eq!(out["server"], "mcp-servers/everything");
    assert!(out["tools"].as_array().unwrap().contains(&json!("echo")));
    assert_eq!(out["echo"], json!(["Echo: hello from 2026"]));
    assert_eq!(out["progress"], json!([1.0, 2.0, 3.0, 4.0]));
    assert!(
        out["sampling"].to_string().contains("sampled by python"),
        "the sampling request went to the client as input required: {out}"
    );
    assert_eq!(out["resource"]["contents"], 1);
    assert!(out["prompt_messages"].as_u64().unwrap() >= 1);
    assert_eq!(
        out["honored"]["resourceSubscriptions"],
        json!([out["resource"]["uri"]]),
        "{out}"
    );
    assert_eq!(out["updated"], out["resource"]["uri"], "{out}");
    // No session was created for any of this.
    let status: Value = reqwest::get(format!("{}/servers/everything", mcpod.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["sessions"], 0, "{status}");
}

/// A 2026-07-28 request as its clients send it: the envelope in `_meta`.
fn per_request(id: u64, method: &str, mut params: Value, log_level: Option<&str>) -> Value {
    params["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2026-07-28");
    params["_meta"]["io.modelcontextprotocol/clientCapabilities"] = json!({});
    if let Some(level) = log_level {
        params["_meta"]["io.modelcontextprotocol/logLevel"] = json!(level);
    }
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// POSTs a 2026-07-28 request with the headers that mirror its body.
async fn post_per_request(client: &RawClient, body: &Value) -> (u16, Vec<Value>) {
    let method = body["method"].as_str().unwrap().to_string();
    let name = body["params"]["name"].as_str().unwrap_or("").to_string();
    let mut headers = vec![("mcp-method", method.as_str())];
    if !name.is_empty() {
        headers.push(("mcp-name", name.as_str()));
    }
    client.post_with(body, &headers).await
}

/// The TypeScript SDK v2 negotiates 2026-07-28 with mcpod too, and its
/// multi-round-trip and listen support work against the translation.
#[tokio::test]
async fn typescript_sdk_v2_speaks_the_per_request_era() {
    let mcpod = Mcpod::start(&servers(), &[]);
    let url = format!("{}/mcp/everything", mcpod.url);
    let out = tokio::task::spawn_blocking(move || sdk_client("typescript2", "everything", &url))
        .await
        .unwrap();
    assert_eq!(out["protocol"], "2026-07-28", "{out}");
    assert_eq!(out["server"], "mcp-servers/everything");
    assert_eq!(out["echo"], json!(["Echo: hello from ts2"]));
    assert_eq!(out["progress"], json!([1, 2, 3]));
    assert!(
        out["sampling"].to_string().contains("sampled by ts2"),
        "{out}"
    );
    assert_eq!(out["honored"]["resourceSubscriptions"], json!([out["uri"]]));
    assert_eq!(out["updated"], out["uri"], "{out}");
    assert_eq!(out["closed"], "local");
}

#[tokio::test]
async fn per_request_era_rules_are_enforced() {
    let mut files = servers();
    files.push((
        "lonely.yaml",
        manifest("lonely", FIXTURE_IMAGE, "sessionMode: Isolated"),
    ));
    let mcpod = Mcpod::start(&files, &[]);
    let mut client = RawClient::new(format!("{}/mcp/fake", mcpod.url));
    client.version = "2026-07-28".into();

    // Discovery answers from the server's own initialize result, stamped for this era.
    let (status, body) =
        post_per_request(&client, &per_request(1, "server/discover", json!({}), None)).await;
    assert_eq!(status, 200, "{body:?}");
    let result = &body[0]["result"];
    assert_eq!(result["supportedVersions"], json!(["2026-07-28"]));
    assert_eq!(result["capabilities"], json!({"tools": {}}));
    assert_eq!(result["resultType"], "complete");
    assert_eq!(
        result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "fake-mcp"
    );

    // Headers must agree with the body; the envelope must be there.
    let echo = per_request(
        2,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "hi"}}),
        None,
    );
    let (status, body) = client
        .post_with(&echo, &[("mcp-method", "tools/list"), ("mcp-name", "echo")])
        .await;
    assert_eq!(
        (status, &body[0]["error"]["code"]),
        (400, &json!(-32020)),
        "{body:?}"
    );
    let (status, body) = client
        .post_with(
            &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
            &[("mcp-method", "tools/list")],
        )
        .await;
    assert_eq!(
        (status, &body[0]["error"]["code"]),
        (400, &json!(-32602)),
        "{body:?}"
    );
    let (status, body) = post_per_request(&client, &echo).await;
    assert_eq!(status, 200);
    assert_eq!(body.last().unwrap()["result"]["content"][0]["text"], "hi");
    assert_eq!(body.last().unwrap()["id"], 2);

    // Methods this era removed are not found; an unknown version names the known ones.
    let (status, body) = post_per_request(&client, &per_request(4, "ping", json!({}), None)).await;
    assert_eq!((status, &body[0]["error"]["code"]), (404, &json!(-32601)));
    client.version = "2099-01-01".into();
    let (status, body) =
        post_per_request(&client, &per_request(5, "tools/list", json!({}), None)).await;
    assert_eq!((status, &body[0]["error"]["code"]), (400, &json!(-32022)));
    assert!(body[0]["error"]["data"]["supported"]
        .as_array()
        .unwrap()
        .contains(&json!("2026-07-28")));
    client.version = "2026-07-28".into();

    // No sessions in this era: GET and DELETE are not allowed.
    let response = client.request(reqwest::Method::GET).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");

    // Log messages reach a request that opted in at their level, and only then.
    let notify = |id, level| {
        per_request(
            id,
            "tools/call",
            json!({"name": "notify", "arguments": {"count": 2}}),
            level,
        )
    };
    let (_, frames) = post_per_request(&client, &notify(6, Some("info"))).await;
    let logs = frames
        .iter()
        .filter(|f| f["method"] == "notifications/message")
        .count();
    assert_eq!(logs, 2, "{frames:?}");
    assert_eq!(frames.last().unwrap()["id"], 6);
    let (_, frames) = post_per_request(&client, &notify(7, Some("error"))).await;
    assert_eq!(
        frames.len(),
        1,
        "below the requested level: only the response: {frames:?}"
    );

    // A client that closes its response stream cancels its request on the server.
    let sleep = per_request(
        8,
        "tools/call",
        json!({"name": "sleep", "arguments": {"seconds": 30}}),
        None,
    );
    let abandoned = client
        .request(reqwest::Method::POST)
        .header("mcp-method", "tools/call")
        .header("mcp-name", "sleep")
        .timeout(Duration::from_millis(500))
        .body(sleep.to_string())
        .send()
        .await;
    assert!(abandoned.is_err(), "the sleep cannot have finished");
    let cancelled = per_request(
        9,
        "tools/call",
        json!({"name": "cancelled", "arguments": {}}),
        None,
    );
    wait_for(
        Duration::from_secs(10),
        "the server to see the cancellation",
        async || {
            let (_, body) = post_per_request(&client, &cancelled).await;
            let text = body.last().unwrap()["result"]["content"][0]["text"]
                .as_str()
                .unwrap_or("[]")
                .to_string();
            serde_json::from_str::<Vec<Value>>(&text).is_ok_and(|ids| !ids.is_empty())
        },
    )
    .await;

    // A parked request that does not exist cannot be resumed.
    let resumed = per_request(
        10,
        "tools/call",
        json!({"name": "echo", "arguments": {}, "requestState": "nope"}),
        None,
    );
    let (status, body) = post_per_request(&client, &resumed).await;
    assert_eq!((status, &body[0]["error"]["code"]), (400, &json!(-32602)));

    // A listen stream is acknowledged first (with what the server can send: the
    // fixture announces no list changes), and ends gracefully when mcpod stops.
    let listen = per_request(
        12,
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true}}),
        None,
    );
    let mut stream = client
        .request(reqwest::Method::POST)
        .header("mcp-method", "subscriptions/listen")
        .body(listen.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut text = String::new();
    let mut frames = vec![];
    while frames.is_empty() {
        let chunk = stream.chunk().await.unwrap().expect("the acknowledgement");
        text.push_str(&String::from_utf8_lossy(&chunk));
        frames.extend(take_events(&mut text).into_iter().map(|e| e.data));
    }
    assert_eq!(
        frames[0]["method"],
        "notifications/subscriptions/acknowledged"
    );
    assert_eq!(
        frames[0]["params"]["notifications"],
        json!({}),
        "{frames:?}"
    );
    assert_eq!(
        frames[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        12
    );

    // A server that dies mid-request: the request still gets its one answer, an
    // error with its id; the listen stream stays open for the next instance.
    let crash = per_request(
        13,
        "tools/call",
        json!({"name": "crash", "arguments": {}}),
        None,
    );
    let (status, body) = post_per_request(&client, &crash).await;
    assert_eq!(status, 502, "{body:?}");
    assert_eq!(
        (&body[0]["id"], &body[0]["error"]["code"]),
        (&json!(13), &json!(-32003))
    );
    let (status, body) = post_per_request(&client, &echo).await;
    assert_eq!(status, 200, "a new instance answers: {body:?}");

    // Isolated servers keep per-client state: they need the handshake, and say so.
    let mut lonely = RawClient::new(format!("{}/mcp/lonely", mcpod.url));
    lonely.version = "2026-07-28".into();
    let (status, body) = post_per_request(
        &lonely,
        &per_request(11, "server/discover", json!({}), None),
    )
    .await;
    assert_eq!((status, &body[0]["error"]["code"]), (400, &json!(-32022)));
    let message = body[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("sessionMode Isolated"), "{message}");
    let supported = body[0]["error"]["data"]["supported"]
        .as_array()
        .unwrap()
        .clone();
    assert!(supported.contains(&json!("2025-11-25")) && !supported.contains(&json!("2026-07-28")));

    let mut mcpod = mcpod;
    let stopping = tokio::task::spawn_blocking(move || mcpod.terminate());
    while let Some(chunk) = stream.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    stopping.await.unwrap();
    let last = take_events(&mut text).pop().expect("a last frame").data;
    assert_eq!(last["id"], 12, "{last}");
    assert_eq!(
        last["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
        12
    );
}
