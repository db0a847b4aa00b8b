//! `cafe-loadgen payments-throughput`: the payments path's floor on this
//! stack, a bare client that makes the daemon's SQS and DynamoDB calls for
//! a burst of payments and does nothing else.
//!
//! Owns: the measurement. It creates a scratch FIFO queue and a scratch
//! table, sends the burst (the cold-start scenario's payments: same bodies,
//! same FIFO groups), then (or, with `--while-sending`, meanwhile) times
//! `receivers` long-polling consumers as the daemon runs them: receive up
//! to ten, one TransactWriteItems per batch (a conditional put per payment
//! and one `ADD` to an aggregate row),
//! DeleteMessageBatch, until every payment is deleted. With the fraud
//! history in DynamoDB (`--fraud-history dynamodb`, the daemon's default)
//! it also makes the history's reads and writes: a strongly consistent
//! BatchGetItem of the batch's keys (card, customer, device) that it has not
//! read before, as the daemon reads a key once and then keeps it, and a put
//! of each of the batch's keys in the batch's transaction (an item of the
//! daemon's shape, one entry, under a condition as the daemon's, which the
//! table must check against the item it replaces; the daemon's holds the
//! version it read, this one always holds, so the bare client never
//! retries).
//! Both scratch resources are deleted afterwards. Must not: decode, score
//! or check anything (the daemon's share of the work is what the ratio
//! measures).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, QueueAttributeName, SendMessageBatchRequestEntry};
use futures::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use crate::Targets;
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
    /// Seconds from the first message received to the last deleted.
    pub bare_secs: f64,
    /// Payments per second the bare client drained.
    pub bare_payments_per_sec: f64,
}

/// Runs the measurement on scratch resources named after the targets'.
pub async fn run(args: &PaymentsThroughputArgs, seed: u64) -> anyhow::Result<PaymentsThroughput> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let run_id = crate::coldstart::new_run_id();
    let base = args.targets.payments_queue.trim_end_matches(".fifo");
    let queue = scratch_queue(&sqs, &format!("{base}-floor-{run_id}.fifo"), 60).await?;
    let table = format!("{}-floor-{run_id}", args.targets.payments_table);
    let result = async {
        crate::throughput::create_scratch_table(&ddb, &table).await?;
        measure(&sqs, &ddb, &queue, &table, args, seed, &run_id).await
    }
    .await;
    remove_scratch(&sqs, &ddb, &queue, &table).await;
    result
}

/// Creates the scratch queue `name` (FIFO when it ends in `.fifo`) with
/// `visibility_secs` of visibility timeout; its URL.
pub async fn scratch_queue(sqs: &aws_sdk_sqs::Client, name: &str, visibility_secs: u64) -> anyhow::Result<String> {
    let mut create =
        sqs.create_queue().queue_name(name).attributes(QueueAttributeName::VisibilityTimeout, visibility_secs.to_string());
    if name.ends_with(".fifo") {
        create = create.attributes(QueueAttributeName::FifoQueue, "true");
    }
    create.send().await.context("creating the scratch queue")?.queue_url.context("no queue URL")
}

/// Deletes a bare client's scratch queue and table (what is already gone
/// is no error: the measurement's own result is the one reported).
pub async fn remove_scratch(sqs: &aws_sdk_sqs::Client, ddb: &aws_sdk_dynamodb::Client, queue: &str, table: &str) {
    let _ = sqs.delete_queue().queue_url(queue).send().await;
    let _ = ddb.delete_table().table_name(table).send().await;
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
    let load = Load {
        payments: args.payments,
        users: 1,
        stores: 20,
        customers: 4000,
        shared_card_ratio: 0.02,
        geo_mismatch_ratio: 0.05,
        big_amount_ratio: 0.02,
    };
    let ts = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let payments: Vec<_> = (0..args.payments).map(|i| crate::payload::payment(seed, run_id, i, &load, &ts)).collect();
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

    // Each payment by its body (none when the history is in the process),
    // and the history's keys read so far.
    let by_body: HashMap<&str, &crate::payload::Payment> = match args.fraud_history {
        FraudHistory::Dynamodb => payments.iter().map(|p| (p.body.as_str(), p)).collect(),
        FraudHistory::Process => HashMap::new(),
    };
    let read_keys: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let (by_body, read_keys) = (&by_body, &read_keys);
    let want = payments.len();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let deleted = &Deleted::new(want);
    let write = |r: usize, batch_no: u64, messages: Vec<Message>| async move {
        let mut items = messages
            .iter()
            .map(|m| {
                let put = Put::builder()
                    .table_name(table)
                    .item("k", AttributeValue::S(m.message_id().unwrap_or_default().to_owned()))
                    .item("decision", AttributeValue::S("approve".into()))
                    .condition_expression("attribute_not_exists(k)")
                    .build()?;
                Ok(TransactWriteItem::builder().put(put).build())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let last = last_payment_of_each_key(&messages, by_body);
        read_history(ddb, table, read_keys, last.keys()).await?;
        for (key, payment) in &last {
            items.push(TransactWriteItem::builder().put(history_put(table, key, payment)?).build());
        }
        let row = Update::builder()
            .table_name(table)
            .key("k", AttributeValue::S(format!("row-{r}-{}", batch_no % 20)))
            .update_expression("ADD payments :n")
            .expression_attribute_values(":n", AttributeValue::N(messages.len().to_string()))
            .build()?;
        items.push(TransactWriteItem::builder().update(row).build());
        ddb.transact_write_items().set_transact_items(Some(items)).send().await.context("write")?;
        delete_batch(sqs, queue, &messages).await?;
        deleted.add(messages.len());
        Ok(())
    };
    let drain = receive_until(sqs, queue, args.receivers, deleted, deadline, write);
    let started = if args.while_sending {
        info!(receivers = args.receivers, "Draining it with a bare consumer as it is sent");
        let (sent, drained) = tokio::join!(send, drain);
        sent.context("sending the burst")?;
        drained?
    } else {
        send.await.context("sending the burst")?;
        info!(receivers = args.receivers, "Draining it with a bare consumer");
        drain.await?
    };
    let bare_secs = (deleted.last().context("not every payment was deleted")? - started).as_secs_f64();
    Ok(PaymentsThroughput {
        payments: want as u64,
        fraud_history: args.fraud_history,
        bare_secs,
        bare_payments_per_sec: want as f64 / bare_secs,
    })
}

/// What a drain counts: messages deleted, and when the last of those it
/// waits for was. (Its consumers end later: each finishes the long poll it
/// is in, up to a second, which is not the drain's time.)
#[derive(Debug)]
pub struct Deleted {
    count: AtomicUsize,
    want: usize,
    last: OnceLock<Instant>,
    given_up: std::sync::atomic::AtomicBool,
}

impl Deleted {
    /// Waiting for `want` deletes.
    pub fn new(want: usize) -> Self {
        Deleted { count: AtomicUsize::new(0), want, last: OnceLock::new(), given_up: Default::default() }
    }

    /// Something the drain needs failed (a send, a write): its receivers
    /// stop at their next receive instead of waiting out the deadline for
    /// deletes that will not come.
    pub fn give_up(&self) {
        self.given_up.store(true, Ordering::SeqCst);
    }

    /// `n` more deleted: the moment the count reaches `want` is the last.
    pub fn add(&self, n: usize) {
        if self.count.fetch_add(n, Ordering::SeqCst) + n >= self.want {
            self.last.get_or_init(Instant::now);
        }
    }

    /// Whether every message waited for is deleted.
    pub fn all(&self) -> bool {
        self.count.load(Ordering::SeqCst) >= self.want
    }

    /// When the last message waited for was deleted.
    pub fn last(&self) -> Option<Instant> {
        self.last.get().copied()
    }
}

/// Receives from `queue` as the daemon's SQS source does, `receivers`
/// long-polling consumers each receiving up to ten, and hands each
/// non-empty receive to `handle` (its receiver's number, its receive's
/// number, the messages), until `deleted` has them all or `deadline`
/// passes. Returns when the first message was received.
pub async fn receive_until<H, F>(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    receivers: usize,
    deleted: &Deleted,
    deadline: Instant,
    handle: H,
) -> anyhow::Result<Instant>
where
    H: Fn(usize, u64, Vec<Message>) -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    let first_received: OnceLock<Instant> = OnceLock::new();
    let (first_received, handle) = (&first_received, &handle);
    let consumers = (0..receivers).map(|r| async move {
        let mut batch_no = 0u64;
        while !deleted.all() {
            anyhow::ensure!(!deleted.given_up.load(Ordering::SeqCst), "the drain gave up (see the error beside this one)");
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {} deleted",
                deleted.count.load(Ordering::SeqCst),
                deleted.want
            );
            let got = sqs
                .receive_message()
                .queue_url(queue)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .context("receive")?;
            let messages = got.messages.unwrap_or_default();
            if messages.is_empty() {
                continue;
            }
            first_received.get_or_init(Instant::now);
            batch_no += 1;
            handle(r, batch_no, messages).await?;
        }
        Ok::<(), anyhow::Error>(())
    });
    futures::future::join_all(consumers).await.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    first_received.get().copied().context("nothing was received")
}

/// Deletes `messages` (at most ten) with one DeleteMessageBatch.
pub async fn delete_batch(sqs: &aws_sdk_sqs::Client, queue: &str, messages: &[Message]) -> anyhow::Result<()> {
    let entries = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(m.receipt_handle().unwrap_or_default())
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = sqs.delete_message_batch().queue_url(queue).set_entries(Some(entries)).send().await.context("delete")?;
    anyhow::ensure!(out.failed.is_empty(), "{} deletes refused", out.failed.len());
    Ok(())
}

/// Reads the history items of `keys` that no batch has read before (one
/// strongly consistent BatchGetItem per 100, unprocessed keys asked again),
/// as the daemon reads a key once and then keeps its state.
async fn read_history(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    read_keys: &Mutex<HashSet<String>>,
    keys: impl Iterator<Item = &String>,
) -> anyhow::Result<()> {
    let unread: Vec<String> = {
        let mut read = read_keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.filter(|k| read.insert((*k).clone())).cloned().collect()
    };
    for chunk in unread.chunks(100) {
        let mut ask = KeysAndAttributes::builder().consistent_read(true);
        for key in chunk {
            ask = ask.keys(HashMap::from([("k".to_owned(), AttributeValue::S(key.clone()))]));
        }
        let mut ask = Some(ask.build()?);
        while let Some(keys) = ask.take() {
            let out = ddb.batch_get_item().request_items(table, keys).send().await.context("reading the history")?;
            ask = out.unprocessed_keys.and_then(|mut u| u.remove(table)).filter(|k| !k.keys.is_empty());
        }
    }
    Ok(())
}

/// The fraud history's keys of a payment, as the daemon names its items.
fn history_keys(p: &crate::payload::Payment) -> [String; 3] {
    [format!("card#{}", p.fingerprint), format!("cust#{}", p.customer_id), format!("dev#{}", p.device_id)]
}

/// Each history key of a batch's payments (those in `by_body`), in key
/// order, with the batch's last payment of it.
fn last_payment_of_each_key<'a>(
    messages: &[Message],
    by_body: &HashMap<&str, &'a crate::payload::Payment>,
) -> BTreeMap<String, &'a crate::payload::Payment> {
    let mut last = BTreeMap::new();
    for payment in messages.iter().filter_map(|m| by_body.get(m.body().unwrap_or_default())) {
        for key in history_keys(payment) {
            last.insert(key, *payment);
        }
    }
    last
}

/// A put of a history item of the daemon's shape (`key`, version, expiry,
/// entries) with one entry, `payment`'s.
fn history_put(table: &str, key: &str, payment: &crate::payload::Payment) -> anyhow::Result<Put> {
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

    fn payment(index: u64) -> crate::payload::Payment {
        let load = Load {
            payments: 10,
            users: 1,
            stores: 2,
            customers: 3,
            shared_card_ratio: 0.0,
            geo_mismatch_ratio: 0.0,
            big_amount_ratio: 0.0,
        };
        crate::payload::payment(7, "r1", index, &load, "2026-12-05T00:00:00Z")
    }

    #[test]
    fn a_drain_ends_when_its_last_message_is_deleted_not_when_its_consumers_do() {
        let deleted = Deleted::new(3);
        deleted.add(2);
        assert!(!deleted.all() && deleted.last().is_none());
        deleted.add(1);
        let last = deleted.last().expect("the last delete's moment");
        assert!(deleted.all());
        // A consumer's long poll ending later, or a delete past the count
        // (a redelivered message), does not move it.
        std::thread::sleep(Duration::from_millis(5));
        deleted.add(1);
        assert_eq!(deleted.last(), Some(last));
    }

    #[test]
    fn a_history_put_is_the_daemon_s_item_for_the_batch_s_last_payment_of_its_key() {
        let payments: Vec<_> = (0..10).map(payment).collect();
        // Two payments of one customer in a batch, with another between them.
        let first = &payments[0];
        let second = payments[1..].iter().find(|p| p.customer_id == first.customer_id).expect("a customer paid twice");
        let other = payments.iter().find(|p| p.customer_id != first.customer_id).expect("another customer");
        let by_body: HashMap<&str, &crate::payload::Payment> = payments.iter().map(|p| (p.body.as_str(), p)).collect();
        let messages: Vec<_> =
            [first, other, second].iter().map(|p| aws_sdk_sqs::types::Message::builder().body(&p.body).build()).collect();
        let last = last_payment_of_each_key(&messages, &by_body);
        let distinct: HashSet<String> = [first, other, second].iter().flat_map(|p| history_keys(p)).collect();
        assert_eq!(last.len(), distinct.len(), "each key of the batch once");
        let entry = |key: &str| {
            let put = history_put("t", key, last.get(key).expect("a key of the batch")).expect("a put");
            let item = put.item();
            assert_eq!(item["k"], AttributeValue::S(key.to_owned()));
            assert!(item.contains_key("ver") && item.contains_key("expires_at"), "{item:?}");
            assert!(put.condition_expression().is_some());
            let AttributeValue::L(entries) = &item["entries"] else { panic!("{item:?}") };
            let [AttributeValue::M(entry)] = entries.as_slice() else { panic!("{entries:?}") };
            entry.clone()
        };
        let customer = entry(&format!("cust#{}", first.customer_id));
        assert_eq!(customer["p"], AttributeValue::S(format!("{:0>32.32}", second.payment_id)));
        assert_eq!(customer["v"], AttributeValue::N(second.amount_cents.to_string()));
        assert!(matches!(entry(&format!("dev#{}", other.device_id))["v"], AttributeValue::S(_)));
        assert!(!entry(&format!("card#{}", other.fingerprint)).contains_key("v"));
        // With the history in the process, the batch has no keys.
        assert!(last_payment_of_each_key(&messages, &HashMap::new()).is_empty());
    }
}
