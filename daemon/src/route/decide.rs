//! The decide stage's CPU work: one batch of raw inputs, whatever their
//! source, to what the pipeline decided about each. Runs on the CPU pool.
//!
//! Owns: decoding, the fraud model's hashing and the menu stage's digests
//! (per input, in parallel), then fraud scoring (stateful: one thread, in
//! arrival order). Must not: do I/O; order events are only decoded here,
//! since applying them needs the order's stored state (`apply_orders`).

use std::sync::{Arc, Mutex};

use pipeline::decided::{DecidedMenuItem, DecidedPayment};
use pipeline::event::{Body, Clock, Event, PaymentRequested, Rejection, decode_at};
use pipeline::fraud::{self, Decision, FraudEngine, Verdict, model_work_many};
use pipeline::menu;
use pipeline::orders::ShardPos;
use pipeline::window::{Counters, WindowId};
use rayon::prelude::*;
use time::OffsetDateTime;

/// One raw message or record, from any source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The event's bytes, as received.
    pub data: Vec<u8>,
    /// Where it came from.
    pub position: Position,
}

/// Where an input came from. As text (a rejection's `position`, a log
/// line): an SQS message id, or `shardId/sequence[/sub]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A message id, or any position given as text.
    Text(String),
    /// A record of a shard, as its reader read it: an order event is
    /// judged at this position (`pipeline::orders::apply_at`) without its
    /// text being made and parsed again.
    Record {
        /// Stream, shard, sequence number and place in a KPL aggregate.
        pos: ShardPos,
        /// Whether it came out of a KPL aggregate (its text then ends in
        /// `/sub`, even for the first).
        aggregated: bool,
    },
}

impl Position {
    /// The shard position, for a shard's record.
    pub fn shard_pos(&self) -> Option<&ShardPos> {
        match self {
            Position::Text(_) => None,
            Position::Record { pos, .. } => Some(pos),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Text(t) => f.write_str(t),
            Position::Record { pos, aggregated: false } => write!(f, "{}/{}", pos.shard(), pos.sequence),
            Position::Record { pos, aggregated: true } => write!(f, "{}/{}/{}", pos.shard(), pos.sequence, pos.sub),
        }
    }
}

impl From<String> for Position {
    fn from(t: String) -> Self {
        Position::Text(t)
    }
}

impl From<&str> for Position {
    fn from(t: &str) -> Self {
        Position::Text(t.to_owned())
    }
}

/// What the decide stage made of one input.
#[derive(Debug, Clone)]
pub enum Decided {
    /// A valid, scored payment. (The large variants are boxed: a batch's
    /// decided inputs are moved and split by the stages, and an order
    /// event's should not cost a payment's size.)
    Payment(Box<DecidedPayment>),
    /// A valid payment to score against the shared fraud state, in the
    /// write stage (`apply_payments`).
    Unscored(Box<Unscored>),
    /// A valid menu upsert with its digest.
    Menu(Box<DecidedMenuItem>),
    /// A valid order event, to apply against its order's stored state.
    /// Shared: a shard keeps its batch's decided events until they are
    /// durable, to write them again as decided, and a copy costs a count.
    Order(Arc<Event>),
    /// An event that breaks the contract.
    Rejected(Rejection),
    /// The stage failed on this input (a bug, never bad input): give it back.
    Failed,
}

/// A valid payment, before scoring.
#[derive(Debug, Clone, PartialEq)]
pub struct Unscored {
    /// Event id.
    pub id: String,
    /// Event time.
    pub ts: OffsetDateTime,
    /// Event time as sent.
    pub ts_raw: String,
    /// Store.
    pub store: String,
    /// The payment.
    pub payment: PaymentRequested,
}

/// The decided payment of `u` with verdict `v`.
pub fn decided_payment(u: &Unscored, v: &Verdict, decided_at: &str) -> DecidedPayment {
    let p = &u.payment;
    let mut counters = Counters { payments: 1, payment_amount_cents: p.amount_cents as i64, ..Counters::default() };
    match v.decision {
        Decision::Approve => counters.payments_approved = 1,
        Decision::Review => counters.payments_review = 1,
        Decision::Decline => counters.payments_declined = 1,
    }
    DecidedPayment {
        window: WindowId::of(&u.store, u.ts),
        event_id: u.id.clone(),
        payment_id: p.payment_id.clone(),
        order_id: p.order_id.clone(),
        customer_id: p.customer_id.clone(),
        store: u.store.clone(),
        amount_cents: p.amount_cents,
        score: v.score,
        decision: v.decision.name(),
        reasons: v.reasons.iter().map(|r| r.name()).collect(),
        ts: u.ts_raw.clone(),
        event_time: u.ts,
        decided_at: decided_at.to_owned(),
        counters,
    }
}

/// The CPU-heavy work of a batch, per event type.
#[derive(Debug, Clone, Copy)]
pub struct Work {
    /// The fraud model's hashing rounds per payment.
    pub fraud_work_factor: u32,
    /// The menu stage's JSON rounds per item.
    pub menu_json_rounds: u32,
    /// How far ahead of the clock an event time may be (`pipeline.max_future_secs`).
    pub max_future_secs: u64,
}

/// Decides one batch; `decided_at` is the RFC 3339 time written on payments.
/// Payments are scored here against `engine` (the in-process history), or
/// left [`Decided::Unscored`] without one.
pub fn decide_batch(inputs: &[Input], engine: Option<&Mutex<FraudEngine>>, work: Work, decided_at: &str) -> Vec<Decided> {
    // Decoding, the model's hashing and menu digests are per input and
    // pure: parallel. Event times are judged by one clock per batch. Each
    // input becomes its (small) `Decided` where it is decoded: an event is
    // moved once, into its box or `Arc`, not carried through the batch's
    // vectors (an `Event` with its digest is about 400 bytes, a `Decided`
    // 40).
    let clock = Clock::system(work.max_future_secs);
    let mut decided: Vec<Decided> = inputs
        .par_iter()
        .map(|input| {
            let e = match decode_at(&input.data, &clock) {
                Ok(e) => e,
                Err(r) => return Decided::Rejected(r),
            };
            match e.body {
                Body::PaymentRequested(payment) => Decided::Unscored(Box::new(Unscored {
                    id: String::from(&*e.id),
                    ts: e.ts,
                    ts_raw: String::from(&*e.ts_raw),
                    store: e.store,
                    payment,
                })),
                Body::MenuItemUpserted(item) => match menu::digest(&item, work.menu_json_rounds) {
                    Ok(d) => Decided::Menu(Box::new(DecidedMenuItem {
                        window: WindowId::of(&e.store, e.ts),
                        counters: d.counters(),
                        event_id: String::from(&*e.id),
                        sku: item.sku,
                        name: item.name,
                        category: item.category,
                        price_cents: item.price_cents,
                        digest: d,
                        ts: String::from(&*e.ts_raw),
                        event_time: e.ts,
                    })),
                    Err(r) => Decided::Rejected(r),
                },
                Body::OrderPlaced(_) | Body::OrderStatus(_) => Decided::Order(Arc::new(e)),
            }
        })
        .collect();
    // The model's hashing, a few payments per task: one core runs their
    // hash chains interleaved (`model_work_many`). Every payment's, scored
    // here or in the write stage against the shared history.
    let payments: Vec<&PaymentRequested> = decided
        .iter()
        .filter_map(|d| match d {
            Decided::Unscored(u) => Some(&u.payment),
            _ => None,
        })
        .collect();
    let models: Vec<_> =
        payments.par_chunks(fraud::LANES).flat_map_iter(|chunk| model_work_many(chunk, work.fraud_work_factor)).collect();
    std::hint::black_box(models);
    let Some(engine) = engine else { return decided };
    // Scoring reads and writes history: one thread, arrival order.
    let mut engine = engine.lock().unwrap_or_else(|e| e.into_inner());
    for d in &mut decided {
        if let Decided::Unscored(u) = d {
            let v = engine.score(&u.payment, u.ts, clock.now);
            *d = Decided::Payment(Box::new(decided_payment(u, &v, decided_at)));
        }
    }
    decided
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input(v: serde_json::Value) -> Input {
        Input { data: v.to_string().into_bytes(), position: "p".into() }
    }

    #[test]
    fn every_event_type_is_decided_whatever_the_input() {
        let engine = Mutex::new(FraudEngine::new(pipeline::fraud::FraudConfig::default()).expect("engine"));
        let ts = "2026-11-22T08:15:30Z";
        let inputs = vec![
            input(json!({"v":1,"id":"o1","type":"order.placed","ts":ts,"store":"s","data":{"order_id":"ord","customer_id":"c",
                "channel":"app","items":[{"sku":"x","qty":1,"unit_price_cents":5}],"total_cents":5}})),
            input(
                json!({"v":1,"id":"o2","type":"order.status","ts":ts,"store":"s","data":{"order_id":"ord","status":"confirmed"}}),
            ),
            input(
                json!({"v":1,"id":"p1","type":"payment.requested","ts":ts,"store":"s","data":{"payment_id":"p","order_id":"ord",
                "customer_id":"c","amount_cents":5,"currency":"USD","card":{"bin":"411111","last4":"4242","fingerprint":"f"},
                "ip":"203.0.113.9","device_id":"d","billing_country":"US"}}),
            ),
            Input { data: b"{nope".to_vec(), position: "p".into() },
        ];
        let work = Work { fraud_work_factor: 1, menu_json_rounds: 0, max_future_secs: 3600 };
        let out = decide_batch(&inputs, Some(&engine), work, "now");
        assert!(matches!(out[0], Decided::Order(_)));
        assert!(matches!(out[1], Decided::Order(_)));
        assert!(matches!(&out[2], Decided::Payment(p) if p.payment_id == "p" && p.decided_at == "now"));
        assert!(matches!(&out[3], Decided::Rejected(r) if r.reason.code() == "bad_json"));
    }

    mod extremes {
        //! No input panics the decide stage: arbitrary bytes, and events
        //! whose every field takes its extremes (numbers at and past every
        //! bound, wrong types, control characters, far-off times), with any
        //! clock allowance. What is accepted stays inside the contract's
        //! bounds.

        use proptest::prelude::*;

        use super::*;

        /// JSON literals for a number field.
        const NUMBERS: &[&str] = &[
            "0",
            "1",
            "-1",
            "5",
            "0.5",
            "-0",
            "1e3",
            "1e400",
            "-1e400",
            "9007199254740993",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "1e308",
            "100000000000",
            "99999999999",
            "null",
            "true",
            "\"1\"",
            "[]",
            "{}",
        ];
        /// JSON literals for a string field.
        const STRINGS: &[&str] = &[
            "\"a\"",
            "\"\"",
            "\"s-1._x\"",
            "\"\\u0000\"",
            "\"\\u0001\"",
            "\"\\uffff\"",
            "\"\\ud800\"",
            "\"é\"",
            "\"a b\"",
            "\"411111\"",
            "\"4242\"",
            "\"203.0.113.9\"",
            "\"::1\"",
            "\"US\"",
            "\"USD\"",
            "\"app\"",
            "\"confirmed\"",
            "\"cancelled\"",
            "\"image/png\"",
            "\"aGk=\"",
            "\"!!\"",
            "0",
            "null",
            "[]",
        ];
        const TIMES: &[&str] = &[
            "\"2026-11-22T08:15:30Z\"",
            "\"0000-01-01T00:00:00Z\"",
            "\"1999-12-31T23:59:59Z\"",
            "\"2000-01-01T00:00:00Z\"",
            "\"9999-12-31T23:59:59Z\"",
            "\"2026-11-22T08:15:30+23:59\"",
            "\"2026-11-22T08:15:30-23:59\"",
            "\"2016-12-31T23:59:60Z\"",
            "\"2026-11-22T08:15:30.123456789Z\"",
            "\"2026-02-30T00:00:00Z\"",
            "\"now\"",
            "0",
        ];
        const TYPES: &[&str] =
            &["\"order.placed\"", "\"order.status\"", "\"payment.requested\"", "\"menu.item.upserted\"", "\"x\"", "1"];

        fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
            prop::sample::select(pool).prop_map(str::to_owned)
        }

        fn string_or_long() -> impl Strategy<Value = String> {
            prop_oneof![4 => pick(STRINGS), 1 => (1usize..200).prop_map(|n| format!("\"{}\"", "x".repeat(n)))]
        }

        /// A field: mostly `valid`, otherwise one of its extremes, so that
        /// whole events pass often enough for what follows decoding to be
        /// fed extremes too.
        fn f(valid: &'static str, pool: &'static [&'static str]) -> BoxedStrategy<String> {
            prop_oneof![12 => Just(valid.to_owned()), 1 => pick(pool), 1 => string_or_long()].boxed()
        }

        fn n(valid: &'static str) -> BoxedStrategy<String> {
            prop_oneof![6 => Just(valid.to_owned()), 1 => pick(NUMBERS)].boxed()
        }

        fn item() -> impl Strategy<Value = String> {
            (f("\"sku-1\"", STRINGS), n("2"), n("250"))
                .prop_map(|(sku, qty, price)| format!(r#"{{"sku":{sku},"qty":{qty},"unit_price_cents":{price}}}"#))
        }

        fn ingredient() -> impl Strategy<Value = String> {
            (f("\"milk\"", STRINGS), n("100"), n("64"), n("3"), n("4"), n("5")).prop_map(|(name, g, k, p, fat, c)| {
                format!(
                    r#"{{"name":{name},"grams":{g},"kcal_per_100g":{k},"protein_per_100g":{p},"fat_per_100g":{fat},"carbs_per_100g":{c}}}"#
                )
            })
        }

        /// The type and its data; one time in eight another type's data.
        fn typed_data() -> impl Strategy<Value = (String, String)> {
            let placed = (
                f("\"o1\"", STRINGS),
                f("\"c1\"", STRINGS),
                f("\"app\"", STRINGS),
                prop::collection::vec(item(), 0..4),
                n("500"),
            )
                .prop_map(|(o, c, ch, items, total)| {
                    format!(
                        r#"{{"order_id":{o},"customer_id":{c},"channel":{ch},"items":[{}],"total_cents":{total}}}"#,
                        items.join(",")
                    )
                })
                .boxed();
            let status = (f("\"o1\"", STRINGS), f("\"confirmed\"", STRINGS))
                .prop_map(|(o, st)| format!(r#"{{"order_id":{o},"status":{st}}}"#))
                .boxed();
            let payment = (
                (f("\"p1\"", STRINGS), f("\"c1\"", STRINGS), n("1299"), f("\"USD\"", STRINGS)),
                (f("\"411111\"", STRINGS), f("\"4242\"", STRINGS), f("\"fp1\"", STRINGS), f("\"203.0.113.9\"", STRINGS)),
                (f("\"d1\"", STRINGS), f("\"US\"", STRINGS)),
            )
                .prop_map(|((pay, c, amount, cur), (bin, last4, fp, ip), (dev, country))| {
                    format!(
                        r#"{{"payment_id":{pay},"order_id":"o","customer_id":{c},"amount_cents":{amount},"currency":{cur},"card":{{"bin":{bin},"last4":{last4},"fingerprint":{fp}}},"ip":{ip},"device_id":{dev},"billing_country":{country}}}"#
                    )
                })
                .boxed();
            let menu = (
                (f("\"sku-1\"", STRINGS), f("\"Latte\"", STRINGS), f("\"drinks\"", STRINGS), n("450")),
                (f("\"image/png\"", STRINGS), f("\"aGk=\"", STRINGS), prop::collection::vec(ingredient(), 0..4)),
            )
                .prop_map(|((sku, name, cat, price), (ct, b64, ings))| {
                    // The declared hash of "hi" (the image `aGk=`), so items pass.
                    let sha = "\"8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4\"";
                    format!(
                        r#"{{"sku":{sku},"name":{name},"category":{cat},"price_cents":{price},"image":{{"content_type":{ct},"base64":{b64},"sha256":{sha}}},"ingredients":[{}],"allergens":[]}}"#,
                        ings.join(",")
                    )
                })
                .boxed();
            let data = prop_oneof![placed.clone(), status.clone(), payment.clone(), menu.clone()];
            prop_oneof![
                2 => placed.prop_map(|d| ("\"order.placed\"".to_owned(), d)),
                2 => status.prop_map(|d| ("\"order.status\"".to_owned(), d)),
                2 => payment.prop_map(|d| ("\"payment.requested\"".to_owned(), d)),
                2 => menu.prop_map(|d| ("\"menu.item.upserted\"".to_owned(), d)),
                1 => (pick(TYPES), data),
            ]
        }

        fn event() -> impl Strategy<Value = Vec<u8>> {
            (n("1"), f("\"e1\"", STRINGS), f("\"2026-11-22T08:15:30Z\"", TIMES), f("\"s1\"", STRINGS), typed_data()).prop_map(
                |(v, id, ts, store, (ty, data))| {
                    format!(r#"{{"v":{v},"id":{id},"ts":{ts},"store":{store},"type":{ty},"data":{data}}}"#).into_bytes()
                },
            )
        }

        #[test]
        fn no_input_panics_the_decide_stage_and_what_passes_is_in_bounds() {
            let strategy = (
                prop::collection::vec(prop_oneof![3 => event(), 1 => prop::collection::vec(any::<u8>(), 0..300)], 1..8),
                prop_oneof![Just(0u64), Just(3600), Just(u64::MAX), any::<u64>()],
            );
            // Payments, menu items, order events, rejections let through,
            // over all cases: the test is only as good as the share that
            // passes decoding and goes on to what follows.
            let seen = std::cell::RefCell::new([0usize; 4]);
            let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 2000, ..ProptestConfig::default() });
            let result = runner.run(&strategy, |(inputs, max_future_secs)| {
                let engine = Mutex::new(FraudEngine::new(pipeline::fraud::FraudConfig::default()).expect("engine"));
                let inputs: Vec<Input> = inputs.into_iter().map(|data| Input { data, position: "p".into() }).collect();
                let work = Work { fraud_work_factor: 1, menu_json_rounds: 1, max_future_secs };
                let mut seen = seen.borrow_mut();
                for d in decide_batch(&inputs, Some(&engine), work, "now") {
                    match d {
                        Decided::Payment(p) => {
                            seen[0] += 1;
                            prop_assert!(p.amount_cents <= pipeline::event::MAX_AMOUNT_CENTS);
                            prop_assert!(p.counters.payment_amount_cents >= 0);
                        }
                        Decided::Menu(m) => {
                            seen[1] += 1;
                            prop_assert!(m.price_cents <= pipeline::event::MAX_PRICE_CENTS);
                            prop_assert!(m.digest.kcal.is_finite() && m.digest.kcal >= 0.0, "{}", m.digest.kcal);
                        }
                        Decided::Order(e) => {
                            seen[2] += 1;
                            let mut state = None;
                            if let pipeline::orders::Applied::Changed { counters, .. } = pipeline::orders::apply(&mut state, &e) {
                                prop_assert!(counters.revenue_cents >= 0 && counters.order_items >= 0);
                            }
                        }
                        Decided::Rejected(r) => {
                            seen[3] += 1;
                            prop_assert!(!r.detail.is_empty());
                        }
                        Decided::Unscored(_) => prop_assert!(false, "an engine was given: every payment is scored"),
                        Decided::Failed => prop_assert!(false, "the stage failed on an input"),
                    }
                }
                Ok(())
            });
            if let Err(e) = result {
                panic!("{e}");
            }
            let seen = seen.into_inner();
            eprintln!("decide stage let through {seen:?}");
            assert!(seen.iter().all(|&k| k >= 100), "too few inputs of some kind got through: {seen:?}");
        }
    }
}
