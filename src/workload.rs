//! The one step from an `MCPServer` spec to what a runtime runs: every field is
//! validated, defaulted and resolved here, once, so the Podman and Kubernetes
//! runtimes only translate a [`Workload`] into their own API objects.

use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::crd::{
    DesiredState, ImagePullPolicy, KeyRef, MCPServerSpec, NetworkMode, Security, SessionMode,
};
use crate::package::Package;
use crate::policy::Policy;
use crate::{duration, quantity, Error, Result};

pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_SERVER: &str = "mcpod.dev/server";
pub const LABEL_SPEC_HASH: &str = "mcpod.dev/spec-hash";
pub const LABEL_INSTANCE: &str = "mcpod.dev/instance";
pub const MANAGED_BY: &str = "mcpod";

/// Defaults for what a spec leaves out; the original system's knobs, settable by flag.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub memory: String,
    pub cpu: String,
    pub idle_timeout: Duration,
    pub startup_timeout: Duration,
    pub request_timeout: Duration,
    pub health_check_interval: Duration,
    pub stdio_buffer_size: usize,
    /// What manifests may ask of the host (`--allow-host-path`, …).
    pub policy: Policy,
    /// Kubernetes: run pods in the host's user namespace (`false`: `hostUsers:
    /// false`, a user namespace per pod, where the cluster supports it).
    pub host_users: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            memory: "512Mi".into(),
            cpu: "1".into(),
            idle_timeout: Duration::from_secs(300),
            startup_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            health_check_interval: Duration::from_secs(30),
            stdio_buffer_size: 8192,
            policy: Policy::default(),
            host_users: true,
        }
    }
}

/// Where the workload will run; decides which env and volume sources are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Podman,
    Kubernetes,
}

/// A validated, fully defaulted MCP server workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    pub name: String,
    pub image: String,
    /// `spec.package`: the image above is built from it on first use.
    pub package: Option<Package>,
    pub pull_policy: ImagePullPolicy,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<Env>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    pub memory_bytes: u64,
    pub memory_quantity: String,
    pub cpu_millis: u64,
    pub network: NetworkMode,
    pub security: Security,
    pub timeouts: Timeouts,
    pub desired_state: DesiredState,
    pub session_mode: SessionMode,
    /// Initial size of the buffer for the server's stdout.
    pub stdio_buffer_size: usize,
    /// Kubernetes: whether the pod shares the host's user namespace.
    pub host_users: bool,
    /// Who may use the server and what (`spec.access`); decided by the access module.
    pub access: Option<crate::crd::Access>,
    /// `spec.limits`: this server's own limits (the flags' where left out).
    pub limits: crate::limits::ServerLimits,
    /// What clients see of the server's tools, prompts and resources (`spec.expose`).
    pub expose: Option<crate::crd::Expose>,
    /// When the catalog is learned (`spec.catalog`).
    pub catalog: crate::crd::Learn,
    /// Hash of everything above that shapes the container: a change means a new container.
    pub spec_hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Env {
    pub name: String,
    pub value: EnvValue,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum EnvValue {
    Literal(String),
    /// Read from a file on the Podman host (`valueFromFile`): a secret, which
    /// reaches the container as a Podman secret, never as plain env.
    FromFile(String),
    Secret(KeyRef),
    ConfigMap(KeyRef),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mount {
    pub path: String,
    pub source: MountSource,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum MountSource {
    HostPath(String),
    Volume(String),
    EmptyDir,
    ConfigMap(String),
    Secret(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Timeouts {
    /// `None`: never stop for idleness.
    pub idle: Option<Duration>,
    /// `None`: never pause (`spec.pauseAfter`); else shorter than `idle`.
    pub pause: Option<Duration>,
    pub startup: Duration,
    pub request: Duration,
    /// `None`: no health checks.
    pub health_check: Option<Duration>,
}

impl Workload {
    /// Validates and resolves `spec` for server `name`. Errors name the field.
    pub fn resolve(
        name: &str,
        spec: &MCPServerSpec,
        defaults: &Defaults,
        target: Target,
    ) -> Result<Workload> {
        validate_name(name)?;
        let invalid = |field: &str, message: String| Error::invalid(name, field, message);
        let package = resolve_package(name, spec, target)?;
        let image = match &package {
            Some(package) => package.image_for(name),
            None => spec.image.trim().to_string(),
        };
        let memory_quantity = spec
            .resources
            .limits
            .memory
            .clone()
            .unwrap_or_else(|| defaults.memory.clone());
        let memory_bytes = quantity::parse_memory(&memory_quantity)
            .map_err(|e| invalid("spec.resources.limits.memory", e))?;
        let cpu = spec
            .resources
            .limits
            .cpu
            .clone()
            .unwrap_or_else(|| defaults.cpu.clone());
        let cpu_millis = quantity::parse_cpu_millis(&cpu)
            .map_err(|e| invalid("spec.resources.limits.cpu", e))?;

        let timeout = |field: &str, value: &Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => duration::parse(text).map_err(|e| invalid(field, e)),
        };
        let idle = timeout(
            "spec.idleTimeout",
            &spec.idle_timeout,
            defaults.idle_timeout,
        )?;
        let pause = timeout("spec.pauseAfter", &spec.pause_after, Duration::ZERO)?;
        let pause =
            resolve_pause(pause, idle, target).map_err(|e| invalid("spec.pauseAfter", e))?;
        let startup = timeout(
            "spec.startupTimeout",
            &spec.startup_timeout,
            defaults.startup_timeout,
        )?;
        let request = timeout(
            "spec.requestTimeout",
            &spec.request_timeout,
            defaults.request_timeout,
        )?;
        let health_check = timeout(
            "spec.healthCheckInterval",
            &spec.health_check_interval,
            defaults.health_check_interval,
        )?;
        for (field, value) in [
            ("spec.startupTimeout", startup),
            ("spec.requestTimeout", request),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than 0".into()));
            }
        }

        let env = spec
            .env
            .iter()
            .enumerate()
            .map(|(i, var)| resolve_env(name, i, var, target, &defaults.policy))
            .collect::<Result<Vec<_>>>()?;
        let mounts = spec
            .volumes
            .iter()
            .enumerate()
            .map(|(i, volume)| resolve_mount(name, i, volume, target, &defaults.policy))
            .collect::<Result<Vec<_>>>()?;
        validate_security(name, &spec.security, &defaults.policy)?;
        if let Some(access) = &spec.access {
            crate::access::spec::validate(access).map_err(|(field, e)| invalid(&field, e))?;
        }
        if let Some(expose) = &spec.expose {
            expose.validate().map_err(|(field, e)| invalid(&field, e))?;
        }

        let mut workload = Workload {
            name: name.to_string(),
            image,
            // A built image is local: no registry has it.
            pull_policy: match package {
                Some(_) => ImagePullPolicy::Never,
                None => spec.image_pull_policy,
            },
            package,
            command: spec.command.clone(),
            args: spec.args.clone(),
            env,
            working_dir: spec.working_dir.clone(),
            mounts,
            memory_bytes,
            memory_quantity,
            cpu_millis,
            network: spec.network,
            security: spec.security.clone(),
            timeouts: Timeouts {
                idle: (!idle.is_zero()).then_some(idle),
                pause,
                startup,
                request,
                health_check: (!health_check.is_zero()).then_some(health_check),
            },
            desired_state: spec.desired_state,
            session_mode: spec.session_mode,
            stdio_buffer_size: spec
                .stdio_buffer_size
                .map_or(defaults.stdio_buffer_size, |size| size as usize),
            host_users: defaults.host_users,
            access: spec.access.clone(),
            limits: spec.limits.clone().unwrap_or_default(),
            expose: spec.expose.clone(),
            catalog: spec.catalog,
            spec_hash: String::new(),
        };
        workload.spec_hash = workload.container_hash();
        Ok(workload)
    }

    /// Hash of the fields that shape the container. Timeouts and desired state
    /// are left out: changing them must not replace a running container.
    fn container_hash(&self) -> String {
        let shape = serde_json::json!({
            "image": self.image, "command": self.command, "args": self.args,
            "env": self.env, "workingDir": self.working_dir, "mounts": self.mounts,
            "memory": self.memory_bytes, "cpu": self.cpu_millis, "network": self.network,
            "security": self.security,
        });
        let digest = Sha256::digest(shape.to_string().as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `spec.pauseAfter`: off at zero, Podman only, and before the idle stop
/// (`idle` zero: never stopped, so any pause comes first).
fn resolve_pause(
    pause: Duration,
    idle: Duration,
    target: Target,
) -> std::result::Result<Option<Duration>, String> {
    if pause.is_zero() {
        return Ok(None);
    }
    if target == Target::Kubernetes {
        return Err(
            "Kubernetes cannot pause a pod; remove it (idleTimeout still \
                    scales the server to zero)"
                .into(),
        );
    }
    if !idle.is_zero() && pause >= idle {
        return Err(format!(
            "must be shorter than idleTimeout ({}), or the server is stopped before it is paused",
            duration::format(idle)
        ));
    }
    Ok(Some(pause))
}

/// `spec.image` or `spec.package` (exactly one); a package only where mcpod can build it.
fn resolve_package(name: &str, spec: &MCPServerSpec, target: Target) -> Result<Option<Package>> {
    let invalid = |field: &str, message: String| Error::invalid(name, field, message);
    let has_image = !spec.image.trim().is_empty();
    let Some(source) = &spec.package else {
        return match has_image {
            true => Ok(None),
            false => Err(invalid(
                "spec.image",
                "is required (or spec.package: {npm: NAME[@VERSION]} | {pypi: NAME[==VERSION]})"
                    .into(),
            )),
        };
    };
    if has_image {
        return Err(invalid(
            "spec.package",
            "give either spec.image or spec.package, not both".into(),
        ));
    }
    let package = match (&source.npm, &source.pypi) {
        (Some(npm), None) => Package::npm(npm),
        (None, Some(pypi)) => Package::pypi(pypi),
        _ => Err("needs exactly one of npm and pypi".to_string()),
    }
    .map_err(|e| invalid("spec.package", e))?;
    if target == Target::Kubernetes {
        return Err(invalid(
            "spec.package",
            "is built by `mcpod serve` on a Podman host; on Kubernetes the nodes pull images \
             from a registry: build it with `mcpod add NAME --npm|--pypi …`, push the image \
             and set spec.image"
                .into(),
        ));
    }
    Ok(Some(package))
}

/// Server names become container and pod names: DNS-1123 labels.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            name,
            "metadata.name",
            format!(
                "'{name}' is not a valid name: use 1-63 lower-case letters, digits and '-', \
                 starting and ending with a letter or digit"
            ),
        ))
    }
}

/// Whether `name` is a POSIX shell identifier (`/bin/sh` can export it).
fn is_shell_identifier(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn resolve_env(
    server: &str,
    index: usize,
    var: &crate::crd::EnvVar,
    target: Target,
    policy: &Policy,
) -> Result<Env> {
    let field = format!("spec.env[{index}]");
    let invalid = |message: String| Error::invalid(server, &field, message);
    if var.name.is_empty() || var.name.contains('=') {
        return Err(invalid(format!(
            "'{}' is not a valid variable name",
            var.name
        )));
    }
    let sources = [
        var.value.is_some(),
        var.value_from_file.is_some(),
        var.value_from.is_some(),
    ];
    if sources.iter().filter(|set| **set).count() != 1 {
        return Err(invalid(format!(
            "{}: set exactly one of value, valueFromFile, valueFrom",
            var.name
        )));
    }
    let value = if let Some(value) = &var.value {
        EnvValue::Literal(value.clone())
    } else if let Some(path) = &var.value_from_file {
        if target == Target::Kubernetes {
            return Err(invalid(format!(
                "{}: valueFromFile reads a file on a Podman host; on Kubernetes use valueFrom.secretKeyRef",
                var.name
            )));
        }
        // Exported from a Podman secret by /bin/sh (see runtime::podman).
        if !is_shell_identifier(&var.name) {
            return Err(invalid(format!(
                "{}: a valueFromFile variable needs a shell name (letters, digits and _, \
                 not starting with a digit)",
                var.name
            )));
        }
        let file = policy
            .check_secret_file(path)
            .map_err(|refusal| invalid(format!("{}: {refusal}", var.name)))?;
        let content = std::fs::read_to_string(file).map_err(|e| {
            invalid(format!(
                "{}: cannot read valueFromFile {path}: {e}",
                var.name
            ))
        })?;
        EnvValue::FromFile(content.trim_end_matches(['\n', '\r']).to_string())
    } else {
        let source = var.value_from.as_ref().expect("counted above");
        if target == Target::Podman {
            return Err(invalid(format!(
                "{}: valueFrom (Secret/ConfigMap) needs Kubernetes; on a Podman host use valueFromFile",
                var.name
            )));
        }
        match (&source.secret_key_ref, &source.config_map_key_ref) {
            (Some(secret), None) => EnvValue::Secret(secret.clone()),
            (None, Some(config_map)) => EnvValue::ConfigMap(config_map.clone()),
            _ => {
                return Err(invalid(format!(
                    "{}: valueFrom needs exactly one of secretKeyRef, configMapKeyRef",
                    var.name
                )))
            }
        }
    };
    Ok(Env {
        name: var.name.clone(),
        value,
    })
}

fn resolve_mount(
    server: &str,
    index: usize,
    volume: &crate::crd::Volume,
    target: Target,
    policy: &Policy,
) -> Result<Mount> {
    let field = format!("spec.volumes[{index}]");
    let invalid = |message: String| Error::invalid(server, &field, message);
    if !volume.mount_path.starts_with('/') {
        return Err(invalid(format!(
            "mountPath '{}' must be an absolute path",
            volume.mount_path
        )));
    }
    let mut sources = vec![];
    if let Some(path) = &volume.host_path {
        if !path.starts_with('/') {
            return Err(invalid(format!(
                "hostPath '{path}' must be an absolute path"
            )));
        }
        policy
            .check_host_path(path)
            .map_err(|refusal| invalid(refusal.to_string()))?;
        sources.push(MountSource::HostPath(path.clone()));
    }
    if let Some(name) = &volume.volume {
        sources.push(MountSource::Volume(name.clone()));
    }
    if volume.empty_dir {
        sources.push(MountSource::EmptyDir);
    }
    if let Some(name) = &volume.config_map {
        sources.push(MountSource::ConfigMap(name.clone()));
    }
    if let Some(name) = &volume.secret {
        sources.push(MountSource::Secret(name.clone()));
    }
    if sources.len() != 1 {
        return Err(invalid(
            "set exactly one of hostPath, volume, emptyDir, configMap, secret".into(),
        ));
    }
    let source = sources.pop().expect("one source");
    if target == Target::Podman
        && matches!(source, MountSource::ConfigMap(_) | MountSource::Secret(_))
    {
        return Err(invalid(
            "configMap and secret volumes need Kubernetes; on a Podman host use hostPath".into(),
        ));
    }
    Ok(Mount {
        path: volume.mount_path.clone(),
        source,
        read_only: volume.read_only,
    })
}

fn validate_security(server: &str, security: &Security, policy: &Policy) -> Result<()> {
    policy
        .check_user(security.run_as_user)
        .map_err(|r| Error::invalid(server, "spec.security.runAsUser", r.to_string()))?;
    policy
        .check_capabilities(&security.add_capabilities)
        .map_err(|r| Error::invalid(server, "spec.security.addCapabilities", r.to_string()))?;
    if security.run_as_user < 0 {
        return Err(Error::invalid(
            server,
            "spec.security.runAsUser",
            "must be 0 or greater",
        ));
    }
    for path in &security.tmpfs {
        if !path.starts_with('/') {
            return Err(Error::invalid(
                server,
                "spec.security.tmpfs",
                format!("'{path}' must be an absolute path"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> MCPServerSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn resolve(yaml: &str) -> Result<Workload> {
        Workload::resolve("time", &spec(yaml), &Defaults::default(), Target::Podman)
    }

    #[test]
    fn defaults_fill_what_the_spec_leaves_out() {
        let w = resolve("image: localhost/mcpod/time").unwrap();
        assert_eq!(w.memory_bytes, 512 * 1024 * 1024);
        assert_eq!(w.cpu_millis, 1000);
        assert_eq!(w.timeouts.idle, Some(Duration::from_secs(300)));
        assert_eq!(w.timeouts.request, Duration::from_secs(30));
        assert_eq!(w.spec_hash.len(), 16);
    }

    #[test]
    fn zero_idle_timeout_means_never() {
        let w = resolve("image: x\nidleTimeout: '0'").unwrap();
        assert_eq!(w.timeouts.idle, None);
    }

    #[test]
    fn pause_is_off_by_default_shorter_than_the_idle_stop_and_podman_only() {
        assert_eq!(resolve("image: x").unwrap().timeouts.pause, None);
        let w = resolve("image: x\npauseAfter: 20s\nidleTimeout: 5m").unwrap();
        assert_eq!(w.timeouts.pause, Some(Duration::from_secs(20)));
        let never_stopped = resolve("image: x\npauseAfter: 20s\nidleTimeout: '0'").unwrap();
        assert_eq!(never_stopped.timeouts.pause, Some(Duration::from_secs(20)));
        let late = resolve("image: x\npauseAfter: 5m\nidleTimeout: 5m").unwrap_err();
        assert!(late.to_string().contains("spec.pauseAfter"), "{late}");
        assert!(
            late.to_string().contains("shorter than idleTimeout"),
            "{late}"
        );
        let kube = Workload::resolve(
            "time",
            &spec("image: x\npauseAfter: 20s"),
            &Defaults::default(),
            Target::Kubernetes,
        )
        .unwrap_err();
        assert!(
            kube.to_string().contains("Kubernetes cannot pause"),
            "{kube}"
        );
        let off_on_kube = Workload::resolve(
            "time",
            &spec("image: x\npauseAfter: '0'"),
            &Defaults::default(),
            Target::Kubernetes,
        );
        assert!(off_on_kube.is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let err = resolve("image: x\nresources: {limits: {memory: 12XB}}").unwrap_err();
        assert!(
            err.to_string().contains("spec.resources.limits.memory"),
            "{err}"
        );
        let err = resolve("image: x\nidleTimeout: soon").unwrap_err();
        assert!(err.to_string().contains("spec.idleTimeout"), "{err}");
        let err = resolve("image: ' '").unwrap_err();
        assert!(err.to_string().contains("spec.image"), "{err}");
        let err = resolve("image: x\nvolumes: [{mountPath: /d}]").unwrap_err();
        assert!(err.to_string().contains("spec.volumes[0]"), "{err}");
        let err = resolve("image: x\nenv: [{name: A, value: b, valueFromFile: /f}]").unwrap_err();
        assert!(err.to_string().contains("spec.env[0]"), "{err}");
        let bad_name = Workload::resolve(
            "Bad_Name",
            &spec("image: x"),
            &Defaults::default(),
            Target::Podman,
        );
        assert!(bad_name.unwrap_err().to_string().contains("metadata.name"));
    }

    #[test]
    fn env_from_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let defaults = Defaults {
            policy: Policy {
                secrets_dirs: vec![dir.path().to_path_buf()],
                ..Policy::default()
            },
            ..Defaults::default()
        };
        let text = format!(
            "image: x\nenv: [{{name: TOKEN, valueFromFile: {}}}]",
            file.display()
        );
        let w = Workload::resolve("time", &spec(&text), &defaults, Target::Podman).unwrap();
        assert_eq!(w.env[0].value, EnvValue::FromFile("s3cret".into()));
        let missing =
            resolve("image: x\nenv: [{name: T, valueFromFile: /etc/mcpod/secrets/nonexistent}]");
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("cannot read valueFromFile"));
        let outside = resolve(&text).unwrap_err().to_string();
        assert!(
            outside.contains("spec.env[0]") && outside.contains("refused by rule secrets-dir"),
            "{outside}"
        );
        // /bin/sh exports it from a Podman secret: a shell name only.
        for bad in ["odd.name", "1ST", "with-dash"] {
            let text = format!(
                "image: x\nenv: [{{name: '{bad}', valueFromFile: {}}}]",
                file.display()
            );
            let error = Workload::resolve("time", &spec(&text), &defaults, Target::Podman)
                .unwrap_err()
                .to_string();
            assert!(error.contains("needs a shell name"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_policy_refuses_what_the_operator_did_not_allow() {
        for (yaml, field, rule) in [
            (
                "volumes: [{hostPath: /etc, mountPath: /e}]",
                "spec.volumes[0]",
                "forbidden-host-path",
            ),
            (
                "volumes: [{hostPath: /home, mountPath: /h}]",
                "spec.volumes[0]",
                "allowed-host-paths",
            ),
            (
                "security: {runAsUser: 0}",
                "spec.security.runAsUser",
                "no-root",
            ),
            (
                "security: {addCapabilities: [SYS_ADMIN]}",
                "spec.security.addCapabilities",
                "no-added-capabilities",
            ),
        ] {
            for target in [Target::Podman, Target::Kubernetes] {
                let error = Workload::resolve(
                    "x",
                    &spec(&format!("image: x\n{yaml}")),
                    &Defaults::default(),
                    target,
                )
                .unwrap_err()
                .to_string();
                assert!(
                    error.contains(field) && error.contains(&format!("refused by rule {rule}")),
                    "{error}"
                );
            }
        }
        assert!(
            resolve("image: x\nvolumes: [{hostPath: /srv/mcpod/files, mountPath: /d}]").is_ok()
        );
    }

    #[test]
    fn hash_changes_with_the_container_shape_only() {
        let base = resolve("image: x").unwrap();
        let other_image = resolve("image: y").unwrap();
        let other_timeout = resolve("image: x\nidleTimeout: 10s").unwrap();
        assert_ne!(base.spec_hash, other_image.spec_hash);
        assert_eq!(base.spec_hash, other_timeout.spec_hash);
    }

    #[test]
    fn kubernetes_only_sources_are_refused_on_podman() {
        let err = resolve("image: x\nvolumes: [{mountPath: /c, configMap: cm}]").unwrap_err();
        assert!(err.to_string().contains("need Kubernetes"), "{err}");
        let k8s = Workload::resolve(
            "time",
            &spec("image: x\nenv: [{name: T, valueFrom: {secretKeyRef: {name: s, key: k}}}]"),
            &Defaults::default(),
            Target::Kubernetes,
        )
        .unwrap();
        assert!(matches!(k8s.env[0].value, EnvValue::Secret(_)));
    }
}
