//! JSON-RPC 2.0 as MCP uses it: telling messages apart, and the error bodies
//! mcpod answers with. Messages stay `serde_json::Value` so fields mcpod does
//! not know pass through untouched.

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
