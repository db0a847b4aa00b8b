//! The DynamoDB sink: `cafe-payments` items and the payment counters of
//! `cafe-aggregates`, exactly-once in effect (orders: `orders.rs`).
//!
//! Owns: the item layout of the contract's tables and the write protocol.
//! Must not: decide anything about an event; it writes what it is given.
//!
//! Protocol: records are written in chunks, one TransactWriteItems per chunk
//! holding a conditional put per payment (`attribute_not_exists`) and one
//! `ADD` per touched (store, window) row with the sum of that chunk's
//! counters. If a put's condition fails, that payment was written before
//! (the transaction wrote it together with its counters), so it is dropped
//! and the transaction retried without it: a replay changes nothing.
//! Records are packed into chunks by aggregate row, so a transaction carries
//! as many payments and as few rows as it can: the order of writes does not
//! matter (each is keyed, the ADDs commute, and scoring already happened in
//! arrival order). What matters is the order of acknowledgements: once a
//! record fails for good, no later record of its FIFO group is acknowledged
//! (even if it was written; its redelivery is then a no-op), so SQS
//! redelivers the group in order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use pipeline::window::{Counters, Deltas, WindowId};
use tracing::warn;

pub mod menu;
pub mod orders;

use super::WriteOutcome;
use crate::aws::{Backoff, ErrorClass, classify, describe};
use crate::config::DynamoDbSinkConfig;
use crate::metrics::{Metrics, SinkLabel, SinkOutcome};

const SINK: &str = "dynamodb";

/// One decided payment, as `cafe-payments` stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRecord {
    /// Event id (idempotency key of the event).
    pub event_id: String,
    /// Payment id: the item key.
    pub payment_id: String,
    /// Order paid for.
    pub order_id: String,
    /// Who paid.
    pub customer_id: String,
    /// Store.
    pub store: String,
    /// Amount.
    pub amount_cents: u64,
    /// 0..1000.
    pub score: u32,
    /// approve | review | decline.
    pub decision: &'static str,
    /// Rules that fired.
    pub reasons: Vec<&'static str>,
    /// Event time as sent.
    pub ts: String,
    /// Event time, parsed (for end-to-end latency).
    pub event_time: time::OffsetDateTime,
    /// When the daemon decided, RFC 3339 UTC.
    pub decided_at: String,
    /// The aggregate row it counts in.
    pub window: WindowId,
    /// Its counter deltas.
    pub counters: Counters,
    /// FIFO group, to keep a group's order across chunk failures.
    pub group: Option<String>,
}

/// `cafe-aggregates` attribute: the row's version, +1 on every change.
pub const VERSION: &str = "version";
/// `cafe-aggregates` attribute: present while the row has a change not yet
/// in Redshift; its value is the row's bucket (`0`..`MIRROR_BUCKETS`), the
/// partition key of the sparse index [`MIRROR_INDEX`].
pub const MIRROR_PENDING: &str = "mirror_pending";
/// `cafe-aggregates` attribute: epoch milliseconds of the oldest change not
/// yet in Redshift.
pub const MIRROR_SINCE: &str = "mirror_pending_since";
/// The sparse global secondary index of pending rows (hash
/// `mirror_pending`, range `window`, all attributes projected).
pub const MIRROR_INDEX: &str = "mirror-pending";
/// Event ledger attribute: when the entry expires (epoch seconds, the
/// table's TTL attribute).
pub const EVENT_EXPIRES: &str = "expires_at";

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
}

impl DynamoDbSink {
    /// A sink on the configured tables.
    pub fn new(client: Client, config: DynamoDbSinkConfig, metrics: Arc<Metrics>) -> Self {
        DynamoDbSink { client, config, metrics, mirror: false }
    }

    /// Marks every aggregate change pending for the Redshift mirror.
    pub fn with_mirror(mut self, mirror: bool) -> Self {
        self.mirror = mirror;
        self
    }

    /// The update of one aggregate row by `c` (see [`aggregate_update`]).
    pub(crate) fn aggregate_update(&self, row: &WindowId, c: &Counters) -> Option<Update> {
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        aggregate_update(&self.config.aggregates_table, row, c, self.mirror.then_some(now_ms as i64))
    }

    /// Writes `records`, returning an outcome for each, in order.
    pub async fn write_payments(&self, records: &[PaymentRecord]) -> Vec<WriteOutcome> {
        if records.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let mut outcomes = vec![WriteOutcome::Failed; records.len()];
        // Two writes to one item in a transaction are refused; a batch can
        // hold a redelivered copy of a payment, so later copies wait for the
        // first one's outcome.
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut todo: Vec<usize> = Vec::with_capacity(records.len());
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match first_of.get(r.payment_id.as_str()) {
                Some(&first) => copies.push((i, first)),
                None => {
                    first_of.insert(&r.payment_id, i);
                    todo.push(i);
                }
            }
        }
        // Stable: arrival order is kept within a row.
        todo.sort_by(|&a, &b| records[a].window.cmp(&records[b].window));
        for chunk in self.chunks(records, &todo) {
            let result = self.write_chunk(records, &chunk).await;
            for (&i, o) in chunk.iter().zip(result) {
                outcomes[i] = o;
            }
        }
        for (i, first) in copies {
            outcomes[i] = match outcomes[first] {
                WriteOutcome::Failed => WriteOutcome::Failed,
                _ => WriteOutcome::Duplicate,
            };
        }
        hold_back_failed_groups(records, &mut outcomes);
        self.metrics.sink_write_duration.get_or_create(&SinkLabel { sink: SINK }).observe(started.elapsed().as_secs_f64());
        outcomes
    }

    /// Splits `indices` (in the order given) into chunks whose puts plus
    /// distinct aggregate rows fit one transaction.
    fn chunks(&self, records: &[PaymentRecord], indices: &[usize]) -> Vec<Vec<usize>> {
        let max = self.config.max_transaction_items;
        let mut out = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        let mut rows: HashSet<&WindowId> = HashSet::new();
        for &i in indices {
            let new_row = !rows.contains(&records[i].window);
            let items = cur.len() + rows.len() + 1 + usize::from(new_row);
            if !cur.is_empty() && items > max {
                out.push(std::mem::take(&mut cur));
                rows.clear();
            }
            rows.insert(&records[i].window);
            cur.push(i);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    async fn write_chunk(&self, records: &[PaymentRecord], chunk: &[usize]) -> Vec<WriteOutcome> {
        let mut outcomes = vec![WriteOutcome::Failed; chunk.len()];
        // Positions in `chunk` still to write.
        let mut live: Vec<usize> = (0..chunk.len()).collect();
        let mut attempt = 0u32;
        while !live.is_empty() {
            let items = self.transaction(records, chunk, &live);
            let result = self.client.transact_write_items().set_transact_items(Some(items)).send().await;
            match result {
                Ok(_) => {
                    self.count("ok");
                    for &p in &live {
                        outcomes[p] = WriteOutcome::Written;
                    }
                    return outcomes;
                }
                Err(SdkError::ServiceError(e)) if matches!(e.err(), TransactWriteItemsError::TransactionCanceledException(_)) => {
                    let TransactWriteItemsError::TransactionCanceledException(tc) = e.err() else { unreachable!() };
                    let reasons = tc.cancellation_reasons();
                    // The puts come first in the transaction, in `live` order.
                    let dup: Vec<usize> = live
                        .iter()
                        .enumerate()
                        .filter(|(k, _)| reasons.get(*k).and_then(|r| r.code()) == Some("ConditionalCheckFailed"))
                        .map(|(_, &p)| p)
                        .collect();
                    if !dup.is_empty() {
                        for &p in &dup {
                            outcomes[p] = WriteOutcome::Duplicate;
                        }
                        live.retain(|p| !dup.contains(p));
                        continue;
                    }
                    let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).filter(|c| *c != "None").collect();
                    warn!(codes = ?codes, attempt, "Transaction cancelled, retrying");
                }
                Err(e) => {
                    if self.is_fatal(&e, attempt, "Write", live.len()) {
                        return outcomes;
                    }
                }
            }
            if !self.retry_later(&mut attempt, "Write", live.len()).await {
                return outcomes;
            }
        }
        outcomes
    }

    pub(crate) fn backoff(&self) -> Backoff {
        Backoff {
            base: Duration::from_millis(self.config.base_backoff_ms),
            max: Duration::from_millis(self.config.max_backoff_ms),
        }
    }

    /// After a failed attempt at `what` for `records` records: counts the
    /// retry, and either sleeps the backoff and returns true (try again) or,
    /// past `max_retries`, counts the failure and returns false (give the
    /// messages back).
    pub(crate) async fn retry_later(&self, attempt: &mut u32, what: &str, records: usize) -> bool {
        self.count("retry");
        if *attempt >= self.config.max_retries {
            self.count("failed");
            warn!(records, "{what} still failing after retries; giving the messages back");
            return false;
        }
        tokio::time::sleep(self.backoff().delay(*attempt)).await;
        *attempt += 1;
        true
    }

    /// Logs a failed request; true when it cannot succeed on a retry (the
    /// failure is counted and the messages are given back).
    pub(crate) fn is_fatal<E>(
        &self,
        e: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
        attempt: u32,
        what: &str,
        records: usize,
    ) -> bool
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error,
    {
        if classify(e) == ErrorClass::Fatal {
            self.count("failed");
            warn!(error = %describe(e), records, "{what} failed and cannot be retried; giving the messages back");
            return true;
        }
        warn!(error = %describe(e), attempt, "{what} failed, retrying");
        false
    }

    pub(crate) fn count(&self, outcome: &'static str) {
        self.metrics.sink_requests.get_or_create(&SinkOutcome { sink: SINK, outcome }).inc();
    }

    fn transaction(&self, records: &[PaymentRecord], chunk: &[usize], live: &[usize]) -> Vec<TransactWriteItem> {
        let mut items = Vec::with_capacity(live.len() * 2);
        let mut deltas = Deltas::new();
        for &p in live {
            let r = &records[chunk[p]];
            deltas.entry(r.window.clone()).or_default().add(&r.counters);
            let put = Put::builder()
                .table_name(&self.config.payments_table)
                .set_item(Some(payment_item(r)))
                .condition_expression("attribute_not_exists(payment_id)")
                .build();
            if let Ok(put) = put {
                items.push(TransactWriteItem::builder().put(put).build());
            }
        }
        for (row, counters) in &deltas {
            if let Some(update) = self.aggregate_update(row, counters) {
                items.push(TransactWriteItem::builder().update(update).build());
            }
        }
        items
    }
}

/// A FIFO group's messages must be acknowledged in order: every record that
/// arrived after a failed record of the same group is reported failed too,
/// so it is redelivered after the failed one (a no-op if it was written).
fn hold_back_failed_groups(records: &[PaymentRecord], outcomes: &mut [WriteOutcome]) {
    let mut failed: HashSet<&str> = HashSet::new();
    for (r, o) in records.iter().zip(outcomes.iter_mut()) {
        let Some(group) = r.group.as_deref() else {
            continue;
        };
        if failed.contains(group) {
            *o = WriteOutcome::Failed;
        } else if *o == WriteOutcome::Failed {
            failed.insert(group);
        }
    }
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn num(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn payment_item(r: &PaymentRecord) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("payment_id".to_owned(), s(&r.payment_id)),
        ("order_id".to_owned(), s(&r.order_id)),
        ("customer_id".to_owned(), s(&r.customer_id)),
        ("store".to_owned(), s(&r.store)),
        ("amount_cents".to_owned(), num(r.amount_cents)),
        ("score".to_owned(), num(r.score)),
        ("decision".to_owned(), s(r.decision)),
        ("reasons".to_owned(), AttributeValue::L(r.reasons.iter().map(|x| s(*x)).collect())),
        ("ts".to_owned(), s(&r.ts)),
        ("decided_at".to_owned(), s(&r.decided_at)),
        ("event_id".to_owned(), s(&r.event_id)),
        ("window".to_owned(), s(&r.window.window)),
    ])
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
    use super::*;

    fn rec(id: &str, store: &str, group: Option<&str>) -> PaymentRecord {
        PaymentRecord {
            event_id: format!("e-{id}"),
            payment_id: id.into(),
            order_id: "o".into(),
            customer_id: "c".into(),
            store: store.into(),
            amount_cents: 1,
            score: 0,
            decision: "approve",
            reasons: vec![],
            ts: "2026-11-22T08:15:30Z".into(),
            event_time: time::OffsetDateTime::UNIX_EPOCH,
            decided_at: "2026-11-22T08:15:31Z".into(),
            window: WindowId { store: store.into(), window: "2026-11-22T08:15:00Z".into() },
            counters: Counters { payments: 1, ..Counters::default() },
            group: group.map(Into::into),
        }
    }

    #[test]
    fn after_a_failure_its_group_is_held_back_but_other_groups_are_not() {
        use WriteOutcome::*;
        let records = [
            rec("1", "a", Some("g1")),
            rec("2", "b", Some("g1")),
            rec("3", "a", Some("g2")),
            rec("4", "c", Some("g1")),
            rec("5", "c", None),
        ];
        // 2 failed; 4 (same group, later) was written in another chunk.
        let mut outcomes = vec![Written, Failed, Written, Written, Written];
        hold_back_failed_groups(&records, &mut outcomes);
        assert_eq!(outcomes, vec![Written, Failed, Written, Failed, Written]);
    }

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
    fn chunks_fit_the_transaction_limit_counting_rows() {
        let client = Client::from_conf(aws_sdk_dynamodb::Config::builder().behavior_version_latest().build());
        let config = DynamoDbSinkConfig { max_transaction_items: 5, ..DynamoDbSinkConfig::default() };
        let sink = DynamoDbSink::new(client, config, Arc::new(Metrics::new()));
        let records: Vec<_> =
            ["a", "a", "a", "b", "b", "c"].iter().enumerate().map(|(i, s)| rec(&i.to_string(), s, None)).collect();
        let order: Vec<usize> = (0..records.len()).collect();
        let chunks = sink.chunks(&records, &order);
        // [a a a] + row a = 4 items, and b would need 2 more; [b b c] + rows b, c = 5.
        assert_eq!(chunks, vec![vec![0, 1, 2], vec![3, 4, 5]]);
        for c in &chunks {
            let rows: HashSet<_> = c.iter().map(|&i| &records[i].window).collect();
            assert!(c.len() + rows.len() <= 5);
        }
    }
}
