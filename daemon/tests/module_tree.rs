//! The daemon's modules form a tree: following every module's `crate::…`
//! references never leads back to where it started, and the core state
//! (`state.rs`) refers to no verb module. Reads the sources as text.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The modules that hold protocol verbs; the core may not use them.
const VERBS: &[&str] = &[
    "lifecycle",
    "manage",
    "token",
    "login",
    "revoke",
    "dispatch",
    "server",
    "handler",
    "audit_log",
    "apps",
    "approve",
    "notify",
    "git",
    "totp",
    "stepup",
    "rotation",
    "health",
    "oauth1",
    "proxy",
];

/// Each top-level module's source (a directory module's files joined),
/// without its `#[cfg(test)]` tail.
fn modules() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    let mut visit = vec![src.clone()];
    while let Some(dir) = visit.pop() {
        for entry in std::fs::read_dir(&dir).expect("daemon/src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                visit.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).expect("below src");
            let top = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("a UTF-8 name")
                .trim_end_matches(".rs")
                .to_owned();
            if top == "lib" || top == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            modules.entry(top).or_default().push_str(code);
        }
    }
    modules
}

/// The names `code` reaches as `crate::NAME`, also inside `use crate::{…}`.
fn references(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(group) => group
                .split('}')
                .next()
                .unwrap_or_default()
                .split(',')
                .map(|item| item.trim().split("::").next().unwrap_or_default())
                .collect(),
            None => vec![rest
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .next()
                .unwrap_or_default()],
        };
        found.extend(
            names
                .into_iter()
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
        );
    }
    found
}

#[test]
fn the_daemon_modules_form_a_tree_and_the_core_uses_no_verb() {
    let modules = modules();
    let graph: BTreeMap<&str, BTreeSet<String>> = modules
        .iter()
        .map(|(name, code)| {
            let mut refs = references(code);
            refs.retain(|r| r != name && modules.contains_key(r));
            (name.as_str(), refs)
        })
        .collect();
    assert!(
        graph.contains_key("state") && graph.contains_key("token"),
        "{graph:?}"
    );
    for verb in VERBS {
        assert!(
            !graph["state"].contains(*verb),
            "the core state uses the verb module {verb}: {:?}",
            graph["state"]
        );
    }
    // Depth-first search for a path that comes back to its start.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<&str, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(start) = path.iter().position(|n| *n == node) {
            panic!("import circle: {} -> {node}", path[start..].join(" -> "));
        }
        if !done.insert(node) {
            return;
        }
        path.push(node);
        for next in &graph[node] {
            visit(next, graph, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn references_are_read_from_paths_and_groups() {
    let refs = references("use crate::state::{Daemon};\nuse crate::{policy, vault::Token};\nlet x = crate::clock::Clock::Wall;");
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    assert_eq!(refs, ["clock", "policy", "state", "vault"]);
}
