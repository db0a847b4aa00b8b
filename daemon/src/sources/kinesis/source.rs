//! The Kinesis source: shard discovery and one paced reader per leased
//! shard.
//!
//! Owns: ListShards (paginated), shard iterators (their renewal when they
//! expire, resuming after the last record handed on), GetRecords pacing
//! (at most one call per `poll_interval_ms` per shard, one per
//! `idle_poll_interval_ms` once a shard has been quiet at its tip that
//! long, backing off on ProvisionedThroughputExceeded), KPL
//! de-aggregation, and the bounded prefetch channel that is the shard's
//! backpressure. Must not: decide which shards to read (leases do) or
//! checkpoint (the orders path does, once its writes are durable).

use std::cmp::Ordering;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::ShardIteratorType;
use pipeline::kpl;
use pipeline::orders::{ShardAt, ShardPos};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::budget::{ReadBudget, Room};
use super::checkpoint::{Checkpoint, compare_sequence};
use crate::aws::{AwsError, Backoff, ErrorClass, classify, describe};
use crate::config::KinesisSourceConfig;
use crate::internal_events::{
    InternalEvent, IteratorExpired, ReadThrottled, Received, ShardLag, ShardReadStopped, SourceError, SourceErrorKind,
};
use crate::metrics::Metrics;
use crate::route::Position;

/// One user record: a plain Kinesis record, or one record of a KPL aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRecord {
    /// The Kinesis sequence number of the (aggregate) record: one copy for
    /// an aggregate's records, and the one their shard positions share.
    pub sequence: Arc<str>,
    /// Index inside the aggregate; 0 for a plain record.
    pub sub: u64,
    /// One event.
    pub data: Vec<u8>,
}

impl ShardRecord {
    /// Where this record was read, in shard `at` (its name shared by the
    /// shard's records): its shard position, or, for a sequence number
    /// that is not one (never from Kinesis), the text
    /// `shardId/sequence[/sub]` alone, which no order event is judged at.
    pub fn position(&self, at: &ShardAt, aggregated: bool) -> Position {
        let shard = &at.shard;
        // A plain record's place is 0 (its text has none).
        let sub = if aggregated { u32::try_from(self.sub).ok() } else { Some(0) };
        match sub.and_then(|sub| ShardPos::of_record(at, &self.sequence, sub)) {
            Some(pos) => Position::Record { pos, aggregated },
            None if aggregated => Position::Text(format!("{shard}/{}/{}", self.sequence, self.sub)),
            None => Position::Text(format!("{shard}/{}", self.sequence)),
        }
    }
}

/// What one GetRecords gave, de-aggregated.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Records after the last one handed on, in shard order.
    pub records: Vec<ShardRecord>,
    /// Whether each record came out of a KPL aggregate.
    pub aggregated: Vec<bool>,
    /// The shard is closed and every record of it has been handed on.
    pub end: bool,
    /// The records' room in the instance's read budget, given back when
    /// the batch holding them is durable.
    pub room: Option<Room>,
}

/// True when (sequence, sub) is at or before `after`.
fn is_at_or_before(sequence: &str, sub: u64, after: &(String, u64)) -> bool {
    match compare_sequence(sequence, &after.0) {
        Ordering::Less => true,
        Ordering::Equal => sub <= after.1,
        Ordering::Greater => false,
    }
}

/// A stream's read pacing, which a reload may change: each reader reads
/// it after each call, and a reader waiting out an interval is woken to
/// wait by the new one (an idle wait may be a minute long).
#[derive(Debug, Clone)]
pub struct LivePacing {
    /// `poll_interval_ms`.
    poll_ms: Arc<AtomicU64>,
    /// `idle_poll_interval_ms`.
    idle_ms: Arc<AtomicU64>,
    /// Sent to by each `set`: the readers' wake-up.
    changed: Arc<watch::Sender<()>>,
}

impl LivePacing {
    fn new(config: &KinesisSourceConfig) -> Self {
        LivePacing {
            poll_ms: Arc::new(AtomicU64::new(config.poll_interval_ms)),
            idle_ms: Arc::new(AtomicU64::new(config.idle_poll_interval_ms)),
            changed: Arc::new(watch::Sender::new(())),
        }
    }

    /// Sets both from a configuration, and wakes the waiting readers.
    pub fn set(&self, config: &KinesisSourceConfig) {
        self.poll_ms.store(config.poll_interval_ms, AtomicOrdering::Relaxed);
        self.idle_ms.store(config.idle_poll_interval_ms, AtomicOrdering::Relaxed);
        self.changed.send_replace(());
    }

    /// A reader's view of the changes (each `set` from now on).
    fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms.load(AtomicOrdering::Relaxed))
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms.load(AtomicOrdering::Relaxed))
    }
}

/// When one shard's next GetRecords may go. Every call is at least `poll`
/// after the one before; once the shard has given nothing at its tip for
/// `idle` (from the start of the first empty read to the start of the
/// latest), calls are `idle` apart until one returns a record. An empty
/// read behind the tip (a gap in the stream, `MillisBehindLatest` above 0)
/// is not quiet: reading goes on at `poll` to catch up.
#[derive(Debug, Default)]
struct Pacing {
    /// Start of the first of the empty reads at the tip in a row.
    quiet_since: Option<tokio::time::Instant>,
    /// The last call's (start, records, at tip), while the wait after it
    /// is the pacing's (not a backoff's).
    last: Option<(tokio::time::Instant, bool, bool)>,
}

impl Pacing {
    /// The earliest start of the next call, after a successful one that
    /// started at `started`.
    fn next(
        &mut self,
        started: tokio::time::Instant,
        records: bool,
        at_tip: bool,
        poll: Duration,
        idle: Duration,
    ) -> tokio::time::Instant {
        self.last = Some((started, records, at_tip));
        if records || !at_tip {
            self.quiet_since = None;
            return started + poll;
        }
        let since = *self.quiet_since.get_or_insert(started);
        if started.duration_since(since) >= idle { started + idle.max(poll) } else { started + poll }
    }

    /// The next call's start again under `live`'s values (a reload at
    /// `now`), when the wait is the pacing's; `None` for a backoff's.
    /// `current` is the start waited for so far. A start the new values
    /// put before `now` (a shorter interval than the one waited out) does
    /// not become `now`: every reader of the stream is woken by the same
    /// reload, and each overdue one calling at once would put them all in
    /// step for good (each call an interval after the one before), a burst
    /// of GetRecords on every shard at each beat instead of a trickle. It
    /// keeps `current` if that is due within the new interval (a reader
    /// already due, or spread by an earlier reload: a run of reloads does
    /// not draw again), else it is spread at random over the new interval.
    fn again(
        &mut self,
        live: &LivePacing,
        current: tokio::time::Instant,
        now: tokio::time::Instant,
        rng: &mut impl rand::Rng,
    ) -> Option<tokio::time::Instant> {
        let (started, records, at_tip) = self.last?;
        let at = self.next(started, records, at_tip, live.poll(), live.idle());
        let interval = at.duration_since(started);
        Some(if at > now {
            at
        } else if current <= now + interval {
            current
        } else {
            now + interval.mul_f64(rng.random::<f64>())
        })
    }

    /// The wait from now on is not the pacing's (a backoff, a renewal).
    fn off(&mut self) {
        self.last = None;
    }
}

/// Waits until `next_call`, which a reload (`changes`) sets again when the
/// wait is the pacing's. False when stopped first.
async fn wait_turn(
    next_call: &mut tokio::time::Instant,
    pacing: &mut Pacing,
    live: &LivePacing,
    changes: &mut watch::Receiver<()>,
    stop: &CancellationToken,
) -> bool {
    loop {
        tokio::select! {
            () = stop.cancelled() => return false,
            () = tokio::time::sleep_until(*next_call) => return true,
            Ok(()) = changes.changed() => {
                if let Some(at) = pacing.again(live, *next_call, tokio::time::Instant::now(), &mut rand::rng()) {
                    *next_call = at;
                }
            }
        }
    }
}

/// A handle on the stream.
#[derive(Debug, Clone)]
pub struct KinesisSource {
    client: Client,
    config: KinesisSourceConfig,
    metrics: Arc<Metrics>,
    budget: ReadBudget,
    pacing: LivePacing,
}

impl KinesisSource {
    /// A source on `config.stream`.
    pub fn new(client: Client, config: KinesisSourceConfig, metrics: Arc<Metrics>) -> Self {
        let budget = ReadBudget::new(config.max_bytes_in_flight, Arc::clone(&metrics));
        let pacing = LivePacing::new(&config);
        KinesisSource { client, config, metrics, budget, pacing }
    }

    /// The live pacing, for a reload to set.
    pub fn pacing(&self) -> LivePacing {
        self.pacing.clone()
    }

    /// The stream name, the `source` label of its metrics.
    pub fn name(&self) -> &str {
        &self.config.stream
    }

    /// Every shard of the stream with its parents (open and closed).
    pub async fn list_shards(&self) -> Result<Vec<(String, Vec<String>)>, AwsError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match token.take() {
                Some(t) => self.client.list_shards().next_token(t),
                None => self.client.list_shards().stream_name(&self.config.stream),
            };
            let page = req.send().await.map_err(|e| AwsError::sdk(format!("ListShards on {}", self.config.stream), &e))?;
            for shard in page.shards() {
                let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .map(str::to_owned)
                    .collect();
                out.push((shard.shard_id().to_owned(), parents));
            }
            match page.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// An iterator positioned for reading after `after` (or at the start
    /// `start` names when nothing was read yet).
    async fn iterator(&self, shard: &str, start: &Checkpoint, after: Option<&(String, u64)>) -> Result<Option<String>, AwsError> {
        let mut req = self.client.get_shard_iterator().stream_name(&self.config.stream).shard_id(shard);
        req = match (after, start) {
            // AT, not AFTER: the record may be an aggregate whose later
            // sub-records are not processed yet; the ones that are get skipped.
            (Some((seq, _)), _) | (None, Checkpoint::At { sequence: seq, .. }) => {
                req.shard_iterator_type(ShardIteratorType::AtSequenceNumber).starting_sequence_number(seq)
            }
            (None, Checkpoint::Latest) => req.shard_iterator_type(ShardIteratorType::Latest),
            (None, Checkpoint::AtTimestamp { millis }) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(*millis)),
            (None, Checkpoint::TrimHorizon) => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            (None, Checkpoint::ShardEnd) => return Ok(None),
        };
        match req.send().await {
            Ok(out) => Ok(out.shard_iterator),
            Err(e) => Err(AwsError::sdk(format!("GetShardIterator of {shard}"), &e)),
        }
    }

    /// Reads `shard` from `start` into `tx` until the shard ends (a final
    /// `Fetched { end: true }`), `stop` is cancelled, or `tx` is closed.
    pub async fn fetch_loop(&self, shard: String, start: Checkpoint, tx: mpsc::Sender<Fetched>, stop: CancellationToken) {
        self.read_shard(shard.clone(), start, tx, stop).await;
        // This instance no longer reads the shard: no stale lag for it.
        ShardReadStopped { source: &self.config.stream, shard: &shard }.emit(&self.metrics);
    }

    async fn read_shard(&self, shard: String, start: Checkpoint, tx: mpsc::Sender<Fetched>, stop: CancellationToken) {
        let cfg = &self.config;
        let source = cfg.stream.as_str();
        // The pacing in force now (a reload may change it between calls).
        let poll = || self.pacing.poll();
        let backoff = || Backoff { base: poll(), max: Duration::from_secs(10) };
        // The last record handed on: reading resumes after it.
        let mut after: Option<(String, u64)> = match &start {
            Checkpoint::At { sequence, sub } => Some((sequence.clone(), *sub)),
            _ => None,
        };
        if start == Checkpoint::ShardEnd {
            let _ = tx.send(Fetched { end: true, ..Fetched::default() }).await;
            return;
        }
        let budget = self.budget.for_shard();
        let mut iterator: Option<String> = None;
        let mut failures = 0u32;
        let mut next_call = tokio::time::Instant::now();
        let mut pacing = Pacing::default();
        let mut changes = self.pacing.changes();
        loop {
            if !wait_turn(&mut next_call, &mut pacing, &self.pacing, &mut changes, &stop).await {
                return;
            }
            pacing.off();
            // A stop abandons a call under way (it only reads: what it
            // would return is not kept), rather than waiting out a silent
            // endpoint's timeout with the shard's lease already released.
            let it = match iterator.take() {
                Some(it) => it,
                None => match tokio::select! {
                    () = stop.cancelled() => return,
                    got = self.iterator(&shard, &start, after.as_ref()) => got,
                } {
                    Ok(Some(it)) => it,
                    Ok(None) => {
                        let _ = tx.send(Fetched { end: true, ..Fetched::default() }).await;
                        return;
                    }
                    Err(e) => {
                        let error = e.to_string();
                        SourceError { source, shard: Some(&shard), kind: SourceErrorKind::Iterator, error: &error }
                            .emit(&self.metrics);
                        next_call = tokio::time::Instant::now() + backoff().delay(failures);
                        failures += 1;
                        continue;
                    }
                },
            };
            // Every outcome below sets the next call's time from here.
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = self.client.get_records().shard_iterator(&it).limit(cfg.max_records as i32).send() => result,
            };
            let mut out = match result {
                Ok(out) => out,
                Err(SdkError::ServiceError(e)) if e.err().is_expired_iterator_exception() => {
                    debug!(shard = %shard, "Shard iterator expired; renewing it after the last record handed on");
                    IteratorExpired { source }.emit(&self.metrics);
                    // Renew at once: the pacing already waited.
                    next_call = tokio::time::Instant::now();
                    continue;
                }
                Err(e) => {
                    let class = classify(&e);
                    if class == ErrorClass::Throttled {
                        ReadThrottled { source }.emit(&self.metrics);
                        debug!(shard = %shard, "GetRecords throttled; backing off");
                    } else {
                        let error = describe(&e);
                        SourceError { source, shard: Some(&shard), kind: SourceErrorKind::Read, error: &error }
                            .emit(&self.metrics);
                    }
                    // Keep the iterator unless the error says it cannot be
                    // used again: a new one starts from the last record
                    // handed on, or (nothing read yet) from the start
                    // position, which for LATEST would skip what arrived
                    // meanwhile.
                    let unusable = matches!(e.code(), Some("InvalidArgumentException" | "ResourceNotFoundException"));
                    if !unusable {
                        iterator = Some(it);
                    }
                    next_call = tokio::time::Instant::now() + backoff().delay(failures);
                    failures += 1;
                    continue;
                }
            };
            failures = 0;
            if let Some(ms) = out.millis_behind_latest {
                ShardLag { source, shard: &shard, seconds: ms as f64 / 1000.0 }.emit(&self.metrics);
            }
            // Quiet or not by what the shard holds, not by what is new to
            // this reader (records it skipped as already handed on count).
            let at_tip = out.millis_behind_latest.is_none_or(|ms| ms == 0);
            next_call = pacing.next(started, !out.records().is_empty(), at_tip, poll(), self.pacing.idle());
            let mut fetched = Fetched::default();
            let mut bytes = 0u64;
            for r in out.records() {
                let data = r.data().as_ref();
                bytes += data.len() as u64;
                let seq = r.sequence_number();
                // Made once for the record (its sequence is shared by the
                // positions the shard makes of it, and by an aggregate's
                // records); the partition key is not kept (nothing reads it).
                let mut shared: Option<Arc<str>> = None;
                let mut sequence = || Arc::clone(shared.get_or_insert_with(|| Arc::from(seq)));
                match kpl::deaggregate(data) {
                    Some(subs) => {
                        for sr in subs {
                            if after.as_ref().is_some_and(|a| is_at_or_before(seq, sr.sub_sequence_number, a)) {
                                continue;
                            }
                            fetched.records.push(ShardRecord {
                                sequence: sequence(),
                                sub: sr.sub_sequence_number,
                                data: sr.data.to_vec(),
                            });
                            fetched.aggregated.push(true);
                        }
                    }
                    None => {
                        if after.as_ref().is_some_and(|a| is_at_or_before(seq, 0, a)) {
                            continue;
                        }
                        fetched.records.push(ShardRecord { sequence: sequence(), sub: 0, data: data.to_vec() });
                        fetched.aggregated.push(false);
                    }
                }
            }
            Received { source, shard: Some(&shard), count: fetched.records.len() as u64, bytes: Some(bytes) }.emit(&self.metrics);
            if let Some(last) = fetched.records.last() {
                after = Some((String::from(&*last.sequence), last.sub));
            }
            iterator = out.next_shard_iterator.take();
            // The response's own copy of the records goes now, not after
            // the wait for room below.
            drop(out);
            fetched.end = iterator.is_none();
            if fetched.end {
                info!(shard = %shard, "Shard ended (closed by a split or merge, and read to its end)");
            }
            if !fetched.records.is_empty() || fetched.end {
                let end = fetched.end;
                // Room in the instance's budget before the records go on:
                // under a backlog the readers wait here, not the memory.
                if !fetched.records.is_empty() {
                    let bytes = fetched.records.iter().map(|r| (r.data.len() + r.sequence.len()) as u64).sum();
                    tokio::select! {
                        () = stop.cancelled() => return,
                        room = budget.take(bytes) => fetched.room = Some(room),
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    sent = tx.send(fetched) => if sent.is_err() { return },
                }
                if end {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_s_position_names_its_shard_sequence_and_place_in_an_aggregate() {
        let names = pipeline::orders::ShardName::interned("s", "shardId-000000000001");
        let r = ShardRecord { sequence: "4959".into(), sub: 12, data: Vec::new() };
        assert_eq!(r.position(&names, false).to_string(), "shardId-000000000001/4959");
        assert_eq!(r.position(&names, true).to_string(), "shardId-000000000001/4959/12");
        // The position an order event is judged at is the one its text
        // parses to, with the reader's names.
        for aggregated in [false, true] {
            let position = r.position(&names, aggregated);
            let pos = position.shard_pos().expect("a shard position");
            assert_eq!(Some(pos), ShardPos::parse(&position.to_string(), Some("s")).as_ref());
            assert_eq!((pos.stream(), pos.shard(), &*pos.sequence), ("s", "shardId-000000000001", "4959"));
            assert!(pos.at.same(&names), "the names are shared");
            assert!(Arc::ptr_eq(&pos.sequence, &r.sequence), "the record's sequence is shared, not copied");
        }
        assert_eq!(r.position(&names, true).shard_pos().map(|p| p.sub), Some(12));
        assert_eq!(r.position(&names, false).shard_pos().map(|p| p.sub), Some(0));
        // A sequence number that is not one (never from Kinesis) is text
        // alone, as its text parses to no position.
        for (sequence, sub) in [("04959", 0), ("49x", 0), ("", 0), ("4959", u64::from(u32::MAX) + 1)] {
            let r = ShardRecord { sequence: sequence.into(), sub, ..r.clone() };
            let position = r.position(&names, true);
            assert_eq!(position.shard_pos(), None, "{sequence}/{sub}");
            assert_eq!(position.to_string(), format!("shardId-000000000001/{sequence}/{sub}"));
            assert_eq!(ShardPos::parse(&position.to_string(), Some("s")), None);
            if sub == 0 {
                let position = r.position(&names, false);
                assert_eq!(position.shard_pos(), None, "{sequence}");
                assert_eq!(position.to_string(), format!("shardId-000000000001/{sequence}"));
                assert_eq!(ShardPos::parse(&position.to_string(), Some("s")), None);
            }
        }
    }

    /// Starts of the calls `Pacing` allows over `secs` seconds, each call
    /// returning records when `has_records(start)` says so.
    fn calls(secs: u64, at_tip: bool, poll: u64, idle: u64, has_records: impl Fn(Duration) -> bool) -> Vec<u64> {
        let t0 = tokio::time::Instant::now();
        let (mut pacing, mut at, mut out) = (Pacing::default(), t0, Vec::new());
        while at < t0 + Duration::from_secs(secs) {
            let offset = at.duration_since(t0);
            out.push(offset.as_millis() as u64);
            at = pacing.next(at, has_records(offset), at_tip, Duration::from_millis(poll), Duration::from_millis(idle));
        }
        out
    }

    #[test]
    fn a_shard_quiet_at_its_tip_is_read_once_per_idle_interval_after_that_long_at_the_poll_interval() {
        // Quiet from the start: 250 ms apart until the shard has given
        // nothing for 1 s, then 1 s apart.
        assert_eq!(calls(4, true, 250, 1000, |_| false), vec![0, 250, 500, 750, 1000, 2000, 3000]);
        // A minute idle: 63 reads instead of 240.
        assert_eq!(calls(60, true, 250, 1000, |_| false).len(), 63);
        // Idle interval at or below the poll interval: no slower pace.
        assert_eq!(calls(2, true, 250, 0, |_| false), vec![0, 250, 500, 750, 1000, 1250, 1500, 1750]);
        assert_eq!(calls(1, true, 400, 300, |_| false), vec![0, 400, 800]);
    }

    #[test]
    fn a_record_brings_the_poll_interval_back_and_quiet_counts_again_from_the_next_empty_read() {
        // Records at 2 s (the first read after it at the idle pace), then
        // nothing: back to 250 ms apart for a quiet second, then idle again.
        let has = |t: Duration| t.as_millis() == 2000;
        assert_eq!(calls(5, true, 250, 1000, has), vec![0, 250, 500, 750, 1000, 2000, 2250, 2500, 2750, 3000, 3250, 4250]);
        // A shard with records now and then, never a second apart: every
        // read at the poll interval (the busy path's latency is unchanged).
        let every_750ms = |t: Duration| t.as_millis().is_multiple_of(750);
        let starts = calls(10, true, 250, 1000, every_750ms);
        assert!(starts.windows(2).all(|w| w[1] - w[0] == 250), "{starts:?}");
    }

    #[tokio::test]
    async fn a_reload_cuts_short_a_wait_at_the_old_idle_pace_and_leaves_a_backoff_alone() {
        let config = |idle| KinesisSourceConfig { poll_interval_ms: 50, idle_poll_interval_ms: idle, ..Default::default() };
        let live = LivePacing::new(&config(5_000));
        let (mut changes, stop) = (live.changes(), CancellationToken::new());
        // A SIGHUP `after` from now setting the idle interval to `idle`.
        let reload = |after: u64, idle: u64| {
            let live = live.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                live.set(&config(idle));
            })
        };
        // A shard quiet at its tip for longer than the idle interval: its
        // next read is 5 s after the last one started.
        let t0 = tokio::time::Instant::now();
        let mut pacing = Pacing { quiet_since: Some(t0 - Duration::from_secs(6)), last: None };
        let mut next_call = pacing.next(t0, false, true, live.poll(), live.idle());
        assert_eq!(next_call, t0 + Duration::from_secs(5));
        // (The new interval leaves the reload 1.3 s to come: one later
        // than the new start would spread it instead.)
        let reloaded = reload(200, 1_500);
        assert!(wait_turn(&mut next_call, &mut pacing, &live, &mut changes, &stop).await);
        reloaded.await.expect("the reload ran");
        // Read 1.5 s after the last read, not 5 s (the old schedule).
        assert_eq!(next_call, t0 + Duration::from_millis(1_500));
        assert!(t0.elapsed() < Duration::from_secs(4), "waited {:?}", t0.elapsed());

        // A backoff (no pacing in force) is not shortened by a reload.
        pacing.off();
        let started = tokio::time::Instant::now();
        let mut next_call = started + Duration::from_millis(700);
        let reloaded = reload(100, 0);
        assert!(wait_turn(&mut next_call, &mut pacing, &live, &mut changes, &stop).await);
        reloaded.await.expect("the reload ran");
        assert!(started.elapsed() >= Duration::from_millis(700), "waited {:?}", started.elapsed());

        // Stopped while waiting: false at once.
        let mut next_call = tokio::time::Instant::now() + Duration::from_secs(60);
        stop.cancel();
        assert!(!wait_turn(&mut next_call, &mut pacing, &live, &mut changes, &stop).await);
    }

    #[test]
    fn readers_a_reload_makes_overdue_call_spread_over_the_new_interval_not_in_step() {
        use rand::SeedableRng;
        let config = |idle| KinesisSourceConfig { poll_interval_ms: 50, idle_poll_interval_ms: idle, ..Default::default() };
        let live = LivePacing::new(&config(60_000));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let secs = Duration::from_secs;
        // (Instants ahead of now: nothing here sleeps, and a clock a
        // freshly booted machine started under two minutes ago cannot go
        // back that far.)
        let t0 = tokio::time::Instant::now() + secs(200);
        let quiet = || Pacing { quiet_since: Some(t0 - secs(120)), last: None };
        // Eight shards quiet at their tips, each read last at t0 and waiting
        // a minute; a reload 10 s later sets the idle interval to 1 s.
        let mut readers: Vec<(Pacing, tokio::time::Instant)> = (0..8)
            .map(|_| {
                let mut pacing = quiet();
                let next = pacing.next(t0, false, true, live.poll(), live.idle());
                assert_eq!(next, t0 + secs(60));
                (pacing, next)
            })
            .collect();
        live.set(&config(1_000));
        let reload = t0 + secs(10);
        for (pacing, next) in &mut readers {
            *next = pacing.again(&live, *next, reload, &mut rng).expect("the pacing's wait");
        }
        // Each within the new interval from the reload, no two together,
        // spread over it (not bunched in a corner).
        let mut starts: Vec<Duration> = readers.iter().map(|(_, next)| next.duration_since(reload)).collect();
        starts.sort();
        assert!(starts.iter().all(|d| *d < secs(1)), "{starts:?}");
        starts.dedup();
        assert_eq!(starts.len(), 8, "{starts:?}");
        assert!(starts[7] - starts[0] > Duration::from_millis(500), "{starts:?}");
        // A second reload (any field: each applied reload sets the pacing)
        // draws nothing again: a reader spread by the first keeps its start.
        let again = reload + Duration::from_millis(100);
        for (pacing, next) in &mut readers {
            assert_eq!(pacing.again(&live, *next, again, &mut rng), Some(*next));
        }
        // Each keeps its own beat after its read: one interval later.
        let (pacing, next) = &mut readers[3];
        assert_eq!(pacing.next(*next, false, true, live.poll(), live.idle()), *next + secs(1));
        // A reader already due when the reload came reads at once.
        let mut due = quiet();
        let next = due.next(t0, false, true, live.poll(), Duration::from_millis(300));
        assert_eq!(due.again(&live, next, t0 + secs(2), &mut rng), Some(next));
        // Nor is a read made later than the one it was waiting for: due at
        // t0 + 60 s, a reload at 59.9 s to a 30 s interval keeps t0 + 60 s.
        let mut late = quiet();
        let next = late.next(t0, false, true, live.poll(), secs(60));
        live.set(&config(30_000));
        assert_eq!(late.again(&live, next, t0 + Duration::from_millis(59_900), &mut rng), Some(t0 + secs(60)));
        // A start still ahead under the new values is kept as it is.
        let mut ahead = quiet();
        let next = ahead.next(reload, false, true, live.poll(), secs(60));
        live.set(&config(2_000));
        assert_eq!(ahead.again(&live, next, reload + Duration::from_millis(500), &mut rng), Some(reload + secs(2)));
    }

    #[test]
    fn empty_reads_behind_the_tip_are_not_quiet() {
        // A gap in the stream (MillisBehindLatest above 0): reading goes on
        // at the poll interval to catch up.
        let starts = calls(5, false, 250, 1000, |_| false);
        assert_eq!(starts.len(), 20);
        assert!(starts.windows(2).all(|w| w[1] - w[0] == 250), "{starts:?}");
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert_eq!(compare_sequence("9", "10"), Ordering::Less);
        assert_eq!(
            compare_sequence(
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692538361571095921575989136588899"
            ),
            Ordering::Less
        );
        assert_eq!(compare_sequence("123", "123"), Ordering::Equal);
    }

    #[test]
    fn records_up_to_the_checkpoint_are_skipped_sub_record_by_sub_record() {
        let cp = ("500".to_owned(), 2);
        assert!(is_at_or_before("499", 9, &cp));
        assert!(is_at_or_before("500", 2, &cp));
        assert!(!is_at_or_before("500", 3, &cp));
        assert!(!is_at_or_before("501", 0, &cp));
    }
}
