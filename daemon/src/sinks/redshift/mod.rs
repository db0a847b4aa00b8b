//! The Redshift sink: `cafe_store_minute`, one row per (store, window),
//! equal to the DynamoDB aggregate row.
//!
//! Owns: the flush (a transactional outbox kept in DynamoDB). Every change
//! to an aggregate row marks it pending in the same DynamoDB transaction
//! that changes it (`sinks::dynamodb::aggregate_update`), with the row's
//! `version` bumped. A flush reads the pending rows from the sparse index
//! `mirror-pending` (at most `max_rows_per_flush`), upserts their absolute
//! counters and versions in transactional batches (`sql`), and then clears
//! each mark on condition that the row's version is still the one written.
//! Hence:
//! - nothing is lost: a mark goes only after its version is committed in
//!   Redshift, and it survives crashes and restarts;
//! - nothing is double counted: rows are absolute, and an older version
//!   never replaces a newer one, so replays and concurrent flushes from
//!   several instances are harmless;
//! - an outage of Redshift buffers in DynamoDB (bounded by the number of
//!   rows, and by `max_rows_per_flush` in memory) and drains when it ends.
//!
//! The pending rows are spread over `MIRROR_BUCKETS` buckets; with several
//! instances each flushes its share ([`BucketShare`]: by the shard leases
//! it holds), and a dead instance's share moves with its leases. The
//! final flush on shutdown reads every bucket.
//!
//! Must not: acknowledge sources (the DynamoDB transaction is the durable
//! write; Redshift follows it) or build SQL outside `sql`.

pub mod component;
pub mod config;
pub mod data_api;
pub mod postgres;
pub mod sql;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::StreamExt;
use pipeline::window::{Counters, WindowId};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::aws::{AwsError, Backoff, describe};
use crate::config::RedshiftSinkConfig;
use crate::internal_events::{
    InternalEvent, MirrorBucketsOwned, MirrorFlushed, MirrorMarkFailed, MirrorPending, MirrorRowRefused, MirrorRowsWritten, Sink,
    SinkRequest, SinkRequestOutcome, SinkRetrying, SinkWrote,
};
use crate::metrics::Metrics;
use crate::sinks::dynamodb::{MIRROR_BUCKETS, MIRROR_INDEX, MIRROR_PENDING, MIRROR_QUARANTINED, MIRROR_SINCE, VERSION, num};
use crate::sinks::redshift::config::TransportKind;
use sql::MirrorRow;

/// Which of the mirror's buckets this instance flushes.
pub trait BucketShare: Send + Sync + std::fmt::Debug {
    /// This instance's share of buckets `0..of`; `None` for every one
    /// (nothing to share by yet).
    fn buckets(&self, of: u32) -> Option<Vec<u32>>;
}

/// Why a batch did not commit, from either transport.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BatchError {
    /// Whether the same batch may succeed later.
    pub retryable: bool,
    /// Whether the server refused a row's data (so a smaller batch without
    /// that row would commit): the flush isolates the row. From the
    /// SQLSTATE over PostgreSQL, from the server's wording over the Data
    /// API (which gives no SQLSTATE).
    pub row_level: bool,
    /// What the server or the client said.
    pub message: String,
}

impl From<postgres::PgError> for BatchError {
    fn from(e: postgres::PgError) -> Self {
        BatchError { retryable: e.retryable(), row_level: e.row_level(), message: e.to_string() }
    }
}

/// The configured transport.
#[derive(Debug, Clone)]
pub enum Transport {
    /// The PostgreSQL wire protocol.
    Postgres(postgres::PgTransport),
    /// The Redshift Data API.
    DataApi(data_api::DataApiTransport),
}

impl Transport {
    /// The transport `config.transport` names; it connects on first use.
    /// `count`: the Data API client counts its requests with it, and its
    /// failed polls in its metrics.
    pub fn new(
        config: &RedshiftSinkConfig,
        sdk: &aws_config::SdkConfig,
        count: Option<crate::aws::CountRequests>,
    ) -> Result<Self, postgres::PgError> {
        Ok(match config.transport {
            TransportKind::DataApi => {
                let mut client = aws_sdk_redshiftdata::config::Builder::from(sdk);
                let metrics = count.as_ref().map(|c| Arc::clone(&c.0));
                if let Some(count) = count {
                    client = client.interceptor(count);
                }
                let client = aws_sdk_redshiftdata::Client::from_conf(client.build());
                Transport::DataApi(data_api::DataApiTransport::new(client, config.clone(), metrics))
            }
            TransportKind::Postgres => {
                Transport::Postgres(postgres::PgTransport::new(&config.url, Duration::from_millis(config.statement_timeout_ms))?)
            }
        })
    }

    /// The same transport, cut off by `cut` when a shutdown's grace
    /// period is over: the statement under way is cancelled then (a Data
    /// API statement by CancelStatement, a PostgreSQL one by the
    /// protocol's cancel request: a backend waiting on a lock does not see
    /// its client's connection close), and no batch is sent after it.
    pub fn cut_by(self, cut: CancellationToken) -> Self {
        match self {
            Transport::DataApi(t) => Transport::DataApi(t.cut_by(cut)),
            Transport::Postgres(t) => Transport::Postgres(t.cut_by(cut)),
        }
    }

    /// Whether the transport was cut off (nothing more is sent).
    pub fn is_cut(&self) -> bool {
        match self {
            Transport::DataApi(t) => t.is_cut(),
            Transport::Postgres(t) => t.is_cut(),
        }
    }

    /// Runs `statements` as one transaction.
    pub async fn run_batch(&self, statements: &[String]) -> Result<(), BatchError> {
        match self {
            Transport::Postgres(t) => t.run_batch(statements).await.map_err(BatchError::from),
            Transport::DataApi(t) => t.run_batch(statements).await,
        }
    }

    /// Runs one statement (DDL).
    pub async fn execute(&self, statement: &str) -> Result<(), BatchError> {
        match self {
            Transport::Postgres(t) => t.execute(statement).await.map_err(BatchError::from),
            Transport::DataApi(t) => t.run_batch(&[statement.to_owned()]).await,
        }
    }

    /// `postgres` or `data_api`, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Postgres(_) => "postgres",
            Transport::DataApi(_) => "data_api",
        }
    }
}

/// Rows per upsert group: each group's batches commit, then its marks are cleared.
const GROUP_ROWS: usize = 2_000;
/// Mark clears in flight at once.
const CLEAR_CONCURRENCY: usize = 16;
/// Attempts of one batch within a flush before the flush gives up (the
/// rows stay pending for the next flush).
const BATCH_ATTEMPTS: u32 = 4;

/// One pending row and when its oldest unflushed change happened.
#[derive(Debug, Clone)]
struct Pending {
    row: MirrorRow,
    since_ms: i64,
}

/// What one flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Rows found pending.
    pub pending: usize,
    /// Rows committed in Redshift.
    pub written: usize,
    /// Marks cleared (the rest changed meanwhile and stay pending).
    pub cleared: usize,
    /// Rows Redshift refused for their data, set aside (quarantined).
    pub quarantined: usize,
}

/// The flusher.
#[derive(Debug, Clone)]
pub struct RedshiftSink {
    transport: Transport,
    dynamodb: aws_sdk_dynamodb::Client,
    aggregates_table: String,
    config: RedshiftSinkConfig,
    metrics: Arc<Metrics>,
    share: Option<Arc<dyn BucketShare>>,
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> i64 {
    item.get(name).and_then(|v| v.as_n().ok()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn parse_pending(item: &HashMap<String, AttributeValue>) -> Option<Pending> {
    let store = item.get("store")?.as_s().ok()?.clone();
    let window = item.get("window")?.as_s().ok()?.clone();
    let mut values = [0i64; 11];
    for (v, name) in values.iter_mut().zip(Counters::NAMES) {
        *v = number(item, name);
    }
    Some(Pending {
        row: MirrorRow {
            id: WindowId { store, window },
            counters: Counters::from_values(values),
            version: number(item, VERSION),
        },
        since_ms: number(item, MIRROR_SINCE),
    })
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl RedshiftSink {
    /// A flusher of `aggregates_table` into `config.table`.
    pub fn new(
        transport: Transport,
        dynamodb: aws_sdk_dynamodb::Client,
        aggregates_table: String,
        config: RedshiftSinkConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        RedshiftSink { transport, dynamodb, aggregates_table, config, metrics, share: None }
    }

    /// Flushes only `share`'s buckets, but for the final flush.
    pub fn with_share(mut self, share: Arc<dyn BucketShare>) -> Self {
        self.share = Some(share);
        self
    }

    /// The buckets the next flush reads: this instance's share, or every
    /// one (`all`, or nothing to share by).
    fn buckets(&self, all: bool) -> Vec<u32> {
        let share = if all { None } else { self.share.as_ref().and_then(|s| s.buckets(MIRROR_BUCKETS)) };
        share.unwrap_or_else(|| (0..MIRROR_BUCKETS).collect())
    }

    /// Pending rows of `buckets`, oldest windows first within each bucket,
    /// at most `max_rows_per_flush`.
    async fn pending(&self, buckets: &[u32]) -> Result<Vec<Pending>, AwsError> {
        let mut out: Vec<Pending> = Vec::new();
        let max = self.config.max_rows_per_flush;
        for &bucket in buckets {
            let mut start = None;
            loop {
                let resp = self
                    .dynamodb
                    .query()
                    .table_name(&self.aggregates_table)
                    .index_name(MIRROR_INDEX)
                    .key_condition_expression("#p = :p")
                    .expression_attribute_names("#p", MIRROR_PENDING)
                    .expression_attribute_values(":p", AttributeValue::S(bucket.to_string()))
                    .limit(i32::try_from(max - out.len()).unwrap_or(i32::MAX).min(1000))
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(|e| AwsError::sdk(format!("querying {MIRROR_INDEX} of {}", self.aggregates_table), &e))?;
                out.extend(resp.items().iter().filter_map(parse_pending));
                if out.len() >= max {
                    return Ok(out);
                }
                match resp.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    async fn run_with_retries(&self, batch: &[String]) -> Result<(), BatchError> {
        let backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(2) };
        let mut attempt = 0;
        loop {
            match self.transport.run_batch(batch).await {
                Ok(()) => {
                    SinkRequest { sink: Sink::Redshift, outcome: SinkRequestOutcome::Ok }.emit(&self.metrics);
                    SinkWrote { sink: Sink::Redshift }.emit(&self.metrics);
                    return Ok(());
                }
                Err(e) if e.retryable && attempt + 1 < BATCH_ATTEMPTS => {
                    let error = format!("{e} ({})", self.transport.name());
                    SinkRetrying { sink: Sink::Redshift, what: "Redshift batch", attempt, error: &error }.emit(&self.metrics);
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    // The flush stops; its rows stay pending (MirrorFlushed says so).
                    SinkRequest { sink: Sink::Redshift, outcome: SinkRequestOutcome::Failed }.emit(&self.metrics);
                    return Err(e);
                }
            }
        }
    }

    /// Writes `rows`. A batch the server refused for a row's data is split
    /// in halves until that row is alone; such a row is set aside
    /// (quarantined) when other rows of the group were written, so the
    /// refusal was the row's and not the table's. Returns the rows not
    /// written, and how many of them were set aside. When no row could be written (a refusal of every row, e.g. a
    /// column changed under the mirror), or on any other failure, the flush
    /// stops and every row stays pending.
    async fn write_isolating(&self, rows: &[MirrorRow]) -> Result<(Vec<WindowId>, usize), BatchError> {
        let mut refused: Vec<(&MirrorRow, BatchError)> = Vec::new();
        let mut written = 0usize;
        let mut parts: Vec<&[MirrorRow]> = vec![rows];
        while let Some(part) = parts.pop() {
            let mut failure = None;
            for batch in sql::upsert_batches(&self.config.table, part) {
                if let Err(e) = self.run_with_retries(&batch).await {
                    failure = Some(e);
                    break;
                }
            }
            match failure {
                None => written += part.len(),
                Some(e) if !e.row_level => return Err(e),
                Some(e) if part.len() == 1 => refused.push((&part[0], e)),
                Some(_) => {
                    // Older windows first: the first half is tried first.
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second);
                    parts.push(first);
                }
            }
        }
        if written == 0
            && let Some((_, e)) = refused.pop()
        {
            return Err(BatchError { message: format!("every row refused: {}", e.message), ..e });
        }
        let mut set_aside = 0;
        let mut not_written = Vec::new();
        for (row, e) in refused {
            set_aside += usize::from(self.quarantine(row, &e.message).await);
            not_written.push(row.id.clone());
        }
        Ok((not_written, set_aside))
    }

    /// An update of `row`'s mirror marks (`#p` pending, `#s` since, `#q`
    /// quarantined), on condition that its version is still `:v`, the one
    /// this flush read.
    fn mark_update(
        &self,
        row: &MirrorRow,
        expression: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.dynamodb
            .update_item()
            .table_name(&self.aggregates_table)
            .key("store", AttributeValue::S(row.id.store.clone()))
            .key("window", AttributeValue::S(row.id.window.clone()))
            .update_expression(expression)
            .condition_expression("#v = :v")
            .expression_attribute_names("#p", MIRROR_PENDING)
            .expression_attribute_names("#s", MIRROR_SINCE)
            .expression_attribute_names("#q", MIRROR_QUARANTINED)
            .expression_attribute_names("#v", VERSION)
            .expression_attribute_values(":v", num(row.version))
    }

    /// Sets a row Redshift refused aside: its pending mark goes, and the
    /// version refused is recorded, if the row has not changed since (a
    /// change marks it pending again, and it is tried again). True when set
    /// aside; otherwise it stays pending.
    async fn quarantine(&self, row: &MirrorRow, error: &str) -> bool {
        let result = self.mark_update(row, "REMOVE #p, #s SET #q = :v").send().await;
        let set_aside = match result {
            Ok(_) => true,
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => false,
            Err(e) => {
                MirrorMarkFailed { error: &format!("quarantining: {}", describe(&e)) }.emit(&self.metrics);
                false
            }
        };
        MirrorRowRefused { store: &row.id.store, window: &row.id.window, version: row.version, error, set_aside }
            .emit(&self.metrics);
        set_aside
    }

    /// Clears the mark of `row` if its version is still the one written.
    /// If the row changed meanwhile it stays pending, and its pending-since
    /// time moves up to `read_ms` (when the flush read it): every change up
    /// to the version written is in Redshift, so the oldest change still
    /// missing is not older than that (the index lags the table a little,
    /// so this is an estimate within that lag).
    async fn clear(&self, row: &MirrorRow, read_ms: i64) -> bool {
        // A row set aside earlier and now written is no longer set aside.
        let result = self.mark_update(row, "REMOVE #p, #s, #q").send().await;
        match result {
            Ok(_) => true,
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                let moved = self
                    .dynamodb
                    .update_item()
                    .table_name(&self.aggregates_table)
                    .key("store", AttributeValue::S(row.id.store.clone()))
                    .key("window", AttributeValue::S(row.id.window.clone()))
                    .update_expression("SET #s = :read")
                    .condition_expression("#v > :v AND attribute_exists(#p) AND #s < :read")
                    .expression_attribute_names("#p", MIRROR_PENDING)
                    .expression_attribute_names("#s", MIRROR_SINCE)
                    .expression_attribute_names("#v", VERSION)
                    .expression_attribute_values(":v", num(row.version))
                    .expression_attribute_values(":read", num(read_ms))
                    .send()
                    .await;
                if let Err(e) = moved
                    && e.code() != Some("ConditionalCheckFailedException")
                {
                    let error = format!("moving its time: {}", describe(&e));
                    MirrorMarkFailed { error: &error }.emit(&self.metrics);
                }
                false
            }
            Err(e) => {
                MirrorMarkFailed { error: &describe(&e) }.emit(&self.metrics);
                false
            }
        }
    }

    /// One flush: every pending row of this instance's buckets (of every
    /// bucket when `all`), up to the limit, into Redshift.
    pub async fn flush_once(&self, all: bool) -> Result<FlushReport, BatchError> {
        let started = Instant::now();
        let result = self.flush_inner(all).await;
        let error = result.as_ref().err().map(|e| format!("{e} ({})", self.transport.name()));
        MirrorFlushed { elapsed: started.elapsed(), error: error.as_deref() }.emit(&self.metrics);
        result
    }

    async fn flush_inner(&self, all: bool) -> Result<FlushReport, BatchError> {
        let now = now_ms();
        let buckets = self.buckets(all);
        MirrorBucketsOwned { buckets: buckets.len() }.emit(&self.metrics);
        let pending =
            self.pending(&buckets).await.map_err(|e| BatchError { retryable: true, row_level: false, message: e.to_string() })?;
        let oldest = pending.iter().map(|p| p.since_ms).filter(|s| *s > 0).min().map_or(0, |s| now - s);
        MirrorPending { rows: pending.len(), oldest: Some(Duration::from_millis(oldest.max(0) as u64)) }.emit(&self.metrics);
        let mut report = FlushReport { pending: pending.len(), ..FlushReport::default() };
        for group in pending.chunks(GROUP_ROWS) {
            let all: Vec<MirrorRow> = group.iter().map(|p| p.row.clone()).collect();
            let (not_written, set_aside) = self.write_isolating(&all).await?;
            report.quarantined += set_aside;
            // A refused row is not cleared: set aside, or (it changed, or
            // setting it aside failed) still pending.
            let group: Vec<&Pending> = group.iter().filter(|p| !not_written.contains(&p.row.id)).collect();
            let rows: Vec<MirrorRow> = group.iter().map(|p| p.row.clone()).collect();
            let committed = now_ms();
            report.written += rows.len();
            let waited: Vec<Duration> = group
                .iter()
                .filter(|p| p.since_ms > 0)
                .map(|p| Duration::from_millis((committed - p.since_ms).max(0) as u64))
                .collect();
            MirrorRowsWritten { rows: rows.len(), waited: &waited }.emit(&self.metrics);
            let clears: Vec<_> = rows.into_iter().map(|r| async move { self.clear(&r, now).await }).collect();
            let results: Vec<bool> = futures::stream::iter(clears).buffer_unordered(CLEAR_CONCURRENCY).collect().await;
            report.cleared += results.iter().filter(|ok| **ok).count();
        }
        if report.pending > 0 {
            MirrorPending { rows: report.pending - report.cleared - report.quarantined, oldest: None }.emit(&self.metrics);
        }
        Ok(report)
    }

    /// When the next flush is due after `now`: every `flush_interval_ms`,
    /// and `window_close_delay_ms` after each minute ends.
    fn next_flush(&self, last: Instant) -> Instant {
        let interval = last + Duration::from_millis(self.config.flush_interval_ms);
        let ms = now_ms();
        let to_close = 60_000 - ms.rem_euclid(60_000) + self.config.window_close_delay_ms as i64;
        let to_close = if to_close > 60_000 { to_close - 60_000 } else { to_close };
        interval.min(Instant::now() + Duration::from_millis(to_close.max(1) as u64))
    }

    /// Flushes on the cadence until `stop`, then once more (the drain's
    /// final writes). The caller bounds the last flush: at the end of the
    /// grace period it cuts the transport off ([`Transport::cut_by`]),
    /// which ends the flush within an allowance.
    pub async fn flush_loop(self, stop: CancellationToken) {
        info!(transport = self.transport.name(), table = %self.config.table, "Mirroring aggregates into Redshift");
        let mut last = Instant::now();
        loop {
            let due = self.next_flush(last);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(due.into()) => {}
            }
            last = Instant::now();
            self.flush_logged(false).await;
        }
        // Every bucket: by now this instance has released its leases, and
        // what it wrote last is mirrored before it exits.
        // Not once cut off (a flush under way at the end of the grace
        // period): it would send nothing.
        if !self.transport.is_cut() {
            self.flush_logged(true).await;
        }
    }

    async fn flush_logged(&self, all: bool) {
        match self.flush_once(all).await {
            Ok(r) if r.pending > 0 => {
                tracing::debug!(pending = r.pending, written = r.written, cleared = r.cleared, "Flushed to Redshift")
            }
            // A failure was logged by its MirrorFlushed event.
            Ok(_) | Err(_) => {}
        }
    }
}
