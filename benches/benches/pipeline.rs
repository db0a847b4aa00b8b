//! The decide stage with in-memory ends, next to its kernel alone, so that
//! the stage's overhead reads as a ratio: `pipeline/<path>/decide stage`
//! over `pipeline/<path>/kernel`, per element, for payments and for menu
//! items.
//!
//! - `kernel`: `daemon::route::decide::decide_batch`, the function the
//!   decide stage runs per batch, over the inputs in batches of the
//!   daemon's default `max_batch_events`, on the bench thread. The bench
//!   thread is made the only thread of a rayon pool, so the function's
//!   parallel iterator runs inline on it.
//! - `decide stage`: the same bodies as SQS messages, `max_messages` per
//!   receive, pushed by an in-memory source through the SQS input's real
//!   decide loop (`sources::sqs::stages::decide_loop`: gathering receives
//!   into batches, `Router::decide`, the hop from tokio onto the `CpuPool`
//!   and back), on a tokio multi-thread runtime, channels sized as the
//!   topology sizes them; an in-memory end collects the decided batches.
//!   No write stage and no AWS call: the router's sinks are SDK clients
//!   pointed at an unused loopback endpoint, and `decide` never uses them.
//!   (Building the rejected sink tries one `GetQueueAttributes` against
//!   that endpoint at start-up, which is refused; the sink then assumes the
//!   default message size limit.)
//!
//! Both sides run on one rayon thread (the stage's `CpuPool` is built with
//! one thread; the daemon's default is one per core), with the daemon's
//! default work factors (10,000 fraud rounds per payment, 100 JSON rounds
//! per menu item), the same bodies and a fresh fraud engine each iteration.
//! The ratio is therefore the stage's overhead per element on one CPU
//! thread (tokio, channels, the pool hop, batching, metrics), not the
//! parallel speed-up of the daemon's pool.
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::{menu_item, payment_body};
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use daemon::bridge::CpuPool;
use daemon::config::{DynamoDbSinkConfig, PipelineConfig, SqsSourceConfig};
use daemon::metrics::Metrics;
use daemon::route::decide::decide_batch;
use daemon::route::{Decided, Input, Router, Work};
use daemon::sinks::dynamodb::DynamoDbSink;
use daemon::sinks::rejected::RejectedSink;
use daemon::sources::sqs::SqsMessage;
use daemon::sources::sqs::stages::{self, decide_loop};
use pipeline::event::MenuItem;
use pipeline::fraud::{FraudConfig, FraudEngine};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

/// Nothing listens there: the sinks are built, never called.
const UNUSED_ENDPOINT: &str = "http://127.0.0.1:9";
/// Payments per iteration: two of the daemon's default batches.
const PAYMENTS: usize = 500;
/// Menu items per iteration: one of the daemon's default batches (an item
/// is 2 to 4 ms of work: 100 JSON rounds over its 20 KiB of base64).
const MENU_ITEMS: usize = 250;
/// The menu-sync scenario's mean decoded image size.
const MENU_IMAGE_BYTES: usize = 15 * 1024;

/// A `menu.item.upserted` body, number `i`, carrying `item`.
fn menu_body(i: usize, item: &MenuItem) -> String {
    serde_json::json!({
        "v": 1, "id": format!("m{i}"), "type": "menu.item.upserted", "ts": "2026-11-22T08:00:00Z",
        "store": format!("store-{}", i % 20), "data": item
    })
    .to_string()
}

/// The work factors the daemon's topology gives its router by default.
fn work(pipeline: &PipelineConfig, fraud: &FraudConfig) -> Work {
    Work {
        fraud_work_factor: fraud.work_factor,
        menu_json_rounds: pipeline.menu_json_rounds,
        max_future_secs: pipeline.max_future_secs,
    }
}

fn fresh_engine(fraud: &FraudConfig) -> FraudEngine {
    FraudEngine::new(fraud.clone()).expect("the default fraud config is valid")
}

/// A router as the topology builds one, except for its sinks' clients
/// (an unused endpoint, static credentials, no retries) and a CPU pool of
/// one thread.
async fn router(pipeline: &PipelineConfig, fraud: &FraudConfig) -> Router {
    let metrics = Arc::new(Metrics::new());
    let sqs = {
        use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig};
        aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(UNUSED_ENDPOINT)
                .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
                .retry_config(RetryConfig::disabled())
                .timeout_config(TimeoutConfig::builder().operation_timeout(Duration::from_secs(2)).build())
                .build(),
        )
    };
    let dynamodb = {
        use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(UNUSED_ENDPOINT)
                .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
                .retry_config(RetryConfig::disabled())
                .build(),
        )
    };
    // A queue URL, not a name: no GetQueueUrl.
    let queue = format!("{UNUSED_ENDPOINT}/000000000000/cafe-rejected");
    let rejected = RejectedSink::connect(sqs, &queue, Arc::clone(&metrics)).await.expect("a queue URL needs no lookup");
    Router {
        dynamodb: DynamoDbSink::new(dynamodb, DynamoDbSinkConfig::default(), Arc::clone(&metrics)),
        rejected,
        pool: CpuPool::new(1, Arc::clone(&metrics)).expect("a one-thread cpu pool"),
        engine: Arc::new(Mutex::new(fresh_engine(fraud))),
        work: work(pipeline, fraud),
        sink_concurrency: pipeline.sink_concurrency,
        metrics,
    }
}

/// `bodies` as SQS receives of `per_receive` messages each.
fn receives(bodies: &[String], per_receive: usize) -> Vec<Vec<SqsMessage>> {
    let received_at = Instant::now();
    let messages: Vec<SqsMessage> = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| SqsMessage {
            message_id: format!("msg-{i}"),
            receipt_handle: format!("receipt-{i}"),
            group_id: None,
            body: body.clone(),
            receive_count: 1,
            received_at,
        })
        .collect();
    messages.chunks(per_receive).map(<[SqsMessage]>::to_vec).collect()
}

/// The kernel: `decide_batch` per batch of `max_batch` inputs.
fn kernel(inputs: &[Input], engine: &Mutex<FraudEngine>, work: Work, max_batch: usize) -> Vec<Vec<Decided>> {
    let decided_at = "2026-11-22T08:15:31Z";
    inputs.chunks(max_batch).map(|batch| decide_batch(batch, engine, work, decided_at)).collect()
}

/// The stage: an in-memory source feeding the SQS decide loop, and an
/// in-memory end collecting what it decided.
fn through_stage(
    rt: &Runtime,
    router: &Router,
    config: &PipelineConfig,
    receivers: usize,
    receives: Vec<Vec<SqsMessage>>,
) -> Vec<stages::Decided> {
    rt.block_on(async {
        // Sized as the topology sizes an SQS input's channels.
        let (received_tx, received_rx) = mpsc::channel(config.channel_capacity * receivers);
        let (decided_tx, mut decided_rx) = mpsc::channel(config.channel_capacity);
        let source = tokio::spawn(async move {
            for receive in receives {
                if received_tx.send(receive).await.is_err() {
                    return;
                }
            }
        });
        let stage = tokio::spawn(decide_loop(received_rx, decided_tx, router.clone(), config.clone()));
        let mut out = Vec::new();
        while let Some(decided) = decided_rx.recv().await {
            out.push(decided);
        }
        source.await.expect("the source ends");
        stage.await.expect("the decide loop ends");
        out
    })
}

/// Panics unless every one of `n` inputs was decided as `path` expects:
/// a benchmark of rejections would measure the wrong thing.
fn check<'a>(path: &str, n: usize, decided: impl Iterator<Item = &'a Decided>) {
    let mut count = 0;
    for d in decided {
        count += 1;
        match (path, d) {
            ("payments", Decided::Payment(_)) | ("menu", Decided::Menu(_)) => {}
            (_, other) => panic!("{path}: an input was decided as {other:?}"),
        }
    }
    assert_eq!(count, n, "{path}: inputs decided");
}

fn pipeline(c: &mut Criterion) {
    let config = PipelineConfig::default();
    let fraud = FraudConfig::default();
    let sqs = SqsSourceConfig::default();
    let (per_receive, receivers) = (sqs.max_messages as usize, sqs.receivers as usize);
    let work = work(&config, &fraud);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let router = rt.block_on(router(&config, &fraud));
    // The bench thread as a one-thread rayon pool: `install` runs inline.
    let bench_thread =
        rayon::ThreadPoolBuilder::new().num_threads(1).use_current_thread().build().expect("a rayon pool of this thread");

    let payments: Vec<String> = (0..PAYMENTS as u64).map(payment_body).collect();
    let item = menu_item(MENU_IMAGE_BYTES);
    let menu: Vec<String> = (0..MENU_ITEMS).map(|i| menu_body(i, &item)).collect();

    let mut g = c.benchmark_group("pipeline");
    // Iterations of about 0.3 s (payments) and 0.5 to 1 s (menu): ten flat
    // samples of one iteration each (criterion warns that they overrun 3 s).
    g.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    for (path, bodies) in [("payments", &payments), ("menu", &menu)] {
        let inputs: Vec<Input> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| Input { data: body.clone().into_bytes(), position: format!("msg-{i}") })
            .collect();
        let n = inputs.len();
        let decided = bench_thread.install(|| kernel(&inputs, &Mutex::new(fresh_engine(&fraud)), work, config.max_batch_events));
        check(path, n, decided.iter().flatten());
        let decided = through_stage(&rt, &router, &config, receivers, receives(bodies, per_receive));
        check(path, n, decided.iter().flat_map(|d| &d.batch.decided));

        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{path}/kernel"), |b| {
            b.iter_batched_ref(
                || Mutex::new(fresh_engine(&fraud)),
                |engine| black_box(bench_thread.install(|| kernel(&inputs, engine, work, config.max_batch_events))),
                BatchSize::PerIteration,
            )
        });
        g.bench_function(format!("{path}/decide stage"), |b| {
            b.iter_batched(
                || {
                    *router.engine.lock().unwrap_or_else(|e| e.into_inner()) = fresh_engine(&fraud);
                    receives(bodies, per_receive)
                },
                |receives| black_box(through_stage(&rt, &router, &config, receivers, receives)),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
