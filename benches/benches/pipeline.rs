//! Each path's stage with in-memory ends, next to its kernel alone, so that
//! the stage's overhead reads as a ratio: `pipeline/<path>/<stage>` over
//! `pipeline/<path>/kernel`, per element: the decide stage for payments and
//! menu items, the whole shard stage for orders. The executable runs the
//! AWS SDK's bench first (`sdk/...`, `pipeline/sdk.rs`).
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
//! - orders `kernel`: decoding each event and applying it to its order's
//!   state (`pipeline::decode`, `pipeline::orders::apply`, without the
//!   shard positions the stage records, the states in a map), on the bench
//!   thread: what `benches/kernels/orders.rs` measures
//!   (`benches::decode_and_apply`), over this bench's events.
//! - orders `shard stage`: the same events as one shard's records, in
//!   GetRecords pages of the default `max_records` (1,000, above the
//!   default `max_batch_events`: each page is one batch), pushed by an
//!   in-memory source through the Kinesis source's real per-shard task
//!   (`sources::kinesis::shard::process_shard`, spawned on the runtime as
//!   the topology spawns it: `Router::decide` on the `CpuPool`, holding
//!   back the events of orders an earlier batch has in flight,
//!   `Router::write` (grouping by order, the order cache, the state
//!   machine, the conditional writes and their aggregate rows),
//!   checkpoints and the checkpoint at SHARD_END), writing to an in-memory
//!   order store (`support/memory_orders.rs`: the router's `OrderStore`,
//!   which keeps each order's version and refuses a write against another,
//!   as the table's condition does). The lease and the checkpoints go
//!   through the SDK to an in-memory DynamoDB (`support/memory_dynamodb.rs`:
//!   the SDK's own client, with the daemon's call timeouts, and an
//!   in-process HTTP end that commits every transaction).
//! - orders `shard stage, order cache full`: the same, the shard's cache
//!   in a pool of order caches that a sibling shard's orders in progress
//!   fill to its bound before the run (`full_pool`): the run's orders
//!   push the sibling's out, and each write hands what it pushed out to
//!   the CPU pool to be freed (a backlog holds the pool at its bound).
//!   The sibling's cache is the run's output, dropped after the timing.
//! - orders `shard stage through the SDK`: the same, with the daemon's own
//!   order store, the DynamoDB sink, writing to that in-memory DynamoDB:
//!   each write built, serialised and signed by the SDK, and the responses
//!   read. Not a goal of its own (that work is the sink's); it shows what
//!   the SDK's requests add. The lease is taken through the same
//!   end before each run, outside the timing; each run starts with an
//!   empty order cache, as a newly leased shard does. No order state is
//!   read from the table: each order's first event places it, and the
//!   cache keeps every order after that. Before timing, one run checks
//!   that the shard ended, that every order was put once and every event
//!   written once (so nothing was retried, rejected or dropped) by each
//!   store, within a
//!   time limit (a retry loop fails the bench instead of hanging it);
//!   each timed run checks that the shard ended and no call was refused.
//!   The events: 2,000 orders, each placed (4 lines) and moved through 4
//!   statuses, in waves of 200 orders whose events are one GetRecords page
//!   apart: pages 2 to 7 each hold the next event of 1,000 orders (the
//!   first two and the last two pages fewer orders, with more events
//!   each), and every batch waits on the one before it for some of its
//!   orders (a backlog of morning-rush read from one shard).
//!
//! Both sides have one rayon thread (the stage's `CpuPool` is built with
//! one thread; the daemon's default is one per core), with the daemon's
//! default work factors (10,000 fraud rounds per payment, 100 JSON rounds
//! per menu item), the same bodies, and for payments a fresh fraud engine
//! each iteration. The ratio is therefore the stage's overhead per element
//! (tokio, channels, the pool hop, batching, metrics; for orders also the
//! grouping by order, the order cache, the shard's ordering of batches and
//! the checkpoints, and through the SDK the writes' serialisation), not the
//! parallel speed-up of the daemon's pool. The stages' figures are wall
//! time, and their tokio tasks run on the runtime's two workers beside the
//! rayon thread: for orders, the writes of one batch overlap the decoding
//! of the next. Their time on CPU per event, by thread, is printed apart
//! (`orders: on CPU per event ...`, after the check runs): the stage's
//! threads together spend more than its wall time.

/// The daemon's allocator (daemon/src/main.rs), counting the allocations
/// made while [`allocations`] counts them: the check runs, never a timed
/// one (not counting, a call costs one more relaxed load).
#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// MiMalloc, with a count of the allocations (and reallocations) made
/// while `COUNTING` is set.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: each method passes its arguments unchanged to MiMalloc's, and
// so keeps the caller's contract; the count touches only two atomics (it
// neither allocates nor unwinds).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

/// `f`'s result, and the allocations made meanwhile by every thread (the
/// runtime's and the pool's included: nothing else runs during a check).
fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::SeqCst);
    let out = f();
    COUNTING.store(false, Ordering::SeqCst);
    (out, ALLOCATIONS.load(Ordering::Relaxed))
}

#[path = "support/memory_dynamodb.rs"]
mod memory_dynamodb;
#[path = "support/memory_orders.rs"]
mod memory_orders;
/// The AWS SDK's CPU per request (criterion's `sdk/...`), in this
/// executable to save a link (its file says why).
#[path = "pipeline/sdk.rs"]
mod sdk;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::{menu_item, order_body, payment_body, status_body};
use criterion::{BatchSize, Criterion, SamplingMode, Throughput, criterion_group};
use daemon::bridge::CpuPool;
use daemon::config::{DynamoDbSinkConfig, KinesisSourceConfig, PipelineConfig, SqsSourceConfig};
use daemon::metrics::Metrics;
use daemon::route::apply_orders::footprint;
use daemon::route::decide::decide_batch;
use daemon::route::{
    Decided, FraudStateCache, Input, OrderCache, OrderCaches, OrderHasher, OrderStore, Router, Scoring, Tunables, Tuned, Work,
};
use daemon::sinks::dynamodb::DynamoDbSink;
use daemon::sinks::rejected::RejectedSink;
use daemon::sources::kinesis::leases::Leases;
use daemon::sources::kinesis::shard::{ShardContext, ShardExit, process_shard};
use daemon::sources::kinesis::source::{Fetched, ShardRecord};
use daemon::sources::sqs::SqsMessage;
use daemon::sources::sqs::stages::{self, decide_loop};
use memory_dynamodb::{MemoryDynamoDb, SHARD};
use memory_orders::{MemoryOrders, staged};
use pipeline::event::MenuItem;
use pipeline::fraud::{FraudConfig, FraudEngine, Rules};
use pipeline::orders::OrderState;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Nothing listens there: the sinks are built, never called.
const UNUSED_ENDPOINT: &str = "http://127.0.0.1:9";
/// Payments per iteration: two of the daemon's default batches.
const PAYMENTS: usize = 500;
/// Menu items per iteration: one of the daemon's default batches (an item
/// is 3 to 4 ms of work: 100 JSON rounds over its 24 KiB of base64).
const MENU_ITEMS: usize = 250;
/// The menu-sync scenario's mean decoded image size: its sizes are
/// log-uniform over [2, 64] KiB, whose mean is (64 - 2) / ln(64 / 2) =
/// 17.9 KiB (a run's 10,000 images averaged 18.05 KiB). The kernel is
/// linear in the image's size, so the item of mean size costs the mean.
const MENU_IMAGE_BYTES: usize = 18 * 1024;
/// Orders per iteration of the orders path, and how many start together.
const ORDERS: u64 = 2_000;
const WAVE: u64 = 200;
/// The statuses each order moves through after `order.placed`.
const STATUSES: [&str; 4] = ["confirmed", "preparing", "ready", "completed"];

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

/// A DynamoDB client as the daemon's, answered by `http` (`None`: sent to
/// an unused endpoint, refused).
/// The router's in-process fraud engine, fresh: each run scores against
/// an empty history, as the kernel's fresh engine does.
fn reset_engine(router: &Router, fraud: &FraudConfig) {
    if let Scoring::Process(engine) = &router.scoring {
        *engine.lock().unwrap_or_else(|e| e.into_inner()) = fresh_engine(fraud);
    }
}

fn dynamodb_client(http: Option<aws_sdk_dynamodb::config::SharedHttpClient>) -> aws_sdk_dynamodb::Client {
    use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
    let mut config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(UNUSED_ENDPOINT)
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .retry_config(RetryConfig::disabled())
        .timeout_config(daemon::aws::data_call_timeouts());
    if let Some(http) = http {
        config = config.http_client(http);
    }
    aws_sdk_dynamodb::Client::from_conf(config.build())
}

/// A router as the topology builds one, except for its sinks' clients
/// (an unused endpoint, static credentials, no retries; DynamoDB's
/// `dynamodb`) and a CPU pool of one thread.
async fn router(pipeline: &PipelineConfig, fraud: &FraudConfig, dynamodb: aws_sdk_dynamodb::Client) -> Router {
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
    // A queue URL, not a name: no GetQueueUrl.
    let queue = format!("{UNUSED_ENDPOINT}/000000000000/cafe-rejected");
    let rejected = RejectedSink::connect(sqs, &queue, Arc::clone(&metrics)).await.expect("a queue URL needs no lookup");
    let dynamodb = DynamoDbSink::new(dynamodb, DynamoDbSinkConfig::default(), Arc::clone(&metrics));
    Router {
        orders: Arc::new(dynamodb.clone()),
        dynamodb,
        rejected,
        pool: CpuPool::new(1, Arc::clone(&metrics)).expect("a one-thread cpu pool"),
        scoring: Scoring::Process(Arc::new(Mutex::new(fresh_engine(fraud)))),
        tunables: Arc::new(Tunables::new(Tuned {
            work: work(pipeline, fraud),
            linger: Duration::from_millis(pipeline.linger_ms),
            rules: Arc::new(Rules::new(fraud.clone()).expect("valid fraud config")),
        })),
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
    inputs.chunks(max_batch).map(|batch| decide_batch(batch, Some(engine), work, decided_at)).collect()
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

/// Prints a path's allocations (and reallocations) per element, its
/// kernel's and its stage's (from one run each: the stage's count moves a
/// little with how its batches happen to form), for
/// `scripts/bench_table.py`.
fn per_element_allocations(path: &str, n: usize, by_kernel: u64, by_stage: u64) {
    let per = |count: u64| count as f64 / n as f64;
    eprintln!("{path}: allocations per element: kernel {:.2}, stage {:.2}", per(by_kernel), per(by_stage));
}

/// Order events in shard order, as (order id, body): 2,000 orders in waves
/// of 200; each page of 1,000 records holds one wave's `order.placed` and
/// the next status of each of the four waves before it.
fn order_events() -> Vec<(String, String)> {
    let waves = ORDERS / WAVE;
    let mut events = Vec::new();
    for step in 0..waves + STATUSES.len() as u64 {
        for layer in 0..=STATUSES.len() as u64 {
            let Some(wave) = step.checked_sub(layer).filter(|w| *w < waves) else { continue };
            for i in wave * WAVE..(wave + 1) * WAVE {
                let body = match layer {
                    0 => order_body(i, 4),
                    k => status_body(i, STATUSES[k as usize - 1]),
                };
                events.push((format!("o{i}"), body));
            }
        }
    }
    events
}

/// The sequence number before the first of [`pages`]' records (each
/// record's is one more than the one before).
const SEQUENCE_BEFORE: u128 = 49_650_000_000_000_000_000_000;

/// `events` as one shard's GetRecords pages of `max_records`, the last one
/// closing the shard.
fn pages(events: &[(String, String)], max_records: usize) -> Vec<Fetched> {
    let mut sequence = SEQUENCE_BEFORE;
    let mut pages: Vec<Fetched> = events
        .chunks(max_records)
        .map(|page| Fetched {
            records: page
                .iter()
                .map(|(_, body)| {
                    sequence += 1;
                    ShardRecord { sequence: Arc::from(sequence.to_string()), sub: 0, data: body.clone().into_bytes() }
                })
                .collect(),
            aggregated: vec![false; page.len()],
            end: false,
            room: None,
        })
        .collect();
    if let Some(last) = pages.last_mut() {
        last.end = true;
    }
    pages
}

/// The orders kernel (`benches::decode_and_apply`): decode and apply every
/// event, the states in a map with the daemon's hasher for order ids.
fn orders_kernel(events: &[(String, String)]) -> usize {
    benches::decode_and_apply::<OrderHasher>(events)
}

/// A shard's context as the topology builds one, on `router`, with the
/// lease of [`SHARD`] taken through `dynamodb` (the in-memory end) and an
/// empty order cache pool; and the lease's generation.
fn leased_shard(
    rt: &Runtime,
    router: &Router,
    config: &PipelineConfig,
    dynamodb: &aws_sdk_dynamodb::Client,
) -> (Arc<ShardContext>, i64) {
    let bytes = usize::try_from(KinesisSourceConfig::default().order_cache_bytes).unwrap_or(usize::MAX);
    leased_shard_in(rt, router, config, dynamodb, OrderCaches::new(bytes, None))
}

/// [`leased_shard`], its order cache in `orders` (a pool other shards'
/// caches may share).
fn leased_shard_in(
    rt: &Runtime,
    router: &Router,
    config: &PipelineConfig,
    dynamodb: &aws_sdk_dynamodb::Client,
    orders: Arc<OrderCaches>,
) -> (Arc<ShardContext>, i64) {
    let stream = KinesisSourceConfig::default();
    let leases = Leases::new(dynamodb.clone(), stream.clone(), "bench-worker".into(), Arc::clone(&router.metrics));
    let taken = rt.block_on(leases.take(&mut rand::rng())).expect("the in-memory lease table answers");
    let generation = taken.iter().find(|l| l.key == SHARD).expect("the one lease is taken").counter;
    let context = ShardContext {
        router: router.clone(),
        leases: Arc::new(leases),
        pipeline: config.clone(),
        metrics: Arc::clone(&router.metrics),
        sync_now: Arc::new(tokio::sync::Notify::new()),
        orders,
        config: stream,
    };
    (Arc::new(context), generation)
}

/// Orders a sibling shard's cache holds before a run of the shard stage
/// with the pool full ([`full_pool`]): twice the run's, so that the run's
/// own orders, at their largest, push out only the sibling's.
const SIBLING_ORDERS: u64 = 2 * ORDERS;

/// A pool of order caches that is full: a sibling shard's cache holding
/// [`SIBLING_ORDERS`] orders in progress (placed and moved through every
/// status but the last), exactly the pool's bytes. The run's orders in
/// progress then push out the oldest of the sibling's (none used since),
/// and every write of a batch hands what it pushed out to the CPU pool to
/// be freed: a shard read while
/// the pool's bound is reached (a backlog of many orders at once). The
/// sibling's orders are decoded and applied afresh for each run, so that
/// what the run frees is no other run's (a copy of a state would share
/// its strings' counts with the original).
fn full_pool() -> (Arc<OrderCaches>, OrderCache) {
    let mut states: HashMap<String, Option<OrderState>, OrderHasher> = HashMap::default();
    for i in 1_000_000..1_000_000 + SIBLING_ORDERS {
        let in_progress = &STATUSES[..STATUSES.len() - 1];
        let bodies = std::iter::once(order_body(i, 4)).chain(in_progress.iter().map(|s| status_body(i, s)));
        for body in bodies {
            let event = pipeline::decode(body.as_bytes()).expect("the sibling's events decode");
            let id = pipeline::orders::order_id(&event).expect("an order event").to_owned();
            let state = states.entry(id).or_default();
            assert!(
                matches!(pipeline::orders::apply(state, &event), pipeline::orders::Applied::Changed { .. }),
                "the sibling's events apply"
            );
        }
    }
    let bytes = states.iter().map(|(id, state)| footprint(id, state.as_ref())).sum();
    let pool = OrderCaches::new(bytes, None);
    let sibling = pool.cache(usize::MAX);
    for (id, state) in states {
        sibling.put(id, state);
    }
    assert_eq!((sibling.len(), pool.bytes()), (SIBLING_ORDERS as usize, bytes), "the sibling fills the pool");
    (pool, sibling)
}

/// Runs of the orders kernel and shard stage whose time on CPU is shown
/// by thread.
const CPU_RUNS: usize = 30;

/// The kinds of thread whose time on CPU [`cpu_by_thread`] sums: the
/// runtime's workers, the CPU pool's, and the rest (the bench thread).
const RUNTIME: &str = "runtime";
const POOL: &str = "pool";
const BENCH_THREAD: &str = "bench thread";

/// This process' threads' time on CPU so far, in ns, summed by kind, from
/// `/proc/self/task/*/schedstat`.
fn cpu_by_thread() -> HashMap<&'static str, u64> {
    // A running thread's count there is brought up to date only at a
    // scheduler tick (4 ms here) or when it stops running: this thread,
    // reading its own, stops for a moment first, or its last few
    // milliseconds would count in the next window instead of this one.
    // (The runtime's and the pool's threads are idle between runs.)
    std::thread::sleep(Duration::from_micros(1));
    let mut by = HashMap::new();
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task lists this process' threads");
    for task in tasks.flatten() {
        let path = task.path();
        // A thread that ended meanwhile has no files left: it is skipped.
        let (Ok(comm), Ok(stat)) = (std::fs::read_to_string(path.join("comm")), std::fs::read_to_string(path.join("schedstat")))
        else {
            continue;
        };
        let ns: u64 = stat.split_whitespace().next().and_then(|n| n.parse().ok()).expect("schedstat starts with ns on CPU");
        let kind = match comm.trim() {
            c if c.starts_with("tokio-") => RUNTIME,
            c if c.starts_with("cafe-cpu") => POOL,
            _ => BENCH_THREAD,
        };
        *by.entry(kind).or_default() += ns;
    }
    by
}

/// Each kind's time on CPU since `before` (a thread that ended meanwhile
/// takes its time with it: none do here, the runtime and pool outlive the
/// runs).
fn on_cpu_since(before: &HashMap<&'static str, u64>) -> HashMap<&'static str, u64> {
    cpu_by_thread().into_iter().map(|(kind, ns)| (kind, ns.saturating_sub(before.get(kind).copied().unwrap_or(0)))).collect()
}

/// How long one run of the shard stage may take before the bench fails
/// (a batch retried forever: a rejection, or a call the end refuses).
const SHARD_STAGE_LIMIT: Duration = Duration::from_secs(120);

/// How far the source of [`through_shard`] reads ahead of the shard.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ahead {
    /// `prefetch_batches`, as the topology sizes the channel: the source's
    /// task refills it when the runtime runs it, and which batches find a
    /// next one waiting follows the scheduler (and the host's load).
    AsTheTopology,
    /// Every page in the channel before the shard starts, and the shard's
    /// task out of tokio's cooperative budget: each batch but the last
    /// finds the next one waiting. (Within the budget, a task that has not
    /// yielded for a while gets `Pending` from a channel holding a page.)
    Everything,
}

/// The shard stage: an in-memory source feeding one shard's task (spawned
/// as the topology spawns it, or out of the budget: [`Ahead`]) its pages,
/// through a channel sized as `ahead` says, until the shard is
/// checkpointed at its end.
fn through_shard(rt: &Runtime, context: Arc<ShardContext>, generation: i64, pages: Vec<Fetched>, ahead: Ahead) -> ShardExit {
    rt.block_on(async {
        let capacity = match ahead {
            Ahead::AsTheTopology => context.config.prefetch_batches,
            Ahead::Everything => pages.len().max(1),
        };
        let (tx, rx) = mpsc::channel(capacity);
        let mut pages = pages.into_iter();
        if ahead == Ahead::Everything {
            for page in pages.by_ref() {
                tx.try_send(page).expect("the channel holds every page");
            }
        }
        let source = tokio::spawn(async move {
            for page in pages {
                if tx.send(page).await.is_err() {
                    return;
                }
            }
        });
        let (stop, lost) = (CancellationToken::new(), CancellationToken::new());
        let pool = context.router.pool.clone();
        let shard = process_shard(context, SHARD.to_owned(), generation, rx, stop, lost);
        let shard = match ahead {
            Ahead::AsTheTopology => tokio::spawn(shard),
            Ahead::Everything => tokio::spawn(tokio::task::unconstrained(shard)),
        };
        let exit = tokio::time::timeout(SHARD_STAGE_LIMIT, shard)
            .await
            .expect("orders: the shard stage ended within its limit (no batch retried forever)")
            .expect("orders: the shard task did not panic");
        source.await.expect("the source ends");
        // What the stage handed the pool to free (the last parts' events
        // and inputs, the shard's order cache) is freed within the run:
        // the pool's one thread takes jobs from outside it in order.
        pool.run(|| ()).await.expect("the pool runs");
        exit
    })
}

/// The orders path: its kernel and its shard stage, after one checked run.
fn orders(c: &mut Criterion, rt: &Runtime, config: &PipelineConfig, fraud: &FraudConfig) {
    let (end, http) = MemoryDynamoDb::new();
    let dynamodb = dynamodb_client(Some(http));
    // The daemon's default fraud history, shared in DynamoDB (`[fraud]
    // state`): payments are scored in the write stage, and a shard hands
    // two batches at once to the pool (one with the history in the process,
    // checked below). No payment here: nothing is scored either way.
    let router = Router {
        scoring: Scoring::Shared { cache: Arc::new(FraudStateCache::new(fraud.max_tracked_keys, None)) },
        ..rt.block_on(router(config, fraud, dynamodb.clone()))
    };
    let events = order_events();
    let max_records = KinesisSourceConfig::default().max_records as usize;
    assert_eq!(orders_kernel(&events), ORDERS as usize, "orders: the kernel's orders");
    // Counted warm, as the stage is below.
    let (_, by_kernel) = allocations(|| orders_kernel(&events));
    end.counting.store(true, Ordering::Relaxed);
    let (context, generation) = leased_shard(rt, &router, config, &dynamodb);
    let exit = through_shard(rt, context, generation, pages(&events, max_records), Ahead::AsTheTopology);
    end.counting.store(false, Ordering::Relaxed);
    assert_eq!(exit, ShardExit::Ended, "orders: the shard was read to its end and checkpointed");
    assert_eq!(end.refused.load(Ordering::Relaxed), 0, "orders: a call the in-memory end does not serve");
    assert_eq!(end.order_puts.load(Ordering::Relaxed), ORDERS, "orders: order items put");
    assert_eq!(end.history_entries.load(Ordering::Relaxed), events.len() as u64, "orders: events written");
    // Every event left the pipeline written, at the first attempt: a record
    // retried would first count as failed, a repeat or rejection otherwise.
    let outcomes: Vec<(String, u64)> = router
        .metrics
        .encode()
        .lines()
        .filter(|l| l.starts_with("cafe_pipeline_events_total{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect();
    let written =
        format!("cafe_pipeline_events_total{{source=\"{}\",outcome=\"written\"}}", KinesisSourceConfig::default().stream);
    assert_eq!(outcomes, vec![(written, events.len() as u64)], "orders: events out of the pipeline, by outcome");

    // The same stage with an in-memory order store in place of the SDK's
    // requests (the lease and checkpoints still go through the SDK to the
    // in-memory DynamoDB): the stage's own work, against its kernel.
    let store = Arc::new(MemoryOrders::default());
    *store.watching.lock().expect("the store's lock") = Some(Arc::clone(&router.metrics));
    let in_memory = Router { orders: Arc::clone(&store) as Arc<dyn OrderStore>, ..router.clone() };
    let (context, generation) = leased_shard(rt, &in_memory, config, &dynamodb);
    let staged_before = staged(&router.metrics);
    let exit = through_shard(rt, context, generation, pages(&events, max_records), Ahead::Everything);
    assert_eq!(exit, ShardExit::Ended, "orders, in-memory store: the shard was read to its end and checkpointed");
    let checked = |store: &MemoryOrders| {
        assert_eq!(store.refused.load(Ordering::Relaxed), 0, "orders: a read the in-memory store does not serve");
        assert_eq!(store.conflicts.load(Ordering::Relaxed), 0, "orders: a write the in-memory store refused");
        assert_eq!(store.order_puts.load(Ordering::Relaxed), ORDERS, "orders, in-memory store: orders put");
        assert_eq!(store.history_entries.load(Ordering::Relaxed), events.len() as u64, "orders, in-memory store: events");
    };
    checked(&store);
    store.watching.lock().expect("the store's lock").take();
    // The shard reads its next batch and hands it to the pool before it
    // polls the write of this one: every write of a batch but the last is
    // made after the next batch entered the decide stage. With the writes
    // polled first (the pool idle while a write's state machine ran on
    // the shard's task) no write was. Checked with every page waiting and
    // out of tokio's budget ([`Ahead::Everything`]), this holds whatever
    // the timing: which writes found a decide still under way, counted
    // that way before, followed the scheduler (6 of 10 on most runs; on
    // busy CI hosts, 4 of 12 writes fed as the topology feeds a shard, and
    // 9 of 14 with the pages waiting: batches split behind a write of the
    // one before still in flight, a split part written later).
    assert!(config.max_batch_events <= max_records, "orders: each page is one batch (no page coalesced with the next)");
    let pages_read = events.len().div_ceil(max_records) as i64;
    let watched = std::mem::take(&mut *store.watched.lock().expect("the store's lock"));
    let page_of =
        |w: &memory_orders::Watched| w.first.map(|sequence| ((sequence - SEQUENCE_BEFORE - 1) / max_records as u128) as i64);
    let early: Vec<(Option<i64>, i64)> = watched
        .iter()
        .map(|w| (page_of(w), w.staged - staged_before))
        .filter(|&(page, staged)| page.is_none_or(|page| page + 1 < pages_read && staged < page + 2))
        .collect();
    // And the two batches after it, most often (`DECIDE_AHEAD` in
    // `sources/kinesis/shard.rs`): the pool finds the next batch waiting
    // when it ends one. Not every write: a wake-up of the shard's task
    // that finds two decides ended takes up both batches before it reads
    // on, and the batches read and not yet durable are bounded
    // (`max_batches_in_flight`). With one batch handed to the pool at a
    // time, no write was made with two after it in the decide stage.
    // Writes made after the two batches after theirs entered the decide
    // stage (`staged_before`: the count before the run).
    let two_ahead = |watched: &[memory_orders::Watched], staged_before: i64| {
        watched.iter().filter(|w| page_of(w).is_some_and(|page| w.staged - staged_before >= page + 3)).count()
    };
    let ahead = two_ahead(&watched, staged_before);
    let mut written: Vec<i64> = watched.iter().filter_map(page_of).collect();
    written.sort_unstable();
    written.dedup();
    eprintln!(
        "orders, in-memory store: {} writes for {pages_read} batches, {} made before the next batch was handed to the pool, \
         {ahead} after the two batches after it were",
        watched.len(),
        early.len()
    );
    assert_eq!(written, (0..pages_read).collect::<Vec<_>>(), "orders: the batches written (each page one batch)");
    assert!(early.is_empty(), "orders: writes (batch, batches handed to the pool by then) made too early: {early:?}");
    assert!(ahead > 0, "orders: no write made after the two batches after it were handed to the pool");

    // With the fraud history in the process, one batch at a time: two on
    // the pool at once would reach the history in whichever order they
    // ended. No write is made after the two batches after it were handed
    // over (the same count, 6-7 of 10 with two).
    *store.watching.lock().expect("the store's lock") = Some(Arc::clone(&router.metrics));
    store.clear();
    let process = Router { scoring: Scoring::Process(Arc::new(Mutex::new(fresh_engine(fraud)))), ..in_memory.clone() };
    let (context, generation) = leased_shard(rt, &process, config, &dynamodb);
    let staged_before = staged(&router.metrics);
    let exit = through_shard(rt, context, generation, pages(&events, max_records), Ahead::Everything);
    assert_eq!(exit, ShardExit::Ended, "orders, history in the process: the shard was read to its end and checkpointed");
    checked(&store);
    store.watching.lock().expect("the store's lock").take();
    let watched = std::mem::take(&mut *store.watched.lock().expect("the store's lock"));
    let ahead = two_ahead(&watched, staged_before);
    eprintln!(
        "orders, history in the process: {ahead} of {} writes after the two batches after it were handed to the pool",
        watched.len()
    );
    assert_eq!(ahead, 0, "orders, history in the process: batches decided two at a time");

    // A write that ends in the same wake-up of the shard's task as the
    // next batch's decide (each held until the batch after its own has
    // left the decide stage, or no batch is in it: `memory_orders::Hold`)
    // does not split that batch: the shard takes up the ended writes
    // before it splits. Taken up after the split, they made 17 writes for
    // the 10 batches in 4 runs of 4, each blocked part an extra call.
    store.clear();
    assert_eq!(memory_orders::deciding(&router.metrics), 0, "orders: a decide left under way (a held write would wait for it)");
    *store.holding.lock().expect("the store's lock") = Some(memory_orders::Hold {
        metrics: Arc::clone(&router.metrics),
        taken_before: memory_orders::taken(&router.metrics),
        sequence_before: SEQUENCE_BEFORE,
        per_page: max_records as u128,
    });
    let (context, generation) = leased_shard(rt, &in_memory, config, &dynamodb);
    let exit = through_shard(rt, context, generation, pages(&events, max_records), Ahead::Everything);
    store.holding.lock().expect("the store's lock").take();
    assert_eq!(exit, ShardExit::Ended, "orders, writes held: the shard was read to its end and checkpointed");
    checked(&store);
    let writes = store.writes.load(Ordering::Relaxed);
    eprintln!("orders, writes held until the next batch was decided: {writes} writes for {pages_read} batches");
    assert_eq!(writes, pages_read as u64, "orders, writes held: a batch split behind a write that had ended");

    // The allocations of a run as timed (the store not watching: reading
    // the metrics allocates), the lease and the pages made beforehand.
    store.clear();
    let ((context, generation), fetched) = (leased_shard(rt, &in_memory, config, &dynamodb), pages(&events, max_records));
    let (exit, by_stage) = allocations(|| through_shard(rt, context, generation, fetched, Ahead::AsTheTopology));
    assert_eq!(exit, ShardExit::Ended, "orders, in-memory store: the shard was read to its end and checkpointed");
    checked(&store);
    per_element_allocations("orders", events.len(), by_kernel, by_stage);
    // A count, nearly the same in every run and build (what moves it: how
    // the batches happen to form, and a checkpoint on the shard's timer,
    // which a slow run may reach once more): 7.16 more allocations per
    // event than the kernel's while the order cache copied each order's id
    // on every put, 5.60 since the id taken out goes back in (and becomes
    // the write's), 4.76 since a write's one row is held inline, 3.76
    // since the position parsed and its history entry share the sequence
    // number, 2.75 since the record's position is handed on as the shard's
    // reader has it, not as text parsed back. What is left: the position's
    // sequence number, the event's `Arc`, who placed a new order, and the
    // in-memory store's copy of a new order's id (0.2).
    assert!(
        by_stage.saturating_sub(by_kernel) <= 3 * events.len() as u64,
        "orders: the shard stage made {by_stage} allocations, {by_kernel} in the kernel, for {} events",
        events.len()
    );

    // Where the stage's time goes, by thread, next to the kernel's (for
    // `scripts/bench_table.py`; not under `--test` or `--list`): its wall
    // is as long as its critical path, at least the slower thread's time
    // on CPU (and half the threads' sum, on two cores), whatever the
    // overlap. Time on CPU, by the threads' own counts: what a busy host
    // takes from the wall (`schedstat` counts only time a thread ran)
    // does not show.
    if benches::measuring() {
        let (mut kernel_walls, mut stage_walls) = (Vec::new(), Vec::new());
        let (mut kernel_cpu, mut stage_cpu) = (0u64, HashMap::<&'static str, u64>::new());
        let (mut full_walls, mut full_cpu) = (Vec::new(), HashMap::<&'static str, u64>::new());
        // One run of the shard stage on `shard`, its wall and its threads'
        // time on CPU added to `walls` and `cpu`.
        let stage_run =
            |shard: (Arc<ShardContext>, i64), walls: &mut Vec<Duration>, cpu: &mut HashMap<&'static str, u64>, what| {
                let ((context, generation), fetched) = (shard, pages(&events, max_records));
                let before = cpu_by_thread();
                let started = Instant::now();
                let exit = through_shard(rt, context, generation, fetched, Ahead::AsTheTopology);
                walls.push(started.elapsed());
                for (thread, ns) in on_cpu_since(&before) {
                    *cpu.entry(thread).or_default() += ns;
                }
                assert_eq!(exit, ShardExit::Ended, "{what}: the shard was read to its end and checkpointed");
                checked(&store);
            };
        for _ in 0..CPU_RUNS {
            let before = cpu_by_thread();
            let started = Instant::now();
            black_box(orders_kernel(&events));
            kernel_walls.push(started.elapsed());
            kernel_cpu += on_cpu_since(&before).get(BENCH_THREAD).copied().unwrap_or(0);
            store.clear();
            stage_run(
                leased_shard(rt, &in_memory, config, &dynamodb),
                &mut stage_walls,
                &mut stage_cpu,
                "orders, in-memory store",
            );
            // And with the pool of caches full (its sibling dropped after).
            store.clear();
            let (pool, sibling) = full_pool();
            stage_run(
                leased_shard_in(rt, &in_memory, config, &dynamodb, pool),
                &mut full_walls,
                &mut full_cpu,
                "orders, cache full",
            );
            drop(sibling);
        }
        let us = |ns: u64| ns as f64 / 1e3 / (CPU_RUNS * events.len()) as f64;
        let ms = |walls: &mut Vec<Duration>| {
            walls.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            format!("{:.2}/{:.2}/{:.2}", ms(walls[0]), ms(walls[walls.len() / 2]), ms(walls[walls.len() - 1]))
        };
        let cpu = |thread: &str| us(stage_cpu.get(thread).copied().unwrap_or(0));
        eprintln!(
            "orders: on CPU per event over {CPU_RUNS} runs (us): kernel {:.3}; stage {:.3}: pool {:.3}, runtime {:.3}, {BENCH_THREAD} {:.3}; \
             wall per run, min/median/max (ms): kernel {}, stage {}",
            us(kernel_cpu),
            us(stage_cpu.values().sum()),
            cpu(POOL),
            cpu(RUNTIME),
            cpu(BENCH_THREAD),
            ms(&mut kernel_walls),
            ms(&mut stage_walls),
        );
        let cpu = |thread: &str| us(full_cpu.get(thread).copied().unwrap_or(0));
        eprintln!(
            "orders, cache full: on CPU per event over {CPU_RUNS} runs (us): stage {:.3}: pool {:.3}, runtime {:.3}, {BENCH_THREAD} {:.3}; \
             wall per run, min/median/max (ms): stage {}",
            us(full_cpu.values().sum()),
            cpu(POOL),
            cpu(RUNTIME),
            cpu(BENCH_THREAD),
            ms(&mut full_walls),
        );
    }

    // With the pool of order caches full: the run's orders in progress
    // push the sibling's out, and nothing of the run's own (no order is
    // read back, which the in-memory store would refuse).
    store.clear();
    let (pool, sibling) = full_pool();
    let (context, generation) = leased_shard_in(rt, &in_memory, config, &dynamodb, Arc::clone(&pool));
    let exit = through_shard(rt, context, generation, pages(&events, max_records), Ahead::AsTheTopology);
    assert_eq!(exit, ShardExit::Ended, "orders, cache full: the shard was read to its end and checkpointed");
    checked(&store);
    let pushed_out = SIBLING_ORDERS as usize - sibling.len();
    eprintln!("orders, cache full: the run pushed {pushed_out} of the sibling's {SIBLING_ORDERS} orders out");
    assert!(pushed_out > 0, "orders, cache full: the run pushed none of the sibling's orders out");
    drop((sibling, pool));

    let mut g = c.benchmark_group("pipeline");
    g.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("orders/kernel", |b| b.iter(|| black_box(orders_kernel(&events))));
    g.bench_function("orders/shard stage", |b| {
        b.iter_batched(
            || {
                store.clear();
                (leased_shard(rt, &in_memory, config, &dynamodb), pages(&events, max_records))
            },
            |((context, generation), pages)| {
                assert_eq!(black_box(through_shard(rt, context, generation, pages, Ahead::AsTheTopology)), ShardExit::Ended);
                checked(&store);
            },
            BatchSize::PerIteration,
        )
    });
    // The sibling's cache is the run's output: criterion drops it after
    // the timing, as the sibling shard would keep it.
    g.bench_function("orders/shard stage, order cache full", |b| {
        b.iter_batched(
            || {
                store.clear();
                let (pool, sibling) = full_pool();
                (leased_shard_in(rt, &in_memory, config, &dynamodb, pool), sibling, pages(&events, max_records))
            },
            |((context, generation), sibling, pages)| {
                assert_eq!(black_box(through_shard(rt, context, generation, pages, Ahead::AsTheTopology)), ShardExit::Ended);
                checked(&store);
                sibling
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("orders/shard stage through the SDK", |b| {
        b.iter_batched(
            || (leased_shard(rt, &router, config, &dynamodb), pages(&events, max_records)),
            |((context, generation), pages)| {
                assert_eq!(black_box(through_shard(rt, context, generation, pages, Ahead::AsTheTopology)), ShardExit::Ended);
                assert_eq!(end.refused.load(Ordering::Relaxed), 0, "orders: a call the in-memory end does not serve");
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let config = PipelineConfig::default();
    let fraud = FraudConfig::default();
    let sqs = SqsSourceConfig::default();
    let (per_receive, receivers) = (sqs.max_messages as usize, sqs.receivers as usize);
    let work = work(&config, &fraud);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let router = rt.block_on(router(&config, &fraud, dynamodb_client(None)));
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
            .map(|(i, body)| Input { data: body.clone().into_bytes(), position: format!("msg-{i}").into() })
            .collect();
        let n = inputs.len();
        let decided = bench_thread.install(|| kernel(&inputs, &Mutex::new(fresh_engine(&fraud)), work, config.max_batch_events));
        check(path, n, decided.iter().flatten());
        let decided = through_stage(&rt, &router, &config, receivers, receives(bodies, per_receive));
        check(path, n, decided.iter().flat_map(|d| &d.batch.decided));
        // Counted warm, each after its checked run, from a fresh engine.
        let engine = Mutex::new(fresh_engine(&fraud));
        let (_, by_kernel) = allocations(|| bench_thread.install(|| kernel(&inputs, &engine, work, config.max_batch_events)));
        reset_engine(&router, &fraud);
        let received = receives(bodies, per_receive);
        let (_, by_stage) = allocations(|| through_stage(&rt, &router, &config, receivers, received));
        per_element_allocations(path, n, by_kernel, by_stage);

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
                    reset_engine(&router, &fraud);
                    receives(bodies, per_receive)
                },
                |receives| black_box(through_stage(&rt, &router, &config, receivers, receives)),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    orders(c, &rt, &config, &fraud);
}

criterion_group!(benches, pipeline);

fn main() {
    sdk::benches();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
