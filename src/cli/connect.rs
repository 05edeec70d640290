//! `mcpod connect CLIENT [NAME]`: the configuration snippet an MCP client needs
//! to reach mcpod's servers, at the URLs clients recognise as Streamable HTTP
//! (`…/servers/{name}/mcp`). The snippet goes to stdout (ready to paste or
//! redirect); where it goes goes to stderr.

use clap::{Args, ValueEnum};
use serde_json::{json, Map, Value};

use super::api::{Api, DEFAULT_URL};
use super::{CliError, CliResult};

#[derive(Args)]
pub struct ConnectArgs {
    /// The client to configure.
    #[arg(value_enum)]
    pub client: Client,
    /// One server (default: every server the running mcpod serves).
    pub name: Option<String>,
    /// Where mcpod's HTTP API answers; the printed URLs start with it.
    #[arg(long, env = "MCPOD_URL", default_value = DEFAULT_URL)]
    pub url: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Client {
    ClaudeDesktop,
    ClaudeCode,
    #[value(name = "vscode")]
    VsCode,
    Cursor,
    Inspector,
}

pub async fn run(args: ConnectArgs) -> CliResult {
    let api = Api::new(&args.url)?;
    let names = match args.name {
        Some(name) => vec![name],
        None => server_names(&api).await?,
    };
    if names.is_empty() {
        return Err(CliError::Api(format!(
            "{} serves no MCP server",
            api.base()
        )));
    }
    let snippet = snippet(args.client, &api, &names);
    eprintln!("{}", snippet.place);
    print!("{}", snippet.text);
    Ok(())
}

async fn server_names(api: &Api) -> CliResult<Vec<String>> {
    let servers = api.get_json("/servers").await?;
    Ok(servers
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect())
}

/// What to print, and where the user puts it.
pub struct Snippet {
    pub text: String,
    pub place: String,
}

pub fn snippet(client: Client, api: &Api, names: &[String]) -> Snippet {
    let each = |entry: &dyn Fn(&str) -> Value| -> Value {
        let mut map = Map::new();
        for name in names {
            map.insert(name.clone(), entry(&api.mcp_url(name)));
        }
        Value::Object(map)
    };
    let pretty = |value: Value| format!("{value:#}\n");
    match client {
        // Claude Desktop's config file starts local (stdio) servers only; the
        // mcp-remote bridge turns a remote URL into one.
        Client::ClaudeDesktop => Snippet {
            text: pretty(json!({"mcpServers": each(&|url| json!({
                "command": "npx", "args": ["-y", "mcp-remote", url]
            }))})),
            place: "# Merge into claude_desktop_config.json (Settings > Developer > Edit Config: \
                    ~/Library/Application Support/Claude/ on macOS, %APPDATA%\\Claude\\ on Windows), \
                    then restart Claude Desktop. It runs remote servers through `npx mcp-remote` (Node.js needed)."
                .into(),
        },
        Client::ClaudeCode => Snippet {
            text: names
                .iter()
                .map(|name| format!("claude mcp add --transport http {name} {}\n", api.mcp_url(name)))
                .collect(),
            place: "# Run in a shell (add `--scope project` to share it through .mcp.json):".into(),
        },
        Client::VsCode => Snippet {
            text: pretty(json!({"servers": each(&|url| json!({"type": "http", "url": url}))})),
            place: "# Save as .vscode/mcp.json in the workspace (or merge into it; \
                    `MCP: Open User Configuration` for every workspace):"
                .into(),
        },
        Client::Cursor => Snippet {
            text: pretty(json!({"mcpServers": each(&|url| json!({"url": url}))})),
            place: "# Merge into ~/.cursor/mcp.json (every project) or .cursor/mcp.json (this project):"
                .into(),
        },
        Client::Inspector => Snippet {
            text: names
                .iter()
                .map(|name| {
                    format!(
                        "npx @modelcontextprotocol/inspector --cli {} --method tools/list\n",
                        api.mcp_url(name)
                    )
                })
                .collect(),
            place: "# The Inspector CLI lists the tools (drop `--cli …` for the web UI and paste the URL, \
                    transport Streamable HTTP):"
                .into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["time".into(), "memory".into()]
    }

    #[test]
    fn json_snippets_point_every_server_at_its_mcp_url() {
        let api = Api::new("http://127.0.0.1:8080").unwrap();
        let vscode: Value =
            serde_json::from_str(&snippet(Client::VsCode, &api, &names()).text).unwrap();
        assert_eq!(
            vscode["servers"]["memory"],
            json!({"type": "http", "url": "http://127.0.0.1:8080/servers/memory/mcp"})
        );
        let cursor: Value =
            serde_json::from_str(&snippet(Client::Cursor, &api, &names()).text).unwrap();
        assert_eq!(
            cursor["mcpServers"]["time"]["url"],
            "http://127.0.0.1:8080/servers/time/mcp"
        );
        let desktop: Value =
            serde_json::from_str(&snippet(Client::ClaudeDesktop, &api, &names()).text).unwrap();
        assert_eq!(
            desktop["mcpServers"]["time"]["args"],
            json!(["-y", "mcp-remote", "http://127.0.0.1:8080/servers/time/mcp"])
        );
    }

    #[test]
    fn command_snippets_have_one_line_per_server() {
        let api = Api::new("http://10.0.0.5:8080/").unwrap();
        let code = snippet(Client::ClaudeCode, &api, &names()).text;
        assert_eq!(
            code,
            "claude mcp add --transport http time http://10.0.0.5:8080/servers/time/mcp\n\
             claude mcp add --transport http memory http://10.0.0.5:8080/servers/memory/mcp\n"
        );
        let inspector = snippet(Client::Inspector, &api, &names()[..1]).text;
        assert!(inspector
            .ends_with("--cli http://10.0.0.5:8080/servers/time/mcp --method tools/list\n"));
    }
}
