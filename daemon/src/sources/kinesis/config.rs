//! `[sources.<name>]` of `type = "kinesis"`: a Kinesis stream input.
//!
//! Owns: the stream input's settings, their defaults and their checks.
//! Must not: touch AWS.

use serde::{Deserialize, Serialize};

/// The Kinesis stream of orders, shared by every instance through a lease
/// table, as the Kinesis Client Library does.
///
/// Failover: a lease whose counter has not moved for `failover_time_ms` is
/// taken by another instance at its next take (every
/// `lease_take_interval_ms`, or `failover_time_ms / 4` while that instance
/// is settled at its share), so a dead instance's shards move within about
/// `failover_time_ms + 2 * max(lease_take_interval_ms, failover_time_ms / 4)`
/// (15 s by default). An
/// instance that stops on SIGTERM releases its leases and they move at the
/// next take.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
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
    pub initial_position: InitialPosition,
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
    /// Least time between two GetRecords on a shard that has given nothing
    /// at its tip for this long: an idle shard is read about once a second
    /// (AWS's advice and the KCL's default) instead of every
    /// `poll_interval_ms`, until a read returns a record. At or below
    /// `poll_interval_ms`: every read is paced by `poll_interval_ms`.
    pub idle_poll_interval_ms: u64,
    /// GetRecords results fetched ahead of processing, per shard (backpressure).
    pub prefetch_batches: usize,
    /// Least time between two checkpoints of one shard (also checkpointed at
    /// shard end, on shutdown and before a lease is released).
    pub checkpoint_interval_ms: u64,
    /// Orders whose state each shard keeps in memory to avoid reads.
    pub order_cache_size: usize,
    /// Bytes (estimated) of cached order states across every shard of this
    /// stream that the instance reads; the oldest go first past it.
    pub order_cache_bytes: u64,
    /// Batches of one shard writing at once (1: one after the other). A
    /// batch's events of an order still writing in an earlier batch wait
    /// for it; the checkpoint moves past a batch only when it and every
    /// batch before it are durable.
    pub max_batches_in_flight: usize,
    /// Record bytes read and not yet durable, across every shard this
    /// instance reads: a reader waits for room before handing a GetRecords
    /// result on. Memory for them is a few times this (decoded events and
    /// their writes: about six times, measured); one result larger than the
    /// whole budget goes alone.
    pub max_bytes_in_flight: u64,
}

/// Where a shard with no checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum InitialPosition {
    /// The oldest record the stream holds (`trim_horizon`).
    TrimHorizon,
    /// Only records put from now on (`latest`).
    Latest,
}

impl From<InitialPosition> for &'static str {
    fn from(p: InitialPosition) -> &'static str {
        match p {
            InitialPosition::TrimHorizon => "trim_horizon",
            InitialPosition::Latest => "latest",
        }
    }
}

impl TryFrom<String> for InitialPosition {
    type Error = crate::config::UnknownChoice;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "trim_horizon" => Ok(InitialPosition::TrimHorizon),
            "latest" => Ok(InitialPosition::Latest),
            _ => Err(crate::config::UnknownChoice { expected: "trim_horizon or latest", got: s }),
        }
    }
}

impl InitialPosition {
    /// The ShardIteratorType it starts a shard with.
    pub fn iterator_type(self) -> &'static str {
        match self {
            InitialPosition::TrimHorizon => "TRIM_HORIZON",
            InitialPosition::Latest => "LATEST",
        }
    }
}

impl Default for KinesisSourceConfig {
    fn default() -> Self {
        KinesisSourceConfig {
            enabled: true,
            stream: "cafe-orders".into(),
            shards: 4,
            lease_table: "cafe-orders-leases".into(),
            worker_id: String::new(),
            initial_position: InitialPosition::TrimHorizon,
            failover_time_ms: 10_000,
            lease_renew_interval_ms: 3_000,
            lease_take_interval_ms: 1_000,
            max_leases_to_steal: 1,
            shard_sync_interval_ms: 30_000,
            max_records: 1_000,
            poll_interval_ms: 250,
            idle_poll_interval_ms: 1_000,
            prefetch_batches: 2,
            checkpoint_interval_ms: 1_000,
            order_cache_size: 20_000,
            order_cache_bytes: 32 * 1024 * 1024,
            max_batches_in_flight: 4,
            max_bytes_in_flight: 8 * 1024 * 1024,
        }
    }
}

impl KinesisSourceConfig {
    /// Problems of this section as (dotted field, why); `p` is the section's path.
    pub fn problems(&self, p: &str) -> Vec<(String, String)> {
        let k = self;
        let mut out = Vec::new();
        let mut bad = |field: &str, why: String| out.push((field.to_owned(), why));
        if k.stream.trim().is_empty() {
            bad(&format!("{p}.stream"), "must not be empty".into());
        }
        if !(1..=500).contains(&k.shards) {
            bad(&format!("{p}.shards"), format!("must be 1..500, got {}", k.shards));
        }
        if !(1000..=600_000).contains(&k.failover_time_ms) {
            bad(&format!("{p}.failover_time_ms"), format!("must be 1000..600000, got {}", k.failover_time_ms));
        }
        if k.lease_renew_interval_ms == 0 || k.lease_renew_interval_ms * 2 > k.failover_time_ms {
            bad(
                &format!("{p}.lease_renew_interval_ms"),
                format!(
                    "must be above 0 and at most half of failover_time_ms ({}), got {}",
                    k.failover_time_ms, k.lease_renew_interval_ms
                ),
            );
        }
        if !(100..=600_000).contains(&k.lease_take_interval_ms) {
            bad(&format!("{p}.lease_take_interval_ms"), format!("must be 100..600000, got {}", k.lease_take_interval_ms));
        }
        if !(1000..=3_600_000).contains(&k.shard_sync_interval_ms) {
            bad(&format!("{p}.shard_sync_interval_ms"), format!("must be 1000..3600000, got {}", k.shard_sync_interval_ms));
        }
        if !(1..=10_000).contains(&k.max_records) {
            bad(&format!("{p}.max_records"), format!("must be 1..10000 (a Kinesis limit), got {}", k.max_records));
        }
        if k.poll_interval_ms < 200 || k.poll_interval_ms > 60_000 {
            bad(
                &format!("{p}.poll_interval_ms"),
                format!("must be 200..60000 (Kinesis allows 5 reads/s per shard), got {}", k.poll_interval_ms),
            );
        }
        if k.idle_poll_interval_ms > 60_000 {
            bad(
                &format!("{p}.idle_poll_interval_ms"),
                format!(
                    "must be 0..60000 (at or below poll_interval_ms: no slower pace when idle), got {}",
                    k.idle_poll_interval_ms
                ),
            );
        }
        if !(1..=64).contains(&k.prefetch_batches) {
            bad(&format!("{p}.prefetch_batches"), format!("must be 1..64, got {}", k.prefetch_batches));
        }
        if k.checkpoint_interval_ms > 600_000 {
            bad(&format!("{p}.checkpoint_interval_ms"), format!("must be 0..600000, got {}", k.checkpoint_interval_ms));
        }
        if !(1..=10_000_000).contains(&k.order_cache_size) {
            bad(&format!("{p}.order_cache_size"), format!("must be 1..10000000, got {}", k.order_cache_size));
        }
        if !(64 * 1024..=64 * 1024 * 1024 * 1024).contains(&k.order_cache_bytes) {
            bad(
                &format!("{p}.order_cache_bytes"),
                format!("must be 65536..68719476736 (64 KiB to 64 GiB), got {}", k.order_cache_bytes),
            );
        }
        if !(1..=64).contains(&k.max_batches_in_flight) {
            bad(&format!("{p}.max_batches_in_flight"), format!("must be 1..64, got {}", k.max_batches_in_flight));
        }
        if !(64 * 1024..=16 * 1024 * 1024 * 1024).contains(&k.max_bytes_in_flight) {
            bad(
                &format!("{p}.max_bytes_in_flight"),
                format!("must be 65536..17179869184 (64 KiB to 16 GiB), got {}", k.max_bytes_in_flight),
            );
        }
        if k.lease_table.len() < 3 || !k.lease_table.chars().all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch)) {
            bad(
                &format!("{p}.lease_table"),
                format!("{:?} is not a DynamoDB table name (3..255 of A-Za-z0-9_.-)", k.lease_table),
            );
        }
        if k.worker_id.len() > 256 {
            bad(&format!("{p}.worker_id"), "must be at most 256 characters".into());
        }
        out
    }
}
