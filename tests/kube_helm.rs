//! The chart checked by the real Helm 4 (`tests/clients/bin/helm`, installed
//! by `make test-clients` through scripts/install-helm.sh): `helm lint
//! --strict` and `helm template` with the default and other values, and the
//! rendered chart agrees with `manifests/kubernetes/` object by object, once
//! the chart's own labels and the values mcpod would default anyway are set
//! aside.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn helm(args: &[&str]) -> String {
    let helm = root().join("tests/clients/bin/helm");
    assert!(
        helm.exists(),
        "{} is missing: run `make test-clients`",
        helm.display()
    );
    let output = Command::new(&helm)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "helm {args:?} failed:\n{text}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Rendered objects by (kind, name).
fn render(extra: &[&str]) -> BTreeMap<(String, String), Value> {
    let mut args = vec![
        "template",
        "mcpod",
        "charts/mcpod",
        "--namespace",
        "mcpod",
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    documents(&helm(&args))
        .into_iter()
        .map(|d| {
            (
                (
                    d["kind"].as_str().unwrap().to_string(),
                    d["metadata"]["name"].as_str().unwrap().to_string(),
                ),
                d,
            )
        })
        .collect()
}

const VALUES: &[&str] = &[
    "--set",
    "watchAllNamespaces=true",
    "--set",
    "replicas=1",
    "--set",
    "image.tag=dev",
    "--set",
    "networkPolicy.enabled=false",
    "--set",
    "defaults.idleTimeout=10m",
    "--set",
    "service.type=NodePort",
    "--set",
    "logLevel=debug",
];

#[test]
fn kube_helm_lint_strict_passes_with_default_and_other_values() {
    let out = helm(&["lint", "--strict", "charts/mcpod"]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let mut args = vec!["lint", "--strict", "charts/mcpod"];
    args.extend_from_slice(VALUES);
    let out = helm(&args);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

/// The environment variables mcpod reads and their defaults, from `mcpod CMD --help`
/// (`[env: NAME=] [default: VALUE]`): a chart value equal to one says nothing new.
fn env_defaults(command: &str) -> BTreeMap<String, String> {
    let help = Command::new(env!("CARGO_BIN_EXE_mcpod"))
        .args([command, "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).replace('\n', " ");
    let mut defaults = BTreeMap::new();
    for part in help.split("[env: ").skip(1) {
        // `NAME=CURRENT] [default: VALUE]`: only a default right after the env belongs to it.
        let (name, rest) = part.split_once('=').unwrap();
        let after = rest
            .split_once(']')
            .map_or("", |(_, after)| after)
            .trim_start();
        if let Some(value) = after.strip_prefix("[default: ") {
            defaults.insert(
                name.to_string(),
                value.split(']').next().unwrap().to_string(),
            );
        }
    }
    defaults
}

/// Sets aside what only says "installed by Helm" (its labels) and what the API
/// server or mcpod would fill in anyway, so the rest must match exactly.
fn normalize(
    mut doc: Value,
    container_defaults: &BTreeMap<String, BTreeMap<String, String>>,
) -> Value {
    strip_helm_labels(&mut doc);
    let object = doc.as_object_mut().unwrap();
    object.remove("metadata");
    match object["kind"].as_str().unwrap() {
        "ServiceAccount" if object.get("automountServiceAccountToken") == Some(&json!(true)) => {
            object.remove("automountServiceAccountToken");
        }
        "Service" if object["spec"]["type"] == "ClusterIP" => {
            object["spec"].as_object_mut().unwrap().remove("type");
        }
        "Deployment" => {
            for container in object["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .unwrap()
            {
                let command = container["args"][0].as_str().unwrap().to_string();
                let defaults = &container_defaults[&command];
                let env = container["env"].as_array_mut().unwrap();
                env.retain(|var| {
                    let name = var["name"].as_str().unwrap();
                    var["value"]
                        .as_str()
                        .is_none_or(|value| defaults.get(name).map(String::as_str) != Some(value))
                });
                env.sort_by_key(|var| var["name"].as_str().unwrap().to_string());
            }
        }
        _ => {}
    }
    doc
}

fn strip_helm_labels(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in [
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "helm.sh/chart",
                "app.kubernetes.io/managed-by",
            ] {
                map.remove(key);
            }
            map.values_mut().for_each(strip_helm_labels);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_helm_labels),
        _ => {}
    }
}

#[test]
fn kube_helm_template_agrees_with_the_plain_manifests() {
    let rendered = render(&[]);
    let defaults: BTreeMap<String, BTreeMap<String, String>> = ["operator", "router"]
        .iter()
        .map(|c| (c.to_string(), env_defaults(c)))
        .collect();
    assert_eq!(
        defaults["router"].get("MCPOD_LISTEN").map(String::as_str),
        Some("0.0.0.0:8080")
    );
    let dir = root().join("manifests/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut compared = vec![];
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
    {
        for doc in documents(&std::fs::read_to_string(file).unwrap()) {
            let kind = doc["kind"].as_str().unwrap().to_string();
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            if kind == "Namespace" {
                continue; // `helm install --create-namespace` makes it
            }
            let chart = rendered
                .get(&(kind.clone(), name.clone()))
                .unwrap_or_else(|| {
                    panic!("the chart renders no {kind} {name} ({})", file.display())
                });
            if let Some(namespace) = doc["metadata"]["namespace"].as_str() {
                assert_eq!(chart["metadata"]["namespace"], namespace, "{kind} {name}");
            }
            assert_eq!(
                normalize(chart.clone(), &defaults),
                normalize(doc.clone(), &defaults),
                "{kind} {name}: the chart and {} disagree",
                file.display()
            );
            compared.push(kind);
        }
    }
    compared.sort();
    assert_eq!(
        compared,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition", // MCPServer
            "CustomResourceDefinition", // MCPServerGroup
            "Deployment",
            "NetworkPolicy",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
}

#[test]
fn kube_helm_template_follows_non_default_values() {
    let defaults = render(&[]);
    let mut args = vec!["--namespace", "tools"];
    args.extend_from_slice(VALUES);
    let rendered = render(&args);
    let key = |kind: &str| (kind.to_string(), "mcpod".to_string());
    // Every namespace: cluster-wide RBAC with the same rules, bound in the release namespace.
    assert!(!rendered.contains_key(&key("Role")));
    assert_eq!(
        rendered[&key("ClusterRole")]["rules"],
        defaults[&key("Role")]["rules"]
    );
    assert_eq!(
        rendered[&key("ClusterRoleBinding")]["subjects"][0]["namespace"],
        "tools"
    );
    assert!(!rendered.contains_key(&key("NetworkPolicy")));
    let deployment = &rendered[&key("Deployment")];
    assert_eq!(deployment["metadata"]["namespace"], "tools");
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(rendered[&key("Service")]["spec"]["type"], "NodePort");
    for container in deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
    {
        assert_eq!(container["image"], "localhost/mcpod/mcpod:dev");
        let env: BTreeMap<&str, &Value> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), &v["value"]))
            .collect();
        assert_eq!(env["AUTO_SHUTDOWN_TIMEOUT"], "10m", "{container}");
        assert_eq!(env["RUST_LOG"], "debug");
        assert_eq!(env["MCPOD_ALL_NAMESPACES"], "true", "{container}");
    }
}

#[test]
fn kube_helm_metrics_options_render_the_dashboard_rules_and_service_monitor() {
    assert!(!render(&[]).keys().any(|(kind, _)| kind == "ServiceMonitor"
        || kind == "PrometheusRule"
        || kind == "ConfigMap"));
    let rendered = render(&[
        "--set",
        "metrics.grafanaDashboard.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.serviceMonitor.bearerTokenSecret.name=prometheus-key",
        "--set",
        "metrics.scrapeAnnotations=true",
        "--set",
        "logFormat=json",
    ]);
    let key = |kind: &str, name: &str| (kind.to_string(), name.to_string());
    // The sidecar's label, and the very dashboard Podman users get as a file.
    let dashboard = &rendered[&key("ConfigMap", "mcpod-dashboard")];
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value =
        serde_json::from_str(dashboard["data"]["mcpod.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dashboards/mcpod.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, file);
    let rules = &rendered[&key("PrometheusRule", "mcpod")];
    let alerts: Vec<&str> = rules["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert!(alerts.contains(&"McpodServerFailing"), "{alerts:?}");
    let endpoint = &rendered[&key("ServiceMonitor", "mcpod")]["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        endpoint["authorization"]["credentials"]["name"],
        "prometheus-key"
    );
    let deployment = &rendered[&key("Deployment", "mcpod")];
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    let env = &pod["spec"]["containers"][0]["env"];
    assert!(env
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "MCPOD_LOG_FORMAT" && v["value"] == "json"));
}

/// `helm template` that must fail: its error output.
fn helm_fails(extra: &[&str]) -> String {
    let mut args = vec!["template", "mcpod", "charts/mcpod", "--namespace", "mcpod"];
    args.extend_from_slice(extra);
    let output = Command::new(root().join("tests/clients/bin/helm"))
        .args(&args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!output.status.success(), "helm {args:?} rendered");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The router container's env as name → value.
fn router_env(rendered: &BTreeMap<(String, String), Value>) -> BTreeMap<String, Value> {
    let deployment = &rendered[&("Deployment".to_string(), "mcpod".to_string())];
    let router = &deployment["spec"]["template"]["spec"]["containers"][1];
    assert_eq!(router["name"], "router");
    router["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["value"].clone()))
        .collect()
}

#[test]
fn kube_helm_auth_defaults_check_service_account_tokens_and_start_safely() {
    let rendered = render(&["--namespace", "tools"]);
    let env = router_env(&rendered);
    assert_eq!(env["MCPOD_TOKEN_REVIEW_AUDIENCE"], "mcpod");
    assert_eq!(
        env["MCPOD_ALLOWED_HOSTS"],
        "mcpod,mcpod.tools,mcpod.tools.svc,mcpod.tools.svc.cluster.local"
    );
    assert!(!env.contains_key("MCPOD_INSECURE_ALLOW_UNAUTHENTICATED"));
    assert!(!env.contains_key("MCPOD_API_KEYS"));
    assert_eq!(env["MCPOD_HEALTH_LISTEN"], "0.0.0.0:8082");
    // The only cluster-wide grant: creating TokenReviews, bound to mcpod's ServiceAccount.
    let key = |kind: &str| (kind.to_string(), "mcpod-tokenreview".to_string());
    assert_eq!(
        rendered[&key("ClusterRole")]["rules"],
        json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}])
    );
    assert_eq!(
        rendered[&key("ClusterRoleBinding")]["subjects"],
        json!([{"kind": "ServiceAccount", "name": "mcpod", "namespace": "tools"}])
    );
    // The health port is reachable only from the peers named for it.
    let policy = &rendered[&("NetworkPolicy".to_string(), "mcpod".to_string())];
    assert_eq!(policy["spec"]["ingress"].as_array().unwrap().len(), 1);
    let rendered = render(&[
        "--set",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=monitoring",
    ]);
    let policy = &rendered[&("NetworkPolicy".to_string(), "mcpod".to_string())];
    assert_eq!(
        policy["spec"]["ingress"][1],
        json!({"from": [{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}],
               "ports": [{"protocol": "TCP", "port": 8082}]})
    );
}

#[test]
fn kube_helm_auth_api_keys_come_from_a_secret_and_no_auth_is_refused() {
    let rendered = render(&[
        "--set",
        "auth.tokenReview.enabled=false",
        "--set",
        "auth.apiKeys.existingSecret=mcpod-keys",
        "--set",
        "auth.allowedHosts={mcp.example.com}",
    ]);
    assert!(!rendered.contains_key(&("ClusterRole".to_string(), "mcpod-tokenreview".to_string())));
    let env = router_env(&rendered);
    assert!(!env.contains_key("MCPOD_TOKEN_REVIEW_AUDIENCE"));
    assert_eq!(env["MCPOD_API_KEYS"], "/etc/mcpod/api-keys/keys");
    assert!(env["MCPOD_ALLOWED_HOSTS"]
        .as_str()
        .unwrap()
        .ends_with(",mcp.example.com"));
    let pod =
        &rendered[&("Deployment".to_string(), "mcpod".to_string())]["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"],
        json!([{"name": "api-keys", "secret": {"secretName": "mcpod-keys"}}])
    );
    assert_eq!(
        pod["containers"][1]["volumeMounts"],
        json!([{"name": "api-keys", "mountPath": "/etc/mcpod/api-keys", "readOnly": true}])
    );
    // No authentication at all: refused at install, as the router would refuse to start.
    let error = helm_fails(&["--set", "auth.tokenReview.enabled=false"]);
    assert!(error.contains("insecureAllowUnauthenticated"), "{error}");
    let rendered = render(&[
        "--set",
        "auth.tokenReview.enabled=false",
        "--set",
        "auth.insecureAllowUnauthenticated=true",
    ]);
    assert_eq!(
        router_env(&rendered)["MCPOD_INSECURE_ALLOW_UNAUTHENTICATED"],
        "true"
    );
}
