//! Shard leases in a DynamoDB table, as the Kinesis Client Library keeps
//! them, so that several instances share one stream.
//!
//! Owns: the lease item layout (the KCL's attribute names), every write to
//! the lease table, and the decisions of who reads which shard: renewing
//! held leases, taking expired or released ones first, then stealing toward
//! an even share, creating leases for new shards, and telling whether a
//! child shard may start. Must not: read a stream or spawn tasks (topology
//! starts and stops shard readers on the events sent from here).
//!
//! Every write is conditional on the lease counter (and owner) last seen,
//! and every successful write bumps the counter. A checkpoint is such a
//! write too, so an instance that lost a lease can never move its
//! checkpoint (fencing): its write fails and it stops reading the shard.
//! Expiry is judged on the local clock, as the KCL does: a lease whose
//! counter has not changed for `failover_time_ms` since this instance first
//! saw that value is expired, whatever the owner's clock says.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use rand::seq::SliceRandom;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::aws::describe;
use crate::config::KinesisSourceConfig;
use crate::internal_events::{
    CheckpointOutcome, CheckpointWritten, InternalEvent, LeaseCallsWorked, LeaseLost, LeaseLostHow, LeaseTaken, LeaseTakenHow,
    LeasesHeld, SourceError, SourceErrorKind,
};
use crate::metrics::Metrics;
use crate::sinks::redshift::BucketShare;

use super::checkpoint::Checkpoint;
use super::source::KinesisSource;

/// One lease item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard id (`leaseKey`).
    pub key: String,
    /// Holder (`leaseOwner`); `None` when free.
    pub owner: Option<String>,
    /// Bumped by every write (`leaseCounter`).
    pub counter: i64,
    /// Progress (`checkpoint`, `checkpointSubSequenceNumber`).
    pub checkpoint: Checkpoint,
    /// Parent shards that must end first (`parentShardId`).
    pub parents: Vec<String>,
    /// Owner changes since the last checkpoint (`ownerSwitchesSinceCheckpoint`).
    pub owner_switches: i64,
}

impl Lease {
    fn finished(&self) -> bool {
        self.checkpoint == Checkpoint::ShardEnd
    }
}

/// The Redshift mirror's buckets `0..of` this instance flushes: bucket `b`
/// goes with live lease `b % live.len()` (`live` sorted), so each bucket has
/// one owner whenever each live lease has one, and a lease that moves
/// takes its buckets along. `None` (every bucket) before any live lease is
/// known.
pub fn share_buckets(live: &[String], holds: impl Fn(&str) -> bool, of: u32) -> Option<Vec<u32>> {
    if live.is_empty() {
        return None;
    }
    Some((0..of).filter(|&b| holds(&live[b as usize % live.len()])).collect())
}

impl BucketShare for Leases {
    fn buckets(&self, of: u32) -> Option<Vec<u32>> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let held = self.held_lock();
        share_buckets(&live, |key| held.contains_key(key), of)
    }
}

/// What topology learns from the lease loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Start reading this shard from its checkpoint.
    Acquired(Lease),
    /// Stop reading this shard at once: another instance holds it. The
    /// holding lost is named by its generation, so a later holding of the
    /// same shard is not stopped.
    Lost {
        /// The shard.
        key: String,
        /// The generation of the holding lost.
        generation: i64,
    },
}

/// Why a lease write did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The lease is no longer ours (or moved on): stop, write nothing.
    #[error("lease {0} is no longer held by this instance")]
    Lost(String),
    /// The table could not be written; the caller may retry.
    #[error("lease table write failed: {0}")]
    Failed(String),
}

/// Why a conditional write of a held lease did not happen.
enum WriteFailure {
    /// The lease is not ours at the counter last written any more.
    Moved,
    /// The call failed; the lease may still be ours.
    Failed(String),
}

struct Held {
    counter: i64,
    last_renewed: Instant,
    /// The last write of this holding failed without an answer (a timeout,
    /// a dropped connection): it may have landed all the same, moving the
    /// counter past `counter`.
    ambiguous: bool,
}

/// One holding of a lease by this instance.
struct Holding {
    /// The counter when this instance took the lease: the holding a shard
    /// task was started for. A task of an earlier holding (the lease was
    /// lost and taken again meanwhile) is fenced by it.
    generation: i64,
    state: tokio::sync::Mutex<Held>,
}

struct Seen {
    counter: i64,
    since: Instant,
}

/// This instance's view of the lease table and its own leases.
pub struct Leases {
    client: Client,
    table: String,
    /// This instance's `leaseOwner` value.
    pub worker_id: String,
    source: String,
    config: KinesisSourceConfig,
    metrics: Arc<Metrics>,
    held: Mutex<HashMap<String, Arc<Holding>>>,
    seen: Mutex<HashMap<String, Seen>>,
    /// The keys of the leases not yet ended at the last scan, sorted: what
    /// the Redshift mirror's buckets are shared by.
    live: Mutex<Vec<String>>,
    /// The last take found this instance at its share and no lease free or
    /// expired: the next may wait longer (see [`Leases::next_take_in`]).
    settled: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").field("table", &self.table).field("worker_id", &self.worker_id).finish()
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn parse_lease(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    let key = item.get("leaseKey")?.as_s().ok()?.clone();
    let num = |name: &str| item.get(name).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let owner = item.get("leaseOwner").and_then(|v| v.as_s().ok()).filter(|o| !o.is_empty()).cloned();
    let checkpoint = item.get("checkpoint").and_then(|v| v.as_s().ok()).map_or("TRIM_HORIZON", |v| v.as_str());
    let parents = item.get("parentShardId").and_then(|v| v.as_ss().ok()).cloned().unwrap_or_default();
    Some(Lease {
        key,
        owner,
        counter: num("leaseCounter"),
        checkpoint: Checkpoint::decode(checkpoint, num("checkpointSubSequenceNumber").max(0) as u64),
        parents,
        owner_switches: num("ownerSwitchesSinceCheckpoint"),
    })
}

/// The default worker id: host name, process id and a random suffix, so a
/// restarted process never mistakes its predecessor's leases for its own.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// How many leases each of `workers` should hold: ⌈leases / workers⌉.
pub fn target_share(leases: usize, workers: usize) -> usize {
    leases.div_ceil(workers.max(1))
}

/// The plan of one take: which leases to take, and how.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TakePlan {
    /// Leases still wanted to reach the share.
    pub need: usize,
    /// Every expired or free lease, in the order to try them: take until
    /// `need` succeed (another instance may win some of them).
    pub available: Vec<String>,
    /// Leases to steal from the busiest instance when the available ones
    /// cannot cover the need.
    pub steal: Vec<String>,
}

/// Decides a take from the table's state. `expired` says which leases are
/// expired (or free); finished leases are neither counted nor taken.
pub fn plan_take(me: &str, leases: &[Lease], expired: &HashSet<String>, max_steal: usize, rng: &mut impl rand::Rng) -> TakePlan {
    let live: Vec<&Lease> = leases.iter().filter(|l| !l.finished()).collect();
    let mut per_owner: HashMap<&str, Vec<&Lease>> = HashMap::new();
    for l in &live {
        if let (Some(o), false) = (l.owner.as_deref(), expired.contains(&l.key)) {
            per_owner.entry(o).or_default().push(l);
        }
    }
    let mine = per_owner.get(me).map_or(0, Vec::len);
    let workers = per_owner.keys().filter(|o| **o != me).count() + 1;
    let target = target_share(live.len(), workers);
    let mut plan = TakePlan::default();
    if mine >= target {
        return plan;
    }
    plan.need = target - mine;
    // Random order, so that instances starting together do not all race
    // for the same lease.
    let mut available: Vec<String> = live.iter().filter(|l| expired.contains(&l.key)).map(|l| l.key.clone()).collect();
    available.shuffle(rng);
    let still = plan.need.saturating_sub(available.len());
    plan.available = available;
    if still > 0 && max_steal > 0 {
        let busiest = per_owner.iter().filter(|(o, _)| **o != me).max_by_key(|(o, v)| (v.len(), **o));
        if let Some((_, theirs)) = busiest.filter(|(_, theirs)| theirs.len() > target) {
            let mut keys: Vec<String> = theirs.iter().map(|l| l.key.clone()).collect();
            keys.shuffle(rng);
            keys.truncate(still.min(max_steal).min(theirs.len() - target));
            plan.steal = keys;
        }
    }
    plan
}

impl Leases {
    /// The lease manager of `worker_id` on `config.lease_table`.
    ///
    /// Every lease call is bounded in time (an attempt by
    /// `lease_renew_interval_ms`, a call with its retries by twice that), so
    /// a hung connection can neither stall the lease loops past the failover
    /// time nor hold a lease's lock while others wait on it.
    pub fn new(client: Client, config: KinesisSourceConfig, worker_id: String, metrics: Arc<Metrics>) -> Self {
        let attempt = Duration::from_millis(config.lease_renew_interval_ms);
        let timeouts = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(attempt)
            .operation_timeout(attempt * 2)
            .build();
        let client = Client::from_conf(client.config().to_builder().timeout_config(timeouts).build());
        Leases {
            client,
            table: config.lease_table.clone(),
            worker_id,
            source: config.stream.clone(),
            config,
            metrics,
            held: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            live: Mutex::new(Vec::new()),
            settled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A call of the lease loop's sync or takes failed (logged, counted,
    /// and the input marked failing); it is tried again at the next tick.
    pub(crate) fn sync_failed(&self, kind: SourceErrorKind, error: &str) {
        SourceError { source: &self.source, shard: None, kind, error }.emit(&self.metrics);
    }

    fn lost(&self, shard: &str, how: LeaseLostHow) {
        LeaseLost { source: &self.source, shard, how }.emit(&self.metrics);
    }

    fn held_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Holding>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_held_gauge(&self) {
        let count = self.held_lock().len();
        LeasesHeld { source: &self.source, count }.emit(&self.metrics);
    }

    /// Shards this instance holds now.
    pub fn held_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.held_lock().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Every lease in the table. Eventually consistent, at half the read
    /// cost: every write that acts on what it read is conditional on the
    /// lease's counter, so a stale copy only makes that write fail, and a
    /// counter seen late only delays an expiry by that lag.
    pub async fn scan(&self) -> Result<Vec<Lease>, LeaseError> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| LeaseError::Failed(describe(&e)))?;
            out.extend(page.items().iter().filter_map(parse_lease));
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// One lease, or `None` if there is no such item.
    pub async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("leaseKey", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| LeaseError::Failed(describe(&e)))?;
        Ok(out.item.as_ref().and_then(parse_lease))
    }

    /// Creates a free lease for each shard in `shards` (id, parents) that has none.
    pub async fn create_missing(
        &self,
        shards: &[(String, Vec<String>)],
        existing: &HashSet<String>,
    ) -> Result<usize, LeaseError> {
        let initial = self.config.initial_position.iterator_type();
        let mut created = 0;
        for (shard, parents) in shards {
            if existing.contains(shard) {
                continue;
            }
            // A child shard starts at its beginning whatever the initial
            // position: its parents' records were read up to their end.
            let start = if parents.is_empty() { initial } else { "TRIM_HORIZON" };
            let mut req = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("leaseKey", s(shard))
                .item("leaseCounter", n(0))
                .item("checkpoint", s(start))
                .item("checkpointSubSequenceNumber", n(0))
                .item("ownerSwitchesSinceCheckpoint", n(0))
                .condition_expression("attribute_not_exists(leaseKey)");
            if !parents.is_empty() {
                req = req.item("parentShardId", AttributeValue::Ss(parents.clone()));
            }
            match req.send().await {
                Ok(_) => {
                    created += 1;
                    info!(shard = %shard, parents = ?parents, "Lease created for a new shard");
                }
                Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(LeaseError::Failed(describe(&e))),
            }
        }
        Ok(created)
    }

    /// Renews every held lease, all at once (one slow write must not delay
    /// the others toward their expiry); returns the holdings lost, as
    /// (shard, generation).
    pub async fn renew_all(&self) -> Vec<(String, i64)> {
        let held: Vec<(String, Arc<Holding>)> = self.held_lock().iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect();
        let renewals = held.into_iter().map(|(key, h)| async move {
            let generation = h.generation;
            self.renew(&key, &h).await.then_some((key, generation))
        });
        let lost: Vec<(String, i64)> = futures::future::join_all(renewals).await.into_iter().flatten().collect();
        // By generation: a holding taken again meanwhile stays.
        for (key, generation) in &lost {
            self.forget(key, *generation);
        }
        self.set_held_gauge();
        lost
    }

    /// Renews one held lease; true when it is lost.
    async fn renew(&self, key: &str, holding: &Holding) -> bool {
        let mut h = holding.state.lock().await;
        match self.conditional_write(key, holding.generation, &mut h, None, false).await {
            Ok(()) => {
                LeaseCallsWorked { source: &self.source, kind: SourceErrorKind::Leases }.emit(&self.metrics);
                false
            }
            Err(WriteFailure::Moved) => {
                self.lost(key, LeaseLostHow::Taken);
                true
            }
            Err(WriteFailure::Failed(error)) => {
                let stale = h.last_renewed.elapsed() >= Duration::from_millis(self.config.failover_time_ms);
                let given_up = if stale { "; not renewed within the failover time, given up" } else { "" };
                self.sync_failed(SourceErrorKind::Leases, &format!("renewing the lease of {key}: {error}{given_up}"));
                if stale {
                    // Others may have taken it by now: stop before two read it.
                    self.lost(key, LeaseLostHow::Expired);
                }
                stale
            }
        }
    }

    /// Scans the table and takes leases toward this instance's share;
    /// returns the leases now held that were not before.
    pub async fn take(&self, rng: &mut impl rand::Rng) -> Result<Vec<Lease>, LeaseError> {
        let leases = self.scan().await?;
        let now = Instant::now();
        let failover = Duration::from_millis(self.config.failover_time_ms);
        let held_now: HashSet<String> = self.held_lock().keys().cloned().collect();
        let mut expired = HashSet::new();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|k, _| leases.iter().any(|l| &l.key == k));
            for l in &leases {
                let entry = seen.entry(l.key.clone()).or_insert(Seen { counter: l.counter, since: now });
                if entry.counter != l.counter {
                    *entry = Seen { counter: l.counter, since: now };
                }
                let free = l.owner.is_none();
                let stale = now.duration_since(entry.since) >= failover;
                // A lease in the table under our name that we do not hold is a
                // leftover (e.g. we lost it and it came back): take it anew.
                let orphan = l.owner.as_deref() == Some(self.worker_id.as_str()) && !held_now.contains(&l.key);
                if free || stale || orphan {
                    expired.insert(l.key.clone());
                }
            }
        }
        {
            let mut live: Vec<String> = leases.iter().filter(|l| !l.finished()).map(|l| l.key.clone()).collect();
            live.sort();
            *self.live.lock().unwrap_or_else(|e| e.into_inner()) = live;
        }
        let plan = plan_take(&self.worker_id, &leases, &expired, self.config.max_leases_to_steal, rng);
        let settled =
            plan.need == 0 && !leases.iter().any(|l| !l.finished() && expired.contains(&l.key) && !held_now.contains(&l.key));
        self.settled.store(settled, std::sync::atomic::Ordering::Relaxed);
        let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();
        let mut taken = Vec::new();
        let mut take_failed = false;
        for (keys, how) in [(&plan.available, LeaseTakenHow::Expired), (&plan.steal, LeaseTakenHow::Stolen)] {
            for key in keys {
                if taken.len() >= plan.need {
                    break;
                }
                let Some(lease) = by_key.get(key.as_str()) else {
                    continue;
                };
                let how = match (how, &lease.owner) {
                    (LeaseTakenHow::Expired, None) if lease.counter == 0 => LeaseTakenHow::New,
                    (LeaseTakenHow::Expired, None) => LeaseTakenHow::Released,
                    _ => how,
                };
                match self.take_one(lease).await {
                    Ok(l) => {
                        LeaseTaken { source: &self.source, shard: &l.key, how, previous_owner: lease.owner.as_deref() }
                            .emit(&self.metrics);
                        LeaseCallsWorked { source: &self.source, kind: SourceErrorKind::Leases }.emit(&self.metrics);
                        taken.push(l);
                    }
                    Err(LeaseError::Lost(_)) => {
                        debug!(shard = %key, "Lease changed while taking it; another instance was faster")
                    }
                    Err(e) => {
                        take_failed = true;
                        self.sync_failed(SourceErrorKind::Leases, &format!("taking the lease of {key}: {e}"));
                    }
                }
            }
        }
        // An instance that holds no lease and took none without a failure
        // (more instances than shards) renews nothing: the scan that worked
        // says its lease table works. (One that holds leases says so with
        // its renewals, which a scan must not hide.)
        if taken.is_empty() && !take_failed && self.held_lock().is_empty() {
            LeaseCallsWorked { source: &self.source, kind: SourceErrorKind::Leases }.emit(&self.metrics);
        }
        self.set_held_gauge();
        Ok(taken)
    }

    /// How long until the next take: `lease_take_interval_ms`, or, while
    /// the last take found this instance at its share and no lease free or
    /// expired, a quarter of `failover_time_ms` if that is longer. A settled
    /// fleet then scans the table a few times per failover time instead of
    /// every second (the scan's cost grows with shards times instances); an
    /// instance below its share, a lease released or expired, is back to
    /// the short interval at the next take.
    pub fn next_take_in(&self) -> Duration {
        let short = Duration::from_millis(self.config.lease_take_interval_ms);
        if self.settled.load(std::sync::atomic::Ordering::Relaxed) {
            short.max(Duration::from_millis(self.config.failover_time_ms / 4))
        } else {
            short
        }
    }

    async fn take_one(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("leaseKey", s(&lease.key))
            .update_expression("SET leaseOwner = :me, leaseCounter = :next ADD ownerSwitchesSinceCheckpoint :one")
            .condition_expression("leaseCounter = :c")
            .expression_attribute_values(":me", s(&self.worker_id))
            .expression_attribute_values(":c", n(lease.counter))
            .expression_attribute_values(":next", n(lease.counter + 1))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        match result {
            Ok(_) => {
                let mine = Lease {
                    owner: Some(self.worker_id.clone()),
                    counter: lease.counter + 1,
                    owner_switches: lease.owner_switches + 1,
                    ..lease.clone()
                };
                let held = Held { counter: mine.counter, last_renewed: Instant::now(), ambiguous: false };
                let holding = Holding { generation: mine.counter, state: tokio::sync::Mutex::new(held) };
                self.held_lock().insert(lease.key.clone(), Arc::new(holding));
                Ok(mine)
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Err(LeaseError::Lost(lease.key.clone()))
            }
            Err(e) => Err(LeaseError::Failed(describe(&e))),
        }
    }

    /// Records `checkpoint` for a held lease, fenced on still holding it in
    /// the holding `generation` (the lease's counter when it was taken), so
    /// a task of an earlier holding can never move the checkpoint.
    pub async fn checkpoint(&self, key: &str, generation: i64, checkpoint: &Checkpoint) -> Result<(), LeaseError> {
        let result = self.write_held(key, generation, Some(checkpoint), false).await;
        let outcome = match &result {
            Ok(()) => CheckpointOutcome::Ok,
            Err(LeaseError::Lost(_)) => CheckpointOutcome::Fenced,
            Err(LeaseError::Failed(_)) => CheckpointOutcome::Failed,
        };
        CheckpointWritten { source: &self.source, outcome }.emit(&self.metrics);
        result
    }

    /// Checkpoints (when given) and gives the lease up so another instance
    /// takes it at its next take, without waiting for the failover time.
    pub async fn release(&self, key: &str, generation: i64, checkpoint: Option<&Checkpoint>) -> Result<(), LeaseError> {
        let result = self.write_held(key, generation, checkpoint, true).await;
        if result.is_ok() {
            self.lost(key, LeaseLostHow::Released);
        }
        self.forget(key, generation);
        result
    }

    /// Forgets a holding without writing (after it was lost, or its shard
    /// ended); a later holding of the same lease stays.
    pub fn forget(&self, key: &str, generation: i64) {
        let mut held = self.held_lock();
        if held.get(key).is_some_and(|h| h.generation == generation) {
            held.remove(key);
        }
        drop(held);
        self.set_held_gauge();
    }

    /// A checkpoint or release of a held lease; a lease that moved on is
    /// forgotten (fenced).
    async fn write_held(
        &self,
        key: &str,
        generation: i64,
        checkpoint: Option<&Checkpoint>,
        release: bool,
    ) -> Result<(), LeaseError> {
        let Some(holding) = self.held_lock().get(key).cloned() else {
            return Err(LeaseError::Lost(key.to_owned()));
        };
        if holding.generation != generation {
            // Taken again since this task's holding began: not this task's to write.
            return Err(LeaseError::Lost(key.to_owned()));
        }
        let mut h = holding.state.lock().await;
        match self.conditional_write(key, generation, &mut h, checkpoint, release).await {
            Ok(()) => Ok(()),
            Err(WriteFailure::Moved) => {
                self.forget(key, generation);
                self.lost(key, LeaseLostHow::Fenced);
                Err(LeaseError::Lost(key.to_owned()))
            }
            Err(WriteFailure::Failed(error)) => Err(LeaseError::Failed(error)),
        }
    }

    /// The one conditional write of a held lease (renewal, checkpoint,
    /// release): bump the counter, and record `checkpoint` and/or give the
    /// lease up, on condition that it is still ours at the counter last
    /// written.
    ///
    /// A write that got no answer may have landed: the counter then moved
    /// under this holding's feet, and the next write's condition fails as
    /// if another instance had taken the lease. So a condition failure
    /// after such a write reads the lease: still ours (`leaseOwner` is this
    /// instance, which only this holding can have set since it began) at a
    /// higher counter means the earlier write landed; the counter is adopted
    /// and the write made again, instead of giving up a lease nobody took.
    /// Only while `generation` is still this instance's holding of the
    /// lease: once it was given up and the lease taken again (a new holding,
    /// also under this instance's name), the counter is the new holding's.
    async fn conditional_write(
        &self,
        key: &str,
        generation: i64,
        h: &mut Held,
        checkpoint: Option<&Checkpoint>,
        release: bool,
    ) -> Result<(), WriteFailure> {
        match self.write_once(key, h, checkpoint, release).await {
            Err(WriteFailure::Moved) if h.ambiguous => match self.get(key).await {
                Ok(Some(l))
                    if l.owner.as_deref() == Some(self.worker_id.as_str())
                        && l.counter > h.counter
                        && self.held_lock().get(key).is_some_and(|held| held.generation == generation) =>
                {
                    debug!(shard = %key, counter = l.counter, "An unanswered lease write had landed; adopting its counter");
                    h.counter = l.counter;
                    self.write_once(key, h, checkpoint, release).await
                }
                Ok(_) => Err(WriteFailure::Moved),
                Err(e) => Err(WriteFailure::Failed(e.to_string())),
            },
            other => other,
        }
    }

    async fn write_once(
        &self,
        key: &str,
        h: &mut Held,
        checkpoint: Option<&Checkpoint>,
        release: bool,
    ) -> Result<(), WriteFailure> {
        let mut set = "SET leaseCounter = :next".to_owned();
        let mut req = self.client.update_item().table_name(&self.table).key("leaseKey", s(key));
        if let Some(c) = checkpoint {
            let (value, sub) = c.encode();
            set.push_str(", checkpoint = :cp, checkpointSubSequenceNumber = :sub, ownerSwitchesSinceCheckpoint = :zero");
            req = req
                .expression_attribute_values(":cp", s(value))
                .expression_attribute_values(":sub", n(sub as i64))
                .expression_attribute_values(":zero", n(0));
        }
        if release {
            set.push_str(" REMOVE leaseOwner");
        }
        let result = req
            .update_expression(set)
            .condition_expression("leaseOwner = :me AND leaseCounter = :c")
            .expression_attribute_values(":me", s(&self.worker_id))
            .expression_attribute_values(":c", n(h.counter))
            .expression_attribute_values(":next", n(h.counter + 1))
            .send()
            .await;
        match result {
            Ok(_) => {
                h.counter += 1;
                h.last_renewed = Instant::now();
                h.ambiguous = false;
                Ok(())
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Err(WriteFailure::Moved),
            Err(e) => {
                // Refused by the service for the request (a 4xx): nothing was
                // written. Anything else (a timeout, a dropped connection, a
                // 5xx, which DynamoDB may answer after applying) may have been.
                let refused = matches!(&e, SdkError::ServiceError(se) if se.raw().status().is_client_error());
                h.ambiguous |= !refused;
                Err(WriteFailure::Failed(describe(&e)))
            }
        }
    }

    /// Whether every parent of `lease` has been read to its end (a parent
    /// with no lease, e.g. one older than the stream's retention, counts as
    /// ended).
    pub async fn parents_done(&self, lease: &Lease) -> Result<bool, LeaseError> {
        for parent in &lease.parents {
            if let Some(p) = self.get(parent).await?
                && !p.finished()
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Runs the lease loops until `stop`: renews held leases every
/// `lease_renew_interval_ms`; until `stop_taking`, takes leases every
/// `lease_take_interval_ms` and syncs shards every `shard_sync_interval_ms`
/// or when `sync_now` is notified. Reports to `events`. Renewing runs beside
/// taking, not between takes: a slow scan of the table must not delay a
/// renewal toward the failover time.
pub async fn run(
    leases: Arc<Leases>,
    kinesis: KinesisSource,
    events: mpsc::Sender<LeaseEvent>,
    sync_now: Arc<tokio::sync::Notify>,
    stop_taking: CancellationToken,
    stop: CancellationToken,
) {
    tokio::join!(renew_loop(&leases, &events, &stop), take_loop(&leases, &kinesis, &events, &sync_now, &stop_taking, &stop));
}

fn ticker(ms: u64) -> tokio::time::Interval {
    let mut i = tokio::time::interval(Duration::from_millis(ms));
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

async fn renew_loop(leases: &Leases, events: &mpsc::Sender<LeaseEvent>, stop: &CancellationToken) {
    let mut renew = ticker(leases.config.lease_renew_interval_ms);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = renew.tick() => {
                for (key, generation) in leases.renew_all().await {
                    if events.send(LeaseEvent::Lost { key, generation }).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn take_loop(
    leases: &Leases,
    kinesis: &KinesisSource,
    events: &mpsc::Sender<LeaseEvent>,
    sync_now: &tokio::sync::Notify,
    stop_taking: &CancellationToken,
    stop: &CancellationToken,
) {
    let mut take = ticker(leases.config.lease_take_interval_ms);
    let mut sync = ticker(leases.config.shard_sync_interval_ms);
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut synced_once = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = sync.tick(), if !stop_taking.is_cancelled() => {
                synced_once |= sync_shards(leases, kinesis).await;
            }
            () = sync_now.notified(), if !stop_taking.is_cancelled() => {
                synced_once |= sync_shards(leases, kinesis).await;
            }
            _ = take.tick(), if !stop_taking.is_cancelled() && synced_once => {
                // The guard was checked when this select began; shutdown may
                // have started since, and a lease taken now would be orphaned.
                if stop_taking.is_cancelled() {
                    continue;
                }
                let result = leases.take(&mut rng).await;
                take.reset_after(leases.next_take_in());
                match result {
                    Ok(taken) => {
                        if stop_taking.is_cancelled() {
                            // Shutdown began during the take: give them straight back.
                            for l in taken {
                                let _ = leases.release(&l.key, l.counter, None).await;
                            }
                            continue;
                        }
                        for l in taken {
                            if events.send(LeaseEvent::Acquired(l)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => leases.sync_failed(SourceErrorKind::Leases, &format!("scanning the lease table: {e}")),
                }
            }
        }
    }
}

use rand::SeedableRng;

/// Creates a lease for each of the stream's shards that has none. False
/// (counted in `cafe_source_errors_total{outcome="shards"}`, and the
/// `<stream>/shards` component marked failing for `/readyz` until a sync
/// works) when a call failed (ListShards, the scan, a lease's creation):
/// it is tried again at the next sync, and until one succeeds no lease is
/// taken, nor a new shard's after a reshard.
async fn sync_shards(leases: &Leases, kinesis: &KinesisSource) -> bool {
    let shards = match kinesis.list_shards().await {
        Ok(s) => s,
        Err(e) => {
            leases.sync_failed(SourceErrorKind::Shards, &e.to_string());
            return false;
        }
    };
    let existing: HashSet<String> = match leases.scan().await {
        Ok(l) => l.into_iter().map(|l| l.key).collect(),
        Err(e) => {
            leases.sync_failed(SourceErrorKind::Shards, &format!("scanning the lease table: {e}"));
            return false;
        }
    };
    match leases.create_missing(&shards, &existing).await {
        Ok(_) => {
            LeaseCallsWorked { source: &leases.source, kind: SourceErrorKind::Shards }.emit(&leases.metrics);
            true
        }
        Err(e) => {
            leases.sync_failed(SourceErrorKind::Shards, &format!("creating leases: {e}"));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// An instance whose sync with the stream and the lease table fails
    /// reads nothing: each failure is counted by call, and its component
    /// (`<stream>/shards`, `<stream>/leases`) shows failing (on `/readyz`,
    /// once for longer than `unready_after_secs`), where it used to be a
    /// log line only; each is cleared by its own calls working, so a scan
    /// that works does not hide renewals that fail.
    #[tokio::test]
    async fn a_sync_that_fails_is_counted_and_marks_its_component_failing() {
        let metrics = Arc::new(Metrics::new());
        let config = KinesisSourceConfig { stream: "orders-s".into(), ..KinesisSourceConfig::default() };
        let refusing = crate::sinks::refusing_sdk_config();
        let kinesis = KinesisSource::new(aws_sdk_kinesis::Client::new(&refusing), config.clone(), Arc::clone(&metrics));
        let leases = Leases::new(Client::new(&refusing), config, "w1".into(), Arc::clone(&metrics));
        // `cafe_source_errors_total{source, outcome}` (the kind of call).
        let errors = |kind: &str| {
            let want = format!(r#"cafe_source_errors_total{{source="orders-s",outcome="{kind}"}} "#);
            metrics.encode().lines().find_map(|l| l.strip_prefix(want.as_str())?.parse::<u64>().ok()).unwrap_or(0)
        };
        assert!(!sync_shards(&leases, &kinesis).await);
        assert_eq!((errors("shards"), errors("leases")), (1, 0));
        // A renewal failing, then both failing again a moment later: each
        // component has been failing for longer than that moment, and
        // still is.
        leases.sync_failed(SourceErrorKind::Leases, "renewing the lease of shardId-0: refused");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!sync_shards(&leases, &kinesis).await);
        leases.sync_failed(SourceErrorKind::Leases, "renewing the lease of shardId-0: refused");
        assert_eq!((errors("shards"), errors("leases")), (2, 2));
        let limit = Duration::from_millis(20);
        assert_eq!(metrics.components.failing_longer_than(limit), ["source orders-s/leases", "source orders-s/shards"]);
        // ListShards working clears its own component only.
        LeaseCallsWorked { source: "orders-s", kind: SourceErrorKind::Shards }.emit(&metrics);
        assert_eq!(metrics.components.failing_longer_than(limit), ["source orders-s/leases"]);
    }

    /// A lease table (in memory) that answers every call as an empty scan.
    #[derive(Debug, Clone)]
    struct EmptyTable;

    impl aws_smithy_runtime_api::client::http::HttpConnector for EmptyTable {
        fn call(
            &self,
            _: aws_sdk_dynamodb::config::http::HttpRequest,
        ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
            let body = aws_smithy_types::body::SdkBody::from(r#"{"Items":[],"Count":0,"ScannedCount":0}"#);
            let response = aws_sdk_dynamodb::config::http::HttpResponse::new(200.try_into().expect("a status"), body);
            aws_smithy_runtime_api::client::http::HttpConnectorFuture::ready(Ok(response))
        }
    }

    /// An instance that holds no lease and has none to take (more
    /// instances than shards) renews nothing: a take's scan that worked
    /// clears its `<stream>/leases` component, or a transient failure
    /// long ago would count with the next one as failing all along.
    #[tokio::test]
    async fn a_take_that_finds_nothing_to_take_clears_the_leases_component_of_an_idle_instance() {
        let metrics = Arc::new(Metrics::new());
        let config = KinesisSourceConfig { stream: "orders-i".into(), ..KinesisSourceConfig::default() };
        let table = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new("k", "s", None, None, "test"))
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .http_client(crate::sinks::in_process(EmptyTable))
            .build();
        let leases = Leases::new(Client::from_conf(table), config, "w1".into(), Arc::clone(&metrics));
        leases.sync_failed(SourceErrorKind::Leases, "scanning the lease table: throttled");
        tokio::time::sleep(Duration::from_millis(30)).await;
        leases.sync_failed(SourceErrorKind::Leases, "scanning the lease table: throttled");
        let limit = Duration::from_millis(20);
        assert_eq!(metrics.components.failing_longer_than(limit), ["source orders-i/leases"]);
        let taken = leases.take(&mut rand::rngs::StdRng::seed_from_u64(7)).await.expect("the scan works");
        assert!(taken.is_empty());
        assert!(metrics.components.failing_longer_than(limit).is_empty());
    }

    fn lease(key: &str, owner: Option<&str>) -> Lease {
        Lease {
            key: key.into(),
            owner: owner.map(Into::into),
            counter: 1,
            checkpoint: Checkpoint::TrimHorizon,
            parents: vec![],
            owner_switches: 0,
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    #[test]
    fn target_is_the_ceiling_of_an_even_share() {
        assert_eq!(target_share(8, 3), 3);
        assert_eq!(target_share(8, 2), 4);
        assert_eq!(target_share(8, 1), 8);
        assert_eq!(target_share(0, 1), 0);
    }

    #[test]
    fn free_and_expired_leases_are_taken_before_any_steal() {
        let leases: Vec<Lease> = (0..8).map(|i| lease(&format!("s{i}"), if i < 6 { Some("a") } else { None })).collect();
        let expired: HashSet<String> = ["s6", "s7"].iter().map(|s| s.to_string()).collect();
        let plan = plan_take("b", &leases, &expired, 1, &mut rng());
        // Workers a and b: target 4. Two free leases first, then one steal from a (6 > 4).
        let mut avail = plan.available.clone();
        avail.sort();
        assert_eq!(avail, vec!["s6", "s7"]);
        assert_eq!(plan.need, 4);
        assert_eq!(plan.steal.len(), 1);
        assert!(plan.steal[0].as_str() < "s6");
    }

    #[test]
    fn no_steal_when_already_at_share_or_the_busiest_is_not_above_it() {
        let leases: Vec<Lease> = (0..8).map(|i| lease(&format!("s{i}"), Some(["a", "b", "c"][i % 3]))).collect();
        let none = HashSet::new();
        // a has 3, b 3, c 2: target 3, c may not steal (nobody is above 3).
        let c = plan_take("c", &leases, &none, 5, &mut rng());
        assert_eq!((c.need, c.available.len(), c.steal.len()), (1, 0, 0));
        assert_eq!(plan_take("a", &leases, &none, 5, &mut rng()), TakePlan::default());
    }

    #[test]
    fn a_new_worker_steals_at_most_the_configured_number() {
        let leases: Vec<Lease> = (0..8).map(|i| lease(&format!("s{i}"), Some("a"))).collect();
        let plan = plan_take("new", &leases, &HashSet::new(), 1, &mut rng());
        assert_eq!((plan.need, plan.available.len(), plan.steal.len()), (4, 0, 1));
        let plan = plan_take("new", &leases, &HashSet::new(), 10, &mut rng());
        assert_eq!(plan.steal.len(), 4, "up to the share of 4");
    }

    #[test]
    fn every_mirror_bucket_has_one_owner_and_moves_with_its_lease() {
        let live: Vec<String> = (0..5).map(|i| format!("shardId-{i}")).collect();
        let owners = ["a", "b", "a", "c", "b"];
        let owner_of = |key: &str| owners[live.iter().position(|k| k == key).expect("live")];
        let share = |me: &str| share_buckets(&live, |k| owner_of(k) == me, 16).expect("a share");
        let mut all: Vec<u32> = ["a", "b", "c"].iter().flat_map(|me| share(me)).collect();
        all.sort();
        assert_eq!(all, (0..16).collect::<Vec<_>>(), "each bucket once");
        // c dies; b takes its lease: c's buckets are b's now.
        let (c, b) = (share("c"), share("b"));
        let b_after = share_buckets(&live, |k| matches!(owner_of(k), "b" | "c"), 16).expect("a share");
        assert_eq!(b_after.len(), b.len() + c.len());
        assert!(c.iter().all(|x| b_after.contains(x)));
        // Nothing known yet: every bucket.
        assert_eq!(share_buckets(&[], |_| true, 16), None);
    }

    #[test]
    fn finished_leases_are_neither_counted_nor_taken() {
        let mut leases: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), None)).collect();
        leases[0].checkpoint = Checkpoint::ShardEnd;
        let expired: HashSet<String> = leases.iter().map(|l| l.key.clone()).collect();
        let plan = plan_take("a", &leases, &expired, 1, &mut rng());
        let mut got = plan.available;
        got.sort();
        assert_eq!(got, vec!["s1", "s2", "s3"]);
    }

    #[test]
    fn dead_workers_leases_count_as_free_not_as_a_worker() {
        // a is dead (its leases expired): b and c split all 8.
        let leases: Vec<Lease> = (0..8)
            .map(|i| {
                lease(
                    &format!("s{i}"),
                    Some(if i < 3 {
                        "a"
                    } else if i < 6 {
                        "b"
                    } else {
                        "c"
                    }),
                )
            })
            .collect();
        let expired: HashSet<String> = ["s0", "s1", "s2"].iter().map(|s| s.to_string()).collect();
        let plan = plan_take("c", &leases, &expired, 1, &mut rng());
        // Workers b and c: target 4; c holds 2: it needs 2 and may try all
        // 3 expired ones (b may win some), with no steal.
        assert_eq!((plan.need, plan.available.len()), (2, 3));
        assert!(plan.steal.is_empty());
    }

    #[test]
    fn checkpoints_round_trip() {
        for c in [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::ShardEnd,
            Checkpoint::AtTimestamp { millis: 1_764_489_600_123 },
            Checkpoint::At { sequence: "49590338271490256608559692538361571095921575989136588898".into(), sub: 3 },
        ] {
            let (v, sub) = c.encode();
            assert_eq!(Checkpoint::decode(&v, sub), c);
        }
        assert_eq!(Checkpoint::decode("AT_TIMESTAMP:soon", 0), Checkpoint::TrimHorizon, "unreadable: from the start");
    }
}
