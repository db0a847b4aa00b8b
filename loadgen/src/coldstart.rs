//! The payments-burst driver behind `cold-start`: every goose user waits at
//! one barrier, then all fire their share of the payments at once with
//! SendMessageBatch; the daemon is optionally (re)started around the burst;
//! then the outputs are verified.
//!
//! Owns: the goose attack of a burst and the run's summary. Must not: judge
//! the daemon's internals; it sees only what a producer and an analyst see.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use goose::prelude::*;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Barrier;
use tracing::{debug, info, warn};

use crate::attack::{RunCell, Sends, Verdict, send_sqs_batch};
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
    /// The burst fires when the first send starts.
    sends: Sends<Payment>,
}

static BURST: RunCell<Burst> = RunCell::new();

/// One goose user's share: payments `index % users == user`.
async fn fire(user: &mut GooseUser) -> TransactionResult {
    let b = BURST.get()?;
    let me = user.weighted_users_index % b.users;
    b.barrier.wait().await;
    let _ = b.sends.start();
    let mine: Vec<u64> = (me as u64..b.payments).step_by(b.users).collect();
    for chunk in mine.chunks(10) {
        let ts = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let batch: Vec<Payment> = chunk.iter().map(|&i| payload::payment(b.seed, &b.run_id, i, &b.load, &ts)).collect();
        let entries: Vec<_> = batch
            .iter()
            .enumerate()
            .filter_map(|(k, p)| {
                SendMessageBatchRequestEntry::builder()
                    .id(k.to_string())
                    .message_body(&p.body)
                    .message_group_id(&p.customer_id)
                    .message_deduplication_id(&p.dedup_id)
                    .build()
                    .ok()
            })
            .collect();
        let accepted = send_sqs_batch(user, &b.sqs, &b.queue_url, "SendMessageBatch payments", entries).await?;
        b.sends.refused(batch.len() - accepted.len());
        b.sends.accepted(accepted.into_iter().map(|k| batch[k].clone()));
    }
    Ok(())
}

/// The run's summary, printed and written as `summary.json` and `summary.md`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Which run.
    #[serde(flatten)]
    pub run: crate::attack::RunHeader,
    /// Payments the scenario asked for.
    pub planned: u64,
    /// Payments SQS accepted.
    pub sent: u64,
    /// Seconds to send the whole burst.
    pub send_secs: f64,
    /// Seconds from the burst's first send to the first decision.
    pub first_decision_secs: f64,
    /// Seconds from the burst's first send to the last decision (drain time).
    pub drain_secs: f64,
    /// How long the restart command took (the old instance's drain and
    /// exit, the new one's start), when the scenario restarts the daemon
    /// into the burst.
    pub restart_secs: Option<f64>,
    /// The daemon's drain compared with the bare client's: first decision
    /// to last, from the restart's end when there is one.
    pub daemon_drain_secs: Option<f64>,
    /// A bare client's drain of the same burst from the same stack, right
    /// after the run (`[thresholds.local] drain_vs_bare`), when measured.
    pub bare: Option<crate::paythroughput::PaymentsThroughput>,
    /// The daemon's drain (first decision to last) over the bare client's.
    pub drain_vs_bare: Option<f64>,
    /// How a bare drain shorter than `[thresholds.local]
    /// drain_judged_from_secs` was judged (against `drain_vs_bare_short`),
    /// or that it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_note: Option<String>,
    /// The daemon's CPU-seconds (`process_cpu_seconds_total` on its admin
    /// endpoint) over the burst, to the moment the last payment was
    /// verified: from its start (start-up included) when the scenario
    /// restarted it into the burst, else from just before the burst. None
    /// when the endpoint could not be read, or when a restart after the
    /// burst split the work between two processes. Read before the bare
    /// client's drain, which the daemon sits out idle.
    pub daemon_cpu_secs: Option<f64>,
    /// Event time to durable write.
    #[serde(flatten)]
    pub e2e: crate::attack::E2e,
    /// Largest.
    pub e2e_max_ms: f64,
    /// Decisions by outcome.
    pub approved: u64,
    /// Sent to review.
    pub review: u64,
    /// Declined.
    pub declined: u64,
    /// The restart command's exit status, if one ran.
    pub restart: Option<String>,
    /// Lost, duplicated, refused and wrong items, and the rules that failed.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Every event stored: event time and durable write (for a chaos run's phases).
    #[serde(skip)]
    pub samples: Vec<crate::chaos::Sample>,
}

impl Summary {
    /// True when nothing was lost or duplicated and every rule passed.
    pub fn passed(&self) -> bool {
        self.verdict.passed()
    }

    /// Markdown rendering.
    pub fn markdown(&self) -> String {
        format!(
            "# {} ({})\n\n| measure | value |\n|---|---|\n\
             | payments sent | {} of {} (send failures {}) |\n| lost | {} |\n| duplicated | {} |\n\
             | burst sent in | {:.2} s |\n| first decision after | {:.2} s |\n| drained after | {:.2} s |\n\
             | restart took | {} |\n| drain vs a bare client | {} |\n| daemon CPU over the burst | {} |\n\
             | e2e p50 / p95 / p99 / max | {:.0} / {:.0} / {:.0} / {:.0} ms |\n\
             | approve / review / decline | {} / {} / {} |\n| restart | {} |\n| verdict | {} |\n{}",
            self.run.scenario,
            self.run.run_id,
            self.sent,
            self.planned,
            self.verdict.send_failures,
            self.verdict.lost,
            self.verdict.duplicated,
            self.send_secs,
            self.first_decision_secs,
            self.drain_secs,
            self.restart_secs.map_or("no restart".into(), |s| format!("{s:.2} s")),
            match (&self.bare, self.drain_vs_bare, self.daemon_drain_secs) {
                (Some(b), Some(r), Some(d)) => format!(
                    "{r:.2}: the daemon's {d:.2} s to the last decision, a bare client's {:.2} s{}{}",
                    b.bare_secs,
                    b.fraud_history.said(),
                    self.drain_note.as_ref().map_or(String::new(), |n| format!(" ({n})"))
                ),
                _ => "not measured".into(),
            },
            match self.daemon_cpu_secs {
                Some(c) if self.sent > 0 => format!("{c:.2} s, {:.3} ms per payment", c * 1000.0 / self.sent as f64),
                _ => "not measured".into(),
            },
            self.e2e.p50_ms,
            self.e2e.p95_ms,
            self.e2e.p99_ms,
            self.e2e_max_ms,
            self.approved,
            self.review,
            self.declined,
            self.restart.as_deref().unwrap_or("none"),
            if self.passed() { "PASS" } else { "FAIL" },
            self.verdict
                .mismatches
                .iter()
                .chain(&self.verdict.failed_thresholds)
                .chain(&self.verdict.failed_targets)
                .map(|m| format!("\n- {m}"))
                .collect::<String>()
        )
    }
}

/// Where `Summary::daemon_cpu_secs` counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CpuWindow {
    /// The daemon was restarted into the burst: its whole CPU time.
    FromStart,
    /// The same process runs throughout: from a reading before the burst.
    FromNow,
    /// Restarted after the burst began: two processes shared the work,
    /// not measured.
    Split,
}

fn cpu_window(restart: Restart, has_command: bool) -> CpuWindow {
    match (restart, has_command) {
        (Restart::Before, true) => CpuWindow::FromStart,
        (Restart::After, true) => CpuWindow::Split,
        _ => CpuWindow::FromNow,
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
    let queue_url = crate::attack::queue_url(&sqs, &targets.payments_queue).await?;

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
        sends: {
            crate::progress::run().expect(payments);
            Sends::with_capacity(payments as usize)
        },
    });
    BURST.set(Arc::clone(&state))?;
    info!(scenario = %scenario.name, run_id, seed, payments, users, "Starting burst");

    let restart = restart_command(&scenario);
    let mut restart_status = None;
    // When the restart into the burst returned, and how long it took.
    let mut restarted: Option<(OffsetDateTime, f64)> = None;
    let mut restart_task = None;
    if let (Restart::Before, Some(cmd)) = (scenario.daemon.restart, &restart) {
        restart_status = Some(run_restart(cmd).await);
    }
    // Where the daemon's CPU over the burst counts from (`daemon_cpu_secs`).
    let cpu_from = match cpu_window(scenario.daemon.restart, restart.is_some()) {
        CpuWindow::FromStart => Some(0.0),
        CpuWindow::FromNow => crate::ceiling::daemon_cpu(&targets.daemon_admin).await.inspect_err(|e| debug!("{e:#}")).ok(),
        CpuWindow::Split => None,
    };

    let config =
        crate::attack::config(format!("sqs://{}", targets.payments_queue), users, &scenario.thresholds.goose, &args.report_dir);
    let attack = GooseAttack::initialize_with_config(config)?
        .register_scenario(scenario!("PaymentsBurst").register_transaction(transaction!(fire).set_name("burst")));

    let attack_task = tokio::spawn(attack.execute());
    if let (Restart::After, Some(cmd)) = (scenario.daemon.restart, &restart) {
        // Restart as soon as the burst has started landing.
        while state.sends.started().is_none() && !attack_task.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Beside the sends, so the send time is the sends' own.
        let cmd = cmd.clone();
        restart_task = Some(tokio::spawn(async move {
            let began = std::time::Instant::now();
            let status = run_restart(&cmd).await;
            (status, OffsetDateTime::now_utc(), began.elapsed().as_secs_f64())
        }));
    }
    let failed_thresholds = crate::attack::failed_thresholds(attack_task.await?)?;
    let (fired_instant, fired_at) = state.sends.started().context("the burst never fired")?;
    let send_secs = fired_instant.elapsed().as_secs_f64();
    if let Some(task) = restart_task {
        let (status, at, secs) = task.await?;
        restart_status = Some(status);
        restarted = Some((at, secs));
    }
    let (sent, send_failures) = state.sends.take();
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
    let daemon_cpu_secs = match cpu_from {
        Some(from) => crate::ceiling::daemon_cpu(&targets.daemon_admin)
            .await
            .inspect_err(|e| debug!("{e:#}"))
            .ok()
            .map(|to| to - from)
            .filter(|c| *c >= 0.0),
        None => None,
    };
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

    let percentiles = crate::attack::E2e::of(&e2e);
    let local = crate::scenario::on_local_stack();
    let aws_p99 = if local { None } else { scenario.thresholds.aws.e2e_p99_ms };
    let mut bare = None;
    let mut drain_vs_bare = None;
    let mut drain_note = None;
    let mut daemon_drain = None;
    let mut relative_targets = Vec::new();
    if let (true, Some(limit), Some(first), Some(last)) = (local, scenario.thresholds.local.drain_vs_bare, first, last) {
        // The drain of the instance that runs when the burst lands: after a
        // restart into it, from the restart's end (the old instance's exit
        // is the restart's figure, reported beside it).
        let first = restarted.map_or(first, |(at, _)| first.max(at));
        // The same number of payments, drained by a bare client with the
        // daemon's receivers, from the same stack, right now, as they are
        // sent: the daemon's drain shared the stack with the burst's sends
        // (on moto they cost as much as the drain), so the bare one does too.
        // With the fraud history in DynamoDB (the daemon scored batches
        // against it) the bare client makes the history's reads and writes
        // too; unknown counts as in the process, the lighter yardstick.
        let fraud_history = match crate::ceiling::daemon_metrics(&targets.daemon_admin).await {
            Ok(text) if shared_history(&text) => crate::paythroughput::FraudHistory::Dynamodb,
            Ok(_) => crate::paythroughput::FraudHistory::Process,
            Err(e) => {
                warn!("{e:#}: the bare client leaves the fraud history's reads and writes out");
                crate::paythroughput::FraudHistory::Process
            }
        };
        let args = crate::paythroughput::PaymentsThroughputArgs {
            payments: found.len() as u64,
            receivers: 4,
            while_sending: true,
            fraud_history,
            timeout_secs: scenario.verify.timeout_secs,
            targets: targets.clone(),
        };
        info!(payments = args.payments, "Measuring a bare client's drain of the same burst");
        let measured = crate::paythroughput::run(&args, seed).await.context("the bare client's drain")?;
        let drained = (last - first).as_seconds_f64();
        daemon_drain = Some(drained);
        let ratio = drained / measured.bare_secs;
        let thresholds = &scenario.thresholds.local;
        let allowance = thresholds.drain_allowance_ms as f64 / 1000.0;
        let (judged, note) = judge_drain(
            drained,
            measured.bare_secs,
            limit,
            allowance,
            thresholds.drain_judged_from_secs,
            thresholds.drain_vs_bare_short,
        );
        if let Drain::Over(why) = judged {
            relative_targets.push(why);
        }
        drain_note = note;
        drain_vs_bare = Some(ratio);
        bare = Some(measured);
    }
    let samples = found.values().map(|d| crate::chaos::Sample { ts: d.ts, stored: d.decided_at }).collect();
    let summary = Summary {
        run: crate::attack::RunHeader { scenario: scenario.name.clone(), run_id, seed },
        planned: payments,
        sent: sent.len() as u64,
        send_secs,
        first_decision_secs: since_fire(first),
        drain_secs: since_fire(last),
        restart_secs: restarted.map(|(_, secs)| secs),
        daemon_drain_secs: daemon_drain,
        bare,
        drain_vs_bare,
        drain_note,
        daemon_cpu_secs,
        e2e: percentiles,
        e2e_max_ms: e2e.last().copied().unwrap_or(f64::NAN),
        approved,
        review,
        declined,
        restart: restart_status,
        verdict: Verdict::judged(
            send_failures,
            lost,
            duplicated,
            mismatches,
            failed_thresholds,
            &percentiles,
            scenario.thresholds.e2e_p99_ms,
        )
        .and_failed(crate::attack::p99_target(percentiles.p99_ms, aws_p99))
        .and_failed(relative_targets),
        samples,
    };
    if summary.verdict.lost > 0 {
        warn!(lost = summary.verdict.lost, "Payments were lost");
    }
    crate::attack::write_summary(&args.report_dir, &summary, &summary.markdown())?;
    Ok(summary)
}

/// A run id from the clock: unique per run, short enough for identifiers.
pub(crate) fn new_run_id() -> String {
    let now = OffsetDateTime::now_utc();
    format!("{:x}{:04x}", now.unix_timestamp(), now.nanosecond() >> 16)
}

/// Whether a daemon's metrics page says it scored batches against the
/// fraud history in DynamoDB (`[fraud] state = "dynamodb"`).
fn shared_history(metrics: &str) -> bool {
    let name = format!("{}_total", pipeline::metric_names::FRAUD_STATE_BATCHES);
    crate::ceiling::metric(metrics, &name).is_some_and(|batches| batches > 0.0)
}

/// The daemon's drain against a bare client's.
#[derive(Debug, PartialEq)]
enum Drain {
    /// Within its target, or not judged.
    Within,
    /// Over it: why.
    Over(String),
}

/// The daemon's drain of `drained` seconds against a bare client's `bare`:
/// at most `limit` times it plus `allowance` seconds when `bare` is at
/// least `judged_from` seconds; a shorter one against `short` times it
/// plus the allowance, or not at all without `short`, with a note saying
/// which.
fn judge_drain(
    drained: f64,
    bare: f64,
    limit: f64,
    allowance: f64,
    judged_from: f64,
    short: Option<f64>,
) -> (Drain, Option<String>) {
    if bare >= judged_from {
        return (over(drained, bare, limit, allowance), None);
    }
    let why = format!("a short drain: the bare client's {bare:.2} s, under the {judged_from:.1} s the target needs");
    match short {
        Some(l) => (over(drained, bare, l, allowance), Some(format!("{why}, judged against {l}x instead"))),
        None => (Drain::Within, Some(format!("{why}, not judged"))),
    }
}

/// The daemon's drain against at most `limit` times the bare client's plus
/// `allowance` seconds.
fn over(drained: f64, bare: f64, limit: f64, allowance: f64) -> Drain {
    let allowed = limit * bare + allowance;
    if crate::scenario::at_most(drained, allowed) {
        return Drain::Within;
    }
    Drain::Over(format!(
        "the daemon drained in {:.2}x a bare client's time ({drained:.2} s vs {bare:.2} s), above the target {limit}x \
             {}({allowed:.2} s)",
        drained / bare,
        if allowance > 0.0 { format!("plus {allowance:.2} s ") } else { String::new() }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_is_judged_against_the_bare_client_s_times_the_limit_plus_the_allowance() {
        let over = |d, b, l, a, f, short| match judge_drain(d, b, l, a, f, short) {
            (Drain::Over(why), _) => why,
            other => panic!("{d} s against {b} s: {other:?}"),
        };
        // 0.65 s against a bare 0.50 s: 1.30x, over 1.25x alone, within it
        // plus 0.25 s (0.875 s).
        let why = over(0.65, 0.50, 1.25, 0.0, 0.0, None);
        assert!(why.contains("1.30x a bare client's time (0.65 s vs 0.50 s), above the target 1.25x (0.62 s)"), "{why}");
        assert_eq!(judge_drain(0.65, 0.50, 1.25, 0.25, 0.0, None), (Drain::Within, None));
        // At full scale the allowance is a few percent: 13 s against 10 s fails.
        let why = over(13.0, 10.0, 1.25, 0.25, 2.0, Some(3.0));
        assert!(why.ends_with("above the target 1.25x plus 0.25 s (12.75 s)"), "{why}");
        assert_eq!(judge_drain(12.75, 10.0, 1.25, 0.25, 2.0, Some(3.0)), (Drain::Within, None), "at the limit passes");
        // A bare drain under the span the target needs is judged against the
        // short ratio, or only noted without one.
        let (judged, note) = judge_drain(1.6, 0.5, 1.25, 0.25, 2.0, Some(3.0));
        assert_eq!(judged, Drain::Within, "1.6 s within 3 x 0.5 + 0.25");
        assert!(
            note.is_some_and(|n| n.contains("the bare client's 0.50 s, under the 2.0 s the target needs, judged against 3x"))
        );
        let why = over(1.8, 0.5, 1.25, 0.25, 2.0, Some(3.0));
        assert!(why.contains("above the target 3x plus 0.25 s (1.75 s)"), "{why}");
        let (judged, note) = judge_drain(5.0, 0.5, 1.25, 0.25, 2.0, None);
        assert_eq!(judged, Drain::Within);
        assert!(note.is_some_and(|n| n.ends_with("not judged")));
        assert!(
            matches!(judge_drain(5.0, 2.0, 1.25, 0.25, 2.0, Some(3.0)), (Drain::Over(_), None)),
            "from the span on, the target"
        );
    }

    #[test]
    fn the_daemon_cpu_counts_from_its_start_only_after_a_restart_into_the_burst() {
        assert_eq!(cpu_window(Restart::Before, true), CpuWindow::FromStart);
        // A restart after the burst began: the old process did part of the work.
        assert_eq!(cpu_window(Restart::After, true), CpuWindow::Split);
        // No restart (none asked for, or no command to run it): one process
        // throughout, counted from a reading before the burst.
        for restart in [Restart::None, Restart::Before, Restart::After] {
            assert_eq!(cpu_window(restart, false), CpuWindow::FromNow, "{restart:?}");
        }
        assert_eq!(cpu_window(Restart::None, true), CpuWindow::FromNow);
    }

    #[test]
    fn the_bare_client_makes_the_history_s_io_only_for_a_daemon_that_shares_it() {
        let page = |batches: &str| {
            format!(
                "# HELP cafe_fraud_state_batches Batches scored against the shared fraud state\n\
                 # TYPE cafe_fraud_state_batches counter\n\
                 cafe_fraud_state_batches_total {batches}\n\
                 cafe_fraud_state_batches_total_x 9\n\
                 process_cpu_seconds_total 3.5\n"
            )
        };
        assert!(shared_history(&page("147")));
        // `[fraud] state = "process"`: the counter is there and stays 0.
        assert!(!shared_history(&page("0")));
        assert!(!shared_history("process_cpu_seconds_total 3.5\n"));
    }

    fn summary(sent: u64, daemon_cpu_secs: Option<f64>) -> Summary {
        Summary {
            run: crate::attack::RunHeader { scenario: "cold-start".into(), run_id: "r".into(), seed: 1 },
            planned: sent,
            sent,
            send_secs: 1.0,
            first_decision_secs: 0.1,
            drain_secs: 2.0,
            restart_secs: None,
            daemon_drain_secs: None,
            bare: None,
            drain_vs_bare: None,
            drain_note: None,
            daemon_cpu_secs,
            e2e: crate::attack::E2e { p50_ms: 1.0, p95_ms: 2.0, p99_ms: 3.0 },
            e2e_max_ms: 4.0,
            approved: sent,
            review: 0,
            declined: 0,
            restart: None,
            verdict: Verdict::default(),
            samples: Vec::new(),
        }
    }

    #[test]
    fn the_summary_gives_the_daemon_cpu_per_payment() {
        let md = summary(2000, Some(1.5)).markdown();
        assert!(md.contains("| daemon CPU over the burst | 1.50 s, 0.750 ms per payment |"), "{md}");
        let json = serde_json::to_value(summary(2000, Some(1.5))).expect("json");
        assert_eq!(json["daemon_cpu_secs"], 1.5);
        let md = summary(2000, None).markdown();
        assert!(md.contains("| daemon CPU over the burst | not measured |"), "{md}");
    }
}
