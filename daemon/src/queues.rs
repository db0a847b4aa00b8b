//! The queue path: raw SQS messages (the payments FIFO queue, the menu
//! queue, or any queue carrying either) -> decided payments and menu
//! upserts, rejections and acknowledgements.
//!
//! Owns: the two stages between an SQS source and the sinks: `decide`
//! (batching, then one rayon hop per batch for decoding, the fraud model's
//! and the menu stage's hashing work in parallel, and the stateful scoring
//! in arrival order) and `write` (sinks, then acks). Must not: spawn tasks
//! or make channels (topology does), or acknowledge a message whose writes
//! are not all durable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use pipeline::event::{Body, EventType, decode};
use pipeline::fraud::{Decision, FraudEngine, model_work};
use pipeline::menu;
use pipeline::window::{Counters, WindowId};
use rayon::prelude::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::bridge::CpuPool;
use crate::config::PipelineConfig;
use crate::metrics::{Metrics, OutcomeLabel, ReasonLabel, StageLabel};
use crate::sinks::WriteOutcome;
use crate::sinks::dynamodb::menu::MenuRecord;
use crate::sinks::dynamodb::{DynamoDbSink, PaymentRecord};
use crate::sinks::rejected::{RejectedRecord, RejectedSink};
use crate::sources::sqs::{Ack, SqsMessage};

/// What the decide stage made of one message.
#[derive(Debug)]
pub enum Outcome {
    /// A valid, scored payment.
    Payment(PaymentRecord),
    /// A valid menu upsert with its digest.
    Menu(MenuRecord),
    /// An event that breaks the contract.
    Rejected(RejectedRecord),
    /// A valid event of a type this input does not handle yet; given back
    /// to the queue (and to its DLQ after `max_receive_count`).
    Unsupported(EventType),
}

/// A batch after the decide stage: each message with its outcome.
#[derive(Debug)]
pub struct DecidedBatch {
    /// (receipt handle, outcome), in arrival order.
    pub items: Vec<(String, Outcome)>,
    /// When the batch left the decide stage.
    pub decided_at: Instant,
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

/// The CPU-heavy work of a batch, per event type.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    /// The fraud model's hashing rounds per payment.
    pub fraud_work_factor: u32,
    /// The menu stage's JSON rounds per item.
    pub menu_json_rounds: u32,
}

/// The CPU work of one batch. Runs on the rayon pool.
pub fn decide_batch(msgs: Vec<SqsMessage>, engine: &Mutex<FraudEngine>, source: &str, work: Work) -> DecidedBatch {
    // Decoding, the model's hashing and menu digests are per message and
    // pure: parallel.
    let decoded: Vec<_> = msgs
        .par_iter()
        .map(|m| {
            let event = decode(m.body.as_bytes());
            let (model, digest) = match &event {
                Ok(e) => match &e.body {
                    Body::PaymentRequested(p) => (Some(model_work(p, work.fraud_work_factor)), None),
                    Body::MenuItemUpserted(item) => (None, Some(menu::digest(item, work.menu_json_rounds))),
                    _ => (None, None),
                },
                Err(_) => (None, None),
            };
            (event, std::hint::black_box(model), digest)
        })
        .collect();
    // Scoring reads and writes history: one thread, arrival order.
    let decided_at = now_rfc3339();
    let mut engine = engine.lock().unwrap_or_else(|e| e.into_inner());
    let items = msgs
        .into_iter()
        .zip(decoded)
        .map(|(m, (event, _model, digest))| {
            let receipt = m.receipt_handle.clone();
            let reject = |m: SqsMessage, r: pipeline::event::Rejection| {
                Outcome::Rejected(RejectedRecord {
                    body: m.body,
                    reason: r.reason.code(),
                    detail: r.detail,
                    source: source.to_owned(),
                    position: m.message_id,
                })
            };
            let outcome = match event {
                Err(r) => reject(m, r),
                Ok(e) => match e.body {
                    Body::MenuItemUpserted(item) => match digest {
                        Some(Ok(d)) => Outcome::Menu(MenuRecord {
                            window: WindowId::of(&e.store, e.ts),
                            counters: d.counters(),
                            event_id: e.id,
                            sku: item.sku,
                            name: item.name,
                            category: item.category,
                            price_cents: item.price_cents,
                            digest: d,
                            ts: e.ts_raw,
                            event_time: e.ts,
                        }),
                        Some(Err(r)) => {
                            return (receipt, reject(m, r));
                        }
                        None => Outcome::Unsupported(EventType::MenuItemUpserted),
                    },
                    Body::PaymentRequested(p) => {
                        let v = engine.score(&p, e.ts);
                        let mut counters =
                            Counters { payments: 1, payment_amount_cents: p.amount_cents as i64, ..Counters::default() };
                        match v.decision {
                            Decision::Approve => counters.payments_approved = 1,
                            Decision::Review => counters.payments_review = 1,
                            Decision::Decline => counters.payments_declined = 1,
                        }
                        Outcome::Payment(PaymentRecord {
                            window: WindowId::of(&e.store, e.ts),
                            event_id: e.id,
                            payment_id: p.payment_id,
                            order_id: p.order_id,
                            customer_id: p.customer_id,
                            store: e.store,
                            amount_cents: p.amount_cents,
                            score: v.score,
                            decision: v.decision.name(),
                            reasons: v.reasons.iter().map(|r| r.name()).collect(),
                            ts: e.ts_raw,
                            event_time: e.ts,
                            decided_at: decided_at.clone(),
                            counters,
                            group: m.group_id,
                        })
                    }
                    other => Outcome::Unsupported(other.event_type()),
                },
            };
            (receipt, outcome)
        })
        .collect();
    DecidedBatch { items, decided_at: Instant::now() }
}

/// The decide stage: gathers received messages into batches of up to
/// `max_batch_events` (waiting at most `linger_ms` for a batch to fill),
/// decides each on the CPU pool, and passes it on. Ends when its input ends.
pub async fn decide_loop(
    mut rx: mpsc::Receiver<Vec<SqsMessage>>,
    tx: mpsc::Sender<DecidedBatch>,
    pool: CpuPool,
    engine: Arc<Mutex<FraudEngine>>,
    config: PipelineConfig,
    source: String,
    metrics: Arc<Metrics>,
) {
    let work = Work {
        fraud_work_factor: engine.lock().unwrap_or_else(|e| e.into_inner()).config().work_factor,
        menu_json_rounds: config.menu_json_rounds,
    };
    let linger = Duration::from_millis(config.linger_ms);
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = first;
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < config.max_batch_events {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) | Err(_) => break,
            }
        }
        let receipts: Vec<String> = batch.iter().map(|m| m.receipt_handle.clone()).collect();
        let started = Instant::now();
        metrics.batch_events.get_or_create(&StageLabel { stage: "decide" }).observe(batch.len() as f64);
        let engine2 = Arc::clone(&engine);
        let source2 = source.clone();
        let decided = pool.run(move || decide_batch(batch, &engine2, &source2, work)).await;
        metrics.stage_duration.get_or_create(&StageLabel { stage: "decide" }).observe(started.elapsed().as_secs_f64());
        metrics.fraud_tracked_keys.set(engine.lock().unwrap_or_else(|e| e.into_inner()).tracked_keys() as i64);
        let decided = match decided {
            Ok(d) => d,
            Err(e) => {
                // A bug, not bad input (decoding never panics on input): give
                // the messages back rather than lose them.
                error!(error = %e, messages = receipts.len(), "Decide stage failed; releasing the batch");
                let items = receipts.into_iter().map(|r| (r, Outcome::Unsupported(EventType::PaymentRequested))).collect();
                DecidedBatch { items, decided_at: Instant::now() }
            }
        };
        if tx.send(decided).await.is_err() {
            return;
        }
    }
}

/// Everything the write stage writes to.
#[derive(Debug, Clone)]
pub struct Sinks {
    /// Payments and aggregates.
    pub dynamodb: DynamoDbSink,
    /// Rejected events.
    pub rejected: RejectedSink,
}

/// Writes one decided batch and returns the acks for its messages.
pub async fn write_batch(batch: DecidedBatch, sinks: &Sinks, source: &str, metrics: &Metrics) -> Vec<Ack> {
    let started = Instant::now();
    let mut payments = Vec::new();
    let mut payment_at = Vec::new();
    let mut rejections = Vec::new();
    let mut rejection_at = Vec::new();
    let mut menus = Vec::new();
    let mut menu_at = Vec::new();
    let mut outcomes: Vec<Option<WriteOutcome>> = Vec::with_capacity(batch.items.len());
    let mut receipts = Vec::with_capacity(batch.items.len());
    for (i, (receipt, outcome)) in batch.items.into_iter().enumerate() {
        receipts.push(receipt);
        outcomes.push(None);
        match outcome {
            Outcome::Payment(p) => {
                payments.push(p);
                payment_at.push(i);
            }
            Outcome::Rejected(r) => {
                rejections.push(r);
                rejection_at.push(i);
            }
            Outcome::Menu(m) => {
                menus.push(m);
                menu_at.push(i);
            }
            Outcome::Unsupported(t) => {
                warn!(
                    source,
                    event_type = t.name(),
                    "Event type not handled on this input yet; leaving it to redelivery and the DLQ"
                );
                metrics.pipeline_events.get_or_create(&Metrics::source_outcome(source, "unsupported")).inc();
                outcomes[i] = Some(WriteOutcome::Failed);
            }
        }
    }
    let applied_at = now_rfc3339();
    let (rejected_out, payment_out, menu_out) = tokio::join!(
        sinks.rejected.send(&rejections),
        sinks.dynamodb.write_payments(&payments),
        sinks.dynamodb.write_menu(&menus, &applied_at)
    );

    let now = OffsetDateTime::now_utc();
    let e2e = metrics.e2e_latency.get_or_create(&Metrics::source(source));
    let mut written = 0u64;
    let mut duplicates = 0u64;
    for ((i, p), o) in payment_at.iter().zip(&payments).zip(&payment_out) {
        outcomes[*i] = Some(*o);
        match o {
            WriteOutcome::Written => {
                written += 1;
                metrics.fraud_decisions.get_or_create(&OutcomeLabel { outcome: p.decision }).inc();
                e2e.observe((now - p.event_time).as_seconds_f64().max(0.0));
            }
            WriteOutcome::Duplicate => duplicates += 1,
            WriteOutcome::Failed => {}
        }
    }
    for ((i, m), o) in menu_at.iter().zip(&menus).zip(&menu_out) {
        outcomes[*i] = Some(*o);
        match o {
            WriteOutcome::Written => {
                written += 1;
                metrics.menu_image_bytes.inc_by(m.digest.image_bytes as u64);
                e2e.observe((now - m.event_time).as_seconds_f64().max(0.0));
            }
            WriteOutcome::Duplicate => duplicates += 1,
            WriteOutcome::Failed => {}
        }
    }
    let mut rejected = 0u64;
    for ((i, r), o) in rejection_at.iter().zip(&rejections).zip(&rejected_out) {
        outcomes[*i] = Some(*o);
        if *o == WriteOutcome::Written {
            rejected += 1;
            metrics.pipeline_rejected.get_or_create(&ReasonLabel { reason: r.reason }).inc();
        }
    }
    let failed = outcomes.iter().filter(|o| matches!(o, Some(WriteOutcome::Failed) | None)).count() as u64;
    for (outcome, n) in [("written", written), ("duplicate", duplicates), ("rejected", rejected), ("failed", failed)] {
        if n > 0 {
            metrics.pipeline_events.get_or_create(&Metrics::source_outcome(source, outcome)).inc_by(n);
        }
    }
    metrics.stage_duration.get_or_create(&StageLabel { stage: "write" }).observe(started.elapsed().as_secs_f64());
    metrics
        .stage_duration
        .get_or_create(&StageLabel { stage: "queue_to_write" })
        .observe(started.duration_since(batch.decided_at).as_secs_f64());

    receipts
        .into_iter()
        .zip(outcomes)
        .map(|(receipt_handle, o)| match o {
            Some(WriteOutcome::Written | WriteOutcome::Duplicate) => Ack::Done { receipt_handle },
            Some(WriteOutcome::Failed) | None => Ack::Retry { receipt_handle },
        })
        .collect()
}

/// The write stage: up to `concurrency` batches in flight, acks sent back
/// to the source as each completes. Ends when its input ends and every
/// write in flight has finished.
pub async fn write_loop(
    mut rx: mpsc::Receiver<DecidedBatch>,
    ack_tx: mpsc::Sender<Vec<Ack>>,
    sinks: Sinks,
    concurrency: usize,
    source: String,
    metrics: Arc<Metrics>,
) {
    let mut writes = FuturesUnordered::new();
    let mut open = true;
    while open || !writes.is_empty() {
        tokio::select! {
            batch = rx.recv(), if open && writes.len() < concurrency => match batch {
                Some(b) => writes.push(write_batch(b, &sinks, &source, &metrics)),
                None => open = false,
            },
            Some(acks) = writes.next(), if !writes.is_empty() => {
                if ack_tx.send(acks).await.is_err() {
                    return;
                }
            }
        }
    }
}
