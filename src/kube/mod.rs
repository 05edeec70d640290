//! Everything Kubernetes. Two programs run against a cluster, and the modules
//! follow them; dependencies run from the top of this list to the bottom:
//!
//! - [`operator`]: `mcpod operator`, the controller that keeps one pod per
//!   running MCPServer (or per client session of an Isolated one) and scales
//!   them to zero; with several replicas, only the [`election`] winner reconciles.
//! - [`runtime`]: `mcpod router`'s [`crate::runtime::Runtime`] for pods: asks the
//!   operator for a pod, waits for it, attaches to its stdio, reports activity.
//! - [`members`]: `/mcp`'s requests for a member another replica owns go to
//!   that replica (the aggregated endpoint's counterpart of [`replicas`]).
//! - [`catalog`]: the router's catalogs of servers, kept in ConfigMaps so a
//!   restarted router and every replica list a stopped server without its pod.
//! - [`groups`]: the operator's second controller, writing MCPServerGroups'
//!   status (members, collisions) and a collision condition on their servers.
//! - [`replicas`]: several router replicas behind one Service; a request for a
//!   server goes to the replica that owns it ([`ownership`]).
//! - [`election`] and [`ownership`]: the two uses of Kubernetes Leases, thin
//!   callers of the one [`lease`] lock.
//! - [`annotations`]: what routers and the operator tell each other on an MCPServer.
//! - [`client`]: the API client both programs use (`TCP_NODELAY` on its connections).
//! - [`pod`] (building a server's Pod and NetworkPolicy) and [`pod_state`]
//!   (reading a pod's status back): pure data, no API calls.

pub mod annotations;
pub mod catalog;
pub mod client;
pub mod election;
pub mod groups;
pub mod lease;
pub mod members;
pub mod operator;
pub mod ownership;
pub mod pod;
pub mod pod_state;
pub mod replicas;
pub mod runtime;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// Field manager of every server-side apply and patch mcpod makes.
pub const FIELD_MANAGER: &str = "mcpod";

/// Deletes a pod; one already gone is success.
pub async fn delete_pod(api: &Api<Pod>, name: &str) -> Result<()> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(e) if Error::is_kube_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube(format!("delete pod {name}"))(e)),
    }
}

/// Writes `status` as the whole status mcpod owns on the `K` named `name`
/// (server-side apply under [`FIELD_MANAGER`], forced: mcpod is its only writer).
pub async fn apply_status<K>(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &impl Serialize,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(client.clone(), namespace)
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube(format!(
            "write the status of {} {namespace}/{name}",
            K::kind(&())
        )))?;
    Ok(())
}
