//! Tidy tests: the architecture invariants (docs/architecture.md) that a reading of the
//! source tree can check, as rust-analyzer's tidy tests do. They need no
//! stack and fail with the file and line that breaks an invariant.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    files_ending(dir, &["rs"], out);
}

/// Every file under `dir` whose extension is one of `extensions`.
fn files_ending(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files_ending(&path, extensions, out);
        } else if path.extension().is_some_and(|e| extensions.iter().any(|x| e == *x)) {
            out.push(path);
        }
    }
}

/// (path relative to the workspace, line number, code line) of every line
/// of non-test code in `crate_dir/src`: comments and `#[cfg(test)]`
/// modules (which run to the end of their file here) are left out.
fn code_lines(crate_dir: &str) -> Vec<(String, usize, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&root.join(crate_dir).join("src"), &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap_or(&f).display().to_string();
        let text = std::fs::read_to_string(&f).expect("read source");
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start();
            if t.starts_with("#[cfg(test)]") {
                break;
            }
            if t.starts_with("//") {
                continue;
            }
            out.push((rel.clone(), i + 1, line.to_owned()));
        }
    }
    out
}

fn offenders(lines: &[(String, usize, String)], needle: &str, allowed: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter(|(f, _, l)| l.contains(needle) && !allowed.iter().any(|a| f.ends_with(a)))
        .map(|(f, n, l)| format!("{f}:{n}: {}", l.trim()))
        .collect()
}

#[test]
fn only_topology_spawns_tasks_and_makes_channels() {
    let lines = code_lines("daemon");
    let mut bad = Vec::new();
    for needle in ["tokio::spawn", "spawn_blocking", "std::thread::spawn", "TaskTracker::new", "mpsc::channel"] {
        bad.extend(offenders(&lines, needle, &["daemon/src/topology.rs"]));
    }
    // A tracker handed down may be used to spawn only where topology is.
    bad.extend(offenders(&lines, "tracker.spawn", &["daemon/src/topology.rs"]));
    assert!(bad.is_empty(), "tasks or channels made outside daemon/src/topology.rs:\n{}", bad.join("\n"));
}

#[test]
fn one_cpu_pool_and_one_bridge_to_it() {
    let lines = code_lines("daemon");
    let pools = offenders(&lines, "ThreadPoolBuilder", &["daemon/src/bridge.rs"]);
    assert!(pools.is_empty(), "a rayon pool built outside the bridge:\n{}", pools.join("\n"));
    let built: Vec<_> = offenders(&lines, "CpuPool::new(", &[]);
    assert_eq!(built.len(), 1, "the CPU pool is built once (topology), found:\n{}", built.join("\n"));
    assert!(built[0].starts_with("daemon/src/topology.rs"), "{built:?}");
    // The router's decide stage, and the write stage's scoring against the
    // shared fraud state.
    let hops = offenders(&lines, "pool.run(", &["daemon/src/route/mod.rs", "daemon/src/route/apply_payments.rs"]);
    assert!(hops.is_empty(), "CPU work handed to the pool outside the router:\n{}", hops.join("\n"));
    // And what is freed on the pool (the decide stage's events, a shard's
    // durable inputs and finished cache): only the router hands it over.
    let frees = offenders(&lines, "drop_on_pool(", &["daemon/src/route/mod.rs", "daemon/src/bridge.rs"]);
    assert!(frees.is_empty(), "values handed to the pool to free outside the router:\n{}", frees.join("\n"));
    let rayon = offenders(&lines, "rayon::", &["daemon/src/bridge.rs", "daemon/src/route/decide.rs"]);
    assert!(rayon.is_empty(), "rayon used outside the bridge and the decide stage:\n{}", rayon.join("\n"));
}

#[test]
fn the_domain_crate_does_no_io() {
    let lines = code_lines("pipeline");
    let mut bad = Vec::new();
    for needle in
        ["tokio", "aws_sdk", "std::fs", "TcpStream", "TcpListener", "UdpSocket", "std::process", "reqwest", "std::thread"]
    {
        bad.extend(offenders(&lines, needle, &[]));
    }
    assert!(bad.is_empty(), "I/O in pipeline/:\n{}", bad.join("\n"));
}

#[test]
fn library_code_returns_typed_errors() {
    let mut lines = code_lines("daemon");
    lines.extend(code_lines("pipeline"));
    let bad: Vec<String> = lines
        .iter()
        .filter(|(f, _, l)| !f.ends_with("main.rs") && l.contains("-> Result<") && l.contains(", String>"))
        .map(|(f, n, l)| format!("{f}:{n}: {}", l.trim()))
        .collect();
    assert!(bad.is_empty(), "Result<_, String> in library code (use a thiserror type):\n{}", bad.join("\n"));
    // anyhow is for the commands: main, and the run and provision they start.
    let anyhow = offenders(
        &lines,
        "anyhow::",
        &["daemon/src/main.rs", "daemon/src/topology.rs", "daemon/src/provision.rs", "daemon/src/top.rs"],
    );
    assert!(anyhow.is_empty(), "anyhow in a component (return a thiserror type):\n{}", anyhow.join("\n"));
}

#[test]
fn every_module_says_what_it_owns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in ["daemon", "pipeline", "loadgen"] {
        rust_files(&root.join(krate).join("src"), &mut files);
    }
    let bad: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap_or_default().starts_with("//!"))
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert!(bad.is_empty(), "modules without a //! paragraph:\n{}", bad.join("\n"));
}

#[test]
fn sinks_take_domain_types_and_sources_never_name_a_sink_row() {
    let lines = code_lines("daemon");
    // Stages and sources speak `pipeline::decided`; nothing outside a sink's
    // folder names its private layout. (The lease table is the Kinesis
    // source's own state, written by `leases.rs` alone.)
    let bad: Vec<String> = lines
        .iter()
        .filter(|(f, _, _)| f.contains("daemon/src/sources/") || f.contains("daemon/src/route/"))
        .filter(|(f, _, _)| !f.ends_with("daemon/src/sources/kinesis/leases.rs"))
        .filter(|(_, _, l)| l.contains("AttributeValue") || l.contains("TransactWriteItem"))
        .map(|(f, n, l)| format!("{f}:{n}: {}", l.trim()))
        .collect();
    assert!(bad.is_empty(), "a source or the router builds DynamoDB writes:\n{}", bad.join("\n"));
}

#[test]
fn metrics_are_recorded_through_internal_events() {
    let lines = code_lines("daemon");
    let allowed = ["daemon/src/metrics.rs", "daemon/src/internal_events.rs"];
    let mut bad = offenders(&lines, "get_or_create(", &allowed);
    // Nor is a metric family touched directly (`metrics.some_family.set(..)`).
    for (f, n, l) in &lines {
        if allowed.iter().any(|a| f.ends_with(a)) {
            continue;
        }
        for (at, _) in l.match_indices("metrics.") {
            let rest = &l[at + "metrics.".len()..];
            let field: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            if !field.is_empty() && rest[field.len()..].starts_with('.') {
                bad.push(format!("{f}:{n}: {}", l.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "a metric recorded outside daemon/src/internal_events.rs:\n{}", bad.join("\n"));
}

#[test]
fn provision_and_iam_iterate_the_component_list() {
    // They learn every queue, stream, table and grant from `components::list`,
    // so adding an input or a sink never touches them.
    let lines: Vec<_> = code_lines("daemon")
        .into_iter()
        .filter(|(f, _, _)| f.ends_with("daemon/src/iam.rs") || f.ends_with("daemon/src/provision.rs"))
        .collect();
    assert!(!lines.is_empty(), "iam.rs and provision.rs not found");
    let mut bad = Vec::new();
    for needle in [".sources", ".sinks", ".rejected", "SqsSourceConfig", "KinesisSourceConfig", "DynamoDbSinkConfig"] {
        bad.extend(offenders(&lines, needle, &[]));
    }
    assert!(bad.is_empty(), "a component named outside its folder and components.rs:\n{}", bad.join("\n"));
}

#[test]
fn no_script_rewrites_git_s_index_for_a_status() {
    // The daemon's build script reruns when `.git/index` changes
    // (daemon/build.rs stamps the commit), and a plain `git status`
    // rewrites the index whenever it refreshes its stat data, always in a
    // fresh clone: bench.sh's did, and its release build then built the
    // daemon again and linked it once more. Every `git status` the project
    // runs is `git --no-optional-locks status`.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("daemon/build.rs"), root.join(".ci/run")];
    files_ending(&root.join("scripts"), &["sh", "py"], &mut files);
    files.sort();
    let mut bad = Vec::new();
    let mut statuses = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read script");
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_start();
            if t.starts_with('#') || t.starts_with("//") {
                continue;
            }
            // `git status`, `git -C dir status`, `["git", "status"]`, or
            // the argument list of a `Command::new("git")` (build.rs).
            let words: Vec<&str> = t.split(|c: char| !c.is_ascii_alphanumeric() && c != '-').filter(|w| !w.is_empty()).collect();
            let in_shell = words.iter().position(|w| *w == "git").is_some_and(|g| words[g..].contains(&"status"));
            let in_rust = f.extension().is_some_and(|e| e == "rs") && t.contains("\"status\"");
            let git_status = in_shell || in_rust;
            if git_status {
                statuses += 1;
                if !t.contains("--no-optional-locks") {
                    bad.push(format!("{}:{}: {}", f.strip_prefix(&root).unwrap_or(f).display(), i + 1, t));
                }
            }
        }
    }
    // bench.sh's and build.rs's at least: a test that finds none checks nothing.
    assert!(statuses >= 2, "found {statuses} `git status` calls; the scan no longer sees them");
    assert!(bad.is_empty(), "a `git status` without --no-optional-locks (it may rewrite .git/index):\n{}", bad.join("\n"));
}
