//! The tidy test (rust-analyzer's habit): the architecture's rules, checked
//! on the source tree itself by `cargo test`, so they stay true without
//! anyone remembering them. Each rule is an "Architecture Invariant" line of
//! `docs/ARCHITECTURE.md`.
//!
//! - `xencode-protocol` depends on no workspace crate;
//! - nothing depends on `xencode-node` (`fuzz/`, outside the workspace, only
//!   through its `fuzzing` feature and without its `server` feature);
//! - `xencode-analysis` depends on no workspace crate but the protocol, and
//!   nothing it builds pulls in libp2p, redb or axum (read from `Cargo.lock`);
//! - every module has a `//!` doc;
//! - no `todo!` or `unimplemented!` outside tests;
//! - the code map in `docs/ARCHITECTURE.md` names every top-level module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the repository")
        .to_path_buf()
}

/// The workspace's member directories, from the root manifest.
fn members() -> Vec<String> {
    let manifest: toml::Table = read(&root().join("Cargo.toml"))
        .parse()
        .expect("Cargo.toml parses");
    manifest["workspace"]["members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A crate's package name and every dependency it names (normal, dev and
/// build), with the table each came from.
fn dependencies(dir: &Path) -> (String, Vec<(String, toml::Value)>) {
    let manifest: toml::Table = read(&dir.join("Cargo.toml"))
        .parse()
        .unwrap_or_else(|e| panic!("{}/Cargo.toml: {e}", dir.display()));
    let name = manifest["package"]["name"]
        .as_str()
        .expect("package name")
        .to_owned();
    let mut deps = Vec::new();
    for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(t) = manifest.get(table).and_then(|t| t.as_table()) {
            deps.extend(t.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    (name, deps)
}

#[test]
fn protocol_depends_on_no_workspace_crate() {
    let (_, deps) = dependencies(&root().join("protocol"));
    let inner: Vec<&String> = deps
        .iter()
        .map(|(d, _)| d)
        .filter(|d| d.starts_with("xencode-"))
        .collect();
    assert!(inner.is_empty(), "xencode-protocol depends on {inner:?}");
}

#[test]
fn nothing_depends_on_the_node() {
    for member in members() {
        let (name, deps) = dependencies(&root().join(&member));
        assert!(
            name == "xencode-node" || deps.iter().all(|(d, _)| d != "xencode-node"),
            "{name} depends on xencode-node"
        );
    }
    // The fuzz crate may, for the entry points only, and without the
    // server (API, dashboard, analysis, CLI) it does not fuzz.
    let (_, deps) = dependencies(&root().join("fuzz"));
    for (d, spec) in deps {
        if d == "xencode-node" {
            let features = spec.get("features").and_then(|f| f.as_array());
            assert!(
                features.is_some_and(|f| f.iter().any(|x| x.as_str() == Some("fuzzing"))),
                "fuzz/ depends on xencode-node without its `fuzzing` feature"
            );
            assert_eq!(
                spec.get("default-features").and_then(|f| f.as_bool()),
                Some(false),
                "fuzz/ builds xencode-node with its server (default-features = false)"
            );
        }
    }
}

/// Every package `Cargo.lock` says `name` depends on, transitively.
fn closure(name: &str) -> BTreeSet<String> {
    let lock: toml::Table = read(&root().join("Cargo.lock"))
        .parse()
        .expect("Cargo.lock parses");
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for p in lock["package"].as_array().expect("packages") {
        let pname = p["name"].as_str().expect("name").to_owned();
        let deps: Vec<String> = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|d| {
                d.iter()
                    .filter_map(|x| x.as_str())
                    // "name version (source)" when several versions exist.
                    .filter_map(|x| x.split(' ').next())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        graph.entry(pname).or_default().extend(deps);
    }
    let mut seen = BTreeSet::new();
    let mut stack = vec![name.to_owned()];
    while let Some(n) = stack.pop() {
        if seen.insert(n.clone())
            && let Some(next) = graph.get(&n)
        {
            stack.extend(next.iter().cloned());
        }
    }
    seen
}

#[test]
fn analysis_pulls_in_no_store_network_or_http_server() {
    let (_, deps) = dependencies(&root().join("analysis"));
    let inner: Vec<&String> = deps
        .iter()
        .map(|(d, _)| d)
        .filter(|d| d.starts_with("xencode-") && *d != "xencode-protocol")
        .collect();
    assert!(inner.is_empty(), "xencode-analysis depends on {inner:?}");
    // Cargo.lock lists dev-dependencies too: what it says is an upper bound
    // of what `cargo build -p xencode-analysis` compiles.
    let all = closure("xencode-analysis");
    assert!(all.contains("tree-sitter"), "the closure was read: {all:?}");
    for banned in ["libp2p", "redb", "axum", "xencode-node"] {
        assert!(!all.contains(banned), "xencode-analysis pulls in {banned}");
    }
}

/// Every `.rs` file under the members' `src/` directories.
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for member in members() {
        walk(&root().join(member).join("src"), &mut out);
    }
    out.sort();
    assert!(out.len() > 50, "the sources were found: {}", out.len());
    out
}

/// A test file: `tests.rs`, or inside a `tests/` directory.
fn is_test_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "tests.rs")
        || path.components().any(|c| c.as_os_str() == "tests")
}

#[test]
fn every_module_has_a_doc_comment() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|p| {
            let text = read(p);
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("#!["));
            !first.is_some_and(|l| l.starts_with("//!"))
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a `//!` doc:\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_todo_or_unimplemented_outside_tests() {
    // Spelled in pieces so this file does not match itself.
    let banned = [concat!("todo", "!("), concat!("unimplemented", "!(")];
    let mut found = Vec::new();
    for p in sources().into_iter().filter(|p| !is_test_file(p)) {
        let text = read(&p);
        // Inline test modules come last in a file, by this project's style.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, line) in code.lines().enumerate() {
            if banned.iter().any(|b| line.contains(b)) && !line.trim_start().starts_with("//") {
                found.push(format!("{}:{}: {}", p.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_code_map_names_every_top_level_module() {
    let map = read(&root().join("docs/ARCHITECTURE.md"));
    let mut missing = Vec::new();
    for member in members() {
        let src = root().join(&member).join("src");
        let Ok(entries) = std::fs::read_dir(&src) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            let Some(stem) = p.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let module =
                p.extension().is_some_and(|x| x == "rs") && !matches!(stem, "lib" | "main");
            if module && !map.contains(&format!("{member}/src/{stem}")) {
                missing.push(format!("{member}/src/{stem}.rs"));
            }
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md's code map does not name:\n{}",
        missing.join("\n")
    );
}

/// The licence `Cargo.toml` declares is the one the repository ships, and no
/// placeholder repository URL is published with the crates.
#[test]
fn the_declared_licence_files_exist_and_no_placeholder_url_is_published() {
    let manifest: toml::Value =
        toml::from_str(&read(&root().join("Cargo.toml"))).expect("Cargo.toml parses");
    let package = &manifest["workspace"]["package"];
    assert_eq!(package["license"].as_str(), Some("MIT OR Apache-2.0"));
    for (file, needle) in [
        (
            "LICENSE-MIT",
            "Permission is hereby granted, free of charge",
        ),
        (
            "LICENSE-APACHE",
            "Apache License\n                        Version 2.0",
        ),
    ] {
        assert!(read(&root().join(file)).contains(needle), "{file}");
    }
    let url = package.get("repository").and_then(toml::Value::as_str);
    assert!(
        url.is_none_or(|u| !u.contains("example.")),
        "a placeholder repository URL: {url:?}"
    );
}
