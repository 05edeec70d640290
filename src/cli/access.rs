//! Router-wide authorization settings `serve` and `router` share (part of
//! `AuthArgs`): operators, rate limits, the audit log.

use std::path::{Path, PathBuf};

use clap::Args;

use mcpod::access::audit::Audit;
use mcpod::access::spec::{Callers, Rate};
use mcpod::access::AccessControl;

/// See the README's "Authorization", "Audit log" and "Rate limits".
#[derive(Args, Debug, Clone)]
pub struct AccessArgs {
    /// Who may start and stop every server and read its logs: a subject
    /// (`alice`, `system:serviceaccount:ops:deployer`) or `group:NAME`.
    /// Repeat, or comma-separate. Each server may add its own
    /// (`spec.access.operators`). Without authentication the local user may.
    #[arg(long = "operator", env = "MCPOD_OPERATORS", value_delimiter = ',')]
    pub operators: Vec<String>,
    /// Where the audit log (one JSON line per access decision) goes: a file,
    /// `-` for stdout, or `off`. Default: `<data-dir>/logs/audit/audit.log`
    /// for `serve`, stdout for the Kubernetes `router`.
    #[arg(long, env = "MCPOD_AUDIT_LOG")]
    pub audit_log: Option<String>,
    /// Requests per minute each subject may send, across all servers (0: no limit).
    #[arg(long, env = "MCPOD_SUBJECT_REQUESTS_PER_MINUTE", default_value_t = 0)]
    pub subject_requests_per_minute: u32,
    /// Requests a subject may send at once above that rate. Default: ten seconds' worth.
    #[arg(long, env = "MCPOD_SUBJECT_BURST")]
    pub subject_burst: Option<u32>,
    /// Requests per minute each server accepts from all callers together,
    /// unless its `spec.access.rateLimit` says otherwise (0: no limit).
    #[arg(long, env = "MCPOD_SERVER_REQUESTS_PER_MINUTE", default_value_t = 0)]
    pub server_requests_per_minute: u32,
    /// Requests a server accepts at once above that rate. Default: ten seconds' worth.
    #[arg(long, env = "MCPOD_SERVER_BURST")]
    pub server_burst: Option<u32>,
}

/// Where the audit log goes when `--audit-log` is not given, and how a file
/// of it rotates.
pub struct AuditDefault<'a> {
    /// `None`: stdout.
    pub path: Option<&'a Path>,
    pub max_bytes: u64,
    pub keep: usize,
}

impl AccessArgs {
    pub fn build(&self, default: AuditDefault) -> AccessControl {
        let audit = match self.audit_log.as_deref() {
            Some("off") => Audit::Off,
            Some("-") => Audit::stdout(),
            Some(path) => Audit::file(&PathBuf::from(path), default.max_bytes, default.keep),
            None => match default.path {
                Some(path) => Audit::file(path, default.max_bytes, default.keep),
                None => Audit::stdout(),
            },
        };
        AccessControl::new(
            operators(&self.operators),
            audit,
            Rate::new(self.subject_requests_per_minute, self.subject_burst),
            Rate::new(self.server_requests_per_minute, self.server_burst),
        )
    }
}

/// `alice`, `group:admins` → subjects and groups.
fn operators(names: &[String]) -> Callers {
    let mut callers = Callers::default();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        match name.strip_prefix("group:") {
            Some(group) => callers.groups.push(group.to_string()),
            None => callers.subjects.push(name.to_string()),
        }
    }
    callers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_are_subjects_or_groups() {
        let callers = operators(&["alice".into(), "group:ops".into(), " ".into()]);
        assert_eq!(callers.subjects, ["alice"]);
        assert_eq!(callers.groups, ["ops"]);
    }
}
