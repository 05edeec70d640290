//! mcpod deployed with `podman kube play manifests/podman/mcpod.yaml`: the pod
//! runs mcpod's image (`images/mcpod/Containerfile`, built here from the test's
//! binary), `/health` answers on the host port, a server declared in the
//! mounted manifests folder answers a tools/call (its container started by
//! mcpod-in-the-pod through the mounted Podman socket), and `podman kube down`
//! leaves the data folder. The YAML is used as shipped, with the pod name,
//! image, host port, host folders, socket and instance replaced so runs never
//! collide. Needs Podman, the base and fixture images (`make test-images`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const FIXTURE_IMAGE: &str = "localhost/mcpod-test/fixture:latest";

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .expect("podman must be installed (make setup)")
}

fn podman_ok(args: &[&str]) -> String {
    let output = podman(args);
    assert!(
        output.status.success(),
        "podman {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Everything the test made, removed when it ends, however it ends.
struct Deployment {
    yaml: PathBuf,
    pod: String,
    image: String,
    instance: String,
    service: Option<Child>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = podman(&["logs", &format!("{}-mcpod", self.pod)]);
            eprintln!(
                "---- mcpod (in the pod) log ----\n{}",
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        let _ = podman(&["kube", "down", &self.yaml.display().to_string()]);
        let _ = podman(&["pod", "rm", "-f", "-t", "0", &self.pod]);
        let _ = podman(&[
            "rm",
            "-f",
            "-t",
            "0",
            "--filter",
            &format!("label=mcpod.dev/instance={}", self.instance),
        ]);
        let _ = podman(&["rmi", "-f", &self.image]);
        if let Some(mut service) = self.service.take() {
            let _ = service.kill();
            let _ = service.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The shipped YAML with this run's names, port and host paths.
fn template(
    pod: &str,
    image: &str,
    port: u16,
    manifests: &Path,
    data: &Path,
    socket: &Path,
    instance: &str,
) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/podman/mcpod.yaml"),
    )
    .unwrap();
    let replacements = [
        ("\n  name: mcpod\n", format!("\n  name: {pod}\n")),
        (
            "image: localhost/mcpod/mcpod:latest",
            format!("image: {image}"),
        ),
        ("hostPort: 8080", format!("hostPort: {port}")),
        (
            "path: /etc/mcpod/manifests,",
            format!("path: {},", manifests.display()),
        ),
        (
            "path: /var/lib/mcpod,",
            format!("path: {},", data.display()),
        ),
        (
            "path: /run/podman/podman.sock,",
            format!("path: {},", socket.display()),
        ),
        ("--instance=podman-host", format!("--instance={instance}")),
    ];
    let mut text = shipped;
    for (from, to) in replacements {
        assert_eq!(
            text.matches(from).count(),
            1,
            "manifests/podman/mcpod.yaml has one {from:?}"
        );
        text = text.replace(from, &to);
    }
    text
}

async fn wait_for<T>(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn mcpod_runs_under_podman_kube_play_and_kube_down_keeps_its_data() {
    let id = std::process::id();
    let dir = tempfile::tempdir().unwrap();
    let instance = format!("kp{id}");
    let pod = format!("mcpod-test-{id}");
    let image = format!("localhost/mcpod-test/mcpod:kp{id}");
    let yaml = dir.path().join("mcpod.yaml");
    let mut deployment = Deployment {
        yaml: yaml.clone(),
        pod: pod.clone(),
        image: image.clone(),
        instance: instance.clone(),
        service: None,
    };

    // mcpod's image, from this build's binary and the shipped Containerfile.
    let context = dir.path().join("image");
    std::fs::create_dir(&context).unwrap();
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(context.join("mcpod"))
        .arg(env!("CARGO_BIN_EXE_mcpod"))
        .status()
        .unwrap();
    assert!(stripped.success());
    let containerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/mcpod/Containerfile");
    podman_ok(&[
        "build",
        "-q",
        "--pull=never",
        "-f",
        containerfile.to_str().unwrap(),
        "-t",
        &image,
        context.to_str().unwrap(),
    ]);

    // The host's Podman service, on a socket of this test's own.
    let socket = dir.path().join("podman.sock");
    deployment.service = Some(
        Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(20), "the podman socket", async || {
        socket.exists().then_some(())
    })
    .await;

    let manifests = dir.path().join("manifests");
    let data = dir.path().join("data");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(
        manifests.join("fake.yaml"),
        format!(
            "apiVersion: mcpod.dev/v1alpha1\nkind: MCPServer\nmetadata: {{name: fake}}\n\
             spec:\n  image: {FIXTURE_IMAGE}\n"
        ),
    )
    .unwrap();
    let port = free_port();
    std::fs::write(
        &yaml,
        template(&pod, &image, port, &manifests, &data, &socket, &instance),
    )
    .unwrap();

    podman_ok(&["kube", "play", yaml.to_str().unwrap()]);
    let state = podman_ok(&["pod", "inspect", "--format", "{{.State}}", &pod]);
    assert_eq!(state.trim(), "Running");

    // Root only for the socket: no capabilities, read-only root, no privilege escalation.
    let mcpod: Value =
        serde_json::from_str(&podman_ok(&["inspect", &format!("{pod}-mcpod")])).unwrap();
    let mcpod = &mcpod[0];
    assert_eq!(mcpod["HostConfig"]["ReadonlyRootfs"], true, "{mcpod}");
    assert!(
        mcpod["EffectiveCaps"]
            .as_array()
            .is_none_or(|caps| caps.is_empty()),
        "{}",
        mcpod["EffectiveCaps"]
    );
    assert!(
        mcpod["HostConfig"]["SecurityOpt"]
            .to_string()
            .contains("no-new-privileges"),
        "{}",
        mcpod["HostConfig"]["SecurityOpt"]
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let health: Value = wait_for(Duration::from_secs(60), "/health", async || {
        let response = http.get(format!("{base}/health")).send().await.ok()?;
        if response.status() != 200 {
            return None;
        }
        response.json().await.ok()
    })
    .await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["servers"], 1, "{health}");

    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"through the pod"}}});
    let response = http
        .post(format!("{base}/mcp/fake"))
        .header("content-type", "application/json")
        .body(call.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], 7, "{body}");
    assert_eq!(
        body["result"]["content"][0]["text"], "through the pod",
        "{body}"
    );

    // The server's container runs on the host, labelled with the pod's instance.
    let server = format!("mcpod-{instance}-fake");
    let labels = podman_ok(&[
        "inspect",
        "--format",
        "{{index .Config.Labels \"mcpod.dev/instance\"}} {{.State.Running}}",
        &server,
    ]);
    assert_eq!(labels.trim(), format!("{instance} true"));

    // mcpod laid out its data folder on the host.
    for folder in ["logs/router", "logs/containers", "data/memory", "volumes"] {
        assert!(data.join(folder).is_dir(), "{folder} in the data folder");
    }
    std::fs::write(data.join("data/memory/memory.jsonl"), "{}\n").unwrap();

    podman_ok(&["kube", "down", yaml.to_str().unwrap()]);
    assert!(
        !podman(&["pod", "exists", &pod]).status.success(),
        "the pod is gone after kube down"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("data/memory/memory.jsonl")).unwrap(),
        "{}\n",
        "kube down leaves the data folder"
    );
    assert!(data.join("logs/router").is_dir());
    drop(deployment);
    assert!(
        !podman(&["container", "exists", &server]).status.success(),
        "the server's container is cleaned up"
    );
}

/// The systemd unit passes `systemd-analyze verify`, and every variable it sets is one
/// `mcpod serve` reads (a misspelt one would be ignored silently).
#[test]
fn systemd_unit_verifies_and_sets_only_variables_mcpod_reads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("manifests/podman/mcpod.service")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let mut checked = 0;
    for line in unit.lines() {
        let Some(assignment) = line.strip_prefix("Environment=") else {
            continue;
        };
        let name = assignment.split('=').next().unwrap();
        if name == "CONTAINER_HOST" || name == "RUST_LOG" {
            continue;
        }
        assert!(
            help.contains(&format!("[env: {name}=")),
            "mcpod serve reads no {name}"
        );
        checked += 1;
    }
    assert!(checked >= 4, "{checked} variables checked");
    assert!(unit.contains("ExecStart=/usr/local/bin/mcpod serve\n"));

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("mcpod.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/mcpod", env!("CARGO_BIN_EXE_mcpod")),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (Debian: systemd) is installed");
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}
