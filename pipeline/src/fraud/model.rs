//! The fraud model's work factor: the original story's "model inference".
//!
//! Owns: the pure, per-payment hashing that stands for the model. Must not:
//! read or write history (it runs on any thread, in parallel).

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest, Sha256};

use crate::event::PaymentRequested;

/// SHA-256's initial hash value (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// The "model inference" cost of the original scenario: `rounds` iterated
/// SHA-256 over the payment's identity. Pure, so it runs on any thread; the
/// digest is returned so the work cannot be optimised away.
///
/// Each round hashes a 32-byte digest, which with SHA-256's padding is
/// exactly one 64-byte block whose last 32 bytes never change: the loop
/// runs the compression function on that block directly (the SHA-NI one
/// where the CPU has it), skipping the hasher's per-call buffering,
/// padding and state setup. The result is SHA-256's, bit for bit (see the
/// test against `Sha256::digest`).
pub fn model_work(p: &PaymentRequested, rounds: u32) -> [u8; 32] {
    let digest: [u8; 32] = Sha256::new()
        .chain_update(p.payment_id.as_bytes())
        .chain_update([0])
        .chain_update(p.card.fingerprint.as_bytes())
        .finalize()
        .into();
    iterate(digest, rounds)
}

/// `rounds` times `digest = SHA-256(digest)`.
fn iterate(mut digest: [u8; 32], rounds: u32) -> [u8; 32] {
    // The message (32 bytes), then 0x80, zeros, and the length in bits (256)
    // as a big-endian u64 in the last 8 bytes.
    let mut block = GenericArray::from([0u8; 64]);
    block[32] = 0x80;
    block[62] = 0x01;
    for _ in 0..rounds {
        block[..32].copy_from_slice(&digest);
        let mut state = IV;
        sha2::compress256(&mut state, std::slice::from_ref(&block));
        for (out, word) in digest.chunks_exact_mut(4).zip(state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
    }
    digest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_single_block_loop_is_iterated_sha256_bit_for_bit() {
        for seed in [[0u8; 32], [0xff; 32], *b"0123456789abcdef0123456789abcdef"] {
            let mut want = seed;
            for rounds in 0..40u32 {
                assert_eq!(iterate(seed, rounds), want, "rounds {rounds}");
                want = Sha256::digest(want).into();
            }
        }
        // A known answer: SHA-256 of 32 zero bytes.
        assert_eq!(hex::encode(iterate([0; 32], 1)), "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925");
    }
}
