//! What one server lets its clients hold (issue 11): sessions and isolated
//! containers, per server and per client, and the longest message. Each is a
//! flag of `mcpod serve` (the default for every server) and a field of the
//! server's `spec.limits` (that server's own figure).

use crate::auth::Caller;

pub use crate::crd::ServerLimits;

/// The figures in force for one server: its spec's, else the flags'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub max_sessions: usize,
    pub max_sessions_per_client: usize,
    pub max_isolated: usize,
    pub max_isolated_per_client: usize,
    pub max_message_bytes: usize,
}

impl Default for Effective {
    fn default() -> Self {
        Effective {
            max_sessions: 10_000,
            max_sessions_per_client: 1_000,
            max_isolated: 32,
            max_isolated_per_client: 8,
            max_message_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Effective {
    /// `spec` over these defaults.
    pub fn with(&self, spec: &ServerLimits) -> Effective {
        let or = |value: Option<u32>, default: usize| value.map_or(default, |v| v as usize);
        Effective {
            max_sessions: or(spec.max_sessions, self.max_sessions),
            max_sessions_per_client: or(spec.max_sessions_per_client, self.max_sessions_per_client),
            max_isolated: or(spec.max_isolated, self.max_isolated),
            max_isolated_per_client: or(spec.max_isolated_per_client, self.max_isolated_per_client),
            max_message_bytes: spec
                .max_message_bytes
                .map_or(self.max_message_bytes, |v| v as usize),
        }
    }
}

/// Whose budget a caller draws on: an authenticated subject (per verifier),
/// or, without authentication, the one local user (mcpod does not see a
/// caller's address, so unauthenticated callers share one budget).
pub fn client_key(caller: &Caller) -> String {
    format!("{:?}/{}", caller.via, caller.subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_figures_override_the_flags_one_by_one() {
        let flags = Effective::default();
        let spec = ServerLimits {
            max_isolated_per_client: Some(1),
            max_sessions: Some(5),
            ..Default::default()
        };
        let effective = flags.with(&spec);
        assert_eq!(effective.max_sessions, 5);
        assert_eq!(effective.max_isolated_per_client, 1);
        assert_eq!(effective.max_isolated, flags.max_isolated);
        assert_eq!(
            effective.max_sessions_per_client,
            flags.max_sessions_per_client
        );
    }

    #[test]
    fn clients_are_told_apart_by_subject_and_verifier() {
        let local = Caller::local();
        let mut alice = Caller::local();
        alice.subject = "alice".into();
        alice.via = crate::auth::Via::ApiKey;
        let mut local_alice = Caller::local();
        local_alice.subject = "alice".into();
        assert_ne!(client_key(&local), client_key(&alice));
        assert_ne!(client_key(&alice), client_key(&local_alice));
        assert_eq!(client_key(&local), client_key(&Caller::local()));
    }
}
