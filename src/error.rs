//! The crate-wide error type. Every variant says what failed and on what, so a
//! message read in a log or an HTTP body is enough to act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {message}")]
    Manifest { file: PathBuf, message: String },

    #[error("MCPServer {server}: field {field}: {message}")]
    InvalidSpec {
        server: String,
        field: String,
        message: String,
    },

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("podman: {context}: {source}")]
    Podman {
        context: String,
        #[source]
        source: podman_api::Error,
    },

    #[error("podman: {0}")]
    PodmanService(String),

    #[error("kubernetes: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },

    #[error("container runtime: {0}")]
    Runtime(String),

    /// A command-line setting that cannot work (named, with what to do instead).
    #[error("configuration: {0}")]
    Config(String),

    /// The API server refused a call for lack of permission: says which call,
    /// and where the permissions are granted, since that is what needs fixing.
    #[error(
        "kubernetes: {context}: forbidden ({message}); grant it to mcpod's service account \
         (the Role/ClusterRole in charts/mcpod/templates/rbac.yaml or manifests/kubernetes/rbac.yaml)"
    )]
    KubeForbidden { context: String, message: String },

    /// An object from the API server lacks a field every stored object has.
    #[error("kubernetes: {kind} has no {field}")]
    MissingObjectKey {
        kind: &'static str,
        field: &'static str,
    },

    /// The cluster is not in a state mcpod can act on (named in the message).
    #[error("kubernetes: {0}")]
    Cluster(String),

    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A backup or restore step failed on a file: says which step and which file.
    #[error("backup: {context} {path}: {source}")]
    Backup {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A backup or restore that would lose data or cannot be done as asked.
    #[error("backup: {0}")]
    BackupRefused(String),

    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(server: &str, field: &str, message: impl Into<String>) -> Self {
        Error::InvalidSpec {
            server: server.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Maps a kube error, turning HTTP 403 into [`Error::KubeForbidden`].
    pub fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let context = context.into();
        move |source| match &source {
            kube::Error::Api(status) if status.is_forbidden() || status.code == 403 => {
                Error::KubeForbidden {
                    context,
                    message: status.message.clone(),
                }
            }
            _ => Error::Kube { context, source },
        }
    }

    /// True for an API "not found" (HTTP 404), which deletes treat as success.
    pub fn is_kube_not_found(source: &kube::Error) -> bool {
        matches!(source, kube::Error::Api(status) if status.code == 404)
    }

    pub fn podman(context: impl Into<String>) -> impl FnOnce(podman_api::Error) -> Self {
        let context = context.into();
        move |source| Error::Podman { context, source }
    }
}
