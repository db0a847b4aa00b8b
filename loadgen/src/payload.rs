//! Seeded payload generators.
//!
//! Owns: turning (seed, run id, index) into an event. The same seed and run
//! id give the same bytes for every index, except `ts`, which is the moment
//! the event is sent (so end-to-end latency is real). The run id is in every
//! identifier, so reruns are new events rather than replays.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::scenario::Load;

/// One generated payment, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    /// `payment_id`.
    pub payment_id: String,
    /// `customer_id`: the FIFO MessageGroupId.
    pub customer_id: String,
    /// `store`.
    pub store: String,
    /// `amount_cents`.
    pub amount_cents: u64,
    /// `card.fingerprint`.
    pub fingerprint: String,
    /// `device_id`.
    pub device_id: String,
    /// MessageDeduplicationId.
    pub dedup_id: String,
    /// The event's JSON body.
    pub body: String,
}

/// The store ids of a run.
pub fn store_id(run_id: &str, k: u32) -> String {
    format!("r{run_id}-s{k:03}")
}

/// Makes payment number `index` of a run.
pub fn payment(seed: u64, run_id: &str, index: u64, load: &Load, ts: &str) -> Payment {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    let customer = rng.random_range(0..load.customers);
    let store = store_id(run_id, rng.random_range(0..load.stores));
    let customer_id = format!("c{customer:06}");
    let fingerprint = if rng.random_bool(load.shared_card_ratio) {
        format!("fp-shared-{}", rng.random_range(0..8))
    } else {
        format!("fp-{customer:06}")
    };
    let device = if rng.random_bool(load.shared_card_ratio) {
        format!("dev-shared-{}", rng.random_range(0..8))
    } else {
        format!("dev-{customer:06}")
    };
    let base = 300 + u64::from(customer % 40) * 100;
    let mut amount_cents = base + rng.random_range(0..base / 2);
    if rng.random_bool(load.big_amount_ratio) {
        amount_cents *= 20;
    }
    let bins = ["411111", "510510", "400000", "601100", "353011"];
    let bin = bins[rng.random_range(0..bins.len())];
    // 198.51.100.0/24 is US and 203.0.113.0/24 is NL in the example IP table.
    let ip = format!("198.51.100.{}", rng.random_range(1..255));
    let billing_country = if rng.random_bool(load.geo_mismatch_ratio) { "NL" } else { "US" };
    let payment_id = format!("{run_id}-p{index:07}");
    let body = json!({
        "v": 1,
        "id": format!("{run_id}-e{index:07}"),
        "type": "payment.requested",
        "ts": ts,
        "store": store,
        "data": {
            "payment_id": payment_id,
            "order_id": format!("{run_id}-o{index:07}"),
            "customer_id": customer_id,
            "amount_cents": amount_cents,
            "currency": "USD",
            "card": {"bin": bin, "last4": format!("{:04}", rng.random_range(0..10_000)), "fingerprint": &fingerprint},
            "ip": ip,
            "device_id": &device,
            "billing_country": billing_country,
        }
    })
    .to_string();
    Payment {
        dedup_id: format!("{run_id}-{index}"),
        payment_id,
        customer_id,
        store,
        amount_cents,
        fingerprint,
        device_id: device,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> Load {
        Load {
            payments: 100,
            users: 1,
            stores: 5,
            customers: 50,
            shared_card_ratio: 0.1,
            geo_mismatch_ratio: 0.1,
            big_amount_ratio: 0.1,
        }
    }

    #[test]
    fn same_seed_same_bytes_and_every_payment_is_valid() {
        let ts = "2026-11-22T00:00:00.000Z";
        for i in 0..100 {
            let a = payment(7, "run1", i, &load(), ts);
            assert_eq!(a, payment(7, "run1", i, &load(), ts));
            let event = pipeline::decode(a.body.as_bytes()).expect("generated payments are valid");
            assert_eq!(event.store, a.store);
        }
        assert_ne!(payment(7, "run1", 3, &load(), ts).body, payment(8, "run1", 3, &load(), ts).body);
    }
}
