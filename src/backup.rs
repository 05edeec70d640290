//! `mcpod backup` / `mcpod restore`: one `.tar.gz` holding the MCPServer
//! manifests (the configuration), the data directory, and the content of the
//! named Podman volumes the manifests declare — what the original system's
//! backup procedure saved with `tar`.
//!
//! Archive layout:
//!
//! ```text
//! mcpod-backup.json        {"format":1,"created":…,"volumes":[…]}
//! manifests/…              the manifests directory
//! data/…                   the data directory (without run/, sockets and FIFOs)
//! volumes/<name>.tar       `podman volume export <name>`, one per declared named volume
//! ```
//!
//! Restore refuses to replace an existing file, or to import into an existing
//! volume, unless forced; it checks every entry before it writes anything.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use serde::{Deserialize, Serialize};

use crate::{manifests, Error, Result};

/// The name of the archive's description file.
pub const INDEX: &str = "mcpod-backup.json";
const FORMAT: u32 = 1;

/// What a backup holds, stored as [`INDEX`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Index {
    pub format: u32,
    pub created: String,
    /// Named volumes whose content is in `volumes/<name>.tar`.
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub data_dir: PathBuf,
    pub manifests: PathBuf,
    pub output: PathBuf,
    /// Replace `output` if it exists.
    pub force: bool,
    /// Export the named volumes the manifests declare (needs the `podman` CLI).
    pub volumes: bool,
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub input: PathBuf,
    pub data_dir: PathBuf,
    pub manifests: PathBuf,
    /// Replace existing files and import into existing volumes.
    pub force: bool,
    /// Import the volumes the backup holds (needs the `podman` CLI).
    pub volumes: bool,
}

/// What a backup or restore did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Regular files and symlinks written (manifests and data).
    pub files: usize,
    /// Named volumes exported or imported.
    pub volumes: Vec<String>,
    /// Declared named volumes that do not exist (nothing to export).
    pub missing_volumes: Vec<String>,
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Backup {
        context,
        path,
        source,
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Writes the backup; the archive appears at `output` only once it is complete.
pub fn backup(options: &BackupOptions) -> Result<Summary> {
    for (what, dir) in [
        ("data directory", &options.data_dir),
        ("manifests directory", &options.manifests),
    ] {
        if !dir.is_dir() {
            return Err(Error::BackupRefused(format!(
                "{what} {} does not exist or is not a directory",
                dir.display()
            )));
        }
    }
    if options.output.exists() && !options.force {
        return Err(Error::BackupRefused(format!(
            "{} exists; pass --force to replace it",
            options.output.display()
        )));
    }
    let output_dir = match options.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let output_dir = output_dir
        .canonicalize()
        .map_err(io("cannot find the output's directory", &output_dir))?;
    for dir in [&options.data_dir, &options.manifests] {
        let dir = dir
            .canonicalize()
            .map_err(io("cannot resolve", dir.as_path()))?;
        if output_dir.starts_with(&dir) {
            return Err(Error::BackupRefused(format!(
                "the output {} is inside {}, which is being backed up; write it elsewhere",
                options.output.display(),
                dir.display()
            )));
        }
    }

    let declared = if options.volumes {
        declared_volumes(&options.manifests)?
    } else {
        BTreeSet::new()
    };
    let scratch = tempfile_dir(&output_dir)?;
    let mut summary = Summary::default();
    for name in &declared {
        if !volume_exists(name)? {
            summary.missing_volumes.push(name.clone());
            continue;
        }
        let file = scratch.join(format!("{name}.tar"));
        podman(&[
            "volume",
            "export",
            name,
            "--output",
            &file.to_string_lossy(),
        ])?;
        summary.volumes.push(name.clone());
    }

    let partial = output_dir.join(format!(
        ".{}.partial",
        options
            .output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "mcpod-backup.tar.gz".into())
    ));
    let result = (|| {
        let file = File::create(&partial).map_err(io("cannot create", &partial))?;
        let mut builder =
            tar::Builder::new(GzEncoder::new(BufWriter::new(file), Compression::default()));
        builder.follow_symlinks(false);
        let index = Index {
            format: FORMAT,
            created: chrono::Utc::now().to_rfc3339(),
            volumes: summary.volumes.clone(),
        };
        let text = serde_json::to_vec_pretty(&index)?;
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
        header.set_cksum();
        builder
            .append_data(&mut header, INDEX, text.as_slice())
            .map_err(io("cannot write", &partial))?;
        summary.files += append_tree(&mut builder, &options.manifests, "manifests")?;
        summary.files += append_tree(&mut builder, &options.data_dir, "data")?;
        for name in &summary.volumes {
            let file = scratch.join(format!("{name}.tar"));
            builder
                .append_path_with_name(&file, format!("volumes/{name}.tar"))
                .map_err(io("cannot add", &file))?;
        }
        let encoder = builder
            .into_inner()
            .map_err(io("cannot finish", &partial))?;
        let writer = encoder.finish().map_err(io("cannot finish", &partial))?;
        writer
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .map_err(io("cannot write", &partial))?;
        std::fs::rename(&partial, &options.output).map_err(io("cannot create", &options.output))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map(|()| summary)
}

/// Adds `dir`'s content under `prefix`; skips `run/` at the top (a Podman
/// service's socket), sockets and FIFOs. Returns the files and symlinks added.
fn append_tree<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    dir: &Path,
    prefix: &str,
) -> Result<usize> {
    let mut count = 0;
    let mut stack = vec![(dir.to_path_buf(), PathBuf::from(prefix))];
    while let Some((path, name)) = stack.pop() {
        let mut entries = std::fs::read_dir(&path)
            .map_err(io("cannot read", &path))?
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io("cannot read", &path))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let child = entry.path();
            let child_name = name.join(entry.file_name());
            if prefix == "data" && path == dir && entry.file_name() == "run" {
                continue;
            }
            let kind = std::fs::symlink_metadata(&child)
                .map_err(io("cannot read", &child))?
                .file_type();
            if kind.is_dir() {
                builder
                    .append_dir(&child_name, &child)
                    .map_err(io("cannot add", &child))?;
                stack.push((child, child_name));
            } else if kind.is_file() || kind.is_symlink() {
                builder
                    .append_path_with_name(&child, &child_name)
                    .map_err(io("cannot add", &child))?;
                count += 1;
            }
        }
    }
    Ok(count)
}

/// Named volumes the MCPServers in `dir` declare.
fn declared_volumes(dir: &Path) -> Result<BTreeSet<String>> {
    let loaded = manifests::load_dir(dir)?;
    Ok(loaded
        .servers
        .iter()
        .flat_map(|l| l.server.spec.volumes.iter())
        .filter_map(|v| v.volume.clone())
        .collect())
}

fn podman_command(args: &[&str]) -> Result<std::process::Output> {
    Command::new("podman").args(args).output().map_err(|e| {
        Error::BackupRefused(format!(
            "cannot run `podman {}`: {e}; pass --no-volumes to leave named volumes out",
            args.join(" ")
        ))
    })
}

fn podman(args: &[&str]) -> Result<()> {
    let output = podman_command(args)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::BackupRefused(format!(
            "`podman {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn volume_exists(name: &str) -> Result<bool> {
    let output = podman_command(&["volume", "exists", name])?;
    match output.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(Error::BackupRefused(format!(
            "`podman volume exists {name}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))),
    }
}

/// A fresh directory next to the archive, for volume exports and imports.
fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!(
        ".mcpod-backup-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    ));
    std::fs::create_dir(&dir).map_err(|source| Error::CreateDir {
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

fn open(input: &Path) -> Result<tar::Archive<GzDecoder<BufReader<File>>>> {
    let file = File::open(input).map_err(io("cannot open", input))?;
    Ok(tar::Archive::new(GzDecoder::new(BufReader::new(file))))
}

/// Where an archive entry goes, or an error for a path that is not ours or escapes.
enum Target {
    Index,
    File(PathBuf),
    Volume(String),
}

fn target(name: &Path, options: &RestoreOptions) -> Result<Target> {
    let bad = || {
        Error::BackupRefused(format!(
            "{}: unexpected entry {}; is this an mcpod backup?",
            options.input.display(),
            name.display()
        ))
    };
    let mut parts = vec![];
    for component in name.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_os_string()),
            Component::CurDir => {}
            _ => return Err(bad()),
        }
    }
    let Some((first, rest)) = parts.split_first() else {
        return Err(bad());
    };
    let rest: PathBuf = rest.iter().collect();
    match first.to_str() {
        Some(INDEX) if rest.as_os_str().is_empty() => Ok(Target::Index),
        Some("manifests") => Ok(Target::File(options.manifests.join(rest))),
        Some("data") => Ok(Target::File(options.data_dir.join(rest))),
        Some("volumes") => {
            let file = rest.to_string_lossy().into_owned();
            match file.strip_suffix(".tar") {
                Some(volume) if !volume.is_empty() && !volume.contains('/') => {
                    Ok(Target::Volume(volume.to_string()))
                }
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

/// Restores a backup into `data_dir` and `manifests` (created if missing).
pub fn restore(options: &RestoreOptions) -> Result<Summary> {
    // Pass 1: check the whole archive before writing anything.
    let mut index: Option<Index> = None;
    let mut conflicts = vec![];
    let mut volumes = vec![];
    let mut archive = open(&options.input)?;
    let entries = archive
        .entries()
        .map_err(io("cannot read", &options.input))?;
    for entry in entries {
        let mut entry = entry.map_err(io("cannot read", &options.input))?;
        let name = entry
            .path()
            .map_err(io("cannot read", &options.input))?
            .into_owned();
        match target(&name, options)? {
            Target::Index => {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text)
                    .map_err(io("cannot read", &options.input))?;
                index = Some(serde_json::from_str(&text).map_err(|e| {
                    Error::BackupRefused(format!(
                        "{}: {INDEX} is not valid: {e}",
                        options.input.display()
                    ))
                })?);
            }
            Target::File(path) => {
                let is_dir = entry.header().entry_type().is_dir();
                if !is_dir && std::fs::symlink_metadata(&path).is_ok() {
                    conflicts.push(path);
                }
            }
            Target::Volume(name) => volumes.push(name),
        }
    }
    let Some(index) = index else {
        return Err(Error::BackupRefused(format!(
            "{}: no {INDEX}; not an mcpod backup",
            options.input.display()
        )));
    };
    if index.format != FORMAT {
        return Err(Error::BackupRefused(format!(
            "{}: backup format {} is not supported (this mcpod reads format {FORMAT})",
            options.input.display(),
            index.format
        )));
    }
    if options.volumes {
        for name in &volumes {
            if volume_exists(name)? {
                conflicts.push(PathBuf::from(format!("volume {name}")));
            }
        }
    }
    if !conflicts.is_empty() && !options.force {
        let shown: Vec<String> = conflicts
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        return Err(Error::BackupRefused(format!(
            "restoring {} would replace {} existing item(s) ({}{}); pass --force to replace them",
            options.input.display(),
            conflicts.len(),
            shown.join(", "),
            if conflicts.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )));
    }

    // Pass 2: write.
    for dir in [&options.data_dir, &options.manifests] {
        std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let scratch = if options.volumes && !volumes.is_empty() {
        Some(tempfile_dir(&options.data_dir)?)
    } else {
        None
    };
    let mut summary = Summary::default();
    let result = (|| {
        let mut archive = open(&options.input)?;
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_preserve_ownerships(is_root());
        archive.set_overwrite(true);
        let entries = archive
            .entries()
            .map_err(io("cannot read", &options.input))?;
        for entry in entries {
            let mut entry = entry.map_err(io("cannot read", &options.input))?;
            let name = entry
                .path()
                .map_err(io("cannot read", &options.input))?
                .into_owned();
            match target(&name, options)? {
                Target::Index => {}
                Target::File(path) => {
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent).map_err(|source| Error::CreateDir {
                            path: parent.to_path_buf(),
                            source,
                        })?;
                    }
                    let kind = entry.header().entry_type();
                    if kind.is_dir() {
                        std::fs::create_dir_all(&path).map_err(|source| Error::CreateDir {
                            path: path.clone(),
                            source,
                        })?;
                        entry.unpack(&path).map_err(io("cannot restore", &path))?;
                    } else {
                        if kind.is_symlink() {
                            let _ = std::fs::remove_file(&path);
                        }
                        entry.unpack(&path).map_err(io("cannot restore", &path))?;
                        summary.files += 1;
                    }
                }
                Target::Volume(volume) => {
                    if let Some(scratch) = &scratch {
                        let file = scratch.join(format!("{volume}.tar"));
                        entry.unpack(&file).map_err(io("cannot extract", &file))?;
                        if !volume_exists(&volume)? {
                            podman(&["volume", "create", &volume])?;
                        }
                        podman(&["volume", "import", &volume, &file.to_string_lossy()])?;
                        summary.volumes.push(volume);
                    }
                }
            }
        }
        Ok(())
    })();
    if let Some(scratch) = scratch {
        let _ = std::fs::remove_dir_all(scratch);
    }
    result.map(|()| summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> (BackupOptions, RestoreOptions) {
        let backup = BackupOptions {
            data_dir: dir.join("data"),
            manifests: dir.join("manifests"),
            output: dir.join("out/backup.tar.gz"),
            force: false,
            volumes: false,
        };
        let restore = RestoreOptions {
            input: backup.output.clone(),
            data_dir: dir.join("restored/data"),
            manifests: dir.join("restored/manifests"),
            force: false,
            volumes: false,
        };
        (backup, restore)
    }

    #[test]
    fn round_trip_keeps_files_modes_and_symlinks_and_skips_the_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (backup_options, restore_options) = options(dir.path());
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        std::fs::create_dir_all(backup_options.data_dir.join("data/memory")).unwrap();
        std::fs::create_dir_all(backup_options.data_dir.join("run")).unwrap();
        std::fs::create_dir_all(backup_options.data_dir.join("logs/router")).unwrap();
        std::fs::create_dir_all(&backup_options.manifests).unwrap();
        std::fs::write(
            backup_options.data_dir.join("data/memory/memory.jsonl"),
            "{\"type\":\"entity\"}\n",
        )
        .unwrap();
        std::fs::write(backup_options.data_dir.join("run/podman.pid"), "1").unwrap();
        std::os::unix::fs::symlink("data/memory", backup_options.data_dir.join("memory")).unwrap();
        let script = backup_options.manifests.join("time.yaml");
        std::fs::write(&script, "kind: MCPServer\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();

        let summary = backup(&backup_options).unwrap();
        assert_eq!(summary.files, 3, "{summary:?}");
        let restored = restore(&restore_options).unwrap();
        assert_eq!(restored.files, 3);
        let data = &restore_options.data_dir;
        assert_eq!(
            std::fs::read_to_string(data.join("data/memory/memory.jsonl")).unwrap(),
            "{\"type\":\"entity\"}\n"
        );
        assert!(data.join("logs/router").is_dir(), "empty folders are kept");
        assert!(!data.join("run").exists(), "run/ is left out");
        assert_eq!(
            std::fs::read_link(data.join("memory")).unwrap(),
            Path::new("data/memory")
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(restore_options.manifests.join("time.yaml"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rejects_entries_outside_its_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (_, restore_options) = options(dir.path());
        for name in [
            "../etc/passwd",
            "/etc/passwd",
            "other/file",
            "volumes/a/b.tar",
        ] {
            let error = match target(Path::new(name), &restore_options) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{name} accepted"),
            };
            assert!(error.contains("unexpected entry"), "{error}");
        }
        assert!(matches!(
            target(Path::new("data/a/b"), &restore_options),
            Ok(Target::File(p)) if p == restore_options.data_dir.join("a/b")
        ));
    }
}
