//! The menu stage: SHA-256 of decoded images (the hashing the issue holds to
//! openssl's speed), base64 decoding, and the whole per-item digest with the
//! story's JSON work factor.
//!
//! After criterion's groups (`kernels.rs`), it times SHA-256 over 16 KiB and 256 KiB
//! buffers itself and runs `openssl speed -evp sha256` for the same sizes on
//! the same machine, one right after the other, and prints the ratio.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use criterion::{Criterion, Throughput, criterion_group};
use sha2::{Digest, Sha256};

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn menu(c: &mut Criterion) {
    let mut g = c.benchmark_group("menu");
    for kib in [16usize, 64, 256] {
        let img = image(kib * 1024);
        g.throughput(Throughput::Bytes(img.len() as u64));
        g.bench_function(format!("sha256 {kib} KiB"), |b| b.iter(|| black_box(Sha256::digest(black_box(&img)))));
    }
    let img = image(64 * 1024);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&img);
    g.throughput(Throughput::Bytes(img.len() as u64));
    g.bench_function("base64 decode 64 KiB", |b| {
        b.iter(|| black_box(base64::engine::general_purpose::STANDARD.decode(black_box(b64.as_bytes())).map(|v| v.len())))
    });
    let item = benches::menu_item(64 * 1024);
    g.throughput(Throughput::Elements(1));
    for rounds in [0u32, 100] {
        g.bench_function(format!("digest 64 KiB image, {rounds} JSON rounds"), |b| {
            b.iter(|| black_box(pipeline::menu::digest(black_box(&item), rounds).map(|d| d.image_ok)))
        });
    }
    g.finish();
}

/// Bytes per second of SHA-256 over `len`-byte buffers, timed for `secs`.
fn own_speed(len: usize, secs: f64) -> f64 {
    let buf = image(len);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs_f64(secs) {
        for _ in 0..16 {
            black_box(Sha256::digest(black_box(&buf)));
        }
        n += 16;
    }
    (n as f64 * len as f64) / started.elapsed().as_secs_f64()
}

/// openssl's bytes per second for `len`-byte buffers, if openssl is there.
fn openssl_speed(len: usize, secs: u32) -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-evp", "sha256", "-bytes", &len.to_string(), "-seconds", &secs.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line: "sha256    1806197.07k" (1000s of bytes per second).
    let k = text
        .lines()
        .rev()
        .find(|l| l.starts_with("sha256"))?
        .split_whitespace()
        .last()?
        .trim_end_matches('k')
        .parse::<f64>()
        .ok()?;
    Some(k * 1000.0)
}

pub fn ratio_to_openssl() {
    for len in [16 * 1024, 256 * 1024] {
        let ours = own_speed(len, 2.0);
        match openssl_speed(len, 2) {
            Some(theirs) => println!(
                "sha256 {} KiB: cafe-stream (sha2) {:.2} GB/s, openssl {:.2} GB/s, ratio {:.3}",
                len / 1024,
                ours / 1e9,
                theirs / 1e9,
                ours / theirs
            ),
            None => println!("sha256 {} KiB: cafe-stream (sha2) {:.2} GB/s; openssl not found", len / 1024, ours / 1e9),
        }
    }
}

criterion_group!(benches, menu);
