//! Fraud decisions against the shared state (`[fraud] state = "dynamodb"`):
//! the same payments, however they are spread over instances and restarts,
//! fire the rules as often (issue 14).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use std::sync::Arc;

use daemon::bridge::CpuPool;
use daemon::route::apply_payments::apply_payments;
use daemon::route::{FraudStateCache, StateTraffic};
use daemon::sinks::WriteOutcome;
use daemon::sinks::dynamodb::DynamoDbSink;
use daemon::sinks::dynamodb::config::DynamoDbSinkConfig;

use super::{Env, http_get};

const SHARED: &str = "[fraud]\nstate = \"dynamodb\"\nwork_factor = 10\n";
const IN_PROCESS: &str = "[fraud]\nstate = \"process\"\nwork_factor = 10\n";

/// One payment: (message group = customer, body).
#[allow(clippy::too_many_arguments)]
fn pay(prefix: &str, id: &str, customer: &str, card: &str, device: &str, amount: u64, at: OffsetDateTime) -> (String, String) {
    let body = json!({
        "v": 1, "id": format!("{prefix}-e-{id}"), "type": "payment.requested",
        "ts": at.format(&Rfc3339).expect("ts"), "store": "st1",
        "data": {
            "payment_id": format!("{prefix}-{id}"), "order_id": format!("o-{id}"), "customer_id": customer,
            "amount_cents": amount, "currency": "USD",
            "card": {"bin": "411111", "last4": "4242", "fingerprint": card},
            "ip": "203.0.113.7", "device_id": device, "billing_country": "US"
        }
    })
    .to_string();
    (customer.to_owned(), body)
}

/// The issue's sequence in four waves: a card-testing burst (40 payments
/// on one card from 40 customers, so 40 message groups, 2 s apart), a
/// device fanning out over 8 cards (60 s apart), and a customer's amount
/// spike (4 payments of 10.00, then 500.00, one group). By the rules'
/// semantics (`pipeline/src/fraud/state.rs`), velocity fires on 35, device
/// on 5 and amount on 1, whatever the arrival order.
fn waves(prefix: &str) -> Vec<Vec<(String, String)>> {
    let t0 = OffsetDateTime::now_utc() - time::Duration::minutes(20);
    let at = |secs: i64| t0 + time::Duration::seconds(secs);
    let mut waves = vec![Vec::new(); 4];
    for i in 0..40 {
        waves[i / 10].push(pay(
            prefix,
            &format!("burst-{i}"),
            &format!("b{i}"),
            "fp-burst",
            &format!("dev-b{i}"),
            900,
            at(2 * i as i64),
        ));
    }
    for i in 0..8 {
        waves[i / 2].push(pay(
            prefix,
            &format!("fan-{i}"),
            &format!("f{i}"),
            &format!("fp-fan-{i}"),
            "dev-fan",
            900,
            at(60 * i as i64),
        ));
    }
    for i in 0..5 {
        let amount = if i == 4 { 50_000 } else { 1_000 };
        waves[i.min(3)].push(pay(prefix, &format!("spike-{i}"), "spiker", "fp-spike", "dev-spike", amount, at(100 + i as i64)));
    }
    waves
}

/// How often each rule fired, over every payment written.
async fn fired(env: &Env) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut start = None;
    loop {
        let page = env
            .ddb
            .scan()
            .table_name(format!("{}-payments", env.prefix))
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan payments");
        for item in page.items() {
            for r in item.get("reasons").and_then(|r| r.as_l().ok()).into_iter().flatten() {
                if let Ok(r) = r.as_s() {
                    *out.entry(r.clone()).or_insert(0) += 1;
                }
            }
        }
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return out,
        }
    }
}

/// Sends the waves, each once the one before is written; `between(wave)`
/// runs before each wave after the first.
async fn run(env: &mut Env, mut between: impl FnMut(&mut Env, usize)) -> HashMap<String, usize> {
    let waves = waves(&env.prefix);
    let mut sent = 0;
    for (w, wave) in waves.iter().enumerate() {
        if w > 0 {
            between(env, w);
        }
        env.send(wave).await;
        sent += wave.len();
        let done = env.wait_for_payments(sent as i64, Duration::from_secs(90)).await;
        assert_eq!(done.get("payments").copied(), Some(sent as i64), "wave {w}: {done:?}\n{}", env.log());
    }
    fired(env).await
}

/// Between waves: a SIGTERM and a start before the third.
fn restart_before_the_third_wave(env: &mut Env, wave: usize) {
    if wave == 2 {
        let (status, _) = env.sigterm();
        assert!(status.success(), "{status:?}\n{}", env.log());
        env.start();
    }
}

/// A key's state item, read consistently.
async fn state_item(env: &Env, key: &str) -> HashMap<String, AttributeValue> {
    env.ddb
        .get_item()
        .table_name(format!("{}-fraud-state", env.prefix))
        .key("key", AttributeValue::S(key.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get state")
        .item
        .unwrap_or_else(|| panic!("no state item for {key}"))
}

fn expected() -> HashMap<String, usize> {
    HashMap::from([("velocity".to_owned(), 35), ("device".to_owned(), 5), ("amount".to_owned(), 1)])
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_state_fires_the_rules_as_often_on_one_instance_three_instances_and_across_a_restart() {
    // One instance that never restarts.
    let mut one = Env::new("fraud-one", SHARED).await;
    one.start();
    let got = run(&mut one, |_, _| {}).await;
    assert_eq!(got, expected(), "one instance\n{}", one.log());
    let metrics = http_get(&one.admin, "/metrics").await;
    assert!(metrics.contains("cafe_fraud_state_writes_total"), "{metrics}");
    assert!(!metrics.contains("cafe_fraud_state_writes_total 0\n"), "state was written: {metrics}");

    // Three instances on the same queue and tables.
    let mut three = Env::new("fraud-three", SHARED).await;
    three.start();
    three.start_worker("w2");
    three.start_worker("w3");
    let got = run(&mut three, |_, _| {}).await;
    assert_eq!(got, expected(), "three instances\n{}", three.log());

    // One instance, restarted after the second wave.
    let mut restarted = Env::new("fraud-restart", SHARED).await;
    restarted.start();
    let got = run(&mut restarted, restart_before_the_third_wave).await;
    assert_eq!(got, expected(), "restarted\n{}", restarted.log());

    // The history of the burst's card: bounded, and read back as written.
    let item = state_item(&restarted, "card#fp-burst").await;
    let entries = item.get("entries").and_then(|e| e.as_l().ok()).map(Vec::len);
    assert_eq!(entries, Some(6), "velocity_max_per_card + 1 entries: {item:?}");
    assert!(item.get("expires_at").and_then(|e| e.as_n().ok()).is_some(), "{item:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_state_forgets_at_a_restart_which_is_what_the_shared_state_is_for() {
    // The same run with the history in the process: the restart loses the
    // first half's history, so the rules fire less. (This is the test above
    // failing without the shared state.)
    let mut env = Env::new("fraud-process", IN_PROCESS).await;
    env.start();
    let got = run(&mut env, restart_before_the_third_wave).await;
    assert_eq!(got.get("velocity"), Some(&30), "15 before the restart, 15 after: {got:?}");
    assert_eq!(got.get("device"), Some(&2), "{got:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_payment_keeps_its_decision_and_changes_no_state() {
    let mut env = Env::new("fraud-redeliver", SHARED).await;
    env.start();
    let at = OffsetDateTime::now_utc() - time::Duration::minutes(5);
    let first: Vec<_> =
        (0..6).map(|i| pay(&env.prefix, &format!("p{i}"), &format!("c{i}"), "fp-r", &format!("d{i}"), 700, at)).collect();
    env.send(&first).await;
    env.wait_until_some_processed(6).await;
    let before = state_item(&env, "card#fp-r").await;
    let p0 = format!("{}-p0", env.prefix);
    let reasons_p0 = env.payment(&p0).await.and_then(|p| p.get("reasons").cloned());
    assert!(reasons_p0.is_some());
    // All six again (a producer's retry with new deduplication ids).
    env.send(&first).await;
    assert!(env.wait_queue_empty(Duration::from_secs(60)).await, "not drained\n{}", env.log());
    assert_eq!(env.payment_count().await, 6);
    assert_eq!(env.aggregates().await.get("payments"), Some(&6));
    assert_eq!(state_item(&env, "card#fp-r").await, before, "a redelivery changes no state");
    let again = env.payment(&p0).await.and_then(|p| p.get("reasons").cloned());
    assert_eq!(again, reasons_p0, "the first decision stands");
    let metrics = http_get(&env.admin, "/metrics").await;
    assert!(metrics.contains("outcome=\"duplicate\"} 6"), "{metrics}");
}

/// A payment of `card` for `apply_payments`, dated a minute ago.
fn unscored(prefix: &str, id: &str, card: &str) -> daemon::route::Unscored {
    let ts = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    daemon::route::Unscored {
        id: format!("{prefix}-e-{id}"),
        ts,
        ts_raw: ts.format(&Rfc3339).expect("rfc3339"),
        store: "s1".into(),
        payment: pipeline::event::PaymentRequested {
            payment_id: format!("{prefix}-{id}"),
            order_id: format!("{prefix}-o-{id}"),
            customer_id: format!("{prefix}-c-{id}"),
            amount_cents: 700,
            currency: "USD".into(),
            card: pipeline::event::Card { bin: "411111".into(), last4: "0000".into(), fingerprint: card.into() },
            ip: "198.51.100.7".parse().expect("ip"),
            device_id: format!("{prefix}-d-{id}"),
            billing_country: "US".into(),
        },
    }
}

/// `apply_payments` driven directly against the local stack's fraud-state
/// table: the process's cache and CPU pool (one thread), and sinks made
/// to measure.
struct Rig {
    env: Env,
    sdk: aws_config::SdkConfig,
    config: DynamoDbSinkConfig,
    metrics: Arc<daemon::metrics::Metrics>,
    pool: Arc<CpuPool>,
    rules: Arc<pipeline::fraud::Rules>,
    /// The process's cache.
    cache: Arc<FraudStateCache>,
}

impl Rig {
    async fn new(name: &str) -> Self {
        let env = Env::new(name, SHARED).await;
        let p = env.prefix.clone();
        let config = DynamoDbSinkConfig {
            aggregates_table: format!("{p}-aggregates"),
            payments_table: format!("{p}-payments"),
            orders_table: format!("{p}-orders"),
            menu_table: format!("{p}-menu"),
            events_table: format!("{p}-events"),
            fraud_state_table: format!("{p}-fraud-state"),
            ..DynamoDbSinkConfig::default()
        };
        let metrics = Arc::new(daemon::metrics::Metrics::new());
        Rig {
            env,
            sdk: aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await,
            config,
            pool: Arc::new(CpuPool::new(1, Arc::clone(&metrics)).expect("pool")),
            metrics,
            rules: Arc::new(
                pipeline::fraud::Rules::new(pipeline::fraud::FraudConfig { work_factor: 0, ..Default::default() })
                    .expect("rules"),
            ),
            cache: Arc::new(FraudStateCache::new(1000, None)),
        }
    }

    /// A sink whose client sends to `url` (the stack's DynamoDB if none)
    /// without the SDK's retries, gives a call up after `timeout` if one,
    /// and has the sink's settings as `tweak` leaves them.
    fn sink(
        &self,
        url: Option<String>,
        timeout: Option<Duration>,
        tweak: impl FnOnce(&mut DynamoDbSinkConfig),
    ) -> Arc<DynamoDbSink> {
        let mut conf =
            aws_sdk_dynamodb::config::Builder::from(&self.sdk).retry_config(aws_config::retry::RetryConfig::disabled());
        if let Some(url) = url {
            conf = conf.endpoint_url(url);
        }
        if let Some(t) = timeout {
            conf = conf.timeout_config(aws_config::timeout::TimeoutConfig::builder().operation_timeout(t).build());
        }
        let mut config = self.config.clone();
        tweak(&mut config);
        Arc::new(DynamoDbSink::new(aws_sdk_dynamodb::Client::from_conf(conf.build()), config, Arc::clone(&self.metrics)))
    }

    /// One batch of one payment of `card` (its customer and device its
    /// own) through `sink` and `cache`; checks that it was decided exactly
    /// when it was written.
    fn pay(
        &self,
        sink: &Arc<DynamoDbSink>,
        cache: &Arc<FraudStateCache>,
        card: &str,
        id: &str,
    ) -> impl Future<Output = (StateTraffic, Vec<WriteOutcome>)> + Send + 'static {
        let (sink, cache, rules, pool) = (Arc::clone(sink), Arc::clone(cache), Arc::clone(&self.rules), Arc::clone(&self.pool));
        let batch = vec![unscored(&self.env.prefix, id, card)];
        async move {
            let mut traffic = StateTraffic::default();
            let (decided, outcomes) = apply_payments(&sink, batch, &rules, &cache, &pool, "now", &mut traffic).await;
            assert_eq!(decided.iter().all(Option::is_some), outcomes == [WriteOutcome::Written], "{outcomes:?}");
            (traffic, outcomes)
        }
    }

    /// The card's stored version and the payments in its history.
    async fn card(&self, card: &str) -> (u64, usize) {
        let item = state_item(&self.env, &format!("card#{card}")).await;
        let version = item["ver"].as_n().expect("a version").parse().expect("a number");
        (version, item["entries"].as_l().expect("entries").len())
    }

    /// Until batches of the process have claimed `keys` keys in its cache
    /// (panics with `what` after `within`).
    async fn wait_claims(&self, keys: usize, within: Duration, what: &str) {
        wait_until(within, what, || self.cache.writing_len() >= keys).await;
    }
}

/// Until `done` holds, polled every 5 ms; panics with `what` after `within`.
async fn wait_until(within: Duration, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Two batches of one process race for a card: one (through a proxy that
/// holds its transactions 2.5 s) scored against the card's version and is
/// writing the next, and the other starts meanwhile. It scores against
/// the version being written and sends once that landed: neither is
/// cancelled, and neither reads the card. The same race against a writer
/// with its own cache (another instance) goes first and cancels the held
/// batch, which reads the card again (after the pause). Both end with
/// every payment in the card's history, its version moved once per
/// transaction. When the held write does not land, the batch scored
/// against it sends nothing until that is known, then is scored again;
/// and when it did not land because another instance moved the card, the
/// batch pauses first, as after a conflict of its own.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_the_process_waits_for_its_sibling_s_write_and_another_writer_s_move_is_read_again() {
    use faultproxy::{Fault, Proxy, Rule};

    let rig = Rig::new("fraud-own").await;
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local stack's DynamoDB");
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), &upstream).await.expect("start the proxy");
    let direct = rig.sink(None, None, |_| {});
    let held = rig.sink(Some(proxy.url()), None, |_| {});
    // For the write that does not land: held unanswered until its client
    // gives up (2.5 s), and not tried again.
    let lost = rig.sink(Some(proxy.url()), Some(Duration::from_millis(2500)), |c| c.max_retries = 0);
    // Batches that pause at least 5 s before a round after another
    // writer's move (the pause is uniform in [base / 4, base]): in "moved"
    // neither goes again before the other batch would have without its
    // pause, and in "lost" a pause would show.
    let slow_pause = |c: &mut DynamoDbSinkConfig| (c.base_backoff_ms, c.max_backoff_ms) = (20_000, 20_000);
    let patient = rig.sink(None, None, slow_pause);
    let held_patient = rig.sink(Some(proxy.url()), None, slow_pause);
    let another = || Arc::new(FraudStateCache::new(1000, None));

    // Each race: the card written once first (this process, its cache),
    // then the held batch started, and the other batch once the held one
    // claimed its keys (it scores, registers its writes and sends them
    // next); in "moved", another instance writes the card just before.
    let races = [
        ("own", &held, &direct, Arc::clone(&rig.cache), Fault::Latency { millis: 2500 }),
        ("other", &held, &direct, another(), Fault::Latency { millis: 2500 }),
        ("lost", &lost, &patient, Arc::clone(&rig.cache), Fault::BlackHole),
        ("moved", &held_patient, &patient, Arc::clone(&rig.cache), Fault::Latency { millis: 2500 }),
    ];
    for (case, held, other_sink, other_cache, fault) in races {
        let card = format!("{}-fp-{case}", rig.env.prefix);
        rig.pay(&direct, &rig.cache, &card, &format!("{case}-first")).await;
        let (first, _) = rig.card(&card).await;
        proxy.set_rules(vec![Rule { operation: Some("TransactWriteItems".into()), probability: 1.0, fault }]).expect("rules");
        let held_batch = tokio::spawn(rig.pay(held, &rig.cache, &card, &format!("{case}-held")));
        rig.wait_claims(1, Duration::from_secs(20), &format!("{case}: the held batch never claimed its keys")).await;
        let started = Instant::now();
        if case == "moved" {
            rig.pay(&direct, &another(), &card, &format!("{case}-mover")).await;
        }
        let (other, other_outcomes) = rig.pay(other_sink, &other_cache, &card, &format!("{case}-other")).await;
        let other_took = started.elapsed();
        let (traffic, held_outcomes) = held_batch.await.expect("the held batch");
        proxy.clear();
        let stats = proxy.stats().operations.get("TransactWriteItems").copied().unwrap_or_default();
        assert_eq!(other_outcomes, [WriteOutcome::Written], "{case}");
        let (version, entries) = rig.card(&card).await;
        match case {
            // The other batch scored against the version the held one was
            // writing and waited for it to land; the held one read its
            // customer and device and found the card cached.
            "own" => {
                assert_eq!((other.conflicts, other.chained, other.unlanded), (0, 1, 0), "{other:?}");
                assert!(other_took >= Duration::from_millis(1500), "sent before the held write landed: {other_took:?}");
                assert_eq!((traffic.conflicts, traffic.reads, traffic.hits), (0, 2, 1), "{traffic:?}");
                assert_eq!(stats.latency, 1, "the held batch's one transaction");
            }
            // The other writer went first; the card is read again: this
            // cache never saw the other write.
            "other" => {
                assert_eq!((other.conflicts, other.chained), (0, 0), "{other:?}");
                assert_eq!(traffic.conflicts, 1, "{traffic:?}");
                assert_eq!((traffic.conflicts_from_cache, traffic.reads, traffic.hits), (0, 3, 3), "{traffic:?}");
                assert_eq!(stats.latency, 3, "both races' held transactions");
            }
            // The held write never landed (its payment goes back to its
            // source): the other batch, scored against it, did not send
            // until that was known, then was scored again against what
            // landed and committed, at once (no other writer moved the
            // card: a pause would have taken it past 7.5 s).
            "lost" => {
                assert_eq!(held_outcomes, [WriteOutcome::Failed], "{traffic:?}");
                assert_eq!((other.conflicts, other.chained, other.unlanded), (0, 1, 1), "{other:?}");
                assert!(other_took >= Duration::from_millis(1500), "sent before the held write was given up: {other_took:?}");
                assert!(other_took < Duration::from_secs(6), "paused though no other writer moved the card: {other_took:?}");
                assert_eq!(stats.black_hole, 1, "the held batch's one transaction");
                assert_eq!((version, entries), (first + 1, 2), "the card moved once, by the other batch");
                continue;
            }
            // Another instance moved the card under the held write, which
            // was cancelled (its batch paused, read the card again and
            // committed); the batch chained on it learnt that the write
            // did not land because of another writer, and paused before
            // its next round (at least 5 s; without the pause it would
            // read the card and be done about when the held write was
            // cancelled, 2.5 s after the start). Whichever goes first, the other scores
            // after it (chained on it when it is still writing).
            _ => {
                assert_eq!((traffic.conflicts, traffic.conflicts_from_cache), (1, 0), "{traffic:?}");
                assert_eq!((other.conflicts, other.unlanded), (0, 1), "{other:?}");
                assert!(other.chained >= 1, "{other:?}");
                assert!(other_took >= Duration::from_secs(6), "no pause after another writer's move: {other_took:?}");
                assert_eq!(held_outcomes, [WriteOutcome::Written], "{case}");
                assert_eq!((version, entries), (first + 3, 4), "{case}: the card moved once per write, every payment in it");
                continue;
            }
        }
        assert_eq!(held_outcomes, [WriteOutcome::Written], "{case}");
        assert_eq!((version, entries), (first + 2, 3), "{case}: the card moved once per transaction, every payment in it");
    }
}

/// A batch of the process claiming a card another of its batches is still
/// scoring (the CPU pool's one thread held, so that scoring waits) waits
/// for that batch's versions and scores after them: neither is cancelled.
/// A scoring held longer than the wait's bound (10 s from its claim, the
/// waiting batch starting 2 s after it) holds the batch behind no longer:
/// that batch scores against what it knows (its scoring queued on the pool
/// at 11 s, before the held one's ran at 13), and the two cost one
/// cancelled transaction, not a stall.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_waits_for_a_sibling_still_scoring_its_keys_and_no_longer_than_ten_seconds() {
    let rig = Rig::new("fraud-queued").await;
    let direct = rig.sink(None, None, |_| {});
    let secs = Duration::from_secs;
    for (case, after, hold) in [("scored", secs(0), secs(1)), ("stuck", secs(2), secs(13))] {
        let card = format!("{}-fp-{case}", rig.env.prefix);
        rig.pay(&direct, &rig.cache, &card, &format!("{case}-first")).await;
        let (first, _) = rig.card(&card).await;
        let depth = rig.metrics.rayon_queue_depth.get();
        // The pool's one thread held until `release` is dropped.
        let (release, hold_pool) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let pool = Arc::clone(&rig.pool);
            tokio::spawn(async move { pool.run(move || hold_pool.recv().is_err()).await })
        };
        // The blocker in the pool before anything else.
        let what = format!("{case}: the blocker never reached the pool");
        wait_until(secs(5), &what, || rig.metrics.rayon_queue_depth.get() != depth).await;
        let held_batch = tokio::spawn(rig.pay(&direct, &rig.cache, &card, &format!("{case}-held")));
        rig.wait_claims(1, Duration::from_secs(20), &format!("{case}: the held batch never claimed its keys")).await;
        let claimed = Instant::now();
        tokio::time::sleep(after).await;
        let waiting = tokio::spawn(rig.pay(&direct, &rig.cache, &card, &format!("{case}-waiting")));
        // Until it claimed its keys too (its customer and device besides
        // the held batch's three).
        rig.wait_claims(5, secs(5), &format!("{case}: the waiting batch never claimed its keys")).await;
        if case == "stuck" {
            // Past the bound from the held batch's claim (not yet from
            // the waiting one's), the held batch still scoring: the
            // waiting one's scoring is queued behind it.
            tokio::time::sleep_until((claimed + Duration::from_secs(11)).into()).await;
            assert_eq!(rig.metrics.rayon_queue_depth.get() - depth, 3, "the waiting batch still waits for the held one");
        }
        tokio::time::sleep_until((claimed + hold).into()).await;
        drop(release);
        assert!(matches!(blocker.await.expect("the blocker"), Ok(true)), "the pool was held until released");
        let (held, held_outcomes) = held_batch.await.expect("the held batch");
        let (waited, waited_outcomes) = waiting.await.expect("the waiting batch");
        assert_eq!((held_outcomes, waited_outcomes), (vec![WriteOutcome::Written], vec![WriteOutcome::Written]), "{case}");
        assert_eq!(waited.queued, 1, "{case}: {waited:?}");
        let conflicts = held.conflicts + waited.conflicts;
        if case == "scored" {
            assert_eq!(conflicts, 0, "{case}: {held:?} {waited:?}");
        } else {
            // Both scored against the card's first version: one of them
            // was cancelled once and scored again after the other.
            assert_eq!(conflicts, 1, "{case}: {held:?} {waited:?}");
        }
        assert_eq!(rig.card(&card).await, (first + 2, 3), "{case}: the card moved once per batch, every payment in it");
    }
}
