//! Applying order events: the order state machine against each order's
//! stored state, for events from any source.
//!
//! Owns: grouping a batch's order events by order (in arrival order),
//! reading the orders not cached, applying each order's events in order
//! (`pipeline::orders`), and the rounds of conditional writes: an order
//! another writer moved first is read again and its events applied again to
//! the fresh state. Must not: send rejections or acknowledge (the router
//! and the sources do, from the fates this returns).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use pipeline::decided::OrderChange;
use pipeline::event::{Body, Event, Rejection};
use pipeline::orders::{Applied, OrderState, ShardPos, apply_at, order_id};
use pipeline::window::Counters;
use time::OffsetDateTime;
use tracing::warn;

use crate::sinks::dynamodb::DynamoDbSink;
use crate::sinks::dynamodb::order_items::OrderWriteOutcome;

/// Rounds of conflicts (another writer moved the order) before the events
/// are given back to their source.
const MAX_ROUNDS: u32 = 8;

/// One order event's fate.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// Applied and durable; its event time, for latency.
    Applied(OffsetDateTime),
    /// Applied before: nothing changed.
    Repeat,
    /// Refused by the state machine (to the rejected queue).
    Rejected(Rejection),
    /// Not durable: give it back to its source.
    Failed,
}

/// Order states kept in memory (first in, first out) to avoid reads. A
/// shard keeps one while its lease is held (every event of its orders goes
/// through it, from the batches it has in flight at once: never two with
/// the same order); an SQS batch starts from an empty one, since any
/// instance may receive an order's next event. Shared by `&`: each call
/// locks it briefly, never across an await.
#[derive(Debug)]
pub struct OrderCache {
    inner: Mutex<Fifo>,
}

#[derive(Debug)]
struct Fifo {
    map: HashMap<String, Option<OrderState>>,
    fifo: VecDeque<String>,
    cap: usize,
}

impl OrderCache {
    /// An empty cache of at most `cap` orders.
    pub fn new(cap: usize) -> Self {
        OrderCache { inner: Mutex::new(Fifo { map: HashMap::new(), fifo: VecDeque::new(), cap: cap.max(1) }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fifo> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Option<Option<OrderState>> {
        self.lock().map.get(id).cloned()
    }

    fn put(&self, id: &str, state: Option<OrderState>) {
        let mut c = self.lock();
        if c.map.insert(id.to_owned(), state).is_none() {
            c.fifo.push_back(id.to_owned());
        }
        while c.map.len() > c.cap {
            match c.fifo.pop_front() {
                Some(k) => {
                    c.map.remove(&k);
                }
                None => break,
            }
        }
        if c.fifo.len() > 2 * c.cap {
            let Fifo { map, fifo, .. } = &mut *c;
            let mut seen = std::collections::HashSet::new();
            fifo.retain(|k| map.contains_key(k) && seen.insert(k.clone()));
        }
    }

    fn forget(&self, id: &str) {
        self.lock().map.remove(id);
    }

    /// Forgets every order (after a write that panicked half way).
    pub fn clear(&self) {
        let mut c = self.lock();
        c.map.clear();
        c.fifo.clear();
    }

    /// Orders cached.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.lock().map.is_empty()
    }
}

/// Applies `events` (order events, in arrival order, each read at the
/// shard position beside it, if any) and returns a fate for each, in order.
/// `state_reads` is told how many orders were read. Every event of an
/// order shares its fate when the order's write fails.
pub async fn apply_orders(
    sink: &DynamoDbSink,
    events: &[&Event],
    positions: &[Option<ShardPos>],
    cache: &OrderCache,
    applied_at: &str,
    concurrency: usize,
    state_reads: impl Fn(u64),
) -> Vec<Fate> {
    let mut fates: Vec<Fate> = vec![Fate::Failed; events.len()];
    // Order id -> its events' indices, in arrival order.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let Some(id) = order_id(e) else { continue };
        let g = *group_of.entry(id).or_insert_with(|| {
            groups.push((id.to_owned(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    // An order whose first event here is `order.placed` is new unless this
    // is a replay: it is written optimistically (the put is conditional on
    // the order not existing) and read back only if that condition fails.
    let placed_first = |g: usize| matches!(events[groups[g].1[0]].body, Body::OrderPlaced(_));
    let mut must_read: HashSet<usize> = HashSet::new();
    // Orders whose state this call read from the table. A rejection decided
    // against any other state (the cache, which another input or instance
    // may have moved past; an optimistic "new") is confirmed against the
    // table before it counts: a valid event must never be rejected against
    // a stale copy.
    let mut fresh: HashSet<usize> = HashSet::new();
    let mut pending: Vec<usize> = (0..groups.len()).collect();
    for _ in 0..MAX_ROUNDS {
        // Each pending order's state for this round, fixed before anything
        // is put into the (bounded) cache, so no eviction can change it.
        let mut states: HashMap<usize, Option<OrderState>> = HashMap::new();
        let mut to_read: Vec<usize> = Vec::new();
        for &g in &pending {
            // An order that must be read is not looked up: the lookup
            // clones its cached state.
            let must = must_read.contains(&g);
            match if must { None } else { cache.get(&groups[g].0) } {
                Some(cached) => {
                    states.insert(g, cached);
                }
                None if must || !placed_first(g) => to_read.push(g),
                None => {
                    states.insert(g, None);
                }
            }
        }
        if !to_read.is_empty() {
            state_reads(to_read.len() as u64);
            let ids: Vec<String> = to_read.iter().map(|&g| groups[g].0.clone()).collect();
            match sink.read_orders(&ids).await {
                Ok(mut found) => {
                    for (&g, id) in to_read.iter().zip(&ids) {
                        let state = found.remove(id);
                        cache.put(id, state.clone());
                        states.insert(g, state);
                        fresh.insert(g);
                        must_read.remove(&g);
                    }
                }
                // Counted and logged by the sink (SinkGaveUp).
                Err(_) => return fail(fates, &groups, &pending),
            }
        }
        let mut changes: Vec<OrderChange> = Vec::new();
        let mut change_groups: Vec<usize> = Vec::new();
        let mut confirm: Vec<usize> = Vec::new();
        for &g in &pending {
            let (id, idx) = &groups[g];
            let mut state = states.remove(&g).flatten();
            let before = state.as_ref().map(|s| s.history.len());
            let mut rows: BTreeMap<_, Counters> = BTreeMap::new();
            let mut placed_by = None;
            for &i in idx {
                let e = events[i];
                fates[i] = match apply_at(&mut state, e, positions.get(i).and_then(Option::as_ref)) {
                    Applied::Changed { window, counters, event_time } => {
                        rows.entry(window).or_default().add(&counters);
                        if let Body::OrderPlaced(p) = &e.body {
                            placed_by = Some((p.customer_id.clone(), format!("{:?}", p.channel).to_lowercase()));
                        }
                        Fate::Applied(event_time)
                    }
                    Applied::Repeat => Fate::Repeat,
                    Applied::Rejected(r) => Fate::Rejected(r),
                };
            }
            if !fresh.contains(&g) && idx.iter().any(|&i| matches!(fates[i], Fate::Rejected(_))) {
                cache.forget(id);
                must_read.insert(g);
                confirm.push(g);
                continue;
            }
            if let (Some(after), false) = (state, rows.is_empty()) {
                changes.push(OrderChange { order_id: id.clone(), before, after, placed_by, rows });
                change_groups.push(g);
            }
        }
        let mut again = confirm;
        let mut failed = Vec::new();
        if !changes.is_empty() {
            let outcomes = sink.write_orders(&changes, applied_at, concurrency).await;
            for ((c, g), o) in changes.into_iter().zip(change_groups).zip(outcomes) {
                match o {
                    OrderWriteOutcome::Written => cache.put(&c.order_id, Some(c.after)),
                    OrderWriteOutcome::Conflict => {
                        cache.forget(&c.order_id);
                        must_read.insert(g);
                        again.push(g);
                    }
                    OrderWriteOutcome::Failed => {
                        cache.forget(&c.order_id);
                        failed.push(g);
                    }
                }
            }
        }
        fates = fail(fates, &groups, &failed);
        if again.is_empty() {
            return fates;
        }
        pending = again;
    }
    warn!(
        orders = pending.len(),
        rounds = MAX_ROUNDS,
        "Orders kept moving under concurrent writers; their events go back to the source"
    );
    fail(fates, &groups, &pending)
}

/// Every event of the orders `which` is `Failed` (their rejections too:
/// they were decided against a state that was not written).
fn fail(mut fates: Vec<Fate>, groups: &[(String, Vec<usize>)], which: &[usize]) -> Vec<Fate> {
    for &g in which {
        for &i in &groups[g].1 {
            fates[i] = Fate::Failed;
        }
    }
    fates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_and_forgets_oldest_first() {
        let c = OrderCache::new(3);
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
        assert!(c.lock().fifo.len() <= 6 + 1);
    }
}
