//! The pure mapping from a [`Workload`] to the Kubernetes objects that run it:
//! one Pod (also what `mcpod export` prints for `podman kube play`) and one
//! NetworkPolicy. No API calls here, so the mapping is tested as plain data.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapKeySelector, ConfigMapVolumeSource, Container, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HostPathVolumeSource, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use sha2::{Digest, Sha256};

use crate::crd::{ImagePullPolicy, NetworkMode};
use crate::workload::{
    EnvValue, MountSource, Workload, LABEL_MANAGED_BY, LABEL_SERVER, LABEL_SPEC_HASH, MANAGED_BY,
};

/// The one container of a server pod; attach targets it by name.
pub const CONTAINER_NAME: &str = "server";
/// Size of each writable in-memory directory, as the Podman runtime mounts it.
const TMPFS_SIZE: &str = "64Mi";
/// Seconds between SIGTERM and SIGKILL, as the Podman runtime stops containers.
const TERM_GRACE_SECS: i64 = 2;

/// The pod (and NetworkPolicy) name for a server: `mcpod-<name>`, like the Podman container.
pub fn pod_name(server: &str) -> String {
    format!("mcpod-{server}")
}

/// Label of a pod that serves one client session (`sessionMode: Isolated`): the session's key.
pub const LABEL_SESSION: &str = "mcpod.dev/session";

/// The pod of one client session of a server: `mcpod-<name>-<session>`.
pub fn session_pod_name(server: &str, session: &str) -> String {
    format!("{}-{session}", pod_name(server))
}

/// Whether `session` can name a session pod and its annotation: 1-20 lower-case
/// letters, digits and '-', starting and ending with a letter or digit (routers
/// make `s` and 8 hex digits).
pub fn is_valid_session_key(session: &str) -> bool {
    (1..=20).contains(&session.len())
        && session
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !session.starts_with('-')
        && !session.ends_with('-')
}

/// The pod for one client session: the server's pod (same spec, same spec hash,
/// so the same NetworkPolicy selects it) under its own name, labelled with the session.
pub fn session_pod_for(
    workload: &Workload,
    session: &str,
    namespace: Option<&str>,
    owner: Option<&OwnerReference>,
) -> Pod {
    let mut pod = pod_for(workload, namespace, owner);
    pod.metadata.name = Some(session_pod_name(&workload.name, session));
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_SESSION.to_string(), session.to_string());
    pod
}

/// The labels that select a server's pod.
pub fn selector_labels(server: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_SERVER.to_string(), server.to_string()),
    ])
}

/// The pod that runs `workload`: one container with stdin held open so the
/// router can attach, limits, and every hardening option the workload asks for.
/// `namespace` and `owner` are left out for `mcpod export`.
pub fn pod_for(
    workload: &Workload,
    namespace: Option<&str>,
    owner: Option<&OwnerReference>,
) -> Pod {
    let (volumes, mounts) = volumes_for(workload);
    let spec = PodSpec {
        containers: vec![container_for(workload, mounts)],
        volumes: Some(volumes),
        // Always: a crashed server is restarted by the kubelet with CrashLoopBackOff,
        // and a server that exits on its own is never left Succeeded with no way back.
        restart_policy: Some("Always".into()),
        // The server talks only through stdio; it needs no API access nor service env.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(TERM_GRACE_SECS),
        // A user namespace per pod (`--pod-user-namespace`), so per-uid limits
        // and a misbehaving server stay inside one pod; clusters without
        // support for it run pods with `hostUsers: false` refused, so opt-in.
        host_users: (!workload.host_users).then_some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(workload.security.run_as_user != 0),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };
    let mut labels = selector_labels(&workload.name);
    labels.insert(LABEL_SPEC_HASH.to_string(), spec_hash(&spec));
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&workload.name)),
            namespace: namespace.map(str::to_string),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// Hash of the whole pod spec, so a change in what mcpod itself asks of the
/// cluster (not only in the MCPServer) also replaces old pods.
fn spec_hash(spec: &PodSpec) -> String {
    let json = serde_json::to_string(spec).unwrap_or_default();
    let digest = Sha256::digest(json.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn container_for(workload: &Workload, volume_mounts: Vec<VolumeMount>) -> Container {
    let limits = BTreeMap::from([
        (
            "memory".to_string(),
            Quantity(workload.memory_quantity.clone()),
        ),
        (
            "cpu".to_string(),
            Quantity(format!("{}m", workload.cpu_millis)),
        ),
    ]);
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    Container {
        name: CONTAINER_NAME.into(),
        image: Some(workload.image.clone()),
        image_pull_policy: Some(pull_policy(workload.pull_policy).into()),
        command: non_empty(&workload.command),
        args: non_empty(&workload.args),
        env: (!workload.env.is_empty()).then(|| workload.env.iter().map(env_var).collect()),
        working_dir: workload.working_dir.clone(),
        // Requests equal limits: a started server keeps what it was given (Guaranteed QoS).
        resources: Some(ResourceRequirements {
            limits: Some(limits.clone()),
            requests: Some(limits),
            ..ResourceRequirements::default()
        }),
        security_context: Some(container_security(workload)),
        // The router speaks MCP over the attached stdin/stdout; stdin must stay
        // open across attaches (stdinOnce: false) and carry no terminal framing.
        stdin: Some(true),
        stdin_once: Some(false),
        tty: Some(false),
        volume_mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
        ..Container::default()
    }
}

fn pull_policy(policy: ImagePullPolicy) -> &'static str {
    match policy {
        ImagePullPolicy::Always => "Always",
        ImagePullPolicy::IfNotPresent => "IfNotPresent",
        ImagePullPolicy::Never => "Never",
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

fn container_security(workload: &Workload) -> SecurityContext {
    let security = &workload.security;
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    SecurityContext {
        run_as_user: Some(security.run_as_user),
        run_as_group: security.run_as_group,
        run_as_non_root: Some(security.run_as_user != 0),
        read_only_root_filesystem: Some(security.read_only_root_filesystem),
        allow_privilege_escalation: Some(!security.no_new_privileges),
        capabilities: Some(Capabilities {
            drop: non_empty(&security.drop_capabilities),
            add: non_empty(&security.add_capabilities),
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn env_var(env: &crate::workload::Env) -> EnvVar {
    let (value, value_from) = match &env.value {
        // `mcpod export` for `podman kube play`: the file's content, as read there.
        EnvValue::Literal(value) | EnvValue::FromFile(value) => (Some(value.clone()), None),
        EnvValue::Secret(key) => (
            None,
            Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: key.name.clone(),
                    key: key.key.clone(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        ),
        EnvValue::ConfigMap(key) => (
            None,
            Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: key.name.clone(),
                    key: key.key.clone(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        ),
    };
    EnvVar {
        name: env.name.clone(),
        value,
        value_from,
    }
}

/// Pod volumes and the container's mounts: one in-memory emptyDir per tmpfs
/// path (the writable places of a read-only root), then the spec's volumes.
fn volumes_for(workload: &Workload) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![];
    let mut mounts = vec![];
    for (index, path) in workload.security.tmpfs.iter().enumerate() {
        let name = format!("tmpfs-{index}");
        volumes.push(Volume {
            name: name.clone(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity(TMPFS_SIZE.into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name,
            mount_path: path.clone(),
            ..VolumeMount::default()
        });
    }
    for (index, mount) in workload.mounts.iter().enumerate() {
        let name = format!("volume-{index}");
        let mut volume = Volume {
            name: name.clone(),
            ..Volume::default()
        };
        match &mount.source {
            MountSource::HostPath(path) => {
                volume.host_path = Some(HostPathVolumeSource {
                    path: path.clone(),
                    type_: None,
                })
            }
            // A named Podman volume is a PersistentVolumeClaim on Kubernetes;
            // `podman kube play` maps a claim back to a named volume.
            MountSource::Volume(claim) => {
                volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: mount.read_only.then_some(true),
                })
            }
            MountSource::EmptyDir => volume.empty_dir = Some(EmptyDirVolumeSource::default()),
            MountSource::ConfigMap(config_map) => {
                volume.config_map = Some(ConfigMapVolumeSource {
                    name: config_map.clone(),
                    ..ConfigMapVolumeSource::default()
                })
            }
            MountSource::Secret(secret) => {
                volume.secret = Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    ..SecretVolumeSource::default()
                })
            }
        }
        volumes.push(volume);
        mounts.push(VolumeMount {
            name,
            mount_path: mount.path.clone(),
            read_only: mount.read_only.then_some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

/// Ingress to the server pod is always denied (the router reaches it through
/// the API server's attach, not the pod network); egress only with `network: bridge`.
pub fn network_policy_for(
    workload: &Workload,
    namespace: &str,
    owner: Option<&OwnerReference>,
) -> NetworkPolicy {
    let egress = match workload.network {
        NetworkMode::Bridge => vec![NetworkPolicyEgressRule::default()],
        NetworkMode::None => vec![],
    };
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(pod_name(&workload.name)),
            namespace: Some(namespace.to_string()),
            labels: Some(selector_labels(&workload.name)),
            owner_references: owner.map(|o| vec![o.clone()]),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&workload.name)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![]),
            egress: Some(egress),
        }),
    }
}

/// The name of an exported pod: `export-<name>`. Every name mcpod gives a
/// Podman container starts with `mcpod-` (`mcpod-<name>`, `mcpod-<instance>-<name>`,
/// session containers), so an exported pod and `podman kube play`'s container
/// in it (`export-<name>-server`) can be played next to a running mcpod: Podman
/// pods and containers share one set of names.
pub fn export_pod_name(server: &str) -> String {
    format!("export-{server}")
}

/// The pod as YAML for `podman kube play`, with a header saying what differs
/// from a Kubernetes run.
pub fn export_yaml(workload: &Workload) -> crate::Result<String> {
    let mut pod = pod_for(workload, None, None);
    pod.metadata.name = Some(export_pod_name(&workload.name));
    let yaml = serde_yaml::to_string(&pod)
        .map_err(|e| crate::Error::Runtime(format!("cannot render pod YAML: {e}")))?;
    let network = match workload.network {
        NetworkMode::None => "network: none: run with `podman kube play --network none` (Kubernetes uses a NetworkPolicy)",
        NetworkMode::Bridge => "network: bridge: egress allowed",
    };
    // podman-kube-play(1) of Podman 4.3 lists stdin/stdinOnce/tty as unsupported.
    Ok(format!(
        "# MCPServer {name}, exported by `mcpod export`; run with `podman kube play`.\n# {network}\n\
         # Podman 4.3 ignores `stdin: true` here: a server that exits when stdin closes needs\n\
         # a Podman that honours it, or `mcpod serve`, which attaches to stdin itself.\n{yaml}",
        name = workload.name
    ))
}
