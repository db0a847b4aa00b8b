//! Records the git commit the binary is built from, for `--version` and the
//! `cafe_build_info` metric.
use std::process::Command;

fn main() {
    let commit = std::env::var("CAFE_GIT_COMMIT").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown".into())
    });
    // --no-optional-locks: a plain `git status` rewrites the index when it
    // refreshes stat data (always, in a fresh clone), which is what the line
    // `rerun-if-changed=../.git/index` watches: the next cargo call would run
    // this script again and rebuild the daemon for nothing.
    let dirty = Command::new("git")
        .args(["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    let commit = if dirty && commit != "unknown" { format!("{commit}-dirty") } else { commit };
    println!("cargo:rustc-env=CAFE_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=CAFE_GIT_COMMIT");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/index");
}
