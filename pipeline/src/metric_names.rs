//! Every Prometheus metric name cafe-stream exports, in one place.
//!
//! Owns: names and help texts. Must not: register or record anything (the
//! daemon's `metrics` module does). Names follow
//! `cafe_<subsystem>_<name>_<unit>` with base units and `_total` on
//! counters; labels are low-cardinality (`source`, `sink`, `stage`,
//! `outcome`, `reason`), never ids.

/// Metric names in a PromQL expression (identifiers that are not functions,
/// keywords, aggregation operators, label names, label values or
/// durations). For checking dashboards and rules against this catalogue.
pub fn promql_metric_names(expr: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let bytes = expr.as_bytes();
    let (mut i, mut in_braces, mut in_brackets, mut in_string, mut in_by) = (0, 0, 0, false, false);
    while i < bytes.len() {
        let c = bytes[i] as char;
        if in_string {
            in_string = c != '"';
            i += 1;
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => in_braces += 1,
            '}' => in_braces -= 1,
            '[' => in_brackets += 1,
            ']' => in_brackets -= 1,
            _ => {}
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < bytes.len() && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            let is_call = next == Some('(');
            if ["by", "without", "on", "ignoring"].contains(&word) {
                in_by = true;
            } else if in_braces == 0
                && in_brackets == 0
                && !is_call
                && !in_by
                && ![
                    "and",
                    "or",
                    "unless",
                    "offset",
                    "bool",
                    "sum",
                    "min",
                    "max",
                    "avg",
                    "count",
                    "stddev",
                    "stdvar",
                    "topk",
                    "bottomk",
                    "quantile",
                    "count_values",
                    "group",
                ]
                .contains(&word)
            {
                out.insert(word.to_owned());
            }
            continue;
        }
        if c == ')' {
            in_by = false;
        }
        i += 1;
    }
    out
}

/// Messages or records received from a source. Labels: `source`.
pub const SOURCE_RECEIVED: &str = "cafe_source_received_messages";
/// Messages acknowledged (deleted, checkpointed). Labels: `source`.
pub const SOURCE_ACKED: &str = "cafe_source_acked_messages";
/// Messages received but not yet acknowledged. Labels: `source`.
pub const SOURCE_INFLIGHT: &str = "cafe_source_inflight_messages";
/// Source API calls that failed. Labels: `source`, `outcome`.
pub const SOURCE_ERRORS: &str = "cafe_source_errors";
/// Visibility extensions sent for in-flight messages. Labels: `source`.
pub const SOURCE_VISIBILITY_EXTENSIONS: &str = "cafe_source_visibility_extensions";
/// Messages whose failed writes were retried in place, kept in flight (not
/// given back to the queue, so no receive is spent). Labels: `source`.
pub const SOURCE_RETRIED_IN_FLIGHT: &str = "cafe_source_retried_in_flight";
/// Messages given back to the queue (made visible again after
/// `retry_delay_secs`: each is a receive toward `max_receive_count`).
/// Labels: `source`.
pub const SOURCE_GIVEN_BACK: &str = "cafe_source_given_back";
/// Events leaving the pipeline by outcome (`written`, `duplicate`, `rejected`). Labels: `source`, `outcome`.
pub const PIPELINE_EVENTS: &str = "cafe_pipeline_events";
/// Rejected events by reason. Labels: `reason`.
pub const PIPELINE_REJECTED: &str = "cafe_pipeline_rejected_events";
/// Rejections sent to the rejected queue without all of their body (too
/// large for a message; `position` says where the whole is). Labels: `source`.
pub const REJECTED_TRUNCATED: &str = "cafe_rejected_truncated";
/// Events per batch handed to a stage. Labels: `stage`.
pub const PIPELINE_BATCH_EVENTS: &str = "cafe_pipeline_batch_events";
/// Batches whose stage panicked (a bug, never bad input): the batch was
/// given back to its source, not lost. Labels: `stage`.
pub const PIPELINE_STAGE_PANICS: &str = "cafe_pipeline_stage_panics";
/// Time a batch spends in a stage. Labels: `stage`.
pub const PIPELINE_STAGE_DURATION: &str = "cafe_pipeline_stage_duration_seconds";
/// Event time (`ts`) to durable write. Labels: `source`.
pub const PIPELINE_E2E_LATENCY: &str = "cafe_pipeline_e2e_latency_seconds";
/// Fraud decisions. Labels: `outcome` (approve, review, decline).
pub const FRAUD_DECISIONS: &str = "cafe_fraud_decisions";
/// Keys held by the fraud engine's history (in process), or by the cache
/// of the shared fraud state.
pub const FRAUD_TRACKED_KEYS: &str = "cafe_fraud_tracked_keys";
/// Batches scored against the shared fraud state.
pub const FRAUD_STATE_BATCHES: &str = "cafe_fraud_state_batches";
/// Shared fraud state keys found in the cache (not read).
pub const FRAUD_STATE_CACHE_HITS: &str = "cafe_fraud_state_cache_hits";
/// Shared fraud state keys read from the table.
pub const FRAUD_STATE_READS: &str = "cafe_fraud_state_reads";
/// BatchGetItem requests for the shared fraud state.
pub const FRAUD_STATE_READ_REQUESTS: &str = "cafe_fraud_state_read_requests";
/// Shared fraud state keys written (with the payments that changed them).
pub const FRAUD_STATE_WRITES: &str = "cafe_fraud_state_writes";
/// Transactions cancelled because a fraud state key had moved (another
/// writer first): the payments were scored again, on a fresh read after a
/// pause unless the cache held the key at a newer version.
pub const FRAUD_STATE_CONFLICTS: &str = "cafe_fraud_state_conflicts";
/// Of those, the ones every moved key of which the cache already held at a
/// newer version (another batch of this process wrote or read it): scored
/// again at once against it, with no read and no pause.
pub const FRAUD_STATE_CONFLICTS_FROM_CACHE: &str = "cafe_fraud_state_conflicts_from_cache";
/// Transactions scored against fraud state versions another batch of this
/// process was writing, sent once those writes landed (instead of
/// against the versions before them, which would have been cancelled).
pub const FRAUD_STATE_CHAINED: &str = "cafe_fraud_state_chained";
/// Of those, the ones not sent because a write they were scored against
/// did not land: scored again at once.
pub const FRAUD_STATE_UNLANDED: &str = "cafe_fraud_state_unlanded";
/// Scoring rounds that waited for another batch of the same process to
/// finish scoring one of their keys (so as not to score against the same
/// version) before reading them.
pub const FRAUD_STATE_QUEUED: &str = "cafe_fraud_state_queued";
/// Batches waiting for or running on the rayon pool.
pub const RAYON_QUEUE_DEPTH: &str = "cafe_rayon_queue_depth_batches";
/// Sink write requests by outcome (`ok`, `retry`, `failed`). Labels: `sink`, `outcome`.
pub const SINK_REQUESTS: &str = "cafe_sink_requests";
/// HTTP requests to AWS, every attempt (the daemon's own retries included;
/// the SDK's are off), by service and operation: what the bill of a
/// per-request service (SQS, Kinesis reads, on-demand DynamoDB) follows.
/// Labels: `service` (the SDK's name: `SQS`, `DynamoDB`, `Kinesis`,
/// `RedshiftData`), `operation` (`ReceiveMessage`, `TransactWriteItems`, ...).
pub const AWS_REQUESTS: &str = "cafe_aws_requests";
/// When the sink's latest write was answered durable (a DynamoDB
/// transaction, a batch sent to the rejected queue, a Redshift statement
/// batch), in Unix seconds; absent until the first. `time() - ` it is how
/// long a sink has written nothing; next to the sources' received rate, a
/// stalled sink. Labels: `sink`.
pub const SINK_LAST_WRITE: &str = "cafe_sink_last_write_timestamp_seconds";
/// Sink write latency, including retries. Labels: `sink`.
pub const SINK_WRITE_DURATION: &str = "cafe_sink_write_duration_seconds";
/// Build version, commit and allocator; value 1. Labels: `version`,
/// `commit`, `allocator` (`mimalloc 3.3.2`, or `system`).
pub const BUILD_INFO: &str = "cafe_build_info";
/// Bytes of records or messages received from a source. Labels: `source`.
pub const SOURCE_RECEIVED_BYTES: &str = "cafe_source_received_bytes";
/// Source reads refused for throughput (Kinesis ProvisionedThroughputExceeded, SQS throttling). Labels: `source`.
pub const SOURCE_THROTTLES: &str = "cafe_source_throttles";
/// How far a shard's reader is behind the tip of the stream (Kinesis `MillisBehindLatest`, in seconds). Labels: `source`, `shard`.
pub const KINESIS_BEHIND_LATEST: &str = "cafe_kinesis_behind_latest_seconds";
/// Shard iterators that expired and were renewed. Labels: `source`.
pub const KINESIS_ITERATOR_EXPIRIES: &str = "cafe_kinesis_iterator_expiries";
/// Checkpoints written to the lease table, by outcome (`ok`, `fenced`, `failed`). Labels: `source`, `outcome`.
pub const KINESIS_CHECKPOINTS: &str = "cafe_kinesis_checkpoints";
/// Record bytes read from the stream and not yet durable, across every
/// shard of this instance: at most `sources.orders.max_bytes_in_flight`
/// plus one GetRecords result per shard.
pub const KINESIS_READ_BUDGET_USED: &str = "cafe_kinesis_read_budget_used_bytes";
/// Times a shard reader waited for room in the read budget.
pub const KINESIS_READ_BUDGET_WAITS: &str = "cafe_kinesis_read_budget_waits";
/// Shard leases this instance holds. Labels: `source`.
pub const LEASES_HELD: &str = "cafe_leases_held";
/// Leases taken, by how (`new`, `expired`, `released`, `stolen`). Labels: `source`, `outcome`.
pub const LEASES_TAKEN: &str = "cafe_leases_taken";
/// Leases lost to another instance or to failed renewals, or given up (`released`). Labels: `source`, `outcome`.
pub const LEASES_LOST: &str = "cafe_leases_lost";
/// Orders read from `cafe-orders` because their state was not cached. Labels: `source`.
pub const ORDERS_STATE_READS: &str = "cafe_orders_state_reads";
/// Bytes of order states cached across the shards of a stream (estimated;
/// at most `order_cache_bytes`). Labels: `source`.
pub const ORDERS_CACHE_BYTES: &str = "cafe_orders_cache_bytes";
/// Aggregate rows found pending for Redshift at the last flush (the backlog
/// an outage builds up, held in DynamoDB).
pub const MIRROR_PENDING_ROWS: &str = "cafe_mirror_pending_rows";
/// Mirror buckets this instance flushed at its last flush: its share, by
/// the shard leases it holds (all of them without a stream, or before a
/// lease table is read).
pub const MIRROR_BUCKETS_OWNED: &str = "cafe_mirror_buckets_owned";
/// Age of the oldest pending change at the last flush, in seconds.
pub const MIRROR_OLDEST_PENDING: &str = "cafe_mirror_oldest_pending_seconds";
/// Flushes to Redshift by outcome (`ok`, `failed`).
pub const MIRROR_FLUSHES: &str = "cafe_mirror_flushes";
/// Rows upserted into Redshift.
pub const MIRROR_ROWS_WRITTEN: &str = "cafe_mirror_rows_written";
/// Rows Redshift refused for their data and the mirror set aside
/// (`mirror_quarantined_version` on the DynamoDB row).
pub const MIRROR_ROWS_QUARANTINED: &str = "cafe_mirror_rows_quarantined";
/// Time from a row's first pending change to its commit in Redshift.
pub const MIRROR_FLUSH_LATENCY: &str = "cafe_mirror_flush_latency_seconds";
/// Duration of one flush (read pending rows, upsert, clear marks).
pub const MIRROR_FLUSH_DURATION: &str = "cafe_mirror_flush_duration_seconds";
/// Menu upserts by outcome (`written`: the item changed; `unchanged`: same
/// `content_sha256`, no rewrite; `stale`: an older sync than the stored one).
pub const MENU_ITEMS: &str = "cafe_menu_items";
/// Menu images whose SHA-256 differed from the declared one.
pub const MENU_HASH_MISMATCHES: &str = "cafe_menu_hash_mismatches";
/// Decoded menu image bytes hashed.
pub const MENU_IMAGE_BYTES: &str = "cafe_menu_image_bytes";
/// CPU time of the process (Prometheus client convention; no `cafe_` prefix).
pub const PROCESS_CPU: &str = "process_cpu_seconds";
/// Resident memory of the process (Prometheus client convention).
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// When the process started, in seconds since the Unix epoch (Prometheus client convention).
pub const PROCESS_START: &str = "process_start_time_seconds";
/// File descriptors the process has open (Prometheus client convention).
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The process's limit on open file descriptors (`RLIMIT_NOFILE`'s soft limit).
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// How long an input's reads or a sink's writes have been failing, 0 while
/// they work (what `/readyz` reads). Labels: `kind` (`source`, `sink`),
/// `component`.
pub const COMPONENT_FAILING: &str = "cafe_component_failing_seconds";
/// Messages waiting in a DLQ or the rejected queue (SQS ApproximateNumberOfMessages, read every 30 s). Labels: `queue`.
pub const QUEUE_DEPTH: &str = "cafe_queue_depth_messages";

#[cfg(test)]
mod tests {
    use super::promql_metric_names;

    #[test]
    fn metric_names_are_found_in_promql() {
        let names = promql_metric_names(
            "histogram_quantile(0.99, sum by (le, source) (rate(cafe_pipeline_e2e_latency_seconds_bucket{source=\"x\"}[5m]))) > 2 and up{job=\"cafe-streamd\"} == 0",
        );
        assert_eq!(names, ["cafe_pipeline_e2e_latency_seconds_bucket".to_owned(), "up".to_owned()].into());
        assert_eq!(promql_metric_names("cafe:x:p99_5m > 2").len(), 1);
    }
}
