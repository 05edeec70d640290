//! The operator's MCPServerGroup controller against a mocked API server: each
//! scenario lists the requests one reconcile must make, in order (method,
//! path, field manager, what the body says), with the API server's replies; a
//! missing, extra or different request fails the test.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};

use mcpod::crd::MCPServerGroup;
use mcpod::kube::groups::{self, GroupContext};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const SERVERS: &str = "/apis/mcpod.dev/v1alpha1/namespaces/ns/mcpservers";
const GROUPS: &str = "/apis/mcpod.dev/v1alpha1/namespaces/ns/mcpservergroups";

struct Exchange {
    method: Method,
    path: String,
    /// A parameter the query must hold (the field manager of a forced apply).
    query: Option<&'static str>,
    check: Box<dyn Fn(&Value) + Send>,
    reply: Value,
}

#[derive(Default)]
struct Scenario(Vec<Exchange>);

impl Scenario {
    fn expect(
        mut self,
        method: Method,
        path: &str,
        query: Option<&'static str>,
        check: impl Fn(&Value) + Send + 'static,
        reply: Value,
    ) -> Self {
        self.0.push(Exchange {
            method,
            path: path.into(),
            query,
            check: Box::new(check),
            reply,
        });
        self
    }

    /// The namespace's servers and groups are listed, and these found.
    fn lists(self, servers: Vec<Value>, groups: Vec<Value>) -> Self {
        self.expect(
            Method::GET,
            SERVERS,
            None,
            |_| {},
            list("MCPServerList", servers),
        )
        .expect(
            Method::GET,
            GROUPS,
            None,
            |_| {},
            list("MCPServerGroupList", groups),
        )
    }

    fn serve(self, mut handle: Handle) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            for (index, exchange) in self.0.into_iter().enumerate() {
                let (request, send) =
                    tokio::time::timeout(Duration::from_secs(2), handle.next_request())
                        .await
                        .unwrap_or_else(|_| {
                            panic!(
                                "request {index} ({} {}) never came",
                                exchange.method, exchange.path
                            )
                        })
                        .expect("the client is gone");
                assert_eq!(
                    request.method(),
                    exchange.method,
                    "request {index}: {}",
                    request.uri()
                );
                assert_eq!(request.uri().path(), exchange.path, "request {index}");
                if let Some(query) = exchange.query {
                    let actual = request.uri().query().unwrap_or_default();
                    // One exact parameter (`mcpod` is not `mcpod-groups`), and forced.
                    let parameters: Vec<&str> = actual.split('&').collect();
                    assert!(parameters.contains(&query), "request {index}: {actual}");
                    assert!(
                        parameters.contains(&"force=true"),
                        "request {index}: {actual}"
                    );
                }
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                (exchange.check)(&body);
                let reply = Response::builder()
                    .status(200)
                    .body(Body::from(serde_json::to_vec(&exchange.reply).unwrap()))
                    .unwrap();
                send.send_response(reply);
            }
            let extra =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await;
            if let Ok(Some((request, _))) = extra {
                panic!("unexpected request: {} {}", request.method(), request.uri());
            }
        })
    }
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "mcpod.dev/v1alpha1", "kind": kind, "metadata": {}, "items": items})
}

fn server(name: &str, labels: Value, status: Value) -> Value {
    json!({
        "apiVersion": "mcpod.dev/v1alpha1",
        "kind": "MCPServer",
        "metadata": {"name": name, "namespace": "ns", "labels": labels, "generation": 1},
        "spec": {"image": format!("localhost/mcpod/{name}:latest")},
        "status": status,
    })
}

fn group(spec: Value, status: Value) -> Value {
    json!({
        "apiVersion": "mcpod.dev/v1alpha1",
        "kind": "MCPServerGroup",
        "metadata": {"name": "starter", "namespace": "ns", "generation": 2},
        "spec": spec,
        "status": status,
    })
}

/// everything, memory and time are labelled into the group; fetch is not.
fn servers(time_status: Value) -> Vec<Value> {
    let member = json!({"group": "starter"});
    vec![
        server("everything", member.clone(), json!(null)),
        server("fetch", json!({}), json!(null)),
        server("memory", member.clone(), json!(null)),
        server("time", member, time_status),
    ]
}

async fn reconcile(group: Value, scenario: Scenario) -> mcpod::Result<()> {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = GroupContext::new(Client::new(service, "ns"));
    let api_server = scenario.serve(handle);
    let group: MCPServerGroup = serde_json::from_value(group).unwrap();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        groups::reconcile(Arc::new(group), ctx),
    )
    .await
    .expect("reconcile finished");
    tokio::time::timeout(Duration::from_secs(5), api_server)
        .await
        .expect("scenario finished")
        .expect("scenario held");
    result.map(|_| ())
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// The collision condition is applied on `name` (or removed: `None`) by the group manager.
fn server_condition(name: &'static str, collides: bool) -> impl Fn(&Value) + Send {
    move |patch| {
        let conditions = patch["status"]["conditions"].as_array().unwrap();
        // Only this manager's condition: the server controller's stay its own.
        assert_eq!(patch["status"].as_object().unwrap().len(), 1, "{patch}");
        if collides {
            assert_eq!(conditions.len(), 1, "{patch}");
            assert_eq!(conditions[0]["type"], "GroupCollision");
            assert_eq!(conditions[0]["status"], "True");
            let message = conditions[0]["message"].as_str().unwrap();
            assert!(
                message.contains("MCPServerGroup starter") && message.contains(name),
                "{message}"
            );
        } else {
            assert!(conditions.is_empty(), "{patch}");
        }
    }
}

#[tokio::test]
async fn kube_group_status_names_members_and_a_collision_and_the_colliding_servers() {
    // memory and time are both given the prefix t: neither can be served.
    let spec = json!({"selector": {"matchLabels": {"group": "starter"}}, "prefixes": {"memory": "t", "time": "t"}});
    let stored = group(spec.clone(), json!(null));
    let scenario = Scenario::default()
        .lists(servers(json!(null)), vec![stored.clone()])
        .expect(
            Method::PATCH,
            &format!("{GROUPS}/starter/status"),
            Some("fieldManager=mcpod"),
            |patch| {
                let status = &patch["status"];
                assert_eq!(patch["kind"], "MCPServerGroup");
                assert_eq!(
                    status["members"],
                    json!([{"server": "everything", "prefix": "everything"}])
                );
                assert_eq!(
                    status["collisions"].as_array().unwrap().len(),
                    1,
                    "{status}"
                );
                assert_eq!(status["collisions"][0]["name"], "t__");
                assert_eq!(
                    status["collisions"][0]["servers"],
                    json!(["memory", "time"])
                );
                assert_eq!(condition(status, "Ready")["status"], "True");
                assert_eq!(condition(status, "GroupCollision")["status"], "True");
                assert_eq!(status["observedGeneration"], 2);
            },
            stored.clone(),
        )
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/memory/status"),
            Some("fieldManager=mcpod-groups"),
            server_condition("memory", true),
            server("memory", json!({}), json!(null)),
        )
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            Some("fieldManager=mcpod-groups"),
            server_condition("time", true),
            server("time", json!({}), json!(null)),
        );
    reconcile(stored, scenario).await.unwrap();
}

#[tokio::test]
async fn kube_resolved_collision_removes_the_server_condition_and_unchanged_state_writes_nothing() {
    let spec = json!({"selector": {"matchLabels": {"group": "starter"}}});
    let old_condition = json!({"conditions": [
        {"type": "Ready", "status": "False", "reason": "ScaledToZero"},
        {"type": "GroupCollision", "status": "True", "reason": "PrefixCollision",
         "message": "MCPServerGroup starter: the names 't__…' would belong to memory and time"}
    ]});
    let stored = group(spec.clone(), json!(null));
    let scenario = Scenario::default()
        .lists(servers(old_condition.clone()), vec![stored.clone()])
        .expect(
            Method::PATCH,
            &format!("{GROUPS}/starter/status"),
            Some("fieldManager=mcpod"),
            |patch| {
                let members: Vec<&str> = patch["status"]["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["server"].as_str().unwrap())
                    .collect();
                assert_eq!(members, ["everything", "memory", "time"]);
                assert!(patch["status"].get("collisions").is_none(), "{patch}");
                assert_eq!(
                    condition(&patch["status"], "GroupCollision")["status"],
                    "False"
                );
            },
            stored.clone(),
        )
        .expect(
            Method::PATCH,
            &format!("{SERVERS}/time/status"),
            Some("fieldManager=mcpod-groups"),
            server_condition("time", false),
            server("time", json!({}), json!(null)),
        );
    reconcile(stored, scenario).await.unwrap();

    // Once written, the same state is written again by no one.
    let group_value = group(spec, json!(null));
    let parsed: MCPServerGroup = serde_json::from_value(group_value.clone()).unwrap();
    let servers_now = servers(json!(null));
    let parsed_servers: Vec<mcpod::crd::MCPServer> = servers_now
        .iter()
        .map(|s| serde_json::from_value(s.clone()).unwrap())
        .collect();
    let candidates: Vec<mcpod::group::Candidate> = parsed_servers
        .iter()
        .map(|s| mcpod::group::Candidate {
            name: s.metadata.name.as_deref().unwrap(),
            namespace: Some("ns"),
            labels: s.metadata.labels.as_ref().unwrap(),
        })
        .collect();
    let membership = mcpod::group::resolve(&parsed.spec, Some("ns"), candidates);
    let status = mcpod::group::status(&parsed, &membership, "2026-11-30T00:00:00Z");
    let settled = group(serde_json::to_value(&parsed.spec).unwrap(), json!(status));
    let scenario = Scenario::default().lists(servers_now, vec![settled.clone()]);
    reconcile(settled, scenario).await.unwrap();
}
