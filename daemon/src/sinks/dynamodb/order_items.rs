//! `cafe-orders` items and the order counters of `cafe-aggregates`.
//!
//! Owns: the order item layout (the contract's attributes, plus
//! `applied_at` and, for events read from a shard, `pos` (`stream:shardId/sequence`)
//! in each history entry, and `customer_id`, `channel`), reading
//! orders back, and the write protocol. Must not: decide transitions
//! (`pipeline::orders` does).
//!
//! Protocol: a write carries an order's new state and the counters of the
//! events it applies, in one TransactWriteItems with other orders' writes.
//! A new order is a put conditional on the item not existing; a change is
//! an update conditional on the history length read (`size(history)`), the
//! order's version. If another writer moved the order first (a replay after
//! a crash, or an instance that lost the lease), the condition fails, that
//! order is reported `Conflict` for the caller to re-read and re-apply, and
//! the others are written without it: the counters are added exactly when
//! the order's events are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use futures::StreamExt;
use futures::future::BoxFuture;
use pipeline::decided::OrderChange;
use pipeline::orders::{HistoryEntry, Names, OrderState, OrderStatus, ShardPos};
use pipeline::window::{Counters, WindowId};
use tracing::warn;

use super::{Attempt, DynamoDbSink, num, s};
use crate::aws::{AwsError, ErrorClass, classify};
use crate::internal_events::{InternalEvent, Sink, SinkGaveUp, SinkWriteFinished};
use crate::route::apply_orders::OrderStore;

/// The outcome of one order's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderWriteOutcome {
    /// Durable.
    Written,
    /// The order moved since it was read: re-read and re-apply.
    Conflict,
    /// Not written (retries exhausted or a fatal error).
    Failed,
}

fn entry_value(h: &HistoryEntry, applied_at: &str) -> AttributeValue {
    // Sized for every attribute at once: no map grows as it is filled.
    let mut m = HashMap::with_capacity(5);
    m.insert("status".to_owned(), s(h.status.name()));
    m.insert("ts".to_owned(), s(&*h.ts));
    m.insert("event_id".to_owned(), s(&*h.event_id));
    m.insert("applied_at".to_owned(), s(applied_at));
    if let Some(pos) = &h.pos {
        m.insert("pos".to_owned(), AttributeValue::S(pos.to_text()));
    }
    AttributeValue::M(m)
}

/// Parses a `cafe-orders` item; `None` if it is not one this daemon wrote.
pub fn parse_order(item: &HashMap<String, AttributeValue>) -> Option<OrderState> {
    parse_order_with(item, &mut Names::default())
}

/// [`parse_order`], the entries' positions sharing their stream and shard
/// names through `names` (one for a whole read: a name is looked up among
/// the interned ones once a read, not once an order).
pub fn parse_order_with(item: &HashMap<String, AttributeValue>, names: &mut Names) -> Option<OrderState> {
    let str_of = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let num_of = |k: &str| item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<u64>().ok());
    let history = item
        .get("history")?
        .as_l()
        .ok()?
        .iter()
        .map(|e| {
            let m = e.as_m().ok()?;
            let text = |k: &str| m.get(k).and_then(|v| v.as_s().ok());
            let get = |k: &str| text(k).map(|v| Arc::<str>::from(v.as_str()));
            Some(HistoryEntry {
                status: OrderStatus::parse(text("status")?)?,
                ts: get("ts")?,
                event_id: get("event_id")?,
                // Absent on entries of queued events and of earlier releases
                // (which stored no stream: not compared either).
                pos: text("pos").and_then(|p| ShardPos::parse_with(p, None, names)),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(OrderState {
        store: str_of("store")?,
        status: OrderStatus::parse(&str_of("status")?)?,
        total_cents: num_of("total_cents")?,
        item_count: num_of("item_count")?,
        history,
    })
}

impl DynamoDbSink {
    /// Reads orders by id (strongly consistent); absent ids are absent
    /// from the result. Fails only when the reads keep failing.
    pub async fn read_orders(&self, ids: &[String]) -> Result<HashMap<String, OrderState>, AwsError> {
        let table = &self.config.orders_table;
        let what = "Reading orders";
        let mut out = HashMap::new();
        let mut names = Names::default();
        for chunk in ids.chunks(100) {
            let mut keys: Vec<HashMap<String, AttributeValue>> =
                chunk.iter().map(|id| HashMap::from([("order_id".to_owned(), s(id))])).collect();
            let mut attempt = 0;
            while !keys.is_empty() {
                let ka = KeysAndAttributes::builder()
                    .set_keys(Some(keys.clone()))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| AwsError::request("reading orders", e))?;
                let call = self.client.batch_get_item().request_items(table, ka).send();
                let result = tokio::select! {
                    r = call => r,
                    () = self.stop_retrying.cancelled() => {
                        let error = "shutting down";
                        SinkGaveUp { sink: Sink::DynamoDb, what, records: ids.len(), error: Some(error) }.emit(&self.metrics);
                        return Err(AwsError { what: "reading orders".into(), class: ErrorClass::Fatal, detail: error.into() });
                    }
                };
                let asked = keys.len();
                let error = match result {
                    Ok(resp) => {
                        for item in resp.responses.as_ref().and_then(|r| r.get(table)).into_iter().flatten() {
                            let id = item.get("order_id").and_then(|v| v.as_s().ok());
                            match (id, parse_order_with(item, &mut names)) {
                                (Some(id), Some(state)) => {
                                    out.insert(id.clone(), state);
                                }
                                (id, _) => {
                                    warn!(order_id = ?id, "An item of the orders table could not be read as an order; treating it as absent")
                                }
                            }
                        }
                        keys = resp
                            .unprocessed_keys
                            .as_ref()
                            .and_then(|u| u.get(table))
                            .map(|k| k.keys().to_vec())
                            .unwrap_or_default();
                        if keys.is_empty() {
                            break;
                        }
                        // Unprocessed keys (throttling): asked again after
                        // the backoff, within the budget unless some were
                        // processed.
                        if !self.again_for_unprocessed(keys.len() < asked, &mut attempt, what, ids.len()).await {
                            let detail = "unprocessed keys".into();
                            return Err(AwsError { what: "reading orders".into(), class: ErrorClass::Throttled, detail });
                        }
                        continue;
                    }
                    Err(e) => {
                        let error = AwsError::sdk("reading orders", &e);
                        if classify(&e) == ErrorClass::Fatal {
                            SinkGaveUp { sink: Sink::DynamoDb, what, records: ids.len(), error: Some(&error.to_string()) }
                                .emit(&self.metrics);
                            return Err(error);
                        }
                        error
                    }
                };
                if !self.retry_later(&mut attempt, what, ids.len(), &error.to_string()).await {
                    return Err(error);
                }
            }
        }
        Ok(out)
    }

    /// Writes `writes` (distinct orders), up to `concurrency` transactions
    /// at once; an outcome per write, in order.
    pub async fn write_orders(&self, writes: &[OrderChange], applied_at: &str, concurrency: usize) -> Vec<OrderWriteOutcome> {
        let started = Instant::now();
        let chunks = pack(writes, self.config.max_transaction_items);
        let mut outcomes = vec![OrderWriteOutcome::Failed; writes.len()];
        let results: Vec<(Vec<usize>, Vec<OrderWriteOutcome>)> = futures::stream::iter(chunks)
            .map(|chunk| async move {
                let r = self.write_order_chunk(writes, &chunk, applied_at).await;
                (chunk, r)
            })
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        for (chunk, result) in results {
            for (i, o) in chunk.into_iter().zip(result) {
                outcomes[i] = o;
            }
        }
        SinkWriteFinished { sink: Sink::DynamoDb, elapsed: started.elapsed() }.emit(&self.metrics);
        outcomes
    }

    async fn write_order_chunk(&self, writes: &[OrderChange], chunk: &[usize], applied_at: &str) -> Vec<OrderWriteOutcome> {
        let mut outcomes = vec![OrderWriteOutcome::Failed; chunk.len()];
        let mut live: Vec<usize> = (0..chunk.len()).collect();
        let mut attempt = 0u32;
        while !live.is_empty() {
            let items = self.order_transaction(writes, chunk, &live, applied_at);
            match self.transact(items, "Order write", live.len(), &mut attempt).await {
                Attempt::Committed => {
                    for &p in &live {
                        outcomes[p] = OrderWriteOutcome::Written;
                    }
                    return outcomes;
                }
                Attempt::Conditions(failed) => {
                    // One conditional item per order, first and in `live`
                    // order: each failed one moved since it was read.
                    let moved: Vec<usize> = failed.iter().filter_map(|&k| live.get(k).copied()).collect();
                    for &p in &moved {
                        outcomes[p] = OrderWriteOutcome::Conflict;
                    }
                    live.retain(|p| !moved.contains(p));
                }
                Attempt::Again => {}
                Attempt::GiveUp => return outcomes,
            }
        }
        outcomes
    }

    fn order_transaction(
        &self,
        writes: &[OrderChange],
        chunk: &[usize],
        live: &[usize],
        applied_at: &str,
    ) -> Vec<TransactWriteItem> {
        let table = &self.config.orders_table;
        let mut items = Vec::with_capacity(live.len() * 2);
        let mut deltas: BTreeMap<&WindowId, Counters> = BTreeMap::new();
        for &p in live {
            let w = &writes[chunk[p]];
            for (row, c) in &w.rows {
                deltas.entry(row).or_default().add(c);
            }
            let a = &w.after;
            let new_from = w.before.unwrap_or(0);
            let entries: Vec<AttributeValue> = a.history[new_from..].iter().map(|h| entry_value(h, applied_at)).collect();
            let item = match w.before {
                None => {
                    let mut item = HashMap::from([
                        ("order_id".to_owned(), s(&w.order_id)),
                        ("store".to_owned(), s(&a.store)),
                        ("status".to_owned(), s(a.status.name())),
                        ("total_cents".to_owned(), num(a.total_cents)),
                        ("item_count".to_owned(), num(a.item_count)),
                        ("history".to_owned(), AttributeValue::L(entries)),
                        ("updated_at".to_owned(), s(applied_at)),
                    ]);
                    if let Some((customer, channel)) = &w.placed_by {
                        item.insert("customer_id".to_owned(), s(customer));
                        item.insert("channel".to_owned(), s(channel));
                    }
                    Put::builder()
                        .table_name(table)
                        .set_item(Some(item))
                        .condition_expression("attribute_not_exists(order_id)")
                        .build()
                        .ok()
                        .map(|p| TransactWriteItem::builder().put(p).build())
                }
                Some(before) => Update::builder()
                    .table_name(table)
                    .key("order_id", s(&w.order_id))
                    .update_expression("SET #st = :st, updated_at = :u, history = list_append(history, :h)")
                    .condition_expression("size(history) = :n")
                    .expression_attribute_names("#st", "status")
                    // One map of its final size (the builder's per-value
                    // method grows it value by value).
                    .set_expression_attribute_values(Some(HashMap::from([
                        (":st".to_owned(), s(a.status.name())),
                        (":u".to_owned(), s(applied_at)),
                        (":h".to_owned(), AttributeValue::L(entries)),
                        (":n".to_owned(), num(before)),
                    ])))
                    .build()
                    .ok()
                    .map(|u| TransactWriteItem::builder().update(u).build()),
            };
            if let Some(item) = item {
                items.push(item);
            }
        }
        for (row, counters) in deltas {
            if let Some(update) = self.aggregate_update(row, &counters) {
                items.push(TransactWriteItem::builder().update(update).build());
            }
        }
        items
    }
}

/// The daemon's order store: the stage's reads and writes, through the
/// inherent methods above.
impl OrderStore for DynamoDbSink {
    fn read_orders<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<HashMap<String, OrderState>, AwsError>> {
        Box::pin(DynamoDbSink::read_orders(self, ids))
    }

    fn write_orders<'a>(
        &'a self,
        writes: &'a [OrderChange],
        applied_at: &'a str,
        concurrency: usize,
    ) -> BoxFuture<'a, Vec<OrderWriteOutcome>> {
        Box::pin(DynamoDbSink::write_orders(self, writes, applied_at, concurrency))
    }
}

/// Packs writes into transactions of at most `max` items: one per order
/// plus one per distinct aggregate row.
fn pack(writes: &[OrderChange], max: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..writes.len()).collect();
    // Orders of the same rows together: fewer row updates per transaction.
    order.sort_by(|&a, &b| writes[a].rows.first().map(|(r, _)| r).cmp(&writes[b].rows.first().map(|(r, _)| r)));
    let mut out = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut rows: HashSet<&WindowId> = HashSet::new();
    for i in order {
        let new_rows = writes[i].rows.iter().filter(|(r, _)| !rows.contains(r)).count();
        if !cur.is_empty() && cur.len() + rows.len() + 1 + new_rows > max {
            out.push(std::mem::take(&mut cur));
            rows.clear();
        }
        rows.extend(writes[i].rows.iter().map(|(r, _)| r));
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::super::{DynamoDbSinkConfig, sink_requests, unprocessed_reads_sink};
    use super::*;

    /// Keys the table leaves unprocessed (throttling) are asked for again
    /// after the backoff, each time counted, until the budget: then the
    /// read fails (the caller gives the events back). Before, they were
    /// asked for again at once, uncounted, for as long as the table left
    /// any. And a stop ends the retries at once.
    #[tokio::test]
    async fn keys_left_unprocessed_are_asked_again_within_the_budget_and_until_a_stop() {
        let ids = vec!["o1".to_owned(), "o2".to_owned()];
        let quick = DynamoDbSinkConfig { max_retries: 2, base_backoff_ms: 1, max_backoff_ms: 2, ..Default::default() };
        let (sink, calls) = unprocessed_reads_sink(quick, 0);
        let read =
            tokio::time::timeout(Duration::from_secs(10), sink.read_orders(&ids)).await.expect("gives up, not asks for ever");
        assert!(matches!(read, Err(AwsError { class: ErrorClass::Throttled, .. })), "{read:?}");
        assert_eq!(calls.load(Relaxed), 3, "the first call and two retries");
        assert_eq!((sink_requests(&sink.metrics, "retry"), sink_requests(&sink.metrics, "failed")), (2, 1));

        let slow = DynamoDbSinkConfig { max_retries: 100, base_backoff_ms: 60_000, max_backoff_ms: 60_000, ..Default::default() };
        let (sink, calls) = unprocessed_reads_sink(slow, 0);
        let stop = CancellationToken::new();
        let sink = sink.with_stop_retrying(stop.clone());
        let read = tokio::spawn({
            let ids = ids.clone();
            async move { sink.read_orders(&ids).await }
        });
        while calls.load(Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        let read = tokio::time::timeout(Duration::from_secs(5), read).await.expect("a stop ends the backoff").expect("no panic");
        assert!(read.is_err());
        assert_eq!(calls.load(Relaxed), 1);

        // A table that processes one key a call: each call makes progress,
        // so the read ends, with no budget at all, and only the keys left
        // are asked for again.
        let none = DynamoDbSinkConfig { max_retries: 0, base_backoff_ms: 1, max_backoff_ms: 2, ..Default::default() };
        let (sink, calls) = unprocessed_reads_sink(none, 1);
        let three = ["o1".to_owned(), "o2".to_owned(), "o3".to_owned()];
        let read = tokio::time::timeout(Duration::from_secs(10), sink.read_orders(&three)).await.expect("ends");
        assert_eq!(read.map(|found| found.len()).ok(), Some(0), "read, none of them there");
        assert_eq!(calls.load(Relaxed), 3);
        assert_eq!((sink_requests(&sink.metrics, "retry"), sink_requests(&sink.metrics, "failed")), (2, 0));
    }

    fn write(id: &str, rows: &[&str]) -> OrderChange {
        OrderChange {
            order_id: id.into(),
            before: None,
            after: OrderState { store: "s".into(), status: OrderStatus::Placed, total_cents: 1, item_count: 1, history: vec![] },
            placed_by: None,
            rows: rows
                .iter()
                .map(|r| (WindowId { store: (*r).into(), window: "w".into() }, Counters { orders: 1, ..Counters::default() }))
                .collect(),
        }
    }

    /// A sink whose DynamoDB (in memory) answers every request after
    /// `delay` with `status` and `body`.
    fn answering_sink(status: u16, body: &'static str, delay: Duration) -> DynamoDbSink {
        let config = DynamoDbSinkConfig { max_retries: 0, ..Default::default() };
        let sdk = crate::sinks::in_process_sdk_config(crate::sinks::Answering { status, body, delay });
        DynamoDbSink::new(aws_sdk_dynamodb::Client::new(&sdk), config, Arc::new(crate::metrics::Metrics::new()))
    }

    /// `cafe_sink_last_write_timestamp_seconds{sink="dynamodb"}` of `sink`.
    fn last_write(sink: &DynamoDbSink) -> Option<f64> {
        let series = r#"cafe_sink_last_write_timestamp_seconds{sink="dynamodb"} "#;
        sink.metrics.encode().lines().find_map(|l| l.strip_prefix(series).map(|v| v.parse().expect("a number")))
    }

    /// A write is stamped as its answer comes back, not as it is sent (the
    /// stamp says when it was durable); a transaction a condition refused
    /// wrote nothing and is not stamped.
    #[tokio::test]
    async fn a_write_is_stamped_once_its_answer_is_back_and_a_refused_one_not_at_all() {
        let unix = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
        let delay = Duration::from_millis(300);
        let sink = answering_sink(200, "{}", delay);
        let sent = unix();
        let outcomes = sink.write_orders(&[write("o1", &["a"])], "2026-12-07T15:00:00Z", 1).await;
        let back = unix();
        assert_eq!(outcomes, [OrderWriteOutcome::Written]);
        let at = last_write(&sink).expect("stamped");
        assert!(at >= sent + delay.as_secs_f64() && at <= back, "sent {sent}, stamped {at}, back {back}");

        let refused = r#"{"__type":"com.amazonaws.dynamodb.v20120810#TransactionCanceledException","Message":"Transaction cancelled, please refer cancellation reasons for specific reasons [ConditionalCheckFailed]","CancellationReasons":[{"Code":"ConditionalCheckFailed","Message":"The conditional request failed"}]}"#;
        let sink = answering_sink(400, refused, Duration::ZERO);
        let outcomes = sink.write_orders(&[write("o1", &["a"])], "2026-12-07T15:00:00Z", 1).await;
        assert_eq!(outcomes, [OrderWriteOutcome::Conflict]);
        assert_eq!(last_write(&sink), None);
        assert_eq!(sink_requests(&sink.metrics, "condition_failed"), 1);
    }

    #[test]
    fn packing_counts_orders_and_distinct_rows() {
        let writes = vec![write("1", &["a"]), write("2", &["a"]), write("3", &["a", "b"]), write("4", &["c"])];
        let chunks = pack(&writes, 4);
        for c in &chunks {
            let rows: HashSet<_> = c.iter().flat_map(|&i| writes[i].rows.iter().map(|(r, _)| r)).collect();
            assert!(c.len() + rows.len() <= 4, "{c:?}");
        }
        let mut all: Vec<usize> = chunks.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);
    }

    #[test]
    fn an_order_item_round_trips() {
        let h = HistoryEntry {
            status: OrderStatus::Placed,
            ts: "2026-11-22T08:15:30Z".into(),
            event_id: "e1".into(),
            pos: ShardPos::parse(
                "shardId-000000000001/49590338271490256608559692538361571095921575989136588898/2",
                Some("orders"),
            ),
        };
        assert!(h.pos.is_some());
        let item = HashMap::from([
            ("order_id".to_owned(), s("o1")),
            ("store".to_owned(), s("s1")),
            ("status".to_owned(), s("placed")),
            ("total_cents".to_owned(), num(750)),
            ("item_count".to_owned(), num(3)),
            ("history".to_owned(), AttributeValue::L(vec![entry_value(&h, "2026-11-22T08:15:31Z")])),
        ]);
        let st = parse_order(&item).expect("parses");
        assert_eq!(st.history, vec![h]);
        assert_eq!((st.status, st.total_cents, st.item_count), (OrderStatus::Placed, 750, 3));
    }
}
