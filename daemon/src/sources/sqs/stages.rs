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
use futures::stream::{FuturesOrdered, FuturesUnordered};
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

/// Batches of an SQS input handed to the CPU pool at once, as for a shard
/// (`DECIDE_AHEAD` in `sources/kinesis/shard.rs`): the next batch is
/// gathered, and waits out its linger, while one is decided, and the pool
/// finds it waiting when it ends one. Handed over one at a time, the pool
/// idled for each batch's gathering: menu-sync's batches of about 100
/// items were each cut by the linger (50 ms) after the one before had
/// been decided, about a fifth of the drain with the pool idle. One when
/// payments are scored in the decide stage (`[fraud] state = "process"`):
/// the fraud history must see a FIFO queue's payments in the order they
/// were received. Decided batches are passed on in the order they were
/// gathered either way.
const DECIDE_AHEAD: usize = 2;

/// The decide stage: gathers received messages into batches of up to
/// `max_batch_events` (waiting at most `linger_ms` after a batch's first
/// message for it to fill), decides each on the CPU pool (up to
/// [`DECIDE_AHEAD`] batches at once), and passes them on in order. Ends
/// when its input ends and every batch gathered has been passed on.
pub async fn decide_loop(
    mut rx: mpsc::Receiver<Vec<SqsMessage>>,
    tx: mpsc::Sender<Decided>,
    router: Router,
    config: PipelineConfig,
) {
    let ahead = if router.scores_in_decide() { 1 } else { DECIDE_AHEAD };
    let router = &router;
    let mut deciding = FuturesOrdered::new();
    // The batch being gathered; when its linger ends; whether it has.
    let mut gathering: Vec<SqsMessage> = Vec::new();
    let mut deadline = tokio::time::Instant::now();
    let mut lingered = false;
    let mut open = true;
    loop {
        let full = gathering.len() >= config.max_batch_events;
        if !gathering.is_empty() && (full || lingered || !open) && deciding.len() < ahead {
            let (receipts, inputs) = split(std::mem::take(&mut gathering));
            lingered = false;
            deciding.push_back(async move { Decided { receipts, batch: router.decide(inputs).await } });
            continue;
        }
        if !open && gathering.is_empty() && deciding.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            Some(decided) = deciding.next(), if !deciding.is_empty() => {
                if tx.send(decided).await.is_err() {
                    return;
                }
            }
            more = rx.recv(), if open && !full => match more {
                Some(more) => {
                    if gathering.is_empty() {
                        // The linger in force now: a reload may change it.
                        deadline = tokio::time::Instant::now() + router.tunables.get().linger;
                    }
                    gathering.extend(more);
                }
                None => open = false,
            },
            () = tokio::time::sleep_until(deadline), if !lingered && !gathering.is_empty() => lingered = true,
        }
    }
}

/// A gathered batch's receipts and the router's inputs, in arrival order.
fn split(batch: Vec<SqsMessage>) -> (Vec<Receipt>, Vec<Input>) {
    let mut receipts = Vec::with_capacity(batch.len());
    let mut inputs = Vec::with_capacity(batch.len());
    for m in batch {
        receipts.push(Receipt { receipt_handle: m.receipt_handle, group: m.group_id, received_at: m.received_at });
        inputs.push(Input { data: m.body.into_bytes(), position: Position::Text(m.message_id) });
    }
    (receipts, inputs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::apply_payments::FraudStateCache;
    use crate::route::{Scoring, refusing_router};

    fn message(k: usize) -> SqsMessage {
        SqsMessage {
            message_id: format!("m{k}"),
            receipt_handle: format!("r{k}"),
            group_id: None,
            body: format!(r#"{{"v":1,"id":"e{k}","type":"menu.item_upserted"}}"#),
            receive_count: 1,
            received_at: Instant::now(),
        }
    }

    /// Batches on the CPU pool (waiting for it or running) once the decide
    /// loop has been handed three receives while the pool's one thread is
    /// held: the first a batch of its own (handed over before the second
    /// is sent), so the loop hands over as many batches as it may at once.
    /// Then the pool is let go, and the batches come out in the order
    /// received.
    async fn handed_while_the_pool_is_held(router: Router) -> i64 {
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let pool = router.pool.clone();
        let holding = tokio::spawn(async move { pool.run(move || held.recv()).await });
        let depth = || router.metrics.rayon_queue_depth.get();
        let reached = |n: i64, within: Duration| async move {
            let until = Instant::now() + within;
            while depth() < n && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        reached(1, Duration::from_secs(5)).await;
        assert_eq!(depth(), 1, "the held job is on the pool");
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let config = PipelineConfig { max_batch_events: 250, ..PipelineConfig::default() };
        let stage = tokio::spawn(decide_loop(in_rx, out_tx, router.clone(), config));
        in_tx.send(vec![message(0), message(1)]).await.expect("the loop receives");
        reached(2, Duration::from_secs(5)).await;
        assert_eq!(depth(), 2, "the first batch was handed to the pool after its linger (1 ms)");
        for k in 1..3 {
            in_tx.send(vec![message(2 * k), message(2 * k + 1)]).await.expect("the loop receives");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reached(1 + DECIDE_AHEAD as i64, Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(in_tx);
        let handed = depth() - 1;
        hold.send(()).expect("the held job waits");
        holding.await.expect("the held job ends").expect("no panic").expect("released");
        let mut handles = Vec::new();
        while let Some(d) = out_rx.recv().await {
            assert_eq!(d.receipts.len(), d.batch.inputs.len());
            handles.extend(d.receipts.into_iter().map(|r| r.receipt_handle));
        }
        stage.await.expect("the loop ends");
        assert_eq!(handles, (0..6).map(|k| format!("r{k}")).collect::<Vec<_>>(), "every message, in the order received");
        handed
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_batches_wait_on_the_pool_so_it_never_idles_for_a_gathering() {
        let router = refusing_router();
        let shared = Router { scoring: Scoring::Shared { cache: Arc::new(FraudStateCache::new(16, None)) }, ..router };
        assert_eq!(handed_while_the_pool_is_held(shared).await, DECIDE_AHEAD as i64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_batch_at_a_time_when_the_decide_stage_scores_payments() {
        let router = refusing_router();
        assert!(router.scores_in_decide(), "the history in the process");
        assert_eq!(handed_while_the_pool_is_held(router).await, 1);
    }
}
