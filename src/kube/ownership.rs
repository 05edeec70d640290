//! Which router replica serves a server: the holder of the `coordination.k8s.io/v1`
//! Lease `mcpod-<server>` in the server's namespace.
//!
//! Only one replica may hold a server's MCP session on the pod's stdin (each
//! `initialize`d session would mix its messages with the others'), and the
//! client sessions live in that replica's memory. So one replica owns each
//! server: it takes the Lease (create, or update with the `resourceVersion`
//! it read, so of two replicas racing one wins and the other sees a 409),
//! renews it while it still serves the server (a stdio bridge, a start, requests
//! or client sessions), and releases it when the server stops. Other replicas
//! forward requests to the address the owner wrote on the Lease (see
//! `kube::replicas`). The expiry check compares the holder's renew time with
//! this replica's clock: cluster nodes are assumed to keep NTP time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, info, warn, Instrument};

use super::pod::selector_labels;
use crate::{Error, Result};

/// The router address (`ip:port`) of the Lease's holder, where others forward to.
pub const ANNOTATION_ADDRESS: &str = "mcpod.dev/router-address";
/// Attempts to take a Lease that keeps changing under us (409 Conflict).
const CLAIM_ATTEMPTS: usize = 3;

/// The Lease's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a Lease stays valid after its last renewal.
    pub duration: Duration,
    /// How often a holder renews (or releases) its Leases; well under `duration`.
    pub renew_interval: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
        }
    }
}

/// Another replica that holds a server's Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub identity: String,
    /// Its router's address, `ip:port`.
    pub address: String,
    /// When its Lease runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// Where a server's requests are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// By this replica, which holds the Lease.
    Local,
    /// By the replica that holds the Lease.
    Remote(Owner),
}

/// What a Lease read from the API server says, for this replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This replica's identity holds it.
    Mine,
    /// Nobody holds it, or its holder let it run out: it may be taken.
    Free,
    HeldBy(Owner),
}

/// Judges a Lease at `now` for the replica `me`.
pub fn judge(lease: &Lease, me: &str, now: DateTime<Utc>) -> Verdict {
    let spec = lease.spec.clone().unwrap_or_default();
    let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else {
        return Verdict::Free;
    };
    if holder == me {
        return Verdict::Mine;
    }
    let renewed = spec
        .renew_time
        .or(spec.acquire_time)
        .and_then(|t| from_micro_time(&t));
    let duration = chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let Some(expires_at) = renewed.and_then(|at| at.checked_add_signed(duration)) else {
        return Verdict::Free; // a holder that never said when: nothing to honour
    };
    let address = lease
        .annotations()
        .get(ANNOTATION_ADDRESS)
        .cloned()
        .unwrap_or_default();
    if expires_at <= now || address.is_empty() {
        return Verdict::Free;
    }
    Verdict::HeldBy(Owner {
        identity: holder,
        address,
        expires_at,
    })
}

fn micro_time(at: DateTime<Utc>) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_microsecond(at.timestamp_micros())
        .ok()
        .map(MicroTime)
}

fn from_micro_time(time: &MicroTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(time.0.as_microsecond())
}

/// The Lease of a server: `mcpod-<server>`, like its pod.
pub fn lease_name(server: &str) -> String {
    super::pod::pod_name(server)
}

/// Whether this replica still serves a server (`namespace`, `name`): then it renews
/// the server's Lease; else it releases it.
pub type InUse = Box<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// A Lease this replica holds.
struct Held {
    namespace: String,
    server: String,
    /// The Lease as last written, whose `resourceVersion` the next write must match.
    lease: Lease,
    /// Until when it is valid (this replica's clock).
    valid_until: DateTime<Utc>,
    /// Taken (not just renewed) and not yet started on: a pod found now may hold
    /// another replica's MCP session.
    taken_over: bool,
    /// When it was taken or last served a request: kept a while even if idle.
    last_claimed: Instant,
}

/// Another replica's Lease as seen, and until when to trust that without a look.
struct Observed {
    owner: Owner,
    look_again_at: DateTime<Utc>,
}

/// This replica's side of the Leases: takes, renews and releases them, and says
/// who serves a server.
pub struct Ownership {
    client: Client,
    identity: String,
    address: String,
    settings: LeaseSettings,
    held: Mutex<HashMap<String, Held>>,
    observed: Mutex<HashMap<String, Observed>>,
    in_use: OnceLock<InUse>,
    /// Set by [`Ownership::shutdown`]: nothing is taken or renewed any more.
    stopped: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("identity", &self.identity)
            .field("address", &self.address)
            .field("settings", &self.settings)
            .finish()
    }
}

fn key_of(namespace: &str, server: &str) -> String {
    format!("{namespace}/{server}")
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl Ownership {
    /// `identity` names this replica (its pod name), `address` is where other
    /// replicas reach its router (`pod-ip:port`). Starts the renewing task, which
    /// ends when the returned value is dropped.
    pub fn new(
        client: Client,
        identity: &str,
        address: &str,
        settings: LeaseSettings,
    ) -> Arc<Ownership> {
        let ownership = Arc::new(Ownership {
            client,
            identity: identity.to_string(),
            address: address.to_string(),
            settings,
            held: Mutex::new(HashMap::new()),
            observed: Mutex::new(HashMap::new()),
            in_use: OnceLock::new(),
            stopped: Default::default(),
        });
        let span = tracing::info_span!("leases", identity = %identity);
        tokio::spawn(keep(Arc::downgrade(&ownership), settings.renew_interval).instrument(span));
        ownership
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Tells the renewing task which servers are still in use (set once, after
    /// the servers exist; until then a Lease is kept only briefly after a claim).
    pub fn track_usage(&self, in_use: InUse) {
        let _ = self.in_use.set(in_use);
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Observed>> {
        self.observed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leases(&self, namespace: &str) -> Api<Lease> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Who serves `namespace/server` now. Takes the Lease when nobody holds it
    /// (or its holder let it run out); a Lease this replica holds, or another
    /// replica's seen shortly before, is answered without an API call.
    pub async fn route(&self, namespace: &str, server: &str) -> Result<Route> {
        let key = key_of(namespace, server);
        let now = Utc::now();
        if let Some(held) = self.held().get_mut(&key) {
            if held.valid_until > now {
                held.last_claimed = Instant::now();
                return Ok(Route::Local);
            }
        }
        if let Some(seen) = self.observed().get(&key) {
            if seen.look_again_at > now {
                return Ok(Route::Remote(seen.owner.clone()));
            }
        }
        self.claim(namespace, server).await
    }

    /// The owner did not answer: looks at the Lease again, and takes it if its
    /// holder released it or let it run out.
    pub async fn failover(&self, namespace: &str, server: &str) -> Result<Route> {
        self.observed().remove(&key_of(namespace, server));
        self.claim(namespace, server).await
    }

    /// Before attaching to a server's pod: makes sure this replica holds the
    /// Lease, and says whether it has just taken the server over (then a pod
    /// found running may hold the previous owner's MCP session).
    pub async fn ensure_held(&self, namespace: &str, server: &str) -> Result<bool> {
        match self.route(namespace, server).await? {
            Route::Local => Ok(self
                .held()
                .get_mut(&key_of(namespace, server))
                .is_some_and(|held| std::mem::take(&mut held.taken_over))),
            Route::Remote(owner) => Err(Error::Cluster(format!(
                "MCP server {namespace}/{server} is served by router replica {} ({}) until {}; \
                 this replica does not attach to it",
                owner.identity, owner.address, owner.expires_at
            ))),
        }
    }

    /// Reads the Lease and takes it if it may be taken (create, or update with
    /// the `resourceVersion` read); on a conflict, another replica was faster: look again.
    async fn claim(&self, namespace: &str, server: &str) -> Result<Route> {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Cluster(
                "this router replica is shutting down".into(),
            ));
        }
        let api = self.leases(namespace);
        let name = lease_name(server);
        for _ in 0..CLAIM_ATTEMPTS {
            let now = Utc::now();
            let found = api
                .get_opt(&name)
                .await
                .map_err(Error::kube(format!("get lease {namespace}/{name}")))?;
            let written = match &found {
                None => {
                    let lease = self.taken(None, namespace, server, now);
                    api.create(&PostParams::default(), &lease).await
                }
                Some(lease) => match judge(lease, &self.identity, now) {
                    Verdict::HeldBy(owner) => {
                        self.remember(namespace, server, &owner, now);
                        return Ok(Route::Remote(owner));
                    }
                    // Mine but not in memory: this process restarted under the same name.
                    Verdict::Mine | Verdict::Free => {
                        let lease = self.taken(Some(lease), namespace, server, now);
                        api.replace(&name, &PostParams::default(), &lease).await
                    }
                },
            };
            match written {
                Ok(lease) => {
                    let previous = found
                        .and_then(|l| l.spec?.holder_identity)
                        .filter(|h| !h.is_empty());
                    info!(
                        namespace,
                        server,
                        previous = previous.as_deref().unwrap_or("none"),
                        "took the server's lease"
                    );
                    self.observed().remove(&key_of(namespace, server));
                    self.hold(namespace, server, lease, now, true);
                    return Ok(Route::Local);
                }
                Err(e) if is_conflict(&e) => {
                    debug!(
                        namespace,
                        server, "lease changed while taking it: looking again"
                    );
                }
                Err(e) => {
                    return Err(Error::kube(format!("take lease {namespace}/{name}"))(e));
                }
            }
        }
        Err(Error::Cluster(format!(
            "lease {namespace}/{name} kept changing while this replica tried to take it"
        )))
    }

    /// The Lease as this replica takes it: holder, address, fresh times.
    fn taken(
        &self,
        found: Option<&Lease>,
        namespace: &str,
        server: &str,
        now: DateTime<Utc>,
    ) -> Lease {
        let mut lease = found.cloned().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(lease_name(server)),
                namespace: Some(namespace.to_string()),
                labels: Some(selector_labels(server)),
                ..ObjectMeta::default()
            },
            spec: None,
        });
        let previous = lease.spec.take().unwrap_or_default();
        let changed_hands = previous.holder_identity.as_deref() != Some(self.identity.as_str());
        let transitions =
            previous.lease_transitions.unwrap_or(0) + i32::from(changed_hands && found.is_some());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs().max(1) as i32),
            acquire_time: micro_time(now),
            renew_time: micro_time(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        });
        lease
            .annotations_mut()
            .insert(ANNOTATION_ADDRESS.to_string(), self.address.clone());
        lease
    }

    fn hold(&self, namespace: &str, server: &str, lease: Lease, now: DateTime<Utc>, taken: bool) {
        let valid_until = now
            + chrono::Duration::from_std(self.settings.duration)
                .unwrap_or(chrono::Duration::zero());
        let key = key_of(namespace, server);
        let mut held = self.held();
        let taken_over = taken || held.get(&key).is_some_and(|h| h.taken_over);
        held.insert(
            key,
            Held {
                namespace: namespace.to_string(),
                server: server.to_string(),
                lease,
                valid_until,
                taken_over,
                last_claimed: Instant::now(),
            },
        );
    }

    /// Trusts another replica's Lease for a renew interval (or until it runs out).
    fn remember(&self, namespace: &str, server: &str, owner: &Owner, now: DateTime<Utc>) {
        let soon = now
            + chrono::Duration::from_std(self.settings.renew_interval)
                .unwrap_or(chrono::Duration::zero());
        self.observed().insert(
            key_of(namespace, server),
            Observed {
                owner: owner.clone(),
                look_again_at: soon.min(owner.expires_at),
            },
        );
    }

    fn is_in_use(&self, held: &Held) -> bool {
        let recently_claimed = held.last_claimed.elapsed() < self.settings.renew_interval;
        recently_claimed
            || self
                .in_use
                .get()
                .is_some_and(|in_use| in_use(&held.namespace, &held.server))
    }

    /// One round of the renewing task: renews the Leases still in use, releases the others.
    async fn renew_or_release(&self) {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let due: Vec<(String, Lease, bool)> = self
            .held()
            .iter()
            .map(|(key, held)| (key.clone(), held.lease.clone(), self.is_in_use(held)))
            .collect();
        for (key, lease, in_use) in due {
            let Some((namespace, server)) = key.split_once('/') else {
                continue;
            };
            if in_use {
                self.renew(namespace, server, lease).await;
            } else {
                info!(
                    namespace,
                    server, "server no longer served here: releasing its lease"
                );
                self.release(namespace, server, lease).await;
            }
        }
    }

    async fn renew(&self, namespace: &str, server: &str, mut lease: Lease) {
        let now = Utc::now();
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = micro_time(now);
        }
        let name = lease_name(server);
        match self
            .leases(namespace)
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(lease) => self.hold(namespace, server, lease, now, false),
            Err(e) if is_conflict(&e) => {
                // Someone else wrote it: another replica took it (ours had run out).
                warn!(
                    namespace,
                    server, "lost the server's lease to another replica"
                );
                self.held().remove(&key_of(namespace, server));
            }
            Err(e) => warn!(
                error = %Error::kube(format!("renew lease {namespace}/{name}"))(e),
                "renewing failed; retrying at the next interval"
            ),
        }
    }

    /// Gives a Lease up so that another replica may take it at once.
    async fn release(&self, namespace: &str, server: &str, mut lease: Lease) {
        self.held().remove(&key_of(namespace, server));
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = micro_time(Utc::now());
        }
        lease.annotations_mut().remove(ANNOTATION_ADDRESS);
        let name = lease_name(server);
        match self
            .leases(namespace)
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => debug!(namespace, server, "released the server's lease"),
            Err(e) if is_conflict(&e) => {} // already someone else's
            Err(e) => warn!(
                error = %Error::kube(format!("release lease {namespace}/{name}"))(e),
                "releasing failed; the lease runs out by itself"
            ),
        }
    }

    /// Stops taking and renewing Leases. With `release`, gives up every Lease held
    /// (a graceful shutdown: others take over at once); without, they run out
    /// after their duration (as after a crash).
    pub async fn shutdown(&self, release: bool) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let held: Vec<(String, Lease)> = self
            .held()
            .drain()
            .map(|(key, held)| (key, held.lease))
            .collect();
        if !release {
            return;
        }
        for (key, lease) in held {
            if let Some((namespace, server)) = key.split_once('/') {
                info!(
                    namespace,
                    server, "shutting down: releasing the server's lease"
                );
                self.release(namespace, server, lease).await;
            }
        }
    }
}

/// The renewing task: every `interval`, renews or releases each Lease held.
async fn keep(ownership: Weak<Ownership>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(ownership) = ownership.upgrade() else {
            return;
        };
        ownership.renew_or_release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed_ago_s: i64, duration_s: i32, address: &str) -> Lease {
        let now = Utc::now();
        let mut lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: Some(duration_s),
                renew_time: micro_time(now - chrono::Duration::seconds(renewed_ago_s)),
                ..LeaseSpec::default()
            }),
        };
        if !address.is_empty() {
            lease
                .annotations_mut()
                .insert(ANNOTATION_ADDRESS.into(), address.into());
        }
        lease
    }

    #[test]
    fn kube_lease_verdicts() {
        let now = Utc::now();
        assert_eq!(judge(&lease(None, 1, 15, ""), "a", now), Verdict::Free);
        assert_eq!(judge(&lease(Some(""), 1, 15, ""), "a", now), Verdict::Free);
        assert_eq!(
            judge(&lease(Some("a"), 100, 15, "10.0.0.1:8080"), "a", now),
            Verdict::Mine
        );
        let Verdict::HeldBy(owner) = judge(&lease(Some("b"), 1, 15, "10.0.0.2:8080"), "a", now)
        else {
            panic!("a valid lease of another replica is honoured")
        };
        assert_eq!(
            (owner.identity.as_str(), owner.address.as_str()),
            ("b", "10.0.0.2:8080")
        );
        assert!(owner.expires_at > now + chrono::Duration::seconds(13));
        // Run out: renewed 20 s ago for 15 s.
        assert_eq!(
            judge(&lease(Some("b"), 20, 15, "10.0.0.2:8080"), "a", now),
            Verdict::Free
        );
        // A holder nobody can reach cannot serve anything.
        assert_eq!(judge(&lease(Some("b"), 1, 15, ""), "a", now), Verdict::Free);
    }

    #[test]
    fn kube_lease_times_round_trip() {
        let at = DateTime::parse_from_rfc3339("2026-11-25T12:00:00.123456Z")
            .unwrap()
            .to_utc();
        assert_eq!(from_micro_time(&micro_time(at).unwrap()), Some(at));
        assert_eq!(lease_name("time"), "mcpod-time");
    }
}
