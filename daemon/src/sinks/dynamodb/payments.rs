//! `cafe-payments` items and the payment counters of `cafe-aggregates`.
//!
//! Protocol: payments are written in chunks, one TransactWriteItems per
//! chunk holding a conditional put per payment (`attribute_not_exists`) and
//! one `ADD` per touched (store, window) row with the sum of that chunk's
//! counters. If a put's condition fails, that payment was written before
//! (the transaction wrote it together with its counters), so it is dropped
//! and the transaction retried without it: a replay changes nothing.
//! Payments are packed into chunks by aggregate row, so a transaction
//! carries as many payments and as few rows as it can: the order of writes
//! does not matter (each is keyed, the ADDs commute, and scoring already
//! happened in arrival order). The order of acknowledgements is the
//! source's business, from the outcomes this returns.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use pipeline::decided::DecidedPayment;
use pipeline::window::{Deltas, WindowId};

use super::{Attempt, Copies, DynamoDbSink, num, s};
use crate::internal_events::{InternalEvent, Sink, SinkWriteFinished};
use crate::sinks::WriteOutcome;

impl DynamoDbSink {
    /// Writes `records`, returning an outcome for each, in order.
    pub async fn write_payments(&self, records: &[DecidedPayment]) -> Vec<WriteOutcome> {
        if records.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let mut outcomes = vec![WriteOutcome::Failed; records.len()];
        let copies = Copies::of(records, |r| r.payment_id.as_str());
        let mut todo = copies.firsts.clone();
        // Stable: arrival order is kept within a row.
        todo.sort_by(|&a, &b| records[a].window.cmp(&records[b].window));
        for chunk in self.chunks(records, &todo) {
            let result = self.write_chunk(records, &chunk).await;
            for (&i, o) in chunk.iter().zip(result) {
                outcomes[i] = o;
            }
        }
        copies.settle(&mut outcomes);
        SinkWriteFinished { sink: Sink::DynamoDb, elapsed: started.elapsed() }.emit(&self.metrics);
        outcomes
    }

    /// Splits `indices` (in the order given) into chunks whose puts plus
    /// distinct aggregate rows fit one transaction.
    fn chunks(&self, records: &[DecidedPayment], indices: &[usize]) -> Vec<Vec<usize>> {
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

    async fn write_chunk(&self, records: &[DecidedPayment], chunk: &[usize]) -> Vec<WriteOutcome> {
        let mut outcomes = vec![WriteOutcome::Failed; chunk.len()];
        // Positions in `chunk` still to write.
        let mut live: Vec<usize> = (0..chunk.len()).collect();
        let mut attempt = 0u32;
        while !live.is_empty() {
            let items = self.transaction(records, chunk, &live);
            match self.transact(items, "Payment write", live.len(), &mut attempt).await {
                Attempt::Committed => {
                    for &p in &live {
                        outcomes[p] = WriteOutcome::Written;
                    }
                    return outcomes;
                }
                Attempt::Conditions(failed) => {
                    // Only the puts are conditional, first and in `live`
                    // order: each failed one was written before.
                    let dup: Vec<usize> = failed.iter().filter_map(|&k| live.get(k).copied()).collect();
                    for &p in &dup {
                        outcomes[p] = WriteOutcome::Duplicate;
                    }
                    live.retain(|p| !dup.contains(p));
                }
                Attempt::Again => {}
                Attempt::GiveUp => return outcomes,
            }
        }
        outcomes
    }

    fn transaction(&self, records: &[DecidedPayment], chunk: &[usize], live: &[usize]) -> Vec<TransactWriteItem> {
        let mut items = Vec::with_capacity(live.len() * 2);
        let mut deltas = Deltas::new();
        for &p in live {
            let r = &records[chunk[p]];
            deltas.entry(r.window.clone()).or_default().add(&r.counters);
            if let Ok(put) = self.payment_put(r) {
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

impl DynamoDbSink {
    /// The put of one payment, conditional on its not being there: a
    /// redelivery's fails, and with it the transaction it is in.
    pub(crate) fn payment_put(&self, r: &DecidedPayment) -> Result<Put, aws_sdk_dynamodb::error::BuildError> {
        Put::builder()
            .table_name(&self.config.payments_table)
            .set_item(Some(payment_item(r)))
            .condition_expression("attribute_not_exists(payment_id)")
            .build()
    }
}

fn payment_item(r: &DecidedPayment) -> HashMap<String, AttributeValue> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aws_sdk_dynamodb::Client;
    use pipeline::window::Counters;

    use super::*;
    use crate::config::DynamoDbSinkConfig;
    use crate::metrics::Metrics;

    fn rec(id: &str, store: &str) -> DecidedPayment {
        DecidedPayment {
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
        }
    }

    #[test]
    fn chunks_fit_the_transaction_limit_counting_rows() {
        let client = Client::from_conf(aws_sdk_dynamodb::Config::builder().behavior_version_latest().build());
        let config = DynamoDbSinkConfig { max_transaction_items: 5, ..DynamoDbSinkConfig::default() };
        let sink = DynamoDbSink::new(client, config, Arc::new(Metrics::new()));
        let records: Vec<_> = ["a", "a", "a", "b", "b", "c"].iter().enumerate().map(|(i, s)| rec(&i.to_string(), s)).collect();
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
