//! The fraud model's work factor: the original story's "model inference".
//!
//! Owns: the pure, per-payment hashing that stands for the model. Must not:
//! read or write history (it runs on any thread, in parallel).

use sha2::{Digest, Sha256};

use crate::event::PaymentRequested;

/// The "model inference" cost of the original scenario: `rounds` iterated
/// SHA-256 over the payment's identity. Pure, so it runs on any thread; the
/// digest is returned so the work cannot be optimised away.
pub fn model_work(p: &PaymentRequested, rounds: u32) -> [u8; 32] {
    let mut digest: [u8; 32] = Sha256::new()
        .chain_update(p.payment_id.as_bytes())
        .chain_update([0])
        .chain_update(p.card.fingerprint.as_bytes())
        .finalize()
        .into();
    for _ in 0..rounds {
        digest = Sha256::digest(digest).into();
    }
    digest
}
