//! `GET /metrics`: every server's lifecycle in the Prometheus text format
//! (starts, stops, failures, cold-start time, requests, sessions), request
//! latency per method and tool and errors by kind ([`requests`]), container
//! resource usage ([`usage`]) and mcpod's own process ([`process`]).
//! Names follow Prometheus' conventions: base units in the name, `_total`
//! counters, `_seconds` and `_bytes`.

pub mod process;
pub mod requests;
pub mod usage;

use std::fmt::Write;
use std::sync::Arc;

use crate::crd::Phase;
use crate::server::{Server, Status};

/// One metric family: name, type, help, and a value per server.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&Status) -> f64,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "mcpod_server_up",
        kind: "gauge",
        help: "1 when the server's container is running and initialized.",
        value: |s| f64::from(u8::from(s.phase == Phase::Running)),
    },
    Family {
        name: "mcpod_server_failed",
        kind: "gauge",
        help: "1 when the server is in the Failed phase.",
        value: |s| f64::from(u8::from(s.phase == Phase::Failed)),
    },
    Family {
        name: "mcpod_server_paused",
        kind: "gauge",
        help: "1 when the server's container is paused (spec.pauseAfter): frozen, resumed by the next request.",
        value: |s| f64::from(u8::from(s.phase == Phase::Paused)),
    },
    Family {
        name: "mcpod_server_pauses_total",
        kind: "counter",
        help: "Times the server's container was paused after spec.pauseAfter of quiet.",
        value: |s| s.pauses as f64,
    },
    Family {
        name: "mcpod_server_starts_total",
        kind: "counter",
        help: "Container starts (cold starts).",
        value: |s| s.starts as f64,
    },
    Family {
        name: "mcpod_server_stops_total",
        kind: "counter",
        help: "Container stops (idle, API, spec change, shutdown).",
        value: |s| s.stops as f64,
    },
    Family {
        name: "mcpod_server_start_failures_total",
        kind: "counter",
        help: "Starts that failed or timed out.",
        value: |s| s.start_failures as f64,
    },
    Family {
        name: "mcpod_server_restarts_total",
        kind: "counter",
        help: "Starts after the first one.",
        value: |s| f64::from(s.restart_count),
    },
    Family {
        name: "mcpod_server_oom_kills_total",
        kind: "counter",
        help: "Times the server's container was killed for exceeding its memory limit.",
        value: |s| s.oom_kills as f64,
    },
    Family {
        name: "mcpod_server_health_check_failures_total",
        kind: "counter",
        help: "Health-check pings that went unanswered.",
        value: |s| s.health_check_failures as f64,
    },
    Family {
        name: "mcpod_server_requests_total",
        kind: "counter",
        help: "Requests sent to the server.",
        value: |s| s.requests as f64,
    },
    Family {
        name: "mcpod_server_request_failures_total",
        kind: "counter",
        help: "Requests the server did not answer (timeout or exit).",
        value: |s| s.request_failures as f64,
    },
    Family {
        name: "mcpod_server_in_flight_requests",
        kind: "gauge",
        help: "Requests waiting for the server's answer.",
        value: |s| s.in_flight as f64,
    },
    Family {
        name: "mcpod_server_sessions",
        kind: "gauge",
        help: "Client sessions of the server.",
        value: |s| s.sessions as f64,
    },
    Family {
        name: "mcpod_server_last_cold_start_seconds",
        kind: "gauge",
        help: "Time from start to initialized, last start.",
        value: |s| s.last_cold_start_ms.unwrap_or(0) as f64 / 1000.0,
    },
    Family {
        name: "mcpod_server_last_activity_timestamp_seconds",
        kind: "gauge",
        help: "Unix time of the last request or response.",
        value: |s| {
            s.last_activity
                .map(|t| t.timestamp_millis() as f64 / 1000.0)
                .unwrap_or(0.0)
        },
    },
];

/// Renders every server's metrics, the listener's and the process's as
/// Prometheus text exposition format 0.0.4.
pub fn render(servers: &[Arc<Server>]) -> String {
    let statuses: Vec<Status> = servers.iter().map(|s| s.status()).collect();
    let mut out = render_statuses(&statuses);
    let names: Vec<String> = statuses.iter().map(|s| escape(&s.name)).collect();
    render_requests(&mut out, servers, &names);
    let usages: Vec<(String, crate::runtime::Usage)> = names
        .iter()
        .zip(&statuses)
        .filter_map(|(name, status)| Some((name.clone(), status.usage.clone()?)))
        .collect();
    usage::render(&mut out, &usages);
    crate::listener::render_metrics(&mut out);
    process::render(&mut out);
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// What each server's [`requests::ServerMetrics`] holds, `names` escaped.
fn render_requests(out: &mut String, servers: &[Arc<Server>], names: &[String]) {
    let both = || servers.iter().zip(names);
    let name = "mcpod_request_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Time from a request's arrival to its answer, by server and MCP method.",
    );
    for (server, server_name) in both() {
        for (method, histogram) in server.metrics().methods() {
            histogram.render(
                out,
                name,
                &format!("server=\"{server_name}\",method=\"{method}\""),
            );
        }
    }
    let name = "mcpod_tool_call_duration_seconds";
    header(out, name, "histogram", &format!("Time of tools/call requests by server and tool (the first {} tool names of a server; the rest as \"other\").", requests::MAX_TOOLS));
    for (server, server_name) in both() {
        server.metrics().for_each_tool(|tool, histogram| {
            let labels = format!("server=\"{server_name}\",tool=\"{}\"", escape(tool));
            histogram.render(out, name, &labels);
        });
    }
    let name = "mcpod_request_errors_total";
    header(out, name, "counter", "Requests that failed, by server and kind (timeout, crashed, start_failed, startup_timeout, unavailable, forbidden, invalid, jsonrpc_error, tool_error, abandoned).");
    for (server, server_name) in both() {
        for kind in requests::ErrorKind::ALL {
            let count = server.metrics().errors(kind);
            let _ = writeln!(
                out,
                "{name}{{server=\"{server_name}\",kind=\"{}\"}} {count}",
                kind.label()
            );
        }
    }
    let name = "mcpod_server_cold_start_seconds";
    header(
        out,
        name,
        "histogram",
        "Time from a container start to the server's answer to initialize.",
    );
    for (server, server_name) in both() {
        server
            .metrics()
            .cold_starts
            .render(out, name, &format!("server=\"{server_name}\""));
    }
    let name = "mcpod_server_resume_seconds";
    header(
        out,
        name,
        "histogram",
        "Time to thaw a paused container for a request (spec.pauseAfter).",
    );
    for (server, server_name) in both() {
        server
            .metrics()
            .resumes
            .render(out, name, &format!("server=\"{server_name}\""));
    }
    type Figure = fn(&Server) -> u64;
    let figures: [(&str, &str, &str, Figure); 5] = [
        (
            "mcpod_server_idle_stops_total",
            "counter",
            "Stops after the idle timeout (scale to zero).",
            |s| s.metrics().idle_stops(),
        ),
        (
            "mcpod_server_stdin_bytes_total",
            "counter",
            "Bytes written to the server's stdin.",
            |s| {
                s.metrics()
                    .traffic
                    .to_server
                    .load(std::sync::atomic::Ordering::Relaxed)
            },
        ),
        (
            "mcpod_server_stdout_bytes_total",
            "counter",
            "Bytes read from the server's stdout.",
            |s| {
                s.metrics()
                    .traffic
                    .from_server
                    .load(std::sync::atomic::Ordering::Relaxed)
            },
        ),
        (
            "mcpod_server_stdio_queue_bytes",
            "gauge",
            "Bytes waiting to be written to the server's stdin.",
            |s| {
                s.running_instance()
                    .map_or(0, |i| i.bridge.queued_bytes() as u64)
            },
        ),
        (
            "mcpod_server_stdio_pending_requests",
            "gauge",
            "Requests written to the server and not yet answered.",
            |s| {
                s.running_instance()
                    .map_or(0, |i| i.bridge.pending() as u64)
            },
        ),
    ];
    for (name, kind, help, value) in figures {
        header(out, name, kind, help);
        for (server, server_name) in both() {
            let _ = writeln!(out, "{name}{{server=\"{server_name}\"}} {}", value(server));
        }
    }
}

/// The lifecycle families of [`Status`].
fn render_statuses(statuses: &[Status]) -> String {
    let mut out = String::new();
    for family in FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for status in statuses {
            let _ = writeln!(
                out,
                "{}{{server=\"{}\"}} {}",
                family.name,
                escape(&status.name),
                (family.value)(status)
            );
        }
    }
    out
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_one_sample_per_server() {
        let text = render_statuses(&[test_status()]);
        assert!(text.contains("# TYPE mcpod_server_starts_total counter"));
        assert!(text.contains("mcpod_server_starts_total{server=\"time\"} 3"));
        assert!(text.contains("mcpod_server_up{server=\"time\"} 1"));
        assert!(text.contains("mcpod_server_last_cold_start_seconds{server=\"time\"} 0.25"));
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("mcpod_server_up"))
                .count(),
            1
        );
    }

    fn test_status() -> Status {
        Status {
            name: "time".into(),
            status: "running",
            phase: Phase::Running,
            last_activity: None,
            image: "x".into(),
            desired_state: Default::default(),
            container_id: None,
            started_at: None,
            restart_count: 2,
            message: None,
            server_info: None,
            in_flight: 0,
            sessions: 1,
            isolated_instances: 0,
            starts: 3,
            start_failures: 0,
            stops: 2,
            health_check_failures: 0,
            last_cold_start_ms: Some(250),
            cold_start_ms_total: 700,
            requests: 10,
            request_failures: 1,
            oom_kills: 0,
            idle_timeout_seconds: Some(300),
            pause_after_seconds: None,
            pauses: 0,
            resumes: 0,
            last_resume_ms: None,
            usage: None,
        }
    }
}
