//! Leader election for the operator: of several replicas of the Deployment,
//! one reconciles MCPServers; the others stand by and take over when its
//! `coordination.k8s.io/v1` Lease (`mcpod-operator` in the operator's namespace)
//! runs out or is released.
//!
//! Two operators reconciling at once would race to create the same pods and
//! publish every event twice. The Lease is taken with optimistic concurrency
//! (create, or replace with the `resourceVersion` read), so of two replicas
//! only one wins; the leader renews it and, when it cannot renew it in time or
//! finds it taken, stops (its container restarts as a standby).

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{info, warn};

use super::ownership::LeaseSettings;
use crate::{Error, Result};

/// The Lease the operator replicas compete for.
pub const LEASE_NAME: &str = "mcpod-operator";

/// One replica's side of the election.
pub struct Election {
    api: Api<Lease>,
    identity: String,
    settings: LeaseSettings,
}

/// Whether `lease` may be taken by `me` at `now`: free, mine, or run out.
pub fn may_take(lease: &Lease, me: &str, now: DateTime<Utc>) -> bool {
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder.is_empty() || holder == me {
        return true;
    }
    let renewed = spec
        .renew_time
        .or(spec.acquire_time)
        .and_then(|t| DateTime::from_timestamp_micros(t.0.as_microsecond()));
    let duration = chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    renewed
        .and_then(|at| at.checked_add_signed(duration))
        .is_none_or(|expires| expires <= now)
}

fn holder(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

fn micro_time(at: DateTime<Utc>) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_microsecond(at.timestamp_micros())
        .ok()
        .map(MicroTime)
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

impl Election {
    pub fn new(client: Client, namespace: &str, identity: &str, settings: LeaseSettings) -> Self {
        Election {
            api: Api::namespaced(client, namespace),
            identity: identity.to_string(),
            settings,
        }
    }

    /// Returns once this replica leads, with the Lease as written.
    pub async fn lead(&self) -> Result<Lease> {
        let mut standing_by = false;
        loop {
            match self.try_take().await {
                Ok(Ok(lease)) => {
                    info!(identity = %self.identity, "leading: this operator reconciles");
                    return Ok(lease);
                }
                Ok(Err(leader)) if !standing_by => {
                    info!(%leader, "another operator leads; standing by");
                    standing_by = true;
                }
                Ok(Err(_)) => {}
                // The API server may be briefly away: keep trying, say so.
                Err(e) => warn!(error = %e, "could not read the operator lease"),
            }
            tokio::time::sleep(self.settings.renew_interval).await;
        }
    }

    /// One attempt: the Lease as this replica wrote it, or the current leader's name.
    async fn try_take(&self) -> Result<std::result::Result<Lease, String>> {
        let now = Utc::now();
        let found = self
            .api
            .get_opt(LEASE_NAME)
            .await
            .map_err(Error::kube(format!("get lease {LEASE_NAME}")))?;
        let written = match found {
            None => {
                self.api
                    .create(&PostParams::default(), &self.taken(None, now))
                    .await
            }
            Some(lease) if may_take(&lease, &self.identity, now) => {
                let mine = self.taken(Some(lease), now);
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &mine)
                    .await
            }
            Some(lease) => return Ok(Err(holder(&lease))),
        };
        match written {
            Ok(lease) => Ok(Ok(lease)),
            // Another replica was faster.
            Err(e) if is_conflict(&e) => Ok(Err("another replica".to_string())),
            Err(e) => Err(Error::kube(format!("take lease {LEASE_NAME}"))(e)),
        }
    }

    fn taken(&self, found: Option<Lease>, now: DateTime<Utc>) -> Lease {
        let mut lease = found.unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(LEASE_NAME.to_string()),
                ..ObjectMeta::default()
            },
            spec: None,
        });
        let previous = lease.spec.take().unwrap_or_default();
        let changed_hands = previous.holder_identity.as_deref() != Some(self.identity.as_str());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs().max(1) as i32),
            acquire_time: if changed_hands {
                micro_time(now)
            } else {
                previous.acquire_time
            },
            renew_time: micro_time(now),
            lease_transitions: Some(
                previous.lease_transitions.unwrap_or(0) + i32::from(changed_hands),
            ),
            ..LeaseSpec::default()
        });
        lease
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
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = micro_time(now);
            }
            match self
                .api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await
            {
                Ok(written) => {
                    lease = written;
                    renewed_at = now;
                }
                Err(e) if is_conflict(&e) => {
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
    pub async fn release(&self, mut lease: Lease) {
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => info!("released the operator lease"),
            Err(e) => {
                warn!(error = %e, "could not release the operator lease; it runs out by itself")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: DateTime<Utc>, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                renew_time: micro_time(renewed),
                lease_duration_seconds: Some(seconds),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn a_lease_may_be_taken_when_free_mine_or_run_out() {
        let now = Utc::now();
        assert!(may_take(&lease("", now, 15), "me", now));
        assert!(may_take(&lease("me", now, 15), "me", now));
        assert!(!may_take(&lease("other", now, 15), "me", now));
        let long_ago = now - chrono::Duration::seconds(16);
        assert!(may_take(&lease("other", long_ago, 15), "me", now));
        let never_said = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some("other".into()),
                ..LeaseSpec::default()
            }),
        };
        assert!(may_take(&never_said, "me", now));
    }
}
