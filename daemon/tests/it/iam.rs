//! The shipped IAM policy allows every AWS operation the daemon's code
//! calls and nothing more.
//!
//! The operations are found in the source: every `.name()` call in
//! `daemon/src` whose name is an operation of the AWS SDK crates the daemon
//! uses (their `src/operation/` folders, found through `cargo metadata`).
//! `run` is all code but `provision.rs`; `provision` is `provision.rs` and
//! the Data API transport it creates the Redshift table through.

use std::collections::BTreeSet;
use std::path::Path;

use daemon::iam::{OPERATIONS, Purpose, actions, policy};

use super::*;

fn sdk_operations() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata json");
    let mut ops = BTreeSet::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().unwrap_or("");
        if !["aws-sdk-sqs", "aws-sdk-dynamodb", "aws-sdk-kinesis", "aws-sdk-redshiftdata"].contains(&name) {
            continue;
        }
        let dir = Path::new(p["manifest_path"].as_str().expect("manifest")).parent().expect("dir").join("src/operation");
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.expect("entry");
            if e.path().is_dir() {
                ops.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    assert!(ops.contains("receive_message") && ops.contains("transact_write_items") && ops.contains("get_records"));
    ops
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// SDK operations called in `files` (`.op()` followed by a builder call).
fn called(files: &[std::path::PathBuf], sdk: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("source");
        for (i, _) in text.match_indices("()") {
            let before = &text[..i];
            let start = before.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |k| k + 1);
            let name = &before[start..];
            if start > 0 && before.as_bytes()[start - 1] == b'.' && sdk.contains(name) {
                found.insert(name.to_owned());
            }
        }
    }
    found
}

fn required(ops: &BTreeSet<String>) -> BTreeSet<String> {
    ops.iter()
        .flat_map(|op| {
            let (_, acts) = OPERATIONS
                .iter()
                .find(|(name, _)| name == op)
                .unwrap_or_else(|| panic!("the daemon calls {op} but daemon::iam::OPERATIONS has no IAM action for it"));
            acts.iter().map(|a| (*a).to_owned())
        })
        .collect()
}

#[test]
fn the_policy_allows_exactly_what_the_code_calls() {
    let sdk = sdk_operations();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    rust_files(&src, &mut all);
    let provision_files: Vec<_> =
        all.iter().filter(|p| p.ends_with("provision.rs") || p.ends_with("sinks/redshift/data_api.rs")).cloned().collect();
    let run_files: Vec<_> = all.iter().filter(|p| !p.ends_with("provision.rs")).cloned().collect();

    // Every feature on, so every statement is in the policy.
    let mut config = daemon::config::Config::default();
    config.sinks.redshift.enabled = true;
    config.sinks.redshift.transport = daemon::sinks::redshift::config::TransportKind::DataApi;
    config.sinks.redshift.cluster_identifier = "analytics".into();
    config.sinks.redshift.database = "dev".into();
    config.sinks.redshift.db_user = "cafe".into();
    // Allowed without an SDK call of their own: the Data API uses them on the caller's behalf.
    let implicit: BTreeSet<String> = ["redshift:GetClusterCredentials".to_owned()].into();

    for (purpose, files) in [(Purpose::Run, &run_files), (Purpose::Provision, &provision_files)] {
        let ops = called(files, &sdk);
        let need = required(&ops);
        let allowed: BTreeSet<String> = actions(&policy(&config, purpose, "eu-west-1", "123456789012")).into_iter().collect();
        let missing: Vec<_> = need.difference(&allowed).collect();
        assert!(missing.is_empty(), "{purpose:?}: the code calls {ops:?}; the policy lacks {missing:?}");
        let extra: Vec<_> = allowed.difference(&need).filter(|a| !implicit.contains(*a)).collect();
        assert!(extra.is_empty(), "{purpose:?}: the policy allows {extra:?}, which no code calls");
    }
    let run_ops = called(&run_files, &sdk);
    assert!(!run_ops.contains("create_table"), "run code must not create tables: {run_ops:?}");
}

#[test]
fn the_shipped_policies_are_the_generated_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/iam");
    for (file, args) in
        [("cafe-streamd-run.json", &["iam-policy"][..]), ("cafe-streamd-provision.json", &["iam-policy", "--provision"][..])]
    {
        // The defaults, whatever this machine's /etc/cafe-stream holds.
        let out = Command::new(BIN)
            .args(args)
            .args(["--config", "/dev/null"])
            .env_remove("CAFE_SINKS__REDSHIFT__ENABLED")
            .output()
            .expect("iam-policy");
        assert!(out.status.success());
        let shipped = std::fs::read_to_string(dir.join(file)).expect("shipped policy");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            shipped,
            "{file} is stale: regenerate with `cafe-streamd iam-policy{}`",
            if args.len() > 1 { " --provision" } else { "" }
        );
    }
}
