//! `mcpod backup` / `mcpod restore` through the binary: a round trip into
//! empty folders (with a declared named volume, through real Podman), no
//! overwriting without `--force`, and errors that say what is wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mcpod(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(args)
        .env_remove("MCPOD_DATA_DIR")
        .env_remove("MCPOD_MANIFESTS")
        .output()
        .unwrap()
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "mcpod failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fails(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "mcpod succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman").args(args).output().unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `mcpod backup --data-dir D --manifests M --output O [extra…]`.
fn backup(data: &str, manifests: &str, output: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "backup",
        "--data-dir",
        data,
        "--manifests",
        manifests,
        "--output",
        output,
    ];
    args.extend_from_slice(extra);
    mcpod(&args)
}

/// `mcpod restore --input I --data-dir D --manifests M [extra…]`.
fn restore(input: &str, data: &str, manifests: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "restore",
        "--input",
        input,
        "--data-dir",
        data,
        "--manifests",
        manifests,
    ];
    args.extend_from_slice(extra);
    mcpod(&args)
}

/// Removes the test's volume however the test ends.
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = podman(&["volume", "rm", "-f", &self.0]);
    }
}

impl Volume {
    fn mountpoint(&self) -> PathBuf {
        let output = podman(&["volume", "inspect", "--format", "{{.Mountpoint}}", &self.0]);
        assert!(output.status.success(), "volume {} exists", self.0);
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    data: PathBuf,
    manifests: PathBuf,
    archive: PathBuf,
    restored_data: PathBuf,
    restored_manifests: PathBuf,
}

fn setup(manifest: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var-lib-mcpod");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(data.join("data/memory")).unwrap();
    std::fs::create_dir_all(data.join("logs/router")).unwrap();
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        data.join("data/memory/memory.jsonl"),
        "{\"type\":\"entity\",\"name\":\"mcpod\"}\n",
    )
    .unwrap();
    std::fs::write(manifests.join("memory.yaml"), manifest).unwrap();
    Setup {
        archive: dir.path().join("backup.tar.gz"),
        restored_data: dir.path().join("new/data"),
        restored_manifests: dir.path().join("new/manifests"),
        data,
        manifests,
        _dir: dir,
    }
}

fn memory_manifest(volume: &str) -> String {
    format!(
        "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata: {{name: memory}}\nspec:\n  \
         image: localhost/mcpod/memory:latest\n  volumes:\n  - {{volume: {volume}, mountPath: /data}}\n"
    )
}

#[test]
fn backup_and_restore_round_trip_with_a_named_volume() {
    let volume = Volume(format!("mcpod-test-backup-{}", std::process::id()));
    let t = setup(&memory_manifest(&volume.0));
    assert!(podman(&["volume", "create", &volume.0]).status.success());
    std::fs::write(volume.mountpoint().join("graph.jsonl"), "volume content\n").unwrap();

    let out = ok(&backup(s(&t.data), s(&t.manifests), s(&t.archive), &[]));
    assert!(out.contains("2 files") && out.contains(&volume.0), "{out}");
    assert!(t.archive.is_file());

    // The volume is gone (a new host): restore brings it back with its content.
    assert!(podman(&["volume", "rm", "-f", &volume.0]).status.success());
    let out = ok(&restore(
        s(&t.archive),
        s(&t.restored_data),
        s(&t.restored_manifests),
        &[],
    ));
    assert!(out.contains(&volume.0), "{out}");
    assert_eq!(
        std::fs::read_to_string(t.restored_data.join("data/memory/memory.jsonl")).unwrap(),
        "{\"type\":\"entity\",\"name\":\"mcpod\"}\n"
    );
    assert!(t.restored_data.join("logs/router").is_dir());
    assert_eq!(
        std::fs::read_to_string(t.restored_manifests.join("memory.yaml")).unwrap(),
        memory_manifest(&volume.0)
    );
    assert_eq!(
        std::fs::read_to_string(volume.mountpoint().join("graph.jsonl")).unwrap(),
        "volume content\n"
    );

    // A second restore over the same folders (and volume) is refused, naming what is in the way.
    let error = fails(&restore(
        s(&t.archive),
        s(&t.restored_data),
        s(&t.restored_manifests),
        &[],
    ));
    assert!(
        error.contains("would replace") && error.contains("--force"),
        "{error}"
    );
    assert!(
        error.contains("memory.jsonl") || error.contains("memory.yaml"),
        "{error}"
    );

    // With --force it replaces them.
    std::fs::write(t.restored_manifests.join("memory.yaml"), "changed").unwrap();
    ok(&restore(
        s(&t.archive),
        s(&t.restored_data),
        s(&t.restored_manifests),
        &["--force"],
    ));
    assert_eq!(
        std::fs::read_to_string(t.restored_manifests.join("memory.yaml")).unwrap(),
        memory_manifest(&volume.0)
    );
}

#[test]
fn backup_refuses_to_replace_an_archive_unless_forced() {
    let t = setup(&memory_manifest("unused"));
    std::fs::write(&t.archive, "precious").unwrap();
    let (data, manifests, archive) = (s(&t.data), s(&t.manifests), s(&t.archive));
    let error = fails(&backup(data, manifests, archive, &["--no-volumes"]));
    assert!(
        error.contains("exists") && error.contains("--force"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&t.archive).unwrap(), "precious");
    let out = ok(&backup(
        data,
        manifests,
        archive,
        &["--no-volumes", "--force"],
    ));
    assert!(out.contains("volumes: []"), "{out}");
    assert_ne!(std::fs::read(&t.archive).unwrap(), b"precious");
}

#[test]
fn errors_name_the_problem() {
    let t = setup(&memory_manifest("unused"));
    // A missing data directory.
    let error = fails(&backup(
        "/nonexistent/mcpod",
        s(&t.manifests),
        s(&t.archive),
        &[],
    ));
    assert!(
        error.contains("data directory /nonexistent/mcpod does not exist"),
        "{error}"
    );
    // An archive inside the folder it saves.
    let inside = t.data.join("backup.tar.gz");
    let error = fails(&backup(
        s(&t.data),
        s(&t.manifests),
        s(&inside),
        &["--no-volumes"],
    ));
    assert!(error.contains("is inside"), "{error}");
    assert!(!inside.exists());
    // A file that is not a backup: nothing is written.
    std::fs::write(&t.archive, "not gzip").unwrap();
    let error = fails(&restore(
        s(&t.archive),
        s(&t.restored_data),
        s(&t.restored_manifests),
        &[],
    ));
    assert!(error.contains(s(&t.archive)), "{error}");
    assert!(!t.restored_data.exists());
    // A missing archive.
    let error = fails(&restore(
        "/nonexistent/backup.tar.gz",
        s(&t.restored_data),
        s(&t.restored_manifests),
        &[],
    ));
    assert!(
        error.contains("cannot open /nonexistent/backup.tar.gz"),
        "{error}"
    );
    // A tar.gz that is not an mcpod backup.
    let other = t.data.join("other.tar.gz");
    let status = Command::new("tar")
        .args(["-czf", s(&other), "-C", s(&t.data), "logs"])
        .status()
        .unwrap();
    assert!(status.success());
    let error = fails(&restore(
        s(&other),
        s(&t.restored_data),
        s(&t.restored_manifests),
        &[],
    ));
    assert!(error.contains("is this an mcpod backup"), "{error}");
    assert!(!t.restored_data.exists());
}
