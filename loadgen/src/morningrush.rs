//! The orders-stream driver behind `morning-rush`: orders placed at the
//! rates of the scenario's stages (a trickle, a ramp, a spike of corporate
//! bulk orders, a cool-down), each followed by its status events, put on
//! the Kinesis stream by goose users; then the outputs are verified.
//!
//! Owns: the seeded plan of a run (which order is placed when, with which
//! lines and which life cycle), the goose attack that replays it, and the
//! run's summary with per-stage latency. Must not: judge the daemon's
//! internals; it sees only what a producer and an analyst see.
//!
//! Per-key order: an order's events are sent by one goose user, one after
//! the other, never two in one PutRecords call (PutRecords does not order
//! the records of one request), and a failed entry is retried before the
//! order's next event is sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use goose::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Barrier;
use tracing::info;

use crate::attack::{RunCell, Sends, Verdict};
use crate::scenario::{OrdersLoad, Scenario as ScenarioFile, Stage};
use crate::{RunArgs, Targets, payload, verify};

const FULL: [&str; 5] = ["placed", "confirmed", "preparing", "ready", "completed"];
const CANCELLED: [&str; 3] = ["placed", "confirmed", "cancelled"];
/// PutRecords takes at most 500 records.
const MAX_PUT: usize = 500;

/// One order of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedOrder {
    /// `order_id`.
    pub id: String,
    /// `store`.
    pub store: String,
    /// `customer_id`.
    pub customer: String,
    /// A corporate bulk order.
    pub bulk: bool,
    /// (sku, qty, unit price).
    pub lines: Vec<(String, u32, u64)>,
    /// Its statuses in order, `placed` first.
    pub statuses: &'static [&'static str],
    /// Index of its stage.
    pub stage: usize,
    /// Seconds after the start when it is placed.
    pub placed_at: f64,
}

impl PlannedOrder {
    /// Sum of qty × unit price.
    pub fn total_cents(&self) -> u64 {
        self.lines.iter().map(|(_, q, p)| u64::from(*q) * p).sum()
    }

    /// Sum of qty.
    pub fn item_count(&self) -> u64 {
        self.lines.iter().map(|(_, q, _)| u64::from(*q)).sum()
    }

    /// Event id of its `k`-th event.
    pub fn event_id(&self, k: usize) -> String {
        format!("{}-e{k}", self.id)
    }

    /// The JSON of its `k`-th event, with event time `ts`.
    pub fn event(&self, k: usize, ts: &str) -> String {
        let (kind, data) = if k == 0 {
            let items: Vec<_> =
                self.lines.iter().map(|(sku, qty, price)| json!({"sku": sku, "qty": qty, "unit_price_cents": price})).collect();
            (
                "order.placed",
                json!({"order_id": self.id, "customer_id": self.customer, "channel": if self.bulk { "corporate" } else { "app" },
                       "items": items, "total_cents": self.total_cents()}),
            )
        } else {
            ("order.status", json!({"order_id": self.id, "status": self.statuses[k]}))
        };
        json!({"v": 1, "id": self.event_id(k), "type": kind, "ts": ts, "store": self.store, "data": data}).to_string()
    }
}

/// The orders of a run, from the stages, seeded.
pub fn plan(seed: u64, run_id: &str, load: &OrdersLoad, stages: &[Stage], scale: f64, time_scale: f64) -> Vec<PlannedOrder> {
    let mut out = Vec::new();
    let mut t0 = 0.0;
    let step = 0.001;
    for (si, st) in stages.iter().enumerate() {
        let secs = st.secs * time_scale;
        let mut acc = 0.0;
        let mut t = 0.0;
        while t < secs {
            let rate = (st.rate_start + (st.rate_end - st.rate_start) * t / secs) * scale;
            acc += rate * step;
            while acc >= 1.0 {
                acc -= 1.0;
                let index = out.len() as u64;
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(index);
                let bulk = rng.random_bool(st.bulk_ratio);
                let [lo, hi] = if bulk { load.bulk_items } else { load.items };
                let lines = (0..rng.random_range(lo..=hi))
                    .map(|_| {
                        let qty = if bulk { rng.random_range(1..=20) } else { rng.random_range(1..=3) };
                        (format!("sku-{:03}", rng.random_range(0..200)), qty, rng.random_range(150..=900))
                    })
                    .collect();
                let statuses: &'static [&'static str] = if rng.random_bool(load.cancel_ratio) { &CANCELLED } else { &FULL };
                out.push(PlannedOrder {
                    id: format!("r{run_id}-o{index:07}"),
                    store: payload::store_id(run_id, rng.random_range(0..load.stores)),
                    customer: format!("c{:06}", rng.random_range(0..load.customers)),
                    bulk,
                    lines,
                    statuses,
                    stage: si,
                    placed_at: t0 + t,
                });
            }
            t += step;
        }
        t0 += secs;
    }
    out
}

/// One event sent.
#[derive(Debug, Clone)]
struct Sent {
    order: usize,
    k: usize,
}

/// A queued send: order index and event number, due at `at` seconds.
#[derive(Debug, Clone, Copy)]
struct Due {
    at: f64,
    order: usize,
    k: usize,
}

struct Rush {
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    orders: Vec<PlannedOrder>,
    producers: usize,
    gap: f64,
    barrier: Barrier,
    sends: Sends<Sent>,
}

static RUSH: RunCell<Rush> = RunCell::new();

/// One goose user: the orders `index % producers == user`, every event at
/// its time.
async fn produce(user: &mut GooseUser) -> TransactionResult {
    let r = RUSH.get()?;
    let me = user.weighted_users_index % r.producers;
    let mut queue: Vec<Due> = Vec::new();
    for (i, o) in r.orders.iter().enumerate().filter(|(i, _)| i % r.producers == me) {
        for k in 0..o.statuses.len() {
            queue.push(Due { at: o.placed_at + k as f64 * r.gap, order: i, k });
        }
    }
    queue.sort_by(|a, b| a.at.total_cmp(&b.at));
    let mut queue: VecDeque<Due> = queue.into();
    r.barrier.wait().await;
    let (start, _) = r.sends.start();
    while let Some(next) = queue.front().copied() {
        let due_at = start + Duration::from_secs_f64(next.at);
        tokio::time::sleep_until(due_at.into()).await;
        let elapsed = start.elapsed().as_secs_f64();
        // Everything due, at most one event per order per call.
        let mut batch: Vec<Due> = Vec::new();
        let mut deferred: Vec<Due> = Vec::new();
        let mut in_batch: HashSet<usize> = HashSet::new();
        while let Some(d) = queue.front().copied() {
            if d.at > elapsed || batch.len() == MAX_PUT {
                break;
            }
            queue.pop_front();
            if in_batch.insert(d.order) {
                batch.push(d);
            } else {
                deferred.push(d);
            }
        }
        for d in deferred.into_iter().rev() {
            queue.push_front(d);
        }
        let ts = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let mut pending: Vec<(Due, String)> = batch.iter().map(|d| (*d, r.orders[d.order].event(d.k, &ts))).collect();
        for attempt in 0..10u64 {
            let entries: Vec<PutRecordsRequestEntry> = pending
                .iter()
                .filter_map(|(d, body)| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&r.orders[d.order].id)
                        .data(Blob::new(body.as_bytes()))
                        .build()
                        .ok()
                })
                .collect();
            let started = Instant::now();
            let result = r.kinesis.put_records().stream_name(&r.stream).set_records(Some(entries)).send().await;
            let took = started.elapsed();
            let failed: Vec<usize> = match &result {
                Ok(out) => out.records().iter().enumerate().filter(|(_, e)| e.error_code().is_some()).map(|(i, _)| i).collect(),
                Err(_) => (0..pending.len()).collect(),
            };
            let ok = failed.is_empty();
            let error = if ok { None } else { Some("some records failed") };
            user.record_custom_request_duration("Kinesis", "PutRecords orders", took, ok, None, error).await?;
            r.sends.accepted(
                pending
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !failed.contains(i))
                    .map(|(_, (d, _))| Sent { order: d.order, k: d.k }),
            );
            pending = pending.into_iter().enumerate().filter(|(i, _)| failed.contains(i)).map(|(_, p)| p).collect();
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
        }
        if !pending.is_empty() {
            // Given up: the order's later events are not sent either, so
            // the verification expects the order only up to here.
            r.sends.refused(pending.len());
            let dropped: HashSet<usize> = pending.iter().map(|(d, _)| d.order).collect();
            queue.retain(|d| !dropped.contains(&d.order));
        }
    }
    Ok(())
}

/// Latency of one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// Stage name.
    pub stage: String,
    /// Orders placed in it.
    pub orders: u64,
    /// Of which corporate bulk orders.
    pub bulk_orders: u64,
    /// Events sent for its orders.
    pub events: u64,
    /// Event time to durable write.
    #[serde(flatten)]
    pub e2e: crate::attack::E2e,
}

/// The run's summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Which run.
    #[serde(flatten)]
    pub run: crate::attack::RunHeader,
    /// Orders in the plan.
    pub planned_orders: u64,
    /// Events Kinesis accepted.
    pub events_sent: u64,
    /// Seconds the sending took.
    pub send_secs: f64,
    /// Seconds from the first send to the last write.
    pub drain_secs: f64,
    /// Orders per second sent (placed) over the run.
    pub orders_per_sec: f64,
    /// Per stage.
    pub stages: Vec<StageReport>,
    /// Event time to durable write.
    #[serde(flatten)]
    pub e2e: crate::attack::E2e,
    /// The bare reader at the stream's tip beside the run (local stack only).
    pub bare_reader: Option<crate::tipreader::TipReport>,
    /// The daemon's e2e p99 less the bare reader's, ms.
    pub e2e_p99_over_bare_reader_ms: Option<f64>,
    /// Lost, duplicated, refused and wrong items, and the rules that failed.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Every event stored: event time and durable write (for a chaos run's phases).
    #[serde(skip)]
    pub samples: Vec<crate::chaos::Sample>,
}

impl Summary {
    /// True when nothing was lost or duplicated and every rule passed.
    pub fn passed(&self) -> bool {
        self.verdict.passed()
    }

    /// Markdown rendering.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# {} ({})\n\n| measure | value |\n|---|---|\n\
             | orders placed | {} (events sent {}, send failures {}) |\n| lost events | {} |\n| duplicated | {} |\n\
             | sent in | {:.2} s ({:.1} orders/s) |\n| drained after | {:.2} s |\n\
             | e2e p50 / p95 / p99 | {:.0} / {:.0} / {:.0} ms |\n{}| verdict | {} |\n\n\
             | stage | orders | bulk | events | e2e p50 ms | p95 ms | p99 ms |\n|---|---|---|---|---|---|---|\n",
            self.run.scenario,
            self.run.run_id,
            self.planned_orders,
            self.events_sent,
            self.verdict.send_failures,
            self.verdict.lost,
            self.verdict.duplicated,
            self.send_secs,
            self.orders_per_sec,
            self.drain_secs,
            self.e2e.p50_ms,
            self.e2e.p95_ms,
            self.e2e.p99_ms,
            match (&self.bare_reader, self.e2e_p99_over_bare_reader_ms) {
                (Some(b), Some(over)) => format!(
                    "| bare tip reader: e2e p50 / p99 | {:.0} / {:.0} ms ({} records, {} failed calls); the daemon's p99 is {over:.0} ms above |\n",
                    b.e2e.p50_ms, b.e2e.p99_ms, b.records, b.errors
                ),
                _ => String::new(),
            },
            if self.passed() { "PASS" } else { "FAIL" },
        );
        for st in &self.stages {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} |\n",
                st.stage, st.orders, st.bulk_orders, st.events, st.e2e.p50_ms, st.e2e.p95_ms, st.e2e.p99_ms
            ));
        }
        for m in self.verdict.mismatches.iter().chain(&self.verdict.failed_thresholds).chain(&self.verdict.failed_targets) {
            s.push_str(&format!("\n- {m}"));
        }
        s
    }
}

/// An order as the daemon wrote it: (status, event id, ts, applied_at) per history entry.
type Written = Vec<(String, String, Option<OffsetDateTime>, Option<OffsetDateTime>)>;

pub(crate) async fn read_orders(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    ids: &[String],
) -> anyhow::Result<HashMap<String, Written>> {
    let mut found = HashMap::new();
    for item in verify::batch_get(ddb, table, "order_id", ids).await? {
        let id = item.get("order_id").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
        let history = item
            .get("history")
            .and_then(|v| v.as_l().ok())
            .map(|l| {
                l.iter()
                    .filter_map(|e| {
                        let m = e.as_m().ok()?;
                        let text = |k: &str| m.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                        let time = |k: &str| OffsetDateTime::parse(&text(k), &Rfc3339).ok();
                        Some((text("status"), text("event_id"), time("ts"), time("applied_at")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        found.insert(id, history);
    }
    Ok(found)
}

/// `[thresholds.local] e2e_p99_over_bare_reader_ms`: what failed, if anything.
fn judge_over_bare(limit_ms: u64, p99_ms: f64, bare: &crate::tipreader::TipReport, sent: u64) -> Option<String> {
    let over = p99_ms - bare.e2e.p99_ms;
    if bare.records < sent / 2 {
        Some(format!("the bare tip reader saw {} of the {sent} events sent: no reference to judge by", bare.records))
    } else if !crate::scenario::at_most(over, limit_ms as f64) {
        Some(format!(
            "e2e p99 {p99_ms:.0} ms is {over:.0} ms above the bare tip reader's {:.0} ms, more than the target {limit_ms} ms",
            bare.e2e.p99_ms
        ))
    } else {
        None
    }
}

/// Runs an orders-stream scenario end to end.
pub async fn run(scenario: ScenarioFile, args: &RunArgs, targets: &Targets) -> anyhow::Result<Summary> {
    let load = scenario.orders.clone().context("not an orders-stream scenario (no [orders])")?;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    kinesis
        .describe_stream_summary()
        .stream_name(&targets.orders_stream)
        .send()
        .await
        .with_context(|| format!("stream {} not found; run `cafe-streamd provision`", targets.orders_stream))?;

    let run_id = args.run_id.clone().unwrap_or_else(crate::coldstart::new_run_id);
    let orders = plan(args.seed, &run_id, &load, &scenario.stages, args.scale, args.time_scale);
    anyhow::ensure!(!orders.is_empty(), "the stages place no orders at this --scale");
    let producers = load.producers.min(orders.len()).max(1);
    std::fs::create_dir_all(&args.report_dir)?;
    let state = Arc::new(Rush {
        kinesis,
        stream: targets.orders_stream.clone(),
        orders,
        producers,
        gap: load.status_gap_ms as f64 / 1000.0,
        barrier: Barrier::new(producers),
        sends: Sends::with_capacity(0),
    });
    RUSH.set(Arc::clone(&state))?;
    let planned = state.orders.len();
    // On the local stack a bare reader at the stream's tip runs beside the
    // load: the daemon's e2e is judged by how far it stays above that.
    let local = crate::scenario::on_local_stack();
    let over_bare_limit = scenario.thresholds.local.e2e_p99_over_bare_reader_ms.filter(|_| local);
    let tip = match over_bare_limit {
        Some(_) => {
            let poll = Duration::from_millis(scenario.thresholds.local.poll_interval_ms);
            Some(crate::tipreader::start(&state.kinesis, &targets.orders_stream, poll, &run_id).await?)
        }
        None => None,
    };
    info!(scenario = %scenario.name, run_id, orders = planned, producers, "Starting the orders stream");

    let config = crate::attack::config(
        format!("kinesis://{}", targets.orders_stream),
        producers,
        &scenario.thresholds.goose,
        &args.report_dir,
    );
    let attack = GooseAttack::initialize_with_config(config)?
        .register_scenario(scenario!("OrdersStream").register_transaction(transaction!(produce).set_name("orders")));
    let failed_thresholds = crate::attack::failed_thresholds(attack.execute().await)?;
    let (start, started_at) = state.sends.started().context("the run never started")?;
    let send_secs = start.elapsed().as_secs_f64();
    let (sent, send_failures) = state.sends.take();
    info!(events = sent.len(), send_secs, "Orders sent; waiting for the daemon");

    // What should be in the tables: per order, its events sent, in order.
    let mut sent_per_order: HashMap<usize, usize> = HashMap::new();
    for s in &sent {
        let n = sent_per_order.entry(s.order).or_insert(0);
        *n = (*n).max(s.k + 1);
    }
    let orders = &state.orders;
    let ids: Vec<String> = sent_per_order.keys().map(|&i| orders[i].id.clone()).collect();
    let want_events: usize = sent_per_order.values().sum();
    let stall = Duration::from_secs(scenario.verify.stall_secs);
    let deadline = Instant::now() + Duration::from_secs(scenario.verify.timeout_secs);
    let mut last_progress = (0usize, Instant::now());
    let found = loop {
        let found = read_orders(&ddb, &targets.orders_table, &ids).await?;
        let applied: usize = found.values().map(Vec::len).sum();
        crate::progress::run().stored(applied as u64);
        if applied >= want_events || Instant::now() > deadline || last_progress.1.elapsed() > stall {
            break found;
        }
        if applied != last_progress.0 {
            last_progress = (applied, Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bare_reader = match tip {
        Some(t) => Some(t.finish().await?),
        None => None,
    };

    let mut lost = 0u64;
    let mut duplicated = 0u64;
    let mut mismatches = Vec::new();
    let mut e2e_all = Vec::new();
    let mut samples = Vec::new();
    let mut e2e_stage: Vec<Vec<f64>> = vec![Vec::new(); scenario.stages.len()];
    let mut last_write: Option<OffsetDateTime> = None;
    let (mut want_orders, mut want_items, mut want_revenue, mut want_cancelled) = (0i64, 0i64, 0i64, 0i64);
    for (&i, &n) in &sent_per_order {
        let o = &orders[i];
        want_orders += 1;
        want_items += o.item_count() as i64;
        want_revenue += o.total_cents() as i64;
        if n == o.statuses.len() && o.statuses.last() == Some(&"cancelled") {
            want_cancelled += 1;
        }
        let history = found.get(&o.id).cloned().unwrap_or_default();
        let mut seen = HashSet::new();
        for (_, event_id, ts, applied_at) in &history {
            if !seen.insert(event_id.clone()) {
                duplicated += 1;
            }
            if let (Some(ts), Some(at)) = (ts, applied_at) {
                let ms = (*at - *ts).as_seconds_f64() * 1000.0;
                e2e_all.push(ms);
                samples.push(crate::chaos::Sample { ts: *ts, stored: *at });
                e2e_stage[o.stage].push(ms);
                last_write = last_write.max(Some(*at));
            }
        }
        let want: Vec<String> = (0..n).map(|k| o.event_id(k)).collect();
        let have: Vec<String> = history.iter().map(|h| h.1.clone()).collect();
        let missing: Vec<String> =
            (0..n).filter(|&k| !have.contains(&want[k])).map(|k| format!("{} ({})", want[k], o.statuses[k])).collect();
        lost += missing.len() as u64;
        if !missing.is_empty() && mismatches.len() < 10 {
            // Which events, so a failed run says where to look (the daemon's
            // logs, the rejected queue).
            mismatches.push(format!("order {}: lost {}; its history holds {:?}", o.id, missing.join(", "), have));
        }
        if lost == 0 && duplicated == 0 && have != want && mismatches.len() < 10 {
            mismatches.push(format!("order {}: history {:?} is not the events sent, in order {:?}", o.id, have, want));
        }
    }
    let stores: Vec<String> = (0..load.stores).map(|k| payload::store_id(&run_id, k)).collect();
    let sums = verify::aggregate_sums(&ddb, &targets.aggregates_table, &stores).await?;
    for (name, got, want) in [
        ("orders", sums.orders, want_orders),
        ("order_items", sums.order_items, want_items),
        ("revenue_cents", sums.revenue_cents, want_revenue),
        ("orders_cancelled", sums.orders_cancelled, want_cancelled),
    ] {
        if got != want {
            mismatches.push(format!("{name} is {got} but the orders sent add up to {want}"));
        }
        if name == "orders" && got > want {
            duplicated += (got - want) as u64;
        }
    }

    for v in &mut e2e_stage {
        v.sort_by(f64::total_cmp);
    }
    e2e_all.sort_by(f64::total_cmp);
    let stages = scenario
        .stages
        .iter()
        .enumerate()
        .map(|(si, st)| {
            let mine: Vec<usize> = sent_per_order.keys().copied().filter(|&i| orders[i].stage == si).collect();
            StageReport {
                stage: st.name.clone(),
                orders: mine.len() as u64,
                bulk_orders: mine.iter().filter(|&&i| orders[i].bulk).count() as u64,
                events: mine.iter().map(|i| sent_per_order[i] as u64).sum(),
                e2e: crate::attack::E2e::of(&e2e_stage[si]),
            }
        })
        .collect();
    let e2e = crate::attack::E2e::of(&e2e_all);
    let mut failed_targets = Vec::new();
    let over_bare = bare_reader.as_ref().map(|b| e2e.p99_ms - b.e2e.p99_ms);
    if let (Some(limit), Some(bare)) = (over_bare_limit, &bare_reader) {
        failed_targets.extend(judge_over_bare(limit, e2e.p99_ms, bare, sent.len() as u64));
    }
    let aws_p99 = if local { None } else { scenario.thresholds.aws.e2e_p99_ms };
    failed_targets.extend(crate::attack::p99_target(e2e.p99_ms, aws_p99));
    let summary = Summary {
        run: crate::attack::RunHeader { scenario: scenario.name.clone(), run_id, seed: args.seed },
        planned_orders: planned as u64,
        events_sent: sent.len() as u64,
        send_secs,
        drain_secs: last_write.map_or(f64::NAN, |t| (t - started_at).as_seconds_f64()),
        orders_per_sec: want_orders as f64 / send_secs.max(0.001),
        stages,
        e2e,
        bare_reader,
        e2e_p99_over_bare_reader_ms: over_bare,
        verdict: Verdict::judged(
            send_failures,
            lost,
            duplicated,
            mismatches,
            failed_thresholds,
            &e2e,
            scenario.thresholds.e2e_p99_ms,
        )
        .and_failed(failed_targets),
        samples,
    };
    crate::attack::write_summary(&args.report_dir, &summary, &summary.markdown())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_is_judged_by_its_p99_above_the_bare_readers() {
        let bare = |records, p99_ms| crate::tipreader::TipReport {
            records,
            errors: 0,
            e2e: crate::attack::E2e { p50_ms: p99_ms / 2.0, p95_ms: p99_ms, p99_ms },
        };
        assert_eq!(judge_over_bare(500, 700.0, &bare(1000, 240.0), 1000), None);
        let above = judge_over_bare(500, 800.0, &bare(1000, 240.0), 1000).expect("560 ms above");
        assert!(above.contains("560 ms above") && above.contains("target 500 ms"), "{above}");
        assert!(judge_over_bare(500, f64::NAN, &bare(1000, 240.0), 1000).is_some(), "no p99 is no pass");
        let blind = judge_over_bare(500, 250.0, &bare(10, 240.0), 1000).expect("a reader that saw little");
        assert!(blind.contains("saw 10 of the 1000"), "{blind}");
    }

    fn load() -> OrdersLoad {
        OrdersLoad {
            producers: 4,
            stores: 5,
            customers: 100,
            cancel_ratio: 0.1,
            status_gap_ms: 200,
            items: [1, 6],
            bulk_items: [24, 300],
        }
    }

    fn stages() -> Vec<Stage> {
        vec![
            Stage { name: "steady".into(), secs: 10.0, rate_start: 10.0, rate_end: 10.0, bulk_ratio: 0.0 },
            Stage { name: "ramp".into(), secs: 10.0, rate_start: 10.0, rate_end: 30.0, bulk_ratio: 0.0 },
            Stage { name: "spike".into(), secs: 5.0, rate_start: 40.0, rate_end: 40.0, bulk_ratio: 0.5 },
        ]
    }

    #[test]
    fn the_plan_follows_the_stage_rates_and_is_seeded() {
        let p = plan(7, "run", &load(), &stages(), 1.0, 1.0);
        let per_stage = |s: usize| p.iter().filter(|o| o.stage == s).count() as i64;
        // 10/s for 10 s, a ramp averaging 20/s for 10 s, 40/s for 5 s.
        assert!((per_stage(0) - 100).abs() <= 1, "{}", per_stage(0));
        assert!((per_stage(1) - 200).abs() <= 1, "{}", per_stage(1));
        assert!((per_stage(2) - 200).abs() <= 1, "{}", per_stage(2));
        assert!(p.windows(2).all(|w| w[0].placed_at <= w[1].placed_at));
        assert_eq!(p, plan(7, "run", &load(), &stages(), 1.0, 1.0));
        // Scale multiplies rates; time scale shortens stages.
        let half = plan(7, "run", &load(), &stages(), 0.5, 0.5);
        assert!((half.len() as i64 - 125).abs() <= 2, "{}", half.len());
        let bulk: Vec<_> = p.iter().filter(|o| o.bulk).collect();
        assert!(bulk.iter().all(|o| o.stage == 2 && (24..=300).contains(&o.lines.len())));
        assert!(!bulk.is_empty());
    }

    #[test]
    fn events_are_valid_contract_events() {
        let p = plan(1, "run", &load(), &stages(), 1.0, 1.0);
        for o in p.iter().take(50) {
            for k in 0..o.statuses.len() {
                let e = pipeline::decode(o.event(k, "2026-11-22T08:15:30Z").as_bytes()).expect("valid event");
                assert_eq!(pipeline::orders::order_id(&e), Some(o.id.as_str()));
            }
        }
    }
}
