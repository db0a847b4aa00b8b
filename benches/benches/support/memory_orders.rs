//! An in-memory order store (`daemon::route::OrderStore`) for the orders
//! path's shard stage: the stage's own work without the SDK's. It keeps each
//! order's version (its history length), as the table's condition does:
//! a write conditional on another version is a conflict. It serves no read
//! of an order it holds (the bench's run reads none: each order's first
//! event places it and the shard's cache keeps it after that); such a read
//! is counted in `refused` and fails, and the bench checks that none was.
//! Given the stage's metrics, it counts the writes made while a batch's
//! decide stage had begun and not yet been taken up (more batches entered
//! `decide` than left it, both counted on the shard's task: a decide the
//! pool finished but the task has not taken up still counts): the next
//! batch handed to the CPU pool before this one's write ran, which the
//! bench checks. A decide dropped half way (a stop) would count for good;
//! the bench's run ends with the shard read to its end, which drops none.

use std::collections::HashMap;
use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use daemon::aws::{AwsError, ErrorClass};
use daemon::metrics::Metrics;
use daemon::route::OrderStore;
use daemon::sinks::dynamodb::order_items::OrderWriteOutcome;
use pipeline::decided::OrderChange;
use pipeline::orders::OrderState;

type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Default)]
pub struct MemoryOrders {
    /// Each order's version: its history length.
    versions: Mutex<HashMap<String, usize>>,
    /// The stage's metrics, while the writes are watched (not in timed runs).
    pub watching: Mutex<Option<Arc<Metrics>>>,
    /// Calls of `write_orders`, and those made while a batch was deciding.
    pub writes: AtomicU64,
    pub writes_beside_a_decide: AtomicU64,
    /// Orders put new (written with no version before).
    pub order_puts: AtomicU64,
    /// History entries written, over every order.
    pub history_entries: AtomicU64,
    /// Aggregate rows written (one per order and window).
    pub rows: AtomicU64,
    /// Writes refused because the order had moved.
    pub conflicts: AtomicU64,
    /// Reads of orders this store holds (it keeps no states to answer them).
    pub refused: AtomicU64,
}

impl MemoryOrders {
    /// Forgets every order and resets the counts: a fresh table.
    pub fn clear(&self) {
        self.versions.lock().expect("the store's lock").clear();
        let counts = [&self.order_puts, &self.history_entries, &self.rows, &self.conflicts, &self.refused];
        for count in counts.into_iter().chain([&self.writes, &self.writes_beside_a_decide]) {
            count.store(0, Ordering::Relaxed);
        }
    }
}

/// Batches that entered the decide stage and have not left it: the count
/// of `cafe_pipeline_batch_events{stage="decide"}` (observed on entry) less
/// that of `cafe_pipeline_stage_duration_seconds{stage="decide"}` (on exit).
fn deciding(metrics: &Metrics) -> i64 {
    let text = metrics.encode();
    let count = |family: &str| -> i64 {
        let line = format!("{family}_count{{stage=\"decide\"}} ");
        text.lines().find_map(|l| l.strip_prefix(line.as_str())?.trim().parse().ok()).unwrap_or(0)
    };
    count("cafe_pipeline_batch_events") - count("cafe_pipeline_stage_duration_seconds")
}

impl OrderStore for MemoryOrders {
    fn read_orders<'a>(&'a self, ids: &'a [String]) -> Answer<'a, Result<HashMap<String, OrderState>, AwsError>> {
        let versions = self.versions.lock().expect("the store's lock");
        if ids.iter().any(|id| versions.contains_key(id)) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let detail = "the bench's order store answers reads of absent orders only".to_owned();
            return Box::pin(ready(Err(AwsError { what: "reading orders".into(), class: ErrorClass::Fatal, detail })));
        }
        Box::pin(ready(Ok(HashMap::new())))
    }

    fn write_orders<'a>(
        &'a self,
        writes: &'a [OrderChange],
        _applied_at: &'a str,
        _concurrency: usize,
    ) -> Answer<'a, Vec<OrderWriteOutcome>> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        if self.watching.lock().expect("the store's lock").as_deref().is_some_and(|m| deciding(m) > 0) {
            self.writes_beside_a_decide.fetch_add(1, Ordering::Relaxed);
        }
        let mut versions = self.versions.lock().expect("the store's lock");
        let outcomes = writes
            .iter()
            .map(|w| {
                if versions.get(&w.order_id).copied() != w.before {
                    self.conflicts.fetch_add(1, Ordering::Relaxed);
                    return OrderWriteOutcome::Conflict;
                }
                let after = w.after.history.len();
                if w.before.is_none() {
                    self.order_puts.fetch_add(1, Ordering::Relaxed);
                }
                self.history_entries.fetch_add((after - w.before.unwrap_or(0)) as u64, Ordering::Relaxed);
                self.rows.fetch_add(w.rows.len() as u64, Ordering::Relaxed);
                match versions.get_mut(&w.order_id) {
                    Some(version) => *version = after,
                    None => {
                        versions.insert(w.order_id.clone(), after);
                    }
                }
                OrderWriteOutcome::Written
            })
            .collect();
        Box::pin(ready(outcomes))
    }
}
