//! `GET /metrics`: every server's lifecycle in the Prometheus text format
//! (starts, stops, failures, cold-start time, requests, sessions).

use std::fmt::Write;

use crate::crd::Phase;
use crate::server::Status;

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
        name: "mcpod_server_cold_start_seconds_sum",
        kind: "counter",
        help: "Total time from start to initialized, over all starts.",
        value: |s| s.cold_start_ms_total as f64 / 1000.0,
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

/// Renders the statuses as Prometheus text exposition format 0.0.4.
pub fn render(statuses: &[Status]) -> String {
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
    crate::listener::render_metrics(&mut out);
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
        let text = render(&[test_status()]);
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
        }
    }
}
