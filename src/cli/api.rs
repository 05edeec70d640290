//! A small client for a running mcpod's HTTP API (`mcpod serve`, or the
//! Kubernetes router): plain HTTP/1.1, the loopback default, no TLS.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use serde_json::Value;

use super::{CliError, CliResult};

/// The address the CLI finds mcpod at when `--url` is not given: `serve`'s default listener.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// How long one API call may take: the API answers from memory, except a start.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Api {
    /// `host:port`, what the TCP connection goes to.
    authority: String,
    /// Path prefix before `/servers`, without a trailing slash (a router behind a path).
    prefix: String,
    /// The URL as given, for messages and the URLs printed for clients.
    base: String,
    /// `MCPOD_TOKEN`: the bearer token (an API key) sent when mcpod asks for one.
    token: Option<String>,
}

impl Api {
    pub fn new(url: &str) -> CliResult<Api> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            CliError::Usage(format!(
                "--url {url}: only http:// URLs are supported (mcpod serves plain HTTP)"
            ))
        })?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(CliError::Usage(format!("--url {url}: no host")));
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Api {
            authority,
            prefix: prefix.to_string(),
            base: url.trim_end_matches('/').to_string(),
            token: std::env::var("MCPOD_TOKEN").ok().filter(|t| !t.is_empty()),
        })
    }

    /// The URL as the user gave it, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The MCP URL of a server that clients recognise as Streamable HTTP.
    pub fn mcp_url(&self, server: &str) -> String {
        format!("{}/servers/{server}/mcp", self.base)
    }

    /// GETs `path` and parses the JSON answer; a 404 names what was not found.
    pub async fn get_json(&self, path: &str) -> CliResult<Value> {
        let (status, body) = self.call("GET", path).await?;
        json_answer(&self.base, path, status, &body)
    }

    /// POSTs to `path` (no body) and parses the JSON answer.
    pub async fn post_json(&self, path: &str, timeout: Duration) -> CliResult<(u16, Value)> {
        let (status, body) = self.call_with("POST", path, timeout).await?;
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok((status, value))
    }

    pub async fn call(&self, method: &str, path: &str) -> CliResult<(u16, Bytes)> {
        self.call_with(method, path, CALL_TIMEOUT).await
    }

    async fn call_with(
        &self,
        method: &str,
        path: &str,
        timeout: Duration,
    ) -> CliResult<(u16, Bytes)> {
        match tokio::time::timeout(timeout, self.send(method, path)).await {
            Ok(result) => result,
            Err(_) => Err(CliError::Api(format!(
                "{method} {}{path}: no answer within {timeout:?}",
                self.base
            ))),
        }
    }

    async fn send(&self, method: &str, path: &str) -> CliResult<(u16, Bytes)> {
        let unreachable = |e: &dyn std::fmt::Display| {
            CliError::Api(format!(
                "no mcpod answers at {} ({e}); is `mcpod serve` running? (set --url or MCPOD_URL)",
                self.base
            ))
        };
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header("host", &self.authority)
            .header("accept", "application/json");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| CliError::Usage(format!("{method} {path}: {e}")))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, body))
    }
}

fn json_answer(base: &str, path: &str, status: u16, body: &[u8]) -> CliResult<Value> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        CliError::Api(format!(
            "GET {base}{path}: not JSON ({e}): is this an mcpod? {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })?;
    if status >= 400 {
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        let hint = if status == 401 {
            " (set MCPOD_TOKEN to an API key: `mcpod auth add-key NAME --keys-file FILE`)"
        } else {
            ""
        };
        return Err(CliError::Api(format!(
            "{base}: {message} (HTTP {status}){hint}"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_prefix() {
        let api = Api::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(api.authority, "127.0.0.1:8080");
        assert_eq!(api.prefix, "");
        assert_eq!(
            api.mcp_url("time"),
            "http://127.0.0.1:8080/servers/time/mcp"
        );
        let api = Api::new("http://mcpod.local/tools").unwrap();
        assert_eq!(api.authority, "mcpod.local:80");
        assert_eq!(api.prefix, "/tools");
        assert!(matches!(
            Api::new("https://x"),
            Err(CliError::Usage(message)) if message.contains("only http://")
        ));
    }

    #[tokio::test]
    async fn an_absent_mcpod_is_named_with_what_to_do() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = Api::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = api.get_json("/servers").await.unwrap_err().to_string();
        assert!(err.contains("no mcpod answers at"), "{err}");
        assert!(err.contains("MCPOD_URL"), "{err}");
    }
}
