//! The daemon's configuration: one TOML file, `CAFE_...` environment
//! overrides, and validation that names every problem at once.
//!
//! Owns: the config structs (their doc comments are the user's reference),
//! defaults, and the two stages raw -> validated. Must not: touch AWS or
//! start anything; `cafe-streamd validate` runs exactly this module.
//!
//! Environment overrides: `CAFE_<SECTION>__<FIELD>=value`, path segments
//! joined by a double underscore, e.g. `CAFE_ADMIN__LISTEN=0.0.0.0:9464` or
//! `CAFE_SOURCES__PAYMENTS__RECEIVERS=8`. The value is read as a TOML value
//! when it parses as one (numbers, booleans, arrays), else as a string.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pipeline::fraud::FraudConfig;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The whole validated configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    /// `[aws]`
    pub aws: AwsConfig,
    /// `[sources.*]`
    pub sources: SourcesConfig,
    /// `[pipeline]`
    pub pipeline: PipelineConfig,
    /// `[sinks.*]`
    pub sinks: SinksConfig,
    /// `[rejected]`
    pub rejected: RejectedConfig,
    /// `[fraud]`
    pub fraud: FraudConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[shutdown]`
    pub shutdown: ShutdownConfig,
}

/// `[aws]`: how to reach AWS. Credentials and endpoints come from the
/// standard AWS environment (`AWS_PROFILE`, `AWS_ENDPOINT_URL_<SERVICE>`, the
/// instance role, ...).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region; unset means the standard AWS region chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
}

/// `[sources]`: where events come from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcesConfig {
    /// `[sources.payments]`: the FIFO queue of `payment.requested`.
    pub payments: SqsSourceConfig,
    /// `[sources.menu]`: the standard queue of `menu.item.upserted`.
    /// Defaults as for payments, but with queue `cafe-menu-sync` and dlq `cafe-menu-sync-dlq`.
    #[serde(default = "default_menu_source", deserialize_with = "menu_source")]
    pub menu: SqsSourceConfig,
    /// `[sources.orders]`: the Kinesis stream of orders.
    pub orders: KinesisSourceConfig,
}

/// An SQS queue source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsSourceConfig {
    /// Consume this queue.
    pub enabled: bool,
    /// Queue name or URL. A name ending in `.fifo` is a FIFO queue.
    pub queue: String,
    /// Dead-letter queue name, created by `provision` with the redrive policy.
    pub dlq: String,
    /// Receives after which SQS moves a message to the DLQ.
    pub max_receive_count: u32,
    /// Concurrent long-polling receivers.
    pub receivers: u32,
    /// Messages per ReceiveMessage call, 1..10.
    pub max_messages: u32,
    /// Long-poll wait per ReceiveMessage call, 0..20 seconds. Shutdown waits
    /// up to this long for the last polls to return (their messages are
    /// processed, not abandoned), so keep it well under the grace period.
    pub wait_time_secs: u32,
    /// Visibility timeout asked for on receive; extended while work is in flight.
    pub visibility_timeout_secs: u32,
    /// After a failed write, the message becomes visible again after this delay.
    pub retry_delay_secs: u32,
}

impl Default for SqsSourceConfig {
    fn default() -> Self {
        SqsSourceConfig {
            enabled: true,
            queue: "cafe-payments.fifo".into(),
            dlq: "cafe-payments-dlq.fifo".into(),
            max_receive_count: 5,
            receivers: 4,
            max_messages: 10,
            wait_time_secs: 10,
            visibility_timeout_secs: 30,
            retry_delay_secs: 5,
        }
    }
}

impl Default for SourcesConfig {
    fn default() -> Self {
        SourcesConfig {
            payments: SqsSourceConfig::default(),
            menu: default_menu_source(),
            orders: KinesisSourceConfig::default(),
        }
    }
}

/// `[sources.menu]` with the menu queue's names for fields left out.
fn menu_source<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SqsSourceConfig, D::Error> {
    let mut t = toml::Table::deserialize(d)?;
    let defaults = default_menu_source();
    t.entry("queue").or_insert(toml::Value::String(defaults.queue));
    t.entry("dlq").or_insert(toml::Value::String(defaults.dlq));
    SqsSourceConfig::deserialize(toml::Value::Table(t)).map_err(serde::de::Error::custom)
}

fn default_menu_source() -> SqsSourceConfig {
    SqsSourceConfig { queue: "cafe-menu-sync".into(), dlq: "cafe-menu-sync-dlq".into(), ..SqsSourceConfig::default() }
}

/// The Kinesis stream of orders, shared by every instance through a lease
/// table, as the Kinesis Client Library does.
///
/// Failover: a lease whose counter has not moved for `failover_time_ms` is
/// taken by another instance at its next take (every
/// `lease_take_interval_ms`), so a dead instance's shards move within about
/// `failover_time_ms + 2 * lease_take_interval_ms` (12 s by default). An
/// instance that stops on SIGTERM releases its leases and they move at the
/// next take.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KinesisSourceConfig {
    /// Consume the stream. Off: this instance only runs the SQS paths.
    pub enabled: bool,
    /// Stream name.
    pub stream: String,
    /// Shards `provision` creates the stream with.
    pub shards: u32,
    /// DynamoDB table of shard leases and checkpoints (created by `provision`).
    pub lease_table: String,
    /// This instance's name in the lease table; empty means `<hostname>-<pid>-<random>`.
    pub worker_id: String,
    /// Where a shard with no checkpoint starts: `trim_horizon` (oldest
    /// record; nothing is missed) or `latest`. Child shards always start at
    /// their beginning.
    pub initial_position: String,
    /// A lease not renewed for this long is taken over by another instance.
    pub failover_time_ms: u64,
    /// How often leases are renewed; must be well under `failover_time_ms`.
    pub lease_renew_interval_ms: u64,
    /// How often the lease table is scanned to take expired, released or
    /// surplus leases.
    pub lease_take_interval_ms: u64,
    /// Most leases stolen from a busier instance per take, so shares even
    /// out without leases bouncing.
    pub max_leases_to_steal: usize,
    /// How often ListShards runs to find new shards (also run when a shard ends).
    pub shard_sync_interval_ms: u64,
    /// Records per GetRecords call, 1..10000.
    pub max_records: u32,
    /// Least time between two GetRecords on one shard. Kinesis allows 5 reads
    /// per second per shard across all readers; 250 leaves room for one more.
    pub poll_interval_ms: u64,
    /// GetRecords results fetched ahead of processing, per shard (backpressure).
    pub prefetch_batches: usize,
    /// Least time between two checkpoints of one shard (also checkpointed at
    /// shard end, on shutdown and before a lease is released).
    pub checkpoint_interval_ms: u64,
    /// Orders whose state each shard keeps in memory to avoid reads.
    pub order_cache_size: usize,
}

impl Default for KinesisSourceConfig {
    fn default() -> Self {
        KinesisSourceConfig {
            enabled: true,
            stream: "cafe-orders".into(),
            shards: 4,
            lease_table: "cafe-orders-leases".into(),
            worker_id: String::new(),
            initial_position: "trim_horizon".into(),
            failover_time_ms: 10_000,
            lease_renew_interval_ms: 3_000,
            lease_take_interval_ms: 1_000,
            max_leases_to_steal: 1,
            shard_sync_interval_ms: 30_000,
            max_records: 1_000,
            poll_interval_ms: 250,
            prefetch_batches: 2,
            checkpoint_interval_ms: 1_000,
            order_cache_size: 20_000,
        }
    }
}

/// `[pipeline]`: batching, backpressure and the CPU pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most events in one batch sent to the CPU pool.
    pub max_batch_events: usize,
    /// How long a partial batch waits for more events, in milliseconds.
    pub linger_ms: u64,
    /// Capacity of each bounded channel between stages, in batches.
    pub channel_capacity: usize,
    /// Threads of the rayon pool; 0 means one per core.
    pub cpu_threads: usize,
    /// Batches being written to sinks at once.
    pub sink_concurrency: usize,
    /// The menu stage's JSON work factor: each item's canonical JSON is
    /// parsed and written again this many times (the story's re-processing
    /// of every item; 0 turns it off).
    pub menu_json_rounds: u32,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_batch_events: 250,
            linger_ms: 50,
            channel_capacity: 16,
            cpu_threads: 0,
            sink_concurrency: 8,
            menu_json_rounds: 100,
        }
    }
}

/// `[sinks]`: where results are written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// `[sinks.dynamodb]`
    pub dynamodb: DynamoDbSinkConfig,
    /// `[sinks.redshift]`
    pub redshift: RedshiftSinkConfig,
}

/// `[sinks.redshift]`: the `cafe_store_minute` mirror of `cafe-aggregates`.
///
/// Every change to an aggregate row marks it pending (in the same DynamoDB
/// transaction); the flusher upserts pending rows into Redshift with their
/// absolute counters and version, then clears the marks whose version it
/// wrote. A Redshift outage therefore buffers in DynamoDB, durably and
/// bounded by the number of rows, and the flusher catches up when Redshift
/// is back.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedshiftSinkConfig {
    /// Mirror the aggregates into Redshift. Off: no marks are written.
    pub enabled: bool,
    /// `postgres` (the PostgreSQL wire protocol, port 5439 on Redshift) or
    /// `data_api` (the Redshift Data API, no network path to the cluster needed).
    pub transport: String,
    /// `postgres`: `postgres://user@host:5439/db?sslmode=require`. A password
    /// here is never logged; prefer the `PGPASSWORD` environment variable.
    pub url: String,
    /// `data_api`: the provisioned cluster (or set `workgroup_name`).
    pub cluster_identifier: String,
    /// `data_api`: the Redshift Serverless workgroup (or set `cluster_identifier`).
    pub workgroup_name: String,
    /// `data_api`: the database.
    pub database: String,
    /// `data_api`: temporary-credentials user (provisioned clusters), or set `secret_arn`.
    pub db_user: String,
    /// `data_api`: Secrets Manager secret with the credentials.
    pub secret_arn: String,
    /// The table (the contract's name by default).
    pub table: String,
    /// Flush every this many milliseconds, for late updates.
    pub flush_interval_ms: u64,
    /// Also flush this long after each minute ends, when its windows close.
    pub window_close_delay_ms: u64,
    /// Most pending rows one flush reads and writes (bounds memory).
    pub max_rows_per_flush: usize,
    /// Data API: first DescribeStatement poll delay; doubles up to `max_poll_ms`.
    pub first_poll_ms: u64,
    /// Data API: longest DescribeStatement poll delay.
    pub max_poll_ms: u64,
    /// Give up on one statement batch after this many milliseconds (it is
    /// retried at the next flush).
    pub statement_timeout_ms: u64,
}

impl Default for RedshiftSinkConfig {
    fn default() -> Self {
        RedshiftSinkConfig {
            enabled: false,
            transport: "postgres".into(),
            url: String::new(),
            cluster_identifier: String::new(),
            workgroup_name: String::new(),
            database: String::new(),
            db_user: String::new(),
            secret_arn: String::new(),
            table: "cafe_store_minute".into(),
            flush_interval_ms: 10_000,
            window_close_delay_ms: 2_000,
            max_rows_per_flush: 20_000,
            first_poll_ms: 50,
            max_poll_ms: 1_000,
            statement_timeout_ms: 60_000,
        }
    }
}

/// `[sinks.dynamodb]`: the contract's tables.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamoDbSinkConfig {
    /// Per (store, minute) counters.
    pub aggregates_table: String,
    /// One item per payment.
    pub payments_table: String,
    /// One item per order.
    pub orders_table: String,
    /// One item per menu sku.
    pub menu_table: String,
    /// The event ledger: one item per applied event whose write has no
    /// natural key of its own (menu upserts), so a redelivery counts once.
    /// Entries expire after 15 days (SQS keeps a message 14 at most).
    pub events_table: String,
    /// Items per TransactWriteItems: 100 on AWS, 25 on moto.
    pub max_transaction_items: usize,
    /// Retries of a throttled or failed request before the batch is given back to its source.
    pub max_retries: u32,
    /// First retry delay; doubles each retry, with full jitter.
    pub base_backoff_ms: u64,
    /// Largest retry delay.
    pub max_backoff_ms: u64,
}

impl Default for DynamoDbSinkConfig {
    fn default() -> Self {
        DynamoDbSinkConfig {
            aggregates_table: "cafe-aggregates".into(),
            payments_table: "cafe-payments".into(),
            orders_table: "cafe-orders".into(),
            menu_table: "cafe-menu".into(),
            events_table: "cafe-events".into(),
            max_transaction_items: 25,
            max_retries: 8,
            base_backoff_ms: 50,
            max_backoff_ms: 5_000,
        }
    }
}

/// `[rejected]`: where events that break the contract go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RejectedConfig {
    /// Queue name or URL.
    pub queue: String,
}

impl Default for RejectedConfig {
    fn default() -> Self {
        RejectedConfig { queue: "cafe-rejected".into() }
    }
}

/// `[admin]`: the metrics and health endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`. Loopback unless you mean it.
    pub listen: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: "127.0.0.1:9464".into() }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM, how long draining may take before the daemon gives up and
    /// exits non-zero (undeleted messages are redelivered, so nothing is lost).
    pub grace_period_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_period_secs: 30 }
    }
}

impl AdminConfig {
    /// The parsed listen address (validated).
    pub fn addr(&self) -> SocketAddr {
        self.listen.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9464)))
    }
}

/// One configuration problem: where, which field, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, or `environment CAFE_...` for an override.
    pub origin: String,
    /// Dotted field path.
    pub field: String,
    /// What is wrong.
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.field, self.why)
    }
}

/// Every problem found; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

const ENV_PREFIX: &str = "CAFE_";

/// Loads `path` (or the defaults when `None`), applies the `CAFE_...`
/// overrides from `env`, and validates.
pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, Problems> {
    let origin = path.map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            Problems(vec![Problem { origin: origin.clone(), field: "-".into(), why: format!("cannot read: {e}") }])
        })?,
        None => String::new(),
    };
    parse(&text, &origin, env)
}

/// Like [`load`], on text already read. `origin` names it in problems.
pub fn parse(text: &str, origin: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, Problems> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        Problems(vec![Problem { origin: origin.to_owned(), field: "-".into(), why: format!("not valid TOML: {}", e.message()) }])
    })?;
    let mut problems = Vec::new();
    let mut from_env: Vec<(String, String)> = Vec::new();
    for (key, value) in env {
        let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // CAFE_ variables without a section path (e.g. CAFE_LOG) are not config.
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        match set_path(&mut table, &path, env_value(&value)) {
            Ok(()) => from_env.push((path.join("."), key)),
            Err(why) => problems.push(Problem { origin: format!("environment {key}"), field: path.join("."), why }),
        }
    }
    let origin_of = |field: &str| -> String {
        from_env
            .iter()
            .find(|(p, _)| field == p || field.starts_with(&format!("{p}.")) || field.starts_with(&format!("{p}[")))
            .map_or_else(|| origin.to_owned(), |(_, k)| format!("environment {k}"))
    };

    let known = ["aws", "sources", "pipeline", "sinks", "rejected", "fraud", "admin", "shutdown"];
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            problems.push(Problem {
                origin: origin_of(key),
                field: key.clone(),
                why: format!("unknown section; expected one of {}", known.join(", ")),
            });
        }
    }

    let mut cfg = Config::default();
    macro_rules! take {
        ($name:literal, $ty:ty, $slot:expr) => {
            if let Some(v) = table.get($name) {
                match typed::<$ty>(v.clone(), $name) {
                    Ok(x) => $slot = x,
                    Err((field, why)) => problems.push(Problem { origin: origin_of(&field), field, why }),
                }
            }
        };
    }
    take!("aws", AwsConfig, cfg.aws);
    take!("sources", SourcesConfig, cfg.sources);
    take!("pipeline", PipelineConfig, cfg.pipeline);
    take!("sinks", SinksConfig, cfg.sinks);
    take!("rejected", RejectedConfig, cfg.rejected);
    take!("fraud", FraudConfig, cfg.fraud);
    take!("admin", AdminConfig, cfg.admin);
    take!("shutdown", ShutdownConfig, cfg.shutdown);

    for (field, why) in semantic_problems(&cfg) {
        problems.push(Problem { origin: origin_of(&field), field, why });
    }
    if problems.is_empty() { Ok(cfg) } else { Err(Problems(problems)) }
}

fn typed<T: DeserializeOwned>(v: toml::Value, prefix: &str) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() { prefix.to_owned() } else { format!("{prefix}.{path}") };
        (field, e.into_inner().to_string())
    })
}

fn env_value(raw: &str) -> toml::Value {
    // A bare TOML value parses as `v = <raw>`; anything else is a string.
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty path")?;
    let mut cur = table;
    for p in parents {
        let entry = cur.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("{p} is not a section"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

fn semantic_problems(c: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut bad = |field: &str, why: String| out.push((field.to_owned(), why));

    for (name, s) in [("sources.payments", &c.sources.payments), ("sources.menu", &c.sources.menu)] {
        if s.queue.trim().is_empty() {
            bad(&format!("{name}.queue"), "must not be empty".into());
        }
        if !(1..=10).contains(&s.max_messages) {
            bad(&format!("{name}.max_messages"), format!("must be 1..10 (an SQS limit), got {}", s.max_messages));
        }
        if s.wait_time_secs > 20 {
            bad(&format!("{name}.wait_time_secs"), format!("must be 0..20 (an SQS limit), got {}", s.wait_time_secs));
        }
        if !(1..=256).contains(&s.receivers) {
            bad(&format!("{name}.receivers"), format!("must be 1..256, got {}", s.receivers));
        }
        if !(5..=43_200).contains(&s.visibility_timeout_secs) {
            bad(&format!("{name}.visibility_timeout_secs"), format!("must be 5..43200, got {}", s.visibility_timeout_secs));
        }
        if s.retry_delay_secs > 43_200 {
            bad(&format!("{name}.retry_delay_secs"), format!("must be 0..43200, got {}", s.retry_delay_secs));
        }
        if !(1..=1000).contains(&s.max_receive_count) {
            bad(&format!("{name}.max_receive_count"), format!("must be 1..1000, got {}", s.max_receive_count));
        }
    }
    let fifo = c.sources.payments.queue.ends_with(".fifo");
    if !fifo {
        bad("sources.payments.queue", format!("{:?} must be a FIFO queue (name ending in .fifo)", c.sources.payments.queue));
    }
    if fifo != c.sources.payments.dlq.ends_with(".fifo") {
        bad("sources.payments.dlq", "a FIFO queue's dead-letter queue must be FIFO too".into());
    }
    if c.sources.orders.stream.trim().is_empty() {
        bad("sources.orders.stream", "must not be empty".into());
    }
    let k = &c.sources.orders;
    if !(1..=500).contains(&k.shards) {
        bad("sources.orders.shards", format!("must be 1..500, got {}", k.shards));
    }
    if !["trim_horizon", "latest"].contains(&k.initial_position.as_str()) {
        bad("sources.orders.initial_position", format!("must be trim_horizon or latest, got {:?}", k.initial_position));
    }
    if !(1000..=600_000).contains(&k.failover_time_ms) {
        bad("sources.orders.failover_time_ms", format!("must be 1000..600000, got {}", k.failover_time_ms));
    }
    if k.lease_renew_interval_ms == 0 || k.lease_renew_interval_ms * 2 > k.failover_time_ms {
        bad(
            "sources.orders.lease_renew_interval_ms",
            format!(
                "must be above 0 and at most half of failover_time_ms ({}), got {}",
                k.failover_time_ms, k.lease_renew_interval_ms
            ),
        );
    }
    if !(100..=600_000).contains(&k.lease_take_interval_ms) {
        bad("sources.orders.lease_take_interval_ms", format!("must be 100..600000, got {}", k.lease_take_interval_ms));
    }
    if !(1000..=3_600_000).contains(&k.shard_sync_interval_ms) {
        bad("sources.orders.shard_sync_interval_ms", format!("must be 1000..3600000, got {}", k.shard_sync_interval_ms));
    }
    if !(1..=10_000).contains(&k.max_records) {
        bad("sources.orders.max_records", format!("must be 1..10000 (a Kinesis limit), got {}", k.max_records));
    }
    if k.poll_interval_ms < 200 || k.poll_interval_ms > 60_000 {
        bad(
            "sources.orders.poll_interval_ms",
            format!("must be 200..60000 (Kinesis allows 5 reads/s per shard), got {}", k.poll_interval_ms),
        );
    }
    if !(1..=64).contains(&k.prefetch_batches) {
        bad("sources.orders.prefetch_batches", format!("must be 1..64, got {}", k.prefetch_batches));
    }
    if k.checkpoint_interval_ms > 600_000 {
        bad("sources.orders.checkpoint_interval_ms", format!("must be 0..600000, got {}", k.checkpoint_interval_ms));
    }
    if !(1..=10_000_000).contains(&k.order_cache_size) {
        bad("sources.orders.order_cache_size", format!("must be 1..10000000, got {}", k.order_cache_size));
    }
    if k.lease_table.len() < 3 || !k.lease_table.chars().all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch)) {
        bad("sources.orders.lease_table", format!("{:?} is not a DynamoDB table name (3..255 of A-Za-z0-9_.-)", k.lease_table));
    }
    if k.worker_id.len() > 256 {
        bad("sources.orders.worker_id", "must be at most 256 characters".into());
    }

    let p = &c.pipeline;
    if p.max_batch_events == 0 || p.max_batch_events > 10_000 {
        bad("pipeline.max_batch_events", format!("must be 1..10000, got {}", p.max_batch_events));
    }
    if p.linger_ms > 10_000 {
        bad("pipeline.linger_ms", format!("must be 0..10000, got {}", p.linger_ms));
    }
    if p.channel_capacity == 0 || p.channel_capacity > 4096 {
        bad("pipeline.channel_capacity", format!("must be 1..4096, got {}", p.channel_capacity));
    }
    if p.cpu_threads > 1024 {
        bad("pipeline.cpu_threads", format!("must be 0..1024, got {}", p.cpu_threads));
    }
    if p.sink_concurrency == 0 || p.sink_concurrency > 1024 {
        bad("pipeline.sink_concurrency", format!("must be 1..1024, got {}", p.sink_concurrency));
    }
    if p.menu_json_rounds > 100_000 {
        bad("pipeline.menu_json_rounds", format!("must be 0..100000, got {}", p.menu_json_rounds));
    }

    let d = &c.sinks.dynamodb;
    for (f, v) in [
        ("aggregates_table", &d.aggregates_table),
        ("payments_table", &d.payments_table),
        ("orders_table", &d.orders_table),
        ("menu_table", &d.menu_table),
        ("events_table", &d.events_table),
    ] {
        if v.len() < 3 || v.len() > 255 || !v.chars().all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch)) {
            bad(&format!("sinks.dynamodb.{f}"), format!("{v:?} is not a DynamoDB table name (3..255 of A-Za-z0-9_.-)"));
        }
    }
    if !(2..=100).contains(&d.max_transaction_items) {
        bad(
            "sinks.dynamodb.max_transaction_items",
            format!("must be 2..100 (a DynamoDB limit), got {}", d.max_transaction_items),
        );
    }
    if d.base_backoff_ms == 0 || d.base_backoff_ms > d.max_backoff_ms {
        bad("sinks.dynamodb.base_backoff_ms", "must be greater than 0 and at most max_backoff_ms".into());
    }
    let r = &c.sinks.redshift;
    if r.enabled {
        match r.transport.as_str() {
            "postgres" => {
                if !(r.url.starts_with("postgres://") || r.url.starts_with("postgresql://")) {
                    bad(
                        "sinks.redshift.url",
                        "transport postgres needs a URL like postgres://user@host:5439/db?sslmode=require".into(),
                    );
                }
            }
            "data_api" => {
                if r.cluster_identifier.is_empty() == r.workgroup_name.is_empty() {
                    bad(
                        "sinks.redshift.cluster_identifier",
                        "transport data_api needs exactly one of cluster_identifier and workgroup_name".into(),
                    );
                }
                if r.database.is_empty() {
                    bad("sinks.redshift.database", "transport data_api needs a database".into());
                }
                if !r.cluster_identifier.is_empty() && r.db_user.is_empty() && r.secret_arn.is_empty() {
                    bad("sinks.redshift.db_user", "a cluster needs db_user or secret_arn".into());
                }
            }
            other => bad("sinks.redshift.transport", format!("must be postgres or data_api, got {other:?}")),
        }
    }
    if r.table.is_empty() || r.table.len() > 127 || !r.table.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
        bad("sinks.redshift.table", format!("{:?} is not a table name (1..127 of A-Za-z0-9_)", r.table));
    }
    if !(100..=3_600_000).contains(&r.flush_interval_ms) {
        bad("sinks.redshift.flush_interval_ms", format!("must be 100..3600000, got {}", r.flush_interval_ms));
    }
    if r.window_close_delay_ms >= 60_000 {
        bad("sinks.redshift.window_close_delay_ms", format!("must be 0..59999, got {}", r.window_close_delay_ms));
    }
    if !(1..=1_000_000).contains(&r.max_rows_per_flush) {
        bad("sinks.redshift.max_rows_per_flush", format!("must be 1..1000000, got {}", r.max_rows_per_flush));
    }
    if r.first_poll_ms == 0 || r.first_poll_ms > r.max_poll_ms {
        bad("sinks.redshift.first_poll_ms", "must be greater than 0 and at most max_poll_ms".into());
    }
    if r.statement_timeout_ms < 1000 {
        bad("sinks.redshift.statement_timeout_ms", format!("must be at least 1000, got {}", r.statement_timeout_ms));
    }
    if c.rejected.queue.trim().is_empty() {
        bad("rejected.queue", "must not be empty".into());
    }
    if c.admin.listen.parse::<SocketAddr>().is_err() {
        bad("admin.listen", format!("{:?} is not an address like 127.0.0.1:9464", c.admin.listen));
    }
    for (name, s) in [("sources.payments", &c.sources.payments), ("sources.menu", &c.sources.menu)] {
        if u64::from(s.wait_time_secs) >= c.shutdown.grace_period_secs {
            bad(
                &format!("{name}.wait_time_secs"),
                format!(
                    "{} s is not below shutdown.grace_period_secs ({} s): draining could not finish in time",
                    s.wait_time_secs, c.shutdown.grace_period_secs
                ),
            );
        }
    }
    if c.shutdown.grace_period_secs == 0 || c.shutdown.grace_period_secs > 3600 {
        bad("shutdown.grace_period_secs", format!("must be 1..3600, got {}", c.shutdown.grace_period_secs));
    }
    if let Some(r) = &c.aws.region {
        if r.is_empty() || !r.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-') {
            bad("aws.region", format!("{r:?} is not a region name like us-east-1"));
        }
    }
    for p in c.fraud.problems() {
        bad(&format!("fraud.{}", p.field), p.why);
    }
    let mut seen = BTreeSet::new();
    for q in [&c.sources.payments.queue, &c.sources.menu.queue, &c.rejected.queue] {
        if !seen.insert(q) {
            bad("rejected.queue", format!("{q:?} is used for two purposes"));
        }
    }
    out
}

/// The default config file path used by the systemd unit.
pub fn default_path() -> PathBuf {
    PathBuf::from("/etc/cafe-stream/cafe-streamd.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn empty_config_is_the_contracts_defaults() {
        let c = parse("", "t.toml", no_env()).expect("defaults are valid");
        assert_eq!(c.sources.payments.queue, "cafe-payments.fifo");
        assert_eq!(c.sources.menu.queue, "cafe-menu-sync");
        assert_eq!(c.sources.menu.dlq, "cafe-menu-sync-dlq");
        assert_eq!(c.sinks.dynamodb.aggregates_table, "cafe-aggregates");
        assert_eq!(c.admin.listen, "127.0.0.1:9464");
        assert_eq!(c.fraud.work_factor, 10_000);
    }

    #[test]
    fn every_problem_is_named_with_file_and_field() {
        let text = r#"
            colour = "blue"
            [sources.payments]
            receivers = 0
            max_messages = 11
            [pipeline]
            linger_ms = "soon"
            [admin]
            listen = "everywhere"
            [fraud]
            review_threshold = 900
            decline_threshold = 100
            [sinks.dynamodb]
            max_transaction_items = 1000
            speed = 3
        "#;
        let err = parse(text, "bad.toml", no_env()).expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        for want in [
            "colour",
            "pipeline.linger_ms",
            "sinks.dynamodb",
            "sources.payments.receivers",
            "sources.payments.max_messages",
            "admin.listen",
            "fraud.review_threshold",
        ] {
            assert!(fields.iter().any(|f| f.starts_with(want)), "{want} missing from {fields:?}");
        }
        assert!(err.0.iter().all(|p| p.origin == "bad.toml"));
        let text = err.to_string();
        assert!(text.contains("bad.toml: sinks.dynamodb"), "{text}");
        assert!(text.contains("unknown field `speed`"), "{text}");
    }

    #[test]
    fn environment_overrides_apply_and_are_blamed_by_name() {
        let env = vec![
            ("CAFE_SOURCES__PAYMENTS__RECEIVERS".to_owned(), "8".to_owned()),
            ("CAFE_ADMIN__LISTEN".to_owned(), "0.0.0.0:9000".to_owned()),
            ("CAFE_LOG".to_owned(), "debug".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let c = parse("", "t.toml", env).expect("valid");
        assert_eq!(c.sources.payments.receivers, 8);
        assert_eq!(c.admin.listen, "0.0.0.0:9000");

        let env = vec![("CAFE_SHUTDOWN__GRACE_PERIOD_SECS".to_owned(), "0".to_owned())];
        let err = parse("", "t.toml", env).expect_err("invalid");
        let grace = err.0.iter().find(|p| p.field == "shutdown.grace_period_secs").expect("grace problem named");
        assert_eq!(grace.origin, "environment CAFE_SHUTDOWN__GRACE_PERIOD_SECS");
    }

    #[test]
    fn lease_and_polling_limits_are_checked() {
        let text = "[sources.orders]\npoll_interval_ms = 100\nlease_renew_interval_ms = 9000\ninitial_position = \"oldest\"\nmax_records = 20000\n";
        let err = parse(text, "o.toml", no_env()).expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        for want in [
            "sources.orders.poll_interval_ms",
            "sources.orders.lease_renew_interval_ms",
            "sources.orders.initial_position",
            "sources.orders.max_records",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        let ok = parse("[sources.orders]\nworker_id = \"host-a\"\nshards = 8\n", "o.toml", no_env()).expect("valid");
        assert_eq!((ok.sources.orders.worker_id.as_str(), ok.sources.orders.failover_time_ms), ("host-a", 10_000));
    }

    #[test]
    fn toml_syntax_errors_are_reported() {
        let err = parse("[admin\nlisten=", "x.toml", no_env()).expect_err("invalid");
        assert!(err.to_string().starts_with("x.toml: -: not valid TOML"), "{err}");
    }

    #[test]
    fn redshift_transports_are_checked() {
        let err = parse("[sinks.redshift]\nenabled = true\ntransport = \"odbc\"\n", "r.toml", no_env()).expect_err("invalid");
        assert!(err.to_string().contains("r.toml: sinks.redshift.transport: must be postgres or data_api"), "{err}");
        let err = parse("[sinks.redshift]\nenabled = true\ntransport = \"data_api\"\n", "r.toml", no_env()).expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["sinks.redshift.cluster_identifier", "sinks.redshift.database"]);
        let ok = parse(
            "[sinks.redshift]\nenabled = true\ntransport = \"data_api\"\nworkgroup_name = \"wg\"\ndatabase = \"dev\"\n",
            "r.toml",
            no_env(),
        )
        .expect("valid");
        assert_eq!(ok.sinks.redshift.flush_interval_ms, 10_000);
        let env = vec![("CAFE_SINKS__REDSHIFT__ENABLED".to_owned(), "true".to_owned())];
        let err = parse("", "r.toml", env).expect_err("postgres needs a url");
        assert_eq!(err.0[0].field, "sinks.redshift.url");
    }

    #[test]
    fn menu_source_keeps_its_own_defaults_when_partly_configured() {
        let c = parse("[sources.menu]\nreceivers = 2\n", "t.toml", no_env()).expect("valid");
        assert_eq!(c.sources.menu.queue, "cafe-menu-sync");
        assert_eq!(c.sources.menu.receivers, 2);
    }
}
