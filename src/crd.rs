//! The `MCPServer` custom resource (`mcpod.dev/v1alpha1`): one MCP server that
//! speaks stdio, run as a container on demand. The same type is read from YAML
//! files by `mcpod serve` and from the API server by `mcpod operator`.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod group;
pub use group::{MCPServerGroup, MCPServerGroupSpec, MCPServerGroupStatus};

pub const GROUP: &str = "mcpod.dev";
pub const DEFAULT_USER: i64 = 65534;

/// Spec of one MCP server.
// Several `printcolumn(...)` entries repeat `type_ = ...`, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mcpod.dev",
    version = "v1alpha1",
    kind = "MCPServer",
    plural = "mcpservers",
    shortname = "mcps",
    category = "mcpod",
    namespaced,
    status = "MCPServerStatus",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(
        name = "Last Activity",
        type_ = "date",
        json_path = ".status.lastActivity"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MCPServerSpec {
    /// Container image that runs the server, e.g. `localhost/mcpod/time:latest`.
    /// Leave it out with `package`: mcpod builds the image itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Instead of an image: an npm or PyPI package that speaks MCP on stdio.
    /// `mcpod serve` builds it on first use (every dependency resolved once and
    /// recorded under `<data-dir>/builds/<name>/`), shown in the status message
    /// and the server's log. Podman hosts only: on Kubernetes build it with
    /// `mcpod add`, push it to a registry and set `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageSource>,
    /// When to pull the image. Local images work with `IfNotPresent` (the default) and `Never`.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,
    /// Replaces the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Replaces the image's command (arguments to the entrypoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables, with literal values or values read at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Working directory inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Storage mounted into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Resource limits (defaults: 512Mi memory, 1 CPU, as `--max-memory`/`--max-cpu` say).
    #[serde(default)]
    pub resources: Resources,
    /// Quiet time after which the container is stopped (`300s`, `5m`; `0` = never). Default 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Quiet time after which the container is paused (Podman's cgroup freezer:
    /// no CPU, memory kept, stdio attached) until the next request resumes it
    /// in milliseconds; `idleTimeout` still stops it. Shorter than
    /// `idleTimeout` (`30s`; `0` or left out = never paused). Podman only:
    /// refused on Kubernetes, which cannot pause a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after: Option<String>,
    /// Longest wait for the container to start and answer `initialize`. Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_timeout: Option<String>,
    /// Longest wait for the answer to one request. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    /// How often a running, quiet server must answer a `ping` (`30s`; `0` = never).
    /// One that does not is marked Failed and restarted. Default: `--health-check-interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_interval: Option<String>,
    /// Bytes buffered for the server's stdout before a line is complete (it grows
    /// up to `--max-message-bytes` for longer messages). Default: `--stdio-buffer-size` (8192).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio_buffer_size: Option<u32>,
    /// Network access: `none` (default, no network at all) or `bridge` (egress allowed).
    #[serde(default)]
    pub network: NetworkMode,
    /// Hardening; every default is the strict choice.
    #[serde(default)]
    pub security: Security,
    /// `OnDemand` (default): started by the first request, stopped when idle.
    /// `AlwaysOn`: kept running. `Disabled`: kept stopped; requests get an error.
    #[serde(default)]
    pub desired_state: DesiredState,
    /// `Shared` (default): one container serves every client session.
    /// `Isolated`: each client session gets a container of its own.
    #[serde(default)]
    pub session_mode: SessionMode,
    /// Who may use this server, call which tools, read which resources,
    /// operate it, and how often (see `access` in the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// What this server lets its clients hold: sessions and isolated containers
    /// (in all and per client) and the longest message; each field left out
    /// takes the `mcpod serve` flag's figure (see Limits in the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ServerLimits>,
    /// Which tools, prompts and resources clients see and may use, and under
    /// which names and descriptions (allow-list, deny-list, overrides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Expose>,
    /// When mcpod learns what the server offers, for listing it while it is
    /// stopped: `OnFirstList` (default: the first listing starts it once) or
    /// `OnDeclaration` (started once as soon as it is declared or its spec
    /// changes; the idle timeout stops it again).
    #[serde(default)]
    pub catalog: Learn,
}

/// An npm or PyPI package to build a server image from: exactly one of the two.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PackageSource {
    /// `NAME` or `NAME@VERSION`, e.g. `@modelcontextprotocol/server-memory@2025.9.25`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npm: Option<String>,
    /// `NAME` or `NAME==VERSION`, e.g. `mcp-server-time==2025.9.25`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pypi: Option<String>,
}

/// `spec.expose`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expose {
    /// Which tools clients see and may call, and under which names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Selection>,
    /// Which prompts clients see and may get.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<Selection>,
    /// Which resources (by URI; templates by URI template) clients see and may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Selection>,
}

/// An allow-list, a deny-list and renames. Names are the server's own; `*`
/// in a pattern stands for any run of characters (`git_*`, `file:///docs/*`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selection {
    /// Only these are shown (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// These are hidden, even when allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// By the server's name: the name and description clients see instead
    /// (tools and prompts only). The server's own name is then unknown to clients.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, Override>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Override {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `spec.catalog`: when a server's catalog is learned.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Learn {
    /// The first listing of a server never seen running starts it once.
    #[default]
    OnFirstList,
    /// Started once as soon as it is declared (or its container spec changes).
    OnDeclaration,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    None,
    Bridge,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DesiredState {
    #[default]
    OnDemand,
    AlwaysOn,
    Disabled,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SessionMode {
    #[default]
    Shared,
    Isolated,
}

/// One environment variable. Exactly one of `value`, `valueFromFile`, `valueFrom`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Path of a file on the host whose content is the value (Podman), so secrets stay out of YAML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from_file: Option<String>,
    /// A key of a Secret or ConfigMap (Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<EnvSource>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct KeyRef {
    pub name: String,
    pub key: String,
}

/// Storage mounted at `mountPath`. Exactly one source: `hostPath`, `volume`
/// (a named Podman volume, or a PersistentVolumeClaim on Kubernetes), `emptyDir`,
/// `configMap` or `secret` (Kubernetes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_dir: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub limits: Limits,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Kubernetes quantity, e.g. `512Mi`. Default: `--max-memory` (512Mi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Kubernetes quantity, e.g. `1`, `500m`. Default: `--max-cpu` (1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Security {
    /// User id the server runs as. Default 65534 (nobody).
    #[serde(default = "default_user")]
    pub run_as_user: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as_group: Option<i64>,
    /// Default true; a writable tmpfs is mounted at each `tmpfs` path.
    #[serde(default = "yes")]
    pub read_only_root_filesystem: bool,
    /// Default true (no-new-privileges / allowPrivilegeEscalation: false).
    #[serde(default = "yes")]
    pub no_new_privileges: bool,
    /// Default `[ALL]`.
    #[serde(default = "all_capabilities")]
    pub drop_capabilities: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_capabilities: Vec<String>,
    /// Writable in-memory directories. Default `[/tmp]`.
    #[serde(default = "default_tmpfs")]
    pub tmpfs: Vec<String>,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            run_as_user: default_user(),
            run_as_group: None,
            read_only_root_filesystem: true,
            no_new_privileges: true,
            drop_capabilities: all_capabilities(),
            add_capabilities: vec![],
            tmpfs: default_tmpfs(),
        }
    }
}

fn default_user() -> i64 {
    DEFAULT_USER
}
fn yes() -> bool {
    true
}
fn all_capabilities() -> Vec<String> {
    vec!["ALL".into()]
}
fn default_tmpfs() -> Vec<String> {
    vec!["/tmp".into()]
}

/// Observed state, written by mcpod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MCPServerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339: the last request or response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<String>,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The server's `serverInfo` from its `initialize` result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_info: Option<ServerInfo>,
    /// `sessionMode: Isolated` on Kubernetes: pods serving one client session each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_pods: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Stopped,
    Starting,
    Running,
    /// Running but frozen (`spec.pauseAfter`); the next request resumes it.
    Paused,
    Stopping,
    Failed,
}

impl Phase {
    /// The lower-case form the router's `/servers` API uses.
    pub fn as_api_str(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Paused => "paused",
            Phase::Stopping => "stopping",
            Phase::Failed => "failed",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct ServerInfo {
    pub name: String,
    #[serde(default)]
    pub version: String,
}

/// The CRD as YAML, exactly as `crds/mcpserver.yaml` must hold it. Each
/// CRD's file starts its own YAML document, so the files of `crds/` put one
/// after another are exactly what `mcpod crd` prints.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = MCPServer::crd();
    let yaml = serde_yaml::to_string(&crd).expect("a CRD always serializes");
    format!("---\n# Generated by `mcpod crd` from src/crd.rs; do not edit.\n{yaml}")
}

/// Every CRD mcpod defines, as one multi-document YAML: what `mcpod crd`
/// prints, and `crds/*.yaml` in order.
pub fn all_crds_yaml() -> String {
    format!("{}{}", crd_yaml(), group::crd_yaml())
}

// ---- spec.access: validated in access/spec.rs, decided in access/policy.rs ----

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

// ---- spec.limits: put in force by limits.rs ----

/// `spec.limits`: this server's own figures; a field left out takes the flag's.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerLimits {
    /// Client sessions this server holds at most (`--max-sessions`, 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// Sessions one client (an authenticated subject; every unauthenticated
    /// local caller together) holds at most (`--max-sessions-per-client`, 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions_per_client: Option<u32>,
    /// `sessionMode: Isolated`: containers this server runs at most (`--max-isolated`, 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_isolated: Option<u32>,
    /// `sessionMode: Isolated`: containers one client holds at most (`--max-isolated-per-client`, 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_isolated_per_client: Option<u32>,
    /// Longest JSON-RPC message accepted from the server (`--max-message-bytes`, 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_names_and_columns() {
        let crd = MCPServer::crd();
        assert_eq!(crd.spec.group, "mcpod.dev");
        assert_eq!(crd.spec.names.kind, "MCPServer");
        assert_eq!(crd.spec.names.plural, "mcpservers");
        assert_eq!(crd.spec.names.short_names, Some(vec!["mcps".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(version.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = version
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Status", "Image", "Last Activity", "Age"]);
    }

    #[test]
    fn defaults_are_the_strict_original_ones() {
        let spec: MCPServerSpec = serde_yaml::from_str("image: localhost/x").unwrap();
        assert_eq!(spec.resources.limits.memory, None);
        assert_eq!(spec.network, NetworkMode::None);
        assert_eq!(spec.security.run_as_user, 65534);
        assert!(spec.security.read_only_root_filesystem);
        assert!(spec.security.no_new_privileges);
        assert_eq!(spec.security.drop_capabilities, ["ALL"]);
        assert_eq!(spec.security.tmpfs, ["/tmp"]);
        assert_eq!(spec.desired_state, DesiredState::OnDemand);
        assert_eq!(spec.image_pull_policy, ImagePullPolicy::IfNotPresent);
    }

    #[test]
    fn committed_crd_matches_the_types() {
        let committed = include_str!("../crds/mcpserver.yaml");
        assert!(
            committed == crd_yaml(),
            "crds/mcpserver.yaml is stale: run `make crd`"
        );
    }
}
