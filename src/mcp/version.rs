//! The MCP protocol versions mcpod speaks, in one place: adding a version is
//! an edit to this file.

/// Versions of the handshake era (`initialize`, sessions), oldest first.
pub const HANDSHAKE: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// Versions of the per-request era (no `initialize`, no session).
pub const PER_REQUEST: &[&str] = &["2026-07-28"];

/// What mcpod asks the stdio servers behind it for; they answer with theirs.
pub const FOR_SERVERS: &str = "2025-11-25";

/// What a Streamable HTTP client without a version header is assumed to speak.
pub const ASSUMED_WITHOUT_HEADER: &str = "2025-03-26";

/// The legacy HTTP+SSE transport's version.
pub const LEGACY_SSE: &str = "2024-11-05";

/// The only version with JSON-RPC batches.
const WITH_BATCHES: &str = "2025-03-26";

/// Every version a client may name in `MCP-Protocol-Version`.
pub fn all() -> Vec<&'static str> {
    HANDSHAKE.iter().chain(PER_REQUEST).copied().collect()
}

pub fn is_known(version: &str) -> bool {
    HANDSHAKE.contains(&version) || PER_REQUEST.contains(&version)
}

pub fn is_per_request(version: &str) -> bool {
    PER_REQUEST.contains(&version)
}

pub fn allows_batches(version: &str) -> bool {
    version == WITH_BATCHES
}

/// The first version whose clients expect SSE streams to be primed.
const PRIMED_STREAMS_SINCE: &str = "2025-11-25";

/// Whether a session's SSE streams start with a priming event (an id and empty
/// data, to resume from). Clients of earlier versions parse every event's data
/// as JSON and fail on an empty one, so theirs get none (as the official SDKs do).
pub fn primes_streams(version: &str) -> bool {
    // Versions are dates: they compare as strings.
    version >= PRIMED_STREAMS_SINCE
}

/// The handshake version answered to a client's `initialize`: the client's own
/// when mcpod speaks it, else the newest mcpod speaks.
pub fn negotiate(requested: &str) -> &'static str {
    HANDSHAKE
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(HANDSHAKE[HANDSHAKE.len() - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_and_batches() {
        assert_eq!(negotiate("2025-03-26"), "2025-03-26");
        assert_eq!(negotiate("1999-01-01"), "2025-11-25");
        assert!(allows_batches("2025-03-26") && !allows_batches("2025-06-18"));
        assert!(is_known("2026-07-28") && is_per_request("2026-07-28"));
        assert!(!is_known("2099-01-01"));
        assert!(primes_streams("2025-11-25") && primes_streams("2026-07-28"));
        assert!(!primes_streams("2025-06-18") && !primes_streams("2025-03-26"));
    }
}
