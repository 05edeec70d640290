//! What `spec.access` (see [`super::spec`]) allows a caller: pure functions of
//! the policy, the caller and a name. They never ask the server what exists,
//! so a refusal reads the same for a name that exists and one that does not.

use serde_json::Value;

use super::spec::{Access, Callers, NameRule};
use crate::auth::Caller;

/// What a request or a list entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item<'a> {
    Tool(&'a str),
    Prompt(&'a str),
    Resource(&'a str),
    /// A resource template, by its `uriTemplate`.
    Template(&'a str),
}

impl Item<'_> {
    pub fn kind(self) -> &'static str {
        match self {
            Item::Tool(_) => "tool",
            Item::Prompt(_) => "prompt",
            Item::Resource(_) => "resource",
            Item::Template(_) => "resource template",
        }
    }

    /// The `spec.access` field whose rules apply.
    pub fn section(self) -> &'static str {
        match self {
            Item::Tool(_) => "tools",
            Item::Prompt(_) => "prompts",
            Item::Resource(_) | Item::Template(_) => "resources",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Item::Tool(s) | Item::Prompt(s) | Item::Resource(s) | Item::Template(s) => s,
        }
    }
}

impl Callers {
    /// Whether `caller` is one of these callers (see the type's docs).
    pub fn admit(&self, caller: &Caller) -> bool {
        let named = self
            .subjects
            .iter()
            .any(|s| s == "*" || *s == caller.subject)
            || self.groups.iter().any(|g| caller.groups.contains(g));
        let only_scopes = self.subjects.is_empty() && self.groups.is_empty();
        let scoped = self.scopes.iter().all(|s| caller.scopes.contains(s));
        (named || (only_scopes && !self.scopes.is_empty())) && scoped
    }
}

/// May `caller` use the server at all?
pub fn may_use(access: Option<&Access>, caller: &Caller) -> bool {
    caller.is_local()
        || access
            .and_then(|a| a.callers.as_ref())
            .is_none_or(|callers| callers.admit(caller))
}

/// May `caller` use `item` (the server-level check passed)?
pub fn may_use_item(access: Option<&Access>, caller: &Caller, item: Item) -> bool {
    let Some(access) = access else { return true };
    if caller.is_local() {
        return true;
    }
    match item {
        Item::Tool(name) => by_name(&access.tools, caller, name),
        Item::Prompt(name) => by_name(&access.prompts, caller, name),
        Item::Resource(uri) => by_uri(access, caller, uri, false),
        Item::Template(template) => {
            let literal = template.split('{').next().unwrap_or_default();
            by_uri(access, caller, literal, literal.len() < template.len())
        }
    }
}

fn by_name(rules: &[NameRule], caller: &Caller, name: &str) -> bool {
    rules.is_empty()
        || rules
            .iter()
            .any(|r| r.names.iter().any(|n| glob(n, name)) && r.callers.admit(caller))
}

/// `partial`: `uri` is the literal start of a template, which an exact URI
/// rule cannot cover.
fn by_uri(access: &Access, caller: &Caller, uri: &str, partial: bool) -> bool {
    access.resources.is_empty()
        || access.resources.iter().any(|r| {
            let exact = !partial && r.uris.iter().any(|u| u == uri);
            let prefixed = r.uri_prefixes.iter().any(|p| uri.starts_with(p.as_str()));
            (exact || prefixed) && r.callers.admit(caller)
        })
}

/// `*` matches any run of characters, everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*` at all
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What a request is about, for the decision and the audit log: the tool,
/// prompt or resource it names (`None`: a method with nothing to check).
pub fn item_of<'a>(method: &str, params: Option<&'a Value>) -> Option<Item<'a>> {
    let text = |key: &str| params.and_then(|p| p.get(key)).and_then(Value::as_str);
    match method {
        "tools/call" => Some(Item::Tool(text("name").unwrap_or_default())),
        "prompts/get" => Some(Item::Prompt(text("name").unwrap_or_default())),
        "resources/read" | "resources/subscribe" => {
            Some(Item::Resource(text("uri").unwrap_or_default()))
        }
        "completion/complete" => {
            let reference = params.and_then(|p| p.get("ref"));
            let field = |key: &str| reference.and_then(|r| r.get(key)).and_then(Value::as_str);
            match field("type") {
                Some("ref/prompt") => Some(Item::Prompt(field("name").unwrap_or_default())),
                Some("ref/resource") => Some(Item::Template(field("uri").unwrap_or_default())),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Removes from a list result what `caller` may not use. Cursors are left as
/// they are: a page may come back shorter, or empty, and the next still follows.
pub fn filter_list(access: Option<&Access>, caller: &Caller, method: &str, result: &mut Value) {
    if access.is_none() || caller.is_local() {
        return;
    }
    let (key, field): (&str, &str) = match method {
        "tools/list" => ("tools", "name"),
        "prompts/list" => ("prompts", "name"),
        "resources/list" => ("resources", "uri"),
        "resources/templates/list" => ("resourceTemplates", "uriTemplate"),
        _ => return,
    };
    let Some(entries) = result.get_mut(key).and_then(Value::as_array_mut) else {
        return;
    };
    entries.retain(|entry| {
        let text = entry.get(field).and_then(Value::as_str).unwrap_or_default();
        let item = match key {
            "tools" => Item::Tool(text),
            "prompts" => Item::Prompt(text),
            "resources" => Item::Resource(text),
            _ => Item::Template(text),
        };
        may_use_item(access, caller, item)
    });
}

/// May `caller` start/stop the server or read its logs? Operators are the
/// server's own (`spec.access.operators`) and the router-wide ones.
pub fn may_operate(access: Option<&Access>, operators: &Callers, caller: &Caller) -> bool {
    caller.is_local()
        || operators.admit(caller)
        || access
            .and_then(|a| a.operators.as_ref())
            .is_some_and(|o| o.admit(caller))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Via;
    use serde_json::json;

    fn caller(subject: &str, groups: &[&str], scopes: &[&str]) -> Caller {
        Caller {
            subject: subject.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            via: Via::ApiKey,
        }
    }

    fn access(yaml: &str) -> Access {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn globs_match_runs_of_characters() {
        for (pattern, text, matches) in [
            ("*", "anything", true),
            ("*", "", true),
            ("echo", "echo", true),
            ("echo", "echoes", false),
            ("admin_*", "admin_reset", true),
            ("admin_*", "user_reset", false),
            ("*_delete", "file_delete", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxcyyb", false),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(glob(pattern, text), matches, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn callers_match_by_subject_or_group_and_need_every_scope() {
        let alice = caller("alice", &["dev"], &["mcp:read"]);
        let named: Callers = serde_yaml::from_str("subjects: [alice]").unwrap();
        assert!(named.admit(&alice));
        assert!(!named.admit(&caller("bob", &["dev"], &[])));
        let group: Callers = serde_yaml::from_str("groups: [dev]").unwrap();
        assert!(group.admit(&caller("bob", &["dev"], &[])));
        let scoped: Callers =
            serde_yaml::from_str("groups: [dev]\nscopes: [mcp:read, mcp:write]").unwrap();
        assert!(!scoped.admit(&alice), "a scope is missing");
        let only_scope: Callers = serde_yaml::from_str("scopes: [mcp:read]").unwrap();
        assert!(only_scope.admit(&alice));
        assert!(!only_scope.admit(&caller("bob", &[], &[])));
        assert!(!Callers::default().admit(&alice), "empty matches nobody");
        let anyone: Callers = serde_yaml::from_str("subjects: ['*']").unwrap();
        assert!(anyone.admit(&caller("zed", &[], &[])));
    }

    #[test]
    fn without_rules_everything_is_open_and_once_ruled_only_what_a_rule_allows() {
        let bob = caller("bob", &[], &[]);
        assert!(may_use(None, &bob));
        assert!(may_use_item(None, &bob, Item::Tool("anything")));
        let policy = access(
            "callers: {groups: [users]}\n\
             tools:\n- names: [echo]\n  callers: {subjects: ['*']}\n\
             - names: ['admin_*']\n  callers: {subjects: [alice]}\n",
        );
        let alice = caller("alice", &["users"], &[]);
        let carol = caller("carol", &["users"], &[]);
        assert!(!may_use(Some(&policy), &bob), "not in users");
        assert!(may_use(Some(&policy), &carol));
        assert!(may_use_item(Some(&policy), &carol, Item::Tool("echo")));
        assert!(!may_use_item(
            Some(&policy),
            &carol,
            Item::Tool("admin_reset")
        ));
        assert!(may_use_item(
            Some(&policy),
            &alice,
            Item::Tool("admin_reset")
        ));
        assert!(
            !may_use_item(Some(&policy), &alice, Item::Tool("other")),
            "named by no rule: closed once tools has rules"
        );
        assert!(
            may_use_item(Some(&policy), &carol, Item::Prompt("any")),
            "no prompt rules: open"
        );
        let local = Caller::local();
        assert!(may_use(Some(&policy), &local));
        assert!(may_use_item(
            Some(&policy),
            &local,
            Item::Tool("admin_reset")
        ));
    }

    #[test]
    fn resources_by_uri_or_prefix_and_templates_by_their_literal_start() {
        let policy = access(
            "resources:\n- uris: ['test://static/resource/1']\n  callers: {subjects: [bob]}\n\
             - uriPrefixes: ['test://public/']\n  callers: {subjects: ['*']}\n",
        );
        let bob = caller("bob", &[], &[]);
        let eve = caller("eve", &[], &[]);
        let resource = |uri| Item::Resource(uri);
        assert!(may_use_item(
            Some(&policy),
            &bob,
            resource("test://static/resource/1")
        ));
        assert!(!may_use_item(
            Some(&policy),
            &eve,
            resource("test://static/resource/1")
        ));
        assert!(!may_use_item(
            Some(&policy),
            &bob,
            resource("test://static/resource/2")
        ));
        assert!(may_use_item(
            Some(&policy),
            &eve,
            resource("test://public/a")
        ));
        let template = |t| Item::Template(t);
        assert!(may_use_item(
            Some(&policy),
            &eve,
            template("test://public/{id}")
        ));
        assert!(!may_use_item(
            Some(&policy),
            &bob,
            template("test://static/resource/{id}")
        ));
    }

    #[test]
    fn lists_are_filtered_and_keep_their_cursor() {
        let policy = access("tools:\n- names: [echo, add]\n  callers: {subjects: [bob]}\n");
        let mut result = json!({"tools": [{"name": "echo"}, {"name": "secret"}, {"name": "add"}],
            "nextCursor": "page2"});
        filter_list(
            Some(&policy),
            &caller("bob", &[], &[]),
            "tools/list",
            &mut result,
        );
        assert_eq!(
            result,
            json!({"tools": [{"name": "echo"}, {"name": "add"}], "nextCursor": "page2"})
        );
        filter_list(
            Some(&policy),
            &caller("eve", &[], &[]),
            "tools/list",
            &mut result,
        );
        assert_eq!(result, json!({"tools": [], "nextCursor": "page2"}));
    }

    #[test]
    fn requests_name_what_they_are_about() {
        let params = json!({"name": "echo", "arguments": {"secret": 1}});
        assert_eq!(
            item_of("tools/call", Some(&params)),
            Some(Item::Tool("echo"))
        );
        let read = json!({"uri": "file:///a"});
        assert_eq!(
            item_of("resources/subscribe", Some(&read)),
            Some(Item::Resource("file:///a"))
        );
        let complete = json!({"ref": {"type": "ref/prompt", "name": "greet"}});
        assert_eq!(
            item_of("completion/complete", Some(&complete)),
            Some(Item::Prompt("greet"))
        );
        assert_eq!(item_of("tools/list", None), None);
        assert_eq!(item_of("tools/call", None), Some(Item::Tool("")));
    }

    #[test]
    fn operators_are_the_servers_and_the_routers() {
        let policy = access("operators: {groups: [ops]}");
        let router: Callers = serde_yaml::from_str("subjects: [root]").unwrap();
        assert!(may_operate(
            Some(&policy),
            &router,
            &caller("root", &[], &[])
        ));
        assert!(may_operate(
            Some(&policy),
            &router,
            &caller("o", &["ops"], &[])
        ));
        assert!(!may_operate(
            Some(&policy),
            &router,
            &caller("user", &[], &[])
        ));
        assert!(!may_operate(
            None,
            &Callers::default(),
            &caller("user", &[], &[])
        ));
        assert!(may_operate(None, &Callers::default(), &Caller::local()));
    }
}
