//! `cafe-menu` items and the menu counters of `cafe-aggregates`,
//! exactly-once in effect.
//!
//! Owns: the menu write protocol. Each chunk of upserts is one
//! TransactWriteItems holding:
//! - a ledger entry per event in `cafe-events` (`attribute_not_exists`): a
//!   redelivered event fails it, is dropped as a duplicate, and the rest is
//!   retried without it, so counters count each event once;
//! - at most one update per sku, conditional on the item's `sync_version`
//!   as read just before (optimistic concurrency; on conflict the sku is
//!   read again and the chunk retried);
//! - one `ADD` per touched aggregate row.
//!
//! Which sync wins: the newest by event time, then event id
//! (`sync_version` = zero-padded event-time nanoseconds, `/`, event id, so
//! string order is that order). An older sync arriving late (a standard
//! queue does not keep order) counts but does not overwrite (`stale`). A
//! newer sync with the stored `content_sha256` rewrites nothing but its
//! `sync_version` (`unchanged`), so a later stale sync still cannot win.
//! Must not: compute digests (the decide stage did).

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::builders::UpdateBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use pipeline::decided::DecidedMenuItem;
use pipeline::window::{Counters, WindowId};

use super::{Attempt, Copies, DynamoDbSink, EVENT_EXPIRES, LEDGER_TTL_SECS, num, s};
use crate::aws::AwsError;
use crate::internal_events::{InternalEvent, MenuItems, MenuOutcome, Sink, SinkGaveUp, SinkWriteFinished};
use crate::sinks::WriteOutcome;

/// What is stored for a sku.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Stored {
    /// None when the item has no string `sync_version` (written by another
    /// tool): older than any sync.
    sync_version: Option<String>,
    content_sha256: String,
}

/// What a chunk does to one sku.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ItemWrite {
    /// Rewrite the item from this record.
    Full(usize),
    /// Same content: advance `sync_version` only.
    VersionOnly(usize),
    /// Every record is older than what is stored.
    Nothing,
}

/// Decides the write for one sku from the stored state and the records of
/// this chunk (indices into `records`).
fn plan_item(records: &[DecidedMenuItem], live: &[usize], stored: Option<&Stored>) -> ItemWrite {
    let Some(&newest) = live.iter().max_by_key(|&&i| records[i].sync_version()) else {
        return ItemWrite::Nothing;
    };
    match stored {
        None => ItemWrite::Full(newest),
        Some(st) if st.sync_version.as_ref().is_some_and(|v| *v >= records[newest].sync_version()) => ItemWrite::Nothing,
        Some(st) if st.content_sha256 == records[newest].digest.content_sha256 => ItemWrite::VersionOnly(newest),
        Some(_) => ItemWrite::Full(newest),
    }
}

impl DynamoDbSink {
    /// Writes `records`, returning an outcome for each, in order.
    pub async fn write_menu(&self, records: &[DecidedMenuItem], applied_at: &str) -> Vec<WriteOutcome> {
        if records.is_empty() {
            return Vec::new();
        }
        let started = std::time::Instant::now();
        let mut outcomes = vec![WriteOutcome::Failed; records.len()];
        let copies = Copies::of(records, |r| r.event_id.as_str());
        for chunk in self.menu_chunks(records, &copies.firsts) {
            let result = self.write_menu_chunk(records, &chunk, applied_at).await;
            for (&i, o) in chunk.iter().zip(result) {
                outcomes[i] = o;
            }
        }
        copies.settle(&mut outcomes);
        SinkWriteFinished { sink: Sink::DynamoDbMenu, elapsed: started.elapsed() }.emit(&self.metrics);
        outcomes
    }

    /// Chunks whose ledger puts, one update per sku and distinct rows fit a
    /// transaction. Records of one sku stay in arrival order across chunks.
    fn menu_chunks(&self, records: &[DecidedMenuItem], indices: &[usize]) -> Vec<Vec<usize>> {
        let max = self.config.max_transaction_items;
        let mut out = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        let mut skus: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut rows: std::collections::HashSet<&WindowId> = std::collections::HashSet::new();
        for &i in indices {
            let r = &records[i];
            let extra = 1 + usize::from(!skus.contains(r.sku.as_str())) + usize::from(!rows.contains(&r.window));
            if !cur.is_empty() && cur.len() + skus.len() + rows.len() + extra > max {
                out.push(std::mem::take(&mut cur));
                skus.clear();
                rows.clear();
            }
            skus.insert(&r.sku);
            rows.insert(&r.window);
            cur.push(i);
        }
        if !cur.is_empty() {
            out.push(cur);
        }
        out
    }

    /// `sync_version` and `content_sha256` of `skus`, read consistently.
    /// A failed call, or keys left unprocessed (throttling), are asked for
    /// again after the backoff, within `attempt`'s budget (shared with the
    /// chunk's writes; a call that processed some keys does not spend it);
    /// `None` once it gave up (counted), or at once on a fatal error.
    async fn read_menu(&self, skus: &[&str], attempt: &mut u32, records: usize) -> Option<HashMap<String, Stored>> {
        let table = &self.config.menu_table;
        let what = "Reading menu items";
        let mut out = HashMap::new();
        for part in skus.chunks(100) {
            let mut keys: Vec<HashMap<String, AttributeValue>> =
                part.iter().map(|k| HashMap::from([("sku".to_owned(), s(*k))])).collect();
            while !keys.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys.clone()))
                    .consistent_read(true)
                    .projection_expression("sku, sync_version, content_sha256")
                    .build();
                let request = match request {
                    Ok(r) => r,
                    Err(e) => {
                        let error = AwsError::request("reading menu items", e).to_string();
                        SinkGaveUp { sink: Sink::DynamoDb, what, records, error: Some(&error) }.emit(&self.metrics);
                        return None;
                    }
                };
                let resp = match self.client.batch_get_item().request_items(table, request).send().await {
                    Ok(resp) => resp,
                    Err(e) => {
                        if self.is_fatal(&e, what, records)
                            || !self
                                .retry_later(attempt, what, records, &AwsError::sdk("reading menu items", &e).to_string())
                                .await
                        {
                            return None;
                        }
                        continue;
                    }
                };
                for item in resp.responses.as_ref().and_then(|r| r.get(table)).into_iter().flatten() {
                    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                    out.insert(
                        text("sku"),
                        Stored {
                            sync_version: item.get("sync_version").and_then(|v| v.as_s().ok()).cloned(),
                            content_sha256: text("content_sha256"),
                        },
                    );
                }
                let asked = keys.len();
                keys = resp.unprocessed_keys.as_ref().and_then(|u| u.get(table)).map(|k| k.keys().to_vec()).unwrap_or_default();
                // Unprocessed keys (throttling): only they are asked for
                // again. (Sent again at once, they were sent for as long as
                // the table left any, uncounted and deaf to a shutdown.)
                if !keys.is_empty() && !self.again_for_unprocessed(keys.len() < asked, attempt, what, records).await {
                    return None;
                }
            }
        }
        Some(out)
    }

    async fn write_menu_chunk(&self, records: &[DecidedMenuItem], chunk: &[usize], applied_at: &str) -> Vec<WriteOutcome> {
        let mut outcomes = vec![WriteOutcome::Failed; chunk.len()];
        let mut live: Vec<usize> = (0..chunk.len()).collect();
        let mut attempt = 0u32;
        let mut stored: Option<HashMap<String, Stored>> = None;
        while !live.is_empty() {
            if stored.is_none() {
                let mut skus: Vec<&str> = live.iter().map(|&p| records[chunk[p]].sku.as_str()).collect();
                skus.sort_unstable();
                skus.dedup();
                match self.read_menu(&skus, &mut attempt, live.len()).await {
                    Some(m) => stored = Some(m),
                    None => return outcomes,
                }
            }
            let current = stored.as_ref().cloned().unwrap_or_default();
            // Plan one write per sku, in a stable order.
            let mut by_sku: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for &p in &live {
                by_sku.entry(records[chunk[p]].sku.as_str()).or_default().push(chunk[p]);
            }
            let plans: Vec<(&str, ItemWrite)> =
                by_sku.iter().map(|(sku, idx)| (*sku, plan_item(records, idx, current.get(*sku)))).collect();
            let (items, update_skus) = self.menu_transaction(records, chunk, &live, &plans, &current, applied_at);
            match self.transact(items, "Menu write", live.len(), &mut attempt).await {
                Attempt::Committed => {
                    let count = |which: fn(&ItemWrite) -> bool| plans.iter().filter(|(_, p)| which(p)).count() as u64;
                    let written = count(|p| matches!(p, ItemWrite::Full(_)));
                    let unchanged = count(|p| matches!(p, ItemWrite::VersionOnly(_)));
                    let stale = live.len() as u64 - written - unchanged;
                    for (outcome, count) in
                        [(MenuOutcome::Written, written), (MenuOutcome::Unchanged, unchanged), (MenuOutcome::Stale, stale)]
                    {
                        MenuItems { outcome, count }.emit(&self.metrics);
                    }
                    for &p in &live {
                        outcomes[p] = WriteOutcome::Written;
                    }
                    return outcomes;
                }
                Attempt::Conditions(failed) => {
                    // Ledger puts come first, in `live` order: a failed one is a replay.
                    let dup: Vec<usize> = failed.iter().filter_map(|&k| live.get(k).copied()).collect();
                    if !dup.is_empty() {
                        for &p in &dup {
                            outcomes[p] = WriteOutcome::Duplicate;
                        }
                        live.retain(|p| !dup.contains(p));
                    } else if failed.iter().any(|&k| k >= live.len() && k < live.len() + update_skus.len()) {
                        // Then the item updates: another writer moved a sku;
                        // read again, after a backoff, within the retry budget.
                        stored = None;
                        if !self
                            .retry_later(&mut attempt, "Menu write", live.len(), "a menu item changed since it was read")
                            .await
                        {
                            return outcomes;
                        }
                    }
                }
                Attempt::Again => {}
                Attempt::GiveUp => return outcomes,
            }
        }
        outcomes
    }

    /// The transaction's items (ledger puts in `live` order, then item
    /// updates, then rows) and the skus updated, in item order.
    fn menu_transaction<'a>(
        &self,
        records: &[DecidedMenuItem],
        chunk: &[usize],
        live: &[usize],
        plans: &[(&'a str, ItemWrite)],
        stored: &HashMap<String, Stored>,
        applied_at: &str,
    ) -> (Vec<TransactWriteItem>, Vec<&'a str>) {
        let mut items = Vec::new();
        let expires = time::OffsetDateTime::now_utc().unix_timestamp() + LEDGER_TTL_SECS;
        let mut deltas: BTreeMap<&WindowId, Counters> = BTreeMap::new();
        for &p in live {
            let r = &records[chunk[p]];
            deltas.entry(&r.window).or_default().add(&r.counters);
            let put = Put::builder()
                .table_name(&self.config.events_table)
                .item("event_id", s(&r.event_id))
                .item("type", s("menu.item.upserted"))
                .item("key", s(&r.sku))
                .item(EVENT_EXPIRES, num(expires))
                .condition_expression("attribute_not_exists(event_id)")
                .build();
            if let Ok(put) = put {
                items.push(TransactWriteItem::builder().put(put).build());
            }
        }
        let mut updated = Vec::new();
        for (sku, plan) in plans {
            let update = match *plan {
                ItemWrite::Nothing => continue,
                ItemWrite::Full(i) => full_update(&self.config.menu_table, &records[i], stored.get(*sku), applied_at),
                ItemWrite::VersionOnly(i) => version_update(&self.config.menu_table, &records[i], stored.get(*sku)),
            };
            if let Some(update) = update {
                items.push(TransactWriteItem::builder().update(update).build());
                updated.push(*sku);
            }
        }
        for (row, counters) in deltas {
            if let Some(update) = self.aggregate_update(row, &counters) {
                items.push(TransactWriteItem::builder().update(update).build());
            }
        }
        (items, updated)
    }
}

/// The optimistic condition: the item is as read.
fn condition(stored: Option<&Stored>) -> (String, Option<AttributeValue>) {
    match stored {
        None => ("attribute_not_exists(sku)".into(), None),
        Some(Stored { sync_version: Some(v), .. }) => ("sync_version = :seen".into(), Some(s(v))),
        // Still without a string version (missing, or of another type).
        Some(Stored { sync_version: None, .. }) => {
            ("attribute_exists(sku) AND NOT attribute_type(sync_version, :seen)".into(), Some(s("S")))
        }
    }
}

fn full_update(table: &str, r: &DecidedMenuItem, stored: Option<&Stored>, applied_at: &str) -> Option<Update> {
    let (cond, seen) = condition(stored);
    let d = &r.digest;
    let update = Update::builder()
        .table_name(table)
        .key("sku", s(&r.sku))
        .update_expression(
            "SET #n = :n, category = :c, price_cents = :p, image_sha256 = :ih, image_ok = :ok, kcal = :k, \
             content_sha256 = :ch, updated_at = :u, #ts = :ts, sync_version = :v",
        )
        .condition_expression(cond)
        .expression_attribute_names("#n", "name")
        .expression_attribute_names("#ts", "ts")
        .expression_attribute_values(":n", s(&r.name))
        .expression_attribute_values(":c", s(&r.category))
        .expression_attribute_values(":p", num(r.price_cents))
        .expression_attribute_values(":ih", s(&d.image_sha256))
        .expression_attribute_values(":ok", AttributeValue::Bool(d.image_ok))
        .expression_attribute_values(":k", num(d.kcal))
        .expression_attribute_values(":ch", s(&d.content_sha256))
        .expression_attribute_values(":u", s(applied_at))
        .expression_attribute_values(":ts", s(&r.ts))
        .expression_attribute_values(":v", s(r.sync_version()));
    with_seen(update, seen).build().ok()
}

fn version_update(table: &str, r: &DecidedMenuItem, stored: Option<&Stored>) -> Option<Update> {
    let (cond, seen) = condition(stored);
    let update = Update::builder()
        .table_name(table)
        .key("sku", s(&r.sku))
        .update_expression("SET sync_version = :v")
        .condition_expression(cond)
        .expression_attribute_values(":v", s(r.sync_version()));
    with_seen(update, seen).build().ok()
}

fn with_seen(u: UpdateBuilder, seen: Option<AttributeValue>) -> UpdateBuilder {
    match seen {
        Some(v) => u.expression_attribute_values(":seen", v),
        None => u,
    }
}

#[cfg(test)]
mod tests {
    use pipeline::menu::MenuDigest;

    use super::*;

    fn rec(id: &str, sku: &str, secs: i64, content: &str) -> DecidedMenuItem {
        DecidedMenuItem {
            event_id: id.into(),
            sku: sku.into(),
            name: "Latte".into(),
            category: "coffee".into(),
            price_cents: 450,
            digest: MenuDigest {
                image_sha256: "i".into(),
                image_ok: true,
                image_bytes: 1,
                kcal: 1.0,
                content_sha256: content.into(),
            },
            ts: String::new(),
            event_time: time::OffsetDateTime::from_unix_timestamp(secs).expect("ts"),
            window: WindowId { store: "s".into(), window: "w".into() },
            counters: Counters { menu_items: 1, ..Counters::default() },
        }
    }

    /// Keys the table leaves unprocessed (throttling) are asked for again,
    /// alone, after the backoff, each time counted: a call that processed
    /// none spends the chunk's budget, and once it is spent the items go
    /// back to their source; one that processed some does not, so a
    /// throttled table that makes progress is read to the end. Before,
    /// they were asked for again at once, uncounted, for as long as the
    /// table left any.
    #[tokio::test]
    async fn keys_left_unprocessed_are_read_again_after_the_backoff_within_the_budget() {
        use std::sync::atomic::Ordering::Relaxed;
        use std::time::Duration;

        use super::super::{DynamoDbSinkConfig, sink_requests, unprocessed_reads_sink};
        let quick = DynamoDbSinkConfig { max_retries: 2, base_backoff_ms: 1, max_backoff_ms: 2, ..Default::default() };
        let (sink, calls) = unprocessed_reads_sink(quick, 0);
        let records = [rec("a", "latte", 100, "x"), rec("b", "mocha", 100, "y")];
        let written = tokio::time::timeout(Duration::from_secs(10), sink.write_menu(&records, "now"))
            .await
            .expect("gives up, not asks for ever");
        assert_eq!(written, [WriteOutcome::Failed, WriteOutcome::Failed]);
        assert_eq!(calls.load(Relaxed), 3, "the first read and two retries");
        assert_eq!((sink_requests(&sink.metrics, "retry"), sink_requests(&sink.metrics, "failed")), (2, 1));

        // One key processed a call: read to the end with no budget at all.
        let none = DynamoDbSinkConfig { max_retries: 0, base_backoff_ms: 1, max_backoff_ms: 2, ..Default::default() };
        let (sink, calls) = unprocessed_reads_sink(none, 1);
        let mut attempt = 0;
        let read = tokio::time::timeout(Duration::from_secs(10), sink.read_menu(&["latte", "mocha", "tea"], &mut attempt, 3))
            .await
            .expect("ends");
        assert_eq!(read.map(|found| found.len()), Some(0), "read, none of them there");
        assert_eq!((calls.load(Relaxed), attempt), (3, 0));
        assert_eq!((sink_requests(&sink.metrics, "retry"), sink_requests(&sink.metrics, "failed")), (2, 0));
    }

    #[test]
    fn the_newest_sync_wins_and_same_content_rewrites_nothing() {
        let records = [rec("a", "latte", 100, "x"), rec("b", "latte", 200, "y"), rec("c", "latte", 150, "z")];
        assert!(records[1].sync_version() > records[2].sync_version());
        assert_eq!(plan_item(&records, &[0, 1, 2], None), ItemWrite::Full(1));
        let stored = Stored { sync_version: Some(records[0].sync_version()), content_sha256: "y".into() };
        assert_eq!(plan_item(&records, &[0, 1, 2], Some(&stored)), ItemWrite::VersionOnly(1));
        let newer = Stored { sync_version: Some(records[1].sync_version()), content_sha256: "q".into() };
        assert_eq!(plan_item(&records, &[0, 2], Some(&newer)), ItemWrite::Nothing, "late older syncs never win");
        // An item another tool wrote without a string version is older than any sync.
        let foreign = Stored { sync_version: None, content_sha256: "q".into() };
        assert_eq!(plan_item(&records, &[0], Some(&foreign)), ItemWrite::Full(0));
        assert_eq!(condition(Some(&foreign)).0, "attribute_exists(sku) AND NOT attribute_type(sync_version, :seen)");
        // Same event time: the event id breaks the tie.
        let tie = [rec("a", "k", 5, "x"), rec("b", "k", 5, "y")];
        assert_eq!(plan_item(&tie, &[1, 0], None), ItemWrite::Full(1));
    }

    #[test]
    fn sync_versions_order_by_time_across_digit_counts() {
        let early = rec("z", "k", 9, "x");
        let late = rec("a", "k", 1_000_000_000, "x");
        assert!(early.sync_version() < late.sync_version());
    }
}
