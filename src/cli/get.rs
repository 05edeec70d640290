//! `mcpod get [NAME]` (alias `status`): the servers of a running mcpod as a
//! table, the way `kubectl get` shows resources, or as JSON/YAML; `-w` keeps
//! watching and prints a row again whenever it changes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use serde_json::Value;

use super::api::{Api, DEFAULT_URL};
use super::{CliError, CliResult};

#[derive(Args)]
pub struct GetArgs {
    /// One server (default: all).
    pub name: Option<String>,
    /// Where mcpod's HTTP API answers.
    #[arg(long, env = "MCPOD_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Output format (default: a table).
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
    /// Keep watching: print a server again whenever its state changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// How often `-w` asks.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    mcpod::duration::parse(text)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Yaml,
    /// The table with more columns (container, in-flight requests, cold start).
    Wide,
}

pub async fn run(args: GetArgs) -> CliResult {
    let api = Api::new(&args.url)?;
    let mut seen: Vec<(String, String)> = vec![];
    let mut first = true;
    loop {
        let servers = fetch(&api, args.name.as_deref()).await?;
        let now = Utc::now();
        match args.output {
            Some(Format::Json | Format::Yaml) => print_documents(&args, &servers, &mut seen)?,
            table => {
                let wide = table == Some(Format::Wide);
                let rows: Vec<Vec<String>> = servers.iter().map(|s| row(s, now, wide)).collect();
                // Only rows whose state changed are printed again while watching;
                // the ticking columns (age, countdown) do not count as a change.
                let fresh: Vec<&Vec<String>> = servers
                    .iter()
                    .zip(&rows)
                    .filter(|(server, _)| changed(&mut seen, server))
                    .map(|(_, row)| row)
                    .collect();
                if first || !fresh.is_empty() {
                    let header = if first { Some(header(wide)) } else { None };
                    print!("{}", render(header.as_deref(), &fresh));
                }
                if first && args.name.is_none() && !args.watch {
                    print!("{}", groups_table(&api).await);
                }
            }
        }
        first = false;
        if !args.watch {
            return Ok(());
        }
        tokio::time::sleep(args.interval).await;
    }
}

async fn fetch(api: &Api, name: Option<&str>) -> CliResult<Vec<Value>> {
    match name {
        Some(name) => Ok(vec![api.get_json(&format!("/servers/{name}")).await?]),
        None => match api.get_json("/servers").await? {
            Value::Array(servers) => Ok(servers),
            other => Err(CliError::Api(format!(
                "{}/servers: expected a list, got {other}",
                api.base()
            ))),
        },
    }
}

/// True when `server` differs from the last version seen (and records it).
fn changed(seen: &mut Vec<(String, String)>, server: &Value) -> bool {
    let name = server["name"].as_str().unwrap_or_default().to_string();
    let key = [
        "status",
        "image",
        "sessions",
        "lastActivity",
        "restartCount",
        "message",
        "containerId",
        "groupCollisions",
    ]
    .iter()
    .map(|field| server[field].to_string())
    .collect::<Vec<_>>()
    .join("\u{1f}");
    match seen.iter_mut().find(|(n, _)| *n == name) {
        Some((_, old)) if *old == key => false,
        Some((_, old)) => {
            *old = key;
            true
        }
        None => {
            seen.push((name, key));
            true
        }
    }
}

fn print_documents(
    args: &GetArgs,
    servers: &[Value],
    seen: &mut Vec<(String, String)>,
) -> CliResult {
    let changed: Vec<&Value> = servers.iter().filter(|s| changed(seen, s)).collect();
    let one_document = |value: &Value| -> CliResult<String> {
        Ok(match args.output {
            Some(Format::Yaml) => serde_yaml::to_string(value)
                .map_err(|e| CliError::Api(format!("cannot render YAML: {e}")))?,
            _ if args.watch => format!("{value}\n"), // one JSON document per line
            _ => format!("{:#}\n", value),
        })
    };
    if args.watch {
        for server in changed {
            let text = one_document(server)?;
            if args.output == Some(Format::Yaml) {
                print!("---\n{text}");
            } else {
                print!("{text}");
            }
        }
    } else if args.name.is_some() {
        print!("{}", one_document(&servers[0])?);
    } else {
        print!("{}", one_document(&Value::Array(servers.to_vec()))?);
    }
    Ok(())
}

fn header(wide: bool) -> Vec<String> {
    let mut columns = vec![
        "NAME",
        "STATUS",
        "IMAGE",
        "SESSIONS",
        "LAST ACTIVITY",
        "IDLE STOP IN",
        "RESTARTS",
        "MESSAGE",
    ];
    if wide {
        columns.extend(["IN FLIGHT", "STARTS", "COLD START", "CONTAINER"]);
    }
    columns.into_iter().map(str::to_string).collect()
}

/// The server's message, then what keeps it out of a group.
fn message(server: &Value) -> String {
    let collisions = server["groupCollisions"].as_array().into_iter().flatten();
    let parts: Vec<&str> = server["message"]
        .as_str()
        .into_iter()
        .chain(collisions.filter_map(Value::as_str))
        .collect();
    parts.join("; ")
}

/// The MCPServerGroups, after the servers (nothing when there are none, or
/// the mcpod asked predates groups).
async fn groups_table(api: &Api) -> String {
    let Ok(Value::Array(groups)) = api.get_json("/groups").await else {
        return String::new();
    };
    if groups.is_empty() {
        return String::new();
    }
    let header: Vec<String> = ["GROUP", "ENDPOINT", "MEMBERS", "COLLISIONS"]
        .map(String::from)
        .into();
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|group| {
            let list = |key: &str, field: &str| {
                let items = group[key].as_array().into_iter().flatten();
                let names: Vec<String> = items
                    .map(|item| match field {
                        "servers" => item[field]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("+"),
                        _ => item[field].as_str().unwrap_or_default().to_string(),
                    })
                    .collect();
                if names.is_empty() {
                    "-".to_string()
                } else {
                    names.join(",")
                }
            };
            vec![
                group["name"].as_str().unwrap_or_default().to_string(),
                group["endpoint"].as_str().unwrap_or_default().to_string(),
                list("members", "server"),
                list("collisions", "servers"),
            ]
        })
        .collect();
    let rows: Vec<&Vec<String>> = rows.iter().collect();
    format!("\n{}", render(Some(&header), &rows))
}

/// One server's row; times are relative to `now`, as `kubectl get` shows ages.
fn row(server: &Value, now: DateTime<Utc>, wide: bool) -> Vec<String> {
    let text = |field: &str| server[field].as_str().unwrap_or("").to_string();
    let number = |field: &str| server[field].as_u64().unwrap_or(0);
    let last_activity = time_of(server, "lastActivity");
    let mut row = vec![
        text("name"),
        text("status"),
        text("image"),
        number("sessions").to_string(),
        last_activity.map_or("-".into(), |at| format!("{} ago", age(now - at))),
        idle_countdown(server, now),
        number("restartCount").to_string(),
        message(server),
    ];
    if wide {
        row.push(number("inFlight").to_string());
        row.push(number("starts").to_string());
        row.push(
            server["lastColdStartMs"]
                .as_u64()
                .map_or("-".into(), |ms| format!("{ms}ms")),
        );
        let container = text("containerId");
        row.push(if container.is_empty() {
            "-".into()
        } else {
            container.chars().take(12).collect()
        });
    }
    row
}

fn time_of(server: &Value, field: &str) -> Option<DateTime<Utc>> {
    server[field].as_str()?.parse().ok()
}

/// How long until a running (or paused) server is stopped for being idle:
/// `busy` while requests are in flight, `-` when it is not running or never stopped.
fn idle_countdown(server: &Value, now: DateTime<Utc>) -> String {
    if !matches!(server["status"].as_str(), Some("running" | "paused")) {
        return "-".into();
    }
    let Some(timeout) = server["idleTimeoutSeconds"].as_u64().filter(|t| *t > 0) else {
        return "-".into();
    };
    if server["inFlight"].as_u64().unwrap_or(0) > 0 {
        return "busy".into();
    }
    let Some(since) = time_of(server, "lastActivity").or_else(|| time_of(server, "startedAt"))
    else {
        return "-".into();
    };
    let left = chrono::Duration::seconds(timeout as i64) - (now - since);
    if left <= chrono::Duration::zero() {
        "now".into()
    } else {
        age(left)
    }
}

/// `kubectl`'s compact durations: `45s`, `3m12s`, `2h5m`, `3d4h`.
fn age(duration: chrono::Duration) -> String {
    let s = duration.num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 if s % 60 == 0 => format!("{}m", s / 60),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// Left-aligned columns three spaces apart, like `kubectl get`.
fn render(header: Option<&[String]>, rows: &[&Vec<String>]) -> String {
    let all: Vec<&[String]> = header
        .into_iter()
        .chain(rows.iter().map(|r| r.as_slice()))
        .collect();
    let columns = all.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            all.iter()
                .map(|r| r.get(c).map_or(0, |v| v.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in all {
        let mut line = String::new();
        for (c, value) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(value);
            } else {
                line.push_str(&format!("{value:<width$}   ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_running_server_counts_down_to_its_idle_stop() {
        let server = json!({"name": "time", "status": "running", "image": "localhost/mcpod/time:latest",
            "sessions": 2, "lastActivity": "2026-01-01T10:00:00Z", "idleTimeoutSeconds": 300,
            "restartCount": 1, "message": null, "inFlight": 0});
        let row = row(&server, at("2026-01-01T10:01:30Z"), false);
        assert_eq!(
            row,
            [
                "time",
                "running",
                "localhost/mcpod/time:latest",
                "2",
                "1m30s ago",
                "3m30s",
                "1",
                ""
            ]
        );
        let busy = json!({"status": "running", "idleTimeoutSeconds": 300, "inFlight": 1,
            "lastActivity": "2026-01-01T10:00:00Z"});
        assert_eq!(idle_countdown(&busy, at("2026-01-01T10:01:00Z")), "busy");
        let overdue = json!({"status": "running", "idleTimeoutSeconds": 60,
            "lastActivity": "2026-01-01T10:00:00Z"});
        assert_eq!(idle_countdown(&overdue, at("2026-01-01T10:05:00Z")), "now");
        let paused = json!({"status": "paused", "idleTimeoutSeconds": 300, "inFlight": 0,
            "lastActivity": "2026-01-01T10:00:00Z"});
        assert_eq!(idle_countdown(&paused, at("2026-01-01T10:01:00Z")), "4m");
        let stopped = json!({"status": "stopped", "idleTimeoutSeconds": 60});
        assert_eq!(idle_countdown(&stopped, at("2026-01-01T10:05:00Z")), "-");
        let never = json!({"status": "running", "idleTimeoutSeconds": null,
            "lastActivity": "2026-01-01T10:00:00Z"});
        assert_eq!(idle_countdown(&never, at("2026-01-01T10:05:00Z")), "-");
    }

    #[test]
    fn columns_line_up_and_ages_read_like_kubectl() {
        let header = header(false);
        let a = vec!["time".to_string(), "running".to_string()];
        let b = vec!["everything".to_string(), "stopped".to_string()];
        let text = render(Some(&header[..2]), &[&a, &b]);
        assert_eq!(
            text,
            "NAME         STATUS\ntime         running\neverything   stopped\n"
        );
        assert_eq!(age(chrono::Duration::seconds(7325)), "2h2m");
        assert_eq!(age(chrono::Duration::seconds(90061)), "1d1h");
    }

    #[test]
    fn watching_reprints_only_what_changed() {
        let mut seen = vec![];
        let mut server = json!({"name": "time", "status": "stopped"});
        assert!(changed(&mut seen, &server));
        assert!(!changed(&mut seen, &server));
        server["status"] = json!("running");
        assert!(changed(&mut seen, &server));
        assert!(changed(&mut seen, &json!({"name": "other"})));
    }
}
