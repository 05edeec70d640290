//! What a caller may do, once [`crate::auth`] knows who they are: use a server
//! at all, call a tool / get a prompt / read a resource, operate a server
//! (start, stop, logs), and how often. Every decision is made here, and only
//! here ([`policy`] decides, these hooks apply it), and every decision is a
//! line in the audit log ([`audit`]).
//!
//! The policy is each server's `spec.access` ([`spec`]); router-wide settings
//! (operators, rate limits, where the audit log goes) are [`AccessControl`],
//! which every server carries in its settings.

pub mod audit;
pub mod limit;
pub mod policy;
pub mod spec;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;
use tracing::warn;

use crate::auth::Caller;
use crate::mcp::error::RequestError;
use crate::mcp::message::{self as jsonrpc, Kind, Method};
use crate::workload::Workload;
use audit::{Audit, Outcome, Record};
use limit::{Key, Limiter};
use spec::{Callers, Rate};

/// What access needs to know of a server: its names, its policy (in the
/// workload) and the router-wide settings. `server::Server` is one; the trait
/// keeps this module below the server lifecycle, which only calls into it.
pub trait Guarded: Send + Sync {
    fn name(&self) -> &str;
    /// Unique across namespaces: what rate limits are kept by.
    fn key(&self) -> &str;
    fn workload(&self) -> std::sync::Arc<Workload>;
    fn access_control(&self) -> &AccessControl;
}

impl<T: Guarded + ?Sized> Guarded for std::sync::Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn key(&self) -> &str {
        (**self).key()
    }

    fn workload(&self) -> std::sync::Arc<Workload> {
        (**self).workload()
    }

    fn access_control(&self) -> &AccessControl {
        (**self).access_control()
    }
}

/// The audit record of a refused authentication: who is unknown, so the
/// record names the endpoint and why.
pub fn refusal_recorder(control: std::sync::Arc<AccessControl>) -> crate::auth::RefusalHook {
    std::sync::Arc::new(
        move |resource: &crate::auth::Resource, error: &crate::auth::AuthError| {
            let nobody = Caller {
                subject: "-".to_string(),
                groups: vec![],
                scopes: vec![],
                via: crate::auth::Via::Unauthenticated,
            };
            let server = resource.server.as_deref().unwrap_or("-");
            let mut record = Record::new(&nobody, server, "authenticate", Outcome::Denied);
            record.name = Some(resource.path.clone());
            record.reason = Some(error.to_string());
            control.record(record);
        },
    )
}

/// Router-wide access settings, shared by every server.
#[derive(Default)]
pub struct AccessControl {
    /// Who may operate every server (`--operator`), besides each server's own.
    pub operators: Callers,
    /// Where decisions are recorded.
    pub audit: Audit,
    /// Requests per subject across all servers (`--subject-requests-per-minute`).
    pub subject_rate: Option<Rate>,
    /// Requests per server, for servers whose spec sets no limit
    /// (`--server-requests-per-minute`).
    pub server_rate: Option<Rate>,
    limiter: Limiter,
    /// Servers already warned about rules nobody enforces.
    warned: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for AccessControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessControl")
            .field("operators", &self.operators)
            .field("audit", &self.audit)
            .field("subject_rate", &self.subject_rate)
            .field("server_rate", &self.server_rate)
            .finish()
    }
}

impl AccessControl {
    pub fn new(
        operators: Callers,
        audit: Audit,
        subject_rate: Option<Rate>,
        server_rate: Option<Rate>,
    ) -> AccessControl {
        AccessControl {
            operators,
            audit,
            subject_rate,
            server_rate,
            ..AccessControl::default()
        }
    }

    /// Rate-limit buckets held now (bounded: see [`limit`]).
    pub fn buckets(&self) -> usize {
        self.limiter.len()
    }

    /// Warns once per server when its manifest declares access rules that
    /// nobody enforces: no authentication is configured, so every caller is
    /// the local user, who may do everything.
    pub fn warn_if_unenforced(&self, server: &dyn Guarded) {
        if server.workload().access.is_none() {
            return;
        }
        if self
            .warned
            .lock()
            .unwrap()
            .insert(server.name().to_string())
        {
            warn!(
                server = server.name(),
                "spec.access is NOT enforced: no authentication is configured, so every caller \
                 is the local user, who may do everything (configure --api-keys, OAuth or \
                 TokenReview to enforce it)"
            );
        }
    }

    fn record(&self, record: Record) {
        self.audit.record(record);
    }
}

/// May `caller` use `server`'s MCP endpoint at all? (Before any message is read.)
/// A refusal is HTTP 403 with a JSON-RPC error, and a line in the audit log.
pub fn may_use(server: &dyn Guarded, caller: &Caller) -> Result<(), RequestError> {
    let control = server.access_control();
    let workload = server.workload();
    if caller.is_local() {
        control.warn_if_unenforced(server);
    }
    if policy::may_use(workload.access.as_ref(), caller) {
        return Ok(());
    }
    let reason = format!(
        "'{caller}' may not use MCP server '{}' (spec.access.callers)",
        server.name()
    );
    let mut record = Record::new(caller, server.name(), "connect", Outcome::Denied);
    record.reason = Some(reason.clone());
    control.record(record);
    Err(RequestError::Forbidden(reason))
}

/// Checks the rate limits for the requests in `message` (one, or a batch)
/// before it is dispatched, so an over-limit request is answered 429 with
/// `Retry-After` whatever the transport would have streamed.
pub fn rate_limit(
    server: &dyn Guarded,
    caller: &Caller,
    message: &Value,
) -> Result<(), RequestError> {
    let control = server.access_control();
    let workload = server.workload();
    let spec = workload.access.as_ref().and_then(|a| a.rate_limit.as_ref());
    let mut limits: Vec<(Key, Rate)> = vec![];
    if let Some(rate) = control.subject_rate {
        limits.push((Key::Subject(caller.subject.clone()), rate));
    }
    match spec {
        Some(spec) => {
            if let Some(rate) = spec.server() {
                limits.push((Key::Server(server.key().to_string()), rate));
            }
            if let Some(rate) = spec.subject() {
                let key = Key::SubjectOnServer(server.key().to_string(), caller.subject.clone());
                limits.push((key, rate));
            }
        }
        None => {
            if let Some(rate) = control.server_rate {
                limits.push((Key::Server(server.key().to_string()), rate));
            }
        }
    }
    if limits.is_empty() {
        return Ok(());
    }
    let requests: Vec<&Value> = match message {
        Value::Array(batch) => batch.iter().collect(),
        single => vec![single],
    };
    for request in requests {
        if jsonrpc::classify(request) != Some(Kind::Request) {
            continue;
        }
        if let Err(limited) = control.limiter.take(&limits, Instant::now()) {
            let error = RequestError::RateLimited {
                limit: limited.key.describe(),
                retry_after: limited.retry_after,
            };
            let mut record = request_record(server, caller, None, request, Outcome::Denied);
            record.reason = Some(error.to_string());
            record.code = Some(error.code());
            control.record(record);
            return Err(error);
        }
    }
    Ok(())
}

fn request_record(
    server: &dyn Guarded,
    caller: &Caller,
    session: Option<&str>,
    request: &Value,
    outcome: Outcome,
) -> Record {
    let method = jsonrpc::method(request).unwrap_or_default();
    let mut record = Record::new(caller, server.name(), method, outcome);
    record.session = session.map(str::to_string);
    record.request_id = request.get("id").cloned();
    record.name = policy::item_of(method, request.get("params")).map(|i| i.value().to_string());
    record
}

/// A request the policy let through: filtered and audited once answered
/// ([`Admitted::finish`]).
pub struct Admitted<'a> {
    server: &'a dyn Guarded,
    caller: &'a Caller,
    method: Method,
    /// `None` while the audit log is off.
    record: Option<Record>,
    started: Instant,
}

/// May `caller` send this request (a `tools/call`, `prompts/get`, …) to
/// `server`? A refusal says why without telling whether the name exists: the
/// decision is the policy's alone, never what the server has.
pub fn may_send<'a>(
    server: &'a dyn Guarded,
    caller: &'a Caller,
    session: Option<&str>,
    request: &Value,
) -> Result<Admitted<'a>, RequestError> {
    let started = Instant::now();
    let workload = server.workload();
    let method = jsonrpc::method(request).unwrap_or_default();
    let item = policy::item_of(method, request.get("params"));
    let record = || request_record(server, caller, session, request, Outcome::Allowed);
    if let Some(item) = item {
        if !policy::may_use_item(workload.access.as_ref(), caller, item) {
            let error = RequestError::Denied(format!(
                "access denied: there is no {} '{}' that '{caller}' may use on MCP server '{}' \
                 (spec.access.{})",
                item.kind(),
                printable(item.value()),
                server.name(),
                item.section()
            ));
            let mut record = record().took(started.elapsed());
            record.outcome = Outcome::Denied;
            record.reason = Some(error.to_string());
            record.code = Some(error.code());
            server.access_control().record(record);
            return Err(error);
        }
    }
    Ok(Admitted {
        server,
        caller,
        method: Method::of(request),
        record: server.access_control().audit.enabled().then(record),
        started,
    })
}

impl Admitted<'_> {
    /// Removes from a list result what the caller may not use, and records
    /// the outcome: allowed, or error when mcpod or the server failed it.
    pub fn finish(self, response: &mut Result<Value, RequestError>) {
        if let (true, Ok(answer)) = (self.method.is_list(), &mut *response) {
            if let Some(result) = answer.get_mut("result") {
                let workload = self.server.workload();
                let method = self.method.name();
                policy::filter_list(workload.access.as_ref(), self.caller, method, result);
            }
        }
        let Some(record) = self.record else { return };
        let mut record = record.took(self.started.elapsed());
        match response {
            Ok(answer) => {
                if let Some(code) = answer.pointer("/error/code").and_then(Value::as_i64) {
                    record.outcome = Outcome::Error;
                    record.code = Some(code);
                }
            }
            Err(error) => {
                record.outcome = Outcome::Error;
                record.code = Some(error.code());
                record.reason = Some(error.to_string());
            }
        }
        self.server.access_control().record(record);
    }
}

/// `subscriptions/listen` (protocol 2026-07-28): each resource it subscribes
/// to is decided as a `resources/subscribe` of it would be.
pub fn may_listen(
    server: &dyn Guarded,
    caller: &Caller,
    id: &Value,
    notifications: Option<&Value>,
) -> Result<(), RequestError> {
    let uris = notifications
        .and_then(|n| n.get("resourceSubscriptions"))
        .and_then(Value::as_array);
    for uri in uris.into_iter().flatten() {
        let subscribe = jsonrpc::request(
            id.clone(),
            Method::ResourcesSubscribe,
            serde_json::json!({"uri": uri}),
        );
        may_send(server, caller, None, &subscribe)?.finish(&mut Ok(Value::Null));
    }
    Ok(())
}

/// What an operator may do to a server through the management API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Start,
    Stop,
    Logs,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Logs => "logs",
        }
    }
}

/// May `caller` start/stop `server` or read its logs? Operators are the
/// router-wide `--operator`s and the server's `spec.access.operators`; with
/// authentication on, nobody else (calling tools is a separate permission).
pub fn may_operate(
    server: &dyn Guarded,
    caller: &Caller,
    operation: Operation,
) -> Result<(), String> {
    let control = server.access_control();
    let workload = server.workload();
    let allowed = policy::may_operate(workload.access.as_ref(), &control.operators, caller);
    let outcome = if allowed {
        Outcome::Allowed
    } else {
        Outcome::Denied
    };
    let mut record = Record::new(caller, server.name(), operation.name(), outcome);
    let result = if allowed {
        Ok(())
    } else {
        Err(format!(
            "'{caller}' may not {} MCP server '{}': only operators may (--operator, \
             spec.access.operators)",
            operation.name(),
            server.name()
        ))
    };
    record.reason = result.as_ref().err().cloned();
    control.record(record);
    result
}

/// At most 200 printable characters of a client-sent name, for a message.
fn printable(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}
