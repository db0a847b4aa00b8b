//! One leased shard: its records through the router, and checkpoints.
//!
//! Owns: per shard, in shard order: batching prefetched records, handing
//! each batch to the router (every event type is processed here: orders in
//! per-order order, payments and menu items as from any input), retrying
//! the records whose writes failed, and checkpointing only what is durable.
//! Must not: spawn tasks or make channels (topology does), or checkpoint
//! past a record whose writes are not all durable.
//!
//! A batch is done when every record in it is durable (applied, a repeat, or
//! rejected and sent); only then does the checkpoint move past it, so the
//! checkpoint is always at or below the lowest record with a write
//! outstanding. The records of a batch that failed are retried, alone, with
//! backoff, until they are durable, the lease is lost or the daemon stops:
//! the shard waits rather than skip an event of an order, and what already
//! succeeded (a rejection sent, a payment written) is not sent again. On
//! stop the batch is abandoned unacknowledged: the checkpoint stays before
//! it, and the next holder replays it, which changes nothing that was
//! already written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::checkpoint::Checkpoint;
use super::leases::{Lease, LeaseError, Leases};
use super::source::Fetched;
use crate::aws::Backoff;
use crate::config::{KinesisSourceConfig, PipelineConfig};
use crate::internal_events::{Acknowledged, InternalEvent};
use crate::metrics::Metrics;
use crate::route::{Input, OrderCache, Outcome, Router};

/// Everything the shards of one stream share.
#[derive(Debug)]
pub struct ShardContext {
    /// Decide and write.
    pub router: Router,
    /// The lease table (checkpoints, release).
    pub leases: Arc<Leases>,
    /// The stream's `[sources.*]` section.
    pub config: KinesisSourceConfig,
    /// `[pipeline]`.
    pub pipeline: PipelineConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Asks the lease loop for a shard sync (a shard ended: its children may be new).
    pub sync_now: Arc<Notify>,
}

/// Waits until every parent shard of `lease` has ended and been
/// checkpointed there. False if stopped first.
pub async fn wait_for_parents(path: &ShardContext, lease: &Lease, stop: &CancellationToken) -> bool {
    let mut logged = false;
    loop {
        match path.leases.parents_done(lease).await {
            Ok(true) => return true,
            Ok(false) if !logged => {
                info!(shard = %lease.key, parents = ?lease.parents, "Waiting for parent shards to end before reading this one");
                logged = true;
            }
            Ok(false) => {}
            Err(e) => {
                warn!(shard = %lease.key, error = %e, "Reading parent leases failed, retrying")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep(Duration::from_millis(path.config.lease_take_interval_ms.min(1000))) => {}
        }
    }
}

/// How far before this instance's clock a pinned `LATEST` starts: the
/// allowance for the clock being ahead of Kinesis'. A few seconds of
/// records that arrived just before the first take may be read; none after
/// it can be skipped.
const LATEST_CLOCK_ALLOWANCE_MS: i64 = 5_000;

/// Where a newly taken lease's reading starts: its checkpoint, except that
/// `LATEST` is first pinned in the lease table to the time of this take
/// (`AT_TIMESTAMP`), fenced on `generation`, so a later holder (after a
/// crash before any checkpoint, a release with nothing read, a lost lease)
/// starts where this one did instead of at a new tip, skipping what
/// arrived in between. `None` when the lease was lost or the daemon stops
/// before the pin was written (nothing was read).
pub async fn pin_latest(path: &ShardContext, lease: &Lease, stop: &CancellationToken) -> Option<Checkpoint> {
    if lease.checkpoint != Checkpoint::Latest {
        return Some(lease.checkpoint.clone());
    }
    let now = time::OffsetDateTime::now_utc();
    let millis = (now.unix_timestamp_nanos() / 1_000_000) as i64 - LATEST_CLOCK_ALLOWANCE_MS;
    let pinned = Checkpoint::AtTimestamp { millis };
    let backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(5) };
    for attempt in 0u32.. {
        match path.leases.checkpoint(&lease.key, lease.counter, &pinned).await {
            Ok(()) => {
                info!(shard = %lease.key, millis, "LATEST pinned to the time of the first take");
                return Some(pinned);
            }
            Err(LeaseError::Lost(_)) => return None,
            Err(e) => warn!(shard = %lease.key, error = %e, attempt, "Pinning LATEST failed, retrying"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(backoff.delay(attempt)) => {}
        }
    }
    None
}

/// How a shard's processing ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardExit {
    /// Read to its end and checkpointed at SHARD_END.
    Ended,
    /// Stopped on shutdown; checkpointed and released.
    Released,
    /// The lease was lost; nothing more was written.
    Lost,
}

/// Processes one leased shard's prefetched records until the shard ends,
/// `stop` (drain, checkpoint, release) or `lost` (stop at once). Every
/// lease write is fenced on `generation`, the lease's counter when it was
/// taken for this task.
pub async fn process_shard(
    path: Arc<ShardContext>,
    shard: String,
    generation: i64,
    mut rx: mpsc::Receiver<Fetched>,
    stop: CancellationToken,
    lost: CancellationToken,
) -> ShardExit {
    let source = path.config.stream.clone();
    let mut cache = OrderCache::new(path.config.order_cache_size);
    let mut done: Option<(String, u64)> = None;
    let mut unacked: u64 = 0;
    let mut last_checkpoint = Instant::now();
    let interval = Duration::from_millis(path.config.checkpoint_interval_ms);
    'batches: loop {
        let first = tokio::select! {
            biased;
            () = lost.cancelled() => return ShardExit::Lost,
            () = stop.cancelled() => break,
            f = rx.recv() => match f {
                Some(f) => f,
                None => break,
            },
            // An idle shard still checkpoints what it finished: its last
            // records are not replayed by the next holder for want of a
            // next batch.
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(last_checkpoint + interval)), if unacked > 0 => {
                if let Some(exit) = checkpoint_due(&path, &shard, generation, &done, &mut unacked, &mut last_checkpoint, &lost).await {
                    return exit;
                }
                continue;
            }
        };
        // Coalesce what is already prefetched into one batch.
        let mut batch = first;
        while !batch.end && batch.records.len() < path.pipeline.max_batch_events {
            match rx.try_recv() {
                Ok(more) => {
                    batch.records.extend(more.records);
                    batch.aggregated.extend(more.aggregated);
                    batch.end = more.end;
                }
                Err(_) => break,
            }
        }
        let end = batch.end;
        let count = batch.records.len() as u64;
        let last = batch.records.last().map(|r| (r.sequence.clone(), r.sub));
        if count > 0 {
            let inputs: Vec<Input> = batch
                .records
                .into_iter()
                .zip(batch.aggregated.iter().copied().chain(std::iter::repeat(false)))
                .map(|(r, aggregated)| Input { position: r.position(&shard, aggregated), data: r.data })
                .collect();
            match write_until_durable(&path, &source, &mut cache, inputs, &stop, &lost).await {
                Durable::Yes => {}
                Durable::Stopped => break,
                Durable::Lost => return ShardExit::Lost,
            }
            done = last;
            unacked += count;
        }
        if end {
            loop {
                match path.leases.checkpoint(&shard, generation, &Checkpoint::ShardEnd).await {
                    Ok(()) => break,
                    Err(LeaseError::Lost(_)) => return ShardExit::Lost,
                    Err(e) => {
                        warn!(shard = %shard, error = %e, "Checkpoint at shard end failed, retrying");
                        tokio::select! {
                            () = lost.cancelled() => return ShardExit::Lost,
                            // Release with the checkpoint at the last record:
                            // the next holder finds the end and writes SHARD_END.
                            () = stop.cancelled() => break 'batches,
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
            Acknowledged { source: &source, count: unacked }.emit(&path.metrics);
            path.leases.forget(&shard, generation);
            path.sync_now.notify_one();
            info!(shard = %shard, "Shard finished and checkpointed at SHARD_END");
            return ShardExit::Ended;
        }
        if unacked > 0 && last_checkpoint.elapsed() >= interval {
            if let Some(exit) = checkpoint_due(&path, &shard, generation, &done, &mut unacked, &mut last_checkpoint, &lost).await
            {
                return exit;
            }
        }
    }
    // Shutdown: checkpoint what is durable and hand the lease over at once.
    if lost.is_cancelled() {
        return ShardExit::Lost;
    }
    let cp = done.map(|(sequence, sub)| Checkpoint::At { sequence, sub });
    for attempt in 0..5 {
        match path.leases.release(&shard, generation, if unacked > 0 { cp.as_ref() } else { None }).await {
            Ok(()) => {
                Acknowledged { source: &source, count: unacked }.emit(&path.metrics);
                return ShardExit::Released;
            }
            Err(LeaseError::Lost(_)) => return ShardExit::Lost,
            Err(e) => {
                warn!(shard = %shard, error = %e, attempt, "Releasing the lease failed, retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    ShardExit::Lost
}

/// Checkpoints at `done` (the last record of the last durable batch) and
/// counts `unacked` acknowledged; `Some` when the lease was lost. A failed
/// write is retried at the next batch or interval.
async fn checkpoint_due(
    path: &ShardContext,
    shard: &str,
    generation: i64,
    done: &Option<(String, u64)>,
    unacked: &mut u64,
    last_checkpoint: &mut Instant,
    lost: &CancellationToken,
) -> Option<ShardExit> {
    let Some((sequence, sub)) = done else { return None };
    match path.leases.checkpoint(shard, generation, &Checkpoint::At { sequence: sequence.clone(), sub: *sub }).await {
        Ok(()) => {
            Acknowledged { source: &path.config.stream, count: *unacked }.emit(&path.metrics);
            *unacked = 0;
            *last_checkpoint = Instant::now();
            None
        }
        Err(LeaseError::Lost(_)) => {
            warn!(shard = %shard, "Checkpoint refused: the lease moved to another instance; stopping this shard");
            lost.cancel();
            Some(ShardExit::Lost)
        }
        Err(e) => {
            warn!(shard = %shard, error = %e, "Checkpoint failed; will retry");
            // Not at once again: the next try is an interval away.
            *last_checkpoint = Instant::now();
            None
        }
    }
}

/// How a batch's retries ended.
enum Durable {
    /// Every record is durable.
    Yes,
    /// The daemon is stopping: the batch is abandoned, unacknowledged.
    Stopped,
    /// The lease was lost.
    Lost,
}

/// Hands the batch to the router, then the records that failed again, with
/// backoff, until none fails, `stop` or `lost`.
async fn write_until_durable(
    path: &ShardContext,
    source: &str,
    cache: &mut OrderCache,
    mut inputs: Vec<Input>,
    stop: &CancellationToken,
    lost: &CancellationToken,
) -> Durable {
    let backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(10) };
    let mut attempt = 0u32;
    loop {
        let (back, outcomes) = path.router.process(source, inputs, cache).await;
        inputs = back.into_iter().zip(outcomes).filter(|(_, o)| *o == Outcome::Failed).map(|(i, _)| i).collect();
        if inputs.is_empty() {
            return Durable::Yes;
        }
        warn!(source, failed = inputs.len(), attempt, "Records not durable; retrying them (the shard waits, nothing is skipped)");
        tokio::select! {
            biased;
            () = lost.cancelled() => return Durable::Lost,
            () = stop.cancelled() => return Durable::Stopped,
            () = tokio::time::sleep(backoff.delay(attempt)) => {}
        }
        attempt = attempt.saturating_add(1);
    }
}
