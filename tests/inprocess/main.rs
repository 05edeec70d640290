//! The lifecycle and transport rules, tested in-process in milliseconds: the
//! real reconciler, server lifecycle, stdio bridge and HTTP router over a
//! `MemoryRuntime` whose containers are in-process MCP servers. Black-box over
//! HTTP (status codes, bodies) plus the runtime's records; what only real
//! containers show stays in `tests/podman.rs` and `tests/streamable.rs`.

mod access;
mod aggregate;
mod aggregate_session;
mod catalog;
#[path = "../common/mod.rs"]
mod common;
mod harness;
mod lifecycle;
mod pause;
mod transport;
