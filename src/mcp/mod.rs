//! The MCP protocol half of mcpod: from an HTTP request to a line on a
//! server's stdin, and back. Dependencies run one way, top to bottom:
//!
//! - [`http`] — the three thin transports (Streamable HTTP, legacy HTTP+SSE,
//!   the per-request era of 2026-07-28), with origin checks and body reading
//!   in modules of their own. Each only translates HTTP into calls on [`call`].
//! - [`call`] — one request or one-way message on behalf of a client: takes a
//!   hold on the server (starting it if needed, see `crate::server`) and goes
//!   through the server's [`sessions::Sessions`].
//! - [`sessions`] — the one owner of each server's protocol state towards its
//!   clients: sessions and their SSE event logs, requests in flight and who
//!   asked them, progress routes, server→client requests awaiting an answer,
//!   subscriptions, listen streams and parked per-request exchanges, all under
//!   one lock. It also decides where a message the server sends on its own
//!   goes (the routing rule).
//! - [`bridge`] — the stdio of one running server process: framing, ids.
//! - [`message`], [`version`], [`error`] — the typed view of messages, the
//!   protocol versions, and the one request-error type.

pub mod bridge;
pub mod call;
pub mod error;
pub mod framing;
pub mod http;
pub mod message;
pub mod sessions;
pub mod version;
