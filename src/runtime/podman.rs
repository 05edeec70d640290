//! The Podman runtime: libpod's REST API through `podman-api`, over the socket
//! of a Podman service that answers, or one that mcpod starts itself.
//!
//! podman-api 0.11 sends `no_new_privilages` (sic) in its create spec, which
//! libpod ignores; containers are therefore created from a spec built here as
//! JSON ([`create_spec`]) and posted with a small raw client ([`Libpod`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full};
use podman_api::conn::TtyChunk;
use podman_api::opts::{
    ContainerAttachOpts, ContainerDeleteOpts, ContainerLogsOpts, ContainerStopOpts,
};
use podman_api::Podman;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};
use tokio_util::compat::FuturesAsyncWriteCompatExt;
use tracing::{debug, info, warn};

mod conmon;

use super::{Attached, Managed, Output, Runtime, Usage, OOM_REASON};
use crate::crd::{ImagePullPolicy, NetworkMode};
use crate::workload::{
    EnvValue, MountSource, Workload, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_SERVER,
    LABEL_SPEC_HASH, MANAGED_BY,
};
use crate::{Error, Result};

/// libpod accepts any version prefix at or below its own; 4.3.1 is Debian 12's.
const API_PREFIX: &str = "/v4.3.1/libpod";
/// Explicit rlimits: Podman's defaults exceed the hard limits of some hosts (EPERM).
const NOFILE_LIMIT: u64 = 4096;
const NPROC_LIMIT: u64 = 1024;
/// Seconds between SIGTERM and SIGKILL when stopping.
const TERM_GRACE_SECS: usize = 2;
/// Processes one container may hold (its cgroup's `pids.max`): a fork bomb
/// stays inside its own container.
const PIDS_LIMIT: u64 = 1024;
/// Bytes conmon keeps of a container's output in `ctr.log` (it starts the
/// file over beyond that): a server writing stderr fast cannot fill the disk.
/// mcpod keeps the server's stderr in its own, rotated, rate-limited log; this
/// file only serves the last lines of [`Runtime::exit_reason`].
/// Longest wait for Podman to finish cleaning up a container that exited.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const CONTAINER_LOG_MAX_BYTES: u64 = 1024 * 1024;
/// Host uids (and gids) each server's user namespace maps: container ids 0–65535.
const USERNS_SIZE: u64 = 65536;
/// Ranges of [`USERNS_SIZE`] ids in `--userns-base`'s span (2^30 ids).
const USERNS_SLOTS: u64 = 16384;

/// How each server's processes are kept apart from other servers' on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserNamespace {
    /// A user namespace per server, mapping container ids 0–65535 onto 65536
    /// host ids of its own, picked from `base .. base + 2^30` by a hash of the
    /// instance and server name: the same on every start, so the server's
    /// named volumes stay its own; distinct from other servers', so per-uid
    /// limits (`nproc`) and file ownership are not shared. Needs rootful Podman.
    PerServer { base: u64 },
    /// Podman's `userns=auto`: Podman picks a free range from the `containers`
    /// entry of /etc/subuid and /etc/subgid (scripts/install-deps.sh writes it);
    /// a server may get another range after its container is replaced.
    Auto,
    /// The host's user namespace: every server's uid is the same host uid.
    Host,
    /// A `PerServer` range already chosen (by [`UidBlocks`]): its first host id.
    Block { host_id: u64 },
}

/// The `PerServer` ranges given out by one mcpod. A server's range comes from
/// a hash of its name; two names whose hashes pick the same range would share
/// host uids (and `nproc`) without anyone noticing, so a range already held by
/// another server is passed over for the next candidate (a hash of the name
/// and an attempt number): deterministic for a given order of first starts,
/// and a server keeps its range for as long as this mcpod runs.
#[derive(Debug, Default)]
pub struct UidBlocks {
    /// Slot → the server holding it, and server → its slot.
    held: std::sync::Mutex<(HashMap<u64, String>, HashMap<String, u64>)>,
}

impl UidBlocks {
    /// The first host id of `server`'s range, from `base`.
    pub fn host_id(&self, base: u64, instance: &str, server: &str) -> u64 {
        let mut held = self.held.lock().expect("uid blocks lock poisoned");
        let (by_slot, by_server) = &mut *held;
        if let Some(slot) = by_server.get(server) {
            return base + slot * USERNS_SIZE;
        }
        let slot = (0..USERNS_SLOTS)
            .map(|attempt| userns_slot(instance, server, attempt))
            .find(|slot| !by_slot.contains_key(slot))
            .expect("fewer servers than user namespace ranges");
        if slot != userns_slot(instance, server, 0) {
            let other = &by_slot[&userns_slot(instance, server, 0)];
            warn!(
                server,
                other, "user namespace ranges collide: another range picked"
            );
        }
        by_slot.insert(slot, server.to_string());
        by_server.insert(server.to_string(), slot);
        base + slot * USERNS_SIZE
    }
}

/// Candidate `attempt` of `server`'s range (0: the hash of its name alone).
fn userns_slot(instance: &str, server: &str, attempt: u64) -> u64 {
    let key = match attempt {
        0 => format!("{instance}/{server}"),
        n => format!("{instance}/{server}#{n}"),
    };
    let digest = Sha256::digest(key.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % USERNS_SLOTS
}

impl UserNamespace {
    /// The default base of [`UserNamespace::PerServer`]: 2^30, above any
    /// ordinary host user and below the `containers` range install-deps writes.
    pub const DEFAULT_BASE: u64 = 1 << 30;

    /// The first host id of `server`'s range under [`UserNamespace::PerServer`].
    pub fn host_base(base: u64, instance: &str, server: &str) -> u64 {
        base + userns_slot(instance, server, 0) * USERNS_SIZE
    }
}

impl std::str::FromStr for UserNamespace {
    type Err = String;

    /// `per-server`, `auto` or `host` (`per-server` with the default base;
    /// `per-server:BASE` for another).
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.split_once(':') {
            None if text == "per-server" => Ok(UserNamespace::PerServer {
                base: Self::DEFAULT_BASE,
            }),
            None if text == "auto" => Ok(UserNamespace::Auto),
            None if text == "host" => Ok(UserNamespace::Host),
            Some(("per-server", base)) => base
                .parse()
                .map(|base| UserNamespace::PerServer { base })
                .map_err(|_| format!("'{base}' is not a host uid")),
            _ => Err(format!(
                "'{text}': use per-server, per-server:BASE, auto or host"
            )),
        }
    }
}

pub struct PodmanRuntime {
    podman: Podman,
    libpod: Libpod,
    /// Scopes labels and container names, so several mcpods share one host.
    instance: String,
    userns: UserNamespace,
    /// Keys [`PodmanRuntime::secrets_version`]; never leaves the process.
    secrets_key: [u8; 32],
    /// `PerServer` ranges given out, so no two servers share one.
    uid_blocks: UidBlocks,
    attach_via: AttachVia,
    /// conmon's attach socket could not be reached once: the service attaches.
    conmon_unreachable: AtomicBool,
}

impl PodmanRuntime {
    pub fn new(socket: &Path, instance: &str) -> Self {
        PodmanRuntime {
            podman: Podman::unix(socket),
            libpod: Libpod {
                socket: socket.to_path_buf(),
            },
            instance: instance.to_string(),
            userns: UserNamespace::PerServer {
                base: UserNamespace::DEFAULT_BASE,
            },
            secrets_key: rand::random(),
            uid_blocks: UidBlocks::default(),
            attach_via: AttachVia::Auto,
            conmon_unreachable: AtomicBool::new(false),
        }
    }

    /// Attaches to server containers' stdio `via` (default: [`AttachVia::Auto`]).
    pub fn with_attach_via(mut self, via: AttachVia) -> Self {
        self.attach_via = via;
        self
    }

    /// Runs servers under `userns` (default: [`UserNamespace::PerServer`]).
    pub fn with_user_namespace(mut self, userns: UserNamespace) -> Self {
        self.userns = userns;
        self
    }

    /// The container name for an instance key: `mcpod-<key>` (or `mcpod-<instance>-<key>`).
    pub fn container_name(&self, key: &str) -> String {
        if self.instance == "default" {
            format!("mcpod-{key}")
        } else {
            format!("mcpod-{}-{key}", self.instance)
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<Value>> {
        let (status, body) = self
            .libpod
            .request("GET", &format!("/containers/{name}/json"), None)
            .await?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => Err(Error::PodmanService(format!(
                "inspect {name}: HTTP {status}: {}",
                message_of(&body)
            ))),
        }
    }

    async fn ensure_image(&self, workload: &Workload) -> Result<()> {
        let image = &workload.image;
        let present = self
            .podman
            .images()
            .get(image)
            .exists()
            .await
            .map_err(Error::podman(format!("look up image {image}")))?;
        match (workload.pull_policy, present) {
            (ImagePullPolicy::Always, _) | (ImagePullPolicy::IfNotPresent, false) => {
                self.pull(image).await
            }
            (ImagePullPolicy::Never, false) => Err(Error::Runtime(format!(
                "image {image} is not present locally and imagePullPolicy is Never; build it with `podman build -t {image}`"
            ))),
            _ => Ok(()),
        }
    }

    async fn pull(&self, image: &str) -> Result<()> {
        info!(image, "pulling image");
        let path = format!("/images/pull?reference={}&quiet=true", urlencode(image));
        let (status, body) = self.libpod.request("POST", &path, None).await?;
        let error = body.get("error").and_then(Value::as_str).unwrap_or("");
        if status != 200 || !error.is_empty() {
            return Err(Error::Runtime(format!(
                "image {image} is not present locally and pulling it failed: {}",
                if error.is_empty() {
                    message_of(&body)
                } else {
                    error.to_string()
                }
            )));
        }
        Ok(())
    }

    async fn create(&self, spec: &Value, workload: &Workload) -> Result<String> {
        self.ensure_image(workload).await?;
        let name = spec["name"].as_str().unwrap_or_default();
        let (status, body) = self
            .libpod
            .request("POST", "/containers/create", Some(spec))
            .await?;
        if status != 201 {
            return Err(Error::Runtime(format!(
                "create container {name}: HTTP {status}: {}",
                message_of(&body)
            )));
        }
        body.get("Id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::Runtime(format!("create container {name}: no Id in reply")))
    }

    /// The id of a container under `key` that can be started for `workload`:
    /// the existing one when its spec hash matches, else a new one.
    async fn container_for(&self, key: &str, workload: &Workload) -> Result<String> {
        let name = self.container_name(key);
        let secrets = self.secrets_setup(workload).await?;
        let userns = match self.userns {
            UserNamespace::PerServer { base } => UserNamespace::Block {
                host_id: self
                    .uid_blocks
                    .host_id(base, &self.instance, &workload.name),
            },
            other => other,
        };
        let spec = create_spec(&name, key, &self.instance, workload, userns, &secrets);
        let wanted_hash = spec["labels"][LABEL_SPEC_HASH].as_str().unwrap_or_default();
        if let Some(existing) = self.inspect(&name).await? {
            let hash = existing
                .pointer(&format!(
                    "/Config/Labels/{}",
                    LABEL_SPEC_HASH.replace('/', "~1")
                ))
                .and_then(Value::as_str)
                .unwrap_or_default();
            // A paused container (mcpod paused it before it restarted) is
            // not `Running` to Podman, and would never settle by itself.
            let running = existing
                .pointer("/State/Running")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                || existing.pointer("/State/Status").and_then(Value::as_str) == Some("paused");
            if hash == wanted_hash {
                if running {
                    info!(container = %name, "restarting adopted container: its MCP session cannot be resumed");
                    self.stop(key, Duration::ZERO).await?; // waits until settled
                } else if !is_settled(existing.pointer("/State/Status").and_then(Value::as_str)) {
                    // The inspect above usually shows it settled already (mcpod's
                    // stop waited for that): no second round trip on a cold start.
                    self.wait_until_settled(&name).await;
                }
                let id = existing.get("Id").and_then(Value::as_str).unwrap_or(&name);
                return Ok(id.to_string());
            }
            info!(container = %name, old = hash, new = wanted_hash, "spec changed: replacing container");
            self.remove(key).await?;
        }
        self.put_secrets(&name, workload).await?;
        self.create(&spec, workload).await
    }

    /// What `workload`'s secrets need in its create spec (nothing without any).
    async fn secrets_setup(&self, workload: &Workload) -> Result<SecretsSetup> {
        if !workload
            .env
            .iter()
            .any(|e| matches!(e.value, EnvValue::FromFile(_)))
        {
            return Ok(SecretsSetup::default());
        }
        let image = match self.image_command(&workload.image).await? {
            Some(image) => image,
            None => {
                self.ensure_image(workload).await?;
                self.image_command(&workload.image).await?.ok_or_else(|| {
                    Error::Runtime(format!("image {} vanished after the pull", workload.image))
                })?
            }
        };
        Ok(SecretsSetup {
            image,
            version: self.secrets_version(workload),
        })
    }

    /// A hash of the secret values keyed with a random key that only this
    /// mcpod process holds: equal values give equal versions (the container
    /// is kept), and the label gives nothing to guess a value against. After
    /// mcpod restarts, containers with secrets are created anew once.
    fn secrets_version(&self, workload: &Workload) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.secrets_key);
        for env in &workload.env {
            if let EnvValue::FromFile(value) = &env.value {
                for part in [env.name.as_str(), value.as_str()] {
                    hasher.update((part.len() as u64).to_be_bytes());
                    hasher.update(part.as_bytes());
                }
            }
        }
        hasher.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Stores the value of each `valueFromFile` variable of `workload` as a
    /// Podman secret of the container about to be created, replacing an older
    /// one (Podman 4.3 has no `replace`); Podman copies it into the container.
    async fn put_secrets(&self, container: &str, workload: &Workload) -> Result<()> {
        for env in &workload.env {
            let EnvValue::FromFile(value) = &env.value else {
                continue;
            };
            let secret = secret_name(container, &env.name);
            self.delete_secret(&secret).await?;
            let path = format!("/secrets/create?name={}&driver=file", urlencode(&secret));
            let (status, body) = self
                .libpod
                .send("POST", &path, Bytes::from(value.clone()), "text/plain")
                .await?;
            if status != 200 {
                return Err(Error::Runtime(format!(
                    "store {} of {container} as Podman secret {secret}: HTTP {status}: {}",
                    env.name,
                    message_of(&body)
                )));
            }
        }
        Ok(())
    }

    /// The image's own entrypoint and command (`None`: no such image here).
    async fn image_command(&self, image: &str) -> Result<Option<ImageCommand>> {
        let (status, body) = self
            .libpod
            .request("GET", &format!("/images/{}/json", urlencode(image)), None)
            .await?;
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            return Err(Error::Runtime(format!(
                "inspect image {image}: HTTP {status}: {}",
                message_of(&body)
            )));
        }
        let strings = |pointer: &str| -> Vec<String> {
            body.pointer(pointer)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        };
        Ok(Some(ImageCommand {
            entrypoint: strings("/Config/Entrypoint"),
            cmd: strings("/Config/Cmd"),
        }))
    }

    /// Removes one Podman secret; a missing one is success.
    async fn delete_secret(&self, secret: &str) -> Result<()> {
        let (status, body) = self
            .libpod
            .request("DELETE", &format!("/secrets/{}", urlencode(secret)), None)
            .await?;
        match status {
            200..=299 | 404 => Ok(()),
            _ => Err(Error::PodmanService(format!(
                "remove Podman secret {secret}: HTTP {status}: {}",
                message_of(&body)
            ))),
        }
    }

    /// Removes every Podman secret of `container` (see [`secret_name`]).
    async fn remove_secrets(&self, container: &str) -> Result<()> {
        let (status, body) = self.libpod.request("GET", "/secrets/json", None).await?;
        if status != 200 {
            return Err(Error::PodmanService(format!(
                "list Podman secrets: HTTP {status}: {}",
                message_of(&body)
            )));
        }
        let prefix = secret_prefix(container);
        let names = body
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|secret| secret.pointer("/Spec/Name").and_then(Value::as_str))
            .filter(|name| name.starts_with(&prefix));
        for name in names {
            self.delete_secret(name).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Runtime for PodmanRuntime {
    async fn start(&self, key: &str, workload: &Workload) -> Result<Attached> {
        let began = std::time::Instant::now();
        let id = self.container_for(key, workload).await?;
        let prepared = began.elapsed();
        let name = self.container_name(key);
        // Attach before start, as `podman start --attach` does, so no output is missed.
        let conmon = match self.attach_via {
            AttachVia::Auto => self.attach_conmon(&id, &name).await?,
            AttachVia::Service => None,
        };
        let via = if conmon.is_some() {
            "conmon"
        } else {
            "service"
        };
        let (output, stdin) = match conmon {
            Some(stdio) => stdio,
            None => self.attach_service(&id, &name).await?,
        };
        let attached = began.elapsed();
        self.podman
            .containers()
            .get(&id)
            .start(None)
            .await
            .map_err(Error::podman(format!("start {name}")))?;
        // Where a cold start's time goes, before the server's own startup.
        debug!(
            container = %name,
            via,
            prepare_ms = prepared.as_millis() as u64,
            attach_ms = (attached - prepared).as_millis() as u64,
            start_ms = (began.elapsed() - attached).as_millis() as u64,
            "container started"
        );
        Ok(Attached {
            container_id: id,
            output,
            stdin,
        })
    }

    async fn stop(&self, key: &str, grace: Duration) -> Result<()> {
        let name = self.container_name(key);
        self.stop_process(&name, grace).await?;
        // "Stopped" means Podman has cleaned up too (mounts released), so what
        // comes next — a restart, a removal, `podman rm` by hand — cannot race it.
        self.wait_until_settled(&name).await;
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let name = self.container_name(key);
        let options = ContainerDeleteOpts::builder()
            .force(true)
            .timeout(TERM_GRACE_SECS)
            .build();
        // A container that just stopped may still hold its mounts while Podman
        // cleans up ("device or resource busy"): wait for that, then retry.
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            match self.podman.containers().get(&name).delete(&options).await {
                Ok(()) => return self.remove_secrets(&name).await,
                Err(e) if is_not_found(&e) => return self.remove_secrets(&name).await,
                Err(e)
                    if e.to_string().contains("resource busy")
                        && tokio::time::Instant::now() < deadline =>
                {
                    debug!(container = %name, "still cleaning up; retrying the removal");
                    self.wait_until_settled(&name).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(Error::Podman {
                        context: format!("remove {name}"),
                        source: e,
                    })
                }
            }
        }
    }

    async fn list(&self) -> Result<Vec<Managed>> {
        let filters = json!({"label": [
            format!("{LABEL_MANAGED_BY}={MANAGED_BY}"),
            format!("{LABEL_INSTANCE}={}", self.instance),
        ]});
        let path = format!(
            "/containers/json?all=true&filters={}",
            urlencode(&filters.to_string())
        );
        let (status, body) = self.libpod.request("GET", &path, None).await?;
        if status != 200 {
            return Err(Error::PodmanService(format!(
                "list containers: HTTP {status}: {}",
                message_of(&body)
            )));
        }
        let prefix = self.container_name("");
        let containers = body.as_array().cloned().unwrap_or_default();
        Ok(containers
            .iter()
            .filter_map(|c| {
                let labels = c.get("Labels")?;
                let name = c.get("Names")?.get(0)?.as_str()?;
                Some(Managed {
                    key: name.strip_prefix(&prefix)?.to_string(),
                    server: labels.get(LABEL_SERVER)?.as_str()?.to_string(),
                    id: c.get("Id")?.as_str()?.to_string(),
                    running: c.get("State").and_then(Value::as_str) == Some("running"),
                    paused: c.get("State").and_then(Value::as_str) == Some("paused"),
                    spec_hash: labels
                        .get(LABEL_SPEC_HASH)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                })
            })
            .collect())
    }

    async fn exit_reason(&self, key: &str) -> Option<String> {
        let name = self.container_name(key);
        // The output can end a moment before Podman records the exit.
        let mut state = self.inspect(&name).await.ok()??;
        for _ in 0..40 {
            if state.pointer("/State/Running") != Some(&Value::Bool(true)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            state = self.inspect(&name).await.ok()??;
        }
        let inspected = state;
        let state = inspected.get("State")?;
        if state.get("Running") == Some(&Value::Bool(true)) {
            return None;
        }
        let mut reason = self.exit_cause(&name, &inspected).await;
        if let Some(error) = state
            .get("Error")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        {
            reason.push_str(&format!(" ({error})"));
        }
        let tail = self.log_tail(&name, 5).await;
        if !tail.is_empty() {
            reason.push_str(&format!("; last output: {tail}"));
        }
        Some(reason)
    }

    async fn pause(&self, key: &str) -> Result<()> {
        self.freeze(key, "pause").await
    }

    async fn resume(&self, key: &str) -> Result<()> {
        self.freeze(key, "unpause").await
    }

    async fn usage(&self, key: &str) -> Option<Usage> {
        let opts = podman_api::opts::ContainerStatsOpts::builder()
            .containers([self.container_name(key)])
            .build();
        match self.podman.containers().stats(&opts).await {
            Ok(stats) => usage_of(&stats),
            Err(e) => {
                debug!(key, error = %e, "no resource usage for the container");
                None
            }
        }
    }
}

/// The usage in libpod's `/containers/stats` answer (`{"Stats": [..]}`);
/// `None` for a container that is not running (libpod reports zeros then).
pub fn usage_of(stats: &Value) -> Option<Usage> {
    let stats = stats.get("Stats")?.get(0)?;
    let number = |field: &str| stats.get(field).and_then(Value::as_u64).unwrap_or(0);
    if number("UpTime") == 0 && number("CPUNano") == 0 {
        return None;
    }
    // An unlimited container reports the host's memory (or u64::MAX) as its limit.
    let limit = number("MemLimit");
    Some(Usage {
        cpu_seconds: number("CPUNano") as f64 / 1e9,
        memory_bytes: number("MemUsage"),
        memory_limit_bytes: (limit > 0 && limit < i64::MAX as u64).then_some(limit),
        network_receive_bytes: number("NetInput"),
        network_transmit_bytes: number("NetOutput"),
        block_read_bytes: number("BlockInput"),
        block_write_bytes: number("BlockOutput"),
    })
}

impl PodmanRuntime {
    /// How the container of `inspected` ended: killed for its memory limit
    /// (with the limit), else its exit code.
    async fn exit_cause(&self, name: &str, inspected: &Value) -> String {
        let state = &inspected["State"];
        let limit = inspected
            .pointer("/HostConfig/Memory")
            .and_then(Value::as_u64)
            .filter(|bytes| *bytes > 0)
            .map(|bytes| format!(" (limit {})", crate::quantity::format_memory(bytes)));
        let oom = state.get("OOMKilled") == Some(&Value::Bool(true))
            || (state.get("ExitCode").and_then(Value::as_i64) == Some(SIGKILL_EXIT_CODE)
                && self.killed_by_oom(name, inspected).await);
        if oom {
            return format!("was {OOM_REASON}{}", limit.unwrap_or_default());
        }
        match state.get("ExitCode").and_then(Value::as_i64) {
            Some(SIGKILL_EXIT_CODE) => format!(
                "was killed (SIGKILL, exit code {SIGKILL_EXIT_CODE}){}",
                limit
                    .map(|l| format!("; not found to be out of memory{l}"))
                    .unwrap_or_default()
            ),
            Some(code) => format!("exited with code {code}"),
            None => "is not running".to_string(),
        }
    }

    /// Whether the kernel's OOM killer ended the container. Podman 4.3 with
    /// runc on cgroups v1 leaves `State.OOMKilled` false, so: the container
    /// cgroup's own count (`memory.oom_control`'s `oom_kill`, v1, or
    /// `memory.events`, v2) while the cgroup still exists, else the kernel
    /// log's `oom-kill:` record naming the container's cgroup, written since
    /// it started (reading it needs root or CAP_SYSLOG).
    async fn killed_by_oom(&self, name: &str, inspected: &Value) -> bool {
        let Some(id) = inspected.get("Id").and_then(Value::as_str) else {
            return false;
        };
        if oom::cgroup_oom_kills(id) > 0 {
            return true;
        }
        let started = inspected
            .pointer("/State/StartedAt")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let id = id.to_string();
        let found = tokio::task::spawn_blocking(move || {
            oom::kernel_log_names_oom_kill(&id, started.map(|t| t.to_utc()))
        })
        .await
        .unwrap_or(false);
        debug!(container = %name, found, "looked for an OOM kill in the kernel log");
        found
    }

    /// libpod's `pause` or `unpause` (the cgroup freezer) of the container under `key`.
    async fn freeze(&self, key: &str, action: &str) -> Result<()> {
        let name = self.container_name(key);
        let path = format!("/containers/{name}/{action}");
        let (status, body) = self.libpod.request("POST", &path, None).await?;
        match status {
            200..=299 => Ok(()),
            _ => Err(Error::Runtime(format!(
                "{action} {name}: HTTP {status}: {}",
                message_of(&body)
            ))),
        }
    }

    /// Thaws `name` if it is paused: Podman 4.3 neither stops a paused
    /// container (it stays frozen) nor lets it exit when its stdin closes.
    async fn thaw_if_paused(&self, name: &str) {
        let paused = matches!(self.inspect(name).await, Ok(Some(state))
            if state.pointer("/State/Status").and_then(Value::as_str) == Some("paused"));
        if paused {
            let path = format!("/containers/{name}/unpause");
            if let Err(e) = self.libpod.request("POST", &path, None).await {
                warn!(container = %name, error = %e, "unpausing before the stop failed");
            }
        }
    }

    /// Waits up to `grace` for the container to exit by itself (its stdin is
    /// closed), then SIGTERM, then SIGKILL.
    async fn stop_process(&self, name: &str, grace: Duration) -> Result<()> {
        let container = self.podman.containers().get(name);
        self.thaw_if_paused(name).await;
        if !grace.is_zero() {
            let exited = tokio::time::timeout(grace, async {
                loop {
                    match self.inspect(name).await {
                        Ok(Some(state))
                            if state.pointer("/State/Running") == Some(&Value::Bool(true)) => {}
                        _ => return,
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            if exited.is_ok() {
                debug!(container = %name, "exited after stdin closed");
                return Ok(());
            }
        }
        // SIGTERM, then SIGKILL after TERM_GRACE_SECS.
        match container
            .stop(
                &ContainerStopOpts::builder()
                    .timeout(TERM_GRACE_SECS)
                    .build(),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // 304: already stopped.
            Err(e) if e.to_string().contains("304") => Ok(()),
            Err(e) => Err(Error::Podman {
                context: format!("stop {name}"),
                source: e,
            }),
        }
    }

    /// Waits until a container that exited has finished stopping: libpod
    /// refuses to attach to one still in the "stopping" state, and attaching to
    /// a "stopped" one races its cleanup (the output then ends at once). On a
    /// loaded host the cleanup can take seconds, so the wait is generous.
    async fn wait_until_settled(&self, name: &str) {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            let status = match self.inspect(name).await {
                Ok(Some(state)) => state
                    .pointer("/State/Status")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                _ => return,
            };
            if is_settled(status.as_deref()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn log_tail(&self, name: &str, lines: usize) -> String {
        let container = self.podman.containers().get(name);
        let opts = ContainerLogsOpts::builder()
            .stdout(true)
            .stderr(true)
            .tail(lines.to_string())
            .build();
        let chunks: Vec<_> = container.logs(&opts).take(64).collect().await;
        let text: Vec<u8> = chunks
            .into_iter()
            .filter_map(|chunk| chunk.ok())
            .flat_map(Vec::<u8>::from)
            .collect();
        String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// What giving a container its `valueFromFile` variables needs besides the workload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretsSetup {
    /// What the image runs, which the wrapper that exports the variables runs in turn.
    pub image: ImageCommand,
    /// Changes whenever a value does, and tells nothing about it: Podman 4.3
    /// copies mounted secrets into the container when it is created, so a new
    /// value needs a new container, found by the spec hash; see
    /// [`PodmanRuntime::secrets_version`].
    pub version: String,
}

/// What an image runs when the spec does not say (`podman image inspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageCommand {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// The label that changes with the values of the container's secrets.
const LABEL_SECRETS_VERSION: &str = "mcpod.dev/secrets-version";
/// Where a container's secret files are mounted (Podman's fixed directory).
const SECRETS_DIR: &str = "/run/secrets";

/// Gives the container its `valueFromFile` variables through Podman secrets,
/// mounted as files readable by the server's user only, and a `/bin/sh`
/// wrapper that exports them and then runs the server's own command
/// (`exec`, so the server keeps its pid and signals). Not Podman's env
/// secrets: Podman 4.3 shows their values in `podman inspect` once the
/// container has started (podman#23788, masked only from 5.3).
fn with_secrets(spec: &mut Value, container: &str, workload: &Workload, setup: &SecretsSetup) {
    let secrets: Vec<(&str, String)> = workload
        .env
        .iter()
        .filter(|e| matches!(e.value, EnvValue::FromFile(_)))
        .map(|e| (e.name.as_str(), secret_name(container, &e.name)))
        .collect();
    if secrets.is_empty() {
        return;
    }
    let image = &setup.image;
    spec["labels"][LABEL_SECRETS_VERSION] = json!(setup.version);
    let security = &workload.security;
    spec["secrets"] = json!(secrets
        .iter()
        .map(|(_, secret)| json!({
            "Source": secret, "Target": secret,
            "UID": security.run_as_user, "GID": security.run_as_group.unwrap_or(0), "Mode": 0o400,
        }))
        .collect::<Vec<_>>());
    // On a read-only root file system the mount points need a writable parent.
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(json!({
            "destination": SECRETS_DIR, "type": "tmpfs", "source": "tmpfs",
            "options": ["rw", "nosuid", "nodev", "noexec", "size=1m"],
        }));
    }
    let mut script = String::from("set -e\n");
    for (var, secret) in &secrets {
        // Names are shell identifiers (checked by Workload::resolve for Podman).
        script.push_str(&format!(
            "{var}=$(cat {SECRETS_DIR}/{secret}); export {var}\n"
        ));
    }
    script.push_str("exec \"$@\"\n");
    // Kubernetes semantics: `command` replaces the entrypoint, `args` the image's command.
    let (entrypoint, cmd) = if !workload.command.is_empty() {
        (&workload.command, &workload.args)
    } else if !workload.args.is_empty() {
        (&image.entrypoint, &workload.args)
    } else {
        (&image.entrypoint, &image.cmd)
    };
    spec["entrypoint"] = json!(["/bin/sh", "-c", script, "mcpod-secrets"]);
    spec["command"] = json!(entrypoint.iter().chain(cmd).collect::<Vec<_>>());
}

/// The Podman secret holding env variable `var` of container `container`:
/// `<container>.env.<VAR>` (container names hold no dot, so one container's
/// secrets are exactly those under its prefix). A variable name Podman does
/// not accept in a secret name is spelled in hex.
pub fn secret_name(container: &str, var: &str) -> String {
    let plain = var
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("{}{var}", secret_prefix(container))
    } else {
        let hex: String = var.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}x{hex}", secret_prefix(container))
    }
}

fn secret_prefix(container: &str) -> String {
    format!("{container}.env.")
}

/// The libpod create spec for `workload`: limits, hardening and labels included.
pub fn create_spec(
    name: &str,
    key: &str,
    instance: &str,
    workload: &Workload,
    userns: UserNamespace,
    secrets: &SecretsSetup,
) -> Value {
    let security = &workload.security;
    let env: HashMap<&str, &str> = workload
        .env
        .iter()
        .filter_map(|e| match &e.value {
            EnvValue::Literal(value) => Some((e.name.as_str(), value.as_str())),
            _ => None, // secrets below; the rest refused for Podman by Workload::resolve
        })
        .collect();

    let mut mounts: Vec<Value> = security
        .tmpfs
        .iter()
        .map(|path| json!({"destination": path, "type": "tmpfs", "source": "tmpfs", "options": ["rw", "nosuid", "nodev", "size=64m"]}))
        .collect();
    let mut volumes = vec![];
    for mount in &workload.mounts {
        let mode = if mount.read_only { "ro" } else { "rw" };
        match &mount.source {
            MountSource::HostPath(path) => mounts.push(json!({
                "destination": mount.path, "type": "bind", "source": path, "options": ["rbind", mode]
            })),
            MountSource::Volume(volume) => {
                volumes.push(json!({"Name": volume, "Dest": mount.path, "Options": [mode]}))
            }
            MountSource::EmptyDir => mounts.push(json!({
                "destination": mount.path, "type": "tmpfs", "source": "tmpfs", "options": ["rw", "nosuid", "nodev"]
            })),
            MountSource::ConfigMap(_) | MountSource::Secret(_) => {} // refused for Podman by Workload::resolve
        }
    }
    let user = match security.run_as_group {
        Some(group) => format!("{}:{group}", security.run_as_user),
        None => security.run_as_user.to_string(),
    };
    let nsmode = match workload.network {
        NetworkMode::None => "none",
        NetworkMode::Bridge => "bridge",
    };
    let mut spec = json!({
        "name": name,
        "image": workload.image,
        "labels": {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_SERVER: workload.name,
            LABEL_INSTANCE: instance,
            "mcpod.dev/key": key,
        },
        "env": env,
        "stdin": true,
        "terminal": false,
        "init": true,
        "user": user,
        "read_only_filesystem": security.read_only_root_filesystem,
        "no_new_privileges": security.no_new_privileges,
        "cap_drop": security.drop_capabilities,
        "cap_add": security.add_capabilities,
        "netns": {"nsmode": nsmode},
        "mounts": mounts,
        "volumes": volumes,
        "resource_limits": {
            "memory": {"limit": workload.memory_bytes, "swap": workload.memory_bytes},
            "cpu": {"quota": workload.cpu_millis * 100, "period": 100_000},
            "pids": {"limit": PIDS_LIMIT},
        },
        "log_configuration": {"driver": "k8s-file", "size": CONTAINER_LOG_MAX_BYTES},
        "r_limits": [
            {"type": "nofile", "soft": NOFILE_LIMIT, "hard": NOFILE_LIMIT},
            {"type": "nproc", "soft": NPROC_LIMIT, "hard": NPROC_LIMIT},
        ],
        "stop_timeout": TERM_GRACE_SECS,
    });
    // Kubernetes semantics: `command` replaces the entrypoint, `args` the image's command.
    if !workload.command.is_empty() {
        spec["entrypoint"] = json!(workload.command);
        spec["command"] = json!(workload.args);
    } else if !workload.args.is_empty() {
        spec["command"] = json!(workload.args);
    }
    if let Some(dir) = &workload.working_dir {
        spec["work_dir"] = json!(dir);
    }
    with_secrets(&mut spec, name, workload, secrets);
    match userns {
        UserNamespace::PerServer { base } => {
            // Keyed by the server, not the container: an isolated session's
            // container shares its server's range (and volumes).
            let host_id = UserNamespace::host_base(base, instance, &workload.name);
            let map = json!([{"container_id": 0, "host_id": host_id, "size": USERNS_SIZE}]);
            spec["userns"] = json!({"nsmode": "private"});
            spec["idmappings"] = json!({"UIDMap": map, "GIDMap": map});
        }
        UserNamespace::Block { host_id } => {
            let map = json!([{"container_id": 0, "host_id": host_id, "size": USERNS_SIZE}]);
            spec["userns"] = json!({"nsmode": "private"});
            spec["idmappings"] = json!({"UIDMap": map, "GIDMap": map});
        }
        UserNamespace::Auto => spec["userns"] = json!({"nsmode": "auto"}),
        UserNamespace::Host => {}
    }
    // The hash covers the whole create spec, so a change in what mcpod itself
    // asks of Podman (not only in the MCPServer) also replaces old containers.
    let digest = Sha256::digest(spec.to_string().as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    spec["labels"][LABEL_SPEC_HASH] = json!(hash);
    spec
}

/// A container's exit code when its init was killed by SIGKILL (128 + 9).
const SIGKILL_EXIT_CODE: i64 = 137;

/// Finding the kernel's OOM kills of one container, for cgroups v1 where
/// Podman 4.3 does not record them.
mod oom {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    /// Where the container's memory cgroup is, for cgroupfs and systemd
    /// managers, v1 and v2; its `oom_kill` count, 0 when it is gone.
    pub fn cgroup_oom_kills(id: &str) -> u64 {
        let leaves = [
            format!("libpod_parent/libpod-{id}"),
            format!("machine.slice/libpod-{id}.scope"),
        ];
        leaves
            .iter()
            .flat_map(|leaf| {
                [
                    format!("/sys/fs/cgroup/memory/{leaf}/memory.oom_control"),
                    format!("/sys/fs/cgroup/{leaf}/memory.events"),
                ]
            })
            .filter_map(|path| std::fs::read_to_string(path).ok())
            .filter_map(|text| oom_kill_count(&text))
            .max()
            .unwrap_or(0)
    }

    /// The `oom_kill N` line of `memory.oom_control` (v1) or `memory.events` (v2).
    pub fn oom_kill_count(text: &str) -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// Whether `/dev/kmsg` holds an `oom-kill:` record naming container `id`
    /// written after `since` (all of them without it). Reads at most the
    /// kernel's ring buffer, record by record, without blocking.
    pub fn kernel_log_names_oom_kill(
        id: &str,
        since: Option<chrono::DateTime<chrono::Utc>>,
    ) -> bool {
        const O_NONBLOCK: i32 = 0o4000;
        let Ok(mut kmsg) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open("/dev/kmsg")
        else {
            return false;
        };
        // Records carry microseconds since boot; the container's start in the
        // same clock, with a second of slack.
        let since_boot_us = since.and_then(|since| {
            let uptime: f64 = std::fs::read_to_string("/proc/uptime")
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let ago = (chrono::Utc::now() - since).num_microseconds()?;
            Some((uptime * 1e6) as i64 - ago - 1_000_000)
        });
        let mut record = vec![0u8; 8192];
        // The ring buffer is bounded; the cap only guards against a kernel
        // that keeps writing faster than this reads.
        for _ in 0..100_000 {
            let n = match kmsg.read(&mut record) {
                Ok(0) => return false,
                Ok(n) => n,
                // EPIPE: a record was overwritten while reading; go on.
                Err(e) if e.raw_os_error() == Some(32) => continue,
                Err(_) => return false, // EAGAIN: the end
            };
            let text = String::from_utf8_lossy(&record[..n]);
            if matches_oom_kill(&text, id, since_boot_us) {
                return true;
            }
        }
        false
    }

    /// `PRI,SEQ,TIME_US,FLAGS;oom-kill:…oom_memcg=…<id>…` at or after `since_us`.
    pub fn matches_oom_kill(record: &str, id: &str, since_us: Option<i64>) -> bool {
        let Some((header, message)) = record.split_once(';') else {
            return false;
        };
        if !message.starts_with("oom-kill:") || !message.contains(id) {
            return false;
        }
        let time_us: Option<i64> = header.split(',').nth(2).and_then(|t| t.parse().ok());
        match (since_us, time_us) {
            (Some(since), Some(time)) => time >= since,
            _ => true,
        }
    }
}

/// A minimal libpod client for the calls podman-api gets wrong or types too strictly.
struct Libpod {
    socket: PathBuf,
}

impl Libpod {
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.send(method, path, Bytes::from(body), "application/json")
            .await
    }

    /// `request` with a body that is not JSON (a secret's value).
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<(u16, Value)> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::PodmanService(format!("{method} {path}: {what}: {e}"))
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| fail(&format!("connect {}", self.socket.display()), &e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| fail("handshake", &e))?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{API_PREFIX}{path}"))
            .header("host", "d")
            .header("content-type", content_type)
            .body(Full::new(body))
            .map_err(|e| fail("build request", &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| fail("send", &e))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| fail("read body", &e))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, value))
    }
}

/// A container's output and stdin, however they were attached.
type Stdio = (
    futures::stream::BoxStream<'static, std::io::Result<Output>>,
    std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
);

/// How mcpod attaches to a server container's stdio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachVia {
    /// conmon's attach socket when this process can reach it (Podman on
    /// this host, same filesystem), else the Podman service's endpoint.
    Auto,
    /// Always the Podman service's attach endpoint (each message relayed by it).
    Service,
}

impl std::str::FromStr for AttachVia {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "auto" => Ok(AttachVia::Auto),
            "service" => Ok(AttachVia::Service),
            other => Err(format!(
                "unknown attach path {other:?}: expected auto or service"
            )),
        }
    }
}

impl PodmanRuntime {
    /// Initialises the container (conmon starts and opens its attach socket,
    /// the server's process does not run yet) and connects to that socket.
    /// `None` when the socket cannot be reached from here: then it never is
    /// tried again, and every attach goes through the service.
    async fn attach_conmon(&self, id: &str, name: &str) -> Result<Option<Stdio>> {
        if self.conmon_unreachable.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let (initialised, inspected) = tokio::join!(self.init(id, name), self.inspect(id));
        initialised?;
        let static_dir = inspected?.and_then(|c| {
            c.get("StaticDir")
                .and_then(Value::as_str)
                .map(PathBuf::from)
        });
        let Some(static_dir) = static_dir else {
            return Ok(None);
        };
        match conmon::connect(&static_dir.join("attach")) {
            Ok(socket) => {
                let (output, stdin) = socket.split();
                Ok(Some((output, Box::pin(stdin))))
            }
            Err(e) => {
                info!(container = %name, error = %e, socket = %static_dir.join("attach").display(),
                    "conmon's attach socket cannot be reached from here: attaching through the Podman service from now on");
                self.conmon_unreachable.store(true, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// libpod's `init`: conmon and the OCI runtime set the container up.
    async fn init(&self, id: &str, name: &str) -> Result<()> {
        settling(name, || async {
            let (status, body) = self
                .libpod
                .request("POST", &format!("/containers/{id}/init"), None)
                .await?;
            match status {
                // 304: initialised already (an attach that went before).
                204 | 304 => Ok(()),
                _ => Err(Error::Runtime(format!(
                    "initialise container {name}: HTTP {status}: {}",
                    message_of(&body)
                ))),
            }
        })
        .await
    }

    /// The Podman service's attach endpoint (the service relays every message).
    async fn attach_service(&self, id: &str, name: &str) -> Result<Stdio> {
        let container = self.podman.containers().get(id);
        let options = ContainerAttachOpts::builder()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .build();
        let attach = settling(name, || async {
            container
                .attach(&options)
                .await
                .map_err(Error::podman(format!("attach to {name}")))
        })
        .await?;
        let (reader, writer) = attach.split();
        let output = reader
            .map_ok(|chunk| match chunk {
                TtyChunk::StdErr(bytes) => Output::Stderr(Bytes::from(bytes)),
                TtyChunk::StdIn(bytes) | TtyChunk::StdOut(bytes) => {
                    Output::Stdout(Bytes::from(bytes))
                }
            })
            .map_err(|e| std::io::Error::other(e.to_string()))
            .boxed();
        Ok((output, Box::pin(writer.compat_write())))
    }
}

/// Runs `attempt` again while Podman says the container's state is improper:
/// its cleanup of a container that just exited can race a re-initialisation,
/// and settles within moments.
async fn settling<T, F, Fut>(name: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(e) if tries < 10 && e.to_string().contains("container state improper") => {
                tries += 1;
                debug!(container = %name, tries, "container still settling; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

/// Whether a container in libpod state `status` can be attached to and
/// started: "stopped" is not settled yet (Podman's cleanup turns it into "exited").
fn is_settled(status: Option<&str>) -> bool {
    matches!(status, Some("exited" | "created" | "configured") | None)
}

fn message_of(body: &Value) -> String {
    body.get("message")
        .or_else(|| body.get("cause"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string())
}

fn is_not_found(error: &podman_api::Error) -> bool {
    let text = error.to_string();
    text.contains("404") || text.contains("no such container")
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Podman service mcpod started because none answered; stopped on drop.
pub struct OwnedService {
    child: Child,
    pub socket: PathBuf,
}

impl Drop for OwnedService {
    fn drop(&mut self) {
        info!(socket = %self.socket.display(), "stopping the podman service mcpod started");
        let _ = self.child.start_kill();
    }
}

/// Finds a Podman service that answers (`CONTAINER_HOST`, then the usual root and
/// rootless sockets) or starts `podman system service` on a socket under `run_dir`.
pub async fn connect(run_dir: &Path) -> Result<(PathBuf, Option<OwnedService>)> {
    let mut candidates = vec![];
    if let Ok(host) = std::env::var("CONTAINER_HOST") {
        match host.strip_prefix("unix://") {
            Some(path) => candidates.push(PathBuf::from(path)),
            None => {
                return Err(Error::PodmanService(format!(
                    "CONTAINER_HOST={host}: only unix:// sockets are supported"
                )))
            }
        }
    } else {
        candidates.push(PathBuf::from("/run/podman/podman.sock"));
        if let Ok(dir) = std::env::var("XDG_RUNTIME_DIR") {
            candidates.push(Path::new(&dir).join("podman/podman.sock"));
        }
    }
    for socket in &candidates {
        if answers(socket).await {
            info!(socket = %socket.display(), "using podman service");
            return Ok((socket.clone(), None));
        }
    }
    if std::env::var("CONTAINER_HOST").is_ok() {
        return Err(Error::PodmanService(format!(
            "no podman service answers at CONTAINER_HOST ({})",
            candidates[0].display()
        )));
    }
    let service = start_service(run_dir).await?;
    Ok((service.socket.clone(), Some(service)))
}

async fn answers(socket: &Path) -> bool {
    if !socket.exists() {
        return false;
    }
    let ping = Podman::unix(socket);
    matches!(
        tokio::time::timeout(Duration::from_secs(5), ping.ping()).await,
        Ok(Ok(_))
    )
}

async fn start_service(run_dir: &Path) -> Result<OwnedService> {
    // The socket becomes a `unix://PATH` URL, where a relative path would read
    // as a host name: the service would never answer.
    let run_dir = &std::path::absolute(run_dir).map_err(|source| Error::Io {
        path: run_dir.to_path_buf(),
        source,
    })?;
    std::fs::create_dir_all(run_dir).map_err(|source| Error::Io {
        path: run_dir.to_path_buf(),
        source,
    })?;
    let socket = run_dir.join("podman.sock");
    let _ = std::fs::remove_file(&socket);
    info!(socket = %socket.display(), "no podman service answers: starting one");
    let child = Command::new("podman")
        .args(["system", "service", "--time=0"])
        .arg(format!("unix://{}", socket.display()))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            Error::PodmanService(format!(
                "cannot run `podman system service`: {e} (is podman installed?)"
            ))
        })?;
    let service = OwnedService { child, socket };
    for _ in 0..200 {
        if answers(&service.socket).await {
            return Ok(service);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    warn!("podman service did not answer within 10 s");
    Err(Error::PodmanService(format!(
        "started `podman system service` on {} but it did not answer within 10 s",
        service.socket.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_servers_whose_hashes_collide_get_different_uid_ranges() {
        // Two names whose hashes pick the same range (found by trying names).
        let mut seen = HashMap::new();
        let (first, second) = (0..)
            .map(|n| format!("s{n}"))
            .find_map(|name| {
                let slot = userns_slot("i", &name, 0);
                seen.insert(slot, name.clone()).map(|other| (other, name))
            })
            .unwrap();
        let base = UserNamespace::DEFAULT_BASE;
        assert_eq!(
            UserNamespace::host_base(base, "i", &first),
            UserNamespace::host_base(base, "i", &second)
        );
        let blocks = UidBlocks::default();
        let a = blocks.host_id(base, "i", &first);
        let b = blocks.host_id(base, "i", &second);
        assert_eq!(
            a,
            UserNamespace::host_base(base, "i", &first),
            "the first keeps its own"
        );
        assert_ne!(a, b, "the second is moved to another range");
        assert!(a.abs_diff(b) >= USERNS_SIZE, "ranges do not overlap");
        assert_eq!(blocks.host_id(base, "i", &second), b, "and keeps it");
        // The same servers in the same order get the same ranges.
        let again = UidBlocks::default();
        assert_eq!(again.host_id(base, "i", &first), a);
        assert_eq!(again.host_id(base, "i", &second), b);
    }
    use crate::workload::{Defaults, Target};

    #[test]
    fn usage_is_read_from_libpod_stats() {
        let stats = json!({"Error": null, "Stats": [{
            "CPUNano": 1_500_000_000u64, "MemUsage": 20_000_000u64, "MemLimit": 536_870_912u64,
            "NetInput": 10, "NetOutput": 20, "BlockInput": 30, "BlockOutput": 40, "UpTime": 5
        }]});
        let usage = usage_of(&stats).unwrap();
        assert_eq!(usage.cpu_seconds, 1.5);
        assert_eq!(usage.memory_bytes, 20_000_000);
        assert_eq!(usage.memory_limit_bytes, Some(536_870_912));
        assert_eq!(
            (usage.network_receive_bytes, usage.block_write_bytes),
            (10, 40)
        );
        let unlimited = json!({"Stats": [{"CPUNano": 1, "MemLimit": u64::MAX}]});
        assert_eq!(usage_of(&unlimited).unwrap().memory_limit_bytes, None);
        assert_eq!(usage_of(&json!({"Stats": []})), None);
    }

    fn workload(yaml: &str) -> Workload {
        let spec = serde_yaml::from_str(yaml).unwrap();
        Workload::resolve("time", &spec, &Defaults::default(), Target::Podman).unwrap()
    }

    #[test]
    fn values_from_files_are_mounted_secrets_exported_by_a_wrapper_never_env() {
        let plain = workload("image: x\nenv: [{name: MODE, value: plain}]");
        let none = SecretsSetup::default();
        let plain_spec = create_spec(
            "mcpod-time",
            "time",
            "default",
            &plain,
            UserNamespace::Host,
            &none,
        );
        let mut w = plain.clone();
        w.env.push(crate::workload::Env {
            name: "API_TOKEN".into(),
            value: EnvValue::FromFile("s3cret-value".into()),
        });
        let image = SecretsSetup {
            image: ImageCommand {
                entrypoint: vec!["python3".into(), "-u".into()],
                cmd: vec!["/srv/server.py".into()],
            },
            version: "0123456789abcdef".into(),
        };
        let spec = create_spec(
            "mcpod-time",
            "time",
            "default",
            &w,
            UserNamespace::Host,
            &image,
        );
        assert_eq!(spec["env"], json!({"MODE": "plain"}));
        assert!(!spec.to_string().contains("s3cret-value"), "{spec}");
        assert_eq!(
            spec["secrets"],
            json!([{"Source": "mcpod-time.env.API_TOKEN", "Target": "mcpod-time.env.API_TOKEN",
                    "UID": 65534, "GID": 0, "Mode": 0o400}])
        );
        let script = "set -e\nAPI_TOKEN=$(cat /run/secrets/mcpod-time.env.API_TOKEN); export API_TOKEN\nexec \"$@\"\n";
        assert_eq!(
            spec["entrypoint"],
            json!(["/bin/sh", "-c", script, "mcpod-secrets"])
        );
        // The image's own command runs behind the wrapper, unless the spec says otherwise.
        assert_eq!(spec["command"], json!(["python3", "-u", "/srv/server.py"]));
        assert_eq!(spec["labels"][LABEL_SECRETS_VERSION], "0123456789abcdef");
        let other_version = SecretsSetup {
            version: "fedcba9876543210".into(),
            ..image.clone()
        };
        let other = create_spec(
            "mcpod-time",
            "time",
            "default",
            &w,
            UserNamespace::Host,
            &other_version,
        );
        assert_ne!(
            other["labels"][LABEL_SPEC_HASH], spec["labels"][LABEL_SPEC_HASH],
            "a new value means a new container"
        );
        w.args = vec!["--port".into(), "0".into()];
        let spec = create_spec(
            "mcpod-time",
            "time",
            "default",
            &w,
            UserNamespace::Host,
            &image,
        );
        assert_eq!(spec["command"], json!(["python3", "-u", "--port", "0"]));
        w.command = vec!["node".into()];
        let spec = create_spec(
            "mcpod-time",
            "time",
            "default",
            &w,
            UserNamespace::Host,
            &image,
        );
        assert_eq!(spec["command"], json!(["node", "--port", "0"]));
        // A workload without secrets keeps the spec (and hash) it had before.
        assert!(plain_spec.get("secrets").is_none() && plain_spec.get("entrypoint").is_none());
        assert_eq!(
            secret_name("mcpod-x", "odd.name"),
            "mcpod-x.env.x6f64642e6e616d65"
        );
    }

    #[test]
    fn the_secrets_version_follows_the_values_under_a_key_of_this_process() {
        let runtime = PodmanRuntime::new(Path::new("/nonexistent.sock"), "default");
        let mut w = workload("image: x");
        w.env.push(crate::workload::Env {
            name: "API_TOKEN".into(),
            value: EnvValue::FromFile("one".into()),
        });
        let first = runtime.secrets_version(&w);
        assert_eq!(first, runtime.secrets_version(&w));
        w.env[0].value = EnvValue::FromFile("two".into());
        assert_ne!(first, runtime.secrets_version(&w));
        // Another mcpod (or this one restarted) has another key.
        let other = PodmanRuntime::new(Path::new("/nonexistent.sock"), "default");
        assert_ne!(other.secrets_version(&w), runtime.secrets_version(&w));
    }

    #[test]
    fn spec_carries_limits_hardening_and_labels() {
        let w = workload(
            "image: localhost/mcpod/time:latest\nresources: {limits: {memory: 256Mi, cpu: 500m}}",
        );
        let spec = create_spec(
            "mcpod-time",
            "time",
            "default",
            &w,
            UserNamespace::Host,
            &SecretsSetup::default(),
        );
        assert_eq!(spec["image"], "localhost/mcpod/time:latest");
        assert_eq!(
            spec["resource_limits"]["memory"]["limit"],
            256 * 1024 * 1024
        );
        assert_eq!(spec["resource_limits"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["user"], "65534");
        assert_eq!(spec["read_only_filesystem"], true);
        assert_eq!(spec["no_new_privileges"], true);
        assert_eq!(spec["cap_drop"], json!(["ALL"]));
        assert_eq!(spec["netns"]["nsmode"], "none");
        assert_eq!(spec["stdin"], true);
        assert_eq!(spec["init"], true);
        assert_eq!(spec["labels"][LABEL_MANAGED_BY], "mcpod");
        assert_eq!(spec["labels"][LABEL_SERVER], "time");
        assert_eq!(spec["labels"][LABEL_SPEC_HASH].as_str().unwrap().len(), 16);
        let other =
            workload("image: localhost/mcpod/time:latest\nresources: {limits: {memory: 128Mi}}");
        let other_spec = create_spec(
            "mcpod-time",
            "time",
            "default",
            &other,
            UserNamespace::Host,
            &SecretsSetup::default(),
        );
        assert_ne!(
            spec["labels"][LABEL_SPEC_HASH],
            other_spec["labels"][LABEL_SPEC_HASH]
        );
        assert_eq!(spec["mounts"][0]["destination"], "/tmp");
        assert_eq!(spec["mounts"][0]["type"], "tmpfs");
    }

    #[test]
    fn command_and_args_follow_kubernetes_semantics() {
        let w = workload("image: x\ncommand: [python3, -m, srv]\nargs: [--flag]");
        let spec = create_spec(
            "n",
            "k",
            "default",
            &w,
            UserNamespace::Host,
            &SecretsSetup::default(),
        );
        assert_eq!(spec["entrypoint"], json!(["python3", "-m", "srv"]));
        assert_eq!(spec["command"], json!(["--flag"]));
        let w = workload("image: x\nargs: [--local-timezone, UTC]");
        let spec = create_spec(
            "n",
            "k",
            "default",
            &w,
            UserNamespace::Host,
            &SecretsSetup::default(),
        );
        assert!(spec.get("entrypoint").is_none());
        assert_eq!(spec["command"], json!(["--local-timezone", "UTC"]));
    }

    #[test]
    fn each_server_gets_a_user_namespace_and_bounded_pids_and_log() {
        let w = workload("image: x");
        let base = UserNamespace::DEFAULT_BASE;
        let spec = create_spec(
            "n",
            "time",
            "default",
            &w,
            UserNamespace::PerServer { base },
            &SecretsSetup::default(),
        );
        assert_eq!(spec["userns"]["nsmode"], "private");
        let host_id = spec["idmappings"]["UIDMap"][0]["host_id"].as_u64().unwrap();
        assert_eq!(host_id, UserNamespace::host_base(base, "default", "time"));
        assert!(host_id >= base && host_id + USERNS_SIZE <= base + (1 << 30));
        assert_eq!(spec["idmappings"]["UIDMap"], spec["idmappings"]["GIDMap"]);
        assert_eq!(spec["idmappings"]["UIDMap"][0]["size"], 65536);
        // Another server, another range; the same server, the same range.
        assert_ne!(host_id, UserNamespace::host_base(base, "default", "fetch"));
        assert_ne!(host_id, UserNamespace::host_base(base, "other", "time"));
        assert_eq!(spec["resource_limits"]["pids"]["limit"], PIDS_LIMIT);
        assert_eq!(spec["log_configuration"]["size"], CONTAINER_LOG_MAX_BYTES);
        let auto = create_spec(
            "n",
            "time",
            "default",
            &w,
            UserNamespace::Auto,
            &SecretsSetup::default(),
        );
        assert_eq!(auto["userns"]["nsmode"], "auto");
        let host = create_spec(
            "n",
            "time",
            "default",
            &w,
            UserNamespace::Host,
            &SecretsSetup::default(),
        );
        assert!(host.get("userns").is_none() && host.get("idmappings").is_none());
        assert_eq!("auto".parse(), Ok(UserNamespace::Auto));
        assert_eq!(
            "per-server:100000".parse(),
            Ok(UserNamespace::PerServer { base: 100_000 })
        );
        assert!("shared".parse::<UserNamespace>().is_err());
    }

    #[test]
    fn oom_kills_are_read_from_cgroup_files_and_kernel_records() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(oom::oom_kill_count(v1), Some(2));
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom::oom_kill_count(v2), Some(1));
        let id = "e2b206448b6d";
        let record = format!("3,1234,288472296,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=libpod-{id},mems_allowed=0,oom_memcg=/libpod_parent/libpod-{id},task_memcg=/libpod_parent/libpod-{id},task=python3,pid=32325,uid=65534\n");
        assert!(oom::matches_oom_kill(&record, id, None));
        assert!(oom::matches_oom_kill(&record, id, Some(288_000_000)));
        assert!(
            !oom::matches_oom_kill(&record, id, Some(289_000_000)),
            "before the container started"
        );
        assert!(!oom::matches_oom_kill(&record, "other", None));
        assert!(!oom::matches_oom_kill(
            &format!("6,1,2,-;started libpod-{id}"),
            id,
            None
        ));
    }

    #[test]
    fn volumes_and_network() {
        let w = workload(
            "image: x\nnetwork: bridge\nvolumes:\n- {hostPath: /srv/mcpod/data, mountPath: /data, readOnly: true}\n- {volume: mem, mountPath: /mem}",
        );
        let spec = create_spec(
            "n",
            "k",
            "default",
            &w,
            UserNamespace::Host,
            &SecretsSetup::default(),
        );
        assert_eq!(spec["netns"]["nsmode"], "bridge");
        let bind = &spec["mounts"][1];
        assert_eq!(bind["source"], "/srv/mcpod/data");
        assert_eq!(bind["options"], json!(["rbind", "ro"]));
        assert_eq!(
            spec["volumes"][0],
            json!({"Name": "mem", "Dest": "/mem", "Options": ["rw"]})
        );
    }
}
