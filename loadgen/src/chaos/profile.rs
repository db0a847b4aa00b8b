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
        }
    }

    /// The SDK's service-specific endpoint variable.
    pub fn endpoint_var(self) -> &'static str {
        match self {
            Service::Dynamodb => "AWS_ENDPOINT_URL_DYNAMODB",
            Service::Kinesis => "AWS_ENDPOINT_URL_KINESIS",
            Service::Sqs => "AWS_ENDPOINT_URL_SQS",
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
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            out.push(load(&path)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The profiles folder: `chaos/` in the scenarios folder.
pub fn dir() -> anyhow::Result<std::path::PathBuf> {
    Ok(crate::scenario::scenarios_dir()?.join("chaos"))
}

/// Finds the profile called `name`.
pub fn find(name: &str) -> anyhow::Result<Profile> {
    let dir = dir()?;
    let all = list(&dir)?;
    let names: Vec<String> = all.iter().map(|p| p.name.clone()).collect();
    all.into_iter()
        .find(|p| p.name == name)
        .with_context(|| format!("no chaos profile {name:?} in {}; have: {}", dir.display(), names.join(", ")))
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

/// What is wrong with `p`, each naming its field.
fn problems(p: &Profile) -> Vec<String> {
    let mut out = Vec::new();
    if p.instances == 0 {
        out.push("instances: must be at least 1".to_owned());
    }
    if p.faults.is_empty() {
        out.push("faults: a profile needs at least one [[faults]]".to_owned());
    }
    for (i, f) in p.faults.iter().enumerate() {
        let at = format!("faults[{i}]");
        let finite_non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !finite_non_negative(f.start_secs) {
            out.push(format!("{at}.start_secs: must be a number >= 0, got {}", f.start_secs));
        }
        if !finite_non_negative(f.duration_secs) {
            out.push(format!("{at}.duration_secs: must be a number >= 0, got {}", f.duration_secs));
        }
        if f.repeat == 0 {
            out.push(format!("{at}.repeat: must be at least 1"));
        }
        if f.repeat > 1 && !(f.every_secs.is_finite() && f.every_secs > f.duration_secs) {
            out.push(format!(
                "{at}.every_secs: must be longer than duration_secs ({}) when repeat > 1, got {}",
                f.duration_secs, f.every_secs
            ));
        }
        match f.action {
            Action::Proxy => {
                if f.service.is_none() {
                    out.push(format!("{at}.service: a proxy fault names its service (dynamodb, kinesis or sqs)"));
                }
                if f.rules.is_empty() {
                    out.push(format!("{at}.rules: a proxy fault needs at least one rule"));
                }
                if f.duration_secs.is_nan() || f.duration_secs <= 0.0 {
                    out.push(format!("{at}.duration_secs: a proxy fault lasts more than 0 s"));
                }
                for (k, r) in f.rules.iter().enumerate() {
                    if !(0.0..=1.0).contains(&r.probability) {
                        out.push(format!("{at}.rules[{k}].probability: must be 0..1, got {}", r.probability));
                    }
                }
            }
            Action::Kill | Action::RollingRestart => {
                if f.service.is_some() || !f.rules.is_empty() {
                    out.push(format!("{at}: service and rules belong to proxy faults"));
                }
            }
        }
    }
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
        for want in ["kill-instances", "rolling-restart", "throttle-dynamodb", "slow-aws", "partition"] {
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
            "faults[0].rules[0].probability:",
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
