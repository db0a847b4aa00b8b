//! Fraud decisions against the shared state (`[fraud] state = "dynamodb"`):
//! the same payments, however they are spread over instances and restarts,
//! fire the rules as often (issue 14).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

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

/// Two batches of one process race for a card: one (through a proxy that
/// holds its transactions 2.5 s) scored against the card's version and is
/// writing the next, and the other starts meanwhile. It scores against
/// the version being written and sends once that landed: neither is
/// cancelled, and neither reads the card. The same race against a writer
/// with its own cache (another instance) goes first and cancels the held
/// batch, which reads the card again (after the pause). Both end with
/// every payment in the card's history, its version moved once per
/// transaction.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_the_process_waits_for_its_sibling_s_write_and_another_writer_s_move_is_read_again() {
    use daemon::route::apply_payments::apply_payments;
    use daemon::route::{FraudStateCache, StateTraffic};
    use daemon::sinks::WriteOutcome;
    use daemon::sinks::dynamodb::DynamoDbSink;
    use daemon::sinks::dynamodb::config::DynamoDbSinkConfig;
    use faultproxy::{Fault, Proxy, Rule};
    use std::sync::Arc;

    let env = Env::new("fraud-own", SHARED).await;
    let p = env.prefix.clone();
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local stack's DynamoDB");
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), &upstream).await.expect("start the proxy");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let client = |url: Option<String>| {
        let mut conf = aws_sdk_dynamodb::config::Builder::from(&sdk).retry_config(aws_config::retry::RetryConfig::disabled());
        if let Some(url) = url {
            conf = conf.endpoint_url(url);
        }
        aws_sdk_dynamodb::Client::from_conf(conf.build())
    };
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
    let direct = Arc::new(DynamoDbSink::new(client(None), config.clone(), Arc::clone(&metrics)));
    let held = Arc::new(DynamoDbSink::new(client(Some(proxy.url())), config.clone(), Arc::clone(&metrics)));
    // For the write that does not land: held unanswered until its client
    // gives up (2.5 s), and not tried again.
    let lost = {
        let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(aws_config::timeout::TimeoutConfig::builder().operation_timeout(Duration::from_millis(2500)).build())
            .endpoint_url(proxy.url());
        let config = DynamoDbSinkConfig { max_retries: 0, ..config };
        Arc::new(DynamoDbSink::new(aws_sdk_dynamodb::Client::from_conf(conf.build()), config, Arc::clone(&metrics)))
    };
    let pool = Arc::new(daemon::bridge::CpuPool::new(1, Arc::clone(&metrics)).expect("pool"));
    let rules = Arc::new(
        pipeline::fraud::Rules::new(pipeline::fraud::FraudConfig { work_factor: 0, ..Default::default() }).expect("rules"),
    );
    let cache = Arc::new(FraudStateCache::new(1000, None));
    let version =
        |item: &HashMap<String, AttributeValue>| -> u64 { item["ver"].as_n().expect("a version").parse().expect("a number") };
    let entries = |item: &HashMap<String, AttributeValue>| item["entries"].as_l().expect("entries").len();

    // Each race: the card written once first (this process, its cache), then
    // the held batch started, and the other writer's batch once the held
    // one is writing.
    let races = [
        ("own", Arc::clone(&held), Arc::clone(&cache), Fault::Latency { millis: 2500 }),
        ("other", Arc::clone(&held), Arc::new(FraudStateCache::new(1000, None)), Fault::Latency { millis: 2500 }),
        ("lost", lost, Arc::clone(&cache), Fault::BlackHole),
    ];
    for (case, held, other_cache, fault) in races {
        let card = format!("{p}-fp-{case}");
        let run = |sink: Arc<DynamoDbSink>, cache: Arc<FraudStateCache>, id: &str| {
            let (rules, pool, batch) =
                (Arc::clone(&rules), Arc::clone(&pool), vec![unscored(&p, &format!("{case}-{id}"), &card)]);
            async move {
                let mut traffic = StateTraffic::default();
                let (decided, outcomes) = apply_payments(&sink, batch, &rules, &cache, &pool, "now", &mut traffic).await;
                assert_eq!(decided.iter().all(Option::is_some), outcomes == [WriteOutcome::Written], "{outcomes:?}");
                (traffic, outcomes)
            }
        };
        run(Arc::clone(&direct), Arc::clone(&cache), "first").await;
        let first = version(&state_item(&env, &format!("card#{card}")).await);
        proxy.set_rules(vec![Rule { operation: Some("TransactWriteItems".into()), probability: 1.0, fault }]).expect("rules");
        let held_batch = tokio::spawn(run(held, Arc::clone(&cache), "held"));
        // Once the held batch has claimed its keys in the process's cache
        // (it scores, registers its writes and sends them next).
        let deadline = Instant::now() + Duration::from_secs(20);
        while cache.writing_len() == 0 {
            assert!(Instant::now() < deadline, "{case}: the held batch never got to its write");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let (other, other_outcomes) = run(Arc::clone(&direct), other_cache, "other").await;
        let other_took = started.elapsed();
        let (traffic, held_outcomes) = held_batch.await.expect("the held batch");
        proxy.clear();
        let stats = proxy.stats().operations.get("TransactWriteItems").copied().unwrap_or_default();
        assert_eq!(other_outcomes, [WriteOutcome::Written], "{case}");
        let item = state_item(&env, &format!("card#{card}")).await;
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
            // landed and committed.
            _ => {
                assert_eq!(held_outcomes, [WriteOutcome::Failed], "{traffic:?}");
                assert_eq!((other.conflicts, other.chained, other.unlanded), (0, 1, 1), "{other:?}");
                assert!(other_took >= Duration::from_millis(1500), "sent before the held write was given up: {other_took:?}");
                assert_eq!(stats.black_hole, 1, "the held batch's one transaction");
                assert_eq!((version(&item), entries(&item)), (first + 1, 2), "the card moved once, by the other batch");
                continue;
            }
        }
        assert_eq!(held_outcomes, [WriteOutcome::Written], "{case}");
        assert_eq!(
            (version(&item), entries(&item)),
            (first + 2, 3),
            "{case}: the card moved once per transaction, every payment in it"
        );
    }
}
