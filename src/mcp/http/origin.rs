//! DNS-rebinding protection: a browser's `Origin` must be loopback or allowed.

use warp::http::HeaderMap;

/// Whether the request's `Origin` (if any) may use mcpod: a loopback origin,
/// one of `allowed`, or any when `allowed` holds `*`.
pub fn allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    if allowed.iter().any(|o| o == "*" || o == origin) {
        return true;
    }
    is_loopback(host_of(origin))
}

fn host_of(origin: &str) -> &str {
    let authority = origin
        .split("://")
        .nth(1)
        .unwrap_or("")
        .trim_end_matches('/');
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    }
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_origin(origin: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("origin", origin.parse().unwrap());
        headers
    }

    #[test]
    fn loopback_and_listed_origins_pass() {
        assert!(allowed(&HeaderMap::new(), &[]));
        assert!(allowed(&with_origin("http://localhost:3000"), &[]));
        assert!(allowed(&with_origin("http://[::1]:8080"), &[]));
        assert!(!allowed(&with_origin("https://evil.example"), &[]));
        let list = vec!["https://app.example".to_string()];
        assert!(allowed(&with_origin("https://app.example"), &list));
        assert!(allowed(&with_origin("https://x.example"), &["*".into()]));
    }
}
