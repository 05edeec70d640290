//! JSON-RPC 2.0 as MCP uses it: telling messages apart once, where they enter,
//! and the error bodies mcpod answers with. Messages stay `serde_json::Value`
//! so fields mcpod does not know pass through untouched; [`Method`] names the
//! methods mcpod itself acts on, and every method name lives here, once.

use serde_json::{json, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// mcpod's own codes, in the range JSON-RPC leaves to implementations.
pub const REQUEST_TIMEOUT: i64 = -32001;
pub const SERVER_UNAVAILABLE: i64 = -32002;
pub const SERVER_CRASHED: i64 = -32003;
pub const SERVER_STOPPING: i64 = -32004;
/// mcpod cannot tell which client a server's request belongs to (see the routing rule).
pub const UNROUTABLE: i64 = -32005;
/// Over a rate limit (`spec.access.rateLimit`, `--subject-requests-per-minute`).
pub const RATE_LIMITED: i64 = -32006;
/// Protocol 2026-07-28: the headers disagree with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// Protocol 2026-07-28: the protocol version is not one this server speaks.
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;

/// The methods mcpod treats specially; every other method is passed through
/// as [`Method::Other`]. Adding one is one line here and one in [`Method::NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Initialize,
    Initialized,
    Ping,
    Cancelled,
    Progress,
    LogMessage,
    LoggingSetLevel,
    ToolsList,
    ToolsCall,
    ToolsListChanged,
    PromptsList,
    PromptsGet,
    PromptsListChanged,
    ResourcesList,
    ResourcesTemplatesList,
    ResourcesRead,
    ResourcesSubscribe,
    ResourcesUnsubscribe,
    ResourcesUpdated,
    ResourcesListChanged,
    CompletionComplete,
    RootsList,
    RootsListChanged,
    SamplingCreateMessage,
    ElicitationCreate,
    ServerDiscover,
    SubscriptionsListen,
    SubscriptionsAcknowledged,
    Other,
}

impl Method {
    const NAMES: &'static [(Method, &'static str)] = &[
        (Method::Initialize, "initialize"),
        (Method::Initialized, "notifications/initialized"),
        (Method::Ping, "ping"),
        (Method::Cancelled, "notifications/cancelled"),
        (Method::Progress, "notifications/progress"),
        (Method::LogMessage, "notifications/message"),
        (Method::LoggingSetLevel, "logging/setLevel"),
        (Method::ToolsList, "tools/list"),
        (Method::ToolsCall, "tools/call"),
        (Method::ToolsListChanged, "notifications/tools/list_changed"),
        (Method::PromptsList, "prompts/list"),
        (Method::PromptsGet, "prompts/get"),
        (
            Method::PromptsListChanged,
            "notifications/prompts/list_changed",
        ),
        (Method::ResourcesList, "resources/list"),
        (Method::ResourcesTemplatesList, "resources/templates/list"),
        (Method::ResourcesRead, "resources/read"),
        (Method::ResourcesSubscribe, "resources/subscribe"),
        (Method::ResourcesUnsubscribe, "resources/unsubscribe"),
        (Method::ResourcesUpdated, "notifications/resources/updated"),
        (
            Method::ResourcesListChanged,
            "notifications/resources/list_changed",
        ),
        (Method::CompletionComplete, "completion/complete"),
        (Method::RootsList, "roots/list"),
        (Method::RootsListChanged, "notifications/roots/list_changed"),
        (Method::SamplingCreateMessage, "sampling/createMessage"),
        (Method::ElicitationCreate, "elicitation/create"),
        (Method::ServerDiscover, "server/discover"),
        (Method::SubscriptionsListen, "subscriptions/listen"),
        (
            Method::SubscriptionsAcknowledged,
            "notifications/subscriptions/acknowledged",
        ),
    ];

    pub fn parse(name: &str) -> Method {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map_or(Method::Other, |(m, _)| *m)
    }

    /// The wire name (`None` for [`Method::Other`], whose name only the message knows).
    pub fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(m, _)| *m == self)
            .map_or("", |(_, n)| n)
    }

    /// Of a message: its method, [`Method::Other`] when it has none mcpod knows.
    pub fn of(message: &Value) -> Method {
        method(message).map_or(Method::Other, Method::parse)
    }

    /// A listing whose result names what a caller may use (and is filtered to it).
    pub fn is_list(self) -> bool {
        matches!(
            self,
            Method::ToolsList
                | Method::PromptsList
                | Method::ResourcesList
                | Method::ResourcesTemplatesList
        )
    }

    /// Whether handling this request may make the server ask the client something
    /// (sampling, elicitation, roots). Listing, pinging and subscribing do not.
    pub fn may_ask_the_client(self) -> bool {
        !matches!(
            self,
            Method::Ping
                | Method::ToolsList
                | Method::PromptsList
                | Method::ResourcesList
                | Method::ResourcesTemplatesList
                | Method::ResourcesSubscribe
                | Method::ResourcesUnsubscribe
                | Method::LoggingSetLevel
                | Method::ServerDiscover
        )
    }
}

/// A notification of `method` with `params` (or none).
pub fn notification(method: Method, params: Option<Value>) -> Value {
    match params {
        Some(params) => json!({"jsonrpc": "2.0", "method": method.name(), "params": params}),
        None => json!({"jsonrpc": "2.0", "method": method.name()}),
    }
}

/// A request of `method` under `id`.
pub fn request(id: Value, method: Method, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method.name(), "params": params})
}

/// What a JSON-RPC message is, by its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// Classifies one message; `None` when it is not a valid JSON-RPC 2.0 message.
pub fn classify(message: &Value) -> Option<Kind> {
    let object = message.as_object()?;
    if object.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return None;
    }
    let has_id = object.get("id").is_some_and(valid_id);
    match object.get("method") {
        Some(Value::String(_)) if has_id => Some(Kind::Request),
        Some(Value::String(_)) if !object.contains_key("id") => Some(Kind::Notification),
        Some(_) => None,
        None if object.contains_key("result") || object.contains_key("error") => {
            object.contains_key("id").then_some(Kind::Response)
        }
        None => None,
    }
}

/// MCP ids are strings or integers, never null.
fn valid_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

pub fn method(message: &Value) -> Option<&str> {
    message.get("method").and_then(Value::as_str)
}

pub fn id(message: &Value) -> Value {
    message.get("id").cloned().unwrap_or(Value::Null)
}

pub fn error(id: Value, code: i64, message: impl Into<String>) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message.into()}})
}

pub fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_fields() {
        let request = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
        let string_id = json!({"jsonrpc":"2.0","id":"a","method":"tools/list"});
        let notification = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        let response = json!({"jsonrpc":"2.0","id":1,"result":{}});
        let error_response = json!({"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}});
        assert_eq!(classify(&request), Some(Kind::Request));
        assert_eq!(classify(&string_id), Some(Kind::Request));
        assert_eq!(classify(&notification), Some(Kind::Notification));
        assert_eq!(classify(&response), Some(Kind::Response));
        assert_eq!(classify(&error_response), Some(Kind::Response));
    }

    #[test]
    fn method_names_round_trip() {
        for (method, name) in Method::NAMES {
            assert_eq!(Method::parse(name), *method);
            assert_eq!(method.name(), *name);
        }
        assert_eq!(Method::parse("x/y"), Method::Other);
        assert!(Method::ToolsCall.may_ask_the_client());
        assert!(!Method::ToolsList.may_ask_the_client());
    }

    #[test]
    fn rejects_what_is_not_json_rpc() {
        assert_eq!(classify(&json!({"id":1,"method":"x"})), None);
        assert_eq!(
            classify(&json!({"jsonrpc":"1.0","id":1,"method":"x"})),
            None
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":null,"method":"x"})),
            None
        );
        assert_eq!(
            classify(&json!({"jsonrpc":"2.0","id":1.5,"method":"x"})),
            None
        );
        assert_eq!(classify(&json!({"jsonrpc":"2.0","id":1,"method":7})), None);
        assert_eq!(classify(&json!({"jsonrpc":"2.0","id":1})), None);
        assert_eq!(classify(&json!([1, 2])), None);
        assert_eq!(classify(&json!("text")), None);
    }
}
