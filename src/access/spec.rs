//! `spec.access` of an MCPServer: who may use the server, call which tool, get
//! which prompt, read which resource, operate it, and how fast. The types are
//! part of the CRD, so they live in `crd.rs` (their doc comments are its field
//! docs); here they are validated, and what they mean is decided in `policy.rs`.

pub use crate::crd::{Access, Callers, NameRule, Rate, RateLimit, ResourceRule};

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
