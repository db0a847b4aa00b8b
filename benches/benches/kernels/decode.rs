//! Decoding and validating events: the first CPU stage of every path.

use benches::{order_body, payment_body};
use criterion::{Criterion, Throughput, criterion_group};
use std::hint::black_box;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let payments: Vec<String> = (0..1000).map(payment_body).collect();
    g.throughput(Throughput::Elements(payments.len() as u64));
    g.bench_function("payment.requested x1000", |b| {
        b.iter(|| {
            for p in &payments {
                black_box(pipeline::decode(black_box(p.as_bytes())).ok());
            }
        })
    });
    let bulk = order_body(1, 300);
    g.throughput(Throughput::Bytes(bulk.len() as u64));
    g.bench_function("order.placed 300 lines", |b| b.iter(|| black_box(pipeline::decode(black_box(bulk.as_bytes())).ok())));
    g.finish();
}

criterion_group!(benches, decode);
