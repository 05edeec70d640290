//! One MCP server's lifecycle: started by the first request (single flight),
//! stopped when idle, restarted after a crash, backed off after failed starts.
//!
//! The `lifecycle` mutex is the one place decisions are made: a request takes a
//! [`Hold`] under it, and the idle check and the stop happen under it too, so a
//! server with a request in flight is never stopped, and a request that arrives
//! during a start or a stop waits and is then served by the new instance.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{info, warn, Instrument};

use crate::auth::Caller;
use crate::backoff::backoff;
use crate::catalog::{self, Catalog};
use crate::crd::{DesiredState, Phase};
use crate::limits::client_key;
use crate::logs::ServerLog;
use crate::mcp::bridge::{BridgeError, Buffers, MessageHandler, ServerMessage, StdioBridge};
use crate::mcp::error::RequestError;
use crate::mcp::message::{self as jsonrpc, Method};
use crate::mcp::sessions::Sessions;
use crate::mcp::version;
use crate::metrics::requests::ServerMetrics;
use crate::package::Package;
use crate::runtime::Runtime;
use crate::workload::Workload;

/// How long a server's manifest file must stay gone (or empty) before the
/// server is removed, by default.
pub const REMOVAL_DEBOUNCE: Duration = Duration::from_secs(5);

/// Settings shared by every server of one mcpod.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest JSON-RPC message accepted from a server.
    pub max_message_bytes: usize,
    /// How long a server may take to exit after its stdin closes, before SIGTERM.
    pub stop_grace: Duration,
    /// How often idle servers are looked for.
    pub idle_check_interval: Duration,
    /// Client sessions idle for longer than this end (clients get 404 and re-initialize).
    pub session_ttl: Duration,
    /// Where each server's log goes (`<name>.log`); `None` keeps none.
    pub log_dir: Option<std::path::PathBuf>,
    /// How long a server's manifest file must stay gone (or empty) before the
    /// server is removed (a file rewritten in place is not a removal).
    pub removal_debounce: Duration,
    /// Client sessions one server holds at most; a client past it is refused.
    pub max_sessions: usize,
    /// Client sessions one client (see `crate::limits::client_key`) holds per server at most.
    pub max_sessions_per_client: usize,
    /// `sessionMode: Isolated`: containers of one server at most.
    pub max_isolated: usize,
    /// `sessionMode: Isolated`: containers of one server one client holds at most.
    pub max_isolated_per_client: usize,
    /// Builds `spec.package` servers' images on first use (`None`: such a
    /// server fails to start, saying no builder is available here).
    pub builder: Option<crate::package::Builder>,
    /// Router-wide access settings: operators, rate limits, the audit log.
    pub access: Arc<crate::access::AccessControl>,
    /// Where each server's catalog is kept across restarts (`<key>.json`);
    /// `None` keeps it in memory only.
    pub catalog_dir: Option<std::path::PathBuf>,
    /// Where catalogs are kept instead of `catalog_dir` (on Kubernetes, ConfigMaps).
    pub catalog_store: Option<Arc<dyn catalog::Store>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_message_bytes: 16 * 1024 * 1024,
            stop_grace: Duration::from_millis(1000),
            idle_check_interval: Duration::from_millis(500),
            session_ttl: Duration::from_secs(3600),
            log_dir: None,
            removal_debounce: REMOVAL_DEBOUNCE,
            max_sessions: 10_000,
            max_sessions_per_client: 1_000,
            max_isolated: 32,
            max_isolated_per_client: 8,
            builder: None,
            access: Arc::default(),
            catalog_dir: None,
            catalog_store: None,
        }
    }
}

impl Settings {
    /// The limits in force for `workload`: its `spec.limits`, else these settings.
    pub fn limits(&self, workload: &Workload) -> crate::limits::Effective {
        crate::limits::Effective {
            max_sessions: self.max_sessions,
            max_sessions_per_client: self.max_sessions_per_client,
            max_isolated: self.max_isolated,
            max_isolated_per_client: self.max_isolated_per_client,
            max_message_bytes: self.max_message_bytes,
        }
        .with(&workload.limits)
    }
}

/// A running container and the MCP session mcpod holds with it.
pub struct Instance {
    pub container_id: String,
    pub bridge: StdioBridge,
    /// The server's answer to mcpod's `initialize`.
    pub initialize_result: Value,
    pub started_at: DateTime<Utc>,
}

enum Lifecycle {
    Stopped,
    Running(Arc<Instance>),
    /// Frozen after `spec.pauseAfter` of quiet (`Runtime::pause`); the next
    /// [`Server::acquire`] resumes it under the lifecycle lock.
    Paused(Arc<Instance>),
    Failed {
        reason: String,
        retry_at: Instant,
        failures: u32,
    },
    Removed,
}

/// What `/servers` shows, kept apart from the lifecycle lock so reading it never waits.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub name: String,
    pub status: &'static str,
    #[serde(skip)]
    pub phase: Phase,
    pub last_activity: Option<DateTime<Utc>>,
    pub image: String,
    pub desired_state: DesiredState,
    pub container_id: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub restart_count: u32,
    pub message: Option<String>,
    pub server_info: Option<Value>,
    pub in_flight: usize,
    pub sessions: usize,
    /// `sessionMode: Isolated`: containers serving one session each.
    pub isolated_instances: usize,
    pub starts: u64,
    pub start_failures: u64,
    pub stops: u64,
    pub health_check_failures: u64,
    pub last_cold_start_ms: Option<u64>,
    /// Sum of all cold starts, for a mean (with `starts`).
    pub cold_start_ms_total: u64,
    /// Requests sent to the server, and those that got no answer from it (timeout, crash).
    pub requests: u64,
    pub request_failures: u64,
    /// Times the container was killed for exceeding its memory limit.
    pub oom_kills: u64,
    /// The idle time after which the server is stopped (`None`: never, or the
    /// operator decides); with `lastActivity`, what `mcpod get` counts down.
    pub idle_timeout_seconds: Option<u64>,
    /// The quiet time after which the server is paused (`spec.pauseAfter`; `None`: never).
    pub pause_after_seconds: Option<u64>,
    /// Times the container was paused, and resumed by a request.
    pub pauses: u64,
    pub resumes: u64,
    /// How long the last resume took (from the request's arrival under the lock).
    pub last_resume_ms: Option<f64>,
    /// The running container's latest resource usage (`cpuSeconds`,
    /// `memoryBytes`, `memoryLimitBytes`, …), sampled in the background.
    #[serde(flatten)]
    pub usage: Option<crate::runtime::Usage>,
}

pub struct Server {
    name: String,
    /// The runtime's key for this server's container.
    key: String,
    runtime: Arc<dyn Runtime>,
    settings: Settings,
    workload: RwLock<Arc<Workload>>,
    lifecycle: tokio::sync::Mutex<Lifecycle>,
    status: Mutex<Status>,
    in_flight: AtomicUsize,
    last_activity: Mutex<Instant>,
    sessions: Arc<Sessions>,
    log: Arc<ServerLog>,
    /// `sessionMode: Isolated`: the container of each client session, by session id.
    isolated: Mutex<std::collections::HashMap<String, Arc<Server>>>,
    /// Isolated servers spawned and not yet attached to their session, per
    /// client (`crate::limits::client_key`); locked after `isolated`.
    isolated_starting: Mutex<std::collections::HashMap<String, usize>>,
    /// Latency, errors, traffic (shared with its isolated servers).
    metrics: Arc<ServerMetrics>,
    /// The container whose pause failed: not tried again until the next start.
    pause_refused: Mutex<Option<String>>,
    /// What it offers, recorded while it runs (shared with its isolated servers).
    catalog: Arc<Catalog>,
}

/// Held while a request is being served: keeps the server from being stopped.
pub struct Hold {
    server: Arc<Server>,
    pub instance: Arc<Instance>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.server.touch();
        self.server.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Hold {
    /// Sends a request to the server and returns its response, under the server's request timeout.
    pub async fn request(&self, message: Value) -> Result<Value, RequestError> {
        self.request_as(self.instance.bridge.next_wire_id(), message)
            .await
    }

    /// Like [`Hold::request`], under a wire id the caller took from the bridge.
    pub async fn request_as(&self, wire_id: u64, message: Value) -> Result<Value, RequestError> {
        let timeout = self.server.workload().timeouts.request;
        let result = self
            .instance
            .bridge
            .request_as(wire_id, message, timeout)
            .await;
        {
            let mut status = self.server.status.lock().unwrap();
            status.requests += 1;
            status.request_failures += u64::from(result.is_err());
        }
        result.map_err(|e| match e {
            BridgeError::Timeout(timeout) => RequestError::RequestTimeout {
                server: self.server.name.clone(),
                timeout,
            },
            BridgeError::Closed(reason) => RequestError::Crashed {
                server: self.server.name.clone(),
                reason,
            },
            BridgeError::InputFull(limit) => RequestError::TooMany {
                what: "bytes waiting for the server's stdin (it is not reading)",
                limit,
            },
        })
    }
}

impl Server {
    pub fn new(
        key: &str,
        workload: Workload,
        runtime: Arc<dyn Runtime>,
        settings: Settings,
    ) -> Arc<Server> {
        let catalog = Arc::new(match &settings.catalog_store {
            Some(store) => Catalog::with_store(Some(store.clone()), key),
            None => Catalog::open(settings.catalog_dir.as_deref(), key),
        });
        Server::with_metrics(
            key,
            workload,
            runtime,
            settings,
            Default::default(),
            catalog,
        )
    }

    fn with_metrics(
        key: &str,
        workload: Workload,
        runtime: Arc<dyn Runtime>,
        settings: Settings,
        metrics: Arc<ServerMetrics>,
        catalog: Arc<Catalog>,
    ) -> Arc<Server> {
        let status = Status {
            name: workload.name.clone(),
            status: Phase::Stopped.as_api_str(),
            phase: Phase::Stopped,
            last_activity: None,
            image: workload.image.clone(),
            desired_state: workload.desired_state,
            container_id: None,
            started_at: None,
            restart_count: 0,
            message: None,
            server_info: None,
            in_flight: 0,
            sessions: 0,
            isolated_instances: 0,
            starts: 0,
            start_failures: 0,
            stops: 0,
            health_check_failures: 0,
            last_cold_start_ms: None,
            cold_start_ms_total: 0,
            requests: 0,
            request_failures: 0,
            oom_kills: 0,
            idle_timeout_seconds: None,
            pause_after_seconds: None,
            pauses: 0,
            resumes: 0,
            last_resume_ms: None,
            usage: None,
        };
        let limits = settings.limits(&workload);
        let log = Arc::new(ServerLog::open(settings.log_dir.as_deref(), key));
        let server = Arc::new(Server {
            name: workload.name.clone(),
            key: key.to_string(),
            runtime,
            settings,
            workload: RwLock::new(Arc::new(workload)),
            lifecycle: tokio::sync::Mutex::new(Lifecycle::Stopped),
            status: Mutex::new(status),
            in_flight: AtomicUsize::new(0),
            last_activity: Mutex::new(Instant::now()),
            sessions: Arc::new(Sessions::with_limit(limits.max_sessions)),
            log,
            isolated: Mutex::new(Default::default()),
            isolated_starting: Mutex::new(Default::default()),
            metrics,
            catalog,
            pause_refused: Mutex::new(None),
        });
        server
            .sessions
            .set_limits(limits.max_sessions, limits.max_sessions_per_client);
        let span = tracing::info_span!("server", server = %server.name);
        tokio::spawn(server.clone().supervise().instrument(span));
        server
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// This server's log: its stderr and its lifecycle.
    pub fn log(&self) -> &ServerLog {
        &self.log
    }

    /// Request latency, errors and traffic, for `/metrics`.
    pub fn metrics(&self) -> &Arc<ServerMetrics> {
        &self.metrics
    }

    /// What the server offers, recorded while it ran.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The client sessions talking to this server.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The router-wide access settings (the policy is the workload's).
    pub fn access_control(&self) -> &crate::access::AccessControl {
        &self.settings.access
    }

    pub fn workload(&self) -> Arc<Workload> {
        self.workload.read().unwrap().clone()
    }

    pub fn status(&self) -> Status {
        let mut status = self.status.lock().unwrap().clone();
        status.in_flight = self.in_flight.load(Ordering::SeqCst);
        let timeouts = self.workload().timeouts;
        status.idle_timeout_seconds = timeouts.idle.map(|d| d.as_secs());
        status.pause_after_seconds = timeouts.pause.map(|d| d.as_secs());
        let isolated = self.isolated.lock().unwrap();
        status.isolated_instances = isolated.len();
        status.sessions =
            self.sessions.len() + isolated.values().map(|c| c.sessions.len()).sum::<usize>();
        if matches!(status.phase, Phase::Running | Phase::Paused) {
            status.usage = self.metrics.usage();
        }
        status
    }

    fn touch(&self) {
        *self.last_activity.lock().unwrap() = Instant::now();
        self.status.lock().unwrap().last_activity = Some(Utc::now());
    }

    fn set_phase(&self, phase: Phase, message: Option<String>) {
        let mut status = self.status.lock().unwrap();
        if phase == Phase::Failed
            && message
                .as_deref()
                .is_some_and(|m| m.contains(crate::runtime::OOM_REASON))
        {
            status.oom_kills += 1;
        }
        if status.phase != phase {
            info!(
                from = status.status,
                to = phase.as_api_str(),
                message = message.as_deref().unwrap_or(""),
                "phase changed"
            );
            let note = message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            let line = format!("{} -> {}{note}", status.status, phase.as_api_str());
            self.log.write("mcpod", &line);
        }
        status.phase = phase;
        status.status = phase.as_api_str();
        status.message = message;
    }

    /// A hold on a running instance, starting one if needed. Concurrent callers
    /// share one start; callers that arrive during a stop wait for it to finish.
    pub async fn acquire(self: &Arc<Self>) -> Result<Hold, RequestError> {
        let workload = self.workload();
        if workload.desired_state == DesiredState::Disabled {
            return Err(RequestError::Disabled(self.name.clone()));
        }
        let wait = workload.timeouts.startup
            + workload.timeouts.request
            + self.settings.stop_grace
            + Duration::from_secs(5);
        let mut lifecycle = tokio::time::timeout(wait, self.lifecycle.lock())
            .await
            .map_err(|_| RequestError::StartupTimeout {
                server: self.name.clone(),
                timeout: wait,
            })?;
        if let Lifecycle::Paused(instance) = &*lifecycle {
            let instance = instance.clone();
            self.resume_locked(&mut lifecycle, instance).await;
        }
        match &*lifecycle {
            Lifecycle::Removed => return Err(RequestError::Removed(self.name.clone())),
            Lifecycle::Running(instance) if instance.bridge.closed_reason().is_none() => {
                return Ok(self.hold(instance.clone()));
            }
            Lifecycle::Running(instance) => {
                let reason = instance.bridge.closed_reason().unwrap_or_default();
                self.record_crash(&mut lifecycle, &reason);
            }
            Lifecycle::Failed {
                reason, retry_at, ..
            } if Instant::now() < *retry_at => {
                return Err(RequestError::StartFailed {
                    server: self.name.clone(),
                    reason: reason.clone(),
                    retry_in: *retry_at - Instant::now(),
                });
            }
            _ => {}
        }
        let instance = self.start_locked(&mut lifecycle, &workload).await?;
        Ok(self.hold(instance))
    }

    fn hold(self: &Arc<Self>, instance: Arc<Instance>) -> Hold {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Hold {
            server: self.clone(),
            instance,
        }
    }

    async fn start_locked(
        self: &Arc<Self>,
        lifecycle: &mut Lifecycle,
        workload: &Arc<Workload>,
    ) -> Result<Arc<Instance>, RequestError> {
        let previous_failures = match lifecycle {
            Lifecycle::Failed { failures, .. } => *failures,
            _ => 0,
        };
        self.set_phase(Phase::Starting, None);
        // A package is built before the start proper: a build takes minutes,
        // a start seconds, and `startupTimeout` is about the start.
        let built = match &workload.package {
            Some(package) => self.build_image(workload, package).await,
            None => Ok(()),
        };
        let began = Instant::now();
        let timeout = workload.timeouts.startup;
        // The instance outlives the request that starts it: its tasks get a
        // context of their own, or they would hold the request's spans open
        // for as long as the container runs.
        let starting = self
            .start_instance(workload)
            .instrument(tracing::info_span!(parent: None, "server", server = %self.name))
            .instrument(crate::telemetry::start_span(&self.name));
        let start = async {
            built?;
            starting.await
        };
        let outcome = match tokio::time::timeout(timeout, start).await {
            Ok(Ok(instance)) => Ok(instance),
            Ok(Err(reason)) => Err(RequestError::StartFailed {
                server: self.name.clone(),
                reason,
                retry_in: backoff(previous_failures + 1),
            }),
            Err(_) => Err(RequestError::StartupTimeout {
                server: self.name.clone(),
                timeout,
            }),
        };
        match outcome {
            Ok(instance) => {
                let cold_start = began.elapsed();
                info!(container = %instance.container_id, cold_start_ms = cold_start.as_millis() as u64, "started");
                {
                    let mut status = self.status.lock().unwrap();
                    if status.starts > 0 {
                        status.restart_count += 1;
                    }
                    status.starts += 1;
                    status.container_id = Some(instance.container_id.clone());
                    status.started_at = Some(instance.started_at);
                    status.server_info = instance.initialize_result.get("serverInfo").cloned();
                    status.last_cold_start_ms = Some(cold_start.as_millis() as u64);
                    status.cold_start_ms_total += cold_start.as_millis() as u64;
                }
                self.metrics.cold_starts.observe(cold_start);
                self.set_phase(Phase::Running, None);
                *lifecycle = Lifecycle::Running(instance.clone());
                Ok(instance)
            }
            Err(error) => {
                let failures = previous_failures + 1;
                let retry_in = backoff(failures);
                let reason = match &error {
                    RequestError::StartFailed { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                warn!(%reason, failures, retry_in_s = retry_in.as_secs(), "start failed");
                self.status.lock().unwrap().start_failures += 1;
                self.set_phase(Phase::Failed, Some(error.to_string()));
                // Leave nothing half-started behind (e.g. a container that never answered).
                if let Err(e) = self.runtime.stop(&self.key, Duration::ZERO).await {
                    warn!(error = %e, "cleaning up after a failed start");
                }
                *lifecycle = Lifecycle::Failed {
                    reason,
                    retry_at: Instant::now() + retry_in,
                    failures,
                };
                Err(error)
            }
        }
    }

    /// Builds the image of a `spec.package` server unless it exists, with the
    /// progress in the status message and the server's log.
    async fn build_image(&self, workload: &Workload, package: &Package) -> Result<(), String> {
        let Some(builder) = &self.settings.builder else {
            return Err(format!(
                "spec.package ({}) needs an image builder, which this mcpod has not \
                 (only `mcpod serve` builds packages)",
                package.request()
            ));
        };
        let progress = |line: &str| {
            self.log.write("mcpod", line);
            self.status.lock().unwrap().message = Some(line.to_string());
        };
        let began = Instant::now();
        let built = builder
            .0
            .ensure(&self.name, package, &workload.image, &progress)
            .await;
        match &built {
            Ok(()) => {
                info!(image = %workload.image, seconds = began.elapsed().as_secs(), "image ready")
            }
            Err(error) => warn!(%error, "image build failed"),
        }
        self.status.lock().unwrap().message = None;
        built.map_err(|e| format!("building {} failed: {e}", package.request()))
    }

    /// Starts the container, attaches, and performs the MCP `initialize` handshake.
    async fn start_instance(
        self: &Arc<Self>,
        workload: &Workload,
    ) -> Result<Arc<Instance>, String> {
        let began = Instant::now();
        let attached = self
            .runtime
            .start(&self.key, workload)
            .await
            .map_err(|e| e.to_string())?;
        let sessions = self.sessions.clone();
        let (changes, changed) = Catalog::change_feed();
        let route: MessageHandler = Arc::new(move |message| {
            if let ServerMessage::Notification(notification) = &message {
                changes.observe(notification);
            }
            sessions.route(message)
        });
        let bridge = StdioBridge::spawn(
            &self.name,
            attached.output,
            attached.stdin,
            route,
            self.log.clone(),
            Buffers {
                initial_bytes: workload.stdio_buffer_size,
                max_message_bytes: self.settings.limits(workload).max_message_bytes,
                traffic: self.metrics.traffic.clone(),
            },
        );
        let initialize = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": version::FOR_SERVERS,
                // What mcpod can route to client sessions that declared the same.
                "capabilities": {"roots": {"listChanged": true}, "sampling": {}, "elicitation": {}},
                "clientInfo": {"name": "mcpod", "version": env!("CARGO_PKG_VERSION")},
            }
        });
        // The start as a whole is bounded by `startupTimeout` (in `start_locked`):
        // one deadline, so a silent server is always a startup timeout, never a
        // failed start that races it on the same timer tick.
        let patience = workload.timeouts.startup + Duration::from_secs(1);
        let response = match bridge.request(initialize, patience).await {
            Ok(response) => response,
            Err(BridgeError::Closed(reason)) => {
                let why = self.runtime.exit_reason(&self.key).await.unwrap_or(reason);
                return Err(format!("container {why}"));
            }
            Err(other @ (BridgeError::Timeout(_) | BridgeError::InputFull(_))) => {
                return Err(format!("initialize could not be completed: {other}"));
            }
        };
        let Some(result) = response.get("result").cloned() else {
            return Err(format!("initialize was refused: {}", response["error"]));
        };
        tracing::debug!(
            initialized_ms = began.elapsed().as_millis() as u64,
            "the server answered initialize"
        );
        bridge.notify(jsonrpc::notification(Method::Initialized, None));
        self.renew_subscriptions(&bridge, workload.timeouts.request);
        let instance = Arc::new(Instance {
            container_id: attached.container_id,
            bridge,
            initialize_result: result,
            started_at: Utc::now(),
        });
        tokio::spawn(
            self.clone()
                .watch_for_crash(instance.clone())
                .in_current_span(),
        );
        // In the background: the first request is not kept waiting for it.
        tokio::spawn(
            self.catalog
                .clone()
                .follow(
                    instance.bridge.clone(),
                    workload.spec_hash.clone(),
                    instance.initialize_result.clone(),
                    workload.timeouts.request,
                    changed,
                )
                .in_current_span(),
        );
        Ok(instance)
    }

    /// A new process knows nothing of the sessions' resource subscriptions: renew them.
    fn renew_subscriptions(&self, bridge: &StdioBridge, timeout: Duration) {
        for uri in self.sessions.subscribed_uris() {
            let bridge = bridge.clone();
            tokio::spawn(async move {
                let subscribe =
                    jsonrpc::request(json!(0), Method::ResourcesSubscribe, json!({"uri": uri}));
                if let Err(e) = bridge.request(subscribe, timeout).await {
                    warn!(%uri, error = %e, "renewing a resource subscription failed");
                }
            });
        }
    }

    /// Marks the server when its container dies on its own (not stopped by mcpod).
    async fn watch_for_crash(self: Arc<Self>, instance: Arc<Instance>) {
        let reason = instance.bridge.closed().await;
        // The runtime knows why it ended (an exit code, an OOM kill) better than
        // the output stream that stopped.
        let reason = match self.runtime.exit_reason(&self.key).await {
            Some(why) => format!("container {why}"),
            None => reason,
        };
        let mut lifecycle = self.lifecycle.lock().await;
        if matches!(&*lifecycle, Lifecycle::Running(current) | Lifecycle::Paused(current)
            if Arc::ptr_eq(current, &instance))
        {
            self.record_crash(&mut lifecycle, &reason);
        }
    }

    fn record_crash(&self, lifecycle: &mut Lifecycle, reason: &str) {
        warn!(%reason, "server exited unexpectedly; the next request starts a new instance");
        self.set_phase(
            Phase::Failed,
            Some(format!("exited unexpectedly: {reason}")),
        );
        *lifecycle = Lifecycle::Stopped;
    }

    /// Stops the server; with `drain`, first waits (up to the request timeout)
    /// for requests in flight to be answered.
    pub async fn stop(&self, reason: &str, drain: bool) {
        let mut lifecycle = self.lifecycle.lock().await;
        if drain {
            let deadline = Instant::now() + self.workload().timeouts.request;
            while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.stop_locked(&mut lifecycle, reason).await;
    }

    async fn stop_locked(&self, lifecycle: &mut Lifecycle, reason: &str) {
        if let Lifecycle::Paused(instance) = &*lifecycle {
            // A frozen server cannot read the end of its stdin and exit, and
            // Podman 4.3 does not stop a paused container: thaw it first.
            if let Err(e) = self.runtime.resume(&self.key).await {
                warn!(error = %e, "resuming before the stop failed; stopping it frozen");
            }
            *lifecycle = Lifecycle::Running(instance.clone());
        }
        let Lifecycle::Running(instance) = &*lifecycle else {
            if let Lifecycle::Failed { .. } = lifecycle {
                *lifecycle = Lifecycle::Stopped;
                self.set_phase(Phase::Stopped, Some(format!("stopped: {reason}")));
            }
            return;
        };
        let instance = instance.clone();
        self.set_phase(Phase::Stopping, Some(reason.to_string()));
        // MCP stdio shutdown: close stdin, give the server a moment, then SIGTERM, SIGKILL.
        instance.bridge.close_stdin();
        let result = self.runtime.stop(&self.key, self.settings.stop_grace).await;
        *lifecycle = Lifecycle::Stopped;
        self.status.lock().unwrap().stops += 1;
        match result {
            Ok(()) => {
                info!(reason, "stopped");
                self.set_phase(Phase::Stopped, Some(format!("stopped: {reason}")));
            }
            Err(e) => {
                warn!(error = %e, "stop failed");
                self.set_phase(Phase::Failed, Some(format!("stop failed: {e}")));
            }
        }
    }

    /// The runtime's key for this server's container.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `sessionMode: Isolated`: a server of the same spec under a key of its own,
    /// for one session of `caller`, within `max_isolated` and, for `caller`'s
    /// client, `max_isolated_per_client` (counting those still starting).
    /// Register its session with [`Server::attach_isolated`], or give the place
    /// back with [`Server::abandon_isolated`].
    pub fn spawn_isolated(&self, caller: &Caller) -> Result<Arc<Server>, RequestError> {
        let limits = self.settings.limits(&self.workload());
        let client = client_key(caller);
        {
            let isolated = self.isolated.lock().unwrap();
            let mut starting = self.isolated_starting.lock().unwrap();
            let reserved: usize = starting.values().sum();
            if isolated.len() + reserved >= limits.max_isolated {
                return Err(RequestError::TooMany {
                    what: "isolated containers of this server",
                    limit: limits.max_isolated,
                });
            }
            let held = isolated
                .iter()
                .filter(|(id, child)| {
                    child
                        .sessions
                        .get(id)
                        .is_some_and(|s| client_key(&s.owner) == client)
                })
                .count();
            let own = held + starting.get(&client).copied().unwrap_or(0);
            if own >= limits.max_isolated_per_client {
                return Err(RequestError::ClientLimit {
                    what: "isolated containers of this server",
                    limit: limits.max_isolated_per_client,
                });
            }
            *starting.entry(client).or_default() += 1;
        }
        let suffix: [u8; 4] = rand::random();
        let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        let key = self.runtime.session_key(&self.key, &format!("s{suffix}"));
        Ok(Server::with_metrics(
            &key,
            (*self.workload()).clone(),
            self.runtime.clone(),
            self.settings.clone(),
            self.metrics.clone(),
            self.catalog.clone(),
        ))
    }

    pub fn attach_isolated(&self, session: &crate::mcp::sessions::Session, child: Arc<Server>) {
        let mut isolated = self.isolated.lock().unwrap();
        isolated.insert(session.id.clone(), child);
        self.release_reservation(&session.owner);
    }

    /// An isolated server that never got its session gives `caller`'s place back.
    pub fn abandon_isolated(&self, caller: &Caller) {
        let _isolated = self.isolated.lock().unwrap();
        self.release_reservation(caller);
    }

    fn release_reservation(&self, caller: &Caller) {
        let mut starting = self.isolated_starting.lock().unwrap();
        let client = client_key(caller);
        if let Some(count) = starting.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                starting.remove(&client);
            }
        }
    }

    /// The isolated server holding session `session_id`, if any.
    pub fn isolated_for(&self, session_id: &str) -> Option<Arc<Server>> {
        self.isolated.lock().unwrap().get(session_id).cloned()
    }

    /// Removes isolated servers whose session ended or expired, with their containers.
    async fn reap_isolated(&self, ended: Option<&str>) {
        let gone: Vec<Arc<Server>> = {
            let mut isolated = self.isolated.lock().unwrap();
            let ids: Vec<String> = isolated
                .iter()
                .filter(|(id, child)| {
                    Some(id.as_str()) == ended || child.sessions.get(id).is_none()
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| isolated.remove(id)).collect()
        };
        for child in gone {
            info!(container_key = %child.key, "session ended: removing its isolated container");
            // A child has no children of its own; boxing breaks the async recursion.
            Box::pin(child.remove()).await;
        }
    }

    /// A client ended session `session_id` of an isolated server: its container goes.
    pub async fn end_isolated(&self, session_id: &str) {
        if let Some(child) = self.isolated_for(session_id) {
            child.sessions.end(session_id);
        }
        self.reap_isolated(Some(session_id)).await;
    }

    /// Stops the server for good and removes its container; waiting requests get
    /// an error, and its sessions, streams and parked exchanges end.
    pub async fn remove(&self) {
        self.reap_isolated(None).await;
        let children: Vec<Arc<Server>> = self
            .isolated
            .lock()
            .unwrap()
            .drain()
            .map(|(_, c)| c)
            .collect();
        for child in children {
            Box::pin(child.remove()).await;
        }
        let mut lifecycle = self.lifecycle.lock().await;
        self.stop_locked(&mut lifecycle, "removed").await;
        if let Err(e) = self.runtime.remove(&self.key).await {
            warn!(error = %e, "removing the container failed");
        }
        *lifecycle = Lifecycle::Removed;
        // Nothing of the server's conversation outlives it: sessions and their
        // streams end, listen streams get their result, parked exchanges go.
        self.sessions.end_all();
    }

    /// Takes a new spec. A running container whose shape changed is drained and
    /// stopped, so the next start uses the new spec; a failed server retries at once.
    pub async fn update(&self, workload: Workload) {
        let changed_shape = self.workload().spec_hash != workload.spec_hash;
        let changed_access = self.workload().access != workload.access;
        {
            let mut status = self.status.lock().unwrap();
            status.image = workload.image.clone();
            status.desired_state = workload.desired_state;
        }
        let children: Vec<Arc<Server>> = self.isolated.lock().unwrap().values().cloned().collect();
        for child in children {
            Box::pin(child.update(workload.clone())).await;
        }
        let limits = self.settings.limits(&workload);
        self.sessions
            .set_limits(limits.max_sessions, limits.max_sessions_per_client);
        *self.workload.write().unwrap() = Arc::new(workload);
        let mut lifecycle = self.lifecycle.lock().await;
        if let Lifecycle::Failed { retry_at, .. } = &mut *lifecycle {
            *retry_at = Instant::now();
        }
        drop(lifecycle);
        if changed_shape {
            self.catalog.invalidate();
            self.stop("spec changed", true).await;
        } else if changed_access {
            self.lists_changed();
        }
    }

    /// What each caller may see changed with the access policy: every session
    /// lists again (the same notifications a server sends when its own lists change).
    fn lists_changed(&self) {
        info!("access policy changed: telling client sessions to list again");
        for method in [
            Method::ToolsListChanged,
            Method::PromptsListChanged,
            Method::ResourcesListChanged,
        ] {
            let notification = jsonrpc::notification(method, None);
            self.sessions
                .route(crate::mcp::bridge::ServerMessage::Notification(
                    notification,
                ));
        }
    }

    /// Restarts a container found running when mcpod started: its MCP session
    /// cannot be resumed, so it gets a clean start and a fresh `initialize`.
    pub async fn adopt_running(self: &Arc<Self>) {
        info!("adopting a running container: restarting it cleanly");
        match self.acquire().await {
            Ok(hold) => drop(hold),
            Err(e) => warn!(error = %e, "restart of an adopted container failed"),
        }
    }

    /// The running instance, without starting one or waiting for a start.
    pub fn running_instance(&self) -> Option<Arc<Instance>> {
        match &*self.lifecycle.try_lock().ok()? {
            // A paused server is alive: what is written to it waits in its stdin pipe.
            Lifecycle::Running(instance) | Lifecycle::Paused(instance)
                if instance.bridge.closed_reason().is_none() =>
            {
                Some(instance.clone())
            }
            _ => None,
        }
    }

    fn idle_for(&self, instance: &Instance) -> Duration {
        let last = (*self.last_activity.lock().unwrap()).max(instance.bridge.last_activity());
        last.elapsed()
    }

    /// Pings a running server that has been quiet for `interval`; one that does
    /// not answer within the request timeout (at most 10 s) is marked Failed and
    /// restarted. A server busy with requests is not probed: those have timeouts.
    async fn check_health(self: &Arc<Self>, interval: Duration, last_probe: &mut Instant) {
        if last_probe.elapsed() < interval {
            return;
        }
        *last_probe = Instant::now();
        // A paused server answers nothing until resumed: it is not probed.
        let Some(instance) = self.running_instance().filter(|_| !self.is_paused()) else {
            return;
        };
        let busy = self.in_flight.load(Ordering::SeqCst) > 0 || instance.bridge.pending() > 0;
        if busy || self.idle_for(&instance) < interval {
            return; // recent traffic showed it alive
        }
        let timeout = self
            .workload()
            .timeouts
            .request
            .min(Duration::from_secs(10));
        let Err(BridgeError::Timeout(after)) = instance.bridge.probe(timeout).await else {
            return; // answered, or exited (the crash watcher handles that)
        };
        let mut lifecycle = self.lifecycle.lock().await;
        if !matches!(&*lifecycle, Lifecycle::Running(current) if Arc::ptr_eq(current, &instance)) {
            return;
        }
        let reason = format!("did not answer a health-check ping within {after:?}");
        warn!(%reason, "restarting");
        self.status.lock().unwrap().health_check_failures += 1;
        self.set_phase(Phase::Failed, Some(reason.clone()));
        self.stop_locked(&mut lifecycle, &reason).await;
        let workload = self.workload();
        if self.start_locked(&mut lifecycle, &workload).await.is_ok() {
            self.set_phase(Phase::Running, Some(format!("restarted: {reason}")));
        }
    }

    /// Background duty: stop when idle, keep AlwaysOn servers up, Disabled ones
    /// down, restart ones that fail their health check.
    async fn supervise(self: Arc<Self>) {
        let mut last_probe = Instant::now();
        let mut learned_for = None;
        loop {
            tokio::time::sleep(self.settings.idle_check_interval).await;
            if Arc::strong_count(&self) == 1 {
                return; // nobody holds this server any more
            }
            // A parked per-request exchange still counts against the request timeout.
            let parked_ttl = self.workload().timeouts.request;
            for id in self.sessions.expire(self.settings.session_ttl, parked_ttl) {
                info!(session = %id, "client session expired");
            }
            self.reap_isolated(None).await;
            let workload = self.workload();
            if let Some(interval) = workload.timeouts.health_check {
                self.check_health(interval, &mut last_probe).await;
            }
            match workload.desired_state {
                DesiredState::AlwaysOn => self.keep_running().await,
                DesiredState::Disabled => self.stop("disabled", false).await,
                DesiredState::OnDemand => {
                    // `catalog: OnDeclaration`: run once to learn it, then idle as usual.
                    if self.due_for_catalog_learning(&mut learned_for)
                        && self.runtime.serves_here(&self.key).await
                    {
                        if let Err(error) = self.acquire().await {
                            warn!(%error, "starting to learn the catalog failed");
                        }
                    }
                    if let Some(idle) = workload.timeouts.idle {
                        self.stop_if_idle(idle).await;
                    }
                    if let Some(pause) = workload.timeouts.pause {
                        self.pause_if_idle(pause).await;
                    }
                }
            }
            if matches!(*self.lifecycle.lock().await, Lifecycle::Removed) {
                return;
            }
        }
    }

    async fn keep_running(self: &Arc<Self>) {
        let due = match &*self.lifecycle.lock().await {
            Lifecycle::Running(instance) | Lifecycle::Paused(instance) => {
                instance.bridge.closed_reason().is_some()
            }
            Lifecycle::Failed { retry_at, .. } => Instant::now() >= *retry_at,
            Lifecycle::Stopped => true,
            Lifecycle::Removed => false,
        };
        // With several router replicas, the one that serves the server keeps it up.
        if due && self.runtime.serves_here(&self.key).await {
            let _ = self.acquire().await;
        }
    }

    /// The idle check and the stop are one decision under the lifecycle lock.
    async fn stop_if_idle(&self, idle_timeout: Duration) {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return;
        }
        let Ok(mut lifecycle) = self.lifecycle.try_lock() else {
            return; // a start or stop is under way
        };
        let (Lifecycle::Running(instance) | Lifecycle::Paused(instance)) = &*lifecycle else {
            return;
        };
        let idle = self.idle_for(instance);
        let busy = self.in_flight.load(Ordering::SeqCst) > 0 || instance.bridge.pending() > 0;
        if busy || idle < idle_timeout {
            return;
        }
        let reason = format!(
            "idle for {}",
            crate::duration::format(Duration::from_secs(idle.as_secs()))
        );
        self.stop_locked(&mut lifecycle, &reason).await;
        self.metrics.count_idle_stop();
    }
}

/// The paused tier (`spec.pauseAfter`): frozen when quiet, resumed by the next
/// request. Both transitions are made under the lifecycle lock, like the idle
/// stop, so a request is either in flight (no pause) or waits for the resume.
impl Server {
    /// Whether the container is frozen now (`false` while the lock is busy:
    /// a start, stop or resume is under way).
    fn is_paused(&self) -> bool {
        self.lifecycle
            .try_lock()
            .is_ok_and(|lifecycle| matches!(*lifecycle, Lifecycle::Paused(_)))
    }

    /// Pauses a running server quiet for `pause_after`: nothing in flight, no
    /// message either way, no start or stop under way.
    async fn pause_if_idle(&self, pause_after: Duration) {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return;
        }
        let Ok(mut lifecycle) = self.lifecycle.try_lock() else {
            return;
        };
        let Lifecycle::Running(instance) = &*lifecycle else {
            return;
        };
        let busy = self.in_flight.load(Ordering::SeqCst) > 0 || instance.bridge.pending() > 0;
        let refused =
            self.pause_refused.lock().unwrap().as_deref() == Some(instance.container_id.as_str());
        if busy || refused || instance.bridge.closed_reason().is_some() {
            return;
        }
        if self.idle_for(instance) < pause_after {
            return;
        }
        let instance = instance.clone();
        if let Err(error) = self.runtime.pause(&self.key).await {
            warn!(%error, "pausing failed; the server keeps running until its idle timeout");
            *self.pause_refused.lock().unwrap() = Some(instance.container_id.clone());
            return;
        }
        *lifecycle = Lifecycle::Paused(instance);
        self.status.lock().unwrap().pauses += 1;
        let quiet = crate::duration::format(pause_after);
        self.set_phase(Phase::Paused, Some(format!("paused: quiet for {quiet}")));
    }

    /// Thaws a paused server for a request. One that died while frozen, or
    /// that cannot be thawed, is stopped instead: the caller then starts a new one.
    async fn resume_locked(&self, lifecycle: &mut Lifecycle, instance: Arc<Instance>) {
        if let Some(reason) = instance.bridge.closed_reason() {
            self.record_crash(lifecycle, &reason);
            return;
        }
        let began = Instant::now();
        match self.runtime.resume(&self.key).await {
            Ok(()) => {
                let took = began.elapsed();
                tracing::debug!(resume_ms = took.as_secs_f64() * 1000.0, "resumed");
                {
                    let mut status = self.status.lock().unwrap();
                    status.resumes += 1;
                    status.last_resume_ms = Some(took.as_secs_f64() * 1000.0);
                }
                self.metrics.resumes.observe(took);
                *lifecycle = Lifecycle::Running(instance);
                self.set_phase(Phase::Running, None);
            }
            Err(error) => {
                warn!(%error, "resuming failed: stopping it; the request starts a new instance");
                self.set_phase(Phase::Failed, Some(format!("resume failed: {error}")));
                instance.bridge.close_stdin();
                if let Err(e) = self.runtime.stop(&self.key, Duration::ZERO).await {
                    warn!(error = %e, "stopping a server that could not be resumed");
                }
                *lifecycle = Lifecycle::Stopped;
            }
        }
    }
}

impl crate::access::Guarded for Server {
    fn name(&self) -> &str {
        Server::name(self)
    }

    fn key(&self) -> &str {
        Server::key(self)
    }

    fn workload(&self) -> Arc<Workload> {
        Server::workload(self)
    }

    fn access_control(&self) -> &crate::access::AccessControl {
        Server::access_control(self)
    }
}

/// Answers from the catalog while a server is stopped (`crate::catalog`).
impl Server {
    /// Whether `server` answers from its catalog now: it is not running (a
    /// running server answers for itself) and has one for its current spec.
    /// Isolated servers start per session, never from a shared catalog; a
    /// `Disabled` one refuses every request, listings too.
    pub fn catalog_answering(&self) -> Option<Arc<catalog::Entry>> {
        let workload = self.workload();
        if workload.session_mode == crate::crd::SessionMode::Isolated
            || workload.desired_state == crate::crd::DesiredState::Disabled
            || self.running_instance().is_some()
        {
            return None;
        }
        self.catalog().current(&workload.spec_hash)
    }

    /// `catalog: OnDeclaration`: whether `server` should be started now to
    /// learn its catalog (once per container spec: `tried` remembers the last).
    pub fn due_for_catalog_learning(&self, tried: &mut Option<String>) -> bool {
        let workload = self.workload();
        let wanted = workload.catalog == crate::crd::Learn::OnDeclaration
            && workload.session_mode == crate::crd::SessionMode::Shared
            && workload.desired_state == crate::crd::DesiredState::OnDemand
            && tried.as_deref() != Some(workload.spec_hash.as_str())
            && self.catalog().current(&workload.spec_hash).is_none();
        if wanted {
            *tried = Some(workload.spec_hash.clone());
        }
        wanted
    }

    /// A listing answered from the catalog of a stopped server, with the client's id.
    pub fn list_from_catalog(&self, message: &Value) -> Option<Value> {
        let list = catalog::List::of(Method::of(message))?;
        let entry = self.catalog_answering()?;
        let id = jsonrpc::id(message);
        if !entry.offers(list) {
            // As MCP answers a method the server did not announce; no start to learn that.
            let text = format!(
                "Method not found: MCP server '{}' offers no {} (capability '{}')",
                self.name(),
                list.key(),
                list.capability()
            );
            return Some(jsonrpc::error(id, jsonrpc::METHOD_NOT_FOUND, text));
        }
        // Offered but not learned (the server failed to list it): it answers itself.
        entry.items(list)?;
        tracing::debug!(list = list.key(), "answered from the catalog");
        Some(jsonrpc::result(id, entry.result(list)))
    }

    /// The server's `InitializeResult`: from the catalog while it is stopped,
    /// else from the running instance (starting it if needed).
    pub async fn initialize_result(self: &Arc<Self>) -> Result<Value, RequestError> {
        self.read_initialize_result(Value::clone).await
    }

    /// The `serverInfo` of [`Server::initialize_result`], without copying the
    /// rest of it (instructions and capabilities can be kilobytes): stamped
    /// on every 2026-07-28 result.
    pub async fn server_info(self: &Arc<Self>) -> Result<Value, RequestError> {
        self.read_initialize_result(|init| init["serverInfo"].clone())
            .await
    }

    async fn read_initialize_result<T>(
        self: &Arc<Self>,
        take: impl FnOnce(&Value) -> T,
    ) -> Result<T, RequestError> {
        if let Some(entry) = self.catalog_answering() {
            return Ok(take(&entry.initialize));
        }
        let hold = self.acquire().await?;
        Ok(take(&hold.instance.initialize_result))
    }
}
