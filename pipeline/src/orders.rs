//! The order state machine of the contract, and what applying an order
//! event to an order does.
//!
//! Owns: which status may follow which; whether an event is applied, a
//! repeat (same event id, a no-op) or rejected; the history entry and the
//! counter deltas an applied event causes. Must not: store orders (the
//! daemon's `cafe-orders` sink does) or read anything but its arguments.

use std::sync::Arc;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::event::{Body, Event, RejectReason, Rejection};
use crate::window::{Counters, WindowId};

/// The life cycle of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Created by `order.placed`.
    Placed,
    /// Accepted by the store.
    Confirmed,
    /// Being made.
    Preparing,
    /// Ready for pick-up.
    Ready,
    /// Handed over; final.
    Completed,
    /// Cancelled; final.
    Cancelled,
}

impl OrderStatus {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Preparing => "preparing",
            OrderStatus::Ready => "ready",
            OrderStatus::Completed => "completed",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// Whether an order in `self` may move to `next`.
    pub fn may_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Placed, Confirmed | Cancelled)
                | (Confirmed, Preparing | Cancelled)
                | (Preparing, Ready | Cancelled)
                | (Ready, Completed)
        )
    }
}

impl OrderStatus {
    /// Completed or cancelled: no event moves it again.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Completed | OrderStatus::Cancelled)
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<OrderStatus> {
        use OrderStatus::*;
        [Placed, Confirmed, Preparing, Ready, Completed, Cancelled].into_iter().find(|x| x.name() == s)
    }
}

/// Where in a Kinesis shard an event was read: `stream:shardId/sequence[/sub]`
/// (`sub`: its place in a KPL aggregate record). Positions of one shard of
/// one stream are totally ordered; positions of different shards or
/// streams are not compared. The shard's name (with its stream's) is
/// shared by every position of one shard's reader
/// ([`ShardPos::of_record`], interned: see [`ShardAt`]) or parsed with one
/// [`Names`] (an order's history read from the table), and by every clone,
/// and so is the sequence number: a record's position and the history
/// entry made from it hold one allocation between them, the sequence
/// number's, and a clone of a reader's position counts one reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPos {
    /// The shard, by its stream's name and its own.
    pub at: ShardAt,
    /// Sequence number: decimal digits, no leading zero (up to 129 digits,
    /// so it is compared as text of its length, not parsed). Shared by
    /// clones, as the names are.
    pub sequence: Arc<str>,
    /// Sub-sequence within an aggregate record (0 when not aggregated).
    pub sub: u32,
}

/// A shard of a stream, by name: one allocation for both names, shared by
/// the positions read from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShardName {
    /// The stream's name (every stream has a `shardId-000000000000`).
    pub stream: Box<str>,
    /// Shard id.
    pub shard: Box<str>,
}

/// A position's shard name: interned, the process's one copy of the name
/// of a shard its readers read, kept for the process's life and copied
/// with no count; or shared by reference count (a name allocated apart,
/// read from the table and none of this process's readers', or past the
/// interned bound). Every position of a reader holds its shard's name, and
/// its positions are made on a runtime worker and freed on the CPU pool:
/// one count that both threads moved for every record (four atomic
/// operations an order event, on one cache line the two cores passed back
/// and forth) was most of the cost of making a record's position.
/// Compared by value (by address first).
#[derive(Debug, Clone)]
pub enum ShardAt {
    /// Interned ([`ShardName::interned`]).
    Interned(&'static ShardName),
    /// Allocated apart, shared by count.
    Shared(Arc<ShardName>),
}

impl std::ops::Deref for ShardAt {
    type Target = ShardName;

    fn deref(&self) -> &ShardName {
        match self {
            ShardAt::Interned(name) => name,
            ShardAt::Shared(name) => name,
        }
    }
}

impl PartialEq for ShardAt {
    fn eq(&self, other: &ShardAt) -> bool {
        self.same(other) || **self == **other
    }
}

impl Eq for ShardAt {}

impl ShardAt {
    /// Whether both are the one allocation (not only the same names).
    pub fn same(&self, other: &ShardAt) -> bool {
        std::ptr::eq::<ShardName>(&**self, &**other)
    }
}

/// The interned names: the shards this process's readers read (a stream's
/// shards over the process's life, its reshards' children included).
static INTERNED: std::sync::Mutex<Vec<&'static ShardName>> = std::sync::Mutex::new(Vec::new());

/// Most names interned, a bound on what they keep (about a megabyte at
/// the longest names): past it a reader's names are shared by count.
const MAX_INTERNED: usize = 4096;

impl ShardName {
    /// Shard `shard` of stream `stream`, allocated apart, to share.
    pub fn shared(stream: &str, shard: &str) -> ShardAt {
        ShardAt::Shared(Arc::new(ShardName { stream: stream.into(), shard: shard.into() }))
    }

    /// Whether it names shard `shard` of stream `stream`.
    fn is(&self, stream: &str, shard: &str) -> bool {
        *self.stream == *stream && *self.shard == *shard
    }

    /// Shard `shard` of stream `stream`, interned (its reader's): the one
    /// copy, made at the first call (past [`MAX_INTERNED`] names,
    /// allocated apart).
    pub fn interned(stream: &str, shard: &str) -> ShardAt {
        let mut interned = INTERNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(&known) = interned.iter().find(|n| n.is(stream, shard)) {
            return ShardAt::Interned(known);
        }
        if interned.len() >= MAX_INTERNED {
            return ShardName::shared(stream, shard);
        }
        let name: &'static ShardName = Box::leak(Box::new(ShardName { stream: stream.into(), shard: shard.into() }));
        interned.push(name);
        ShardAt::Interned(name)
    }

    /// The interned copy of the name, if a reader interned it.
    fn known(stream: &str, shard: &str) -> Option<ShardAt> {
        let interned = INTERNED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        interned.iter().find(|n| n.is(stream, shard)).map(|&n| ShardAt::Interned(n))
    }
}

impl ShardPos {
    /// Parses `stream:shardId/sequence[/sub]` (as stored in a history
    /// entry), or `shardId/sequence[/sub]` (a record's `position`) read from
    /// `stream`; `None` for anything else (an SQS message id has no `/`).
    /// Stream names cannot hold `:`.
    pub fn parse(s: &str, stream: Option<&str>) -> Option<ShardPos> {
        Self::parse_with(s, stream, &mut Names::default())
    }

    /// [`ShardPos::parse`], the stream and shard names taken from `names`
    /// when it holds them already (the positions of one batch share them).
    pub fn parse_with(s: &str, stream: Option<&str>, names: &mut Names) -> Option<ShardPos> {
        let (stream, rest) = match s.split_once(':') {
            Some((named, rest)) if !named.is_empty() => (named, rest),
            Some(_) => return None,
            None => (stream?, s),
        };
        let mut parts = rest.split('/');
        let shard = parts.next().filter(|p| !p.is_empty())?;
        let sequence = parts.next().filter(|p| is_sequence(p))?;
        let sub = match parts.next() {
            Some(sub) => sub.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(ShardPos { at: names.get(stream, shard), sequence: Arc::from(sequence), sub })
    }

    /// The position of a record read from shard `at` (the name a shard's
    /// reader shares between its records), as the reader has it:
    /// no text to parse. `None` for a sequence number that is not one
    /// (decimal digits, no leading zero), as [`ShardPos::parse`] gives for
    /// the record's text (of a shard id and a sequence number Kinesis
    /// sends: neither holds `/` or `:`). The sequence is shared, not copied.
    pub fn of_record(at: &ShardAt, sequence: &Arc<str>, sub: u32) -> Option<ShardPos> {
        is_sequence(sequence).then(|| ShardPos { at: at.clone(), sequence: Arc::clone(sequence), sub })
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.at.stream
    }

    /// The shard's id.
    pub fn shard(&self) -> &str {
        &self.at.shard
    }

    /// Whether `self` was read after `other` in the same shard of the same stream.
    pub fn is_after(&self, other: &ShardPos) -> bool {
        // (`ShardAt`'s `==` compares the addresses first.)
        self.at == other.at
            && (self.sequence.len(), &*self.sequence, self.sub) > (other.sequence.len(), &*other.sequence, other.sub)
    }
}

/// A Kinesis sequence number: decimal digits, no leading zero.
fn is_sequence(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s.len() == 1 || !s.starts_with('0'))
}

/// Shard names already allocated, for positions parsed from text to share
/// (an order's history read from the table): a handful, looked up in order;
/// a name a reader of this process interned is that copy.
#[derive(Debug, Default)]
pub struct Names(Vec<ShardAt>);

impl Names {
    /// Most names kept: past it a name is allocated for each position.
    const MAX: usize = 16;

    /// Shard `shard` of stream `stream`, shared.
    pub fn get(&mut self, stream: &str, shard: &str) -> ShardAt {
        if let Some(known) = self.0.iter().find(|known| known.is(stream, shard)) {
            return known.clone();
        }
        let new = ShardName::known(stream, shard).unwrap_or_else(|| ShardName::shared(stream, shard));
        if self.0.len() < Self::MAX {
            self.0.push(new.clone());
        }
        new
    }
}

impl ShardPos {
    /// `stream:shardId/sequence[/sub]`, as stored in a history entry (what
    /// `Display` writes), built in one allocation of its size.
    pub fn to_text(&self) -> String {
        let mut t = String::with_capacity(self.at.stream.len() + self.at.shard.len() + self.sequence.len() + 13);
        t.push_str(&self.at.stream);
        t.push(':');
        t.push_str(&self.at.shard);
        t.push('/');
        t.push_str(&self.sequence);
        if self.sub != 0 {
            t.push('/');
            t.push_str(&self.sub.to_string());
        }
        t
    }
}

impl std::fmt::Display for ShardPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// One entry of an order's audit trail (`history` in `cafe-orders`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The status the event set.
    pub status: OrderStatus,
    /// Its event time, as sent (the event's own copy, shared).
    pub ts: Arc<str>,
    /// Its event id: a repeat of this id is a no-op (shared as `ts` is).
    pub event_id: Arc<str>,
    /// Where the event was read, when it came from a shard: a replay of
    /// the shard is judged against the order as it was at each position.
    pub pos: Option<ShardPos>,
}

/// What is known of one order: the `cafe-orders` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderState {
    /// Store of the `order.placed`.
    pub store: String,
    /// Current status.
    pub status: OrderStatus,
    /// Order total.
    pub total_cents: u64,
    /// Sum of line quantities.
    pub item_count: u64,
    /// Every applied event, in order. Its length is the item's version.
    pub history: Vec<HistoryEntry>,
}

impl OrderState {
    /// Whether the event `id` was already applied.
    pub fn has_applied(&self, id: &str) -> bool {
        self.history.iter().any(|h| &*h.event_id == id)
    }

    /// The order as it was when only its first `entries` history entries
    /// had been applied (`None` before the first: it did not exist).
    pub fn as_of(&self, entries: usize) -> Option<OrderState> {
        let history = self.history[..entries.min(self.history.len())].to_vec();
        let status = history.last()?.status;
        Some(OrderState { status, history, ..self.clone() })
    }
}

/// The order id an order event is about, or `None` for other events.
pub fn order_id(event: &Event) -> Option<&str> {
    match &event.body {
        Body::OrderPlaced(p) => Some(&p.order_id),
        Body::OrderStatus(s) => Some(&s.order_id),
        _ => None,
    }
}

/// What applying one order event did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The state moved; these counters go to this aggregate row.
    Changed {
        /// The (store, minute) row of the event's time.
        window: WindowId,
        /// Counter deltas.
        counters: Counters,
        /// Its event time (for latency).
        event_time: OffsetDateTime,
    },
    /// The same event id was applied before: nothing changes.
    Repeat,
    /// The event is refused by the state machine.
    Rejected(Rejection),
}

/// Applies an order event that has no shard position (from a queue) to
/// `state`; see [`apply_at`].
pub fn apply(state: &mut Option<OrderState>, event: &Event) -> Applied {
    apply_at(state, event, None)
}

/// Applies an order event read at `pos` to `state` (`None`: the order does
/// not exist). Events that are not order events are rejected as
/// `unknown_type` for this function's purposes; callers route them
/// elsewhere first.
///
/// Replays give the first pass's answer. An event already in the history
/// is a repeat. An event that is not, read at a position of a shard before
/// an event of that shard the history holds, was judged on its first pass
/// against the order as it was then (events of a shard are applied in
/// order), and was rejected, or it would be in the history: it is judged
/// again against the history up to that later event, which gives the same
/// rejection, reason and detail, rather than against the order as it is
/// now (where `[cancelled X, placed X]` replayed would count a
/// cancellation of an order that was unknown when the cancellation came).
pub fn apply_at(state: &mut Option<OrderState>, event: &Event, pos: Option<&ShardPos>) -> Applied {
    if state.as_ref().is_some_and(|s| s.has_applied(&event.id)) {
        return Applied::Repeat;
    }
    if let (Some(pos), Some(current)) = (pos, state.as_ref())
        && let Some(cut) = current.history.iter().position(|h| h.pos.as_ref().is_some_and(|p| p.is_after(pos)))
    {
        let mut then = current.as_of(cut);
        return match apply_at(&mut then, event, None) {
            Applied::Rejected(r) => Applied::Rejected(r),
            // Not reachable from one shard's events (they are applied
            // in order); an order fed by several inputs at once can.
            Applied::Changed { .. } | Applied::Repeat => Applied::Rejected(Rejection::new(
                RejectReason::IllegalTransition,
                format!("order event {} arrived after later events of its shard were applied", event.id),
            )),
        };
    }
    let entry = |status| HistoryEntry { status, ts: event.ts_raw.clone(), event_id: event.id.clone(), pos: pos.cloned() };
    let window = WindowId::of(&event.store, event.ts);
    match &event.body {
        Body::OrderPlaced(p) => {
            if let Some(s) = state {
                return Applied::Rejected(Rejection::new(
                    RejectReason::IllegalTransition,
                    format!("order {} already exists with status {}", p.order_id, s.status.name()),
                ));
            }
            let counters = Counters {
                orders: 1,
                order_items: p.item_count() as i64,
                revenue_cents: p.total_cents as i64,
                ..Counters::default()
            };
            *state = Some(OrderState {
                store: event.store.clone(),
                status: OrderStatus::Placed,
                total_cents: p.total_cents,
                item_count: p.item_count(),
                history: vec![entry(OrderStatus::Placed)],
            });
            Applied::Changed { window, counters, event_time: event.ts }
        }
        Body::OrderStatus(c) => {
            let Some(s) = state else {
                return Applied::Rejected(Rejection::new(
                    RejectReason::UnknownOrder,
                    format!("order {} was never placed", c.order_id),
                ));
            };
            if !s.status.may_become(c.status) {
                return Applied::Rejected(Rejection::new(
                    RejectReason::IllegalTransition,
                    format!("order {} cannot go from {} to {}", c.order_id, s.status.name(), c.status.name()),
                ));
            }
            s.status = c.status;
            s.history.push(entry(c.status));
            let counters = Counters { orders_cancelled: i64::from(c.status == OrderStatus::Cancelled), ..Counters::default() };
            Applied::Changed { window, counters, event_time: event.ts }
        }
        other => Applied::Rejected(Rejection::new(
            RejectReason::UnknownType,
            format!("{} is not an order event", other.event_type().name()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;
    use crate::event::decode;

    /// A reader's names are interned: one copy whoever asks, which a
    /// position parsed from the table of that shard shares too; a name no
    /// reader interned is allocated apart, and equal names compare equal
    /// however they were made.
    #[test]
    fn a_reader_s_shard_names_are_one_copy_that_positions_read_from_the_table_share() {
        let reader = ShardName::interned("interned-orders", "shardId-000000000007");
        assert!(matches!(reader, ShardAt::Interned(_)));
        assert!(reader.same(&ShardName::interned("interned-orders", "shardId-000000000007")), "one copy");
        assert!(!reader.same(&ShardName::interned("interned-orders", "shardId-000000000008")));
        let read = ShardPos::parse("shardId-000000000007/4959", Some("interned-orders")).expect("read back");
        assert!(read.at.same(&reader), "a position read back shares the reader's copy");
        let apart = ShardName::shared("interned-orders", "shardId-000000000007");
        assert!(matches!(apart, ShardAt::Shared(_)) && !apart.same(&reader) && apart == reader);
        let of_record = ShardPos::of_record(&reader, &Arc::from("4960"), 0).expect("a record's");
        assert!(of_record.is_after(&read) && of_record.at.same(&reader));
        let unknown = ShardPos::parse("shardId-000000000009/4959", Some("interned-orders")).expect("read back");
        assert!(matches!(unknown.at, ShardAt::Shared(_)), "what no reader interned is not interned by reading it");
    }

    #[test]
    fn positions_parsed_with_one_set_of_names_share_their_stream_and_shard() {
        let mut names = Names::default();
        let a = ShardPos::parse_with("shardId-000000000001/4959", Some("orders"), &mut names).expect("a");
        let b = ShardPos::parse_with("shardId-000000000001/4960/3", Some("orders"), &mut names).expect("b");
        let c = ShardPos::parse_with("other:shardId-000000000002/7", None, &mut names).expect("c");
        assert!(a.at.same(&b.at));
        assert!(!a.at.same(&c.at) && (c.stream(), c.shard()) == ("other", "shardId-000000000002"));
        assert!(a.at.same(&a.clone().at), "a clone shares them too");
        assert!(Arc::ptr_eq(&a.sequence, &a.clone().sequence), "and the sequence number");
        assert!(b.is_after(&a) && !a.is_after(&b) && !c.is_after(&a));
        // Names allocated apart compare by value: the same shard of the
        // same stream is ordered, the same shard id of another stream not.
        let later = ShardPos::parse("shardId-000000000001/4961", Some("orders")).expect("later");
        let elsewhere = ShardPos::parse("shardId-000000000001/4961", Some("other")).expect("elsewhere");
        assert!(!later.at.same(&b.at) && later.is_after(&b) && !b.is_after(&later));
        assert!(!elsewhere.is_after(&b) && !b.is_after(&elsewhere));
        // Parsed alone or with names: the same position, the same text.
        assert_eq!(ShardPos::parse("shardId-000000000001/4960/3", Some("orders")), Some(b.clone()));
        assert_eq!(b.to_text(), "orders:shardId-000000000001/4960/3");
        // Past the most names kept, each position gets its own: still right.
        let many: Vec<ShardPos> =
            (0..40).map(|i| ShardPos::parse_with(&format!("s:shard-{i}/1"), None, &mut names).expect("parses")).collect();
        assert!(many.iter().enumerate().all(|(i, p)| p.shard() == format!("shard-{i}")));
    }

    /// Final is what no event moves on from: the order cache lets such an
    /// order go when it is written (`daemon::route::apply_orders`).
    #[test]
    fn a_status_is_final_when_it_may_become_nothing() {
        let all = [Placed, Confirmed, Preparing, Ready, Completed, Cancelled];
        for s in all {
            assert_eq!(s.is_final(), !all.iter().any(|&next| s.may_become(next)), "{}", s.name());
        }
        assert!(Completed.is_final() && Cancelled.is_final());
    }

    fn ev(id: &str, body: &str) -> Event {
        let json = format!(r#"{{"v":1,"id":"{id}","ts":"2026-11-22T08:15:30Z","store":"s1","type":{body}}}"#);
        decode(json.as_bytes()).expect("valid event")
    }

    fn placed(id: &str) -> Event {
        ev(
            id,
            r#""order.placed","data":{"order_id":"o1","customer_id":"c","channel":"corporate","items":[{"sku":"a","qty":3,"unit_price_cents":250}],"total_cents":750}"#,
        )
    }

    fn status(id: &str, to: &str) -> Event {
        ev(id, &format!(r#""order.status","data":{{"order_id":"o1","status":"{to}"}}"#))
    }

    #[test]
    fn a_life_cycle_applies_with_counters_and_history() {
        let mut st = None;
        let Applied::Changed { counters, window, .. } = apply(&mut st, &placed("e1")) else { panic!("placed applies") };
        assert_eq!((counters.orders, counters.order_items, counters.revenue_cents), (1, 3, 750));
        assert_eq!(window.window, "2026-11-22T08:15:00Z");
        for (i, to) in ["confirmed", "preparing", "cancelled"].iter().enumerate() {
            let got = apply(&mut st, &status(&format!("e{}", i + 2), to));
            assert!(matches!(got, Applied::Changed { .. }), "{to}: {got:?}");
            if *to == "cancelled" {
                let Applied::Changed { counters, .. } = got else { unreachable!() };
                assert_eq!(counters.orders_cancelled, 1);
            }
        }
        let s = st.expect("exists");
        assert_eq!(s.status, Cancelled);
        let trail: Vec<_> = s.history.iter().map(|h| (h.status, &*h.event_id)).collect();
        assert_eq!(trail, vec![(Placed, "e1"), (Confirmed, "e2"), (Preparing, "e3"), (Cancelled, "e4")]);
    }

    /// An entry keeps the event's id and time as sent without copying them:
    /// on a shard the event is decoded on the CPU pool and applied on a
    /// runtime worker, and copies made there cost that worker (the shard's
    /// serial work) an allocation each and the pool a free from another
    /// thread when the order's cache is freed.
    #[test]
    fn a_history_entry_shares_the_event_s_id_and_time() {
        let (e1, e2) = (placed("e1"), status("e2", "confirmed"));
        let mut st = None;
        for e in [&e1, &e2] {
            assert!(matches!(apply(&mut st, e), Applied::Changed { .. }));
        }
        let s = st.expect("exists");
        assert_eq!(s.history.len(), 2);
        for (h, e) in s.history.iter().zip([&e1, &e2]) {
            assert!(Arc::ptr_eq(&h.event_id, &e.id) && Arc::ptr_eq(&h.ts, &e.ts_raw), "{}: shared", e.id);
        }
    }

    #[test]
    fn a_history_entry_shares_its_position_with_the_record_s() {
        let pos = ShardPos::parse("shardId-000000000001/4959", Some("orders")).expect("parses");
        let mut st = None;
        assert!(matches!(apply_at(&mut st, &placed("e1"), Some(&pos)), Applied::Changed { .. }));
        let kept = st.expect("exists").history[0].pos.clone().expect("a position");
        assert_eq!(kept, pos);
        assert!(Arc::ptr_eq(&kept.sequence, &pos.sequence), "one allocation for the sequence number, not two");
    }

    #[test]
    fn repeats_are_no_ops_and_bad_transitions_are_rejected() {
        let mut st = None;
        let unknown = apply(&mut st, &status("e0", "confirmed"));
        assert!(matches!(&unknown, Applied::Rejected(r) if r.reason == RejectReason::UnknownOrder), "{unknown:?}");
        apply(&mut st, &placed("e1"));
        assert_eq!(apply(&mut st, &placed("e1")), Applied::Repeat);
        let again = apply(&mut st, &placed("e9"));
        assert!(matches!(&again, Applied::Rejected(r) if r.reason == RejectReason::IllegalTransition), "{again:?}");
        let skip = apply(&mut st, &status("e2", "ready"));
        assert!(matches!(&skip, Applied::Rejected(r) if r.reason == RejectReason::IllegalTransition), "{skip:?}");
        assert!(matches!(apply(&mut st, &status("e3", "confirmed")), Applied::Changed { .. }));
        assert_eq!(apply(&mut st, &status("e3", "confirmed")), Applied::Repeat);
        assert_eq!(st.expect("exists").history.len(), 2);
    }

    #[test]
    fn legal_transitions_are_exactly_the_contracts() {
        let all = [Placed, Confirmed, Preparing, Ready, Completed, Cancelled];
        let legal = [
            (Placed, Confirmed),
            (Placed, Cancelled),
            (Confirmed, Preparing),
            (Confirmed, Cancelled),
            (Preparing, Ready),
            (Preparing, Cancelled),
            (Ready, Completed),
        ];
        for from in all {
            for to in all {
                assert_eq!(from.may_become(to), legal.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }
}
