//! An in-memory order store (`daemon::route::OrderStore`) for the orders
//! path's shard stage: the stage's own work without the SDK's. It keeps each
//! order's version (its history length), as the table's condition does:
//! a write conditional on another version is a conflict. It serves no read
//! of an order it holds (the bench's run reads none: each order's first
//! event places it and the shard's cache keeps it after that); such a read
//! is counted in `refused` and fails, and the bench checks that none was.
//! Given the stage's metrics, it notes for each write the first shard
//! position among the history entries it adds and how many batches had
//! entered the decide stage (handed to the CPU pool) when it was made: the
//! bench checks from these that each batch's writes came after the next
//! batch was handed to the pool.

use std::collections::HashMap;
use std::future::{Future, poll_fn, ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use daemon::aws::{AwsError, ErrorClass};
use daemon::metrics::Metrics;
use daemon::route::{OrderHasher, OrderStore};
use daemon::sinks::dynamodb::order_items::OrderWriteOutcome;
use pipeline::decided::OrderChange;
use pipeline::orders::OrderState;

type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Default)]
pub struct MemoryOrders {
    /// Each order's version: its history length. (Hashed as the daemon's
    /// maps of order ids are: this end's work is not the stage's.)
    versions: Mutex<HashMap<String, usize, OrderHasher>>,
    /// The stage's metrics, while the writes are watched (not in timed runs).
    pub watching: Mutex<Option<Arc<Metrics>>>,
    /// While set, each write is held until the batch after its own has
    /// left the decide stage, or no batch is in it ([`Hold`]).
    pub holding: Mutex<Option<Hold>>,
    /// Calls of `write_orders`.
    pub writes: AtomicU64,
    /// The writes made while watching, in order.
    pub watched: Mutex<Vec<Watched>>,
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
        for count in counts.into_iter().chain([&self.writes]) {
            count.store(0, Ordering::Relaxed);
        }
        self.watched.lock().expect("the store's lock").clear();
    }
}

/// How writes are held: a write made while the next batch was being
/// decided ends in the wake-up of the shard's task that takes that decide
/// up, as a response that came in meanwhile would, whatever batches after
/// it are in the decide stage too, and however late the write was first
/// polled. A write's batch is its first new history entry's page.
#[derive(Debug, Clone)]
pub struct Hold {
    /// The stage's metrics.
    pub metrics: Arc<Metrics>,
    /// [`taken`] before the run.
    pub taken_before: i64,
    /// The sequence number before the run's first record, and the records
    /// of a page (one batch each).
    pub sequence_before: u128,
    pub per_page: u128,
}

/// One write made while watching.
#[derive(Debug, Clone, Copy)]
pub struct Watched {
    /// The smallest sequence number among the history entries it adds
    /// (`None`: none has a shard position).
    pub first: Option<u128>,
    /// Batches that had entered the decide stage by then ([`staged`]).
    pub staged: i64,
}

/// Batches that have entered the decide stage, since the metrics began:
/// the count of `cafe_pipeline_batch_events{stage="decide"}`, observed when
/// the shard's task first polls a batch's decide, which hands it to the
/// pool.
pub fn staged(metrics: &Metrics) -> i64 {
    count(metrics, "cafe_pipeline_batch_events")
}

/// Batches in the decide stage: [`staged`] less those the shard's task has
/// taken up (`cafe_pipeline_stage_duration_seconds{stage="decide"}`,
/// observed when the decide's future ends).
pub fn deciding(metrics: &Metrics) -> i64 {
    staged(metrics) - taken(metrics)
}

/// Batches whose decide future has ended: the count of
/// `cafe_pipeline_stage_duration_seconds{stage="decide"}`. (The shard takes
/// each up as it ends, in shard order: with one pool thread, the bench's,
/// the batches end in the order they were handed over.)
pub fn taken(metrics: &Metrics) -> i64 {
    count(metrics, "cafe_pipeline_stage_duration_seconds")
}

/// The count of a histogram `family`'s decide stage.
fn count(metrics: &Metrics, family: &str) -> i64 {
    let line = format!("{family}_count{{stage=\"decide\"}} ");
    metrics.encode().lines().find_map(|l| l.strip_prefix(line.as_str())?.trim().parse().ok()).unwrap_or(0)
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
        let first = || {
            writes
                .iter()
                .flat_map(|w| w.after.history.get(w.before.unwrap_or(0)..).unwrap_or_default())
                .filter_map(|h| h.pos.as_ref()?.sequence.parse::<u128>().ok())
                .min()
        };
        if let Some(metrics) = self.watching.lock().expect("the store's lock").as_deref() {
            self.watched.lock().expect("the store's lock").push(Watched { first: first(), staged: staged(metrics) });
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
        match self.holding.lock().expect("the store's lock").clone() {
            None => Box::pin(ready(outcomes)),
            Some(hold) => {
                let mut outcomes = Some(outcomes);
                // Its batch's page (0 for the first), and the count of
                // ended decides once the next batch's has ended.
                let page = first().map_or(0, |s| ((s - hold.sequence_before - 1) / hold.per_page) as i64);
                let next_ended = hold.taken_before + page + 2;
                Box::pin(poll_fn(move |cx| {
                    if taken(&hold.metrics) < next_ended && deciding(&hold.metrics) > 0 {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Poll::Ready(outcomes.take().unwrap_or_default())
                }))
            }
        }
    }
}
