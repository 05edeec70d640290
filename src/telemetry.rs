//! OpenTelemetry traces, exported over OTLP (http/protobuf) when the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
//! set; the other standard variables (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*`, `OTEL_SDK_DISABLED`) apply as the OpenTelemetry SDK reads them.
//!
//! One trace per MCP request: the HTTP request (`http.server`, in the
//! listener), the MCP request on its session (`mcp.request`, in `call`), the
//! container start when the request waited for one (`container.start`), and
//! the stdio round trip (`mcp.stdio`). A W3C `traceparent` is taken from the
//! HTTP headers, and from `params._meta` (which wins: it names the client's
//! own span for this very message), and passed on to the server in
//! `params._meta`.
//!
//! The spans are `tracing` spans of one target ([`TARGET`]) at TRACE level,
//! which only the OpenTelemetry layer is given: without an endpoint that layer
//! is not installed, their callsites are disabled and cost one atomic load,
//! and messages are passed on untouched.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde_json::{Map, Value};
use tracing::{Level, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The target of every span meant for OpenTelemetry (and only those).
pub const TARGET: &str = "mcpod::otel";

/// The `RUST_LOG`-style directive that lets [`TARGET`]'s spans through a
/// global filter, added to it when traces are exported.
pub const DIRECTIVE: &str = "mcpod::otel=trace";

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Why traces could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry traces are configured (OTEL_EXPORTER_OTLP_*) but cannot be exported: {0}")]
pub struct TelemetryError(String);

/// Whether the environment asks for traces: an OTLP endpoint is set and the
/// SDK is not disabled.
pub fn configured() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The tracer exporting to the configured endpoint, or `None` when none is
/// configured. Call [`shutdown`] before exiting, to send what is buffered.
pub fn from_env() -> Result<Option<SdkTracer>, TelemetryError> {
    if !configured() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let mut resource = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("mcpod");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("mcpod");
    let _ = PROVIDER.set(provider);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(tracer))
}

/// The layer that turns [`TARGET`]'s spans (and no others) into OpenTelemetry spans.
pub fn layer<S>(tracer: SdkTracer) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(TARGET, Level::TRACE))
}

/// Sends the spans still buffered and stops the exporter.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(e) = provider.shutdown() {
            tracing::warn!(error = %e, "flushing OpenTelemetry traces failed");
        }
    }
}

/// Whether traces are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Paths whose requests get no trace: the dashboard polling, health checks
/// and scrapes would bury the MCP requests.
fn untraced(path: &str) -> bool {
    matches!(path, "/" | "/health" | "/metrics") || path.starts_with("/dashboard/")
}

/// The span of one HTTP request, child of the caller's `traceparent` header.
pub fn http_span(method: &warp::http::Method, path: &str, headers: &warp::http::HeaderMap) -> Span {
    if !enabled() || untraced(path) {
        return Span::none();
    }
    let span = tracing::trace_span!(
        target: TARGET,
        "http.server",
        otel.name = %format_args!("{method} {path}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HeaderCarrier(headers));
    if parent_is_remote(&parent) {
        let _ = span.set_parent(parent);
    }
    span
}

/// The span of one MCP request on `server`, child of the `traceparent` in
/// the message's `params._meta` when it has one, else of the current span.
pub fn request_span(server: &str, method: &str, message: &Value, session: Option<&str>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let tool = message.pointer("/params/name").and_then(Value::as_str);
    let id = message.get("id").cloned().unwrap_or_default();
    let name = match tool {
        Some(tool) if method == "tools/call" => format!("{method} {tool}"),
        _ => method.to_string(),
    };
    let span = tracing::trace_span!(
        target: TARGET,
        "mcp.request",
        otel.name = %name,
        mcp.method.name = method,
        mcp.server = server,
        mcp.session.id = session,
        gen_ai.tool.name = tool,
        jsonrpc.request.id = %id,
    );
    if let Some(meta) = message.pointer("/params/_meta").and_then(Value::as_object) {
        let parent = TraceContextPropagator::new().extract(&MetaCarrier(meta));
        if parent_is_remote(&parent) {
            let _ = span.set_parent(parent);
        }
    }
    span
}

/// The span of a container start a request waits for.
pub fn start_span(server: &str) -> Span {
    if !enabled() {
        return Span::none();
    }
    tracing::trace_span!(target: TARGET, "container.start", mcp.server = server)
}

/// The span of the stdio round trip to the server, its context written into
/// the message's `params._meta.traceparent` for the server to continue.
pub fn stdio_span(server: &str, message: &mut Value) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::trace_span!(
        target: TARGET,
        "mcp.stdio",
        otel.kind = "client",
        mcp.server = server,
    );
    let context = span.context();
    if let Some(params) = message.as_object_mut().map(|m| {
        m.entry("params")
            .or_insert_with(|| Value::Object(Map::new()))
    }) {
        if let Some(params) = params.as_object_mut() {
            let meta = params
                .entry("_meta")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(meta) = meta.as_object_mut() {
                TraceContextPropagator::new().inject_context(&context, &mut MetaWriter(meta));
            }
        }
    }
    span
}

fn parent_is_remote(context: &Context) -> bool {
    use opentelemetry::trace::TraceContextExt;
    context.span().span_context().is_valid()
}

struct HeaderCarrier<'a>(&'a warp::http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// `params._meta`, read as a propagation carrier.
struct MetaCarrier<'a>(&'a Map<String, Value>);

impl Extractor for MetaCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// `params._meta`, written as a propagation carrier.
struct MetaWriter<'a>(&'a mut Map<String, Value>);

impl Injector for MetaWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), Value::String(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_traced_or_changed_when_not_configured() {
        // No exporter set up in unit tests: every span is none and the
        // message goes on as it came.
        let mut message = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
        let before = message.clone();
        assert!(stdio_span("s", &mut message).is_none());
        assert_eq!(message, before);
        assert!(request_span("s", "tools/list", &message, None).is_none());
        assert!(http_span(
            &warp::http::Method::POST,
            "/mcp/s",
            &warp::http::HeaderMap::new()
        )
        .is_none());
    }

    #[test]
    fn dashboard_and_probes_are_not_traced() {
        for path in ["/", "/health", "/metrics", "/dashboard/data"] {
            assert!(untraced(path), "{path}");
        }
        for path in ["/mcp/time", "/servers/time/mcp", "/servers/time/start"] {
            assert!(!untraced(path), "{path}");
        }
    }
}
