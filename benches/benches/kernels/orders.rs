//! The orders path's CPU work per batch: KPL de-aggregation, decoding, and
//! applying each order's events to its state (what a shard does between
//! GetRecords and the DynamoDB write).

use std::hint::black_box;

use benches::{order_body, status_body};
use criterion::{Criterion, Throughput, criterion_group};
use daemon::route::OrderHasher;

fn orders(c: &mut Criterion) {
    let mut g = c.benchmark_group("orders");
    // 100 orders, each placed (4 lines) and then moved through 4 statuses:
    // the shape of one shard's batch in morning-rush.
    let mut events: Vec<(String, String)> = Vec::new();
    for i in 0..100u64 {
        events.push((format!("o{i}"), order_body(i, 4)));
    }
    for status in ["confirmed", "preparing", "ready", "completed"] {
        for i in 0..100u64 {
            events.push((format!("o{i}"), status_body(i, status)));
        }
    }
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("decode + apply, 500 events of 100 orders", |b| {
        // The daemon's hasher for order ids.
        b.iter(|| benches::decode_and_apply::<OrderHasher>(&events))
    });
    let records: Vec<(&str, &[u8])> = events.iter().map(|(k, b)| (k.as_str(), b.as_bytes())).collect();
    let aggregate = pipeline::kpl::aggregate(&records);
    g.throughput(Throughput::Bytes(aggregate.len() as u64));
    g.bench_function("KPL de-aggregation, 500 records", |b| {
        b.iter(|| black_box(pipeline::kpl::deaggregate(black_box(&aggregate)).map(|r| r.len())))
    });
    g.finish();
}

criterion_group!(benches, orders);
