//! Scenario files: `scenarios/<name>.toml`, the named stress stories.
//!
//! Owns: the file format and finding the folder. Must not: know how a
//! scenario is driven (each driver module does).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// One scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The name `cafe-loadgen run NAME` takes.
    pub name: String,
    /// One line for `cafe-loadgen list`.
    pub description: String,
    /// A payments burst (`cold-start`).
    #[serde(default)]
    pub load: Option<Load>,
    /// An orders stream (`morning-rush`): what orders look like.
    #[serde(default)]
    pub orders: Option<OrdersLoad>,
    /// A menu sync (`menu-sync`): what the pods push.
    #[serde(default)]
    pub menu: Option<MenuLoad>,
    /// An orders stream's rate stages, in order.
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// What to do with the daemon around the load.
    #[serde(default)]
    pub daemon: DaemonControl,
    /// How to wait for and check the outputs.
    #[serde(default)]
    pub verify: Verify,
    /// Pass/fail rules.
    #[serde(default)]
    pub thresholds: Thresholds,
}

/// The load of a payments burst.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Payments in the burst (scaled by `--scale`).
    pub payments: u64,
    /// Goose users sending in parallel.
    pub users: usize,
    /// Distinct stores.
    pub stores: u32,
    /// Distinct customers (FIFO groups).
    pub customers: u32,
    /// Share of payments on a card shared by several customers.
    #[serde(default)]
    pub shared_card_ratio: f64,
    /// Share of payments with a billing country unlike their IP's.
    #[serde(default)]
    pub geo_mismatch_ratio: f64,
    /// Share of payments far above the customer's usual amount.
    #[serde(default)]
    pub big_amount_ratio: f64,
}

/// The orders of an orders-stream scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrdersLoad {
    /// Goose users putting records in parallel (each owns a share of the orders).
    pub producers: usize,
    /// Distinct stores.
    pub stores: u32,
    /// Distinct customers.
    pub customers: u32,
    /// Share of orders cancelled after confirmation.
    pub cancel_ratio: f64,
    /// Time between an order's events, in milliseconds.
    pub status_gap_ms: u64,
    /// Line items of a regular order: min..=max.
    pub items: [usize; 2],
    /// Line items of a corporate bulk order: min..=max (the contract allows 500).
    pub bulk_items: [usize; 2],
}

/// The items of a menu sync.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MenuLoad {
    /// Items synced in all (scaled by `--scale`).
    pub items: u64,
    /// Goose users, the pods: each pushes its share as fast as SQS takes it.
    pub pods: usize,
    /// Distinct stores the syncs are attributed to.
    pub stores: u32,
    /// Decoded image size in KiB: min and max of a seeded log-uniform distribution.
    pub image_kib: [f64; 2],
    /// Share of items whose declared image hash is wrong.
    pub wrong_hash_ratio: f64,
    /// Ingredients per item: min..=max (the contract allows 100).
    pub ingredients: [usize; 2],
    /// After DynamoDB is complete, how long Redshift may take to equal it, in seconds.
    pub redshift_within_secs: u64,
    /// The daemon's `pipeline.menu_json_rounds`, for timing the kernel of
    /// the CPU-bound ceiling (default 100, the daemon's).
    #[serde(default = "default_json_rounds")]
    pub json_rounds: u32,
}

fn default_json_rounds() -> u32 {
    100
}

/// One rate stage: orders placed per second go linearly from `rate_start`
/// to `rate_end` over `secs` (equal for a steady stage or a hold).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// Name in the report (`trickle`, `ramp`, `spike`, ...).
    pub name: String,
    /// Length, seconds (scaled by `--time-scale`).
    pub secs: f64,
    /// Orders per second at the start (scaled by `--scale`).
    pub rate_start: f64,
    /// Orders per second at the end (scaled by `--scale`).
    pub rate_end: f64,
    /// Share of the stage's orders that are corporate bulk orders.
    #[serde(default)]
    pub bulk_ratio: f64,
}

/// When to (re)start the daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Leave it alone.
    #[default]
    None,
    /// Restart, then fire at once.
    Before,
    /// Fire, then restart into the backlog.
    After,
}

/// The daemon around the load.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonControl {
    /// When to run the restart command.
    #[serde(default)]
    pub restart: Restart,
    /// Shell command that (re)starts the daemon; `CAFE_LOADGEN_RESTART_COMMAND` overrides it.
    #[serde(default)]
    pub restart_command: String,
}

/// Waiting for the outputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Verify {
    /// Give up after this long without progress.
    pub stall_secs: u64,
    /// Give up after this long in all.
    pub timeout_secs: u64,
}

impl Default for Verify {
    fn default() -> Self {
        Verify { stall_secs: 60, timeout_secs: 600 }
    }
}

/// Pass/fail rules.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// goose `--threshold` rules on the send calls.
    #[serde(default)]
    pub goose: Vec<String>,
    /// Largest acceptable end-to-end p99 (event time to decision), in ms,
    /// wherever the run goes.
    #[serde(default)]
    pub e2e_p99_ms: Option<u64>,
    /// Targets for a real AWS account (any endpoint off loopback).
    #[serde(default)]
    pub aws: AwsTargets,
    /// Targets on the local stack, relative to what the same stack does in
    /// the same run.
    #[serde(default)]
    pub local: LocalTargets,
}

/// `[thresholds.aws]`: judged when the run's AWS endpoints are not on
/// loopback (see [`on_local_stack`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsTargets {
    /// Largest acceptable end-to-end p99, in ms.
    #[serde(default)]
    pub e2e_p99_ms: Option<u64>,
}

/// `[thresholds.local]`: judged on the local stack, where an absolute
/// figure measures the emulators more than the daemon.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalTargets {
    /// Largest acceptable ratio of the daemon's drain (first decision to
    /// last) to a bare client's drain of the same burst from the same stack,
    /// measured right after the run (`payments-throughput`).
    #[serde(default)]
    pub drain_vs_bare: Option<f64>,
    /// What the daemon's drain may take beyond `drain_vs_bare` times the
    /// bare client's, in ms: its fixed costs that a bare client has none
    /// of (its span begins at its restart's end, so it holds its start-up
    /// to its first receive, and its first batch passes the decide stage
    /// before its first decision), which at a small scale are most of a
    /// sub-second drain.
    #[serde(default)]
    pub drain_allowance_ms: u64,
    /// The shortest bare drain, in seconds, that `drain_vs_bare` judges (at
    /// a few hundred ms the two spans differ by their ends' granularity and
    /// the daemon's fixed costs more than by its work): a shorter one is
    /// judged against `drain_vs_bare_short` instead, or only reported
    /// without it.
    #[serde(default)]
    pub drain_judged_from_secs: f64,
    /// The looser ratio a bare drain shorter than `drain_judged_from_secs`
    /// is judged against (plus the allowance): a gross regression still
    /// fails at a small scale.
    #[serde(default)]
    pub drain_vs_bare_short: Option<f64>,
    /// Largest acceptable ratio of the daemon's drain (first send to last
    /// item stored) to the CPU-bound ceiling's time for the same items: the
    /// menu kernel timed on one thread right after the run, over the cores
    /// the rest of the machine left the daemon meanwhile (see `ceiling`).
    #[serde(default)]
    pub drain_vs_ceiling: Option<f64>,
    /// Largest acceptable excess, in ms, of the daemon's e2e p99 over the
    /// p99 of a bare reader at the tip of the same stream in the same run
    /// (one GetRecords per shard per `poll_interval_ms`, nothing else).
    #[serde(default)]
    pub e2e_p99_over_bare_reader_ms: Option<u64>,
    /// The bare tip reader's poll interval: the daemon's
    /// `sources.orders.poll_interval_ms` (default 250).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

impl Default for LocalTargets {
    fn default() -> Self {
        LocalTargets {
            drain_vs_bare: None,
            drain_allowance_ms: 0,
            drain_judged_from_secs: 0.0,
            drain_vs_bare_short: None,
            drain_vs_ceiling: None,
            e2e_p99_over_bare_reader_ms: None,
            poll_interval_ms: 250,
        }
    }
}

fn default_poll_interval_ms() -> u64 {
    250
}

/// Whether this process's AWS endpoints are on loopback: the SQS endpoint
/// (`AWS_ENDPOINT_URL_SQS`, else `AWS_ENDPOINT_URL`) names 127.0.0.1,
/// `::1` or localhost. Unset: the SDK's default, a real AWS region.
pub fn on_local_stack() -> bool {
    let endpoint = std::env::var("AWS_ENDPOINT_URL_SQS").or_else(|_| std::env::var("AWS_ENDPOINT_URL")).unwrap_or_default();
    is_loopback_url(&endpoint)
}

fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The scenarios folder: `CAFE_SCENARIOS_DIR`, else `scenarios/` in the
/// current folder or above it, else next to the installed binary
/// (`<prefix>/share/cafe-stream/scenarios`).
pub fn scenarios_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CAFE_SCENARIOS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut here = std::env::current_dir()?;
    loop {
        let candidate = here.join("scenarios");
        if candidate.is_dir() {
            return Ok(candidate);
        }
        if !here.pop() {
            break;
        }
    }
    if let Some(prefix) = std::env::current_exe()?.parent().and_then(Path::parent) {
        let candidate = prefix.join("share/cafe-stream/scenarios");
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    bail!("no scenarios folder found; set CAFE_SCENARIOS_DIR")
}

/// Every scenario in `dir`, by name.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Scenario>> {
    load_all(dir, load, |s| &s.name)
}

/// Every `*.toml` of `dir` read by `load`, sorted by `name`.
pub fn load_all<T>(dir: &Path, load: impl Fn(&Path) -> anyhow::Result<T>, name: impl Fn(&T) -> &str) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            out.push(load(&path)?);
        }
    }
    out.sort_by(|a, b| name(a).cmp(name(b)));
    Ok(out)
}

/// The one of `all` (read from `dir`) called `wanted`, or an error naming
/// the `kind` and every name there is.
pub fn named<T>(all: Vec<T>, wanted: &str, name: impl Fn(&T) -> &str, kind: &str, dir: &Path) -> anyhow::Result<T> {
    let names: Vec<String> = all.iter().map(|x| name(x).to_owned()).collect();
    all.into_iter()
        .find(|x| name(x) == wanted)
        .with_context(|| format!("no {kind} {wanted:?} in {}; have: {}", dir.display(), names.join(", ")))
}

/// Whether a measured `x` meets an upper `limit`: false when `x` is NaN
/// (a figure from no samples misses every target).
pub fn at_most(x: f64, limit: f64) -> bool {
    x <= limit
}

/// Reads one scenario file.
pub fn load(path: &Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let s: Scenario = toml::from_str(&text).with_context(|| format!("{}: invalid scenario", path.display()))?;
    let mut problems = Vec::new();
    match (&s.load, &s.orders, &s.menu) {
        (None, None, Some(m)) => {
            if m.pods == 0 || m.stores == 0 {
                problems.push("menu.pods and menu.stores must be at least 1".to_owned());
            }
            if !(m.image_kib[0] > 0.0 && m.image_kib[0] <= m.image_kib[1] && m.image_kib[1] <= 180.0) {
                problems.push("menu.image_kib must be [min, max] with 0 < min <= max <= 180 (an SQS message holds 256 KiB, base64 adds a third)".to_owned());
            }
            if !(0.0..=1.0).contains(&m.wrong_hash_ratio) {
                problems.push("menu.wrong_hash_ratio must be 0..1".to_owned());
            }
            if m.ingredients[0] > m.ingredients[1] || m.ingredients[1] > 100 {
                problems.push("menu.ingredients must be [min, max] with min <= max <= 100".to_owned());
            }
        }
        (Some(load), None, None) => {
            if load.users == 0 {
                problems.push("load.users must be at least 1".to_owned());
            }
            if load.stores == 0 || load.customers == 0 {
                problems.push("load.stores and load.customers must be at least 1".to_owned());
            }
            for r in [load.shared_card_ratio, load.geo_mismatch_ratio, load.big_amount_ratio] {
                if !(0.0..=1.0).contains(&r) {
                    problems.push("load ratios must be 0..1".to_owned());
                }
            }
        }
        (None, Some(o), None) => {
            if o.producers == 0 || o.stores == 0 || o.customers == 0 {
                problems.push("orders.producers, orders.stores and orders.customers must be at least 1".to_owned());
            }
            if !(0.0..=1.0).contains(&o.cancel_ratio) {
                problems.push("orders.cancel_ratio must be 0..1".to_owned());
            }
            for (name, [lo, hi]) in [("orders.items", o.items), ("orders.bulk_items", o.bulk_items)] {
                if lo == 0 || lo > hi || hi > pipeline::event::MAX_ORDER_ITEMS {
                    problems.push(format!("{name} must be [min, max] with 1 <= min <= max <= 500"));
                }
            }
            if s.stages.is_empty() {
                problems.push("an orders scenario needs at least one [[stages]]".to_owned());
            }
            for st in &s.stages {
                if st.secs.is_nan() || st.secs <= 0.0 || st.rate_start < 0.0 || st.rate_end < 0.0 || !(0.0..=1.0).contains(&st.bulk_ratio) {
                    problems.push(format!("stage {:?}: secs > 0, rates >= 0 and bulk_ratio 0..1", st.name));
                }
            }
        }
        _ => problems.push(
            "a scenario has one of [load] (a payments burst), [orders] with [[stages]] (an orders stream) or [menu] (a menu sync)".to_owned(),
        ),
    }
    // Each local target is measured by one kind of scenario only: anywhere
    // else it would be silently ignored.
    let local = &s.thresholds.local;
    for (name, value, applies) in [
        ("drain_vs_bare", local.drain_vs_bare, s.load.is_some()),
        ("drain_vs_ceiling", local.drain_vs_ceiling, s.menu.is_some()),
        ("e2e_p99_over_bare_reader_ms", local.e2e_p99_over_bare_reader_ms.map(|ms| ms as f64), s.orders.is_some()),
    ] {
        let kind = match name {
            "drain_vs_bare" => "[load] (payments burst)",
            "drain_vs_ceiling" => "[menu] (menu sync)",
            _ => "[orders] (orders stream)",
        };
        match value {
            Some(v) if !(v > 0.0 && v.is_finite()) => problems.push(format!("thresholds.local.{name} must be above 0, got {v}")),
            Some(_) if !applies => problems.push(format!("thresholds.local.{name} is measured by {kind} scenarios only")),
            _ => {}
        }
    }
    if local.drain_allowance_ms > 0 && local.drain_vs_bare.is_none() {
        problems.push("thresholds.local.drain_allowance_ms is an allowance on drain_vs_bare, which is not set".to_owned());
    }
    if local.drain_judged_from_secs != 0.0 && local.drain_vs_bare.is_none() {
        problems.push("thresholds.local.drain_judged_from_secs says when drain_vs_bare is judged, which is not set".to_owned());
    }
    // A larger value would leave a full-scale drain (10-15 s here) unjudged.
    if !(0.0..=5.0).contains(&local.drain_judged_from_secs) {
        problems.push(format!("thresholds.local.drain_judged_from_secs must be 0..5, got {}", local.drain_judged_from_secs));
    }
    match (local.drain_vs_bare_short, local.drain_vs_bare) {
        (Some(short), Some(limit)) if !(short.is_finite() && short >= limit) => {
            problems.push(format!("thresholds.local.drain_vs_bare_short must be at least drain_vs_bare ({limit}), got {short}"))
        }
        (Some(_), _) if local.drain_judged_from_secs == 0.0 => problems
            .push("thresholds.local.drain_vs_bare_short judges drains under drain_judged_from_secs, which is not set".to_owned()),
        _ => {}
    }
    if local.drain_allowance_ms > 10_000 {
        problems.push(format!("thresholds.local.drain_allowance_ms must be at most 10000, got {}", local.drain_allowance_ms));
    }
    if !(200..=60_000).contains(&local.poll_interval_ms) {
        problems.push(format!(
            "thresholds.local.poll_interval_ms must be 200..60000 (as the daemon's), got {}",
            local.poll_interval_ms
        ));
    }
    if !problems.is_empty() {
        bail!("{}: {}", path.display(), problems.join("; "));
    }
    Ok(s)
}

/// Finds the scenario called `name`.
pub fn find(name: &str) -> anyhow::Result<Scenario> {
    let dir = scenarios_dir()?;
    named(list(&dir)?, name, |s| &s.name, "scenario", &dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_from_no_samples_misses_every_target() {
        assert!(at_most(1.0, 1.0) && at_most(0.5, 1.0) && !at_most(1.01, 1.0));
        assert!(!at_most(f64::NAN, 1.0) && !at_most(f64::NAN, f64::INFINITY));
    }

    #[test]
    fn only_loopback_endpoints_count_as_the_local_stack() {
        for url in ["http://127.0.0.1:4566", "http://localhost:4566/", "http://[::1]:4566", "127.0.0.9:1"] {
            assert!(super::is_loopback_url(url), "{url}");
        }
        for url in ["", "https://sqs.eu-west-1.amazonaws.com", "http://10.0.0.1:4566", "http://127.0.0.1.example.com"] {
            assert!(!super::is_loopback_url(url), "{url}");
        }
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let all = list(&dir).expect("scenarios parse");
        let cold = all.iter().find(|s| s.name == "cold-start").expect("cold-start");
        assert!(cold.thresholds.local.drain_vs_bare.is_some_and(|r| r > 1.0), "cold-start is judged against a bare client");
        assert!(cold.thresholds.aws.e2e_p99_ms.is_some_and(|ms| ms < 3000), "cold-start's AWS target beats the Lambda's 3 s");
        assert_eq!(cold.thresholds.e2e_p99_ms, None, "an absolute p99 on the local stack measures the emulators");
        let rush = all.iter().find(|s| s.name == "morning-rush").expect("morning-rush");
        let names: Vec<&str> = rush.stages.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"spike") && names.contains(&"ramp"), "{names:?}");
        assert!(rush.thresholds.local.e2e_p99_over_bare_reader_ms.is_some(), "morning-rush is judged against a bare tip reader");
        assert_eq!(rush.thresholds.e2e_p99_ms, None, "an absolute p99 on the local stack measures the machine");
        assert!(rush.thresholds.aws.e2e_p99_ms.is_some(), "morning-rush keeps a target for AWS");
        let menu = all.iter().find(|s| s.name == "menu-sync").expect("menu-sync");
        let load = menu.menu.as_ref().expect("[menu]");
        assert_eq!((load.items, load.pods), (10_000, 50));
        assert!(
            menu.thresholds.local.drain_vs_ceiling.is_some_and(|r| r > 1.0),
            "menu-sync is judged against its CPU-bound ceiling"
        );
        assert_eq!(menu.thresholds.e2e_p99_ms, None, "an absolute p99 on the local stack measures the machine");
        assert!(menu.thresholds.aws.e2e_p99_ms.is_some(), "menu-sync keeps a target for AWS");
    }

    #[test]
    fn a_local_target_is_refused_where_nothing_measures_it() {
        let dir = std::env::temp_dir().join(format!("cafe-scenario-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let menu = "name = \"m\"\ndescription = \"\"\n[menu]\nitems = 1\npods = 1\nstores = 1\nimage_kib = [1, 2]\n\
                    wrong_hash_ratio = 0.0\ningredients = [1, 2]\nredshift_within_secs = 1\n";
        let path = dir.join("m.toml");
        let cases = [
            ("[thresholds.local]\ndrain_vs_ceiling = 1.5\n", None),
            ("[thresholds.local]\ndrain_vs_bare = 1.5\n", Some("measured by [load] (payments burst) scenarios only")),
            ("[thresholds.local]\ndrain_vs_ceiling = 0\n", Some("drain_vs_ceiling must be above 0")),
            ("[thresholds.local]\ndrain_vs_ceiling = 1.5\ndrain_allowance_ms = 250\n", Some("an allowance on drain_vs_bare")),
            ("[thresholds.local]\ndrain_vs_ceiling = 1.5\ndrain_judged_from_secs = 2\n", Some("when drain_vs_bare is judged")),
            ("[thresholds.local]\ndrain_vs_ceiling = 1.5\ndrain_judged_from_secs = 20\n", Some("must be 0..5")),
            (
                "[thresholds.local]\ne2e_p99_over_bare_reader_ms = 500\n",
                Some("measured by [orders] (orders stream) scenarios only"),
            ),
        ];
        for (thresholds, refused) in cases {
            std::fs::write(&path, format!("{menu}{thresholds}")).expect("write");
            match (load(&path), refused) {
                (Ok(_), None) => {}
                (Err(e), Some(why)) => assert!(format!("{e:#}").contains(why), "{e:#}"),
                (got, want) => panic!("{thresholds}: {got:?}, wanted {want:?}"),
            }
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
