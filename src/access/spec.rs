//! `spec.access` of an MCPServer: who may use the server, call which tool, get
//! which prompt, read which resource, operate it, and how fast. The types are
//! part of the CRD (their doc comments are its field docs); what they mean is
//! decided in [`super::policy`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Who may use this server and what. Enforced only when mcpod authenticates its
/// callers (API keys, OAuth, ServiceAccount tokens); the local user of an
/// mcpod without authentication may do everything. Without `access`, every
/// authenticated caller may use every tool, prompt and resource, and only
/// router-wide operators (`--operator`) may start, stop or read logs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Access {
    /// Who may use this server at all (list, call, read). Absent: every
    /// authenticated caller. Others are refused with HTTP 403.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callers: Option<Callers>,
    /// Who may start and stop this server and read its logs, besides the
    /// router-wide `--operator`s. Calling tools is a separate permission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operators: Option<Callers>,
    /// Tool rules. Empty: every caller of the server may call every tool. Once
    /// there is one rule, a tool is callable (and listed) only for callers a
    /// rule naming it admits; every other tool is refused, the same way as a
    /// tool that does not exist (as a NetworkPolicy, once it selects a pod).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<NameRule>,
    /// Prompt rules, as `tools`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<NameRule>,
    /// Resource rules, as `tools`, by URI or URI prefix. A resource template
    /// is listed when its URI up to the first `{` is readable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceRule>,
    /// Requests per minute this server accepts; over it, HTTP 429 with
    /// `Retry-After` and a JSON-RPC error. Default: `--server-requests-per-minute`
    /// (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// Callers, by name, group and OAuth scope. A caller matches when its subject
/// is in `subjects` (`"*"`: any authenticated caller) or it belongs to one of
/// `groups`, and it holds every scope in `scopes`. With only `scopes`, any
/// caller holding them matches; an empty `Callers` matches nobody.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Callers {
    /// Subjects as authentication names them: the API key's subject, the
    /// token's `sub`, `system:serviceaccount:NAMESPACE:NAME`; `*`: any
    /// authenticated caller. A caller matches when its subject is listed or it
    /// is in one of `groups`, and it holds every scope in `scopes` (with only
    /// `scopes`: any caller holding them; all three empty: nobody).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// Groups (API key groups, the token's groups claim, Kubernetes groups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// OAuth scopes the caller's token must all carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// Tools or prompts, by name, and who may use them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NameRule {
    /// Names; `*` matches any run of characters (`admin_*`, `*`).
    pub names: Vec<String>,
    /// Who may use them.
    pub callers: Callers,
}

/// Resources, by exact URI or URI prefix, and who may read (and subscribe to) them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRule {
    /// Exact URIs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
    /// URI prefixes, e.g. `file:///srv/public/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uri_prefixes: Vec<String>,
    /// Who may read them.
    pub callers: Callers,
}

/// A token bucket: `requestsPerMinute` on average, up to `burst` at once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per minute for all callers together (0: no limit).
    #[serde(default)]
    pub requests_per_minute: u32,
    /// Requests accepted at once above the rate. Default: ten seconds' worth (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// A limit for each subject on this server, besides the one above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_subject: Option<Rate>,
}

/// Requests per minute, up to `burst` at once.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rate {
    /// Requests per minute (0: no limit).
    pub requests_per_minute: u32,
    /// Requests accepted at once above the rate. Default: ten seconds' worth (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Rate {
    /// `None` when off.
    pub fn new(requests_per_minute: u32, burst: Option<u32>) -> Option<Rate> {
        (requests_per_minute > 0).then_some(Rate {
            requests_per_minute,
            burst,
        })
    }

    /// Tokens per second.
    pub fn per_second(self) -> f64 {
        f64::from(self.requests_per_minute) / 60.0
    }

    /// Bucket size: `burst`, or ten seconds' worth, at least 1.
    pub fn capacity(self) -> f64 {
        f64::from(self.burst.unwrap_or(self.requests_per_minute / 6).max(1))
    }
}

impl RateLimit {
    /// The server-wide bucket, if any.
    pub fn server(&self) -> Option<Rate> {
        Rate::new(self.requests_per_minute, self.burst)
    }

    pub fn subject(&self) -> Option<Rate> {
        self.per_subject
            .and_then(|r| Rate::new(r.requests_per_minute, r.burst))
    }
}

/// Checks what the schema cannot: rules that could never match anything.
/// Errors name the field, as `Workload::resolve` reports them.
pub fn validate(access: &Access) -> Result<(), (String, String)> {
    let callers = |field: String, callers: &Callers| {
        let all = callers
            .subjects
            .iter()
            .chain(&callers.groups)
            .chain(&callers.scopes);
        if all.clone().any(|s| s.trim().is_empty()) {
            return Err((field, "names must not be empty".to_string()));
        }
        Ok(())
    };
    if let Some(c) = &access.callers {
        callers("spec.access.callers".into(), c)?;
    }
    if let Some(c) = &access.operators {
        callers("spec.access.operators".into(), c)?;
    }
    for (kind, rules) in [("tools", &access.tools), ("prompts", &access.prompts)] {
        for (i, rule) in rules.iter().enumerate() {
            let field = format!("spec.access.{kind}[{i}]");
            if rule.names.is_empty() || rule.names.iter().any(|n| n.is_empty()) {
                return Err((
                    format!("{field}.names"),
                    "must name at least one (use \"*\" for all)".into(),
                ));
            }
            callers(format!("{field}.callers"), &rule.callers)?;
        }
    }
    for (i, rule) in access.resources.iter().enumerate() {
        let field = format!("spec.access.resources[{i}]");
        if rule.uris.is_empty() && rule.uri_prefixes.is_empty() {
            return Err((
                field,
                "needs uris or uriPrefixes (uriPrefixes: [\"\"] for all)".into(),
            ));
        }
        callers(format!("{field}.callers"), &rule.callers)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> Result<(), (String, String)> {
        validate(&serde_yaml::from_str::<Access>(yaml).unwrap())
    }

    #[test]
    fn rules_that_could_match_nothing_are_refused_naming_the_field() {
        assert!(check("tools:\n- names: ['*']\n  callers: {subjects: [a]}").is_ok());
        let (field, _) = check("tools:\n- names: []\n  callers: {subjects: [a]}").unwrap_err();
        assert_eq!(field, "spec.access.tools[0].names");
        let (field, _) = check("resources:\n- callers: {subjects: [a]}").unwrap_err();
        assert_eq!(field, "spec.access.resources[0]");
        let (field, _) = check("operators: {groups: ['']}").unwrap_err();
        assert_eq!(field, "spec.access.operators");
        assert!(
            serde_yaml::from_str::<Access>("tool: []").is_err(),
            "unknown fields"
        );
    }
}
