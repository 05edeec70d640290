//! `mcpod operator`: a kube-runtime Controller over MCPServer resources that
//! owns one pod per running server and none while it is scaled to zero.
//!
//! Each reconcile reads the MCPServer and its pod, [`decide`]s one change to its pod (create,
//! adopt, delete or keep), takes it, and writes the status it observed with
//! server-side apply. Routers ask for a pod through the `wake-requested-at`
//! annotation and report use through `last-activity`; a server whose last
//! wake or activity is older than its idle timeout is scaled to zero.
//!
//! `sessionMode: Isolated`: no shared pod, but one pod per client session that a
//! router asked for with a `sessions.mcpod.dev/<session>` annotation (its value is
//! the session's last activity). A session pod goes when its annotation does (the
//! session ended) or goes stale (idle timeout; the stale annotation is removed too).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::watcher;
use kube::runtime::Controller;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, info_span, warn, Instrument};

use super::annotations::{
    annotation_pointer, session_annotation, shortest_idle, ANNOTATION_ACTIVITY, ANNOTATION_WAKE,
    SESSION_ANNOTATION_PREFIX,
};
use super::election::Election;
use super::ownership;
use super::pod::{
    is_valid_session_key, network_policy_for, pod_for, pod_name, session_pod_for, session_pod_name,
    LABEL_SESSION,
};
use super::pod_state::{is_scheduled, observe, FailureKind, PodState};
use super::{delete_pod, FIELD_MANAGER};
use crate::backoff::backoff;
use crate::crd::{Condition, DesiredState, MCPServer, MCPServerStatus, Phase, SessionMode};
use crate::workload::{
    Defaults, Target, Workload, LABEL_MANAGED_BY, LABEL_SERVER, LABEL_SPEC_HASH, MANAGED_BY,
};
use crate::{Error, Result};

/// Held on every MCPServer until its pod is gone.
pub const FINALIZER: &str = "mcpod.dev/cleanup";
/// Longest wait between two looks at a server, whatever happens.
const RESYNC: Duration = Duration::from_secs(300);

/// What the operator watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One namespace (a namespace-scoped install with a Role).
    Namespace(String),
    /// Every namespace (a cluster-wide install with a ClusterRole).
    Cluster,
}

/// Shared by every reconcile.
pub struct Context {
    client: Client,
    recorder: Recorder,
    defaults: Defaults,
    /// Consecutive failed reconciles per server (`namespace/name`), for backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, defaults: Defaults) -> Arc<Context> {
        let reporter = Reporter {
            controller: "mcpod".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            defaults,
            failures: Mutex::new(HashMap::new()),
        })
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs the controller until SIGTERM or Ctrl-C. With an `election`, only while
/// this replica leads: it stands by until then, and stops (with an error, so
/// its container restarts as a standby) if it loses the lead.
pub async fn run(
    client: Client,
    scope: Scope,
    defaults: Defaults,
    election: Option<Election>,
) -> Result<()> {
    let (servers, pods): (Api<MCPServer>, Api<Pod>) = match &scope {
        Scope::Namespace(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        Scope::Cluster => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // Fail early, with a clear message, when the CRD or the permission to read it is missing.
    servers
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|e| match Error::kube("list MCPServers")(e) {
            Error::Kube { context, source } => Error::Cluster(format!(
                "{context}: {source} (is the CRD installed? `kubectl apply -f crds/mcpserver.yaml`)"
            )),
            other => other,
        })?;
    let lease = match &election {
        Some(election) => tokio::select! {
            lease = election.lead() => Some(lease?),
            _ = crate::shutdown_signal() => return Ok(()),
        },
        None => None,
    };
    info!(?scope, "operator watching MCPServers");
    let (groups, group_servers) = match &scope {
        Scope::Namespace(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        Scope::Cluster => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let groups = super::groups::run(groups, group_servers, client.clone());
    let ctx = Context::new(client, defaults);
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let controller = Controller::new(servers, watcher::Config::default())
        .owns(pods, owned)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(server = %object.name, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        });
    // Both controllers stop on the same signal.
    let controller = futures::future::join(controller, groups);
    match (election, lease) {
        (Some(election), Some(lease)) => tokio::select! {
            _ = controller => {
                election.release(lease).await;
                info!("operator stopped");
                Ok(())
            }
            lost = election.keep(lease.clone()) => Err(lost),
        },
        _ => {
            controller.await;
            info!("operator stopped");
            Ok(())
        }
    }
}

fn key_of(server: &MCPServer) -> String {
    format!(
        "{}/{}",
        server.namespace().unwrap_or_default(),
        server.name_any()
    )
}

/// One reconcile: the finalizer helper around [`apply`] and [`cleanup`].
pub async fn reconcile(server: Arc<MCPServer>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = server.namespace().ok_or(Error::MissingObjectKey {
        kind: "MCPServer",
        field: "metadata.namespace",
    })?;
    let key = key_of(&server);
    let span = info_span!("reconcile", server = %key);
    let api: Api<MCPServer> = Api::namespaced(ctx.client.clone(), &namespace);
    let action = finalizer(&api, FINALIZER, server, |event| async {
        match event {
            finalizer::Event::Apply(server) => apply(&server, &ctx).await,
            finalizer::Event::Cleanup(server) => cleanup(&server, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(from_finalizer)?;
    ctx.failures().remove(&key);
    Ok(action)
}

fn from_finalizer(error: finalizer::Error<Error>) -> Error {
    match error {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) => Error::kube("add the finalizer")(e),
        finalizer::Error::RemoveFinalizer(e) => Error::kube("remove the finalizer")(e),
        other => Error::Cluster(other.to_string()),
    }
}

/// Requeues a failed server with exponential backoff (1 s, 2 s, 4 s … 5 min), per server.
pub fn error_policy(server: Arc<MCPServer>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(&server);
    let failures = {
        let mut failures = ctx.failures();
        let count = failures.entry(key.clone()).or_insert(0);
        *count += 1;
        *count
    };
    let delay = backoff(failures);
    warn!(server = %key, error = %error, failures, retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// Why the operator deletes a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum StopReason {
    /// No wake or activity for this long (at least the idle timeout).
    Idle(Duration),
    Disabled,
    SpecChanged,
    /// The pod itself failed (phase Failed, e.g. evicted); a wake makes a new one.
    PodFailed,
    /// `sessionMode: Isolated`: the server has session pods only, no shared one.
    Isolated,
    /// A session pod whose session annotation is gone (or cannot name a pod).
    SessionEnded,
}

/// The one change a reconcile makes.
#[derive(Debug, Clone, PartialEq)]
pub enum PodChange {
    Keep,
    /// Create the pod and its NetworkPolicy.
    Create,
    /// Put an owner reference on a pod mcpod labelled but nobody owns
    /// (left by an earlier install), instead of replacing it.
    Adopt,
    Delete(StopReason),
}

/// Decides the change for a server, from its spec, annotations and pod only.
pub fn decide(
    server: &MCPServer,
    workload: Option<&Workload>,
    pod: Option<&Pod>,
    now: DateTime<Utc>,
) -> Result<PodChange> {
    decide_pod(server, workload, pod, |workload| {
        wanted(server, workload, pod, now)
    })
}

/// The change for one pod of a server (its shared pod or a session's), given
/// `wanted`: whether the server should have that pod now, and if not, why not.
fn decide_pod(
    server: &MCPServer,
    workload: Option<&Workload>,
    pod: Option<&Pod>,
    wanted: impl FnOnce(&Workload) -> Result<(), StopReason>,
) -> Result<PodChange> {
    if let Some(pod) = pod {
        if !is_managed(pod, &server.name_any()) {
            return Err(Error::Cluster(format!(
                "pod {}/{} exists but is not managed by mcpod (label {LABEL_MANAGED_BY}={MANAGED_BY}); delete or rename it",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            )));
        }
        if observe(pod) == PodState::Terminating {
            return Ok(PodChange::Keep);
        }
        if !is_owned_by(pod, server) {
            return Ok(PodChange::Adopt);
        }
    }
    // An invalid spec leaves a running pod as it was, like a broken manifest file does.
    let Some(workload) = workload else {
        return Ok(PodChange::Keep);
    };
    Ok(match (pod, wanted(workload)) {
        (None, Ok(())) => PodChange::Create,
        (None, Err(_)) => PodChange::Keep,
        (Some(_), Err(reason)) => PodChange::Delete(reason),
        (Some(pod), Ok(())) => {
            let wanted = pod_for(workload, None, None);
            if pod.labels().get(LABEL_SPEC_HASH) != wanted.labels().get(LABEL_SPEC_HASH) {
                PodChange::Delete(StopReason::SpecChanged)
            } else if matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed" | "Succeeded")
            ) {
                PodChange::Delete(StopReason::PodFailed)
            } else {
                PodChange::Keep
            }
        }
    })
}

/// Whether the server should have a pod now; if not, why not.
fn wanted(
    server: &MCPServer,
    workload: &Workload,
    pod: Option<&Pod>,
    now: DateTime<Utc>,
) -> Result<(), StopReason> {
    match workload.desired_state {
        DesiredState::Disabled => Err(StopReason::Disabled),
        DesiredState::AlwaysOn => Ok(()),
        DesiredState::OnDemand => {
            let Some(last) = last_activity(server, pod) else {
                return Err(StopReason::Idle(Duration::ZERO)); // never woken
            };
            let idle_for = (now - last).to_std().unwrap_or_default();
            match idle_limit(workload) {
                Some(limit) if idle_for >= limit => Err(StopReason::Idle(idle_for)),
                _ => Ok(()),
            }
        }
    }
}

/// The idle timeout, but never shorter than a request may take: a request is
/// activity when it is written, and its answer must not find the pod gone.
fn idle_limit(workload: &Workload) -> Option<Duration> {
    let idle = workload.timeouts.idle?;
    Some(idle.max(shortest_idle(workload)))
}

fn annotation_time(server: &MCPServer, annotation: &str) -> Option<DateTime<Utc>> {
    let text = server.annotations().get(annotation)?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The client sessions routers asked pods for (`sessions.mcpod.dev/<session>`):
/// session → (annotation value, its time; `None` when it is no RFC 3339 time).
pub fn session_annotations(
    server: &MCPServer,
) -> BTreeMap<String, (String, Option<DateTime<Utc>>)> {
    server
        .annotations()
        .iter()
        .filter_map(|(key, value)| {
            let session = key.strip_prefix(SESSION_ANNOTATION_PREFIX)?;
            let at = DateTime::parse_from_rfc3339(value)
                .ok()
                .map(|t| t.with_timezone(&Utc));
            Some((session.to_string(), (value.clone(), at)))
        })
        .collect()
}

/// Whether a session's pod should exist now, from its last activity (`None`:
/// no usable annotation). A session outlives no idle timeout, `AlwaysOn` or not:
/// its annotation is the only sign the session still exists.
fn session_wanted(
    workload: &Workload,
    session: &str,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), StopReason> {
    let Some(last) = last.filter(|_| is_valid_session_key(session)) else {
        return Err(StopReason::SessionEnded);
    };
    let idle_for = (now - last).to_std().unwrap_or_default();
    if let Some(limit) = idle_limit(workload) {
        if idle_for >= limit {
            return Err(StopReason::Idle(idle_for));
        }
    }
    if workload.desired_state == DesiredState::Disabled {
        return Err(StopReason::Disabled);
    }
    Ok(())
}

/// What to do about a server's client sessions.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionPlan {
    /// One change per session (with an annotation, a pod, or both), by session key.
    pub changes: BTreeMap<String, PodChange>,
    /// Session annotations to remove (key → the value seen): stale or unusable.
    pub forget: BTreeMap<String, String>,
}

/// Decides the change for every session of a server from its session annotations
/// and the session pods found (each labelled with its session).
pub fn plan_sessions(
    server: &MCPServer,
    workload: Option<&Workload>,
    session_pods: &[Pod],
    now: DateTime<Utc>,
) -> Result<SessionPlan> {
    let annotations = session_annotations(server);
    let pods: BTreeMap<&str, &Pod> = session_pods
        .iter()
        .filter_map(|pod| Some((pod.labels().get(LABEL_SESSION)?.as_str(), pod)))
        .collect();
    let sessions: BTreeSet<&str> = annotations
        .keys()
        .map(String::as_str)
        .chain(pods.keys().copied())
        .collect();
    let mut plan = SessionPlan::default();
    for session in sessions {
        let annotation = annotations.get(session);
        let last = annotation.and_then(|(_, at)| *at);
        let pod = pods.get(session).copied();
        let mut verdict = None;
        let change = decide_pod(server, workload, pod, |workload| {
            let wanted = session_wanted(workload, session, last, now);
            verdict = Some(wanted.clone());
            wanted
        })?;
        let stale = matches!(
            verdict,
            Some(Err(StopReason::Idle(_) | StopReason::SessionEnded))
        );
        if let (true, Some((value, _))) = (stale, annotation) {
            plan.forget.insert(session.to_string(), value.clone());
        }
        plan.changes.insert(session.to_string(), change);
    }
    Ok(plan)
}

/// The latest of: the last wake request, the last reported activity (the
/// server's, or any session's), and the start of the running container (idle
/// time counts from when it could serve).
fn last_activity(server: &MCPServer, pod: Option<&Pod>) -> Option<DateTime<Utc>> {
    let started = pod.and_then(|pod| match observe(pod) {
        PodState::Running {
            started_at: Some(at),
            ..
        } => DateTime::parse_from_rfc3339(&at)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        _ => None,
    });
    let sessions = session_annotations(server)
        .into_values()
        .filter_map(|(_, at)| at);
    [
        annotation_time(server, ANNOTATION_WAKE),
        annotation_time(server, ANNOTATION_ACTIVITY),
        started,
    ]
    .into_iter()
    .flatten()
    .chain(sessions)
    .max()
}

fn is_managed(pod: &Pod, server: &str) -> bool {
    let labels = pod.labels();
    labels.get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(LABEL_SERVER).map(String::as_str) == Some(server)
}

fn is_owned_by(pod: &Pod, server: &MCPServer) -> bool {
    let uid = server.uid();
    pod.owner_references()
        .iter()
        .any(|o| Some(&o.uid) == uid.as_ref())
}

/// The Apply branch: observe, decide, act, then write what was observed.
async fn apply(server: &MCPServer, ctx: &Context) -> Result<Action> {
    let name = server
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingObjectKey {
            kind: "MCPServer",
            field: "metadata.name",
        })?;
    let namespace = server.namespace().ok_or(Error::MissingObjectKey {
        kind: "MCPServer",
        field: "metadata.namespace",
    })?;
    let workload = Workload::resolve(&name, &server.spec, &ctx.defaults, Target::Kubernetes);
    let now = Utc::now();
    if server.spec.session_mode == SessionMode::Isolated {
        return apply_isolated(server, ctx, &namespace, &workload, now).await;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let pod = pods
        .get_opt(&pod_name(&name))
        .await
        .map_err(Error::kube(format!(
            "get pod {namespace}/{}",
            pod_name(&name)
        )))?;
    let change = decide(server, workload.as_ref().ok(), pod.as_ref(), now)?;
    if change != PodChange::Keep {
        info!(?change, "acting");
    }
    let pod_after = match (&change, &workload) {
        (PodChange::Create, Ok(workload)) => {
            Some(create_pod(ctx, server, workload, &namespace, None).await?)
        }
        (PodChange::Adopt, _) => Some(adopt_pod(&pods, server, pod.as_ref()).await?),
        (PodChange::Delete(_), _) => {
            delete_pod(&pods, &pod_name(&name)).await?;
            None
        }
        _ => pod,
    };
    // Sessions left from when the server was Isolated: ended and stale ones still go.
    if !session_annotations(server).is_empty() {
        let session_pods = list_server_pods(ctx, server, &namespace)
            .await?
            .into_iter()
            .filter(|pod| pod.labels().contains_key(LABEL_SESSION))
            .collect();
        reconcile_sessions(ctx, server, &namespace, &workload, session_pods, now).await?;
    }
    let outcome = observed_status(server, &workload, pod_after.as_ref(), &change, now);
    write_status(ctx, server, &namespace, &outcome.status).await?;
    for event in events_for(server, &change, &outcome) {
        publish(ctx, server, event).await;
    }
    Ok(next_look(
        server,
        workload.as_ref().ok(),
        pod_after.as_ref(),
        now,
    ))
}

/// The Apply branch of an Isolated server: one pod per client session, none shared.
async fn apply_isolated(
    server: &MCPServer,
    ctx: &Context,
    namespace: &str,
    workload: &Result<Workload>,
    now: DateTime<Utc>,
) -> Result<Action> {
    let (session_pods, shared): (Vec<Pod>, Vec<Pod>) = list_server_pods(ctx, server, namespace)
        .await?
        .into_iter()
        .partition(|pod| pod.labels().contains_key(LABEL_SESSION));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    for pod in shared
        .iter()
        .filter(|p| observe(p) != PodState::Terminating)
    {
        info!(pod = %pod.name_any(), reason = ?StopReason::Isolated, "deleting the shared pod");
        delete_pod(&pods, &pod.name_any()).await?;
    }
    let sessions = reconcile_sessions(ctx, server, namespace, workload, session_pods, now).await?;
    let outcome = isolated_status(server, workload, &sessions.pods, now);
    write_status(ctx, server, namespace, &outcome.status).await?;
    // "Scaled to zero" when the last session pod went for idleness.
    let change = match sessions.idle_deleted {
        Some(idle) if sessions.pods.is_empty() => PodChange::Delete(StopReason::Idle(idle)),
        _ => PodChange::Keep,
    };
    for event in events_for(server, &change, &outcome) {
        publish(ctx, server, event).await;
    }
    let due = workload
        .as_ref()
        .ok()
        .and_then(|w| sessions_due(server, w, now));
    Ok(Action::requeue(due.unwrap_or(RESYNC)))
}

/// Every pod mcpod made for `server`: its shared pod and its session pods.
async fn list_server_pods(ctx: &Context, server: &MCPServer, namespace: &str) -> Result<Vec<Pod>> {
    let name = server.name_any();
    let selector = format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SERVER}={name}");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube(format!(
            "list the pods of MCPServer {namespace}/{name}"
        )))?;
    Ok(pods.items)
}

/// The session pods after [`reconcile_sessions`] acted.
struct SessionsOutcome {
    pods: Vec<Pod>,
    /// The longest idle time of a session pod deleted for idleness.
    idle_deleted: Option<Duration>,
}

/// Takes the changes [`plan_sessions`] decides, then removes stale annotations.
async fn reconcile_sessions(
    ctx: &Context,
    server: &MCPServer,
    namespace: &str,
    workload: &Result<Workload>,
    session_pods: Vec<Pod>,
    now: DateTime<Utc>,
) -> Result<SessionsOutcome> {
    let plan = plan_sessions(server, workload.as_ref().ok(), &session_pods, now)?;
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let mut pods: BTreeMap<String, Pod> = session_pods
        .into_iter()
        .filter_map(|pod| Some((pod.labels().get(LABEL_SESSION)?.clone(), pod)))
        .collect();
    let mut idle_deleted = None;
    for (session, change) in &plan.changes {
        if *change != PodChange::Keep {
            info!(session, ?change, "acting on a session pod");
        }
        match (change, workload) {
            (PodChange::Create, Ok(workload)) => {
                let pod = create_pod(ctx, server, workload, namespace, Some(session)).await?;
                pods.insert(session.clone(), pod);
            }
            (PodChange::Adopt, _) => {
                let pod = adopt_pod(&api, server, pods.get(session)).await?;
                pods.insert(session.clone(), pod);
            }
            (PodChange::Delete(reason), _) => {
                delete_pod(&api, &session_pod_name(&server.name_any(), session)).await?;
                pods.remove(session);
                if let StopReason::Idle(idle) = reason {
                    idle_deleted = idle_deleted.max(Some(*idle));
                }
            }
            _ => {}
        }
    }
    for (session, seen) in &plan.forget {
        forget_session(ctx, server, namespace, session, seen).await?;
    }
    Ok(SessionsOutcome {
        pods: pods.into_values().collect(),
        idle_deleted,
    })
}

/// Removes a stale session annotation, unless a router refreshed it meanwhile:
/// a JSON patch that tests the value seen before removing it.
async fn forget_session(
    ctx: &Context,
    server: &MCPServer,
    namespace: &str,
    session: &str,
    seen: &str,
) -> Result<()> {
    let name = server.name_any();
    let path = annotation_pointer(&session_annotation(session));
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": path, "value": seen},
        {"op": "remove", "path": path},
    ]))?;
    let api: Api<MCPServer> = Api::namespaced(ctx.client.clone(), namespace);
    match api
        .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => {
            info!(session, "removed the annotation of a stale session");
            Ok(())
        }
        // 422: the test failed, a router refreshed (or removed) it: nothing to forget.
        Err(kube::Error::Api(status)) if status.code == 422 => {
            debug!(session, "session annotation changed meanwhile: kept");
            Ok(())
        }
        Err(e) => Err(Error::kube(format!(
            "remove the stale session annotation {session} from MCPServer {namespace}/{name}"
        ))(e)),
    }
}

/// Time until the first fresh session would go stale, rounded up to whole seconds.
fn sessions_due(server: &MCPServer, workload: &Workload, now: DateTime<Utc>) -> Option<Duration> {
    let limit = chrono::Duration::from_std(idle_limit(workload)?).ok()?;
    session_annotations(server)
        .into_values()
        .filter_map(|(_, at)| at?.checked_add_signed(limit))
        .filter(|due| *due > now)
        .min()
        .map(|due| {
            let left = (due - now).to_std().unwrap_or_default();
            Duration::from_secs(left.as_secs() + 1).min(RESYNC)
        })
}

/// Creates a server's pod (or, with `session`, that session's pod) and the
/// NetworkPolicy that selects every pod of the server.
async fn create_pod(
    ctx: &Context,
    server: &MCPServer,
    workload: &Workload,
    namespace: &str,
    session: Option<&str>,
) -> Result<Pod> {
    let owner = server
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey {
            kind: "MCPServer",
            field: "metadata.uid",
        })?;
    let policy = network_policy_for(workload, namespace, Some(&owner));
    let policy_name = policy.name_any();
    Api::<NetworkPolicy>::namespaced(ctx.client.clone(), namespace)
        .patch(
            &policy_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&policy),
        )
        .await
        .map_err(Error::kube(format!(
            "apply networkpolicy {namespace}/{policy_name}"
        )))?;
    let pod = match session {
        Some(session) => session_pod_for(workload, session, Some(namespace), Some(&owner)),
        None => pod_for(workload, Some(namespace), Some(&owner)),
    };
    let pod_name = pod.name_any();
    Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .create(&PostParams::default(), &pod)
        .await
        .map_err(Error::kube(format!("create pod {namespace}/{pod_name}")))
}

async fn adopt_pod(pods: &Api<Pod>, server: &MCPServer, pod: Option<&Pod>) -> Result<Pod> {
    let pod = pod.ok_or_else(|| Error::Cluster("nothing to adopt".into()))?;
    let owner = server
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey {
            kind: "MCPServer",
            field: "metadata.uid",
        })?;
    let name = pod.name_any();
    info!(pod = %name, "adopting an existing pod");
    let patch = json!({"metadata": {"ownerReferences": [owner]}});
    pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!("adopt pod {name}")))
}

/// The status to write, and the failure kind when the server failed.
pub struct Outcome {
    pub status: MCPServerStatus,
    pub failure: Option<FailureKind>,
}

/// The status from what was observed (and the change just made), with the
/// transition times of unchanged conditions kept.
pub fn observed_status(
    server: &MCPServer,
    workload: &Result<Workload>,
    pod: Option<&Pod>,
    change: &PodChange,
    now: DateTime<Utc>,
) -> Outcome {
    status_of(server, workload, pod, change, now, shared_without_pod)
}

/// The phase of a Shared server that has no pod.
fn shared_without_pod(workload: &Workload) -> (Phase, Option<String>) {
    match workload.desired_state {
        DesiredState::Disabled => (Phase::Stopped, Some("disabled".into())),
        DesiredState::AlwaysOn => (Phase::Starting, None),
        DesiredState::OnDemand => (
            Phase::Stopped,
            Some("scaled to zero: the next request starts it".into()),
        ),
    }
}

/// The status of an Isolated server: Running while any session pod runs (else
/// what the most telling one does), with the count of session pods.
pub fn isolated_status(
    server: &MCPServer,
    workload: &Result<Workload>,
    session_pods: &[Pod],
    now: DateTime<Utc>,
) -> Outcome {
    let states: Vec<PodState> = session_pods.iter().map(observe).collect();
    let rank = |state: &PodState| match state {
        PodState::Running { .. } => 0,
        PodState::Failed { .. } => 1,
        PodState::Pending { .. } => 2,
        PodState::Terminating => 3,
    };
    let telling = (0..session_pods.len()).min_by_key(|&i| rank(&states[i]));
    let pod = telling.map(|i| &session_pods[i]);
    let mut outcome =
        status_of(
            server,
            workload,
            pod,
            &PodChange::Keep,
            now,
            |workload| match workload.desired_state {
                DesiredState::Disabled => (Phase::Stopped, Some("disabled".into())),
                _ => (
                    Phase::Stopped,
                    Some("no client sessions: each session gets a pod of its own".into()),
                ),
            },
        );
    let status = &mut outcome.status;
    let running = states
        .iter()
        .filter(|s| matches!(s, PodState::Running { .. }))
        .count();
    // One pod's name and container would misdescribe the others.
    status.pod_name = None;
    status.container_id = None;
    status.started_at = None;
    status.session_pods = Some(session_pods.len() as i32);
    status.restart_count = states
        .iter()
        .map(|s| match s {
            PodState::Running { restarts, .. } | PodState::Failed { restarts, .. } => *restarts,
            _ => 0,
        })
        .sum();
    if status.phase == Some(Phase::Running) {
        status.message = Some(format!(
            "{running} of {} session pods running",
            session_pods.len()
        ));
    }
    outcome
}

fn status_of(
    server: &MCPServer,
    workload: &Result<Workload>,
    pod: Option<&Pod>,
    change: &PodChange,
    now: DateTime<Utc>,
    without_pod: impl FnOnce(&Workload) -> (Phase, Option<String>),
) -> Outcome {
    let state = pod.map(observe);
    let mut failure = None;
    let mut status = MCPServerStatus {
        pod_name: pod.map(|p| p.name_any()),
        last_activity: last_activity(server, None).map(|t| t.to_rfc3339()),
        observed_generation: server.metadata.generation,
        ..MCPServerStatus::default()
    };
    let (phase, message) = match (workload, &state) {
        (Err(e), _) => {
            failure = Some(FailureKind::Config);
            (Phase::Failed, Some(e.to_string()))
        }
        (Ok(_), _) if matches!(change, PodChange::Delete(StopReason::SpecChanged)) => (
            Phase::Stopping,
            Some("spec changed: replacing the pod".into()),
        ),
        (Ok(w), None) => without_pod(w),
        (Ok(_), Some(PodState::Terminating)) => (Phase::Stopping, None),
        (Ok(_), Some(PodState::Pending { reason, .. })) => {
            (Phase::Starting, Some(format!("pod pending: {reason}")))
        }
        (
            Ok(_),
            Some(PodState::Running {
                container_id,
                started_at,
                restarts,
            }),
        ) => {
            status.container_id = container_id.clone();
            status.started_at = started_at.clone();
            status.restart_count = *restarts;
            (Phase::Running, None)
        }
        (
            Ok(_),
            Some(PodState::Failed {
                kind,
                message,
                restarts,
            }),
        ) => {
            failure = Some(*kind);
            status.restart_count = *restarts;
            (Phase::Failed, Some(message.clone()))
        }
    };
    status.phase = Some(phase);
    status.message = message;
    let scheduled = pod.is_some_and(is_scheduled);
    let previous = server
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    status.conditions = vec![
        condition(
            previous,
            "Ready",
            phase == Phase::Running,
            ready_reason(phase),
            now,
        ),
        condition(
            previous,
            "Scheduled",
            scheduled,
            if scheduled {
                "PodScheduled"
            } else if state.is_none() {
                "NoPod"
            } else {
                "Unschedulable"
            },
            now,
        ),
    ];
    Outcome { status, failure }
}

fn ready_reason(phase: Phase) -> &'static str {
    match phase {
        Phase::Running => "PodRunning",
        Phase::Starting => "Starting",
        Phase::Stopped => "ScaledToZero",
        Phase::Stopping => "Stopping",
        // Pods are never paused (`spec.pauseAfter` is refused on Kubernetes).
        Phase::Paused => "Paused",
        Phase::Failed => "Failed",
    }
}

/// A condition, keeping the previous transition time while its status holds.
fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    now: DateTime<Utc>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: None,
        last_transition_time: Some(since),
    }
}

/// Server-side apply of the whole status, skipped when nothing changed (a
/// status write is itself a watch event, which would reconcile again).
async fn write_status(
    ctx: &Context,
    server: &MCPServer,
    namespace: &str,
    status: &MCPServerStatus,
) -> Result<()> {
    // The group controller's condition is not this controller's to compare.
    let own = server
        .status
        .as_ref()
        .map(super::groups::without_group_condition);
    if own.as_ref() == Some(status) {
        return Ok(());
    }
    super::apply_status::<MCPServer>(&ctx.client, namespace, &server.name_any(), status).await
}

/// Events for real changes only: started, scaled to zero, failed, image pull error.
fn events_for(server: &MCPServer, change: &PodChange, outcome: &Outcome) -> Vec<Event> {
    let old = server.status.as_ref();
    let old_phase = old.and_then(|s| s.phase);
    let new_phase = outcome.status.phase;
    let mut events = vec![];
    let event = |type_, reason: &str, note: Option<String>, action: &str| Event {
        type_,
        reason: reason.into(),
        note,
        action: action.into(),
        secondary: None,
    };
    if let PodChange::Delete(StopReason::Idle(idle)) = change {
        events.push(event(
            EventType::Normal,
            "ScaledToZero",
            Some(format!(
                "no activity for {}: pod deleted",
                crate::duration::format(Duration::from_secs(idle.as_secs()))
            )),
            "DeletePod",
        ));
    }
    if new_phase == Some(Phase::Running) && old_phase != Some(Phase::Running) {
        events.push(event(
            EventType::Normal,
            "Started",
            outcome
                .status
                .pod_name
                .as_ref()
                .map(|p| format!("pod {p} is running")),
            "StartPod",
        ));
    }
    let failed_anew = new_phase == Some(Phase::Failed)
        && (old_phase != Some(Phase::Failed)
            || old.and_then(|s| s.message.as_ref()) != outcome.status.message.as_ref());
    if failed_anew {
        let reason = match outcome.failure {
            Some(FailureKind::ImagePull) => "ImagePullError",
            _ => "Failed",
        };
        events.push(event(
            EventType::Warning,
            reason,
            outcome.status.message.clone(),
            "StartPod",
        ));
    }
    events
}

/// Events are best effort: a missing permission is logged, never fatal.
async fn publish(ctx: &Context, server: &MCPServer, event: Event) {
    if let Err(e) = ctx.recorder.publish(&event, &server.object_ref(&())).await {
        warn!(error = %Error::kube(format!("publish event {}", event.reason))(e), "event not recorded");
    }
}

/// When to look again without a watch event: when a running server would
/// become idle, else after [`RESYNC`].
fn next_look(
    server: &MCPServer,
    workload: Option<&Workload>,
    pod: Option<&Pod>,
    now: DateTime<Utc>,
) -> Action {
    let idle_limit = workload
        .filter(|w| w.desired_state == DesiredState::OnDemand)
        .and_then(idle_limit);
    if let (Some(limit), Some(_), Some(last)) = (idle_limit, pod, last_activity(server, pod)) {
        let due = chrono::Duration::from_std(limit)
            .ok()
            .and_then(|limit| last.checked_add_signed(limit))
            .map_or(RESYNC, |at| (at - now).to_std().unwrap_or_default());
        // Whole seconds, rounded up: never before the server is due.
        return Action::requeue(Duration::from_secs(due.min(RESYNC).as_secs() + 1));
    }
    Action::requeue(RESYNC)
}

/// The Cleanup branch: the server is being deleted; its pod goes first.
/// (The NetworkPolicy follows through its owner reference.)
async fn cleanup(server: &MCPServer, ctx: &Context) -> Result<Action> {
    let namespace = server.namespace().ok_or(Error::MissingObjectKey {
        kind: "MCPServer",
        field: "metadata.namespace",
    })?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    delete_pod(&pods, &pod_name(&server.name_any())).await?;
    let has_sessions = server.spec.session_mode == SessionMode::Isolated
        || !session_annotations(server).is_empty();
    if has_sessions {
        let listed = list_server_pods(ctx, server, &namespace).await?;
        for pod in listed
            .iter()
            .filter(|p| p.labels().contains_key(LABEL_SESSION))
        {
            delete_pod(&pods, &pod.name_any()).await?;
        }
    }
    // The router replicas' Lease on the server has no owner reference: remove it here.
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &namespace);
    let lease = ownership::lease_name(&server.name_any());
    match leases.delete(&lease, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(e) if Error::is_kube_not_found(&e) => {}
        Err(e) => return Err(Error::kube(format!("delete lease {namespace}/{lease}"))(e)),
    }
    info!("MCPServer deleted: its pods and lease are gone");
    Ok(Action::await_change())
}
