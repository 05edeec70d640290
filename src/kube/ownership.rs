//! Which router replica serves a server: the holder of the `coordination.k8s.io/v1`
//! Lease `mcpod-<server>` in the server's namespace.
//!
//! Only one replica may hold a server's MCP session on the pod's stdin (each
//! `initialize`d session would mix its messages with the others'), and the
//! client sessions live in that replica's memory. So one replica owns each
//! server: it takes the Lease, renews it while it still serves the server (a
//! stdio bridge, a start, requests or client sessions), and releases it when
//! the server stops. Other replicas forward requests to the address the owner
//! publishes on the Lease (`replicas.rs`). Taking, renewing, releasing and
//! judging expiry are the Lease lock's (`lease.rs`); this module keeps the
//! Leases of many servers and decides when each is renewed or released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn, Instrument};

use super::lease::{Attempt, Holder, LeaseLock, LeaseSettings, Write};
use super::pod::selector_labels;
use crate::{Error, Result};

/// The router address (`ip:port`) of the Lease's holder, where others forward to.
pub const ANNOTATION_ADDRESS: &str = "mcpod.dev/router-address";
/// Attempts to take a Lease that keeps changing under us (409 Conflict).
const CLAIM_ATTEMPTS: usize = 3;

/// Another replica that holds a server's Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub identity: String,
    /// Its router's address, `ip:port`.
    pub address: String,
    /// When its Lease runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

impl Owner {
    /// The owner a held Lease names: its holder, at the address it published
    /// (the Lease lock honours no holder that published none).
    fn of(holder: Holder, lease: &Lease) -> Owner {
        Owner {
            identity: holder.identity,
            address: lease
                .annotations()
                .get(ANNOTATION_ADDRESS)
                .cloned()
                .unwrap_or_default(),
            expires_at: holder.expires_at,
        }
    }
}

/// Where a server's requests are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// By this replica, which holds the Lease.
    Local,
    /// By the replica that holds the Lease.
    Remote(Owner),
}

/// The Lease of a server: `mcpod-<server>`, like its pod.
pub fn lease_name(server: &str) -> String {
    super::pod::pod_name(server)
}

/// Whether this replica still serves a server (`namespace`, `name`): then it renews
/// the server's Lease; else it releases it.
pub type InUse = Box<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// A server's Lease this replica holds.
struct HeldLease {
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
    held: Mutex<HashMap<String, HeldLease>>,
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

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldLease>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn observed(&self) -> std::sync::MutexGuard<'_, HashMap<String, Observed>> {
        self.observed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server's Lease as this replica takes it: labelled like the server's
    /// pod, carrying this replica's address while held.
    fn lock(&self, namespace: &str, server: &str) -> LeaseLock {
        LeaseLock::new(
            self.client.clone(),
            namespace,
            &lease_name(server),
            &self.identity,
            self.settings,
        )
        .with_labels(selector_labels(server))
        .with_annotation(ANNOTATION_ADDRESS, &self.address)
    }

    /// Who serves `namespace/server` now. Takes the Lease when nobody holds it
    /// (or its holder let it run out); a Lease this replica holds, or another
    /// replica's seen shortly before, is answered without an API call.
    pub async fn placement(&self, namespace: &str, server: &str) -> Result<Placement> {
        let key = key_of(namespace, server);
        let now = Utc::now();
        if let Some(held) = self.held().get_mut(&key) {
            if held.valid_until > now {
                held.last_claimed = Instant::now();
                return Ok(Placement::Local);
            }
        }
        if let Some(seen) = self.observed().get(&key) {
            if seen.look_again_at > now {
                return Ok(Placement::Remote(seen.owner.clone()));
            }
        }
        self.claim(namespace, server).await
    }

    /// The owner did not answer: looks at the Lease again, and takes it if its
    /// holder released it or let it run out.
    pub async fn failover(&self, namespace: &str, server: &str) -> Result<Placement> {
        self.observed().remove(&key_of(namespace, server));
        self.claim(namespace, server).await
    }

    /// Before attaching to a server's pod: makes sure this replica holds the
    /// Lease, and says whether it has just taken the server over (then a pod
    /// found running may hold the previous owner's MCP session).
    pub async fn ensure_held(&self, namespace: &str, server: &str) -> Result<bool> {
        match self.placement(namespace, server).await? {
            Placement::Local => Ok(self
                .held()
                .get_mut(&key_of(namespace, server))
                .is_some_and(|held| std::mem::take(&mut held.taken_over))),
            Placement::Remote(owner) => Err(Error::Cluster(format!(
                "MCP server {namespace}/{server} is served by router replica {} ({}) until {}; \
                 this replica does not attach to it",
                owner.identity, owner.address, owner.expires_at
            ))),
        }
    }

    /// Takes the server's Lease if it may be taken; on a conflict, another
    /// replica was faster: look again.
    async fn claim(&self, namespace: &str, server: &str) -> Result<Placement> {
        if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Cluster(
                "this router replica is shutting down".into(),
            ));
        }
        let lock = self.lock(namespace, server);
        for _ in 0..CLAIM_ATTEMPTS {
            let now = Utc::now();
            match lock.try_acquire(now).await? {
                Attempt::HeldBy { holder, lease } => {
                    let owner = Owner::of(holder, &lease);
                    self.remember(namespace, server, &owner, now);
                    return Ok(Placement::Remote(owner));
                }
                Attempt::Taken { lease, previous } => {
                    info!(
                        namespace,
                        server,
                        previous = previous.as_deref().unwrap_or("none"),
                        "took the server's lease"
                    );
                    self.observed().remove(&key_of(namespace, server));
                    self.hold(namespace, server, lease, now, true);
                    return Ok(Placement::Local);
                }
                Attempt::Conflict => {
                    debug!(
                        namespace,
                        server, "lease changed while taking it: looking again"
                    );
                }
            }
        }
        Err(Error::Cluster(format!(
            "lease {namespace}/{} kept changing while this replica tried to take it",
            lease_name(server)
        )))
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
            HeldLease {
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

    fn is_in_use(&self, held: &HeldLease) -> bool {
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

    async fn renew(&self, namespace: &str, server: &str, lease: Lease) {
        let now = Utc::now();
        match self.lock(namespace, server).renew(&lease, now).await {
            Ok(Write::Stored(lease)) => self.hold(namespace, server, lease, now, false),
            Ok(Write::Conflict) => {
                // Someone else wrote it: another replica took it (ours had run out).
                warn!(
                    namespace,
                    server, "lost the server's lease to another replica"
                );
                self.held().remove(&key_of(namespace, server));
            }
            Err(error) => warn!(%error, "renewing failed; retrying at the next interval"),
        }
    }

    /// Gives a Lease up so that another replica may take it at once.
    async fn release(&self, namespace: &str, server: &str, lease: Lease) {
        self.held().remove(&key_of(namespace, server));
        match self
            .lock(namespace, server)
            .release(&lease, Utc::now())
            .await
        {
            Ok(Write::Stored(_)) => debug!(namespace, server, "released the server's lease"),
            Ok(Write::Conflict) => {} // already someone else's
            Err(error) => warn!(%error, "releasing failed; the lease runs out by itself"),
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
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    #[test]
    fn kube_ownership_owner_is_the_holder_at_its_published_address() {
        let expires_at = Utc::now() + chrono::Duration::seconds(14);
        let mut lease = Lease {
            spec: Some(LeaseSpec::default()),
            ..Lease::default()
        };
        lease
            .annotations_mut()
            .insert(ANNOTATION_ADDRESS.into(), "10.0.0.2:8080".into());
        let holder = Holder {
            identity: "b".into(),
            expires_at,
        };
        let owner = Owner::of(holder, &lease);
        assert_eq!(
            (owner.identity.as_str(), owner.address.as_str()),
            ("b", "10.0.0.2:8080")
        );
        assert_eq!(owner.expires_at, expires_at);
        assert_eq!(lease_name("time"), "mcpod-time");
    }
}
