//! Scoring payments against the fraud history every instance shares
//! (`[fraud] state = "dynamodb"`), for payments from any source.
//!
//! Owns: which keys a batch's payments need, reading the ones not cached
//! (one BatchGetItem per 100 keys, strongly consistent), scoring in arrival
//! order on the CPU pool, packing payments into transactions, and the
//! rounds: a key another writer moved first is read again (after a
//! jittered pause) and every payment from that transaction on is scored
//! again; a key the cache already holds at a newer version (another batch
//! of this process moved it) is scored against that at once. A round
//! claims its keys as it reads them: one that another batch of this
//! process is still scoring waits for that scoring; one that another batch
//! is writing is scored at the version being written, and the transaction
//! that writes it next waits until that one landed (scored again if it
//! did not), so the process's own batches follow each other on a hot key
//! instead of cancelling each other. Must not: send rejections or acknowledge (the router and the
//! sources do, from the outcomes this returns).
//!
//! Consistency: each key's state is written with the payments whose
//! scoring changed it, conditional on the version scored against, so the
//! writes to one key are serial across the fleet: every payment is scored
//! against every payment on its keys that was durable before its own
//! transaction, and a payment and the history it counts in land together.
//! A redelivered payment (its put's condition fails) changes nothing and
//! keeps its first decision. A transaction scored against another batch's
//! write is sent only once that write committed, so its condition (the
//! version that write set) names that write's state and no other writer's
//! of the same version number.
//!
//! A batch's transactions are sent one after the other. Tried and measured
//! on the local stack (cold-start, 10,000 payments, against a bare client
//! in the same run): sending the independent ones at once took the drain
//! from 1.40 to 1.60 times the bare client's, with 102 conflicts between
//! batches instead of 2; holding each batch's keys so that batches never
//! conflict (0 conflicts) also gave 1.60, since nearly every batch touches
//! one of the few shared cards or devices and they ran one at a time. The
//! claims above hold a key only through its scoring, not its write: the
//! transactions of a hot key's batches overlap the scoring of the next
//! (docs/performance.md, "One process's batches on a hot key follow each
//! other").

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipeline::decided::DecidedPayment;
use pipeline::event::PaymentRequested;
use pipeline::fraud::state::{CardState, CustomerState, DeviceState, Keys, KeysMut};
use pipeline::fraud::{Rules, Verdict};
use pipeline::window::WindowId;
use prometheus_client::metrics::gauge::Gauge;
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::warn;

use super::decide::{Unscored, decided_payment};
use crate::bridge::CpuPool;
use crate::sinks::WriteOutcome;
use crate::sinks::dynamodb::fraud_state::{AnyState, StateKey, StateWrite, Versioned};
use crate::sinks::dynamodb::{Attempt, Copies, DynamoDbSink};

/// Rounds after a conflict with another writer (each after a jittered
/// pause, the first round included) before the payments are given back
/// to their source.
const MAX_ROUNDS: u32 = 8;

/// Rounds at once (no pause), each after a conflict the cache resolved
/// (another batch of this process moved the key: it made progress) or one
/// of redelivered payments only (each settles at least one), before the
/// payments are given back: a bound, so that a batch on a key many of the
/// process's batches want at once cannot go round for ever.
const MAX_ROUNDS_AT_ONCE: u32 = 32;

/// What one batch's scoring against the shared state cost, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateTraffic {
    /// Keys found in the cache.
    pub hits: u64,
    /// Keys read from the table.
    pub reads: u64,
    /// BatchGetItem requests.
    pub read_calls: u64,
    /// Key states written (committed).
    pub writes: u64,
    /// Transactions cancelled because a key had moved (each one
    /// re-scored).
    pub conflicts: u64,
    /// Of those, the ones whose moved keys the cache held at a newer
    /// version: re-scored at once, with no read and no pause.
    pub conflicts_from_cache: u64,
    /// Transactions scored against versions another batch of this process
    /// was writing, sent once those landed.
    pub chained: u64,
    /// Of those, the ones not sent because a write they were scored
    /// against did not land: re-scored at once.
    pub unlanded: u64,
    /// Rounds that waited for another batch of this process to finish
    /// scoring one of their keys before reading them.
    pub queued: u64,
}

/// Key states kept in memory to avoid reads, with the version each was
/// read or written at: only a cache, since every write is conditional on
/// the version it was scored against (a stale entry costs one cancelled
/// transaction and a read). Shared by every input of the process; each
/// call locks it briefly, never across an await. Holds at most `cap`
/// keys, dropping the oldest put first. A key found moved past what it
/// holds is marked, not dropped, so that a read or write of an older
/// version ending later is not cached (it would cost every batch a round).
#[derive(Debug)]
pub struct FraudStateCache {
    inner: Mutex<CacheInner>,
    /// Keys held, set after every change (`cafe_fraud_tracked_keys`).
    gauge: Option<Gauge>,
}

/// A key's cached state, its put number, and whether it was found moved
/// past that version (then it only keeps older versions out).
#[derive(Debug)]
struct Held {
    state: Versioned,
    put: u64,
    moved: bool,
}

#[derive(Debug)]
struct CacheInner {
    map: HashMap<StateKey, Held>,
    /// (key, put number), oldest first; stale elements are skipped.
    fifo: VecDeque<(StateKey, u64)>,
    cap: usize,
    next_put: u64,
    /// Keys batches of this process are scoring or writing, each key's
    /// batches oldest first: a batch claims its keys when its round reads
    /// them, and registers the versions it writes once scored. At most the
    /// keys of the batches in flight.
    writing: HashMap<StateKey, Vec<Writing>>,
    next_writer: u64,
}

/// One batch's claim on a key.
#[derive(Debug)]
struct Writing {
    writer: u64,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// Being scored since the instant: `true` once its writes are
    /// registered (closed without it when the round ended first). A batch
    /// claiming the key meanwhile waits for it (until [`LANDING_WAIT`]
    /// after the claim), so that the two do not score against the same
    /// version (one of them would be cancelled).
    Scoring(watch::Receiver<bool>, std::time::Instant),
    /// The key's next version as the batch writes it, whether that write
    /// landed (`true` once its transaction committed; closed without it
    /// when it did not), and the landing of the write it was scored
    /// against, if another batch's.
    Written { state: Versioned, landed: watch::Receiver<bool>, base: Option<watch::Receiver<bool>> },
}

impl Stage {
    /// Written on a base that did not land: its own write will not either.
    fn doomed(&self) -> bool {
        matches!(self, Stage::Written { base: Some(b), .. } if !*b.borrow() && b.has_changed().is_err())
    }
}

/// A batch round's claim on its keys in the cache ([`FraudStateCache::claim`]),
/// then its writes ([`Writes::register`]), one signal a transaction.
/// Dropped, it withdraws its entries, then closes its signals: a batch
/// waiting for its scoring goes on, and one scored against a transaction
/// that did not commit does not send.
#[derive(Debug)]
pub struct Writes<'a> {
    cache: &'a FraudStateCache,
    writer: u64,
    keys: Vec<StateKey>,
    scored: watch::Sender<bool>,
    landed: Vec<watch::Sender<bool>>,
}

impl Writes<'_> {
    /// The round's writes, `(key, the version written, its transaction)` in
    /// sending order, for rounds that start while they are under way:
    /// those score against them and send once they landed (rather than
    /// against the versions before, which these writes would move,
    /// cancelling their transactions).
    pub fn register(
        &mut self,
        writes: impl IntoIterator<Item = (StateKey, Versioned, usize, Option<watch::Receiver<bool>>)>,
        transactions: usize,
    ) {
        let landed: Vec<(watch::Sender<bool>, watch::Receiver<bool>)> =
            (0..transactions).map(|_| watch::channel(false)).collect();
        // Built before the lock is taken (the states are cloned here).
        let stages: Vec<(StateKey, Stage)> = writes
            .into_iter()
            .filter_map(|(key, state, t, base)| {
                let (_, rx) = landed.get(t)?;
                Some((key, Stage::Written { state, landed: rx.clone(), base }))
            })
            .collect();
        {
            let mut c = self.cache.lock();
            for (key, stage) in stages {
                let entries = c.writing.entry(key).or_default();
                // Every key a round writes it claimed (`score_round` writes
                // every key of its payments).
                if let Some(w) = entries.iter_mut().rev().find(|w| w.writer == self.writer) {
                    w.stage = stage;
                } else {
                    debug_assert!(false, "a key written that its round did not claim");
                }
            }
        }
        self.landed = landed.into_iter().map(|(tx, _)| tx).collect();
        self.scored.send_replace(true);
    }

    /// Transaction `t` committed: batches scored against its versions may send.
    fn committed(&self, t: usize) {
        if let Some(s) = self.landed.get(t) {
            s.send_replace(true);
        }
    }
}

impl Drop for Writes<'_> {
    fn drop(&mut self) {
        // Withdrawn before the signals close (the fields drop after this):
        // a batch woken by a failed write finds the cache without it.
        let mut c = self.cache.lock();
        for k in &self.keys {
            if let Some(entries) = c.writing.get_mut(k) {
                entries.retain(|w| w.writer != self.writer);
                if entries.is_empty() {
                    c.writing.remove(k);
                }
            }
        }
        if c.writing.is_empty() && c.writing.capacity() > 4096 {
            c.writing.shrink_to(64);
        }
    }
}

/// How long a transaction waits for the writes it was scored against
/// before it counts them as not landed (and is scored again): the data
/// calls' bound, so that a batch stuck behind a write whose batch is
/// not being polled (its task awaiting an acknowledgement queue or a
/// checkpoint) gives up in time.
const LANDING_WAIT: Duration = crate::aws::DATA_CALL_TIMEOUT;

/// Waits until every batch in `on` registered its writes or gave up, or
/// `within` passed since it claimed (a claim stuck in its scoring holds
/// each round behind it no longer than that from its own start).
async fn scored(on: &[(watch::Receiver<bool>, std::time::Instant)], within: Duration) {
    let all = futures::future::join_all(on.iter().map(|(rx, since)| {
        let (mut rx, until) = (rx.clone(), tokio::time::Instant::from_std(*since + within));
        async move {
            let _ = tokio::time::timeout_at(until, rx.wait_for(|s| *s)).await;
        }
    }));
    all.await;
}

/// Waits until every write in `on` landed: false as soon as one did not
/// (its batch's transaction failed or was never sent), or after `within`.
async fn landed(on: &[watch::Receiver<bool>], within: Duration) -> bool {
    let all = futures::future::try_join_all(on.iter().map(|rx| {
        let mut rx = rx.clone();
        async move { rx.wait_for(|l| *l).await.map(|_| ()) }
    }));
    matches!(tokio::time::timeout(within, all).await, Ok(Ok(_)))
}

impl FraudStateCache {
    /// An empty cache of at most `cap` keys.
    pub fn new(cap: usize, gauge: Option<Gauge>) -> Self {
        FraudStateCache {
            inner: Mutex::new(CacheInner {
                map: HashMap::new(),
                fifo: VecDeque::new(),
                cap: cap.max(1),
                next_put: 0,
                writing: HashMap::new(),
                next_writer: 0,
            }),
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of `key`'s cached state.
    pub fn get(&self, key: &StateKey) -> Option<Versioned> {
        self.lock().map.get(key).filter(|h| !h.moved).map(|h| h.state.clone())
    }

    /// What a round scores `key` against: the newest version a batch of
    /// this process other than `writer` registered as writing, with the
    /// signal of its landing, when it is newer than anything cached (found
    /// moved included); otherwise a copy of the cached state, as
    /// [`Self::get`].
    pub fn latest(&self, key: &StateKey, writer: Option<u64>) -> (Option<Versioned>, Option<watch::Receiver<bool>>) {
        let c = self.lock();
        let held = c.map.get(key);
        // The highest version (claims end in order of their claims, not
        // always of their versions), not one built on a write that did
        // not land (it will not land either).
        let written = c.writing.get(key).and_then(|entries| {
            entries
                .iter()
                .filter(|w| Some(w.writer) != writer && !w.stage.doomed())
                .filter_map(|w| match &w.stage {
                    Stage::Written { state, landed, .. } => Some((state, landed)),
                    Stage::Scoring(..) => None,
                })
                .max_by_key(|(state, _)| state.version)
        });
        match written {
            Some((state, landed)) if held.is_none_or(|h| h.state.version < state.version) => {
                (Some(state.clone()), Some(landed.clone()))
            }
            _ => (held.filter(|h| !h.moved).map(|h| h.state.clone()), None),
        }
    }

    /// The keys of `keys` neither cached (found moved counts as not) nor
    /// claimed by a batch of this process: a round reads them before it
    /// claims its keys, out of the claims' serial section.
    pub fn unknown(&self, keys: &[StateKey]) -> Vec<StateKey> {
        let c = self.lock();
        keys.iter().filter(|k| c.map.get(*k).is_none_or(|h| h.moved) && !c.writing.contains_key(*k)).cloned().collect()
    }

    /// Claims `keys` for a round about to score against them: returns its
    /// guard, and the scoring of other batches to wait for first (each key's
    /// last claim, when it is still being scored).
    pub fn claim(&self, keys: &[StateKey]) -> (Writes<'_>, Vec<(watch::Receiver<bool>, std::time::Instant)>) {
        let (scored, rx) = watch::channel(false);
        let now = std::time::Instant::now();
        let mut c = self.lock();
        let writer = c.next_writer;
        c.next_writer += 1;
        let mut before = Vec::new();
        for key in keys {
            let entries = c.writing.entry(key.clone()).or_default();
            if let Some(Writing { stage: Stage::Scoring(other, since), .. }) = entries.last()
                && !before.iter().any(|(b, _): &(watch::Receiver<bool>, _)| b.same_channel(other))
            {
                before.push((other.clone(), *since));
            }
            entries.push(Writing { writer, stage: Stage::Scoring(rx.clone(), now) });
        }
        drop(c);
        (Writes { cache: self, writer, keys: keys.to_vec(), scored, landed: Vec::new() }, before)
    }

    /// Claims the keys of `writes` and registers them at once (for tests).
    #[cfg(test)]
    fn writing(&self, writes: Vec<(StateKey, Versioned, usize)>, transactions: usize) -> Writes<'_> {
        let keys: Vec<StateKey> = writes.iter().map(|(k, ..)| k.clone()).collect();
        let (mut w, _) = self.claim(&keys);
        w.register(writes.into_iter().map(|(k, v, t)| (k, v, t, None)), transactions);
        w
    }

    /// Keys claimed by batches of this process (being scored or written).
    pub fn writing_len(&self) -> usize {
        self.lock().writing.len()
    }

    /// Whether `key` was found moved past what the cache holds (by another
    /// writer: the next use reads it).
    fn is_moved(&self, key: &StateKey) -> bool {
        self.lock().map.get(key).is_some_and(|h| h.moved)
    }

    /// Caches `key` at `state`, unless a newer version is cached, or the
    /// key was found moved past this version.
    pub fn put(&self, key: &StateKey, state: Versioned) {
        let mut c = self.lock();
        if c.map.get(key).is_some_and(|h| h.state.version > state.version || (h.moved && h.state.version >= state.version)) {
            return;
        }
        Self::hold(&mut c, key, Held { state, put: 0, moved: false });
        self.show(&c);
    }

    /// After a write conditional on `key` at version `read` was cancelled
    /// because the key had moved: true when the cache holds it at a newer
    /// version (written by another batch of this process, or read after
    /// the move), which the next round can score against; otherwise marks
    /// it moved past `read` (and past what it held), so that the next use
    /// reads it.
    pub fn newer_than(&self, key: &StateKey, read: u64) -> bool {
        let mut c = self.lock();
        let held = c.map.get(key);
        if held.is_some_and(|h| !h.moved && h.state.version > read) {
            return true;
        }
        let past = held.map_or(read, |h| h.state.version.max(read));
        Self::hold(&mut c, key, Held { state: Versioned { version: past, state: key.empty() }, put: 0, moved: true });
        self.show(&c);
        false
    }

    /// Holds `key` as `held`, numbered as the latest put, dropping the
    /// oldest keys beyond the cap.
    fn hold(c: &mut CacheInner, key: &StateKey, mut held: Held) {
        held.put = c.next_put;
        c.next_put += 1;
        c.fifo.push_back((key.clone(), held.put));
        c.map.insert(key.clone(), held);
        while c.map.len() > c.cap {
            let Some((old, n)) = c.fifo.pop_front() else { break };
            if c.map.get(&old).is_some_and(|h| h.put == n) {
                c.map.remove(&old);
            }
        }
        if c.fifo.len() > 2 * c.cap + 64 {
            let CacheInner { map, fifo, .. } = c;
            fifo.retain(|(k, n)| map.get(k).is_some_and(|h| h.put == *n));
        }
    }

    /// Keys cached.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn show(&self, c: &CacheInner) {
        if let Some(g) = &self.gauge {
            g.set(c.map.len() as i64);
        }
    }
}

/// Where the keys a cancelled transaction found moved (each with the
/// version its write read) are next scored from: the cache's newer version
/// when it holds one, otherwise a read (the cache marks the key moved, so
/// the next round reads it). True when a key was not cached newer:
/// another writer moved it, so the next round pauses first.
fn settle_moved<'a>(cache: &FraudStateCache, moved: impl IntoIterator<Item = (&'a StateKey, u64)>) -> bool {
    let mut elsewhere = false;
    for (key, read) in moved {
        elsewhere |= !cache.newer_than(key, read);
    }
    elsewhere
}

/// The keys of one payment: card, customer, device.
fn keys_of(p: &PaymentRequested) -> [StateKey; 3] {
    [StateKey::Card(p.card.fingerprint.clone()), StateKey::Customer(p.customer_id.clone()), StateKey::Device(p.device_id.clone())]
}

/// One state a transaction writes: (key, version read, version written,
/// state after).
type Write = (usize, u64, u64, AnyState);

/// One round's scoring: the verdicts of the payments in order, and for
/// each transaction the states it writes.
type Scored = (Vec<Verdict>, Vec<Vec<Write>>);

/// The clock of one scoring round.
#[derive(Debug, Clone, Copy)]
struct RoundClock {
    /// Payments dated later count at this time ([`Rules::event_time`]).
    now: OffsetDateTime,
    /// The version a key's first item is written at: the clock in
    /// milliseconds, never used again for the key once its item expires.
    fresh: u64,
}

impl RoundClock {
    fn now() -> Self {
        let now = OffsetDateTime::now_utc();
        RoundClock { now, fresh: u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(1).max(1) }
    }
}

fn take_card(s: &mut AnyState) -> CardState {
    match std::mem::replace(s, AnyState::Card(CardState::default())) {
        AnyState::Card(c) => c,
        _ => CardState::default(),
    }
}

fn take_customer(s: &mut AnyState) -> CustomerState {
    match std::mem::replace(s, AnyState::Customer(CustomerState::default())) {
        AnyState::Customer(c) => c,
        _ => CustomerState::default(),
    }
}

fn take_device(s: &mut AnyState) -> DeviceState {
    match std::mem::replace(s, AnyState::Device(DeviceState::default())) {
        AnyState::Device(d) => d,
        _ => DeviceState::default(),
    }
}

/// Scores `order` (indices into `payments`) in order against `states`
/// (indexed like `keys`, each of its key's kind), the payments' keys given
/// by `key_of`; the transactions end after the positions in `ends`. One
/// verdict per position, whatever the states. Pure: runs on the pool.
fn score_round(
    rules: &Rules,
    payments: &[Unscored],
    order: &[usize],
    key_of: &[[usize; 3]],
    mut states: Vec<Versioned>,
    ends: &[usize],
    clock: RoundClock,
) -> Scored {
    let mut verdicts = Vec::with_capacity(order.len());
    let mut writes = Vec::with_capacity(ends.len());
    let mut touched: Vec<usize> = Vec::new();
    let mut start = 0;
    for &end in ends {
        for (pos, &i) in order.iter().enumerate().take(end).skip(start) {
            let (p, t) = (&payments[i].payment, Rules::event_time(payments[i].ts, clock.now));
            let [kc, ku, kd] = key_of[pos];
            let (mut card, mut customer, mut device) =
                (take_card(&mut states[kc].state), take_customer(&mut states[ku].state), take_device(&mut states[kd].state));
            verdicts.push(rules.verdict(p, t, Keys { card: &card, customer: &customer, device: &device }));
            rules.record(p, t, KeysMut { card: &mut card, customer: &mut customer, device: &mut device });
            states[kc].state = AnyState::Card(card);
            states[ku].state = AnyState::Customer(customer);
            states[kd].state = AnyState::Device(device);
            for k in [kc, ku, kd] {
                if !touched.contains(&k) {
                    touched.push(k);
                }
            }
        }
        let mut txn = Vec::with_capacity(touched.len());
        for k in touched.drain(..) {
            let read = states[k].version;
            let next = if read == 0 { clock.fresh } else { read + 1 };
            txn.push((k, read, next, states[k].state.clone()));
            states[k].version = next;
        }
        writes.push(txn);
        start = end;
    }
    (verdicts, writes)
}

/// How a batch's next round goes, after what the last one met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// The batch's first round.
    First,
    /// After another writer's move: the `n`th pause (from 0) first.
    Paused(u32),
    /// After a move the cache resolved, or redelivered payments only.
    AtOnce,
    /// Out of rounds of that kind: the pending payments go back to their
    /// source; the movers named in the log.
    GiveBack(&'static str),
}

/// The rounds one batch has gone, by kind: each kind has its own budget
/// ([`MAX_ROUNDS`] counting the first, [`MAX_ROUNDS_AT_ONCE`]), so a batch
/// goes at most `MAX_ROUNDS + MAX_ROUNDS_AT_ONCE` rounds in all.
#[derive(Debug, Default)]
struct Rounds {
    paused: u32,
    at_once: u32,
}

impl Rounds {
    /// The next round, after the last one's conflict: `None` before the
    /// first round, otherwise whether another writer moved a key.
    fn next(&mut self, conflict: Option<bool>) -> Round {
        match conflict {
            None => Round::First,
            Some(true) => {
                self.paused += 1;
                if self.paused >= MAX_ROUNDS { Round::GiveBack("other writers") } else { Round::Paused(self.paused - 1) }
            }
            Some(false) => {
                self.at_once += 1;
                if self.at_once > MAX_ROUNDS_AT_ONCE { Round::GiveBack("this process's batches") } else { Round::AtOnce }
            }
        }
    }
}

/// Packs payments (their keys `key_of` and aggregate rows `rows`, in
/// arrival order) into transactions of at most `max_items` items (the
/// payments, their distinct keys and rows): the end of each, as a position.
fn pack(key_of: &[[usize; 3]], rows: &[WindowId], max_items: usize) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut keys: HashSet<usize> = HashSet::new();
    let mut row_set: HashSet<&WindowId> = HashSet::new();
    let mut count = 0;
    for pos in 0..key_of.len() {
        let new_keys = key_of[pos].iter().filter(|k| !keys.contains(k)).collect::<HashSet<_>>().len();
        let new_row = usize::from(!row_set.contains(&rows[pos]));
        if count > 0 && count + 1 + keys.len() + new_keys + row_set.len() + new_row > max_items {
            ends.push(pos);
            keys.clear();
            row_set.clear();
            count = 0;
        }
        keys.extend(key_of[pos]);
        row_set.insert(&rows[pos]);
        count += 1;
    }
    if count > 0 {
        ends.push(key_of.len());
    }
    ends
}

/// Reads `keys` (strongly consistent), counting them, and caches what was
/// read (a durable version: a later round of this batch, or another
/// batch, need not read it again). None when the read failed (counted and
/// logged by the sink): the caller gives its payments back.
async fn read_and_cache(
    sink: &DynamoDbSink,
    cache: &FraudStateCache,
    keys: &[StateKey],
    rules: &Rules,
    traffic: &mut StateTraffic,
) -> Option<Vec<Versioned>> {
    traffic.reads += keys.len() as u64;
    let read = sink.read_fraud_states(keys, rules, &mut traffic.read_calls).await.ok()?;
    for (k, v) in keys.iter().zip(&read) {
        cache.put(k, v.clone());
    }
    Some(read)
}

/// Scores and writes `payments` (in arrival order) against the shared
/// state; returns for each its decision (when scored and written) and the
/// outcome of its write, in order.
#[allow(clippy::too_many_arguments)]
pub async fn apply_payments(
    sink: &DynamoDbSink,
    payments: Vec<Unscored>,
    rules: &Arc<Rules>,
    cache: &FraudStateCache,
    pool: &CpuPool,
    decided_at: &str,
    traffic: &mut StateTraffic,
) -> (Vec<Option<DecidedPayment>>, Vec<WriteOutcome>) {
    let n = payments.len();
    let mut outcomes = vec![WriteOutcome::Failed; n];
    let mut decided: Vec<Option<DecidedPayment>> = vec![None; n];
    let payments = Arc::new(payments);
    let copies = Copies::of(&payments, |u| u.payment.payment_id.as_str());
    let mut pending: Vec<usize> = copies.firsts.clone();
    let history_secs = rules.config().history_secs;
    // After a conflict: whether it was another writer's (pause first).
    let mut pause: Option<bool> = None;
    let mut rounds = Rounds::default();
    loop {
        let go_on = match rounds.next(pause) {
            Round::First => true,
            // Another writer moved a key: back off (jittered, so that
            // instances racing for a hot key do not meet again at once),
            // unless shutting down.
            Round::Paused(n) => sink.pause_between_rounds(n).await,
            // A key only this process's other batches moved, which the
            // cache holds, or redelivered payments: go on at once.
            Round::AtOnce => !sink.stop_retrying.is_cancelled(),
            Round::GiveBack(movers) => return given_back(&pending, movers, &copies, outcomes, decided),
        };
        if !go_on {
            return (decided, copies_settled(&copies, outcomes));
        }
        // The round's keys, each once, and each payment's three.
        let mut keys: Vec<StateKey> = Vec::new();
        let mut index: HashMap<StateKey, usize> = HashMap::new();
        let mut key_of: Vec<[usize; 3]> = Vec::with_capacity(pending.len());
        for &i in &pending {
            key_of.push(keys_of(&payments[i].payment).map(|k| {
                *index.entry(k.clone()).or_insert_with(|| {
                    keys.push(k);
                    keys.len() - 1
                })
            }));
        }
        // Keys neither cached nor claimed are read first, outside the
        // claims (their reads would hold every batch behind this one).
        let unknown = cache.unknown(&keys);
        let prefetched = unknown.len();
        if !unknown.is_empty() && read_and_cache(sink, cache, &unknown, rules, traffic).await.is_none() {
            return (decided, copies_settled(&copies, outcomes));
        }
        // The round claims its keys, after the batches of this process
        // still scoring any of them (their versions are not known yet);
        // then each key at its latest version: one another batch is
        // writing (this round's transactions send once it landed), or else
        // the cached one.
        let (mut registered, before) = cache.claim(&keys);
        if !before.is_empty() {
            traffic.queued += 1;
            scored(&before, LANDING_WAIT).await;
        }
        let writer = Some(registered.writer);
        let mut on: Vec<Option<watch::Receiver<bool>>> = Vec::with_capacity(keys.len());
        let mut states: Vec<Option<Versioned>> = keys
            .iter()
            .map(|k| {
                let (state, landing) = cache.latest(k, writer);
                on.push(landing);
                state
            })
            .collect();
        let missing: Vec<usize> = (0..keys.len()).filter(|&k| states[k].is_none()).collect();
        traffic.hits += (keys.len() - missing.len()).saturating_sub(prefetched) as u64;
        if !missing.is_empty() {
            let wanted: Vec<StateKey> = missing.iter().map(|&k| keys[k].clone()).collect();
            let Some(read) = read_and_cache(sink, cache, &wanted, rules, traffic).await else {
                return (decided, copies_settled(&copies, outcomes));
            };
            for (&k, v) in missing.iter().zip(read) {
                states[k] = Some(v);
            }
        }
        // Every key was cached or read; were one not, version 0 would make
        // its write conditional on no item, and a conflict would read it.
        let states: Vec<Versioned> =
            states.into_iter().zip(&keys).map(|(s, k)| s.unwrap_or_else(|| Versioned { version: 0, state: k.empty() })).collect();
        let rows: Vec<WindowId> = pending.iter().map(|&i| WindowId::of(&payments[i].store, payments[i].ts)).collect();
        let ends = pack(&key_of, &rows, sink.config.max_transaction_items);

        let job = {
            let (rules, payments, order, key_of, ends) =
                (Arc::clone(rules), Arc::clone(&payments), pending.clone(), key_of.clone(), ends.clone());
            let clock = RoundClock::now();
            move || score_round(&rules, &payments, &order, &key_of, states, &ends, clock)
        };
        let Ok((verdicts, writes)) = pool.run(job).await else {
            warn!(payments = pending.len(), "Scoring payments panicked; they go back to their source");
            return (decided, copies_settled(&copies, outcomes));
        };
        // Batches starting while these are under way score against them.
        let keys_ = &keys;
        let on_ = &on;
        registered.register(
            writes.iter().enumerate().flat_map(|(t, txn)| {
                txn.iter().map(move |(k, _, next, state)| {
                    (keys_[*k].clone(), Versioned { version: *next, state: state.clone() }, t, on_[*k].clone())
                })
            }),
            writes.len(),
        );
        let mut again: Vec<usize> = Vec::new();
        let mut start = 0;
        for (t, (&end, txn)) in ends.iter().zip(&writes).enumerate() {
            let waits: Vec<watch::Receiver<bool>> = txn.iter().filter_map(|(k, ..)| on[*k].clone()).collect();
            if !waits.is_empty() {
                traffic.chained += 1;
                if !landed(&waits, LANDING_WAIT).await {
                    // Scored against another batch's write that did not
                    // land: this transaction and every later one again,
                    // from what did; after a pause if another writer moved
                    // one of those keys (that batch found it so).
                    traffic.unlanded += 1;
                    let moved = txn.iter().any(|(k, ..)| on[*k].is_some() && cache.is_moved(&keys[*k]));
                    pause = Some(moved);
                    again.extend(
                        (start..pending.len()).map(|pos| pending[pos]).filter(|&i| outcomes[i] != WriteOutcome::Duplicate),
                    );
                    break;
                }
            }
            let members: Vec<usize> = (start..end).collect();
            let scored: Vec<DecidedPayment> =
                members.iter().map(|&pos| decided_payment(&payments[pending[pos]], &verdicts[pos], decided_at)).collect();
            let refs: Vec<&DecidedPayment> = scored.iter().collect();
            let state_writes: Vec<StateWrite<'_>> =
                txn.iter().map(|(k, read, next, state)| StateWrite { key: &keys[*k], read: *read, next: *next, state }).collect();
            let mut attempt = 0;
            let result = loop {
                match sink.write_scored(&refs, &state_writes, history_secs, &mut attempt).await {
                    Attempt::Again => continue,
                    other => break other,
                }
            };
            match result {
                Attempt::Committed => {
                    traffic.writes += txn.len() as u64;
                    for (k, _, next, state) in txn {
                        cache.put(&keys[*k], Versioned { version: *next, state: state.clone() });
                    }
                    registered.committed(t);
                    for (&pos, dp) in members.iter().zip(scored) {
                        outcomes[pending[pos]] = WriteOutcome::Written;
                        decided[pending[pos]] = Some(dp);
                    }
                }
                Attempt::Conditions(failed) => {
                    let mut moved: Vec<(&StateKey, u64)> = Vec::new();
                    for f in failed {
                        if let Some(&pos) = members.get(f) {
                            // Written before: its first decision stands.
                            outcomes[pending[pos]] = WriteOutcome::Duplicate;
                        } else if let Some((k, read, _, _)) = txn.get(f - members.len()) {
                            moved.push((&keys[*k], *read));
                        }
                    }
                    // Only redelivered payments: nothing to wait for.
                    let mut elsewhere = false;
                    if !moved.is_empty() {
                        traffic.conflicts += 1;
                        elsewhere = settle_moved(cache, moved);
                        traffic.conflicts_from_cache += u64::from(!elsewhere);
                    }
                    pause = Some(elsewhere);
                    // This transaction's others and every later one were
                    // scored against states that did not land: again.
                    again.extend(
                        (start..pending.len()).map(|pos| pending[pos]).filter(|&i| outcomes[i] != WriteOutcome::Duplicate),
                    );
                    break;
                }
                Attempt::GiveUp | Attempt::Again => return (decided, copies_settled(&copies, outcomes)),
            }
            start = end;
        }
        if again.is_empty() {
            return (decided, copies_settled(&copies, outcomes));
        }
        pending = again;
    }
}

/// Out of rounds: the pending payments go back to their source.
fn given_back(
    pending: &[usize],
    movers: &str,
    copies: &Copies,
    outcomes: Vec<WriteOutcome>,
    decided: Vec<Option<DecidedPayment>>,
) -> (Vec<Option<DecidedPayment>>, Vec<WriteOutcome>) {
    warn!(
        payments = pending.len(),
        movers, "Fraud state kept moving under concurrent writers; the payments go back to their source"
    );
    (decided, copies_settled(copies, outcomes))
}

/// The outcomes with each in-batch copy of a payment settled by its first.
fn copies_settled(copies: &Copies, mut outcomes: Vec<WriteOutcome>) -> Vec<WriteOutcome> {
    copies.settle(&mut outcomes);
    outcomes
}

#[cfg(test)]
mod tests {
    use crate::sinks::dynamodb::refusing_sink;
    use pipeline::event::Card;
    use pipeline::fraud::{FraudConfig, FraudEngine, Rule};
    use time::OffsetDateTime;

    use super::*;

    fn unscored(id: &str, customer: &str, fp: &str, device: &str, secs: i64) -> Unscored {
        let ts = OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).expect("ts");
        Unscored {
            id: format!("e-{id}"),
            ts,
            ts_raw: "2027-01-15T08:00:00Z".into(),
            store: "s1".into(),
            payment: PaymentRequested {
                payment_id: id.into(),
                order_id: format!("o-{id}"),
                customer_id: customer.into(),
                amount_cents: 500,
                currency: "USD".into(),
                card: Card { bin: "411111".into(), last4: "0000".into(), fingerprint: fp.into() },
                ip: "198.51.100.7".parse().expect("ip"),
                device_id: device.into(),
                billing_country: "US".into(),
            },
        }
    }

    fn rules() -> Rules {
        Rules::new(FraudConfig { work_factor: 0, ..FraudConfig::default() }).expect("valid config")
    }

    /// The round's keys and each payment's three, as `apply_payments` builds them.
    fn index(payments: &[Unscored]) -> (Vec<StateKey>, Vec<[usize; 3]>) {
        let mut keys: Vec<StateKey> = Vec::new();
        let key_of = payments
            .iter()
            .map(|u| {
                keys_of(&u.payment).map(|k| match keys.iter().position(|x| *x == k) {
                    Some(i) => i,
                    None => {
                        keys.push(k);
                        keys.len() - 1
                    }
                })
            })
            .collect();
        (keys, key_of)
    }

    #[test]
    fn a_round_scores_as_the_in_process_engine_does_and_chains_versions_across_transactions() {
        // A card-testing burst: one card, a new customer and device each.
        let payments: Vec<Unscored> =
            (0..12).map(|i| unscored(&format!("p{i}"), &format!("c{i}"), "fp", &format!("d{i}"), 2 * i)).collect();
        let (keys, key_of) = index(&payments);
        let r = rules();
        let card = keys.iter().position(|k| *k == StateKey::Card("fp".into())).expect("card key");
        // The card was written 3 times before by someone: version 3, empty.
        let states: Vec<Versioned> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Versioned { version: if i == card { 3 } else { 0 }, state: k.empty() })
            .collect();
        let order: Vec<usize> = (0..payments.len()).collect();
        let ends = [5, 12];
        let clock = RoundClock { now: OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("now"), fresh: 1_000 };
        let (verdicts, writes) = score_round(&r, &payments, &order, &key_of, states, &ends, clock);

        let mut engine = FraudEngine::new(r.config().clone()).expect("engine");
        let want: Vec<Verdict> = payments.iter().map(|u| engine.score(&u.payment, u.ts, u.ts)).collect();
        assert_eq!(verdicts, want);
        assert_eq!(verdicts.iter().filter(|v| v.reasons.contains(&Rule::Velocity)).count(), 7);

        // Each transaction writes each key it touched once: the card in
        // both, at the version the one before left it.
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].len(), 1 + 2 * 5);
        assert_eq!(writes[1].len(), 1 + 2 * 7);
        let card_writes: Vec<(u64, u64, usize)> =
            writes.iter().flatten().filter(|(k, ..)| *k == card).map(|(_, read, next, s)| (*read, *next, s.len())).collect();
        assert_eq!(
            card_writes,
            vec![(3, 4, 5), (4, 5, 6)],
            "(version read, written, entries after): capped at velocity_max_per_card + 1"
        );
        // A key with no item is created at the round's fresh version, not 1:
        // an expired item's versions are not used again.
        assert!(writes.iter().flatten().filter(|(k, ..)| *k != card).all(|(_, read, next, _)| (*read, *next) == (0, 1_000)));
    }

    /// Rounds a batch goes after the first, with `conflict` after each,
    /// before it is given back: (the rounds' kinds, the movers named).
    fn rounds_until_given_back(mut conflict: impl FnMut(usize) -> bool) -> (Vec<Round>, &'static str) {
        let mut rounds = Rounds::default();
        assert_eq!(rounds.next(None), Round::First);
        let mut went = Vec::new();
        loop {
            match rounds.next(Some(conflict(went.len()))) {
                Round::GiveBack(movers) => return (went, movers),
                Round::First => panic!("a first round after a conflict"),
                round => went.push(round),
            }
            assert!(went.len() <= (MAX_ROUNDS + MAX_ROUNDS_AT_ONCE) as usize, "unbounded: {went:?}");
        }
    }

    #[test]
    fn a_batch_goes_round_at_most_its_budget_of_each_kind_and_then_is_given_back() {
        // Other writers only: the first round and MAX_ROUNDS - 1 after a
        // pause each, the pauses growing (the backoff's round).
        let (went, movers) = rounds_until_given_back(|_| true);
        assert_eq!(went, (0..MAX_ROUNDS - 1).map(Round::Paused).collect::<Vec<_>>());
        assert_eq!(movers, "other writers");
        // The process's own batches only: MAX_ROUNDS_AT_ONCE at once.
        let (went, movers) = rounds_until_given_back(|_| false);
        assert_eq!(went, vec![Round::AtOnce; MAX_ROUNDS_AT_ONCE as usize]);
        assert_eq!(movers, "this process's batches");
        // Both, one other writer's move every fourth round: each kind
        // spends its own budget, and the pauses grow one by one.
        let (went, movers) = rounds_until_given_back(|i| i % 4 == 0);
        let paused: Vec<Round> = went.iter().copied().filter(|r| matches!(r, Round::Paused(_))).collect();
        assert_eq!(paused, (0..paused.len() as u32).map(Round::Paused).collect::<Vec<_>>());
        let at_once = went.iter().filter(|r| **r == Round::AtOnce).count();
        // The eighth other writer's move ends it, the at-once rounds
        // between the moves (three each) not counted against the pauses.
        let pauses = MAX_ROUNDS as usize - 1;
        assert_eq!((paused.len(), at_once, movers), (pauses, 3 * pauses, "other writers"));
        // One other writer's move every 40 rounds: the at-once budget ends it.
        let (went, movers) = rounds_until_given_back(|i| i % 40 == 0);
        assert_eq!(went.iter().filter(|r| **r == Round::AtOnce).count(), MAX_ROUNDS_AT_ONCE as usize);
        assert_eq!((went[0], movers), (Round::Paused(0), "this process's batches"));
    }

    #[test]
    fn transactions_hold_at_most_the_item_limit_counting_keys_and_rows_once() {
        let payments: Vec<Unscored> =
            (0..40).map(|i| unscored(&format!("p{i}"), &format!("c{i}"), "fp", &format!("d{}", i % 4), 2 * i)).collect();
        let (_, key_of) = index(&payments);
        let rows: Vec<WindowId> = payments.iter().map(|u| WindowId::of(&u.store, u.ts)).collect();
        for max in [5, 10, 25, 100] {
            let ends = pack(&key_of, &rows, max);
            assert_eq!(ends.last(), Some(&40), "every payment is packed");
            let mut start = 0;
            for &end in &ends {
                assert!(end > start);
                let keys: HashSet<usize> = key_of[start..end].iter().flatten().copied().collect();
                let row_set: HashSet<&WindowId> = rows[start..end].iter().collect();
                let items = (end - start) + keys.len() + row_set.len();
                assert!(items <= max, "{items} items with a limit of {max}");
                // Full: the next payment would not have fit.
                if end < 40 {
                    let mut keys = keys;
                    keys.extend(key_of[end]);
                    let mut row_set = row_set;
                    row_set.insert(&rows[end]);
                    assert!(end - start + 1 + keys.len() + row_set.len() > max, "packed short at {end} with {max}");
                }
                start = end;
            }
        }
    }

    #[tokio::test]
    async fn a_key_another_batch_is_writing_is_scored_at_that_version_and_waits_for_it_to_land() {
        let c = FraudStateCache::new(10, None);
        let key = |i: usize| StateKey::Card(format!("fp{i}"));
        let at = |v: u64| Versioned { version: v, state: key(0).empty() };
        c.put(&key(1), at(3));
        // Nothing written: the cached version, nothing to wait for.
        assert!(matches!(c.latest(&key(1), None), (Some(v), None) if v.version == 3));
        let first = c.writing(vec![(key(1), at(4), 0), (key(2), at(7), 1)], 2);
        let (v1, on1) = c.latest(&key(1), None);
        let (v2, on2) = c.latest(&key(2), None);
        assert_eq!((v1.map(|v| v.version), v2.map(|v| v.version)), (Some(4), Some(7)), "the versions being written");
        let (on1, on2) = (on1.expect("a signal"), on2.expect("a signal"));
        // Not landed yet: a batch scored against it waits.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), landed(std::slice::from_ref(&on1), Duration::from_secs(5)))
                .await
                .is_err()
        );
        first.committed(0);
        assert!(landed(std::slice::from_ref(&on1), Duration::from_secs(5)).await, "its transaction committed");
        // A later registration of the same key is the latest, and outlives
        // the first's withdrawal.
        let second = c.writing(vec![(key(1), at(5), 0)], 1);
        drop(first);
        assert!(!landed(&[on1.clone(), on2.clone()], Duration::from_secs(5)).await, "the second transaction never committed");
        assert!(landed(&[on1], Duration::from_secs(5)).await, "what landed stays landed");
        let (v, on_second) = c.latest(&key(1), None);
        assert_eq!(v.map(|v| v.version), Some(5));
        let on_second = on_second.expect("a signal");
        // One that did not land ends the wait at once, whatever waits
        // before it; one that does not land in time counts as not landed.
        let started = std::time::Instant::now();
        assert!(!landed(&[on_second.clone(), on2], Duration::from_secs(5)).await);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(!landed(&[on_second], Duration::from_millis(50)).await);
        assert!(matches!(c.latest(&key(2), None), (None, None)), "withdrawn: read it");
        assert_eq!(c.writing_len(), 1);
        // Cached at the version being written, or newer: the cache, no wait.
        c.put(&key(1), at(5));
        assert!(matches!(c.latest(&key(1), None), (Some(v), None) if v.version == 5));
        drop(second);
        assert_eq!(c.writing_len(), 0);
        // Found moved past a version being written: read, no wait.
        let third = c.writing(vec![(key(3), at(2), 0)], 1);
        assert!(!c.newer_than(&key(3), 2));
        assert!(matches!(c.latest(&key(3), None), (None, None)));
        drop(third);
    }

    #[tokio::test]
    async fn a_round_claiming_a_key_another_batch_is_scoring_waits_for_its_writes_and_scores_after_them() {
        let c = FraudStateCache::new(10, None);
        let key = |i: usize| StateKey::Card(format!("fp{i}"));
        let at = |v: u64| Versioned { version: v, state: key(0).empty() };
        c.put(&key(1), at(3));
        let (mut first, before) = c.claim(&[key(1)]);
        assert!(before.is_empty(), "nothing scoring before it");
        let (second, before) = c.claim(&[key(1), key(2)]);
        assert_eq!(before.len(), 1, "the first's scoring");
        // Still scoring: its version is not known, so the second waits
        // (here, in vain for 50 ms) and meanwhile sees only the cache.
        let started = std::time::Instant::now();
        scored(&before, Duration::from_millis(50)).await;
        assert!(started.elapsed() >= Duration::from_millis(40), "{:?}", started.elapsed());
        assert!(matches!(c.latest(&key(1), Some(second.writer)), (Some(v), None) if v.version == 3));
        first.register(vec![(key(1), at(4), 0, None)], 1);
        let started = std::time::Instant::now();
        scored(&before, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1), "registered: no more wait");
        // The second scores at the first's version, and its own claim is
        // not what it scores against.
        let (v, on) = c.latest(&key(1), Some(second.writer));
        assert_eq!(v.map(|v| v.version), Some(4));
        assert!(on.is_some());
        // A third claims after both: it waits for the second (the last
        // claim, still scoring), not the first (written).
        let (third, before) = c.claim(&[key(1)]);
        assert_eq!(before.len(), 1);
        // The second's round ends without writes (a failed read): the
        // third goes on, and scores at the first's version.
        drop(second);
        let started = std::time::Instant::now();
        scored(&before, Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1), "gave up: no more wait");
        assert!(matches!(c.latest(&key(1), Some(third.writer)), (Some(v), Some(_)) if v.version == 4));
        drop((first, third));
        assert_eq!(c.writing_len(), 0, "every claim withdrawn");
    }

    #[test]
    fn a_round_scores_at_the_highest_version_being_written_and_never_on_one_built_on_a_write_that_did_not_land() {
        let c = FraudStateCache::new(10, None);
        let key = StateKey::Card("fp".into());
        let at = |v: u64| Versioned { version: v, state: key.empty() };
        let first = c.writing(vec![(key.clone(), at(4), 0)], 1);
        let (_, on_first) = c.latest(&key, None);
        // Claimed in one order, registered with versions in the other.
        let (mut second, _) = c.claim(std::slice::from_ref(&key));
        let (mut third, _) = c.claim(std::slice::from_ref(&key));
        third.register(vec![(key.clone(), at(5), 0, on_first.clone())], 1);
        second.register(vec![(key.clone(), at(6), 0, on_first)], 1);
        assert_eq!(c.latest(&key, None).0.map(|v| v.version), Some(6), "the highest, not the last claimed");
        // The first's write does not land: what was built on it will not
        // either, and the cache is what is left.
        drop(first);
        assert!(matches!(c.latest(&key, None), (None, None)));
        drop((second, third));
    }

    #[test]
    fn the_cache_is_bounded_and_never_goes_back_a_version() {
        let gauge = Gauge::default();
        let c = FraudStateCache::new(3, Some(gauge.clone()));
        let key = |i: usize| StateKey::Card(format!("fp{i}"));
        let at = |v: u64| Versioned { version: v, state: key(0).empty() };
        for i in 0..10 {
            c.put(&key(i), at(1));
        }
        assert_eq!((c.len(), gauge.get()), (3, 3));
        assert!(c.get(&key(9)).is_some() && c.get(&key(6)).is_none());
        c.put(&key(9), at(5));
        c.put(&key(9), at(4));
        assert_eq!(c.get(&key(9)).map(|v| v.version), Some(5), "an older version does not replace a newer");
        assert!(c.newer_than(&key(9), 4), "kept");
        assert!(!c.newer_than(&key(9), 5), "not newer: marked moved");
        assert_eq!((c.get(&key(9)), gauge.get()), (None, 3), "held as a mark until dropped as the oldest");
        // A read or a write of a version the key moved past, ending late,
        // is not cached; a newer one is.
        c.put(&key(9), at(5));
        assert_eq!(c.get(&key(9)), None, "a late read of the version found moved");
        c.put(&key(9), at(6));
        assert_eq!(c.get(&key(9)).map(|v| v.version), Some(6));
        // A key not held is marked at the version the write read.
        assert!(!c.newer_than(&key(7), 3));
        c.put(&key(7), at(3));
        assert_eq!(c.get(&key(7)), None);
        for i in 0..1000 {
            c.put(&key(i % 5), at(i as u64 + 10));
        }
        assert!(c.lock().fifo.len() <= 2 * 3 + 64 + 1);
    }

    #[test]
    fn a_key_the_cache_holds_newer_is_scored_from_it_and_only_another_writer_s_move_reads_and_pauses() {
        let c = FraudStateCache::new(100, None);
        let key = |i: usize| StateKey::Card(format!("fp{i}"));
        let at = |v: u64| Versioned { version: v, state: key(0).empty() };
        // Key 1: another batch of this process wrote it at 5 after this
        // batch scored against 4. Key 2: cached at the version the write
        // read, so someone else moved it. Key 3: not cached at all.
        c.put(&key(1), at(5));
        c.put(&key(2), at(4));
        // A key the next round finds in the cache is not read; one it does
        // not find is.
        assert!(!settle_moved(&c, [(&key(1), 4)]), "moved here: no pause");
        assert_eq!(c.get(&key(1)).map(|v| v.version), Some(5), "no read: scored against the newer version");

        assert!(settle_moved(&c, [(&key(1), 4), (&key(2), 4), (&key(3), 0)]), "moved elsewhere: pause");
        assert_eq!((c.get(&key(2)), c.get(&key(3))), (None, None), "both read");
        assert_eq!(c.get(&key(1)).map(|v| v.version), Some(5));
        // The newer version itself moved on elsewhere: read it.
        assert!(settle_moved(&c, [(&key(1), 5)]));
        assert!(c.get(&key(1)).is_none());
    }

    #[tokio::test]
    async fn a_failed_read_or_write_gives_every_payment_back_and_caches_only_what_was_durable() {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let pool = CpuPool::new(1, metrics).expect("pool");
        let cache = FraudStateCache::new(100, None);
        let r = Arc::new(rules());
        let payments =
            vec![unscored("p1", "c1", "fp", "d1", 0), unscored("p2", "c2", "fp", "d2", 1), unscored("p1", "c1", "fp", "d1", 0)];
        let mut traffic = StateTraffic::default();
        let (decided, outcomes) =
            apply_payments(&refusing_sink(), payments.clone(), &r, &cache, &pool, "now", &mut traffic).await;
        assert_eq!(outcomes, vec![WriteOutcome::Failed; 3]);
        assert!(decided.iter().all(Option::is_none));
        assert_eq!((traffic.reads, traffic.hits, traffic.writes), (5, 0, 0), "card, two customers, two devices");
        // With every key cached, the write is what fails.
        for k in payments.iter().flat_map(|u| keys_of(&u.payment)) {
            cache.put(&k, Versioned { version: 1, state: k.empty() });
        }
        let mut traffic = StateTraffic::default();
        let (_, outcomes) = apply_payments(&refusing_sink(), payments, &r, &cache, &pool, "now", &mut traffic).await;
        assert_eq!(outcomes, vec![WriteOutcome::Failed; 3]);
        assert_eq!((traffic.reads, traffic.hits, traffic.writes), (0, 5, 0));
        assert!(
            cache.get(&StateKey::Card("fp".into())).is_some_and(|v| v.version == 1 && v.state.is_empty()),
            "not the unwritten state"
        );
    }
}
