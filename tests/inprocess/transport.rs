//! Streamable HTTP rules (/work/shared/reference/mcp-transport.md) and the
//! gateway's duties in front of one shared stdio server: sessions, versions,
//! batches, Origin, progress, id rewriting, server→client requests,
//! cancellation, and exactly one response per request whatever happens.

use std::collections::HashSet;

use futures::future::join_all;
use serde_json::{json, Value};

use mcpod::runtime::memory::MemoryRuntime;
use mcpod::server::Settings;

use crate::common::RawClient;
use crate::harness::{call, fast_settings, server, text_of, Mcpod, Stream};

fn list() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"tools/list"})
}

/// The responses (not requests or notifications) with `id` among `messages`.
fn responses_to<'a>(messages: &'a [Value], id: &Value) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m.get("method").is_none() && m["id"] == *id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_opens_a_session_answered_from_the_servers_own_result() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut client = mcpod.client("memory");
    let answer = client.initialize(json!({})).await;
    let session = client.session.clone().unwrap();
    assert!(session.len() >= 16, "{session}");
    assert!(
        session.bytes().all(|b| (0x21..=0x7e).contains(&b)),
        "visible ASCII only: {session:?}"
    );
    let result = &answer["result"];
    assert_eq!(
        result["protocolVersion"], "2025-06-18",
        "the client's version"
    );
    assert_eq!(result["serverInfo"]["name"], "memory-mcp");
    assert_eq!(result["capabilities"]["tools"]["listChanged"], true);
    assert_eq!(result["capabilities"]["resources"]["subscribe"], true);
    // The server's handshake is mcpod's, once per instance: it saw `initialize`
    // and `notifications/initialized` once, with mcpod's own client info.
    let received = &mcpod.runtime.instances("memory")[0].received;
    let initializes: Vec<_> = received
        .iter()
        .filter(|m| m["method"] == "initialize")
        .collect();
    assert_eq!(initializes.len(), 1, "{received:?}");
    assert_eq!(initializes[0]["params"]["clientInfo"]["name"], "mcpod");

    let other = mcpod.client("memory").initialize(json!({})).await;
    assert_eq!(other["result"]["serverInfo"], result["serverInfo"]);
    let received = &mcpod.runtime.instances("memory")[0].received;
    assert_eq!(
        received
            .iter()
            .filter(|m| m["method"] == "initialize")
            .count(),
        1,
        "a second session reuses the instance's handshake"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamable_client_without_a_session_gets_400() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let client = mcpod.client("memory");
    let (status, body) = client.post(&list()).await;
    assert_eq!(status, 400);
    let message = body[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("Mcp-Session-Id"), "{message}");
    assert_eq!(mcpod.runtime.starts("memory"), 0, "nothing started for it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_or_unknown_session_gets_404() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut client = mcpod.client("memory");
    client.initialize(json!({})).await;
    assert_eq!(client.post(&list()).await.0, 200);
    let delete = client
        .request(reqwest::Method::DELETE)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 200);
    assert_eq!(client.post(&list()).await.0, 404, "after DELETE");
    client.session = Some("no-such-session".into());
    assert_eq!(client.post(&list()).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_protocol_version_gets_400_and_32022() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut client = mcpod.client("memory");
    client.initialize(json!({})).await;
    client.version = "1999-01-01".into();
    let (status, body) = client.post(&list()).await;
    assert_eq!(status, 400);
    assert_eq!(body[0]["error"]["code"], -32022, "{body:?}");
    assert!(body[0]["error"]["data"]["supported"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_accepted_only_in_2025_03_26() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let echo = call(json!(2), "echo", json!({"text": "two"}));
    let batch = json!([list(), echo]);

    let mut client = mcpod.client("memory");
    client.initialize(json!({})).await;
    let (status, _) = client.post(&batch).await;
    assert_eq!(status, 400, "no batches in 2025-06-18");

    let mut old = mcpod.client("memory");
    old.version = "2025-03-26".into();
    old.initialize(json!({})).await;
    let (status, body) = old.post(&batch).await;
    assert_eq!(status, 200, "{body:?}");
    let answers = body[0].as_array().unwrap();
    let ids: Vec<&Value> = answers.iter().map(|a| &a["id"]).collect();
    assert_eq!(ids, [&json!(1), &json!(2)]);
    assert_eq!(text_of(&answers[1]), "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_gets_202_and_no_body_and_reaches_the_server() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut client = mcpod.client("memory");
    client.initialize(json!({})).await;
    let note = json!({"jsonrpc":"2.0","method":"notifications/roots/list_changed"});
    let (status, body) = client.post(&note).await;
    assert_eq!((status, body.len()), (202, 0));
    crate::common::wait_for(crate::harness::PATIENCE, "the notification", async || {
        mcpod.runtime.instances("memory")[0]
            .received
            .iter()
            .any(|m| m["method"] == "notifications/roots/list_changed")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_gets_403_and_a_loopback_one_is_served() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut client = mcpod.client("memory");
    client.initialize(json!({})).await;
    let with_origin = |origin: &str| {
        client
            .request(reqwest::Method::POST)
            .header("origin", origin)
            .body(list().to_string())
            .send()
    };
    assert_eq!(
        with_origin("https://evil.example").await.unwrap().status(),
        403
    );
    assert_eq!(
        with_origin("http://localhost:3000").await.unwrap().status(),
        200
    );
    assert_eq!(with_origin("http://127.0.0.1").await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_comes_before_the_response_and_only_to_its_caller() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut a = mcpod.client("memory");
    let mut b = mcpod.client("memory");
    a.initialize(json!({})).await;
    b.initialize(json!({})).await;
    // Both sessions use the same id and the same progress token at once.
    let progress = json!({"jsonrpc":"2.0","id":"op","method":"tools/call","params":{
        "name":"progress","arguments":{"count":3},"_meta":{"progressToken":"mine"}}});
    let (mut sa, mut sb) = tokio::join!(Stream::post(&a, &progress), Stream::post(&b, &progress));
    let (ma, mb) = tokio::join!(sa.rest(), sb.rest());
    for messages in [ma, mb] {
        assert_eq!(
            messages.len(),
            4,
            "3 progress then the response: {messages:?}"
        );
        for (n, message) in messages[..3].iter().enumerate() {
            assert_eq!(message["method"], "notifications/progress");
            assert_eq!(
                message["params"]["progressToken"], "mine",
                "the client's own token"
            );
            assert_eq!(message["params"]["progress"], n + 1);
        }
        assert_eq!(messages[3]["id"], "op");
        assert_eq!(text_of(&messages[3]), "sent 3");
    }
    // The server saw two different tokens: mcpod kept them apart.
    let tokens: HashSet<String> = mcpod.runtime.instances("memory")[0]
        .received
        .iter()
        .filter(|m| m["params"]["name"] == "progress")
        .map(|m| m["params"]["_meta"]["progressToken"].to_string())
        .collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_client_ids_across_sessions_each_get_their_own_answer() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut clients: Vec<RawClient> = (0..8).map(|_| mcpod.client("memory")).collect();
    for client in &mut clients {
        client.initialize(json!({})).await;
    }
    let calls = clients.iter().enumerate().map(|(i, client)| async move {
        let echo = call(json!(1), "echo", json!({"text": format!("session {i}")}));
        client.post(&echo).await
    });
    for (i, (status, messages)) in join_all(calls).await.into_iter().enumerate() {
        assert_eq!(status, 200);
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0]["id"], 1);
        assert_eq!(text_of(&messages[0]), format!("session {i}"));
    }
    let wire_ids: HashSet<String> = mcpod.runtime.instances("memory")[0]
        .received
        .iter()
        .filter(|m| m["method"] == "tools/call")
        .map(|m| m["id"].to_string())
        .collect();
    assert_eq!(wire_ids.len(), 8, "each request had its own id on the wire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_one_response_when_the_server_crashes_mid_request() {
    // A 2025-11-25 client's SSE answer opens at once with its priming event;
    // an older client's holds its head back until its first message, which
    // here is the error the crash brings.
    for version in ["2025-11-25", "2025-06-18"] {
        let mcpod = Mcpod::start(&[server("memory", "requestTimeout: 60s")]).await;
        let mut client = mcpod.client("memory");
        client.version = version.into();
        client.initialize(json!({})).await;
        let sleep = call(json!("a"), "sleep", json!({"ms": 60_000}));
        let crash = call(json!("b"), "crash", json!({"code": 5}));
        let (mut sleeping, mut crashing) = tokio::join!(Stream::post(&client, &sleep), async {
            mcpod.wait_received_call("memory", "sleep").await;
            Stream::post(&client, &crash).await
        });
        let (crashed, slept) = tokio::join!(crashing.rest(), sleeping.rest());
        for (id, messages) in [("b", crashed), ("a", slept)] {
            let answers = responses_to(&messages, &json!(id));
            assert_eq!(
                answers.len(),
                1,
                "{version}: exactly one response to {id}: {messages:?}"
            );
            assert_eq!(answers[0]["error"]["code"], -32003, "{}", answers[0]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_in_a_batch_gets_exactly_one_response_when_the_server_crashes() {
    let mcpod = Mcpod::start(&[server("memory", "requestTimeout: 60s")]).await;
    assert_eq!(mcpod.admin("/servers/memory/start").await, 200);
    let mut old = mcpod.client("memory");
    old.version = "2025-03-26".into();
    old.initialize(json!({})).await;
    let batch = json!([
        call(json!(1), "echo", json!({"text": "one"})),
        call(json!(2), "sleep", json!({"ms": 60_000})),
        call(json!(3), "crash", json!({})),
    ]);
    let (status, body) = old.post(&batch).await;
    assert_eq!(status, 200, "{body:?}");
    let answers = body[0].as_array().unwrap().clone();
    for id in [1, 2, 3] {
        assert_eq!(responses_to(&answers, &json!(id)).len(), 1, "{answers:?}");
    }
    for id in [2, 3] {
        assert_eq!(
            responses_to(&answers, &json!(id))[0]["error"]["code"],
            -32003
        );
    }
}

/// Calls `tool` in `client`'s session and answers the server's question on the
/// call's own stream with `answer`; returns the question and the call's result.
async fn ask_and_answer(
    client: &RawClient,
    tool: &str,
    args: Value,
    answer: Value,
) -> (Vec<Value>, Value) {
    let mut stream = Stream::post(client, &call(json!(7), tool, args)).await;
    let mut questions = vec![];
    while let Some(message) = stream.next().await {
        if message.get("method").is_some() && message.get("id").is_some() {
            let reply = json!({"jsonrpc":"2.0","id":message["id"],"result":answer});
            assert_eq!(client.post(&reply).await.0, 202);
            questions.push(message);
        } else if message["id"] == 7 {
            let result: Value = serde_json::from_str(&text_of(&message)).unwrap();
            return (questions, result);
        }
    }
    panic!("the stream ended without the response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elicitation_reaches_its_caller_and_the_answer_returns_to_the_server() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut client = mcpod.client("memory");
    client.initialize(json!({"elicitation": {}})).await;
    let answer = json!({"action": "accept", "content": {"answer": "blue"}});
    let (questions, result) = ask_and_answer(
        &client,
        "elicit",
        json!({"message": "favourite colour?"}),
        answer.clone(),
    )
    .await;
    assert_eq!(questions.len(), 1);
    assert_eq!(questions[0]["method"], "elicitation/create");
    assert_eq!(questions[0]["params"]["message"], "favourite colour?");
    assert_eq!(result["result"], answer, "{result}");
    assert_eq!(
        result["id"], "ask-1",
        "the answer went back under the server's own id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampling_request_reaches_its_caller_and_the_answer_returns_to_the_server() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut client = mcpod.client("memory");
    client.initialize(json!({"sampling": {}})).await;
    let answer =
        json!({"role": "assistant", "model": "test", "content": {"type": "text", "text": "4"}});
    let (questions, result) =
        ask_and_answer(&client, "sample", json!({"prompt": "2+2?"}), answer.clone()).await;
    assert_eq!(questions.len(), 1);
    assert_eq!(questions[0]["method"], "sampling/createMessage");
    assert_eq!(result["result"], answer, "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_request_no_session_can_answer_gets_an_error_at_once() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut client = mcpod.client("memory");
    client.initialize(json!({})).await; // declares no elicitation
    let (questions, result) =
        ask_and_answer(&client, "elicit", json!({"message": "?"}), json!({})).await;
    assert!(questions.is_empty(), "{questions:?}");
    assert_eq!(result["error"]["code"], -32601, "{result}");
}

/// Issue 9's routing rule: with several sessions calling an eliciting tool at
/// once, each sees (and answers) only its own question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_elicitations_each_reach_only_their_own_session() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut clients: Vec<RawClient> = (0..4).map(|_| mcpod.client("memory")).collect();
    for client in &mut clients {
        client.initialize(json!({"elicitation": {}})).await;
    }
    let calls = clients.iter().enumerate().map(|(i, client)| async move {
        // Asked 200 ms after each call arrives: all four are in flight by then.
        let args = json!({"message": format!("for session {i}"), "after_ms": 200});
        let answer =
            json!({"action": "accept", "content": {"answer": format!("from session {i}")}});
        ask_and_answer(client, "elicit", args, answer).await
    });
    let seen: Vec<(Vec<Value>, Value)> = join_all(calls)
        .await
        .into_iter()
        .map(|(questions, result)| {
            let asked = questions.iter().map(|q| q["params"]["message"].clone());
            (
                asked.collect(),
                result["result"]["content"]["answer"].clone(),
            )
        })
        .collect();
    for (i, (asked, answer)) in seen.iter().enumerate() {
        assert_eq!(
            asked,
            &[json!(format!("for session {i}"))],
            "questions seen and answers got, per session: {seen:?}"
        );
        assert_eq!(answer, &json!(format!("from session {i}")), "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_reaches_the_server_under_the_wire_id() {
    let mcpod = Mcpod::start(&[server("memory", "requestTimeout: 60s")]).await;
    let mut client = mcpod.client("memory");
    client.version = "2025-11-25".into(); // a primed stream opens at once
    client.initialize(json!({})).await;
    let _stream = Stream::post(&client, &call(json!(5), "sleep", json!({"ms": 60_000}))).await;
    let wire_id = mcpod.wait_received_call("memory", "sleep").await;
    let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5,"reason":"user"}});
    assert_eq!(client.post(&cancel).await.0, 202);
    crate::common::wait_for(crate::harness::PATIENCE, "the cancellation", async || {
        mcpod.runtime.instances("memory")[0]
            .received
            .iter()
            .any(|m| {
                m["method"] == "notifications/cancelled" && m["params"]["requestId"] == wire_id
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_sse_clients_get_an_endpoint_and_every_answer_on_their_stream() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut stream = mcpod
        .http
        .get(format!("{}/sse/memory", mcpod.url))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut buffer = String::new();
    let mut events = vec![];
    let mut next_event = async || loop {
        if !events.is_empty() {
            return events.remove(0);
        }
        let chunk = tokio::time::timeout(crate::harness::PATIENCE, stream.chunk())
            .await
            .expect("an event")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        events.extend(crate::common::take_events(&mut buffer));
    };
    let endpoint = next_event().await;
    assert_eq!(endpoint.event.as_deref(), Some("endpoint"));
    let path = endpoint.data.as_str().unwrap().to_string();
    assert!(path.starts_with("/messages/memory?sessionId="), "{path}");

    let post = |body: Value| {
        mcpod
            .http
            .post(format!("{}{path}", mcpod.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let initialize = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2024-11-05","capabilities":{},"clientInfo":{"name":"old","version":"1"}}});
    assert_eq!(post(initialize).await.unwrap().status(), 202);
    let answer = next_event().await.data;
    assert_eq!(answer["id"], 0);
    assert_eq!(answer["result"]["protocolVersion"], "2024-11-05");
    let echo = call(json!("e"), "echo", json!({"text": "old but served"}));
    assert_eq!(post(echo).await.unwrap().status(), 202);
    let answer = next_event().await.data;
    assert_eq!(answer["id"], "e");
    assert_eq!(text_of(&answer), "old but served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_sessions_get_instances_of_their_own_that_end_with_them() {
    let mcpod = Mcpod::start(&[server("solo", "sessionMode: Isolated")]).await;
    let mut a = mcpod.client("solo");
    let mut b = mcpod.client("solo");
    a.initialize(json!({})).await;
    b.initialize(json!({})).await;
    let whoami = call(json!(1), "whoami", json!({}));
    let (pa, pb) = (a.post(&whoami).await.1, b.post(&whoami).await.1);
    let (pa, pb) = (
        crate::harness::pid_of(&pa[0]),
        crate::harness::pid_of(&pb[0]),
    );
    assert_ne!(pa, pb, "one instance per session");
    assert_eq!(mcpod.runtime.running(), 2);
    let keys: HashSet<String> = mcpod
        .runtime
        .instances("solo")
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(keys.len(), 2, "under keys of their own: {keys:?}");

    let delete = a.request(reqwest::Method::DELETE).send().await.unwrap();
    assert_eq!(delete.status(), 200);
    assert_eq!(
        mcpod.runtime.removes("solo"),
        1,
        "a's container went with a"
    );
    assert_eq!(mcpod.runtime.running(), 1);
    assert_eq!(b.post(&whoami).await.0, 200, "b is untouched");
}

/// Status and `Retry-After` of one anonymous `initialize`.
async fn initialize_status(client: &RawClient) -> (u16, Option<String>) {
    let body = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}});
    let response = client
        .request(reqwest::Method::POST)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_containers_are_capped_per_server_even_when_requested_at_once() {
    let settings = Settings {
        max_isolated: 2,
        ..fast_settings()
    };
    let mcpod = Mcpod::with(
        MemoryRuntime::new(),
        settings,
        &[server("solo", "sessionMode: Isolated")],
    )
    .await;
    let clients: Vec<RawClient> = (0..6).map(|_| mcpod.client("solo")).collect();
    let answers = join_all(clients.iter().map(initialize_status)).await;
    let admitted = answers.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(admitted, 2, "{answers:?}");
    for (status, retry_after) in answers.iter().filter(|(status, _)| *status != 200) {
        assert_eq!(*status, 503);
        assert!(retry_after.is_some(), "a refusal says when to retry");
    }
    assert_eq!(mcpod.runtime.running(), 2, "no container past the cap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_capped_per_server_and_a_place_frees_when_one_ends() {
    let settings = Settings {
        max_sessions: 2,
        ..fast_settings()
    };
    let mcpod = Mcpod::with(MemoryRuntime::new(), settings, &[server("busy", "")]).await;
    let mut first = mcpod.client("busy");
    first.initialize(json!({})).await;
    let mut second = mcpod.client("busy");
    second.initialize(json!({})).await;
    let third = mcpod.client("busy");
    let (status, retry_after) = initialize_status(&third).await;
    assert_eq!(status, 503);
    assert!(retry_after.is_some());
    let ended = first.request(reqwest::Method::DELETE).send().await.unwrap();
    assert_eq!(ended.status(), 200);
    assert_eq!(initialize_status(&third).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_batch_is_refused_whole() {
    let mcpod = Mcpod::start(&[server("memory", "")]).await;
    let mut client = mcpod.client("memory");
    client.version = "2025-03-26".into();
    client.initialize(json!({})).await;
    let batch: Vec<Value> = (0..101)
        .map(|i| json!({"jsonrpc":"2.0","id":i,"method":"ping"}))
        .collect();
    let (status, body) = client.post(&Value::Array(batch)).await;
    assert_eq!(status, 400, "{body:?}");
    assert!(body[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 100"));
}
