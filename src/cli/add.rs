//! `mcpod add NAME --npm PKG[@VER] | --pypi PKG[==VER] | --image IMAGE`: any
//! npm or PyPI MCP server in one command. It builds a minimal image on the
//! project's bases with the same builders `images/` uses (`mcpod-npm-install`
//! in node-build, `mcpod-pip-install` in python-base), writes a commented
//! MCPServer with the strict defaults into the manifests directory, and lets
//! the running `mcpod serve` (which watches that directory) pick it up.
//!
//! Every dependency is resolved once and recorded in the build directory
//! (`<data-dir>/builds/<name>/`: `package-lock.json` or `constraints.txt`), so
//! a rebuild installs exactly the same versions; the image is labelled with a
//! hash of its build inputs and reused while they are unchanged.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::{ArgGroup, Args};
use serde_json::Value;
use sha2::{Digest, Sha256};

use mcpod::package::{ImageBuilder, Package};

use super::api::{Api, DEFAULT_URL};
use super::progress::Progress;
use super::{CliError, CliResult};

/// Where the images `add` builds are tagged: `localhost/mcpod/<name>:<version>`.
const PREFIX: &str = mcpod::package::IMAGE_PREFIX;
/// Where a CA bundle is mounted for the build steps (read by `mcpod-with-build-ca`).
const BUILD_CA: &str = "/run/mcpod-build-ca.crt";

#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["npm", "pypi", "image"])))]
pub struct AddArgs {
    /// The server's name (a DNS label): its URL is /servers/NAME/mcp.
    pub name: String,
    /// An npm package, optionally with a version: `@scope/pkg` or `@scope/pkg@1.2.3`.
    #[arg(long, value_name = "PKG[@VER]")]
    pub npm: Option<String>,
    /// A PyPI package, optionally with a version: `pkg` or `pkg==1.2.3`.
    #[arg(long, value_name = "PKG[==VER]")]
    pub pypi: Option<String>,
    /// An existing image that speaks MCP on stdio (nothing is built).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Directory of MCPServer YAML files the running `mcpod serve` watches.
    #[arg(long, env = "MCPOD_MANIFESTS", default_value = "examples", value_parser = super::paths::absolute_path)]
    pub manifests: PathBuf,
    /// Where builds are kept (`<data-dir>/builds/NAME`); default: `serve`'s data dir.
    #[arg(long, env = "MCPOD_DATA_DIR", value_parser = super::paths::absolute_path)]
    pub data_dir: Option<PathBuf>,
    /// Replace an existing NAME.yaml (and re-resolve the package's versions).
    #[arg(long)]
    pub force: bool,
    /// Arguments for the server (after its entrypoint), e.g. `--arg=--verbose`.
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Give the server network access (egress); without it the server has none.
    #[arg(long)]
    pub network: bool,
    /// A PEM CA bundle trusted while resolving and building (TLS-intercepting
    /// proxies); default: the host's /etc/ssl/certs/ca-certificates.crt, if any.
    #[arg(long, env = "MCPOD_CA_BUNDLE", value_parser = super::paths::absolute_path)]
    pub ca_bundle: Option<PathBuf>,
    /// Where a running mcpod answers: `add` waits for it to pick the server up and starts it.
    #[arg(long, env = "MCPOD_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// Only write the YAML: do not wait for mcpod to start the server.
    #[arg(long)]
    pub no_start: bool,
}

/// A package resolved to exact versions: what the image runs.
#[derive(Debug, Clone)]
struct Resolved {
    version: String,
    /// The program the container starts, inside the image.
    entrypoint: Vec<String>,
}

pub async fn run(args: AddArgs, data_dir: &Path) -> CliResult {
    mcpod::workload::validate_name(&args.name)?;
    let yaml_file = args.manifests.join(format!("{}.yaml", args.name));
    if yaml_file.exists() && !args.force {
        return Err(CliError::Usage(format!(
            "{} exists: pass --force to replace it",
            yaml_file.display()
        )));
    }
    if !args.manifests.is_dir() {
        return Err(CliError::Usage(format!(
            "--manifests {}: not a directory",
            args.manifests.display()
        )));
    }
    // Another file declaring NAME would make the new one a duplicate that `serve` refuses.
    let declared = mcpod::manifests::load_dir(&args.manifests)?;
    if let Some(other) = declared.servers.iter().find(|l| {
        l.server.metadata.name.as_deref() == Some(args.name.as_str()) && l.file != yaml_file
    }) {
        return Err(CliError::Usage(format!(
            "{} already declares an MCPServer named {}: pick another name",
            other.file.display(),
            args.name
        )));
    }
    let package = match (&args.npm, &args.pypi) {
        (Some(spec), _) => Some(Package::npm(spec).map_err(|e| CliError::Usage(format!("--{e}")))?),
        (_, Some(spec)) => {
            Some(Package::pypi(spec).map_err(|e| CliError::Usage(format!("--{e}")))?)
        }
        _ => None,
    };
    let (image, note) = match &package {
        Some(package) => {
            let dir = data_dir.join("builds").join(&args.name);
            let builder = Builder {
                name: args.name.clone(),
                dir,
                ca_bundle: args.ca_bundle.clone().or_else(host_ca_bundle),
                force: args.force,
            };
            let (image, resolved) = builder.build(package)?;
            let lock = match package {
                Package::Npm { .. } => "package-lock.json",
                Package::Pypi { .. } => "constraints.txt",
            };
            let note = format!(
                "# Package: {} {} (built by `mcpod add`; every dependency is pinned in\n\
                 #   {}).\n",
                package.label(),
                resolved.version,
                builder.dir.join(lock).display()
            );
            (image, note)
        }
        None => (
            args.image.clone().expect("clap requires a source"),
            String::new(),
        ),
    };
    let yaml = manifest_yaml(
        &args.name,
        &image,
        &note,
        &args.args,
        args.network,
        package.is_some(),
    );
    // Written whole, then renamed: the watching mcpod never reads half a file.
    let temporary = args.manifests.join(format!(".{}.yaml.tmp", args.name));
    std::fs::write(&temporary, &yaml).map_err(|source| mcpod::Error::Io {
        path: temporary.clone(),
        source,
    })?;
    std::fs::rename(&temporary, &yaml_file).map_err(|source| mcpod::Error::Io {
        path: yaml_file.clone(),
        source,
    })?;
    eprintln!("wrote {}", yaml_file.display());
    if args.no_start {
        return Ok(());
    }
    start_when_served(&Api::new(&args.url)?, &args.name).await
}

/// Waits for the running mcpod to pick the new manifest up, then starts the
/// server once (the first start: the image's first run), showing progress.
async fn start_when_served(api: &Api, name: &str) -> CliResult {
    if api.get_json("/health").await.is_err() {
        eprintln!(
            "no mcpod answers at {}: `mcpod serve --manifests DIR` serves it at {}",
            api.base(),
            api.mcp_url(name)
        );
        return Ok(());
    }
    let progress = Progress::start(&format!("waiting for mcpod to pick up {name}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if api.get_json(&format!("/servers/{name}")).await.is_ok() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let health = api.get_json("/health").await.unwrap_or_default();
            return Err(CliError::Api(format!(
                "mcpod at {} did not pick up {name} within 30 s (is it serving this --manifests directory?); its problems: {}",
                api.base(),
                health["problems"]
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    progress.update(&format!("starting {name} (first start)"));
    let (status, answer) = api
        .post_json(&format!("/servers/{name}/start"), Duration::from_secs(180))
        .await?;
    if status != 200 {
        drop(progress);
        return Err(CliError::Api(format!(
            "{name} did not start: {} (see `mcpod logs {name}`)",
            answer["message"].as_str().unwrap_or(&answer.to_string())
        )));
    }
    progress.finish(&format!("{name} is running: {}", api.mcp_url(name)));
    Ok(())
}

/// The host's CA bundle, trusted by default as the Makefile does for `make
/// images`: what the host trusts (a TLS-intercepting proxy's CA included), the
/// builds trust too.
fn host_ca_bundle() -> Option<PathBuf> {
    let bundle = PathBuf::from("/etc/ssl/certs/ca-certificates.crt");
    bundle.is_file().then_some(bundle)
}

/// The MCPServer `add` writes: the strict defaults spelled out, with comments
/// saying what each knob does, so the file is the place to change them.
pub fn manifest_yaml(
    name: &str,
    image: &str,
    note: &str,
    args: &[String],
    network: bool,
    built: bool,
) -> String {
    let args_line = if args.is_empty() {
        "  # args: [--flag, value]          # arguments after the image's entrypoint\n".to_string()
    } else {
        format!(
            "  args: {}\n",
            serde_json::to_string(args).expect("strings serialize")
        )
    };
    let pull = if built {
        "  imagePullPolicy: Never          # built here by `mcpod add`: no registry has it\n"
    } else {
        "  imagePullPolicy: IfNotPresent\n"
    };
    let network = if network {
        "  network: bridge                 # egress allowed (`none`: no network at all)\n"
    } else {
        "  network: none                   # no network at all (`bridge` allows egress)\n"
    };
    format!(
        "# MCPServer {name}, written by `mcpod add`. mcpod serves it at /servers/{name}/mcp,\n\
         # starts its container on the first request and stops it when idle.\n\
         {note}\
         apiVersion: mcpod.dev/v1alpha1\n\
         kind: MCPServer\n\
         metadata:\n  name: {name}\n\
         spec:\n  image: {image}\n{pull}{args_line}\
         \x20 # env:\n\
         \x20 #   - {{name: API_TOKEN, valueFromFile: /etc/mcpod/secrets/{name}-token}}   # read at start\n\
         \x20 # volumes:\n\
         \x20 #   - {{volume: {name}-data, mountPath: /data}}   # a named volume (a PVC on Kubernetes)\n\
         \x20 resources:\n    limits: {{memory: 512Mi, cpu: \"1\"}}\n\
         \x20 idleTimeout: 300s               # stopped after this much quiet (0 = never)\n\
         \x20 startupTimeout: 60s             # start + initialize\n\
         \x20 requestTimeout: 30s             # one answer\n\
         {network}\
         \x20 security:                       # the strict choices, spelled out\n\
         \x20   runAsUser: 65534\n\
         \x20   readOnlyRootFilesystem: true  # with a writable tmpfs at each `tmpfs` path\n\
         \x20   tmpfs: [/tmp]\n\
         \x20   noNewPrivileges: true\n\
         \x20   dropCapabilities: [ALL]\n\
         \x20 desiredState: OnDemand          # AlwaysOn | Disabled\n\
         \x20 sessionMode: Shared             # Isolated: a container per client session\n"
    )
}

/// The builder `mcpod serve` plugs into the server lifecycle: a `spec.package`
/// server's image is built on its first start, exactly as `mcpod add` builds.
pub struct ServeBuilder {
    /// `<data-dir>`: builds are kept in `<data-dir>/builds/<name>/`.
    pub data_dir: PathBuf,
    pub ca_bundle: Option<PathBuf>,
}

impl ServeBuilder {
    pub fn new(data_dir: &Path, ca_bundle: Option<PathBuf>) -> ServeBuilder {
        ServeBuilder {
            data_dir: data_dir.to_path_buf(),
            ca_bundle: ca_bundle.or_else(host_ca_bundle),
        }
    }
}

#[async_trait::async_trait]
impl ImageBuilder for ServeBuilder {
    async fn ensure(
        &self,
        server: &str,
        package: &Package,
        image: &str,
        progress: &(dyn for<'s> Fn(&'s str) + Send + Sync),
    ) -> Result<(), String> {
        let wanted = image.to_string();
        let exists = tokio::task::spawn_blocking(move || image_id(&wanted).is_some())
            .await
            .unwrap_or(false);
        if exists {
            return Ok(());
        }
        let builder = Builder {
            name: server.to_string(),
            dir: self.data_dir.join("builds").join(server),
            ca_bundle: self.ca_bundle.clone(),
            force: false,
        };
        progress(&format!(
            "building image {image} from {} (first use; log in {})",
            package.request(),
            builder.dir.display()
        ));
        let (package, target) = (package.clone(), image.to_string());
        let built = tokio::task::spawn_blocking(move || {
            let (built, resolved) = builder.build(&package).map_err(|e| e.to_string())?;
            tag(&built, &target)?;
            Ok::<_, String>(format!("{} {}", package.label(), resolved.version))
        })
        .await
        .map_err(|e| format!("the build task failed: {e}"))??;
        progress(&format!("built {image} from {built}"));
        Ok(())
    }
}

/// `podman tag SOURCE TARGET`.
fn tag(source: &str, target: &str) -> Result<(), String> {
    let output = podman()
        .args(["tag", source, target])
        .output()
        .map_err(|e| format!("cannot run podman: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "podman tag {source} {target}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

struct Builder {
    name: String,
    /// The build context, kept: Containerfile and the recorded resolution.
    dir: PathBuf,
    ca_bundle: Option<PathBuf>,
    force: bool,
}

impl Builder {
    /// Resolves (or reuses the recorded resolution), writes the build context
    /// and builds the image unless one with the same inputs exists.
    fn build(&self, package: &Package) -> CliResult<(String, Resolved)> {
        let base = match package {
            Package::Npm { .. } => ["node-build", "node-base"].as_slice(),
            Package::Pypi { .. } => ["python-base"].as_slice(),
        };
        let mut base_ids = vec![];
        for image in base {
            let reference = format!("{PREFIX}/{image}:latest");
            let id = image_id(&reference).ok_or_else(|| {
                CliError::Build(format!(
                    "{reference} is missing: build the bases first with \
                     `scripts/build-images.sh {}` (or `make images`)",
                    base.join(" ")
                ))
            })?;
            base_ids.push(format!("{reference} {id}"));
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| mcpod::Error::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        let resolved = match self.recorded(package) {
            Some(resolved) => {
                eprintln!(
                    "{}: {} {} as recorded in {} (--force re-resolves)",
                    self.name,
                    package.label(),
                    resolved.version,
                    self.dir.display()
                );
                resolved
            }
            None => {
                let progress = Progress::start(&format!("resolving {}", package.request()));
                let resolved = self.resolve(package)?;
                progress.finish(&format!(
                    "resolved {} {}",
                    package.label(),
                    resolved.version
                ));
                resolved
            }
        };
        self.write_file(
            "Containerfile",
            &containerfile(&self.name, package, &resolved),
        )?;
        let hash = self.context_hash(&base_ids)?;
        let image = format!("{PREFIX}/{}:{}", self.name, tag_of(&resolved.version));
        if image_label(&image, "mcpod.dev/build-hash").as_deref() == Some(hash.as_str()) {
            eprintln!("{image}: cached (its build inputs are unchanged)");
            return Ok((image, resolved));
        }
        let progress = Progress::start(&format!("building {image}"));
        let mut build = podman();
        build
            .args(["build", "--pull=never", "--layers=false"])
            .args(self.ca_args())
            .arg("--build-arg")
            .arg(format!("MCPOD_BUILD_HASH={hash}"))
            .args(["--tag", &image, "--file"])
            .arg(self.dir.join("Containerfile"))
            .arg(&self.dir);
        run_logged(build, &self.dir.join("build.log"), "podman build")?;
        progress.finish(&format!("built {image}"));
        Ok((image, resolved))
    }

    /// The resolution recorded by an earlier `add` of the same request.
    fn recorded(&self, package: &Package) -> Option<Resolved> {
        if self.force {
            return None;
        }
        let text = std::fs::read_to_string(self.dir.join("resolved.json")).ok()?;
        let recorded: Value = serde_json::from_str(&text).ok()?;
        let lock = match package {
            Package::Npm { .. } => "package-lock.json",
            Package::Pypi { .. } => "constraints.txt",
        };
        if recorded["request"] != package.request() || !self.dir.join(lock).exists() {
            return None;
        }
        Some(Resolved {
            version: recorded["version"].as_str()?.to_string(),
            entrypoint: serde_json::from_value(recorded["entrypoint"].clone()).ok()?,
        })
    }

    /// Runs the ecosystem's installer once in the builder image (network needed)
    /// to pin every dependency, and finds the program the package installs.
    fn resolve(&self, package: &Package) -> CliResult<Resolved> {
        for stale in [
            "package.json",
            "package-lock.json",
            "constraints.txt",
            "entrypoints.json",
        ] {
            let _ = std::fs::remove_file(self.dir.join(stale));
        }
        let resolved = match package {
            Package::Npm { name, version } => {
                self.write_file(
                    "package.json",
                    &format!(
                        "{{\n  \"name\": \"mcpod-image-{}\",\n  \"private\": true,\n  \"description\": \"Pins {name} and, through package-lock.json, all its dependencies (mcpod add).\"\n}}\n",
                        self.name
                    ),
                )?;
                let spec = format!("{name}@{}", version.as_deref().unwrap_or("latest"));
                self.run_in(
                    "node-build",
                    &format!(
                        "npm install --package-lock-only --save-exact --ignore-scripts --no-audit --no-fund --loglevel=warn '{spec}'"
                    ),
                )?;
                npm_resolution(&self.dir, name)?
            }
            Package::Pypi { name, version } => {
                let spec = match version {
                    Some(version) => format!("{name}=={version}"),
                    None => name.clone(),
                };
                let script = format!(
                    "python3 -m venv /tmp/venv && /tmp/venv/bin/pip install --no-cache-dir --no-input \
                     --progress-bar off --disable-pip-version-check -q '{spec}' >&2 \
                     && /tmp/venv/bin/pip freeze --all --exclude pip --exclude setuptools > /work/constraints.txt \
                     && /tmp/venv/bin/python -c {}",
                    shell_quote(&entry_points_script(name))
                );
                self.run_in("python-base", &script)?;
                pypi_resolution(&self.dir, name)?
            }
        };
        let record = serde_json::json!({
            "request": package.request(),
            "version": resolved.version,
            "entrypoint": resolved.entrypoint,
        });
        self.write_file("resolved.json", &format!("{record:#}\n"))?;
        Ok(resolved)
    }

    /// Runs `script` in a builder image with the build directory at /work.
    fn run_in(&self, image: &str, script: &str) -> CliResult {
        let mut run = podman();
        run.args(["run", "--rm", "--pull=never"])
            .args(self.ca_args())
            .arg("--volume")
            .arg(format!("{}:/work:Z", self.dir.display()))
            .args(["--workdir", "/work"])
            .arg(format!("{PREFIX}/{image}:latest"))
            .args(["mcpod-with-build-ca", "sh", "-ec", script]);
        run_logged(run, &self.dir.join("resolve.log"), "resolving the package")
    }

    fn ca_args(&self) -> Vec<String> {
        match &self.ca_bundle {
            Some(bundle) => vec![
                "--volume".into(),
                format!("{}:{BUILD_CA}:ro", bundle.display()),
            ],
            None => vec![],
        }
    }

    fn write_file(&self, name: &str, text: &str) -> CliResult {
        let path = self.dir.join(name);
        std::fs::write(&path, text).map_err(|source| mcpod::Error::Io { path, source })?;
        Ok(())
    }

    /// Hash of the build inputs: every file the Containerfile copies, the
    /// Containerfile itself and the base images' IDs.
    fn context_hash(&self, base_ids: &[String]) -> CliResult<String> {
        let mut hasher = Sha256::new();
        hasher.update(b"mcpod-add v1\n");
        for file in [
            "Containerfile",
            "package.json",
            "package-lock.json",
            "constraints.txt",
        ] {
            if let Ok(bytes) = std::fs::read(self.dir.join(file)) {
                hasher.update(file.as_bytes());
                hasher.update(Sha256::digest(&bytes));
            }
        }
        for id in base_ids {
            hasher.update(id.as_bytes());
        }
        Ok(hasher.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

/// The version, entrypoint of an npm package from the lock file npm wrote:
/// lock files v2/v3 record each package's version and `bin` map.
fn npm_resolution(dir: &Path, name: &str) -> CliResult<Resolved> {
    let path = dir.join("package-lock.json");
    let text = std::fs::read_to_string(&path).map_err(|source| mcpod::Error::Io {
        path: path.clone(),
        source,
    })?;
    let lock: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Build(format!("{}: not JSON: {e}", path.display())))?;
    let entry = &lock["packages"][format!("node_modules/{name}")];
    let version = entry["version"]
        .as_str()
        .ok_or_else(|| CliError::Build(format!("{}: no entry for {name}", path.display())))?;
    let bin = pick_bin(name, &entry["bin"]).ok_or_else(|| {
        CliError::Build(format!(
            "{name} {version} declares no program (`bin` in its package.json): it is a library, not a server"
        ))
    })?;
    let script = format!(
        "/opt/mcpod/app/node_modules/{name}/{}",
        bin.trim_start_matches("./")
    );
    Ok(Resolved {
        version: version.to_string(),
        entrypoint: vec!["node".into(), script],
    })
}

/// The program a package runs: the only one, or the one named like the package.
fn pick_bin(name: &str, bin: &Value) -> Option<String> {
    let short = name.rsplit('/').next().unwrap_or(name);
    match bin {
        Value::String(path) => Some(path.clone()),
        Value::Object(map) if map.len() == 1 => map.values().next()?.as_str().map(str::to_string),
        Value::Object(map) => map
            .get(short)
            .or_else(|| map.get(name))
            .or_else(|| map.values().next())?
            .as_str()
            .map(str::to_string),
        _ => None,
    }
}

/// Python that prints the package's version and console scripts as JSON to /work/entrypoints.json.
fn entry_points_script(name: &str) -> String {
    format!(
        "import json, importlib.metadata as m\n\
         d = m.distribution({name:?})\n\
         scripts = sorted(e.name for e in d.entry_points if e.group == 'console_scripts')\n\
         json.dump({{'version': d.version, 'scripts': scripts}}, open('/work/entrypoints.json', 'w'))\n"
    )
}

fn pypi_resolution(dir: &Path, name: &str) -> CliResult<Resolved> {
    let path = dir.join("entrypoints.json");
    let text = std::fs::read_to_string(&path).map_err(|source| mcpod::Error::Io {
        path: path.clone(),
        source,
    })?;
    let found: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Build(format!("{}: not JSON: {e}", path.display())))?;
    let version = found["version"].as_str().unwrap_or_default().to_string();
    let scripts: Vec<String> = serde_json::from_value(found["scripts"].clone()).unwrap_or_default();
    let normalized = |s: &str| s.to_ascii_lowercase().replace(['_', '.'], "-");
    let script = scripts
        .iter()
        .find(|s| normalized(s) == normalized(name))
        .or_else(|| (scripts.len() == 1).then(|| &scripts[0]))
        .ok_or_else(|| {
            CliError::Build(format!(
                "{name} {version} installs {} console scripts ({}): cannot tell which one is the server",
                scripts.len(),
                scripts.join(", ")
            ))
        })?;
    Ok(Resolved {
        version,
        entrypoint: vec![format!("/opt/venv/bin/{script}")],
    })
}

/// The Containerfile, shaped like `images/<server>/Containerfile`: the same
/// install scripts, the same runtime base, user 65534, no build tools.
fn containerfile(name: &str, package: &Package, resolved: &Resolved) -> String {
    let entrypoint = serde_json::to_string(&resolved.entrypoint).expect("strings serialize");
    let version = &resolved.version;
    let labels = format!(
        "LABEL mcpod.dev/server=\"{name}\" \\\n      mcpod.dev/package=\"{}\" \\\n      mcpod.dev/version=\"{version}\"\n\
         ARG MCPOD_BUILD_HASH=unset\nLABEL mcpod.dev/build-hash=$MCPOD_BUILD_HASH\n",
        package.label()
    );
    match package {
        Package::Npm { name: package, .. } => format!(
            "# {name}: npm {package} {version}, written by `mcpod add`. package-lock.json pins every dependency.\n\
             FROM {PREFIX}/node-build:latest AS build\n\
             WORKDIR /opt/mcpod/app\n\
             COPY package.json package-lock.json ./\n\
             RUN mcpod-with-build-ca mcpod-npm-install {package} {version}\n\n\
             FROM {PREFIX}/node-base:latest\n\
             COPY --from=build /opt/mcpod/app /opt/mcpod/app\n\
             ENV HOME=/tmp\nWORKDIR /tmp\nUSER 65534\nENTRYPOINT {entrypoint}\n\n{labels}"
        ),
        Package::Pypi { name: package, .. } => format!(
            "# {name}: PyPI {package} {version}, written by `mcpod add`. constraints.txt pins every dependency.\n\
             FROM {PREFIX}/python-base:latest\n\
             COPY constraints.txt /opt/mcpod/constraints.txt\n\
             RUN mcpod-with-build-ca mcpod-pip-install {package} {version} /opt/mcpod/constraints.txt\n\
             ENV HOME=/tmp\nWORKDIR /tmp\nUSER 65534\nENTRYPOINT {entrypoint}\n\n{labels}"
        ),
    }
}

/// An image tag from a version: tags allow `[A-Za-z0-9_.-]`, npm versions may hold `+`.
fn tag_of(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The local `podman` CLI. `mcpod serve` may have `CONTAINER_HOST` pointing at
/// the Podman service it uses, which turns the CLI remote — and Podman 4.3's
/// remote `build` drops `--volume` (the CA bundle). A `unix://` service is on
/// this host with the same image storage, so builds run locally instead.
fn podman() -> Command {
    let mut command = Command::new("podman");
    if std::env::var("CONTAINER_HOST").is_ok_and(|host| host.starts_with("unix://")) {
        command.env_remove("CONTAINER_HOST");
    }
    command
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

fn image_id(reference: &str) -> Option<String> {
    podman_format(reference, "{{.Id}}")
}

fn image_label(reference: &str, label: &str) -> Option<String> {
    podman_format(reference, &format!("{{{{index .Labels \"{label}\"}}}}"))
}

fn podman_format(reference: &str, format: &str) -> Option<String> {
    let output = podman()
        .args(["image", "inspect", "--format", format, reference])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (output.status.success() && !text.is_empty() && text != "<no value>").then_some(text)
}

/// Runs a podman step with its output in `log`; on failure the error carries the log's tail.
fn run_logged(mut command: Command, log: &Path, what: &str) -> CliResult {
    let file = std::fs::File::create(log).map_err(|source| mcpod::Error::Io {
        path: log.to_path_buf(),
        source,
    })?;
    let status = command
        .stdin(Stdio::null())
        .stdout(file.try_clone().map_err(|source| mcpod::Error::Io {
            path: log.to_path_buf(),
            source,
        })?)
        .stderr(file)
        .status()
        .map_err(|e| {
            CliError::Build(format!(
                "{what}: cannot run podman: {e} (is podman installed?)"
            ))
        })?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    let hint = if text.contains("CERTIFICATE_VERIFY_FAILED")
        || text.contains("SELF_SIGNED_CERT")
        || text.contains("self-signed certificate")
    {
        "\nhint: TLS verification failed; behind a TLS-intercepting proxy set MCPOD_CA_BUNDLE (or --ca-bundle)"
    } else {
        ""
    };
    Err(CliError::Build(format!(
        "{what} failed ({status}); the last lines of {}:\n{}{hint}",
        log.display(),
        tail.join("\n")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpod::workload::{Defaults, Target, Workload};

    #[test]
    fn the_written_manifest_is_valid_and_strict() {
        let yaml = manifest_yaml(
            "calc",
            "localhost/mcpod/calc:0.2.1",
            "# note\n",
            &["--x".into()],
            false,
            true,
        );
        let servers = mcpod::manifests::parse(&yaml).unwrap();
        let workload = Workload::resolve(
            "calc",
            &servers[0].spec,
            &Defaults::default(),
            Target::Podman,
        )
        .unwrap();
        assert_eq!(workload.image, "localhost/mcpod/calc:0.2.1");
        assert_eq!(workload.args, ["--x"]);
        assert_eq!(workload.network, mcpod::crd::NetworkMode::None);
        assert_eq!(workload.security.run_as_user, 65534);
        let networked = manifest_yaml("x", "img", "", &[], true, false);
        let servers = mcpod::manifests::parse(&networked).unwrap();
        assert_eq!(servers[0].spec.network, mcpod::crd::NetworkMode::Bridge);
    }

    #[test]
    fn the_program_is_the_only_bin_or_the_one_named_like_the_package() {
        let one = serde_json::json!({"mcp-server-github": "dist/index.js"});
        assert_eq!(
            pick_bin("@modelcontextprotocol/server-github", &one).as_deref(),
            Some("dist/index.js")
        );
        let two = serde_json::json!({"helper": "a.js", "server-x": "b.js"});
        assert_eq!(pick_bin("@s/server-x", &two).as_deref(), Some("b.js"));
        assert_eq!(
            pick_bin("x", &serde_json::json!("cli.js")).as_deref(),
            Some("cli.js")
        );
        assert_eq!(pick_bin("x", &Value::Null), None);
        assert_eq!(tag_of("1.0.0+build.5"), "1.0.0-build.5");
    }
}
