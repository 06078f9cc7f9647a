//! Issue 24: the library's top-level modules import one another without cycles, so each layer can be
//! read, tested and changed below the ones that use it. An import is a `crate::MODULE` path in a
//! module's code (comments aside); `main.rs` is the command line on top and imports the library by
//! its name.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules of the library and, for each, the others its code names as `crate::X`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = root();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let top: BTreeSet<String> = files
        .iter()
        .map(|f| f.strip_prefix(&src).unwrap())
        .filter_map(|rel| {
            let first = rel.components().next()?.as_os_str().to_str()?;
            Some(first.trim_end_matches(".rs").to_string())
        })
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let module = module.trim_end_matches(".rs").to_string();
        if !top.contains(&module) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let code: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        let code = code.join("\n");
        let mut found = BTreeSet::new();
        // `crate::x::…` and `use crate::{x, y::…}`.
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                group
                    .split('}')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|p| p.trim().split("::").next().unwrap_or_default().trim())
                    .collect()
            } else {
                vec![rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default()]
            };
            for name in names {
                if top.contains(name) && name != module {
                    found.insert(name.to_string());
                }
            }
        }
        out.entry(module).or_default().extend(found);
    }
    out
}

/// A cycle through `from`, if any: the path of modules back to it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == from {
                let mut p = path.clone();
                p.push(from.to_string());
                return Some(p);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn the_library_modules_import_one_another_without_cycles() {
    let graph = imports();
    assert!(
        graph.len() > 10 && graph["audit"].contains("run") && graph["report"].contains("config"),
        "the import scan broke: {graph:?}"
    );
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle(&graph, m))
        .map(|p| p.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}
