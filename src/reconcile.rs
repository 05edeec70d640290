//! Keeps the running servers equal to the declared ones: adds, updates and
//! removes [`Server`]s as MCPServer resources come and go, and adopts the
//! containers a previous mcpod left behind (the truth is in the runtime's
//! labels, not in memory).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::crd::MCPServer;
use crate::manifests::{self, Manifests};
use crate::runtime::Runtime;
use crate::server::{Server, Settings};
use crate::workload::{Defaults, Target, Workload};

pub struct Reconciler {
    runtime: Arc<dyn Runtime>,
    defaults: Defaults,
    settings: Settings,
    servers: RwLock<BTreeMap<String, Entry>>,
    /// Problems found in the last reconcile, by file or server: shown by the API.
    problems: RwLock<Vec<String>>,
    target: Target,
    /// On Kubernetes: servers in this namespace are known by bare name, others
    /// as `namespace/name`.
    home_namespace: Option<String>,
    /// Servers whose file vanished or became empty, and since when: removed
    /// only once it stays so for [`REMOVAL_DEBOUNCE`] (a file rewritten in
    /// place is empty for a moment).
    vanishing: RwLock<BTreeMap<String, Instant>>,
}

pub use crate::server::REMOVAL_DEBOUNCE;

struct Entry {
    server: Arc<Server>,
    file: PathBuf,
}

/// A declared server's workload, or the problem `apply` reports for it (the
/// file and what is wrong).
pub fn resolve_declared(
    loaded: &manifests::Loaded,
    defaults: &Defaults,
    target: Target,
) -> Result<Workload, String> {
    let name = loaded.server.metadata.name.clone().unwrap_or_default();
    Workload::resolve(&name, &loaded.server.spec, defaults, target)
        .map_err(|e| format!("{}: {e}", loaded.file.display()))
}

/// Every problem `apply` would report for `manifests`, in the same words,
/// without running anything: what `mcpod validate` checks.
pub fn problems_in(manifests: &Manifests, defaults: &Defaults, target: Target) -> Vec<String> {
    let mut problems: Vec<String> = manifests.broken_files.values().cloned().collect();
    problems.extend(
        manifests
            .servers
            .iter()
            .filter_map(|loaded| resolve_declared(loaded, defaults, target).err()),
    );
    problems
}

impl Reconciler {
    pub fn new(runtime: Arc<dyn Runtime>, defaults: Defaults, settings: Settings) -> Arc<Self> {
        Arc::new(Reconciler {
            runtime,
            defaults,
            settings,
            servers: RwLock::new(BTreeMap::new()),
            problems: RwLock::new(vec![]),
            target: Target::Podman,
            home_namespace: None,
            vanishing: RwLock::new(BTreeMap::new()),
        })
    }

    /// A reconciler for `mcpod router`: servers are MCPServers in the cluster,
    /// their runtime keys are `namespace/name`, and idle stops are left to the
    /// operator, which sees the activity of every router replica.
    pub fn for_kubernetes(
        runtime: Arc<dyn Runtime>,
        defaults: Defaults,
        settings: Settings,
        home_namespace: &str,
    ) -> Arc<Self> {
        Arc::new(Reconciler {
            runtime,
            defaults,
            settings,
            servers: RwLock::new(BTreeMap::new()),
            problems: RwLock::new(vec![]),
            target: Target::Kubernetes,
            home_namespace: Some(home_namespace.to_string()),
            vanishing: RwLock::new(BTreeMap::new()),
        })
    }

    /// The key `server` finds a server by: its name in the home namespace
    /// (and on Podman), `namespace/name` elsewhere.
    pub fn key_for(&self, namespace: &str, name: &str) -> String {
        match &self.home_namespace {
            Some(home) if home != namespace => format!("{namespace}/{name}"),
            _ => name.to_string(),
        }
    }

    /// (lookup key, runtime key) of a declared server.
    fn keys_of(&self, server: &MCPServer, name: &str) -> (String, String) {
        match (self.target, server.metadata.namespace.as_deref()) {
            (Target::Kubernetes, Some(namespace)) => {
                (self.key_for(namespace, name), format!("{namespace}/{name}"))
            }
            _ => (name.to_string(), name.to_string()),
        }
    }

    pub fn server(&self, name: &str) -> Option<Arc<Server>> {
        self.servers
            .read()
            .unwrap()
            .get(name)
            .map(|e| e.server.clone())
    }

    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.servers
            .read()
            .unwrap()
            .values()
            .map(|e| e.server.clone())
            .collect()
    }

    pub fn problems(&self) -> Vec<String> {
        self.problems.read().unwrap().clone()
    }

    /// Makes the set of servers match `manifests`. A server whose file or spec
    /// became invalid keeps running as it was; the problem is reported.
    pub async fn apply(&self, manifests: Manifests) {
        let mut problems: Vec<String> = manifests.broken_files.values().cloned().collect();
        let mut declared = BTreeSet::new();
        let declaring_files: BTreeSet<PathBuf> =
            manifests.servers.iter().map(|l| l.file.clone()).collect();
        for loaded in manifests.servers {
            let name = loaded.server.metadata.name.clone().unwrap_or_default();
            let (key, runtime_key) = self.keys_of(&loaded.server, &name);
            declared.insert(key.clone());
            let workload = match resolve_declared(&loaded, &self.defaults, self.target) {
                Ok(mut workload) => {
                    if self.target == Target::Kubernetes {
                        workload.timeouts.idle = None; // the operator's decision
                    }
                    workload
                }
                Err(problem) => {
                    error!("{problem}");
                    problems.push(problem);
                    continue;
                }
            };
            let existing = self.server(&key);
            if existing.is_some() {
                // A declaration moved to another file: that file owns it now.
                if let Some(entry) = self.servers.write().unwrap().get_mut(&key) {
                    entry.file = loaded.file.clone();
                }
            }
            match existing {
                Some(server) if *server.workload() == workload => {}
                Some(server) => {
                    info!(server = %key, "spec changed");
                    server.update(workload).await;
                }
                None => {
                    info!(server = %key, file = %loaded.file.display(), "declared");
                    let server = Server::new(
                        &runtime_key,
                        workload,
                        self.runtime.clone(),
                        self.settings.clone(),
                    );
                    self.servers.write().unwrap().insert(
                        key,
                        Entry {
                            server,
                            file: loaded.file,
                        },
                    );
                }
            }
        }
        let broken: BTreeSet<&PathBuf> = manifests.broken_files.keys().collect();
        let gone: Vec<(String, Arc<Server>)> = {
            let mut servers = self.servers.write().unwrap();
            let undeclared: Vec<(String, PathBuf)> = servers
                .iter()
                .filter(|(name, entry)| !declared.contains(*name) && !broken.contains(&entry.file))
                .map(|(name, entry)| (name.clone(), entry.file.clone()))
                .collect();
            let names = self.due_removals(undeclared, &declared, &declaring_files, &mut problems);
            names
                .into_iter()
                .filter_map(|name| servers.remove(&name).map(|e| (name, e.server)))
                .collect()
        };
        for problem in &problems {
            warn!("{problem}");
        }
        for (name, server) in gone {
            info!(server = %name, "no longer declared: removing");
            server.remove().await;
        }
        *self.problems.write().unwrap() = problems;
    }

    /// Of the servers no longer declared, those to remove now. A server whose
    /// file still declares other servers was edited out: removed at once. One
    /// whose file declares nothing (gone, empty, or mid-rewrite) is removed
    /// once that has lasted [`REMOVAL_DEBOUNCE`] (on Kubernetes, at once: the
    /// API server's deletions are deliberate).
    fn due_removals(
        &self,
        undeclared: Vec<(String, PathBuf)>,
        declared: &BTreeSet<String>,
        declaring_files: &BTreeSet<PathBuf>,
        problems: &mut Vec<String>,
    ) -> Vec<String> {
        let mut vanishing = self.vanishing.write().unwrap();
        vanishing.retain(|name, _| !declared.contains(name));
        let now = Instant::now();
        let mut due = vec![];
        for (name, file) in undeclared {
            if self.target == Target::Kubernetes || declaring_files.contains(&file) {
                due.push(name);
                continue;
            }
            let since = *vanishing.entry(name.clone()).or_insert(now);
            let waited = now.duration_since(since);
            let debounce = self.settings.removal_debounce;
            if waited >= debounce {
                vanishing.remove(&name);
                due.push(name);
            } else {
                problems.push(format!(
                    "{}: declares nothing now (removed, empty or being rewritten); MCPServer '{name}' keeps running and is removed if it stays so for {}s",
                    file.display(),
                    (debounce - waited).as_secs_f64().ceil()
                ));
            }
        }
        due
    }

    /// Whether a server waits for its vanished file's debounce to end.
    fn removal_pending(&self) -> bool {
        !self.vanishing.read().unwrap().is_empty()
    }

    /// Adopts what a previous mcpod left: containers of undeclared servers are
    /// removed, running ones of declared servers are restarted cleanly.
    pub async fn adopt(&self) {
        let managed = match self.runtime.list().await {
            Ok(managed) => managed,
            Err(e) => {
                warn!(error = %e, "cannot list existing containers; skipping adoption");
                return;
            }
        };
        for container in managed {
            match self.server(&container.server) {
                None => {
                    info!(server = %container.server, container = %container.id, "removing the container of an undeclared server");
                    if let Err(e) = self.runtime.remove(&container.key).await {
                        warn!(error = %e, "removing an orphan container failed");
                    }
                }
                // An isolated session's container: its session died with the old mcpod.
                Some(server) if server.key() != container.key => {
                    info!(container = %container.id, "removing the container of a session that no longer exists");
                    if let Err(e) = self.runtime.remove(&container.key).await {
                        warn!(error = %e, "removing an orphan session container failed");
                    }
                }
                Some(server) if container.running => {
                    tokio::spawn(async move { server.adopt_running().await });
                }
                // Paused by the mcpod before this one: it was idle, and its MCP
                // session cannot be resumed, so it is stopped (thawed first).
                Some(_) if container.paused => {
                    info!(server = %container.server, container = %container.id, "stopping a container paused before mcpod restarted");
                    if let Err(e) = self.runtime.stop(&container.key, Duration::ZERO).await {
                        warn!(error = %e, "stopping a paused container failed");
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Reloads `dir` whenever a YAML file in it is added, changed or removed,
    /// once the change has held still for one `interval` (so a file being
    /// written is not read half-way), and while a removal waits its debounce.
    pub async fn watch(self: Arc<Self>, dir: PathBuf, interval: Duration) {
        let mut applied = manifests::fingerprint(&dir);
        let mut seen = applied.clone();
        loop {
            tokio::time::sleep(interval).await;
            let now = manifests::fingerprint(&dir);
            let settled = now == seen;
            seen = now;
            if settled && seen != applied {
                applied = seen.clone();
                info!(dir = %dir.display(), "manifests changed: reconciling");
                self.reload(&dir).await;
            } else if settled && self.removal_pending() {
                self.reload(&dir).await;
            }
        }
    }

    pub async fn reload(&self, dir: &Path) {
        // A name declared twice stays with the file already serving it.
        let owners: BTreeMap<String, PathBuf> = self
            .servers
            .read()
            .unwrap()
            .iter()
            .map(|(name, entry)| (name.clone(), entry.file.clone()))
            .collect();
        match manifests::load_dir_preferring(dir, |name| owners.get(name).cloned()) {
            Ok(manifests) => self.apply(manifests).await,
            Err(e) => error!("{e}"),
        }
    }

    /// Ends every client session, closing their streams (mcpod is shutting down).
    pub fn end_sessions(&self) {
        for server in self.servers() {
            server.sessions().end_all();
        }
    }

    /// Stops every server (mcpod is shutting down); containers stay for adoption.
    pub async fn shutdown(&self) {
        let servers = self.servers();
        futures::future::join_all(servers.iter().map(|s| s.stop("mcpod shutting down", true)))
            .await;
    }
}
