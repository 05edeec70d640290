//! Leader election for the operator: of several replicas of the Deployment,
//! one reconciles MCPServers; the others stand by and take over when its
//! `coordination.k8s.io/v1` Lease (`mcpod-operator` in the operator's namespace)
//! runs out or is released.
//!
//! Two operators reconciling at once would race to create the same pods and
//! publish every event twice. The Lease lock (`lease.rs`) takes the Lease with
//! optimistic concurrency, so of two replicas only one wins; the leader renews
//! it and, when it cannot renew it in time or finds it taken, stops (its
//! container restarts as a standby).

use chrono::Utc;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use tracing::{info, warn};

use super::lease::{Attempt, LeaseLock, LeaseSettings, Write};
use crate::{Error, Result};

/// The Lease the operator replicas compete for.
pub const LEASE_NAME: &str = "mcpod-operator";

/// One replica's side of the election.
pub struct Election {
    lock: LeaseLock,
    identity: String,
    settings: LeaseSettings,
}

impl Election {
    pub fn new(client: Client, namespace: &str, identity: &str, settings: LeaseSettings) -> Self {
        Election {
            lock: LeaseLock::new(client, namespace, LEASE_NAME, identity, settings),
            identity: identity.to_string(),
            settings,
        }
    }

    /// Returns once this replica leads, with the Lease as written.
    pub async fn lead(&self) -> Result<Lease> {
        let mut standing_by = false;
        loop {
            match self.lock.try_acquire(Utc::now()).await {
                Ok(Attempt::Taken { lease, .. }) => {
                    info!(identity = %self.identity, "leading: this operator reconciles");
                    return Ok(lease);
                }
                Ok(Attempt::HeldBy { holder, .. }) if !standing_by => {
                    info!(leader = %holder.identity, "another operator leads; standing by");
                    standing_by = true;
                }
                Ok(Attempt::Conflict) if !standing_by => {
                    info!("another operator was faster to lead; standing by");
                    standing_by = true;
                }
                Ok(_) => {}
                // The API server may be briefly away: keep trying, say so.
                Err(e) => warn!(error = %e, "could not read the operator lease"),
            }
            tokio::time::sleep(self.settings.renew_interval).await;
        }
    }

    /// Renews the Lease until that fails for good; returns why leadership was
    /// lost. A failed renewal is retried until the Lease would run out.
    pub async fn keep(&self, mut lease: Lease) -> Error {
        let mut renewed_at = Utc::now();
        let duration =
            chrono::Duration::from_std(self.settings.duration).unwrap_or(chrono::Duration::zero());
        loop {
            tokio::time::sleep(self.settings.renew_interval).await;
            let now = Utc::now();
            match self.lock.renew(&lease, now).await {
                Ok(Write::Stored(written)) => {
                    lease = written;
                    renewed_at = now;
                }
                Ok(Write::Conflict) => {
                    return Error::Cluster(format!(
                        "lost the operator lease {LEASE_NAME}: another replica took it"
                    ))
                }
                Err(e) if now - renewed_at < duration - chrono::Duration::seconds(1) => {
                    warn!(error = %e, "renewing the operator lease failed; retrying");
                }
                Err(e) => {
                    return Error::Cluster(format!(
                        "lost the operator lease {LEASE_NAME}: could not renew it for {:?}: {e}",
                        self.settings.duration
                    ))
                }
            }
        }
    }

    /// Hands leadership over at once (a standby need not wait for the Lease to run out).
    pub async fn release(&self, lease: Lease) {
        match self.lock.release(&lease, Utc::now()).await {
            Ok(Write::Stored(_)) => info!("released the operator lease"),
            Ok(Write::Conflict) => info!("the operator lease is another replica's already"),
            Err(e) => {
                warn!(error = %e, "could not release the operator lease; it runs out by itself")
            }
        }
    }
}
