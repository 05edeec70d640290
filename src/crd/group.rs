//! The `MCPServerGroup` custom resource (`mcpod.dev/v1alpha1`): the MCPServers
//! of its namespace that a label selector picks, served as one MCP endpoint
//! (`/groups/{name}/mcp`). Which servers are members, under which prefixes,
//! and which names collide is decided in src/group.rs; this file is the
//! resource's shape only.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// The separator between a member's prefix and its own tool or prompt name
/// when a group does not choose one (`/mcp`'s default too).
pub const DEFAULT_GROUP_SEPARATOR: &str = "__";

/// Spec of one group of MCP servers.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "mcpod.dev",
    version = "v1alpha1",
    kind = "MCPServerGroup",
    plural = "mcpservergroups",
    shortname = "mcpg",
    category = "mcpod",
    namespaced,
    status = "MCPServerGroupStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Members",
        type_ = "string",
        json_path = ".status.members[*].server"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MCPServerGroupSpec {
    /// Which MCPServers of the group's namespace are members, by label, as a
    /// Kubernetes label selector. Left out or empty: every MCPServer there.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Put between a member's prefix and its own tool or prompt name
    /// (`time__get_current_time`). Default `__`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// By member (MCPServer name): the prefix its tools and prompts get
    /// instead of its name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prefixes: BTreeMap<String, String>,
    /// What the group is for, in words: shown by `GET /groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Put before the members' own instructions in the group's `initialize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
}

impl MCPServerGroupSpec {
    /// The separator in force.
    pub fn separator(&self) -> &str {
        self.separator.as_deref().unwrap_or(DEFAULT_GROUP_SEPARATOR)
    }
}

/// A Kubernetes label selector: every `matchLabels` pair and every
/// `matchExpressions` requirement must hold. Empty: everything matches.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One requirement on a label: `In`/`NotIn` a set of values, `Exists`, `DoesNotExist`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    /// For `In` and `NotIn` (at least one); empty for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Observed state of a group, written by mcpod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MCPServerGroupStatus {
    /// The servers the group serves, by name, with their prefixes.
    #[serde(default)]
    pub members: Vec<GroupMember>,
    /// Prefixes two selected servers would share (or one would shadow the
    /// other's): neither of those servers is served by the group until the
    /// collision is resolved (with `prefixes`, or by relabelling).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collisions: Vec<GroupCollision>,
    /// `Ready` (the group has members and is served) and `Collision`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One member of a group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupMember {
    /// The MCPServer's name.
    pub server: String,
    /// What its tools and prompts are prefixed with (then the separator).
    pub prefix: String,
}

/// Servers whose names would collide in the group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupCollision {
    /// The prefix (with its separator) that is ambiguous.
    pub name: String,
    /// The servers that would answer to it, none of which the group serves.
    pub servers: Vec<String>,
    pub message: String,
}

/// The group CRD as YAML, exactly as `crds/mcpservergroup.yaml` must hold it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = MCPServerGroup::crd();
    let yaml = serde_yaml::to_string(&crd).expect("a CRD always serializes");
    format!("---\n# Generated by `mcpod crd` from src/crd/group.rs; do not edit.\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn group_crd_names_and_status() {
        let crd = MCPServerGroup::crd();
        assert_eq!(crd.spec.group, "mcpod.dev");
        assert_eq!(crd.spec.names.kind, "MCPServerGroup");
        assert_eq!(crd.spec.names.plural, "mcpservergroups");
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert!(version.subresources.as_ref().unwrap().status.is_some());
    }

    #[test]
    fn an_empty_spec_selects_everything_with_the_default_separator() {
        let spec: MCPServerGroupSpec = serde_yaml::from_str("{}").unwrap();
        assert_eq!(spec.selector, LabelSelector::default());
        assert_eq!(spec.separator(), "__");
        let error = serde_yaml::from_str::<MCPServerGroupSpec>("selectr: {}").unwrap_err();
        assert!(error.to_string().contains("selectr"), "{error}");
    }

    #[test]
    fn committed_group_crd_matches_the_types() {
        let committed = include_str!("../../crds/mcpservergroup.yaml");
        assert!(
            committed == crd_yaml(),
            "crds/mcpservergroup.yaml is stale: run `make crd`"
        );
    }
}
