//! The .deb and .rpm that `scripts/package.sh` builds hold what an EC2 host
//! needs, in the right places, and the packaged binary runs. Needs the
//! packages in `target/packages/` (and `dpkg-deb` and `rpm`, from Debian):
//! `scripts/test.sh` builds them and then runs this with `--ignored`.

use std::path::Path;

use super::*;

const FILES: &[&str] = &[
    "/usr/bin/cafe-streamd",
    "/usr/bin/cafe-loadgen",
    "/usr/lib/systemd/system/cafe-streamd.service",
    "/etc/cafe-stream/cafe-streamd.toml",
    "/usr/share/cafe-stream/dashboards/cafe-stream.json",
    "/usr/share/cafe-stream/dashboards/cafe-stream.rules.yml",
    "/usr/share/cafe-stream/scenarios/cold-start.toml",
    "/usr/share/cafe-stream/scenarios/morning-rush.toml",
    "/usr/share/cafe-stream/scenarios/menu-sync.toml",
    "/usr/share/cafe-stream/scenarios/chaos/kill-instances.toml",
    "/usr/share/cafe-stream/scenarios/chaos/throttle-dynamodb.toml",
    "/usr/share/cafe-stream/iam/cafe-streamd-run.json",
    "/usr/share/cafe-stream/iam/cafe-streamd-provision.json",
    "/usr/share/doc/cafe-stream/README.md",
];

fn package(ext: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/packages");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/package.sh first", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == ext))
        .unwrap_or_else(|| panic!("no .{ext} in {}", dir.display()))
}

fn run(cmd: &str, args: &[&str], file: &Path) -> String {
    let out = Command::new(cmd).args(args).arg(file).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs scripts/package.sh; scripts/test.sh runs it"]
fn the_deb_holds_everything_and_its_binary_runs() {
    let deb = package("deb");
    let list = run("dpkg-deb", &["-c"], &deb);
    for f in FILES {
        assert!(list.contains(&format!(".{f}")), "{f} missing from the .deb:\n{list}");
    }
    assert!(list.contains("-rwxr-xr-x") && list.contains("./usr/bin/cafe-streamd"));
    let fields = run("dpkg-deb", &["-f"], &deb);
    assert!(fields.contains("Package: cafe-stream") && fields.contains("Version: 0.1.0"), "{fields}");
    let dir = std::env::temp_dir().join(format!("cafe-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let ctrl = Command::new("dpkg-deb").arg("-e").arg(&deb).arg(dir.join("DEBIAN")).status().expect("dpkg-deb -e");
    assert!(ctrl.success());
    let conffiles = std::fs::read_to_string(dir.join("DEBIAN/conffiles")).expect("conffiles");
    assert!(conffiles.contains("/etc/cafe-stream/cafe-streamd.toml"), "the config survives upgrades: {conffiles}");
    let x = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir).status().expect("dpkg-deb -x");
    assert!(x.success());
    let bin = dir.join("usr/bin/cafe-streamd");
    let version = Command::new(&bin).arg("--version").output().expect("packaged binary");
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.starts_with("cafe-streamd 0.1.0 (commit "), "{version}");
    let valid = Command::new(&bin)
        .args(["validate", "--config"])
        .arg(dir.join("etc/cafe-stream/cafe-streamd.toml"))
        .output()
        .expect("validate");
    assert!(valid.status.success(), "the packaged example config is valid: {}", String::from_utf8_lossy(&valid.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs scripts/package.sh; scripts/test.sh runs it"]
fn the_rpm_holds_everything() {
    let rpm = package("rpm");
    let list = run("rpm", &["-qlp"], &rpm);
    for f in FILES {
        assert!(list.lines().any(|l| l == *f), "{f} missing from the .rpm:\n{list}");
    }
    let config = run("rpm", &["-qcp"], &rpm);
    assert!(config.contains("/etc/cafe-stream/cafe-streamd.toml"), "{config}");
    let name = run("rpm", &["-qp", "--queryformat", "%{NAME} %{VERSION} %{ARCH}"], &rpm);
    assert_eq!(name, "cafe-stream 0.1.0 x86_64");
    let modes = run("rpm", &["-qp", "--queryformat", "[%{FILEMODES:perms} %{FILENAMES}\n]"], &rpm);
    assert!(modes.lines().any(|l| l == "-rwxr-xr-x /usr/bin/cafe-streamd"), "{modes}");
}
