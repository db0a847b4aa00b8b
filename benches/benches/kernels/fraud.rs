//! Fraud scoring: the stateful rules per payment, and the model work factor.

use benches::payment_body;
use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use pipeline::event::Body;
use pipeline::fraud::{FraudConfig, FraudEngine, model_work, model_work_many};
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
                    black_box(engine.score(p, *ts, *ts));
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("model_work 10000 rounds", |b| b.iter(|| black_box(model_work(black_box(&ps[0].0), 10_000))));
    // The decide stage's form: payments' chains interleaved on one core,
    // `LANES` at a time. Per payment, to set against the line above.
    let eight: Vec<_> = ps.iter().take(8).map(|(p, _)| p).collect();
    g.throughput(Throughput::Elements(eight.len() as u64));
    g.bench_function("model_work_many 10000 rounds (per payment)", |b| {
        b.iter(|| black_box(model_work_many(black_box(&eight), 10_000)))
    });
    g.throughput(Throughput::Elements(1));
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
    // decide stage runs it: decode and validate the bodies, the model's
    // work factor (10,000, the default) `LANES` payments at a time, the
    // stateful rules. Per payment; scripts/bench.sh takes the CPU-bound
    // ceiling of the path from it.
    let bodies: Vec<String> = (0..1000).map(payment_body).collect();
    let lanes = pipeline::fraud::LANES;
    eprintln!("fraud model: {lanes} chains interleaved");
    g.throughput(Throughput::Elements(lanes as u64));
    g.bench_function("payment: decode + model work 10000 (chains interleaved) + rules", |b| {
        let mut engine = FraudEngine::new(FraudConfig { work_factor: 0, ..FraudConfig::default() }).expect("config");
        let mut next = 0usize;
        b.iter(|| {
            let events: Vec<_> = (0..lanes)
                .map(|_| {
                    next += 1;
                    pipeline::decode(black_box(bodies[next % bodies.len()].as_bytes())).expect("a valid payment")
                })
                .collect();
            let payments: Vec<_> = events
                .iter()
                .filter_map(|e| match &e.body {
                    Body::PaymentRequested(p) => Some((p, e.ts)),
                    _ => None,
                })
                .collect();
            let refs: Vec<_> = payments.iter().map(|(p, _)| *p).collect();
            black_box(model_work_many(&refs, 10_000));
            for (p, ts) in payments {
                black_box(engine.score(p, ts, ts));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, fraud);
