//! `cafe-loadgen payments-throughput`: the payments path's floor on this
//! stack, a bare client that makes the daemon's SQS and DynamoDB calls for
//! a burst of payments and does nothing else.
//!
//! Owns: the measurement. It creates a scratch FIFO queue and a scratch
//! table, sends the burst (the cold-start scenario's payments: same bodies,
//! same FIFO groups), then (or, with `--while-sending`, meanwhile) drains
//! it as the daemon's SQS input does (`bare::drain`: `receivers`
//! long-polling consumers, the daemon's batches of up to 250 messages, up
//! to 8 written at once, each batch's messages deleted after its writes)
//! and writes each batch as the daemon's payments path does: in
//! transactions of at most 100 items, one after the other, each a
//! conditional put per payment (the daemon's item) and one `ADD` per
//! aggregate row (here a store: a burst's payments share one window). With
//! the fraud history in the process (`--fraud-history process`) a batch's
//! payments are packed by row (`sinks/dynamodb/payments.rs`). With it in
//! DynamoDB (`--fraud-history dynamodb`, the daemon's default) they are
//! packed in arrival order with their history keys (card, customer,
//! device), as `route/apply_payments.rs` packs them: each transaction also
//! puts each of its payments' keys once (an item of the daemon's shape
//! with one entry, the transaction's last payment of that key's, under a
//! condition as the daemon's, which the table must check against the item
//! it replaces; the daemon's holds the version it read, this one always
//! holds, so the bare client never retries); before its transactions a
//! batch reads the keys no batch has read before, strongly consistent, all
//! at once by 100, as the daemon reads a key once and then keeps it.
//! Timed as the daemon's drain is, from its first batch's stamp to its
//! last's, each stamped where the daemon stamps a batch's `decided_at`: as
//! its write starts with the history shared, as it closes with the history
//! in the process (the daemon scores it then, in the decide stage, before
//! it waits for a write). Both scratch resources are deleted afterwards. Must not: decode, score
//! or check anything (the daemon's share of the work is what the ratio
//! measures): it knows each message's payment from the bytes it sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use aws_sdk_sqs::types::{Message, SendMessageBatchRequestEntry};
use futures::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use crate::Targets;
use crate::bare::{Deleted, MAX_TRANSACTION_ITEMS, body_key};
use crate::payload::Payment;
use crate::scenario::Load;

/// `payments-throughput` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PaymentsThroughputArgs {
    /// Payments in the burst.
    #[arg(long, default_value_t = 10_000)]
    pub payments: u64,
    /// Concurrent long-polling consumers (the daemon's default is 4).
    #[arg(long, default_value_t = 4)]
    pub receivers: usize,
    /// Drain the burst while it is being sent, as the cold-start scenario's
    /// daemon does (the sends then share the stack with the drain), rather
    /// than after.
    #[arg(long)]
    pub while_sending: bool,
    /// Where the daemon measured against keeps the fraud rules' history
    /// (its `[fraud] state`): `dynamodb` adds the history's reads and
    /// writes to the bare client's, `process` leaves them out.
    #[arg(long, value_enum, default_value_t = FraudHistory::Dynamodb)]
    pub fraud_history: FraudHistory,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub targets: Targets,
}

/// Where the fraud rules' history lives, as the daemon's `[fraud] state`
/// says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FraudHistory {
    /// A DynamoDB table (the daemon's default).
    Dynamodb,
    /// The daemon's memory: no reads or writes of it.
    Process,
}

impl FraudHistory {
    /// What the bare client did for it, for a report.
    pub fn said(self) -> &'static str {
        match self {
            FraudHistory::Dynamodb => " (with the fraud history's reads and writes)",
            FraudHistory::Process => "",
        }
    }
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PaymentsThroughput {
    /// Payments in the burst.
    pub payments: u64,
    /// Whether the bare client made the history's reads and writes.
    pub fraud_history: FraudHistory,
    /// Seconds from its first batch's stamp to its last's: the span of the
    /// daemon's drain, from its first `decided_at` to its last (the
    /// module's doc says where each is stamped).
    pub bare_secs: f64,
    /// Payments per second the bare client drained over `bare_secs`.
    pub bare_payments_per_sec: f64,
    /// Seconds from the first message received to the last deleted
    /// (beside `bare_secs`, not the daemon's span).
    pub to_last_delete_secs: f64,
    /// Batches written.
    pub batches: usize,
    /// The most batches written at once.
    pub most_at_once: usize,
    /// TransactWriteItems calls made.
    pub transactions: u64,
    /// BatchGetItem calls made (of the history).
    pub reads: u64,
}

/// Runs the measurement on scratch resources named after the targets'.
pub async fn run(args: &PaymentsThroughputArgs, seed: u64) -> anyhow::Result<PaymentsThroughput> {
    let (sqs, ddb) = crate::bare::clients().await;
    let run_id = crate::coldstart::new_run_id();
    let base = args.targets.payments_queue.trim_end_matches(".fifo");
    let visibility = crate::bare::visibility_for(args.timeout_secs);
    let queue = crate::bare::scratch_queue(&sqs, &format!("{base}-floor-{run_id}.fifo"), visibility).await?;
    let table = format!("{}-floor-{run_id}", args.targets.payments_table);
    let result = async {
        crate::throughput::create_scratch_table(&ddb, &table).await?;
        measure(&sqs, &ddb, &queue, &table, args, seed, &run_id).await
    }
    .await;
    crate::bare::remove_scratch(&sqs, &ddb, &queue, &table).await;
    result
}

/// The burst's payments: cold-start's, as many as asked.
fn burst(seed: u64, run_id: &str, payments: u64) -> anyhow::Result<Vec<Payment>> {
    let load = Load {
        payments,
        users: 1,
        stores: 20,
        customers: 4000,
        shared_card_ratio: 0.02,
        geo_mismatch_ratio: 0.05,
        big_amount_ratio: 0.02,
    };
    let ts = OffsetDateTime::now_utc().format(&Rfc3339)?;
    Ok((0..payments).map(|i| crate::payload::payment(seed, run_id, i, &load, &ts)).collect())
}

async fn measure(
    sqs: &aws_sdk_sqs::Client,
    ddb: &aws_sdk_dynamodb::Client,
    queue: &str,
    table: &str,
    args: &PaymentsThroughputArgs,
    seed: u64,
    run_id: &str,
) -> anyhow::Result<PaymentsThroughput> {
    let payments = burst(seed, run_id, args.payments)?;
    info!(payments = payments.len(), while_sending = args.while_sending, "Sending the burst to the scratch queue");
    let send = futures::stream::iter(payments.chunks(10))
        .map(|chunk| async move {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&p.body)
                        .message_group_id(&p.customer_id)
                        .message_deduplication_id(&p.dedup_id)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = sqs.send_message_batch().queue_url(queue).set_entries(Some(entries)).send().await?;
            anyhow::ensure!(out.failed.is_empty(), "{} sends refused", out.failed.len());
            Ok(())
        })
        .buffer_unordered(16)
        .collect::<Vec<anyhow::Result<()>>>();
    let send = async move { send.await.into_iter().collect::<anyhow::Result<Vec<()>>>().map(drop) };

    let want = payments.len();
    let writer = Arc::new(Writer {
        ddb: ddb.clone(),
        table: table.to_owned(),
        history: args.fraud_history,
        sent: payments.iter().map(|p| (body_key(&p.body), p.clone())).collect(),
        read_keys: Mutex::new(HashSet::new()),
        transactions: AtomicU64::new(0),
        reads: AtomicU64::new(0),
    });
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let deleted = Arc::new(Deleted::new(want));
    let write = {
        let writer = Arc::clone(&writer);
        move |batch: Arc<Vec<Message>>| {
            let writer = Arc::clone(&writer);
            async move { writer.write_batch(&batch).await }
        }
    };
    // Stamped as the daemon stamps its decisions: with the history shared,
    // as a batch's write starts; in the process, as it is decided, before
    // it waits for a write.
    let stamp = match args.fraud_history {
        FraudHistory::Dynamodb => crate::bare::Stamp::AtWrite,
        FraudHistory::Process => crate::bare::Stamp::AtClose,
    };
    let drain = crate::bare::drain(sqs, queue, args.receivers, &deleted, (deadline, stamp), write);
    let drained = if args.while_sending {
        info!(receivers = args.receivers, "Draining it with a bare consumer as it is sent");
        let send = async {
            let sent = send.await;
            if sent.is_err() {
                deleted.give_up();
            }
            sent
        };
        let (sent, drained) = tokio::join!(send, drain);
        sent.context("sending the burst")?;
        drained?
    } else {
        send.await.context("sending the burst")?;
        info!(receivers = args.receivers, "Draining it with a bare consumer");
        drain.await?
    };
    // The daemon's clock: its first decision to its last; a drain of one
    // batch has none, and counts a millisecond.
    let bare_secs = (drained.last_stamp - drained.first_stamp).as_secs_f64().max(0.001);
    Ok(PaymentsThroughput {
        payments: want as u64,
        fraud_history: args.fraud_history,
        bare_secs,
        bare_payments_per_sec: want as f64 / bare_secs,
        to_last_delete_secs: (drained.last_delete - drained.first_received).as_secs_f64(),
        batches: drained.batches,
        most_at_once: drained.most_at_once,
        transactions: writer.transactions.load(Ordering::SeqCst),
        reads: writer.reads.load(Ordering::SeqCst),
    })
}

/// Writes the batches: what it sent, by the body's key, and the history's
/// keys read so far.
#[derive(Debug)]
struct Writer {
    ddb: aws_sdk_dynamodb::Client,
    table: String,
    history: FraudHistory,
    sent: HashMap<u64, Payment>,
    read_keys: Mutex<HashSet<String>>,
    transactions: AtomicU64,
    reads: AtomicU64,
}

impl Writer {
    /// One batch: the history's unread keys read, then its transactions
    /// one after the other, as the daemon writes a batch.
    async fn write_batch(&self, batch: &[Message]) -> anyhow::Result<()> {
        let payments: Vec<&Payment> = batch
            .iter()
            .map(|m| self.sent.get(&body_key(m.body().unwrap_or_default())).context("a message the bare client did not send"))
            .collect::<anyhow::Result<_>>()?;
        let transactions = match self.history {
            FraudHistory::Process => by_row(&payments),
            FraudHistory::Dynamodb => {
                let keys: Vec<String> = payments.iter().flat_map(|p| history_keys(p)).collect();
                self.read_history(&keys).await?;
                with_history(&payments)
            }
        };
        let decided_at = OffsetDateTime::now_utc().format(&Rfc3339)?;
        for members in transactions {
            let items = transaction(&self.table, &members, self.history, &decided_at)?;
            self.ddb.transact_write_items().set_transact_items(Some(items)).send().await.context("write")?;
            self.transactions.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Reads the history items of `keys` that no batch has read before
    /// (strongly consistent, by 100 all at once, unprocessed keys asked
    /// again), as the daemon reads a key once and then keeps its state.
    async fn read_history(&self, keys: &[String]) -> anyhow::Result<()> {
        let unread: Vec<&String> = {
            let mut read = self.read_keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            keys.iter().filter(|k| read.insert((*k).clone())).collect()
        };
        let reads = unread.chunks(100).map(|chunk| async move {
            let mut ask = KeysAndAttributes::builder().consistent_read(true);
            for key in chunk {
                ask = ask.keys(HashMap::from([("k".to_owned(), AttributeValue::S((*key).clone()))]));
            }
            let calls = crate::bare::batch_get(&self.ddb, &self.table, ask.build()?, "reading the history").await?;
            self.reads.fetch_add(calls, Ordering::SeqCst);
            Ok::<(), anyhow::Error>(())
        });
        futures::future::try_join_all(reads).await?;
        Ok(())
    }
}

/// A batch's payments as the daemon's sink packs them with the history in
/// the process (`sinks/dynamodb/payments.rs`): ordered by row (stable), in
/// transactions of their puts and one `ADD` per distinct row, at most
/// [`MAX_TRANSACTION_ITEMS`].
fn by_row<'a>(payments: &[&'a Payment]) -> Vec<Vec<&'a Payment>> {
    let mut ordered = payments.to_vec();
    ordered.sort_by(|a, b| a.store.cmp(&b.store));
    let mut out = Vec::new();
    let mut cur: Vec<&Payment> = Vec::new();
    let mut rows: HashSet<&str> = HashSet::new();
    for p in ordered {
        let items = cur.len() + rows.len() + 1 + usize::from(!rows.contains(p.store.as_str()));
        if !cur.is_empty() && items > MAX_TRANSACTION_ITEMS {
            out.push(std::mem::take(&mut cur));
            rows.clear();
        }
        rows.insert(&p.store);
        cur.push(p);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A batch's payments as the daemon packs them with the history in
/// DynamoDB (`route/apply_payments.rs`'s `pack`): in arrival order, in
/// transactions of their puts, their distinct history keys and their
/// distinct rows, at most [`MAX_TRANSACTION_ITEMS`].
fn with_history<'a>(payments: &[&'a Payment]) -> Vec<Vec<&'a Payment>> {
    let mut out = Vec::new();
    let mut cur: Vec<&Payment> = Vec::new();
    let mut keys: HashSet<String> = HashSet::new();
    let mut rows: HashSet<&str> = HashSet::new();
    for &p in payments {
        let own = history_keys(p);
        let new_keys = own.iter().filter(|k| !keys.contains(*k)).collect::<HashSet<_>>().len();
        let new_row = usize::from(!rows.contains(p.store.as_str()));
        if !cur.is_empty() && cur.len() + 1 + keys.len() + new_keys + rows.len() + new_row > MAX_TRANSACTION_ITEMS {
            out.push(std::mem::take(&mut cur));
            keys.clear();
            rows.clear();
        }
        keys.extend(own);
        rows.insert(&p.store);
        cur.push(p);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One transaction, in the daemon's order: a conditional put per payment
/// (the daemon's item), with the history in DynamoDB a put per distinct
/// key (the transaction's last payment of it), an `ADD` per row.
fn transaction(
    table: &str,
    payments: &[&Payment],
    history: FraudHistory,
    decided_at: &str,
) -> anyhow::Result<Vec<TransactWriteItem>> {
    let mut items = Vec::new();
    for p in payments {
        items.push(TransactWriteItem::builder().put(payment_put(table, p, decided_at)?).build());
    }
    if history == FraudHistory::Dynamodb {
        let mut last: BTreeMap<String, &Payment> = BTreeMap::new();
        for p in payments {
            for key in history_keys(p) {
                last.insert(key, *p);
            }
        }
        for (key, p) in &last {
            items.push(TransactWriteItem::builder().put(history_put(table, key, p)?).build());
        }
    }
    let mut rows: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for p in payments {
        let row = rows.entry(p.store.as_str()).or_default();
        row.0 += 1;
        row.1 += p.amount_cents;
    }
    for (store, (n, cents)) in rows {
        let row = Update::builder()
            .table_name(table)
            .key("k", AttributeValue::S(format!("row#{store}")))
            .update_expression("ADD payments :n, payments_approved :n, payment_amount_cents :a, version :one")
            .expression_attribute_values(":n", AttributeValue::N(n.to_string()))
            .expression_attribute_values(":a", AttributeValue::N(cents.to_string()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .build()?;
        items.push(TransactWriteItem::builder().update(row).build());
    }
    Ok(items)
}

/// The daemon's payment item (`sinks/dynamodb/payments.rs`), as an
/// approved payment, under its condition (a redelivery's fails).
fn payment_put(table: &str, p: &Payment, decided_at: &str) -> anyhow::Result<Put> {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    // The payload's ids: `{run}-p{n}`, `{run}-o{n}`, `{run}-e{n}`.
    let (run, n) = p.payment_id.rsplit_once("-p").unwrap_or((&p.payment_id, ""));
    Ok(Put::builder()
        .table_name(table)
        .item("k", s(&format!("pay#{}", p.payment_id)))
        .item("payment_id", s(&p.payment_id))
        .item("order_id", s(&format!("{run}-o{n}")))
        .item("customer_id", s(&p.customer_id))
        .item("store", s(&p.store))
        .item("amount_cents", AttributeValue::N(p.amount_cents.to_string()))
        .item("score", AttributeValue::N("0".into()))
        .item("decision", s("approve"))
        .item("reasons", AttributeValue::L(Vec::new()))
        .item("ts", s(decided_at))
        .item("decided_at", s(decided_at))
        .item("event_id", s(&format!("{run}-e{n}")))
        .item("window", s(&decided_at[..decided_at.len().min(16)]))
        .condition_expression("attribute_not_exists(k)")
        .build()?)
}

/// The fraud history's keys of a payment, as the daemon names its items.
fn history_keys(p: &Payment) -> [String; 3] {
    [format!("card#{}", p.fingerprint), format!("cust#{}", p.customer_id), format!("dev#{}", p.device_id)]
}

/// A put of a history item of the daemon's shape (`key`, version, expiry,
/// entries) with one entry, `payment`'s.
fn history_put(table: &str, key: &str, payment: &Payment) -> anyhow::Result<Put> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut entry = HashMap::from([
        ("t".to_owned(), AttributeValue::N(now.to_string())),
        ("p".to_owned(), AttributeValue::S(format!("{:0>32.32}", payment.payment_id))),
    ]);
    if key.starts_with("cust#") {
        entry.insert("v".to_owned(), AttributeValue::N(payment.amount_cents.to_string()));
    } else if key.starts_with("dev#") {
        entry.insert("v".to_owned(), AttributeValue::S(format!("{:0>32.32}", payment.fingerprint)));
    }
    Ok(Put::builder()
        .table_name(table)
        .item("k", AttributeValue::S(key.to_owned()))
        .item("ver", AttributeValue::N("1".into()))
        .item("expires_at", AttributeValue::N((now + 3600).to_string()))
        .item("entries", AttributeValue::L(vec![AttributeValue::M(entry)]))
        // As the daemon's put is conditional on the version it read, so the
        // table reads the item it replaces; this condition always holds.
        .condition_expression("attribute_not_exists(#v) OR #v >= :zero")
        .expression_attribute_names("#v", "ver")
        .expression_attribute_values(":zero", AttributeValue::N("0".into()))
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payments(n: u64, stores: u32, customers: u32) -> Vec<Payment> {
        let load = Load {
            payments: n,
            users: 1,
            stores,
            customers,
            shared_card_ratio: 0.0,
            geo_mismatch_ratio: 0.0,
            big_amount_ratio: 0.0,
        };
        (0..n).map(|i| crate::payload::payment(7, "r1", i, &load, "2026-12-05T00:00:00Z")).collect()
    }

    /// Whether `chunks` hold `all` once each and every chunk is a full
    /// transaction: at most 100 items, and its next chunk's first payment
    /// would not have fitted.
    fn full_transactions(all: &[&Payment], chunks: &[Vec<&Payment>], history: FraudHistory) {
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), all.len(), "every payment once");
        let ids: HashSet<&str> = chunks.iter().flatten().map(|p| p.payment_id.as_str()).collect();
        assert_eq!(ids.len(), all.len());
        for (k, c) in chunks.iter().enumerate() {
            let items = transaction("t", c, history, "2026-12-05T00:00:01Z").expect("a transaction").len();
            assert!(items <= MAX_TRANSACTION_ITEMS, "transaction {k}: {items} items");
            if let Some(next) = chunks.get(k + 1) {
                let grown = [&c[..], &next[..1]].concat();
                let items = transaction("t", &grown, history, "2026-12-05T00:00:01Z").expect("a transaction").len();
                assert!(items > MAX_TRANSACTION_ITEMS, "transaction {k} was not full");
            }
        }
    }

    #[test]
    fn with_the_history_in_dynamodb_a_batch_is_packed_in_arrival_order_with_its_keys_as_the_daemon_packs_it() {
        let all = payments(250, 20, 4000);
        let batch: Vec<&Payment> = all.iter().collect();
        let chunks = with_history(&batch);
        full_transactions(&batch, &chunks, FraudHistory::Dynamodb);
        let order: Vec<&str> = chunks.iter().flatten().map(|p| p.payment_id.as_str()).collect();
        assert_eq!(order, batch.iter().map(|p| p.payment_id.as_str()).collect::<Vec<_>>(), "arrival order");
        // Each payment four items or so (its put, three keys of its own),
        // plus up to 20 rows: far fewer transactions than receives of ten.
        assert!(chunks.len() <= 15, "{} transactions for 250 payments", chunks.len());
        // A customer's keys in a transaction are put once.
        let one = payments(30, 2, 3);
        let batch: Vec<&Payment> = one.iter().collect();
        let chunks = with_history(&batch);
        assert_eq!(chunks.len(), 1, "30 payments of 3 customers: 30 puts, 9 keys, 2 rows");
        assert_eq!(transaction("t", &chunks[0], FraudHistory::Dynamodb, "x").expect("a transaction").len(), 30 + 9 + 2);
    }

    #[test]
    fn with_the_history_in_the_process_a_batch_is_packed_by_row_as_the_daemon_s_sink_packs_it() {
        let all = payments(250, 20, 4000);
        let batch: Vec<&Payment> = all.iter().collect();
        let chunks = by_row(&batch);
        full_transactions(&batch, &chunks, FraudHistory::Process);
        let stores: Vec<&str> = chunks.iter().flatten().map(|p| p.store.as_str()).collect();
        assert!(stores.is_sorted(), "ordered by row");
        // 250 puts and 20 rows: three transactions.
        assert_eq!(chunks.len(), 3);
    }

    #[test]
    fn a_transaction_is_the_daemon_s_puts_a_history_put_per_key_and_an_add_per_row() {
        let all = payments(10, 2, 3);
        let first = &all[0];
        let second = all[1..].iter().find(|p| p.customer_id == first.customer_id).expect("a customer paid twice");
        let other = all.iter().find(|p| p.customer_id != first.customer_id).expect("another customer");
        let members = [first, other, second];
        let items = transaction("t", &members, FraudHistory::Dynamodb, "2026-12-05T00:00:01Z").expect("a transaction");
        let puts: Vec<&Put> = items.iter().filter_map(|w| w.put.as_ref()).collect();
        let (payment_puts, history_puts): (Vec<&Put>, Vec<&Put>) =
            puts.iter().partition(|p| p.item()["k"].as_s().is_ok_and(|k| k.starts_with("pay#")));
        assert_eq!(payment_puts.len(), 3, "a put per payment");
        for put in &payment_puts {
            let item = put.item();
            for attribute in ["payment_id", "order_id", "customer_id", "store", "amount_cents", "score", "decision", "reasons"] {
                assert!(item.contains_key(attribute), "the daemon's {attribute}: {item:?}");
            }
            // On its key: a redelivery's put fails.
            assert_eq!(put.condition_expression(), Some("attribute_not_exists(k)"));
        }
        assert_eq!(payment_puts[0].item()["order_id"], AttributeValue::S(format!("r1-o{:07}", 0)));
        let distinct: HashSet<String> = members.iter().flat_map(|p| history_keys(p)).collect();
        assert_eq!(history_puts.len(), distinct.len(), "each key of the transaction once");
        let entry = |key: &str| {
            let put = history_puts.iter().find(|p| p.item()["k"] == AttributeValue::S(key.to_owned())).expect("its put");
            let item = put.item();
            assert!(item.contains_key("ver") && item.contains_key("expires_at"), "{item:?}");
            assert!(put.condition_expression().is_some());
            let AttributeValue::L(entries) = &item["entries"] else { panic!("{item:?}") };
            let [AttributeValue::M(entry)] = entries.as_slice() else { panic!("{entries:?}") };
            entry.clone()
        };
        // The transaction's last payment of a key is its entry.
        let customer = entry(&format!("cust#{}", first.customer_id));
        assert_eq!(customer["p"], AttributeValue::S(format!("{:0>32.32}", second.payment_id)));
        assert_eq!(customer["v"], AttributeValue::N(second.amount_cents.to_string()));
        assert!(matches!(entry(&format!("dev#{}", other.device_id))["v"], AttributeValue::S(_)));
        assert!(!entry(&format!("card#{}", other.fingerprint)).contains_key("v"));
        // One ADD per store, with its payments and their amounts.
        let rows: Vec<&Update> = items.iter().filter_map(|w| w.update.as_ref()).collect();
        let stores: HashSet<&str> = members.iter().map(|p| p.store.as_str()).collect();
        assert_eq!(rows.len(), stores.len());
        let counted: u64 = rows
            .iter()
            .map(|u| u.expression_attribute_values().expect("values")[":n"].as_n().expect("a count").parse::<u64>().expect("n"))
            .sum();
        assert_eq!(counted, 3);
        let value = |u: &Update, v: &str| u.expression_attribute_values().expect("values")[v].as_n().expect("n").clone();
        for row in &rows {
            let store = row.key()["k"].as_s().expect("a key").trim_start_matches("row#").to_owned();
            let of_it: Vec<&&Payment> = members.iter().filter(|p| p.store == store).collect();
            assert_eq!(value(row, ":n"), of_it.len().to_string(), "{store}'s payments");
            assert_eq!(value(row, ":a"), of_it.iter().map(|p| p.amount_cents).sum::<u64>().to_string(), "{store}'s amounts");
        }
        // With the history in the process, no history puts.
        let items = transaction("t", &members, FraudHistory::Process, "x").expect("a transaction");
        assert_eq!(items.len(), 3 + stores.len());
    }

    fn args(history: FraudHistory) -> PaymentsThroughputArgs {
        PaymentsThroughputArgs {
            payments: 300,
            receivers: 4,
            while_sending: true,
            fraud_history: history,
            timeout_secs: 60,
            targets: crate::bare::testing::default_targets(),
        }
    }

    /// Against the local stack's SQS and DynamoDB (scripts/test.sh starts
    /// it): every payment sent is drained, and the table holds what the
    /// daemon's writes would have made of them: its payment item, the
    /// counts of its row, an item per history key.
    #[tokio::test]
    async fn the_bare_client_drains_every_payment_into_its_item_its_row_and_its_history() {
        std::env::var("AWS_ENDPOINT_URL_SQS").expect("the local stack (scripts/local-stack/stack.sh env)");
        let run_id = crate::coldstart::new_run_id();
        let (sqs, ddb) = crate::bare::clients().await;
        let name = format!("loadgen-pay-floor-{run_id}");
        let queue = crate::bare::scratch_queue(&sqs, &format!("{name}.fifo"), 60).await.expect("a queue");
        crate::throughput::create_scratch_table(&ddb, &name).await.expect("a table");
        let args = args(FraudHistory::Dynamodb);
        let measured = measure(&sqs, &ddb, &queue, &name, &args, 7, &run_id).await.expect("drained");
        assert_eq!(measured.payments, 300);
        assert!(measured.reads > 0 && measured.transactions > 0, "{measured:?}");
        let items = crate::bare::testing::scan_all(&ddb, &name).await;
        crate::bare::remove_scratch(&sqs, &ddb, &queue, &name).await;
        let key = |i: &HashMap<String, AttributeValue>| i["k"].as_s().expect("a string key").clone();
        let sent = burst(7, &run_id, 300).expect("the burst");
        let stored: HashSet<String> = items.iter().map(key).collect();
        for p in &sent {
            assert!(stored.contains(&format!("pay#{}", p.payment_id)), "{} not written", p.payment_id);
            for k in history_keys(p) {
                assert!(stored.contains(&k), "no history item {k}");
            }
        }
        let counted: u64 = items
            .iter()
            .filter(|i| key(i).starts_with("row#"))
            .map(|i| i["payments"].as_n().expect("a count").parse::<u64>().expect("a number"))
            .sum();
        assert_eq!(counted, 300, "each payment counted once in its store's row");
        let cents: u64 = items
            .iter()
            .filter(|i| key(i).starts_with("row#"))
            .map(|i| i["payment_amount_cents"].as_n().expect("a sum").parse::<u64>().expect("a number"))
            .sum();
        assert_eq!(cents, sent.iter().map(|p| p.amount_cents).sum::<u64>());
    }
}
