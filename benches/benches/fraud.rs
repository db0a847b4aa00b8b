//! Fraud scoring: the stateful rules per payment, and the model work factor.
use benches::payment_body;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pipeline::event::Body;
use pipeline::fraud::{FraudConfig, FraudEngine, model_work};
use sha2::Digest;
use std::hint::black_box;

fn payments(n: u64) -> Vec<(pipeline::event::PaymentRequested, time::OffsetDateTime)> {
    (0..n)
        .filter_map(|i| {
            let e = pipeline::decode(payment_body(i).as_bytes()).ok()?;
            match e.body {
                Body::PaymentRequested(p) => Some((p, e.ts)),
                _ => None,
            }
        })
        .collect()
}

fn fraud(c: &mut Criterion) {
    let ps = payments(1000);
    let mut g = c.benchmark_group("fraud");
    g.throughput(Throughput::Elements(ps.len() as u64));
    g.bench_function("rules x1000 (no work factor)", |b| {
        b.iter_batched(
            || FraudEngine::new(FraudConfig { work_factor: 0, ..FraudConfig::default() }).expect("config"),
            |mut engine| {
                for (p, ts) in &ps {
                    black_box(engine.score(p, *ts));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("model_work 10000 rounds", |b| b.iter(|| black_box(model_work(black_box(&ps[0].0), 10_000))));
    // What model_work did before its single-block loop: the hasher per
    // round (buffering, padding, state setup each time). The ratio of the
    // two is the loop's gain; scripts/bench.sh sets both against openssl.
    g.bench_function("Sha256::digest 10000 rounds", |b| {
        b.iter(|| {
            let mut d: [u8; 32] = black_box([7u8; 32]);
            for _ in 0..10_000 {
                d = sha2::Sha256::digest(d).into();
            }
            black_box(d)
        })
    });
    // The whole per-payment kernel of the payments path, as the daemon's
    // decide stage runs it: decode and validate the body, the model's work
    // factor (10,000, the default), the stateful rules. scripts/bench.sh
    // takes the CPU-bound ceiling of the path from it.
    let bodies: Vec<String> = (0..1000).map(payment_body).collect();
    g.throughput(Throughput::Elements(1));
    g.bench_function("payment: decode + model_work 10000 + rules", |b| {
        let mut engine = FraudEngine::new(FraudConfig { work_factor: 0, ..FraudConfig::default() }).expect("config");
        let mut next = 0usize;
        b.iter(|| {
            let body = &bodies[next % bodies.len()];
            next += 1;
            let event = pipeline::decode(black_box(body.as_bytes())).expect("a valid payment");
            if let Body::PaymentRequested(p) = &event.body {
                black_box(model_work(p, 10_000));
                black_box(engine.score(p, event.ts));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, fraud);
criterion_main!(benches);
