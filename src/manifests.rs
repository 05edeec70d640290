//! Reading MCPServer and MCPServerGroup resources from a directory of YAML
//! files (the embedded mode), and noticing when the directory changes. All YAML parsing of
//! manifests lives here, so the parser can be swapped in one place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use crate::crd::{MCPServer, MCPServerGroup};
use crate::{Error, Result};

pub const API_VERSION: &str = "mcpod.dev/v1alpha1";

/// One MCPServer and the file it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: PathBuf,
    pub server: MCPServer,
}

/// One MCPServerGroup and the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedGroup {
    pub file: PathBuf,
    pub group: MCPServerGroup,
}

/// The documents of one file, by kind.
#[derive(Debug, Default)]
pub struct Documents {
    pub servers: Vec<MCPServer>,
    pub groups: Vec<MCPServerGroup>,
}

/// What a directory holds: the servers and groups that parsed, the files that did not.
#[derive(Debug, Default)]
pub struct Manifests {
    pub servers: Vec<Loaded>,
    pub groups: Vec<LoadedGroup>,
    /// Files that could not be read or parsed, with the error.
    pub broken_files: BTreeMap<PathBuf, String>,
}

/// Largest manifest file read; larger ones are refused (a manifest is a few
/// hundred bytes, and each file is read whole on every change).
pub const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// Loads every `*.yaml`/`*.yml` file in `dir` (not recursive), each possibly
/// holding several documents. A bad document names its file and index and is
/// reported; the rest still load. A name declared in two files is kept from
/// the first (in file name order) and reported as a conflict.
pub fn load_dir(dir: &Path) -> Result<Manifests> {
    load_dir_preferring(dir, |_| None)
}

/// Like [`load_dir`], but a name declared in several files is kept from the
/// file `owner` names for it (the one already serving it), so adding a file
/// cannot take a running server over.
pub fn load_dir_preferring(
    dir: &Path,
    owner: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Manifests> {
    let mut manifests = Manifests::default();
    for file in yaml_files(dir)? {
        match load_file(&file) {
            Ok(documents) => {
                manifests
                    .servers
                    .extend(documents.servers.into_iter().map(|server| Loaded {
                        file: file.clone(),
                        server,
                    }));
                manifests
                    .groups
                    .extend(documents.groups.into_iter().map(|group| LoadedGroup {
                        file: file.clone(),
                        group,
                    }));
            }
            Err(e) => {
                manifests.broken_files.insert(file, e.to_string());
            }
        }
    }
    // Which file each name is kept from: its owner's if that file declares
    // it, else the first in file name order.
    let mut keep_from: BTreeMap<String, PathBuf> = BTreeMap::new();
    for loaded in &manifests.servers {
        let name = name_of(loaded);
        let owned = owner(&name).is_some_and(|file| file == loaded.file);
        if owned || !keep_from.contains_key(&name) {
            keep_from.insert(name, loaded.file.clone());
        }
    }
    manifests.servers.retain(|loaded| {
        let name = name_of(loaded);
        let kept = &keep_from[&name];
        if *kept == loaded.file {
            return true;
        }
        manifests.broken_files.insert(
            loaded.file.clone(),
            format!(
                "{}: conflict: MCPServer '{name}' is already declared in {}; this declaration is ignored",
                loaded.file.display(),
                kept.display()
            ),
        );
        false
    });
    keep_first_group_of_each_name(&mut manifests);
    Ok(manifests)
}

/// A group name declared twice is kept from the first file (groups hold no
/// running state a later file could take over).
fn keep_first_group_of_each_name(manifests: &mut Manifests) {
    let mut first: BTreeMap<String, PathBuf> = BTreeMap::new();
    let broken = &mut manifests.broken_files;
    manifests.groups.retain(|loaded| {
        let name = loaded.group.metadata.name.clone().unwrap_or_default();
        match first.get(&name) {
            None => {
                first.insert(name, loaded.file.clone());
                true
            }
            Some(kept) => {
                broken.insert(
                    loaded.file.clone(),
                    format!(
                        "{}: conflict: MCPServerGroup '{name}' is already declared in {}; this declaration is ignored",
                        loaded.file.display(),
                        kept.display()
                    ),
                );
                false
            }
        }
    });
}

fn name_of(loaded: &Loaded) -> String {
    loaded.server.metadata.name.clone().unwrap_or_default()
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.is_file()
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Parses one file of MCPServer and MCPServerGroup documents.
pub fn load_file(file: &Path) -> Result<Documents> {
    use std::io::Read;
    let io = |source| Error::Io {
        path: file.to_path_buf(),
        source,
    };
    let too_big = |size: u64| {
        Error::Manifest {
        file: file.to_path_buf(),
        message: format!(
            "the file is {size} bytes, over the {MAX_MANIFEST_BYTES}-byte limit for a manifest file; refused"
        ),
    }
    };
    let handle = std::fs::File::open(file).map_err(io)?;
    let size = handle.metadata().map_err(io)?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(too_big(size));
    }
    // Read no more than the limit, even if the file grows meanwhile.
    let mut text = String::new();
    handle
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(too_big(text.len() as u64));
    }
    parse_documents(&text).map_err(|message| Error::Manifest {
        file: file.to_path_buf(),
        message,
    })
}

/// Parses the MCPServer documents of one YAML text (a group is an error here).
pub fn parse(text: &str) -> std::result::Result<Vec<MCPServer>, String> {
    let documents = parse_documents(text)?;
    match documents.groups.first() {
        Some(group) => Err(format!(
            "expected MCPServer documents only, found MCPServerGroup {}",
            group.metadata.name.as_deref().unwrap_or_default()
        )),
        None => Ok(documents.servers),
    }
}

/// Parses the documents of one YAML text; errors say which document and why.
pub fn parse_documents(text: &str) -> std::result::Result<Documents, String> {
    let mut documents = Documents::default();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {}: invalid YAML: {e}", index + 1))?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let api_version = value.get("apiVersion").and_then(|v| v.as_str());
        let kind = value.get("kind").and_then(|v| v.as_str());
        if kind == Some("MCPServerGroup") && api_version == Some(API_VERSION) {
            let group: MCPServerGroup = serde_yaml::from_value(value)
                .map_err(|e| format!("document {}: {e}", index + 1))?;
            if group.metadata.name.as_deref().unwrap_or("").is_empty() {
                return Err(format!("document {}: metadata.name is required", index + 1));
            }
            let problems = crate::group::problems(&group.spec);
            if !problems.is_empty() {
                return Err(format!(
                    "document {}: MCPServerGroup {}: {}",
                    index + 1,
                    group.metadata.name.as_deref().unwrap_or_default(),
                    problems.join("; ")
                ));
            }
            documents.groups.push(group);
            continue;
        }
        if kind != Some("MCPServer") || api_version != Some(API_VERSION) {
            return Err(format!(
                "document {}: expected apiVersion: {API_VERSION} and kind: MCPServer or MCPServerGroup, found {} {}",
                index + 1,
                api_version.unwrap_or("(no apiVersion)"),
                kind.unwrap_or("(no kind)")
            ));
        }
        let server: MCPServer =
            serde_yaml::from_value(value).map_err(|e| format!("document {}: {e}", index + 1))?;
        if server.metadata.name.as_deref().unwrap_or("").is_empty() {
            return Err(format!("document {}: metadata.name is required", index + 1));
        }
        documents.servers.push(server);
    }
    Ok(documents)
}

/// What changes in a directory when a YAML file is added, edited or removed.
pub fn fingerprint(dir: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|path| {
            let meta = std::fs::metadata(&path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (path, modified, len)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIME: &str = "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata: {name: time}\nspec: {image: localhost/mcpod/time}\n";

    #[test]
    fn multi_document_files() {
        let text = format!(
            "{TIME}---\n{}\n---\n",
            TIME.replace("name: time", "name: other")
        );
        let servers = parse(&text).unwrap();
        let names: Vec<_> = servers
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["time", "other"]);
    }

    #[test]
    fn errors_say_which_document_and_field() {
        let err = parse(&format!("{TIME}---\n{}", TIME.replace("image:", "imag:"))).unwrap_err();
        assert!(err.starts_with("document 2:"), "{err}");
        assert!(err.contains("imag"), "{err}");
        let err = parse("kind: Pod\napiVersion: v1\n").unwrap_err();
        assert!(
            err.contains("expected apiVersion: mcpod.dev/v1alpha1"),
            "{err}"
        );
        let err = parse("a: [unclosed").unwrap_err();
        assert!(err.contains("invalid YAML"), "{err}");
        let err = parse(
            &TIME
                .replace("idle", "x")
                .replace("spec: {", "spec: {idleTimout: 5s, "),
        )
        .unwrap_err();
        assert!(err.contains("unknown field `idleTimout`"), "{err}");
    }

    #[test]
    fn a_broken_file_does_not_hide_the_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), TIME).unwrap();
        std::fs::write(dir.path().join("b.yaml"), "kind: [").unwrap();
        std::fs::write(dir.path().join("c.yml"), TIME).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let manifests = load_dir(dir.path()).unwrap();
        assert_eq!(manifests.servers.len(), 1);
        assert_eq!(manifests.broken_files.len(), 2);
        let duplicate = &manifests.broken_files[&dir.path().join("c.yml")];
        assert!(
            duplicate.contains("conflict") && duplicate.contains("already declared in"),
            "{duplicate}"
        );
        assert!(manifests.broken_files[&dir.path().join("b.yaml")].contains("b.yaml"));
    }
}

#[cfg(test)]
mod safety_tests {
    use super::*;

    const TIME: &str = "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata: {name: time}\nspec: {image: localhost/mcpod/time}\n";

    #[test]
    fn a_duplicate_name_is_kept_from_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&b, TIME).unwrap();
        std::fs::write(&a, TIME.replace("localhost/mcpod/time", "evil")).unwrap();
        // Without an owner, the first file wins…
        let first = load_dir(dir.path()).unwrap();
        assert_eq!(first.servers[0].file, a);
        // …but the file already serving `time` keeps it.
        let owned =
            load_dir_preferring(dir.path(), |name| (name == "time").then(|| b.clone())).unwrap();
        assert_eq!(owned.servers.len(), 1);
        assert_eq!(owned.servers[0].file, b);
        assert_eq!(owned.servers[0].server.spec.image, "localhost/mcpod/time");
        let conflict = &owned.broken_files[&a];
        assert!(
            conflict.contains("conflict") && conflict.contains("b.yaml"),
            "{conflict}"
        );
    }

    #[test]
    fn files_over_the_size_limit_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        let mut text = TIME.to_string();
        text.push_str(&format!("# {}\n", "x".repeat(MAX_MANIFEST_BYTES as usize)));
        std::fs::write(&big, text).unwrap();
        let error = load_file(&big).unwrap_err().to_string();
        assert!(
            error.contains("big.yaml") && error.contains(&MAX_MANIFEST_BYTES.to_string()),
            "{error}"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use crate::workload::{Defaults, Target, Workload};

    /// Every shipped example loads and resolves, and is set up as the original system has it.
    #[test]
    fn examples_are_valid_and_keep_the_original_settings() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let manifests = super::load_dir(&dir).unwrap();
        assert!(
            manifests.broken_files.is_empty(),
            "{:?}",
            manifests.broken_files
        );
        let mut names = vec![];
        for loaded in &manifests.servers {
            let name = loaded.server.metadata.name.clone().unwrap();
            let workload = Workload::resolve(
                &name,
                &loaded.server.spec,
                &Defaults::default(),
                Target::Podman,
            )
            .unwrap();
            assert_eq!(workload.memory_bytes, 512 * 1024 * 1024, "{name}");
            assert_eq!(workload.cpu_millis, 1000, "{name}");
            assert_eq!(
                workload.timeouts.idle,
                Some(std::time::Duration::from_secs(300)),
                "{name}"
            );
            let networked = workload.network != crate::crd::NetworkMode::None;
            assert_eq!(
                networked,
                name == "fetch",
                "only fetch has network egress ({name})"
            );
            names.push(name);
        }
        names.sort();
        assert_eq!(
            names,
            [
                "everything",
                "fetch",
                "filesystem",
                "git",
                "memory",
                "sequentialthinking",
                "time"
            ]
        );
        let groups = crate::reconcile::declared_groups(&manifests);
        let members = |name: &str| -> Vec<(String, String)> {
            let (_, membership) = groups.iter().find(|(n, _)| n == name).unwrap();
            assert!(membership.collisions.is_empty(), "{membership:?}");
            membership
                .members
                .iter()
                .map(|m| (m.server.clone(), m.prefix.clone()))
                .collect()
        };
        let pair = |s: &str, p: &str| (s.to_string(), p.to_string());
        assert_eq!(
            members("starter"),
            [
                pair("everything", "demo"),
                pair("memory", "memory"),
                pair("time", "time")
            ]
        );
        assert_eq!(members("all").len(), 7);
    }
}
