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

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{FutureExt, StreamExt};
use pipeline::orders::{ShardName, order_id};
use smallvec::SmallVec;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::budget::Room;
use super::checkpoint::Checkpoint;
use super::leases::{Lease, LeaseError, Leases};
use super::source::Fetched;
use crate::aws::Backoff;
use crate::config::{KinesisSourceConfig, PipelineConfig};
use crate::internal_events::{Acknowledged, InternalEvent};
use crate::metrics::Metrics;
use crate::route::{Decided, DecidedBatch, Input, OrderCache, OrderCaches, Outcome, Router};

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
    /// The pool of the shards' order caches (`order_cache_bytes`).
    pub orders: Arc<OrderCaches>,
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
            Err(e) => path.leases.sync_failed(
                crate::internal_events::SourceErrorKind::Leases,
                &format!("reading the parent leases of {}: {e}", lease.key),
            ),
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

/// Batches of a shard handed to the CPU pool at once. Two: the pool finds
/// the next batch waiting when it ends one, instead of idling until this
/// task has woken, taken the decided batch and read the next (a wake-up
/// and a page's worth of work per batch, about a seventh of the shard
/// stage's time in `benches/benches/pipeline.rs`). Their results are taken
/// in shard order, so the claims of orders in flight are made in shard
/// order as before. One when payments are scored in the decide stage
/// (`[fraud] state = "process"`): two batches on the pool at once would
/// reach the fraud history in whichever order they end, and it must see a
/// shard's payments in shard order. (Both count among the batches read
/// and not yet durable: with `max_batches_in_flight` = 1, one.)
const DECIDE_AHEAD: usize = 2;

/// Whether the shard may take up its next decided batch: not while a part
/// must write alone (its decide stage failed; nothing else is in flight
/// and nothing is taken up meanwhile, or a later batch's events of its
/// orders would be written before its own, which it has not decided yet).
fn may_take_up(alone: Option<u64>, held: &VecDeque<Part>) -> bool {
    alone.is_none() && !held.iter().any(|part| part.alone)
}

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
///
/// Up to `max_batches_in_flight` batches are read and not yet durable at
/// once, so one slow transaction does not stall the shard. A batch's events
/// of orders that an earlier batch still has in flight are held back, as
/// one part, until those earlier parts are durable; the rest of the batch
/// writes at once. So an order's events are applied in shard order, as
/// before; and the checkpoint moves only past batches whose every part,
/// and every batch before them, is durable.
pub async fn process_shard(
    path: Arc<ShardContext>,
    shard: String,
    generation: i64,
    rx: mpsc::Receiver<Fetched>,
    stop: CancellationToken,
    lost: CancellationToken,
) -> ShardExit {
    let cache = path.orders.cache(path.config.order_cache_size);
    let exit = shard_batches(Arc::clone(&path), shard, generation, rx, stop, lost, &cache).await;
    path.router.free_cache(cache);
    exit
}

/// [`process_shard`]'s batches, its orders cached in `cache`.
async fn shard_batches(
    path: Arc<ShardContext>,
    shard: String,
    generation: i64,
    mut rx: mpsc::Receiver<Fetched>,
    stop: CancellationToken,
    lost: CancellationToken,
    cache: &OrderCache,
) -> ShardExit {
    let source = path.config.stream.clone();
    // The shard's name (and its stream's), shared by every record's position.
    let names = ShardName::interned(&source, &shard);
    let mut done: Option<(String, u64)> = None;
    let mut unacked: u64 = 0;
    let mut last_checkpoint = Instant::now();
    let interval = Duration::from_millis(path.config.checkpoint_interval_ms);
    let max_in_flight = path.config.max_batches_in_flight.max(1);
    let decide_ahead = if path.router.scores_in_decide() { 1 } else { DECIDE_AHEAD };
    // Batches read and not yet durable, in shard order.
    let mut ledger = Ledger::default();
    // Parts writing now; parts held back for orders in flight, in shard
    // order; which parts claim each order, in shard order.
    let mut writing = FuturesUnordered::new();
    let mut held: VecDeque<Part> = VecDeque::new();
    let mut claims = Claims::default();
    // The batches being decided, in shard order (up to `decide_ahead`);
    // the claim of a part writing alone.
    let mut deciding = FuturesOrdered::new();
    let mut alone: Option<u64> = None;
    let mut end_read = false;
    let mut draining = false;
    // A write's end: its orders released, its part of the batch done; the
    // shard drains on a stop and ends on a lost lease. (A macro, for the
    // return.)
    macro_rules! written {
        ($write:expr) => {{
            let (no, claim, orders, durable) = $write;
            claims.release(claim, &orders);
            if alone == Some(claim) {
                alone = None;
            }
            match durable {
                Durable::Yes => {
                    for (last, count) in ledger.part_done(no) {
                        done = Some(last);
                        unacked += count;
                    }
                }
                Durable::Stopped => {
                    draining = true;
                    deciding.clear();
                    held.clear();
                }
                Durable::Lost => return ShardExit::Lost,
            }
        }};
    }
    loop {
        // Held parts whose orders are free now write, in shard order; a
        // part that must write alone, once everything before it is durable.
        while let Some(i) = held.iter().enumerate().position(|(i, part)| match part.alone {
            true => i == 0 && writing.is_empty(),
            false => claims.first_for_all(part),
        }) {
            if let Some(part) = held.remove(i) {
                if part.alone {
                    alone = Some(part.claim);
                }
                writing.push(write_part(&path, &source, cache, part, &stop, &lost));
            }
        }
        if draining && writing.is_empty() {
            break;
        }
        if end_read && ledger.is_empty() {
            match end_shard(&path, &shard, generation, &source, unacked, &stop, &lost).await {
                Some(exit) => return exit,
                // Stopped first: released below with the checkpoint at the
                // last record; the next holder finds the end and writes
                // SHARD_END.
                None => break,
            }
        }
        let can_read =
            !draining && !end_read && deciding.len() < decide_ahead && ledger.len() < max_in_flight && may_take_up(alone, &held);
        tokio::select! {
            biased;
            () = lost.cancelled() => return ShardExit::Lost,
            () = stop.cancelled(), if !draining => {
                // Stop reading; what is writing finishes (or gives up at
                // its next retry) and is checkpointed; what was not yet
                // written is left to the next holder.
                draining = true;
                deciding.clear();
                held.clear();
            }
            // The next batches are read and handed to the CPU pool before the
            // writes are polled: a write's state machine and cache work run
            // on this task, synchronously until its first request, and
            // polled first they kept the pool idle meanwhile (decide and
            // write took turns instead of overlapping). (Except below: a
            // batch with an order a write claims.)
            Some(decided) = deciding.next(), if !deciding.is_empty() && may_take_up(alone, &held) => {
                let (no, batch): (u64, DecidedBatch) = decided;
                let keys = order_keys(&batch, &claims);
                // A batch with an order a write claims: the writes that have
                // ended by now release their orders first. One that ended
                // in the same wake-up (this arm is polled first) would
                // otherwise split the batch for nothing, an extra write
                // call and its events held back; the price, only here, is
                // that writes woken meanwhile take their next step before
                // the next batch is read.
                if keys.iter().flatten().any(|&k| claims.claimed(k)) {
                    while let Some(Some(write)) = writing.next().now_or_never() {
                        written!(write);
                    }
                }
                // Stopped meanwhile: dropped, as a decide under way is.
                if !draining {
                    let (free, blocked) = split(no, batch, keys, &mut claims);
                    ledger.set_parts(no, usize::from(free.is_some()) + usize::from(blocked.is_some()));
                    if let Some(part) = free {
                        writing.push(write_part(&path, &source, cache, part, &stop, &lost));
                    }
                    held.extend(blocked);
                    for (last, count) in ledger.part_done_none() {
                        done = Some(last);
                        unacked += count;
                    }
                }
            }
            f = rx.recv(), if can_read => match f {
                Some(first) => {
                    // Coalesce what is already prefetched into one batch.
                    let mut batch = first;
                    while !batch.end && batch.records.len() < path.pipeline.max_batch_events {
                        match rx.try_recv() {
                            Ok(more) => {
                                batch.records.extend(more.records);
                                batch.aggregated.extend(more.aggregated);
                                batch.end = more.end;
                                match (&mut batch.room, more.room) {
                                    (Some(room), Some(more)) => room.merge(more),
                                    (room @ None, more) => *room = more,
                                    (Some(_), None) => {}
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    end_read = batch.end;
                    let last = batch.records.last().map(|r| (String::from(&*r.sequence), r.sub));
                    let count = batch.records.len() as u64;
                    let no = ledger.push(last, count, batch.room.take());
                    if count > 0 {
                        let inputs: Vec<Input> = batch
                            .records
                            .into_iter()
                            .zip(batch.aggregated.iter().copied().chain(std::iter::repeat(false)))
                            .map(|(r, aggregated)| Input { position: r.position(&names, aggregated), data: r.data })
                            .collect();
                        let router = &path.router;
                        deciding.push_back(async move { (no, router.decide(inputs).await) });
                    } else {
                        ledger.set_parts(no, 0);
                        for (last, count) in ledger.part_done_none() {
                            done = Some(last);
                            unacked += count;
                        }
                    }
                }
                None => {
                    draining = true;
                    deciding.clear();
                    held.clear();
                }
            },
            Some(write) = writing.next() => written!(write),
            // An idle shard still checkpoints what it finished: its last
            // records are not replayed by the next holder for want of a
            // next batch.
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(last_checkpoint + interval)), if unacked > 0 => {
                if let Some(exit) = checkpoint_due(&path, &shard, generation, &done, &mut unacked, &mut last_checkpoint, &lost).await {
                    return exit;
                }
            }
        }
        if unacked > 0
            && last_checkpoint.elapsed() >= interval
            && let Some(exit) = checkpoint_due(&path, &shard, generation, &done, &mut unacked, &mut last_checkpoint, &lost).await
        {
            return exit;
        }
    }
    // Shutdown: checkpoint what is durable and hand the lease over at once.
    if lost.is_cancelled() {
        return ShardExit::Lost;
    }
    let cp = done.map(|(sequence, sub)| Checkpoint::At { sequence, sub });
    // Five tries, spread: every shard of a stopping instance releases at
    // once, so a throttled lease table must not see them retry in step.
    let backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1) };
    const TRIES: u32 = 5;
    for attempt in 0..TRIES {
        match path.leases.release(&shard, generation, if unacked > 0 { cp.as_ref() } else { None }).await {
            Ok(()) => {
                Acknowledged { source: &source, count: unacked }.emit(&path.metrics);
                return ShardExit::Released;
            }
            Err(LeaseError::Lost(_)) => return ShardExit::Lost,
            Err(e) => {
                path.leases.sync_failed(
                    crate::internal_events::SourceErrorKind::Leases,
                    &format!("releasing the lease of {shard} (attempt {attempt}): {e}"),
                );
                if attempt + 1 < TRIES {
                    tokio::time::sleep(backoff.delay(attempt)).await;
                }
            }
        }
    }
    ShardExit::Lost
}

/// Every record of the shard is durable: checkpoints at SHARD_END and
/// hands the shard's children to the lease loop. `None` when stopped
/// before the checkpoint could be written.
async fn end_shard(
    path: &ShardContext,
    shard: &str,
    generation: i64,
    source: &str,
    unacked: u64,
    stop: &CancellationToken,
    lost: &CancellationToken,
) -> Option<ShardExit> {
    // Failures are counted (`cafe_kinesis_checkpoints_total{outcome="failed"}`);
    // the budget is the lease: retries end when it is lost (not renewed
    // within the failover time) or the daemon stops.
    let backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(5) };
    for attempt in 0u32.. {
        match path.leases.checkpoint(shard, generation, &Checkpoint::ShardEnd).await {
            Ok(()) => break,
            Err(LeaseError::Lost(_)) => return Some(ShardExit::Lost),
            Err(e) => {
                warn!(shard = %shard, error = %e, attempt, "Checkpoint at shard end failed, retrying");
                tokio::select! {
                    () = lost.cancelled() => return Some(ShardExit::Lost),
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(backoff.delay(attempt)) => {}
                }
            }
        }
    }
    Acknowledged { source, count: unacked }.emit(&path.metrics);
    path.leases.forget(shard, generation);
    path.sync_now.notify_one();
    info!(shard = %shard, "Shard finished and checkpointed at SHARD_END");
    Some(ShardExit::Ended)
}

/// Part of one batch, decided, to write: the whole batch, or its events
/// free to go, or its events held back for orders in flight.
struct Part {
    /// The batch's number in the ledger.
    no: u64,
    /// Its place in line for its orders ([`Claims`]).
    claim: u64,
    /// The orders it has events of (each once).
    orders: Vec<OrderKey>,
    /// Writes with nothing else in flight, and nothing read meanwhile: a
    /// batch the decide stage failed on (a bug, never bad input), whose
    /// orders are unknown until it is decided again.
    alone: bool,
    batch: DecidedBatch,
}

/// Each event's order key in `batch` (`None`: not an order's event), one
/// hash per event, for [`split`].
fn order_keys(batch: &DecidedBatch, claims: &Claims) -> Vec<Option<OrderKey>> {
    batch
        .decided
        .iter()
        .map(|d| match d {
            Decided::Order(e) => order_id(e).map(|id| claims.key(id)),
            _ => None,
        })
        .collect()
}

/// Splits a decided batch into the part free to write now and the part
/// with the events of orders an earlier part claims, and puts both in line
/// for their orders. A batch with an input the decide stage failed on is
/// one part, to write alone.
fn split(no: u64, batch: DecidedBatch, keys: Vec<Option<OrderKey>>, claims: &mut Claims) -> (Option<Part>, Option<Part>) {
    if batch.decided.iter().any(|d| matches!(d, Decided::Failed)) {
        let claim = claims.claim(&mut Vec::new());
        return (None, Some(Part { no, claim, orders: Vec::new(), alone: true, batch }));
    }
    // Each event's order, claimed or not by a part in flight.
    let held: Vec<bool> = keys.iter().map(|k| k.is_some_and(|k| claims.claimed(k))).collect();
    let mut part = |batch: DecidedBatch, mut orders: Vec<OrderKey>| {
        if batch.inputs.is_empty() {
            return None;
        }
        let claim = claims.claim(&mut orders);
        Some(Part { no, claim, orders, alone: false, batch })
    };
    if !held.contains(&true) {
        // Nothing waits: the batch is one part, its vectors as they are.
        let orders = keys.into_iter().flatten().collect();
        return (part(batch, orders), None);
    }
    let DecidedBatch { inputs, decided, decided_at } = batch;
    let n = inputs.len();
    let (mut free, mut blocked) =
        ((Vec::with_capacity(n), Vec::with_capacity(n), Vec::new()), (Vec::new(), Vec::new(), Vec::new()));
    for (((input, d), key), held) in inputs.into_iter().zip(decided).zip(keys).zip(held) {
        let side = if held { &mut blocked } else { &mut free };
        side.0.push(input);
        side.1.push(d);
        side.2.extend(key);
    }
    let free = part(DecidedBatch { inputs: free.0, decided: free.1, decided_at }, free.2);
    (free, part(DecidedBatch { inputs: blocked.0, decided: blocked.1, decided_at }, blocked.2))
}

/// An order's place in [`Claims`]: a hash of its id under keys drawn at
/// random for each shard task. Two orders that share one (a 64-bit
/// collision, whatever ids a producer crafts) only wait for each other, as
/// two events of one order do: the claims order the writes, they decide
/// nothing. Hashing once per event spares the claims a copy of each id.
type OrderKey = u64;

/// A map keyed by [`OrderKey`]s, which are hashes already.
type KeyMap<V> = HashMap<OrderKey, V, BuildHasherDefault<Prehashed>>;

/// Passes a [`OrderKey`] through as its own hash.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; any other input still hashes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The parts that have events of each order, in shard order: a part writes
/// when it is first in line for every order it has events of, so an
/// order's events apply in shard order however many batches are in flight.
#[derive(Default)]
struct Claims {
    next: u64,
    keys: crate::route::OrderHasher,
    /// Nearly always one part in line: held inline.
    lines: KeyMap<SmallVec<[u64; 2]>>,
}

impl Claims {
    fn key(&self, order: &str) -> OrderKey {
        self.keys.hash_one(order)
    }

    fn claimed(&self, order: OrderKey) -> bool {
        self.lines.contains_key(&order)
    }

    /// Puts a new part in line for `orders`, once each: a repeat (an
    /// order with several events in the part) leaves `orders`, found in
    /// the line it would join (no sort of the part's orders); its claim.
    fn claim(&mut self, orders: &mut Vec<OrderKey>) -> u64 {
        let claim = self.next;
        self.next += 1;
        orders.retain(|&o| {
            let line = self.lines.entry(o).or_default();
            let first_here = line.last() != Some(&claim);
            if first_here {
                line.push(claim);
            }
            first_here
        });
        claim
    }

    fn first_for_all(&self, part: &Part) -> bool {
        part.orders.iter().all(|o| self.lines.get(o).and_then(|line| line.first()) == Some(&part.claim))
    }

    /// A part is durable: out of line.
    fn release(&mut self, claim: u64, orders: &[OrderKey]) {
        for o in orders {
            if let Some(line) = self.lines.get_mut(o) {
                line.retain(|c| *c != claim);
                if line.is_empty() {
                    self.lines.remove(o);
                }
            }
        }
    }
}

/// The batches read and not yet checkpointable, in shard order.
#[derive(Default)]
struct Ledger {
    next: u64,
    batches: VecDeque<Entry>,
}

struct Entry {
    no: u64,
    /// Its last record, and how many records it has.
    last: Option<(String, u64)>,
    count: u64,
    /// Parts not yet durable; `None` until the batch is decided and split.
    parts_left: Option<usize>,
    /// Its records' room in the read budget, given back once every part is
    /// durable (or the ledger is dropped: a stop, a lost lease).
    room: Option<Room>,
}

impl Ledger {
    fn push(&mut self, last: Option<(String, u64)>, count: u64, room: Option<Room>) -> u64 {
        let no = self.next;
        self.next += 1;
        self.batches.push_back(Entry { no, last, count, parts_left: None, room });
        no
    }

    fn set_parts(&mut self, no: u64, parts: usize) {
        if let Some(e) = self.batches.iter_mut().find(|e| e.no == no) {
            e.parts_left = Some(parts);
        }
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    fn len(&self) -> usize {
        self.batches.len()
    }

    /// One part of batch `no` is durable: the batches now durable from the
    /// front, each as (last record, records), oldest first.
    fn part_done(&mut self, no: u64) -> Vec<((String, u64), u64)> {
        if let Some(Entry { parts_left: Some(n), room, .. }) = self.batches.iter_mut().find(|e| e.no == no) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Its records are written and dropped, even if an earlier
                // batch still holds the checkpoint back.
                room.take();
            }
        }
        self.part_done_none()
    }

    /// The batches durable from the front (see [`Ledger::part_done`]).
    fn part_done_none(&mut self) -> Vec<((String, u64), u64)> {
        let mut out = Vec::new();
        while let Some(Entry { parts_left: Some(0), .. }) = self.batches.front() {
            if let Some(Entry { last: Some(last), count, .. }) = self.batches.pop_front() {
                out.push((last, count));
            }
        }
        out
    }
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

/// Writes one part, then the records that failed again, with backoff,
/// until none fails, `stop` or `lost`. Returns the part's batch number,
/// claim and orders with how it ended.
///
/// A record is written again as it was decided, not decided again: decided
/// again, a record could become an event of an order this part does not
/// hold in line (a rejection by the clock, whose send failed, decoding in
/// time on the retry), and fraud scoring would count a payment twice. Only
/// a part written alone (its decide stage failed) is decided again.
async fn write_part(
    path: &ShardContext,
    source: &str,
    cache: &OrderCache,
    part: Part,
    stop: &CancellationToken,
    lost: &CancellationToken,
) -> (u64, u64, Vec<OrderKey>, Durable) {
    let Part { no, claim, orders, alone, batch } = part;
    let backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(10) };
    let mut attempt = 0u32;
    let mut decided = if alone { Vec::new() } else { batch.decided.clone() };
    let (mut back, mut outcomes) = path.router.write(source, batch, cache).await;
    loop {
        if !outcomes.contains(&Outcome::Failed) {
            // The last references to the part's order events, and its
            // inputs: freed on the pool, off this shard's serial task.
            path.router.free_decided(back, decided);
            return (no, claim, orders, Durable::Yes);
        }
        let failed: Vec<bool> = outcomes.iter().map(|o| *o == Outcome::Failed).collect();
        let inputs: Vec<Input> = back.into_iter().zip(&failed).filter(|(_, f)| **f).map(|(i, _)| i).collect();
        if !alone {
            decided = decided.into_iter().zip(&failed).filter(|(_, f)| **f).map(|(d, _)| d).collect();
        }
        warn!(source, failed = inputs.len(), attempt, "Records not durable; retrying them (the shard waits, nothing is skipped)");
        tokio::select! {
            biased;
            () = lost.cancelled() => return (no, claim, orders, Durable::Lost),
            () = stop.cancelled() => return (no, claim, orders, Durable::Stopped),
            () = tokio::time::sleep(backoff.delay(attempt)) => {}
        }
        attempt = attempt.saturating_add(1);
        (back, outcomes) = if alone {
            path.router.process(source, inputs, cache).await
        } else {
            let batch = DecidedBatch { inputs, decided: decided.clone(), decided_at: std::time::Instant::now() };
            path.router.write(source, batch, cache).await
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn order_event(order: &str, k: usize) -> (Input, Decided) {
        let (kind, data) = if k == 0 {
            (
                "order.placed",
                format!(
                    r#"{{"order_id":"{order}","customer_id":"c","channel":"app","items":[{{"sku":"s","qty":1,"unit_price_cents":100}}],"total_cents":100}}"#
                ),
            )
        } else {
            ("order.status", format!(r#"{{"order_id":"{order}","status":"confirmed"}}"#))
        };
        let body =
            format!(r#"{{"v":1,"id":"{order}-{k}","type":"{kind}","ts":"2026-11-22T08:00:00Z","store":"s1","data":{data}}}"#);
        let event = pipeline::decode(body.as_bytes()).expect("a valid order event");
        (Input { data: body.into_bytes(), position: format!("{order}-{k}").into() }, Decided::Order(std::sync::Arc::new(event)))
    }

    fn batch(events: Vec<(Input, Decided)>) -> DecidedBatch {
        let (inputs, decided) = events.into_iter().unzip();
        DecidedBatch { inputs, decided, decided_at: Instant::now() }
    }

    fn split_(no: u64, batch: DecidedBatch, claims: &mut Claims) -> (Option<Part>, Option<Part>) {
        let keys = order_keys(&batch, claims);
        split(no, batch, keys, claims)
    }

    fn positions(part: &Part) -> Vec<String> {
        part.batch.inputs.iter().map(|i| i.position.to_string()).collect()
    }

    #[test]
    fn a_batch_s_events_of_orders_in_flight_wait_for_them_in_shard_order() {
        let mut claims = Claims::default();
        let (first, none) = split_(0, batch(vec![order_event("a", 0), order_event("b", 0)]), &mut claims);
        let first = first.expect("free part");
        assert!(none.is_none());
        assert!(claims.first_for_all(&first));
        // The next batch: a's next event waits for the first part; c goes.
        let rejection = pipeline::decode(b"{").expect_err("not an event");
        let rejected = (Input { data: b"{".to_vec(), position: "x".into() }, Decided::Rejected(rejection));
        let (free, held) = split_(1, batch(vec![order_event("a", 1), order_event("c", 0), rejected]), &mut claims);
        let (free, held) = (free.expect("free part"), held.expect("held part"));
        assert_eq!(positions(&free), ["c-0", "x"]);
        assert_eq!(positions(&held), ["a-1"]);
        assert!(claims.first_for_all(&free) && !claims.first_for_all(&held));
        // A third batch with a again queues behind the held part, not beside it.
        let (none, third) = split_(2, batch(vec![order_event("a", 2)]), &mut claims);
        let third = third.expect("held part");
        assert!(none.is_none());
        claims.release(first.claim, &first.orders);
        assert!(claims.first_for_all(&held) && !claims.first_for_all(&third));
        claims.release(held.claim, &held.orders);
        assert!(claims.first_for_all(&third));
        claims.release(third.claim, &third.orders);
        claims.release(free.claim, &free.orders);
        assert!(claims.lines.is_empty());
    }

    #[test]
    fn a_part_claims_each_of_its_orders_once_however_many_events_it_has() {
        let mut claims = Claims::default();
        let events =
            vec![order_event("a", 0), order_event("b", 0), order_event("a", 1), order_event("a", 2), order_event("b", 1)];
        let (part, none) = split_(0, batch(events), &mut claims);
        let part = part.expect("free part");
        assert!(none.is_none());
        let (a, b) = (claims.key("a"), claims.key("b"));
        assert_eq!(part.orders, [a, b], "each order once, in the order of its first event");
        assert!([a, b].iter().all(|k| claims.lines[k].as_slice() == [part.claim]));
        // The next part with a's and b's events waits behind it, once each too.
        let (none, held) = split_(1, batch(vec![order_event("b", 2), order_event("b", 3), order_event("a", 3)]), &mut claims);
        let held = held.expect("held part");
        assert!(none.is_none());
        assert_eq!(held.orders, [b, a]);
        assert!([a, b].iter().all(|k| claims.lines[k].as_slice() == [part.claim, held.claim]));
        claims.release(part.claim, &part.orders);
        assert!(claims.first_for_all(&held));
        claims.release(held.claim, &held.orders);
        assert!(claims.lines.is_empty());
    }

    #[test]
    fn a_batch_the_decide_stage_failed_on_writes_alone() {
        let mut claims = Claims::default();
        let (first, _) = split_(0, batch(vec![order_event("a", 0)]), &mut claims);
        let failed = (Input { data: b"{}".to_vec(), position: "f".into() }, Decided::Failed);
        let (none, alone) = split_(1, batch(vec![order_event("b", 0), failed]), &mut claims);
        let alone = alone.expect("one part");
        assert!(none.is_none() && alone.alone);
        assert_eq!(positions(&alone), ["b-0", "f"]);
        assert!(first.is_some_and(|p| !p.alone));
    }

    #[test]
    fn no_decided_batch_is_taken_up_while_a_part_must_write_alone() {
        let mut claims = Claims::default();
        let mut held: VecDeque<Part> = VecDeque::new();
        assert!(may_take_up(None, &held));
        // A part in line that does not write alone does not stop it.
        let (first, _) = split_(0, batch(vec![order_event("a", 0)]), &mut claims);
        let (_, waiting) = split_(1, batch(vec![order_event("a", 1)]), &mut claims);
        held.extend(waiting);
        assert!(first.is_some() && held.len() == 1 && may_take_up(None, &held));
        // One waiting to write alone does, and so does one writing alone:
        // the next batch, decided meanwhile, waits where it is.
        let failed = (Input { data: b"{}".to_vec(), position: "f".into() }, Decided::Failed);
        let (_, alone) = split_(2, batch(vec![order_event("a", 2), failed]), &mut claims);
        held.extend(alone);
        assert!(!may_take_up(None, &held));
        let alone = held.pop_back().expect("the part to write alone");
        assert!(!may_take_up(Some(alone.claim), &held));
        assert!(may_take_up(None, &held));
    }

    #[test]
    fn the_checkpoint_passes_only_batches_durable_with_every_one_before_them() {
        let mut ledger = Ledger::default();
        let at = |n: u64| Some((format!("seq{n}"), 0));
        let (b0, b1, b2) = (ledger.push(at(0), 10, None), ledger.push(at(1), 5, None), ledger.push(at(2), 7, None));
        ledger.set_parts(b0, 2);
        ledger.set_parts(b1, 1);
        // Batch 1 and one part of batch 0 durable: nothing passes yet.
        assert!(ledger.part_done(b1).is_empty());
        assert!(ledger.part_done(b0).is_empty());
        // Batch 2 not yet decided: it stays whatever else is done.
        assert_eq!(ledger.part_done(b0), [(("seq0".to_owned(), 0), 10), (("seq1".to_owned(), 0), 5)]);
        assert_eq!(ledger.len(), 1);
        ledger.set_parts(b2, 1);
        assert_eq!(ledger.part_done(b2), [(("seq2".to_owned(), 0), 7)]);
        assert!(ledger.is_empty());
    }

    /// One record of order `order` at sequence `seq`: `order.placed`, or
    /// `order.status` to `status`.
    fn record(seq: u32, order: &str, status: Option<&str>) -> Fetched {
        let (kind, data) = match status {
            None => (
                "order.placed",
                format!(
                    r#"{{"order_id":"{order}","customer_id":"c","channel":"app","items":[{{"sku":"s","qty":1,"unit_price_cents":100}}],"total_cents":100}}"#
                ),
            ),
            Some(status) => ("order.status", format!(r#"{{"order_id":"{order}","status":"{status}"}}"#)),
        };
        let ts = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).expect("now");
        let body = format!(r#"{{"v":1,"id":"{order}-{seq}","type":"{kind}","ts":"{ts}","store":"s1","data":{data}}}"#);
        Fetched {
            records: vec![super::super::source::ShardRecord {
                sequence: Arc::from(format!("{}", 1000 + seq)),
                sub: 0,
                data: body.into_bytes(),
            }],
            aggregated: vec![false],
            end: false,
            room: None,
        }
    }

    /// A batch whose decide stage failed (a bug: no input can cause it)
    /// writes alone, decided again, before any later batch is taken up:
    /// here the later batch, already decided when the first failed, holds
    /// the next event of the same order, which the failed batch's events
    /// (not decided, so not known to be of that order) must come before.
    /// Taken up meanwhile, its cancellation would land first and the
    /// confirmation, arriving after a later event of its shard, would be
    /// rejected (and, its rejection refused here, retried for ever).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_the_decide_stage_failed_on_writes_before_any_later_batch_is_taken_up() {
        use crate::route::{FraudStateCache, Scoring, Tunables, Tuned, Work};
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(crate::route::testing::MemoryOrders::default());
        let fraud = pipeline::fraud::FraudConfig::default();
        let router = Router {
            dynamodb: crate::sinks::dynamodb::refusing_sink(),
            orders: Arc::clone(&store) as Arc<dyn crate::route::OrderStore>,
            rejected: crate::sinks::rejected::refusing_sink(),
            pool: crate::bridge::CpuPool::new(1, Arc::clone(&metrics)).expect("a pool"),
            // Scored in the write stage: two batches are decided at once.
            scoring: Scoring::Shared { cache: Arc::new(FraudStateCache::new(16, None)) },
            tunables: Arc::new(Tunables::new(Tuned {
                work: Work { fraud_work_factor: 1, menu_json_rounds: 1, max_future_secs: 300 },
                linger: Duration::from_millis(1),
                rules: Arc::new(pipeline::fraud::Rules::new(fraud).expect("rules")),
            })),
            sink_concurrency: 1,
            metrics: Arc::clone(&metrics),
        };
        assert!(!router.scores_in_decide());
        let config = KinesisSourceConfig::default();
        assert!(config.max_batches_in_flight >= 3, "the three batches are read at once");
        // The lease table refuses (nothing listens): checkpoints fail and
        // are retried later, which this test does not need.
        let client = aws_sdk_dynamodb::Client::new(&crate::sinks::refusing_sdk_config());
        let path = Arc::new(ShardContext {
            router: router.clone(),
            leases: Arc::new(Leases::new(client, config.clone(), "test-worker".into(), Arc::clone(&metrics))),
            // One record a batch.
            pipeline: PipelineConfig { max_batch_events: 1, ..PipelineConfig::default() },
            metrics: Arc::clone(&metrics),
            sync_now: Arc::new(Notify::new()),
            orders: OrderCaches::new(1 << 20, None),
            config,
        });
        // The second batch's decide (the pool's second run) fails.
        router.pool.panic_at_run(2);
        let (tx, rx) = mpsc::channel(8);
        for page in [record(1, "x", None), record(2, "x", Some("confirmed")), record(3, "x", Some("cancelled"))] {
            tx.send(page).await.expect("room for three");
        }
        let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
        let shard = tokio::spawn(process_shard(path, "shardId-000000000000".into(), 1, rx, stop.clone(), lost));
        let statuses = || -> Vec<&'static str> {
            let held = store.0.lock().unwrap_or_else(|e| e.into_inner());
            held.get("x").map(|s| s.history.iter().map(|h| h.status.name()).collect()).unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while statuses().len() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        shard.abort();
        drop(tx);
        assert_eq!(statuses(), ["placed", "confirmed", "cancelled"], "the order's events applied in shard order");
        // The decide stage failed once: the first decide of the second batch.
        let panics = metrics.encode();
        assert!(panics.lines().any(|l| l == r#"cafe_pipeline_stage_panics_total{stage="decide"} 1"#), "{panics}");
    }

    #[tokio::test]
    async fn a_batch_gives_its_read_budget_back_once_written_not_once_checkpointed() {
        let metrics = Arc::new(Metrics::new());
        let total = super::super::budget::ReadBudget::new(64 * 1024, Arc::clone(&metrics));
        let budget = total.for_shard();
        let mut ledger = Ledger::default();
        let at = |n: u64| Some((format!("seq{n}"), 0));
        let b0 = ledger.push(at(0), 1, Some(budget.take(16 * 1024).await));
        let b1 = ledger.push(at(1), 1, Some(budget.take(16 * 1024).await));
        let b2 = ledger.push(at(2), 1, Some(budget.take(16 * 1024).await));
        assert_eq!(total.available(), 16 * 1024);
        ledger.set_parts(b0, 1);
        ledger.set_parts(b1, 2);
        ledger.set_parts(b2, 0);
        // Batch 2 had nothing to write but waits behind 0 and 1: its room
        // comes back only with its place in the ledger.
        assert!(ledger.part_done_none().is_empty());
        assert_eq!(total.available(), 16 * 1024);
        // Batch 1 written while batch 0 still writes: its room comes back.
        assert!(ledger.part_done(b1).is_empty() && ledger.part_done(b1).is_empty());
        assert_eq!(total.available(), 32 * 1024);
        assert_eq!(ledger.part_done(b0).len(), 3);
        assert_eq!((total.available(), metrics.kinesis_read_budget_used.get()), (64 * 1024, 0));
        // A stop drops the ledger with whatever it holds.
        let b3 = ledger.push(at(3), 1, Some(budget.take(8 * 1024).await));
        ledger.set_parts(b3, 1);
        drop(ledger);
        assert_eq!(total.available(), 64 * 1024);
    }
}
