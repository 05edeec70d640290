//! What a pod is doing, read from its status: the one reading both the
//! router (waiting for a pod to run) and the operator (writing an MCPServer's
//! status) use. Pure: tested as plain data.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::pod::CONTAINER_NAME;

/// What a pod is doing, as far as running an MCP server goes. Both the router
/// (waiting for a pod) and the operator (writing status) read pods through this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// The server container runs.
    Running {
        container_id: Option<String>,
        started_at: Option<String>,
        restarts: i32,
    },
    /// Not running yet: being scheduled, pulling, creating.
    Pending { scheduled: bool, reason: String },
    /// Will not run without a change: the message says why.
    Failed {
        kind: FailureKind,
        message: String,
        restarts: i32,
    },
    /// Being deleted.
    Terminating,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    ImagePull,
    /// The container exits (CrashLoopBackOff, or a pod phase of Failed/Succeeded).
    Crash,
    /// The kubelet cannot create the container (missing Secret or ConfigMap key, …).
    Config,
}

const IMAGE_PULL_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
];
const CONFIG_REASONS: &[&str] = &[
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Reads a pod's state from its status.
pub fn observe(pod: &Pod) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Terminating;
    }
    let status = pod.status.clone().unwrap_or_default();
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|all| all.iter().find(|c| c.name == CONTAINER_NAME))
        .cloned();
    let restarts = container.as_ref().map_or(0, |c| c.restart_count);
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if matches!(phase, "Failed" | "Succeeded") {
        let message = container
            .as_ref()
            .and_then(termination)
            .or(status.message.clone())
            .unwrap_or_else(|| format!("pod is {phase}"));
        return PodState::Failed {
            kind: FailureKind::Crash,
            message,
            restarts,
        };
    }
    if let Some(container) = &container {
        if let Some(failed) = waiting_failure(container, restarts) {
            return failed;
        }
        if let Some(running) = container.state.as_ref().and_then(|s| s.running.as_ref()) {
            return PodState::Running {
                container_id: container.container_id.clone(),
                started_at: running.started_at.as_ref().map(|t| t.0.to_string()),
                restarts,
            };
        }
    }
    let scheduled = is_scheduled(pod);
    let reason = container
        .as_ref()
        .and_then(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .unwrap_or_else(|| {
            if scheduled {
                "ContainerCreating".into()
            } else {
                not_scheduled_reason(pod)
            }
        });
    PodState::Pending { scheduled, reason }
}

/// Whether the scheduler has placed the pod on a node.
pub fn is_scheduled(pod: &Pod) -> bool {
    scheduled_condition(pod).is_some_and(|c| c.status == "True")
}

fn scheduled_condition(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
}

/// "Unschedulable: 0/3 nodes are available: …", or "Scheduling" before the scheduler said anything.
fn not_scheduled_reason(pod: &Pod) -> String {
    match scheduled_condition(pod) {
        Some(c) if c.status == "False" => {
            let reason = c.reason.as_deref().unwrap_or("Unschedulable");
            match c.message.as_deref().filter(|m| !m.is_empty()) {
                Some(message) => format!("{reason}: {message}"),
                None => reason.to_string(),
            }
        }
        _ => "Scheduling".into(),
    }
}

/// A waiting container that will not start by itself: a pull error, a config
/// error, or a crash loop (with why it last exited).
fn waiting_failure(container: &ContainerStatus, restarts: i32) -> Option<PodState> {
    let waiting = container.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().unwrap_or("");
    let detail = waiting.message.as_deref().unwrap_or("").trim();
    let with_detail = |text: String| {
        if detail.is_empty() {
            text
        } else {
            format!("{text}: {detail}")
        }
    };
    let (kind, message) = if IMAGE_PULL_REASONS.contains(&reason) {
        (
            FailureKind::ImagePull,
            with_detail(format!(
                "image {} cannot be pulled ({reason})",
                container.image
            )),
        )
    } else if CONFIG_REASONS.contains(&reason) {
        (
            FailureKind::Config,
            with_detail(format!("container cannot be created ({reason})")),
        )
    } else if reason == "CrashLoopBackOff" {
        let last = termination(container).unwrap_or_else(|| "exited".into());
        (
            FailureKind::Crash,
            format!("container {last}; restarted {restarts} times, backing off (CrashLoopBackOff)"),
        )
    } else {
        return None;
    };
    Some(PodState::Failed {
        kind,
        message,
        restarts,
    })
}

/// "exited with code 1 (Error)" from the current or last terminated state.
fn termination(container: &ContainerStatus) -> Option<String> {
    let terminated = container
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| container.last_state.as_ref()?.terminated.as_ref())?;
    let mut text = match terminated.reason.as_deref() {
        Some("OOMKilled") => "was killed: out of memory".to_string(),
        Some(reason) => format!("exited with code {} ({reason})", terminated.exit_code),
        None => format!("exited with code {}", terminated.exit_code),
    };
    if let Some(message) = terminated.message.as_deref().filter(|m| !m.is_empty()) {
        text.push_str(&format!(": {}", message.trim()));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "mcpod-time"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn kube_observe_running_pending_and_failures() {
        let running = pod(json!({"phase": "Running", "containerStatuses": [{
            "name": "server", "image": "x", "imageID": "", "ready": true, "restartCount": 2,
            "containerID": "containerd://abc",
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}));
        assert!(matches!(
            observe(&running),
            PodState::Running { restarts: 2, container_id: Some(ref id), .. } if id == "containerd://abc"
        ));
        let unscheduled = pod(json!({"phase": "Pending"}));
        assert_eq!(
            observe(&unscheduled),
            PodState::Pending {
                scheduled: false,
                reason: "Scheduling".into()
            }
        );
        let full = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}),
        );
        assert_eq!(
            observe(&full),
            PodState::Pending {
                scheduled: false,
                reason: "Unschedulable: 0/3 nodes are available".into()
            }
        );
        let pull = pod(json!({"phase": "Pending", "containerStatuses": [{
            "name": "server", "image": "nope:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}));
        let PodState::Failed { kind, message, .. } = observe(&pull) else {
            panic!("image pull errors are failures")
        };
        assert_eq!(kind, FailureKind::ImagePull);
        assert!(
            message.contains("image nope:1 cannot be pulled"),
            "{message}"
        );
        let crash = pod(json!({"phase": "Running", "containerStatuses": [{
            "name": "server", "image": "x", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}));
        let PodState::Failed { kind, message, .. } = observe(&crash) else {
            panic!("crash loops are failures")
        };
        assert_eq!(kind, FailureKind::Crash);
        assert!(message.contains("exited with code 1 (Error)"), "{message}");
    }
}
