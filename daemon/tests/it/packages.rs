//! The packages that `scripts/package.sh` builds hold what an EC2 host
//! needs, in the right places; the packaged binary runs; and their
//! maintainer scripts do what an operator expects of a service package on
//! install, upgrade, removal and purge. Needs the packages in
//! `target/packages/` (and `dpkg`, `dpkg-deb` and `rpm`, from Debian):
//! `scripts/test.sh` builds them and then runs this with `--ignored`.
//!
//! The maintainer scripts run for real, through `dpkg --root` and
//! `rpm --root`, in a scratch root: a shell, and in place of systemd's
//! tools, stand-ins that record each call (`systemctl`, and Debian's
//! `deb-systemd-helper` and `deb-systemd-invoke`). `/run/systemd/system`
//! exists there, so the scripts act as on a host booted with systemd.

use std::path::{Path, PathBuf};

use super::*;

/// The daemon's package.
const DAEMON_FILES: &[&str] = &[
    "/usr/bin/cafe-streamd",
    "/usr/lib/systemd/system/cafe-streamd.service",
    "/etc/cafe-stream/cafe-streamd.toml",
    "/usr/share/cafe-stream/dashboards/cafe-stream.json",
    "/usr/share/cafe-stream/dashboards/cafe-stream.rules.yml",
    "/usr/share/cafe-stream/iam/cafe-streamd-run.json",
    "/usr/share/cafe-stream/iam/cafe-streamd-provision.json",
    "/usr/share/doc/cafe-stream/README.md",
    "/usr/share/doc/cafe-stream/docs/operations.md",
    "/usr/share/doc/cafe-stream/docs/configuration.md",
];

/// The load harness's package.
const LOADGEN_FILES: &[&str] = &[
    "/usr/bin/cafe-loadgen",
    "/usr/share/cafe-stream/scenarios/cold-start.toml",
    "/usr/share/cafe-stream/scenarios/morning-rush.toml",
    "/usr/share/cafe-stream/scenarios/menu-sync.toml",
    "/usr/share/cafe-stream/scenarios/chaos/kill-instances.toml",
    "/usr/share/cafe-stream/scenarios/chaos/throttle-dynamodb.toml",
];

/// The package file of `name` (`cafe-stream` or `cafe-stream-loadgen`)
/// with extension `ext`.
fn package(name: &str, ext: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/packages");
    let entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/package.sh first", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries
        .iter()
        .find(|p| {
            let file = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            // cafe-stream_0.1.0-1_amd64.deb, cafe-stream-0.1.0-1.x86_64.rpm;
            // the loadgen's start cafe-stream-loadgen.
            let rest = file.strip_prefix(name).unwrap_or("");
            p.extension().is_some_and(|x| x == ext)
                && rest.starts_with(['_', '-'])
                && rest[1..].starts_with(|c: char| c.is_ascii_digit())
        })
        .cloned()
        .unwrap_or_else(|| panic!("no {name} .{ext} in {}: {entries:?}", dir.display()))
}

fn run(cmd: &str, args: &[&str], file: &Path) -> String {
    let out = Command::new(cmd).args(args).arg(file).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs scripts/package.sh; scripts/test.sh runs it"]
fn the_debs_hold_everything_and_the_daemons_binary_runs() {
    let deb = package("cafe-stream", "deb");
    let list = run("dpkg-deb", &["-c"], &deb);
    for f in DAEMON_FILES {
        assert!(list.contains(&format!(".{f}")), "{f} missing from the .deb:\n{list}");
    }
    for f in LOADGEN_FILES {
        assert!(!list.contains(&format!(".{f}")), "{f} is in the daemon's .deb: production hosts carry only the daemon");
    }
    assert!(list.contains("-rwxr-xr-x") && list.contains("./usr/bin/cafe-streamd"));
    let fields = run("dpkg-deb", &["-f"], &deb);
    assert!(fields.contains("Package: cafe-stream\n") && fields.contains("Version: 0.1.0"), "{fields}");
    let loadgen = run("dpkg-deb", &["-c"], &package("cafe-stream-loadgen", "deb"));
    for f in LOADGEN_FILES {
        assert!(loadgen.contains(&format!(".{f}")), "{f} missing from the loadgen's .deb:\n{loadgen}");
    }
    assert!(!loadgen.contains("cafe-streamd"), "{loadgen}");
    let dir = std::env::temp_dir().join(format!("cafe-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let ctrl = Command::new("dpkg-deb").arg("-e").arg(&deb).arg(dir.join("DEBIAN")).status().expect("dpkg-deb -e");
    assert!(ctrl.success());
    let conffiles = std::fs::read_to_string(dir.join("DEBIAN/conffiles")).expect("conffiles");
    assert!(conffiles.contains("/etc/cafe-stream/cafe-streamd.toml"), "the config survives upgrades: {conffiles}");
    for script in ["postinst", "prerm", "postrm"] {
        assert!(dir.join("DEBIAN").join(script).is_file(), "no {script} in the .deb");
    }
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
fn the_rpms_hold_everything() {
    let rpm = package("cafe-stream", "rpm");
    let list = run("rpm", &["-qlp"], &rpm);
    for f in DAEMON_FILES {
        assert!(list.lines().any(|l| l == *f), "{f} missing from the .rpm:\n{list}");
    }
    assert!(!list.contains("cafe-loadgen") && !list.contains("/scenarios/"), "{list}");
    let config = run("rpm", &["-qcp"], &rpm);
    assert!(config.contains("/etc/cafe-stream/cafe-streamd.toml"), "{config}");
    let name = run("rpm", &["-qp", "--queryformat", "%{NAME} %{VERSION} %{ARCH}"], &rpm);
    assert_eq!(name, "cafe-stream 0.1.0 x86_64");
    let modes = run("rpm", &["-qp", "--queryformat", "[%{FILEMODES:perms} %{FILENAMES}\n]"], &rpm);
    assert!(modes.lines().any(|l| l == "-rwxr-xr-x /usr/bin/cafe-streamd"), "{modes}");
    let loadgen = package("cafe-stream-loadgen", "rpm");
    let list = run("rpm", &["-qlp"], &loadgen);
    for f in LOADGEN_FILES {
        assert!(list.lines().any(|l| l == *f), "{f} missing from the loadgen's .rpm:\n{list}");
    }
}

/// A scratch root where maintainer scripts can run: `/bin/sh` (the host's
/// dash and the libraries it loads), stand-ins for systemd's tools that
/// append each call to `/calls.log`, and `/run/systemd/system`.
fn scratch_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("cafe-{name}-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "usr/bin", "run/systemd/system", "dev", "tmp", "etc", "var/lib"] {
        std::fs::create_dir_all(root.join(d)).expect("dir");
    }
    let dash = std::fs::canonicalize("/bin/sh").expect("/bin/sh");
    let copy_in = |from: &Path, to: &str| {
        let dest = root.join(to.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("dir");
        std::fs::copy(from, &dest).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    };
    copy_in(&dash, "/bin/sh");
    // Every library the shell loads, where the loader looks for it.
    let ldd = Command::new("ldd").arg(&dash).output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            copy_in(Path::new(path), path);
        }
    }
    // A stand-in records its name and arguments. deb-systemd-helper answers
    // like the real one on a host where the unit was never enabled.
    let stand_in = |name: &str, body: &str| {
        let p = root.join("usr/bin").join(name);
        std::fs::write(&p, format!("#!/bin/sh\necho \"{name} $*\" >> /calls.log\n{body}")).expect("write");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    };
    stand_in("systemctl", "exit 0\n");
    stand_in("deb-systemd-invoke", "exit 0\n");
    stand_in("deb-systemd-helper", "case \"$*\" in *was-enabled*) exit 1 ;; esac\nexit 0\n");
    root
}

fn calls(root: &Path) -> String {
    let log = root.join("calls.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    text
}

/// As root, or as root of a user namespace of our own (`unshare -r`), which
/// chroot needs.
fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("unshare");
        c.args(["--map-root-user", program]);
        c
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn ok(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs scripts/package.sh; scripts/test.sh runs it"]
fn the_debs_scripts_reload_systemd_restart_on_upgrade_and_stop_on_removal() {
    let deb = package("cafe-stream", "deb");
    let root = scratch_root("deb");
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).expect("dir");
    }
    std::fs::write(admin.join("status"), "").expect("status");
    std::fs::write(admin.join("available"), "").expect("available");
    let dpkg = |args: &[&str]| {
        let mut c = as_root("dpkg");
        // The scratch root has no libc6 package: its dependency is not
        // checked; nothing else is forced.
        c.arg(format!("--root={}", root.display())).args(["--force-depends", "--force-confold", "--log=/dev/null"]).args(args);
        c
    };
    let unit = "cafe-streamd.service";

    ok(dpkg(&["-i", &deb.display().to_string()]), "dpkg -i");
    let installed = calls(&root);
    eprintln!("dpkg -i:\n{installed}");
    assert!(installed.contains("systemctl --system daemon-reload"), "install reloads systemd:\n{installed}");
    assert!(!installed.contains(&format!("enable {unit}")), "install does not enable the service:\n{installed}");
    assert!(!installed.contains("deb-systemd-invoke start"), "install does not start the service:\n{installed}");
    assert!(root.join("usr/lib/systemd/system").join(unit).is_file());

    // An operator's edit of the config survives the upgrade.
    let conf = root.join("etc/cafe-stream/cafe-streamd.toml");
    let edited = format!("{}\n# edited on this host\n", std::fs::read_to_string(&conf).expect("conf"));
    std::fs::write(&conf, &edited).expect("edit");
    ok(dpkg(&["-i", &deb.display().to_string()]), "dpkg -i (upgrade)");
    let upgraded = calls(&root);
    eprintln!("dpkg -i (upgrade):\n{upgraded}");
    assert!(upgraded.contains("systemctl --system daemon-reload"), "{upgraded}");
    assert!(
        upgraded.contains(&format!("deb-systemd-invoke try-restart {unit}")),
        "an upgrade restarts a running service:\n{upgraded}"
    );
    assert!(!upgraded.contains(&format!("deb-systemd-invoke stop {unit}")), "an upgrade does not stop it first:\n{upgraded}");
    assert_eq!(std::fs::read_to_string(&conf).expect("conf"), edited);

    ok(dpkg(&["-r", "cafe-stream"]), "dpkg -r");
    let removed = calls(&root);
    assert!(removed.contains(&format!("deb-systemd-invoke stop {unit}")), "removal stops the service:\n{removed}");
    assert!(removed.contains(&format!("deb-systemd-helper mask {unit}")), "removal disables it (masked):\n{removed}");
    assert!(removed.contains("systemctl --system daemon-reload"), "{removed}");
    assert!(!root.join("usr/bin/cafe-streamd").exists());
    assert!(conf.is_file(), "removal keeps the config");

    ok(dpkg(&["-P", "cafe-stream"]), "dpkg -P");
    let purged = calls(&root);
    assert!(purged.contains(&format!("deb-systemd-helper purge {unit}")), "purge removes its symlinks:\n{purged}");
    assert!(!conf.exists(), "purge removes the config");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
#[ignore = "needs scripts/package.sh; scripts/test.sh runs it"]
fn the_rpms_scripts_reload_systemd_restart_on_upgrade_and_stop_on_removal() {
    let rpm = package("cafe-stream", "rpm");
    let root = scratch_root("rpm");
    let rpm_cmd = |args: &[&str]| {
        let mut c = as_root("rpm");
        c.arg("--root").arg(&root).args(args);
        c
    };
    let unit = "cafe-streamd.service";
    ok(rpm_cmd(&["--initdb"]), "rpm --initdb");
    let file = rpm.display().to_string();
    ok(rpm_cmd(&["-i", "--nodeps", "--nosignature", &file]), "rpm -i");
    let installed = calls(&root);
    assert!(installed.contains("systemctl daemon-reload"), "install reloads systemd:\n{installed}");
    assert!(
        installed.contains(&format!("systemctl --no-reload preset {unit}")),
        "the distribution's preset decides:\n{installed}"
    );
    assert!(!installed.contains("try-restart") && !installed.contains("disable"), "{installed}");

    ok(rpm_cmd(&["-U", "--replacepkgs", "--nodeps", "--nosignature", &file]), "rpm -U");
    let upgraded = calls(&root);
    eprintln!("rpm -U:\n{upgraded}");
    assert!(upgraded.contains(&format!("systemctl try-restart {unit}")), "an upgrade restarts a running service:\n{upgraded}");
    assert!(!upgraded.contains("disable"), "an upgrade does not disable it:\n{upgraded}");

    ok(rpm_cmd(&["-e", "--nodeps", "cafe-stream"]), "rpm -e");
    let removed = calls(&root);
    assert!(removed.contains(&format!("systemctl --no-reload disable --now {unit}")), "removal stops and disables:\n{removed}");
    assert!(!removed.contains("try-restart"), "{removed}");
    assert!(!root.join("usr/bin/cafe-streamd").exists());
    let _ = std::fs::remove_dir_all(&root);
}
