//! Guardrails on what an MCPServer may ask of the host, set by the operator
//! (flags), applied by `Workload::resolve` (src/workload.rs) on Podman and
//! Kubernetes alike. A manifest that asks for more is refused, naming the rule,
//! so whoever may write manifests cannot take the host over through mcpod.

use std::path::{Component, Path, PathBuf};

/// Host paths no allowed list can open: the host's root, its configuration,
/// kernel interfaces, and container engines' sockets and storage (a container
/// with the Podman or Docker socket is root on the host).
const FORBIDDEN_HOST_PATHS: &[&str] = &[
    "/",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
    "/run/podman",
    "/var/run/podman",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd",
    "/var/lib/containers",
    "/var/lib/docker",
    "/var/lib/kubelet",
];

/// The names rules are refused under, in errors and in `/health`.
pub const RULE_HOST_PATH: &str = "allowed-host-paths";
pub const RULE_FORBIDDEN_PATH: &str = "forbidden-host-path";
pub const RULE_ROOT: &str = "no-root";
pub const RULE_CAPABILITIES: &str = "no-added-capabilities";
pub const RULE_SECRETS: &str = "secrets-dir";

/// What manifests may ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `hostPath` volumes must be at or below one of these (`--allow-host-path`).
    pub allowed_host_paths: Vec<PathBuf>,
    /// `valueFromFile` must be below one of these (`--secrets-dir`).
    pub secrets_dirs: Vec<PathBuf>,
    /// Whether `runAsUser: 0` is allowed (`--allow-root`).
    pub allow_root: bool,
    /// Capabilities `addCapabilities` may name (`--allow-capability`).
    pub allowed_capabilities: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_host_paths: vec![PathBuf::from("/srv/mcpod")],
            secrets_dirs: vec![PathBuf::from("/etc/mcpod/secrets")],
            allow_root: false,
            allowed_capabilities: vec![],
        }
    }
}

/// A request the policy refuses: the rule and why, for the field's error.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub rule: &'static str,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused by rule {}: {}", self.rule, self.message)
    }
}

impl Policy {
    /// A `hostPath` volume's source: allowed when it (and what it resolves to,
    /// if it exists) lies within an allowed path and within no forbidden one.
    pub fn check_host_path(&self, path: &str) -> Result<(), Refusal> {
        let lexical = normalize(path).ok_or_else(|| Refusal {
            rule: RULE_HOST_PATH,
            message: format!("hostPath '{path}' must be an absolute path without '..'"),
        })?;
        // A symlink inside an allowed folder must not lead out of it.
        let resolved = std::fs::canonicalize(&lexical).ok();
        for candidate in std::iter::once(&lexical).chain(resolved.as_ref()) {
            if let Some(forbidden) = forbidden(candidate) {
                return Err(Refusal {
                    rule: RULE_FORBIDDEN_PATH,
                    message: format!(
                        "hostPath '{path}' is {} '{forbidden}', which is never mounted",
                        if candidate.as_path() == Path::new(forbidden) {
                            "the host's"
                        } else {
                            "within"
                        }
                    ),
                });
            }
            if !within_any(candidate, &self.allowed_host_paths) {
                return Err(Refusal {
                    rule: RULE_HOST_PATH,
                    message: format!(
                        "hostPath '{path}'{} is outside the allowed host paths ({}); the operator allows more with --allow-host-path",
                        if candidate == &lexical { String::new() } else { format!(" (resolving to {})", candidate.display()) },
                        list(&self.allowed_host_paths)
                    ),
                });
            }
        }
        Ok(())
    }

    /// A `valueFromFile` path: allowed below a secrets directory. Returns the
    /// path to read (resolved, so a symlink cannot lead elsewhere later).
    pub fn check_secret_file(&self, path: &str) -> Result<PathBuf, Refusal> {
        let refuse = |shown: &Path| {
            Refusal {
            rule: RULE_SECRETS,
            message: format!(
                "valueFromFile '{}' is outside the secrets directories ({}); the operator allows more with --secrets-dir",
                shown.display(),
                list(&self.secrets_dirs)
            ),
        }
        };
        let lexical = normalize(path).ok_or_else(|| refuse(Path::new(path)))?;
        if !within_any(&lexical, &self.secrets_dirs) || self.secrets_dirs.contains(&lexical) {
            return Err(refuse(&lexical));
        }
        match std::fs::canonicalize(&lexical) {
            Ok(resolved) if !within_any(&resolved, &self.secrets_dirs) => Err(refuse(&resolved)),
            Ok(resolved) => Ok(resolved),
            Err(_) => Ok(lexical), // reading it reports what is wrong
        }
    }

    pub fn check_user(&self, uid: i64) -> Result<(), Refusal> {
        if uid == 0 && !self.allow_root {
            return Err(Refusal {
                rule: RULE_ROOT,
                message:
                    "runAsUser: 0 runs the server as root; the operator allows it with --allow-root"
                        .into(),
            });
        }
        Ok(())
    }

    pub fn check_capabilities(&self, added: &[String]) -> Result<(), Refusal> {
        let normalize = |cap: &str| {
            cap.trim()
                .to_ascii_uppercase()
                .trim_start_matches("CAP_")
                .to_string()
        };
        let allowed: Vec<String> = self
            .allowed_capabilities
            .iter()
            .map(|c| normalize(c))
            .collect();
        let refused: Vec<&String> = added
            .iter()
            .filter(|cap| !allowed.contains(&normalize(cap)))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        Err(Refusal {
            rule: RULE_CAPABILITIES,
            message: format!(
                "addCapabilities {refused:?} are not allowed (allowed: {}); the operator allows one with --allow-capability",
                if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
            ),
        })
    }
}

/// `path` made absolute-and-clean without touching the file system: `.` and
/// duplicate slashes dropped; `None` for a relative path or any `..`.
fn normalize(path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    if !path.is_absolute() {
        return None;
    }
    let mut clean = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => clean.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(clean)
}

fn within_any(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| path.starts_with(root))
}

/// The forbidden path `path` is or lies within. `/` only forbids itself.
fn forbidden(path: &Path) -> Option<&'static str> {
    FORBIDDEN_HOST_PATHS
        .iter()
        .copied()
        .find(|forbidden| {
            if *forbidden == "/" {
                path == Path::new("/")
            } else {
                path.starts_with(forbidden)
            }
        })
        .or_else(|| {
            // Any engine socket, wherever it is (rootless: /run/user/UID/podman/podman.sock).
            let name = path.file_name()?.to_str()?;
            matches!(
                name,
                "podman.sock" | "docker.sock" | "containerd.sock" | "crio.sock"
            )
            .then_some("a container engine socket")
        })
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "none".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_must_be_allowed_and_never_sensitive() {
        let policy = Policy::default();
        assert!(policy.check_host_path("/srv/mcpod/files").is_ok());
        assert!(policy.check_host_path("/srv/mcpod").is_ok());
        for path in ["/srv/other", "/home/user", "/srv/mcpod-evil", "/tmp"] {
            let refusal = policy.check_host_path(path).unwrap_err();
            assert_eq!(refusal.rule, RULE_HOST_PATH, "{path}");
            assert!(refusal.message.contains("/srv/mcpod"), "{refusal}");
        }
        let open = Policy {
            allowed_host_paths: vec![PathBuf::from("/")],
            ..Policy::default()
        };
        for path in [
            "/",
            "/etc",
            "/etc/shadow",
            "//etc/./passwd",
            "/run/podman/podman.sock",
            "/var/run/docker.sock",
            "/run/user/1000/podman/podman.sock",
            "/var/lib/containers/storage",
        ] {
            let refusal = open.check_host_path(path).unwrap_err();
            assert_eq!(refusal.rule, RULE_FORBIDDEN_PATH, "{path}: {refusal}");
        }
        assert!(open.check_host_path("/srv/anything").is_ok());
        assert!(open.check_host_path("/srv/mcpod/../../etc").is_err());
        assert!(open.check_host_path("relative").is_err());
    }

    #[test]
    fn a_symlink_cannot_lead_out_of_an_allowed_path() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("escape");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        let policy = Policy {
            allowed_host_paths: vec![dir.path().to_path_buf()],
            ..Policy::default()
        };
        assert!(policy
            .check_host_path(&dir.path().display().to_string())
            .is_ok());
        let refusal = policy
            .check_host_path(&link.display().to_string())
            .unwrap_err();
        assert_eq!(refusal.rule, RULE_FORBIDDEN_PATH, "{refusal}");
    }

    #[test]
    fn secrets_come_from_the_secrets_directories_only() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "s3cret").unwrap();
        let policy = Policy {
            secrets_dirs: vec![dir.path().to_path_buf()],
            ..Policy::default()
        };
        assert!(policy
            .check_secret_file(&secret.display().to_string())
            .is_ok());
        for path in ["/etc/shadow", "/etc/mcpod/secrets/../../shadow", "token"] {
            let refusal = policy.check_secret_file(path).unwrap_err();
            assert_eq!(refusal.rule, RULE_SECRETS, "{path}");
        }
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        assert!(policy
            .check_secret_file(&link.display().to_string())
            .is_err());
        assert!(Policy::default()
            .check_secret_file("/etc/mcpod/secrets/api-token")
            .is_ok());
    }

    #[test]
    fn root_and_added_capabilities_need_the_operators_consent() {
        let policy = Policy::default();
        assert_eq!(policy.check_user(0).unwrap_err().rule, RULE_ROOT);
        assert!(policy.check_user(65534).is_ok());
        let refusal = policy
            .check_capabilities(&["NET_ADMIN".into()])
            .unwrap_err();
        assert_eq!(refusal.rule, RULE_CAPABILITIES);
        assert!(policy.check_capabilities(&[]).is_ok());
        let lenient = Policy {
            allow_root: true,
            allowed_capabilities: vec!["net_bind_service".into()],
            ..Policy::default()
        };
        assert!(lenient.check_user(0).is_ok());
        assert!(lenient
            .check_capabilities(&["CAP_NET_BIND_SERVICE".into()])
            .is_ok());
        assert!(lenient.check_capabilities(&["SYS_ADMIN".into()]).is_err());
    }
}
