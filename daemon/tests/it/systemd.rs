//! The systemd notify protocol against a socket the test owns: the real
//! daemon, started as systemd would start it (`NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`), says READY=1 once consuming, WATCHDOG=1 at half the
//! watchdog time, and STOPPING=1 when SIGTERM starts the drain.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

use super::*;

fn recv_until(socket: &UnixDatagram, within: Duration, mut want: impl FnMut(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(len) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
            let done = want(&msg);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("not received within {within:?}; saw {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_speaks_the_notify_protocol() {
    let dir = std::env::temp_dir().join(format!("cafe-it-notify-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let env_vars =
        vec![("NOTIFY_SOCKET".to_owned(), path.display().to_string()), ("WATCHDOG_USEC".to_owned(), "400000".to_owned())];
    let mut env = Env::with_orders("notify", "shards = 1", "", env_vars).await;
    env.start();
    let started = Instant::now();
    let seen = recv_until(&socket, Duration::from_secs(30), |m| m.starts_with("READY=1"));
    let ready = seen.last().expect("ready");
    assert!(ready.contains("\nSTATUS=consuming ") && ready.contains("-pay.fifo"), "{ready}");
    assert!(seen.iter().all(|m| !m.contains("WATCHDOG=1")), "no watchdog ping before READY: {seen:?}");
    // Pings at half of 400 ms: at least 4 in 1.2 s.
    let pings_from = Instant::now();
    let mut pings = 0;
    recv_until(&socket, Duration::from_secs(5), |m| {
        pings += usize::from(m == "WATCHDOG=1");
        pings >= 4
    });
    assert!(pings_from.elapsed() < Duration::from_millis(1500), "pings too slow: {:?}", pings_from.elapsed());
    let (status, _) = {
        let mut child = env.daemon.take().expect("daemon");
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
        let stopping = recv_until(&socket, Duration::from_secs(10), |m| m.starts_with("STOPPING=1"));
        assert!(stopping.last().is_some_and(|m| m.contains("STATUS=draining")), "{stopping:?}");
        // The drain extends systemd's stop timeout past the grace period
        // (20 s here) and its margin, whatever TimeoutStopSec says.
        assert!(stopping.last().is_some_and(|m| m.contains("\nEXTEND_TIMEOUT_USEC=35000000")), "{stopping:?}");
        (child.wait().expect("wait"), ())
    };
    assert!(status.success(), "{}", env.log());
    assert!(started.elapsed() < Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped unit passes `systemd-analyze verify` and scores at most 2.0
/// ("OK") in `systemd-analyze security`, run on a copy whose binary path
/// points at the binary under test (verify checks that it exists).
#[test]
fn the_unit_file_verifies_and_is_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/cafe-streamd.service");
    let text = std::fs::read_to_string(&unit).expect("unit file");
    for must in [
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/usr/bin/cafe-streamd validate",
        "EnvironmentFile=",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID\n",
        "RestartPreventExitStatus=2\n",
        "RestrictAddressFamilies=",
    ] {
        assert!(text.contains(must), "the unit lacks {must:?}");
    }
    let stop: u64 =
        text.lines().find_map(|l| l.strip_prefix("TimeoutStopSec=")).and_then(|v| v.parse().ok()).expect("TimeoutStopSec");
    assert!(stop > 30, "TimeoutStopSec must exceed the default grace period of 30 s");
    let dir = std::env::temp_dir().join(format!("cafe-it-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let copy = dir.join("cafe-streamd.service");
    std::fs::write(&copy, text.replace("/usr/bin/cafe-streamd", BIN)).expect("write copy");
    let analyze = |args: &[&str]| {
        Command::new("systemd-analyze")
            .args(args)
            .arg(&copy)
            .output()
            .expect("systemd-analyze (Debian package systemd) must be installed")
    };
    let verify = analyze(&["verify"]);
    assert!(verify.status.success() && verify.stderr.is_empty(), "verify: {}", String::from_utf8_lossy(&verify.stderr));
    let security = analyze(&["security", "--offline=yes", "--no-pager"]);
    let out = String::from_utf8_lossy(&security.stdout);
    let score: f64 = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for cafe-streamd.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no score in: {out}"));
    assert!(score <= 2.0, "exposure {score} is above 2.0:\n{out}");
    println!("systemd-analyze security: exposure {score}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits for the daemon to exit by itself.
fn wait_exit(env: &mut Env, within: Duration) -> ExitStatus {
    let mut child = env.daemon.take().expect("daemon");
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not exit within {within:?}\n{}", env.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Under systemd, stderr is the stream `JOURNAL_STREAM` names (device and
/// inode) and every line starts with its level's syslog priority, so
/// journald files errors as errors; `log.format = "json"` makes each line
/// one JSON object. A start against a stream that does not exist warns
/// (`<4>`) on each retry and ends with the error (`<3>`) and exit 1.
/// Written to a plain file instead, the same lines have no prefix and no
/// colour codes.
#[tokio::test(flavor = "multi_thread")]
async fn under_journald_each_line_carries_its_priority_and_json_lines_parse() {
    use std::os::unix::fs::MetadataExt;
    let mut env = Env::with_orders("journal", "shards = 1", "[log]\nformat = \"json\"\n", Vec::new()).await;
    let missing = format!("{}-missing", env.prefix);
    env.daemon_env.push(("CAFE_SOURCES__ORDERS__STREAM".into(), missing.clone()));
    let log = env.dir.join("daemon.log");
    std::fs::File::create(&log).expect("log file");
    let meta = std::fs::metadata(&log).expect("stat");
    env.daemon_env.push(("JOURNAL_STREAM".into(), format!("{}:{}", meta.dev(), meta.ino())));
    env.start();
    let status = wait_exit(&mut env, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", env.log());
    let text = env.log();
    let mut seen = HashMap::new();
    for line in text.lines() {
        let (prefix, json) = line.split_at(line.find('>').map_or(0, |i| i + 1));
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("not <N> and a JSON object ({e}): {line:?}\n{text}"));
        let level = v["level"].as_str().expect("level");
        let want = match level {
            "ERROR" => "<3>",
            "WARN" => "<4>",
            "INFO" => "<6>",
            _ => "<7>",
        };
        assert_eq!(prefix, want, "{line}");
        assert!(v["timestamp"].is_string() && v["target"].is_string() && v["fields"]["message"].is_string(), "{line}");
        *seen.entry(level.to_owned()).or_insert(0) += 1;
    }
    assert!(seen.get("INFO").is_some_and(|n| *n >= 1), "{seen:?}\n{text}");
    assert!(seen.get("WARN").is_some_and(|n| *n >= 1), "the retries warn: {seen:?}\n{text}");
    assert!(seen.get("ERROR").is_some_and(|n| *n >= 1), "the failure is an error: {seen:?}\n{text}");
    assert!(text.contains(&missing), "the error names the stream:\n{text}");

    // To a plain file (not a terminal, not journald), in the default format:
    // no priorities and no colour codes.
    env.daemon_env.retain(|(k, _)| k != "JOURNAL_STREAM");
    env.daemon_env.push(("CAFE_LOG__FORMAT".into(), "text".into()));
    std::fs::write(&log, "").expect("truncate");
    env.start();
    let status = wait_exit(&mut env, Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{}", env.log());
    let text = env.log();
    assert!(text.lines().count() >= 3, "{text}");
    assert!(text.lines().all(|l| !l.starts_with('<') && !l.contains('\u{1b}')), "{text}");
    assert!(text.lines().any(|l| l.contains(" WARN ")) && text.lines().any(|l| l.contains(" ERROR ")), "{text}");
}
