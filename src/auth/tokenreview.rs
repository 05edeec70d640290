//! Kubernetes ServiceAccount tokens, checked with a TokenReview
//! (`authentication.k8s.io/v1`): agents in the cluster authenticate with their
//! own projected token, and the API server says who they are.
//!
//! The review names mcpod's audience (`--token-review-audience`, e.g. `mcpod`),
//! and a token is accepted only if the API server confirms that audience in
//! `status.audiences`: a token meant for the API server itself (the default
//! ServiceAccount token) is refused, so no caller has to hand mcpod a token
//! that would let mcpod act as them elsewhere.
//!
//! Answers are cached briefly, keyed by the SHA-256 of the token (never the
//! token itself): a valid one for [`Settings::ttl`] (at most a minute, and never
//! past the token's own `exp`), a refused one for a few seconds, so a client
//! retrying a bad token cannot make every request cost an API call. An API
//! server that cannot answer is not cached: the caller gets 503 and retries.
//! This verifier comes last, after API keys and OAuth tokens of mcpod's
//! issuer: it claims only what looks like a JWT.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{AuthError, Caller, Resource, Verdict, Verify, Via};

/// The longest a valid review is trusted without asking again: a revoked
/// token (its ServiceAccount or pod deleted) is refused within this time.
pub const MAX_TTL: Duration = Duration::from_secs(60);

/// How long reviews are cached and how many.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A valid token (capped at [`MAX_TTL`]).
    pub ttl: Duration,
    /// A token the API server refused.
    pub negative_ttl: Duration,
    /// Tokens remembered at most; the oldest go first.
    pub capacity: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            capacity: 4096,
        }
    }
}

/// What a review said, as cached.
#[derive(Clone)]
enum Outcome {
    Valid(Caller),
    Refused(String),
}

struct Entry {
    outcome: Outcome,
    expires: Instant,
}

/// Checks bearer tokens with TokenReviews against the cluster's API server.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    settings: Settings,
    cache: Mutex<HashMap<[u8; 32], Entry>>,
}

impl TokenReviewer {
    pub fn new(client: Client, audience: &str) -> TokenReviewer {
        TokenReviewer::with_settings(client, audience, Settings::default())
    }

    pub fn with_settings(client: Client, audience: &str, settings: Settings) -> TokenReviewer {
        TokenReviewer {
            api: Api::all(client),
            audience: audience.to_string(),
            settings: Settings {
                ttl: settings.ttl.min(MAX_TTL),
                ..settings
            },
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Outcome> {
        let cache = self.cache.lock().expect("tokenreview cache lock");
        cache
            .get(key)
            .filter(|entry| entry.expires > Instant::now())
            .map(|entry| entry.outcome.clone())
    }

    fn remember(&self, key: [u8; 32], outcome: Outcome, ttl: Duration) {
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("tokenreview cache lock");
        if cache.len() >= self.settings.capacity {
            cache.retain(|_, entry| entry.expires > now);
        }
        // Still full of live entries: the one that would expire first goes.
        while cache.len() >= self.settings.capacity.max(1) {
            let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, entry)| entry.expires)
                .map(|(key, _)| *key)
            else {
                break;
            };
            cache.remove(&oldest);
        }
        cache.insert(
            key,
            Entry {
                outcome,
                expires: now + ttl,
            },
        );
    }

    /// Asks the API server about `token`: `Err` when it could not answer.
    async fn review(&self, token: &str) -> Result<Outcome, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let reviewed = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "TokenReview failed");
                AuthError::Unavailable(format!(
                    "the Kubernetes API server did not review the token: {}",
                    kube_error(&error)
                ))
            })?;
        Ok(judge(reviewed.status.unwrap_or_default(), &self.audience))
    }
}

/// What a review's status means for mcpod's audience.
fn judge(status: TokenReviewStatus, audience: &str) -> Outcome {
    if status.authenticated != Some(true) {
        let reason = status
            .error
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "not authenticated".to_string());
        return Outcome::Refused(format!("Kubernetes TokenReview: {reason}"));
    }
    // An empty list means "valid for the API server's own audience", which is
    // not mcpod's (see the Kubernetes TokenReview API reference).
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Outcome::Refused(format!(
            "the token is not for audience '{audience}' (project a ServiceAccount token \
             with audience: {audience})"
        ));
    }
    let user = status.user.unwrap_or_default();
    match user.username.filter(|u| !u.is_empty()) {
        Some(subject) => Outcome::Valid(Caller {
            subject,
            groups: user.groups.unwrap_or_default(),
            scopes: vec![],
            via: Via::ServiceAccount,
        }),
        None => Outcome::Refused("Kubernetes TokenReview named no user".to_string()),
    }
}

/// An API error's message (`Forbidden: …` names the missing RBAC rule).
fn kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// Whether `token` has a JWT's shape: three base64url parts. Kubernetes
/// tokens are JWTs; anything else is not sent to the API server.
fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// How long until the token's own `exp` (read without checking the
/// signature: the API server has checked it; this only shortens the cache).
fn time_left(token: &str) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_i64()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(Duration::from_secs(exp.saturating_sub(now).max(0) as u64))
}

#[async_trait::async_trait]
impl Verify for TokenReviewer {
    fn name(&self) -> &'static str {
        "tokenreview"
    }

    async fn verify(&self, token: &str, _resource: &Resource) -> Verdict {
        if !looks_like_jwt(token) {
            return Verdict::NotMine;
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let outcome = match self.cached(&key) {
            Some(outcome) => outcome,
            None => match self.review(token).await {
                Ok(outcome) => {
                    let ttl = match &outcome {
                        Outcome::Valid(_) => time_left(token)
                            .map_or(self.settings.ttl, |left| left.min(self.settings.ttl)),
                        Outcome::Refused(_) => self.settings.negative_ttl,
                    };
                    self.remember(key, outcome.clone(), ttl);
                    outcome
                }
                Err(error) => return Verdict::Invalid(error),
            },
        };
        match outcome {
            Outcome::Valid(caller) => Verdict::Valid(caller),
            Outcome::Refused(reason) => Verdict::Invalid(AuthError::InvalidToken(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(authenticated: bool, audiences: &[&str], user: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.to_string()),
                groups: Some(vec!["system:serviceaccounts".to_string()]),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn only_an_authenticated_token_for_mcpods_audience_is_valid() {
        let sa = "system:serviceaccount:agents:bot";
        match judge(status(true, &["mcpod"], sa), "mcpod") {
            Outcome::Valid(caller) => {
                assert_eq!(caller.subject, sa);
                assert_eq!(caller.groups, ["system:serviceaccounts"]);
                assert_eq!(caller.via, Via::ServiceAccount);
            }
            Outcome::Refused(reason) => panic!("refused: {reason}"),
        }
        // Valid only for the API server's own audience: refused.
        assert!(matches!(
            judge(status(true, &[], sa), "mcpod"),
            Outcome::Refused(r) if r.contains("audience 'mcpod'")
        ));
        assert!(matches!(
            judge(status(true, &["other"], sa), "mcpod"),
            Outcome::Refused(_)
        ));
        assert!(matches!(
            judge(status(false, &["mcpod"], sa), "mcpod"),
            Outcome::Refused(_)
        ));
        assert!(matches!(
            judge(status(true, &["mcpod"], ""), "mcpod"),
            Outcome::Refused(_)
        ));
    }

    #[test]
    fn only_jwt_shaped_tokens_are_sent_for_review() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt("mcpod_abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c d"));
        assert!(!looks_like_jwt(".b.c"));
    }

    #[test]
    fn a_cached_review_never_outlives_the_tokens_exp() {
        let encode = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = format!(
            "{}.{}.sig",
            encode(json!({})),
            encode(json!({"exp": now + 10}))
        );
        let left = time_left(&token).unwrap();
        assert!(left <= Duration::from_secs(10) && left >= Duration::from_secs(8));
        let expired = format!("x.{}.sig", encode(json!({"exp": now - 100})));
        assert_eq!(time_left(&expired), Some(Duration::ZERO));
        assert_eq!(time_left("x.notjson.sig"), None);
    }

    use serde_json::json;
}
