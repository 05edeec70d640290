//! Which servers an `MCPServerGroup` serves, under which prefixes, and which
//! collide: one pure decision, made the same way by `mcpod serve` (over the
//! servers of its manifest directory), by `mcpod router` (over the MCPServers
//! it watches) and by the operator (which writes it into the group's status).
//!
//! A member's tools and prompts are named `<prefix><separator><own name>`;
//! the prefix is the server's name unless `spec.prefixes` gives another. Two
//! members collide when one's `prefix + separator` starts the other's (equal
//! prefixes included): only then can a namespaced name belong to both (if
//! neither starts the other, the shorter one would have to start the longer
//! one). Colliding members are served by neither side, and the collision is
//! named in the status: nothing is silently shadowed.

use std::collections::BTreeMap;

use crate::crd::group::{
    GroupCollision, GroupMember, LabelSelector, MCPServerGroup, MCPServerGroupSpec,
    MCPServerGroupStatus, SelectorOperator,
};
use crate::crd::Condition;

/// The condition a colliding server carries in its own status (Kubernetes),
/// and the group in its status.
pub const COLLISION_CONDITION: &str = "GroupCollision";

/// A server a group could select.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub name: &'a str,
    /// `None` on Podman, where every server is in one namespace.
    pub namespace: Option<&'a str>,
    pub labels: &'a BTreeMap<String, String>,
}

/// A group's members and collisions, by server name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub members: Vec<GroupMember>,
    pub collisions: Vec<GroupCollision>,
}

impl Membership {
    /// The prefix `server` is served under, if it is a member.
    pub fn prefix_of(&self, server: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.server == server)
            .map(|m| m.prefix.as_str())
    }

    /// Every server some collision names.
    pub fn colliding_servers(&self) -> impl Iterator<Item = &str> {
        self.collisions
            .iter()
            .flat_map(|c| c.servers.iter().map(String::as_str))
    }
}

/// Whether `labels` satisfy `selector` (an empty selector matches everything).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value));
    pairs
        && selector.match_expressions.iter().all(|requirement| {
            let value = labels.get(&requirement.key);
            match requirement.operator {
                SelectorOperator::In => value.is_some_and(|v| requirement.values.contains(v)),
                SelectorOperator::NotIn => !value.is_some_and(|v| requirement.values.contains(v)),
                SelectorOperator::Exists => value.is_some(),
                SelectorOperator::DoesNotExist => value.is_none(),
            }
        })
}

/// What is wrong with a group's spec (the API server would refuse a bad
/// selector; the manifest directory must too), each naming the field.
pub fn problems(spec: &MCPServerGroupSpec) -> Vec<String> {
    let mut problems = vec![];
    for (index, requirement) in spec.selector.match_expressions.iter().enumerate() {
        let field = format!("spec.selector.matchExpressions[{index}]");
        let wants_values = matches!(
            requirement.operator,
            SelectorOperator::In | SelectorOperator::NotIn
        );
        if wants_values && requirement.values.is_empty() {
            problems.push(format!(
                "{field}: {:?} needs at least one value",
                requirement.operator
            ));
        }
        if !wants_values && !requirement.values.is_empty() {
            problems.push(format!(
                "{field}: {:?} takes no values",
                requirement.operator
            ));
        }
        if requirement.key.is_empty() {
            problems.push(format!("{field}: key is required"));
        }
    }
    if spec.separator().is_empty() {
        problems.push("spec.separator: must not be empty".to_string());
    }
    for (server, prefix) in &spec.prefixes {
        if prefix.is_empty() {
            problems.push(format!("spec.prefixes.{server}: must not be empty"));
        }
    }
    problems
}

/// The members of the group `spec` in `namespace` among `candidates`.
pub fn resolve<'a>(
    spec: &MCPServerGroupSpec,
    namespace: Option<&str>,
    candidates: impl IntoIterator<Item = Candidate<'a>>,
) -> Membership {
    let separator = spec.separator();
    let mut selected: Vec<GroupMember> = candidates
        .into_iter()
        .filter(|c| namespace.is_none() || c.namespace.is_none() || c.namespace == namespace)
        .filter(|c| matches(&spec.selector, c.labels))
        .map(|c| GroupMember {
            server: c.name.to_string(),
            prefix: spec
                .prefixes
                .get(c.name)
                .cloned()
                .unwrap_or_else(|| c.name.to_string()),
        })
        .collect();
    selected.sort_by(|a, b| a.server.cmp(&b.server));
    selected.dedup_by(|a, b| a.server == b.server);
    // By the shortest ambiguous `prefix + separator`: the servers it would reach.
    let mut ambiguous: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, a) in selected.iter().enumerate() {
        for b in &selected[i + 1..] {
            let (pa, pb) = (
                format!("{}{separator}", a.prefix),
                format!("{}{separator}", b.prefix),
            );
            let shorter = if pb.starts_with(&pa) {
                pa
            } else if pa.starts_with(&pb) {
                pb
            } else {
                continue;
            };
            let servers = ambiguous.entry(shorter).or_default();
            for server in [&a.server, &b.server] {
                if !servers.contains(server) {
                    servers.push(server.clone());
                }
            }
        }
    }
    let collisions: Vec<GroupCollision> = ambiguous
        .into_iter()
        .map(|(name, mut servers)| {
            servers.sort();
            let message = format!(
                "the names '{name}…' would belong to {}: none of them is served by the group \
                 (give one another prefix in spec.prefixes, or change its labels)",
                servers.join(" and ")
            );
            GroupCollision {
                name,
                servers,
                message,
            }
        })
        .collect();
    let membership = Membership {
        members: vec![],
        collisions,
    };
    let colliding: Vec<String> = membership.colliding_servers().map(str::to_string).collect();
    Membership {
        members: selected
            .into_iter()
            .filter(|m| !colliding.contains(&m.server))
            .collect(),
        ..membership
    }
}

/// The status a group with `membership` has, keeping the transition times of
/// `previous` conditions whose status holds; `now` is RFC 3339.
pub fn status(group: &MCPServerGroup, membership: &Membership, now: &str) -> MCPServerGroupStatus {
    let previous = group
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let ready = !membership.members.is_empty();
    let collided = !membership.collisions.is_empty();
    let ready_message = if ready {
        format!("serving {} servers", membership.members.len())
    } else {
        "no MCPServer in the namespace matches the selector (or every match collides)".to_string()
    };
    let collision_message = membership
        .collisions
        .iter()
        .map(|c| c.message.clone())
        .collect::<Vec<_>>()
        .join("; ");
    MCPServerGroupStatus {
        members: membership.members.clone(),
        collisions: membership.collisions.clone(),
        conditions: vec![
            condition(
                previous,
                "Ready",
                ready,
                if ready {
                    "MembersSelected"
                } else {
                    "NoMembers"
                },
                ready_message,
                now,
            ),
            condition(
                previous,
                COLLISION_CONDITION,
                collided,
                if collided {
                    "PrefixCollision"
                } else {
                    "NoCollision"
                },
                collision_message,
                now,
            ),
        ],
        observed_generation: group.metadata.generation,
    }
}

/// The condition on a server that `collisions` (of any groups, with the
/// group's name) name, or `None` when none does.
pub fn server_condition<'a>(
    server: &str,
    collisions: impl IntoIterator<Item = (&'a str, &'a GroupCollision)>,
    previous: &[Condition],
    now: &str,
) -> Option<Condition> {
    let messages: Vec<String> = collisions
        .into_iter()
        .filter(|(_, c)| c.servers.iter().any(|s| s == server))
        .map(|(group, c)| format!("MCPServerGroup {group}: {}", c.message))
        .collect();
    if messages.is_empty() {
        return None;
    }
    Some(condition(
        previous,
        COLLISION_CONDITION,
        true,
        "PrefixCollision",
        messages.join("; "),
        now,
    ))
}

fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: &str,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.to_string());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: (!message.is_empty()).then_some(message),
        last_transition_time: Some(since),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::group::LabelSelectorRequirement;

    /// Servers with no labels, by name.
    fn unlabelled<'a>(names: &[&'a str], none: &'a BTreeMap<String, String>) -> Vec<Candidate<'a>> {
        names
            .iter()
            .map(|name| Candidate {
                name,
                namespace: None,
                labels: none,
            })
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn spec(yaml: &str) -> MCPServerGroupSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn selectors_follow_kubernetes_rules() {
        let team = labels(&[("team", "a"), ("tier", "free")]);
        let none = labels(&[]);
        let selector = |yaml: &str| spec(yaml).selector;
        assert!(matches(&selector("{}"), &team));
        assert!(matches(&selector("{}"), &none));
        assert!(matches(
            &selector("selector: {matchLabels: {team: a}}"),
            &team
        ));
        assert!(!matches(
            &selector("selector: {matchLabels: {team: b}}"),
            &team
        ));
        assert!(!matches(
            &selector("selector: {matchLabels: {team: a}}"),
            &none
        ));
        let expression = |op: &str, values: &str| {
            selector(&format!(
                "selector: {{matchExpressions: [{{key: tier, operator: {op}, values: [{values}]}}]}}"
            ))
        };
        assert!(matches(&expression("In", "free, paid"), &team));
        assert!(!matches(&expression("In", "paid"), &team));
        assert!(!matches(&expression("In", "free"), &none));
        assert!(matches(&expression("NotIn", "paid"), &team));
        assert!(matches(&expression("NotIn", "paid"), &none));
        assert!(!matches(&expression("NotIn", "free"), &team));
        assert!(matches(&expression("Exists", ""), &team));
        assert!(!matches(&expression("Exists", ""), &none));
        assert!(matches(&expression("DoesNotExist", ""), &none));
        assert!(!matches(&expression("DoesNotExist", ""), &team));
    }

    #[test]
    fn bad_selectors_are_named() {
        let mut group = spec("{}");
        group
            .selector
            .match_expressions
            .push(LabelSelectorRequirement {
                key: "tier".into(),
                operator: SelectorOperator::In,
                values: vec![],
            });
        group
            .selector
            .match_expressions
            .push(LabelSelectorRequirement {
                key: "tier".into(),
                operator: SelectorOperator::Exists,
                values: vec!["x".into()],
            });
        group.separator = Some(String::new());
        let problems = problems(&group);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("matchExpressions[0]") && problems[0].contains("In"));
        assert!(problems[1].contains("matchExpressions[1]"));
        assert!(problems[2].contains("spec.separator"));
        assert!(super::problems(&spec("{}")).is_empty());
    }

    #[test]
    fn members_are_selected_in_the_namespace_with_their_prefixes() {
        let (on, off) = (labels(&[("group", "on")]), labels(&[]));
        let candidates = [
            Candidate {
                name: "time",
                namespace: Some("ns"),
                labels: &on,
            },
            Candidate {
                name: "memory",
                namespace: Some("ns"),
                labels: &on,
            },
            Candidate {
                name: "fetch",
                namespace: Some("ns"),
                labels: &off,
            },
            Candidate {
                name: "git",
                namespace: Some("other"),
                labels: &on,
            },
        ];
        let group = spec("selector: {matchLabels: {group: on}}\nprefixes: {memory: mem}");
        let membership = resolve(&group, Some("ns"), candidates);
        assert_eq!(
            membership.members,
            [
                GroupMember {
                    server: "memory".into(),
                    prefix: "mem".into()
                },
                GroupMember {
                    server: "time".into(),
                    prefix: "time".into()
                },
            ]
        );
        assert!(membership.collisions.is_empty());
        assert_eq!(membership.prefix_of("memory"), Some("mem"));
        assert_eq!(membership.prefix_of("fetch"), None);
        // Podman has no namespaces: every server is a candidate.
        let everything = resolve(&spec("{}"), None, candidates);
        assert_eq!(everything.members.len(), 4);
    }

    #[test]
    fn ambiguous_prefixes_collide_and_neither_side_is_served() {
        let none = labels(&[]);
        let candidates = unlabelled(&["time", "memory", "git", "fetch"], &none);
        // Equal prefixes, and one that starts another (t__x… is t's and t__x's).
        let group = spec("prefixes: {time: t, memory: t, git: t__x}");
        let membership = resolve(&group, None, candidates.iter().copied());
        assert_eq!(membership.members.len(), 1, "{membership:?}");
        assert_eq!(membership.members[0].server, "fetch");
        assert_eq!(membership.collisions.len(), 1);
        let collision = &membership.collisions[0];
        assert_eq!(collision.name, "t__");
        assert_eq!(collision.servers, ["git", "memory", "time"]);
        assert!(
            collision.message.contains("spec.prefixes"),
            "{}",
            collision.message
        );
        // With another separator, t and t__x no longer overlap… but t and t still do.
        let dashed = resolve(
            &spec("separator: '-'\nprefixes: {time: t, memory: t, git: t__x}"),
            None,
            candidates.iter().copied(),
        );
        assert_eq!(dashed.collisions[0].servers, ["memory", "time"]);
        assert_eq!(dashed.members.len(), 2);
    }

    #[test]
    fn status_has_members_collisions_and_conditions() {
        let none = labels(&[]);
        let candidates = unlabelled(&["time", "memory", "git"], &none);
        let mut group = MCPServerGroup::new("all", spec("prefixes: {time: x, memory: x}"));
        group.metadata.generation = Some(3);
        let membership = resolve(&group.spec, None, candidates.iter().copied());
        let status = status(&group, &membership, "2026-11-30T00:00:00Z");
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.members.len(), 1);
        assert_eq!(status.collisions.len(), 1);
        let types: Vec<(&str, &str)> = status
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str()))
            .collect();
        assert_eq!(types, [("Ready", "True"), (COLLISION_CONDITION, "True")]);
        let on_time = server_condition(
            "time",
            status.collisions.iter().map(|c| ("all", c)),
            &[],
            "2026-11-30T00:00:00Z",
        )
        .unwrap();
        assert!(on_time.message.unwrap().starts_with("MCPServerGroup all:"));
        assert!(server_condition(
            "git",
            status.collisions.iter().map(|c| ("all", c)),
            &[],
            "t"
        )
        .is_none());
    }
}
