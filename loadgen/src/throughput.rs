//! `cafe-loadgen orders-throughput`: how many orders per second one daemon
//! sustains, next to what a bare GetRecords reader drains from the same
//! stream in the same run.
//!
//! Owns: the measurement. It puts a backlog of orders (every event of each
//! order) on an idle stream, reads the whole stream back with a bare reader
//! (GetRecords on every shard at once, no processing) and times it, then
//! runs the start command (which starts the daemon on a fresh lease table)
//! and times the daemon until every order's history is complete in
//! `cafe-orders`; then times a bare DynamoDB writer making the daemon's
//! writes, alone and with the bare reader at once (what a client making
//! the daemon's reads and writes without processing takes). Must not: be
//! a correctness check (the scenarios are).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use futures::StreamExt;
use futures::future::BoxFuture;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{info, warn};

use crate::Targets;
use crate::morningrush::{PlannedOrder, plan, read_orders};
use crate::scenario::{OrdersLoad, Stage};

/// `orders-throughput` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct ThroughputArgs {
    /// Orders in the backlog (each 3 or 5 events).
    #[arg(long, default_value_t = 2000)]
    pub orders: usize,
    /// Share of corporate bulk orders.
    #[arg(long, default_value_t = 0.1)]
    pub bulk_ratio: f64,
    /// Shell command that starts the daemon once the backlog is in place.
    #[arg(long)]
    pub start_command: String,
    /// Give up after this many seconds of daemon time.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub targets: Targets,
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Orders in the backlog.
    pub orders: usize,
    /// Records (events) in the backlog.
    pub records: usize,
    /// Seconds the bare reader took to read every record.
    pub bare_read_secs: f64,
    /// Records per second the bare reader drained.
    pub bare_records_per_sec: f64,
    /// Seconds from the start command to the last order complete.
    pub daemon_secs: f64,
    /// Of those, the start: from the start command to the first event
    /// applied (process start, leases taken, the first read).
    pub daemon_start_secs: f64,
    /// The drain: from the first event applied (its `applied_at`) to the
    /// last order seen complete. The rates below are over this span, as
    /// the bare clients' are over theirs (they have no start to pay).
    pub daemon_drain_secs: f64,
    /// The daemon's writes' span: from its first batch's writes begun to
    /// its last's (the earliest and the latest `applied_at`, stamped as a
    /// batch's writes begin). The drain less the last batch's writes and
    /// the observer's lag: a bound from below.
    pub daemon_writes_secs: f64,
    /// The daemon's own clock of its drain, as the bare writers' own clocks
    /// run (from a first write begun to a last write durable): from its
    /// earliest `applied_at` to its DynamoDB sink's last write answered
    /// (`cafe_sink_last_write_timestamp_seconds{sink="dynamodb"}` on its
    /// admin endpoint, read once every order was seen complete), checked to
    /// lie between its latest `applied_at` and the moment it was read.
    /// None when there is no such figure: `daemon_own_clock_refused` says
    /// why.
    pub daemon_own_secs: Option<f64>,
    /// Why there is no figure by the daemon's own clock (no admin endpoint
    /// answered, a daemon without the stamp, a stamp outside its bounds).
    pub daemon_own_clock_refused: Option<String>,
    /// Records per second over the daemon's own clock.
    pub daemon_own_records_per_sec: Option<f64>,
    /// Over the daemon's own clock: daemon records/s over bare writer items/s.
    pub own_ratio_to_writes: Option<f64>,
    /// Over the daemon's own clock: daemon records/s over the bare reader
    /// and writer's at once.
    pub own_ratio_to_reads_writes: Option<f64>,
    /// Orders per second the daemon sustained (over the drain).
    pub daemon_orders_per_sec: f64,
    /// Records per second the daemon sustained (over the drain).
    pub daemon_records_per_sec: f64,
    /// daemon records/s over bare records/s.
    pub ratio: f64,
    /// Seconds a bare writer took to make the orders path's DynamoDB writes
    /// for every record, without the daemon (the sink's floor).
    pub bare_write_secs: f64,
    /// Items per second the bare writer reached.
    pub bare_write_items_per_sec: f64,
    /// daemon records/s over bare writer items/s.
    pub ratio_to_writes: f64,
    /// Seconds the bare reader and the bare writer took run at once (a bare
    /// client making the daemon's reads and writes without processing,
    /// neither waiting on the other), until both had ended.
    pub bare_read_write_secs: f64,
    /// Records per second they reached together.
    pub bare_read_write_records_per_sec: f64,
    /// daemon records/s over theirs.
    pub ratio_to_reads_writes: f64,
}

/// The earliest and the latest of `times`; None when there are none.
fn applied_span(times: impl Iterator<Item = OffsetDateTime>) -> Option<(OffsetDateTime, OffsetDateTime)> {
    times.fold(None, |span, t| match span {
        None => Some((t, t)),
        Some((first, last)) => Some((first.min(t), last.max(t))),
    })
}

/// Unix seconds of `t`.
fn unix_secs(t: OffsetDateTime) -> f64 {
    t.unix_timestamp_nanos() as f64 / 1e9
}

/// The daemon's own clock of its drain: from `first_applied` (its first
/// batch's writes begun) to `last_write` (Unix seconds: its sink's last
/// write answered, the stamp as read at `read_at`, once every order was
/// seen complete). The stamp must lie between `last_applied` (the last
/// batch's writes began before they were answered) and `read_at` (it was
/// set before it was read; the same host's clock): outside, it is not the
/// end of these writes (a clock that moved, a daemon on another host) and
/// no figure is made of it.
fn own_clock(
    first_applied: OffsetDateTime,
    last_applied: OffsetDateTime,
    last_write: f64,
    read_at: OffsetDateTime,
) -> anyhow::Result<f64> {
    let (begun, read) = (unix_secs(last_applied), unix_secs(read_at));
    anyhow::ensure!(
        (begun..=read).contains(&last_write),
        "the daemon's last DynamoDB write is stamped at {last_write:.3}, outside its last batch's writes begun \
         ({begun:.3}) and the stamp read ({read:.3})"
    );
    Ok(last_write - unix_secs(first_applied))
}

/// Orders per transaction of the bare writer: with their row, 100 items.
const BARE_ORDERS_PER_TRANSACTION: usize = 99;

/// The DynamoDB work of the orders path without the daemon: for every
/// record, the item write the daemon makes, with the daemon's attributes
/// (`daemon/src/sinks/dynamodb/order_items.rs`): a new order is a put of
/// the order's attributes and its first history entry, conditional on the
/// item not existing; a status is an update of status and `updated_at` and a
/// `list_append` of its history entry, conditional on the history length.
/// Each history entry carries what the daemon's do: status, event time,
/// event id, `applied_at` and the record's shard position. The placed wave
/// adds its aggregate row's counters (orders, items, revenue and the
/// row's version); a status other than a cancel adds none, as in the
/// daemon. 99 orders and their row per TransactWriteItems (100 items, the
/// most one takes, as the daemon packs them: on the local stack larger
/// transactions write more items per second), 16 at once, in waves (every
/// order's k-th event before any (k+1)-th). Scratch table; returns the
/// seconds taken: with `beside` (the bare reader), until both the writes
/// and it have ended, the two run at once.
async fn bare_write(
    ddb: &aws_sdk_dynamodb::Client,
    scratch: &str,
    orders: &[PlannedOrder],
    beside: Option<BoxFuture<'_, anyhow::Result<(usize, f64)>>>,
) -> anyhow::Result<f64> {
    create_scratch_table(ddb, scratch).await?;
    // The values the daemon writes, of their lengths: an RFC 3339 time with
    // nanoseconds, and a 56-digit sequence number on a named stream's shard.
    let applied_at = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let started = Instant::now();
    let waves = orders.iter().map(|o| o.statuses.len()).max().unwrap_or(0);
    let writes = async {
        for k in 0..waves {
            let wave: Vec<&PlannedOrder> = orders.iter().filter(|o| k < o.statuses.len()).collect();
            let results: Vec<anyhow::Result<()>> = futures::stream::iter(wave.chunks(BARE_ORDERS_PER_TRANSACTION).enumerate())
                .map(|(c, chunk)| {
                    let applied_at = &applied_at;
                    async move {
                        let items = bare_items(scratch, k, c, chunk, applied_at)?;
                        ddb.transact_write_items().set_transact_items(Some(items)).send().await?;
                        Ok(())
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        }
        anyhow::Ok(())
    };
    let done = match beside {
        Some(read) => match tokio::join!(writes, read) {
            (Ok(()), Ok(_)) => Ok(()),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        None => writes.await,
    };
    let secs = started.elapsed().as_secs_f64();
    let _ = ddb.delete_table().table_name(scratch).send().await;
    done.map(|()| secs)
}

/// One bare transaction's items: wave `k`'s event of each order of
/// `chunk` (the wave's `c`th), then the counters the daemon adds to the
/// chunk's aggregate row for that wave, if any.
fn bare_items(
    scratch: &str,
    k: usize,
    c: usize,
    chunk: &[&PlannedOrder],
    applied_at: &str,
) -> anyhow::Result<Vec<aws_sdk_dynamodb::types::TransactWriteItem>> {
    use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: u64| AttributeValue::N(v.to_string());
    let entry = |o: &PlannedOrder, k: usize| {
        AttributeValue::L(vec![AttributeValue::M(HashMap::from([
            ("status".to_owned(), s(o.statuses[k])),
            ("ts".to_owned(), s(applied_at)),
            ("event_id".to_owned(), s(&o.event_id(k))),
            ("applied_at".to_owned(), s(applied_at)),
            ("pos".to_owned(), s(&format!("cafe-orders:shardId-000000000003/4965{:052}", k))),
        ]))])
    };
    let mut items = chunk
        .iter()
        .map(|o| {
            let item = if k == 0 {
                let put = Put::builder()
                    .table_name(scratch)
                    .set_item(Some(HashMap::from([
                        ("k".to_owned(), s(&o.id)),
                        ("store".to_owned(), s(&o.store)),
                        ("status".to_owned(), s("placed")),
                        ("total_cents".to_owned(), n(o.total_cents())),
                        ("item_count".to_owned(), n(o.item_count())),
                        ("history".to_owned(), entry(o, 0)),
                        ("updated_at".to_owned(), s(applied_at)),
                        ("customer_id".to_owned(), s(&o.customer)),
                        ("channel".to_owned(), s(if o.bulk { "corporate" } else { "app" })),
                    ])))
                    .condition_expression("attribute_not_exists(k)")
                    .build()?;
                TransactWriteItem::builder().put(put).build()
            } else {
                let update = Update::builder()
                    .table_name(scratch)
                    .key("k", s(&o.id))
                    .update_expression("SET #st = :st, updated_at = :u, history = list_append(history, :h)")
                    .condition_expression("size(history) = :n")
                    .expression_attribute_names("#st", "status")
                    .set_expression_attribute_values(Some(HashMap::from([
                        (":st".to_owned(), s(o.statuses[k])),
                        (":u".to_owned(), s(applied_at)),
                        (":h".to_owned(), entry(o, k)),
                        (":n".to_owned(), n(k as u64)),
                    ])))
                    .build()?;
                TransactWriteItem::builder().update(update).build()
            };
            Ok(item)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cancels = chunk.iter().filter(|o| o.statuses[k] == "cancelled").count() as u64;
    let counters: Vec<(&str, u64)> = if k == 0 {
        vec![
            ("orders", chunk.len() as u64),
            ("order_items", chunk.iter().map(|o| o.item_count()).sum()),
            ("revenue_cents", chunk.iter().map(|o| o.total_cents()).sum()),
        ]
    } else if cancels > 0 {
        vec![("orders_cancelled", cancels)]
    } else {
        Vec::new()
    };
    if !counters.is_empty() {
        let mut expr: Vec<String> = Vec::new();
        let mut update = Update::builder().table_name(scratch).key("k", s(&format!("row-{k}-{c}")));
        for (i, (name, value)) in counters.iter().enumerate() {
            expr.push(format!("#c{i} :c{i}"));
            update = update
                .expression_attribute_names(format!("#c{i}"), *name)
                .expression_attribute_values(format!(":c{i}"), n(*value));
        }
        let update = update
            .update_expression(format!("ADD {}, #ver :one", expr.join(", ")))
            .expression_attribute_names("#ver", "version")
            .expression_attribute_values(":one", n(1))
            .build()?;
        items.push(TransactWriteItem::builder().update(update).build());
    }
    Ok(items)
}

/// Waits until every order's history in `table` has all its events.
///
/// Reading every order on each poll would load the DynamoDB the daemon is
/// timed writing to (3,000 items and their histories four times a second:
/// on the local stack a share of the emulator that the bare writer, timed
/// alone, does not pay). So each poll reads a sample, the incomplete
/// orders planned last (their last events were put last, so they complete
/// last), and every incomplete order is read only once the sample is
/// complete; an order seen complete is not read again. Each read asks only
/// for the history entry that tells ([`complete_of`]): the reads that end
/// the timed span cost the emulator, and the loadgen beside it, little.
async fn wait_complete(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    orders: &[PlannedOrder],
    want: &HashMap<String, usize>,
    deadline: Instant,
) -> anyhow::Result<()> {
    const SAMPLE: usize = 100;
    let mut incomplete: Vec<String> = orders.iter().map(|o| o.id.clone()).collect();
    while !incomplete.is_empty() {
        let sample: Vec<String> = incomplete.iter().rev().take(SAMPLE).cloned().collect();
        if complete_of(ddb, table, &sample, want).await?.len() == sample.len() {
            let complete = complete_of(ddb, table, &incomplete, want).await?;
            incomplete.retain(|id| !complete.contains(id));
            if incomplete.is_empty() {
                break;
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {} orders still incomplete at the deadline",
            incomplete.len(),
            orders.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// BatchGetItems of [`complete_of`] in flight at once.
const READS_AT_ONCE: usize = 4;

/// Of `ids`, the orders whose history in `table` holds at least their
/// `want`ed number of entries. An order with n wanted is read cut to its
/// id and `history[n-1]` (present only when the history has n entries), so
/// a read carries one entry of each order instead of its whole item: a
/// tenth of the bytes to serialise and parse.
async fn complete_of(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    ids: &[String],
    want: &HashMap<String, usize>,
) -> anyhow::Result<HashSet<String>> {
    let mut by_len: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for id in ids {
        by_len.entry(want.get(id).copied().unwrap_or(0)).or_default().push(id.clone());
    }
    let reads = by_len.iter().flat_map(|(&n, ids)| ids.chunks(100).map(move |chunk| (n, chunk)));
    let results: Vec<anyhow::Result<Vec<String>>> = futures::stream::iter(reads)
        .map(|(n, chunk)| async move {
            let Some(last) = n.checked_sub(1) else {
                return Ok(chunk.to_vec());
            };
            let projection = format!("order_id, history[{last}]");
            let items = crate::verify::batch_get_projected(ddb, table, "order_id", chunk, Some(&projection)).await?;
            Ok(items
                .into_iter()
                .filter(|item| item.get("history").and_then(|h| h.as_l().ok()).is_some_and(|l| !l.is_empty()))
                .filter_map(|item| item.get("order_id").and_then(|v| v.as_s().ok()).cloned())
                .collect())
        })
        .buffer_unordered(READS_AT_ONCE)
        .collect()
        .await;
    let mut complete = HashSet::with_capacity(ids.len());
    for r in results {
        complete.extend(r?);
    }
    Ok(complete)
}

/// Creates a scratch table keyed by the string `k` (on demand), for a
/// bare client's writes.
pub(crate) async fn create_scratch_table(ddb: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<()> {
    create_table_keyed(ddb, table, "k").await
}

/// Creates `table` (on demand), keyed by the string attribute `key`, and
/// waits until it is ACTIVE. DynamoDB creates a table CREATING and refuses
/// its reads and writes (ResourceNotFoundException) until it is ACTIVE,
/// seconds later; the local stack's dynoxide makes it ACTIVE at once
/// (docs/local-stack.md), so a bare client that wrote at once worked here
/// and would fail on AWS.
async fn create_table_keyed(ddb: &aws_sdk_dynamodb::Client, table: &str, key: &str) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    ddb.create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(AttributeDefinition::builder().attribute_name(key).attribute_type(ScalarAttributeType::S).build()?)
        .key_schema(KeySchemaElement::builder().attribute_name(key).key_type(KeyType::Hash).build()?)
        .send()
        .await
        .with_context(|| format!("creating the table {table}"))?;
    wait_table_active(ddb, table, TABLE_ACTIVE_WITHIN).await
}

/// How long a new table may stay CREATING (on AWS, seconds).
const TABLE_ACTIVE_WITHIN: Duration = Duration::from_secs(120);

/// Asks DynamoDB for `table`'s status until it is ACTIVE: at once, then
/// after 100 ms, the pause doubling to 2 s; an error once `within` has
/// passed. DescribeTable is eventually consistent: just after CreateTable
/// it may not know the table yet (ResourceNotFoundException), which counts
/// as not ACTIVE yet, as the SDK's own waiter has it.
async fn wait_table_active(ddb: &aws_sdk_dynamodb::Client, table: &str, within: Duration) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::TableStatus;
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(100);
    loop {
        let status = match ddb.describe_table().table_name(table).send().await {
            Ok(out) => out.table().and_then(|t| t.table_status()).map(|s| s.as_str().to_owned()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => None,
            Err(e) => return Err(e).with_context(|| format!("describing the table {table}")),
        };
        if status.as_deref() == Some(TableStatus::Active.as_str()) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() + pause <= deadline,
            "the table {table} is not ACTIVE after {within:?} (status {})",
            status.as_deref().unwrap_or("not found")
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// A backlog of `orders` orders (each 3 or 5 events), `bulk_ratio` of them
/// corporate bulk orders, under a fresh run id.
pub(crate) fn plan_backlog(seed: u64, orders: usize, bulk_ratio: f64) -> Vec<PlannedOrder> {
    let load = OrdersLoad {
        producers: 1,
        stores: 20,
        customers: 5000,
        cancel_ratio: 0.08,
        status_gap_ms: 0,
        items: [1, 6],
        bulk_items: [24, 300],
    };
    let stage = Stage { name: "backlog".into(), secs: 1.0, rate_start: orders as f64, rate_end: orders as f64, bulk_ratio };
    plan(seed, &crate::coldstart::new_run_id(), &load, &[stage], 1.0, 1.0)
}

pub(crate) async fn put_backlog(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    orders: &[PlannedOrder],
) -> anyhow::Result<usize> {
    let ts = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let waves = orders.iter().map(|o| o.statuses.len()).max().unwrap_or(0);
    let mut total = 0;
    // Wave k holds every order's k-th event: an order's events go out in
    // order, never two in one call.
    for k in 0..waves {
        let wave: Vec<(String, String)> =
            orders.iter().filter(|o| k < o.statuses.len()).map(|o| (o.id.clone(), o.event(k, &ts))).collect();
        total += wave.len();
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(wave.chunks(500).map(|c| c.to_vec()))
            .map(|chunk| async move {
                let mut pending = chunk;
                for _ in 0..20 {
                    let entries = pending
                        .iter()
                        .map(|(k, d)| PutRecordsRequestEntry::builder().partition_key(k).data(Blob::new(d.as_bytes())).build())
                        .collect::<Result<Vec<_>, _>>()?;
                    let out = kinesis.put_records().stream_name(stream).set_records(Some(entries)).send().await?;
                    pending = pending
                        .into_iter()
                        .zip(out.records())
                        .filter(|(_, r)| r.error_code().is_some())
                        .map(|(p, _)| p)
                        .collect();
                    if pending.is_empty() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                anyhow::bail!("PutRecords kept failing")
            })
            .buffer_unordered(8)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    }
    Ok(total)
}

/// Reads every shard from TRIM_HORIZON to its tip, all shards at once, at
/// the paced rate a consumer may use (one GetRecords per 200 ms per shard).
async fn bare_read(kinesis: &aws_sdk_kinesis::Client, stream: &str, want: usize) -> anyhow::Result<(usize, f64)> {
    let shards = kinesis.list_shards().stream_name(stream).send().await?;
    let ids: Vec<String> = shards.shards().iter().map(|s| s.shard_id().to_owned()).collect();
    let started = Instant::now();
    let counts: Vec<anyhow::Result<usize>> = futures::stream::iter(ids)
        .map(|shard| async move {
            let mut it = kinesis
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator;
            let mut n = 0;
            let mut next = Instant::now();
            while let Some(i) = it {
                tokio::time::sleep_until(next.into()).await;
                next = Instant::now() + Duration::from_millis(200);
                let out = kinesis.get_records().shard_iterator(i).limit(10_000).send().await?;
                n += out.records().len();
                if out.records().is_empty() && out.millis_behind_latest.unwrap_or(0) == 0 {
                    break;
                }
                it = out.next_shard_iterator;
            }
            Ok(n)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let n = counts.into_iter().sum::<anyhow::Result<usize>>()?;
    anyhow::ensure!(n >= want, "the bare reader found {n} records, {want} were put");
    Ok((n, started.elapsed().as_secs_f64()))
}

/// Runs the measurement.
pub async fn run(args: &ThroughputArgs, seed: u64) -> anyhow::Result<Throughput> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let stream = &args.targets.orders_stream;
    let run_id = crate::coldstart::new_run_id();
    let orders = plan_backlog(seed, args.orders, args.bulk_ratio);
    info!(orders = orders.len(), "Putting the backlog");
    let records = put_backlog(&kinesis, stream, &orders).await.context("putting the backlog")?;
    info!(records, "Backlog in place; reading it with a bare GetRecords reader");
    let (_, bare_read_secs) = bare_read(&kinesis, stream, records).await?;

    info!(command = %args.start_command, "Starting the daemon");
    let started = Instant::now();
    let started_wall = OffsetDateTime::now_utc();
    let status = tokio::process::Command::new("sh").arg("-c").arg(&args.start_command).status().await?;
    anyhow::ensure!(status.success(), "start command failed: {status}");
    let want: HashMap<String, usize> = orders.iter().map(|o| (o.id.clone(), o.statuses.len())).collect();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    wait_complete(&ddb, &args.targets.orders_table, &orders, &want, deadline).await?;
    let daemon_secs = started.elapsed().as_secs_f64();
    // The daemon's last write, by its own clock: read now, before the bare
    // writers run (the daemon, idle, writes nothing more).
    let series = format!("{}{{sink=\"dynamodb\"}}", pipeline::metric_names::SINK_LAST_WRITE);
    let last_write =
        crate::ceiling::daemon_metrics(&args.targets.daemon_admin).await.map(|text| crate::ceiling::metric(&text, &series));
    let read_at = OffsetDateTime::now_utc();
    // When the daemon's first batch's writes began and its last's: the
    // earliest and the latest `applied_at`.
    let ids: Vec<String> = want.keys().cloned().collect();
    let (first_applied, last_applied) = applied_span(
        read_orders(&ddb, &args.targets.orders_table, &ids)
            .await?
            .values()
            .flat_map(|h| h.iter().filter_map(|(_, _, _, applied)| *applied)),
    )
    .context("no applied_at in the orders' histories")?;
    let daemon_start_secs = ((first_applied - started_wall).as_seconds_f64()).clamp(0.0, daemon_secs);
    let daemon_drain_secs = (daemon_secs - daemon_start_secs).max(1e-3);
    let daemon_writes_secs = (last_applied - first_applied).as_seconds_f64();
    // No figure by the daemon's own clock is no reason to lose the run's
    // others: the reason is kept with them.
    let own = match last_write {
        Ok(Some(at)) => own_clock(first_applied, last_applied, at, read_at).map(|secs| secs.max(1e-3)),
        Ok(None) => Err(anyhow::anyhow!("the daemon exports no {series}")),
        Err(e) => Err(e),
    };
    let (daemon_own_secs, daemon_own_clock_refused) = match own {
        Ok(secs) => (Some(secs), None),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "No figure by the daemon's own clock");
            (None, Some(format!("{e:#}")))
        }
    };
    info!(daemon_secs, "Daemon done; timing a bare DynamoDB writer for the same number of items");
    let scratch = format!("{}-floor-{run_id}", args.targets.orders_table);
    let bare_write_secs = bare_write(&ddb, &scratch, &orders, None).await?;
    info!(bare_write_secs, "Timing the bare reader and writer at once");
    let reads = Box::pin(bare_read(&kinesis, stream, records));
    let bare_read_write_secs = bare_write(&ddb, &format!("{scratch}-rw"), &orders, Some(reads)).await?;
    let bare = records as f64 / bare_read_secs;
    let daemon = records as f64 / daemon_drain_secs;
    let writes = records as f64 / bare_write_secs;
    let reads_writes = records as f64 / bare_read_write_secs;
    let own = daemon_own_secs.map(|secs| records as f64 / secs);
    Ok(Throughput {
        orders: orders.len(),
        records,
        bare_read_secs,
        bare_records_per_sec: bare,
        daemon_secs,
        daemon_start_secs,
        daemon_drain_secs,
        daemon_writes_secs,
        daemon_own_secs,
        daemon_own_clock_refused,
        daemon_own_records_per_sec: own,
        own_ratio_to_writes: own.map(|r| r / writes),
        own_ratio_to_reads_writes: own.map(|r| r / reads_writes),
        daemon_orders_per_sec: orders.len() as f64 / daemon_drain_secs,
        daemon_records_per_sec: daemon,
        ratio: daemon / bare,
        bare_write_secs,
        bare_write_items_per_sec: writes,
        ratio_to_writes: daemon / writes,
        bare_read_write_secs,
        bare_read_write_records_per_sec: reads_writes,
        ratio_to_reads_writes: daemon / reads_writes,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use aws_sdk_dynamodb::types::AttributeValue;

    use super::*;

    /// The daemon's own clock runs from its first batch's writes begun to
    /// its last write's stamp, which must lie between its last batch's
    /// writes begun and the moment the stamp was read; at today's Unix
    /// times, to the microsecond.
    #[test]
    fn the_daemon_s_own_clock_ends_at_its_last_write_between_begun_and_read() {
        const NOW: f64 = 1_796_655_041.0;
        let at = |secs: f64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds_f64(NOW + secs);
        let (first, last, read) = (at(0.0), at(3.25), at(4.5));
        let secs = own_clock(first, last, NOW + 3.500_001, read).expect("in range");
        assert!((secs - 3.500_001).abs() < 1e-6, "{secs}");
        assert!((own_clock(first, last, NOW + 3.25, read).expect("at the last begun") - 3.25).abs() < 1e-6);
        assert!((own_clock(first, last, NOW + 4.5, read).expect("at the moment read") - 4.5).abs() < 1e-6);
        for stamp in [NOW + 3.0, NOW + 4.75, 0.0] {
            let e = own_clock(first, last, stamp, read).expect_err("outside");
            assert!(e.to_string().contains("outside its last batch's writes begun"), "{e}");
        }
    }

    #[test]
    fn the_daemon_s_writes_span_its_first_applied_at_to_its_last() {
        let at = |secs: i64| OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs);
        assert_eq!(applied_span([at(5), at(2), at(9), at(4)].into_iter()), Some((at(2), at(9))));
        assert_eq!(applied_span([at(3)].into_iter()), Some((at(3), at(3))));
        assert_eq!(applied_span(std::iter::empty()), None);
    }

    /// A DynamoDB (in memory) that creates tables CREATING, does not know
    /// the table at the first DescribeTable (eventually consistent, as
    /// DynamoDB may answer just after CreateTable) and reports it ACTIVE
    /// from its `active_after`th on, and the operations it was asked, in
    /// order: for the wait at every step, which the local stack (ACTIVE
    /// after half a second) cannot show.
    fn creating_dynamodb(active_after: usize) -> (aws_sdk_dynamodb::Client, Arc<std::sync::Mutex<Vec<String>>>) {
        use aws_sdk_dynamodb::config::http::{HttpRequest, HttpResponse};
        use aws_smithy_runtime_api::client::http::{HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn};

        #[derive(Debug, Clone)]
        struct Creating(Arc<std::sync::Mutex<Vec<String>>>, usize);

        impl HttpConnector for Creating {
            fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
                let op =
                    request.headers().get("x-amz-target").unwrap_or_default().trim_start_matches("DynamoDB_20120810.").to_owned();
                let mut asked = self.0.lock().expect("not poisoned");
                asked.push(op.clone());
                let describes = asked.iter().filter(|o| *o == "DescribeTable").count();
                let status = if op == "DescribeTable" && describes >= self.1 { "ACTIVE" } else { "CREATING" };
                let (code, body) = match op.as_str() {
                    "CreateTable" => (200, serde_json::json!({"TableDescription": {"TableName": "t", "TableStatus": status}})),
                    _ if describes == 1 => (
                        400,
                        serde_json::json!({"__type": "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException", "message": "Requested resource not found: Table: t not found"}),
                    ),
                    _ => (200, serde_json::json!({"Table": {"TableName": "t", "TableStatus": status}})),
                };
                let status = code.try_into().expect("a valid status");
                HttpConnectorFuture::ready(Ok(HttpResponse::new(status, aws_smithy_types::body::SdkBody::from(body.to_string()))))
            }
        }

        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connector = Creating(Arc::clone(&asked), active_after);
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("k", "s", None, None, "test"))
            .http_client(http_client_fn(move |_, _| SharedHttpConnector::new(connector.clone())))
            .build();
        (aws_sdk_dynamodb::Client::from_conf(config), asked)
    }

    /// A scratch table is used only once DynamoDB says it is ACTIVE: its
    /// creation asks for its status until then (AWS keeps a new table
    /// CREATING for seconds and refuses its reads and writes meanwhile).
    #[tokio::test]
    async fn a_scratch_table_is_waited_for_until_it_is_active() {
        let (ddb, asked) = creating_dynamodb(3);
        create_scratch_table(&ddb, "t").await.expect("active on the third ask");
        assert_eq!(*asked.lock().expect("not poisoned"), ["CreateTable", "DescribeTable", "DescribeTable", "DescribeTable"]);

        let (ddb, asked) = creating_dynamodb(usize::MAX);
        let e = wait_table_active(&ddb, "t", Duration::from_millis(400)).await.expect_err("never active");
        assert!(e.to_string().contains("not ACTIVE after 400ms (status CREATING)"), "{e}");
        // At once, then after 100 ms and (unless the machine stalled past
        // the deadline's reach) 200 ms more: the next pause, 400 ms, would
        // pass the deadline. Not one ask, not asking without end.
        let asks = asked.lock().expect("not poisoned").len();
        assert!((2..=3).contains(&asks), "{asks} asks");
    }

    /// A client of the local stack's DynamoDB (scripts/test.sh starts it).
    async fn local_dynamodb() -> aws_sdk_dynamodb::Client {
        std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local stack's DynamoDB (scripts/local-stack/stack.sh env)");
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        aws_sdk_dynamodb::Client::new(&sdk)
    }

    /// On the local stack's DynamoDB (scripts/test.sh starts it): an order
    /// is complete only once its history holds the last entry wanted, for
    /// each number wanted, across reads of 100 keys.
    #[tokio::test]
    async fn an_order_is_complete_once_its_last_wanted_history_entry_is_there() {
        let ddb = local_dynamodb().await;
        let table = format!("loadgen-complete-{}", crate::coldstart::new_run_id());
        create_table_keyed(&ddb, &table, "order_id").await.expect("table");
        let entry = |k: usize| AttributeValue::M(HashMap::from([("status".to_owned(), AttributeValue::S(format!("s{k}")))]));
        // (id, entries stored, entries wanted)
        let mut orders: Vec<(String, usize, usize)> =
            vec![("short-3".into(), 2, 3), ("full-3".into(), 3, 3), ("short-5".into(), 4, 5), ("full-5".into(), 5, 5)];
        orders.extend((0..150).map(|i| (format!("many-{i}"), 3, 3)));
        for (id, stored, _) in &orders {
            ddb.put_item()
                .table_name(&table)
                .item("order_id", AttributeValue::S(id.clone()))
                .item("history", AttributeValue::L((0..*stored).map(entry).collect()))
                .send()
                .await
                .expect("put");
        }
        let mut want: HashMap<String, usize> = orders.iter().map(|(id, _, n)| (id.clone(), *n)).collect();
        want.insert("absent".into(), 3);
        let ids: Vec<String> = want.keys().cloned().collect();
        let complete = complete_of(&ddb, &table, &ids, &want).await.expect("read");
        let _ = ddb.delete_table().table_name(&table).send().await;
        let expected: HashSet<String> = orders.iter().filter(|(_, stored, n)| stored >= n).map(|(id, _, _)| id.clone()).collect();
        assert_eq!(complete.len(), 152);
        assert_eq!(complete, expected);
    }

    /// On the local stack's DynamoDB: timed with a reader beside it, the
    /// bare writer ends with the reader's error when the reader fails, with
    /// its own when its writes fail, and with both ended when neither does;
    /// its scratch table is deleted every time (a failed bench run must not
    /// leave tables behind on the emulator the next run measures).
    #[tokio::test]
    async fn the_writer_beside_a_reader_ends_with_either_s_error_and_deletes_its_table() {
        let ddb = local_dynamodb().await;
        let scratch = format!("loadgen-rw-{}", crate::coldstart::new_run_id());
        let orders = plan_backlog(7, 40, 0.1);
        let gone = |table: String| {
            let ddb = ddb.clone();
            async move {
                let e = ddb.describe_table().table_name(&table).send().await.expect_err("the scratch table deleted");
                assert!(e.into_service_error().is_resource_not_found_exception(), "{table}");
            }
        };
        let reader = |fails: bool| -> BoxFuture<'static, anyhow::Result<(usize, f64)>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if fails { Err(anyhow::anyhow!("the reader failed")) } else { Ok((0, 0.05)) }
            })
        };

        let secs = bare_write(&ddb, &format!("{scratch}-a"), &orders, Some(reader(false))).await.expect("both ended");
        assert!(secs >= 0.05, "{secs}");
        gone(format!("{scratch}-a")).await;

        let e = bare_write(&ddb, &format!("{scratch}-b"), &orders, Some(reader(true))).await.expect_err("the reader's error");
        assert_eq!(e.to_string(), "the reader failed");
        gone(format!("{scratch}-b")).await;

        // An order twice in a wave: its transaction is refused.
        let mut twice = orders.clone();
        twice.insert(1, orders[0].clone());
        let e = bare_write(&ddb, &format!("{scratch}-c"), &twice, Some(reader(false))).await.expect_err("the writes' error");
        // The refused transaction's error, as AWS words it (the reader ended
        // without one).
        assert!(format!("{e:#}").contains("multiple operations on one item"), "{e:#}");
        gone(format!("{scratch}-c")).await;
    }
}
