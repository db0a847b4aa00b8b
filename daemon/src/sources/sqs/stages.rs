//! The SQS input's stages between its receivers and its acknowledger:
//! batching received messages for the router's decide stage, and the write
//! stage, which turns each batch's outcomes into acknowledgements.
//!
//! Owns: batching (`max_batch_events`, `linger_ms`) and the write stage's
//! concurrency (`sink_concurrency` batches at once). Must not: spawn tasks
//! or make channels (topology does).

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::ack::{Receipt, acks};
use super::{Ack, SqsMessage};
use crate::config::PipelineConfig;
use crate::route::{DecidedBatch, Input, OrderCache, Router};

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
        let mut receipts = Vec::with_capacity(batch.len());
        let mut inputs = Vec::with_capacity(batch.len());
        for m in batch {
            receipts.push(Receipt { receipt_handle: m.receipt_handle, group: m.group_id });
            inputs.push(Input { data: m.body.into_bytes(), position: m.message_id });
        }
        let batch = router.decide(inputs).await;
        if tx.send(Decided { receipts, batch }).await.is_err() {
            return;
        }
    }
}

/// The write stage: up to `concurrency` batches in flight, each batch's
/// acknowledgements sent back to the source once all its outcomes are
/// known. Ends when its input ends and every write in flight has finished.
pub async fn write_loop(
    mut rx: mpsc::Receiver<Decided>,
    ack_tx: mpsc::Sender<Vec<Ack>>,
    router: Router,
    concurrency: usize,
    source: String,
) {
    let write = |d: Decided| {
        let (router, source) = (&router, &source);
        async move {
            // Any instance may receive an order's next event: no state is
            // cached across batches.
            let mut orders = OrderCache::new(d.receipts.len());
            let (_, outcomes) = router.write(source, d.batch, &mut orders).await;
            acks(d.receipts, &outcomes)
        }
    };
    let mut writes = FuturesUnordered::new();
    let mut open = true;
    while open || !writes.is_empty() {
        tokio::select! {
            batch = rx.recv(), if open && writes.len() < concurrency => match batch {
                Some(b) => writes.push(write(b)),
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
