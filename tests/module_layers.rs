//! The crate's top-level modules form layers: no import cycle between them (issue: config, the
//! ground floor, imported control, uplink, telephony and agent; agent and speech imported each
//! other). Read from the source, not from rustc: every `crate::NAME` path (also inside
//! `use crate::{…}` groups) and `super::` chains that climb to the crate root, outside test
//! code (`#[cfg(test)]` modules and test-only files). A cycle fails with the files and lines
//! that make each of its edges.
//!
//! Edges still being cut are listed in `KNOWN_CYCLE_EDGES` (a ratchet: one that no longer
//! exists must leave the list, and no new edge may close a cycle).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `from -> to` edges that take part in a cycle today and are being removed; empty when done.
/// The layers they break, from the ground floor up: config; speech, telephony, uplink;
/// agent; call; control; ops.
const KNOWN_CYCLE_EDGES: &[(&str, &str)] = &[];

type Edges = BTreeMap<(String, String), Vec<String>>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of `text` without `#[cfg(test)]` items (a module or function and its braces).
fn without_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // Skip to the item's end: a `;` before any `{`, or the matching close brace.
        let open = after.find('{');
        let semi = after.find(';');
        match (open, semi) {
            (_, Some(s)) if open.is_none_or(|o| s < o) => rest = &after[s + 1..],
            (Some(o), _) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (i, c) in after[o..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = o + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            _ => rest = "",
        }
    }
    out.push_str(rest);
    out
}

/// Top-level module names a line refers to through `crate::` (with `use crate::{a, b::c}`
/// groups), or through `super::` chains longer than the file's depth in its module.
fn referenced_modules(line: &str, depth: usize, modules: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            for part in inner.split(',') {
                found.push(ident(part.trim()));
            }
        } else {
            found.push(ident(after));
        }
        rest = after;
    }
    // `super::` from a file `depth` levels below the crate root reaches the root after `depth`.
    let code = line.split("//").next().unwrap_or_default();
    for (i, _) in code.match_indices("super::") {
        if i > 0 && code[..i].ends_with("super::") {
            continue; // counted from the chain's first `super::`
        }
        let chain = &code[i..];
        let supers = chain.matches("super::").count();
        let mut tail = chain;
        for _ in 0..supers {
            tail = tail.trim_start_matches("super::");
        }
        if supers >= depth && depth > 0 {
            found.push(ident(tail));
        }
    }
    found.retain(|m| modules.contains(m));
    found
}

fn module_edges() -> Edges {
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(&root).ok()?;
            let first = rel.components().next()?.as_os_str().to_str()?.to_owned();
            let name = first.trim_end_matches(".rs").to_owned();
            (name != "lib" && name != "bin").then_some(name)
        })
        .collect();
    let test_only = ["tests.rs", "model_tests.rs", "test_util.rs"];
    let mut edges = Edges::new();
    for file in &files {
        let rel = file.strip_prefix(&root).expect("under src");
        let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
        let top = parts[0].trim_end_matches(".rs").to_owned();
        if !modules.contains(&top) || test_only.contains(parts.last().expect("a file name")) {
            continue;
        }
        // A file's depth below the crate root: `call/mod.rs` and `fault.rs` are 1, `call/agent.rs` 2.
        let last = *parts.last().expect("a file name");
        let depth = parts.len() - usize::from(last == "mod.rs");
        let text = std::fs::read_to_string(file).expect("read source");
        let code = without_test_code(&text);
        for (n, line) in code.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") {
                continue;
            }
            for to in referenced_modules(line, depth, &modules) {
                if to != top {
                    edges.entry((top.clone(), to)).or_default().push(format!(
                        "{}:{}",
                        rel.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &Edges) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let next = |n: &String| -> Vec<&String> {
        edges
            .keys()
            .filter(|(a, _)| a == n)
            .map(|(_, b)| b)
            .collect()
    };
    struct State<'a> {
        index: BTreeMap<&'a String, usize>,
        low: BTreeMap<&'a String, usize>,
        stack: Vec<&'a String>,
        on_stack: BTreeSet<&'a String>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(n: &'a String, next: &dyn Fn(&String) -> Vec<&'a String>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(n, i);
        s.low.insert(n, i);
        s.stack.push(n);
        s.on_stack.insert(n);
        for m in next(n) {
            if !s.index.contains_key(m) {
                visit(m, next, s);
                let low = s.low[n].min(s.low[m]);
                s.low.insert(n, low);
            } else if s.on_stack.contains(m) {
                let low = s.low[n].min(s.index[m]);
                s.low.insert(n, low);
            }
        }
        if s.low[n] == s.index[n] {
            let mut component = BTreeSet::new();
            while let Some(m) = s.stack.pop() {
                s.on_stack.remove(m);
                component.insert(m.clone());
                if m == n {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for n in nodes {
        if !state.index.contains_key(n) {
            visit(n, &next, &mut state);
        }
    }
    state.out
}

#[test]
fn top_level_modules_have_no_import_cycle_beyond_the_known_edges_being_cut() {
    let edges = module_edges();
    let known: BTreeSet<(String, String)> = KNOWN_CYCLE_EDGES
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    for edge in &known {
        assert!(
            edges.contains_key(edge),
            "{} -> {} is gone: take it off KNOWN_CYCLE_EDGES",
            edge.0,
            edge.1
        );
    }
    let remaining: Edges = edges
        .iter()
        .filter(|(e, _)| !known.contains(*e))
        .map(|(e, at)| (e.clone(), at.clone()))
        .collect();
    let found = cycles(&remaining);
    let mut report = String::new();
    for component in &found {
        report.push_str(&format!("cycle among {component:?}:\n"));
        for ((a, b), at) in &remaining {
            if component.contains(a) && component.contains(b) {
                report.push_str(&format!("  {a} -> {b}: {}\n", at.join(", ")));
            }
        }
    }
    eprintln!(
        "{} module edges, {} known cycle edges being cut, {} cycles otherwise",
        edges.len(),
        known.len(),
        found.len()
    );
    assert!(
        found.is_empty(),
        "import cycles between top-level modules:\n{report}"
    );
}

#[test]
fn the_reader_sees_grouped_uses_and_super_chains_and_skips_test_code() {
    let modules: BTreeSet<String> = ["config", "store", "agent"].map(String::from).into();
    assert_eq!(
        referenced_modules("use crate::{config::X, store};", 2, &modules),
        ["config", "store"]
    );
    assert_eq!(
        referenced_modules("let a = super::super::agent::f();", 2, &modules),
        ["agent"]
    );
    assert!(referenced_modules("use super::agent;", 2, &modules).is_empty());
    let code = without_test_code(
        "use crate::a;\n#[cfg(test)]\nmod tests {\n fn f() { crate::b(); }\n}\nuse crate::c;",
    );
    assert!(code.contains("crate::a") && code.contains("crate::c") && !code.contains("crate::b"));
    let mut e = Edges::new();
    e.insert(("a".into(), "b".into()), vec![]);
    e.insert(("b".into(), "a".into()), vec![]);
    e.insert(("b".into(), "c".into()), vec![]);
    assert_eq!(cycles(&e).len(), 1);
    e.remove(&("b".into(), "a".into()));
    assert!(cycles(&e).is_empty());
}
