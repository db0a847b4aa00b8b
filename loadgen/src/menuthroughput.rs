//! `cafe-loadgen menu-throughput`: the menu path's floor on this stack, a
//! bare client that makes the daemon's SQS and DynamoDB calls for a menu
//! sync and does nothing else.
//!
//! Owns: the measurement. It creates a scratch standard queue and a scratch
//! table, and sends the menu-sync scenario's catalogue (the same items,
//! images and all, made by `menusync::item`; the same pods, each sending
//! its share in batches under 256 KiB) while `receivers` long-polling
//! consumers drain it as the daemon's menu source does: receive up to ten;
//! a strongly consistent BatchGetItem of the batch's skus (the daemon reads
//! each chunk's stored versions before writing it); one TransactWriteItems
//! holding a ledger put per message (`attribute_not_exists`), an update
//! per sku of the daemon's item's attributes under a condition, and one
//! `ADD` per store the batch touched (the daemon's one per aggregate row);
//! DeleteMessageBatch. Timed from the first send to the last delete, the
//! span of menu-sync's drain (first send to last item stored). Both
//! scratch resources are deleted afterwards. Must not: decode, digest or
//! check anything (the daemon's share of the work is what the ratio
//! measures): it knows each message's sku and store from the bytes it sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use aws_sdk_sqs::types::{Message, QueueAttributeName, SendMessageBatchRequestEntry};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use crate::Targets;
use crate::menusync::{Expected, MAX_BATCH_BYTES};

/// `menu-throughput` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MenuThroughputArgs {
    /// The scenario whose `[menu]` catalogue is sent.
    #[arg(long, default_value = "menu-sync")]
    pub scenario: String,
    /// Multiplies the scenario's item count, as `run --scale` does.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
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
    /// Seconds from the first send to the last delete.
    pub bare_secs: f64,
    /// Items drained per second over `bare_secs`.
    pub bare_items_per_sec: f64,
}

/// Runs the measurement on scratch resources named after the targets'.
pub async fn run(args: &MenuThroughputArgs, seed: u64) -> anyhow::Result<MenuThroughput> {
    let scenario = crate::scenario::find(&args.scenario)?;
    let load = scenario.menu.context("not a menu-sync scenario (no [menu])")?;
    let items = ((load.items as f64) * args.scale).round().max(1.0) as u64;
    let pods = load.pods.min(items as usize).max(1);
    let run_id = crate::coldstart::new_run_id();
    let ts = OffsetDateTime::now_utc().format(&Rfc3339)?;
    // Made before anything is timed: the sending then costs what SQS takes.
    let catalogue: Vec<(String, Expected)> = (0..items).map(|i| crate::menusync::item(seed, &run_id, i, &load, &ts)).collect();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let queue = sqs
        .create_queue()
        .queue_name(format!("{}-floor-{run_id}", args.targets.menu_queue))
        .attributes(QueueAttributeName::VisibilityTimeout, "60")
        .send()
        .await
        .context("creating the scratch queue")?
        .queue_url
        .context("no queue URL")?;
    let table = format!("{}-floor-{run_id}", args.targets.menu_table);
    let result = async {
        crate::throughput::create_scratch_table(&ddb, &table).await?;
        measure(&sqs, &ddb, &queue, &table, &catalogue, pods, args).await
    }
    .await;
    let _ = sqs.delete_queue().queue_url(&queue).send().await;
    let _ = ddb.delete_table().table_name(&table).send().await;
    result
}

async fn measure(
    sqs: &aws_sdk_sqs::Client,
    ddb: &aws_sdk_dynamodb::Client,
    queue: &str,
    table: &str,
    catalogue: &[(String, Expected)],
    pods: usize,
    args: &MenuThroughputArgs,
) -> anyhow::Result<MenuThroughput> {
    let by_body: HashMap<&str, &Expected> = catalogue.iter().map(|(body, e)| (body.as_str(), e)).collect();
    let by_body = &by_body;
    info!(
        items = catalogue.len(),
        pods,
        receivers = args.receivers,
        "Sending the catalogue to the scratch queue as it is drained"
    );
    let started = Instant::now();
    // Each pod its share (items `index % pods == pod`), batch after batch.
    let send = futures::future::join_all((0..pods).map(|pod| async move {
        let mine: Vec<&(String, Expected)> = catalogue.iter().skip(pod).step_by(pods).collect();
        for batch in batches(&mine) {
            let entries = batch
                .iter()
                .enumerate()
                .map(|(k, (body, _))| SendMessageBatchRequestEntry::builder().id(k.to_string()).message_body(body).build())
                .collect::<Result<Vec<_>, _>>()?;
            let out = sqs.send_message_batch().queue_url(queue).set_entries(Some(entries)).send().await?;
            anyhow::ensure!(out.failed.is_empty(), "{} sends refused", out.failed.len());
        }
        Ok::<(), anyhow::Error>(())
    }));
    let send = async {
        send.await.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        Ok::<f64, anyhow::Error>(started.elapsed().as_secs_f64())
    };
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let write = |_: usize, _: u64, messages: Vec<Message>| async move {
        let items = messages
            .iter()
            .map(|m| {
                let e = by_body.get(m.body().unwrap_or_default()).context("a message the bare client did not send")?;
                Ok((m.message_id().unwrap_or_default(), *e))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let skus: BTreeSet<&str> = items.iter().map(|(_, e)| e.sku.as_str()).collect();
        read_skus(ddb, table, &skus).await?;
        let writes = transaction(table, &items)?;
        ddb.transact_write_items().set_transact_items(Some(writes)).send().await.context("write")?;
        Ok(messages)
    };
    let drain = crate::paythroughput::drain(sqs, queue, catalogue.len(), args.receivers, deadline, write);
    let (sent, drained) = tokio::join!(send, drain);
    let send_secs = sent.context("sending the catalogue")?;
    drained?;
    let bare_secs = started.elapsed().as_secs_f64();
    Ok(MenuThroughput {
        items: catalogue.len() as u64,
        send_secs,
        bare_secs,
        bare_items_per_sec: catalogue.len() as f64 / bare_secs,
    })
}

/// A pod's items in SendMessageBatch calls: at most ten, under 256 KiB.
fn batches<'a>(items: &[&'a (String, Expected)]) -> Vec<Vec<&'a (String, Expected)>> {
    let mut out: Vec<Vec<&(String, Expected)>> = Vec::new();
    let mut bytes = 0;
    for &item in items {
        let full = out.last().is_none_or(|b| b.len() == 10 || bytes + item.0.len() > MAX_BATCH_BYTES);
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += item.0.len();
        out.last_mut().expect("a batch").push(item);
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
    let mut ask = Some(ask.build()?);
    while let Some(keys) = ask.take() {
        let out = ddb.batch_get_item().request_items(table, keys).send().await.context("reading the skus")?;
        ask = out.unprocessed_keys.and_then(|mut u| u.remove(table)).filter(|k| !k.keys.is_empty());
    }
    Ok(())
}

/// One batch's transaction, in the daemon's order: a ledger put per
/// message, an update per sku (the batch's last item of it, with the
/// daemon's attributes), an `ADD` per store.
fn transaction(table: &str, items: &[(&str, &Expected)]) -> anyhow::Result<Vec<TransactWriteItem>> {
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
    let last: BTreeMap<&str, &Expected> = items.iter().map(|(_, e)| (e.sku.as_str(), *e)).collect();
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
    fn a_batch_is_a_ledger_put_per_message_an_update_per_sku_and_an_add_per_store() {
        let (a, b, a_again) = (expected("s1", "st1"), expected("s2", "st2"), expected("s1", "st1"));
        let items = [("m1", &a), ("m2", &b), ("m3", &a_again)];
        let writes = transaction("t", &items).expect("a transaction");
        let puts = writes.iter().filter(|w| w.put.is_some()).count();
        let updates: Vec<&Update> = writes.iter().filter_map(|w| w.update.as_ref()).collect();
        assert_eq!(puts, 3, "one ledger put per message, a repeat of a sku included");
        let keys: Vec<&str> = updates.iter().map(|u| u.key()["k"].as_s().expect("a string key").as_str()).collect();
        assert_eq!(keys, ["sku#s1", "sku#s2", "row#st1", "row#st2"], "one update per sku, then one ADD per store");
        assert_eq!(updates[2].expression_attribute_values().expect("values")[":n"], AttributeValue::N("2".into()));
        assert!(writes.len() <= 100, "within a transaction's items");
    }

    /// Against the local stack's SQS and DynamoDB (scripts/test.sh starts
    /// it): every item sent is drained, and the table holds what the
    /// daemon's writes would have made of them.
    #[tokio::test]
    async fn the_bare_client_drains_every_item_into_a_ledger_entry_an_item_per_sku_and_counts_per_store() {
        std::env::var("AWS_ENDPOINT_URL_SQS").expect("the local stack (scripts/local-stack/stack.sh env)");
        let load = crate::scenario::MenuLoad {
            items: 45,
            pods: 4,
            stores: 3,
            image_kib: [2.0, 150.0],
            wrong_hash_ratio: 0.1,
            ingredients: [2, 4],
            redshift_within_secs: 0,
            json_rounds: 1,
        };
        let run_id = crate::coldstart::new_run_id();
        let catalogue: Vec<(String, Expected)> =
            (0..load.items).map(|i| crate::menusync::item(7, &run_id, i, &load, "2026-12-07T00:00:00Z")).collect();
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let (sqs, ddb) = (aws_sdk_sqs::Client::new(&sdk), aws_sdk_dynamodb::Client::new(&sdk));
        let name = format!("loadgen-menu-floor-{run_id}");
        let queue = sqs.create_queue().queue_name(&name).send().await.expect("a queue").queue_url.expect("its URL");
        crate::throughput::create_scratch_table(&ddb, &name).await.expect("a table");
        let args = MenuThroughputArgs {
            scenario: "unused".into(),
            scale: 1.0,
            receivers: 3,
            timeout_secs: 60,
            targets: <crate::Targets as clap::FromArgMatches>::from_arg_matches(
                &<crate::Targets as clap::Args>::augment_args(clap::Command::new("t")).get_matches_from(["t"]),
            )
            .expect("default targets"),
        };
        let measured = measure(&sqs, &ddb, &queue, &name, &catalogue, load.pods, &args).await.expect("drained");
        assert_eq!(measured.items, 45);
        assert!(measured.bare_secs >= measured.send_secs, "{measured:?}");
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
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = ddb.scan().table_name(&name).set_exclusive_start_key(start).send().await.expect("a scan");
            items.extend(page.items.unwrap_or_default());
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        let key = |i: &HashMap<String, AttributeValue>| i["k"].as_s().expect("a string key").clone();
        let ledger = items.iter().filter(|i| key(i).starts_with("ev#")).count();
        let skus: BTreeSet<String> = items.iter().map(key).filter(|k| k.starts_with("sku#")).collect();
        let counted: u64 = items
            .iter()
            .filter(|i| key(i).starts_with("row#"))
            .map(|i| i["menu_items"].as_n().expect("a count").parse::<u64>().expect("a number"))
            .sum();
        assert_eq!(ledger, 45, "a ledger entry per message");
        assert_eq!(skus, catalogue.iter().map(|(_, e)| format!("sku#{}", e.sku)).collect(), "an item per sku");
        assert_eq!(counted, 45, "each item counted once in its store's row");
        let _ = sqs.delete_queue().queue_url(&queue).send().await;
        let _ = ddb.delete_table().table_name(&name).send().await;
    }

    #[test]
    fn a_pod_sends_at_most_ten_items_and_250_000_bytes_a_call() {
        let big = ("x".repeat(100_000), expected("s", "st"));
        let small = ("y".to_owned(), expected("s", "st"));
        let items: Vec<&(String, Expected)> = std::iter::repeat_n(&big, 3).chain(std::iter::repeat_n(&small, 12)).collect();
        let sizes: Vec<usize> = batches(&items).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 10, 3], "two images fill a call's bytes; then ten at most");
        for b in batches(&items) {
            assert!(b.iter().map(|(body, _)| body.len()).sum::<usize>() <= MAX_BATCH_BYTES);
        }
    }
}
