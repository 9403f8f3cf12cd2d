//! The shim's top-level modules form layers: no module reaches, through `crate::` paths,
//! a module that reaches back to it. A cycle would mean a kind of task (`vm`, later the
//! pod sandbox) is named by the layers that are meant to be generic over it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of `src` (a file or a directory) with the modules it names.
fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading the source tree") {
            let path = entry.expect("reading the source tree").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension() != Some(std::ffi::OsStr::new("rs")) {
                continue;
            }
            let relative = path.strip_prefix(src).expect("below src");
            let first = relative.components().next().expect("a file name").as_os_str().to_string_lossy();
            let module = first.trim_end_matches(".rs").to_string();
            let text = std::fs::read_to_string(&path).expect("reading a source file");
            let named = graph.entry(module.clone()).or_default();
            for (index, _) in text.match_indices("crate::") {
                for name in first_segments(&text[index + "crate::".len()..]) {
                    if name != module {
                        named.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// The first path segment after `crate::`: one name (`crate::vm::X`), or one per item of
/// a group (`crate::{vm::X, host}`).
fn first_segments(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let Some(group) = rest.strip_prefix('{') else {
        return Some(ident(rest)).filter(|name| !name.is_empty()).into_iter().collect();
    };
    let (mut depth, mut items, mut start) = (0usize, Vec::new(), 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.into_iter().map(|item| ident(item.trim_start())).filter(|name| !name.is_empty()).collect()
}

/// A cycle in `graph`, as the path that closes it, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn top_level_modules_have_no_import_cycles() {
    // Cargo's run-time CARGO_MANIFEST_DIR: a build reused from a checkout elsewhere keeps
    // the compile-time one.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let graph = dependencies(&Path::new(&crate_dir).join("src"));
    assert!(graph.contains_key("service") && graph.contains_key("vm"), "{graph:?}");
    assert!(graph["vm"].contains("service"), "the VM kind plugs into the service layer: {graph:?}");
    assert_eq!(cycle(&graph), None, "{graph:?}");
}

#[test]
fn grouped_imports_name_each_module() {
    assert_eq!(first_segments("vm::VmFactory;"), vec!["vm"]);
    assert_eq!(first_segments("{vm::{A, B}, host::journal,\n    plan};"), vec!["vm", "host", "plan"]);
}

#[test]
fn a_cycle_is_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert_eq!(cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
}
