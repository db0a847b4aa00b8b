//! Shared fixtures for the criterion benchmarks: realistic events, built
//! deterministically so runs compare.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::hint::black_box;

use pipeline::orders::{OrderState, apply, order_id};
use serde_json::json;

/// Whether this run of a bench executable measures (criterion's
/// `--bench`), rather than lists or tests the benchmarks (`--list`, and
/// `cargo test`, which runs each once without `--bench`): work a bench
/// does besides criterion's runs is for measuring runs only.
pub fn measuring() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--list" || a == "--test")
}

/// The orders kernel: decodes each of `events` (as (partition key, body))
/// and applies it to its order's state, the states in a map with the
/// hasher `S` (the daemon's for order ids, in the benches) and no copy of
/// an id already in; the orders seen.
pub fn decode_and_apply<S: BuildHasher + Default>(events: &[(String, String)]) -> usize {
    let mut states: HashMap<String, Option<OrderState>, S> = HashMap::default();
    for (_, body) in events {
        let Ok(e) = pipeline::decode(body.as_bytes()) else { continue };
        let Some(id) = order_id(&e) else { continue };
        if !states.contains_key(id) {
            states.insert(id.to_owned(), None);
        }
        let Some(state) = states.get_mut(id) else { continue };
        black_box(apply(state, &e));
    }
    states.len()
}

/// A valid `payment.requested` body, number `i`.
pub fn payment_body(i: u64) -> String {
    json!({
        "v": 1, "id": format!("e{i}"), "type": "payment.requested",
        "ts": "2026-11-22T08:15:30.123Z", "store": format!("store-{}", i % 20),
        "data": {
            "payment_id": format!("p{i}"), "order_id": format!("o{i}"), "customer_id": format!("c{}", i % 4000),
            "amount_cents": 300 + i % 5000, "currency": "USD",
            "card": {"bin": "411111", "last4": "4242", "fingerprint": format!("fp-{}", i % 4000)},
            "ip": format!("198.51.100.{}", i % 250), "device_id": format!("dev-{}", i % 4000), "billing_country": "US"
        }
    })
    .to_string()
}

/// A valid corporate `order.placed` body with `lines` line items.
pub fn order_body(i: u64, lines: usize) -> String {
    let items: Vec<_> =
        (0..lines).map(|k| json!({"sku": format!("sku-{k}"), "qty": 1 + k % 5, "unit_price_cents": 450})).collect();
    let total: usize = (0..lines).map(|k| (1 + k % 5) * 450).sum();
    json!({
        "v": 1, "id": format!("e{i}"), "type": "order.placed", "ts": "2026-11-22T08:15:30Z", "store": "store-1",
        "data": {"order_id": format!("o{i}"), "customer_id": "corp-1", "channel": "corporate", "items": items, "total_cents": total}
    })
    .to_string()
}

/// A valid `order.status` body moving order `i` to `status`.
pub fn status_body(i: u64, status: &str) -> String {
    json!({
        "v": 1, "id": format!("e{i}-{status}"), "type": "order.status", "ts": "2026-11-22T08:16:30Z", "store": "store-1",
        "data": {"order_id": format!("o{i}"), "status": status}
    })
    .to_string()
}

/// A valid menu item with an image of `image_len` bytes and 5 ingredients.
pub fn menu_item(image_len: usize) -> pipeline::event::MenuItem {
    use base64::Engine;
    use sha2::Digest;
    let img: Vec<u8> = (0..image_len).map(|i| (i * 7 % 256) as u8).collect();
    let ingredients: Vec<_> = (0..5)
        .map(|k| {
            json!({"name": format!("ing-{k}"), "grams": 20 + k, "kcal_per_100g": 50.5 + k as f64,
                        "protein_per_100g": 1.5, "fat_per_100g": 2.0, "carbs_per_100g": 10})
        })
        .collect();
    let body = json!({
        "v": 1, "id": "m-1", "type": "menu.item.upserted", "ts": "2026-11-22T08:00:00Z", "store": "store-1",
        "data": {"sku": "sku-1", "name": "Seasonal latte", "category": "coffee", "price_cents": 520,
                 "image": {"content_type": "image/jpeg",
                           "base64": base64::engine::general_purpose::STANDARD.encode(&img),
                           "sha256": hex_lower(&sha2::Sha256::digest(&img))},
                 "ingredients": ingredients, "allergens": ["milk", "nuts"]}
    })
    .to_string();
    match pipeline::decode(body.as_bytes()).map(|e| e.body) {
        Ok(pipeline::Body::MenuItemUpserted(m)) => m,
        other => panic!("fixture is not a menu item: {other:?}"),
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
