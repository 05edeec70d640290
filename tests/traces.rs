//! OpenTelemetry traces: the real mcpod binary exports over OTLP/HTTP to a
//! small receiver built on the official protobuf definitions
//! (opentelemetry-proto), listening on loopback; the spans and their parent
//! links are asserted, and so is the `traceparent` the server received.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use warp::Filter;

/// A server that answers every tool call with the `params._meta` it got.
const META_SERVER: &str = r#"
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if "id" not in m or "method" not in m:
        continue
    if m["method"] == "initialize":
        r = {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
             "serverInfo": {"name": "meta", "version": "1"}}
    else:
        r = {"content": [{"type": "text", "text": json.dumps(m.get("params", {}).get("_meta", {}))}]}
    print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
"#;

/// The spans' names as exported: the HTTP request's method and path, the MCP
/// request's method and tool.
const HTTP: &str = "POST /mcp/meta";
const REQUEST: &str = "tools/call meta";

type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP receiver on loopback: every span received, with its service name.
async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let store = received.clone();
    let traces = warp::path!("v1" / "traces")
        .and(warp::post())
        .and(warp::header::exact_ignore_case(
            "content-type",
            "application/x-protobuf",
        ))
        .and(warp::body::bytes())
        .map(move |body: bytes::Bytes| {
            let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
            let mut store = store.lock().unwrap();
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                        any_value::Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        store.push((service.clone(), span));
                    }
                }
            }
            warp::http::Response::builder()
                .header("content-type", "application/x-protobuf")
                .body(ExportTraceServiceResponse::default().encode_to_vec())
                .unwrap()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(traces).incoming(listener).run());
    (format!("http://{address}"), received)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|a| a.key == key)?
        .value
        .as_ref()?;
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(n) => n.to_string(),
        other => format!("{other:?}"),
    })
}

/// The spans of trace `trace_id`, once `names` have all arrived.
async fn trace(received: &Received, trace_id: &str, names: &[&str]) -> Vec<Span> {
    let mut spans = vec![];
    wait_for(
        Duration::from_secs(30),
        &format!("spans {names:?} of trace {trace_id}"),
        async || {
            spans = received
                .lock()
                .unwrap()
                .iter()
                .map(|(_, s)| s.clone())
                .filter(|s| hex(&s.trace_id) == trace_id)
                .collect();
            names.iter().all(|n| spans.iter().any(|s| s.name == *n))
        },
    )
    .await;
    spans
}

fn named<'s>(spans: &'s [Span], name: &str) -> &'s Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name}"))
}

#[tokio::test]
async fn one_trace_per_request_from_http_through_the_start_to_the_server() {
    let (endpoint, received) = receiver().await;
    // The mcpod child inherits these; this binary's only test sets them.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    std::env::set_var("OTEL_SERVICE_NAME", "mcpod-under-test");
    let command = serde_json::to_string(&["python3", "-u", "-c", META_SERVER]).unwrap();
    let mcpod = Mcpod::start(
        &[(
            "meta.yaml",
            manifest("meta", FIXTURE_IMAGE, &format!("command: {command}")),
        )],
        &[],
    );
    let call = |id: u64, meta: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "meta", "arguments": {}, "_meta": meta}})
    };

    // 1. The HTTP header names the client's span; the server is stopped.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let response = mcpod
        .http
        .post(format!("{}/mcp/meta", mcpod.url))
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .body(call(1, json!({})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let meta: Value = serde_json::from_str(&text_of(&answer)).unwrap();

    let spans = trace(
        &received,
        client_trace,
        &[HTTP, REQUEST, "container.start", "mcp.stdio"],
    )
    .await;
    let http = named(&spans, HTTP);
    let request = named(&spans, REQUEST);
    let start = named(&spans, "container.start");
    let stdio = named(&spans, "mcp.stdio");
    assert_eq!(hex(&http.parent_span_id), client_span, "the caller's span");
    assert_eq!(request.parent_span_id, http.span_id);
    assert_eq!(
        start.parent_span_id, request.span_id,
        "the start it waited for"
    );
    assert_eq!(stdio.parent_span_id, request.span_id);
    assert_eq!(
        attribute(http, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(request, "mcp.method.name").as_deref(),
        Some("tools/call")
    );
    assert_eq!(
        attribute(request, "gen_ai.tool.name").as_deref(),
        Some("meta")
    );
    // The server got the stdio span as its parent.
    let traceparent = meta["traceparent"].as_str().unwrap_or_default();
    assert_eq!(
        traceparent,
        format!("00-{client_trace}-{}-01", hex(&stdio.span_id)),
        "{meta}"
    );
    let service = received.lock().unwrap()[0].0.clone();
    assert_eq!(service, "mcpod-under-test");

    // 2. `params._meta.traceparent` names the span of this very message: it
    // wins over the header. The server runs now: no start span.
    let meta_trace = "0af7651916cd43dd8448eb211c80319c";
    let meta_span = "b7ad6b7169203331";
    let header_trace = "11111111111111111111111111111111";
    let response = mcpod
        .http
        .post(format!("{}/mcp/meta", mcpod.url))
        .header("content-type", "application/json")
        .header(
            "traceparent",
            format!("00-{header_trace}-2222222222222222-01"),
        )
        .body(
            call(
                2,
                json!({"traceparent": format!("00-{meta_trace}-{meta_span}-01")}),
            )
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    let meta: Value = serde_json::from_str(&text_of(&answer)).unwrap();
    let spans = trace(&received, meta_trace, &[REQUEST, "mcp.stdio"]).await;
    let request = named(&spans, REQUEST);
    let stdio = named(&spans, "mcp.stdio");
    assert_eq!(hex(&request.parent_span_id), meta_span);
    assert_eq!(stdio.parent_span_id, request.span_id);
    assert!(
        spans.iter().all(|s| s.name != "container.start"),
        "already running"
    );
    assert_eq!(
        meta["traceparent"],
        format!("00-{meta_trace}-{}-01", hex(&stdio.span_id))
    );
    let http = trace(&received, header_trace, &[HTTP]).await;
    assert_eq!(hex(&http[0].parent_span_id), "2222222222222222");

    // 3. The dashboard's polling makes no traces.
    let before = received.lock().unwrap().len();
    let (status, _) = mcpod.get("/dashboard/data").await;
    assert_eq!(status, 200);
    let (status, _) = mcpod.get("/health").await;
    assert_eq!(status, 200);
    // One more traced request, so "nothing else arrived" is known once it has.
    mcpod.post("/servers/meta/stop").await;
    let mut spans: Vec<Span> = vec![];
    wait_for(Duration::from_secs(30), "the stop's span", async || {
        spans = received.lock().unwrap()[before..]
            .iter()
            .map(|(_, s)| s.clone())
            .collect();
        spans
            .iter()
            .any(|s| attribute(s, "url.path").as_deref() == Some("/servers/meta/stop"))
    })
    .await;
    let paths: Vec<Option<String>> = spans.iter().map(|s| attribute(s, "url.path")).collect();
    assert!(
        !paths
            .iter()
            .flatten()
            .any(|p| p == "/dashboard/data" || p == "/health"),
        "{paths:?}"
    );
}
