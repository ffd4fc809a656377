//! The checkout itself, as the README uses it: what its build command puts
//! into the shipped binaries, and what its examples leave behind.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use dunningd_e2e::workspace_root;

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args(args)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Regression: `cargo build --release --workspace` (the README's build)
/// compiled the daemon with its `test-support` feature on, because the
/// end-to-end crate asked for it and cargo unifies the features of one
/// build. Test-only code now lives in a crate of its own that the daemon
/// takes only as a dev-dependency.
#[test]
fn the_readme_build_compiles_no_test_code_into_the_daemon() {
    // `-e no-dev` resolves features as `cargo build --workspace` does
    // (dev-dependencies' features are not unified into a plain build).
    let features: BTreeSet<String> = cargo(&[
        "tree",
        "--offline",
        "--workspace",
        "-e",
        "features,no-dev",
        "-i",
        "dunningd",
        "--prefix",
        "none",
    ])
    .lines()
    .filter_map(|line| line.strip_prefix("dunningd feature \""))
    .filter_map(|rest| rest.split('"').next())
    .map(String::from)
    .collect();
    assert_eq!(
        features,
        BTreeSet::from(["default".to_string()]),
        "features of dunningd in the workspace build"
    );

    // Nothing from tests/ is a (normal or build) dependency of the daemon.
    let tests_dir = workspace_root().join("tests");
    let linked = cargo(&[
        "tree",
        "--offline",
        "-p",
        "dunningd",
        "-e",
        "normal,build",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]);
    for line in linked.lines() {
        assert!(
            !line.contains(&*tests_dir.to_string_lossy()),
            "the daemon depends on test code: {line}"
        );
    }
}

/// Every path the README's tour and the example configurations write is
/// ignored by git, so following the README leaves `git status` clean.
/// Read from the files themselves: `--out FILE` in the README, `state_dir`
/// in the example configurations (relative to `examples/`).
#[test]
fn what_the_readme_writes_is_ignored_by_git() {
    let root = workspace_root();
    if !Command::new("git")
        .current_dir(&root)
        .args(["rev-parse", "--is-inside-work-tree"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("not a git checkout (or no git): .gitignore not checked");
        return;
    }
    let mut written = BTreeSet::from(["target/release/dunningd".to_string()]);
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    for (i, _) in readme.match_indices("--out ") {
        let path = readme[i + "--out ".len()..]
            .split(|c: char| c.is_whitespace() || c == '`')
            .next()
            .unwrap_or("");
        if !path.is_empty() && path != "FILE" {
            written.insert(path.to_string());
        }
    }
    for entry in std::fs::read_dir(root.join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("example config");
        for line in text.lines() {
            if let Some(dir) = line.trim().strip_prefix("state_dir:") {
                let dir = Path::new("examples").join(dir.trim());
                if dir.is_relative() {
                    // `examples/../.dunningd` → `.dunningd`
                    let normal: std::path::PathBuf = dir
                        .components()
                        .fold(Vec::new(), |mut parts, c| {
                            match c {
                                std::path::Component::ParentDir => {
                                    parts.pop();
                                }
                                other => parts.push(other),
                            }
                            parts
                        })
                        .into_iter()
                        .collect();
                    written.insert(format!("{}/admin.sock", normal.display()));
                }
            }
        }
    }
    assert!(
        written.iter().any(|p| p.ends_with(".html")) && written.len() >= 4,
        "the README and examples name what they write: {written:?}"
    );
    let not_ignored: Vec<&String> = written
        .iter()
        .filter(|path| {
            !Command::new("git")
                .current_dir(&root)
                .args(["check-ignore", "-q", "--no-index", path])
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    assert!(
        not_ignored.is_empty(),
        "written by the README's examples but not in .gitignore: {not_ignored:?}"
    );
}
