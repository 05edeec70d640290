//! `spec.expose`: which of a server's tools, prompts and resources mcpod
//! shows its clients, and under which names and descriptions.
//!
//! Applied on the way in and on the way out of every request of the server's
//! endpoint: lists (from the server or from its catalog) lose what is hidden
//! and show renamed tools under their new names; a call of a hidden tool is
//! refused as a call of a tool that does not exist, and a call of a renamed
//! tool reaches the server under its own name. `spec.access` rules keep
//! naming the server's own names: they are decided between the two.

use serde_json::Value;

use crate::catalog::{Entry, List};
use crate::mcp::message::{self as jsonrpc, Method};

pub use crate::crd::{Expose, Override, Selection};

/// `*` matches any run of characters; everything else matches itself.
fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole name
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

impl Selection {
    /// Whether the item the server calls `name` is shown.
    pub fn shows(&self, name: &str) -> bool {
        let allowed = self.allow.is_empty() || self.allow.iter().any(|p| matches(p, name));
        allowed && !self.deny.iter().any(|p| matches(p, name))
    }

    /// The name clients see for the server's `name`.
    pub fn public_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.overrides
            .get(name)
            .and_then(|o| o.name.as_deref())
            .unwrap_or(name)
    }

    /// The server's name of what clients call `public`, if they may use it.
    pub fn original_of<'a>(&'a self, public: &'a str) -> Option<&'a str> {
        let renamed = self
            .overrides
            .iter()
            .find(|(_, o)| o.name.as_deref() == Some(public))
            .map(|(original, _)| original.as_str());
        let original = match renamed {
            Some(original) => original,
            // Renamed away: the old name is no longer a name clients can use.
            None if self.public_name(public) != public => return None,
            None => public,
        };
        self.shows(original).then_some(original)
    }

    /// A list's items as clients see them.
    fn rewrite(&self, items: &mut Vec<Value>, key: &str) {
        items.retain(|item| {
            item.get(key)
                .and_then(Value::as_str)
                .is_some_and(|n| self.shows(n))
        });
        for item in items.iter_mut() {
            let Some(name) = item.get(key).and_then(Value::as_str) else {
                continue;
            };
            let Some(change) = self.overrides.get(name).cloned() else {
                continue;
            };
            if let Some(name) = change.name {
                item[key] = Value::String(name);
            }
            if let Some(description) = change.description {
                item["description"] = Value::String(description);
            }
        }
    }
}

impl Expose {
    /// The selection that governs `list`, and the field that names its items.
    fn for_list(&self, list: List) -> Option<(&Selection, &'static str)> {
        match list {
            List::Tools => self.tools.as_ref().map(|s| (s, "name")),
            List::Prompts => self.prompts.as_ref().map(|s| (s, "name")),
            List::Resources => self.resources.as_ref().map(|s| (s, "uri")),
            List::ResourceTemplates => self.resources.as_ref().map(|s| (s, "uriTemplate")),
        }
    }

    /// What a request names: the list it is in, where in the message its
    /// name is (a JSON pointer), and what to call it in a refusal. A
    /// completion names the prompt or resource template whose argument it
    /// completes: hidden ones complete nothing either.
    fn subject(message: &Value) -> Option<(List, &'static str, &'static str)> {
        match Method::of(message) {
            Method::ToolsCall => Some((List::Tools, "/params/name", "tool")),
            Method::PromptsGet => Some((List::Prompts, "/params/name", "prompt")),
            Method::ResourcesRead | Method::ResourcesSubscribe => {
                Some((List::Resources, "/params/uri", "resource"))
            }
            Method::CompletionComplete => {
                match message.pointer("/params/ref/type").and_then(Value::as_str) {
                    Some("ref/prompt") => Some((List::Prompts, "/params/ref/name", "prompt")),
                    Some("ref/resource") => {
                        Some((List::ResourceTemplates, "/params/ref/uri", "resource"))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// A client's request on its way to the server: a renamed tool or prompt
    /// gets the server's name back; what is hidden — or, with a known
    /// `catalog`, what the server does not have — is refused alike, as a name
    /// that does not exist: the JSON-RPC error response MCP gives for an
    /// unknown tool (-32602), with the request's id.
    pub fn inbound(&self, catalog: Option<&Entry>, message: &mut Value) -> Result<(), Value> {
        let Some((list, pointer, kind)) = Self::subject(message) else {
            return Ok(());
        };
        let Some((selection, key)) = self.for_list(list) else {
            return Ok(());
        };
        let Some(public) = message.pointer(pointer).and_then(Value::as_str) else {
            return Ok(());
        };
        let unknown = || {
            let text = format!("Unknown {kind}: {public}");
            jsonrpc::error(jsonrpc::id(message), jsonrpc::INVALID_PARAMS, text)
        };
        let original = selection.original_of(public).ok_or_else(unknown)?;
        let known = catalog.and_then(|entry| entry.items(list));
        // Resources may be read by URIs no list names (templates): only names are checked.
        if matches!(list, List::Tools | List::Prompts) {
            if let Some(items) = known {
                if !items
                    .iter()
                    .any(|item| item.get(key).and_then(Value::as_str) == Some(original))
                {
                    return Err(unknown());
                }
            }
        }
        let original = Value::String(original.to_string());
        if let Some(name) = message.pointer_mut(pointer) {
            *name = original;
        }
        Ok(())
    }

    /// A list result on its way to the client.
    pub fn outbound(&self, method: Method, response: &mut Value) {
        let Some(list) = List::of(method) else { return };
        let Some((selection, key)) = self.for_list(list) else {
            return;
        };
        if let Some(items) = response
            .pointer_mut(&format!("/result/{}", list.key()))
            .and_then(Value::as_array_mut)
        {
            selection.rewrite(items, key);
        }
    }

    /// The spec's own contradictions, by field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(resources) = &self.resources {
            if !resources.overrides.is_empty() {
                return Err((
                    "spec.expose.resources.overrides".into(),
                    "resources keep their URIs: only tools and prompts can be renamed".into(),
                ));
            }
        }
        for (field, selection) in [("tools", &self.tools), ("prompts", &self.prompts)] {
            let Some(selection) = selection else { continue };
            let mut seen = std::collections::BTreeSet::new();
            for (original, change) in &selection.overrides {
                let public = change.name.as_deref().unwrap_or(original);
                if !seen.insert(public) {
                    return Err((
                        format!("spec.expose.{field}.overrides.{original}.name"),
                        format!("two {field} would both be called '{public}'"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expose(yaml: &str) -> Expose {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn patterns() {
        assert!(matches("echo", "echo"));
        assert!(!matches("echo", "echo2"));
        assert!(matches("git_*", "git_log"));
        assert!(!matches("git_*", "gitlog"));
        assert!(matches("*_file", "read_file"));
        assert!(matches("file:///*/*.md", "file:///docs/a.md"));
        assert!(!matches("file:///*/*.md", "file:///docs/a.txt"));
        assert!(matches("*", ""));
    }

    #[test]
    fn lists_lose_hidden_items_and_show_new_names() {
        let e = expose(
            "tools:\n  deny: [crash]\n  overrides:\n    echo: {name: say, description: Says it}\n",
        );
        let mut response = json!({"result": {"tools": [
            {"name": "echo", "description": "Echo"}, {"name": "crash"}, {"name": "sleep"}]}});
        e.outbound(Method::ToolsList, &mut response);
        assert_eq!(
            response["result"]["tools"],
            json!([{"name": "say", "description": "Says it"}, {"name": "sleep"}])
        );
    }

    #[test]
    fn calls_use_public_names_and_hidden_ones_do_not_exist() {
        let e = expose("tools:\n  allow: [echo, sleep, crash]\n  deny: [crash]\n  overrides:\n    echo: {name: say}\n");
        let catalog = Entry {
            tools: Some(vec![json!({"name": "echo"}), json!({"name": "crash"})]),
            ..Entry::default()
        };
        let call = |name: &str| json!({"method": "tools/call", "params": {"name": name}});
        let mut renamed = call("say");
        e.inbound(Some(&catalog), &mut renamed).unwrap();
        assert_eq!(renamed["params"]["name"], "echo");
        let refusal = |name: &str| {
            let error = e.inbound(Some(&catalog), &mut call(name)).unwrap_err();
            error.to_string().replace(name, "NAME")
        };
        // Hidden, renamed away, not on the allow-list, not on the server: one answer.
        assert_eq!(refusal("crash"), refusal("nonesuch"));
        assert_eq!(refusal("echo"), refusal("nonesuch"));
        assert_eq!(refusal("whoami"), refusal("nonesuch"));
        // Allowed but not in the catalog: unknown too.
        assert_eq!(refusal("sleep"), refusal("nonesuch"));
        assert!(refusal("nonesuch").contains("-32602"));
    }

    #[test]
    fn completions_follow_the_prompts_and_templates_clients_see() {
        let e = expose("prompts:\n  deny: [secret]\n  overrides:\n    greet: {name: hello}\nresources:\n  deny: [\"db://*\"]\n");
        let complete = |reference: Value| {
            json!({"id": 4, "method": "completion/complete",
                   "params": {"ref": reference, "argument": {"name": "a", "value": ""}}})
        };
        let mut renamed = complete(json!({"type": "ref/prompt", "name": "hello"}));
        e.inbound(None, &mut renamed).unwrap();
        assert_eq!(renamed["params"]["ref"]["name"], "greet");
        for hidden in [
            json!({"type": "ref/prompt", "name": "secret"}),
            json!({"type": "ref/prompt", "name": "greet"}),
            json!({"type": "ref/resource", "uri": "db://{table}"}),
        ] {
            let error = e.inbound(None, &mut complete(hidden)).unwrap_err();
            assert_eq!(error["error"]["code"], -32602);
            assert_eq!(error["id"], 4);
        }
        let mut shown = complete(json!({"type": "ref/resource", "uri": "file:///{path}"}));
        e.inbound(None, &mut shown).unwrap();
        assert_eq!(shown["params"]["ref"]["uri"], "file:///{path}");
    }

    #[test]
    fn contradictions_name_their_field() {
        let twice = expose("tools:\n  overrides:\n    a: {name: b}\n    b: {description: x}\n");
        assert!(twice.validate().unwrap_err().0.contains("overrides"));
        let renamed_resource = expose("resources:\n  overrides:\n    x: {name: y}\n");
        assert!(renamed_resource.validate().is_err());
    }
}
