//! The payments-burst driver behind `cold-start`: every goose user waits at
//! one barrier, then all fire their share of the payments at once with
//! SendMessageBatch; the daemon is optionally (re)started around the burst;
//! then the outputs are verified.
//!
//! Owns: the goose attack of a burst and the run's summary. Must not: judge
//! the daemon's internals; it sees only what a producer and an analyst see.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use goose::prelude::*;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Barrier;
use tracing::{info, warn};

use crate::payload::{self, Payment};
use crate::scenario::{Restart, Scenario as ScenarioFile};
use crate::verify;
use crate::{RunArgs, Targets};

/// What every goose user shares: goose transactions are plain functions, so
/// the run's state lives in one process-wide cell.
struct Burst {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    load: crate::scenario::Load,
    seed: u64,
    run_id: String,
    payments: u64,
    users: usize,
    barrier: Barrier,
    fired_at: OnceLock<(Instant, OffsetDateTime)>,
    sent: Mutex<Vec<Payment>>,
    send_failures: AtomicU64,
}

static BURST: OnceLock<Arc<Burst>> = OnceLock::new();

fn burst() -> Result<Arc<Burst>, Box<TransactionError>> {
    BURST.get().cloned().ok_or_else(|| Box::new(TransactionError::Custom("burst state missing".into())))
}

/// One goose user's share: payments `index % users == user`.
async fn fire(user: &mut GooseUser) -> TransactionResult {
    let b = burst()?;
    let me = user.weighted_users_index % b.users;
    b.barrier.wait().await;
    b.fired_at.get_or_init(|| (Instant::now(), OffsetDateTime::now_utc()));
    let mine: Vec<u64> = (me as u64..b.payments).step_by(b.users).collect();
    for chunk in mine.chunks(10) {
        let ts = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let batch: Vec<Payment> = chunk.iter().map(|&i| payload::payment(b.seed, &b.run_id, i, &b.load, &ts)).collect();
        let mut pending: Vec<usize> = (0..batch.len()).collect();
        for attempt in 0..5u64 {
            let entries: Vec<_> = pending
                .iter()
                .filter_map(|&k| {
                    let p = &batch[k];
                    SendMessageBatchRequestEntry::builder()
                        .id(k.to_string())
                        .message_body(&p.body)
                        .message_group_id(&p.customer_id)
                        .message_deduplication_id(&p.dedup_id)
                        .build()
                        .ok()
                })
                .collect();
            let started = Instant::now();
            let result = b.sqs.send_message_batch().queue_url(&b.queue_url).set_entries(Some(entries)).send().await;
            let elapsed = started.elapsed();
            let (ok, err) = match &result {
                Ok(out) if out.failed.is_empty() => (true, None),
                Ok(_) => (false, Some("some entries failed")),
                Err(_) => (false, Some("request failed")),
            };
            user.record_custom_request_duration("SQS", "SendMessageBatch payments", elapsed, ok, None, err).await?;
            let failed: Vec<usize> = match result {
                Ok(out) => out.failed.iter().filter_map(|f| f.id.parse().ok()).collect(),
                Err(_) => pending.clone(),
            };
            {
                let mut sent = b.sent.lock().unwrap_or_else(|e| e.into_inner());
                sent.extend(pending.iter().filter(|k| !failed.contains(k)).map(|&k| batch[k].clone()));
            }
            pending = failed;
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
        }
        b.send_failures.fetch_add(pending.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// The run's summary, printed and written as `summary.json` and `summary.md`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// Run id (in every identifier sent).
    pub run_id: String,
    /// Seed of the payloads.
    pub seed: u64,
    /// Payments the scenario asked for.
    pub planned: u64,
    /// Payments SQS accepted.
    pub sent: u64,
    /// Payments SQS refused after retries.
    pub send_failures: u64,
    /// Sent payments missing from `cafe-payments`.
    pub lost: u64,
    /// Payments counted more than once in `cafe-aggregates`.
    pub duplicated: u64,
    /// Other mismatches between what was sent and what was written.
    pub mismatches: Vec<String>,
    /// Seconds to send the whole burst.
    pub send_secs: f64,
    /// Seconds from the burst's first send to the first decision.
    pub first_decision_secs: f64,
    /// Seconds from the burst's first send to the last decision (drain time).
    pub drain_secs: f64,
    /// Event time to decision, milliseconds.
    pub e2e_p50_ms: f64,
    /// 95th percentile.
    pub e2e_p95_ms: f64,
    /// 99th percentile.
    pub e2e_p99_ms: f64,
    /// Largest.
    pub e2e_max_ms: f64,
    /// Decisions by outcome.
    pub approved: u64,
    /// Sent to review.
    pub review: u64,
    /// Declined.
    pub declined: u64,
    /// goose thresholds that failed.
    pub failed_thresholds: Vec<String>,
    /// cafe-stream targets that failed.
    pub failed_targets: Vec<String>,
    /// The restart command's exit status, if one ran.
    pub restart: Option<String>,
}

impl Summary {
    /// True when nothing was lost or duplicated and every rule passed.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.send_failures == 0
            && self.mismatches.is_empty()
            && self.failed_thresholds.is_empty()
            && self.failed_targets.is_empty()
    }

    /// Markdown rendering.
    pub fn markdown(&self) -> String {
        format!(
            "# {} ({})\n\n| measure | value |\n|---|---|\n\
             | payments sent | {} of {} (send failures {}) |\n| lost | {} |\n| duplicated | {} |\n\
             | burst sent in | {:.2} s |\n| first decision after | {:.2} s |\n| drained after | {:.2} s |\n\
             | e2e p50 / p95 / p99 / max | {:.0} / {:.0} / {:.0} / {:.0} ms |\n\
             | approve / review / decline | {} / {} / {} |\n| restart | {} |\n| verdict | {} |\n{}",
            self.scenario,
            self.run_id,
            self.sent,
            self.planned,
            self.send_failures,
            self.lost,
            self.duplicated,
            self.send_secs,
            self.first_decision_secs,
            self.drain_secs,
            self.e2e_p50_ms,
            self.e2e_p95_ms,
            self.e2e_p99_ms,
            self.e2e_max_ms,
            self.approved,
            self.review,
            self.declined,
            self.restart.as_deref().unwrap_or("none"),
            if self.passed() { "PASS" } else { "FAIL" },
            self.mismatches
                .iter()
                .chain(&self.failed_thresholds)
                .chain(&self.failed_targets)
                .map(|m| format!("\n- {m}"))
                .collect::<String>()
        )
    }
}

fn restart_command(scenario: &ScenarioFile) -> Option<String> {
    std::env::var("CAFE_LOADGEN_RESTART_COMMAND")
        .ok()
        .or_else(|| Some(scenario.daemon.restart_command.clone()))
        .filter(|c| !c.trim().is_empty())
}

async fn run_restart(command: &str) -> String {
    info!(command, "Restarting the daemon");
    match tokio::process::Command::new("sh").arg("-c").arg(command).status().await {
        Ok(status) if status.success() => "ok".into(),
        Ok(status) => format!("failed: {status}"),
        Err(e) => format!("failed to start: {e}"),
    }
}

/// Runs a payments burst scenario end to end.
pub async fn run(scenario: ScenarioFile, args: &RunArgs, targets: &Targets) -> anyhow::Result<Summary> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let queue_url = sqs
        .get_queue_url()
        .queue_name(&targets.payments_queue)
        .send()
        .await
        .with_context(|| format!("queue {} not found; run `cafe-streamd provision`", targets.payments_queue))?
        .queue_url
        .context("no queue URL")?;

    let load = scenario.load.clone().context("not a payments-burst scenario (no [load])")?;
    let payments = ((load.payments as f64) * args.scale).round().max(1.0) as u64;
    let users = load.users.min(payments as usize).max(1);
    let run_id = args.run_id.clone().unwrap_or_else(new_run_id);
    let seed = args.seed;
    std::fs::create_dir_all(&args.report_dir)?;
    let state = Arc::new(Burst {
        sqs,
        queue_url,
        load: load.clone(),
        seed,
        run_id: run_id.clone(),
        payments,
        users,
        barrier: Barrier::new(users),
        fired_at: OnceLock::new(),
        sent: Mutex::new(Vec::with_capacity(payments as usize)),
        send_failures: AtomicU64::new(0),
    });
    BURST.set(Arc::clone(&state)).map_err(|_| anyhow::anyhow!("one burst per process"))?;
    info!(scenario = %scenario.name, run_id, seed, payments, users, "Starting burst");

    let restart = restart_command(&scenario);
    let mut restart_status = None;
    if let (Restart::Before, Some(cmd)) = (scenario.daemon.restart, &restart) {
        restart_status = Some(run_restart(cmd).await);
    }

    let config =
        crate::attack::config(format!("sqs://{}", targets.payments_queue), users, &scenario.thresholds.goose, &args.report_dir);
    let attack = GooseAttack::initialize_with_config(config)?
        .register_scenario(scenario!("PaymentsBurst").register_transaction(transaction!(fire).set_name("burst")));

    let attack_task = tokio::spawn(attack.execute());
    if let (Restart::After, Some(cmd)) = (scenario.daemon.restart, &restart) {
        // Restart as soon as the burst has started landing.
        while state.fired_at.get().is_none() && !attack_task.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        restart_status = Some(run_restart(cmd).await);
    }
    let failed_thresholds = crate::attack::failed_thresholds(attack_task.await?)?;
    let (fired_instant, fired_at) = *state.fired_at.get().context("the burst never fired")?;
    let send_secs = fired_instant.elapsed().as_secs_f64();
    let sent: Vec<Payment> = std::mem::take(&mut *state.sent.lock().unwrap_or_else(|e| e.into_inner()));
    let send_failures = state.send_failures.load(Ordering::Relaxed);
    info!(sent = sent.len(), send_secs, "Burst sent; waiting for the daemon");

    let stores: Vec<String> = (0..load.stores).map(|k| payload::store_id(&run_id, k)).collect();
    let expected = sent.len() as i64;
    verify::wait_for_payments(
        &ddb,
        &targets.aggregates_table,
        &stores,
        expected,
        Duration::from_secs(scenario.verify.stall_secs),
        Duration::from_secs(scenario.verify.timeout_secs),
    )
    .await?;
    // Counters and items are written in one transaction, but give any write
    // still in flight a moment before the final read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sums = verify::aggregate_sums(&ddb, &targets.aggregates_table, &stores).await?;
    let ids: Vec<String> = sent.iter().map(|p| p.payment_id.clone()).collect();
    let found = verify::read_payments(&ddb, &targets.payments_table, &ids).await?;

    let lost = (sent.len() - found.len()) as u64;
    let duplicated = (sums.payments - found.len() as i64).max(0) as u64;
    let mut mismatches = Vec::new();
    let sent_amount: i64 = sent.iter().map(|p| p.amount_cents as i64).sum();
    let found_amount: i64 = found.values().map(|d| d.amount_cents).sum();
    if lost == 0 && sums.payment_amount_cents != sent_amount {
        mismatches.push(format!("payment_amount_cents is {} but {} was sent", sums.payment_amount_cents, sent_amount));
    }
    if found_amount != sums.payment_amount_cents && duplicated == 0 {
        mismatches.push(format!("items sum to {found_amount} cents but the aggregates to {}", sums.payment_amount_cents));
    }
    let count = |d: &str| found.values().filter(|x| x.decision == d).count() as u64;
    let (approved, review, declined) = (count("approve"), count("review"), count("decline"));
    for (name, counter, items) in [
        ("payments_approved", sums.payments_approved, approved),
        ("payments_review", sums.payments_review, review),
        ("payments_declined", sums.payments_declined, declined),
    ] {
        if counter != items as i64 {
            mismatches.push(format!("{name} is {counter} but {items} items have that decision"));
        }
    }
    if sums.payments < found.len() as i64 {
        mismatches.push(format!("payments counter {} is below the {} items written", sums.payments, found.len()));
    }

    let mut e2e: Vec<f64> = found.values().map(|d| (d.decided_at - d.ts).as_seconds_f64() * 1000.0).collect();
    e2e.sort_by(f64::total_cmp);
    let first = found.values().map(|d| d.decided_at).min();
    let last = found.values().map(|d| d.decided_at).max();
    let since_fire = |t: Option<OffsetDateTime>| t.map_or(f64::NAN, |t| (t - fired_at).as_seconds_f64());

    let mut summary = Summary {
        scenario: scenario.name.clone(),
        run_id,
        seed,
        planned: payments,
        sent: sent.len() as u64,
        send_failures,
        lost,
        duplicated,
        mismatches,
        send_secs,
        first_decision_secs: since_fire(first),
        drain_secs: since_fire(last),
        e2e_p50_ms: verify::percentile(&e2e, 50.0),
        e2e_p95_ms: verify::percentile(&e2e, 95.0),
        e2e_p99_ms: verify::percentile(&e2e, 99.0),
        e2e_max_ms: e2e.last().copied().unwrap_or(f64::NAN),
        approved,
        review,
        declined,
        failed_thresholds,
        failed_targets: Vec::new(),
        restart: restart_status,
    };
    summary.failed_targets.extend(crate::attack::p99_target(summary.e2e_p99_ms, scenario.thresholds.e2e_p99_ms));
    if summary.lost > 0 {
        warn!(lost = summary.lost, "Payments were lost");
    }
    crate::attack::write_summary(&args.report_dir, &summary, &summary.markdown())?;
    Ok(summary)
}

/// A run id from the clock: unique per run, short enough for identifiers.
pub(crate) fn new_run_id() -> String {
    let now = OffsetDateTime::now_utc();
    format!("{:x}{:04x}", now.unix_timestamp(), now.nanosecond() >> 16)
}
