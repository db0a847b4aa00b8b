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
    let [digest] = iterate([seed(p)], rounds);
    digest
}

/// [`model_work`] for each payment, the same digests, computed
/// [`LANES`] payments at a time (the rest in fewer): their hash chains are
/// independent, and one core runs them interleaved faster than one after
/// the other.
pub fn model_work_many(payments: &[&PaymentRequested], rounds: u32) -> Vec<[u8; 32]> {
    let mut out = Vec::with_capacity(payments.len());
    let mut rest = payments;
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(width_for(rest.len()));
        match chunk.len() {
            8 => out.extend(iterate(std::array::from_fn::<_, 8, _>(|i| seed(chunk[i])), rounds)),
            4 => out.extend(iterate(std::array::from_fn::<_, 4, _>(|i| seed(chunk[i])), rounds)),
            2 => out.extend(iterate(std::array::from_fn::<_, 2, _>(|i| seed(chunk[i])), rounds)),
            _ => out.extend(chunk.iter().map(|p| model_work(p, rounds))),
        }
        rest = after;
    }
    out
}

/// How many payments' chains [`model_work_many`] interleaves. Measured
/// per payment with 2, 4 and 8 (docs/performance.md): on the AMD EPYC
/// (Zen 5) host this project is measured on 0.22, 0.19 and 0.17 ms; on
/// the Xeon host 0.30, 0.31 and 0.31. Eight, for the larger gain; timing
/// the widths at start-up was tried and picked a narrower one in 5 of 14
/// starts into a burst's load.
pub const LANES: usize = 8;
// `model_work_many` has a loop for each width it may take.
const _: () = assert!(LANES.is_power_of_two() && LANES <= 8);

/// The widest chunk of [`model_work_many`] for `left` payments: [`LANES`],
/// then halves of it down to one.
fn width_for(left: usize) -> usize {
    let mut w = LANES;
    while w > left {
        w /= 2;
    }
    w
}

/// The first digest of a payment's chain: its identity.
fn seed(p: &PaymentRequested) -> [u8; 32] {
    Sha256::new()
        .chain_update(p.payment_id.as_bytes())
        .chain_update([0])
        .chain_update(p.card.fingerprint.as_bytes())
        .finalize()
        .into()
}

/// `rounds` times `digest = SHA-256(digest)`, for each of `N` digests: on
/// the SHA extensions where the CPU has them (every x86-64 server CPU since
/// Zen and Ice Lake), else through `sha2`'s compression function.
fn iterate<const N: usize>(digests: [[u8; 32]; N], rounds: u32) -> [[u8; 32]; N] {
    #[cfg(target_arch = "x86_64")]
    if shani::available() {
        let h =
            digests.map(|d| std::array::from_fn(|i| u32::from_be_bytes([d[4 * i], d[4 * i + 1], d[4 * i + 2], d[4 * i + 3]])));
        // SAFETY: `shani::iterate` needs the CPU features it is compiled
        // for (sha, sse2, ssse3, sse4.1); `available` has just checked the
        // running CPU has every one of them. It touches no memory but its
        // arguments.
        #[allow(unsafe_code)]
        let h = unsafe { shani::iterate(h, rounds) };
        return h.map(|h| std::array::from_fn(|i| h[i / 4].to_be_bytes()[i % 4]));
    }
    digests.map(|d| iterate_portable(d, rounds))
}

/// [`iterate`] on any CPU: the single-block loop through `sha2`.
fn iterate_portable(mut digest: [u8; 32], rounds: u32) -> [u8; 32] {
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

/// The same loop on the SHA extensions (SHA-NI), with the chaining value
/// kept in registers from one round to the next.
///
/// What it saves over `compress256` per round: the call and its feature
/// check, storing the state and loading it back, and the byte swaps in and
/// out (a round's message words *are* the previous round's output words, so
/// only a lane shuffle is needed). The padding half of the block is a
/// constant, and so is the initial state; the 64 rounds themselves are the
/// standard ones (FIPS 180-4, 6.2.2) as the SHA-NI instructions compute them,
/// two per `sha256rnds2`, with the state split into the (A,B,E,F) and
/// (C,D,G,H) halves those instructions take.
#[cfg(target_arch = "x86_64")]
mod shani {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_blend_epi16, _mm_extract_epi32, _mm_set_epi32, _mm_sha256msg1_epu32,
        _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi32,
    };

    /// SHA-256's round constants (FIPS 180-4, 4.2.2).
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
        0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
        0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
        0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
        0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
        0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];

    /// Four words, the first in the lowest lane.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn lanes(w: [u32; 4]) -> __m128i {
        _mm_set_epi32(w[3] as i32, w[2] as i32, w[1] as i32, w[0] as i32)
    }

    /// Rounds `4 * i` to `4 * i + 3` with message words `w` (W[4i] in the
    /// lowest lane).
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn rounds4(abef: &mut __m128i, cdgh: &mut __m128i, w: __m128i, i: usize) {
        let wk = _mm_add_epi32(w, lanes([K[4 * i], K[4 * i + 1], K[4 * i + 2], K[4 * i + 3]]));
        *cdgh = _mm_sha256rnds2_epu32(*cdgh, *abef, wk);
        *abef = _mm_sha256rnds2_epu32(*abef, *cdgh, _mm_shuffle_epi32(wk, 0x0E));
    }

    /// The message schedule (FIPS 180-4, 6.2.2 step 1): W[t..t+4] from the
    /// sixteen words before them, four to a vector, oldest first.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn schedule(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
        let s = _mm_add_epi32(_mm_sha256msg1_epu32(w0, w1), _mm_alignr_epi8(w3, w2, 4));
        _mm_sha256msg2_epu32(s, w3)
    }

    /// Words in natural order (A..D, E..H) to the (A,B,E,F), (C,D,G,H)
    /// halves: lanes high to low F E B A... as `sha256rnds2` reads them.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn halves(dcba: __m128i, hgfe: __m128i) -> (__m128i, __m128i) {
        let cdab = _mm_shuffle_epi32(dcba, 0xB1);
        let efgh = _mm_shuffle_epi32(hgfe, 0x1B);
        (_mm_alignr_epi8(cdab, efgh, 8), _mm_blend_epi16(efgh, cdab, 0xF0))
    }

    /// The inverse of [`halves`].
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn words(abef: __m128i, cdgh: __m128i) -> (__m128i, __m128i) {
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        (_mm_blend_epi16(feba, dchg, 0xF0), _mm_alignr_epi8(dchg, feba, 8))
    }

    /// Whether this CPU has what [`iterate`] is compiled for.
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("sha")
            && std::arch::is_x86_feature_detected!("sse2")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }

    /// `rounds` times `H = SHA-256(H)` on each of `N` digests (their eight
    /// big-endian words), interleaved: the chains are independent, so one
    /// core overlaps the latency of one's `sha256rnds2` with the other's.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn iterate<const N: usize>(h: [[u32; 8]; N], rounds: u32) -> [[u32; 8]; N] {
        let iv = super::IV;
        let (iv_abef, iv_cdgh) = halves(lanes([iv[0], iv[1], iv[2], iv[3]]), lanes([iv[4], iv[5], iv[6], iv[7]]));
        // The block's second half: 0x80 after the 32-byte message, then the
        // length in bits (256) in the last word.
        let pad_lo = lanes([0x8000_0000, 0, 0, 0]);
        let pad_hi = lanes([0, 0, 0, 256]);
        let mut m0 = h.map(|h| lanes([h[0], h[1], h[2], h[3]]));
        let mut m1 = h.map(|h| lanes([h[4], h[5], h[6], h[7]]));
        for _ in 0..rounds {
            let (mut abef, mut cdgh) = ([iv_abef; N], [iv_cdgh; N]);
            let (mut w0, mut w1, mut w2, mut w3) = (m0, m1, [pad_lo; N], [pad_hi; N]);
            for l in 0..N {
                rounds4(&mut abef[l], &mut cdgh[l], w0[l], 0);
            }
            for l in 0..N {
                rounds4(&mut abef[l], &mut cdgh[l], w1[l], 1);
            }
            for l in 0..N {
                rounds4(&mut abef[l], &mut cdgh[l], w2[l], 2);
            }
            for l in 0..N {
                rounds4(&mut abef[l], &mut cdgh[l], w3[l], 3);
            }
            for i in (4..16).step_by(4) {
                for l in 0..N {
                    w0[l] = schedule(w0[l], w1[l], w2[l], w3[l]);
                    rounds4(&mut abef[l], &mut cdgh[l], w0[l], i);
                }
                for l in 0..N {
                    w1[l] = schedule(w1[l], w2[l], w3[l], w0[l]);
                    rounds4(&mut abef[l], &mut cdgh[l], w1[l], i + 1);
                }
                for l in 0..N {
                    w2[l] = schedule(w2[l], w3[l], w0[l], w1[l]);
                    rounds4(&mut abef[l], &mut cdgh[l], w2[l], i + 2);
                }
                for l in 0..N {
                    w3[l] = schedule(w3[l], w0[l], w1[l], w2[l]);
                    rounds4(&mut abef[l], &mut cdgh[l], w3[l], i + 3);
                }
            }
            for l in 0..N {
                (m0[l], m1[l]) = words(_mm_add_epi32(abef[l], iv_abef), _mm_add_epi32(cdgh[l], iv_cdgh));
            }
        }
        let mut out = [[0u32; 8]; N];
        for l in 0..N {
            out[l] = [
                _mm_extract_epi32(m0[l], 0) as u32,
                _mm_extract_epi32(m0[l], 1) as u32,
                _mm_extract_epi32(m0[l], 2) as u32,
                _mm_extract_epi32(m0[l], 3) as u32,
                _mm_extract_epi32(m1[l], 0) as u32,
                _mm_extract_epi32(m1[l], 1) as u32,
                _mm_extract_epi32(m1[l], 2) as u32,
                _mm_extract_epi32(m1[l], 3) as u32,
            ];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_iterated_sha256(iterate: impl Fn([u8; 32], u32) -> [u8; 32]) {
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

    #[test]
    fn chunks_are_the_widest_that_fit_down_to_one() {
        assert_eq!(LANES, 8);
        let widths = |mut n: usize| {
            let mut out = Vec::new();
            while n > 0 {
                out.push(width_for(n));
                n -= width_for(n);
            }
            out
        };
        assert_eq!(widths(0), Vec::<usize>::new());
        assert_eq!(widths(1), [1]);
        assert_eq!(widths(7), [4, 2, 1]);
        assert_eq!(widths(8), [8]);
        assert_eq!(widths(19), [8, 8, 2, 1]);
    }

    #[test]
    fn the_single_block_loop_is_iterated_sha256_bit_for_bit() {
        assert_iterated_sha256(|d, rounds| iterate([d], rounds)[0]);
        assert_iterated_sha256(iterate_portable);
    }

    /// The SHA-NI loop itself, where the CPU has it (the machines this
    /// project builds and runs on do; `iterate` falls back elsewhere).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_sha_ni_loop_is_iterated_sha256_bit_for_bit() {
        if !shani::available() {
            eprintln!("no SHA extensions on this CPU: the portable loop is the one in use");
            return;
        }
        let seeds = [[0u8; 32], [0xff; 32], *b"0123456789abcdef0123456789abcdef"];
        for rounds in [0, 1, 2, 17, 1000] {
            let want = seeds.map(|s| iterate_portable(s, rounds));
            // Interleaved chains stay apart, in any number and order.
            assert_eq!(iterate(seeds, rounds), want, "rounds {rounds}");
            assert_eq!(iterate([seeds[1], seeds[0]], rounds), [want[1], want[0]], "rounds {rounds}");
            assert_eq!(iterate([seeds[2]], rounds), [want[2]], "rounds {rounds}");
        }
        assert_iterated_sha256(|d, rounds| iterate([d], rounds)[0]);
    }
}
