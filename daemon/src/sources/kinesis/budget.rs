//! The read budget: record bytes read from the stream and not yet durable,
//! across every shard this instance reads, bounded by
//! `max_bytes_in_flight`. A shard reader takes room for a GetRecords result
//! before handing it on, and the room comes back when the batch holding
//! those records is durable (or dropped on a stop or a lost lease). So
//! memory under any backlog is bounded by the budget, not by how many
//! shards an instance leases times how far each may read ahead.
//!
//! Owns: the semaphore and the gauge of bytes in use. Must not: wait
//! without yielding to a stop (the reader selects on it).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::internal_events::{InternalEvent, ReadBudgetReturned, ReadBudgetTaken};
use crate::metrics::Metrics;

/// Room is counted in KiB, so the largest budget fits a semaphore.
const UNIT: u64 = 1024;

/// The budget of one instance, shared by its shard readers.
#[derive(Debug, Clone)]
pub struct ReadBudget {
    sem: Arc<Semaphore>,
    units: u32,
    metrics: Arc<Metrics>,
}

/// Room for some records' bytes; given back when dropped.
#[derive(Debug)]
pub struct Room {
    permit: Option<OwnedSemaphorePermit>,
    bytes: u64,
    metrics: Arc<Metrics>,
}

impl ReadBudget {
    /// A budget of `bytes` (at least one KiB).
    pub fn new(bytes: u64, metrics: Arc<Metrics>) -> Self {
        let units = (bytes / UNIT).clamp(1, u64::from(u32::MAX)) as u32;
        ReadBudget { sem: Arc::new(Semaphore::new(units as usize)), units, metrics }
    }

    /// Waits for room for `bytes`. A result larger than the whole budget
    /// takes all of it, so it goes alone rather than never.
    pub async fn take(&self, bytes: u64) -> Room {
        let units = bytes.div_ceil(UNIT).clamp(1, u64::from(self.units)) as u32;
        let (permit, waited) = match Arc::clone(&self.sem).try_acquire_many_owned(units) {
            Ok(p) => (p, false),
            // The semaphore is never closed.
            Err(_) => (Arc::clone(&self.sem).acquire_many_owned(units).await.expect("the read budget is never closed"), true),
        };
        ReadBudgetTaken { bytes, waited }.emit(&self.metrics);
        Room { permit: Some(permit), bytes, metrics: Arc::clone(&self.metrics) }
    }

    /// Room left, in bytes (for tests and logs).
    pub fn available(&self) -> u64 {
        self.sem.available_permits() as u64 * UNIT
    }
}

impl Room {
    /// No room: for what holds no records (a shard's end).
    pub fn none(metrics: &Arc<Metrics>) -> Self {
        Room { permit: None, bytes: 0, metrics: Arc::clone(metrics) }
    }

    /// Takes `other`'s room into this one (batches coalesced from several results).
    pub fn merge(&mut self, mut other: Room) {
        match (&mut self.permit, other.permit.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        ReadBudgetReturned { bytes: self.bytes }.emit(&self.metrics);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(bytes: u64) -> (ReadBudget, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        (ReadBudget::new(bytes, Arc::clone(&metrics)), metrics)
    }

    #[tokio::test]
    async fn a_reader_waits_while_the_budget_is_spent_and_goes_on_when_room_comes_back() {
        let (b, metrics) = budget(64 * 1024);
        let first = b.take(48 * 1024).await;
        assert_eq!(metrics.kinesis_read_budget_used.get(), 48 * 1024);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.take(32 * 1024).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "32 KiB more than the 16 KiB left must wait");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("room came back").expect("task");
        assert_eq!(metrics.kinesis_read_budget_used.get(), 32 * 1024);
        assert_eq!(metrics.kinesis_read_budget_waits.get(), 1);
        drop(second);
        assert_eq!((metrics.kinesis_read_budget_used.get(), b.available()), (0, 64 * 1024));
    }

    #[tokio::test]
    async fn a_result_larger_than_the_budget_goes_alone_not_never() {
        let (b, _) = budget(64 * 1024);
        let big = tokio::time::timeout(Duration::from_secs(5), b.take(10 * 1024 * 1024)).await.expect("not stuck");
        assert_eq!(b.available(), 0, "it takes the whole budget");
        drop(big);
        assert_eq!(b.available(), 64 * 1024);
    }

    #[tokio::test]
    async fn merged_room_comes_back_whole() {
        let (b, metrics) = budget(64 * 1024);
        let mut room = b.take(10 * 1024).await;
        room.merge(b.take(20 * 1024).await);
        room.merge(Room::none(&metrics));
        assert_eq!((b.available(), metrics.kinesis_read_budget_used.get()), (34 * 1024, 30 * 1024));
        drop(room);
        assert_eq!((b.available(), metrics.kinesis_read_budget_used.get()), (64 * 1024, 0));
    }
}
