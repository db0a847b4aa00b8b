//! The decide stage's CPU work: one batch of raw inputs, whatever their
//! source, to what the pipeline decided about each. Runs on the CPU pool.
//!
//! Owns: decoding, the fraud model's hashing and the menu stage's digests
//! (per input, in parallel), then fraud scoring (stateful: one thread, in
//! arrival order). Must not: do I/O; order events are only decoded here,
//! since applying them needs the order's stored state (`apply_orders`).

use std::sync::Mutex;

use pipeline::decided::{DecidedMenuItem, DecidedPayment};
use pipeline::event::{Body, Clock, Event, Rejection, decode_at};
use pipeline::fraud::{Decision, FraudEngine, model_work};
use pipeline::menu;
use pipeline::window::{Counters, WindowId};
use rayon::prelude::*;

/// One raw message or record, from any source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The event's bytes, as received.
    pub data: Vec<u8>,
    /// Where it came from: an SQS message id, or `shardId/sequence[/sub]`.
    pub position: String,
}

/// What the decide stage made of one input.
#[derive(Debug)]
pub enum Decided {
    /// A valid, scored payment.
    Payment(DecidedPayment),
    /// A valid menu upsert with its digest.
    Menu(DecidedMenuItem),
    /// A valid order event, to apply against its order's stored state.
    Order(Box<Event>),
    /// An event that breaks the contract.
    Rejected(Rejection),
    /// The stage failed on this input (a bug, never bad input): give it back.
    Failed,
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
pub fn decide_batch(inputs: &[Input], engine: &Mutex<FraudEngine>, work: Work, decided_at: &str) -> Vec<Decided> {
    // Decoding, the model's hashing and menu digests are per input and
    // pure: parallel. Event times are judged by one clock per batch.
    let clock = Clock::system(work.max_future_secs);
    let decoded: Vec<_> = inputs
        .par_iter()
        .map(|input| {
            let event = decode_at(&input.data, &clock);
            let (model, digest) = match &event {
                Ok(e) => match &e.body {
                    Body::PaymentRequested(p) => (Some(model_work(p, work.fraud_work_factor)), None),
                    Body::MenuItemUpserted(item) => (None, Some(menu::digest(item, work.menu_json_rounds))),
                    _ => (None, None),
                },
                Err(_) => (None, None),
            };
            (event, std::hint::black_box(model), digest)
        })
        .collect();
    // Scoring reads and writes history: one thread, arrival order.
    let mut engine = engine.lock().unwrap_or_else(|e| e.into_inner());
    decoded
        .into_iter()
        .map(|(event, _model, digest)| {
            let e = match event {
                Ok(e) => e,
                Err(r) => return Decided::Rejected(r),
            };
            match e.body {
                Body::PaymentRequested(p) => {
                    let v = engine.score(&p, e.ts);
                    let mut counters =
                        Counters { payments: 1, payment_amount_cents: p.amount_cents as i64, ..Counters::default() };
                    match v.decision {
                        Decision::Approve => counters.payments_approved = 1,
                        Decision::Review => counters.payments_review = 1,
                        Decision::Decline => counters.payments_declined = 1,
                    }
                    Decided::Payment(DecidedPayment {
                        window: WindowId::of(&e.store, e.ts),
                        event_id: e.id,
                        payment_id: p.payment_id,
                        order_id: p.order_id,
                        customer_id: p.customer_id,
                        store: e.store,
                        amount_cents: p.amount_cents,
                        score: v.score,
                        decision: v.decision.name(),
                        reasons: v.reasons.iter().map(|r| r.name()).collect(),
                        ts: e.ts_raw,
                        event_time: e.ts,
                        decided_at: decided_at.to_owned(),
                        counters,
                    })
                }
                Body::MenuItemUpserted(item) => match digest {
                    Some(Ok(d)) => Decided::Menu(DecidedMenuItem {
                        window: WindowId::of(&e.store, e.ts),
                        counters: d.counters(),
                        event_id: e.id,
                        sku: item.sku,
                        name: item.name,
                        category: item.category,
                        price_cents: item.price_cents,
                        digest: d,
                        ts: e.ts_raw,
                        event_time: e.ts,
                    }),
                    Some(Err(r)) => Decided::Rejected(r),
                    None => Decided::Failed,
                },
                Body::OrderPlaced(_) | Body::OrderStatus(_) => Decided::Order(Box::new(e)),
            }
        })
        .collect()
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
        let out = decide_batch(&inputs, &engine, work, "now");
        assert!(matches!(out[0], Decided::Order(_)));
        assert!(matches!(out[1], Decided::Order(_)));
        assert!(matches!(&out[2], Decided::Payment(p) if p.payment_id == "p" && p.decided_at == "now"));
        assert!(matches!(&out[3], Decided::Rejected(r) if r.reason.code() == "bad_json"));
    }
}
