//! End-of-run verification: nothing lost, nothing counted twice.
//!
//! Owns: reading the daemon's outputs back (DynamoDB items and aggregate
//! rows) and comparing them with what the loadgen sent. Must not: write
//! anything.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use pipeline::window::Counters;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What the daemon wrote for one payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// Event time (the send time).
    pub ts: OffsetDateTime,
    /// When the daemon decided.
    pub decided_at: OffsetDateTime,
    /// approve | review | decline.
    pub decision: String,
    /// Amount as written.
    pub amount_cents: i64,
}

/// One aggregate row: its counters (in [`Counters::NAMES`] order) and its `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateRow {
    /// Absolute counters.
    pub counters: Counters,
    /// How many changes the row has had.
    pub version: i64,
}

/// Every aggregate row of `stores`, read consistently: (store, window) -> row.
pub async fn aggregate_rows(
    ddb: &Client,
    table: &str,
    stores: &[String],
) -> anyhow::Result<std::collections::BTreeMap<(String, String), AggregateRow>> {
    let mut out = std::collections::BTreeMap::new();
    for store in stores {
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let resp = ddb
                .query()
                .table_name(table)
                .consistent_read(true)
                .key_condition_expression("#s = :s")
                .expression_attribute_names("#s", "store")
                .expression_attribute_values(":s", AttributeValue::S(store.clone()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("querying {table}: {e}"))?;
            for item in resp.items() {
                let n = |k: &str| item.get(k).and_then(|a| a.as_n().ok()).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                let mut values = [0i64; 11];
                for (v, name) in values.iter_mut().zip(Counters::NAMES) {
                    *v = n(name);
                }
                let window = item.get("window").and_then(|w| w.as_s().ok()).cloned().unwrap_or_default();
                out.insert(
                    (store.clone(), window),
                    AggregateRow { counters: Counters::from_values(values), version: n("version") },
                );
            }
            match resp.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Sums of the aggregate rows of `stores`.
pub async fn aggregate_sums(ddb: &Client, table: &str, stores: &[String]) -> anyhow::Result<Counters> {
    let mut total = Counters::default();
    for row in aggregate_rows(ddb, table, stores).await?.values() {
        total.add(&row.counters);
    }
    Ok(total)
}

/// Waits until the aggregate rows count `expected` payments, or progress
/// stalls for `stall`, or `timeout` passes. Returns the last sums seen.
pub async fn wait_for_payments(
    ddb: &Client,
    table: &str,
    stores: &[String],
    expected: i64,
    stall: Duration,
    timeout: Duration,
) -> anyhow::Result<Counters> {
    wait_for_counter(ddb, table, stores, |c| c.payments, expected, stall, timeout).await
}

/// Waits until `counter` of the summed aggregate rows reaches `expected`,
/// or progress stalls for `stall`, or `timeout` passes. Returns the last
/// sums seen.
pub async fn wait_for_counter(
    ddb: &Client,
    table: &str,
    stores: &[String],
    counter: fn(&Counters) -> i64,
    expected: i64,
    stall: Duration,
    timeout: Duration,
) -> anyhow::Result<Counters> {
    let started = Instant::now();
    let mut last = -1;
    let mut last_change = Instant::now();
    loop {
        let sums = aggregate_sums(ddb, table, stores).await?;
        crate::progress::run().stored(counter(&sums).max(0) as u64);
        if counter(&sums) >= expected {
            return Ok(sums);
        }
        if counter(&sums) != last {
            last = counter(&sums);
            last_change = Instant::now();
        }
        if last_change.elapsed() > stall || started.elapsed() > timeout {
            return Ok(sums);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads the items of `table` whose hash key `key` is one of `ids` (100
/// keys per BatchGetItem, unprocessed keys retried); absent ids are absent.
pub async fn batch_get(
    ddb: &Client,
    table: &str,
    key: &str,
    ids: &[String],
) -> anyhow::Result<Vec<HashMap<String, AttributeValue>>> {
    batch_get_projected(ddb, table, key, ids, None).await
}

/// As [`batch_get`], each item cut to `projection` (a
/// `ProjectionExpression`) when one is given.
pub async fn batch_get_projected(
    ddb: &Client,
    table: &str,
    key: &str,
    ids: &[String],
    projection: Option<&str>,
) -> anyhow::Result<Vec<HashMap<String, AttributeValue>>> {
    let mut found = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(100) {
        let keys: Vec<HashMap<String, AttributeValue>> =
            chunk.iter().map(|id| HashMap::from([(key.to_owned(), AttributeValue::S(id.clone()))])).collect();
        let mut request = Some(
            KeysAndAttributes::builder().set_keys(Some(keys)).set_projection_expression(projection.map(str::to_owned)).build()?,
        );
        let mut attempt = 0;
        while let Some(req) = request.take() {
            let out = ddb
                .batch_get_item()
                .request_items(table, req)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("reading {table}: {e}"))?;
            found.extend(out.responses.unwrap_or_default().remove(table).unwrap_or_default());
            request = out.unprocessed_keys.and_then(|mut u| u.remove(table));
            if request.is_some() {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * attempt.min(20))).await;
            }
        }
    }
    Ok(found)
}

/// Reads the `cafe-payments` items of `ids`.
pub async fn read_payments(ddb: &Client, table: &str, ids: &[String]) -> anyhow::Result<HashMap<String, Decided>> {
    let mut found = HashMap::new();
    for item in batch_get(ddb, table, "payment_id", ids).await? {
        let text = |k: &str| item.get(k).and_then(|a| a.as_s().ok()).cloned().unwrap_or_default();
        let parse = |k: &str| OffsetDateTime::parse(&text(k), &Rfc3339).ok();
        if let (Some(ts), Some(decided_at)) = (parse("ts"), parse("decided_at")) {
            let amount_cents = item.get("amount_cents").and_then(|a| a.as_n().ok()).and_then(|n| n.parse().ok()).unwrap_or(0);
            found.insert(text("payment_id"), Decided { ts, decided_at, decision: text("decision"), amount_cents });
        }
    }
    Ok(found)
}

/// The p-th percentile (0..100) of sorted `values`, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
