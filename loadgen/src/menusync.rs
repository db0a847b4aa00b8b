//! The menu-sync driver: goose users (the pods) each push their share of
//! the catalogue to the menu queue with SendMessageBatch, then the outputs
//! are verified against what was sent, computed here independently of the
//! daemon: every item in `cafe-menu` with the right image hash, `image_ok`,
//! kcal and `content_sha256`; the counters exact (items and mismatches);
//! and, with a Redshift URL, `cafe_store_minute` equal to `cafe-aggregates`
//! for every row of the run's stores.
//!
//! Owns: menu payloads and their expected digests, the attack and the
//! summary. Must not: use the daemon's code to check the daemon.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use base64::Engine;
use goose::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::info;

use crate::attack::{RunCell, Sends, Verdict, send_sqs_batch};
use crate::payload::store_id;
use crate::scenario::{MenuLoad, Scenario as ScenarioFile};
use crate::verify;
use crate::{RunArgs, Targets};

/// Most bytes of one SendMessageBatch (SQS: 256 KiB for the whole batch).
const MAX_BATCH_BYTES: usize = 250_000;

/// What the loadgen expects the daemon to store for one item.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// The item key.
    pub sku: String,
    /// Its store.
    pub store: String,
    /// SHA-256 of the image bytes.
    pub image_sha256: String,
    /// Whether the declared hash is right.
    pub image_ok: bool,
    /// kcal, to 2 decimals.
    pub kcal: f64,
    /// SHA-256 of the canonical JSON of `data`.
    pub content_sha256: String,
    /// Decoded image size.
    pub image_bytes: usize,
}

/// Item `index` of a run: its event body (with `ts`) and what to expect.
pub fn item(seed: u64, run_id: &str, index: u64, load: &MenuLoad, ts: &str) -> (String, Expected) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (lo, hi) = (load.image_kib[0].max(0.01).ln(), load.image_kib[1].max(load.image_kib[0]).max(0.01).ln());
    let kib = (lo + (hi - lo) * rng.random::<f64>()).exp();
    let mut image = vec![0u8; (kib * 1024.0) as usize];
    rng.fill(&mut image[..]);
    let wrong = rng.random::<f64>() < load.wrong_hash_ratio;
    let image_sha256 = hex::encode(Sha256::digest(&image));
    let declared = if wrong { hex::encode(Sha256::digest(format!("not the image {index}"))) } else { image_sha256.clone() };
    let n = rng.random_range(load.ingredients[0]..=load.ingredients[1].max(load.ingredients[0]));
    let ingredients: Vec<Value> = (0..n)
        .map(|k| {
            json!({
                "name": format!("ingredient-{k}"),
                "grams": f64::from(rng.random_range(1..4000u32)) / 10.0,
                "kcal_per_100g": rng.random_range(0..900u32),
                "protein_per_100g": f64::from(rng.random_range(0..400u32)) / 10.0,
                "fat_per_100g": f64::from(rng.random_range(0..400u32)) / 10.0,
                "carbs_per_100g": f64::from(rng.random_range(0..900u32)) / 10.0
            })
        })
        .collect();
    let kcal_sum: f64 =
        ingredients.iter().map(|i| i["grams"].as_f64().unwrap_or(0.0) * i["kcal_per_100g"].as_f64().unwrap_or(0.0) / 100.0).sum();
    let store = store_id(run_id, (index % u64::from(load.stores.max(1))) as u32);
    let sku = format!("r{run_id}-sku{index:06}");
    let category = ["coffee", "tea", "food", "merch"][(index % 4) as usize];
    let data = json!({
        "sku": sku, "name": format!("Item {index}"), "category": category,
        "price_cents": rng.random_range(100..2000u32),
        "image": {"content_type": "image/webp", "base64": base64::engine::general_purpose::STANDARD.encode(&image), "sha256": declared},
        "ingredients": ingredients,
        "allergens": if index.is_multiple_of(3) { json!(["milk"]) } else { json!([]) }
    });
    let content_sha256 = hex::encode(Sha256::digest(canonical(&data)));
    let body = json!({"v": 1, "id": format!("r{run_id}-m{index}"), "type": "menu.item.upserted", "ts": ts, "store": store, "data": data});
    let expected = Expected {
        sku,
        store,
        image_sha256,
        image_ok: !wrong,
        kcal: (kcal_sum * 100.0).round() / 100.0,
        content_sha256,
        image_bytes: image.len(),
    };
    (body.to_string(), expected)
}

/// Canonical JSON as the contract (docs/contract.md) defines it (keys sorted, no
/// whitespace, integral numbers as integers), written here from the JSON
/// sent rather than from the daemon's types.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            let fields: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&o[k.as_str()]))).collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => {
                format!("{}", f as i64)
            }
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

struct Sync {
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    load: MenuLoad,
    seed: u64,
    run_id: String,
    items: u64,
    pods: usize,
    sends: Sends<Expected>,
}

static SYNC: RunCell<Sync> = RunCell::new();

/// One pod's share: items `index % pods == pod`, in batches under 256 KiB.
async fn push(user: &mut GooseUser) -> TransactionResult {
    let s = SYNC.get()?;
    let me = user.weighted_users_index % s.pods;
    let _ = s.sends.start();
    let mut batch = SendBatch::default();
    let mut index = me as u64;
    while index < s.items {
        let ts = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        if let Some(full) = batch.add(item(s.seed, &s.run_id, index, &s.load, &ts)) {
            send(&s, user, full).await?;
        }
        index += s.pods as u64;
    }
    if let Some(rest) = batch.rest() {
        send(&s, user, rest).await?;
    }
    Ok(())
}

/// A pod's next SendMessageBatch: at most ten items, under
/// [`MAX_BATCH_BYTES`].
#[derive(Debug, Default)]
pub(crate) struct SendBatch {
    items: Vec<(String, Expected)>,
    bytes: usize,
}

impl SendBatch {
    /// Adds `item`, handing back first the batch it would overfill.
    pub(crate) fn add(&mut self, item: (String, Expected)) -> Option<Vec<(String, Expected)>> {
        let full = !self.items.is_empty() && (self.items.len() == 10 || self.bytes + item.0.len() > MAX_BATCH_BYTES);
        let out = full.then(|| {
            self.bytes = 0;
            std::mem::take(&mut self.items)
        });
        self.bytes += item.0.len();
        self.items.push(item);
        out
    }

    /// What is left to send.
    pub(crate) fn rest(self) -> Option<Vec<(String, Expected)>> {
        (!self.items.is_empty()).then_some(self.items)
    }
}

async fn send(s: &Sync, user: &mut GooseUser, batch: Vec<(String, Expected)>) -> TransactionResult {
    let entries: Vec<_> = batch
        .iter()
        .enumerate()
        .filter_map(|(k, (body, _))| SendMessageBatchRequestEntry::builder().id(k.to_string()).message_body(body).build().ok())
        .collect();
    let accepted = send_sqs_batch(user, &s.sqs, &s.queue_url, "SendMessageBatch menu", entries).await?;
    s.sends.refused(batch.len() - accepted.len());
    s.sends.accepted(accepted.into_iter().map(|k| batch[k].1.clone()));
    Ok(())
}

/// The run's summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Which run.
    #[serde(flatten)]
    pub run: crate::attack::RunHeader,
    /// Items planned.
    pub planned: u64,
    /// Items SQS accepted.
    pub sent: u64,
    /// Decoded image bytes sent.
    pub image_bytes: u64,
    /// Items sent with a wrong declared hash.
    pub wrong_hashes_sent: u64,
    /// Seconds to send everything.
    pub send_secs: f64,
    /// Seconds from the first send to the last item stored.
    pub drain_secs: f64,
    /// Items stored per second over `drain_secs`.
    pub items_per_sec: f64,
    /// Event time to durable write.
    #[serde(flatten)]
    pub e2e: crate::attack::E2e,
    /// Rows of the run's stores compared between DynamoDB and Redshift (None: not checked).
    pub redshift_rows: Option<usize>,
    /// Seconds after the last item stored until Redshift equalled DynamoDB.
    pub redshift_caught_up_secs: Option<f64>,
    /// The CPU-bound ceiling of the run, when judged (`[thresholds.local] drain_vs_ceiling`).
    pub ceiling: Option<Ceiling>,
    /// Lost, duplicated, refused and wrong items, and the rules that failed.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Every event stored: event time and durable write (for a chaos run's phases).
    #[serde(skip)]
    pub samples: Vec<crate::chaos::Sample>,
}

impl Summary {
    /// True when nothing was lost, duplicated or wrong and every rule passed.
    pub fn passed(&self) -> bool {
        self.verdict.passed()
    }

    /// Markdown rendering.
    pub fn markdown(&self) -> String {
        let redshift = match (self.redshift_rows, self.redshift_caught_up_secs) {
            (Some(rows), Some(secs)) => {
                format!("{rows} rows equal, {secs:.1} s after the last item")
            }
            (Some(rows), None) => format!("{rows} rows, NOT equal"),
            _ => "not checked (no --redshift-url)".into(),
        };
        format!(
            "# {} ({})\n\n| measure | value |\n|---|---|\n\
             | items sent | {} of {} (send failures {}) |\n| image bytes | {:.1} MiB |\n| wrong hashes sent | {} |\n\
             | lost | {} |\n| duplicated | {} |\n| sent in | {:.2} s |\n| drained after | {:.2} s |\n| items/s | {:.1} |\n\
             | e2e p50 / p95 / p99 | {:.0} / {:.0} / {:.0} ms |\n| Redshift | {} |\n{}| verdict | {} |\n{}",
            self.run.scenario,
            self.run.run_id,
            self.sent,
            self.planned,
            self.verdict.send_failures,
            self.image_bytes as f64 / 1_048_576.0,
            self.wrong_hashes_sent,
            self.verdict.lost,
            self.verdict.duplicated,
            self.send_secs,
            self.drain_secs,
            self.items_per_sec,
            self.e2e.p50_ms,
            self.e2e.p95_ms,
            self.e2e.p99_ms,
            redshift,
            self.ceiling.as_ref().map_or(String::new(), |c| format!(
                "| CPU-bound ceiling | {:.1} items/s: kernel {:.2} ms on {:.2} cores left (daemon {:.2}, others {:.2} of {}) |\n\
                 | drain / ceiling | {:.2} ({:.2} s vs {:.2} s, the longer of the ceiling's and the send's) |\n",
                c.items_per_sec,
                c.kernel_ms,
                c.cores.left,
                c.cores.daemon,
                c.cores.others,
                c.cores.cores,
                c.drain_vs_ceiling,
                self.drain_secs,
                c.reference_secs
            )),
            if self.passed() { "PASS" } else { "FAIL" },
            self.verdict
                .mismatches
                .iter()
                .chain(&self.verdict.failed_thresholds)
                .chain(&self.verdict.failed_targets)
                .map(|m| format!("\n- {m}"))
                .collect::<String>()
        )
    }
}

/// The CPU-bound ceiling of a menu sync next to the daemon's drain.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// The machine's CPUs over the run.
    pub cores: crate::ceiling::CoresLeft,
    /// The menu kernel per item on one thread, ms (over `kernel_items` of the run's items).
    pub kernel_ms: f64,
    /// Items the kernel was timed on.
    pub kernel_items: usize,
    /// The kernel on the cores left: items per second.
    pub items_per_sec: f64,
    /// The ceiling's time for the items stored, seconds.
    pub ceiling_secs: f64,
    /// What the drain is judged against: the ceiling's time, or the send's
    /// when that is longer (no item is stored before it is sent; at small
    /// scales the sending is the slower of the two).
    pub reference_secs: f64,
    /// The daemon's drain over `reference_secs`.
    pub drain_vs_ceiling: f64,
}

/// The time a drain that started with the first send is judged against:
/// the CPU-bound ceiling's, unless sending everything took longer.
fn reference_secs(ceiling_secs: f64, send_secs: f64) -> f64 {
    ceiling_secs.max(send_secs)
}

/// Times the kernel over up to 100 of the run's items, spread evenly (their
/// images span the size distribution), and sets it against the drain.
#[allow(clippy::too_many_arguments)]
async fn menu_ceiling(
    load: &MenuLoad,
    seed: u64,
    run_id: &str,
    items: u64,
    from: &crate::ceiling::CpuMark,
    to: &crate::ceiling::CpuMark,
    stored: u64,
    drain_secs: f64,
    send_secs: f64,
) -> anyhow::Result<Ceiling> {
    let cores = crate::ceiling::cores_left(from, to)?;
    let n = items.min(100);
    let ts = OffsetDateTime::now_utc().format(&Rfc3339)?;
    let bodies: Vec<String> = (0..n).map(|k| item(seed, run_id, k * items / n, load, &ts).0).collect();
    let rounds = load.json_rounds;
    let per_item = tokio::task::spawn_blocking(move || crate::ceiling::menu_kernel_secs(&bodies, rounds)).await??;
    let items_per_sec = cores.left / per_item;
    let ceiling_secs = stored as f64 / items_per_sec;
    info!(kernel_ms = per_item * 1e3, cores_left = cores.left, ceiling_secs, drain_secs, "The CPU-bound ceiling");
    Ok(Ceiling {
        cores,
        kernel_ms: per_item * 1e3,
        kernel_items: n as usize,
        items_per_sec,
        ceiling_secs,
        reference_secs: reference_secs(ceiling_secs, send_secs),
        drain_vs_ceiling: drain_secs / reference_secs(ceiling_secs, send_secs),
    })
}

/// Waits up to `within` for Redshift to equal DynamoDB on every row of
/// `stores`: the number of rows compared, or what differs.
pub async fn mirror_equal(targets: &Targets, url: &str, stores: &[String], within: Duration) -> Result<usize, String> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let connect = tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, tokio_postgres::NoTls)).await;
    let (client, conn) = match connect {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("connecting to --redshift-url: {e}")),
        Err(_) => return Err("connecting to --redshift-url took over 10 s".into()),
    };
    tokio::spawn(conn);
    let waited = Instant::now();
    loop {
        // Each round bounded: a stuck query must not hold the run.
        let round = tokio::time::timeout(Duration::from_secs(20), async {
            let dynamo = dynamodb_rows(&ddb, &targets.aggregates_table, stores).await?;
            let red = redshift_rows(&client, &targets.redshift_table, stores).await?;
            anyhow::Ok((dynamo, red))
        });
        let (dynamo, red) = match round.await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => return Err(format!("Redshift could not be compared with DynamoDB: {e:#}")),
            Err(_) => return Err("comparing Redshift with DynamoDB took over 20 s".into()),
        };
        if dynamo == red && !dynamo.is_empty() {
            return Ok(dynamo.len());
        }
        if waited.elapsed() > within {
            let diff = dynamo.iter().filter(|(k, v)| red.get(*k) != Some(*v)).count();
            return Err(format!("Redshift differs from DynamoDB in {diff} of {} rows after {within:?}", dynamo.len()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every aggregate row of `stores` as (store, window) -> counters, then version.
async fn dynamodb_rows(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    stores: &[String],
) -> anyhow::Result<BTreeMap<(String, String), Vec<i64>>> {
    Ok(verify::aggregate_rows(ddb, table, stores)
        .await?
        .into_iter()
        .map(|(k, r)| (k, r.counters.values().into_iter().chain([r.version]).collect()))
        .collect())
}

/// The same rows from Redshift (or PostgreSQL speaking for it).
async fn redshift_rows(
    client: &tokio_postgres::Client,
    table: &str,
    stores: &[String],
) -> anyhow::Result<BTreeMap<(String, String), Vec<i64>>> {
    let cols = pipeline::window::Counters::NAMES.join(", ");
    let list: Vec<String> = stores.iter().map(|s| format!("'{}'", s.replace('\'', "''"))).collect();
    let q = format!(
        "SELECT store, to_char(window_start, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), {cols}, version FROM {table} WHERE store IN ({})",
        list.join(", ")
    );
    let mut out = BTreeMap::new();
    for m in client.simple_query(&q).await.with_context(|| format!("reading {table}"))? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let text = |i: usize| r.get(i).unwrap_or("").to_owned();
            let values = (2..r.len()).map(|i| text(i).parse::<i64>().unwrap_or(i64::MIN)).collect();
            out.insert((text(0), text(1)), values);
        }
    }
    Ok(out)
}

/// Runs a menu sync end to end.
pub async fn run(scenario: ScenarioFile, args: &RunArgs, targets: &Targets) -> anyhow::Result<Summary> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let queue_url = crate::attack::queue_url(&sqs, &targets.menu_queue).await?;
    let load = scenario.menu.clone().context("not a menu-sync scenario (no [menu])")?;
    let items = ((load.items as f64) * args.scale).round().max(1.0) as u64;
    let pods = load.pods.min(items as usize).max(1);
    let run_id = args.run_id.clone().unwrap_or_else(crate::coldstart::new_run_id);
    std::fs::create_dir_all(&args.report_dir)?;
    let state = Arc::new(Sync {
        sqs,
        queue_url,
        load: load.clone(),
        seed: args.seed,
        run_id: run_id.clone(),
        items,
        pods,
        sends: {
            crate::progress::run().expect(items);
            Sends::with_capacity(items as usize)
        },
    });
    SYNC.set(Arc::clone(&state))?;
    // On the local stack the drain is judged against the CPU-bound ceiling
    // of the same run: the CPU the rest of the machine takes is counted
    // from here to the end of the wait.
    let local = crate::scenario::on_local_stack();
    let ceiling_limit = scenario.thresholds.local.drain_vs_ceiling.filter(|_| local);
    let cpu_from = match ceiling_limit {
        Some(_) => Some(crate::ceiling::mark(&targets.daemon_admin).await.context("menu-sync's drain_vs_ceiling")?),
        None => None,
    };
    info!(scenario = %scenario.name, run_id, items, pods, "Starting the menu sync");

    let config =
        crate::attack::config(format!("sqs://{}", targets.menu_queue), pods, &scenario.thresholds.goose, &args.report_dir);
    let attack = GooseAttack::initialize_with_config(config)?
        .register_scenario(scenario!("MenuSync").register_transaction(transaction!(push).set_name("sync")));
    let failed_thresholds = crate::attack::failed_thresholds(attack.execute().await)?;
    let (started, started_at) = state.sends.started().context("the sync never started")?;
    let send_secs = started.elapsed().as_secs_f64();
    let (sent, send_failures) = state.sends.take();
    info!(sent = sent.len(), send_secs, "Catalogue sent; waiting for the daemon");

    let stores: Vec<String> = (0..load.stores).map(|k| store_id(&run_id, k)).collect();
    let sums = verify::wait_for_counter(
        &ddb,
        &targets.aggregates_table,
        &stores,
        |c| c.menu_items,
        sent.len() as i64,
        Duration::from_secs(scenario.verify.stall_secs),
        Duration::from_secs(scenario.verify.timeout_secs),
    )
    .await?;
    let cpu_to = match cpu_from {
        Some(_) => Some(crate::ceiling::mark(&targets.daemon_admin).await.context("menu-sync's drain_vs_ceiling")?),
        None => None,
    };
    let skus: Vec<String> = sent.iter().map(|e| e.sku.clone()).collect();
    let found: HashMap<String, _> = verify::batch_get(&ddb, &targets.menu_table, "sku", &skus)
        .await?
        .into_iter()
        .filter_map(|item| Some((item.get("sku")?.as_s().ok()?.clone(), item)))
        .collect();

    let mut mismatches = Vec::new();
    let mut e2e = Vec::new();
    let mut samples = Vec::new();
    let mut last_stored: Option<OffsetDateTime> = None;
    for e in &sent {
        let Some(item) = found.get(&e.sku) else {
            continue;
        };
        let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
        let kcal = item.get("kcal").and_then(|v| v.as_n().ok()).and_then(|n| n.parse::<f64>().ok());
        let ok = item.get("image_ok").and_then(|v| v.as_bool().ok()).copied();
        let mut wrong = Vec::new();
        if text("image_sha256") != e.image_sha256 {
            wrong.push("image_sha256");
        }
        if ok != Some(e.image_ok) {
            wrong.push("image_ok");
        }
        if kcal.is_none_or(|k| (k - e.kcal).abs() > 0.005) {
            wrong.push("kcal");
        }
        if text("content_sha256") != e.content_sha256 {
            wrong.push("content_sha256");
        }
        if !wrong.is_empty() && mismatches.len() < 20 {
            mismatches.push(format!("{}: wrong {}", e.sku, wrong.join(", ")));
        }
        if let (Ok(ts), Ok(at)) =
            (OffsetDateTime::parse(&text("ts"), &Rfc3339), OffsetDateTime::parse(&text("updated_at"), &Rfc3339))
        {
            e2e.push((at - ts).as_seconds_f64() * 1000.0);
            samples.push(crate::chaos::Sample { ts, stored: at });
            last_stored = Some(last_stored.map_or(at, |l| l.max(at)));
        }
    }
    let lost = sent.iter().filter(|e| !found.contains_key(&e.sku)).count() as u64;
    let wrong_sent = sent.iter().filter(|e| !e.image_ok).count() as u64;
    let duplicated = (sums.menu_items - sent.len() as i64).max(0) as u64;
    if lost == 0 && sums.menu_hash_mismatches != wrong_sent as i64 {
        mismatches.push(format!("menu_hash_mismatches is {} but {wrong_sent} wrong hashes were sent", sums.menu_hash_mismatches));
    }
    if lost == 0 && sums.menu_items < sent.len() as i64 {
        mismatches.push(format!("menu_items is {} but {} items are stored", sums.menu_items, sent.len()));
    }
    e2e.sort_by(f64::total_cmp);
    let drain_secs = last_stored.map_or(f64::NAN, |l| (l - started_at).as_seconds_f64());

    // Redshift equals DynamoDB for every row of the run's stores.
    let (mut redshift_rows_checked, mut caught_up) = (None, None);
    if let Some(url) = &targets.redshift_url {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.context("connecting to --redshift-url")?;
        tokio::spawn(conn);
        let waited = Instant::now();
        let within = Duration::from_secs(load.redshift_within_secs);
        loop {
            let dynamo = dynamodb_rows(&ddb, &targets.aggregates_table, &stores).await?;
            let red = redshift_rows(&client, &targets.redshift_table, &stores).await?;
            redshift_rows_checked = Some(dynamo.len());
            if dynamo == red && !dynamo.is_empty() {
                let since_last = last_stored.map_or(0.0, |l| (OffsetDateTime::now_utc() - l).as_seconds_f64());
                caught_up = Some(since_last.max(0.0));
                break;
            }
            if waited.elapsed() > within {
                let diff = dynamo.iter().filter(|(k, v)| red.get(*k) != Some(*v)).count();
                mismatches.push(format!("Redshift differs from DynamoDB in {diff} of {} rows after {within:?}", dynamo.len()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    let stored = (sent.len() as u64).saturating_sub(lost);
    let percentiles = crate::attack::E2e::of(&e2e);
    let mut ceiling = None;
    let mut failed_targets = Vec::new();
    if let (Some(limit), Some(from), Some(to)) = (ceiling_limit, cpu_from, cpu_to) {
        let c = menu_ceiling(&load, args.seed, &run_id, items, &from, &to, stored, drain_secs, send_secs).await?;
        if !crate::scenario::at_most(c.drain_vs_ceiling, limit) {
            failed_targets.push(format!(
                "the daemon drained in {:.2}x the CPU-bound ceiling's time ({drain_secs:.2} s vs {:.2} s: the ceiling {:.2} s on {:.2} cores left, the send {send_secs:.2} s), above the target {limit}x",
                c.drain_vs_ceiling, c.reference_secs, c.ceiling_secs, c.cores.left
            ));
        }
        ceiling = Some(c);
    }
    let aws_p99 = if local { None } else { scenario.thresholds.aws.e2e_p99_ms };
    failed_targets.extend(crate::attack::p99_target(percentiles.p99_ms, aws_p99));
    let summary = Summary {
        run: crate::attack::RunHeader { scenario: scenario.name.clone(), run_id, seed: args.seed },
        planned: items,
        sent: sent.len() as u64,
        image_bytes: sent.iter().map(|e| e.image_bytes as u64).sum(),
        wrong_hashes_sent: wrong_sent,
        send_secs,
        drain_secs,
        items_per_sec: stored as f64 / drain_secs,
        e2e: percentiles,
        redshift_rows: redshift_rows_checked,
        redshift_caught_up_secs: caught_up,
        ceiling,
        verdict: Verdict::judged(
            send_failures,
            lost,
            duplicated,
            mismatches,
            failed_thresholds,
            &percentiles,
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

    fn load() -> MenuLoad {
        MenuLoad {
            items: 100,
            pods: 5,
            stores: 3,
            image_kib: [2.0, 64.0],
            wrong_hash_ratio: 0.5,
            ingredients: [2, 5],
            redshift_within_secs: 1,
            json_rounds: 100,
        }
    }

    #[test]
    fn the_drain_is_judged_against_the_ceiling_or_the_send_whichever_is_longer() {
        assert_eq!(reference_secs(52.6, 20.6), 52.6);
        assert_eq!(reference_secs(1.2, 1.5), 1.5, "at small scales no item is stored before it is sent");
    }

    #[test]
    fn items_are_seeded_and_sized_within_the_distribution() {
        let (a, ea) = item(7, "run", 3, &load(), "2026-11-22T08:00:00Z");
        let (b, eb) = item(7, "run", 3, &load(), "2026-11-22T08:00:00Z");
        assert_eq!((a, ea.clone()), (b, eb));
        assert!((2048..=65536).contains(&ea.image_bytes), "{}", ea.image_bytes);
        let wrong = (0..200).filter(|i| !item(7, "run", *i, &load(), "t").1.image_ok).count();
        assert!((60..140).contains(&wrong), "about half declared wrong: {wrong}");
    }

    #[test]
    fn canonical_json_sorts_keys_and_writes_integral_numbers_as_integers() {
        let v: Value = serde_json::from_str(r#"{"b": [1.0, 2.5, {"z": 1, "a": "x y"}], "a": 3}"#).expect("json");
        assert_eq!(canonical(&v), r#"{"a":3,"b":[1,2.5,{"a":"x y","z":1}]}"#);
    }

    #[test]
    fn a_pod_sends_at_most_ten_items_and_250_000_bytes_a_call() {
        let e = item(7, "run", 0, &load(), "t").1;
        let mut batch = SendBatch::default();
        let mut sent = Vec::new();
        let bodies = std::iter::repeat_n("x".repeat(100_000), 3).chain(std::iter::repeat_n("y".to_owned(), 12));
        for body in bodies {
            sent.extend(batch.add((body, e.clone())));
        }
        sent.extend(batch.rest());
        let sizes: Vec<usize> = sent.iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 10, 3], "two images fill a call's bytes; then ten at most; then the rest");
        for b in &sent {
            assert!(b.iter().map(|(body, _)| body.len()).sum::<usize>() <= MAX_BATCH_BYTES);
        }
        assert!(SendBatch::default().rest().is_none(), "nothing left, nothing sent");
    }
}
