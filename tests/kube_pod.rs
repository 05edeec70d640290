//! The spec→pod mapping as plain data: golden YAML compared exactly, so every
//! change to what mcpod asks of a cluster shows up in review. Regenerate with
//! `MCPOD_UPDATE_GOLDEN=1 cargo test --test kube_pod` and read the diff.

use std::path::PathBuf;

use mcpod::crd::MCPServerSpec;
use mcpod::kube::pod::{export_yaml, network_policy_for, pod_for};
use mcpod::policy::Policy;
use mcpod::workload::{Defaults, Target, Workload};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

const FULL_SPEC: &str = r#"
image: registry.example/mcp/files:1.2
imagePullPolicy: Always
command: [/usr/bin/files-server]
args: [--root, /data]
workingDir: /data
env:
  - {name: LOG_LEVEL, value: debug}
  - {name: API_TOKEN, valueFrom: {secretKeyRef: {name: files-secrets, key: token}}}
  - {name: REGION, valueFrom: {configMapKeyRef: {name: files-config, key: region}}}
volumes:
  - {volume: files-data, mountPath: /data}
  - {hostPath: /srv/shared, mountPath: /shared, readOnly: true}
  - {emptyDir: true, mountPath: /scratch}
  - {configMap: files-config, mountPath: /etc/files}
  - {secret: files-tls, mountPath: /etc/tls, readOnly: true}
resources: {limits: {memory: 256Mi, cpu: 500m}}
network: bridge
security:
  runAsUser: 1000
  runAsGroup: 1000
  addCapabilities: [NET_BIND_SERVICE]
  tmpfs: [/tmp, /run]
"#;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check_golden(name: &str, actual: &str) {
    let path = golden(name);
    if std::env::var_os("MCPOD_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MCPOD_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        expected == actual,
        "{name} differs from the golden file; if intended, regenerate it with MCPOD_UPDATE_GOLDEN=1\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

fn workload(name: &str, spec: &str) -> Workload {
    workload_with(name, spec, &operator_allows_full_spec())
}

fn workload_with(name: &str, spec: &str, defaults: &Defaults) -> Workload {
    let spec: MCPServerSpec = serde_yaml::from_str(spec).unwrap();
    Workload::resolve(name, &spec, defaults, Target::Kubernetes).unwrap()
}

/// FULL_SPEC asks for a host path and a capability the default policy
/// refuses: an operator allows them explicitly (`--allow-host-path
/// /srv/shared --allow-capability NET_BIND_SERVICE`).
fn operator_allows_full_spec() -> Defaults {
    Defaults {
        policy: Policy {
            allowed_host_paths: vec!["/srv/shared".into()],
            allowed_capabilities: vec!["NET_BIND_SERVICE".into()],
            ..Policy::default()
        },
        ..Defaults::default()
    }
}

#[test]
fn kube_full_spec_is_refused_by_the_default_policy() {
    let spec: MCPServerSpec = serde_yaml::from_str(FULL_SPEC).unwrap();
    let error = Workload::resolve("files", &spec, &Defaults::default(), Target::Kubernetes)
        .unwrap_err()
        .to_string();
    assert!(error.contains("refused by rule"), "{error}");
}

#[test]
fn kube_pod_user_namespace_is_opt_in() {
    let shared = pod_for(&workload("time", "image: x"), None, None);
    assert_eq!(shared.spec.unwrap().host_users, None);
    let own = Defaults {
        host_users: false,
        ..Defaults::default()
    };
    let pod = pod_for(&workload_with("time", "image: x", &own), None, None);
    assert_eq!(pod.spec.unwrap().host_users, Some(false));
}

fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "mcpod.dev/v1alpha1".into(),
        kind: "MCPServer".into(),
        name: "files".into(),
        uid: "0c5e2a4e-0000-4000-8000-000000000001".into(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

#[test]
fn kube_pod_golden_full_spec() {
    let pod = pod_for(&workload("files", FULL_SPEC), Some("tools"), Some(&owner()));
    check_golden("pod-full.yaml", &serde_yaml::to_string(&pod).unwrap());
}

#[test]
fn kube_pod_golden_defaults() {
    let pod = pod_for(
        &workload("time", "image: localhost/mcpod/time:latest"),
        Some("tools"),
        Some(&owner()),
    );
    check_golden("pod-defaults.yaml", &serde_yaml::to_string(&pod).unwrap());
}

#[test]
fn kube_networkpolicy_golden() {
    let none = network_policy_for(&workload("time", "image: x"), "tools", Some(&owner()));
    let bridge = network_policy_for(&workload("files", FULL_SPEC), "tools", Some(&owner()));
    let text = format!(
        "{}---\n{}",
        serde_yaml::to_string(&none).unwrap(),
        serde_yaml::to_string(&bridge).unwrap()
    );
    check_golden("networkpolicy.yaml", &text);
}

#[test]
fn kube_export_is_the_same_pod_without_cluster_fields() {
    let w = workload("time", "image: localhost/mcpod/time:latest");
    let text = export_yaml(&w).unwrap();
    assert!(text.starts_with("# MCPServer time, exported by `mcpod export`"));
    assert!(text.contains("--network none"), "{text}");
    let pod: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str(&text).unwrap();
    assert_eq!(pod.metadata.namespace, None);
    assert_eq!(pod.metadata.owner_references, None);
    // Named apart from mcpod's own containers (`mcpod-…`), so it plays next to them.
    assert_eq!(pod.metadata.name.as_deref(), Some("export-time"));
    let mut in_cluster = pod_for(&w, None, None);
    in_cluster.metadata.namespace = None;
    in_cluster.metadata.name = Some("export-time".into());
    assert_eq!(pod, in_cluster);
}

#[test]
fn kube_pod_hash_follows_the_pod_shape() {
    let hash = |spec: &str| {
        pod_for(&workload("time", spec), None, None)
            .metadata
            .labels
            .unwrap()["mcpod.dev/spec-hash"]
            .clone()
    };
    assert_eq!(hash("image: x"), hash("image: x\nidleTimeout: 10s"));
    assert_ne!(hash("image: x"), hash("image: y"));
    assert_ne!(
        hash("image: x"),
        hash("image: x\nresources: {limits: {memory: 1Gi}}")
    );
}
