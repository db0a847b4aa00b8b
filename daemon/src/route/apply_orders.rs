//! Applying order events: the order state machine against each order's
//! stored state, for events from any source.
//!
//! Owns: grouping a batch's order events by order (in arrival order),
//! reading the orders not cached, applying each order's events in order
//! (`pipeline::orders`), and the rounds of conditional writes: an order
//! another writer moved first is read again and its events applied again to
//! the fresh state. Must not: send rejections or acknowledge (the router
//! and the sources do, from the fates this returns).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use hashbrown::HashTable;
use pipeline::decided::OrderChange;
use pipeline::event::{Body, Event, Rejection};
use pipeline::orders::{Applied, HistoryEntry, OrderState, ShardAt, ShardName, ShardPos, apply_at, order_id};
use pipeline::window::{Counters, WindowId};
use prometheus_client::metrics::gauge::Gauge;
use smallvec::SmallVec;
use time::OffsetDateTime;
use tracing::warn;

use crate::aws::AwsError;
use crate::sinks::dynamodb::order_items::OrderWriteOutcome;

/// Where orders are read from and written to: the DynamoDB sink in the
/// daemon (`sinks/dynamodb/order_items.rs`), an in-memory end in benches
/// and unit tests. The stage speaks `pipeline`'s types to it; the store
/// turns them into its own writes.
pub trait OrderStore: std::fmt::Debug + Send + Sync {
    /// The stored state of each of `ids` (strongly consistent); absent ids
    /// are absent from the result. Fails only when the reads keep failing.
    fn read_orders<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<HashMap<String, OrderState>, AwsError>>;

    /// Writes `writes` (distinct orders), each conditional on its `before`,
    /// with their aggregate rows, up to `concurrency` transactions at once;
    /// an outcome per write, in order.
    fn write_orders<'a>(
        &'a self,
        writes: &'a [OrderChange],
        applied_at: &'a str,
        concurrency: usize,
    ) -> BoxFuture<'a, Vec<OrderWriteOutcome>>;
}

/// The hasher of maps keyed by order id: seeded at random per map, and
/// far cheaper than SipHash on ids of a few dozen bytes.
pub type OrderHasher = foldhash::quality::RandomState;

/// The indices of one order's events in a batch, in arrival order.
type Group = SmallVec<[usize; 2]>;

/// A pending order's state in a round of `apply_orders`: the state,
/// whether it is known (cached or read) or assumed (a new order's `None`),
/// and the cache's copy of the order's id when the state was taken from
/// the cache (for the write and the cache again, without a copy of it).
type RoundState = (Option<OrderState>, bool, Option<String>);

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

/// Order states kept in memory to avoid reads, the oldest first out but
/// for those used since the queue last passed them (a second chance, as a
/// clock cache gives: an order still moving stays). An order completed or
/// cancelled leaves it when put (written so): no event moves it again,
/// so only orders in progress (and orders found not to exist) are kept.
/// A shard keeps one
/// while its lease is held (every event of its orders goes through it,
/// from the batches it has in flight at once: never two with the same
/// order); an SQS batch starts from an empty one, since any instance may
/// receive an order's next event. Shared by `&`: each call locks it
/// briefly, never across an await.
///
/// A cache holds at most `cap` orders, and lives in a pool
/// ([`OrderCaches`]) whose caches together hold at most the pool's bytes:
/// so the memory for cached orders does not grow with the shards an
/// instance leases. Dropping a cache (its lease lost or released) frees
/// its orders. The orders its puts make leave the pool (its own, replaced,
/// finished or pushed out by its bound, and other caches' orders pushed
/// out by the pool's: [`Pool::put`]) are not freed where they leave, on
/// the runtime worker whose batch put them, but set aside for the caller
/// to free where it chooses ([`OrderCache::take_gone`]; the router frees
/// them on the CPU pool at the end of each write, docs/performance.md);
/// what is set aside and not taken goes with the cache. Set aside, they
/// are outside the pool's byte bound until then: about as many bytes as
/// the puts since brought in, or twice that (a pushed-out order and the
/// state that replaced it).
///
/// Nothing here is trusted for correctness: a write is conditional on the
/// version it was decided against, and a rejection decided against a
/// cached state is confirmed against the table (`apply_orders`).
#[derive(Debug)]
pub struct OrderCache {
    pool: Arc<OrderCaches>,
    owner: u64,
    /// The states this cache's puts made leave the pool since
    /// [`OrderCache::take_gone`] was last called (see above for their
    /// bound).
    gone: Mutex<Vec<OrderState>>,
}

/// The pool the order caches of one stream's shards share: at most
/// `cap_bytes` of cached orders (as [`footprint`] estimates them) across
/// all of them; past it the oldest entry of any cache goes first (but for
/// one used since the queue last passed it).
#[derive(Debug)]
pub struct OrderCaches {
    inner: Mutex<Pool>,
    /// Set to the bytes held after every change (`cafe_orders_cache_bytes`).
    gauge: Option<Gauge>,
}

#[derive(Debug)]
struct Pool {
    owners: HashMap<u64, Owned, OrderHasher>,
    /// Every entry, oldest first, as (owner, the order's hash, put
    /// number): a put number names one entry of the whole pool for as long
    /// as it lives, so the queues hold no copy of an order's id (nor a
    /// count on a shared one). An element whose entry is gone is stale and
    /// skipped; the queue is compacted when stale elements dominate.
    fifo: VecDeque<(u64, u64, u64)>,
    bytes: usize,
    /// Entries across every cache (taken ones included).
    entries: usize,
    cap_bytes: usize,
    next_owner: u64,
    next_put: u64,
    /// Hashes order ids for every cache of the pool.
    hasher: OrderHasher,
}

#[derive(Debug)]
struct Owned {
    /// Entries by the hash of their order id.
    map: HashTable<Entry>,
    /// This cache's entries, oldest first, as (hash, put number).
    fifo: VecDeque<(u64, u64)>,
    cap: usize,
    /// Entries taken out and not put back.
    taken: usize,
}

#[derive(Debug)]
struct Entry {
    /// The order's id; empty while taken (the taker holds it).
    id: Box<str>,
    hash: u64,
    state: Option<OrderState>,
    /// As [`footprint`] estimates it; none while taken (the taker holds
    /// the id and the state, as before the entry was made).
    bytes: usize,
    /// The number of the put that made it.
    put: u64,
    /// Its id and state are with a batch, which puts them back by its
    /// [`Ticket`], or forgets them.
    taken: bool,
    /// Taken or put again since each queue last passed it ([`IN_CACHE`],
    /// [`IN_POOL`]: a mark for each): that queue's next pass moves it to
    /// the back instead of evicting it, once.
    used: u8,
}

/// [`Entry::used`]'s mark for its cache's queue.
const IN_CACHE: u8 = 1;
/// [`Entry::used`]'s mark for the pool's queue.
const IN_POOL: u8 = 2;

/// Names the entry a taken order came from, for its put back: found by
/// its hash and put number, with no hashing or comparison of the id (and
/// no copy of it: the id goes out with the state and comes back with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket {
    hash: u64,
    put: u64,
}

/// An order taken out of its cache ([`OrderCache::take_all`]).
#[derive(Debug, PartialEq)]
struct Taken {
    id: String,
    state: Option<OrderState>,
    ticket: Ticket,
}

/// An order for [`OrderCache::put_all`]: its id, its state, and the ticket
/// of the entry it was taken from, if it was.
type PutBack<'a> = (Cow<'a, str>, Option<OrderState>, Option<Ticket>);

/// What a batch of puts leaves behind: the other caches whose entries it
/// evicted (to tidy), and the states that left the pool (set aside once
/// the pool's lock is let go, for [`OrderCache::take_gone`]: an order's
/// history is a few dozen frees).
#[derive(Default)]
struct Left {
    shrunk: Vec<u64>,
    gone: Vec<Option<OrderState>>,
}

/// Orders taken or put under one hold of the pool's lock, at most: the
/// other shards' tasks wait for it, on a runtime worker, no longer than
/// this many (a batch may hold up to `max_batch_events`, 10,000).
const PER_LOCK: usize = 256;

/// Memory one cached order takes, estimated: its strings and history
/// entries with an allocator's overhead each, the map's slot, the key's
/// allocation and the two queues' elements (up to twice the live ones
/// each).
pub fn footprint(id: &str, state: Option<&OrderState>) -> usize {
    const ALLOC: usize = 16;
    let slot = size_of::<Entry>() * 8 / 7 + 1;
    let key = id.len() + ALLOC;
    let queues = 2 * (size_of::<(u64, u64, u64)>() + size_of::<(u64, u64)>());
    let mut n = slot + key + queues;
    if let Some(s) = state {
        n += ALLOC + s.store.len();
        n += ALLOC + s.history.capacity() * size_of::<HistoryEntry>();
        // A position's shard name (the stream's and the shard's, one
        // allocation), unless interned (a reader's, kept for the process's
        // life whatever the cache holds), is shared with the other
        // positions of one read from the table, which may all be gone (the
        // other orders pushed out): it counts for the order, once for a
        // run of entries that share it.
        let mut names: Option<&ShardPos> = None;
        for h in &s.history {
            // Its time and event id, two `Arc`s (two counts before each
            // text), shared with the event until its batch is freed: the
            // order keeps them after.
            n += 2 * (ALLOC + 2 * size_of::<usize>()) + h.ts.len() + h.event_id.len();
            if let Some(p) = &h.pos {
                // Its own allocation, an `Arc`'s: two counts before the text.
                n += ALLOC + 2 * size_of::<usize>() + p.sequence.len();
                if matches!(p.at, ShardAt::Shared(_)) && !names.is_some_and(|q| q.at.same(&p.at)) {
                    n += ALLOC + 2 * size_of::<usize>() + size_of::<ShardName>() + 2 * ALLOC + p.stream().len() + p.shard().len();
                    names = Some(p);
                }
            }
        }
    }
    n
}

impl OrderCaches {
    /// An empty pool of at most `cap_bytes`, its bytes shown on `gauge`.
    pub fn new(cap_bytes: usize, gauge: Option<Gauge>) -> Arc<Self> {
        Arc::new(OrderCaches {
            gauge,
            inner: Mutex::new(Pool {
                owners: HashMap::default(),
                fifo: VecDeque::new(),
                bytes: 0,
                entries: 0,
                cap_bytes,
                next_owner: 0,
                next_put: 0,
                hasher: OrderHasher::default(),
            }),
        })
    }

    /// A new, empty cache of at most `cap` orders in this pool.
    pub fn cache(self: &Arc<Self>, cap: usize) -> OrderCache {
        let mut p = self.lock();
        let owner = p.next_owner;
        p.next_owner += 1;
        p.owners.insert(owner, Owned { map: HashTable::new(), fifo: VecDeque::new(), cap: cap.max(1), taken: 0 });
        OrderCache { pool: Arc::clone(self), owner, gone: Mutex::default() }
    }

    /// Bytes of cached orders, as estimated, across every cache of the pool.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn show(&self, p: &Pool) {
        if let Some(g) = &self.gauge {
            g.set(i64::try_from(p.bytes).unwrap_or(i64::MAX));
        }
    }
}

impl Pool {
    /// Takes `bytes` of `entries` off the totals.
    fn sub(&mut self, bytes: usize, entries: usize) {
        debug_assert!(self.bytes >= bytes && self.entries >= entries, "order cache accounting");
        self.bytes = self.bytes.saturating_sub(bytes);
        self.entries = self.entries.saturating_sub(entries);
    }

    fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Takes `owner`'s entry for `id` out, if cached and not taken.
    fn take(&mut self, owner: u64, id: &str) -> Option<Taken> {
        let hash = self.hash(id);
        let o = self.owners.get_mut(&owner)?;
        let e = o.map.find_mut(hash, |e| !e.taken && *e.id == *id)?;
        (e.taken, e.used) = (true, IN_CACHE | IN_POOL);
        let bytes = std::mem::take(&mut e.bytes);
        let taken =
            Taken { id: std::mem::take(&mut e.id).into_string(), state: e.state.take(), ticket: Ticket { hash, put: e.put } };
        o.taken += 1;
        self.sub(bytes, 0);
        Some(taken)
    }

    /// Removes `owner`'s entry that `ticket` names if it is still taken
    /// (its order was not put back); the entry, for the caller to drop.
    fn remove_taken(&mut self, owner: u64, ticket: Ticket) -> Option<Entry> {
        let o = self.owners.get_mut(&owner)?;
        let (e, _) = o.map.find_entry(ticket.hash, |e| e.put == ticket.put && e.taken).ok()?.remove();
        o.taken -= 1;
        self.sub(e.bytes, 1);
        Some(e)
    }

    /// Removes `owner`'s entry for `id`, if any and not taken; the entry,
    /// for the caller to drop.
    fn remove_id(&mut self, owner: u64, id: &str) -> Option<Entry> {
        let hash = self.hash(id);
        let o = self.owners.get_mut(&owner)?;
        let (e, _) = o.map.find_entry(hash, |e| !e.taken && &*e.id == id).ok()?.remove();
        self.sub(e.bytes, 1);
        Some(e)
    }

    fn live(&self, owner: u64, hash: u64, put: u64) -> bool {
        self.owners.get(&owner).is_some_and(|o| o.map.find(hash, |e| e.put == put).is_some())
    }

    /// Drops `owner`'s stale queue elements, and gives back the memory of
    /// a map or queue far larger than what it holds now (a cache that the
    /// others' entries pushed out): its capacity would otherwise stay
    /// behind, uncounted, whatever the bound.
    fn tidy(&mut self, owner: u64) {
        let Some(o) = self.owners.get_mut(&owner) else { return };
        if o.fifo.len() > 2 * o.map.len() + 64 {
            let map = &o.map;
            o.fifo.retain(|&(h, n)| map.find(h, |e| e.put == n).is_some());
        }
        if o.map.capacity() > 4 * o.map.len().max(64) {
            o.map.shrink_to(2 * o.map.len(), |e| e.hash);
        }
        if o.fifo.capacity() > 4 * o.fifo.len().max(64) {
            o.fifo.shrink_to(2 * o.fifo.len());
        }
    }

    /// Caches `state` as `owner`'s entry for `id`, of `bytes` by
    /// [`footprint`]: back into the entry `ticket` names when it was taken
    /// from one that is still there, else into the entry for `id` or a new
    /// one; then evicts to the cache's bound and the pool's. The other
    /// caches an eviction shrank (for [`Pool::tidy`], which the caller
    /// runs) and the states that leave (evicted, replaced, or finished) are
    /// added to `left`, for the caller to set aside once it has let go of
    /// the lock.
    fn put(
        &mut self,
        owner: u64,
        id: Cow<'_, str>,
        state: Option<OrderState>,
        bytes: usize,
        ticket: Option<Ticket>,
        left: &mut Left,
    ) {
        // An order larger than the whole pool is not kept (it would push
        // every other entry out first, then itself); nor is one completed
        // or cancelled: no event moves it again, and kept it would stay
        // until pushed out, taking the room of orders in progress (the
        // pipeline bench's stage with the pool full: docs/performance.md).
        // A repeat of its events reads it from the table, as after a
        // restart. The pool's queue is compacted as after an
        // eviction: every order ends here now, not only a rare large one.
        if bytes > self.cap_bytes || state.as_ref().is_some_and(|s| s.status.is_final()) {
            let taken = ticket.and_then(|t| self.remove_taken(owner, t));
            left.gone.extend(taken.into_iter().chain(self.remove_id(owner, &id)).map(|e| e.state));
            left.gone.push(state);
            self.compact();
            return;
        }
        let hash = ticket.map_or_else(|| self.hash(&id), |t| t.hash);
        let Some(o) = self.owners.get_mut(&owner) else { return };
        if let Some(t) = ticket {
            // An entry put by the id while this one was taken (never from a
            // shard, whose batches in flight share no order) is older: it
            // goes, so that an id has one entry.
            if let Ok(older) = o.map.find_entry(hash, |e| !e.taken && *e.id == *id) {
                let (e, _) = older.remove();
                self.bytes = self.bytes.saturating_sub(e.bytes);
                self.entries = self.entries.saturating_sub(1);
                left.gone.push(e.state);
            }
            if let Some(e) = o.map.find_mut(hash, |e| e.put == t.put && e.taken) {
                (e.id, e.state, e.bytes, e.taken, e.used) =
                    (id.into_owned().into_boxed_str(), state, bytes, false, IN_CACHE | IN_POOL);
                o.taken -= 1;
                self.bytes += bytes;
                self.evict(owner, left);
                return;
            }
        }
        if let Some(e) = o.map.find_mut(hash, |e| !e.taken && *e.id == *id) {
            left.gone.push(std::mem::replace(&mut e.state, state));
            let old = std::mem::replace(&mut e.bytes, bytes);
            e.used = IN_CACHE | IN_POOL;
            self.sub(old, 0);
            self.bytes += bytes;
        } else {
            let put = self.next_put;
            self.next_put += 1;
            let id = id.into_owned().into_boxed_str();
            o.map.insert_unique(hash, Entry { id, hash, state, bytes, put, taken: false, used: 0 }, |e| e.hash);
            o.fifo.push_back((hash, put));
            self.bytes += bytes;
            self.entries += 1;
            self.fifo.push_back((owner, hash, put));
        }
        self.evict(owner, left);
    }

    /// Evicts to `owner`'s bound, then to the pool's. Each queue's oldest
    /// entry goes first, but one used since the queue last passed it goes
    /// to the back instead (once: its mark is cleared), so each pass ends
    /// within two rounds of its queue.
    fn evict(&mut self, owner: u64, left: &mut Left) {
        while let Some(o) = self.owners.get_mut(&owner)
            && o.map.len() > o.cap
            && let Some((h, n)) = o.fifo.pop_front()
        {
            let Ok(mut found) = o.map.find_entry(h, |e| e.put == n) else { continue };
            let e = found.get_mut();
            if e.used & IN_CACHE != 0 {
                e.used &= !IN_CACHE;
                o.fifo.push_back((h, n));
                continue;
            }
            let (e, _) = found.remove();
            o.taken -= usize::from(e.taken);
            self.sub(e.bytes, 1);
            left.gone.push(e.state);
        }
        while self.bytes > self.cap_bytes
            && let Some((other, h, n)) = self.fifo.pop_front()
        {
            let Some(o) = self.owners.get_mut(&other) else { continue };
            let Ok(mut found) = o.map.find_entry(h, |e| e.put == n) else { continue };
            let e = found.get_mut();
            if e.used & IN_POOL != 0 {
                e.used &= !IN_POOL;
                self.fifo.push_back((other, h, n));
                continue;
            }
            let (e, _) = found.remove();
            o.taken -= usize::from(e.taken);
            self.sub(e.bytes, 1);
            left.gone.push(e.state);
            if other != owner && !left.shrunk.contains(&other) {
                left.shrunk.push(other);
            }
        }
        self.compact();
    }

    /// Keeps the pool's queue at most about twice the live entries (after
    /// evictions, or entries gone by a cache cleared or dropped).
    fn compact(&mut self) {
        if self.fifo.len() > 2 * self.entries + 64 {
            let mut fifo = std::mem::take(&mut self.fifo);
            fifo.retain(|&(o, h, n)| self.live(o, h, n));
            self.fifo = fifo;
        }
        if self.fifo.capacity() > 4 * self.fifo.len().max(64) {
            let len = self.fifo.len();
            self.fifo.shrink_to(2 * len);
        }
    }
}

impl OrderCache {
    /// An empty cache of at most `cap` orders, in a pool of its own with no
    /// byte bound (an SQS batch's, a test's).
    pub fn new(cap: usize) -> Self {
        OrderCaches::new(usize::MAX, None).cache(cap)
    }

    #[cfg(test)]
    fn get(&self, id: &str) -> Option<Option<OrderState>> {
        let p = self.pool.lock();
        let hash = p.hash(id);
        p.owners.get(&self.owner)?.map.find(hash, |e| !e.taken && &*e.id == id).map(|e| e.state.clone())
    }

    /// Takes `id`'s order out, if cached: the caller owns the state (no
    /// copy of its history) and the id, and puts them back, or the state's
    /// successor, by the ticket when done (so that neither is copied), or
    /// forgets the ticket. The entry stays, empty, in its place in the
    /// queues.
    #[cfg(test)]
    fn take(&self, id: &str) -> Option<Taken> {
        self.take_all([Some(id)]).pop().flatten()
    }

    /// [`OrderCache::take`] for each of `ids` (`None`: nothing taken), in
    /// order, under one hold of the pool's lock per [`PER_LOCK`] orders:
    /// a batch's thousand orders take it a few times, not a thousand (the
    /// lock is shared by the stream's shards, each of whose batches takes
    /// and puts every order it has). Nothing asked, no lock.
    fn take_all<'i>(&self, ids: impl IntoIterator<Item = Option<&'i str>>) -> Vec<Option<Taken>> {
        let ids: Vec<Option<&str>> = ids.into_iter().collect();
        let mut taken = Vec::with_capacity(ids.len());
        if ids.iter().all(Option::is_none) {
            taken.resize_with(ids.len(), || None);
            return taken;
        }
        for chunk in ids.chunks(PER_LOCK) {
            let mut guard = self.pool.lock();
            let p = &mut *guard;
            taken.extend(chunk.iter().map(|&id| p.take(self.owner, id?)));
            self.pool.show(p);
        }
        taken
    }

    /// Caches `state` as `id`'s. An owned `id` (from `take`, or one the
    /// caller made anyway) becomes the entry's copy of the id. (The
    /// daemon puts a batch's orders at once, [`OrderCache::put_all`]; the
    /// pipeline bench fills a cache with this.) What the put makes leave
    /// the pool is set aside until [`OrderCache::take_gone`] or the
    /// cache's drop: a caller that keeps the cache takes it.
    pub fn put<'a>(&self, id: impl Into<Cow<'a, str>>, state: Option<OrderState>) {
        self.put_all([(id.into(), state, None)]);
    }

    /// Caches each of `entries` (by its ticket when it was taken), in
    /// order, under one hold of the pool's lock per [`PER_LOCK`] (see
    /// [`OrderCache::take_all`]); the caches' queues are tidied once a
    /// hold, and the states that left the cache set aside after it, for
    /// [`OrderCache::take_gone`].
    fn put_all<'a>(&self, entries: impl IntoIterator<Item = PutBack<'a>>) {
        // Sized outside the lock.
        let sized: Vec<(PutBack<'a>, usize)> = entries
            .into_iter()
            .map(|entry| {
                let bytes = footprint(&entry.0, entry.1.as_ref());
                (entry, bytes)
            })
            .collect();
        let mut sized = sized.into_iter();
        while sized.len() > 0 {
            // Declared before the guard, so dropped after it.
            let mut left = Left::default();
            let mut guard = self.pool.lock();
            let p = &mut *guard;
            for ((id, state, ticket), bytes) in sized.by_ref().take(PER_LOCK) {
                p.put(self.owner, id, state, bytes, ticket, &mut left);
            }
            p.tidy(self.owner);
            for &owner in &left.shrunk {
                p.tidy(owner);
            }
            self.pool.show(p);
            drop(guard);
            let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
            gone.extend(left.gone.drain(..).flatten());
        }
    }

    /// The states this cache's puts made leave the pool since the last
    /// call (pushed out, replaced, or finished), for the caller to free: the
    /// router hands them to the CPU pool with the batch's events, so that
    /// neither the cross-thread frees of strings the pool decoded nor a
    /// cold order's walk falls on the shard's runtime chain.
    pub fn take_gone(&self) -> Vec<OrderState> {
        std::mem::take(&mut *self.gone.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Removes the entries of `tickets` still taken: their orders are not
    /// coming back (a write that failed or conflicted, a state not written).
    fn forget_taken(&self, tickets: impl IntoIterator<Item = Ticket>) {
        let mut gone = Vec::new();
        let mut p = self.pool.lock();
        for t in tickets {
            gone.extend(p.remove_taken(self.owner, t));
        }
        p.tidy(self.owner);
        p.compact();
        self.pool.show(&p);
        drop(p);
        drop(gone);
    }

    #[cfg(test)]
    fn forget(&self, id: &str) {
        let mut p = self.pool.lock();
        p.remove_id(self.owner, id);
        self.pool.show(&p);
    }

    /// Forgets every order (after a write that panicked half way).
    pub fn clear(&self) {
        let mut p = self.pool.lock();
        let (freed, n) = p.owners.get_mut(&self.owner).map_or((0, 0), |o| {
            o.fifo = VecDeque::new();
            o.taken = 0;
            let n = o.map.len();
            (std::mem::take(&mut o.map).into_iter().map(|e| e.bytes).sum::<usize>(), n)
        });
        p.sub(freed, n);
        p.compact();
        self.pool.show(&p);
    }

    /// Orders cached (not those taken out).
    pub fn len(&self) -> usize {
        self.pool.lock().owners.get(&self.owner).map_or(0, |o| o.map.len() - o.taken)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for OrderCache {
    fn drop(&mut self) {
        let mut p = self.pool.lock();
        let gone = p.owners.remove(&self.owner);
        if let Some(o) = &gone {
            p.sub(o.map.iter().map(|e| e.bytes).sum::<usize>(), o.map.len());
        }
        p.compact();
        self.pool.show(&p);
        drop(p);
        // Its orders are freed outside the lock the other shards share.
        drop(gone);
    }
}

/// The tickets of a call's orders taken from the cache and not yet put
/// back: those left when the call ends (its writes failed or conflicted,
/// a state not written, the call dropped half way) are forgotten, so no
/// empty entry stays behind.
struct Tickets<'c> {
    cache: &'c OrderCache,
    of: Vec<Option<Ticket>>,
}

impl Drop for Tickets<'_> {
    fn drop(&mut self) {
        if self.of.iter().any(Option::is_some) {
            self.cache.forget_taken(self.of.iter().flatten().copied());
        }
    }
}

/// Applies `events` (order events, in arrival order, each read at the
/// shard position beside it, if any) and returns a fate for each, in order.
/// `state_reads` is told how many orders were read. Every event of an
/// order shares its fate when the order's write fails.
pub async fn apply_orders(
    sink: &dyn OrderStore,
    events: &[&Event],
    positions: &[Option<&ShardPos>],
    cache: &OrderCache,
    applied_at: &str,
    concurrency: usize,
    state_reads: impl Fn(u64),
) -> Vec<Fate> {
    let mut fates: Vec<Fate> = vec![Fate::Failed; events.len()];
    // Order id -> its events' indices, in arrival order.
    // (An order's id is borrowed from its events; nearly every order has
    // one or two events in a batch, held inline.)
    let mut groups: Vec<(&str, Group)> = Vec::new();
    let mut group_of: HashMap<&str, usize, OrderHasher> = HashMap::with_capacity_and_hasher(events.len(), OrderHasher::default());
    for (i, e) in events.iter().enumerate() {
        let Some(id) = order_id(e) else { continue };
        let g = *group_of.entry(id).or_insert_with(|| {
            groups.push((id, Group::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    // An order whose first event here is `order.placed` is new unless this
    // is a replay: it is written optimistically (the put is conditional on
    // the order not existing) and read back only if that condition fails.
    let placed_first = |g: usize| matches!(events[groups[g].1[0]].body, Body::OrderPlaced(_));
    let mut must_read: Vec<bool> = vec![false; groups.len()];
    // Orders whose state this call read from the table. A rejection decided
    // against any other state (the cache, which another input or instance
    // may have moved past; an optimistic "new") is confirmed against the
    // table before it counts: a valid event must never be rejected against
    // a stale copy.
    let mut fresh: Vec<bool> = vec![false; groups.len()];
    // Each order's ticket while its entry is taken from the cache, kept
    // across rounds: a state read again after a conflict goes back into it.
    let mut tickets = Tickets { cache, of: vec![None; groups.len()] };
    let mut pending: Vec<usize> = (0..groups.len()).collect();
    for _ in 0..MAX_ROUNDS {
        // Each pending order's state for this round, taken out of the
        // cache (no copy): it goes back when no write changed it, its
        // successor when one did, nothing when its write failed or
        // conflicted. Whether it is known (cached or read) or assumed (a
        // new order's `None`, never cached).
        let mut states: Vec<Option<RoundState>> = Vec::new();
        states.resize_with(groups.len(), || None);
        let mut to_read: Vec<usize> = Vec::new();
        // An order that must be read has nothing cached (it was taken and
        // not put back).
        let taken = cache.take_all(pending.iter().map(|&g| (!must_read[g]).then_some(groups[g].0)));
        for (&g, taken) in pending.iter().zip(taken) {
            match taken {
                Some(Taken { id, state, ticket }) => {
                    tickets.of[g] = Some(ticket);
                    states[g] = Some((state, true, Some(id)));
                }
                None if must_read[g] || !placed_first(g) => to_read.push(g),
                None => states[g] = Some((None, false, None)),
            }
        }
        if !to_read.is_empty() {
            state_reads(to_read.len() as u64);
            let ids: Vec<String> = to_read.iter().map(|&g| groups[g].0.to_owned()).collect();
            match sink.read_orders(&ids).await {
                Ok(mut found) => {
                    for (&g, id) in to_read.iter().zip(&ids) {
                        states[g] = Some((found.remove(id), true, None));
                        fresh[g] = true;
                        must_read[g] = false;
                    }
                }
                // Counted and logged by the sink (SinkGaveUp). The states
                // taken from the cache go back: they are as known as before.
                Err(_) => {
                    cache.put_all(states.into_iter().enumerate().filter_map(|(g, taken)| match taken {
                        Some((state, true, owned)) => {
                            Some((owned.map_or(Cow::Borrowed(groups[g].0), Cow::Owned), state, tickets.of[g].take()))
                        }
                        _ => None,
                    }));
                    return fail(fates, &groups, &pending);
                }
            }
        }
        let mut changes: Vec<OrderChange> = Vec::with_capacity(pending.len());
        let mut change_groups: Vec<usize> = Vec::with_capacity(pending.len());
        let mut confirm: Vec<usize> = Vec::new();
        // States that go back to the cache unchanged, put back together.
        let mut unchanged: Vec<PutBack<'_>> = Vec::new();
        for &g in &pending {
            let (id, idx) = &groups[g];
            let (mut state, known, owned) = states[g].take().unwrap_or((None, false, None));
            let before = state.as_ref().map(|s| s.history.len());
            let mut rows: SmallVec<[(WindowId, Counters); 1]> = SmallVec::new();
            let mut placed_by = None;
            for &i in idx {
                let e = events[i];
                fates[i] = match apply_at(&mut state, e, positions.get(i).copied().flatten()) {
                    Applied::Changed { window, counters, event_time } => {
                        match rows.iter_mut().find(|(w, _)| *w == window) {
                            Some((_, c)) => c.add(&counters),
                            None => rows.push((window, counters)),
                        }
                        if let Body::OrderPlaced(p) = &e.body {
                            placed_by = Some((p.customer_id.clone(), p.channel.name().to_owned()));
                        }
                        Fate::Applied(event_time)
                    }
                    Applied::Repeat => Fate::Repeat,
                    Applied::Rejected(r) => Fate::Rejected(r),
                };
            }
            if !fresh[g] && idx.iter().any(|&i| matches!(fates[i], Fate::Rejected(_))) {
                // Its cached state, if any, was taken: the table decides.
                must_read[g] = true;
                confirm.push(g);
                continue;
            }
            match (state, rows.is_empty()) {
                (Some(after), false) => {
                    rows.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
                    let order_id = owned.unwrap_or_else(|| (*id).to_owned());
                    changes.push(OrderChange { order_id, before, after, placed_by, rows });
                    change_groups.push(g);
                }
                // Nothing to write: the state goes back as it was known,
                // unless its version moved (a change that made no row: not
                // written, so not cached either).
                (state, _) if known && state.as_ref().map(|s| s.history.len()) == before => {
                    unchanged.push((owned.map_or(Cow::Borrowed(*id), Cow::Owned), state, tickets.of[g].take()));
                }
                _ => {}
            }
        }
        cache.put_all(unchanged);
        let mut again = confirm;
        let mut failed = Vec::new();
        if !changes.is_empty() {
            let outcomes = sink.write_orders(&changes, applied_at, concurrency).await;
            let mut written = Vec::with_capacity(changes.len());
            for ((c, g), o) in changes.into_iter().zip(change_groups).zip(outcomes) {
                match o {
                    // The change's id becomes the cache's copy.
                    OrderWriteOutcome::Written => written.push((Cow::Owned(c.order_id), Some(c.after), tickets.of[g].take())),
                    // Its entry stays taken: the state read again goes
                    // back into it, or it is forgotten with the call.
                    OrderWriteOutcome::Conflict => {
                        must_read[g] = true;
                        again.push(g);
                    }
                    OrderWriteOutcome::Failed => failed.push(g),
                }
            }
            cache.put_all(written);
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
fn fail(mut fates: Vec<Fate>, groups: &[(&str, Group)], which: &[usize]) -> Vec<Fate> {
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
    use crate::sinks::dynamodb::refusing_sink;

    #[test]
    fn what_leaves_the_cache_is_set_aside_for_the_caller_not_freed_on_the_way_out() {
        let c = OrderCache::new(2);
        c.put("o1", Some(order(1)));
        c.put("o2", Some(order(2)));
        assert!(c.take_gone().is_empty(), "nothing left yet");
        c.put("o3", Some(order(3)));
        c.put("o2", Some(order(4)));
        let gone: Vec<usize> = c.take_gone().iter().map(|s| s.history.len()).collect();
        assert_eq!(gone, [order(1).history.len(), order(2).history.len()], "pushed out (o1), then replaced (o2's first)");
        c.put("o3", Some(finished(5)));
        let gone: Vec<(usize, bool)> = c.take_gone().iter().map(|s| (s.history.len(), s.status.is_final())).collect();
        assert_eq!(gone, [(3, false), (5, true)], "o3's entry as it was, and its state put finished");
        assert!(c.take_gone().is_empty());
        assert_eq!(c.len(), 1, "o2 is left");
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_oldest_first() {
        let c = OrderCache::new(3);
        for i in 0..10 {
            c.put(format!("o{i}"), None);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("o9").is_some() && c.get("o7").is_some() && c.get("o6").is_none());
        c.forget("o9");
        for i in 0..100 {
            c.put("o8", None);
            c.put(format!("x{i}"), None);
        }
        assert!(c.len() <= 3);
        // Put again after its first put's queue element: that element is
        // stale and must not evict the newer entry.
        assert!(c.get("o8").is_some());
        let p = c.pool.lock();
        assert!(p.owners[&c.owner].fifo.len() <= 2 * 3 + 64 + 1);
        assert!(p.fifo.len() <= 2 * 3 + 64 + 1);
    }

    #[test]
    fn a_batch_taken_and_put_under_one_lock_keeps_the_bounds_and_the_order_of_its_ids() {
        let pool = OrderCaches::new(usize::MAX, None);
        let c = pool.cache(3);
        // Ten put at once into a cache of three: the last three stay, as
        // ten puts one by one would leave them.
        c.put_all((0..10).map(|i| (Cow::Owned(format!("o{i}")), Some(order(1)), None)));
        assert_eq!(c.len(), 3);
        assert_eq!(pool.bytes(), 3 * footprint("o9", Some(&order(1))));
        // Taken in the order asked, `None` where nothing was asked or cached.
        let taken = c.take_all([Some("o9"), None, Some("o1"), Some("o7"), Some("o9")]);
        let ids: Vec<Option<&str>> = taken.iter().map(|t| t.as_ref().map(|t| t.id.as_str())).collect();
        assert_eq!(ids, vec![Some("o9"), None, None, Some("o7"), None]);
        assert_eq!((c.len(), pool.bytes()), (1, footprint("o8", Some(&order(1)))));
        // Put back together with a new one: the cap holds, the oldest not
        // used since goes.
        c.put_all(taken.into_iter().flatten().map(|t| (Cow::Owned(t.id), t.state, Some(t.ticket))).chain([(
            Cow::Borrowed("n"),
            None,
            None,
        )]));
        assert_eq!(c.len(), 3);
        assert!(c.get("o8").is_none() && c.get("o9").is_some() && c.get("o7").is_some() && c.get("n").is_some());
    }

    #[test]
    fn batches_longer_than_one_hold_of_the_lock_are_taken_and_put_in_order() {
        let pool = OrderCaches::new(usize::MAX, None);
        let c = pool.cache(2 * PER_LOCK);
        let n = 2 * PER_LOCK + 7;
        c.put_all((0..n).map(|i| (Cow::Owned(format!("o{i:04}")), Some(order(1)), None)));
        // The cap of 2 * PER_LOCK kept the last ones put, across the holds.
        assert_eq!(c.len(), 2 * PER_LOCK);
        assert!(c.get("o0006").is_none() && c.get("o0007").is_some());
        let ids: Vec<String> = (0..n).map(|i| format!("o{i:04}")).collect();
        let taken = c.take_all(ids.iter().map(|id| Some(id.as_str())));
        assert_eq!(taken.len(), n);
        for (i, t) in taken.iter().enumerate() {
            assert_eq!(t.as_ref().map(|t| t.id.as_str()), (i >= 7).then_some(ids[i].as_str()), "{i}");
        }
        assert_eq!((c.len(), pool.bytes()), (0, 0));
        assert_eq!(c.take_all([None, None]).len(), 2, "nothing asked: a None for each");
    }

    #[test]
    fn a_taken_order_leaves_the_cache_and_its_bytes_until_put_back() {
        let pool = OrderCaches::new(usize::MAX, None);
        let c = pool.cache(2);
        c.put("o1", Some(order(3)));
        c.put("o2", Some(order(1)));
        let with_both = pool.bytes();
        let taken = c.take("o1").expect("o1 was cached");
        assert_eq!((taken.id.as_str(), &taken.state), ("o1", &Some(order(3))), "the state, not a copy of an older one");
        assert_eq!((c.take("o1"), c.len()), (None, 1), "taken once");
        assert_eq!(pool.bytes(), footprint("o2", Some(&order(1))), "its bytes left with it");
        // Put back (as after a write), then one more order: the cap of two
        // evicts o2, the oldest entry not used since, not o1.
        c.put_all([(Cow::Owned(taken.id), Some(order(4)), Some(taken.ticket))]);
        assert!(pool.bytes() > with_both - footprint("o1", Some(&order(3))));
        c.put("o3", None);
        assert_eq!(c.len(), 2);
        assert!(c.get("o1").is_some() && c.get("o2").is_none() && c.get("o3").is_some());
    }

    #[test]
    fn an_order_taken_and_put_back_keeps_one_copy_of_its_id() {
        let pool = OrderCaches::new(usize::MAX, None);
        let c = pool.cache(4);
        c.put("o1", Some(order(3)));
        let Some(Taken { id, state, ticket }) = c.take("o1") else { panic!("o1 was cached") };
        let kept = id.as_ptr();
        c.put_all([(Cow::Owned(id), state, Some(ticket))]);
        let Some(Taken { id, .. }) = c.take("o1") else { panic!("o1 was put back") };
        assert_eq!(id.as_ptr(), kept, "the entry kept the id it was given, not a copy");
        // A new order's id made for its write is the entry's too.
        let made = String::from("o2");
        let kept = made.as_ptr();
        c.put(made, None);
        assert_eq!(c.take("o2").map(|t| t.id.as_ptr()), Some(kept));
    }

    #[test]
    fn an_order_used_since_the_queue_last_passed_it_is_passed_over_once() {
        let c = OrderCache::new(3);
        for id in ["a", "b", "c"] {
            c.put(id, None);
        }
        // Taken and put back: used; it outlives the two put after it.
        let Some(Taken { id, state, ticket }) = c.take("a") else { panic!("a was cached") };
        c.put_all([(Cow::Owned(id), state, Some(ticket))]);
        for id in ["d", "e", "f"] {
            c.put(id, None);
        }
        assert!(c.get("a").is_some() && c.get("b").is_none() && c.get("c").is_none() && c.get("d").is_none());
        // Passed over once: it is now the oldest, not used since.
        c.put("g", None);
        assert!(c.get("a").is_none() && c.get("e").is_some());
        // Put again by its id: used, as taken.
        c.put("e", None);
        c.put("h", None);
        assert!(c.get("e").is_some() && c.get("f").is_none());
    }

    #[test]
    fn an_order_taken_and_not_put_back_leaves_no_entry_behind() {
        let pool = OrderCaches::new(usize::MAX, None);
        let c = pool.cache(4);
        c.put("o1", Some(order(2)));
        c.put("o2", Some(order(2)));
        let (Some(one), Some(two)) = (c.take("o1"), c.take("o2")) else { panic!("both cached") };
        {
            // A call's tickets, o2's put back: o1's is forgotten at its end.
            let mut tickets = Tickets { cache: &c, of: vec![Some(one.ticket), Some(two.ticket)] };
            c.put_all([(Cow::Owned(two.id), two.state, tickets.of[1].take())]);
        }
        let p = pool.lock();
        let o = &p.owners[&c.owner];
        assert_eq!((o.map.len(), o.taken, p.entries), (1, 0, 1), "an empty entry stayed behind");
        assert_eq!(p.bytes, footprint("o2", Some(&order(2))));
        drop(p);
        // A ticket whose entry was put back forgets nothing.
        c.forget_taken([one.ticket]);
        assert!(c.get("o2").is_some());
    }

    /// An event of `order` (`ORDER` in `body`).
    fn order_event(id: &str, order: &str, body: &str) -> Event {
        let body = body.replace("ORDER", order);
        let json = format!(r#"{{"v":1,"id":"{id}","ts":"2026-11-22T08:15:30Z","store":"s1","type":{body}}}"#);
        pipeline::decode(json.as_bytes()).expect("valid event")
    }

    #[tokio::test]
    async fn a_failed_read_gives_back_the_cached_orders_it_took() {
        let cache = OrderCache::new(10);
        let mut known = None;
        let placed = order_event(
            "e1",
            "o1",
            r#""order.placed","data":{"order_id":"ORDER","customer_id":"c","channel":"web","items":[{"sku":"a","qty":1,"unit_price_cents":250}],"total_cents":250}"#,
        );
        assert!(matches!(apply_at(&mut known, &placed, None), Applied::Changed { .. }));
        cache.put("o1", known.clone());
        // o1's next status is decided against its cached state; o2 is not
        // cached and not placed here, so it must be read: the read fails.
        let status =
            |id: &str, order: &str| order_event(id, order, r#""order.status","data":{"order_id":"ORDER","status":"confirmed"}"#);
        let (e2, e3) = (status("e2", "o1"), status("e3", "o2"));
        let fates = apply_orders(&refusing_sink(), &[&e2, &e3], &[None, None], &cache, "2026-11-22T08:15:31Z", 1, |_| {}).await;
        assert_eq!(fates, vec![Fate::Failed, Fate::Failed], "nothing written: both go back to their source");
        assert_eq!(cache.get("o1"), Some(known), "o1's state is cached as before the batch");
        assert_eq!(cache.get("o2"), None);
    }

    fn order(n: usize) -> OrderState {
        use pipeline::orders::OrderStatus;
        let entry = |i: usize| HistoryEntry {
            status: OrderStatus::Placed,
            ts: "2026-12-01T08:00:00.000Z".into(),
            event_id: format!("00000000-0000-4000-8000-{i:012}").into(),
            pos: Some(ShardPos {
                at: ShardName::shared("cafe-orders", "shardId-000000000001"),
                sequence: "49650000000000000000000000000000000000000000000000000001".into(),
                sub: 0,
            }),
        };
        OrderState {
            store: "store-7".into(),
            status: OrderStatus::Placed,
            total_cents: 1250,
            item_count: 2,
            history: (0..n).map(entry).collect(),
        }
    }

    /// [`order`] completed: the cache does not keep it.
    fn finished(n: usize) -> OrderState {
        OrderState { status: pipeline::orders::OrderStatus::Completed, ..order(n) }
    }

    /// A state for the random sequence below: none (a new order's), one
    /// in progress, or one completed, which the cache does not keep.
    fn any_state(next: &mut impl FnMut(u64) -> usize) -> Option<OrderState> {
        match next(8) {
            0 | 1 => None,
            2 => Some(finished(1 + next(4))),
            _ => Some(order(1 + next(4))),
        }
    }

    /// Orders put back final, every one of a cache's, take their entries
    /// with them, and the pool's queue does not keep an element for each
    /// (it is compacted as after evictions).
    #[test]
    fn orders_put_back_final_leave_no_entry_and_no_queue_behind() {
        let pool = OrderCaches::new(usize::MAX, None);
        let cache = pool.cache(1_000);
        let ids: Vec<String> = (0..200).map(|i| format!("o-{i:03}")).collect();
        for id in &ids {
            cache.put(id.as_str(), Some(order(2)));
        }
        check(&pool, "placed");
        let taken: Vec<Taken> = cache.take_all(ids.iter().map(|i| Some(i.as_str()))).into_iter().flatten().collect();
        assert_eq!(taken.len(), ids.len());
        cache.put_all(taken.into_iter().map(|t| (Cow::Owned(t.id), Some(finished(3)), Some(t.ticket))));
        check(&pool, "all put back final");
        let (entries, queued) = {
            let p = pool.lock();
            (p.entries, p.fifo.len())
        };
        assert_eq!((cache.len(), entries, pool.bytes()), (0, 0, 0));
        assert!(queued <= 64, "{queued} elements left in the pool's queue for no entry");
        // Put by id (not taken) too.
        cache.put("o-new", Some(order(1)));
        cache.put("o-new", Some(finished(2)));
        assert_eq!((cache.get("o-new"), cache.len()), (None, 0));
        check(&pool, "put by id, then final");
    }

    /// The pool's bytes as the sum of its live entries' footprints.
    fn recount(pool: &OrderCaches) -> usize {
        let p = pool.lock();
        p.owners.values().flat_map(|o| o.map.iter()).filter(|e| !e.taken).map(|e| footprint(&e.id, e.state.as_ref())).sum()
    }

    /// Every count of the pool against its entries: the bytes (none for a
    /// taken entry), the entries, each cache's taken ones, the queues'
    /// bounds, the pool's byte bound and one entry an id per cache.
    fn check(pool: &OrderCaches, step: &str) {
        let p = pool.lock();
        let mut bytes = 0;
        for o in p.owners.values() {
            let mut ids = std::collections::HashSet::new();
            for e in o.map.iter() {
                if e.taken {
                    assert_eq!((e.bytes, e.id.len(), &e.state), (0, 0, &None), "{step}: a taken entry holds something");
                } else {
                    assert_eq!(e.bytes, footprint(&e.id, e.state.as_ref()), "{step}: an entry's bytes");
                    assert!(ids.insert(e.id.clone()), "{step}: two entries for {}", e.id);
                }
                bytes += e.bytes;
            }
            assert_eq!(o.taken, o.map.iter().filter(|e| e.taken).count(), "{step}: taken");
            assert!(o.map.len() <= o.cap, "{step}: over the cache's cap");
            assert!(o.fifo.len() <= 2 * o.map.len() + 65, "{step}: the cache's queue");
        }
        assert_eq!(p.bytes, bytes, "{step}: bytes");
        assert!(p.bytes <= p.cap_bytes, "{step}: over the pool's bytes");
        assert_eq!(p.entries, p.owners.values().map(|o| o.map.len()).sum::<usize>(), "{step}: entries");
        assert!(p.fifo.len() <= 2 * p.entries + 65, "{step}: the pool's queue");
    }

    /// Random sequences of everything a cache is asked (takes, puts back
    /// by ticket, puts by id, orders too large to keep, tickets forgotten
    /// or stale, clears, a cache dropped and made again) on two caches of
    /// a small pool: every count holds after every step.
    #[test]
    fn the_counts_hold_whatever_the_sequence_of_calls() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as usize
        };
        let pool = OrderCaches::new(12 * footprint("o-00", Some(&order(2))), None);
        let mut caches = [pool.cache(8), pool.cache(8)];
        let mut held: [Vec<Taken>; 2] = [Vec::new(), Vec::new()];
        let mut spent: Vec<Ticket> = Vec::new();
        for step in 0..20_000 {
            let c = next(2);
            let id = format!("o-{:02}", next(16));
            let op = next(100);
            let what = format!("step {step}, op {op} on cache {c} for {id}");
            match op {
                0..30 => {
                    let ids: Vec<String> = (0..1 + next(4)).map(|_| format!("o-{:02}", next(16))).collect();
                    held[c].extend(caches[c].take_all(ids.iter().map(|i| Some(i.as_str()))).into_iter().flatten());
                }
                30..55 if !held[c].is_empty() => {
                    let at = next(held[c].len() as u64);
                    let t = held[c].swap_remove(at);
                    spent.push(t.ticket);
                    let state = any_state(&mut next);
                    caches[c].put_all([(Cow::Owned(t.id), state, Some(t.ticket))]);
                }
                55..80 => caches[c].put(id, any_state(&mut next)),
                80..84 => {
                    let ticket = held[c].pop().map(|t| t.ticket);
                    caches[c].put_all([(Cow::Owned(id), Some(order(400)), ticket)]);
                }
                84..92 => {
                    let ticket = match held[c].pop() {
                        Some(t) => t.ticket,
                        None => *spent.get(next(spent.len() as u64 + 1)).unwrap_or(&Ticket { hash: 0, put: 0 }),
                    };
                    caches[c].forget_taken([ticket]);
                }
                92..95 => caches[c].clear(),
                95..97 => {
                    held[c].clear();
                    caches[c] = pool.cache(8);
                }
                _ => {}
            }
            check(&pool, &what);
        }
    }

    /// An in-memory order table whose writes answer as told, one outcome
    /// a write (then `Written`), for `apply_orders`' rounds.
    #[derive(Debug, Default)]
    struct Scripted {
        table: Mutex<HashMap<String, OrderState>>,
        outcomes: Mutex<VecDeque<OrderWriteOutcome>>,
    }

    impl OrderStore for Scripted {
        fn read_orders<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<HashMap<String, OrderState>, AwsError>> {
            let table = self.table.lock().expect("lock");
            let found = ids.iter().filter_map(|id| table.get(id).map(|s| (id.clone(), s.clone()))).collect();
            Box::pin(async move { Ok(found) })
        }

        fn write_orders<'a>(&'a self, writes: &'a [OrderChange], _: &'a str, _: usize) -> BoxFuture<'a, Vec<OrderWriteOutcome>> {
            let outcomes = writes
                .iter()
                .map(|w| {
                    let o = self.outcomes.lock().expect("lock").pop_front().unwrap_or(OrderWriteOutcome::Written);
                    if o == OrderWriteOutcome::Written {
                        self.table.lock().expect("lock").insert(w.order_id.clone(), w.after.clone());
                    }
                    o
                })
                .collect();
            Box::pin(async move { outcomes })
        }
    }

    fn placed(order: &str) -> Event {
        order_event(
            "e1",
            order,
            r#""order.placed","data":{"order_id":"ORDER","customer_id":"c","channel":"web","items":[{"sku":"a","qty":1,"unit_price_cents":250}],"total_cents":250}"#,
        )
    }

    fn status(event: &str, order: &str, status: &str) -> Event {
        order_event(event, order, &format!(r#""order.status","data":{{"order_id":"ORDER","status":"{status}"}}"#))
    }

    /// An order written completed or cancelled leaves the cache, its entry
    /// and its bytes with it, whether it was taken from the cache (o1) or
    /// new in the batch (o2); an order in progress stays (o3). A repeat of
    /// the completing event reads the order from the table, and is a
    /// repeat.
    #[tokio::test]
    async fn an_order_written_final_leaves_the_cache_and_a_repeat_of_it_reads_it() {
        use pipeline::orders::OrderStatus;
        use std::sync::atomic::{AtomicU64, Ordering};
        let pool = OrderCaches::new(usize::MAX, None);
        let cache = pool.cache(10);
        let store = Scripted::default();
        let reads = AtomicU64::new(0);
        let read = |n| {
            reads.fetch_add(n, Ordering::Relaxed);
        };
        let at = "2026-11-22T08:15:31Z";
        let first = [placed("o1"), status("e2", "o1", "confirmed"), status("e3", "o1", "preparing"), status("e4", "o1", "ready")];
        let fates = apply_orders(&store, &first.iter().collect::<Vec<_>>(), &[None; 4], &cache, at, 1, read).await;
        assert!(fates.iter().all(|f| matches!(f, Fate::Applied(_))), "{fates:?}");
        assert_eq!(cache.get("o1").flatten().map(|s| s.status), Some(OrderStatus::Ready), "an order in progress is cached");

        let completed = status("e5", "o1", "completed");
        let second = [completed.clone(), placed("o2"), status("e6", "o2", "cancelled"), placed("o3")];
        let fates = apply_orders(&store, &second.iter().collect::<Vec<_>>(), &[None; 4], &cache, at, 1, read).await;
        assert!(fates.iter().all(|f| matches!(f, Fate::Applied(_))), "{fates:?}");
        assert_eq!(store.table.lock().expect("lock")["o1"].status, OrderStatus::Completed, "written");
        assert_eq!((cache.get("o1"), cache.get("o2")), (None, None), "a final order stayed in the cache");
        assert_eq!(cache.get("o3").flatten().map(|s| s.status), Some(OrderStatus::Placed));
        // Set aside for the caller to free (the router: on the CPU pool),
        // not freed on the way out.
        let mut gone: Vec<OrderStatus> = cache.take_gone().iter().map(|s| s.status).collect();
        gone.sort_by_key(|s| s.name());
        assert_eq!(gone, [OrderStatus::Cancelled, OrderStatus::Completed], "the finished orders, set aside");
        assert!(cache.take_gone().is_empty(), "taken once");
        check(&pool, "after the final writes");
        let (entries, o3) = (pool.lock().entries, footprint("o3", store.table.lock().expect("lock").get("o3")));
        assert_eq!((cache.len(), entries, pool.bytes()), (1, 1, o3), "o3 alone is left");
        assert_eq!(reads.load(Ordering::Relaxed), 0, "o1 came from the cache, o2 and o3 are new");

        let fates = apply_orders(&store, &[&completed], &[None], &cache, at, 1, read).await;
        assert_eq!(fates, vec![Fate::Repeat]);
        assert_eq!(reads.load(Ordering::Relaxed), 1, "the repeat read its order from the table");
        assert_eq!((cache.get("o1"), cache.len()), (None, 1), "nor is a final order read back cached");
        check(&pool, "after the repeat");
    }

    /// The completing write refused (another writer moved the order): the
    /// order is read again, completed against the fresh state, written,
    /// and leaves the cache with its entry (taken through the rounds);
    /// a completing write that fails leaves no entry either.
    #[tokio::test]
    async fn an_order_whose_completing_write_conflicts_or_fails_leaves_no_entry() {
        let pool = OrderCaches::new(usize::MAX, None);
        let cache = pool.cache(10);
        let store = Scripted::default();
        let at = "2026-11-22T08:15:31Z";
        for (order, outcome) in [("o1", OrderWriteOutcome::Conflict), ("o2", OrderWriteOutcome::Failed)] {
            let up =
                [placed(order), status("e2", order, "confirmed"), status("e3", order, "preparing"), status("e4", order, "ready")];
            let fates = apply_orders(&store, &up.iter().collect::<Vec<_>>(), &[None; 4], &cache, at, 1, |_| {}).await;
            assert!(fates.iter().all(|f| matches!(f, Fate::Applied(_))), "{order}: {fates:?}");
            assert!(cache.get(order).is_some(), "{order}: cached in progress");
            store.outcomes.lock().expect("lock").push_back(outcome);
            let completed = status("e5", order, "completed");
            let fates = apply_orders(&store, &[&completed], &[None], &cache, at, 1, |_| {}).await;
            let written = store.table.lock().expect("lock")[order].status;
            match outcome {
                OrderWriteOutcome::Conflict => {
                    assert!(matches!(fates[..], [Fate::Applied(_)]), "{order}: {fates:?}");
                    assert_eq!(written, pipeline::orders::OrderStatus::Completed, "{order}: written in the next round");
                }
                _ => assert_eq!((fates, written), (vec![Fate::Failed], pipeline::orders::OrderStatus::Ready), "{order}"),
            }
            assert_eq!(cache.get(order), None, "{order}: an entry stayed behind");
            check(&pool, order);
            let entries = pool.lock().entries;
            assert_eq!((cache.len(), entries, pool.bytes()), (0, 0, 0), "{order}");
        }
    }

    /// A write that conflicts: the order is read again, its events applied
    /// to the fresh state and written in the next round, and the state goes
    /// back into the entry it was taken from (one entry, not taken). A
    /// write that fails leaves no entry for its order.
    #[tokio::test]
    async fn an_order_taken_comes_back_into_its_entry_after_a_conflict_and_leaves_none_after_a_failure() {
        let pool = OrderCaches::new(usize::MAX, None);
        let cache = pool.cache(10);
        let store = Scripted::default();
        let mut known = None;
        assert!(matches!(apply_at(&mut known, &placed("o1"), None), Applied::Changed { .. }));
        store.table.lock().expect("lock").insert("o1".into(), known.clone().expect("placed"));
        cache.put("o1", known);
        store.outcomes.lock().expect("lock").push_back(OrderWriteOutcome::Conflict);
        let confirmed = status("e2", "o1", "confirmed");
        let fates = apply_orders(&store, &[&confirmed], &[None], &cache, "2026-11-22T08:15:31Z", 1, |_| {}).await;
        assert!(matches!(fates[..], [Fate::Applied(_)]), "{fates:?}");
        assert_eq!(cache.get("o1").flatten().map(|s| s.history.len()), Some(2), "the written state is cached");
        check(&pool, "after a conflict");
        assert_eq!((cache.len(), pool.lock().entries), (1, 1));

        store.outcomes.lock().expect("lock").push_back(OrderWriteOutcome::Failed);
        let preparing = status("e3", "o1", "preparing");
        let fates = apply_orders(&store, &[&preparing], &[None], &cache, "2026-11-22T08:15:32Z", 1, |_| {}).await;
        assert_eq!(fates, vec![Fate::Failed]);
        check(&pool, "after a failure");
        let entries = pool.lock().entries;
        assert_eq!((cache.len(), entries, pool.bytes()), (0, 0, 0), "an entry stayed behind its failed write");
    }

    #[test]
    fn the_caches_of_a_pool_hold_at_most_its_bytes_together_and_the_oldest_goes_first() {
        let one = footprint("o-000", Some(&order(3)));
        let gauge = Gauge::default();
        let pool = OrderCaches::new(10 * one, Some(gauge.clone()));
        // Four shards' caches, each allowed far more orders than fit.
        let caches: Vec<OrderCache> = (0..4).map(|_| pool.cache(1_000)).collect();
        for i in 0..200 {
            caches[i % 4].put(format!("o-{i:03}"), Some(order(3)));
            assert!(pool.bytes() <= 10 * one, "{} bytes after {i} puts, over {}", pool.bytes(), 10 * one);
            assert_eq!(pool.bytes(), recount(&pool));
            assert_eq!(gauge.get(), pool.bytes() as i64);
        }
        // The newest ten, whichever cache holds them; older ones are gone.
        assert_eq!(caches.iter().map(OrderCache::len).sum::<usize>(), 10);
        assert!(caches[199 % 4].get("o-199").is_some() && caches[190 % 4].get("o-190").is_some());
        assert!(caches[189 % 4].get("o-189").is_none());
        // A replaced entry is counted once, at its new size.
        caches[3].put("o-199", Some(order(6)));
        assert_eq!(pool.bytes(), recount(&pool));
        caches[3].forget("o-199");
        assert_eq!((pool.bytes(), gauge.get()), (recount(&pool), recount(&pool) as i64));
        caches[2].clear();
        assert_eq!((pool.bytes(), gauge.get()), (recount(&pool), recount(&pool) as i64));
        let entries = pool.lock().entries;
        assert_eq!(entries, caches.iter().map(OrderCache::len).sum::<usize>());
        // A dropped cache (its lease gone) frees its orders for the others.
        let before = pool.bytes();
        let held = caches[1].len();
        drop(caches);
        assert!(held > 0 && before > 0);
        assert_eq!((pool.bytes(), gauge.get()), (0, 0));
        assert!(pool.lock().owners.is_empty());
    }

    #[test]
    fn the_pool_queue_stays_bounded_when_the_same_orders_are_put_again() {
        let pool = OrderCaches::new(usize::MAX, None);
        let a = pool.cache(5);
        let b = pool.cache(5);
        for i in 0..10_000 {
            a.put(format!("a{}", i % 5), Some(order(1)));
            b.put(format!("b{}", i % 7), None);
        }
        let p = pool.lock();
        assert!(p.fifo.len() <= 2 * 10 + 64 + 1, "{}", p.fifo.len());
        assert!(p.owners.values().all(|o| o.fifo.len() <= 2 * 5 + 64 + 1));
    }

    #[test]
    fn an_order_larger_than_the_whole_pool_is_not_kept_and_pushes_nothing_out() {
        let small = footprint("o-0", Some(&order(1)));
        let pool = OrderCaches::new(10 * small, None);
        let c = pool.cache(100);
        for i in 0..3 {
            c.put(format!("o-{i}"), Some(order(1)));
        }
        c.put("o-1", Some(order(500)));
        assert!(c.get("o-1").is_none(), "kept an order larger than the pool");
        assert!(c.get("o-0").is_some() && c.get("o-2").is_some(), "pushed the others out");
        assert_eq!(pool.bytes(), 2 * small);
    }

    #[test]
    fn the_footprint_grows_with_the_history_and_is_near_what_an_order_takes() {
        let (none, three, six) = (footprint("o-1", None), footprint("o-1", Some(&order(3))), footprint("o-1", Some(&order(6))));
        assert!(none < three && three < six, "{none} {three} {six}");
        // Each entry: two strings of 24 and 36 bytes, a position of three
        // more (11 + 20 + 56 bytes), the entry itself.
        let per_entry = (six - three) / 3;
        assert!((300..600).contains(&per_entry), "{per_entry} bytes per history entry");
        // Entries whose positions share their names (one batch's, or one
        // read's) count them once.
        let mut shared = order(6);
        let first = shared.history[0].pos.clone().expect("a position");
        for h in &mut shared.history {
            h.pos = h.pos.take().map(|p| ShardPos { at: first.at.clone(), ..p });
        }
        let once = footprint("o-1", Some(&shared));
        let name =
            16 + 2 * size_of::<usize>() + size_of::<ShardName>() + 2 * 16 + "cafe-orders".len() + "shardId-000000000001".len();
        assert_eq!(six - once, 5 * name, "{six} {once}");
        // A reader's name, interned, is the process's: it counts for no order.
        let interned = ShardName::interned("cafe-orders", "shardId-000000000001");
        for h in &mut shared.history {
            h.pos = h.pos.take().map(|p| ShardPos { at: interned.clone(), ..p });
        }
        assert_eq!(once - footprint("o-1", Some(&shared)), name, "an interned name counted");
        assert!((200..500).contains(&none), "{none} bytes for an order known not to exist");
    }

    #[test]
    fn a_cache_the_others_pushed_out_gives_its_memory_back() {
        let one = footprint("o-0000", None);
        let pool = OrderCaches::new(2_000 * one, None);
        let (a, b) = (pool.cache(10_000), pool.cache(10_000));
        for i in 0..2_000 {
            a.put(format!("a-{i:04}"), None);
        }
        for i in 0..2_000 {
            b.put(format!("b-{i:04}"), None);
        }
        assert_eq!((a.len(), b.len()), (0, 2_000));
        let p = pool.lock();
        let o = &p.owners[&a.owner];
        assert!(o.map.capacity() <= 4 * 64 && o.fifo.capacity() <= 4 * 64, "{} {}", o.map.capacity(), o.fifo.capacity());
        assert!(p.fifo.len() <= 2 * 2_000 + 64);
    }
}
