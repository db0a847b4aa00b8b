//! The read budget: record bytes read from the stream and not yet durable,
//! across every shard this instance reads, bounded by
//! `max_bytes_in_flight`. A shard reader takes room for a GetRecords result
//! before handing it on, and the room comes back when the batch holding
//! those records is durable (or dropped on a stop or a lost lease). So
//! memory under any backlog is bounded by the budget, not by how many
//! shards an instance leases times how far each may read ahead.
//!
//! A shard that holds no room gets room for one result at once, beyond the
//! budget if need be: so every shard always has a result in flight, a
//! shard whose writes are stuck (holding its room) cannot stall the
//! others, and a result larger than the whole budget goes. The bound is
//! therefore the budget plus one result per shard.
//!
//! Owns: the semaphore, each shard's room held, the gauge of bytes in use.
//! Must not: wait without yielding to a stop (the reader selects on it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::internal_events::{InternalEvent, ReadBudgetReturned, ReadBudgetTaken};
use crate::metrics::Metrics;

/// Room is counted in KiB, so the largest budget fits a semaphore.
const UNIT: u64 = 1024;

/// How often a reader waiting for room checks whether its own shard has
/// given all of its room back.
const RECHECK: Duration = Duration::from_millis(50);

/// The budget of one instance, shared by its shard readers.
#[derive(Debug, Clone)]
pub struct ReadBudget {
    sem: Arc<Semaphore>,
    units: u32,
    metrics: Arc<Metrics>,
}

/// One shard reader's use of the budget: what its shard holds now.
#[derive(Debug, Clone)]
pub struct ShardBudget {
    budget: ReadBudget,
    held: Arc<AtomicU64>,
}

/// Room for some records' bytes; given back when dropped.
#[derive(Debug)]
pub struct Room {
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
    /// The shards' counters this room counts in, with its bytes in each.
    held: Vec<(Arc<AtomicU64>, u64)>,
    metrics: Arc<Metrics>,
}

impl ReadBudget {
    /// A budget of `bytes` (at least one KiB).
    pub fn new(bytes: u64, metrics: Arc<Metrics>) -> Self {
        let units = (bytes / UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        ReadBudget { sem: Arc::new(Semaphore::new(units as usize)), units, metrics }
    }

    /// The budget as one shard reader uses it.
    pub fn for_shard(&self) -> ShardBudget {
        ShardBudget { budget: self.clone(), held: Arc::new(AtomicU64::new(0)) }
    }

    /// Room left, in bytes (for tests and logs).
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64 * UNIT
    }
}

impl ShardBudget {
    /// Room for `bytes`: from the budget when it has it; at once, beyond
    /// the budget, when this shard holds none (so every shard always has
    /// one result in flight: a shard whose writes are stuck cannot stall
    /// the others, and a result larger than the whole budget goes); else
    /// it waits for one or the other.
    pub async fn take(&self, bytes: u64) -> Room {
        let b = &self.budget;
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(b.units)) as u32;
        let mut waited = false;
        let permit = loop {
            if let Ok(p) = Arc::clone(&b.sem).try_acquire_many_owned(units) {
                break Some(p);
            }
            if self.held.load(Ordering::SeqCst) == 0 {
                break None;
            }
            waited = true;
            tokio::select! {
                // The semaphore is never closed.
                p = Arc::clone(&b.sem).acquire_many_owned(units) => break Some(p.expect("the read budget is never closed")),
                () = tokio::time::sleep(RECHECK) => {}
            }
        };
        self.held.fetch_add(bytes, Ordering::SeqCst);
        ReadBudgetTaken { bytes, waited }.emit(&b.metrics);
        Room { permit, bytes, held: vec![(Arc::clone(&self.held), bytes)], metrics: Arc::clone(&b.metrics) }
    }
}

impl Room {
    /// Takes `other`'s room into this one (batches coalesced from several results).
    pub fn merge(&mut self, mut other: Room) {
        match (&mut self.permit, other.permit.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        self.bytes += std::mem::take(&mut other.bytes);
        self.held.append(&mut other.held);
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        for (held, bytes) in self.held.drain(..) {
            held.fetch_sub(bytes, Ordering::SeqCst);
        }
        ReadBudgetReturned { bytes: self.bytes }.emit(&self.metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes: u64) -> (ReadBudget, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (ReadBudget::new(bytes, Arc::clone(&metrics)), metrics)
    }

    #[tokio::test]
    async fn a_reader_waits_while_the_budget_is_spent_and_goes_on_when_room_comes_back() {
        let (b, metrics) = budget(64 * 1024);
        let (shard, other) = (b.for_shard(), b.for_shard());
        let first = shard.take(16 * 1024).await;
        let others = other.take(32 * 1024).await;
        assert_eq!(metrics.kinesis_read_budget_used.get(), 48 * 1024);
        let waiting = tokio::spawn({
            let shard = shard.clone();
            async move { shard.take(32 * 1024).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "32 KiB more than the 16 KiB left must wait while the shard holds room");
        drop(others);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("room came back").expect("task");
        assert_eq!(metrics.kinesis_read_budget_used.get(), 48 * 1024);
        assert_eq!(metrics.kinesis_read_budget_waits.get(), 1);
        drop((first, second));
        assert_eq!((metrics.kinesis_read_budget_used.get(), b.available()), (0, 64 * 1024));
    }

    #[tokio::test]
    async fn a_stuck_shard_holding_the_whole_budget_does_not_stall_the_others() {
        let (b, metrics) = budget(64 * 1024);
        let (stuck, other) = (b.for_shard(), b.for_shard());
        let _held = stuck.take(64 * 1024).await;
        assert_eq!(b.available(), 0);
        // A shard holding nothing gets one result's room at once, beyond the budget.
        let first = tokio::time::timeout(Duration::from_secs(1), other.take(8 * 1024)).await.expect("not stalled");
        // A second result waits while the first is in flight...
        let waiting = tokio::spawn({
            let other = other.clone();
            async move { other.take(8 * 1024).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "a shard that holds room waits for more");
        // ...and goes once the first is written, though the stuck shard still holds everything.
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("not stalled").expect("task");
        assert_eq!(b.available(), 0);
        assert_eq!(metrics.kinesis_read_budget_used.get(), 72 * 1024);
        drop(second);
        assert_eq!(metrics.kinesis_read_budget_used.get(), 64 * 1024);
    }

    #[tokio::test]
    async fn a_result_larger_than_the_budget_goes_alone_not_never() {
        let (b, _) = budget(64 * 1024);
        let shard = b.for_shard();
        let big = tokio::time::timeout(Duration::from_secs(5), shard.take(10 * 1024 * 1024)).await.expect("not stuck");
        assert_eq!(b.available(), 0, "it takes the whole budget");
        drop(big);
        assert_eq!(b.available(), 64 * 1024);
    }

    #[tokio::test]
    async fn merged_room_comes_back_whole() {
        let (b, metrics) = budget(64 * 1024);
        let shard = b.for_shard();
        let mut room = shard.take(10 * 1024).await;
        room.merge(shard.take(20 * 1024).await);
        assert_eq!((b.available(), metrics.kinesis_read_budget_used.get()), (34 * 1024, 30 * 1024));
        assert_eq!(shard.held.load(Ordering::SeqCst), 30 * 1024);
        drop(room);
        assert_eq!((b.available(), metrics.kinesis_read_budget_used.get()), (64 * 1024, 0));
        assert_eq!(shard.held.load(Ordering::SeqCst), 0);
    }
}
