//! Every chaos profile of `scenarios/chaos/`, run by the real `cafe-loadgen`
//! against daemon instances it starts itself behind its fault proxies: the
//! run passes (nothing lost, nothing counted twice, every chaos rule), and
//! the fault really happened (the proxy's counters, the killed processes,
//! the instances terminated), so a profile that silently does nothing fails.
//! Each runs a small scenario with the profile's schedule compressed by
//! `--time-scale`; `scripts/test.sh` runs two of them at a larger scale.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use super::*;

/// The `cafe-loadgen` binary of this workspace, built once per test run.
fn loadgen() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| workspace_bin("loadgen", "cafe-loadgen")).clone()
}

/// What one chaos run left: its exit status, its output, and `chaos.json`.
struct Run {
    passed: bool,
    output: String,
    chaos: Value,
}

impl Run {
    fn occurrences(&self) -> &[Value] {
        self.chaos["occurrences"].as_array().map_or(&[], Vec::as_slice)
    }
}

/// Runs `scenario` under `profile` with `args`, against `env`'s resources.
async fn chaos_run(env: &Env, scenario: &str, profile: &str, args: &[&str]) -> Run {
    chaos_run_with(env, scenario, profile, args, &[]).await
}

/// The same, with `vars` in the loadgen's environment (and so its instances').
async fn chaos_run_with(env: &Env, scenario: &str, profile: &str, args: &[&str], vars: &[(String, String)]) -> Run {
    let report = env.dir.join(format!("chaos-{profile}"));
    let p = &env.prefix;
    let daemon = format!("'{BIN}' run --config '{}'", env.config.display());
    let mut cmd = tokio::process::Command::new(loadgen());
    cmd.args(["run", scenario, "--chaos", profile, "--grace-secs", "20"])
        .args(args)
        .arg("--report-dir")
        .arg(&report)
        .args(["--daemon-command", &daemon])
        .args(["--payments-queue", &format!("{p}-pay.fifo"), "--payments-table", &format!("{p}-payments")])
        .args(["--aggregates-table", &format!("{p}-aggregates"), "--orders-stream", &format!("{p}-orders")])
        .args(["--orders-table", &format!("{p}-orders"), "--menu-queue", &format!("{p}-menu")])
        .args(["--menu-table", &format!("{p}-menu"), "--lease-table", &format!("{p}-leases")])
        .args(["--rejected-queue", &format!("{p}-rejected")])
        .env_remove("CAFE_LOADGEN_REDSHIFT_URL")
        .env_remove("CAFE_LOADGEN_RESTART_COMMAND")
        .envs(vars.iter().cloned())
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    let out = cmd.output().await.expect("run cafe-loadgen");
    let mut output = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        output.push_str(&instance_logs(&report.join("instances")));
    }
    let chaos = std::fs::read_to_string(report.join("chaos.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    assert!(report.join("chaos.svg").is_file() || !out.status.success(), "no picture written\n{output}");
    Run { passed: out.status.success(), output, chaos }
}

/// The first and last lines of each instance's log in `dir`: a failed run's
/// output says what the daemons did too (CI keeps nothing else of it).
fn instance_logs(dir: &Path) -> String {
    let mut logs: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    logs.sort();
    let mut out = String::new();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        out.push_str(&format!("\n--- {} ({} lines), first 40 and last 40:\n", log.display(), lines.len()));
        let cut = lines.len().saturating_sub(40).max(40.min(lines.len()));
        out.push_str(&lines[..40.min(lines.len())].join("\n"));
        if cut > 40 {
            out.push_str("\n...");
        }
        out.push('\n');
        out.push_str(&lines[cut..].join("\n"));
    }
    out
}

fn injected(o: &Value) -> u64 {
    o["injected"].as_u64().unwrap_or(0)
}

fn alive(pid: u64) -> bool {
    Command::new("kill").args(["-0", &pid.to_string()]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// kill -9 of the instance holding the orders shard, twice, while orders
/// flow: the processes are gone, the lease moves within the bound, nothing
/// lost or applied twice.
#[tokio::test(flavor = "multi_thread")]
async fn kill_instances_kills_the_lease_holder_and_loses_nothing() {
    let env = Env::new("chaos-kill", "").await;
    // Kills 15 s apart: the first one's failover (up to 15 s) is over before the second.
    let run =
        chaos_run(&env, "morning-rush", "kill-instances", &["--instances", "2", "--scale", "0.2", "--time-scale", "0.5"]).await;
    assert!(run.passed, "{}", run.output);
    let kills = run.occurrences();
    assert_eq!(kills.len(), 2, "{}", run.chaos);
    for k in kills {
        let killed = &k["killed"];
        let pid = killed["pid"].as_u64().expect("a pid");
        assert!(!alive(pid), "pid {pid} is still alive");
        assert_eq!(killed["leases"].as_array().map(Vec::len), Some(1), "the busiest instance holds the one shard: {k}");
        let failover = killed["failover_secs"].as_f64().expect("the lease moved");
        assert!(failover > 0.0 && failover <= 20.0, "{failover}");
        assert_ne!(killed["restarted_pid"].as_u64(), Some(pid));
    }
}

/// SIGTERM to each instance in turn: each drains and exits 0, and is
/// started again.
#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_drains_every_instance_to_exit_0() {
    let env = Env::new("chaos-roll", "").await;
    let run =
        chaos_run(&env, "morning-rush", "rolling-restart", &["--instances", "2", "--scale", "0.1", "--time-scale", "0.3"]).await;
    assert!(run.passed, "{}", run.output);
    let terminated = run.occurrences()[0]["terminated"].as_array().cloned().unwrap_or_default();
    assert_eq!(terminated.len(), 2, "{}", run.chaos);
    for t in &terminated {
        assert_eq!(t["exit_code"].as_i64(), Some(0), "{t}");
        assert!(t["restarted_pid"].as_u64().is_some(), "{t}");
    }
    let stops = run.chaos["final_stop"].as_array().cloned().unwrap_or_default();
    assert_eq!(stops.len(), 2, "{}", run.chaos);
}

/// All of the data-path calls throttled, then a share of them: the proxy
/// throttled calls in both windows, and the run passes.
#[tokio::test(flavor = "multi_thread")]
async fn throttle_dynamodb_throttles_and_loses_nothing() {
    let env = Env::new("chaos-throttle", "").await;
    // The burst lands in the first window (all throttled, 15 s), so every
    // write is still to be made when the second (half) opens. 3,000
    // payments: a backlog that takes the second window and more to drain.
    let run = chaos_run(&env, "cold-start", "throttle-dynamodb", &["--scale", "0.3"]).await;
    assert!(run.passed, "{}", run.output);
    let faults = run.occurrences();
    assert_eq!(faults.len(), 2, "{}", run.chaos);
    assert!(faults.iter().all(|o| injected(o) > 0), "{}", run.chaos);
}

/// Latency and resets on every endpoint: each of the three proxies
/// faulted requests.
#[tokio::test(flavor = "multi_thread")]
async fn slow_aws_slows_every_endpoint() {
    let env = Env::new("chaos-slow", "").await;
    let run = chaos_run(&env, "morning-rush", "slow-aws", &["--scale", "0.1", "--time-scale", "0.3"]).await;
    assert!(run.passed, "{}", run.output);
    let faults = run.occurrences();
    assert_eq!(faults.len(), 3, "{}", run.chaos);
    assert!(faults.iter().all(|o| injected(o) > 0), "{}", run.chaos);
}

/// DynamoDB black-holed: requests were held, and the pipeline resumed by
/// itself.
#[tokio::test(flavor = "multi_thread")]
async fn partition_holds_dynamodb_and_the_pipeline_resumes() {
    let env = Env::new("chaos-partition", "").await;
    let run = chaos_run(&env, "morning-rush", "partition", &["--scale", "0.1", "--time-scale", "0.25"]).await;
    assert!(run.passed, "{}", run.output);
    let o = &run.occurrences()[0];
    assert!(injected(o) > 0, "{}", run.chaos);
    assert!(o["recovery_secs"].as_f64().is_some(), "{o}");
}

/// A split and then a merge while orders flow: the stream really changed
/// shape (one open shard, two, one), and every order's events were applied
/// once and in order across the change.
#[tokio::test(flavor = "multi_thread")]
async fn reshard_splits_and_merges_while_orders_flow() {
    let env = Env::new("chaos-reshard", "").await;
    let run = chaos_run(&env, "morning-rush", "reshard", &["--scale", "0.1", "--time-scale", "0.3"]).await;
    assert!(run.passed, "{}", run.output);
    let shapes: Vec<Value> = run.occurrences().iter().map(|o| o["open_shards"].clone()).collect();
    assert_eq!(shapes, vec![serde_json::json!([1, 2]), serde_json::json!([2, 1])], "{}", run.chaos);
}

/// Redshift down for a while during a menu sync: the relay in front of it
/// refused connections, and the mirror caught up by itself, equal to
/// DynamoDB at the end (menu-sync's own check).
#[tokio::test(flavor = "multi_thread")]
async fn redshift_outage_refuses_connections_and_the_mirror_catches_up() {
    use super::menu::pg_target;
    let (target, user, db) = pg_target();
    let table = format!("it_chaos_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let url = format!("postgres://{user}@{target}/{db}");
    let extra = format!(
        "[sinks.redshift]\nenabled = true\ntransport = \"postgres\"\nurl = \"{url}\"\ntable = \"{table}\"\nflush_interval_ms = 500\n"
    );
    let env = Env::new("chaos-redshift", &extra).await;
    let vars = vec![
        ("CAFE_SINKS__REDSHIFT__URL".to_owned(), url.clone()),
        ("CAFE_LOADGEN_REDSHIFT_URL".to_owned(), url.clone()),
        ("CAFE_LOADGEN_REDSHIFT_TABLE".to_owned(), table.clone()),
    ];
    let run = chaos_run_with(&env, "menu-sync", "redshift-outage", &["--scale", "0.1", "--time-scale", "0.2"], &vars).await;
    assert!(run.passed, "{}", run.output);
    let o = &run.occurrences()[0];
    assert!(injected(o) > 0, "{}", run.chaos);
    assert!(run.output.contains("Redshift"), "{}", run.output);
    let pg = daemon::sinks::redshift::postgres::PgTransport::connect(
        &std::env::var("CAFE_PG_URL").expect("url"),
        std::time::Duration::from_secs(60),
    )
    .await
    .expect("pg");
    pg.execute(&format!("DROP TABLE {table}")).await.expect("drop");
}

/// Bad events of every kind to every input while orders flow: each is in
/// the rejected queue with the reason the contract gives it, and every
/// good order is applied once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn poison_reaches_the_rejected_queue_with_its_reasons_and_blocks_nothing() {
    let env = Env::new("chaos-poison", "").await;
    let run = chaos_run(&env, "morning-rush", "poison", &["--scale", "0.1", "--time-scale", "0.5"]).await;
    assert!(run.passed, "{}", run.output);
    let faults = run.occurrences();
    assert_eq!(faults.len(), 3, "{}", run.chaos);
    for o in faults {
        let r = &o["rejected"];
        let sent = r["sent"].as_u64().unwrap_or(0);
        assert!(sent >= 6, "every kind at least once: {o}");
        assert_eq!(r["found"].as_u64(), Some(sent), "{o}");
        assert_eq!(r["kinds"].as_object().map(|k| k.len()), Some(6), "six kinds: {o}");
    }
}
