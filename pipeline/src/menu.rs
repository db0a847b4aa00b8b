//! The menu stage: what the daemon computes for a `menu.item.upserted`.
//!
//! Owns: decoding the image (base64), its SHA-256 against the declared one,
//! the item's canonical JSON and its SHA-256 (`content_sha256`), the kcal
//! from the ingredients, and the story's JSON work factor. Must not: store
//! anything or decide whether a write is needed (the sink compares
//! `content_sha256` with the stored one).
//!
//! Canonical JSON: the item's contract fields as one JSON object, keys in
//! byte order at every level, no insignificant whitespace, numbers with an
//! integral value written as integers (`200`, whether sent as `200` or
//! `200.0`) and others in their shortest round-trip form, as RFC 8785 (JCS)
//! writes them for the values the contract allows. Unknown fields inside
//! `data` are not part of it, so they do not change the hash.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::event::{MAX_IMAGE_BYTES, MenuItem, RejectReason, Rejection};
use crate::window::Counters;

/// What the menu stage computed for one item.
#[derive(Debug, Clone, PartialEq)]
pub struct MenuDigest {
    /// SHA-256 of the decoded image, 64 lower-case hex.
    pub image_sha256: String,
    /// Whether it equals the declared `image.sha256`.
    pub image_ok: bool,
    /// Decoded image size.
    pub image_bytes: usize,
    /// Sum over ingredients of grams × kcal_per_100g / 100, to 2 decimals.
    pub kcal: f64,
    /// SHA-256 of the canonical JSON, 64 lower-case hex.
    pub content_sha256: String,
}

impl MenuDigest {
    /// The aggregate counters of one upsert.
    pub fn counters(&self) -> Counters {
        Counters { menu_items: 1, menu_hash_mismatches: i64::from(!self.image_ok), ..Counters::default() }
    }
}

/// The item's canonical JSON (see the module docs).
pub fn canonical_json(item: &MenuItem) -> String {
    // serde_json's map is ordered by key (no `preserve_order`), and
    // `to_string` writes no whitespace.
    match serde_json::to_value(item) {
        Ok(v) => integral_numbers(v).to_string(),
        Err(_) => String::new(),
    }
}

/// Floats with an integral value (below 2^53) become integers, at every level.
fn integral_numbers(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(integral_numbers).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, integral_numbers(v))).collect()),
        other => other,
    }
}

/// The story's JSON work: `rounds` times, parse the canonical JSON and
/// write it canonically again, each round reading the previous round's
/// output, so no round can be skipped. Returns the last output, which equals
/// the input for canonical input.
///
/// Each round writes into the buffer the round before read from, cleared:
/// the parse and the write of the whole item are the story's work, a new
/// string grown from nothing a hundred times an item is not (its
/// reallocations, and the pages the allocator gives back and takes again).
pub fn json_rounds(canonical: &str, rounds: u32) -> String {
    use std::fmt::Write as _;
    let mut cur = canonical.to_owned();
    let mut next = String::with_capacity(cur.len());
    for _ in 0..rounds {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(std::hint::black_box(&cur)) else { break };
        next.clear();
        // `Value`'s `Display` is what `to_string` writes; into a `String`
        // it cannot fail.
        if write!(next, "{v}").is_err() {
            break;
        }
        std::mem::swap(&mut cur, std::hint::black_box(&mut next));
    }
    cur
}

/// kcal of the item, to 2 decimals.
pub fn kcal(item: &MenuItem) -> f64 {
    let total: f64 = item.ingredients.iter().map(|i| i.grams * i.kcal_per_100g / 100.0).sum();
    (total * 100.0).round() / 100.0
}

/// Computes everything for one item. Rejects an image that is not base64
/// or larger than 512 KiB decoded.
pub fn digest(item: &MenuItem, json_work_rounds: u32) -> Result<MenuDigest, Rejection> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(item.image.base64.as_bytes())
        .map_err(|e| Rejection::new(RejectReason::Schema, format!("data.image.base64 is not valid base64: {e}")))?;
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("image is {} bytes decoded, the limit is {MAX_IMAGE_BYTES}", bytes.len()),
        ));
    }
    let image_sha256 = hex::encode(Sha256::digest(&bytes));
    let canonical = json_rounds(&canonical_json(item), json_work_rounds);
    let content_sha256 = hex::encode(Sha256::digest(canonical.as_bytes()));
    Ok(MenuDigest {
        image_ok: image_sha256 == item.image.sha256,
        image_sha256,
        image_bytes: bytes.len(),
        kcal: kcal(item),
        content_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Body, decode};

    fn item(image: &[u8], declared: Option<&str>, extra: &str) -> MenuItem {
        let b64 = base64::engine::general_purpose::STANDARD.encode(image);
        let sha = declared.map_or_else(|| hex::encode(Sha256::digest(image)), str::to_owned);
        let json = format!(
            r#"{{"v":1,"id":"m1","type":"menu.item.upserted","ts":"2026-11-22T08:00:00Z","store":"s1","data":{{
              "sku":"latte","name":"Latte","category":"coffee","price_cents":450{extra},
              "image":{{"content_type":"image/png","base64":"{b64}","sha256":"{sha}"}},
              "ingredients":[{{"name":"milk","grams":200,"kcal_per_100g":64,"protein_per_100g":3.4,"fat_per_100g":3.6,"carbs_per_100g":4.8}},
                             {{"name":"espresso","grams":30,"kcal_per_100g":2.5,"protein_per_100g":0.1,"fat_per_100g":0.2,"carbs_per_100g":0}}],
              "allergens":["milk"]}}}}"#
        );
        match decode(json.as_bytes()).expect("valid").body {
            Body::MenuItemUpserted(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hashes_kcal_and_mismatches() {
        let good = digest(&item(b"\x89PNG image", None, ""), 3).expect("ok");
        assert!(good.image_ok);
        assert_eq!(good.image_sha256, hex::encode(Sha256::digest(b"\x89PNG image")));
        assert_eq!(good.kcal, 128.75);
        assert_eq!(good.counters().menu_items, 1);
        assert_eq!(good.counters().menu_hash_mismatches, 0);
        let bad = digest(&item(b"\x89PNG image", Some(&"0".repeat(64)), ""), 3).expect("ok");
        assert!(!bad.image_ok);
        assert_eq!(bad.counters().menu_hash_mismatches, 1);
        assert_eq!(bad.image_sha256, good.image_sha256);
    }

    #[test]
    fn canonical_json_is_sorted_compact_and_ignores_unknown_fields() {
        let a = item(b"img", None, "");
        let c = canonical_json(&a);
        assert!(c.starts_with(r#"{"allergens":["milk"],"category":"coffee","image":{"base64":"#), "{c}");
        assert!(!c.contains(' ') || c.contains("\"Latte\""), "no whitespace outside strings: {c}");
        let b = item(b"img", None, r#","colour":"brown""#);
        assert_eq!(canonical_json(&b), c);
        assert_eq!(json_rounds(&c, 10), c, "canonical JSON is a fixed point of the rounds");
        assert_eq!(digest(&a, 0).expect("ok").content_sha256, digest(&b, 100).expect("ok").content_sha256);
    }

    #[test]
    fn json_rounds_write_what_a_new_string_each_round_would() {
        // The rounds as first written: a new string each round.
        let fresh = |input: &str, rounds: u32| {
            let mut cur = input.to_owned();
            for _ in 0..rounds {
                match serde_json::from_str::<serde_json::Value>(&cur) {
                    Ok(v) => cur = v.to_string(),
                    Err(_) => break,
                }
            }
            cur
        };
        let long = format!(
            r#"{{"b": "{}", "a": [1.0, 2.5, -0.0, 1e300, "\u00e9\n"], "c": {{"z": null, "y": true}}}}"#,
            "x".repeat(70_000)
        );
        for input in [
            canonical_json(&item(b"img", None, "")),
            long,
            r#"  {"k" : [ 1 , 2.0 ] }  "#.to_owned(),
            "not json".to_owned(),
            String::new(),
        ] {
            for rounds in [0, 1, 2, 3, 100] {
                assert_eq!(json_rounds(&input, rounds), fresh(&input, rounds), "{rounds} rounds of {:.60}", input);
            }
        }
    }

    #[test]
    fn bad_and_oversized_images_are_rejected() {
        let mut m = item(b"img", None, "");
        m.image.base64 = "not base64!".into();
        assert_eq!(digest(&m, 1).map_err(|r| r.reason), Err(RejectReason::Schema));
        let big = vec![0u8; MAX_IMAGE_BYTES + 1];
        m.image.base64 = base64::engine::general_purpose::STANDARD.encode(&big);
        assert_eq!(digest(&m, 1).map_err(|r| r.reason), Err(RejectReason::TooLarge));
    }
}
