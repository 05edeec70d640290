//! `mcpod export` on real Podman: the Pod YAML it prints for an MCPServer is
//! run by `podman kube play` as it is, and the container Podman makes has the
//! image, limits, user, read-only root, dropped capabilities, environment and
//! volumes the MCPServer asked for. Needs Podman and the fixture image
//! (`make test-images`); cleans up after itself, even when an assertion fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const FIXTURE_IMAGE: &str = "localhost/mcpod-test/fixture:latest";

fn podman(args: &[&str]) -> (bool, String) {
    let output = Command::new("podman")
        .args(args)
        .output()
        .expect("podman must be installed (make setup)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Tears the played pod and its named volume down when the test ends.
struct Played {
    yaml: PathBuf,
    volume: String,
}

impl Drop for Played {
    fn drop(&mut self) {
        let yaml = self.yaml.display().to_string();
        let _ = podman(&["kube", "down", &yaml]);
        let _ = podman(&["volume", "rm", "-f", &self.volume]);
    }
}

/// Exports `name`; `allowed` is where the manifest's host path and secret
/// lie, which the default policy refuses (the operator allows them by flag).
fn export(dir: &Path, name: &str, allowed: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(["export", name, "--manifests"])
        .arg(dir)
        .arg("--allow-host-path")
        .arg(allowed)
        .arg("--secrets-dir")
        .arg(allowed)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "mcpod export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn exported_pod_runs_under_podman_kube_play_with_its_limits_and_hardening() {
    let id = std::process::id();
    let name = format!("export-{id}");
    let volume = format!("export-{id}-data");
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "hi").unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    // FAKE_MODE=stubborn keeps the fixture running with stdin at EOF: Podman 4.3's
    // `kube play` ignores a container's `stdin: true` (see podman-kube-play(1)).
    let manifest = format!(
        "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata: {{name: {name}}}\nspec:\n  \
         image: {FIXTURE_IMAGE}\n  imagePullPolicy: Never\n  \
         resources: {{limits: {{memory: 128Mi, cpu: 250m}}}}\n  \
         env:\n  - {{name: FAKE_MODE, value: stubborn}}\n  - {{name: TOKEN, valueFromFile: {}}}\n  \
         volumes:\n  - {{hostPath: {}, mountPath: /shared, readOnly: true}}\n  - {{volume: {volume}, mountPath: /data}}\n",
        token.display(),
        shared.display()
    );
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("server.yaml"), manifest).unwrap();

    let yaml = export(&manifests, &name, dir.path());
    assert!(yaml.contains("stdin: true"), "{yaml}");
    let yaml_file = dir.path().join("pod.yaml");
    std::fs::write(&yaml_file, &yaml).unwrap();
    let _played = Played {
        yaml: yaml_file.clone(),
        volume: volume.clone(),
    };
    let (ok, out) = podman(&[
        "kube",
        "play",
        "--network",
        "none",
        &yaml_file.display().to_string(),
    ]);
    assert!(ok, "podman kube play failed: {out}");

    let container = format!("export-{name}-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, logs) = podman(&["logs", &container]);
        if logs.contains("fake-mcp starting") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never started: {logs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, inspect) = podman(&["inspect", &container]);
    assert!(ok, "{inspect}");
    let inspect: Value = serde_json::from_str(&inspect).unwrap();
    let c = &inspect[0];
    assert_eq!(c["ImageName"], FIXTURE_IMAGE);
    assert_eq!(c["HostConfig"]["Memory"], 128 * 1024 * 1024);
    assert_eq!(c["HostConfig"]["CpuQuota"], 25_000);
    assert_eq!(c["HostConfig"]["CpuPeriod"], 100_000);
    assert_eq!(c["Config"]["User"], "65534");
    assert_eq!(c["HostConfig"]["ReadonlyRootfs"], true);
    let security = c["HostConfig"]["SecurityOpt"].to_string();
    assert!(security.contains("no-new-privileges"), "{security}");
    let dropped = c["HostConfig"]["CapDrop"].as_array().unwrap();
    assert!(dropped.len() >= 10, "capabilities dropped: {dropped:?}");
    assert_eq!(c["HostConfig"]["CapAdd"].as_array().map_or(0, Vec::len), 0);
    let env = c["Config"]["Env"].to_string();
    assert!(
        env.contains("TOKEN=s3cret"),
        "valueFromFile is read at export: {env}"
    );
    let mounts = c["Mounts"].as_array().unwrap();
    let shared_mount = mounts
        .iter()
        .find(|m| m["Destination"] == "/shared")
        .expect("the hostPath mount");
    assert_eq!(shared_mount["Source"], shared.display().to_string());
    assert_eq!(shared_mount["RW"], false);
    let data = mounts
        .iter()
        .find(|m| m["Destination"] == "/data")
        .expect("the claim mount");
    assert_eq!(
        data["Name"], volume,
        "a claim is a named volume under Podman"
    );
    assert!(
        mounts.iter().any(|m| m["Destination"] == "/tmp"),
        "/tmp is writable: {mounts:?}"
    );
    // The server really runs as the user and sees the read-only host file.
    let (ok, out) = podman(&["exec", &container, "cat", "/shared/hello.txt"]);
    assert!(ok && out.trim() == "hi", "{out}");
    let (ok, out) = podman(&["exec", &container, "touch", "/rootfs-is-read-only"]);
    assert!(!ok, "root filesystem must be read-only: {out}");
    let (ok, out) = podman(&["exec", &container, "touch", "/tmp/writable"]);
    assert!(ok, "/tmp must be writable: {out}");
}

#[test]
fn export_names_the_servers_it_knows_when_asked_for_another() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata: {name: known}\nspec: {image: x}\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(["export", "unknown", "--manifests"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no MCPServer named 'unknown' (found: known)"),
        "{stderr}"
    );
}

/// The case: `mcpod export time > time.yaml && podman kube play time.yaml`
/// on a host where mcpod has run `time` failed with "name mcpod-time is in use".
/// Here a running mcpod serves the server (its container started), a stopped
/// container holds the name the default instance gives it (`mcpod-<name>`),
/// and the exported pod still plays, next to both.
#[tokio::test(flavor = "multi_thread")]
async fn exported_pod_plays_next_to_a_running_mcpod_serving_the_same_server() {
    let name = format!("side-{}", std::process::id());
    let spec = "env: [{name: FAKE_MODE, value: stubborn}]\nimagePullPolicy: Never";
    let mcpod = common::Mcpod::start(
        &[("s.yaml", common::manifest(&name, FIXTURE_IMAGE, spec))],
        &[],
    );
    let (status, _) = mcpod.post(&format!("/servers/{name}/start")).await;
    assert_eq!(status, 200, "mcpod started its container");
    let served = mcpod.container(&name);
    assert!(common::inspect(&served).is_some());
    // What `mcpod serve` with the default instance names the same server's container.
    let default_name = format!("mcpod-{name}");
    let _default = Container(default_name.clone());
    let (ok, out) = podman(&["create", "--name", &default_name, FIXTURE_IMAGE]);
    assert!(ok, "{out}");

    let yaml = tokio::task::spawn_blocking({
        let dir = mcpod.manifests.path().to_path_buf();
        let name = name.clone();
        move || export(&dir, &name, &dir)
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let yaml_file = dir.path().join("pod.yaml");
    std::fs::write(&yaml_file, &yaml).unwrap();
    let _played = Played {
        yaml: yaml_file.clone(),
        volume: format!("{name}-unused"),
    };
    let (ok, out) = podman(&[
        "kube",
        "play",
        "--network",
        "none",
        &yaml_file.display().to_string(),
    ]);
    assert!(ok, "podman kube play next to mcpod failed: {out}");
    let (ok, pods) = podman(&["pod", "ps", "--format", "{{.Name}}"]);
    assert!(
        ok && pods.lines().any(|p| p == format!("export-{name}")),
        "{pods}"
    );
    // mcpod's container is untouched and still serves.
    let (status, answer) = mcpod
        .call_tool(
            &name,
            serde_json::json!(1),
            "echo",
            serde_json::json!({"text": "still here"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(common::text_of(&answer), "still here");
}

/// Removes a container the test made, however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}
