//! The annotations on an MCPServer through which routers and the operator talk:
//! a router asks for a pod (`wake-requested-at`, or one per client session of an
//! Isolated server) and reports use (`last-activity`); the operator reads them to
//! create pods and scale them to zero. Several router replicas write them, so
//! each write touches only its own key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

use crate::crd::MCPServer;
use crate::workload::Workload;
use crate::{Error, Result};

/// Set by a router to ask the operator for a server's pod (RFC 3339).
pub const ANNOTATION_WAKE: &str = "mcpod.dev/wake-requested-at";
/// Set by routers, throttled, while a server's stdio carries traffic (RFC 3339).
pub const ANNOTATION_ACTIVITY: &str = "mcpod.dev/last-activity";
/// Prefix of the per-session annotations (`sessions.mcpod.dev/<session>`, RFC 3339
/// of the session's last activity): one key per session, so routers that write
/// them with merge patches never overwrite each other's.
pub const SESSION_ANNOTATION_PREFIX: &str = "sessions.mcpod.dev/";
/// Added to the request timeout for the shortest idle time (see [`shortest_idle`]).
const REQUEST_SLACK: Duration = Duration::from_secs(5);

/// The annotation that asks for (and keeps alive) the pod of one client session.
pub fn session_annotation(session: &str) -> String {
    format!("{SESSION_ANNOTATION_PREFIX}{session}")
}

/// The JSON pointer (RFC 6901) of an annotation, its `~` and `/` escaped.
pub fn annotation_pointer(annotation: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        annotation.replace('~', "~0").replace('/', "~1")
    )
}

/// Updates an annotation only if it is still there (a JSON patch `replace`
/// fails on a missing key): an activity report must not bring back the
/// annotation of a session that ended meanwhile. `Ok(false)`: it was gone.
pub async fn refresh_annotation(
    api: &Api<MCPServer>,
    name: &str,
    annotation: &str,
    at: DateTime<Utc>,
) -> Result<bool> {
    let patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": annotation_pointer(annotation), "value": at.to_rfc3339()}
    ]))?;
    match api
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => Ok(true),
        // The API server answers 422 when a patch operation cannot apply.
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(false),
        Err(e) => Err(Error::kube(format!(
            "refresh {annotation} on MCPServer {name}"
        ))(e)),
    }
}

/// Removes an annotation with a merge patch (null deletes a key; a missing key is fine).
pub async fn remove_annotation(api: &Api<MCPServer>, name: &str, annotation: &str) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {annotation: null}}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        // The server itself is gone: so is the annotation.
        Err(e) if Error::is_kube_not_found(&e) => Ok(()),
        Err(e) => Err(Error::kube(format!(
            "remove {annotation} from MCPServer {name}"
        ))(e)),
    }
}

/// Writes an RFC 3339 annotation on an MCPServer with a merge patch, which
/// touches nothing else (the spec stays the user's, the status the operator's).
pub async fn annotate(
    api: &Api<MCPServer>,
    name: &str,
    annotation: &str,
    at: DateTime<Utc>,
) -> Result<()> {
    let patch = json!({"metadata": {"annotations": {annotation: at.to_rfc3339()}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::kube(format!(
            "annotate MCPServer {name} with {annotation}"
        )))?;
    Ok(())
}

/// The operator never scales a server to zero sooner than this after its
/// last activity, whatever its idle timeout: the answer to a request written
/// then may take the request timeout to come.
pub fn shortest_idle(workload: &Workload) -> Duration {
    workload.timeouts.request + REQUEST_SLACK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_annotation_keys_and_pointers() {
        assert_eq!(session_annotation("s1"), "sessions.mcpod.dev/s1");
        assert_eq!(
            annotation_pointer("sessions.mcpod.dev/s1"),
            "/metadata/annotations/sessions.mcpod.dev~1s1"
        );
        assert_eq!(annotation_pointer("a~b"), "/metadata/annotations/a~0b");
    }
}
