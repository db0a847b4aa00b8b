//! Internal events: one type per thing that happens in the daemon, whose
//! `emit` records its metric and, for what an operator must see, its log
//! line, as Vector's `internal_events` do.
//!
//! Owns: every label a metric is recorded with. Labels are enum values (or
//! names the configuration or the stream gave: an input, a queue, a
//! shard), never string literals typed at a call site; a tidy test keeps
//! `get_or_create` out of every other module but `metrics.rs`. Must not:
//! decide anything; it records what callers report.

use std::time::Duration;

use pipeline::event::RejectReason;
use tracing::{debug, error, info, warn};

use crate::metrics::{
    Metrics, OutcomeLabel, QueueLabel, ReasonLabel, ShardLabel, SinkLabel, SinkOutcome, SourceLabel, SourceOutcome, StageLabel,
};
use crate::route::Outcome;

/// Something that happened, recorded by [`InternalEvent::emit`].
pub trait InternalEvent {
    /// Records the event's metric.
    fn emit(self, metrics: &Metrics);
}

macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, for creating series at start.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }
    };
}

label_enum!(
    /// A sink, as `cafe_sink_*{sink}` names it.
    Sink {
        /// Payments, orders, aggregates (and the transactions' attempts).
        DynamoDb => "dynamodb",
        /// Menu items and their ledger entries.
        DynamoDbMenu => "dynamodb_menu",
        /// The rejected queue.
        Rejected => "rejected",
        /// The Redshift mirror's statement batches.
        Redshift => "redshift",
    }
);

label_enum!(
    /// What became of one sink request.
    SinkRequestOutcome {
        /// Done.
        Ok => "ok",
        /// Failed transiently; tried again after a backoff.
        Retry => "retry",
        /// Failed for good; the records go back to their source.
        Failed => "failed",
        /// A DynamoDB transaction cancelled by a condition (a replay, a moved order).
        ConditionFailed => "condition_failed",
        /// Rejections sent but not recorded in the ledger.
        LedgerFailed => "ledger_failed",
    }
);

label_enum!(
    /// A pipeline stage.
    Stage {
        /// The CPU-pool hop of a batch.
        Decide => "decide",
        /// A batch's writes, from its first to its last outcome.
        Write => "write",
        /// A decided batch waiting for the write stage.
        QueueToWrite => "queue_to_write",
    }
);

label_enum!(
    /// A failed call of a source.
    SourceErrorKind {
        /// ReceiveMessage throttled.
        Throttled => "throttled",
        /// ReceiveMessage failed.
        Error => "error",
        /// A visibility extension failed.
        Extend => "extend",
        /// A delete failed.
        Delete => "delete",
        /// GetShardIterator failed.
        Iterator => "iterator",
        /// GetRecords failed.
        Read => "read",
        /// The lease loop's sync of the stream's shards with the lease
        /// table failed (ListShards, its scan, a new shard's lease).
        Shards => "shards",
        /// A lease could not be kept, taken or read (the lease loop's
        /// renewals, takes and their scan, a shard's wait for its parents,
        /// a release at shutdown).
        Leases => "leases",
        /// The queue's depth could not be read (GetQueueAttributes, for
        /// the `cafe_sqs_queue_messages` gauge only).
        Depth => "depth",
    }
);

label_enum!(
    /// How a lease was taken.
    LeaseTakenHow {
        /// A shard nobody read yet.
        New => "new",
        /// Its holder stopped renewing it.
        Expired => "expired",
        /// Its holder gave it back.
        Released => "released",
        /// From a busier instance.
        Stolen => "stolen",
    }
);

label_enum!(
    /// How a lease was lost.
    LeaseLostHow {
        /// Another instance took it.
        Taken => "taken",
        /// Not renewed in time.
        Expired => "expired",
        /// A checkpoint found it moved.
        Fenced => "fenced",
        /// Given back on shutdown or at shard end.
        Released => "released",
    }
);

label_enum!(
    /// What became of a checkpoint.
    CheckpointOutcome {
        /// Written.
        Ok => "ok",
        /// Refused: the lease moved.
        Fenced => "fenced",
        /// The lease table could not be written.
        Failed => "failed",
    }
);

label_enum!(
    /// What a menu upsert did to its item.
    MenuOutcome {
        /// The item was rewritten.
        Written => "written",
        /// Same content: only its sync version moved.
        Unchanged => "unchanged",
        /// Older than what is stored: counted, nothing rewritten.
        Stale => "stale",
    }
);

label_enum!(
    /// What became of a Redshift flush.
    FlushOutcome {
        /// Every pending row read was written.
        Ok => "ok",
        /// It stopped; the rows stay pending.
        Failed => "failed",
    }
);

fn source(s: &str) -> SourceLabel {
    SourceLabel { source: s.to_owned() }
}

fn source_outcome(s: &str, outcome: &'static str) -> SourceOutcome {
    SourceOutcome { source: s.to_owned(), outcome }
}

/// One HTTP request to AWS (an attempt of a call), counted as it is sent.
#[derive(Debug)]
pub struct AwsRequest<'a> {
    /// The SDK's service name.
    pub service: &'a str,
    /// The operation.
    pub operation: &'a str,
}

impl InternalEvent for AwsRequest<'_> {
    fn emit(self, m: &Metrics) {
        m.aws_requests
            .get_or_create(&crate::metrics::AwsRequestLabel {
                service: self.service.to_owned(),
                operation: self.operation.to_owned(),
            })
            .inc();
    }
}

/// One request to a sink.
#[derive(Debug)]
pub struct SinkRequest {
    /// Which sink.
    pub sink: Sink,
    /// What became of it.
    pub outcome: SinkRequestOutcome,
}

impl InternalEvent for SinkRequest {
    fn emit(self, m: &Metrics) {
        m.sink_requests.get_or_create(&SinkOutcome { sink: self.sink.as_str(), outcome: self.outcome.as_str() }).inc();
        // A condition that cancelled a transaction is an answer, not a failure.
        if matches!(self.outcome, SinkRequestOutcome::Ok | SinkRequestOutcome::ConditionFailed) {
            m.components.ok("sink", self.sink.as_str());
        }
    }
}

/// A sink's write request succeeded: what it wrote is durable (emitted as
/// its answer is handled, never as it is sent). Moves
/// `cafe_sink_last_write_timestamp_seconds{sink}` to now, never back: of
/// two writes answered at once, the later time stays whichever sets last.
#[derive(Debug)]
pub struct SinkWrote {
    /// Which sink.
    pub sink: Sink,
}

impl InternalEvent for SinkWrote {
    fn emit(self, m: &Metrics) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let gauge = m.sink_last_write.get_or_create(&SinkLabel { sink: self.sink.as_str() });
        let bits = gauge.inner();
        let _ = bits.fetch_update(std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed, |old| {
            (f64::from_bits(old) < now).then_some(now.to_bits())
        });
    }
}

/// A batch's work was queued on the CPU pool.
#[derive(Debug)]
pub struct CpuJobQueued;

impl InternalEvent for CpuJobQueued {
    fn emit(self, m: &Metrics) {
        m.rayon_queue_depth.inc();
    }
}

/// A batch's work on the CPU pool finished (or panicked).
#[derive(Debug)]
pub struct CpuJobDone;

impl InternalEvent for CpuJobDone {
    fn emit(self, m: &Metrics) {
        m.rayon_queue_depth.dec();
    }
}

/// A sink request failed and is tried again after a backoff.
#[derive(Debug)]
pub struct SinkRetrying<'a> {
    /// Which sink.
    pub sink: Sink,
    /// The request, for the log: `Payment write`, `Reading orders`, ...
    pub what: &'a str,
    /// Attempts made so far, from 0.
    pub attempt: u32,
    /// Why it failed.
    pub error: &'a str,
}

impl InternalEvent for SinkRetrying<'_> {
    fn emit(self, m: &Metrics) {
        SinkRequest { sink: self.sink, outcome: SinkRequestOutcome::Retry }.emit(m);
        m.components.failed("sink", self.sink.as_str(), self.error);
        warn!(sink = self.sink.as_str(), error = %self.error, attempt = self.attempt, "{} failed, retrying", self.what);
    }
}

/// A sink gave up on a request: its records are not written now, and their
/// messages go back to their source (redelivered, or read again from the
/// last checkpoint).
#[derive(Debug)]
pub struct SinkGaveUp<'a> {
    /// Which sink.
    pub sink: Sink,
    /// The request, for the log.
    pub what: &'a str,
    /// Records it carried.
    pub records: usize,
    /// The last error; none when retries ran out on partial failures.
    pub error: Option<&'a str>,
}

impl InternalEvent for SinkGaveUp<'_> {
    fn emit(self, m: &Metrics) {
        SinkRequest { sink: self.sink, outcome: SinkRequestOutcome::Failed }.emit(m);
        m.components.failed("sink", self.sink.as_str(), self.error.unwrap_or("retries ran out on partial failures"));
        match self.error {
            Some(error) => warn!(
                sink = self.sink.as_str(),
                error = %error,
                records = self.records,
                "{} failed and is not retried now; giving the messages back",
                self.what
            ),
            None => warn!(
                sink = self.sink.as_str(),
                records = self.records,
                "{} still failing after retries; giving the messages back",
                self.what
            ),
        }
    }
}

/// A rejection's body was too large for a message: it goes with as much
/// of the body as fits.
#[derive(Debug)]
pub struct RejectionTruncated<'a> {
    /// The input it came from.
    pub source: &'a str,
    /// Where the whole of it is.
    pub position: &'a str,
    /// Its full size.
    pub full_bytes: usize,
}

impl InternalEvent for RejectionTruncated<'_> {
    fn emit(self, m: &Metrics) {
        m.rejected_truncated.get_or_create(&SourceLabel { source: self.source.to_owned() }).inc();
        warn!(
            source = self.source,
            position = self.position,
            bytes = self.full_bytes,
            "A rejected event is too large for the rejected queue; sending as much as fits"
        );
    }
}

/// Rejections were sent but could not be recorded in the event ledger: a
/// replay of their inputs may send them again.
#[derive(Debug)]
pub struct RejectionsNotRecorded {
    /// How many.
    pub count: usize,
}

impl InternalEvent for RejectionsNotRecorded {
    fn emit(self, m: &Metrics) {
        SinkRequest { sink: Sink::Rejected, outcome: SinkRequestOutcome::LedgerFailed }.emit(m);
        warn!(rejections = self.count, "Rejections sent but not recorded; a replay may send them again");
    }
}

/// A sink finished writing one batch, retries included.
#[derive(Debug)]
pub struct SinkWriteFinished {
    /// Which sink.
    pub sink: Sink,
    /// How long it took.
    pub elapsed: Duration,
}

impl InternalEvent for SinkWriteFinished {
    fn emit(self, m: &Metrics) {
        m.sink_write_duration.get_or_create(&SinkLabel { sink: self.sink.as_str() }).observe(self.elapsed.as_secs_f64());
    }
}

/// A batch entered a stage.
#[derive(Debug)]
pub struct BatchStaged {
    /// The stage.
    pub stage: Stage,
    /// Events in the batch.
    pub events: usize,
}

impl InternalEvent for BatchStaged {
    fn emit(self, m: &Metrics) {
        m.batch_events.get_or_create(&StageLabel { stage: self.stage.as_str() }).observe(self.events as f64);
    }
}

/// A batch left a stage.
#[derive(Debug)]
pub struct StageFinished {
    /// The stage.
    pub stage: Stage,
    /// Time spent in it.
    pub elapsed: Duration,
}

impl InternalEvent for StageFinished {
    fn emit(self, m: &Metrics) {
        m.stage_duration.get_or_create(&StageLabel { stage: self.stage.as_str() }).observe(self.elapsed.as_secs_f64());
    }
}

/// Events of one input that came out of the pipeline with one outcome.
#[derive(Debug)]
pub struct EventsOut<'a> {
    /// The input they arrived on.
    pub source: &'a str,
    /// What became of them.
    pub outcome: Outcome,
    /// How many.
    pub count: u64,
}

impl InternalEvent for EventsOut<'_> {
    fn emit(self, m: &Metrics) {
        if self.count > 0 {
            m.pipeline_events.get_or_create(&source_outcome(self.source, self.outcome.label())).inc_by(self.count);
        }
    }
}

/// An event that breaks the contract reached the rejected queue.
#[derive(Debug)]
pub struct EventRejected {
    /// Why.
    pub reason: RejectReason,
}

impl InternalEvent for EventRejected {
    fn emit(self, m: &Metrics) {
        m.pipeline_rejected.get_or_create(&ReasonLabel { reason: self.reason.code() }).inc();
    }
}

/// Events of one batch became durable this long after their event times.
#[derive(Debug)]
pub struct EventLatency<'a> {
    /// The input they arrived on.
    pub source: &'a str,
    /// Event time to durable write, one per event, at least 0 (the series
    /// is looked up, and its lock taken, once per batch, not per event).
    pub seconds: &'a [f64],
}

impl InternalEvent for EventLatency<'_> {
    fn emit(self, m: &Metrics) {
        if self.seconds.is_empty() {
            return;
        }
        m.e2e_latency.get_or_create(&source(self.source)).observe_all(self.seconds);
    }
}

/// A payment's decision was written.
#[derive(Debug)]
pub struct PaymentDecided {
    /// approve, review or decline (`pipeline::fraud::Decision::name`).
    pub decision: &'static str,
}

impl InternalEvent for PaymentDecided {
    fn emit(self, m: &Metrics) {
        m.fraud_decisions.get_or_create(&OutcomeLabel { outcome: self.decision }).inc();
    }
}

/// The fraud history's size after a batch.
#[derive(Debug)]
pub struct FraudHistorySize {
    /// Keys held.
    pub keys: usize,
}

impl InternalEvent for FraudHistorySize {
    fn emit(self, m: &Metrics) {
        m.fraud_tracked_keys.set(self.keys as i64);
    }
}

/// One batch's payments were scored against the shared fraud state.
#[derive(Debug)]
pub struct FraudStateUsed {
    /// Payments in the batch.
    pub payments: usize,
    /// What it read and wrote.
    pub traffic: crate::route::StateTraffic,
}

impl InternalEvent for FraudStateUsed {
    fn emit(self, m: &Metrics) {
        let t = self.traffic;
        m.fraud_state_batches.inc();
        m.fraud_state_cache_hits.inc_by(t.hits);
        m.fraud_state_reads.inc_by(t.reads);
        m.fraud_state_read_requests.inc_by(t.read_calls);
        m.fraud_state_writes.inc_by(t.writes);
        m.fraud_state_conflicts.inc_by(t.conflicts);
        m.fraud_state_conflicts_from_cache.inc_by(t.conflicts_from_cache);
        m.fraud_state_chained.inc_by(t.chained);
        m.fraud_state_unlanded.inc_by(t.unlanded);
        m.fraud_state_queued.inc_by(t.queued);
        debug!(
            payments = self.payments,
            hits = t.hits,
            reads = t.reads,
            writes = t.writes,
            conflicts = t.conflicts,
            conflicts_from_cache = t.conflicts_from_cache,
            chained = t.chained,
            unlanded = t.unlanded,
            queued = t.queued,
            "Payments scored against the shared fraud state"
        );
    }
}

/// Orders read from their table to apply events to.
#[derive(Debug)]
pub struct OrderStatesRead<'a> {
    /// The input the events arrived on.
    pub source: &'a str,
    /// Orders read.
    pub count: u64,
}

impl InternalEvent for OrderStatesRead<'_> {
    fn emit(self, m: &Metrics) {
        m.orders_state_reads.get_or_create(&source(self.source)).inc_by(self.count);
    }
}

/// Messages or records received from a source.
#[derive(Debug)]
pub struct Received<'a> {
    /// The input.
    pub source: &'a str,
    /// The shard, for a stream's reads (each shard's state is its own).
    pub shard: Option<&'a str>,
    /// How many.
    pub count: u64,
    /// Their bytes, where the source counts them.
    pub bytes: Option<u64>,
}

impl InternalEvent for Received<'_> {
    fn emit(self, m: &Metrics) {
        m.source_received.get_or_create(&source(self.source)).inc_by(self.count);
        match self.shard {
            Some(shard) => m.components.ok("source", &format!("{}/{shard}", self.source)),
            None => m.components.ok("source", self.source),
        }
        if let Some(b) = self.bytes {
            m.source_received_bytes.get_or_create(&source(self.source)).inc_by(b);
        }
    }
}

/// Messages deleted or records checkpointed.
#[derive(Debug)]
pub struct Acknowledged<'a> {
    /// The input.
    pub source: &'a str,
    /// How many.
    pub count: u64,
}

impl InternalEvent for Acknowledged<'_> {
    fn emit(self, m: &Metrics) {
        m.source_acked.get_or_create(&source(self.source)).inc_by(self.count);
    }
}

/// Messages received and not yet acknowledged.
#[derive(Debug)]
pub struct InFlight<'a> {
    /// The input.
    pub source: &'a str,
    /// How many now.
    pub count: usize,
}

impl InternalEvent for InFlight<'_> {
    fn emit(self, m: &Metrics) {
        m.source_inflight.get_or_create(&source(self.source)).set(self.count as i64);
    }
}

/// A source call failed; it is retried.
#[derive(Debug)]
pub struct SourceError<'a> {
    /// The input.
    pub source: &'a str,
    /// The shard, for a stream's calls.
    pub shard: Option<&'a str>,
    /// Which call.
    pub kind: SourceErrorKind,
    /// What went wrong (credential-free: `aws::describe`).
    pub error: &'a str,
}

impl InternalEvent for SourceError<'_> {
    fn emit(self, m: &Metrics) {
        m.source_errors.get_or_create(&source_outcome(self.source, self.kind.as_str())).inc();
        // A read that fails: the input cannot read (an acknowledgement that
        // fails is retried and redelivered, and shows in the metrics).
        // The lease loop's calls are components of their own
        // (`<stream>/shards`, `<stream>/leases`), each cleared by its own
        // calls working ([`LeaseCallsWorked`]): a scan that works must not
        // hide renewals that fail.
        match (self.kind, self.shard) {
            (SourceErrorKind::Extend | SourceErrorKind::Delete | SourceErrorKind::Depth, _) => {}
            (SourceErrorKind::Shards | SourceErrorKind::Leases, _) => {
                m.components.failed("source", &format!("{}/{}", self.source, self.kind.as_str()), self.error)
            }
            (_, Some(shard)) => m.components.failed("source", &format!("{}/{shard}", self.source), self.error),
            (_, None) => m.components.failed("source", self.source, self.error),
        }
        let call = match self.kind {
            SourceErrorKind::Throttled => "ReceiveMessage (throttled)",
            SourceErrorKind::Error => "ReceiveMessage",
            SourceErrorKind::Extend => "ChangeMessageVisibilityBatch",
            SourceErrorKind::Delete => "DeleteMessageBatch",
            SourceErrorKind::Iterator => "GetShardIterator",
            SourceErrorKind::Read => "GetRecords",
            SourceErrorKind::Shards => "ListShards",
            SourceErrorKind::Leases => "the lease table",
            SourceErrorKind::Depth => "GetQueueAttributes",
        };
        warn!(source = %self.source, shard = ?self.shard, call, error = %self.error, "Source call failed, retrying");
    }
}

/// A call of the lease loop worked: a whole sync of the stream's shards
/// with the lease table (`kind` `shards`), or a renewal or take of a
/// lease, or, on an instance that holds none and took none, the take's
/// scan (`leases`). It clears that component (`<stream>/<kind>`) of the
/// failures `SourceError`s of the same kind marked: an instance that
/// cannot sync, or keep or take a lease, reads nothing.
#[derive(Debug)]
pub struct LeaseCallsWorked<'a> {
    /// The stream.
    pub source: &'a str,
    /// `Shards` or `Leases`.
    pub kind: SourceErrorKind,
}

impl InternalEvent for LeaseCallsWorked<'_> {
    fn emit(self, m: &Metrics) {
        m.components.ok("source", &format!("{}/{}", self.source, self.kind.as_str()));
    }
}

/// In-flight messages kept invisible longer.
#[derive(Debug)]
pub struct VisibilityExtended<'a> {
    /// The input.
    pub source: &'a str,
    /// How many.
    pub count: u64,
}

impl InternalEvent for VisibilityExtended<'_> {
    fn emit(self, m: &Metrics) {
        m.source_visibility_extensions.get_or_create(&source(self.source)).inc_by(self.count);
    }
}

/// Messages of a batch whose writes failed, retried in place while they
/// stay in flight.
#[derive(Debug)]
pub struct RetriedInFlight<'a> {
    /// The input.
    pub source: &'a str,
    /// Messages retried (the failed ones and those held behind them).
    pub count: u64,
    /// Retry round of this batch (0-based).
    pub attempt: u32,
}

impl InternalEvent for RetriedInFlight<'_> {
    fn emit(self, m: &Metrics) {
        m.source_retried_in_flight.get_or_create(&source(self.source)).inc_by(self.count);
        if self.attempt > 0 && self.attempt.is_power_of_two() {
            warn!(
                source = self.source,
                messages = self.count,
                attempt = self.attempt,
                "Writes still failing; the messages stay in flight and are retried in place"
            );
        }
    }
}

/// Messages given back to their queue unprocessed.
#[derive(Debug)]
pub struct GivenBack<'a> {
    /// The input.
    pub source: &'a str,
    /// How many.
    pub count: u64,
    /// Why: "retry budget spent", "shutdown".
    pub why: &'static str,
}

impl InternalEvent for GivenBack<'_> {
    fn emit(self, m: &Metrics) {
        m.source_given_back.get_or_create(&source(self.source)).inc_by(self.count);
        if self.count > 0 {
            warn!(source = self.source, messages = self.count, why = self.why, "Messages given back to the queue unprocessed");
        }
    }
}

/// A stage panicked on a batch (a bug: no input can make it): the batch
/// goes back to its source rather than being lost, and the stage goes on.
#[derive(Debug)]
pub struct StagePanicked<'a> {
    /// The stage.
    pub stage: Stage,
    /// Events in the batch.
    pub events: usize,
    /// The panic's message.
    pub message: &'a str,
}

impl InternalEvent for StagePanicked<'_> {
    fn emit(self, m: &Metrics) {
        m.stage_panics.get_or_create(&StageLabel { stage: self.stage.as_str() }).inc();
        error!(
            stage = self.stage.as_str(),
            events = self.events,
            panic = self.message,
            "A pipeline stage panicked; the batch goes back to its source"
        );
    }
}

/// A shard read refused for throughput.
#[derive(Debug)]
pub struct ReadThrottled<'a> {
    /// The stream.
    pub source: &'a str,
}

impl InternalEvent for ReadThrottled<'_> {
    fn emit(self, m: &Metrics) {
        m.source_throttles.get_or_create(&source(self.source)).inc();
    }
}

/// A shard iterator expired and is renewed.
#[derive(Debug)]
pub struct IteratorExpired<'a> {
    /// The stream.
    pub source: &'a str,
}

impl InternalEvent for IteratorExpired<'_> {
    fn emit(self, m: &Metrics) {
        m.kinesis_iterator_expiries.get_or_create(&source(self.source)).inc();
    }
}

/// How far a shard's reader is behind the stream's tip.
#[derive(Debug)]
pub struct ShardLag<'a> {
    /// The stream.
    pub source: &'a str,
    /// The shard.
    pub shard: &'a str,
    /// MillisBehindLatest, in seconds.
    pub seconds: f64,
}

impl InternalEvent for ShardLag<'_> {
    fn emit(self, m: &Metrics) {
        let label = ShardLabel { source: self.source.to_owned(), shard: self.shard.to_owned() };
        m.kinesis_behind_latest.get_or_create(&label).set(self.seconds);
    }
}

/// This instance holds this many leases of a stream.
#[derive(Debug)]
pub struct LeasesHeld<'a> {
    /// The stream.
    pub source: &'a str,
    /// Leases held now.
    pub count: usize,
}

impl InternalEvent for LeasesHeld<'_> {
    fn emit(self, m: &Metrics) {
        m.leases_held.get_or_create(&source(self.source)).set(self.count as i64);
    }
}

/// A lease was taken.
#[derive(Debug)]
pub struct LeaseTaken<'a> {
    /// The stream.
    pub source: &'a str,
    /// The shard.
    pub shard: &'a str,
    /// How.
    pub how: LeaseTakenHow,
    /// Who held it.
    pub previous_owner: Option<&'a str>,
}

impl InternalEvent for LeaseTaken<'_> {
    fn emit(self, m: &Metrics) {
        m.leases_taken.get_or_create(&source_outcome(self.source, self.how.as_str())).inc();
        info!(shard = %self.shard, how = self.how.as_str(), previous_owner = ?self.previous_owner, "Lease taken");
    }
}

/// A lease was lost.
#[derive(Debug)]
pub struct LeaseLost<'a> {
    /// The stream.
    pub source: &'a str,
    /// The shard.
    pub shard: &'a str,
    /// How.
    pub how: LeaseLostHow,
}

impl InternalEvent for LeaseLost<'_> {
    fn emit(self, m: &Metrics) {
        m.leases_lost.get_or_create(&source_outcome(self.source, self.how.as_str())).inc();
        let shard = self.shard;
        match self.how {
            LeaseLostHow::Taken => warn!(shard, "Lease taken by another instance; stopping its reader"),
            LeaseLostHow::Expired => warn!(shard, "Lease not renewed within the failover time; stopping its reader"),
            LeaseLostHow::Fenced => warn!(shard, "Lease moved to another instance; its checkpoint was refused"),
            LeaseLostHow::Released => info!(shard, "Lease released"),
        }
    }
}

/// A checkpoint was attempted.
#[derive(Debug)]
pub struct CheckpointWritten<'a> {
    /// The stream.
    pub source: &'a str,
    /// What became of it.
    pub outcome: CheckpointOutcome,
}

impl InternalEvent for CheckpointWritten<'_> {
    fn emit(self, m: &Metrics) {
        m.kinesis_checkpoints.get_or_create(&source_outcome(self.source, self.outcome.as_str())).inc();
    }
}

/// Menu upserts of one outcome committed.
#[derive(Debug)]
pub struct MenuItems {
    /// What they did.
    pub outcome: MenuOutcome,
    /// How many.
    pub count: u64,
}

impl InternalEvent for MenuItems {
    fn emit(self, m: &Metrics) {
        if self.count > 0 {
            m.menu_items.get_or_create(&OutcomeLabel { outcome: self.outcome.as_str() }).inc_by(self.count);
        }
    }
}

/// A Redshift flush ended.
#[derive(Debug)]
pub struct MirrorFlushed<'a> {
    /// How long it took.
    pub elapsed: Duration,
    /// Why it failed, if it did (its rows stay pending for the next flush).
    pub error: Option<&'a str>,
}

impl InternalEvent for MirrorFlushed<'_> {
    fn emit(self, m: &Metrics) {
        m.mirror_flush_duration.observe(self.elapsed.as_secs_f64());
        let outcome = if self.error.is_some() { FlushOutcome::Failed } else { FlushOutcome::Ok };
        match self.error {
            Some(e) => m.components.failed("sink", Sink::Redshift.as_str(), e),
            None => m.components.ok("sink", Sink::Redshift.as_str()),
        }
        m.mirror_flushes.get_or_create(&OutcomeLabel { outcome: outcome.as_str() }).inc();
        if let Some(error) = self.error {
            warn!(error = %error, "Redshift flush failed; rows stay pending");
        }
    }
}

/// The Redshift mirror's backlog, as a flush found it (or left it).
#[derive(Debug)]
pub struct MirrorPending {
    /// Aggregate rows marked pending.
    pub rows: usize,
    /// Age of the oldest pending change, when known.
    pub oldest: Option<Duration>,
}

impl InternalEvent for MirrorPending {
    fn emit(self, m: &Metrics) {
        m.mirror_pending_rows.set(self.rows as i64);
        if let Some(oldest) = self.oldest {
            m.mirror_oldest_pending.set(oldest.as_secs_f64());
        }
    }
}

/// The mirror buckets a flush read.
#[derive(Debug)]
pub struct MirrorBucketsOwned {
    /// How many.
    pub buckets: usize,
}

impl InternalEvent for MirrorBucketsOwned {
    fn emit(self, m: &Metrics) {
        m.mirror_buckets_owned.set(self.buckets as i64);
    }
}

/// Rows committed to Redshift, with how long each change waited.
#[derive(Debug)]
pub struct MirrorRowsWritten<'a> {
    /// Rows written.
    pub rows: usize,
    /// For each row whose change time is known: change to commit.
    pub waited: &'a [Duration],
}

impl InternalEvent for MirrorRowsWritten<'_> {
    fn emit(self, m: &Metrics) {
        m.mirror_rows_written.inc_by(self.rows as u64);
        for w in self.waited {
            m.mirror_flush_latency.observe(w.as_secs_f64());
        }
    }
}

/// Redshift refused one row for its data (alone in its batch): it is set
/// aside so that the rest flows.
#[derive(Debug)]
pub struct MirrorRowRefused<'a> {
    /// The row's store.
    pub store: &'a str,
    /// The row's window.
    pub window: &'a str,
    /// The version refused.
    pub version: i64,
    /// What the server said.
    pub error: &'a str,
    /// Whether it was set aside now (false: it changed meanwhile, or the
    /// write failed, and it is tried again).
    pub set_aside: bool,
}

impl InternalEvent for MirrorRowRefused<'_> {
    fn emit(self, m: &Metrics) {
        if self.set_aside {
            m.mirror_rows_quarantined.inc();
        }
        tracing::error!(
            store = self.store,
            window = self.window,
            version = self.version,
            error = %self.error,
            set_aside = self.set_aside,
            "Redshift refused a row; it is set aside (mirror_quarantined_version) and the rest flows"
        );
    }
}

/// A pending mark could not be cleared (or moved): the row stays pending
/// and the next flush writes it again, a no-op there.
#[derive(Debug)]
pub struct MirrorMarkFailed<'a> {
    /// Why.
    pub error: &'a str,
}

impl InternalEvent for MirrorMarkFailed<'_> {
    fn emit(self, _m: &Metrics) {
        warn!(error = %self.error, "Clearing a pending mark failed; the row is written again next flush");
    }
}

/// Messages waiting in a queue an operator watches.
#[derive(Debug)]
pub struct QueueDepth<'a> {
    /// The queue's name.
    pub queue: &'a str,
    /// ApproximateNumberOfMessages.
    pub messages: i64,
}

impl InternalEvent for QueueDepth<'_> {
    fn emit(self, m: &Metrics) {
        m.queue_depth.get_or_create(&QueueLabel { queue: self.queue.to_owned() }).set(self.messages);
    }
}

/// A menu upsert's image was hashed and its item written.
#[derive(Debug)]
pub struct MenuImageWritten {
    /// The image's decoded bytes.
    pub bytes: u64,
    /// Whether its SHA-256 matched the declared one.
    pub hash_ok: bool,
}

impl InternalEvent for MenuImageWritten {
    fn emit(self, m: &Metrics) {
        m.menu_image_bytes.inc_by(self.bytes);
        if !self.hash_ok {
            m.menu_hash_mismatches.inc();
        }
    }
}

/// This instance stopped reading a shard: its lag series goes.
#[derive(Debug)]
pub struct ShardReadStopped<'a> {
    /// The stream.
    pub source: &'a str,
    /// The shard.
    pub shard: &'a str,
}

impl InternalEvent for ShardReadStopped<'_> {
    fn emit(self, m: &Metrics) {
        m.kinesis_behind_latest.remove(&ShardLabel { source: self.source.to_owned(), shard: self.shard.to_owned() });
    }
}

/// Record bytes took room in the Kinesis read budget (`waited`: the reader
/// had to wait for it).
#[derive(Debug)]
pub struct ReadBudgetTaken {
    /// Bytes.
    pub bytes: u64,
    /// Whether the budget was full when asked.
    pub waited: bool,
}

impl InternalEvent for ReadBudgetTaken {
    fn emit(self, m: &Metrics) {
        m.kinesis_read_budget_used.inc_by(self.bytes as i64);
        if self.waited {
            m.kinesis_read_budget_waits.inc();
        }
    }
}

/// Record bytes gave their room in the read budget back.
#[derive(Debug)]
pub struct ReadBudgetReturned {
    /// Bytes.
    pub bytes: u64,
}

impl InternalEvent for ReadBudgetReturned {
    fn emit(self, m: &Metrics) {
        m.kinesis_read_budget_used.dec_by(self.bytes as i64);
    }
}

/// The gauge of the bytes a stream's order caches hold: the pool sets it
/// on every change, under its own lock.
pub fn order_cache_gauge(metrics: &Metrics, stream: &str) -> prometheus_client::metrics::gauge::Gauge {
    metrics.orders_cache_bytes.get_or_create(&source(stream)).clone()
}

/// The gauge of the keys the shared fraud state's cache holds: the cache
/// sets it on every change, under its own lock.
pub fn fraud_state_cache_gauge(metrics: &Metrics) -> prometheus_client::metrics::gauge::Gauge {
    metrics.fraud_tracked_keys.clone()
}

/// Creates a sink's request series (every outcome), at start.
pub fn init_sink_series(metrics: &Metrics, sink: Sink) {
    for outcome in [SinkRequestOutcome::Ok, SinkRequestOutcome::Retry, SinkRequestOutcome::Failed] {
        let _ = metrics.sink_requests.get_or_create(&SinkOutcome { sink: sink.as_str(), outcome: outcome.as_str() });
    }
}

/// Creates a stream's lease series (every way a lease is taken or lost), at start.
pub fn init_lease_series(metrics: &Metrics, stream: &str) {
    for how in LeaseTakenHow::ALL {
        let _ = metrics.leases_taken.get_or_create(&Metrics::source_outcome(stream, how.as_str()));
    }
    for how in LeaseLostHow::ALL {
        let _ = metrics.leases_lost.get_or_create(&Metrics::source_outcome(stream, how.as_str()));
    }
}

/// Creates the menu item series (every outcome), at start.
pub fn init_menu_series(metrics: &Metrics) {
    for outcome in MenuOutcome::ALL {
        let _ = metrics.menu_items.get_or_create(&OutcomeLabel { outcome: outcome.as_str() });
    }
}

/// Creates the Redshift mirror's flush series (every outcome), at start.
pub fn init_mirror_series(metrics: &Metrics) {
    for outcome in FlushOutcome::ALL {
        let _ = metrics.mirror_flushes.get_or_create(&OutcomeLabel { outcome: outcome.as_str() });
    }
}
