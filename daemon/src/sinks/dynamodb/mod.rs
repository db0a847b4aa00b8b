//! The DynamoDB sink: the contract's tables, written exactly once in effect.
//!
//! Owns: the item layouts, the write protocols (`payments.rs`: payments;
//! `order_items.rs`: orders; `menu_items.rs`: menu items and the event
//! ledger), the aggregate rows every one of them updates in the same
//! transaction (with the row's version and the Redshift mirror's pending
//! mark), and the one attempt loop of every TransactWriteItems. Must not:
//! decide anything about an event (it writes what `pipeline::decided`
//! describes) or acknowledge anything (sources do, from the outcomes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use pipeline::window::{Counters, WindowId};

pub mod component;
pub mod config;
pub mod fraud_state;
pub mod menu_items;
pub mod order_items;
pub mod payments;

use tokio_util::sync::CancellationToken;

use crate::aws::{Backoff, ErrorClass, classify, describe};
use crate::config::DynamoDbSinkConfig;
use crate::internal_events::{InternalEvent, Sink, SinkGaveUp, SinkRequest, SinkRequestOutcome, SinkRetrying, SinkWrote};
use crate::metrics::Metrics;

/// `cafe-aggregates` attribute: the row's version, +1 on every change.
pub const VERSION: &str = "version";
/// `cafe-aggregates` attribute: present while the row has a change not yet
/// in Redshift; its value is the row's bucket (`0`..`MIRROR_BUCKETS`), the
/// partition key of the sparse index [`MIRROR_INDEX`].
pub const MIRROR_PENDING: &str = "mirror_pending";
/// `cafe-aggregates` attribute: epoch milliseconds of the oldest change not
/// yet in Redshift.
pub const MIRROR_SINCE: &str = "mirror_pending_since";
/// `cafe-aggregates` attribute: the version of the row that Redshift refused
/// for its data (set instead of the pending mark; the row's next change
/// marks it pending again).
pub const MIRROR_QUARANTINED: &str = "mirror_quarantined_version";
/// The sparse global secondary index of pending rows (hash
/// `mirror_pending`, range `window`, all attributes projected).
pub const MIRROR_INDEX: &str = "mirror-pending";
/// Event ledger attribute: when the entry expires (epoch seconds, the
/// table's TTL attribute).
pub const EVENT_EXPIRES: &str = "expires_at";

/// A batch's records split by key: the first of each key (to write) and
/// later copies with the index of their first (a redelivered copy in the
/// same batch; two writes to one item in a transaction are refused).
pub(crate) struct Copies {
    /// First record of each key, in arrival order.
    pub(crate) firsts: Vec<usize>,
    /// (copy, its first).
    copies: Vec<(usize, usize)>,
}

impl Copies {
    /// Splits records by `key`.
    pub(crate) fn of<'a, T>(records: &'a [T], key: impl Fn(&'a T) -> &'a str) -> Self {
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let (mut firsts, mut copies) = (Vec::with_capacity(records.len()), Vec::new());
        for (i, r) in records.iter().enumerate() {
            match first_of.get(key(r)) {
                Some(&first) => copies.push((i, first)),
                None => {
                    first_of.insert(key(r), i);
                    firsts.push(i);
                }
            }
        }
        Copies { firsts, copies }
    }

    /// Each copy takes its first's outcome: failed with it, else a duplicate.
    pub(crate) fn settle(&self, outcomes: &mut [crate::sinks::WriteOutcome]) {
        use crate::sinks::WriteOutcome;
        for &(i, first) in &self.copies {
            outcomes[i] = if outcomes[first] == WriteOutcome::Failed { WriteOutcome::Failed } else { WriteOutcome::Duplicate };
        }
    }
}

/// What one [`DynamoDbSink::transact`] attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// Durable.
    Committed,
    /// Cancelled: the items at these positions failed their condition.
    Conditions(Vec<usize>),
    /// Failed transiently; the backoff was slept: build and send again.
    Again,
    /// Failed for good (fatal, or retries exhausted; counted as `failed`).
    GiveUp,
}

/// Event ledger entries outlive any redelivery: SQS keeps a message 14
/// days at most, and a Kinesis stream's retention is at most 365 days but
/// a checkpoint is never that far behind.
pub const LEDGER_TTL_SECS: i64 = 15 * 24 * 3600;

/// Buckets of pending rows: spreads the index over partitions.
pub const MIRROR_BUCKETS: u32 = 16;

/// The pending bucket of a row: FNV-1a of `store/window`, stable across
/// releases and instances.
pub fn mirror_bucket(row: &WindowId) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in row.store.bytes().chain(std::iter::once(b'/')).chain(row.window.bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % MIRROR_BUCKETS
}

/// Writes payments and their counters.
#[derive(Debug, Clone)]
pub struct DynamoDbSink {
    pub(crate) client: Client,
    pub(crate) config: DynamoDbSinkConfig,
    pub(crate) metrics: Arc<Metrics>,
    /// Mark changed aggregate rows pending for the Redshift mirror.
    pub(crate) mirror: bool,
    /// Past this point of a shutdown, a failed request is not retried: its
    /// records go back to their source at once, so a sink that is down
    /// cannot hold the drain past the grace period.
    pub(crate) stop_retrying: CancellationToken,
}

impl DynamoDbSink {
    /// A sink on the configured tables.
    pub fn new(client: Client, config: DynamoDbSinkConfig, metrics: Arc<Metrics>) -> Self {
        DynamoDbSink { client, config, metrics, mirror: false, stop_retrying: CancellationToken::new() }
    }

    /// Marks every aggregate change pending for the Redshift mirror.
    pub fn with_mirror(mut self, mirror: bool) -> Self {
        self.mirror = mirror;
        self
    }

    /// Stops retrying failed requests once `stop` is cancelled (see
    /// `stop_retrying`).
    pub fn with_stop_retrying(mut self, stop: CancellationToken) -> Self {
        self.stop_retrying = stop;
        self
    }

    /// The update of one aggregate row by `c` (see [`aggregate_update`]).
    pub(crate) fn aggregate_update(&self, row: &WindowId, c: &Counters) -> Option<Update> {
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        aggregate_update(&self.config.aggregates_table, row, c, self.mirror.then_some(now_ms as i64))
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.config.base_backoff_ms),
            max: Duration::from_millis(self.config.max_backoff_ms),
        }
    }

    /// After a failed attempt at `what` for `records` records: either
    /// (within `max_retries`) counts the retry, sleeps the backoff and
    /// returns true (try again), or counts the failure and returns false
    /// (give the messages back).
    /// Shutting down past the point of retrying gives up at once.
    pub(crate) async fn retry_later(&self, attempt: &mut u32, what: &str, records: usize, error: &str) -> bool {
        if *attempt >= self.config.max_retries || self.stop_retrying.is_cancelled() {
            SinkGaveUp { sink: Sink::DynamoDb, what, records, error: Some(error) }.emit(&self.metrics);
            return false;
        }
        SinkRetrying { sink: Sink::DynamoDb, what, attempt: *attempt, error }.emit(&self.metrics);
        tokio::select! {
            () = self.stop_retrying.cancelled() => {
                SinkGaveUp { sink: Sink::DynamoDb, what, records, error: Some(error) }.emit(&self.metrics);
                return false;
            }
            () = tokio::time::sleep(self.backoff().delay(*attempt)) => {}
        }
        *attempt += 1;
        true
    }

    /// After a BatchGetItem that left keys unprocessed (throttling),
    /// whether to ask again for them, after the backoff: a call that
    /// processed some of its keys made progress, and is counted as a
    /// retry but not against the budget (each such call settles a key at
    /// least, so the read ends); one that processed none counts against
    /// it, as a failed call does ([`DynamoDbSink::retry_later`]). False,
    /// counted, when out of budget or shutting down.
    pub(crate) async fn again_for_unprocessed(&self, progressed: bool, attempt: &mut u32, what: &str, records: usize) -> bool {
        const ERROR: &str = "unprocessed keys";
        if !progressed {
            return self.retry_later(attempt, what, records, ERROR).await;
        }
        SinkRetrying { sink: Sink::DynamoDb, what, attempt: *attempt, error: "unprocessed keys (some were processed)" }
            .emit(&self.metrics);
        if self.pause_between_rounds(*attempt).await {
            return true;
        }
        SinkGaveUp { sink: Sink::DynamoDb, what, records, error: Some(ERROR) }.emit(&self.metrics);
        false
    }

    /// Sleeps the backoff before scoring round `round + 1` of a batch whose
    /// fraud state moved under it (the budget is the caller's rounds);
    /// false, at once, when shutting down past the point of retrying.
    pub(crate) async fn pause_between_rounds(&self, round: u32) -> bool {
        if self.stop_retrying.is_cancelled() {
            return false;
        }
        tokio::select! {
            () = self.stop_retrying.cancelled() => false,
            () = tokio::time::sleep(self.backoff().delay(round)) => true,
        }
    }

    /// True when a failed request cannot succeed on a retry (the failure is
    /// counted and logged, and the messages are given back).
    pub(crate) fn is_fatal<E>(
        &self,
        e: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
        what: &str,
        records: usize,
    ) -> bool
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error,
    {
        if classify(e) == ErrorClass::Fatal {
            SinkGaveUp { sink: Sink::DynamoDb, what, records, error: Some(&describe(e)) }.emit(&self.metrics);
            return true;
        }
        false
    }

    pub(crate) fn count(&self, outcome: SinkRequestOutcome) {
        SinkRequest { sink: crate::internal_events::Sink::DynamoDb, outcome }.emit(&self.metrics);
    }

    /// One attempt of a TransactWriteItems for `records` records. On a
    /// cancellation by conditions it returns the positions of the items
    /// whose condition failed, for the caller to act on (drop a replay,
    /// re-read a moved item); throttling, conflicts and transient errors
    /// sleep the backoff and ask for another attempt, until `max_retries`.
    /// Every attempt is counted in `cafe_sink_requests_total{sink="dynamodb"}`.
    /// Past the point of retrying in a shutdown, a call still waiting is
    /// abandoned (it may land or not: either way the records go back to
    /// their source, and the conditional writes make a landed one a no-op
    /// when they return).
    pub(crate) async fn transact(&self, items: Vec<TransactWriteItem>, what: &str, records: usize, attempt: &mut u32) -> Attempt {
        let call = self.client.transact_write_items().set_transact_items(Some(items)).send();
        let result = tokio::select! {
            r = call => r,
            () = self.stop_retrying.cancelled() => {
                SinkGaveUp { sink: Sink::DynamoDb, what, records, error: Some("shutting down") }.emit(&self.metrics);
                return Attempt::GiveUp;
            }
        };
        match result {
            Ok(_) => {
                self.count(SinkRequestOutcome::Ok);
                SinkWrote { sink: Sink::DynamoDb }.emit(&self.metrics);
                Attempt::Committed
            }
            Err(SdkError::ServiceError(e)) if matches!(e.err(), TransactWriteItemsError::TransactionCanceledException(_)) => {
                let TransactWriteItemsError::TransactionCanceledException(tc) = e.err() else { unreachable!() };
                let reasons = tc.cancellation_reasons();
                let failed: Vec<usize> = reasons
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
                    .map(|(k, _)| k)
                    .collect();
                if !failed.is_empty() {
                    self.count(SinkRequestOutcome::ConditionFailed);
                    return Attempt::Conditions(failed);
                }
                let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).filter(|c| *c != "None").collect();
                let error = format!("transaction cancelled: {codes:?}");
                if self.retry_later(attempt, what, records, &error).await { Attempt::Again } else { Attempt::GiveUp }
            }
            Err(e) => {
                if self.is_fatal(&e, what, records) {
                    return Attempt::GiveUp;
                }
                if self.retry_later(attempt, what, records, &describe(&e)).await { Attempt::Again } else { Attempt::GiveUp }
            }
        }
    }
}

/// A sink whose every call is refused at once (nothing listens on port
/// 1), with no retries: for unit tests of what its callers do when
/// DynamoDB fails.
#[cfg(test)]
pub(crate) fn refusing_sink() -> DynamoDbSink {
    let config = DynamoDbSinkConfig { max_retries: 0, ..Default::default() };
    DynamoDbSink::new(Client::new(&crate::sinks::refusing_sdk_config()), config, Arc::new(Metrics::new()))
}

/// A sink whose DynamoDB (in memory) answers every request as a
/// `BatchGetItem` that processed at most `processed` of the keys asked
/// for, finding no item, and left the rest unprocessed (throttling), and
/// the count of requests it answered: for unit tests of the reads'
/// budgets.
#[cfg(test)]
pub(crate) fn unprocessed_reads_sink(
    config: DynamoDbSinkConfig,
    processed: usize,
) -> (DynamoDbSink, Arc<std::sync::atomic::AtomicUsize>) {
    use aws_sdk_dynamodb::config::http::{HttpRequest, HttpResponse};
    use aws_smithy_runtime_api::client::http::{HttpConnector, HttpConnectorFuture};

    #[derive(Debug, Clone)]
    struct Unprocessed(Arc<std::sync::atomic::AtomicUsize>, usize);

    impl HttpConnector for Unprocessed {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut asked: serde_json::Value =
                request.body().bytes().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
            let mut left = serde_json::Map::new();
            if let Some(tables) = asked["RequestItems"].as_object_mut() {
                for (table, request) in tables.iter_mut() {
                    if let Some(keys) = request["Keys"].as_array_mut() {
                        keys.drain(..self.1.min(keys.len()));
                        if !keys.is_empty() {
                            left.insert(table.clone(), request.clone());
                        }
                    }
                }
            }
            let body = serde_json::json!({"Responses": {}, "UnprocessedKeys": left}).to_string();
            let status = 200.try_into().expect("a valid status");
            HttpConnectorFuture::ready(Ok(HttpResponse::new(status, aws_smithy_types::body::SdkBody::from(body))))
        }
    }

    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sdk = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("k", "s", None, None, "test"))
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .http_client(crate::sinks::in_process(Unprocessed(Arc::clone(&calls), processed)))
        .build();
    (DynamoDbSink::new(Client::from_conf(sdk), config, Arc::new(Metrics::new())), calls)
}

/// `cafe_sink_requests_total{sink="dynamodb", outcome}` of `metrics`.
#[cfg(test)]
pub(crate) fn sink_requests(metrics: &Metrics, outcome: &str) -> u64 {
    let text = metrics.encode();
    text.lines()
        .filter(|l| l.starts_with("cafe_sink_requests_total{") && l.contains(r#"sink="dynamodb""#))
        .find(|l| l.contains(&format!(r#"outcome="{outcome}""#)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn num(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// `ADD` of the non-zero counters to one aggregate row and 1 to its
/// `version`; with `pending_since_ms`, also marks the row pending for the
/// Redshift mirror (keeping the oldest pending time). `None` if every
/// counter is 0.
pub fn aggregate_update(table: &str, row: &WindowId, c: &Counters, pending_since_ms: Option<i64>) -> Option<Update> {
    let mut expr = Vec::new();
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    for (i, (name, value)) in c.non_zero().enumerate() {
        expr.push(format!("#c{i} :c{i}"));
        names.insert(format!("#c{i}"), name.to_owned());
        values.insert(format!(":c{i}"), num(value));
    }
    if expr.is_empty() {
        return None;
    }
    expr.push("#ver :one".into());
    names.insert("#ver".into(), VERSION.into());
    values.insert(":one".into(), num(1));
    let mut update = format!("ADD {}", expr.join(", "));
    if let Some(since) = pending_since_ms {
        update.push_str(" SET #mp = :mp, #ms = if_not_exists(#ms, :ms)");
        names.insert("#mp".into(), MIRROR_PENDING.into());
        names.insert("#ms".into(), MIRROR_SINCE.into());
        values.insert(":mp".into(), s(mirror_bucket(row).to_string()));
        values.insert(":ms".into(), num(since));
    }
    Update::builder()
        .table_name(table)
        .key("store", s(&row.store))
        .key("window", s(&row.window))
        .update_expression(update)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn aggregate_updates_bump_the_version_and_mark_only_when_mirrored() {
        let row = WindowId { store: "s1".into(), window: "2026-11-22T08:15:00Z".into() };
        let c = Counters { payments: 1, ..Counters::default() };
        let plain = aggregate_update("t", &row, &c, None).expect("update");
        assert_eq!(plain.update_expression(), "ADD #c0 :c0, #ver :one");
        let marked = aggregate_update("t", &row, &c, Some(5)).expect("update");
        assert!(marked.update_expression().ends_with("SET #mp = :mp, #ms = if_not_exists(#ms, :ms)"));
        let bucket = marked.expression_attribute_values().and_then(|v| v.get(":mp")).cloned();
        assert_eq!(bucket, Some(s(mirror_bucket(&row).to_string())));
        assert!(aggregate_update("t", &row, &Counters::default(), Some(5)).is_none());
        // Buckets are stable and spread.
        assert_eq!(mirror_bucket(&row), mirror_bucket(&row.clone()));
        let used: HashSet<u32> =
            (0..200).map(|i| mirror_bucket(&WindowId { store: format!("store-{i}"), window: row.window.clone() })).collect();
        assert_eq!(used.len(), MIRROR_BUCKETS as usize);
    }

    #[test]
    fn copies_in_a_batch_take_their_first_ones_outcome() {
        use crate::sinks::WriteOutcome::*;
        let keys = ["a", "b", "a", "c", "b"];
        let copies = Copies::of(&keys, |k| *k);
        assert_eq!(copies.firsts, vec![0, 1, 3]);
        let mut outcomes = vec![Written, Failed, Failed, Duplicate, Failed];
        copies.settle(&mut outcomes);
        assert_eq!(outcomes, vec![Written, Failed, Duplicate, Duplicate, Failed]);
    }
}
