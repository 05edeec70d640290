//! The data directory's layout, as the original system kept it: mcpod's and
//! the servers' logs, server data, exported volumes and configuration.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The folders under the data directory, relative to it.
pub const LAYOUT: [&str; 6] = [
    "logs/router",
    "logs/containers",
    "data/memory",
    "data/repos",
    "volumes",
    "config",
];

/// Creates the data directory and every folder of [`LAYOUT`] in it (existing
/// ones are kept as they are); returns the folders' paths.
pub fn create_layout(data_dir: &Path) -> Result<Vec<PathBuf>> {
    LAYOUT
        .iter()
        .map(|relative| {
            let path = data_dir.join(relative);
            std::fs::create_dir_all(&path).map_err(|source| Error::CreateDir {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_folder_and_keeps_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("mcpod");
        std::fs::create_dir_all(data.join("data/memory")).unwrap();
        std::fs::write(data.join("data/memory/memory.jsonl"), "{}\n").unwrap();

        let created = create_layout(&data).unwrap();
        assert_eq!(created.len(), LAYOUT.len());
        for relative in LAYOUT {
            assert!(data.join(relative).is_dir(), "{relative}");
        }
        assert_eq!(
            std::fs::read_to_string(data.join("data/memory/memory.jsonl")).unwrap(),
            "{}\n"
        );
        // A second call changes nothing.
        create_layout(&data).unwrap();
    }

    #[test]
    fn names_the_folder_it_cannot_create() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "not a directory").unwrap();
        let error = create_layout(&blocker).unwrap_err().to_string();
        assert!(
            error.contains("cannot create directory") && error.contains("logs/router"),
            "{error}"
        );
    }
}
