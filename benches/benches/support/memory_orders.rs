//! An in-memory order store (`daemon::route::OrderStore`) for the orders
//! path's shard stage: the stage's own work without the SDK's. It keeps each
//! order's version (its history length), as the table's condition does:
//! a write conditional on another version is a conflict. It serves no read
//! of an order it holds (the bench's run reads none: each order's first
//! event places it and the shard's cache keeps it after that); such a read
//! is counted in `refused` and fails, and the bench checks that none was.

use std::collections::HashMap;
use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use daemon::aws::{AwsError, ErrorClass};
use daemon::route::OrderStore;
use daemon::sinks::dynamodb::order_items::OrderWriteOutcome;
use pipeline::decided::OrderChange;
use pipeline::orders::OrderState;

type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Default)]
pub struct MemoryOrders {
    /// Each order's version: its history length.
    versions: Mutex<HashMap<String, usize>>,
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
        for count in [&self.order_puts, &self.history_entries, &self.rows, &self.conflicts, &self.refused] {
            count.store(0, Ordering::Relaxed);
        }
    }
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
