//! What each server offers — its `initialize` result and its tools, prompts,
//! resources and resource templates — recorded whenever it runs, so listing a
//! stopped server is answered without starting a container.
//!
//! A server's catalog is learned in the background after each start (all
//! pages, following `nextCursor`), relearned list by list on the
//! `notifications/*/list_changed` the server sends, and written to
//! a [`Store`]: on Podman `<catalog dir>/<key>.json` ([`DirStore`]), on
//! Kubernetes a ConfigMap per MCPServer (`src/kube/catalog.rs`), from where a
//! restarted mcpod loads it. An entry is valid only for the container shape it
//! was learned from (the workload's `spec_hash`): a new image, args or env
//! make it stale, and the server is started once more to learn it again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::mcp::bridge::StdioBridge;
use crate::mcp::message::{self as jsonrpc, Method};

/// Pages of one list read at most: a server whose cursors never end is not followed forever.
const MAX_PAGES: usize = 100;

pub use crate::crd::Learn;

/// The four lists a server may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl List {
    pub const ALL: [List; 4] = [
        List::Tools,
        List::Prompts,
        List::Resources,
        List::ResourceTemplates,
    ];

    pub fn method(self) -> Method {
        match self {
            List::Tools => Method::ToolsList,
            List::Prompts => Method::PromptsList,
            List::Resources => Method::ResourcesList,
            List::ResourceTemplates => Method::ResourcesTemplatesList,
        }
    }

    /// The list a listing method asks for.
    pub fn of(method: Method) -> Option<List> {
        List::ALL.into_iter().find(|list| list.method() == method)
    }

    /// The key of the items in a list result.
    pub fn key(self) -> &'static str {
        match self {
            List::Tools => "tools",
            List::Prompts => "prompts",
            List::Resources => "resources",
            List::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The notification that says this list changed.
    pub fn changed_notification(self) -> Method {
        match self {
            List::Tools => Method::ToolsListChanged,
            List::Prompts => Method::PromptsListChanged,
            List::Resources | List::ResourceTemplates => Method::ResourcesListChanged,
        }
    }

    /// The server capability that announces the list.
    pub fn capability(self) -> &'static str {
        match self {
            List::Tools => "tools",
            List::Prompts => "prompts",
            List::Resources | List::ResourceTemplates => "resources",
        }
    }

    /// The lists a `list_changed` notification says are stale.
    fn changed_by(notification: &Value) -> &'static [List] {
        match Method::of(notification) {
            Method::ToolsListChanged => &[List::Tools],
            Method::PromptsListChanged => &[List::Prompts],
            Method::ResourcesListChanged => &[List::Resources, List::ResourceTemplates],
            _ => &[],
        }
    }
}

/// One server's recorded catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The container shape it was learned from.
    pub spec_hash: String,
    pub recorded_at: Option<DateTime<Utc>>,
    /// The server's `InitializeResult` (capabilities, serverInfo, instructions).
    pub initialize: Value,
    /// Each list's items; `None` where the server offers no such list (or refused it).
    pub tools: Option<Vec<Value>>,
    pub prompts: Option<Vec<Value>>,
    pub resources: Option<Vec<Value>>,
    pub resource_templates: Option<Vec<Value>>,
}

impl Entry {
    pub fn items(&self, list: List) -> Option<&Vec<Value>> {
        match list {
            List::Tools => self.tools.as_ref(),
            List::Prompts => self.prompts.as_ref(),
            List::Resources => self.resources.as_ref(),
            List::ResourceTemplates => self.resource_templates.as_ref(),
        }
    }

    fn items_mut(&mut self, list: List) -> &mut Option<Vec<Value>> {
        match list {
            List::Tools => &mut self.tools,
            List::Prompts => &mut self.prompts,
            List::Resources => &mut self.resources,
            List::ResourceTemplates => &mut self.resource_templates,
        }
    }

    /// Whether the server announced `list` in its capabilities.
    pub fn offers(&self, list: List) -> bool {
        self.initialize
            .pointer(&format!("/capabilities/{}", list.capability()))
            .is_some_and(|c| !c.is_null())
    }

    /// The result of listing `list`, all pages in one, without a cursor.
    pub fn result(&self, list: List) -> Value {
        json!({ list.key(): self.items(list).cloned().unwrap_or_default() })
    }
}

/// Errors of the catalog's file (logged: a catalog that cannot be written
/// only means the next mcpod learns it again).
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot write the catalog {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the catalog {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the catalog {path} is not valid JSON ({source}); it is learned again")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Where catalogs outlive the process, by server key. Failures are the
/// store's to log: a catalog that cannot be kept only means it is learned again.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The entry recorded for `key` (read when the server is declared).
    fn load(&self, key: &str) -> Option<Entry>;
    /// Records `entry` as `key`'s (it may be written in the background).
    fn save(&self, key: &str, entry: &Entry);
    /// The spec of `key` changed: what was recorded describes another container.
    fn remove(&self, key: &str);
}

/// Catalogs as files in one directory, `<key>.json` (mcpod on Podman).
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    pub fn new(dir: impl Into<PathBuf>) -> DirStore {
        DirStore { dir: dir.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }
}

impl Store for DirStore {
    fn load(&self, key: &str) -> Option<Entry> {
        load(&self.path(key)).unwrap_or_else(|error| {
            warn!(%error, "catalog not loaded");
            None
        })
    }

    fn save(&self, key: &str, entry: &Entry) {
        if let Err(error) = save(&self.path(key), entry) {
            warn!(%error, "catalog not persisted");
        }
    }

    fn remove(&self, key: &str) {
        let path = self.path(key);
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                warn!(path = %path.display(), %error, "removing a stale catalog failed");
            }
        }
    }
}

/// One server's catalog, shared by its isolated instances.
#[derive(Debug)]
pub struct Catalog {
    /// The server's key in `store`.
    key: String,
    /// Where it is persisted (`None`: in memory only).
    store: Option<Arc<dyn Store>>,
    entry: Mutex<Option<Arc<Entry>>>,
    /// Each list whose recorded items changed, once stored (for `/mcp`'s `list_changed`).
    changed: tokio::sync::broadcast::Sender<List>,
}

impl Catalog {
    /// The catalog of the server under `key`, loaded from `dir` when it was recorded there.
    pub fn open(dir: Option<&Path>, key: &str) -> Catalog {
        let store = dir.map(|dir| Arc::new(DirStore::new(dir)) as Arc<dyn Store>);
        Catalog::with_store(store, key)
    }

    /// The catalog of the server under `key`, loaded from `store` when it was recorded there.
    pub fn with_store(store: Option<Arc<dyn Store>>, key: &str) -> Catalog {
        let entry = store.as_ref().and_then(|store| store.load(key));
        Catalog {
            key: key.to_string(),
            store,
            entry: Mutex::new(entry.map(Arc::new)),
            changed: tokio::sync::broadcast::channel(16).0,
        }
    }

    /// The lists whose recorded items change from now on, as they are stored.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<List> {
        self.changed.subscribe()
    }

    /// The entry learned from a container of shape `spec_hash`, if any.
    pub fn current(&self, spec_hash: &str) -> Option<Arc<Entry>> {
        self.entry
            .lock()
            .unwrap()
            .clone()
            .filter(|entry| entry.spec_hash == spec_hash)
    }

    /// The spec changed: what was learned describes another container.
    pub fn invalidate(&self) {
        *self.entry.lock().unwrap() = None;
        if let Some(store) = &self.store {
            store.remove(&self.key);
        }
    }

    fn store(&self, entry: Entry) {
        if let Some(store) = &self.store {
            store.save(&self.key, &entry);
        }
        self.hold(entry);
    }

    /// An entry someone else recorded (another mcpod sharing the store, seen
    /// by the store's watch): held without writing it back. One recorded
    /// before the entry held is an echo of an older write (of this spec or
    /// the one before), and ignored.
    pub fn adopt(&self, entry: Entry) {
        let older = self
            .entry
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|held| held.recorded_at > entry.recorded_at);
        if older {
            debug!("an older catalog than the one held: ignored");
            return;
        }
        self.hold(entry);
    }

    /// Makes `entry` the current one, telling subscribers which lists changed.
    fn hold(&self, entry: Entry) {
        let previous = self.entry.lock().unwrap().replace(Arc::new(entry.clone()));
        for list in List::ALL {
            let before = previous.as_deref().and_then(|p| p.items(list));
            if before != entry.items(list) {
                // Nobody listening is fine.
                let _ = self.changed.send(list);
            }
        }
    }

    /// What the message handler marks stale ([`ChangeSender::observe`]) and
    /// [`Catalog::follow`] relearns: two handles on the same marks.
    pub fn change_feed() -> (ChangeSender, ChangeSender) {
        let feed = ChangeSender::default();
        (feed.clone(), feed)
    }

    /// Learns the catalog of a freshly started instance, then relearns each
    /// list its server says changed, for as long as the instance runs.
    pub async fn follow(
        self: Arc<Self>,
        bridge: StdioBridge,
        spec_hash: String,
        initialize: Value,
        timeout: Duration,
        changes: ChangeSender,
    ) {
        let mut entry = Entry {
            spec_hash,
            recorded_at: Some(Utc::now()),
            initialize,
            ..Entry::default()
        };
        let learn = async {
            for list in List::ALL {
                if entry.offers(list) {
                    *entry.items_mut(list) = read_list(&bridge, list, timeout).await;
                }
            }
        };
        tokio::select! {
            () = learn => {}
            _ = bridge.closed() => return,
        }
        info!(
            tools = entry.tools.as_ref().map_or(0, Vec::len),
            prompts = entry.prompts.as_ref().map_or(0, Vec::len),
            resources = entry.resources.as_ref().map_or(0, Vec::len),
            "catalog recorded"
        );
        self.store(entry.clone());
        loop {
            tokio::select! {
                () = changes.0.notify.notified() => {}
                _ = bridge.closed() => return,
            }
            for list in changes.take() {
                let items = read_list(&bridge, list, timeout).await;
                if bridge.closed_reason().is_some() {
                    return;
                }
                debug!(
                    list = list.key(),
                    "catalog list relearned after list_changed"
                );
                *entry.items_mut(list) = items;
            }
            entry.recorded_at = Some(Utc::now());
            self.store(entry.clone());
        }
    }
}

/// Feeds a server's `list_changed` notifications to its catalog as marks, one
/// per list: a flood of notifications costs one relearning of each list, and
/// no memory, however many arrive while one is under way.
#[derive(Clone, Default)]
pub struct ChangeSender(Arc<Marks>);

#[derive(Default)]
struct Marks {
    /// Bit `i`: `List::ALL[i]` is stale.
    stale: AtomicU8,
    notify: Notify,
}

impl ChangeSender {
    pub fn observe(&self, message: &Value) {
        let lists = List::changed_by(message);
        for list in lists {
            let bit = List::ALL.iter().position(|l| l == list).expect("a list");
            self.0.stale.fetch_or(1 << bit, Ordering::SeqCst);
        }
        if !lists.is_empty() {
            // Stored as a permit when the follower is busy: no change is missed.
            self.0.notify.notify_one();
        }
    }

    /// The lists marked stale since the last call, unmarked.
    fn take(&self) -> Vec<List> {
        let stale = self.0.stale.swap(0, Ordering::SeqCst);
        List::ALL
            .into_iter()
            .enumerate()
            .filter(|(bit, _)| stale & (1 << bit) != 0)
            .map(|(_, list)| list)
            .collect()
    }
}

/// Every page of `list` from the server itself; `None` when it refused or did not answer.
async fn read_list(bridge: &StdioBridge, list: List, timeout: Duration) -> Option<Vec<Value>> {
    all_pages(list, |request| async move {
        match bridge.request(request, timeout).await {
            Ok(response) => Some(response),
            Err(error) => {
                warn!(list = list.key(), %error, "learning the catalog failed");
                None
            }
        }
    })
    .await
}

/// Every page of `list`, following `nextCursor`, each asked through `ask`
/// (which answers the response, or `None` when there was none); `None` when a
/// page was refused or not answered.
pub async fn all_pages<F, Answer>(list: List, mut ask: F) -> Option<Vec<Value>>
where
    F: FnMut(Value) -> Answer,
    Answer: std::future::Future<Output = Option<Value>>,
{
    let mut items = Vec::new();
    let mut cursor: Option<Value> = None;
    for _ in 0..MAX_PAGES {
        let params = match &cursor {
            Some(cursor) => json!({ "cursor": cursor }),
            None => json!({}),
        };
        let response = ask(jsonrpc::request(json!(0), list.method(), params)).await?;
        let Some(result) = response.get("result") else {
            debug!(list = list.key(), error = %response["error"], "list refused");
            return None;
        };
        if let Some(page) = result.get(list.key()).and_then(Value::as_array) {
            items.extend(page.iter().cloned());
        }
        match result.get("nextCursor") {
            Some(next) if !next.is_null() && Some(next) != cursor.as_ref() => {
                cursor = Some(next.clone())
            }
            _ => return Some(items),
        }
    }
    warn!(
        list = list.key(),
        pages = MAX_PAGES,
        "list still had more pages; kept what was read"
    );
    Some(items)
}

fn load(path: &Path) -> Result<Option<Entry>, CatalogError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CatalogError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| CatalogError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Written to a temporary file and renamed: a crash never leaves half a catalog.
fn save(path: &Path, entry: &Entry) -> Result<(), CatalogError> {
    let write = |source| CatalogError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write)?;
    }
    let temporary = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(entry).expect("a catalog entry is JSON");
    std::fs::write(&temporary, text).map_err(write)?;
    std::fs::rename(&temporary, path).map_err(write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_loads_by_key_and_checks_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(Some(dir.path()), "mcpod-x-time");
        assert!(catalog.current("h1").is_none());
        let entry = Entry {
            spec_hash: "h1".into(),
            initialize: json!({"capabilities": {"tools": {}}}),
            tools: Some(vec![json!({"name": "now"})]),
            ..Entry::default()
        };
        catalog.store(entry.clone());
        let again = Catalog::open(Some(dir.path()), "mcpod-x-time");
        assert_eq!(*again.current("h1").unwrap(), entry);
        assert!(again.current("h2").is_none(), "another spec: stale");
        assert_eq!(
            again.current("h1").unwrap().result(List::Tools),
            json!({"tools": [{"name": "now"}]})
        );
        again.invalidate();
        assert!(Catalog::open(Some(dir.path()), "mcpod-x-time")
            .current("h1")
            .is_none());
    }

    #[test]
    fn an_adopted_entry_is_held_unless_older_than_the_one_held() {
        let catalog = Catalog::with_store(None, "ns/time");
        let mut changes = catalog.subscribe();
        let at = |seconds| DateTime::from_timestamp(seconds, 0);
        let entry = |seconds, tool: &str| Entry {
            spec_hash: "h1".into(),
            recorded_at: at(seconds),
            tools: Some(vec![json!({"name": tool})]),
            ..Entry::default()
        };
        catalog.adopt(entry(10, "now"));
        assert_eq!(changes.try_recv().unwrap(), List::Tools);
        catalog.adopt(entry(5, "older"));
        assert_eq!(catalog.current("h1").unwrap().tools, entry(10, "now").tools);
        assert!(changes.try_recv().is_err(), "nothing changed");
        let old_spec = Entry {
            spec_hash: "h0".into(),
            ..entry(1, "then")
        };
        catalog.adopt(old_spec);
        assert!(catalog.current("h0").is_none(), "an older spec's echo");
        let new_spec = Entry {
            spec_hash: "h2".into(),
            ..entry(20, "next")
        };
        catalog.adopt(new_spec);
        assert!(
            catalog.current("h2").is_some(),
            "a newer spec's replaces it"
        );
    }

    #[test]
    fn a_corrupt_file_is_learned_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k.json"), "{not json").unwrap();
        assert!(Catalog::open(Some(dir.path()), "k").current("").is_none());
    }

    #[test]
    fn list_changed_names_the_stale_lists() {
        let note = |m: &str| json!({"jsonrpc": "2.0", "method": m});
        assert_eq!(
            List::changed_by(&note("notifications/tools/list_changed")),
            &[List::Tools]
        );
        assert_eq!(
            List::changed_by(&note("notifications/resources/list_changed")),
            &[List::Resources, List::ResourceTemplates]
        );
        assert!(List::changed_by(&note("notifications/message")).is_empty());
    }

    #[test]
    fn a_flood_of_list_changed_marks_each_list_once() {
        let (feed, follower) = Catalog::change_feed();
        let tools = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
        let resources = json!({"jsonrpc": "2.0", "method": "notifications/resources/list_changed"});
        for _ in 0..10_000 {
            feed.observe(&tools);
        }
        feed.observe(&resources);
        feed.observe(&json!({"jsonrpc": "2.0", "method": "notifications/message"}));
        assert_eq!(
            follower.take(),
            [List::Tools, List::Resources, List::ResourceTemplates]
        );
        assert!(follower.take().is_empty());
    }

    #[test]
    fn only_announced_lists_are_asked_for() {
        let entry = Entry {
            initialize: json!({"capabilities": {"tools": {"listChanged": true}, "logging": {}}}),
            ..Entry::default()
        };
        assert!(entry.offers(List::Tools));
        assert!(!entry.offers(List::Prompts));
        assert!(!entry.offers(List::ResourceTemplates));
    }
}
