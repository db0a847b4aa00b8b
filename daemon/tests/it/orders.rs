//! The orders stream: leases across instances, failover, resharding, KPL
//! aggregates and iterator expiry, against the local stack's Kinesis and
//! DynamoDB (ferrokinesis and dynoxide, in `cafe-emulators`).

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use serde_json::json;

use daemon::sinks::redshift::postgres::PgTransport;

use super::menu::{pg_target, wait_mirrored};
use super::{BIN, Env, OwnEmulators, free_port, http_get, metric};

/// What the orders of a test should add up to.
#[derive(Debug, Default, Clone)]
pub(crate) struct Expected {
    /// order id -> statuses in order.
    pub(crate) statuses: BTreeMap<String, Vec<&'static str>>,
    orders: i64,
    order_items: i64,
    revenue_cents: i64,
    orders_cancelled: i64,
}

const FULL: [&str; 5] = ["placed", "confirmed", "preparing", "ready", "completed"];
const CANCELLED: [&str; 3] = ["placed", "confirmed", "cancelled"];

/// Order `i`'s events: (partition key, body), in the order they must apply.
pub(crate) fn order_events(prefix: &str, i: usize, expected: &mut Expected) -> Vec<(String, String)> {
    let id = format!("{prefix}-o{i}");
    let chain: &[&'static str] = if i.is_multiple_of(5) { &CANCELLED } else { &FULL };
    let lines = 1 + i % 4;
    let items: Vec<_> = (0..lines)
        .map(|l| json!({"sku": format!("sku-{l}"), "qty": 1 + (i + l) % 3, "unit_price_cents": 150 + 10 * l}))
        .collect();
    let total: u64 = (0..lines).map(|l| ((1 + (i + l) % 3) * (150 + 10 * l)) as u64).sum();
    let qty: i64 = (0..lines).map(|l| (1 + (i + l) % 3) as i64).sum();
    expected.orders += 1;
    expected.order_items += qty;
    expected.revenue_cents += total as i64;
    if chain.contains(&"cancelled") {
        expected.orders_cancelled += 1;
    }
    expected.statuses.insert(id.clone(), chain.to_vec());
    chain
        .iter()
        .enumerate()
        .map(|(k, status)| {
            let ts = format!("2026-11-22T08:{:02}:{:02}.000Z", 10 + (i / 60) % 40, (i + k) % 60);
            let (event_type, data) = if *status == "placed" {
                ("order.placed", json!({"order_id": id, "customer_id": format!("c{}", i % 7), "channel": "corporate", "items": items, "total_cents": total}))
            } else {
                ("order.status", json!({"order_id": id, "status": status}))
            };
            let body = json!({"v": 1, "id": format!("{id}-e{k}"), "type": event_type, "ts": ts, "store": format!("st{}", i % 3), "data": data});
            (id.clone(), body.to_string())
        })
        .collect()
}

impl Env {
    pub(crate) fn stream(&self) -> String {
        format!("{}-orders", self.prefix)
    }

    /// Starts one more daemon with its own worker id and admin port.
    pub(crate) fn start_worker(&mut self, worker: &str) -> String {
        let admin = format!("127.0.0.1:{}", free_port());
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{worker}.log"))).expect("log file");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(self.daemon_env.iter().cloned())
            .env("CAFE_SOURCES__ORDERS__WORKER_ID", worker)
            .env("CAFE_ADMIN__LISTEN", &admin)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start daemon");
        self.workers.push((worker.to_owned(), child));
        admin
    }

    fn worker(&mut self, worker: &str) -> Child {
        let i = self.workers.iter().position(|(w, _)| w == worker).expect("worker running");
        self.workers.remove(i).1
    }

    fn worker_logs(&self) -> String {
        let mut out = String::new();
        for (w, _) in &self.workers {
            out.push_str(&format!("--- {w}\n"));
            let text = std::fs::read_to_string(self.dir.join(format!("{w}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
            out.push('\n');
        }
        out.push_str(&self.log());
        out
    }

    pub(crate) fn producer(&self) -> Producer {
        Producer { kinesis: self.kinesis.clone(), stream: self.stream(), prefix: self.prefix.clone() }
    }

    /// Lease table: shard -> (owner, checkpoint).
    pub(crate) async fn leases(&self) -> BTreeMap<String, (Option<String>, String)> {
        let out = self
            .ddb
            .scan()
            .table_name(format!("{}-leases", self.prefix))
            .consistent_read(true)
            .send()
            .await
            .expect("scan leases");
        out.items()
            .iter()
            .map(|item| {
                let get = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
                (get("leaseKey").unwrap_or_default(), (get("leaseOwner"), get("checkpoint").unwrap_or_default()))
            })
            .collect()
    }

    /// Live (not ended) leases held per owner.
    async fn lease_counts(&self) -> (BTreeMap<String, usize>, usize) {
        let leases = self.leases().await;
        let mut counts = BTreeMap::new();
        let mut live = 0;
        for (owner, cp) in leases.values() {
            if cp == "SHARD_END" {
                continue;
            }
            live += 1;
            if let Some(o) = owner {
                *counts.entry(o.clone()).or_insert(0) += 1;
            }
        }
        (counts, live)
    }

    pub(crate) async fn orders(&self) -> HashMap<String, Vec<String>> {
        let mut out = HashMap::new();
        let mut start = None;
        loop {
            let page = self
                .ddb
                .scan()
                .table_name(format!("{}-orders", self.prefix))
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan orders");
            for item in page.items() {
                let id = item.get("order_id").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                let history = item
                    .get("history")
                    .and_then(|v| v.as_l().ok())
                    .map(|l| l.iter().filter_map(|e| e.as_m().ok()?.get("status")?.as_s().ok().cloned()).collect::<Vec<_>>())
                    .unwrap_or_default();
                out.insert(id, history);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return out,
            }
        }
    }

    /// Waits until the tables hold exactly `expected`; panics with the
    /// difference after `within`.
    pub(crate) async fn wait_orders_exact(&self, expected: &Expected, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let sums = self.aggregates().await;
            let got = |k: &str| sums.get(k).copied().unwrap_or(0);
            let counters_ok = got("orders") == expected.orders
                && got("order_items") == expected.order_items
                && got("revenue_cents") == expected.revenue_cents
                && got("orders_cancelled") == expected.orders_cancelled;
            if counters_ok || Instant::now() > deadline {
                let orders = self.orders().await;
                let mut wrong = Vec::new();
                for (id, want) in &expected.statuses {
                    let have = orders.get(id).cloned().unwrap_or_default();
                    if have.iter().map(String::as_str).collect::<Vec<_>>() != *want {
                        wrong.push(format!("{id}: {have:?} != {want:?}"));
                    }
                }
                if counters_ok && wrong.is_empty() {
                    assert_eq!(orders.len(), expected.statuses.len(), "extra orders in the table");
                    return;
                }
                if Instant::now() > deadline {
                    panic!(
                        "orders not exact after {within:?}: counters {sums:?} want orders={} items={} revenue={} cancelled={}; {} orders wrong, e.g. {:?}\n{}",
                        expected.orders,
                        expected.order_items,
                        expected.revenue_cents,
                        expected.orders_cancelled,
                        wrong.len(),
                        wrong.iter().take(5).collect::<Vec<_>>(),
                        self.worker_logs()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// What reaches the rejected queue until there are `n` or `within` ends.
    pub(crate) async fn wait_rejected(&self, n: usize, within: Duration) -> Vec<(String, HashMap<String, String>)> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            out.extend(self.rejected().await);
        }
        out
    }

    pub(crate) async fn rejected(&self) -> Vec<(String, HashMap<String, String>)> {
        let mut out = Vec::new();
        loop {
            let got = self
                .sqs
                .receive_message()
                .queue_url(&self.rejected_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .send()
                .await
                .expect("receive");
            let msgs = got.messages();
            if msgs.is_empty() {
                return out;
            }
            for m in msgs {
                let attrs = m
                    .message_attributes()
                    .map(|a| a.iter().map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned())).collect())
                    .unwrap_or_default();
                out.push((m.body().unwrap_or_default().to_owned(), attrs));
            }
        }
    }
}

/// Writes to the test's stream.
#[derive(Clone)]
pub(crate) struct Producer {
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    prefix: String,
}

impl Producer {
    /// Puts records, retrying failed entries, preserving each key's order.
    pub(crate) async fn put(&self, records: &[(String, Vec<u8>)]) {
        for chunk in records.chunks(250) {
            let mut pending: Vec<&(String, Vec<u8>)> = chunk.iter().collect();
            for attempt in 0.. {
                assert!(attempt < 20, "PutRecords kept failing");
                let entries = pending
                    .iter()
                    .map(|(k, d)| {
                        PutRecordsRequestEntry::builder().partition_key(k).data(Blob::new(d.clone())).build().expect("entry")
                    })
                    .collect();
                let out = self.kinesis.put_records().stream_name(&self.stream).set_records(Some(entries)).send().await;
                let Ok(out) = out else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let failed: Vec<&(String, Vec<u8>)> =
                    pending.iter().zip(out.records()).filter(|(_, r)| r.error_code().is_some()).map(|(p, _)| *p).collect();
                if failed.is_empty() {
                    break;
                }
                pending = failed;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Streams orders: every `tick`, starts `per_tick` new orders (while
/// `more` is set) and sends the next event of every order in flight, so
/// each order's events go out in order, one tick apart.
pub(crate) async fn produce(p: Producer, first: usize, per_tick: usize, tick: Duration, more: Arc<AtomicBool>) -> Expected {
    let mut expected = Expected::default();
    let mut in_flight: Vec<std::vec::IntoIter<(String, String)>> = Vec::new();
    let mut next = first;
    loop {
        if more.load(Ordering::SeqCst) {
            for _ in 0..per_tick {
                in_flight.push(order_events(&p.prefix, next, &mut expected).into_iter());
                next += 1;
            }
        }
        let mut wave = Vec::new();
        in_flight.retain_mut(|events| match events.next() {
            Some((k, body)) => {
                wave.push((k, body.into_bytes()));
                true
            }
            None => false,
        });
        if wave.is_empty() && !more.load(Ordering::SeqCst) {
            return expected;
        }
        p.put(&wave).await;
        tokio::time::sleep(tick).await;
    }
}

async fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "daemon did not exit within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill").success();
    assert!(ok, "kill -TERM failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_share_eight_shards_and_take_over_from_a_killed_one() {
    // Failover in 6 s (takes every 0.5 s): leases should move within about
    // 7 s of the kill; the 15 s allowed below leaves room for a loaded machine
    // whose every DynamoDB call is slow.
    let (target, user, db) = pg_target();
    let table = format!("it_leases_{}_{}", std::process::id(), super::NEXT.fetch_add(1, Ordering::SeqCst));
    let mirror = format!(
        "[sinks.redshift]\nenabled = true\ntransport = \"postgres\"\nurl = \"postgres://{user}@{target}/{db}\"\ntable = \"{table}\"\nflush_interval_ms = 500\n"
    );
    let mut env = Env::with_orders(
        "leases",
        "shards = 8\nfailover_time_ms = 6000\nlease_renew_interval_ms = 2000\nlease_take_interval_ms = 500",
        &mirror,
        Vec::new(),
    )
    .await;
    let pg =
        PgTransport::connect(&std::env::var("CAFE_PG_URL").expect("url"), std::time::Duration::from_secs(60)).await.expect("pg");
    let started = Instant::now();
    let mut admins = BTreeMap::new();
    for w in ["w0", "w1", "w2"] {
        admins.insert(w, env.start_worker(w));
    }

    // Balance: each of three holds 2 or 3 of the 8 leases.
    let balanced_after = loop {
        let (counts, live) = env.lease_counts().await;
        if live == 8 && counts.len() == 3 && counts.values().all(|c| (2..=3).contains(c)) && counts.values().sum::<usize>() == 8 {
            break started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not balanced within 30 s: {counts:?}\n{}", env.worker_logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("3 instances balanced 8 leases after {balanced_after:?}");
    // The mirror's 16 buckets are shared out with the leases: each instance
    // flushes its own, and together every one.
    wait_buckets_shared(&env, &admins, &["w0", "w1", "w2"]).await;

    // Orders flow while an instance dies.
    let more = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn(produce(env.producer(), 0, 12, Duration::from_millis(400), Arc::clone(&more)));
    tokio::time::sleep(Duration::from_secs(4)).await;

    let (before, _) = env.lease_counts().await;
    let victim_had = before.get("w0").copied().unwrap_or(0);
    let mut victim = env.worker("w0");
    victim.kill().expect("kill -9");
    let _ = victim.wait();
    let killed = Instant::now();
    let moved_after = loop {
        let (counts, live) = env.lease_counts().await;
        if !counts.contains_key("w0") && counts.values().sum::<usize>() == live && live == 8 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "w0's leases did not move within 15 s: {counts:?}\n{}",
            env.worker_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("kill -9 of an instance holding {victim_had} leases: all moved after {moved_after:?}");
    // w0's buckets moved with its leases.
    wait_buckets_shared(&env, &admins, &["w1", "w2"]).await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    more.store(false, Ordering::SeqCst);
    let expected = producer.await.expect("producer");
    assert!(expected.orders >= 100, "too few orders to mean anything: {}", expected.orders);
    env.wait_orders_exact(&expected, Duration::from_secs(120)).await;
    assert!(env.rejected().await.is_empty(), "nothing should be rejected\n{}", env.worker_logs());
    // Every row reaches Redshift, w0's buckets too, flushed by their new
    // owners (before any shutdown's final flush of every bucket).
    wait_mirrored(&env, &pg, &table, Duration::from_secs(60)).await;

    // SIGTERM: both drain, checkpoint and hand their leases back at once.
    let mut rest: Vec<Child> = ["w1", "w2"].iter().map(|w| env.worker(w)).collect();
    for c in &rest {
        sigterm(c);
    }
    for c in &mut rest {
        let status = wait_exit(c, Duration::from_secs(30)).await;
        assert!(status.success(), "exit {status:?}\n{}", env.worker_logs());
    }
    let leases = env.leases().await;
    assert!(leases.values().all(|(owner, _)| owner.is_none()), "leases still owned after SIGTERM: {leases:?}");
    assert!(leases.values().all(|(_, cp)| cp != "TRIM_HORIZON"), "every shard got records and a checkpoint: {leases:?}");
}

/// Waits until each of the instances `alive` (by admin address) flushes
/// the mirror's buckets of the leases it holds: with 8 leases, two buckets
/// per lease, 16 in all.
async fn wait_buckets_shared(env: &Env, admins: &BTreeMap<&str, String>, alive: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (leases, _) = env.lease_counts().await;
        let mut shares = BTreeMap::new();
        for w in alive {
            let text = http_get(&admins[w], "/metrics").await;
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix("cafe_mirror_buckets_owned ").and_then(|v| v.trim().parse::<usize>().ok()));
            let n = n.unwrap_or_else(|| panic!("{w} exports no cafe_mirror_buckets_owned:\n{text}"));
            shares.insert((*w).to_owned(), n);
        }
        let each_its_own = alive.iter().all(|w| shares[*w] == 2 * leases.get(*w).copied().unwrap_or(0));
        if each_its_own && shares.values().sum::<usize>() == 16 {
            eprintln!("mirror buckets shared: {shares:?} (leases {leases:?})");
            return;
        }
        assert!(Instant::now() < deadline, "the mirror's buckets are not shared out within 20 s: {shares:?}, leases {leases:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn shard_ids(env: &Env) -> Vec<(String, Option<String>, String, String)> {
    let out = env.kinesis.list_shards().stream_name(env.stream()).send().await.expect("list shards");
    out.shards()
        .iter()
        .map(|s| {
            let range = s.hash_key_range().expect("range");
            (
                s.shard_id().to_owned(),
                s.sequence_number_range().and_then(|r| r.ending_sequence_number().map(str::to_owned)),
                range.starting_hash_key().to_owned(),
                range.ending_hash_key().to_owned(),
            )
        })
        .collect()
}

/// The midpoint of a hash key range (decimal strings up to 2^128 - 1).
fn midpoint(start: &str, end: &str) -> String {
    let a: u128 = start.parse().expect("hash key");
    let b: u128 = end.parse().expect("hash key");
    (a + (b - a) / 2).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_and_a_merge_during_a_run_lose_nothing_and_keep_per_key_order() {
    let mut env = Env::with_orders("reshard", "shards = 2\nshard_sync_interval_ms = 2000", "", Vec::new()).await;
    env.start_worker("a");
    env.start_worker("b");
    let more = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn(produce(env.producer(), 0, 8, Duration::from_millis(300), Arc::clone(&more)));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Split shard 0 at its midpoint: children 2 and 3.
    let shards = shard_ids(&env).await;
    let (id, _, lo, hi) = shards.iter().find(|s| s.0.ends_with("000000000000")).expect("shard 0").clone();
    env.kinesis
        .split_shard()
        .stream_name(env.stream())
        .shard_to_split(&id)
        .new_starting_hash_key(midpoint(&lo, &hi))
        .send()
        .await
        .expect("split");
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Merge the two children back: shard 4, with two parents.
    let shards = shard_ids(&env).await;
    let mut open: Vec<_> = shards.iter().filter(|s| s.1.is_none() && !s.0.ends_with("000000000001")).cloned().collect();
    open.sort_by_key(|a| a.2.parse::<u128>().expect("key"));
    assert_eq!(open.len(), 2, "two children after the split: {shards:?}");
    env.kinesis
        .merge_shards()
        .stream_name(env.stream())
        .shard_to_merge(&open[0].0)
        .adjacent_shard_to_merge(&open[1].0)
        .send()
        .await
        .expect("merge");
    tokio::time::sleep(Duration::from_secs(4)).await;
    more.store(false, Ordering::SeqCst);
    let expected = producer.await.expect("producer");
    assert!(expected.orders >= 80, "{}", expected.orders);

    // Every order's history is exactly its events in order: an event read
    // out of order would have been rejected as an illegal transition.
    env.wait_orders_exact(&expected, Duration::from_secs(120)).await;
    let rejected = env.rejected().await;
    assert!(rejected.is_empty(), "rejected: {:?}\n{}", rejected.iter().take(3).collect::<Vec<_>>(), env.worker_logs());
    let shards = shard_ids(&env).await;
    assert_eq!(shards.len(), 5, "{shards:?}");
    // The closed shards were read to their end and checkpointed there.
    let leases = env.leases().await;
    for (id, end, _, _) in &shards {
        if end.is_some() {
            assert_eq!(leases.get(id).map(|l| l.1.as_str()), Some("SHARD_END"), "{id}: {leases:?}");
        }
    }
}

fn kpl_batch(prefix: &str, first: usize, n: usize, expected: &mut Expected) -> Vec<u8> {
    let mut events = Vec::new();
    for i in first..first + n {
        events.extend(order_events(prefix, i, expected));
    }
    let records: Vec<(&str, &[u8])> = events.iter().map(|(k, b)| (k.as_str(), b.as_bytes())).collect();
    pipeline::kpl::aggregate(&records)
}

#[tokio::test(flavor = "multi_thread")]
async fn kpl_aggregates_count_record_by_record_and_bad_records_are_rejected_in_place() {
    let mut env = Env::with_orders("kpl", "shards = 1", "", Vec::new()).await;
    env.start();
    let p = env.producer();
    let mut expected = Expected::default();
    // Two aggregates of 10 and 15 orders, every event of each order inside.
    let agg1 = kpl_batch(&env.prefix, 0, 10, &mut expected);
    let agg2 = kpl_batch(&env.prefix, 10, 15, &mut expected);
    let payment = super::payment(&env.prefix, 1, "cust-1", 500).1;
    p.put(&[
        ("agg-1".to_owned(), agg1.clone()),
        ("junk".to_owned(), b"{not json".to_vec()),
        ("agg-2".to_owned(), agg2),
        ("pay".to_owned(), payment.into_bytes()),
        ("bin".to_owned(), vec![0xff, 0xfe, 0x00]),
    ])
    .await;
    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
    let mut rejected = env.rejected().await;
    rejected.sort_by(|a, b| a.1.get("reason").cmp(&b.1.get("reason")));
    let reasons: Vec<&str> = rejected.iter().map(|(_, a)| a.get("reason").map_or("", String::as_str)).collect();
    assert_eq!(reasons, vec!["bad_json", "bad_json"], "{rejected:?}");
    // The payment among them is decided and counted on the stream, as from any input.
    let sums = env.wait_for_payments(1, Duration::from_secs(30)).await;
    assert_eq!((sums.get("payments"), sums.get("payment_amount_cents")), (Some(&1), Some(&500)), "{sums:?}");
    assert!(env.payment(&format!("{}-p1", env.prefix)).await.is_some(), "the payment on the stream is decided");
    assert_eq!(rejected[0].0, "{not json", "rejected unchanged");
    for (_, attrs) in &rejected {
        assert!(attrs.get("position").is_some_and(|p| p.starts_with("shardId-000000000000/")), "{attrs:?}");
        assert_eq!(attrs.get("source"), Some(&env.stream()));
    }

    // The state machine refuses what the contract refuses.
    let status = |order: &str, id: &str, to: &str| {
        json!({"v": 1, "id": id, "type": "order.status", "ts": "2026-11-22T08:30:00Z", "store": "st0",
               "data": {"order_id": order, "status": to}})
        .to_string()
        .into_bytes()
    };
    let cancelled = format!("{}-o0", env.prefix);
    p.put(&[
        ("ghost".to_owned(), status("ghost-order", "x1", "confirmed")),
        (cancelled.clone(), status(&cancelled, "x2", "completed")),
    ])
    .await;
    let more = env.wait_rejected(2, Duration::from_secs(30)).await;
    let mut reasons: Vec<String> = more.iter().filter_map(|(_, a)| a.get("reason").cloned()).collect();
    reasons.sort();
    assert_eq!(reasons, vec!["illegal_transition", "unknown_order"], "{more:?}");
    env.wait_orders_exact(&expected, Duration::from_secs(10)).await;

    // A replay of a whole aggregate (a producer retry) changes nothing.
    p.put(&[("agg-1".to_owned(), agg1)]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.wait_orders_exact(&expected, Duration::from_secs(10)).await;
    let repeats = events_out(&env, "duplicate").await;
    let replayed: usize = (0..10).map(|i| if i % 5 == 0 { CANCELLED.len() } else { FULL.len() }).sum();
    assert_eq!(repeats, replayed, "every event of the replayed aggregate is a repeat");

    // SIGTERM checkpoints inside the last aggregate, by sub-sequence number;
    // a new process resumes after it and re-reads nothing.
    let (status, _) = env.sigterm();
    assert!(status.success(), "exit {status:?}\n{}", env.log());
    let out = env
        .ddb
        .get_item()
        .table_name(format!("{}-leases", env.prefix))
        .key("leaseKey", aws_sdk_dynamodb::types::AttributeValue::S("shardId-000000000000".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("lease");
    let lease = out.item.expect("lease item");
    let sub = lease.get("checkpointSubSequenceNumber").and_then(|v| v.as_n().ok()).cloned();
    assert_eq!(
        sub.as_deref(),
        Some((replayed - 1).to_string().as_str()),
        "checkpoint at the aggregate's last sub-record: {lease:?}"
    );
    assert!(!lease.contains_key("leaseOwner"), "released: {lease:?}");
    env.start();
    let mut more = expected.clone();
    let extra = order_events(&env.prefix, 100, &mut more);
    p.put(&extra.into_iter().map(|(k, b)| (k, b.into_bytes())).collect::<Vec<_>>()).await;
    env.wait_orders_exact(&more, Duration::from_secs(60)).await;
    assert_eq!(events_out(&env, "duplicate").await, 0, "the restarted daemon re-read records before its checkpoint");
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_shard_iterators_are_renewed_and_nothing_is_lost() {
    // A Kinesis of this test's own (the stack's emulator binary, built by
    // the stack script if this machine has none) whose iterators live 1 s:
    // every iterator the daemon keeps across a 1.5 s poll interval expires.
    let port = free_port();
    let _kinesis = OwnEmulators::start(
        &["--kinesis-port", &port.to_string(), "--kinesis-shard-limit", "16", "--iterator-lifetime-secs", "1"],
        port,
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut env = Env::with_orders(
        "expiry",
        "shards = 1\npoll_interval_ms = 1500",
        "",
        vec![("AWS_ENDPOINT_URL_KINESIS".to_owned(), endpoint)],
    )
    .await;
    env.start();
    let more = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn(produce(env.producer(), 0, 5, Duration::from_millis(700), Arc::clone(&more)));
    tokio::time::sleep(Duration::from_secs(8)).await;
    more.store(false, Ordering::SeqCst);
    let expected = producer.await.expect("producer");
    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
    let metrics = http_get(&env.admin, "/metrics").await;
    let expiries = metrics
        .lines()
        .find(|l| l.starts_with("cafe_kinesis_iterator_expiries_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(expiries >= 3.0, "iterators should have expired and been renewed: {expiries}\n{}", env.log());
}

/// The `cafe_pipeline_events_total` series of `outcome` for the stream (0
/// while the daemon is not serving yet).
async fn events_out(env: &Env, outcome: &str) -> usize {
    if tokio::net::TcpStream::connect(&env.admin).await.is_err() {
        return 0;
    }
    let metrics = http_get(&env.admin, "/metrics").await;
    metrics
        .lines()
        .find(|l| {
            l.starts_with("cafe_pipeline_events_total")
                && l.contains(&format!("outcome=\"{outcome}\""))
                && l.contains(&env.stream())
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0) as usize
}

/// A replay of the whole shard (the checkpoint set back, as after a crash
/// before any checkpoint) judges every record as the first pass did: an
/// event rejected against the order as it was then stays rejected, though
/// the order has since moved to where it would apply. The example
/// is `[cancelled X, placed X]`: replayed against the stored order, the
/// cancellation counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_shard_judges_every_record_as_its_first_pass_did() {
    let mut env = Env::with_orders("replay", "shards = 1", "", Vec::new()).await;
    env.start();
    let p = env.producer();
    let mut expected = Expected::default();
    let mut records: Vec<(String, String)> = Vec::new();
    for i in 0..6 {
        records.extend(order_events(&env.prefix, i, &mut expected));
    }
    // X's cancellation before X is placed: rejected as unknown_order.
    let mut x = Expected::default();
    let x_events = order_events(&env.prefix, 10, &mut x);
    records.push(x_events[2].clone());
    records.push(x_events[0].clone());
    // Y's `ready` straight after `placed`: rejected as illegal; then confirmed.
    let mut y = Expected::default();
    let y_events = order_events(&env.prefix, 11, &mut y);
    records.extend([y_events[0].clone(), y_events[3].clone(), y_events[1].clone()]);
    for (extra, statuses) in [(&x, vec!["placed"]), (&y, vec!["placed", "confirmed"])] {
        expected.orders += extra.orders;
        expected.order_items += extra.order_items;
        expected.revenue_cents += extra.revenue_cents;
        let id = extra.statuses.keys().next().expect("one order").clone();
        expected.statuses.insert(id, statuses);
    }
    p.put(&records.iter().map(|(k, b)| (k.clone(), b.clone().into_bytes())).collect::<Vec<_>>()).await;
    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
    let first = env.wait_rejected(2, Duration::from_secs(30)).await;
    let mut reasons: Vec<String> = first.iter().filter_map(|(_, a)| a.get("reason").cloned()).collect();
    reasons.sort();
    assert_eq!(reasons, vec!["illegal_transition", "unknown_order"], "{first:?}");

    // Stop, set the checkpoint back to the start, and read it all again.
    let (status, _) = env.sigterm();
    assert!(status.success(), "exit {status:?}\n{}", env.log());
    env.ddb
        .update_item()
        .table_name(format!("{}-leases", env.prefix))
        .key("leaseKey", aws_sdk_dynamodb::types::AttributeValue::S("shardId-000000000000".into()))
        .update_expression("SET checkpoint = :th, checkpointSubSequenceNumber = :zero")
        .expression_attribute_values(":th", aws_sdk_dynamodb::types::AttributeValue::S("TRIM_HORIZON".into()))
        .expression_attribute_values(":zero", aws_sdk_dynamodb::types::AttributeValue::N("0".into()))
        .send()
        .await
        .expect("set the checkpoint back");
    env.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while events_out(&env, "duplicate").await + events_out(&env, "written").await < records.len() {
        assert!(Instant::now() < deadline, "the replay did not finish\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(events_out(&env, "written").await, 0, "a replayed record changed something\n{}", env.log());
    env.wait_orders_exact(&expected, Duration::from_secs(5)).await;
    assert!(env.rejected().await.is_empty(), "a replay sends no rejection twice");
}

/// `initial_position = latest`: the first holder pins the lease to the time
/// it took it, so an instance killed before its first checkpoint hands the
/// next holder that time, not a new tip: what arrived in between is read.
#[tokio::test(flavor = "multi_thread")]
async fn a_latest_lease_handed_over_before_any_checkpoint_loses_nothing() {
    let mut env = Env::with_orders(
        "latest",
        "shards = 1\ninitial_position = \"latest\"\nfailover_time_ms = 3000\nlease_renew_interval_ms = 1000\nlease_take_interval_ms = 500",
        "",
        Vec::new(),
    )
    .await;
    env.start_worker("first");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leases = env.leases().await;
        if leases.values().any(|(owner, cp)| owner.as_deref() == Some("first") && cp.starts_with("AT_TIMESTAMP:")) {
            break;
        }
        assert!(Instant::now() < deadline, "the first holder never pinned LATEST: {leases:?}\n{}", env.worker_logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Killed before it read or checkpointed anything; orders arrive while
    // no one reads the shard.
    let mut first = env.worker("first");
    first.kill().expect("kill -9");
    let _ = first.wait();
    let mut expected = Expected::default();
    let records: Vec<(String, Vec<u8>)> =
        (0..8).flat_map(|i| order_events(&env.prefix, i, &mut expected)).map(|(k, b)| (k, b.into_bytes())).collect();
    env.producer().put(&records).await;
    // Longer than the clock allowance of a pin: a pin of the second
    // holder's own would come after these records; only the first's covers
    // them.
    tokio::time::sleep(Duration::from_secs(6)).await;
    env.start_worker("second");
    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
}

/// An idle shard checkpoints its last records: a holder killed after the
/// stream went quiet leaves nothing to replay.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_shard_checkpoints_its_last_records() {
    let mut env = Env::with_orders(
        "idle",
        "shards = 1\nfailover_time_ms = 3000\nlease_renew_interval_ms = 1000\nlease_take_interval_ms = 500\ncheckpoint_interval_ms = 4000",
        "",
        Vec::new(),
    )
    .await;
    env.start();
    let mut expected = Expected::default();
    // Two waves: the second lands well within the checkpoint interval (4 s)
    // of the first, so no checkpoint after a batch covers it; only one
    // taken while the shard is idle does.
    for wave in 0..2 {
        let records: Vec<(String, Vec<u8>)> = (wave * 5..wave * 5 + 5)
            .flat_map(|i| order_events(&env.prefix, i, &mut expected))
            .map(|(k, b)| (k, b.into_bytes()))
            .collect();
        env.producer().put(&records).await;
        env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
    }
    // Idle for more than the interval, then killed: no release, no
    // shutdown checkpoint. Meanwhile the quiet shard is read about once a
    // second (idle_poll_interval_ms, 1 s by default) after a second at the
    // poll interval (250 ms): about 10 reads in 6 s where every 250 ms
    // would make 24.
    let reads = || metric(&env, "cafe_aws_requests_total", "operation=\"GetRecords\"");
    let before_idle = reads().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let idle_reads = reads().await - before_idle;
    eprintln!("idle: {idle_reads} GetRecords on a quiet shard in 6 s");
    assert!((3.0..=13.0).contains(&idle_reads), "{idle_reads} GetRecords on a quiet shard in 6 s\n{}", env.log());
    let before = env.leases().await;
    let old_owner = before.values().next().and_then(|(o, _)| o.clone()).expect("held");
    env.kill9();
    env.start();
    // The new process takes the lease once it expires and reads from the
    // checkpoint: a sentinel order put after the take, once applied, shows
    // it has read everything there was.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leases = env.leases().await;
        if leases.values().all(|(owner, _)| owner.as_ref().is_some_and(|o| *o != old_owner)) {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never moved: {leases:?}\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sentinel: Vec<(String, Vec<u8>)> =
        order_events(&env.prefix, 10, &mut expected).into_iter().map(|(k, b)| (k, b.into_bytes())).collect();
    env.producer().put(&sentinel).await;
    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
    let replayed = events_out(&env, "duplicate").await;
    assert_eq!(replayed, 0, "records after the last checkpoint were replayed\n{}", env.log());
    env.wait_orders_exact(&expected, Duration::from_secs(5)).await;
}

/// A shard whose records come less than `idle_poll_interval_ms` apart is
/// read at the poll interval throughout: each read that returns a record
/// starts the quiet count again (the idle pace is for quiet shards only).
#[tokio::test(flavor = "multi_thread")]
async fn a_shard_with_records_half_a_second_apart_is_read_at_the_poll_interval() {
    let mut env = Env::with_orders("busy", "shards = 1", "", Vec::new()).await;
    env.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.log().contains("Consuming the stream") || metric(&env, "cafe_leases_held", "").await < 1.0 {
        assert!(Instant::now() < deadline, "the daemon never took the shard\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let more = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn(produce(env.producer(), 0, 1, Duration::from_millis(500), Arc::clone(&more)));
    // The shard was quiet while the lease was taken: its first records may
    // wait for one read at the idle pace.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reads = || metric(&env, "cafe_aws_requests_total", "operation=\"GetRecords\"");
    let before = reads().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let busy = reads().await - before;
    more.store(false, Ordering::SeqCst);
    let expected = producer.await.expect("producer");
    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
    eprintln!("busy: {busy} GetRecords in 6 s with records every 500 ms");
    // Every 250 ms: 24; at the idle pace after a second of quiet: about 8.
    assert!(busy >= 18.0, "{busy} GetRecords in 6 s on a shard with records every 500 ms\n{}", env.log());
}

/// The latest `applied_at` among the orders' history entries (stamped as a
/// write is built), in Unix seconds.
async fn last_applied_at(env: &Env) -> f64 {
    use time::format_description::well_known::Rfc3339;
    let items = env.ddb.scan().table_name(format!("{}-orders", env.prefix)).send().await.expect("scan orders");
    assert!(items.last_evaluated_key.is_none(), "one page of orders expected");
    items
        .items()
        .iter()
        .flat_map(|item| item.get("history").and_then(|h| h.as_l().ok()).into_iter().flatten())
        .filter_map(|e| e.as_m().ok()?.get("applied_at")?.as_s().ok().cloned())
        .map(|at| time::OffsetDateTime::parse(&at, &Rfc3339).expect("applied_at is RFC 3339").unix_timestamp_nanos() as f64 / 1e9)
        .fold(f64::NEG_INFINITY, f64::max)
}

/// `cafe_sink_last_write_timestamp_seconds{sink="dynamodb"}` of a daemon on
/// the local stack ends its orders' writes: at or after the latest
/// `applied_at` of the table (a batch's writes begin, then are answered,
/// then stamped), by the time it is read once the orders are exact, and
/// moved by the next wave. loadgen's orders-throughput times the daemon's
/// drain by it (that the stamp follows the answer, not the request, is the
/// sink's unit test's).
#[tokio::test(flavor = "multi_thread")]
async fn the_dynamodb_sink_s_last_write_is_stamped_after_the_last_order_lands() {
    let mut env = Env::with_orders("lastwrite", "shards = 1", "", Vec::new()).await;
    env.start();
    let unix = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64();
    let last_write = || metric(&env, "cafe_sink_last_write_timestamp_seconds", "sink=\"dynamodb\"");
    let mut expected = Expected::default();
    let mut previous = 0.0;
    for wave in 0..2 {
        let records: Vec<(String, Vec<u8>)> = (wave * 10..wave * 10 + 10)
            .flat_map(|i| order_events(&env.prefix, i, &mut expected))
            .map(|(k, b)| (k, b.into_bytes()))
            .collect();
        env.producer().put(&records).await;
        env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
        let at = last_write().await;
        let read = unix();
        let applied = last_applied_at(&env).await;
        eprintln!("wave {wave}: last applied_at {applied:.3}, last write {at:.3}, read at {read:.3}");
        assert!(applied <= at && at <= read, "wave {wave}: {applied} <= {at} <= {read}\n{}", env.log());
        assert!(at > previous, "wave {wave}: the stamp did not move from {previous}");
        previous = at;
    }
}
