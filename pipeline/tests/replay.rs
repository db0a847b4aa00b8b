//! Replays of a shard give the first pass's result: a property test over
//! random order streams and random crash-and-replay schedules.
//!
//! The model is the daemon's: order states persist across a crash (they
//! were written), the checkpoint lags behind what was applied, and after a
//! restart the shard is read again from any earlier checkpoint, any number
//! of times. Final order states and counters must equal one clean pass,
//! and every rejection sent, on any pass, must be the one the clean pass
//! sent for that record.

use std::collections::{BTreeMap, HashMap};

use pipeline::event::{Event, Rejection, decode};
use pipeline::orders::{Applied, OrderState, ShardName, ShardPos, apply_at, order_id};
use pipeline::window::Counters;
use proptest::prelude::*;

const STATUSES: [&str; 6] = ["placed", "confirmed", "preparing", "ready", "completed", "cancelled"];

/// One generated record: which order, which status (0 = `order.placed`),
/// and which event id (a small range, so producer retries repeat ids).
fn record(order: u8, status: usize, id: u8, second: usize) -> Event {
    let (ty, data) = if status == 0 {
        (
            "order.placed",
            format!(
                r#"{{"order_id":"o{order}","customer_id":"c","channel":"app","items":[{{"sku":"a","qty":2,"unit_price_cents":300}}],"total_cents":600}}"#
            ),
        )
    } else {
        ("order.status", format!(r#"{{"order_id":"o{order}","status":"{}"}}"#, STATUSES[status]))
    };
    let json = format!(
        r#"{{"v":1,"id":"e{order}-{id}","ts":"2026-11-22T08:{:02}:{:02}Z","store":"s1","type":"{ty}","data":{data}}}"#,
        second / 60 % 60,
        second % 60
    );
    decode(json.as_bytes()).expect("a valid event")
}

#[derive(Default, Debug, PartialEq)]
struct Store {
    orders: HashMap<String, Option<OrderState>>,
    counters: Counters,
    /// Record index -> the rejection sent for it.
    rejected: BTreeMap<usize, Rejection>,
}

impl Store {
    /// Applies record `i`; panics if a record is rejected differently from
    /// an earlier pass.
    fn apply(&mut self, i: usize, e: &Event, pos: &ShardPos) {
        let id = order_id(e).expect("an order event").to_owned();
        let state = self.orders.entry(id).or_default();
        match apply_at(state, e, Some(pos)) {
            Applied::Changed { counters, .. } => self.counters.add(&counters),
            Applied::Repeat => {}
            Applied::Rejected(r) => {
                if let Some(before) = self.rejected.insert(i, r.clone()) {
                    assert_eq!(before, r, "record {i} rejected differently on a replay");
                }
            }
        }
    }
}

fn position(i: usize) -> ShardPos {
    // Sequence numbers of a real shard: long, increasing, compared as text.
    ShardPos {
        at: ShardName::shared("orders", "shardId-000000000000"),
        sequence: format!("4959{:052}", 10 * i + 7).into(),
        sub: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn replaying_any_prefix_any_number_of_times_changes_nothing(
        records in prop::collection::vec((0u8..3, 0usize..6, 0u8..6), 1..40),
        // Each crash: how far the pass got (a share of the stream) and how
        // far back the checkpoint was (a share of that).
        crashes in prop::collection::vec((0.0f64..=1.0, 0.0f64..=1.0), 0..5),
    ) {
        let events: Vec<Event> =
            records.iter().enumerate().map(|(i, &(o, st, id))| record(o, st, id, i)).collect();
        let mut clean = Store::default();
        for (i, e) in events.iter().enumerate() {
            clean.apply(i, e, &position(i));
        }

        let mut replayed = Store::default();
        let mut from = 0;
        for (reached, back) in crashes {
            let to = from + ((events.len() - from) as f64 * reached) as usize;
            for (i, e) in events.iter().enumerate().take(to).skip(from) {
                replayed.apply(i, e, &position(i));
            }
            // The checkpoint: anywhere from the start to where it got.
            from = (to as f64 * back) as usize;
        }
        for (i, e) in events.iter().enumerate().skip(from) {
            replayed.apply(i, e, &position(i));
        }
        for (i, r) in &replayed.rejected {
            prop_assert_eq!(clean.rejected.get(i), Some(r), "record {} was rejected only on a replay", i);
        }
        prop_assert_eq!(replayed, clean);
    }
}

/// The issue's example: `[cancelled X, placed X]`. The first pass rejects
/// the cancellation as `unknown_order`; a replay must not count it.
#[test]
fn a_cancellation_before_its_order_stays_rejected_on_replay() {
    let events = [record(1, 5, 0, 0), record(1, 0, 1, 1)];
    let mut store = Store::default();
    for _pass in 0..3 {
        for (i, e) in events.iter().enumerate() {
            store.apply(i, e, &position(i));
        }
    }
    assert_eq!(store.counters.orders_cancelled, 0);
    assert_eq!(store.counters.orders, 1);
    assert_eq!(store.rejected.len(), 1);
    assert_eq!(store.rejected[&0].reason.code(), "unknown_order");
}

#[test]
fn positions_parse_and_order_within_a_shard_of_a_stream_only() {
    let a = ShardPos::parse("shardId-000000000001/99", Some("orders")).expect("plain");
    let b = ShardPos::parse("shardId-000000000001/100", Some("orders")).expect("plain");
    let c = ShardPos::parse("shardId-000000000001/100/3", Some("orders")).expect("aggregated");
    assert!(b.is_after(&a) && c.is_after(&b) && !a.is_after(&b) && !b.is_after(&b));
    assert_eq!(c.to_string(), "orders:shardId-000000000001/100/3");
    assert_eq!(ShardPos::parse(&c.to_string(), None), Some(c.clone()), "a stored position round-trips");
    assert_eq!(c.to_text(), "orders:shardId-000000000001/100/3", "stored as stream:shard/sequence/sub");
    assert_eq!(b.to_text(), "orders:shardId-000000000001/100", "no sub when not aggregated");
    assert_eq!(ShardPos::parse(&b.to_text(), None), Some(b.clone()), "a stored position round-trips");
    let other = ShardPos::parse("shardId-000000000002/5", Some("orders")).expect("plain");
    assert!(!other.is_after(&a) && !a.is_after(&other), "another shard's positions are not compared");
    // Every stream has a shardId-000000000000: another stream's positions are not compared either.
    let eu = ShardPos::parse("shardId-000000000001/999", Some("eu-orders")).expect("plain");
    assert!(!eu.is_after(&a), "another stream's positions are not compared");
    for bad in ["", "b6f2c0e4-1d2a-4c3b-9e8f-0a1b2c3d4e5f", "s/", "s/01", "s/1/x", "s/1/2/3", "/1", "s/-1", ":s/1"] {
        assert_eq!(ShardPos::parse(bad, Some("orders")), None, "{bad:?}");
    }
    assert_eq!(ShardPos::parse("shardId-000000000001/99", None), None, "a stored position without its stream is not compared");
}
