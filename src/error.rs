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

    pub fn podman(context: impl Into<String>) -> impl FnOnce(podman_api::Error) -> Self {
        let context = context.into();
        move |source| Error::Podman { context, source }
    }
}
