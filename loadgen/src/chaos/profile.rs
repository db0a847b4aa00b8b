//! Chaos profiles: `scenarios/chaos/<name>.toml`, a named schedule of
//! faults that any scenario can run under.
//!
//! Owns: the file format, its checks (every problem named with its file and
//! field), and finding the folder. Must not: break anything (the run does).

use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

/// One profile file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The name `--chaos NAME` takes.
    pub name: String,
    /// One line for `cafe-loadgen chaos list`.
    pub description: String,
    /// What a pass proves, for the list and the report.
    pub proves: String,
    /// Daemon instances when `--instances` is not given.
    #[serde(default = "one")]
    pub instances: usize,
    /// The faults, each on its own schedule from the run's start.
    pub faults: Vec<FaultSpec>,
    /// Pass/fail rules of the faults, on top of the scenario's verdict.
    #[serde(default)]
    pub thresholds: ChaosThresholds,
}

fn one() -> usize {
    1
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `kill -9` the instance holding the most leases (a compute failure),
    /// and start it again after `duration_secs`.
    Kill,
    /// SIGTERM every instance in turn, as a deploy does: each must exit 0
    /// after its drain, and is started again at once; the next one goes
    /// `duration_secs` after the previous one is back.
    RollingRestart,
    /// The proxy in front of `service` applies `rules` for `duration_secs`.
    Proxy,
    /// SplitShard of the stream's widest open shard at its middle.
    Split,
    /// MergeShards of the stream's two adjacent open shards with the
    /// narrowest joint range.
    Merge,
    /// The relay in front of `service` (Redshift) resets every connection
    /// for `duration_secs`, live ones included.
    RefuseConnections,
    /// Bad events, `per_sec` of them, sent to `input` for `duration_secs`:
    /// each must reach the rejected queue with the contract's reason.
    Poison,
}

/// An AWS endpoint the loadgen's proxy stands in front of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// DynamoDB (the sinks and the lease table).
    Dynamodb,
    /// Kinesis (the orders stream).
    Kinesis,
    /// SQS (the payments and menu queues, the rejected queue).
    Sqs,
    /// Redshift over the PostgreSQL wire protocol (a TCP relay, not the
    /// HTTP proxy: `refuse-connections` only).
    Redshift,
}

impl Service {
    /// Every service, in the order the proxies start.
    pub const ALL: [Service; 3] = [Service::Dynamodb, Service::Kinesis, Service::Sqs];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Service::Dynamodb => "dynamodb",
            Service::Kinesis => "kinesis",
            Service::Sqs => "sqs",
            Service::Redshift => "redshift",
        }
    }

    /// The SDK's service-specific endpoint variable.
    pub fn endpoint_var(self) -> &'static str {
        match self {
            Service::Dynamodb => "AWS_ENDPOINT_URL_DYNAMODB",
            Service::Kinesis => "AWS_ENDPOINT_URL_KINESIS",
            Service::Sqs => "AWS_ENDPOINT_URL_SQS",
            Service::Redshift => "CAFE_SINKS__REDSHIFT__URL",
        }
    }
}

/// One fault of a profile. Times are seconds from the run's start (when
/// the load begins), multiplied by `--time-scale` as the stages are, so a
/// fault keeps its place in the scenario; the mechanisms they exercise
/// (failover, visibility, backoff) keep their own clocks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// What it does.
    pub action: Action,
    /// Name in the report (default: from the action).
    #[serde(default)]
    pub name: Option<String>,
    /// When it starts.
    pub start_secs: f64,
    /// How long it lasts (`kill`: how long the instance stays down;
    /// `rolling-restart`: the pause between two instances).
    #[serde(default)]
    pub duration_secs: f64,
    /// How many times it happens.
    #[serde(default = "once")]
    pub repeat: u32,
    /// Time between two starts when `repeat` > 1.
    #[serde(default)]
    pub every_secs: f64,
    /// `proxy`: which endpoint.
    #[serde(default)]
    pub service: Option<Service>,
    /// `poison`: where the bad events go.
    #[serde(default)]
    pub input: Option<super::poison::Input>,
    /// `poison`: bad events per second.
    #[serde(default)]
    pub per_sec: Option<f64>,
    /// `proxy`: the fault proxy's rules, e.g.
    /// `{ operation = "TransactWriteItems", probability = 0.3, fault = { kind = "throttle" } }`.
    #[serde(default)]
    pub rules: Vec<faultproxy::Rule>,
}

fn once() -> u32 {
    1
}

impl FaultSpec {
    /// Its name in the report.
    pub fn label(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match (self.action, self.service) {
            (Action::Kill, _) => "kill -9 an instance".into(),
            (Action::RollingRestart, _) => "rolling restart".into(),
            (Action::Proxy, Some(s)) => format!("{} faults", s.name()),
            (Action::Proxy, None) => "proxy faults".into(),
            (Action::Split, _) => "split a shard".into(),
            (Action::Merge, _) => "merge two shards".into(),
            (Action::RefuseConnections, _) => "Redshift refuses connections".into(),
            (Action::Poison, _) => "bad events".into(),
        }
    }

    /// The same fault with its times multiplied by `k` (`--time-scale`).
    pub fn scaled(&self, k: f64) -> FaultSpec {
        FaultSpec {
            start_secs: self.start_secs * k,
            duration_secs: self.duration_secs * k,
            every_secs: self.every_secs * k,
            ..self.clone()
        }
    }

    /// The start times of its occurrences, in seconds from the run's start.
    pub fn starts(&self) -> Vec<f64> {
        (0..self.repeat).map(|k| self.start_secs + f64::from(k) * self.every_secs).collect()
    }
}

/// Rules on what the faults did.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosThresholds {
    /// Largest acceptable failover time of a killed instance's leases, s.
    #[serde(default)]
    pub max_failover_secs: Option<f64>,
    /// Largest acceptable time to recover after a fault ends, s.
    #[serde(default)]
    pub max_recovery_secs: Option<f64>,
}

/// Every profile in `dir`, by name.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Profile>> {
    crate::scenario::load_all(dir, load, |p| &p.name)
}

/// The profiles folder: `chaos/` in the scenarios folder.
pub fn dir() -> anyhow::Result<std::path::PathBuf> {
    Ok(crate::scenario::scenarios_dir()?.join("chaos"))
}

/// Finds the profile called `name`.
pub fn find(name: &str) -> anyhow::Result<Profile> {
    let dir = dir()?;
    crate::scenario::named(list(&dir)?, name, |p| &p.name, "chaos profile", &dir)
}

/// Reads one profile file and checks it.
pub fn load(path: &Path) -> anyhow::Result<Profile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let p: Profile = toml::from_str(&text).with_context(|| format!("{}: invalid chaos profile", path.display()))?;
    let problems = problems(&p);
    if !problems.is_empty() {
        bail!("{}: {}", path.display(), problems.join("; "));
    }
    Ok(p)
}

/// Largest `instances`.
pub const MAX_INSTANCES: usize = 32;
/// Largest `repeat`.
const MAX_REPEAT: u32 = 100;
/// Largest time in a profile, seconds (a day).
const MAX_SECS: f64 = 86_400.0;

/// Faults that would act on the same thing at once: two proxy faults on
/// one service (their evidence would mix), or instance faults (a kill in
/// the middle of a rolling restart) whose windows overlap.
fn overlaps(p: &Profile) -> Vec<String> {
    let mut windows: Vec<(usize, String, f64, f64)> = Vec::new();
    for (i, f) in p.faults.iter().enumerate() {
        let what = match f.action {
            Action::Proxy | Action::RefuseConnections => f.service.map_or("proxy".to_owned(), |s| s.name().to_owned()),
            Action::Kill | Action::RollingRestart => "instances".to_owned(),
            Action::Split | Action::Merge | Action::Poison => continue,
        };
        // A rolling restart's length is not known ahead: it holds the
        // instances until the next fault on them, which must start later.
        let len = if f.action == Action::RollingRestart { 0.0 } else { f.duration_secs };
        for start in f.starts() {
            windows.push((i, what.clone(), start, start + len));
        }
    }
    let mut out = Vec::new();
    for (a, x) in windows.iter().enumerate() {
        for y in &windows[a + 1..] {
            if x.1 == y.1 && x.2 < y.3 && y.2 < x.3 {
                out.push(format!(
                    "faults[{}] and faults[{}]: both act on {} at {:.1} s; one at a time",
                    x.0,
                    y.0,
                    x.1,
                    x.2.max(y.2)
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What is wrong with `p`, each naming its field.
fn problems(p: &Profile) -> Vec<String> {
    let mut out = Vec::new();
    if p.instances == 0 {
        out.push("instances: must be at least 1".to_owned());
    }
    if p.faults.is_empty() {
        out.push("faults: a profile needs at least one [[faults]]".to_owned());
    }
    if p.instances > MAX_INSTANCES {
        out.push(format!("instances: at most {MAX_INSTANCES}, got {}", p.instances));
    }
    for (i, f) in p.faults.iter().enumerate() {
        let at = format!("faults[{i}]");
        let in_range = |v: f64| v.is_finite() && (0.0..=MAX_SECS).contains(&v);
        if !in_range(f.start_secs) {
            out.push(format!("{at}.start_secs: must be a number from 0 to {MAX_SECS}, got {}", f.start_secs));
        }
        if !in_range(f.duration_secs) {
            out.push(format!("{at}.duration_secs: must be a number from 0 to {MAX_SECS}, got {}", f.duration_secs));
        }
        if !in_range(f.every_secs) {
            out.push(format!("{at}.every_secs: must be a number from 0 to {MAX_SECS}, got {}", f.every_secs));
        }
        if f.repeat == 0 || f.repeat > MAX_REPEAT {
            out.push(format!("{at}.repeat: must be 1 to {MAX_REPEAT}, got {}", f.repeat));
        }
        if f.repeat > 1 && !(f.every_secs.is_finite() && f.every_secs > f.duration_secs) {
            out.push(format!(
                "{at}.every_secs: must be longer than duration_secs ({}) when repeat > 1, got {}",
                f.duration_secs, f.every_secs
            ));
        }
        match f.action {
            Action::Proxy => {
                match f.service {
                    None => out.push(format!("{at}.service: a proxy fault names its service (dynamodb, kinesis or sqs)")),
                    Some(Service::Redshift) => {
                        out.push(format!(
                            "{at}.service: redshift is behind a TCP relay, not the HTTP proxy: use refuse-connections"
                        ));
                    }
                    Some(_) => {}
                }
                if f.rules.is_empty() {
                    out.push(format!("{at}.rules: a proxy fault needs at least one rule"));
                }
                if f.duration_secs.is_nan() || f.duration_secs <= 0.0 {
                    out.push(format!("{at}.duration_secs: a proxy fault lasts more than 0 s"));
                }
                if let Err(e) = faultproxy::validate(&f.rules) {
                    out.push(format!("{at}.rules: {e}"));
                }
            }
            Action::RefuseConnections => {
                if f.service != Some(Service::Redshift) || !f.rules.is_empty() {
                    out.push(format!("{at}: refuse-connections takes service = \"redshift\" and no rules"));
                }
                if f.duration_secs.is_nan() || f.duration_secs <= 0.0 {
                    out.push(format!("{at}.duration_secs: an outage lasts more than 0 s"));
                }
            }
            Action::Poison => {
                if f.input.is_none() {
                    out.push(format!("{at}.input: a poison fault names its input (orders, payments or menu)"));
                }
                if !f.per_sec.is_some_and(|r| r.is_finite() && r > 0.0 && r <= 100.0) {
                    out.push(format!("{at}.per_sec: bad events per second, more than 0 and at most 100"));
                }
                if f.duration_secs.is_nan() || f.duration_secs <= 0.0 {
                    out.push(format!("{at}.duration_secs: a poison fault lasts more than 0 s"));
                }
                if f.service.is_some() || !f.rules.is_empty() {
                    out.push(format!("{at}: service and rules belong to proxy faults"));
                }
            }
            Action::Kill | Action::RollingRestart | Action::Split | Action::Merge => {
                if f.service.is_some() || !f.rules.is_empty() {
                    out.push(format!("{at}: service and rules belong to proxy faults"));
                }
            }
        }
    }
    out.extend(overlaps(p));
    if let Some(v) = p.thresholds.max_failover_secs
        && !(v.is_finite() && v > 0.0)
    {
        out.push(format!("thresholds.max_failover_secs: must be > 0, got {v}"));
    }
    if let Some(v) = p.thresholds.max_recovery_secs
        && !(v.is_finite() && v > 0.0)
    {
        out.push(format!("thresholds.max_recovery_secs: must be > 0, got {v}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/chaos");
        let all = list(&dir).expect("profiles parse");
        let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        for want in [
            "kill-instances",
            "rolling-restart",
            "throttle-dynamodb",
            "slow-aws",
            "partition",
            "reshard",
            "redshift-outage",
            "poison",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let throttle = all.iter().find(|p| p.name == "throttle-dynamodb").expect("throttle-dynamodb");
        assert!(throttle.faults.iter().all(|f| f.service == Some(Service::Dynamodb)));
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let text = r#"
name = "bad"
description = "d"
proves = "p"
instances = 0
[[faults]]
action = "proxy"
start_secs = -1
repeat = 2
every_secs = 1
duration_secs = 5
rules = [{ probability = 2.0, fault = { kind = "throttle" } }]
[[faults]]
action = "kill"
start_secs = 1
service = "sqs"
"#;
        let p: Profile = toml::from_str(text).expect("parses");
        let all = problems(&p).join("\n");
        for want in [
            "instances:",
            "faults[0].start_secs:",
            "faults[0].every_secs:",
            "faults[0].service:",
            "faults[0].rules: rule 0: probability",
            "faults[1]: service and rules",
        ] {
            assert!(all.contains(want), "{want} not in:\n{all}");
        }
    }

    #[test]
    fn repeats_start_every_interval() {
        let text = "action = \"kill\"\nstart_secs = 10\nrepeat = 3\nevery_secs = 20\nduration_secs = 5\n";
        let f: FaultSpec = toml::from_str(text).expect("parses");
        assert_eq!(f.starts(), vec![10.0, 30.0, 50.0]);
        assert_eq!(f.label(), "kill -9 an instance");
    }
}
