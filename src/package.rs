//! Servers declared by package instead of image (`spec.package: {npm: …}` or
//! `{pypi: …}`): the package request, the image mcpod builds for it, and the
//! seam through which the server lifecycle asks for the build on first use.
//!
//! The builder itself (resolving every dependency once, building on the
//! project's bases) is the one `mcpod add` uses; `mcpod serve` plugs it in as an
//! [`ImageBuilder`]. On Kubernetes nothing is built: nodes pull images from a
//! registry, so a package must be built and pushed first (see the README).

use sha2::{Digest, Sha256};

/// Where built images are tagged: `localhost/mcpod/<name>:<tag>`.
pub const IMAGE_PREFIX: &str = "localhost/mcpod";

/// A package of one ecosystem at a version (`None`: the newest, resolved once
/// and recorded).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Package {
    Npm {
        name: String,
        version: Option<String>,
    },
    Pypi {
        name: String,
        version: Option<String>,
    },
}

impl Package {
    /// `@scope/pkg@1.2` → (`@scope/pkg`, `1.2`): the version follows the last `@`
    /// that is not the scope's.
    pub fn npm(spec: &str) -> Result<Package, String> {
        let (name, version) = match spec.get(1..).and_then(|rest| rest.rfind('@')) {
            Some(i) => (&spec[..i + 1], Some(&spec[i + 2..])),
            None => (spec, None),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "@/._-".contains(c));
        if !valid || version == Some("") {
            return Err(format!("npm {spec}: expected PKG or PKG@VERSION"));
        }
        Ok(Package::Npm {
            name: name.to_string(),
            version: version.map(str::to_string),
        })
    }

    /// `pkg==1.2` → (`pkg`, `1.2`).
    pub fn pypi(spec: &str) -> Result<Package, String> {
        let (name, version) = match spec.split_once("==") {
            Some((name, version)) => (name, Some(version)),
            None => (spec, None),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-[]".contains(c));
        if !valid || version == Some("") {
            return Err(format!("pypi {spec}: expected PKG or PKG==VERSION"));
        }
        Ok(Package::Pypi {
            name: name.to_string(),
            version: version.map(str::to_string),
        })
    }

    /// `npm:NAME` / `pypi:NAME`, as image labels and messages name it.
    pub fn label(&self) -> String {
        match self {
            Package::Npm { name, .. } => format!("npm:{name}"),
            Package::Pypi { name, .. } => format!("pypi:{name}"),
        }
    }

    /// The request as written, which decides whether a recorded resolution still holds.
    pub fn request(&self) -> String {
        match self {
            Package::Npm { name, version } => {
                format!("npm {name}@{}", version.as_deref().unwrap_or("latest"))
            }
            Package::Pypi { name, version } => {
                format!("pypi {name}=={}", version.as_deref().unwrap_or("latest"))
            }
        }
    }

    /// The image mcpod builds server `server` from this package into: named by
    /// the request, so a changed request is a new image (and a new container).
    pub fn image_for(&self, server: &str) -> String {
        let digest = Sha256::digest(self.request().as_bytes());
        let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        format!("{IMAGE_PREFIX}/{server}:pkg-{hash}")
    }
}

/// Builds a server's package into an image, once: what `mcpod serve` plugs
/// into the server lifecycle so a package-declared server builds on first use.
#[async_trait::async_trait]
pub trait ImageBuilder: Send + Sync {
    /// Makes sure `image` exists, built from `package` (a no-op when it is
    /// already there). Progress goes to `progress`, one line at a time; the
    /// error says what failed and where the full build log is.
    async fn ensure(
        &self,
        server: &str,
        package: &Package,
        image: &str,
        progress: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<(), String>;
}

/// The builder a server lifecycle uses (settings are cloned and printed).
#[derive(Clone)]
pub struct Builder(pub std::sync::Arc<dyn ImageBuilder>);

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ImageBuilder")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_requests_parse_and_name_their_image() {
        assert_eq!(
            Package::npm("@scope/pkg@1.2.3").unwrap(),
            Package::Npm {
                name: "@scope/pkg".into(),
                version: Some("1.2.3".into())
            }
        );
        assert_eq!(
            Package::npm("@scope/pkg").unwrap(),
            Package::Npm {
                name: "@scope/pkg".into(),
                version: None
            }
        );
        assert_eq!(
            Package::pypi("mcp-server-time==1.0").unwrap(),
            Package::Pypi {
                name: "mcp-server-time".into(),
                version: Some("1.0".into())
            }
        );
        for bad in ["", "a;b", "pkg@", "pkg; rm -rf /"] {
            assert!(Package::npm(bad).is_err(), "{bad}");
        }
        assert!(Package::pypi("pkg==").is_err());
        let one = Package::npm("x@1").unwrap().image_for("srv");
        assert!(one.starts_with("localhost/mcpod/srv:pkg-"), "{one}");
        assert_eq!(one, Package::npm("x@1").unwrap().image_for("srv"));
        assert_ne!(one, Package::npm("x@2").unwrap().image_for("srv"));
    }
}
