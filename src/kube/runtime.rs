//! The Kubernetes runtime: MCP servers run as pods that `mcpod operator` creates
//! and scales to zero; `mcpod router` uses this runtime to wake a server (an
//! annotation on its MCPServer), wait for its pod to run, and attach to the
//! container's stdin/stdout through the API server (`pods/attach`).
//!
//! Activity lives in the cluster, not in one router's memory: every byte through
//! an attach marks the server active, and a throttled patch of
//! `mcpod.dev/last-activity` tells the operator, so several router replicas agree.
//!
//! `sessionMode: Isolated`: a client session's pod is asked for with an annotation
//! of its own on the server, `sessions.mcpod.dev/<session>`, holding the session's
//! last activity; the router removes it when the session ends, and the operator
//! keeps one pod per fresh session annotation (see [`super::operator`]).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, ListParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::io::AsyncWrite;
use tokio_util::io::ReaderStream;
use tracing::{debug, info, warn, Instrument};

use super::annotations::{
    annotate, refresh_annotation, remove_annotation, session_annotation, shortest_idle,
    ANNOTATION_ACTIVITY, ANNOTATION_WAKE,
};
use super::delete_pod;
use super::ownership::{Ownership, Placement};
use super::pod::{pod_name, session_pod_name, CONTAINER_NAME, LABEL_SESSION};
use super::pod_state::{observe, PodState};
use crate::crd::{MCPServer, MCPServerGroup};
use crate::manifests::{Loaded, Manifests};
use crate::reconcile::Reconciler;
use crate::runtime::{Attached, Managed, Output, Runtime};
use crate::workload::{Workload, LABEL_MANAGED_BY, LABEL_SERVER, LABEL_SPEC_HASH, MANAGED_BY};
use crate::{Error, Result};

/// Separates the server from the session in a runtime key: `namespace/name#session`
/// (never part of a server name, which is a DNS label).
const SESSION_SEPARATOR: char = '#';
/// The longest gap between two activity reports of one busy server.
const MAX_ACTIVITY_INTERVAL: Duration = Duration::from_secs(10);
/// Bytes buffered per attach stream before the API connection waits for the reader.
const ATTACH_BUFFER: usize = 64 * 1024;

/// Parses a runtime key: `namespace/name`, or `name` in the runtime's namespace.
fn split_key<'a>(key: &'a str, default_namespace: &'a str) -> (&'a str, &'a str) {
    key.split_once('/').unwrap_or((default_namespace, key))
}

/// What a runtime key names: a server's shared pod (`namespace/name`), or the pod
/// of one client session of it (`namespace/name#session`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PodKey<'a> {
    namespace: &'a str,
    server: &'a str,
    session: Option<&'a str>,
}

impl<'a> PodKey<'a> {
    fn parse(key: &'a str, default_namespace: &'a str) -> Self {
        let (namespace, rest) = split_key(key, default_namespace);
        let (server, session) = match rest.split_once(SESSION_SEPARATOR) {
            Some((server, session)) => (server, Some(session)),
            None => (rest, None),
        };
        PodKey {
            namespace,
            server,
            session,
        }
    }

    fn pod_name(&self) -> String {
        match self.session {
            Some(session) => session_pod_name(self.server, session),
            None => pod_name(self.server),
        }
    }

    /// The annotation the attach reports activity to.
    fn activity_annotation(&self) -> String {
        match self.session {
            Some(session) => session_annotation(session),
            None => ANNOTATION_ACTIVITY.to_string(),
        }
    }
}

pub struct KubeRuntime {
    client: Client,
    /// Namespace of keys that name none, and of `list` when not cluster-wide.
    namespace: String,
    all_namespaces: bool,
    /// How often the router looks at a pod it waits for.
    poll_interval: Duration,
    /// When this router started: a running pod created before then holds an MCP
    /// session of a previous router, which cannot be resumed.
    started_at: chrono::DateTime<chrono::Utc>,
    /// With several router replicas: the Leases that say which one attaches to
    /// a server's pod (`None`: this router is the only one).
    ownership: Option<Arc<Ownership>>,
}

impl KubeRuntime {
    pub fn new(client: Client, namespace: &str, all_namespaces: bool) -> Self {
        KubeRuntime {
            client,
            namespace: namespace.to_string(),
            all_namespaces,
            poll_interval: Duration::from_millis(250),
            started_at: chrono::Utc::now(),
            ownership: None,
        }
    }

    /// Attaches only to the pods of servers whose Lease this replica holds.
    pub fn with_ownership(mut self, ownership: Arc<Ownership>) -> Self {
        self.ownership = Some(ownership);
        self
    }

    /// Polls faster or slower than the default 250 ms (tests use a short one).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn servers(&self, namespace: &str) -> Api<MCPServer> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Asks the operator for the server's pod.
    pub async fn request_wake(&self, namespace: &str, server: &str) -> Result<()> {
        info!(namespace, server, "requesting wake");
        annotate(
            &self.servers(namespace),
            server,
            ANNOTATION_WAKE,
            Utc::now(),
        )
        .await
    }

    /// Asks the operator for the pod `target` names: the server's wake
    /// annotation, or the session's own annotation.
    async fn request_pod(&self, target: &PodKey<'_>) -> Result<()> {
        let Some(session) = target.session else {
            return self.request_wake(target.namespace, target.server).await;
        };
        info!(
            namespace = target.namespace,
            server = target.server,
            session,
            "requesting a session pod"
        );
        annotate(
            &self.servers(target.namespace),
            target.server,
            &session_annotation(session),
            Utc::now(),
        )
        .await
    }

    /// Waits for a running pod that replaces `old`: another pod (by uid), created
    /// after this router started.
    async fn wait_replacement(
        &self,
        namespace: &str,
        name: &str,
        old: &Pod,
        timeout: Duration,
    ) -> Result<Pod> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let pod = self.wait_pod_running(namespace, name, left).await?;
            let same = old.uid().is_some() && pod.uid() == old.uid();
            if !same && !predates(&pod, self.started_at) {
                return Ok(pod);
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// With several replicas: makes sure this one holds the server's Lease, and
    /// when it has just taken the server over, the uid of the pod it found: that
    /// pod may hold the previous owner's MCP session.
    async fn take_ownership(&self, target: &PodKey<'_>) -> Result<Option<String>> {
        let Some(ownership) = &self.ownership else {
            return Ok(None);
        };
        let taken_over = ownership
            .ensure_held(target.namespace, target.server)
            .await?;
        // A session's pod is never inherited: sessions live in one replica's memory.
        if !taken_over || target.session.is_some() {
            return Ok(None);
        }
        let name = target.pod_name();
        let found = self
            .pods(target.namespace)
            .get_opt(&name)
            .await
            .map_err(Error::kube(format!("get pod {}/{name}", target.namespace)))?;
        Ok(found
            .filter(|pod| observe(pod) != PodState::Terminating)
            .and_then(|pod| pod.uid()))
    }

    /// Waits, up to `timeout`, for the server's pod to run; fails at once when
    /// the pod cannot run (bad image, crash loop), naming why.
    pub async fn wait_running(
        &self,
        namespace: &str,
        server: &str,
        timeout: Duration,
    ) -> Result<Pod> {
        self.wait_pod_running(namespace, &pod_name(server), timeout)
            .await
    }

    /// [`KubeRuntime::wait_running`] for any pod by name (a session's, too).
    async fn wait_pod_running(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<Pod> {
        let pods = self.pods(namespace);
        let mut last =
            "no pod yet (is `mcpod operator` running and watching this namespace?)".to_string();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pod = pods
                .get_opt(name)
                .await
                .map_err(Error::kube(format!("get pod {namespace}/{name}")))?;
            if let Some(pod) = pod {
                match observe(&pod) {
                    PodState::Running { .. } => return Ok(pod),
                    PodState::Failed { message, .. } => {
                        return Err(Error::Cluster(format!("pod {namespace}/{name}: {message}")))
                    }
                    PodState::Pending { reason, .. } => last = format!("pod is pending ({reason})"),
                    PodState::Terminating => last = "the previous pod is still terminating".into(),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Cluster(format!(
                    "pod {namespace}/{name} did not run within {timeout:?}: {last}"
                )));
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    async fn attach(&self, target: &PodKey<'_>, workload: &Workload) -> Result<Attached> {
        let namespace = target.namespace;
        let name = target.pod_name();
        let params = AttachParams {
            container: Some(CONTAINER_NAME.into()),
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
            max_stdin_buf_size: Some(ATTACH_BUFFER),
            max_stdout_buf_size: Some(ATTACH_BUFFER),
            max_stderr_buf_size: Some(ATTACH_BUFFER),
        };
        let mut process = self
            .pods(namespace)
            .attach(&name, &params)
            .await
            .map_err(Error::kube(format!("attach to pod {namespace}/{name}")))?;
        let missing = |what: &str| {
            Error::Cluster(format!(
                "attach to pod {namespace}/{name}: no {what} stream"
            ))
        };
        let stdin = process.stdin().ok_or_else(|| missing("stdin"))?;
        let stdout = process.stdout().ok_or_else(|| missing("stdout"))?;
        let stderr = process.stderr().ok_or_else(|| missing("stderr"))?;
        let activity = ActivityReporter::spawn(
            self.servers(namespace),
            ActivityTarget {
                server: target.server.to_string(),
                annotation: target.activity_annotation(),
                // A session's annotation is the session: never written back once removed.
                only_while_present: target.session.is_some(),
            },
            activity_interval(workload),
        );
        // stderr is read too: an undrained stream would stall the whole attach.
        let output = futures::stream::select(
            ReaderStream::new(stdout).map_ok(Output::Stdout),
            ReaderStream::new(stderr).map_ok(Output::Stderr),
        );
        let stream_activity = activity.clone();
        let output = output
            .inspect(move |_| stream_activity.touch())
            // The attach task is aborted when `process` drops: the stream owns it.
            .map(move |item| {
                let _attached = &process;
                item
            })
            .boxed();
        Ok(Attached {
            container_id: name,
            output,
            stdin: Box::pin(ActiveWriter {
                inner: stdin,
                activity,
            }),
        })
    }
}

/// How often a busy server's activity is reported: a quarter of the shortest
/// idle time the operator may apply (the router's own workload has no idle
/// timeout: idle stops are the operator's), between 1 s and 10 s.
fn activity_interval(workload: &Workload) -> Duration {
    let shortest = workload
        .timeouts
        .idle
        .map_or(shortest_idle(workload), |idle| {
            idle.max(shortest_idle(workload))
        });
    (shortest / 4).clamp(Duration::from_secs(1), MAX_ACTIVITY_INTERVAL)
}

/// Last stdio traffic of one attach, reported to the cluster by a background
/// task at most once per interval; the task ends (after a last report) when
/// the attach's streams are dropped.
struct ActivityReporter {
    last_ms: AtomicI64,
}

/// Where an attach's activity is reported: an annotation on an MCPServer.
struct ActivityTarget {
    server: String,
    annotation: String,
    /// Update the annotation only while it exists (a session's), never create it.
    only_while_present: bool,
}

impl ActivityTarget {
    /// Reports `at`; `Ok(false)` when the annotation is gone and reporting should end.
    async fn report(&self, api: &Api<MCPServer>, at: DateTime<Utc>) -> Result<bool> {
        if self.only_while_present {
            refresh_annotation(api, &self.server, &self.annotation, at).await
        } else {
            annotate(api, &self.server, &self.annotation, at)
                .await
                .map(|()| true)
        }
    }
}

impl ActivityReporter {
    fn spawn(
        api: Api<MCPServer>,
        target: ActivityTarget,
        interval: Duration,
    ) -> Arc<ActivityReporter> {
        let reporter = Arc::new(ActivityReporter {
            last_ms: AtomicI64::new(Utc::now().timestamp_millis()),
        });
        let weak = Arc::downgrade(&reporter);
        let span = tracing::debug_span!("activity", server = %target.server, annotation = %target.annotation);
        tokio::spawn(report_loop(api, target, weak, interval).instrument(span));
        reporter
    }

    fn touch(&self) {
        self.last_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }
}

async fn report_loop(
    api: Api<MCPServer>,
    target: ActivityTarget,
    reporter: Weak<ActivityReporter>,
    interval: Duration,
) {
    // The wake annotation already marked the start as activity.
    let mut reported = Utc::now().timestamp_millis();
    loop {
        tokio::time::sleep(interval).await;
        let (last, alive) = match reporter.upgrade() {
            Some(r) => (r.last_ms.load(Ordering::Relaxed), true),
            None => (reported, false),
        };
        if last > reported {
            if let Some(at) = DateTime::from_timestamp_millis(last) {
                match target.report(&api, at).await {
                    Ok(true) => reported = last,
                    Ok(false) => {
                        debug!("the session's annotation is gone: activity reporting ends");
                        return;
                    }
                    Err(e) => warn!(error = %e, "reporting activity failed"),
                }
            }
        }
        if !alive {
            debug!("attach closed: activity reporting ends");
            return;
        }
    }
}

/// The attach's stdin, marking activity on every write.
struct ActiveWriter<W> {
    inner: W,
    activity: Arc<ActivityReporter>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for ActiveWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Runtime for KubeRuntime {
    /// The holder of the server's Lease serves it (taking the Lease when it is free).
    async fn serves_here(&self, key: &str) -> bool {
        let Some(ownership) = &self.ownership else {
            return true;
        };
        let target = PodKey::parse(key, &self.namespace);
        matches!(
            ownership.placement(target.namespace, target.server).await,
            Ok(Placement::Local)
        )
    }

    /// Wakes the server and attaches to its pod. Unlike a Podman container, a pod
    /// found running is attached as it is: another router replica may be using it,
    /// and the operator, not a router, decides when a pod goes away.
    /// A session key (`namespace/name#session`) gets the session's own pod the same way.
    /// With several replicas, only the holder of the server's Lease attaches, and
    /// a pod it inherits from the previous holder is replaced, not re-initialized.
    async fn start(&self, key: &str, workload: &Workload) -> Result<Attached> {
        let target = PodKey::parse(key, &self.namespace);
        let (namespace, name) = (target.namespace, target.pod_name());
        let inherited = self.take_ownership(&target).await?;
        self.request_pod(&target).await?;
        let pod = self
            .wait_pod_running(namespace, &name, workload.timeouts.startup)
            .await?;
        let from_another_router = if predates(&pod, self.started_at) {
            Some("it predates this router")
        } else if inherited.is_some() && pod.uid() == inherited {
            Some("this replica took the server over from another")
        } else {
            None
        };
        if let Some(why) = from_another_router {
            // As on Podman: restart it cleanly rather than send a second `initialize`.
            info!(pod = %pod.name_any(), why, "the pod's MCP session cannot be resumed; replacing it");
            delete_pod(&self.pods(namespace), &name).await?;
            self.request_pod(&target).await?;
            self.wait_replacement(namespace, &name, &pod, workload.timeouts.startup)
                .await?;
        }
        self.attach(&target, workload).await
    }

    /// Deletes the pod: stdin was closed by the caller, and the kubelet gives the
    /// server the pod's grace period after SIGTERM.
    async fn stop(&self, key: &str, _grace: Duration) -> Result<()> {
        self.remove(key).await
    }

    /// A session's pod goes with its annotation, removed first so that the
    /// operator does not make the pod again.
    async fn remove(&self, key: &str) -> Result<()> {
        let target = PodKey::parse(key, &self.namespace);
        if let Some(session) = target.session {
            remove_annotation(
                &self.servers(target.namespace),
                target.server,
                &session_annotation(session),
            )
            .await?;
        }
        delete_pod(&self.pods(target.namespace), &target.pod_name()).await
    }

    async fn list(&self) -> Result<Vec<Managed>> {
        let api: Api<Pod> = if self.all_namespaces {
            Api::all(self.client.clone())
        } else {
            self.pods(&self.namespace)
        };
        let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY}");
        let pods = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(Error::kube("list mcpod pods"))?;
        Ok(pods
            .items
            .iter()
            .filter_map(|pod| {
                let labels = pod.metadata.labels.as_ref()?;
                let server = labels.get(LABEL_SERVER)?.clone();
                let namespace = pod.namespace()?;
                let key = match labels.get(LABEL_SESSION) {
                    Some(session) => format!("{namespace}/{server}{SESSION_SEPARATOR}{session}"),
                    None => format!("{namespace}/{server}"),
                };
                Some(Managed {
                    key,
                    server,
                    id: pod.uid().unwrap_or_else(|| pod.name_any()),
                    running: matches!(observe(pod), PodState::Running { .. }),
                    paused: false,
                    spec_hash: labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn exit_reason(&self, key: &str) -> Option<String> {
        let target = PodKey::parse(key, &self.namespace);
        let pod = self
            .pods(target.namespace)
            .get_opt(&target.pod_name())
            .await
            .ok()??;
        match observe(&pod) {
            PodState::Failed { message, .. } => Some(message),
            PodState::Terminating => Some("pod is being deleted".into()),
            _ => None,
        }
    }

    /// `namespace/name#session`: parsed back by the runtime, unambiguous because
    /// server names never hold a `#`.
    fn session_key(&self, key: &str, session: &str) -> String {
        format!("{key}{SESSION_SEPARATOR}{session}")
    }
}

/// Keeps `reconciler` equal to the MCPServers in the cluster (the router's
/// counterpart of watching a manifest directory): every change after the
/// initial list applies the whole set; servers being deleted are left out.
pub async fn sync_servers(api: Api<MCPServer>, reconciler: Arc<Reconciler>) {
    follow(api, "MCPServers", move |servers| {
        let reconciler = reconciler.clone();
        async move {
            let servers = servers
                .iter()
                .map(|s| Loaded {
                    file: PathBuf::from(format!(
                        "mcpservers/{}/{}",
                        s.namespace().unwrap_or_default(),
                        s.name_any()
                    )),
                    server: (**s).clone(),
                })
                .collect();
            reconciler
                .apply(Manifests {
                    servers,
                    ..Default::default()
                })
                .await;
        }
    })
    .await;
}

/// Keeps the reconciler's groups equal to the MCPServerGroups in the cluster,
/// so `/groups/{namespace}/{name}/mcp` serves what is declared now.
pub async fn sync_groups(api: Api<MCPServerGroup>, reconciler: Arc<Reconciler>) {
    follow(api, "MCPServerGroups", move |groups| {
        reconciler.set_groups(groups.iter().map(|g| (**g).clone()).collect());
        std::future::ready(())
    })
    .await;
}

/// Watches the `K`s of `api` and, after the first complete listing, hands
/// every new state of the whole set (less what is being deleted) to `apply`.
async fn follow<K, F, Applied>(api: Api<K>, kinds: &str, mut apply: F)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: FnMut(Vec<Arc<K>>) -> Applied,
    Applied: std::future::Future<Output = ()>,
{
    let (reader, writer) = reflector::store();
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .boxed();
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Ok(watcher::Event::InitDone) => listed = true,
            Ok(_) if !listed => continue,
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "watching {kinds} failed; retrying with backoff");
                continue;
            }
        }
        let current = reader
            .state()
            .into_iter()
            .filter(|k| k.meta().deletion_timestamp.is_none())
            .collect();
        apply(current).await;
    }
}

/// Whether `pod` was created before `since` (a pod with no creation time is taken
/// as new). Creation times have whole seconds, so the second `since` falls in counts as new.
fn predates(pod: &Pod, since: chrono::DateTime<chrono::Utc>) -> bool {
    let since_second = since.timestamp();
    pod.metadata
        .creation_timestamp
        .as_ref()
        .and_then(|time| chrono::DateTime::parse_from_rfc3339(&time.0.to_string()).ok())
        .is_some_and(|created| created.timestamp() < since_second)
}

#[cfg(test)]
mod predates_tests {
    use super::*;

    fn pod_created(at: Option<&str>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.creation_timestamp =
            at.map(|t| serde_json::from_value(serde_json::json!(t)).expect("an RFC 3339 time"));
        pod
    }

    #[test]
    fn pods_from_before_the_router_are_replaced_newer_ones_kept() {
        let since = chrono::DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .to_utc();
        assert!(predates(&pod_created(Some("2026-11-25T11:59:59Z")), since));
        assert!(!predates(&pod_created(Some("2026-11-25T12:00:01Z")), since));
        assert!(!predates(&pod_created(None), since));
        let mid_second = chrono::DateTime::parse_from_rfc3339("2026-11-25T12:00:00.700Z")
            .unwrap()
            .to_utc();
        assert!(
            !predates(&pod_created(Some("2026-11-25T12:00:00Z")), mid_second),
            "same second: new"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_keys_and_activity_interval() {
        assert_eq!(split_key("ns/time", "home"), ("ns", "time"));
        assert_eq!(split_key("time", "home"), ("home", "time"));
        let shared = PodKey::parse("ns/time", "home");
        assert_eq!((shared.server, shared.session), ("time", None));
        assert_eq!(shared.pod_name(), "mcpod-time");
        assert_eq!(shared.activity_annotation(), ANNOTATION_ACTIVITY);
        let session = PodKey::parse("ns/time#s0a1b2c3d", "home");
        assert_eq!(
            (session.namespace, session.server, session.session),
            ("ns", "time", Some("s0a1b2c3d"))
        );
        assert_eq!(session.pod_name(), "mcpod-time-s0a1b2c3d");
        assert_eq!(
            session.activity_annotation(),
            "sessions.mcpod.dev/s0a1b2c3d"
        );
        let interval = |yaml: &str, router: bool| {
            let spec = serde_yaml::from_str(yaml).unwrap();
            let mut w = Workload::resolve(
                "t",
                &spec,
                &Default::default(),
                crate::workload::Target::Kubernetes,
            )
            .unwrap();
            if router {
                w.timeouts.idle = None; // as Reconciler::for_kubernetes has it
            }
            activity_interval(&w)
        };
        // A quarter of max(idle, request + 5 s), between 1 s and 10 s.
        assert_eq!(
            interval("image: x\nidleTimeout: 8s\nrequestTimeout: 3s", false),
            Duration::from_secs(2)
        );
        assert_eq!(
            interval("image: x\nrequestTimeout: 3s", true),
            Duration::from_secs(2)
        );
        assert_eq!(
            interval("image: x\nidleTimeout: 8s", false),
            Duration::from_millis(8750)
        );
        assert_eq!(interval("image: x", false), MAX_ACTIVITY_INTERVAL);
        assert_eq!(
            interval("image: x\nrequestTimeout: 1s\nidleTimeout: 1s", true),
            Duration::from_millis(1500)
        );
    }
}
