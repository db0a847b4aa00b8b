//! What every scenario's goose attack shares: the configuration (one
//! iteration per user, all users at once, reports in three formats, the
//! scenario's thresholds), the run's state cell and send record, SQS batch
//! sends with their retries, and reading goose's verdict.
//!
//! Owns: the goose settings and plumbing cafe-loadgen relies on. Must not:
//! know any scenario's transactions.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use goose::config::GooseConfiguration;
use goose::prelude::{GooseError, GooseMetrics, GooseUser, TransactionError};
use time::OffsetDateTime;

/// A scenario's run state, for its goose transactions: they are plain
/// functions, so the state lives in one process-wide cell per scenario.
#[derive(Debug)]
pub struct RunCell<T>(OnceLock<Arc<T>>);

impl<T> RunCell<T> {
    /// An empty cell.
    pub const fn new() -> Self {
        RunCell(OnceLock::new())
    }

    /// Sets the run's state; a process runs one run of a scenario.
    pub fn set(&self, state: Arc<T>) -> anyhow::Result<()> {
        self.0.set(state).map_err(|_| anyhow::anyhow!("one run of a scenario per process"))
    }

    /// The run's state, inside a transaction.
    pub fn get(&self) -> Result<Arc<T>, Box<TransactionError>> {
        self.0.get().cloned().ok_or_else(|| Box::new(TransactionError::Custom("run state missing".into())))
    }
}

/// What the users of a run sent: when the first send began, what the
/// service accepted (`T` is what the verification expects of it), and how
/// many it still refused after retries.
#[derive(Debug)]
pub struct Sends<T> {
    started: OnceLock<(Instant, OffsetDateTime)>,
    sent: Mutex<Vec<T>>,
    failures: AtomicU64,
}

impl<T> Sends<T> {
    /// Nothing sent yet; room for `capacity`.
    pub fn with_capacity(capacity: usize) -> Self {
        Sends { started: OnceLock::new(), sent: Mutex::new(Vec::with_capacity(capacity)), failures: AtomicU64::new(0) }
    }

    /// Marks the start of sending (the first caller's time counts) and
    /// returns it.
    pub fn start(&self) -> (Instant, OffsetDateTime) {
        *self.started.get_or_init(|| (Instant::now(), OffsetDateTime::now_utc()))
    }

    /// When sending started, if it did.
    pub fn started(&self) -> Option<(Instant, OffsetDateTime)> {
        self.started.get().copied()
    }

    /// Records what was accepted.
    pub fn accepted(&self, items: impl IntoIterator<Item = T>) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let before = sent.len();
        sent.extend(items);
        crate::progress::run().sent((sent.len() - before) as u64);
    }

    /// Records `n` items refused for good.
    pub fn refused(&self, n: usize) {
        self.failures.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Everything accepted so far, and the refusals.
    pub fn take(&self) -> (Vec<T>, u64) {
        (std::mem::take(&mut *self.sent.lock().unwrap_or_else(|e| e.into_inner())), self.failures.load(Ordering::Relaxed))
    }
}

/// Sends `entries` (their ids are their indices) to `queue_url` with
/// SendMessageBatch, sending the refused ones again up to 5 times, and
/// records each call in goose's metrics as `name`. Returns the indices SQS
/// accepted; the caller records the rest as refused.
pub async fn send_sqs_batch(
    user: &mut GooseUser,
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    name: &str,
    entries: Vec<SendMessageBatchRequestEntry>,
) -> Result<Vec<usize>, Box<TransactionError>> {
    let mut accepted = Vec::with_capacity(entries.len());
    let mut pending: Vec<usize> = (0..entries.len()).collect();
    for attempt in 0..5u64 {
        let batch: Vec<SendMessageBatchRequestEntry> = pending.iter().map(|&k| entries[k].clone()).collect();
        let started = Instant::now();
        let result = sqs.send_message_batch().queue_url(queue_url).set_entries(Some(batch)).send().await;
        let (ok, err) = match &result {
            Ok(out) if out.failed.is_empty() => (true, None),
            Ok(_) => (false, Some("some entries failed")),
            Err(_) => (false, Some("request failed")),
        };
        user.record_custom_request_duration("SQS", name, started.elapsed(), ok, None, err).await?;
        let failed: Vec<usize> = match result {
            Ok(out) => out.failed.iter().filter_map(|f| f.id.parse().ok()).collect(),
            Err(_) => pending.clone(),
        };
        accepted.extend(pending.iter().filter(|k| !failed.contains(k)));
        pending = failed;
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
    }
    Ok(accepted)
}

/// A goose configuration for `users` users that each run once, against a
/// non-HTTP `host` (named for goose's report), with `thresholds` and the
/// JSON and Markdown reports in `report_dir` (not goose's HTML: its charts
/// load their script from a CDN and are blank offline; the run's own
/// `report.html` has the charts, self-contained).
pub fn config(host: String, users: usize, thresholds: &[String], report_dir: &Path) -> GooseConfiguration {
    let mut config = GooseConfiguration::default();
    config.host = Some(host);
    config.users = Some(users);
    config.increase_rate = Some(users.to_string());
    config.iterations = Some(1);
    config.no_telnet = true;
    config.no_print_metrics = true;
    config.quiet = 1;
    config.threshold = thresholds.to_vec();
    config.report_file =
        ["json", "md"].iter().map(|ext| report_dir.join(format!("goose-report.{ext}")).display().to_string()).collect();
    config
}

/// The thresholds that failed, or the error that kept the attack from running.
pub fn failed_thresholds(result: Result<GooseMetrics, GooseError>) -> anyhow::Result<Vec<String>> {
    match result {
        Ok(_) => Ok(Vec::new()),
        Err(GooseError::ThresholdsFailed { failed, .. }) => {
            Ok(failed.iter().map(|t| format!("goose threshold {} (observed {})", t.rule, t.observed)).collect())
        }
        Err(e) => Err(anyhow::anyhow!("goose: {e}")),
    }
}

/// The scenario's e2e p99 target, as a failure line if `p99_ms` misses it
/// (a NaN p99, from no samples, misses it too).
pub fn p99_target(p99_ms: f64, limit: Option<u64>) -> Option<String> {
    let limit = limit?;
    (!crate::scenario::at_most(p99_ms, limit as f64)).then(|| format!("e2e p99 {p99_ms:.0} ms is above the target {limit} ms"))
}

/// The URL of the queue a scenario sends to, or why it cannot.
pub async fn queue_url(sqs: &aws_sdk_sqs::Client, name: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    sqs.get_queue_url()
        .queue_name(name)
        .send()
        .await
        .with_context(|| format!("queue {name} not found; run `cafe-streamd provision`"))?
        .queue_url
        .context("no queue URL")
}

/// Which run a summary is of. Flattened into each scenario's summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunHeader {
    /// Scenario name.
    pub scenario: String,
    /// Run id (in every identifier sent).
    pub run_id: String,
    /// Seed of the payloads.
    pub seed: u64,
}

/// Event time to durable write, in milliseconds: the percentiles every
/// summary reports. Flattened (the JSON keeps `e2e_p50_ms`, ...).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct E2e {
    /// Median.
    #[serde(rename = "e2e_p50_ms")]
    pub p50_ms: f64,
    /// 95th percentile.
    #[serde(rename = "e2e_p95_ms")]
    pub p95_ms: f64,
    /// 99th percentile.
    #[serde(rename = "e2e_p99_ms")]
    pub p99_ms: f64,
}

impl E2e {
    /// The percentiles of `sorted` (ascending; NaN when empty).
    pub fn of(sorted: &[f64]) -> Self {
        E2e {
            p50_ms: crate::verify::percentile(sorted, 50.0),
            p95_ms: crate::verify::percentile(sorted, 95.0),
            p99_ms: crate::verify::percentile(sorted, 99.0),
        }
    }
}

/// What every scenario's verdict checks: nothing lost, duplicated, refused
/// or different from what was sent, and every threshold and target met.
/// Flattened into each scenario's summary (the JSON keeps its fields).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Verdict {
    /// Items the service still refused after retries.
    pub send_failures: u64,
    /// Items sent but missing from the outputs.
    pub lost: u64,
    /// Items counted or applied more than once.
    pub duplicated: u64,
    /// Other differences between what was sent and what was written.
    pub mismatches: Vec<String>,
    /// goose thresholds that failed.
    pub failed_thresholds: Vec<String>,
    /// cafe-stream targets that failed.
    pub failed_targets: Vec<String>,
}

impl Verdict {
    /// True when nothing was lost, duplicated, refused or wrong and every rule passed.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.send_failures == 0
            && self.mismatches.is_empty()
            && self.failed_thresholds.is_empty()
            && self.failed_targets.is_empty()
    }
}

impl Verdict {
    /// The verdict on what a run counted, with the e2e p99 target
    /// (`limit`, ms) checked against `e2e`.
    pub fn judged(
        send_failures: u64,
        lost: u64,
        duplicated: u64,
        mismatches: Vec<String>,
        failed_thresholds: Vec<String>,
        e2e: &E2e,
        limit: Option<u64>,
    ) -> Self {
        let failed_targets = p99_target(e2e.p99_ms, limit).into_iter().collect();
        Verdict { send_failures, lost, duplicated, mismatches, failed_thresholds, failed_targets }
    }

    /// With more failed targets (a driver's local or AWS targets).
    pub fn and_failed(mut self, targets: impl IntoIterator<Item = String>) -> Self {
        self.failed_targets.extend(targets);
        self
    }
}

/// Writes a run's `summary.json` and `summary.md` into `dir`.
pub fn write_summary<S: serde::Serialize>(dir: &Path, summary: &S, markdown: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(summary)?)?;
    std::fs::write(dir.join("summary.md"), markdown)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::p99_target;

    #[test]
    fn the_p99_target_fails_above_the_limit_and_without_samples() {
        assert_eq!(p99_target(1500.0, Some(2000)), None);
        assert_eq!(p99_target(2500.0, Some(2000)).as_deref(), Some("e2e p99 2500 ms is above the target 2000 ms"));
        assert!(p99_target(f64::NAN, Some(2000)).is_some());
        assert_eq!(p99_target(1e9, None), None);
    }
}
