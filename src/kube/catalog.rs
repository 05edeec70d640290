//! The router's catalogs ([`crate::catalog`]) kept in the cluster, so that a
//! restarted router, and every other router replica, lists a scaled-to-zero
//! server without starting its pod.
//!
//! Each MCPServer's catalog is a ConfigMap of its own, `mcpod-catalog-<name>`
//! in the server's namespace, rather than a field of the MCPServer's status:
//! the status is the operator's (it server-side-applies it from what it
//! observes), a catalog there would ride along with every MCPServer event that
//! the operator and every router watch, and it would share the object's 1 MiB
//! with the spec. The ConfigMap carries an owner reference to its MCPServer,
//! so it goes when the server does, and labels naming the server; the entry is
//! gzip-compressed JSON (`binaryData`), and one still too large after
//! compression is not kept (the ConfigMap is deleted, so no outdated list is
//! served; the server is started to list, as with no catalog).
//!
//! Written by the replica that learned it: only the holder of a server's Lease
//! attaches to its pod ([`super::ownership`]), so one writer at a time, and a
//! server-side apply makes the last write win. Every replica watches the
//! ConfigMaps, keeps what it saw (read when a server is declared) and hands a
//! changed one to the server's catalog; an entry for another spec hash is held
//! but never answers (see [`crate::catalog::Catalog::current`]). A spec change
//! does not delete the ConfigMap: every replica sees the change, and a slow one
//! would delete what the owner had just learned for the new spec.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use super::FIELD_MANAGER;
use crate::catalog::{Entry, Store};
use crate::crd::MCPServer;
use crate::reconcile::Reconciler;
use crate::workload::{LABEL_MANAGED_BY, LABEL_SERVER, LABEL_SPEC_HASH, MANAGED_BY};
use crate::{Error, Result};

/// `app.kubernetes.io/component` of a catalog's ConfigMap: what the watch selects.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const COMPONENT: &str = "catalog";
/// The `binaryData` key of the gzip-compressed entry.
pub const DATA_KEY: &str = "catalog.json.gz";
/// The most compressed bytes kept: a ConfigMap's data may not exceed 1 MiB,
/// and its metadata needs a little of it.
pub const MAX_COMPRESSED_BYTES: usize = 1024 * 1024 - 16 * 1024;
/// The most bytes a stored entry may unpack to (a ConfigMap is not trusted
/// to be small once inflated).
const MAX_JSON_BYTES: u64 = 64 * 1024 * 1024;

/// The name of `server`'s catalog ConfigMap.
pub fn config_map_name(server: &str) -> String {
    format!("mcpod-catalog-{server}")
}

/// Why a catalog is not kept in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(
        "the catalog of MCP server '{server}' is {bytes} bytes compressed, more than a \
         ConfigMap holds ({MAX_COMPRESSED_BYTES}); it is kept in this router's memory only"
    )]
    TooLarge { server: String, bytes: usize },
}

/// `entry` as the ConfigMap of `owner` (an MCPServer with a name, namespace and uid).
pub fn config_map(owner: &MCPServer, entry: &Entry) -> std::result::Result<ConfigMap, EncodeError> {
    let server = owner.name_any();
    let json = serde_json::to_vec(entry).expect("a catalog entry is JSON");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let compressed = gzip
        .write_all(&json)
        .and_then(|()| gzip.finish())
        .expect("compressing into memory");
    if compressed.len() > MAX_COMPRESSED_BYTES {
        return Err(EncodeError::TooLarge {
            server,
            bytes: compressed.len(),
        });
    }
    let labels = [
        (LABEL_MANAGED_BY, MANAGED_BY),
        (LABEL_COMPONENT, COMPONENT),
        (LABEL_SERVER, server.as_str()),
    ];
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&server)),
            namespace: owner.namespace(),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            // For people: the entry's own hash is what is checked.
            annotations: Some([(LABEL_SPEC_HASH.to_string(), entry.spec_hash.clone())].into()),
            owner_references: owner.owner_ref(&()).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        binary_data: Some([(DATA_KEY.to_string(), ByteString(compressed))].into()),
        ..ConfigMap::default()
    })
}

/// The runtime key (`namespace/name`) and entry a catalog ConfigMap holds;
/// `None` (logged) for one that is not a readable catalog.
pub fn decode(map: &ConfigMap) -> Option<(String, Entry)> {
    let name = map.name_any();
    let namespace = map.namespace()?;
    let server = map.labels().get(LABEL_SERVER)?.clone();
    let Some(ByteString(compressed)) = map.binary_data.as_ref()?.get(DATA_KEY) else {
        warn!(configmap = %name, "a catalog ConfigMap without {DATA_KEY}: ignored");
        return None;
    };
    let mut json = vec![];
    let read = flate2::read::GzDecoder::new(compressed.as_slice())
        .take(MAX_JSON_BYTES)
        .read_to_end(&mut json);
    let entry = read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<Entry>(&json).map_err(|e| e.to_string()));
    match entry {
        Ok(entry) => Some((format!("{namespace}/{server}"), entry)),
        Err(error) => {
            warn!(configmap = %name, %error, "an unreadable catalog ConfigMap: ignored (it is learned again)");
            None
        }
    }
}

/// One write for the writer task: an entry, under its runtime key.
type Pending = (String, Entry);

/// The catalogs of a router on Kubernetes: [`Store`] of every server's
/// catalog, read from the watch of the ConfigMaps, written in the background.
pub struct KubeCatalogs {
    /// What the watch last saw, by runtime key (`namespace/name`).
    seen: Mutex<HashMap<String, Entry>>,
    /// Writes, in order, to one task: two writes of one server never race.
    writes: mpsc::UnboundedSender<Pending>,
    /// Whether the first listing of the ConfigMaps is done.
    listed: tokio::sync::watch::Sender<bool>,
}

impl KubeCatalogs {
    /// Catalogs written through `client`, each in its server's namespace.
    pub fn new(client: Client) -> Arc<KubeCatalogs> {
        let (writes, queue) = mpsc::unbounded_channel();
        let catalogs = Arc::new(KubeCatalogs {
            seen: Mutex::default(),
            writes,
            listed: tokio::sync::watch::channel(false).0,
        });
        let span = tracing::info_span!("catalog-writer");
        tokio::spawn(write_loop(client, queue).instrument(span));
        catalogs
    }

    /// Waits until the ConfigMaps were listed once (or `limit` passed): a
    /// router that serves before then would start servers to list them.
    pub async fn wait_listed(&self, limit: Duration) -> bool {
        let mut listed = self.listed.subscribe();
        tokio::time::timeout(limit, listed.wait_for(|listed| *listed))
            .await
            .is_ok_and(|done| done.is_ok())
    }

    /// Keeps what the catalog ConfigMaps of `api` hold, and hands every
    /// change to the catalog of the server it is for. Runs until the router ends.
    pub async fn watch(self: Arc<Self>, api: Api<ConfigMap>, reconciler: Weak<Reconciler>) {
        let selector = format!("{LABEL_COMPONENT}={COMPONENT},{LABEL_MANAGED_BY}={MANAGED_BY}");
        let config = watcher::Config::default().labels(&selector);
        let mut events = watcher(api, config).default_backoff().boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(map) | watcher::Event::InitApply(map)) => {
                    self.saw(&map, &reconciler)
                }
                Ok(watcher::Event::Delete(map)) => {
                    // Held catalogs stay: they were right when learned, and the
                    // spec hash still guards them.
                    if let Some((key, _)) = decode(&map) {
                        self.seen.lock().unwrap().remove(&key);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    self.listed.send_replace(true);
                }
                Ok(watcher::Event::Init) => {}
                Err(e) => {
                    warn!(error = %e, "watching catalog ConfigMaps failed; retrying with backoff")
                }
            }
        }
    }

    fn saw(&self, map: &ConfigMap, reconciler: &Weak<Reconciler>) {
        let Some((key, entry)) = decode(map) else {
            return;
        };
        debug!(server = %key, spec_hash = %entry.spec_hash, "catalog seen in the cluster");
        self.seen.lock().unwrap().insert(key.clone(), entry.clone());
        let Some(reconciler) = reconciler.upgrade() else {
            return;
        };
        let (namespace, name) = key.split_once('/').expect("a runtime key");
        if let Some(server) = reconciler.server(&reconciler.key_for(namespace, name)) {
            server.catalog().adopt(entry);
        }
    }
}

/// Counts, not contents: the settings holding it are printed whole.
impl std::fmt::Debug for KubeCatalogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCatalogs")
            .field("seen", &self.seen.lock().unwrap().len())
            .field("listed", &*self.listed.borrow())
            .finish()
    }
}

impl Store for KubeCatalogs {
    fn load(&self, key: &str) -> Option<Entry> {
        self.seen.lock().unwrap().get(key).cloned()
    }

    fn save(&self, key: &str, entry: &Entry) {
        // The writer ends only with the runtime.
        let _ = self.writes.send((key.to_string(), entry.clone()));
    }

    /// Nothing to do: the stored entry names the spec it was learned from,
    /// and the replica that learns the new one overwrites it.
    fn remove(&self, _key: &str) {}
}

async fn write_loop(client: Client, mut queue: mpsc::UnboundedReceiver<Pending>) {
    while let Some((key, entry)) = queue.recv().await {
        let Some((namespace, server)) = key.split_once('/') else {
            warn!(server = %key, "a catalog without a namespace: not written");
            continue;
        };
        match write(&client, namespace, server, &entry).await {
            Ok(()) => {}
            Err(error) => {
                warn!(%error, "catalog not written to the cluster; it is learned again after a restart")
            }
        }
    }
}

/// Applies `entry` as the ConfigMap of `namespace/server`; one too large is
/// deleted instead, so no outdated catalog outlives this router.
async fn write(client: &Client, namespace: &str, server: &str, entry: &Entry) -> Result<()> {
    let servers: Api<MCPServer> = Api::namespaced(client.clone(), namespace);
    let Some(owner) = servers
        .get_opt(server)
        .await
        .map_err(Error::kube(format!("get mcpserver {namespace}/{server}")))?
    else {
        debug!(
            namespace,
            server, "the server is gone: its catalog is not written"
        );
        return Ok(());
    };
    if owner.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = config_map_name(server);
    match config_map(&owner, entry) {
        Ok(map) => {
            maps.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&map),
            )
            .await
            .map_err(Error::kube(format!("apply configmap {namespace}/{name}")))?;
            info!(namespace, server, configmap = %name, "catalog written to the cluster");
            Ok(())
        }
        Err(too_large) => {
            warn!("{too_large}");
            match maps.delete(&name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(e) if Error::is_kube_not_found(&e) => Ok(()),
                Err(e) => Err(Error::kube(format!("delete configmap {namespace}/{name}"))(
                    e,
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server() -> MCPServer {
        serde_json::from_value(json!({
            "apiVersion": "mcpod.dev/v1alpha1", "kind": "MCPServer",
            "metadata": {"name": "time", "namespace": "tools", "uid": "uid-7"},
            "spec": {"image": "x"},
        }))
        .unwrap()
    }

    fn entry(tools: usize) -> Entry {
        Entry {
            spec_hash: "h1".into(),
            initialize: json!({"capabilities": {"tools": {}}}),
            tools: Some(
                (0..tools)
                    .map(|i| json!({"name": format!("tool{i}"), "description": "x".repeat(100)}))
                    .collect(),
            ),
            ..Entry::default()
        }
    }

    #[test]
    fn kube_catalog_round_trips_through_its_configmap() {
        let map = config_map(&server(), &entry(3)).unwrap();
        assert_eq!(map.metadata.name.as_deref(), Some("mcpod-catalog-time"));
        assert_eq!(map.metadata.namespace.as_deref(), Some("tools"));
        assert_eq!(map.labels()[LABEL_SERVER], "time");
        assert_eq!(map.labels()[LABEL_COMPONENT], COMPONENT);
        let owner = &map.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("MCPServer", "uid-7")
        );
        assert_eq!(map.annotations()[LABEL_SPEC_HASH], "h1");
        assert_eq!(decode(&map), Some(("tools/time".to_string(), entry(3))));
    }

    #[test]
    fn kube_catalog_too_large_for_a_configmap_is_refused_and_garbage_is_ignored() {
        // Descriptions that hardly compress: 2 MB of random base64 (6 bits a byte).
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut big = entry(0);
        big.tools = Some(
            (0..2000)
                .map(|i| {
                    let noise: String = (0..1000)
                        .map(|_| ALPHABET[usize::from(rand::random::<u8>() % 64)] as char)
                        .collect();
                    json!({"name": format!("t{i}"), "description": noise})
                })
                .collect(),
        );
        let error = config_map(&server(), &big).unwrap_err();
        assert!(error.to_string().contains("'time'"), "{error}");
        let mut map = config_map(&server(), &entry(1)).unwrap();
        map.binary_data = Some([(DATA_KEY.to_string(), ByteString(b"not gzip".to_vec()))].into());
        assert_eq!(decode(&map), None);
    }
}
