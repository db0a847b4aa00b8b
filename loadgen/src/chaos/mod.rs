//! Chaos runs: any scenario under a named fault profile. The loadgen owns
//! a fault proxy in front of each AWS endpoint and the daemon instances
//! behind them, breaks things on the profile's schedule while the scenario
//! runs, and judges the run: nothing lost or counted twice (the scenario's
//! own verification), every fault really happened, failover and recovery
//! within the profile's bounds, every SIGTERM drained to exit 0, and e2e
//! latency per phase (before, during and after each fault).
//!
//! Owns: the proxies, the fleet, the schedule and the chaos verdict. Must
//! not: verify the outputs (the scenario drivers do), nor touch the
//! loadgen's own AWS clients (only the daemon goes through the proxies).

pub mod chart;
pub mod fleet;
pub mod poison;
pub mod profile;
mod relay;
mod reshard;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use faultproxy::{Counts, Proxy, Rule};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tracing::{info, warn};

use self::fleet::{Fleet, Killed, Launch, Terminated};
use self::profile::{Action, FaultSpec, Profile, Service};
use crate::attack::E2e;

/// One event the daemon stored: when it was sent (its event time) and when
/// it was durable.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Event time.
    pub ts: OffsetDateTime,
    /// Durable write.
    pub stored: OffsetDateTime,
}

impl Sample {
    fn e2e_ms(&self) -> f64 {
        (self.stored - self.ts).as_seconds_f64() * 1000.0
    }
}

/// Per service, the rules of each occurrence switched on, by occurrence id.
type ActiveRules = HashMap<Service, Vec<(usize, Vec<Rule>)>>;

/// The proxies, with the rules each fault occurrence has switched on, and
/// the relay in front of Redshift when a fault needs it.
struct Proxies {
    proxies: HashMap<Service, Proxy>,
    active: std::sync::Mutex<ActiveRules>,
    redshift: Option<(relay::Relay, String)>,
}

impl Proxies {
    /// Proxies in front of the AWS endpoints; with `redshift`, a relay in
    /// front of the Redshift endpoint the instances are given in
    /// `CAFE_SINKS__REDSHIFT__URL`.
    async fn start(redshift: bool) -> anyhow::Result<Proxies> {
        let relay = if redshift {
            let var = Service::Redshift.endpoint_var();
            let url = std::env::var(var).with_context(|| {
                format!("{var} is not set: a Redshift outage needs the mirror's postgres:// URL in it, to stand in front of it")
            })?;
            let placeholder: std::net::SocketAddr = "127.0.0.1:9".parse()?;
            let (upstream, _) = relay::redirect(&url, placeholder)?;
            let r = relay::Relay::start(upstream.clone()).await?;
            let (_, through) = relay::redirect(&url, r.addr())?;
            info!(relay = %r.addr(), upstream, "Redshift relay started");
            Some((r, through))
        } else {
            None
        };
        let mut proxies = HashMap::new();
        for s in Service::ALL {
            let upstream = std::env::var(s.endpoint_var())
                .with_context(|| format!("{} is not set: the chaos proxies stand in front of it", s.endpoint_var()))?;
            let proxy = Proxy::start("127.0.0.1:0".parse()?, &upstream).await?;
            info!(service = s.name(), proxy = %proxy.url(), upstream, "Fault proxy started");
            proxies.insert(s, proxy);
        }
        Ok(Proxies { proxies, active: std::sync::Mutex::new(HashMap::new()), redshift: relay })
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self.proxies.iter().map(|(s, p)| (s.endpoint_var().to_owned(), p.url())).collect();
        if let Some((_, url)) = &self.redshift {
            env.push((Service::Redshift.endpoint_var().to_owned(), url.clone()));
        }
        env
    }

    /// Switches occurrence `id`'s rules on (`Some`) or off (`None`).
    fn set(&self, service: Service, id: usize, rules: Option<Vec<Rule>>) -> anyhow::Result<()> {
        let mut active = self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut list = active.get(&service).cloned().unwrap_or_default();
        list.retain(|(i, _)| *i != id);
        if let Some(r) = rules {
            list.push((id, r));
        }
        let all: Vec<Rule> = list.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
        let proxy = self.proxies.get(&service).context("no proxy for the service")?;
        // Kept only once the proxy took them: a refused set changes nothing.
        proxy.set_rules(all)?;
        active.insert(service, list);
        Ok(())
    }

    fn counts(&self, service: Service) -> Counts {
        self.proxies.get(&service).map(|p| p.stats().total).unwrap_or_default()
    }
}

/// Faults injected between two readings of a proxy's counters.
fn injected(before: &Counts, after: &Counts) -> u64 {
    let sum = |c: &Counts| c.throttle + c.error + c.server_error + c.latency + c.late_answer + c.reset + c.black_hole;
    sum(after).saturating_sub(sum(before))
}

/// What one occurrence of a fault did.
#[derive(Debug, Clone, Serialize)]
pub struct Occurrence {
    /// Its label.
    pub fault: String,
    /// Seconds from the run's start, as it happened.
    pub start_secs: f64,
    /// Seconds from the run's start, as it happened.
    pub end_secs: f64,
    /// Proxy faults: requests the proxy answered with a fault in the window
    /// (for the Redshift relay: connections refused or cut).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub injected: Option<u64>,
    /// What `injected` counts, for the summary.
    #[serde(skip)]
    pub injected_what: &'static str,
    /// Kills: the process killed and how its leases moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub killed: Option<Killed>,
    /// Rolling restarts: each instance's SIGTERM.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub terminated: Vec<Terminated>,
    /// Splits and merges: the stream's open shards before and after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_shards: Option<[usize; 2]>,
    /// Poison: the bad events sent.
    #[serde(skip)]
    pub poison: Vec<poison::Sent>,
    /// Poison: bad events the service refused to take (not judged: the
    /// loadgen's own sends, counted).
    #[serde(skip_serializing_if = "is_zero")]
    pub unsent: usize,
    /// Poison: what became of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejections>,
    /// From the fault's end (for a kill: from when its leases had moved,
    /// if later) until the daemon was back to its pre-fault pace: 80% of
    /// the rate, p99 within twice the latency (or until it had nothing left
    /// to store).
    pub recovery_secs: Option<f64>,
    /// Why this occurrence proves nothing, if it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_evidence: Option<String>,
}

impl Occurrence {
    /// An occurrence of `fault` that began `start` seconds into the run.
    fn new(fault: String, start: f64) -> Self {
        Occurrence {
            fault,
            start_secs: start,
            end_secs: start,
            injected: None,
            injected_what: "requests faulted",
            killed: None,
            terminated: Vec::new(),
            open_shards: None,
            poison: Vec::new(),
            unsent: 0,
            rejected: None,
            recovery_secs: None,
            no_evidence: None,
        }
    }

    /// When the fault stopped holding work back: its end, or for a kill the
    /// moment its leases had moved, if later (until then its shards wait).
    fn effect_ends(&self) -> f64 {
        let moved = self.killed.as_ref().and_then(|k| k.failover_secs).map(|f| self.start_secs + f);
        moved.map_or(self.end_secs, |m| m.max(self.end_secs))
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Bad events sent, and what `cafe-rejected` held of them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rejections {
    /// Sent.
    pub sent: usize,
    /// Found in the rejected queue with the contract's reason.
    pub found: usize,
    /// Sent per kind of fault (`malformed_json`, ...) and reason.
    pub kinds: std::collections::BTreeMap<String, usize>,
    /// Not found (the first ten markers).
    pub missing: Vec<String>,
    /// Found with another reason: marker, expected, got (the first ten).
    pub wrong_reason: Vec<(String, String, String)>,
}

/// Latency of the events stored in one phase of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// `before`, `during <fault>`, `after <fault>`.
    pub phase: String,
    /// Seconds from the run's start.
    pub from_secs: f64,
    /// Seconds from the run's start.
    pub to_secs: f64,
    /// Events stored in it.
    pub stored: u64,
    /// Events stored per second.
    pub stored_per_sec: f64,
    /// Event time to durable write.
    #[serde(flatten)]
    pub e2e: E2e,
}

/// The chaos part of a run's summary.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    /// The profile.
    pub profile: String,
    /// Daemon instances.
    pub instances: usize,
    /// Every fault occurrence, in start order.
    pub occurrences: Vec<Occurrence>,
    /// Per phase.
    pub phases: Vec<Phase>,
    /// The instances' SIGTERM at the end of the run.
    pub final_stop: Vec<Terminated>,
    /// Chaos rules that failed.
    pub failed: Vec<String>,
    /// Redshift against DynamoDB at the end, when checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redshift: Option<String>,
}

impl ChaosReport {
    /// True when every fault happened and every chaos rule held.
    pub fn passed(&self) -> bool {
        self.failed.is_empty()
    }

    /// Markdown rendering.
    pub fn markdown(&self) -> String {
        let mut out = format!("\n## Chaos: {} ({} instances)\n\n", self.profile, self.instances);
        out.push_str("| fault | window (s) | evidence | failover (s) | recovery (s) |\n|---|---|---|---|---|\n");
        for o in &self.occurrences {
            let evidence = match (&o.injected, &o.killed, o.terminated.is_empty()) {
                _ if o.rejected.is_some() => {
                    let r = o.rejected.clone().unwrap_or_default();
                    format!("{} bad events sent, {} rejected with their reason", r.sent, r.found)
                }
                _ if o.open_shards.is_some() => {
                    let [a, b] = o.open_shards.unwrap_or_default();
                    format!("open shards {a} -> {b}")
                }
                (Some(n), _, _) => format!("{n} {}", o.injected_what),
                (_, Some(k), _) => format!("pid {} killed holding {} leases", k.pid, k.leases.len()),
                (_, _, false) => {
                    let codes: Vec<String> =
                        o.terminated.iter().map(|t| format!("pid {} exit {:?}", t.pid, t.exit_code)).collect();
                    codes.join(", ")
                }
                _ => "-".into(),
            };
            let evidence = o.no_evidence.as_ref().map_or(evidence, |why| format!("NONE: {why}"));
            let failover = o.killed.as_ref().and_then(|k| k.failover_secs).map_or("-".into(), |f| format!("{f:.1}"));
            let recovery = o.recovery_secs.map_or("-".into(), |r| format!("{r:.1}"));
            out.push_str(&format!(
                "| {} | {:.1} - {:.1} | {} | {} | {} |\n",
                o.fault, o.start_secs, o.end_secs, evidence, failover, recovery
            ));
        }
        out.push_str("\n| phase | from - to (s) | stored | stored/s | e2e p50 / p95 / p99 (ms) |\n|---|---|---|---|---|\n");
        for p in &self.phases {
            // Nothing stored (a split that took no time): no latency to show.
            let e2e = if p.stored == 0 {
                "-".to_owned()
            } else {
                format!("{:.0} / {:.0} / {:.0}", p.e2e.p50_ms, p.e2e.p95_ms, p.e2e.p99_ms)
            };
            out.push_str(&format!(
                "| {} | {:.1} - {:.1} | {} | {:.1} | {} |\n",
                p.phase, p.from_secs, p.to_secs, p.stored, p.stored_per_sec, e2e
            ));
        }
        let stops: Vec<String> =
            self.final_stop.iter().map(|t| format!("pid {} exit {:?} in {:.1} s", t.pid, t.exit_code, t.drain_secs)).collect();
        out.push_str(&format!("\nfinal SIGTERM: {}\n", stops.join(", ")));
        if let Some(r) = &self.redshift {
            out.push_str(&format!("Redshift at the end: {r}\n"));
        }
        if self.failed.is_empty() {
            out.push_str("\nchaos verdict: PASS\n");
        } else {
            out.push_str("\nchaos verdict: FAIL\n");
            for f in &self.failed {
                out.push_str(&format!("- {f}\n"));
            }
        }
        out
    }
}

/// A chaos run in progress.
pub struct Chaos {
    profile: Profile,
    proxies: Arc<Proxies>,
    fleet: Arc<Mutex<Fleet>>,
    started: Option<(OffsetDateTime, JoinSet<anyhow::Result<Occurrence>>)>,
    /// Once every fault happened: the clock's start, what happened, what failed.
    done: Option<(OffsetDateTime, Vec<Occurrence>, Vec<String>)>,
    grace: Duration,
    scenario: String,
    time_scale: f64,
    io: Arc<Io>,
}

/// What the faults reach straight, not through the proxies: the stream
/// (splits, merges, bad records) and the queues (bad messages, the
/// rejected queue).
struct Io {
    stream: reshard::Stream,
    target: poison::Target,
    run_id: String,
}

/// How a chaos run is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Daemon instances.
    pub instances: usize,
    /// Shell command of one instance.
    pub daemon_command: String,
    /// The lease table.
    pub lease_table: String,
    /// Where the instances' logs go.
    pub log_dir: std::path::PathBuf,
    /// Unique to the run.
    pub run_id: String,
    /// How long an instance may drain after SIGTERM.
    pub grace: Duration,
    /// The scenario's name, for the report.
    pub scenario: String,
    /// Multiplies the profile's times (`--time-scale`, as the stages').
    pub time_scale: f64,
    /// The orders stream (splits, merges, bad records).
    pub stream: String,
    /// The payments queue (bad messages).
    pub payments_queue: String,
    /// The menu queue (bad messages).
    pub menu_queue: String,
    /// The rejected queue (where bad events must arrive).
    pub rejected_queue: String,
}

impl Chaos {
    /// Starts the proxies and the instances behind them.
    pub async fn setup(profile: Profile, setup: Setup) -> anyhow::Result<Chaos> {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let kinesis = aws_sdk_kinesis::Client::new(&sdk);
        let io = Arc::new(Io {
            stream: reshard::Stream { client: kinesis.clone(), name: setup.stream.clone() },
            target: poison::Target {
                kinesis,
                sqs: aws_sdk_sqs::Client::new(&sdk),
                stream: setup.stream.clone(),
                payments_queue: setup.payments_queue.clone(),
                menu_queue: setup.menu_queue.clone(),
                rejected_queue: setup.rejected_queue.clone(),
            },
            run_id: setup.run_id.clone(),
        });
        let needs_relay = profile.faults.iter().any(|f| f.action == Action::RefuseConnections);
        let proxies = Proxies::start(needs_relay).await?;
        let mut env = proxies.env();
        env.push(("CAFE_SHUTDOWN__GRACE_PERIOD_SECS".to_owned(), setup.grace.as_secs().to_string()));
        let launch = Launch {
            command: setup.daemon_command.clone(),
            env,
            log_dir: setup.log_dir.clone(),
            lease_table: setup.lease_table.clone(),
            run_id: setup.run_id.clone(),
        };
        info!(profile = %profile.name, instances = setup.instances, command = %setup.daemon_command, "Starting the instances");
        let fleet = Fleet::start(setup.instances, launch, ddb).await?;
        Ok(Chaos {
            profile,
            proxies: Arc::new(proxies),
            fleet: Arc::new(Mutex::new(fleet)),
            started: None,
            done: None,
            grace: setup.grace,
            scenario: setup.scenario,
            time_scale: setup.time_scale,
            io,
        })
    }

    /// Waits until every fault has happened (the instances keep running).
    pub async fn faults_done(&mut self) -> anyhow::Result<()> {
        if self.done.is_some() {
            return Ok(());
        }
        let (t0, mut tasks) = self.started.take().context("the chaos run never began")?;
        let mut occurrences = Vec::new();
        let mut failed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(o)) => occurrences.push(o),
                Ok(Err(e)) => failed.push(format!("a fault could not be carried out: {e:#}")),
                Err(e) => failed.push(format!("a fault's task failed: {e}")),
            }
        }
        occurrences.sort_by(|a, b| a.start_secs.total_cmp(&b.start_secs));
        self.done = Some((t0, occurrences, failed));
        Ok(())
    }

    /// Starts the profile's clock: call as the load begins.
    pub fn begin(&mut self) {
        let t0 = OffsetDateTime::now_utc();
        let mut tasks = JoinSet::new();
        let mut id = 0usize;
        for spec in &self.profile.faults {
            let spec = spec.scaled(self.time_scale);
            for start in spec.starts() {
                let (spec, proxies, fleet, grace) =
                    (spec.clone(), Arc::clone(&self.proxies), Arc::clone(&self.fleet), self.grace);
                tasks.spawn(occur(id, spec, t0, start, proxies, fleet, grace, Arc::clone(&self.io)));
                id += 1;
            }
        }
        self.started = Some((t0, tasks));
    }

    /// Waits for the faults still to come, stops the instances (each must
    /// drain and exit 0), and judges the run from the events it stored
    /// (`p99_before`: the scenario's e2e target, held before the first
    /// fault; `mirror`: Redshift against DynamoDB after the faults, when
    /// checked). Writes `chaos.json`, `chaos.svg` and `chaos.html` into
    /// `dir`, and the picture into goose's HTML report there.
    pub async fn finish(
        mut self,
        samples: &[Sample],
        p99_before: Option<u64>,
        dir: &Path,
        mirror: Option<Result<usize, String>>,
    ) -> anyhow::Result<ChaosReport> {
        self.faults_done().await?;
        let (t0, mut occurrences, mut failed) = self.done.take().context("the chaos run never began")?;
        failed.extend(mirror.clone().and_then(Result::err));
        let redshift = mirror.map(|m| m.map_or_else(|e| e, |rows| format!("{rows} rows equal to DynamoDB")));
        // Every bad event of the run, looked for in one pass over the queue.
        let all: Vec<poison::Sent> = occurrences.iter().flat_map(|o| o.poison.iter().cloned()).collect();
        let found = if all.is_empty() {
            HashMap::new()
        } else {
            match self.io.target.rejections(&all, Duration::from_secs(60)).await {
                Ok(found) => found,
                Err(e) => {
                    failed.push(format!("the rejected queue could not be read: {e:#}"));
                    HashMap::new()
                }
            }
        };
        for o in occurrences.iter_mut().filter(|o| !o.poison.is_empty()) {
            let mut r = Rejections { sent: o.poison.len(), ..Rejections::default() };
            for s in &o.poison {
                *r.kinds.entry(format!("{} ({})", s.kind, s.reason)).or_default() += 1;
                match found.get(&s.marker) {
                    None if r.missing.len() < 10 => r.missing.push(s.marker.clone()),
                    None => {}
                    Some(got) if got != s.reason && r.wrong_reason.len() < 10 => {
                        r.wrong_reason.push((s.marker.clone(), s.reason.to_owned(), got.clone()));
                    }
                    Some(got) if got != s.reason => {}
                    Some(_) => r.found += 1,
                }
            }
            if r.found < r.sent {
                failed.push(format!(
                    "{} of {} bad events were not in the rejected queue with their reason (missing {:?}, wrong reason {:?})",
                    r.sent - r.found,
                    r.sent,
                    r.missing,
                    r.wrong_reason
                ));
            }
            o.rejected = Some(r);
        }
        let final_stop = self.fleet.lock().await.stop_all(self.grace + Duration::from_secs(10)).await;
        let secs = |t: OffsetDateTime| (t - t0).as_seconds_f64();
        let points: Vec<(f64, f64)> = samples.iter().map(|s| (secs(s.stored), s.e2e_ms())).collect();
        let load = samples.iter().map(|s| secs(s.ts)).fold(f64::INFINITY, f64::min)
            ..=samples.iter().map(|s| secs(s.stored)).fold(f64::NEG_INFINITY, f64::max);
        for o in &mut occurrences {
            if o.no_evidence.is_none() && !(o.start_secs <= *load.end() && o.effect_ends() >= *load.start()) {
                o.no_evidence = Some(format!(
                    "it did not overlap the load ({:.1} s to {:.1} s): it hit an idle system",
                    load.start(),
                    load.end()
                ));
            }
        }
        let baseline = baseline(&points, occurrences.first().map_or(f64::INFINITY, |o| o.start_secs));
        let starts: Vec<f64> = occurrences.iter().map(|o| o.start_secs).collect();
        for o in &mut occurrences {
            let end = o.effect_ends();
            // A fault followed at once by the next one has no recovery of
            // its own: the next one's recovery covers both.
            if starts.iter().any(|s| *s > o.start_secs && *s <= end + 0.5) {
                continue;
            }
            o.recovery_secs = recovery(&points, end, baseline);
            if baseline.is_none() {
                o.recovery_secs = Some(drained(samples, t0, end));
            }
        }
        let phases = phases(&points, &occurrences);

        failed.extend(judge(&occurrences, &final_stop, &self.profile.thresholds));
        if let Some(before) = phases.first().filter(|p| p.stored > 0)
            && let Some(why) = crate::attack::p99_target(before.e2e.p99_ms, p99_before)
        {
            failed.push(format!("before the first fault: {why}"));
        }
        let instances = self.fleet.lock().await.len();
        let report =
            ChaosReport { profile: self.profile.name.clone(), instances, occurrences, phases, final_stop, failed, redshift };
        let windows: Vec<chart::Window> = report
            .occurrences
            .iter()
            .map(|o| chart::Window { label: o.fault.clone(), start: o.start_secs, end: o.end_secs })
            .collect();
        let title = format!("{} under chaos: {}", self.scenario_name(), report.profile);
        let picture = chart::svg(&title, &buckets(samples, t0), &windows);
        write_report(dir, &report, &picture)?;
        Ok(report)
    }

    fn scenario_name(&self) -> &str {
        &self.scenario
    }
}

/// What the faults' own rules say about a run: every occurrence left
/// evidence that it happened, every killed instance's leases moved (within
/// the bound), every SIGTERM ended in exit 0, every recovery within the bound.
fn judge(occurrences: &[Occurrence], final_stop: &[Terminated], t: &profile::ChaosThresholds) -> Vec<String> {
    let mut failed = Vec::new();
    for o in occurrences {
        if let Some(why) = &o.no_evidence {
            failed.push(format!("{} at {:.1} s proves nothing: {why}", o.fault, o.start_secs));
        }
        if let Some(k) = &o.killed {
            match (k.leases.is_empty(), k.failover_secs, t.max_failover_secs) {
                (true, _, _) => {}
                (false, None, _) => failed.push(format!("the leases of killed pid {} never moved", k.pid)),
                (false, Some(f), Some(max)) if f > max => {
                    failed.push(format!("failover of killed pid {} took {f:.1} s, above {max} s", k.pid));
                }
                _ => {}
            }
        }
        for term in &o.terminated {
            if term.exit_code != Some(0) {
                failed.push(format!("instance pid {} exited {:?} after SIGTERM, not 0", term.pid, term.exit_code));
            }
        }
        if let (Some(r), Some(max)) = (o.recovery_secs, t.max_recovery_secs)
            && r > max
        {
            failed.push(format!("recovery after {} at {:.1} s took {r:.1} s, above {max} s", o.fault, o.end_secs));
        }
    }
    for term in final_stop {
        if term.exit_code != Some(0) {
            failed.push(format!("instance pid {} exited {:?} after the final SIGTERM, not 0", term.pid, term.exit_code));
        }
    }
    failed
}

/// `chaos.json`, `chaos.svg`, `chaos.html` (the tables and the picture,
/// offline).
fn write_report(dir: &Path, report: &ChaosReport, picture: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join("chaos.json"), serde_json::to_string_pretty(report)?)?;
    std::fs::write(dir.join("chaos.svg"), picture)?;
    let escaped = report.markdown().replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>chaos: {}</title></head>\n<body>\n{picture}\n<pre>{escaped}</pre>\n</body></html>\n",
        report.profile
    );
    std::fs::write(dir.join("chaos.html"), html)?;
    Ok(())
}

async fn sleep_until(t0: OffsetDateTime, secs: f64) {
    let now = (OffsetDateTime::now_utc() - t0).as_seconds_f64();
    if secs > now {
        tokio::time::sleep(Duration::from_secs_f64(secs - now)).await;
    }
}

/// One occurrence of `spec`, starting `start` seconds after `t0`.
#[allow(clippy::too_many_arguments)]
async fn occur(
    id: usize,
    spec: FaultSpec,
    t0: OffsetDateTime,
    start: f64,
    proxies: Arc<Proxies>,
    fleet: Arc<Mutex<Fleet>>,
    grace: Duration,
    io: Arc<Io>,
) -> anyhow::Result<Occurrence> {
    sleep_until(t0, start).await;
    let now = || (OffsetDateTime::now_utc() - t0).as_seconds_f64();
    let mut o = Occurrence::new(spec.label(), now());
    match spec.action {
        Action::Poison => {
            let input = spec.input.context("a poison fault names its input")?;
            let gap = Duration::from_secs_f64(1.0 / spec.per_sec.unwrap_or(1.0));
            let mut n = 0usize;
            while now() < start + spec.duration_secs {
                let kind = poison::Kind::ALL[n % poison::Kind::ALL.len()];
                let marker = format!("poison-{}-{id}-{n}", io.run_id);
                let bytes = poison::payload(kind, &marker, input);
                let reason = poison::expected_reason(&bytes).context("a poison payload the contract accepts")?;
                match io.target.send_retrying(input, &marker, bytes).await {
                    Ok(()) => o.poison.push(poison::Sent { marker, kind: kind.name(), reason }),
                    Err(e) => {
                        warn!(fault = %o.fault, error = %format!("{e:#}"), "A bad event could not be sent");
                        o.unsent += 1;
                    }
                }
                n += 1;
                // On a schedule, not a gap: a slow send is caught up.
                sleep_until(t0, start + n as f64 * gap.as_secs_f64()).await;
            }
            o.end_secs = now();
            info!(fault = %o.fault, sent = n, "Bad events sent");
            if n == 0 {
                o.no_evidence = Some("no bad event was sent".into());
            }
        }
        Action::RefuseConnections => {
            let (relay, _) = proxies.redshift.as_ref().context("no Redshift relay")?;
            let before = relay.refused();
            info!(fault = %o.fault, secs = spec.duration_secs, relayed = relay.relayed(), "Redshift refuses connections");
            relay.refuse(true);
            sleep_until(t0, start + spec.duration_secs).await;
            // The mirror connects only when a flush has rows to write: an
            // outage nobody noticed proves nothing, so it lasts until a
            // connection was refused, up to three times as long.
            while relay.refused() == before && now() < start + 3.0 * spec.duration_secs {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            relay.refuse(false);
            o.end_secs = now();
            let n = relay.refused() - before;
            info!(fault = %o.fault, refused = n, "Redshift accepts connections again");
            o.injected = Some(n);
            o.injected_what = "connections refused";
            if n == 0 {
                o.no_evidence = Some("no connection to Redshift was refused (nothing tried to connect)".into());
            }
        }
        Action::Split | Action::Merge => {
            let stream = &io.stream;
            let before = reshard::open_shards(&stream.client, &stream.name).await?;
            reshard::reshard(&stream.client, &stream.name, spec.action == Action::Split).await?;
            let after = reshard::open_shards(&stream.client, &stream.name).await?;
            info!(fault = %o.fault, before = before.len(), after = after.len(), "Stream resharded");
            o.end_secs = now();
            o.open_shards = Some([before.len(), after.len()]);
            if before.len() == after.len() {
                o.no_evidence = Some(format!("the stream still has {} open shards", after.len()));
            }
        }
        Action::Proxy => {
            let service = spec.service.context("a proxy fault names its service")?;
            let before = proxies.counts(service);
            info!(fault = %o.fault, service = service.name(), secs = spec.duration_secs, "Fault on");
            proxies.set(service, id, Some(spec.rules.clone()))?;
            sleep_until(t0, start + spec.duration_secs).await;
            proxies.set(service, id, None)?;
            o.end_secs = now();
            let n = injected(&before, &proxies.counts(service));
            info!(fault = %o.fault, injected = n, "Fault off");
            o.injected = Some(n);
            if n == 0 {
                o.no_evidence = Some(format!("the {} proxy faulted no request", service.name()));
            }
        }
        Action::Kill => {
            let mut killed = fleet.lock().await.kill_one().await?;
            let k = killed.instance;
            // Failover is timed while the instance stays down and after.
            let watch = {
                let (leases, probe) = (fleet.lock().await.leases(), killed.clone());
                tokio::spawn(async move { leases.failover(&probe, Duration::from_secs(120)).await })
            };
            sleep_until(t0, start + spec.duration_secs).await;
            killed.restarted_pid = Some(fleet.lock().await.restart(k).await?);
            o.end_secs = now();
            killed.failover_secs = watch.await.ok().flatten();
            if killed.leases.is_empty() {
                warn!(pid = killed.pid, "The instance killed held no lease");
                o.no_evidence = Some("the instance killed held no lease: nothing had to fail over".into());
            }
            o.killed = Some(killed);
        }
        Action::RollingRestart => {
            let n = fleet.lock().await.len();
            for k in 0..n {
                let mut term = fleet.lock().await.terminate(k, grace + Duration::from_secs(10)).await?;
                term.restarted_pid = Some(fleet.lock().await.restart(k).await?);
                info!(instance = k, pid = term.pid, exit = ?term.exit_code, drain_secs = term.drain_secs, "Instance restarted");
                o.terminated.push(term);
                if k + 1 < n {
                    tokio::time::sleep(Duration::from_secs_f64(spec.duration_secs)).await;
                }
            }
            o.end_secs = now();
        }
    }
    Ok(o)
}

/// How the run went before the first fault: the pace a recovery returns to.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Baseline {
    /// Events stored per second.
    rate: f64,
    /// e2e p99 of what was stored, ms.
    p99_ms: f64,
}

impl Baseline {
    /// The latency a recovered second stays under: twice the pre-fault
    /// p99, and at least one second above it (a quiet run's p99 of 250 ms
    /// is not held to 500 ms on a noisy machine).
    fn latency_ok(&self) -> f64 {
        (2.0 * self.p99_ms).max(self.p99_ms + 1000.0)
    }
}

/// The run before the first fault (None: too short a time, or nothing
/// stored, to tell).
fn baseline(points: &[(f64, f64)], first_fault: f64) -> Option<Baseline> {
    let until = first_fault.min(points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max));
    if until.is_nan() || until < 2.0 {
        return None;
    }
    let mut e2e: Vec<f64> = points.iter().filter(|p| p.0 >= 0.0 && p.0 < until).map(|p| p.1).collect();
    if e2e.is_empty() {
        return None;
    }
    e2e.sort_by(f64::total_cmp);
    Some(Baseline { rate: e2e.len() as f64 / until, p99_ms: crate::verify::percentile(&e2e, 99.0) })
}

/// Seconds from `end` until the daemon is back to its pre-fault pace: the
/// first second in which it stores at least 80% of the baseline rate with
/// a p99 within [`Baseline::latency_ok`] (so a backlog held by the fault,
/// or shards still waiting for their failover, is drained), or until the
/// last event was stored if that comes first (nothing left to do). With no
/// baseline, until the first event stored after the fault. Zero when
/// nothing was stored after the fault.
fn recovery(points: &[(f64, f64)], end: f64, baseline: Option<Baseline>) -> Option<f64> {
    let after: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0 >= end).collect();
    let Some(last) = after.iter().map(|p| p.0).reduce(f64::max) else { return Some(0.0) };
    let first = after.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let Some(base) = baseline else { return Some(first - end) };
    let mut t = end;
    while t < last {
        let mut window: Vec<f64> = after.iter().filter(|p| p.0 >= t && p.0 < t + 1.0).map(|p| p.1).collect();
        window.sort_by(f64::total_cmp);
        if window.len() as f64 >= 0.8 * base.rate && crate::verify::percentile(&window, 99.0) <= base.latency_ok() {
            return Some(t - end);
        }
        t += 0.25;
    }
    Some(last - end)
}

/// Seconds from `end` until every event sent before it was stored: the
/// backlog the fault built drained (the recovery when there is no pre-fault
/// pace to return to).
fn drained(samples: &[Sample], t0: OffsetDateTime, end: f64) -> f64 {
    let secs = |t: OffsetDateTime| (t - t0).as_seconds_f64();
    samples.iter().filter(|s| secs(s.ts) <= end).map(|s| secs(s.stored) - end).fold(0.0, f64::max)
}

fn phase(name: String, from: f64, to: f64, points: &[(f64, f64)]) -> Phase {
    let mut e2e: Vec<f64> = points.iter().filter(|p| p.0 >= from && p.0 < to).map(|p| p.1).collect();
    e2e.sort_by(f64::total_cmp);
    let span = to - from;
    Phase {
        phase: name,
        from_secs: from,
        to_secs: to,
        stored: e2e.len() as u64,
        stored_per_sec: if span > 0.0 { e2e.len() as f64 / span } else { 0.0 },
        e2e: E2e::of(&e2e),
    }
}

/// Before the first fault, during each, and after each until the next.
/// Faults with the same window (one profile slowing every service at
/// once) share one phase, named after all of them.
fn phases(points: &[(f64, f64)], occurrences: &[Occurrence]) -> Vec<Phase> {
    let last = points.iter().map(|p| p.0).fold(0.0, f64::max) + 0.001;
    let mut windows: Vec<(String, f64, f64)> = Vec::new();
    for o in occurrences {
        match windows.last_mut() {
            Some(w) if (w.1 - o.start_secs).abs() < 0.05 && (w.2 - o.end_secs).abs() < 0.05 => {
                w.0 = format!("{} + {}", w.0, o.fault);
            }
            _ => windows.push((o.fault.clone(), o.start_secs, o.end_secs)),
        }
    }
    let mut out = Vec::new();
    let first = windows.first().map_or(last, |w| w.1);
    out.push(phase("before".into(), 0f64.min(first), first, points));
    for (i, (fault, start, end)) in windows.iter().enumerate() {
        out.push(phase(format!("during {fault}"), *start, *end, points));
        let next = windows.get(i + 1).map_or(last.max(*end), |n| n.1.max(*end));
        // The next fault may start as this one ends: no time after it.
        if next > end + 0.05 {
            out.push(phase(format!("after {fault}"), *end, next, points));
        }
    }
    out
}

/// The per-second picture of a run: sent and stored per second, e2e p50,
/// p95 and p99 of what was stored in each second.
pub fn buckets(samples: &[Sample], t0: OffsetDateTime) -> Vec<chart::Bucket> {
    let secs = |t: OffsetDateTime| (t - t0).as_seconds_f64();
    let end = samples.iter().map(|s| secs(s.stored).max(secs(s.ts))).fold(0.0, f64::max);
    let n = end.ceil().max(0.0) as usize + 1;
    let mut sent = vec![0u64; n];
    let mut stored: Vec<Vec<f64>> = vec![Vec::new(); n];
    for s in samples {
        let (a, b) = (secs(s.ts), secs(s.stored));
        if a >= 0.0 && (a as usize) < n {
            sent[a as usize] += 1;
        }
        if b >= 0.0 && (b as usize) < n {
            stored[b as usize].push(s.e2e_ms());
        }
    }
    (0..n)
        .map(|i| {
            let v = &mut stored[i];
            v.sort_by(f64::total_cmp);
            chart::Bucket {
                t: i as f64,
                sent_per_sec: sent[i] as f64,
                stored_per_sec: v.len() as f64,
                p50_ms: crate::verify::percentile(v, 50.0),
                p95_ms: crate::verify::percentile(v, 95.0),
                p99_ms: crate::verify::percentile(v, 99.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occurrence(start: f64, end: f64) -> Occurrence {
        Occurrence { end_secs: end, injected: Some(1), ..Occurrence::new("f".into(), start) }
    }

    #[test]
    fn recovery_is_the_return_to_the_pre_fault_pace() {
        // 10/s at 50 ms from 0 to 10 s; nothing from 10 to 20 s (the
        // fault); a trickle of 2/s from 20 to 23 s; then 10/s with the held
        // backlog (5 s old) until 25 s, and at 800 ms after.
        let mut points = Vec::new();
        for i in 0..100 {
            points.push((f64::from(i) * 0.1, 50.0));
        }
        for i in 0..6 {
            points.push((20.0 + f64::from(i) * 0.5, 5000.0));
        }
        for i in 0..20 {
            points.push((23.0 + f64::from(i) * 0.1, 5000.0));
        }
        for i in 0..30 {
            points.push((25.0 + f64::from(i) * 0.1, 800.0));
        }
        let base = baseline(&points, 10.0).expect("a baseline");
        assert!((base.rate - 10.0).abs() < 0.01 && base.p99_ms == 50.0, "{base:?}");
        assert_eq!(base.latency_ok(), 1050.0);
        // The rate is back at 23 s, the latency at 25 s: recovered 5 s after.
        let r = recovery(&points, 20.0, Some(base)).expect("recovered");
        assert!((r - 5.0).abs() < 0.01, "{r}");
        // Never back to pace: until the last event stored.
        let r = recovery(&points[..126], 20.0, Some(base)).expect("drained");
        assert!((r - 4.9).abs() < 0.01, "{r}");
        // Nothing stored after the fault: nothing was waiting.
        assert_eq!(recovery(&points[..100], 20.0, Some(base)), Some(0.0));
        // No baseline: the first event stored after it.
        assert_eq!(recovery(&points, 20.0, None), Some(0.0));
        assert_eq!(recovery(&points, 19.0, None), Some(1.0));
        assert_eq!(baseline(&points, 1.0), None, "too short to tell");
    }

    #[test]
    fn phases_split_the_stored_events_by_when_they_were_stored() {
        let points: Vec<(f64, f64)> = (0..40).map(|i| (f64::from(i), f64::from(i))).collect();
        let p = phases(&points, &[occurrence(10.0, 20.0)]);
        let names: Vec<&str> = p.iter().map(|x| x.phase.as_str()).collect();
        assert_eq!(names, vec!["before", "during f", "after f"]);
        assert_eq!(p.iter().map(|x| x.stored).collect::<Vec<_>>(), vec![10, 10, 20]);
        assert_eq!(p[1].e2e.p99_ms, 19.0);
        // Back to back: no phase between them.
        let p = phases(&points, &[occurrence(0.0, 10.0), occurrence(10.0, 20.0)]);
        let names: Vec<&str> = p.iter().map(|x| x.phase.as_str()).collect();
        assert_eq!(names, vec!["before", "during f", "during f", "after f"]);
        // The same window: one phase for both.
        let other = Occurrence { fault: "g".into(), ..occurrence(10.0, 20.0) };
        let p = phases(&points, &[occurrence(10.0, 20.0), other]);
        let names: Vec<&str> = p.iter().map(|x| x.phase.as_str()).collect();
        assert_eq!(names, vec!["before", "during f + g", "after f + g"]);
        assert_eq!(p[1].stored, 10);
    }

    #[test]
    fn a_fault_that_did_nothing_fails_the_run() {
        let t = profile::ChaosThresholds { max_failover_secs: Some(20.0), max_recovery_secs: Some(30.0) };
        let ok = occurrence(1.0, 2.0);
        assert!(judge(std::slice::from_ref(&ok), &[], &t).is_empty());
        let idle = Occurrence { injected: Some(0), no_evidence: Some("the sqs proxy faulted no request".into()), ..ok.clone() };
        assert_eq!(judge(&[idle], &[], &t).len(), 1);
        let killed = |failover: Option<f64>, leases: usize| Occurrence {
            killed: Some(Killed {
                instance: 0,
                pid: 42,
                worker_id: "w".into(),
                leases: (0..leases).map(|i| format!("shard-{i}")).collect(),
                at: OffsetDateTime::UNIX_EPOCH,
                failover_secs: failover,
                restarted_pid: Some(43),
            }),
            ..ok.clone()
        };
        assert!(judge(&[killed(Some(12.0), 1)], &[], &t).is_empty());
        assert!(judge(&[killed(None, 0)], &[], &t).is_empty(), "nothing to move");
        assert!(judge(&[killed(None, 1)], &[], &t)[0].contains("never moved"));
        assert!(judge(&[killed(Some(25.0), 1)], &[], &t)[0].contains("above 20"));
        let stop = |code| Terminated { instance: 0, pid: 7, exit_code: code, drain_secs: 1.0, restarted_pid: None };
        assert!(judge(&[], &[stop(Some(0))], &t).is_empty());
        assert_eq!(judge(&[], &[stop(Some(1)), stop(None)], &t).len(), 2);
        let slow = Occurrence { recovery_secs: Some(31.0), ..ok };
        assert!(judge(&[slow], &[], &t)[0].contains("recovery"));
    }

    #[test]
    fn the_faults_counted_are_those_of_the_window() {
        let before = Counts { forwarded: 10, throttle: 3, ..Counts::default() };
        let after = Counts { forwarded: 30, throttle: 7, black_hole: 1, ..Counts::default() };
        assert_eq!(injected(&before, &after), 5);
        assert_eq!(injected(&after, &after), 0);
    }
}
