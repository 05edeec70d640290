//! What a caller may do, once [`crate::auth`] knows who they are: use a server
//! at all, call a tool / get a prompt / read a resource, operate a server
//! (start, stop, logs). Every decision is made here, and only here.
//!
//! (Policy, list filtering, audit and rate limits are to be built: issue 10.
//! Until then everything is allowed.)

use serde_json::Value;

use crate::auth::Caller;
use crate::mcp::error::RequestError;
use crate::server::Server;

/// May `caller` use `server`'s MCP endpoint at all? (Before any message is read.)
pub fn may_use(_server: &Server, _caller: &Caller) -> Result<(), RequestError> {
    Ok(())
}

/// May `caller` send this request (a `tools/call`, `prompts/get`, …) to `server`?
pub fn may_send(_server: &Server, _caller: &Caller, _request: &Value) -> Result<(), RequestError> {
    Ok(())
}

/// Removes from a list result (`tools/list`, `prompts/list`, `resources/list`,
/// `resources/templates/list`) what `caller` may not use.
pub fn filter_list(_server: &Server, _caller: &Caller, _request: &Value, _response: &mut Value) {}

/// What an operator may do to a server through the management API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Start,
    Stop,
    Logs,
}

/// May `caller` start/stop `server` or read its logs?
pub fn may_operate(
    _server: &Server,
    _caller: &Caller,
    _operation: Operation,
) -> Result<(), String> {
    Ok(())
}
