//! The operator's MCPServerGroup controller: writes each group's status (its
//! members and collisions, decided by [`crate::group::resolve`] over the
//! MCPServers of its namespace) and a `GroupCollision` condition on every
//! MCPServer a collision leaves out of a group. It creates nothing: routers
//! serve the groups themselves (`sync_groups`, in the router's Kubernetes runtime).
//!
//! The condition on an MCPServer is applied under a field manager of its own
//! ([`GROUP_FIELD_MANAGER`]), so the server controller's whole-status apply
//! (manager `mcpod`) neither removes it nor takes it over; applying an empty
//! list under this manager removes it once the collision is resolved.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::backoff::backoff;
use crate::crd::{Condition, MCPServer, MCPServerGroup, MCPServerStatus};
use crate::group::{self, Candidate, Membership, COLLISION_CONDITION};
use crate::{Error, Result};

/// Field manager of the `GroupCollision` condition on MCPServers.
pub const GROUP_FIELD_MANAGER: &str = "mcpod-groups";
/// Longest wait between two looks at a group.
const RESYNC: Duration = Duration::from_secs(300);

/// Shared by every group reconcile.
pub struct GroupContext {
    client: Client,
}

impl GroupContext {
    pub fn new(client: Client) -> Arc<GroupContext> {
        Arc::new(GroupContext { client })
    }
}

/// A server's status without the condition this controller owns: what the
/// server controller compares its own status with.
pub fn without_group_condition(status: &MCPServerStatus) -> MCPServerStatus {
    let mut status = status.clone();
    status.conditions.retain(|c| c.type_ != COLLISION_CONDITION);
    status
}

/// Runs the group controller (groups, and every MCPServer change in their
/// namespace) until SIGTERM or Ctrl-C.
pub async fn run(groups: Api<MCPServerGroup>, servers: Api<MCPServer>, client: Client) {
    let controller = Controller::new(groups, watcher::Config::default());
    let store = controller.store();
    // Any server change may move it in or out of every group of its namespace.
    let in_namespace = move |server: MCPServer| {
        let namespace = server.namespace();
        store
            .state()
            .into_iter()
            .filter(|g| g.namespace() == namespace)
            .map(|g| ObjectRef::from_obj(&*g))
            .collect::<Vec<_>>()
    };
    info!("operator watching MCPServerGroups");
    controller
        .watches(servers, watcher::Config::default(), in_namespace)
        .shutdown_on_signal()
        .run(reconcile, error_policy, GroupContext::new(client))
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => debug!(group = %object.name, "group reconciled"),
                Err(e) => warn!(error = %e, "group reconcile failed"),
            }
        })
        .await;
}

/// One group: list its namespace's servers and groups, write the group's
/// status and the collision condition of each server, where they changed.
pub async fn reconcile(group: Arc<MCPServerGroup>, ctx: Arc<GroupContext>) -> Result<Action> {
    let namespace = group.namespace().ok_or(Error::MissingObjectKey {
        kind: "MCPServerGroup",
        field: "metadata.namespace",
    })?;
    let servers: Api<MCPServer> = Api::namespaced(ctx.client.clone(), &namespace);
    let servers = servers
        .list(&ListParams::default())
        .await
        .map_err(Error::kube(format!("list MCPServers in {namespace}")))?
        .items;
    let groups: Api<MCPServerGroup> = Api::namespaced(ctx.client.clone(), &namespace);
    let groups = groups
        .list(&ListParams::default())
        .await
        .map_err(Error::kube(format!("list MCPServerGroups in {namespace}")))?
        .items;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let membership = resolve(&group, &namespace, &servers);
    let status = group::status(&group, &membership, &now);
    if group.status.as_ref() != Some(&status) {
        write_group_status(&ctx, &group, &namespace, &status).await?;
    }
    // Every group of the namespace, since one condition sums up all of a server's collisions.
    let all: Vec<(String, Membership)> = groups
        .iter()
        .filter(|g| g.metadata.deletion_timestamp.is_none())
        .map(|g| (g.name_any(), resolve(g, &namespace, &servers)))
        .collect();
    for server in &servers {
        write_server_condition(&ctx, server, &namespace, &all, &now).await?;
    }
    Ok(Action::requeue(RESYNC))
}

fn resolve(group: &MCPServerGroup, namespace: &str, servers: &[MCPServer]) -> Membership {
    let candidates = servers
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .map(|s| Candidate {
            name: s.metadata.name.as_deref().unwrap_or_default(),
            namespace: s.metadata.namespace.as_deref(),
            labels: s.labels(),
        });
    group::resolve(&group.spec, Some(namespace), candidates)
}

/// Requeues a failed group with exponential backoff.
pub fn error_policy(group: Arc<MCPServerGroup>, error: &Error, _: Arc<GroupContext>) -> Action {
    warn!(group = %group.name_any(), %error, "group reconcile failed");
    Action::requeue(backoff(3))
}

async fn write_group_status(
    ctx: &GroupContext,
    group: &MCPServerGroup,
    namespace: &str,
    status: &crate::crd::MCPServerGroupStatus,
) -> Result<()> {
    super::apply_status::<MCPServerGroup>(&ctx.client, namespace, &group.name_any(), status).await
}

/// Applies (or removes) `server`'s `GroupCollision` condition when it differs
/// from what the groups say now.
async fn write_server_condition(
    ctx: &GroupContext,
    server: &MCPServer,
    namespace: &str,
    groups: &[(String, Membership)],
    now: &str,
) -> Result<()> {
    let name = server.name_any();
    let previous: &[Condition] = server
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let collisions = groups
        .iter()
        .flat_map(|(group, m)| m.collisions.iter().map(move |c| (group.as_str(), c)));
    let wanted = group::server_condition(&name, collisions, previous, now);
    let current = previous.iter().find(|c| c.type_ == COLLISION_CONDITION);
    if current == wanted.as_ref() {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": MCPServer::api_version(&()),
        "kind": MCPServer::kind(&()),
        "status": {"conditions": wanted.into_iter().collect::<Vec<_>>()},
    });
    Api::<MCPServer>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            &name,
            &PatchParams::apply(GROUP_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube(format!(
            "write the group collision condition of MCPServer {namespace}/{name}"
        )))?;
    Ok(())
}
