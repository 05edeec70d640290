//! Keeps the running servers equal to the declared ones: adds, updates and
//! removes [`Server`]s as MCPServer resources come and go, and adopts the
//! containers a previous mcpod left behind (the truth is in the runtime's
//! labels, not in memory).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tracing::{error, info, warn};

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
}

struct Entry {
    server: Arc<Server>,
    file: PathBuf,
}

impl Reconciler {
    pub fn new(runtime: Arc<dyn Runtime>, defaults: Defaults, settings: Settings) -> Arc<Self> {
        Arc::new(Reconciler {
            runtime,
            defaults,
            settings,
            servers: RwLock::new(BTreeMap::new()),
            problems: RwLock::new(vec![]),
        })
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
        for loaded in manifests.servers {
            let name = loaded.server.metadata.name.clone().unwrap_or_default();
            declared.insert(name.clone());
            let workload =
                match Workload::resolve(&name, &loaded.server.spec, &self.defaults, Target::Podman)
                {
                    Ok(workload) => workload,
                    Err(e) => {
                        let problem = format!("{}: {e}", loaded.file.display());
                        error!("{problem}");
                        problems.push(problem);
                        continue;
                    }
                };
            let existing = self.server(&name);
            match existing {
                Some(server) if *server.workload() == workload => {}
                Some(server) => {
                    info!(server = %name, "spec changed");
                    server.update(workload).await;
                }
                None => {
                    info!(server = %name, file = %loaded.file.display(), "declared");
                    let server =
                        Server::new(&name, workload, self.runtime.clone(), self.settings.clone());
                    self.servers.write().unwrap().insert(
                        name,
                        Entry {
                            server,
                            file: loaded.file,
                        },
                    );
                }
            }
        }
        for problem in &problems {
            warn!("{problem}");
        }
        let broken: BTreeSet<&PathBuf> = manifests.broken_files.keys().collect();
        let gone: Vec<(String, Arc<Server>)> = {
            let mut servers = self.servers.write().unwrap();
            let names: Vec<String> = servers
                .iter()
                .filter(|(name, entry)| !declared.contains(*name) && !broken.contains(&entry.file))
                .map(|(name, _)| name.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|name| servers.remove(&name).map(|e| (name, e.server)))
                .collect()
        };
        for (name, server) in gone {
            info!(server = %name, "no longer declared: removing");
            server.remove().await;
        }
        *self.problems.write().unwrap() = problems;
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
                Some(server) if container.running => {
                    tokio::spawn(async move { server.adopt_running().await });
                }
                Some(_) => {}
            }
        }
    }

    /// Reloads `dir` whenever a YAML file in it is added, changed or removed.
    pub async fn watch(self: Arc<Self>, dir: PathBuf, interval: Duration) {
        let mut last = manifests::fingerprint(&dir);
        loop {
            tokio::time::sleep(interval).await;
            let now = manifests::fingerprint(&dir);
            if now != last {
                last = now;
                info!(dir = %dir.display(), "manifests changed: reconciling");
                self.reload(&dir).await;
            }
        }
    }

    pub async fn reload(&self, dir: &Path) {
        match manifests::load_dir(dir) {
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
