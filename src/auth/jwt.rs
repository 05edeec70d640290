//! OAuth 2.1 access tokens (JWT) from one issuer, checked against its JWKS —
//! mcpod as the resource server of MCP's "Authorization" (2025-06-18 and later).
//!
//! The issuer's metadata (RFC 8414, or OpenID Connect discovery) names its
//! `jwks_uri`; the key set is fetched when first needed, kept, fetched again
//! every [`REFRESH_EVERY`], and at once (at most every [`REFETCH_AT_MOST_EVERY`])
//! when a token names a key it does not hold: a rotated signing key is picked
//! up without a restart, and a flood of tokens with made-up key ids costs the
//! issuer one request per interval. A key set that cannot be fetched makes the
//! token uncheckable for now (503), not invalid (401); keys already held stay in
//! use while a periodic refresh fails.
//!
//! A token is this verifier's when its `iss` is the issuer (read before the
//! signature, only to choose the verifier: everything is checked after).
//! It must then be signed by one of the issuer's keys with an asymmetric
//! algorithm, name this resource in `aud` (RFC 8707: a token for another server
//! is refused), and be within `exp`/`nbf` give or take [`LEEWAY_SECONDS`].

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use reqwest::Url;
use serde_json::Value;

use super::{AuthError, Caller, Resource, Verdict, Verify, Via};

/// How long a fetched key set is used before it is fetched again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// A token naming an unknown key refetches the set at most this often.
pub const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(5);
/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
/// Metadata and key sets larger than this are refused (they are a few KiB).
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Signature algorithms accepted: asymmetric only, so a public key can never
/// be used as an HMAC secret.
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why the issuer's metadata or key set could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("GET {url}: not JSON: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{url}: {reason}")]
    Invalid { url: String, reason: String },
    #[error("no authorization server metadata for issuer {issuer} (tried {tried})")]
    NoMetadata { issuer: String, tried: String },
}

/// A bad `--oauth-issuer`.
#[derive(Debug, thiserror::Error)]
#[error("--oauth-issuer {issuer:?}: {reason}")]
pub struct IssuerError {
    issuer: String,
    reason: String,
}

/// One signing key of the issuer.
struct Key {
    kid: Option<String>,
    /// The algorithm the key set pins it to, if it does.
    algorithm: Option<Algorithm>,
    family: Family,
    decoding: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Key {
    fn fits(&self, algorithm: Algorithm) -> bool {
        if self.algorithm.is_some_and(|pinned| pinned != algorithm) {
            return false;
        }
        matches!(
            (self.family, algorithm),
            (
                Family::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (Family::P256, Algorithm::ES256)
                | (Family::P384, Algorithm::ES384)
                | (Family::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// The key set as last fetched.
#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<Key>>,
    /// When it was fetched (`None`: never).
    fetched: Option<Instant>,
}

/// Verifies access tokens of one OAuth issuer (`--oauth-issuer`).
pub struct JwtVerifier {
    issuer: String,
    groups_claim: String,
    http: reqwest::Client,
    keys: RwLock<Arc<KeySet>>,
    /// Held while fetching, so concurrent requests wait for one fetch; holds
    /// when the last fetch was attempted.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl JwtVerifier {
    /// A verifier for `issuer`; nothing is fetched until a token arrives.
    pub fn new(issuer: &str, groups_claim: &str) -> Result<JwtVerifier, IssuerError> {
        let error = |reason: &str| IssuerError {
            issuer: issuer.to_string(),
            reason: reason.to_string(),
        };
        let url = Url::parse(issuer).map_err(|e| error(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(error("an issuer is an http(s) URL"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(error("an issuer has no query or fragment (RFC 8414 §2)"));
        }
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT / 2)
            // The documents are fetched from where the issuer's metadata says;
            // a redirect elsewhere is not followed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mcpod/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| error(&format!("HTTP client: {e}")))?;
        Ok(JwtVerifier {
            issuer: issuer.to_string(),
            groups_claim: groups_claim.to_string(),
            http,
            keys: RwLock::new(Arc::new(KeySet::default())),
            fetching: tokio::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The keys that may have signed a token with this `kid` and algorithm,
    /// fetching the key set when it is missing, old, or lacks the key.
    async fn keys_for(
        &self,
        kid: Option<&str>,
        algorithm: Algorithm,
    ) -> Result<Vec<Arc<Key>>, AuthError> {
        let pick = |set: &KeySet| -> Vec<Arc<Key>> {
            set.keys
                .iter()
                .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
                .filter(|k| k.fits(algorithm))
                .cloned()
                .collect()
        };
        let set = self.current();
        let fresh = set.fetched.is_some_and(|at| at.elapsed() < REFRESH_EVERY);
        let found = pick(&set);
        if fresh && !found.is_empty() {
            return Ok(found);
        }
        // With a key at hand, a request does not queue behind a refresh
        // already under way (an issuer that hangs would stall every request).
        let mut last_attempt = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) if !found.is_empty() => return Ok(found),
            Err(_) => self.fetching.lock().await,
        };
        // Another request may have fetched while this one waited.
        let set = self.current();
        let found = pick(&set);
        if set.fetched.is_some_and(|at| at.elapsed() < REFRESH_EVERY) && !found.is_empty() {
            return Ok(found);
        }
        // A known key with an old set is used while refetching fails; an
        // unknown one refetches at most every REFETCH_AT_MOST_EVERY.
        let may_fetch = last_attempt.is_none_or(|at| at.elapsed() >= REFETCH_AT_MOST_EVERY);
        if !may_fetch {
            return if !found.is_empty() {
                Ok(found)
            } else if set.fetched.is_none() {
                Err(AuthError::Unavailable(format!(
                    "the signing keys of {} could not be fetched",
                    self.issuer
                )))
            } else {
                Err(unknown_key(kid))
            };
        }
        *last_attempt = Some(Instant::now());
        match self.fetch_keys().await {
            Ok(keys) => {
                tracing::info!(issuer = %self.issuer, keys = keys.len(), "fetched the issuer's signing keys");
                let set = Arc::new(KeySet {
                    keys,
                    fetched: Some(Instant::now()),
                });
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = set.clone();
                let found = pick(&set);
                if found.is_empty() {
                    Err(unknown_key(kid))
                } else {
                    Ok(found)
                }
            }
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, %error, "cannot fetch the issuer's signing keys");
                if found.is_empty() {
                    Err(AuthError::Unavailable(format!(
                        "the signing keys of {} could not be fetched",
                        self.issuer
                    )))
                } else {
                    Ok(found)
                }
            }
        }
    }

    /// The issuer's metadata, then the key set it names.
    async fn fetch_keys(&self) -> Result<Vec<Arc<Key>>, FetchError> {
        let jwks_uri = self.discover_jwks_uri().await?;
        let jwks = self.get_json(&jwks_uri).await?;
        let Some(entries) = jwks.get("keys").and_then(Value::as_array) else {
            return Err(FetchError::Invalid {
                url: jwks_uri,
                reason: "no \"keys\" array".to_string(),
            });
        };
        Ok(entries
            .iter()
            .filter_map(|entry| match key_from_jwk(entry) {
                Ok(key) => key.map(Arc::new),
                Err(reason) => {
                    tracing::debug!(%jwks_uri, %reason, "key skipped");
                    None
                }
            })
            .collect())
    }

    /// `jwks_uri` from the first metadata document that answers, in the
    /// order MCP clients try them (RFC 8414 §3.1, then OpenID Connect
    /// discovery with and without path insertion); the document must be the
    /// issuer's own (RFC 8414 §3.3).
    async fn discover_jwks_uri(&self) -> Result<String, FetchError> {
        let urls = metadata_urls(&self.issuer);
        for url in &urls {
            let metadata = match self.get_json(url).await {
                Ok(metadata) => metadata,
                Err(FetchError::Status { status: 404, .. }) => continue,
                Err(e) => return Err(e),
            };
            let invalid = |reason: String| FetchError::Invalid {
                url: url.clone(),
                reason,
            };
            let issuer = metadata.get("issuer").and_then(Value::as_str);
            if issuer != Some(self.issuer.as_str()) {
                return Err(invalid(format!(
                    "names issuer {issuer:?}, not {:?}",
                    self.issuer
                )));
            }
            return metadata
                .get("jwks_uri")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| invalid("no jwks_uri".to_string()));
        }
        Err(FetchError::NoMetadata {
            issuer: self.issuer.clone(),
            tried: urls.join(", "),
        })
    }

    /// GET a JSON document, at most [`MAX_DOCUMENT_BYTES`].
    async fn get_json(&self, url: &str) -> Result<Value, FetchError> {
        let http = |source| FetchError::Http {
            url: url.to_string(),
            source,
        };
        let mut response = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(http)?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: response.status().as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|source| FetchError::Json {
            url: url.to_string(),
            source,
        })
    }

    /// The caller a valid token names.
    fn caller(&self, claims: &Value) -> Caller {
        let strings = |value: Option<&Value>| -> Vec<String> {
            match value {
                Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
                _ => vec![],
            }
        };
        let groups = match claims.get(&self.groups_claim) {
            // One group named by a string is one group, spaces or not.
            Some(Value::String(group)) => vec![group.clone()],
            other => strings(other),
        };
        Caller {
            subject: claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            groups,
            scopes: strings(claims.get("scope").or_else(|| claims.get("scp"))),
            via: Via::Jwt {
                issuer: self.issuer.clone(),
            },
        }
    }
}

#[async_trait::async_trait]
impl Verify for JwtVerifier {
    fn name(&self) -> &'static str {
        "oauth"
    }

    async fn verify(&self, token: &str, resource: &Resource) -> Verdict {
        let Some(unverified) = unverified_claims(token) else {
            return Verdict::NotMine;
        };
        if unverified.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Verdict::NotMine;
        }
        let invalid = |description: String| Verdict::Invalid(AuthError::InvalidToken(description));
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            Err(e) => return invalid(format!("malformed token header: {e}")),
        };
        if !ALGORITHMS.contains(&header.alg) {
            return invalid(format!(
                "tokens signed with {:?} are not accepted",
                header.alg
            ));
        }
        let keys = match self.keys_for(header.kid.as_deref(), header.alg).await {
            Ok(keys) => keys,
            Err(error) => return Verdict::Invalid(error),
        };
        let audiences = resource.audiences();
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let mut error = None;
        for key in keys {
            match jsonwebtoken::decode::<Value>(token, &key.decoding, &validation) {
                Ok(data) => return Verdict::Valid(self.caller(&data.claims)),
                // Without a `kid`, another key of the set may be the one.
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => error = Some(e),
                Err(e) => return invalid(describe(e.kind(), &unverified, resource)),
            }
        }
        invalid(describe(
            error
                .as_ref()
                .map_or(&ErrorKind::InvalidSignature, |e| e.kind()),
            &unverified,
            resource,
        ))
    }
}

fn unknown_key(kid: Option<&str>) -> AuthError {
    AuthError::InvalidToken(match kid {
        Some(kid) => format!("signed with key '{kid}', which the issuer does not publish"),
        None => "no key of the issuer fits the token's algorithm".to_string(),
    })
}

/// The `error_description` for a refused token (it names the token's own
/// claims and this resource: nothing the caller does not know).
fn describe(kind: &ErrorKind, claims: &Value, resource: &Resource) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".to_string(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
        ErrorKind::InvalidAudience => {
            let aud = claims.get("aud").map(Value::to_string).unwrap_or_default();
            format!(
                "the token is for audience {aud}, not this resource ({})",
                resource.url()
            )
        }
        ErrorKind::InvalidSignature => {
            "the token's signature does not verify with the issuer's keys".to_string()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no '{claim}' claim"),
        other => format!("malformed token: {other:?}"),
    }
}

/// The claims of a JWT, unverified: only to tell whose token it is.
fn unverified_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}

/// One key of a JWKS: `Ok(None)` for a key that is not for signatures.
fn key_from_jwk(entry: &Value) -> Result<Option<Key>, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| e.to_string())?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let family = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Family::P256,
            EllipticCurve::P384 => Family::P384,
            ref other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Family::Ed25519
        }
        _ => return Err("not a public signing key".to_string()),
    };
    let algorithm = match jwk.common.key_algorithm {
        Some(pinned) => match Algorithm::from_str(&pinned.to_string()) {
            Ok(algorithm) if ALGORITHMS.contains(&algorithm) => Some(algorithm),
            _ => return Ok(None),
        },
        None => None,
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string())?;
    Ok(Some(Key {
        kid: jwk.common.key_id,
        algorithm,
        family,
        decoding,
    }))
}

/// Where an issuer's metadata may be, in the order MCP clients try them
/// (MCP "Authorization", authorization server metadata discovery).
fn metadata_urls(issuer: &str) -> Vec<String> {
    let Ok(url) = Url::parse(issuer) else {
        return vec![];
    };
    let origin = url.origin().ascii_serialization();
    let path = url.path().trim_end_matches('/');
    if path.is_empty() {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server"),
            format!("{origin}/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{origin}/.well-known/openid-configuration{path}"),
            format!("{origin}{path}/.well-known/openid-configuration"),
        ]
    }
}

/// Scopes a caller lacks of those required (`--oauth-required-scope`).
pub fn missing_scopes(caller: &Caller, required: &[String]) -> Vec<String> {
    let held: HashSet<&str> = caller.scopes.iter().map(String::as_str).collect();
    required
        .iter()
        .filter(|s| !held.contains(s.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Auth;

    #[test]
    fn metadata_is_looked_for_where_rfc_8414_and_openid_connect_put_it() {
        assert_eq!(
            metadata_urls("https://as.example"),
            [
                "https://as.example/.well-known/oauth-authorization-server",
                "https://as.example/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("https://as.example:8443/tenant/1/"),
            [
                "https://as.example:8443/.well-known/oauth-authorization-server/tenant/1",
                "https://as.example:8443/.well-known/openid-configuration/tenant/1",
                "https://as.example:8443/tenant/1/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn only_three_part_tokens_with_a_json_payload_are_read() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"iss":"https://as.example"}"#);
        let claims = unverified_claims(&format!("e30.{payload}.sig")).unwrap();
        assert_eq!(claims["iss"], "https://as.example");
        for not_jwt in ["mcpod_abc", "a.b", "a.b.c.d", "e30.!!.x", "e30.MQ.x"] {
            assert!(unverified_claims(not_jwt).is_none(), "{not_jwt}");
        }
    }

    #[test]
    fn issuers_must_be_plain_http_urls() {
        assert!(JwtVerifier::new("https://as.example/tenant", "groups").is_ok());
        for bad in ["as.example", "ftp://as.example", "https://as.example/?x=1"] {
            assert!(JwtVerifier::new(bad, "groups").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_caller_comes_from_sub_the_groups_claim_and_scope_or_scp() {
        let verifier = JwtVerifier::new("https://as.example", "roles").unwrap();
        let caller = verifier.caller(&serde_json::json!({
            "sub": "agent-7", "roles": ["ops", "dev"], "scope": "mcp:tools  mcp:admin"
        }));
        assert_eq!(caller.subject, "agent-7");
        assert_eq!(caller.groups, ["ops", "dev"]);
        assert_eq!(caller.scopes, ["mcp:tools", "mcp:admin"]);
        assert_eq!(
            caller.via,
            Via::Jwt {
                issuer: "https://as.example".to_string()
            }
        );
        let caller =
            verifier.caller(&serde_json::json!({"sub": "x", "roles": "site admins", "scp": ["a"]}));
        assert_eq!(caller.groups, ["site admins"]);
        assert_eq!(caller.scopes, ["a"]);
        assert_eq!(
            missing_scopes(&caller, &["a".to_string(), "b".to_string()]),
            ["b"]
        );
    }

    #[test]
    fn keys_are_taken_only_for_signatures_with_the_algorithms_they_fit() {
        let rsa = serde_json::json!({"kty": "RSA", "kid": "r1", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"});
        let key = key_from_jwk(&rsa).unwrap().unwrap();
        assert!(key.fits(Algorithm::RS256) && key.fits(Algorithm::PS256));
        assert!(!key.fits(Algorithm::ES256));
        let mut pinned = rsa.clone();
        pinned["alg"] = "RS512".into();
        let key = key_from_jwk(&pinned).unwrap().unwrap();
        assert!(key.fits(Algorithm::RS512) && !key.fits(Algorithm::RS256));
        let mut encryption = rsa.clone();
        encryption["use"] = "enc".into();
        assert!(key_from_jwk(&encryption).unwrap().is_none());
        let secret = serde_json::json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(key_from_jwk(&secret).is_err());
    }

    /// A verifier already holding one ES256 key (`kid` "k1"), and a signer.
    fn verifier_with_es256_key(issuer: &str) -> (JwtVerifier, impl Fn(Value, &str) -> String) {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // The uncompressed point: 0x04, x, y.
        let point = pair.public_key().as_ref();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..])});
        let verifier = JwtVerifier::new(issuer, "groups").unwrap();
        *verifier.keys.write().unwrap() = Arc::new(KeySet {
            keys: vec![Arc::new(key_from_jwk(&jwk).unwrap().unwrap())],
            fetched: Some(Instant::now()),
        });
        let encoding = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
        let sign = move |claims: Value, kid: &str| {
            let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
            header.kid = Some(kid.to_string());
            jsonwebtoken::encode(&header, &claims, &encoding).unwrap()
        };
        (verifier, sign)
    }

    fn refusal(verdict: Verdict) -> AuthError {
        match verdict {
            Verdict::Invalid(error) => error,
            Verdict::Valid(caller) => panic!("accepted as {caller}"),
            Verdict::NotMine => panic!("not recognised"),
        }
    }

    #[tokio::test]
    async fn es256_tokens_are_checked_for_issuer_audience_time_and_key() {
        // Nothing listens on port 1: a key set to fetch cannot be had.
        let issuer = "http://127.0.0.1:1";
        let (verifier, sign) = verifier_with_es256_key(issuer);
        let resource = Auth::default().resource(
            &warp::http::HeaderMap::new(),
            "/mcp/time",
            crate::router::ROUTES,
        );
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |aud: &str, exp: u64| {
            serde_json::json!({"iss": issuer, "sub": "agent", "aud": aud, "exp": exp,
                "scope": "mcp:tools", "groups": ["ops"]})
        };
        let endpoint = resource.url();
        let good = sign(claims(&endpoint, now + 60), "k1");
        match verifier.verify(&good, &resource).await {
            Verdict::Valid(caller) => {
                assert_eq!(caller.subject, "agent");
                assert_eq!(caller.groups, ["ops"]);
                assert_eq!(caller.scopes, ["mcp:tools"]);
            }
            _ => panic!("a good token is accepted"),
        }
        // mcpod as a whole is an audience of every endpoint.
        let whole = sign(claims(&resource.base, now + 60), "k1");
        assert!(matches!(
            verifier.verify(&whole, &resource).await,
            Verdict::Valid(_)
        ));

        let other = sign(claims("http://localhost/mcp/memory", now + 60), "k1");
        let why = refusal(verifier.verify(&other, &resource).await).to_string();
        assert!(why.contains("not this resource"), "{why}");
        // Within the leeway an expired token passes; beyond it, not.
        let late = sign(claims(&endpoint, now - LEEWAY_SECONDS / 2), "k1");
        assert!(matches!(
            verifier.verify(&late, &resource).await,
            Verdict::Valid(_)
        ));
        let expired = sign(claims(&endpoint, now - LEEWAY_SECONDS - 60), "k1");
        let why = refusal(verifier.verify(&expired, &resource).await).to_string();
        assert!(why.contains("expired"), "{why}");
        let mut early = claims(&endpoint, now + 600);
        early["nbf"] = (now + 300).into();
        let why = refusal(verifier.verify(&sign(early, "k1"), &resource).await).to_string();
        assert!(why.contains("not valid yet"), "{why}");

        let mut foreign = claims(&endpoint, now + 60);
        foreign["iss"] = "https://elsewhere.example".into();
        assert!(matches!(
            verifier.verify(&sign(foreign, "k1"), &resource).await,
            Verdict::NotMine
        ));
        let hmac = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims(&endpoint, now + 60),
            &jsonwebtoken::EncodingKey::from_secret(b"guessed"),
        )
        .unwrap();
        let why = refusal(verifier.verify(&hmac, &resource).await).to_string();
        assert!(why.contains("not accepted"), "{why}");

        // An unknown key sends mcpod to the issuer; unreachable, it cannot tell: 503.
        let rotated = sign(claims(&endpoint, now + 60), "k2");
        assert!(matches!(
            refusal(verifier.verify(&rotated, &resource).await),
            AuthError::Unavailable(_)
        ));
        // The known key still works while the issuer is away.
        assert!(matches!(
            verifier.verify(&good, &resource).await,
            Verdict::Valid(_)
        ));
    }
}
