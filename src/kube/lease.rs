//! One `coordination.k8s.io/v1` Lease, taken, renewed and released by one
//! candidate: the single implementation behind both uses of Leases in mcpod,
//! the operator's leader election (`election.rs`) and the router replicas'
//! ownership of servers (`ownership.rs`). Each of those only says which Lease,
//! who it is, and what to do when it wins or loses.
//!
//! Every write is optimistic: create, or replace with the `resourceVersion`
//! read, so of two candidates writing at once one wins and the other gets
//! [`Write::Conflict`] (the API server's 409) and must look again. Expiry
//! compares the holder's renew time with this process's clock: cluster nodes
//! are assumed to keep NTP time.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use crate::{Error, Result};

/// A Lease's timing, the same for every candidate of one Lease.
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

/// Another candidate that holds a Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub identity: String,
    /// When its Lease runs out unless renewed.
    pub expires_at: DateTime<Utc>,
}

/// What a Lease read from the API server means for one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// This candidate's identity holds it.
    Mine,
    /// Nobody holds it, or its holder let it run out: it may be taken.
    Free,
    HeldBy(Holder),
}

/// Judges `lease` at `now` for the candidate `me`.
pub fn judge(lease: &Lease, me: &str, now: DateTime<Utc>) -> Standing {
    let spec = lease.spec.clone().unwrap_or_default();
    let Some(identity) = spec.holder_identity.filter(|h| !h.is_empty()) else {
        return Standing::Free;
    };
    if identity == me {
        return Standing::Mine;
    }
    let renewed = spec
        .renew_time
        .or(spec.acquire_time)
        .and_then(|t| from_micro_time(&t));
    let duration = chrono::Duration::seconds(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match renewed.and_then(|at| at.checked_add_signed(duration)) {
        Some(expires_at) if expires_at > now => Standing::HeldBy(Holder {
            identity,
            expires_at,
        }),
        // Run out, or a holder that never said when: nothing to honour.
        _ => Standing::Free,
    }
}

/// [`judge`], for a candidate that publishes `published` annotations while it
/// holds the Lease: a holder that did not publish them (an empty value counts
/// as missing) cannot be reached through them, so its Lease is not honoured.
pub fn judge_published(
    lease: &Lease,
    me: &str,
    published: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> Standing {
    let annotations = lease.annotations();
    let unreachable = published
        .keys()
        .any(|key| annotations.get(key).is_none_or(|value| value.is_empty()));
    match judge(lease, me, now) {
        Standing::HeldBy(_) if unreachable => Standing::Free,
        standing => standing,
    }
}

/// The answer of the API server to a write of the Lease.
// One per renew interval at most: boxing the Lease would save nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Written; the Lease as stored, whose `resourceVersion` the next write must match.
    Stored(Lease),
    /// Someone else wrote it since it was read (409): look again.
    Conflict,
}

/// What one attempt to take the Lease found.
#[allow(clippy::large_enum_variant)] // as for `Write`
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// This candidate holds it now; `previous` held it before (if anyone).
    Taken {
        lease: Lease,
        previous: Option<String>,
    },
    /// Another candidate holds it; the Lease as read (its annotations say more).
    HeldBy { holder: Holder, lease: Lease },
    /// Another candidate wrote it between the read and the write.
    Conflict,
}

/// One named Lease in one namespace, as one candidate takes, renews and releases it.
#[derive(Clone)]
pub struct LeaseLock {
    api: Api<Lease>,
    namespace: String,
    name: String,
    identity: String,
    settings: LeaseSettings,
    /// Put on the Lease when this candidate creates it.
    labels: BTreeMap<String, String>,
    /// Published on the Lease while this candidate holds it (the router's
    /// address), removed when it releases it.
    annotations: BTreeMap<String, String>,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("lease", &format!("{}/{}", self.namespace, self.name))
            .field("identity", &self.identity)
            .finish()
    }
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        settings: LeaseSettings,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            settings,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// Labels for the Lease when this candidate creates it.
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels = labels;
        self
    }

    /// An annotation this candidate publishes while it holds the Lease; a
    /// holder without it is not honoured (see [`judge_published`]).
    pub fn with_annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// Reads the Lease, takes it when it may be taken, and says what happened.
    pub async fn try_acquire(&self, now: DateTime<Utc>) -> Result<Attempt> {
        let found = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(Error::kube(format!("get lease {}", self.path())))?;
        if let Some(lease) = &found {
            if let Standing::HeldBy(holder) =
                judge_published(lease, &self.identity, &self.annotations, now)
            {
                return Ok(Attempt::HeldBy {
                    holder,
                    lease: lease.clone(),
                });
            }
        }
        let mine = self.taken(found.as_ref(), now);
        let written = match &found {
            None => self.api.create(&PostParams::default(), &mine).await,
            Some(_) => self.replace(&mine).await,
        };
        Ok(match self.outcome(written, "take")? {
            Write::Stored(lease) => Attempt::Taken {
                lease,
                previous: found
                    .and_then(|l| l.spec?.holder_identity)
                    .filter(|h| !h.is_empty()),
            },
            Write::Conflict => Attempt::Conflict,
        })
    }

    /// Renews a Lease this candidate holds, as last stored.
    pub async fn renew(&self, lease: &Lease, now: DateTime<Utc>) -> Result<Write> {
        let written = self.replace(&renewed(lease, now)).await;
        self.outcome(written, "renew")
    }

    /// Gives the Lease up so that another candidate may take it at once.
    pub async fn release(&self, lease: &Lease, now: DateTime<Utc>) -> Result<Write> {
        let written = self
            .replace(&released(lease, self.annotations.keys(), now))
            .await;
        self.outcome(written, "release")
    }

    /// The Lease as this candidate takes it: holder, fresh renew time, labels
    /// when new, annotations published.
    fn taken(&self, found: Option<&Lease>, now: DateTime<Utc>) -> Lease {
        let mut lease = taken(found, &self.identity, self.settings, now);
        if found.is_none() {
            lease.metadata.name = Some(self.name.clone());
            lease.metadata.namespace = Some(self.namespace.clone());
            if !self.labels.is_empty() {
                lease.metadata.labels = Some(self.labels.clone());
            }
        }
        lease.annotations_mut().extend(self.annotations.clone());
        lease
    }

    async fn replace(&self, lease: &Lease) -> kube::Result<Lease> {
        self.api
            .replace(&self.name, &PostParams::default(), lease)
            .await
    }

    fn outcome(&self, written: kube::Result<Lease>, doing: &str) -> Result<Write> {
        match written {
            Ok(lease) => Ok(Write::Stored(lease)),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Write::Conflict),
            Err(e) => Err(Error::kube(format!("{doing} lease {}", self.path()))(e)),
        }
    }

    fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// `found` (or a new Lease) as `identity` takes it: a holder that changes hands
/// counts a transition and a new acquire time; the same holder (a restarted
/// process under the same name) keeps its acquire time.
pub fn taken(
    found: Option<&Lease>,
    identity: &str,
    settings: LeaseSettings,
    now: DateTime<Utc>,
) -> Lease {
    let mut lease = found.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta::default(),
        spec: None,
    });
    let previous = lease.spec.take().unwrap_or_default();
    let changed_hands = previous.holder_identity.as_deref() != Some(identity);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(identity.to_string()),
        lease_duration_seconds: Some(settings.duration.as_secs().max(1) as i32),
        acquire_time: match changed_hands {
            true => micro_time(now),
            false => previous.acquire_time,
        },
        renew_time: micro_time(now),
        lease_transitions: Some(
            previous.lease_transitions.unwrap_or(0) + i32::from(changed_hands && found.is_some()),
        ),
        ..LeaseSpec::default()
    });
    lease
}

/// The Lease with a fresh renew time.
pub fn renewed(lease: &Lease, now: DateTime<Utc>) -> Lease {
    let mut lease = lease.clone();
    if let Some(spec) = lease.spec.as_mut() {
        spec.renew_time = micro_time(now);
    }
    lease
}

/// The Lease with no holder, and without what the holder published.
pub fn released<'a>(
    lease: &Lease,
    published: impl IntoIterator<Item = &'a String>,
    now: DateTime<Utc>,
) -> Lease {
    let mut lease = lease.clone();
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.renew_time = micro_time(now);
    }
    for key in published {
        lease.annotations_mut().remove(key);
    }
    lease
}

fn micro_time(at: DateTime<Utc>) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_microsecond(at.timestamp_micros())
        .ok()
        .map(MicroTime)
}

fn from_micro_time(time: &MicroTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(time.0.as_microsecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: &str = "mcpod.dev/router-address";

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
                .insert(ADDRESS.into(), address.into());
        }
        lease
    }

    fn may_take(lease: &Lease, me: &str, now: DateTime<Utc>) -> bool {
        !matches!(judge(lease, me, now), Standing::HeldBy(_))
    }

    #[test]
    fn kube_lease_standings() {
        let now = Utc::now();
        assert_eq!(judge(&lease(None, 1, 15, ""), "a", now), Standing::Free);
        assert_eq!(judge(&lease(Some(""), 1, 15, ""), "a", now), Standing::Free);
        assert_eq!(
            judge(&lease(Some("a"), 100, 15, "10.0.0.1:8080"), "a", now),
            Standing::Mine
        );
        let Standing::HeldBy(holder) = judge(&lease(Some("b"), 1, 15, ""), "a", now) else {
            panic!("a valid lease of another candidate is honoured")
        };
        assert_eq!(holder.identity, "b");
        assert!(holder.expires_at > now + chrono::Duration::seconds(13));
        // Run out: renewed 20 s ago for 15 s.
        assert_eq!(
            judge(&lease(Some("b"), 20, 15, ""), "a", now),
            Standing::Free
        );
    }

    #[test]
    fn kube_lease_holder_without_what_it_must_publish_is_not_honoured() {
        let now = Utc::now();
        let published = BTreeMap::from([(ADDRESS.to_string(), "10.0.0.1:8080".to_string())]);
        let Standing::HeldBy(holder) = judge_published(
            &lease(Some("b"), 1, 15, "10.0.0.2:8080"),
            "a",
            &published,
            now,
        ) else {
            panic!("a valid lease of another replica is honoured")
        };
        assert_eq!(holder.identity, "b");
        // A holder nobody can reach cannot serve anything.
        assert_eq!(
            judge_published(&lease(Some("b"), 1, 15, ""), "a", &published, now),
            Standing::Free
        );
        // Nothing asked for: nothing missing.
        assert!(matches!(
            judge_published(&lease(Some("b"), 1, 15, ""), "a", &BTreeMap::new(), now),
            Standing::HeldBy(_)
        ));
    }

    #[test]
    fn a_lease_may_be_taken_when_free_mine_or_run_out() {
        let now = Utc::now();
        assert!(may_take(&lease(Some(""), 0, 15, ""), "me", now));
        assert!(may_take(&lease(Some("me"), 0, 15, ""), "me", now));
        assert!(!may_take(&lease(Some("other"), 0, 15, ""), "me", now));
        assert!(may_take(&lease(Some("other"), 16, 15, ""), "me", now));
        let never_said = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some("other".into()),
                ..LeaseSpec::default()
            }),
        };
        assert!(may_take(&never_said, "me", now));
    }

    #[test]
    fn kube_lease_taken_renewed_released() {
        let settings = LeaseSettings::default();
        let t0 = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .to_utc();
        let t1 = t0 + chrono::Duration::seconds(5);
        let created = taken(None, "a", settings, t0);
        let spec = created.spec.clone().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(
            spec.lease_transitions,
            Some(0),
            "a new Lease has no transition"
        );
        // The same holder again (restarted): same acquire time, no transition.
        let again = taken(Some(&created), "a", settings, t1).spec.unwrap();
        assert_eq!(again.acquire_time, spec.acquire_time);
        assert_eq!(again.renew_time, micro_time(t1));
        assert_eq!(again.lease_transitions, Some(0));
        // Another holder: a transition, acquired now.
        let other = taken(Some(&created), "b", settings, t1).spec.unwrap();
        assert_eq!(other.acquire_time, micro_time(t1));
        assert_eq!(other.lease_transitions, Some(1));

        let renewed = renewed(&created, t1).spec.unwrap();
        assert_eq!(
            (renewed.holder_identity.as_deref(), renewed.renew_time),
            (Some("a"), micro_time(t1))
        );

        let mut published = created.clone();
        published
            .annotations_mut()
            .insert(ADDRESS.into(), "10.0.0.1:8080".into());
        published
            .annotations_mut()
            .insert("other".into(), "kept".into());
        let key = ADDRESS.to_string();
        let gone = released(&published, [&key], t1);
        assert_eq!(gone.spec.as_ref().unwrap().holder_identity, None);
        assert_eq!(judge(&gone, "b", t1), Standing::Free);
        assert!(!gone.annotations().contains_key(ADDRESS));
        assert_eq!(gone.annotations()["other"], "kept");
    }

    #[test]
    fn kube_lease_times_round_trip() {
        let at = DateTime::parse_from_rfc3339("2026-11-25T12:00:00.123456Z")
            .unwrap()
            .to_utc();
        assert_eq!(from_micro_time(&micro_time(at).unwrap()), Some(at));
    }
}
