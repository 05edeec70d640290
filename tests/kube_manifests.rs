//! Packaging checks that need no cluster: the CRD copies are identical and
//! structural, the plain manifests parse into the Kubernetes types with no
//! field lost (a typo'd field would be dropped), RBAC grants exactly the calls
//! mcpod makes, and the chart's templates only use values that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every YAML document of a file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(value).unwrap()
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn manifest_documents() -> Vec<(PathBuf, Value)> {
    let dir = root().join("manifests/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .flat_map(|file| {
            documents(&file)
                .into_iter()
                .map(move |doc| (file.clone(), doc))
        })
        .collect()
}

/// True when `typed` (re-serialized) holds everything `original` says.
fn nothing_lost(original: &Value, typed: &Value, path: &str) -> Result<(), String> {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => o.iter().try_for_each(|(k, v)| match t.get(k) {
            Some(tv) => nothing_lost(v, tv, &format!("{path}.{k}")),
            None => Err(format!("{path}.{k} is not a field of this kind")),
        }),
        (Value::Array(o), Value::Array(t)) if o.len() == t.len() => o
            .iter()
            .zip(t)
            .enumerate()
            .try_for_each(|(i, (ov, tv))| nothing_lost(ov, tv, &format!("{path}[{i}]"))),
        // Quantities and int-or-string ports may change representation only.
        (o, t) if o == t || o.to_string().trim_matches('"') == t.to_string().trim_matches('"') => {
            Ok(())
        }
        (o, t) => Err(format!("{path}: {o} became {t}")),
    }
}

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    doc: &Value,
) -> Result<(), String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    nothing_lost(doc, &serde_json::to_value(typed).unwrap(), "")
}

#[test]
fn kube_crd_copies_are_identical() {
    let copies = [
        ("mcpserver.yaml", "manifests/kubernetes/01-crd.yaml"),
        (
            "mcpservergroup.yaml",
            "manifests/kubernetes/01-crd-mcpservergroup.yaml",
        ),
    ];
    for (file, manifest) in copies {
        let crd = read(&format!("crds/{file}"));
        assert!(
            read(&format!("charts/mcpod/crds/{file}")) == crd,
            "charts/mcpod/crds/{file} differs: make crd"
        );
        assert!(read(manifest) == crd, "{manifest} differs: make crd");
    }
}

/// Walks an OpenAPI v3 schema and returns every structural-schema violation.
fn structural_problems(schema: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        problems.push(format!("{path}: not an object"));
        return;
    };
    let exempt = node.contains_key("x-kubernetes-int-or-string")
        || node.contains_key("x-kubernetes-preserve-unknown-fields");
    let type_ = node.get("type").and_then(Value::as_str);
    if type_.is_none() && !exempt {
        problems.push(format!("{path}: no type"));
    }
    for forbidden in [
        "$ref",
        "definitions",
        "dependencies",
        "deprecated",
        "id",
        "patternProperties",
    ] {
        if node.contains_key(forbidden) {
            problems.push(format!("{path}: {forbidden} is not allowed"));
        }
    }
    if node.contains_key("properties") && node.contains_key("additionalProperties") {
        problems.push(format!(
            "{path}: properties and additionalProperties together"
        ));
    }
    for junction in ["anyOf", "oneOf", "allOf"] {
        for (i, branch) in node
            .get(junction)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for key in [
                "type",
                "description",
                "default",
                "nullable",
                "additionalProperties",
                "title",
            ] {
                if branch.get(key).is_some() {
                    problems.push(format!(
                        "{path}.{junction}[{i}]: {key} is not allowed in a junction"
                    ));
                }
            }
        }
    }
    let nullable = node.get("nullable") == Some(&Value::Bool(true));
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        for value in values {
            let fits = match (type_, value) {
                (_, Value::Null) => nullable,
                (Some("string"), Value::String(_)) => true,
                (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
                (Some("boolean"), Value::Bool(_)) => true,
                _ => false,
            };
            if !fits {
                problems.push(format!(
                    "{path}: enum value {value} does not fit type {type_:?}"
                ));
            }
        }
    }
    if let Some(default) = node.get("default") {
        let fits = match (type_, default) {
            (Some("string"), Value::String(_)) => true,
            (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
            (Some("boolean"), Value::Bool(_)) => true,
            (Some("array"), Value::Array(_)) => true,
            (Some("object"), Value::Object(_)) => true,
            _ => false,
        };
        if !fits {
            problems.push(format!(
                "{path}: default {default} does not fit type {type_:?}"
            ));
        }
    }
    let properties = node.get("properties").and_then(Value::as_object);
    for required in node
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = required.as_str().unwrap_or_default();
        if !properties.is_some_and(|p| p.contains_key(name)) {
            problems.push(format!("{path}: required {name} is not a property"));
        }
    }
    if node.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
        let items = node.get("items").cloned().unwrap_or_default();
        if items.get("type").and_then(Value::as_str) != Some("object") {
            problems.push(format!("{path}: a map list needs object items"));
        }
        let keys = node
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array);
        if keys.is_none_or(|k| k.is_empty()) {
            problems.push(format!(
                "{path}: a map list needs x-kubernetes-list-map-keys"
            ));
        }
        let required: BTreeSet<&str> = items
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for key in keys.into_iter().flatten().filter_map(Value::as_str) {
            let defaulted = items
                .pointer(&format!("/properties/{key}/default"))
                .is_some();
            if !required.contains(key) && !defaulted {
                problems.push(format!(
                    "{path}: list-map key {key} must be required or defaulted"
                ));
            }
        }
    }
    if type_ == Some("array") && !node.contains_key("items") {
        problems.push(format!("{path}: an array needs items"));
    }
    for (name, child) in properties.into_iter().flatten() {
        structural_problems(child, &format!("{path}.{name}"), problems);
    }
    if let Some(items) = node.get("items") {
        structural_problems(items, &format!("{path}[]"), problems);
    }
    if let Some(additional @ Value::Object(_)) = node.get("additionalProperties") {
        structural_problems(additional, &format!("{path}{{}}"), problems);
    }
}

#[test]
fn kube_crd_schema_is_structural() {
    for file in ["crds/mcpserver.yaml", "crds/mcpservergroup.yaml"] {
        crd_schema_is_structural(file);
    }
}

fn crd_schema_is_structural(file: &str) {
    let docs = documents(&root().join(file));
    assert_eq!(docs.len(), 1);
    round_trip::<CustomResourceDefinition>(&docs[0]).unwrap();
    for version in docs[0]["spec"]["versions"].as_array().unwrap() {
        let schema = &version["schema"]["openAPIV3Schema"];
        let mut problems = vec![];
        structural_problems(schema, "", &mut problems);
        assert!(
            problems.is_empty(),
            "{}:\n{}",
            version["name"],
            problems.join("\n")
        );
        // The conditions list is keyed by type, so server-side apply merges it per condition.
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
    }
}

#[test]
fn kube_structural_check_catches_what_it_should() {
    let bad: Value = serde_json::json!({
        "type": "object",
        "properties": {
            "untyped": {},
            "both": {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}},
            "list": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                     "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
        },
        "required": ["missing"],
    });
    let mut problems = vec![];
    structural_problems(&bad, "", &mut problems);
    let text = problems.join("\n");
    for expected in [
        "untyped: no type",
        "properties and additionalProperties",
        "list-map key name",
        "required missing",
    ] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
}

#[test]
fn kube_manifests_parse_into_their_kinds_with_no_unknown_field() {
    let typo = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "x"}, "spec": {"selectr": {"a": "b"}}});
    assert!(round_trip::<Service>(&typo)
        .unwrap_err()
        .contains(".spec.selectr"));
    let mut kinds = BTreeSet::new();
    for (file, doc) in manifest_documents() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let checked = match kind.as_str() {
            "Namespace" => round_trip::<Namespace>(&doc),
            "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(&doc),
            "ServiceAccount" => round_trip::<ServiceAccount>(&doc),
            "Role" => round_trip::<Role>(&doc),
            "ClusterRole" => round_trip::<ClusterRole>(&doc),
            "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(&doc),
            "RoleBinding" => round_trip::<RoleBinding>(&doc),
            "Deployment" => round_trip::<Deployment>(&doc),
            "Service" => round_trip::<Service>(&doc),
            "NetworkPolicy" => round_trip::<NetworkPolicy>(&doc),
            other => Err(format!("unexpected kind {other}")),
        };
        checked.unwrap_or_else(|e| panic!("{}: {kind}: {e}", file.display()));
        let cluster_scoped = [
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        ];
        if !cluster_scoped.contains(&kind.as_str()) {
            assert_eq!(doc["metadata"]["namespace"], "mcpod", "{}", file.display());
        }
        kinds.insert(kind);
    }
    let expected: BTreeSet<String> = [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "NetworkPolicy",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds, expected);
}

/// (apiGroup, resource, verb) for every API call the operator and the router make.
const CALLS: &[(&str, &str, &str)] = &[
    ("mcpod.dev", "mcpservers", "get"),
    ("mcpod.dev", "mcpservers", "list"),
    ("mcpod.dev", "mcpservers", "watch"),
    ("mcpod.dev", "mcpservers", "patch"), // finalizer; wake and activity annotations
    ("mcpod.dev", "mcpservers/status", "get"),
    ("mcpod.dev", "mcpservers/status", "patch"), // server-side apply of the status
    ("mcpod.dev", "mcpservers/finalizers", "update"), // owner references with blockOwnerDeletion
    ("mcpod.dev", "mcpservergroups", "list"), // the router serves groups, the operator resolves them
    ("mcpod.dev", "mcpservergroups", "watch"),
    ("mcpod.dev", "mcpservergroups/status", "patch"), // server-side apply of a group's status
    ("", "pods", "get"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("", "pods", "create"),
    ("", "pods", "patch"),  // adoption
    ("", "pods", "delete"), // scale to zero, cleanup
    ("", "pods/attach", "get"),
    ("", "pods/attach", "create"),
    ("", "configmaps", "list"), // the router's catalogs of servers
    ("", "configmaps", "watch"),
    ("", "configmaps", "create"), // server-side apply of a new one
    ("", "configmaps", "patch"),
    ("", "configmaps", "delete"), // a catalog too large to keep
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"), // repeated events become a series
    ("networking.k8s.io", "networkpolicies", "get"),
    ("networking.k8s.io", "networkpolicies", "create"),
    ("networking.k8s.io", "networkpolicies", "patch"), // server-side apply
    ("coordination.k8s.io", "leases", "get"), // which router replica serves a server; operator leader
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"), // take (resourceVersion), renew, release
    ("coordination.k8s.io", "leases", "delete"), // a deleted MCPServer's Lease
];

fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    assert!(
                        ![group, resource, verb].iter().any(|s| s.contains('*')),
                        "wildcard in {rule:?}"
                    );
                    set.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    set
}

#[test]
fn kube_rbac_covers_every_call_and_no_more() {
    let role: Role = manifest_documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "Role")
        .map(|(_, d)| serde_json::from_value(d).unwrap())
        .expect("a Role");
    let needed: BTreeSet<(String, String, String)> = CALLS
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let rules = role.rules.unwrap_or_default();
    assert_eq!(grants(&rules), needed);
    // The chart's template has the same rules (its `rules:` block is plain YAML).
    let template = read("charts/mcpod/templates/rbac.yaml");
    let block = template
        .split_once("rules:\n")
        .and_then(|(_, rest)| rest.split_once("---"))
        .map(|(rules, _)| rules)
        .expect("a rules: block before ---");
    let chart_rules: Vec<PolicyRule> = serde_yaml::from_str(block).unwrap();
    assert_eq!(chart_rules, rules);
    // Cluster-wide, only what checking ServiceAccount tokens needs.
    let cluster_roles: Vec<ClusterRole> = manifest_documents()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "ClusterRole")
        .map(|(_, d)| serde_json::from_value(d).unwrap())
        .collect();
    assert_eq!(cluster_roles.len(), 1);
    let granted = grants(cluster_roles[0].rules.as_deref().unwrap_or_default());
    let tokenreview = ("authentication.k8s.io", "tokenreviews", "create");
    assert_eq!(
        granted,
        [tokenreview]
            .iter()
            .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
            .collect()
    );
}

#[test]
fn kube_deployment_runs_both_parts_hardened_with_probes() {
    let deployment: Deployment = manifest_documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "Deployment")
        .map(|(_, d)| serde_json::from_value(d).unwrap())
        .unwrap();
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("mcpod"));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["operator", "router"]);
    for container in &pod.containers {
        assert_eq!(
            container.args.as_deref(),
            Some(&[container.name.clone()][..])
        );
        for probe in [&container.liveness_probe, &container.readiness_probe] {
            let path = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone());
            assert_eq!(path.as_deref(), Some("/health"), "{}", container.name);
        }
        assert!(container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some());
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
    }
    // Router replicas advertise their pod IP and router port (the downward API),
    // and may reach each other's router port.
    let router = &pod.containers[1];
    let env = router.env.clone().unwrap_or_default();
    let var = |name: &str| env.iter().position(|e| e.name == name);
    let pod_ip = var("POD_IP").expect("POD_IP");
    assert_eq!(
        env[pod_ip]
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("status.podIP")
    );
    let advertise = var("MCPOD_ADVERTISE_ADDRESS").expect("MCPOD_ADVERTISE_ADDRESS");
    assert!(
        pod_ip < advertise,
        "$(POD_IP) expands only if defined before"
    );
    let port = router.ports.as_ref().unwrap()[0].container_port;
    assert_eq!(
        env[advertise].value.as_deref(),
        Some(format!("$(POD_IP):{port}").as_str())
    );
    let policy: NetworkPolicy = manifest_documents()
        .into_iter()
        .find(|(_, d)| d["kind"] == "NetworkPolicy")
        .map(|(_, d)| serde_json::from_value(d).unwrap())
        .unwrap();
    let egress = policy.spec.unwrap().egress.unwrap_or_default();
    assert!(
        egress.iter().any(|rule| {
            let to_replicas = rule.to.iter().flatten().any(|peer| {
                peer.pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.clone())
                    == deployment.spec.selector.match_labels
            });
            let router_port = rule.ports.iter().flatten().any(|p| {
                p.port == Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port))
            });
            to_replicas && router_port
        }),
        "egress to the other replicas' router port: {egress:?}"
    );
}

/// Every `.Values.a.b` a template uses exists in values.yaml.
#[test]
fn kube_chart_templates_use_only_defined_values() {
    let chart: Value = serde_yaml::from_str(&read("charts/mcpod/Chart.yaml")).unwrap();
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "mcpod");
    let values: Value = serde_yaml::from_str(&read("charts/mcpod/values.yaml")).unwrap();
    let dir = root().join("charts/mcpod/templates");
    let mut templates = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        templates += 1;
        for (index, _) in text.match_indices(".Values.") {
            let reference: String = text[index + ".Values.".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            let pointer = format!("/{}", reference.trim_end_matches('.').replace('.', "/"));
            assert!(
                values.pointer(&pointer).is_some(),
                "{}: .Values.{reference} is not in values.yaml",
                path.display()
            );
        }
    }
    assert!(templates >= 7, "templates: {templates}");
    let notes = read("charts/mcpod/templates/NOTES.txt");
    assert!(notes.contains("/mcp/<name>") && notes.contains("port-forward"));
}

#[test]
fn kube_examples_resolve_for_kubernetes() {
    let manifests = mcpod::manifests::load_dir(&root().join("examples")).unwrap();
    assert!(!manifests.servers.is_empty());
    for loaded in &manifests.servers {
        let name = loaded.server.metadata.name.clone().unwrap();
        mcpod::workload::Workload::resolve(
            &name,
            &loaded.server.spec,
            &Default::default(),
            mcpod::workload::Target::Kubernetes,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
