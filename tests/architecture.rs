//! The layering stays a layering (issue 24): within each crate, the top-level modules' references to
//! each other (`crate::MODULE`, `use crate::{MODULE, …}`) form no cycle.
//! Comments and `#[cfg(test)]` blocks do not count: a doc link is not a dependency.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module name → its source (every file under it, joined).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string();
            if ["lib", "main"].contains(&top.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.entry(top).or_default().push_str(&code_of(&text));
        }
    }
    out
}

/// The text without comment lines and without what follows a `#[cfg(test)]`.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if !t.starts_with("//") {
            code.push_str(line);
            code.push('\n');
        }
    }
    code
}

/// `from` → the top-level modules it names: `crate::m…` and each item of `crate::{m, n::x, …}`.
fn edges(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let ident_at = |s: &str| {
        let s = s.trim_start();
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(s.len());
        s[..end].to_string()
    };
    let mut edges = BTreeMap::new();
    for (name, text) in mods {
        let mut named = Vec::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let Some(list) = rest.strip_prefix('{') else {
                named.push(ident_at(rest));
                continue;
            };
            // The items at the list's top level (nested braces belong to an item).
            let (mut depth, mut start) = (0, 0);
            for (j, c) in list.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        named.push(ident_at(&list[start..j]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        named.push(ident_at(&list[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        }
        let to = named
            .into_iter()
            .filter(|m| m != name && mods.contains_key(m))
            .collect();
        edges.insert(name.clone(), to);
    }
    edges
}

/// A cycle of the graph, if it has one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut c = path[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_modules_of_each_crate_import_each_other_without_a_cycle() {
    for src in ["src", "checks/src"] {
        let mods = modules(&common::root().join(src));
        assert!(mods.len() > 5, "{src}: {:?}", mods.keys());
        let edges = edges(&mods);
        assert!(
            cycle(&edges).is_none(),
            "{src}: the modules import each other in a cycle: {}",
            cycle(&edges).unwrap().join(" -> ")
        );
    }
}

#[test]
fn a_cycle_is_found() {
    let mods: BTreeMap<String, String> = [
        ("a", "use crate::b::X;"),
        ("b", "use crate::{Root, c::{g, h}};"),
        ("c", "// crate::a in a comment is no edge\nuse crate::a;"),
        ("d", "use crate::a;"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), code_of(v)))
    .collect();
    assert_eq!(cycle(&edges(&mods)).unwrap(), ["a", "b", "c", "a"]);
    let mut acyclic = mods.clone();
    acyclic.insert("c".into(), code_of("// use crate::a;"));
    assert_eq!(cycle(&edges(&acyclic)), None);
}
