//! Keeps the running servers equal to the declared ones: adds, updates and
//! removes [`Server`]s as MCPServer resources come and go, and adopts the
//! containers a previous mcpod left behind (the truth is in the runtime's
//! labels, not in memory).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::crd::{MCPServer, MCPServerGroup};
use crate::group::{self, Candidate, Membership};
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
    /// Counts the changes to the set of servers or their specs (the
    /// aggregated endpoint tells its clients when its members change).
    changes: tokio::sync::watch::Sender<u64>,
    /// Declared MCPServerGroups, by the key `server` would find a server of
    /// the same name and namespace by. Membership is decided on every use
    /// (from the servers' labels of the moment), so relabelling a server
    /// moves it in or out of a group at once.
    groups: RwLock<BTreeMap<String, MCPServerGroup>>,
}

pub use crate::server::REMOVAL_DEBOUNCE;

struct Entry {
    server: Arc<Server>,
    file: PathBuf,
    /// What groups select it by; changing them does not touch the server.
    labels: BTreeMap<String, String>,
    /// Kubernetes: the MCPServer's namespace (its name is the server's own).
    namespace: Option<String>,
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
    problems.extend(manifests.groups.iter().flat_map(|loaded| {
        let name = loaded.group.metadata.name.clone().unwrap_or_default();
        group::resolve(&loaded.group.spec, None, declared_candidates(manifests))
            .collisions
            .into_iter()
            .map(move |c| {
                format!(
                    "{}: MCPServerGroup {name}: {}",
                    loaded.file.display(),
                    c.message
                )
            })
    }));
    problems
}

/// Each declared group (Podman: one namespace) and its members among the declared servers.
pub fn declared_groups(manifests: &Manifests) -> Vec<(String, Membership)> {
    manifests
        .groups
        .iter()
        .map(|loaded| {
            let name = loaded.group.metadata.name.clone().unwrap_or_default();
            let membership =
                group::resolve(&loaded.group.spec, None, declared_candidates(manifests));
            (name, membership)
        })
        .collect()
}

fn declared_candidates(manifests: &Manifests) -> impl Iterator<Item = Candidate<'_>> {
    manifests.servers.iter().map(|loaded| Candidate {
        name: loaded.server.metadata.name.as_deref().unwrap_or_default(),
        namespace: None,
        labels: empty_if_none(&loaded.server.metadata.labels),
    })
}

fn empty_if_none(labels: &Option<BTreeMap<String, String>>) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    labels.as_ref().unwrap_or(&EMPTY)
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
            changes: tokio::sync::watch::channel(0).0,
            groups: RwLock::new(BTreeMap::new()),
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
            changes: tokio::sync::watch::channel(0).0,
            groups: RwLock::new(BTreeMap::new()),
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

    /// Changes when a server is declared, changed or removed.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn problems(&self) -> Vec<String> {
        let mut problems = self.problems.read().unwrap().clone();
        for (key, _, membership) in self.groups() {
            for collision in membership.collisions {
                problems.push(format!("MCPServerGroup {key}: {}", collision.message));
            }
        }
        problems
    }

    /// Replaces the declared groups (the manifest directory's, or the
    /// cluster's as the router watches them).
    pub fn set_groups(&self, groups: Vec<MCPServerGroup>) {
        let groups = groups
            .into_iter()
            .map(|group| {
                let name = group.metadata.name.clone().unwrap_or_default();
                let key = match (self.target, group.metadata.namespace.as_deref()) {
                    (Target::Kubernetes, Some(namespace)) => self.key_for(namespace, &name),
                    _ => name,
                };
                (key, group)
            })
            .collect();
        let mut declared = self.groups.write().unwrap();
        // Compared as JSON: the generated resource type has no `PartialEq`.
        if serde_json::to_value(&*declared).ok() != serde_json::to_value(&groups).ok() {
            *declared = groups;
            // The groups' members may have changed.
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// One group, by key, with its members of the moment.
    pub fn group(&self, key: &str) -> Option<(MCPServerGroup, Membership)> {
        let group = self.groups.read().unwrap().get(key)?.clone();
        let membership = self.membership(&group);
        Some((group, membership))
    }

    /// Every group (key, resource, members of the moment), by key.
    pub fn groups(&self) -> Vec<(String, MCPServerGroup, Membership)> {
        let groups: Vec<(String, MCPServerGroup)> = self
            .groups
            .read()
            .unwrap()
            .iter()
            .map(|(key, group)| (key.clone(), group.clone()))
            .collect();
        groups
            .into_iter()
            .map(|(key, group)| {
                let membership = self.membership(&group);
                (key, group, membership)
            })
            .collect()
    }

    /// The servers `group` selects now (Kubernetes: in its namespace).
    fn membership(&self, group: &MCPServerGroup) -> Membership {
        let servers = self.servers.read().unwrap();
        let candidates = servers.values().map(|entry| Candidate {
            // The MCPServer's own name: what `spec.prefixes` is keyed by.
            name: entry.server.name().rsplit('/').next().unwrap_or_default(),
            namespace: entry.namespace.as_deref(),
            labels: &entry.labels,
        });
        let namespace = match self.target {
            Target::Kubernetes => group.metadata.namespace.as_deref(),
            Target::Podman => None,
        };
        group::resolve(&group.spec, namespace, candidates)
    }

    /// A member of a group by its MCPServer name, in the group's namespace.
    pub fn group_member(&self, group: &MCPServerGroup, name: &str) -> Option<Arc<Server>> {
        match (self.target, group.metadata.namespace.as_deref()) {
            (Target::Kubernetes, Some(namespace)) => self.server(&self.key_for(namespace, name)),
            _ => self.server(name),
        }
    }

    /// Makes the set of servers match `manifests`. A server whose file or spec
    /// became invalid keeps running as it was; the problem is reported.
    pub async fn apply(&self, manifests: Manifests) {
        // On Kubernetes the router watches groups on their own (`sync_groups`).
        if self.target == Target::Podman {
            let groups = manifests.groups.iter().map(|l| l.group.clone()).collect();
            self.set_groups(groups);
        }
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
            let labels = loaded.server.metadata.labels.clone().unwrap_or_default();
            let namespace = loaded.server.metadata.namespace.clone();
            let existing = self.server(&key);
            if existing.is_some() {
                // A declaration moved to another file: that file owns it now.
                if let Some(entry) = self.servers.write().unwrap().get_mut(&key) {
                    entry.file = loaded.file.clone();
                    if entry.labels != labels {
                        // Relabelled: group memberships may change.
                        self.changes.send_modify(|n| *n += 1);
                    }
                    entry.labels = labels.clone();
                    entry.namespace = namespace.clone();
                }
            }
            match existing {
                Some(server) if *server.workload() == workload => {}
                Some(server) => {
                    info!(server = %key, "spec changed");
                    server.update(workload).await;
                    self.changes.send_modify(|n| *n += 1);
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
                            labels,
                            namespace,
                        },
                    );
                    self.changes.send_modify(|n| *n += 1);
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
            self.changes.send_modify(|n| *n += 1);
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

#[cfg(test)]
mod group_tests {
    use super::*;
    use crate::manifests::Loaded;
    use crate::runtime::memory::MemoryRuntime;

    fn server(namespace: &str, name: &str, team: &str) -> Loaded {
        let yaml = format!(
            "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\n\
             metadata: {{name: {name}, namespace: {namespace}, labels: {{team: {team}}}}}\n\
             spec: {{image: localhost/x}}\n"
        );
        Loaded {
            file: PathBuf::from(format!("mcpservers/{namespace}/{name}")),
            server: serde_yaml::from_str(&yaml).unwrap(),
        }
    }

    fn group(namespace: &str, team: &str) -> MCPServerGroup {
        serde_yaml::from_str(&format!(
            "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServerGroup\n\
             metadata: {{name: team, namespace: {namespace}}}\n\
             spec: {{selector: {{matchLabels: {{team: {team}}}}}}}\n"
        ))
        .unwrap()
    }

    fn members(reconciler: &Reconciler, key: &str) -> Vec<String> {
        let (group, membership) = reconciler.group(key).unwrap();
        membership
            .members
            .iter()
            .map(|m| {
                let server = reconciler.group_member(&group, &m.server).unwrap();
                server.key().to_string()
            })
            .collect()
    }

    /// On Kubernetes a group selects in its own namespace only, and is found
    /// by `name` at home and `namespace/name` elsewhere, as servers are; a
    /// relabelled server changes membership with no restart.
    #[tokio::test]
    async fn kube_groups_select_in_their_namespace_and_follow_labels() {
        let reconciler = Reconciler::for_kubernetes(
            Arc::new(MemoryRuntime::new()),
            Defaults::default(),
            Settings::default(),
            "home",
        );
        let servers = vec![
            server("home", "time", "a"),
            server("home", "git", "b"),
            server("other", "time", "a"),
            server("other", "memory", "a"),
        ];
        reconciler
            .apply(Manifests {
                servers: servers.clone(),
                ..Default::default()
            })
            .await;
        reconciler.set_groups(vec![group("home", "a"), group("other", "a")]);
        assert_eq!(members(&reconciler, "team"), ["home/time"]);
        assert_eq!(
            members(&reconciler, "other/team"),
            ["other/memory", "other/time"]
        );
        assert!(reconciler.group("home/team").is_none());
        // git is relabelled into the home group: the same server, now a member.
        let git = reconciler.server("git").unwrap();
        let mut servers = servers;
        servers[1] = server("home", "git", "a");
        reconciler
            .apply(Manifests {
                servers,
                ..Default::default()
            })
            .await;
        assert_eq!(members(&reconciler, "team"), ["home/git", "home/time"]);
        assert!(Arc::ptr_eq(&git, &reconciler.server("git").unwrap()));
    }
}
