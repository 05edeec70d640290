//! Cross-site protection for the whole listener.
//!
//! - `Host` (DNS rebinding): a page on `http://evil.example` whose name is made
//!   to resolve to 127.0.0.1 reaches mcpod with `Host: evil.example`. Only names
//!   mcpod serves pass: loopback names, IP literals (rebinding needs a name),
//!   this machine's hostname, and the operator's `--allowed-host`s.
//! - `Origin` (cross-site requests): a browser names the page that sent a
//!   request; one from a foreign origin may read nothing and change nothing.
//!   Requests without `Origin` come from non-browser clients and pass.

use std::net::IpAddr;

use warp::http::HeaderMap;

/// Whether the request's `Host` names mcpod (see the module docs).
pub fn host_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(host) = headers.get("host").and_then(|v| v.to_str().ok()) else {
        // HTTP/1.0 clients send none; a browser always does.
        return true;
    };
    let name = strip_port(host).to_ascii_lowercase();
    is_loopback_name(&name)
        || name
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok()
        || allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(&name))
        || this_hostname().is_some_and(|h| h.eq_ignore_ascii_case(&name))
}

/// Whether the request's `Origin` (if any) may use mcpod: a loopback origin,
/// one of `allowed`, or any when `allowed` holds `*`.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if allowed
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .split("://")
        .nth(1)
        .unwrap_or("")
        .trim_end_matches('/');
    is_loopback_name(&strip_port(authority).to_ascii_lowercase())
}

/// `name:port`, `[v6]:port`, `name` → the name (`[v6]` keeps its brackets).
fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split(']')
            .next()
            .map_or(authority, |v6| &authority[..v6.len() + 1]);
    }
    authority.split(':').next().unwrap_or("")
}

fn is_loopback_name(name: &str) -> bool {
    matches!(name, "localhost" | "127.0.0.1" | "[::1]" | "::1") || name.ends_with(".localhost")
}

fn this_hostname() -> Option<String> {
    static HOSTNAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, value.parse().unwrap());
        headers
    }

    #[test]
    fn loopback_and_listed_origins_pass() {
        assert!(origin_allowed(&HeaderMap::new(), &[]));
        assert!(origin_allowed(
            &with("origin", "http://localhost:3000"),
            &[]
        ));
        assert!(origin_allowed(&with("origin", "http://[::1]:8080"), &[]));
        assert!(origin_allowed(&with("origin", "http://127.0.0.1"), &[]));
        assert!(!origin_allowed(
            &with("origin", "https://evil.example"),
            &[]
        ));
        assert!(!origin_allowed(&with("origin", "null"), &[]));
        assert!(!origin_allowed(
            &with("origin", "http://localhost.evil.example"),
            &[]
        ));
        let list = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            &with("origin", "https://app.example"),
            &list
        ));
        assert!(origin_allowed(
            &with("origin", "https://x.example"),
            &["*".into()]
        ));
    }

    #[test]
    fn only_names_mcpod_serves_pass_as_host() {
        assert!(host_allowed(&HeaderMap::new(), &[]));
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.1.2.3",
            "LOCALHOST",
        ] {
            assert!(host_allowed(&with("host", ok), &[]), "{ok}");
        }
        for rebinding in ["evil.example:8080", "localhost.evil.example", "evil"] {
            assert!(!host_allowed(&with("host", rebinding), &[]), "{rebinding}");
        }
        let list = vec!["mcp.example.com".to_string()];
        assert!(host_allowed(&with("host", "mcp.example.com:443"), &list));
    }
}
