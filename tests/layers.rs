//! The house's dependencies run one way. Every source file's references to
//! the rest of the crate (`crate::…`, `super::…`, outside comments and test
//! modules) are read, and
//!
//! - no files form an import circle (a module's own children, which it
//!   declares and may re-export, are not counted as its imports: Rust's
//!   module tree, not a dependency);
//! - no file imports a top-level module of a higher layer than its own
//!   (`LAYERS`, bottom first); `KNOWN_UPWARD` would list exceptions, and
//!   is empty.
//!
//! `scripts/layers` prints the same graph for a reader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules by layer, bottom first: a module may import its own
/// layer's and lower ones'.
const LAYERS: &[&[&str]] = &[
    &["clock", "instruments", "proto", "settings"],
    &["model", "window", "tls", "memory"],
    &["otlp", "cdevents", "transport"],
    &["processors"],
    &["report", "storage"],
    &["flow"],
    &["receivers", "exporters", "kafka"],
    &["config"],
    &["pipeline"],
    &["replay"],
];

/// Imports that still run up a layer, with why; to be removed, never added.
const KNOWN_UPWARD: &[(&str, &str, &str)] = &[];

type Module = Vec<String>;

fn module_of(root: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(root).expect("under src");
    let mut parts: Module = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin") {
                files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "main.rs")
        {
            out.push(path);
        }
    }
}

/// The text without comments and without `#[cfg(test)]` items.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() == "#[cfg(test)]" {
            // Skip the next item: one line ending in `;`, or a braced block.
            let mut depth = 0i32;
            let mut opened = false;
            for next in lines.by_ref() {
                let next = next.split("//").next().unwrap_or_default();
                depth += next.matches('{').count() as i32 - next.matches('}').count() as i32;
                opened |= next.contains('{');
                if (!opened && next.trim_end().ends_with(';')) || (opened && depth <= 0) {
                    break;
                }
            }
            continue;
        }
        out.push_str(line.split("//").next().unwrap_or_default());
        out.push('\n');
    }
    out
}

/// The `a::b::c` paths after `prefix` in `text` (identifiers only).
fn paths_after<'a>(text: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices(prefix) {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[i + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path: Vec<&str> = rest[..end]
            .split("::")
            .filter(|p| !p.is_empty() && p.chars().next().is_some_and(|c| c.is_lowercase()))
            .collect();
        // `crate::{a, b}` and `super::{a, b}`: each item.
        if rest[end..].starts_with('{') {
            let group = &rest[end + 1..rest[end..].find('}').map_or(rest.len(), |j| end + j)];
            for item in group.split(',') {
                let mut p = path.clone();
                p.extend(
                    item.trim()
                        .split("::")
                        .take_while(|s| s.chars().next().is_some_and(|c| c.is_lowercase())),
                );
                out.push(p);
            }
        }
        out.push(path);
    }
    out
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&root, &mut all);
    let modules: BTreeMap<Module, String> = all
        .iter()
        .map(|f| {
            (
                module_of(&root, f),
                std::fs::read_to_string(f).expect("read"),
            )
        })
        .collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, text) in &modules {
        let text = code(text);
        let mut refs: Vec<Vec<String>> = paths_after(&text, "crate::")
            .into_iter()
            .map(|p| p.into_iter().map(str::to_string).collect())
            .collect();
        let ups = text.matches("super::super::").count();
        for p in paths_after(&text, "super::") {
            // `super::super::x` is read as `super::` then `super::x`.
            let p: Vec<&str> = p.into_iter().filter(|s| *s != "super").collect();
            for depth in 1..=1 + usize::from(ups > 0) {
                if module.len() < depth {
                    continue;
                }
                let mut full: Vec<String> = module[..module.len() - depth].to_vec();
                full.extend(p.iter().map(|s| s.to_string()));
                refs.push(full);
            }
        }
        let out = edges.entry(module.clone()).or_default();
        for r in refs {
            // The longest prefix that is a module (a file).
            if let Some(target) = (1..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|c| modules.contains_key(c))
                && &target != module
                && !target.starts_with(module)
            {
                out.insert(target);
            }
        }
    }
    edges
}

fn layer_of(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&top))
        .unwrap_or_else(|| panic!("`{top}` is in no layer: add it to LAYERS"))
}

#[test]
fn no_import_runs_up_a_layer() {
    let edges = graph();
    let mut upward = Vec::new();
    for (from, targets) in &edges {
        let Some(from_top) = from.first() else {
            continue;
        };
        for to in targets {
            let to_top = &to[0];
            if layer_of(to_top) > layer_of(from_top) {
                upward.push((from.join("::"), to_top.clone()));
            }
        }
    }
    let known: Vec<(String, String)> = KNOWN_UPWARD
        .iter()
        .map(|(a, b, _)| (a.to_string(), b.to_string()))
        .collect();
    let new: Vec<_> = upward.iter().filter(|u| !known.contains(u)).collect();
    assert!(new.is_empty(), "imports that run up a layer: {new:#?}");
    // A known one that is gone comes off the list.
    let gone: Vec<_> = known.iter().filter(|k| !upward.contains(k)).collect();
    assert!(
        gone.is_empty(),
        "no longer upward, take off KNOWN_UPWARD: {gone:?}"
    );
}

#[test]
fn no_files_form_an_import_circle() {
    let edges = graph();
    // Tarjan's strongly connected components.
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        next: usize,
        circles: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let Some((w, _)) = s.edges.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut circle = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(w);
                circle.push(w.join("::"));
                if w == v {
                    break;
                }
            }
            if circle.len() > 1 {
                circle.sort();
                s.circles.push(circle);
            }
        }
    }
    let mut s = State {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        circles: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    assert!(s.circles.is_empty(), "import circles: {:#?}", s.circles);
    // The graph is read at all: the engine imports the processors.
    assert!(
        edges[&vec!["pipeline".to_string(), "engine".to_string()]]
            .iter()
            .any(|t| t.first().is_some_and(|t| t == "processors")),
        "the graph reads no imports"
    );
}
