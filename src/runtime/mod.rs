//! Container runtimes behind one trait: [`podman`] for a Podman host,
//! [`memory`] for tests (in-process servers over in-memory pipes), and
//! Kubernetes pods (`KubeRuntime`, in `src/kube/runtime.rs`, which depends on
//! this module and not the other way round). A runtime starts a workload's
//! container and hands back its stdio; it knows nothing of MCP.

pub mod memory;
pub mod podman;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::io::AsyncWrite;

use crate::workload::Workload;
use crate::Result;

/// How [`Runtime::exit_reason`] says a container was killed for exceeding its
/// memory limit (followed by ` (limit 512Mi)`); the lifecycle counts these.
pub const OOM_REASON: &str = "killed: out of memory";

/// One chunk of what the container wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// A started container with its stdio attached.
pub struct Attached {
    pub container_id: String,
    /// Everything the container writes, until it exits or the attach ends.
    pub output: BoxStream<'static, std::io::Result<Output>>,
    /// The container's stdin; shutting it down closes the server's stdin.
    pub stdin: Pin<Box<dyn AsyncWrite + Send>>,
}

/// A running container's resource usage, as its runtime last measured it.
/// Counters (CPU, network, block I/O) count from the container's start.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub cpu_seconds: f64,
    /// Memory in use less the inactive page cache (what the OOM killer weighs).
    pub memory_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub network_receive_bytes: u64,
    pub network_transmit_bytes: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
}

/// A container (or pod) the runtime found carrying mcpod's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Managed {
    /// The instance key it was started under (the MCPServer name for shared servers).
    pub key: String,
    pub server: String,
    pub id: String,
    pub running: bool,
    /// Frozen by [`Runtime::pause`] (not counted as running).
    pub paused: bool,
    pub spec_hash: String,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Starts the container for `workload` under `key`, reusing a stopped one whose
    /// spec hash matches and replacing one that differs, and attaches to its stdio.
    /// A running container under `key` is restarted: its MCP session cannot be resumed.
    async fn start(&self, key: &str, workload: &Workload) -> Result<Attached>;

    /// Stops the container under `key`: waits up to `grace` for it to exit by itself
    /// (its stdin is closed by then), then SIGTERM, then SIGKILL.
    async fn stop(&self, key: &str, grace: Duration) -> Result<()>;

    /// Removes the container under `key`; a missing container is success.
    async fn remove(&self, key: &str) -> Result<()>;

    /// All containers this mcpod instance manages.
    async fn list(&self) -> Result<Vec<Managed>>;

    /// Why the container under `key` is not running, with the end of its log,
    /// for error messages ("exited with code 1: ModuleNotFoundError ...").
    async fn exit_reason(&self, key: &str) -> Option<String>;

    /// The key of the container that serves one client session (`sessionMode:
    /// Isolated`) of the server under `key`. A runtime that must tell session
    /// containers apart from servers by their key (Kubernetes) gives its own form.
    fn session_key(&self, key: &str, session: &str) -> String {
        format!("{key}-{session}")
    }

    /// Freezes the running container under `key` (`spec.pauseAfter`): its
    /// processes get no CPU and keep their memory, its stdio stays attached,
    /// and what is written to its stdin waits in the pipe. A runtime that
    /// cannot (Kubernetes) says so with an error.
    async fn pause(&self, key: &str) -> Result<()> {
        Err(crate::Error::Runtime(format!(
            "{key}: this runtime cannot pause containers"
        )))
    }

    /// Thaws a container [`Runtime::pause`] froze; it carries on where it stopped.
    async fn resume(&self, key: &str) -> Result<()> {
        Err(crate::Error::Runtime(format!(
            "{key}: this runtime cannot pause containers"
        )))
    }

    /// Whether this mcpod is the one that serves the server under `key`. With
    /// several router replicas (Kubernetes) only one is; the others must not
    /// keep an `AlwaysOn` server running themselves.
    async fn serves_here(&self, _key: &str) -> bool {
        true
    }

    /// The resource usage of the running container under `key`; `None` when it
    /// is not running or the runtime leaves that to others (Kubernetes: cAdvisor).
    async fn usage(&self, _key: &str) -> Option<Usage> {
        None
    }
}
