//! mcpod runs Model Context Protocol (MCP) servers as containers, on demand.
//!
//! Data flows one way through the modules:
//! an `MCPServer` ([`crd`]) is read from YAML ([`manifests`]), resolved into a
//! runtime-neutral [`workload::Workload`], and kept in the wanted state by the
//! [`reconcile`] loop, which owns one [`server::Server`] per MCPServer. A server
//! (its lifecycle) starts its container through a [`runtime::Runtime`] (Podman or
//! Kubernetes) and talks to it through an [`mcp::bridge::StdioBridge`]. The
//! [`router`] serves the management API and mounts the MCP transports
//! ([`mcp::http`]), which turn HTTP requests into calls on a server's protocol
//! core ([`mcp::sessions`]) and the bridge turns those into lines on the
//! container's stdin, and back. Everything Kubernetes (the operator, the pod
//! runtime, Leases, replica forwarding) is in [`kube`].

pub mod access;
pub mod aggregate;
pub mod auth;
pub mod backoff;
pub mod backup;
pub mod catalog;
pub mod crd;
pub mod dashboard;
pub mod datadir;
pub mod duration;
pub mod error;
pub mod expose;
pub mod group;
pub mod group_endpoint;
pub mod kube;
pub mod limits;
pub mod listener;
pub mod logs;
pub mod manifests;
pub mod mcp;
pub mod memory;
pub mod metrics;
pub mod package;
pub mod policy;
pub mod quantity;
pub mod reconcile;
pub mod route;
pub mod router;
pub mod runtime;
pub mod server;
pub mod telemetry;
pub mod workload;

pub use error::{Error, Result};

/// Waits for SIGTERM or Ctrl-C: how every long-running command is asked to stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
