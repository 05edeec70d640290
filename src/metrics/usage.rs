//! Resource usage of each running server's container (CPU, memory, network,
//! block I/O), sampled from the runtime in the background, so a request never
//! waits for a stats call; `/metrics` and `/servers` show the latest sample.
//!
//! Only Podman reports it here: on Kubernetes, cAdvisor (the kubelet) already
//! exports container figures, joined to servers on the pod's labels.

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::reconcile::Reconciler;
use crate::runtime::{Runtime, Usage};

/// Longest wait for one container's stats: a stuck call must not stall the others for long.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Samples every running server's usage every `interval`, until the reconciler is gone.
pub fn spawn(runtime: Arc<dyn Runtime>, reconciler: &Arc<Reconciler>, interval: Duration) {
    let reconciler = Arc::downgrade(reconciler);
    let span = tracing::info_span!("usage");
    tokio::spawn(
        async move {
            loop {
                let Some(reconciler) = reconciler.upgrade() else {
                    return;
                };
                sample(&*runtime, &reconciler).await;
                drop(reconciler);
                tokio::time::sleep(interval).await;
            }
        }
        .instrument(span),
    );
}

/// One round: each server's latest usage, `None` for a server not running.
pub async fn sample(runtime: &dyn Runtime, reconciler: &Reconciler) {
    for server in reconciler.servers() {
        let usage = match server.running_instance() {
            Some(_) => tokio::time::timeout(STATS_TIMEOUT, runtime.usage(server.key()))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        server.metrics().set_usage(usage);
    }
}

/// One metric family of [`Usage`].
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&Usage) -> Option<f64>,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "mcpod_container_cpu_seconds_total",
        kind: "counter",
        help: "CPU time the server's container used since it started (Podman).",
        value: |u| Some(u.cpu_seconds),
    },
    Family {
        name: "mcpod_container_memory_working_set_bytes",
        kind: "gauge",
        help: "Memory the server's container uses, less inactive page cache (Podman).",
        value: |u| Some(u.memory_bytes as f64),
    },
    Family {
        name: "mcpod_container_memory_limit_bytes",
        kind: "gauge",
        help: "Memory limit of the server's container (Podman).",
        value: |u| u.memory_limit_bytes.map(|b| b as f64),
    },
    Family {
        name: "mcpod_container_network_receive_bytes_total",
        kind: "counter",
        help: "Bytes the server's container received over the network since it started (Podman).",
        value: |u| Some(u.network_receive_bytes as f64),
    },
    Family {
        name: "mcpod_container_network_transmit_bytes_total",
        kind: "counter",
        help: "Bytes the server's container sent over the network since it started (Podman).",
        value: |u| Some(u.network_transmit_bytes as f64),
    },
    Family {
        name: "mcpod_container_fs_reads_bytes_total",
        kind: "counter",
        help: "Bytes the server's container read from block devices since it started (Podman).",
        value: |u| Some(u.block_read_bytes as f64),
    },
    Family {
        name: "mcpod_container_fs_writes_bytes_total",
        kind: "counter",
        help: "Bytes the server's container wrote to block devices since it started (Podman).",
        value: |u| Some(u.block_write_bytes as f64),
    },
];

/// Appends the usage families for `(escaped server name, usage)` pairs.
pub fn render(out: &mut String, usages: &[(String, Usage)]) {
    if usages.is_empty() {
        return;
    }
    for family in FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for (server, usage) in usages {
            if let Some(value) = (family.value)(usage) {
                let _ = writeln!(out, "{}{{server=\"{server}\"}} {value}", family.name);
            }
        }
    }
}
