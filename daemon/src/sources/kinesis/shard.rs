//! The orders path: one leased shard's records -> applied order events,
//! rejections and checkpoints.
//!
//! Owns: per shard, in shard order: batching prefetched records, one rayon
//! hop per batch to decode, then applying the events of each order in order
//! (different orders in parallel transactions), sending rejections, and
//! checkpointing only what is durable. Must not: spawn tasks or make
//! channels (topology does), or checkpoint past a record whose writes are
//! not all durable.
//!
//! A batch is done when every order event in it is durably applied (or was
//! already, or is durably rejected); only then does the checkpoint move past
//! it, so the checkpoint is always at or below the lowest record with a
//! write outstanding. A batch that cannot be made durable is retried, with
//! backoff, until it is or the lease is lost: the shard waits rather than
//! skip an event of an order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pipeline::event::{RejectReason, Rejection, decode};
use pipeline::orders::{Applied, OrderState, apply, order_id};
use pipeline::{Body, Event};
use rayon::prelude::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::aws::Backoff;
use crate::bridge::CpuPool;
use crate::config::{KinesisSourceConfig, PipelineConfig};
use crate::leases::{Checkpoint, Lease, LeaseError, Leases};
use crate::metrics::{Metrics, ReasonLabel, StageLabel};
use crate::sinks::WriteOutcome;
use crate::sinks::dynamodb::DynamoDbSink;
use crate::sinks::dynamodb::orders::{OrderWrite, OrderWriteOutcome};
use crate::sinks::rejected::{RejectedRecord, RejectedSink};
use crate::sources::kinesis::{Fetched, ShardRecord};

/// Everything the orders path of every shard shares.
#[derive(Debug)]
pub struct OrdersPath {
    /// `cafe-orders` and `cafe-aggregates`.
    pub dynamodb: DynamoDbSink,
    /// `cafe-rejected`.
    pub rejected: RejectedSink,
    /// The CPU pool.
    pub pool: CpuPool,
    /// The lease table (checkpoints, release).
    pub leases: Arc<Leases>,
    /// `[sources.orders]`.
    pub config: KinesisSourceConfig,
    /// `[pipeline]`.
    pub pipeline: PipelineConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Asks the lease loop for a shard sync (a shard ended: its children may be new).
    pub sync_now: Arc<Notify>,
}

/// Order states one shard keeps in memory (first in, first out). Valid while
/// the shard's lease is held: every event of these orders goes through it.
#[derive(Debug)]
pub struct OrderCache {
    map: HashMap<String, Option<OrderState>>,
    fifo: VecDeque<String>,
    cap: usize,
}

impl OrderCache {
    /// An empty cache of at most `cap` orders.
    pub fn new(cap: usize) -> Self {
        OrderCache { map: HashMap::new(), fifo: VecDeque::new(), cap: cap.max(1) }
    }

    fn get(&self, id: &str) -> Option<&Option<OrderState>> {
        self.map.get(id)
    }

    fn put(&mut self, id: &str, state: Option<OrderState>) {
        if self.map.insert(id.to_owned(), state).is_none() {
            self.fifo.push_back(id.to_owned());
        }
        while self.map.len() > self.cap {
            match self.fifo.pop_front() {
                Some(k) => {
                    self.map.remove(&k);
                }
                None => break,
            }
        }
        if self.fifo.len() > 2 * self.cap {
            let map = &self.map;
            let mut seen = std::collections::HashSet::new();
            self.fifo.retain(|k| map.contains_key(k) && seen.insert(k.clone()));
        }
    }

    fn forget(&mut self, id: &str) {
        self.map.remove(id);
    }

    /// Orders cached.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default()
}

/// Waits until every parent shard of `lease` has ended and been
/// checkpointed there. False if stopped first.
pub async fn wait_for_parents(path: &OrdersPath, lease: &Lease, stop: &CancellationToken) -> bool {
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
/// `stop` (drain, checkpoint, release) or `lost` (stop at once).
pub async fn process_shard(
    path: Arc<OrdersPath>,
    shard: String,
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
    let backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(10) };
    loop {
        let first = tokio::select! {
            biased;
            () = lost.cancelled() => return ShardExit::Lost,
            () = stop.cancelled() => break,
            f = rx.recv() => match f {
                Some(f) => f,
                None => break,
            },
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
            let records = Arc::new(batch.records);
            let aggregated = batch.aggregated;
            let mut attempt = 0u32;
            loop {
                if lost.is_cancelled() {
                    return ShardExit::Lost;
                }
                match apply_batch(&path, &shard, &mut cache, &records, &aggregated).await {
                    Ok(()) => break,
                    Err(e) => {
                        error!(shard = %shard, error = %e, attempt, "Batch not durable; retrying it (the shard waits, nothing is skipped)");
                        tokio::select! {
                            () = lost.cancelled() => return ShardExit::Lost,
                            () = tokio::time::sleep(backoff.delay(attempt)) => {}
                        }
                        attempt += 1;
                    }
                }
            }
            done = last;
            unacked += count;
        }
        if end {
            loop {
                match path.leases.checkpoint(&shard, &Checkpoint::ShardEnd).await {
                    Ok(()) => break,
                    Err(LeaseError::Lost(_)) => return ShardExit::Lost,
                    Err(e) => {
                        warn!(shard = %shard, error = %e, "Checkpoint at shard end failed, retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            path.metrics.source_acked.get_or_create(&crate::metrics::Metrics::source(&source)).inc_by(unacked);
            path.leases.forget(&shard);
            path.sync_now.notify_one();
            info!(shard = %shard, "Shard finished and checkpointed at SHARD_END");
            return ShardExit::Ended;
        }
        if unacked > 0 && last_checkpoint.elapsed() >= interval {
            if let Some((sequence, sub)) = &done {
                match path.leases.checkpoint(&shard, &Checkpoint::At { sequence: sequence.clone(), sub: *sub }).await {
                    Ok(()) => {
                        path.metrics.source_acked.get_or_create(&Metrics::source(&source)).inc_by(unacked);
                        unacked = 0;
                        last_checkpoint = Instant::now();
                    }
                    Err(LeaseError::Lost(_)) => {
                        warn!(shard = %shard, "Checkpoint refused: the lease moved to another instance; stopping this shard");
                        lost.cancel();
                        return ShardExit::Lost;
                    }
                    Err(e) => {
                        warn!(shard = %shard, error = %e, "Checkpoint failed; will retry with the next batch")
                    }
                }
            }
        }
    }
    // Shutdown: checkpoint what is durable and hand the lease over at once.
    if lost.is_cancelled() {
        return ShardExit::Lost;
    }
    let cp = done.map(|(sequence, sub)| Checkpoint::At { sequence, sub });
    for attempt in 0..5 {
        match path.leases.release(&shard, if unacked > 0 { cp.as_ref() } else { None }).await {
            Ok(()) => {
                path.metrics.source_acked.get_or_create(&Metrics::source(&source)).inc_by(unacked);
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

/// One record's fate in a batch.
#[derive(Debug, Clone)]
enum Fate {
    Pending,
    Applied(OffsetDateTime),
    Repeat,
    Rejected(Rejection),
}

/// Decodes, applies and writes one batch; `Ok` when all of it is durable.
async fn apply_batch(
    path: &OrdersPath,
    shard: &str,
    cache: &mut OrderCache,
    records: &Arc<Vec<ShardRecord>>,
    aggregated: &[bool],
) -> Result<(), String> {
    let source = path.config.stream.as_str();
    let started = Instant::now();
    path.metrics.batch_events.get_or_create(&StageLabel { stage: "orders_decode" }).observe(records.len() as f64);
    let recs = Arc::clone(records);
    let decoded: Vec<Result<Event, Rejection>> =
        path.pool.run(move || recs.par_iter().map(|r| decode(&r.data)).collect()).await.map_err(|e| e.to_string())?;
    path.metrics.stage_duration.get_or_create(&StageLabel { stage: "orders_decode" }).observe(started.elapsed().as_secs_f64());

    let mut fates: Vec<Fate> = vec![Fate::Pending; records.len()];
    // Order id -> its events' indices, in shard order.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    let mut events: Vec<Option<Event>> = Vec::with_capacity(records.len());
    for (i, d) in decoded.into_iter().enumerate() {
        match d {
            Err(r) => {
                fates[i] = Fate::Rejected(r);
                events.push(None);
            }
            Ok(e) => {
                match order_id(&e) {
                    Some(id) => {
                        let g = *group_of.entry(id.to_owned()).or_insert_with(|| {
                            groups.push((id.to_owned(), Vec::new()));
                            groups.len() - 1
                        });
                        groups[g].1.push(i);
                    }
                    None => {
                        fates[i] = Fate::Rejected(Rejection::new(
                            RejectReason::UnsupportedInput,
                            format!(
                                "{} events are not processed from a Kinesis input in this release",
                                e.body.event_type().name()
                            ),
                        ));
                    }
                }
                events.push(Some(e));
            }
        }
    }

    let write_started = Instant::now();
    let mut pending: Vec<usize> = (0..groups.len()).collect();
    let mut attempt = 0u32;
    let backoff = Backoff { base: Duration::from_millis(path.dynamodb.config.base_backoff_ms), max: Duration::from_secs(5) };
    // An order whose first event here is `order.placed` is new unless this
    // is a replay: it is written optimistically (the put is conditional on
    // the order not existing) and read back only if that condition fails.
    let placed_first = |g: usize| matches!(events[groups[g].1[0]].as_ref().map(|e| &e.body), Some(Body::OrderPlaced(_)));
    let mut must_read: std::collections::HashSet<usize> = std::collections::HashSet::new();
    while !pending.is_empty() {
        let to_read: Vec<String> = pending
            .iter()
            .filter(|&&g| cache.get(&groups[g].0).is_none() && (must_read.contains(&g) || !placed_first(g)))
            .map(|&g| groups[g].0.clone())
            .collect();
        if !to_read.is_empty() {
            path.metrics.orders_state_reads.get_or_create(&Metrics::source(source)).inc_by(to_read.len() as u64);
            let mut found = path.dynamodb.read_orders(&to_read).await?;
            for id in &to_read {
                cache.put(id, found.remove(id));
            }
        }
        let mut writes: Vec<OrderWrite> = Vec::new();
        let mut write_groups: Vec<usize> = Vec::new();
        for &g in &pending {
            let (id, idx) = &groups[g];
            let mut state = cache.get(id).cloned().flatten();
            let before = state.as_ref().map(|s| s.history.len());
            let mut rows = std::collections::BTreeMap::new();
            let mut placed_by = None;
            for &i in idx {
                let Some(e) = &events[i] else { continue };
                fates[i] = match apply(&mut state, e) {
                    Applied::Changed { window, counters, event_time } => {
                        let row: &mut pipeline::window::Counters = rows.entry(window).or_default();
                        row.add(&counters);
                        if let Body::OrderPlaced(p) = &e.body {
                            placed_by = Some((p.customer_id.clone(), format!("{:?}", p.channel).to_lowercase()));
                        }
                        Fate::Applied(event_time)
                    }
                    Applied::Repeat => Fate::Repeat,
                    Applied::Rejected(r) => Fate::Rejected(r),
                };
            }
            if let (Some(after), false) = (state, rows.is_empty()) {
                writes.push(OrderWrite { order_id: id.clone(), before, after, placed_by, rows });
                write_groups.push(g);
            }
        }
        let mut still = Vec::new();
        let mut failed = false;
        if !writes.is_empty() {
            let outcomes = path.dynamodb.write_orders(&writes, &now_rfc3339(), path.pipeline.sink_concurrency).await;
            for ((w, g), o) in writes.into_iter().zip(write_groups).zip(outcomes) {
                match o {
                    OrderWriteOutcome::Written => cache.put(&w.order_id, Some(w.after)),
                    OrderWriteOutcome::Conflict => {
                        cache.forget(&w.order_id);
                        must_read.insert(g);
                        still.push(g);
                    }
                    OrderWriteOutcome::Failed => {
                        cache.forget(&w.order_id);
                        still.push(g);
                        failed = true;
                    }
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if attempt >= 8 {
            return Err(format!("{} orders still not written after {} rounds", pending.len(), attempt + 1));
        }
        if failed {
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
        attempt += 1;
    }

    // Rejections are durable before the batch counts as done.
    let mut rejections = Vec::new();
    for (i, f) in fates.iter().enumerate() {
        if let Fate::Rejected(r) = f {
            let data = &records[i].data;
            let (body, detail) = match std::str::from_utf8(data) {
                Ok(text) => (text.to_owned(), r.detail.clone()),
                Err(_) => {
                    use base64::Engine;
                    (
                        base64::engine::general_purpose::STANDARD.encode(data),
                        format!("body is base64: the record is not UTF-8; {}", r.detail),
                    )
                }
            };
            rejections.push(RejectedRecord {
                body,
                reason: r.reason.code(),
                detail,
                source: source.to_owned(),
                position: records[i].position(shard, aggregated.get(i).copied().unwrap_or(false)),
            });
        }
    }
    if !rejections.is_empty() {
        let outcomes = path.rejected.send(&rejections).await;
        if outcomes.contains(&WriteOutcome::Failed) {
            return Err("rejections could not be sent to the rejected queue".into());
        }
        for r in &rejections {
            path.metrics.pipeline_rejected.get_or_create(&ReasonLabel { reason: r.reason }).inc();
        }
    }

    let now = OffsetDateTime::now_utc();
    let e2e = path.metrics.e2e_latency.get_or_create(&Metrics::source(source));
    let (mut written, mut repeats) = (0u64, 0u64);
    for f in &fates {
        match f {
            Fate::Applied(t) => {
                written += 1;
                e2e.observe((now - *t).as_seconds_f64().max(0.0));
            }
            Fate::Repeat => repeats += 1,
            _ => {}
        }
    }
    for (outcome, n) in [("written", written), ("duplicate", repeats), ("rejected", rejections.len() as u64)] {
        if n > 0 {
            path.metrics.pipeline_events.get_or_create(&Metrics::source_outcome(source, outcome)).inc_by(n);
        }
    }
    path.metrics
        .stage_duration
        .get_or_create(&StageLabel { stage: "orders_write" })
        .observe(write_started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_forgets_oldest_first() {
        let mut c = OrderCache::new(3);
        for i in 0..10 {
            c.put(&format!("o{i}"), None);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("o9").is_some() && c.get("o7").is_some() && c.get("o6").is_none());
        c.forget("o9");
        for i in 0..100 {
            c.put("o8", None);
            c.put(&format!("x{i}"), None);
        }
        assert!(c.len() <= 3);
        assert!(c.fifo.len() <= 6 + 1);
    }
}
