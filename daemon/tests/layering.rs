//! The layers of `daemon/src`, checked on the sources: every `crate::…`
//! path a file names must lead to its own layer or one below (see "Layers"
//! in ARCHITECTURE.md). In particular engine, store and plugin_host never
//! import daemon, state, admin or http.
//!
//! Only `crate::` paths are read (in `use` lines and inline), comment lines
//! left out: a doc link to a higher module is not an import. A module under
//! `daemon/src` that no layer names fails the test too, so that a new module
//! gets its place in the table when it is added.

use std::path::{Path, PathBuf};

/// From the bottom up; a module may import its own layer and those below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "model", "duration", "redact", "files", "systemd", "text", "yaml", "VERSION",
        ],
    ),
    ("stats", &["stats"]),
    ("store", &["store"]),
    // config names what it configures (workflow windows, the store's
    // frequency cap, the sources' settings); workflow does not import config.
    ("configuration", &["config", "workflow", "sources"]),
    ("counting and signing", &["metrics", "links"]),
    ("plugin_host", &["plugin_host"]),
    ("engine", &["engine"]),
    ("state", &["state"]),
    ("endpoints", &["admin", "http", "proto"]),
    ("wiring", &["daemon"]),
];

/// Files that are no module of one layer: the crate root declares them all.
const NOT_LAYERED: &[&str] = &["lib.rs", "bin"];

/// The layer of a top-level name of the crate.
fn layer(name: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&name))
}

/// The top-level module a file under `daemon/src` belongs to.
fn module_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    Some(first.strip_suffix(".rs").unwrap_or(first).to_string())
}

/// Every `crate::` path in `source`, as (line, first segment), comment lines
/// left out. `crate::{a::X, b}` gives `a` and `b`.
fn crate_imports(source: &str) -> Vec<(usize, String)> {
    let code: String = source
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("//") {
                ""
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let ident = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(list) = rest.strip_prefix('{') {
            // The names at the top level of the braces.
            let mut depth = 1;
            let mut expect_name = true;
            for (i, c) in list.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_name = true,
                    c if c.is_whitespace() => {}
                    _ if expect_name && depth == 1 => {
                        let name = ident(&list[i..]);
                        if !name.is_empty() {
                            let offset = at + "crate::{".len() + i;
                            found.push((line_of(offset), name));
                        }
                        expect_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.push((line_of(at), name));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// What breaks the layering in `source`, a file of `module`.
fn breaks(file: &str, module: &str, source: &str) -> Vec<String> {
    let Some(own) = layer(module) else {
        return vec![format!(
            "{file}: module '{module}' has no layer; give it one in daemon/tests/layering.rs and ARCHITECTURE.md"
        )];
    };
    let mut broken = Vec::new();
    for (line, name) in crate_imports(source) {
        match layer(&name) {
            None => broken.push(format!(
                "{file}:{line}: imports crate::{name}, which has no layer"
            )),
            Some(theirs) if theirs > own => broken.push(format!(
                "{file}:{line}: {module} ({}) imports crate::{name} ({}), a higher layer",
                LAYERS[own].0, LAYERS[theirs].0
            )),
            Some(_) => {}
        }
    }
    broken
}

#[test]
fn every_import_goes_to_the_same_layer_or_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "found only {} files under src",
        files.len()
    );
    let mut broken = Vec::new();
    for path in &files {
        let relative = path.strip_prefix(&src).expect("found under src");
        let Some(module) = module_of(relative) else {
            continue;
        };
        if NOT_LAYERED.contains(&module.as_str()) || module == "lib" {
            continue;
        }
        let source =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = format!("daemon/src/{}", relative.display());
        broken.extend(breaks(&file, &module, &source));
    }
    assert!(
        broken.is_empty(),
        "imports against the layers (engine, store and plugin_host never import daemon, state, admin or http):\n{}",
        broken.join("\n")
    );
}

#[test]
fn engine_store_and_plugin_host_sit_below_daemon_state_admin_and_http() {
    for low in ["engine", "store", "plugin_host"] {
        for high in ["daemon", "state", "admin", "http"] {
            assert!(layer(low) < layer(high), "{low} must sit below {high}");
        }
    }
    assert!(layer("metrics") < layer("state"));
    assert!(layer("plugin_host") < layer("admin"));
}

#[test]
fn imports_are_read_from_paths_not_comments() {
    for (source, want) in [
        ("use crate::state::Shared;", vec![(1, "state")]),
        (
            "use std::sync::Arc;\n\nuse crate::http::page;",
            vec![(3, "http")],
        ),
        (
            "    metrics: Option<Arc<crate::metrics::Metrics>>,",
            vec![(1, "metrics")],
        ),
        (
            "use crate::{config::X, store::{A, B},\n    daemon};",
            vec![(1, "config"), (1, "store"), (2, "daemon")],
        ),
        ("//! Served by [`crate::http::webhooks`].", vec![]),
        ("    /// See crate::daemon::run.", vec![]),
        (
            "let x = $crate::daemon::run; other_crate::daemon::run();",
            vec![],
        ),
    ] {
        let got = crate_imports(source);
        let got: Vec<(usize, &str)> = got.iter().map(|(l, n)| (*l, n.as_str())).collect();
        assert_eq!(got, want, "{source}");
    }
}

#[test]
fn an_upward_import_is_named_with_its_file_and_line() {
    for (module, source, want) in [
        (
            "engine",
            "use crate::store::Store;\nuse crate::http::webhooks::Links;",
            vec![
                "daemon/src/x.rs:2: engine (engine) imports crate::http (endpoints), a higher layer",
            ],
        ),
        (
            "plugin_host",
            "use crate::state::Shared;",
            vec![
                "daemon/src/x.rs:1: plugin_host (plugin_host) imports crate::state (state), a higher layer",
            ],
        ),
        (
            "metrics",
            "use crate::daemon::Shared;",
            vec![
                "daemon/src/x.rs:1: metrics (counting and signing) imports crate::daemon (wiring), a higher layer",
            ],
        ),
        (
            "admin",
            "use crate::state::Shared;\nuse crate::engine::Engine;",
            vec![],
        ),
        (
            "store",
            "use crate::nowhere::X;",
            vec!["daemon/src/x.rs:1: imports crate::nowhere, which has no layer"],
        ),
        (
            "newcomer",
            "",
            vec![
                "daemon/src/x.rs: module 'newcomer' has no layer; give it one in daemon/tests/layering.rs and ARCHITECTURE.md",
            ],
        ),
    ] {
        assert_eq!(breaks("daemon/src/x.rs", module, source), want, "{module}");
    }
}
