//! The AWS SDK's own CPU per request, as the daemon's clients make them,
//! answered in-process (`support/memory_dynamodb.rs`): no network, no
//! server, so what is timed is the SDK's request path alone (building the
//! operation's config, serialising, signing, the interceptors, parsing the
//! answer) on one thread.
//!
//! - `GetItem`: the smallest request, the fixed cost of any call.
//! - `TransactWriteItems of 20 puts`: a payload like the payments path's
//!   (20 items of 6 attributes).
//! - `its items cloned and serialised alone`: the transaction's items
//!   cloned (the SDK takes them by value) and its body serialised with
//!   serde_json, the part of the second that any client pays.
//!
//! The client is configured as the daemon's DynamoDB client (no SDK
//! retries, the daemon's timeouts). Turning the SDK's stalled-stream
//! protection off as well was timed at 0.96 of this for `GetItem` and no
//! different for the transaction, so the daemon keeps it.
//!
//! Over loopback to the local stack's DynamoDB the same `GetItem` cost the
//! client one to three times more CPU again (hyper's connection task, the
//! socket calls, waking up), which this bench does not include: it is the
//! SDK's part alone.
//!
//! A module of the pipeline bench's executable, not an executable of its
//! own: each bench is linked with thin LTO across the SDK and everything
//! else it uses, and this one's link was a minute of `scripts/bench.sh`'s
//! build. It runs under that executable's allocator, MiMalloc with an
//! allocation count that is off here (one relaxed atomic load more per
//! allocation).

use std::collections::HashMap;
use std::hint::black_box;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use criterion::{Criterion, criterion_group};

use crate::memory_dynamodb::MemoryDynamoDb;

fn client() -> aws_sdk_dynamodb::Client {
    let (_end, http) = MemoryDynamoDb::new();
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .retry_config(RetryConfig::disabled())
        .timeout_config(daemon::aws::data_call_timeouts())
        .http_client(http);
    aws_sdk_dynamodb::Client::from_conf(config.build())
}

fn item(i: usize) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("payment_id".to_owned(), AttributeValue::S(format!("pay-{i:08}-7f3a9c"))),
        ("customer_id".to_owned(), AttributeValue::S(format!("cust-{:05}", i % 5000))),
        ("amount_cents".to_owned(), AttributeValue::N(format!("{}", 100 + i * 7 % 90_000))),
        ("decision".to_owned(), AttributeValue::S("approve".to_owned())),
        ("score".to_owned(), AttributeValue::N("0.125".to_owned())),
        ("decided_at".to_owned(), AttributeValue::S("2026-12-03T07:30:00.123Z".to_owned())),
    ])
}

fn transaction() -> Vec<TransactWriteItem> {
    (0..20)
        .map(|i| {
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name("cafe-payments")
                        .set_item(Some(item(i)))
                        .condition_expression("attribute_not_exists(payment_id)")
                        .build()
                        .expect("a put with a table and an item"),
                )
                .build()
        })
        .collect()
}

fn sdk(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let mut g = c.benchmark_group("sdk");
    let items = transaction();
    let client = client();
    g.bench_function("GetItem", |b| {
        b.iter(|| {
            rt.block_on(client.get_item().table_name("cafe-payments").key("payment_id", AttributeValue::S("pay-1".into())).send())
                .expect("the in-memory end answers")
        })
    });
    g.bench_function("TransactWriteItems of 20 puts", |b| {
        b.iter(|| {
            rt.block_on(client.transact_write_items().set_transact_items(Some(items.clone())).send())
                .expect("the in-memory end answers")
        })
    });
    // What any client pays for the transaction's body: the items cloned (as
    // above: the SDK takes them by value) and serialised.
    let body = serde_json::json!({"TransactItems": (0..20)
        .map(|i| {
            let item: serde_json::Map<String, serde_json::Value> = item(i)
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        AttributeValue::N(n) => serde_json::json!({"N": n}),
                        v => serde_json::json!({"S": v.as_s().expect("S or N")}),
                    };
                    (k, v)
                })
                .collect();
            serde_json::json!({"Put": {"TableName": "cafe-payments", "Item": item,
                "ConditionExpression": "attribute_not_exists(payment_id)"}})
        })
        .collect::<Vec<_>>()});
    g.bench_function("TransactWriteItems of 20 puts: its items cloned and serialised alone", |b| {
        b.iter(|| {
            black_box(items.clone());
            serde_json::to_vec(&body).expect("serialises")
        })
    });
    g.finish();
}

criterion_group!(benches, sdk);
