//! The daemon's Prometheus metrics: one registry, built once, handed to every
//! stage by `Arc`.
//!
//! Owns: registration, label types and bucket layouts. Must not: invent
//! names; every name comes from `pipeline::metric_names` (counters get
//! `_total` appended on export by the client library).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use pipeline::metric_names as n;

/// Label set `{source}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// Input name, e.g. `cafe-payments.fifo`.
    pub source: String,
}

/// Label set `{source, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceOutcome {
    /// Input name.
    pub source: String,
    /// What happened.
    pub outcome: &'static str,
}

/// Label set `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Reject reason code.
    pub reason: &'static str,
}

/// Label set `{stage}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// Pipeline stage.
    pub stage: &'static str,
}

/// Label set `{source, shard}`: shard ids are few and bounded by the stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    /// Input name.
    pub source: String,
    /// Shard id.
    pub shard: String,
}

/// Label set `{sink}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// Sink name.
    pub sink: &'static str,
}

/// Label set `{sink, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkOutcome {
    /// Sink name.
    pub sink: &'static str,
    /// `ok`, `retry` or `failed`.
    pub outcome: &'static str,
}

/// Label set `{service, operation}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsRequestLabel {
    /// The SDK's service name (`SQS`, `DynamoDB`, `Kinesis`, `RedshiftData`).
    pub service: String,
    /// The operation (`ReceiveMessage`, `TransactWriteItems`, ...).
    pub operation: String,
}

/// Label set `{outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// What happened.
    pub outcome: &'static str,
}

/// Label set `{version, commit, allocator}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabel {
    /// Crate version.
    pub version: &'static str,
    /// Git commit the binary was built from.
    pub commit: &'static str,
    /// The allocator and its version (`crate::allocator`).
    pub allocator: String,
}

/// The latency buckets (seconds).
const LATENCY_BOUNDS: [f64; 21] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BOUNDS)
}

fn batch_latency_histogram() -> BatchHistogram {
    BatchHistogram::new(LATENCY_BOUNDS)
}

/// A histogram observed a batch of values at a time: one lock a batch,
/// where the client library's takes its lock for each value. For the
/// end-to-end latency, observed for every event a shard or queue writes
/// (on the runtime worker, where each event's locked `observe` was a few
/// percent of an order event's cost). The exposition is the library's.
#[derive(Debug, Clone)]
pub struct BatchHistogram(Arc<std::sync::Mutex<Observed>>);

#[derive(Debug)]
struct Observed {
    sum: f64,
    count: u64,
    /// (upper bound, observations in this bucket alone), the last +Inf.
    buckets: Vec<(f64, u64)>,
}

impl BatchHistogram {
    /// Buckets with these upper bounds (ascending), and +Inf.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let buckets: Vec<(f64, u64)> = bounds.into_iter().chain(std::iter::once(f64::MAX)).map(|b| (b, 0)).collect();
        debug_assert!(buckets.is_sorted_by(|a, b| a.0 < b.0), "the bounds ascend (the buckets are found by binary search)");
        BatchHistogram(Arc::new(std::sync::Mutex::new(Observed { sum: 0.0, count: 0, buckets })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Observes one value.
    pub fn observe(&self, v: f64) {
        self.observe_all(&[v]);
    }

    /// Observes every value of `values`, under one lock. As the library's
    /// `observe`, a value is counted in the first bucket whose bound it
    /// does not exceed (a NaN in the sum and the count only).
    pub fn observe_all(&self, values: &[f64]) {
        let mut o = self.lock();
        for &v in values {
            o.sum += v;
            o.count += 1;
            if !v.is_nan() {
                // The bounds ascend: the first at or above `v`.
                let i = o.buckets.partition_point(|&(bound, _)| bound < v);
                if let Some((_, n)) = o.buckets.get_mut(i) {
                    *n += 1;
                }
            }
        }
    }
}

impl prometheus_client::metrics::TypedMetric for BatchHistogram {
    const TYPE: prometheus_client::metrics::MetricType = prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for BatchHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let o = self.lock();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(o.sum, o.count, &o.buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

fn stage_histogram() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0])
}

/// Every metric the daemon records.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Messages received per source.
    pub source_received: Family<SourceLabel, Counter>,
    /// Messages acknowledged per source.
    pub source_acked: Family<SourceLabel, Counter>,
    /// Messages in flight per source.
    pub source_inflight: Family<SourceLabel, Gauge>,
    /// Source API failures.
    pub source_errors: Family<SourceOutcome, Counter>,
    /// Visibility extensions.
    pub source_visibility_extensions: Family<SourceLabel, Counter>,
    /// `cafe_source_retried_in_flight_total{source}`
    pub source_retried_in_flight: Family<SourceLabel, Counter>,
    /// `cafe_source_given_back_total{source}`
    pub source_given_back: Family<SourceLabel, Counter>,
    /// `cafe_rejected_truncated_total{source}`
    pub rejected_truncated: Family<SourceLabel, Counter>,
    /// Events out of the pipeline by outcome.
    pub pipeline_events: Family<SourceOutcome, Counter>,
    /// Rejections by reason.
    pub pipeline_rejected: Family<ReasonLabel, Counter>,
    /// Batch sizes per stage.
    pub batch_events: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// Stage durations.
    pub stage_duration: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// `cafe_pipeline_stage_panics_total{stage}`
    pub stage_panics: Family<StageLabel, Counter>,
    /// Event time to durable write.
    pub e2e_latency: Family<SourceLabel, BatchHistogram, fn() -> BatchHistogram>,
    /// Fraud decisions.
    pub fraud_decisions: Family<OutcomeLabel, Counter>,
    /// Fraud history size.
    pub fraud_tracked_keys: Gauge,
    /// Batches scored against the shared fraud state.
    pub fraud_state_batches: Counter,
    /// Shared state keys found in the cache.
    pub fraud_state_cache_hits: Counter,
    /// Shared state keys read.
    pub fraud_state_reads: Counter,
    /// Shared state read requests.
    pub fraud_state_read_requests: Counter,
    /// Shared state keys written.
    pub fraud_state_writes: Counter,
    /// Transactions cancelled by a moved key.
    pub fraud_state_conflicts: Counter,
    /// Of those, resolved from the cache (no read, no pause).
    pub fraud_state_conflicts_from_cache: Counter,
    /// Transactions sent after another batch's writes they were scored against.
    pub fraud_state_chained: Counter,
    /// Of those, not sent: a write they were scored against did not land.
    pub fraud_state_unlanded: Counter,
    /// Scoring rounds that waited for another batch's scoring of a key.
    pub fraud_state_queued: Counter,
    /// Batches queued on or running on rayon.
    pub rayon_queue_depth: Gauge,
    /// Sink requests by outcome.
    pub sink_requests: Family<SinkOutcome, Counter>,
    /// HTTP requests to AWS by service and operation.
    pub aws_requests: Family<AwsRequestLabel, Counter>,
    /// When each sink's latest write was answered durable (Unix seconds).
    pub sink_last_write: Family<SinkLabel, Gauge<f64, AtomicU64>>,
    /// Sink write latency.
    pub sink_write_duration: Family<SinkLabel, Histogram, fn() -> Histogram>,
    /// Bytes received per source.
    pub source_received_bytes: Family<SourceLabel, Counter>,
    /// Throttled source reads.
    pub source_throttles: Family<SourceLabel, Counter>,
    /// Seconds behind the stream's tip, per shard.
    pub kinesis_behind_latest: Family<ShardLabel, Gauge<f64, AtomicU64>>,
    /// Iterator expiries.
    pub kinesis_iterator_expiries: Family<SourceLabel, Counter>,
    /// Checkpoints by outcome.
    pub kinesis_checkpoints: Family<SourceOutcome, Counter>,
    /// Leases held.
    pub leases_held: Family<SourceLabel, Gauge>,
    /// Leases taken by how.
    pub leases_taken: Family<SourceOutcome, Counter>,
    /// Leases lost by how.
    pub leases_lost: Family<SourceOutcome, Counter>,
    /// Order state reads.
    pub orders_state_reads: Family<SourceLabel, Counter>,
    /// Bytes of order states cached across a stream's shards (estimated).
    pub orders_cache_bytes: Family<SourceLabel, Gauge>,
    /// Rows pending for Redshift at the last flush.
    pub mirror_pending_rows: Gauge,
    /// Mirror buckets flushed by this instance at the last flush.
    pub mirror_buckets_owned: Gauge,
    /// Record bytes read and not yet durable (the Kinesis read budget in use).
    pub kinesis_read_budget_used: Gauge,
    /// Waits for room in the Kinesis read budget.
    pub kinesis_read_budget_waits: Counter,
    /// Age of the oldest pending change.
    pub mirror_oldest_pending: Gauge<f64, AtomicU64>,
    /// Flushes by outcome.
    pub mirror_flushes: Family<OutcomeLabel, Counter>,
    /// Rows upserted into Redshift.
    pub mirror_rows_written: Counter,
    /// `cafe_mirror_rows_quarantined_total`
    pub mirror_rows_quarantined: Counter,
    /// Pending to committed, per row.
    pub mirror_flush_latency: Histogram,
    /// One flush's duration.
    pub mirror_flush_duration: Histogram,
    /// Menu upserts by outcome.
    pub menu_items: Family<OutcomeLabel, Counter>,
    /// Menu hash mismatches.
    pub menu_hash_mismatches: Counter,
    /// Menu image bytes hashed.
    pub menu_image_bytes: Counter,
    /// Messages waiting in the DLQs and the rejected queue.
    pub queue_depth: Family<QueueLabel, Gauge>,
    /// Each input's and sink's state, from the same internal events, for
    /// `/readyz`.
    pub components: std::sync::Arc<crate::admin::Components>,
}

/// `{queue}` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueueLabel {
    /// Queue name.
    pub queue: String,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            source_received: Family::default(),
            source_acked: Family::default(),
            source_inflight: Family::default(),
            source_errors: Family::default(),
            source_visibility_extensions: Family::default(),
            source_retried_in_flight: Family::default(),
            source_given_back: Family::default(),
            rejected_truncated: Family::default(),
            pipeline_events: Family::default(),
            pipeline_rejected: Family::default(),
            batch_events: Family::new_with_constructor(batch_histogram),
            stage_duration: Family::new_with_constructor(stage_histogram),
            stage_panics: Family::default(),
            e2e_latency: Family::new_with_constructor(batch_latency_histogram),
            fraud_decisions: Family::default(),
            fraud_tracked_keys: Gauge::default(),
            fraud_state_batches: Counter::default(),
            fraud_state_cache_hits: Counter::default(),
            fraud_state_reads: Counter::default(),
            fraud_state_read_requests: Counter::default(),
            fraud_state_writes: Counter::default(),
            fraud_state_conflicts: Counter::default(),
            fraud_state_conflicts_from_cache: Counter::default(),
            fraud_state_chained: Counter::default(),
            fraud_state_unlanded: Counter::default(),
            fraud_state_queued: Counter::default(),
            rayon_queue_depth: Gauge::default(),
            sink_requests: Family::default(),
            aws_requests: Family::default(),
            sink_last_write: Family::default(),
            sink_write_duration: Family::new_with_constructor(latency_histogram),
            source_received_bytes: Family::default(),
            source_throttles: Family::default(),
            kinesis_behind_latest: Family::default(),
            kinesis_iterator_expiries: Family::default(),
            kinesis_checkpoints: Family::default(),
            leases_held: Family::default(),
            leases_taken: Family::default(),
            leases_lost: Family::default(),
            orders_state_reads: Family::default(),
            orders_cache_bytes: Family::default(),
            mirror_pending_rows: Gauge::default(),
            mirror_buckets_owned: Gauge::default(),
            kinesis_read_budget_used: Gauge::default(),
            kinesis_read_budget_waits: Counter::default(),
            mirror_oldest_pending: Gauge::default(),
            mirror_flushes: Family::default(),
            mirror_rows_written: Counter::default(),
            mirror_rows_quarantined: Counter::default(),
            mirror_flush_latency: latency_histogram(),
            mirror_flush_duration: latency_histogram(),
            menu_items: Family::default(),
            menu_hash_mismatches: Counter::default(),
            menu_image_bytes: Counter::default(),
            queue_depth: Family::default(),
            components: std::sync::Arc::default(),
            registry: Registry::default(),
        };
        registry.register(n::SOURCE_RECEIVED, "Messages or records received from a source", m.source_received.clone());
        registry.register(n::SOURCE_ACKED, "Messages acknowledged (deleted or checkpointed)", m.source_acked.clone());
        registry.register(n::SOURCE_INFLIGHT, "Messages received and not yet acknowledged", m.source_inflight.clone());
        registry.register(n::SOURCE_ERRORS, "Source API calls that failed", m.source_errors.clone());
        registry.register(
            n::SOURCE_VISIBILITY_EXTENSIONS,
            "Visibility extensions sent for in-flight messages",
            m.source_visibility_extensions.clone(),
        );
        registry.register(
            n::SOURCE_RETRIED_IN_FLIGHT,
            "Messages whose failed writes were retried in place, kept in flight",
            m.source_retried_in_flight.clone(),
        );
        registry.register(
            n::SOURCE_GIVEN_BACK,
            "Messages given back to their queue unprocessed (a receive spent)",
            m.source_given_back.clone(),
        );
        registry.register(n::PIPELINE_EVENTS, "Events leaving the pipeline, by outcome", m.pipeline_events.clone());
        registry.register(n::PIPELINE_REJECTED, "Events rejected, by reason", m.pipeline_rejected.clone());
        registry.register(
            n::REJECTED_TRUNCATED,
            "Rejections sent without all of their body (too large for a message)",
            m.rejected_truncated.clone(),
        );
        registry.register(n::PIPELINE_BATCH_EVENTS, "Events per batch handed to a stage", m.batch_events.clone());
        registry.register(n::PIPELINE_STAGE_DURATION, "Time a batch spends in a stage", m.stage_duration.clone());
        registry.register(
            n::PIPELINE_STAGE_PANICS,
            "Batches whose stage panicked and were given back to their source",
            m.stage_panics.clone(),
        );
        // At 0 from the start, so the alert on it has a series to watch.
        for stage in ["decide", "write"] {
            let _ = m.stage_panics.get_or_create(&StageLabel { stage });
        }
        registry.register(n::PIPELINE_E2E_LATENCY, "Event time to durable write", m.e2e_latency.clone());
        registry.register(n::FRAUD_DECISIONS, "Fraud decisions, by outcome", m.fraud_decisions.clone());
        registry.register(n::FRAUD_TRACKED_KEYS, "Keys held by the fraud engine's history", m.fraud_tracked_keys.clone());
        registry.register(n::FRAUD_STATE_BATCHES, "Batches scored against the shared fraud state", m.fraud_state_batches.clone());
        registry.register(
            n::FRAUD_STATE_CACHE_HITS,
            "Shared fraud state keys found in the cache",
            m.fraud_state_cache_hits.clone(),
        );
        registry.register(n::FRAUD_STATE_READS, "Shared fraud state keys read from the table", m.fraud_state_reads.clone());
        registry.register(
            n::FRAUD_STATE_READ_REQUESTS,
            "BatchGetItem requests for the shared fraud state",
            m.fraud_state_read_requests.clone(),
        );
        registry.register(n::FRAUD_STATE_WRITES, "Shared fraud state keys written", m.fraud_state_writes.clone());
        registry.register(
            n::FRAUD_STATE_CONFLICTS,
            "Transactions cancelled because a fraud state key had moved",
            m.fraud_state_conflicts.clone(),
        );
        registry.register(
            n::FRAUD_STATE_CONFLICTS_FROM_CACHE,
            "Of those, the ones whose moved keys the cache held at a newer version (no read, no pause)",
            m.fraud_state_conflicts_from_cache.clone(),
        );
        registry.register(
            n::FRAUD_STATE_CHAINED,
            "Transactions scored against fraud state versions another batch of this process was writing, sent once those landed",
            m.fraud_state_chained.clone(),
        );
        registry.register(
            n::FRAUD_STATE_UNLANDED,
            "Of those, the ones not sent because a write they were scored against did not land (scored again)",
            m.fraud_state_unlanded.clone(),
        );
        registry.register(
            n::FRAUD_STATE_QUEUED,
            "Scoring rounds that waited for another batch of this process to finish scoring one of their keys",
            m.fraud_state_queued.clone(),
        );
        registry.register(n::RAYON_QUEUE_DEPTH, "Batches waiting for or running on the CPU pool", m.rayon_queue_depth.clone());
        registry.register(n::SINK_REQUESTS, "Sink write requests, by outcome", m.sink_requests.clone());
        registry.register(
            n::AWS_REQUESTS,
            "HTTP requests to AWS, every attempt, by service and operation",
            m.aws_requests.clone(),
        );
        registry.register(
            n::SINK_LAST_WRITE,
            "When the sink's latest write was answered durable, Unix seconds",
            m.sink_last_write.clone(),
        );
        registry.register(n::SINK_WRITE_DURATION, "Sink write latency including retries", m.sink_write_duration.clone());
        registry.register(n::SOURCE_RECEIVED_BYTES, "Bytes received from a source", m.source_received_bytes.clone());
        registry.register(n::SOURCE_THROTTLES, "Source reads refused for throughput", m.source_throttles.clone());
        registry.register(
            n::KINESIS_BEHIND_LATEST,
            "Seconds a shard's reader is behind the stream's tip",
            m.kinesis_behind_latest.clone(),
        );
        registry.register(
            n::KINESIS_ITERATOR_EXPIRIES,
            "Shard iterators that expired and were renewed",
            m.kinesis_iterator_expiries.clone(),
        );
        registry.register(
            n::KINESIS_CHECKPOINTS,
            "Checkpoints written to the lease table, by outcome",
            m.kinesis_checkpoints.clone(),
        );
        registry.register(n::LEASES_HELD, "Shard leases held by this instance", m.leases_held.clone());
        registry.register(n::LEASES_TAKEN, "Shard leases taken, by how", m.leases_taken.clone());
        registry.register(n::LEASES_LOST, "Shard leases lost or given up, by how", m.leases_lost.clone());
        registry.register(
            n::ORDERS_STATE_READS,
            "Orders read back because their state was not cached",
            m.orders_state_reads.clone(),
        );
        registry.register(
            n::ORDERS_CACHE_BYTES,
            "Bytes of order states cached across the shards of a stream, as estimated (at most order_cache_bytes)",
            m.orders_cache_bytes.clone(),
        );
        registry.register(
            n::MIRROR_PENDING_ROWS,
            "Aggregate rows pending for Redshift at the last flush",
            m.mirror_pending_rows.clone(),
        );
        registry.register(
            n::MIRROR_BUCKETS_OWNED,
            "Mirror buckets this instance flushed at its last flush (its share by shard lease)",
            m.mirror_buckets_owned.clone(),
        );
        registry.register(
            n::KINESIS_READ_BUDGET_USED,
            "Record bytes read from the stream and not yet durable, across every shard (at most max_bytes_in_flight plus one result per shard)",
            m.kinesis_read_budget_used.clone(),
        );
        registry.register(
            n::KINESIS_READ_BUDGET_WAITS,
            "Times a shard reader waited for room in the read budget",
            m.kinesis_read_budget_waits.clone(),
        );
        registry.register(
            n::MIRROR_OLDEST_PENDING,
            "Age of the oldest change not yet in Redshift",
            m.mirror_oldest_pending.clone(),
        );
        registry.register(n::MIRROR_FLUSHES, "Flushes to Redshift, by outcome", m.mirror_flushes.clone());
        registry.register(n::MIRROR_ROWS_WRITTEN, "Rows upserted into Redshift", m.mirror_rows_written.clone());
        registry.register(
            n::MIRROR_ROWS_QUARANTINED,
            "Rows Redshift refused for their data, set aside",
            m.mirror_rows_quarantined.clone(),
        );
        registry.register(
            n::MIRROR_FLUSH_LATENCY,
            "First pending change to commit in Redshift, per row",
            m.mirror_flush_latency.clone(),
        );
        registry.register(n::MIRROR_FLUSH_DURATION, "Duration of one flush to Redshift", m.mirror_flush_duration.clone());
        registry.register(n::MENU_ITEMS, "Menu upserts, by outcome", m.menu_items.clone());
        registry.register(
            n::MENU_HASH_MISMATCHES,
            "Menu images whose SHA-256 differed from the declared one",
            m.menu_hash_mismatches.clone(),
        );
        registry.register(n::MENU_IMAGE_BYTES, "Decoded menu image bytes hashed", m.menu_image_bytes.clone());
        registry.register(n::QUEUE_DEPTH, "Messages waiting in a DLQ or the rejected queue", m.queue_depth.clone());
        registry.register_collector(Box::new(ProcessCollector));
        registry.register_collector(Box::new(ComponentCollector(std::sync::Arc::clone(&m.components))));
        let build = Family::<BuildLabel, Gauge>::default();
        build
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
                commit: crate::GIT_COMMIT,
                allocator: crate::allocator(),
            })
            .set(1);
        registry.register(n::BUILD_INFO, "Build version, commit and allocator; value 1", build);
        for reason in pipeline::RejectReason::ALL {
            let _ = m.pipeline_rejected.get_or_create(&ReasonLabel { reason: reason.code() });
        }
        Metrics { registry, ..m }
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The classic Prometheus text format (0.0.4) of every metric, for
    /// clients that do not ask for OpenMetrics (`curl`, `promtool check
    /// metrics`): counters are named with their `_total` suffix in `HELP`
    /// and `TYPE`, and there is no `# EOF`.
    pub fn encode_text(&self) -> String {
        to_prometheus_text(&self.encode())
    }

    /// Shorthand for `{source}` labels.
    pub fn source(source: &str) -> SourceLabel {
        SourceLabel { source: source.to_owned() }
    }

    /// Shorthand for `{source, outcome}` labels.
    pub fn source_outcome(source: &str, outcome: &'static str) -> SourceOutcome {
        SourceOutcome { source: source.to_owned(), outcome }
    }
}

/// OpenMetrics text -> Prometheus text 0.0.4 (see [`Metrics::encode_text`]).
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|r| r.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            (counters.contains(name) && !name.ends_with("_total")).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The Prometheus client conventions' process metrics, read from `/proc`
/// at each scrape: `process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_start_time_seconds`,
/// `process_open_fds` and `process_max_fds`. Ticks and pages are converted
/// with this machine's `CLK_TCK` and page size (not assumed to be 100 and
/// 4 KiB). Each is absent where its file cannot be read.
#[derive(Debug)]
struct ProcessCollector;

/// One reading of the process metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct ProcessReading {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

impl ProcessCollector {
    fn read() -> ProcessReading {
        let file = |p: &str| std::fs::read_to_string(p).ok();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
        parse_process(
            file("/proc/self/stat").as_deref(),
            file("/proc/stat").as_deref(),
            file("/proc/self/limits").as_deref(),
            open_fds,
            rustix::param::clock_ticks_per_second() as f64,
            rustix::param::page_size() as f64,
        )
    }
}

/// The process metrics from the text of `/proc/self/stat`, `/proc/stat`
/// (for `btime`) and `/proc/self/limits`, the count of `/proc/self/fd`,
/// the clock ticks per second and the page size.
fn parse_process(
    stat: Option<&str>,
    system: Option<&str>,
    limits: Option<&str>,
    open_fds: Option<f64>,
    ticks_per_sec: f64,
    page_size: f64,
) -> ProcessReading {
    // Fields after the command name, which is in parentheses and may hold
    // spaces: utime and stime are fields 14 and 15 (1-based), starttime 22,
    // rss 24; here 11, 12, 19 and 21.
    let fields: Vec<&str> =
        stat.and_then(|s| s.rsplit_once(')')).map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let ticks = ticks_per_sec.max(1.0);
    let boot = system.and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse::<f64>().ok()));
    let max_fds = limits.and_then(|l| {
        let line = l.lines().find(|l| l.starts_with("Max open files"))?;
        // "Max open files  <soft>  <hard>  files": the soft limit is what open(2) hits.
        line.trim_start_matches("Max open files").split_whitespace().next()?.parse::<f64>().ok()
    });
    ProcessReading {
        cpu_seconds: field(11).zip(field(12)).map(|(u, s)| (u + s) / ticks),
        resident_bytes: field(21).map(|pages| pages * page_size),
        start_time_seconds: boot.zip(field(19)).map(|(b, start)| b + start / ticks),
        open_fds,
        max_fds,
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let r = Self::read();
        if let Some(cpu) = r.cpu_seconds {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                n::PROCESS_CPU,
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            (n::PROCESS_RSS, "Resident memory size in bytes", r.resident_bytes),
            (n::PROCESS_START, "Start time of the process since unix epoch in seconds", r.start_time_seconds),
            (n::PROCESS_OPEN_FDS, "Number of open file descriptors", r.open_fds),
            (n::PROCESS_MAX_FDS, "Maximum number of open file descriptors", r.max_fds),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// `cafe_component_failing_seconds{kind, component}`: each input's and
/// sink's state from [`crate::admin::Components`], read at each scrape.
#[derive(Debug)]
struct ComponentCollector(std::sync::Arc<crate::admin::Components>);

impl prometheus_client::collector::Collector for ComponentCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        let states = self.0.failing_seconds();
        if states.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            n::COMPONENT_FAILING,
            "How long an input's reads or a sink's writes have been failing (0 while they work)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (kind, component, seconds) in states {
            let labels = [("kind", kind.to_owned()), ("component", component)];
            ConstGauge::new(seconds).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch histogram's exposition is the library's histogram's, for
    /// the same values observed one by one, at and between the bounds, past
    /// the last one, negative and NaN.
    #[test]
    fn a_batch_histogram_exposes_what_the_library_s_histogram_does() {
        let values = [0.0, 0.005, 0.006, 0.2, 1.0, 1.0000001, 7.5, 299.0, 300.0, 301.0, 1e9, -1.0, f64::NAN, 2.5, -0.0, f64::MAX];
        fn encode(metric: impl prometheus_client::registry::Metric) -> String {
            let mut registry = Registry::default();
            registry.register("x_seconds", "x", metric);
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
            text
        }
        let library = latency_histogram();
        let batch = batch_latency_histogram();
        for &v in &values {
            library.observe(v);
        }
        batch.observe_all(&values[..5]);
        batch.observe_all(&values[5..]);
        assert_eq!(encode(batch), encode(library));
        // Without the NaN, where the sums are numbers.
        let (library, batch) = (latency_histogram(), batch_latency_histogram());
        for &v in values.iter().filter(|v| !v.is_nan()) {
            library.observe(v);
            batch.observe(v);
        }
        let text = encode(batch.clone());
        assert_eq!(text, encode(library));
        assert!(text.contains("x_seconds_bucket{le=\"1.0\"} 7\n"), "{text}");
        assert!(text.contains("x_seconds_count 15\n"), "{text}");
    }

    /// A sink's last write is stamped by its writes, per sink, as Unix
    /// seconds of the moment one is reported, and never moved back; a
    /// request's outcome alone (a read's included) stamps nothing.
    #[test]
    fn a_sink_s_last_write_is_the_latest_write_reported() {
        use crate::internal_events::{InternalEvent, Sink, SinkRequest, SinkRequestOutcome, SinkWrote};
        let unix = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
        let last = |m: &Metrics, sink: &str| {
            let series = format!("cafe_sink_last_write_timestamp_seconds{{sink=\"{sink}\"}} ");
            m.encode().lines().find_map(|l| l.strip_prefix(&series).map(|v| v.parse::<f64>().expect("a number")))
        };
        let m = Metrics::new();
        for outcome in SinkRequestOutcome::ALL {
            SinkRequest { sink: Sink::DynamoDb, outcome: *outcome }.emit(&m);
        }
        assert_eq!(last(&m, "dynamodb"), None, "a request counted is not a write reported");
        let before = unix();
        SinkWrote { sink: Sink::DynamoDb }.emit(&m);
        let after = unix();
        let at = last(&m, "dynamodb").expect("stamped");
        assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
        assert_eq!(last(&m, "rejected"), None, "per sink");
        // A later time set first (two writes answered at once, the later
        // one's event first) is kept.
        let later = after + 3600.0;
        m.sink_last_write.get_or_create(&SinkLabel { sink: "dynamodb" }).set(later);
        SinkWrote { sink: Sink::DynamoDb }.emit(&m);
        assert_eq!(last(&m, "dynamodb"), Some(later), "never moved back");
        let classic = m.encode_text();
        assert!(classic.contains("# TYPE cafe_sink_last_write_timestamp_seconds gauge\n"), "{classic}");
    }

    #[test]
    fn exposition_uses_catalogue_names_and_total_suffixes() {
        let m = Metrics::new();
        m.source_received.get_or_create(&Metrics::source("q")).inc();
        m.e2e_latency.get_or_create(&Metrics::source("q")).observe(0.2);
        let text = m.encode();
        assert!(text.contains("cafe_source_received_messages_total{source=\"q\"} 1"), "{text}");
        assert!(text.contains("cafe_pipeline_e2e_latency_seconds_bucket{le=\"0.25\",source=\"q\"} 1"), "{text}");
        assert!(text.contains("cafe_pipeline_rejected_events_total{reason=\"bad_json\"} 0"), "{text}");
        let build = text.lines().find(|l| l.starts_with("cafe_build_info{")).unwrap_or_else(|| panic!("{text}"));
        assert!(build.contains(&format!("allocator=\"{}\"", crate::allocator())), "{build}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        let classic = m.encode_text();
        assert!(classic.contains("# TYPE cafe_source_received_messages_total counter\n"), "{classic}");
        assert!(classic.contains("# HELP cafe_source_received_messages_total "), "{classic}");
        assert!(!classic.contains("# EOF"));
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        for name in ["process_start_time_seconds ", "process_open_fds ", "process_max_fds "] {
            assert!(text.contains(name), "{name} missing: {text}");
        }
    }

    /// A process started 1,000 ticks after boot, on a machine with 250
    /// ticks a second and 16 KiB pages: nothing assumes 100 and 4 KiB.
    #[test]
    fn process_metrics_use_the_machines_ticks_and_page_size() {
        let stat =
            "4242 (cafe streamd) S 1 4242 4242 0 -1 4194560 100 0 0 0 500 250 0 0 20 0 9 0 1000 123456 300 18446744073709551615";
        let system = "cpu  1 2 3\nbtime 1800000000\nprocesses 9\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            65536                524288               files\n";
        let r = parse_process(Some(stat), Some(system), Some(limits), Some(12.0), 250.0, 16384.0);
        assert_eq!(r.cpu_seconds, Some(3.0), "(500 + 250) ticks / 250");
        assert_eq!(r.resident_bytes, Some(300.0 * 16384.0));
        assert_eq!(r.start_time_seconds, Some(1_800_000_004.0), "btime + 1000 / 250");
        assert_eq!(r.open_fds, Some(12.0));
        assert_eq!(r.max_fds, Some(65536.0), "the soft limit");
        assert_eq!(parse_process(None, None, None, None, 100.0, 4096.0), ProcessReading::default());
    }

    #[test]
    fn this_process_reads_as_started_before_now_with_fds_under_its_limit() {
        let r = ProcessCollector::read();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
        let start = r.start_time_seconds.expect("start time");
        assert!(start <= now + 1.0 && start > now - 86_400.0 * 30.0, "start {start} against now {now}");
        let (open, max) = (r.open_fds.expect("open fds"), r.max_fds.expect("max fds"));
        assert!(open >= 3.0 && open <= max, "{open} of {max}");
        let rss = r.resident_bytes.expect("rss");
        assert!(rss > 1_000_000.0, "{rss}");
    }
}
