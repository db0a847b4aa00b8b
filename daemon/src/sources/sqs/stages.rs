//! The SQS input's stages between its receivers and its acknowledger:
//! batching received messages for the router's decide stage, and the write
//! stage, which turns each batch's outcomes into acknowledgements.
//!
//! Owns: batching (`max_batch_events`, `linger_ms`), the write stage's
//! concurrency (`sink_concurrency` batches at once) and its retries in place
//! (`retry_in_flight_secs`). Must not: spawn tasks or make channels
//! (topology does).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ack::{Receipt, acks};
use super::{Ack, SqsMessage};
use crate::aws::Backoff;
use crate::config::PipelineConfig;
use crate::internal_events::{GivenBack, InternalEvent, RetriedInFlight};
use crate::metrics::Metrics;
use crate::route::{DecidedBatch, Input, OrderCache, Position, Router};

/// A decided batch with its messages' receipts, in arrival order.
#[derive(Debug)]
pub struct Decided {
    /// Receipt handle and group of each message.
    pub receipts: Vec<Receipt>,
    /// What the router decided.
    pub batch: DecidedBatch,
}

/// The decide stage: gathers received messages into batches of up to
/// `max_batch_events` (waiting at most `linger_ms` for a batch to fill),
/// decides each on the CPU pool, and passes it on. Ends when its input ends.
pub async fn decide_loop(
    mut rx: mpsc::Receiver<Vec<SqsMessage>>,
    tx: mpsc::Sender<Decided>,
    router: Router,
    config: PipelineConfig,
) {
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut batch = first;
        // The linger in force now: a reload may change it.
        let deadline = tokio::time::Instant::now() + router.tunables.get().linger;
        while batch.len() < config.max_batch_events {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(more)) => batch.extend(more),
                Ok(None) | Err(_) => break,
            }
        }
        let mut receipts = Vec::with_capacity(batch.len());
        let mut inputs = Vec::with_capacity(batch.len());
        for m in batch {
            receipts.push(Receipt { receipt_handle: m.receipt_handle, group: m.group_id, received_at: m.received_at });
            inputs.push(Input { data: m.body.into_bytes(), position: Position::Text(m.message_id) });
        }
        let batch = router.decide(inputs).await;
        if tx.send(Decided { receipts, batch }).await.is_err() {
            return;
        }
    }
}

/// What the write stage needs besides its channels.
#[derive(Debug)]
pub struct WriteStage {
    /// Writes each batch.
    pub router: Router,
    /// Batches written at once.
    pub concurrency: usize,
    /// The input's name (metrics, rejections).
    pub source: String,
    /// How long a batch whose writes failed is retried in place
    /// (`retry_in_flight_secs`).
    pub retry_in_flight: Duration,
    /// Cancelled half way through a shutdown's grace period: what still
    /// fails is then given back at once.
    pub stop: CancellationToken,
    /// The queue: which messages are still this instance's.
    pub queue: Arc<super::SqsSource>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The write stage: up to `concurrency` batches in flight, each batch's
/// acknowledgements sent back to the source once all its outcomes are
/// known. Ends when its input ends and every write in flight has finished.
///
/// A batch whose writes failed is not given back to the queue at once: what
/// is durable is acknowledged, and the rest (the failed messages and, in a
/// FIFO group, every later one) is decided and written again, with backoff,
/// while the source keeps it in flight, for up to `retry_in_flight`. A
/// throttled or unavailable sink then costs no receives (a give-back is one
/// receive toward the DLQ, and a redrive breaks FIFO order), and the batches
/// held here are the backpressure: the receivers stop when the write stage
/// is full. Deciding again is safe: scoring records a payment id once.
pub async fn write_loop(mut rx: mpsc::Receiver<Decided>, ack_tx: mpsc::Sender<Vec<Ack>>, stage: WriteStage) {
    let stage = &stage;
    let mut writes = FuturesUnordered::new();
    let mut open = true;
    while open || !writes.is_empty() {
        tokio::select! {
            batch = rx.recv(), if open && writes.len() < stage.concurrency => match batch {
                Some(b) => writes.push(write_in_place(stage, b, &ack_tx)),
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

/// Writes one batch, retrying in place what failed (see [`write_loop`]);
/// returns the acknowledgements still to send. What became durable before
/// the last round is acknowledged at once through `ack_tx`.
async fn write_in_place(stage: &WriteStage, d: Decided, ack_tx: &mpsc::Sender<Vec<Ack>>) -> Vec<Ack> {
    // The budget runs from the oldest message's receipt: its time in flight.
    let started = d.receipts.iter().map(|r| r.received_at).min().unwrap_or_else(Instant::now);
    let backoff = Backoff { base: Duration::from_millis(500), max: Duration::from_secs(20) };
    let Decided { mut receipts, mut batch } = d;
    for attempt in 0u32.. {
        // Any instance may receive an order's next event: no state is
        // cached across batches.
        let orders = OrderCache::new(receipts.len());
        let (inputs, outcomes) = stage.router.write(&stage.source, batch, &orders).await;
        let all = acks(receipts.clone(), &outcomes);
        if all.iter().all(|a| matches!(a, Ack::Done { .. })) {
            return all;
        }
        let delay = backoff.delay(attempt);
        let why = if stage.stop.is_cancelled() {
            Some("shutdown")
        } else if started.elapsed() + delay > stage.retry_in_flight {
            Some("retry budget spent")
        } else {
            None
        };
        if let Some(why) = why {
            let back = all.iter().filter(|a| matches!(a, Ack::Retry { .. })).count() as u64;
            GivenBack { source: &stage.source, count: back, why }.emit(&stage.metrics);
            return all;
        }
        // Acknowledge what is durable now; keep the rest, in order. A message
        // that is no longer ours (its visibility ran out: SQS redelivers it)
        // is dropped, and the later messages of its group are given back to
        // come after it.
        let mut send_now = Vec::new();
        let mut again = Vec::new();
        let mut again_inputs = Vec::new();
        let mut lost_groups: HashSet<String> = HashSet::new();
        for ((ack, receipt), input) in all.into_iter().zip(receipts).zip(inputs) {
            match ack {
                Ack::Done { .. } => send_now.push(ack),
                Ack::Retry { .. } if !stage.queue.holds(&receipt.receipt_handle) => {
                    lost_groups.extend(receipt.group.clone());
                }
                Ack::Retry { .. } if receipt.group.as_ref().is_some_and(|g| lost_groups.contains(g)) => send_now.push(ack),
                Ack::Retry { .. } => {
                    again.push(receipt);
                    again_inputs.push(input);
                }
            }
        }
        if again.is_empty() {
            return send_now;
        }
        if !send_now.is_empty() && ack_tx.send(send_now).await.is_err() {
            return Vec::new();
        }
        RetriedInFlight { source: &stage.source, count: again.len() as u64, attempt }.emit(&stage.metrics);
        tokio::select! {
            () = stage.stop.cancelled() => {
                GivenBack { source: &stage.source, count: again.len() as u64, why: "shutdown" }.emit(&stage.metrics);
                return again.into_iter().map(|r| Ack::Retry { receipt_handle: r.receipt_handle }).collect();
            }
            () = tokio::time::sleep(delay) => {}
        }
        receipts = again;
        batch = stage.router.decide(again_inputs).await;
    }
    Vec::new()
}
