//! `cafe-loadgen menu-throughput`: the menu path's floor on this stack, a
//! bare client that makes the daemon's SQS and DynamoDB calls for a menu
//! sync and does nothing else.
//!
//! Owns: the measurement. It creates a scratch standard queue and a scratch
//! table, and sends the menu-sync scenario's catalogue as menu-sync does
//! (the same items, images and all, made by `menusync::item` as each is
//! sent; the same pods, each sending its share in batches under 256 KiB)
//! while it drains the queue as the daemon does, without the daemon's
//! work: `receivers` long-polling consumers receive up to ten at a time
//! into batches of up to `pipeline.max_batch_events` messages, each closed
//! `pipeline.linger_ms` after its first (the daemon's defaults, 250 and 50
//! ms); up to `sink_concurrency` (8) batches are written at once, each in
//! the daemon's chunks (a chunk's ledger puts, one update per sku and one
//! `ADD` per row, at most 100 items: `menu_items.rs`), a chunk being a
//! strongly consistent BatchGetItem of its skus and then one
//! TransactWriteItems; then the batch's messages are deleted,
//! DeleteMessageBatch by ten (`bare::drain`). Timed from the first send
//! to its last batch's write start, the span of menu-sync's drain (first
//! send to the last item's `applied_at`, stamped as its batch's write
//! starts). Both scratch resources are deleted afterwards. Must not:
//! decode, digest or check anything (the daemon's share of the work is
//! what the ratio measures): it knows each message's sku and store from
//! the bytes it sent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use aws_sdk_sqs::types::{Message, SendMessageBatchRequestEntry};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use crate::Targets;
use crate::bare::{Deleted, MAX_TRANSACTION_ITEMS, body_key};
use crate::menusync::{Expected, SendBatch};

/// `menu-throughput` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MenuThroughputArgs {
    /// The scenario whose `[menu]` catalogue is sent.
    #[arg(long, default_value = "menu-sync")]
    pub scenario: String,
    /// Multiplies the scenario's item count, as `run --scale` does.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Payload seed, as `run --seed` (the same seed gives menu-sync's items).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Concurrent long-polling consumers (the daemon's menu source's
    /// default is 4).
    #[arg(long, default_value_t = 4)]
    pub receivers: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub targets: Targets,
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct MenuThroughput {
    /// Items sent and drained.
    pub items: u64,
    /// Seconds to send everything.
    pub send_secs: f64,
    /// Seconds from the first send to the last batch's write start.
    pub bare_secs: f64,
    /// Items drained per second over `bare_secs`.
    pub bare_items_per_sec: f64,
    /// BatchGetItem calls made (one per chunk).
    pub reads: u64,
    /// TransactWriteItems calls made (one per chunk).
    pub transactions: u64,
}

/// What the bare client knows of each message it sent, by its body's hash
/// (not the body: a catalogue's images are hundreds of MB): the item (its
/// sku, store and the digests the daemon would store).
type Sent = Arc<Mutex<HashMap<u64, Expected>>>;

/// Runs the measurement on scratch resources named after the targets'.
pub async fn run(args: &MenuThroughputArgs) -> anyhow::Result<MenuThroughput> {
    let scenario = crate::scenario::find(&args.scenario)?;
    let load = scenario.menu.context("not a menu-sync scenario (no [menu])")?;
    let items = ((load.items as f64) * args.scale).round().max(1.0) as u64;
    let (sqs, ddb) = crate::bare::clients().await;
    let run_id = crate::coldstart::new_run_id();
    let visibility = crate::bare::visibility_for(args.timeout_secs);
    let queue = crate::bare::scratch_queue(&sqs, &format!("{}-floor-{run_id}", args.targets.menu_queue), visibility).await?;
    let table = format!("{}-floor-{run_id}", args.targets.menu_table);
    let result = async {
        crate::throughput::create_scratch_table(&ddb, &table).await?;
        let catalogue = Catalogue { load, items, seed: args.seed, run_id: run_id.clone() };
        measure(&sqs, &ddb, &queue, &table, &catalogue, args).await
    }
    .await;
    crate::bare::remove_scratch(&sqs, &ddb, &queue, &table).await;
    result
}

/// The items to send: menu-sync's.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// The scenario's `[menu]`.
    pub load: crate::scenario::MenuLoad,
    /// How many.
    pub items: u64,
    /// Payload seed.
    pub seed: u64,
    /// Run id (in each item's sku and store).
    pub run_id: String,
}

async fn measure(
    sqs: &aws_sdk_sqs::Client,
    ddb: &aws_sdk_dynamodb::Client,
    queue: &str,
    table: &str,
    catalogue: &Catalogue,
    args: &MenuThroughputArgs,
) -> anyhow::Result<MenuThroughput> {
    let want = catalogue.items as usize;
    let pods = catalogue.load.pods.min(want).max(1);
    let sent: Sent = Arc::new(Mutex::new(HashMap::with_capacity(want)));
    let deleted = Arc::new(Deleted::new(want));
    let calls = Arc::new(Calls::default());
    info!(items = want, pods, receivers = args.receivers, "Sending the catalogue to the scratch queue as it is drained");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    // Each pod, the receivers and the writers are tasks of their own, spread
    // over the runtime's threads as menu-sync's goose users are; a failure
    // of any makes the receivers give up.
    let catalogue = Arc::new(catalogue.clone());
    let pods: Vec<_> = (0..pods)
        .map(|pod| {
            let (sqs, queue, catalogue, sent, deleted) =
                (sqs.clone(), queue.to_owned(), Arc::clone(&catalogue), Arc::clone(&sent), Arc::clone(&deleted));
            tokio::spawn(async move {
                let result = send_share(&sqs, &queue, &catalogue, pod, pods, &sent).await;
                if result.is_err() {
                    deleted.give_up();
                }
                result
            })
        })
        .collect();
    let write = {
        let (ddb, table, sent, calls) = (ddb.clone(), table.to_owned(), Arc::clone(&sent), Arc::clone(&calls));
        move |batch: Arc<Vec<Message>>| {
            let (ddb, table, sent, calls) = (ddb.clone(), table.clone(), Arc::clone(&sent), Arc::clone(&calls));
            async move { write_batch(&ddb, &table, &sent, &calls, &batch).await }
        }
    };
    let sending = async {
        for pod in pods {
            pod.await?.context("sending the catalogue")?;
        }
        Ok::<f64, anyhow::Error>(started.elapsed().as_secs_f64())
    };
    let (sent, drained) = tokio::join!(
        sending,
        crate::bare::drain(sqs, queue, args.receivers, &deleted, (deadline, crate::bare::Stamp::AtWrite), write)
    );
    // The pods' error first: the receivers' is then only that they gave up.
    let send_secs = sent?;
    // menu-sync's span ends at the last item's `applied_at`, stamped as
    // its batch's write starts.
    let drained = drained?;
    let bare_secs = (drained.last_stamp - started).as_secs_f64();
    Ok(MenuThroughput {
        items: want as u64,
        send_secs,
        bare_secs,
        bare_items_per_sec: want as f64 / bare_secs,
        reads: calls.reads.load(std::sync::atomic::Ordering::SeqCst),
        transactions: calls.transactions.load(std::sync::atomic::Ordering::SeqCst),
    })
}

/// One pod's share of the catalogue (items `index % pods == pod`), each
/// made as it is sent, as menu-sync's pods make theirs.
async fn send_share(
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    c: &Catalogue,
    pod: usize,
    pods: usize,
    sent: &Sent,
) -> anyhow::Result<()> {
    let mut batch = SendBatch::default();
    let mut index = pod as u64;
    let send = |items: Vec<(String, Expected)>| async move {
        {
            let mut known = sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (body, e) in &items {
                known.insert(body_key(body), e.clone());
            }
        }
        let entries = items
            .iter()
            .enumerate()
            .map(|(k, (body, _))| SendMessageBatchRequestEntry::builder().id(k.to_string()).message_body(body).build())
            .collect::<Result<Vec<_>, _>>()?;
        let out = sqs.send_message_batch().queue_url(queue).set_entries(Some(entries)).send().await?;
        anyhow::ensure!(out.failed.is_empty(), "{} sends refused", out.failed.len());
        Ok::<(), anyhow::Error>(())
    };
    while index < c.items {
        let ts = OffsetDateTime::now_utc().format(&Rfc3339)?;
        if let Some(full) = batch.add(crate::menusync::item(c.seed, &c.run_id, index, &c.load, &ts)) {
            send(full).await?;
        }
        index += pods as u64;
    }
    if let Some(rest) = batch.rest() {
        send(rest).await?;
    }
    Ok(())
}

/// The calls the writers made.
#[derive(Debug, Default)]
struct Calls {
    reads: std::sync::atomic::AtomicU64,
    transactions: std::sync::atomic::AtomicU64,
}

/// One batch: its chunks read and written one after the other, as the
/// daemon's `write_menu` does.
async fn write_batch(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    sent: &Sent,
    calls: &Calls,
    batch: &[Message],
) -> anyhow::Result<()> {
    let items: Vec<(&str, Expected)> = {
        let known = sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        batch
            .iter()
            .map(|m| {
                let e = known.get(&body_key(m.body().unwrap_or_default())).context("a message the bare client did not send")?;
                Ok((m.message_id().unwrap_or_default(), e.clone()))
            })
            .collect::<anyhow::Result<_>>()?
    };
    for chunk in chunks(&items) {
        let skus: BTreeSet<&str> = chunk.iter().map(|(_, e)| e.sku.as_str()).collect();
        read_skus(ddb, table, &skus).await?;
        calls.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let writes = transaction(table, chunk)?;
        ddb.transact_write_items().set_transact_items(Some(writes)).send().await.context("write")?;
        calls.transactions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    Ok(())
}

/// A batch's items in the daemon's chunks: each chunk's ledger puts, one
/// update per sku and one `ADD` per row (here per store) at most
/// [`MAX_TRANSACTION_ITEMS`] (`menu_items.rs`'s `menu_chunks`).
fn chunks<'a>(items: &'a [(&'a str, Expected)]) -> Vec<&'a [(&'a str, Expected)]> {
    let mut out = Vec::new();
    let (mut start, mut skus, mut rows) = (0, HashSet::new(), HashSet::new());
    for (i, (_, e)) in items.iter().enumerate() {
        let (sku, store) = (&e.sku, &e.store);
        let extra = 1 + usize::from(!skus.contains(sku)) + usize::from(!rows.contains(store));
        if i > start && (i - start) + skus.len() + rows.len() + extra > MAX_TRANSACTION_ITEMS {
            out.push(&items[start..i]);
            start = i;
            skus.clear();
            rows.clear();
        }
        skus.insert(sku);
        rows.insert(store);
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// The stored versions of `skus`, read as the daemon reads them (strongly
/// consistent, only the version and content hash; unprocessed keys asked
/// again).
async fn read_skus(ddb: &aws_sdk_dynamodb::Client, table: &str, skus: &BTreeSet<&str>) -> anyhow::Result<()> {
    let mut ask = KeysAndAttributes::builder().consistent_read(true).projection_expression("k, sync_version, content_sha256");
    for sku in skus {
        ask = ask.keys(HashMap::from([("k".to_owned(), AttributeValue::S(format!("sku#{sku}")))]));
    }
    crate::bare::batch_get(ddb, table, ask.build()?, "reading the skus").await?;
    Ok(())
}

/// One batch's transaction, in the daemon's order: a ledger put per
/// message, an update per sku (the batch's last item of it, with the
/// daemon's attributes), an `ADD` per store.
fn transaction(table: &str, items: &[(&str, Expected)]) -> anyhow::Result<Vec<TransactWriteItem>> {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let mut writes = Vec::new();
    for (message_id, e) in items {
        let put = Put::builder()
            .table_name(table)
            .item("k", s(&format!("ev#{message_id}")))
            .item("type", s("menu.item.upserted"))
            .item("key", s(&e.sku))
            .condition_expression("attribute_not_exists(k)")
            .build()?;
        writes.push(TransactWriteItem::builder().put(put).build());
    }
    let last: BTreeMap<&str, &Expected> = items.iter().map(|(_, e)| (e.sku.as_str(), e)).collect();
    let now = OffsetDateTime::now_utc().format(&Rfc3339)?;
    for (sku, e) in &last {
        let update = Update::builder()
            .table_name(table)
            .key("k", s(&format!("sku#{sku}")))
            .update_expression(
                "SET #n = :n, category = :c, price_cents = :p, image_sha256 = :ih, image_ok = :ok, kcal = :k, \
                 content_sha256 = :ch, updated_at = :u, #ts = :ts, sync_version = :v",
            )
            // The daemon's condition on a sku it found no item for.
            .condition_expression("attribute_not_exists(k)")
            .expression_attribute_names("#n", "name")
            .expression_attribute_names("#ts", "ts")
            .expression_attribute_values(":n", s(&format!("item {sku}")))
            .expression_attribute_values(":c", s("menu"))
            .expression_attribute_values(":p", AttributeValue::N("450".into()))
            .expression_attribute_values(":ih", s(&e.image_sha256))
            .expression_attribute_values(":ok", AttributeValue::Bool(e.image_ok))
            .expression_attribute_values(":k", AttributeValue::N(format!("{:.2}", e.kcal)))
            .expression_attribute_values(":ch", s(&e.content_sha256))
            .expression_attribute_values(":u", s(&now))
            .expression_attribute_values(":ts", s(&now))
            .expression_attribute_values(":v", s(&format!("{now}/{sku}")))
            .build()?;
        writes.push(TransactWriteItem::builder().update(update).build());
    }
    let mut per_store: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, e) in items {
        *per_store.entry(e.store.as_str()).or_default() += 1;
    }
    for (store, n) in per_store {
        let row = Update::builder()
            .table_name(table)
            .key("k", s(&format!("row#{store}")))
            .update_expression("ADD menu_items :n")
            .expression_attribute_values(":n", AttributeValue::N(n.to_string()))
            .build()?;
        writes.push(TransactWriteItem::builder().update(row).build());
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use aws_sdk_sqs::types::QueueAttributeName;

    use super::*;

    fn expected(sku: &str, store: &str) -> Expected {
        Expected {
            sku: sku.to_owned(),
            store: store.to_owned(),
            image_sha256: "ab".into(),
            image_ok: true,
            kcal: 1.5,
            content_sha256: "cd".into(),
            image_bytes: 10,
        }
    }

    #[test]
    fn a_chunk_is_a_ledger_put_per_message_an_update_per_sku_and_an_add_per_store() {
        let items = [("m1", expected("s1", "st1")), ("m2", expected("s2", "st2")), ("m3", expected("s1", "st1"))];
        let writes = transaction("t", &items).expect("a transaction");
        let puts = writes.iter().filter(|w| w.put.is_some()).count();
        let updates: Vec<&Update> = writes.iter().filter_map(|w| w.update.as_ref()).collect();
        assert_eq!(puts, 3, "one ledger put per message, a repeat of a sku included");
        let keys: Vec<&str> = updates.iter().map(|u| u.key()["k"].as_s().expect("a string key").as_str()).collect();
        assert_eq!(keys, ["sku#s1", "sku#s2", "row#st1", "row#st2"], "one update per sku, then one ADD per store");
        assert_eq!(updates[2].expression_attribute_values().expect("values")[":n"], AttributeValue::N("2".into()));
    }

    #[test]
    fn a_batch_is_written_in_the_daemon_s_chunks_of_at_most_100_transaction_items() {
        // 250 messages of distinct skus over 20 stores: each message costs a
        // ledger put and an update; a chunk's stores one ADD each.
        let ids: Vec<String> = (0..250).map(|i| format!("m{i}")).collect();
        let items: Vec<(&str, Expected)> =
            ids.iter().enumerate().map(|(i, id)| (id.as_str(), expected(&format!("s{i}"), &format!("st{}", i % 20)))).collect();
        let chunks = chunks(&items);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 250, "every message once, in order");
        for (k, c) in chunks.iter().enumerate() {
            let writes = transaction("t", c).expect("a transaction").len();
            assert!(writes <= MAX_TRANSACTION_ITEMS, "chunk {k}: {writes} items");
            // Full: the next message would not have fitted.
            if let Some(next) = chunks.get(k + 1) {
                let grown = [&c[..], &next[..1]].concat();
                assert!(transaction("t", &grown).expect("a transaction").len() > MAX_TRANSACTION_ITEMS, "chunk {k} was not full");
            }
        }
        assert_eq!(chunks.len(), 7, "40 messages and their 20 stores a chunk: 250 in 7 chunks");
        // A sku twice in a chunk is one update.
        let twice = [("a", expected("s", "st")), ("b", expected("s", "st"))];
        assert_eq!(super::chunks(&twice).len(), 1);
    }

    /// Against the local stack (scripts/test.sh starts it): a write that
    /// fails (here: no such table) ends the run with its own error at once,
    /// not with the receivers' after the deadline.
    #[tokio::test]
    async fn a_failed_write_ends_the_run_with_its_error_not_at_the_deadline() {
        std::env::var("AWS_ENDPOINT_URL_SQS").expect("the local stack (scripts/local-stack/stack.sh env)");
        let catalogue = Catalogue { load: small_load(), items: 20, seed: 7, run_id: crate::coldstart::new_run_id() };
        let (sqs, ddb) = crate::bare::clients().await;
        let name = format!("loadgen-menu-floor-{}", catalogue.run_id);
        let queue = sqs.create_queue().queue_name(&name).send().await.expect("a queue").queue_url.expect("its URL");
        let args = MenuThroughputArgs { timeout_secs: 60, ..args() };
        let started = Instant::now();
        let failed = measure(&sqs, &ddb, &queue, "no-such-table", &catalogue, &args).await.expect_err("no table to write to");
        assert!(format!("{failed:#}").contains("writing the batches"), "{failed:#}");
        assert!(started.elapsed() < Duration::from_secs(20), "gave up at once, not at the deadline: {:?}", started.elapsed());
        let _ = sqs.delete_queue().queue_url(&queue).send().await;
    }

    fn small_load() -> crate::scenario::MenuLoad {
        crate::scenario::MenuLoad {
            items: 45,
            pods: 4,
            stores: 3,
            image_kib: [2.0, 150.0],
            wrong_hash_ratio: 0.1,
            ingredients: [2, 4],
            redshift_within_secs: 0,
            json_rounds: 1,
        }
    }

    fn args() -> MenuThroughputArgs {
        MenuThroughputArgs {
            scenario: "unused".into(),
            scale: 1.0,
            seed: 7,
            receivers: 3,
            timeout_secs: 60,
            targets: crate::bare::testing::default_targets(),
        }
    }

    /// Against the local stack's SQS and DynamoDB (scripts/test.sh starts
    /// it): every item sent is drained, and the table holds what the
    /// daemon's writes would have made of them.
    #[tokio::test]
    async fn the_bare_client_drains_every_item_into_a_ledger_entry_an_item_per_sku_and_counts_per_store() {
        std::env::var("AWS_ENDPOINT_URL_SQS").expect("the local stack (scripts/local-stack/stack.sh env)");
        let catalogue = Catalogue { load: small_load(), items: 45, seed: 7, run_id: crate::coldstart::new_run_id() };
        let expected: HashMap<String, Expected> = (0..catalogue.items)
            .map(|i| crate::menusync::item(catalogue.seed, &catalogue.run_id, i, &catalogue.load, "t").1)
            .map(|e| (format!("sku#{}", e.sku), e))
            .collect();
        let (sqs, ddb) = crate::bare::clients().await;
        let name = format!("loadgen-menu-floor-{}", catalogue.run_id);
        let queue = sqs.create_queue().queue_name(&name).send().await.expect("a queue").queue_url.expect("its URL");
        crate::throughput::create_scratch_table(&ddb, &name).await.expect("a table");
        let args = args();
        let measured = measure(&sqs, &ddb, &queue, &name, &catalogue, &args).await.expect("drained");
        assert_eq!(measured.items, 45);
        assert_eq!(measured.reads, measured.transactions, "a read of its skus before each chunk's transaction");
        let left = sqs
            .get_queue_attributes()
            .queue_url(&queue)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .expect("the queue's attributes");
        assert_eq!(
            left.attributes().and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages)).map(String::as_str),
            Some("0")
        );
        let items = crate::bare::testing::scan_all(&ddb, &name).await;
        let key = |i: &HashMap<String, AttributeValue>| i["k"].as_s().expect("a string key").clone();
        let text = |i: &HashMap<String, AttributeValue>, a: &str| i.get(a).and_then(|v| v.as_s().ok()).cloned();
        let ledger = items.iter().filter(|i| key(i).starts_with("ev#")).count();
        let counted: u64 = items
            .iter()
            .filter(|i| key(i).starts_with("row#"))
            .map(|i| i["menu_items"].as_n().expect("a count").parse::<u64>().expect("a number"))
            .sum();
        assert_eq!(ledger, 45, "a ledger entry per message");
        assert_eq!(counted, 45, "each item counted once in its store's row");
        let skus: Vec<_> = items.iter().filter(|i| key(i).starts_with("sku#")).collect();
        assert_eq!(skus.len(), expected.len(), "an item per sku");
        for item in skus {
            let e = &expected[&key(item)];
            assert_eq!(text(item, "image_sha256").as_ref(), Some(&e.image_sha256), "the daemon's attributes");
            assert_eq!(text(item, "content_sha256").as_ref(), Some(&e.content_sha256));
            assert!(text(item, "sync_version").is_some() && item.contains_key("kcal"), "{item:?}");
        }
        let _ = sqs.delete_queue().queue_url(&queue).send().await;
        let _ = ddb.delete_table().table_name(&name).send().await;
    }
}
