//! Outages of an AWS endpoint, made by a real proxy in front of the real
//! local endpoint (`faultproxy`): it answers with the service's own errors,
//! or holds requests unanswered, and counts what it did, so a test whose
//! fault never happened fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use faultproxy::{Fault, Proxy, Rule};

use super::orders::{Expected, order_events, produce};
use super::{Env, burst, http_get, metric};

/// A proxy in front of the stack's endpoint that `var` names (as
/// `AWS_ENDPOINT_URL_SQS`).
async fn proxy_for(var: &str) -> Proxy {
    let upstream = std::env::var(var).unwrap_or_else(|_| panic!("the local stack's {var}"));
    Proxy::start("127.0.0.1:0".parse().expect("addr"), &upstream).await.expect("start the proxy")
}

/// A proxy in front of the stack's DynamoDB.
async fn dynamodb_proxy() -> Proxy {
    proxy_for("AWS_ENDPOINT_URL_DYNAMODB").await
}

/// A test environment whose daemon reaches DynamoDB through a proxy, and
/// whose payments queue dead-letters a message at its second receive.
async fn behind_a_dynamodb_proxy(name: &str) -> (Proxy, Env) {
    let proxy = dynamodb_proxy().await;
    let daemon_env =
        vec![("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url()), ("CAFE_SOURCES__PAYMENTS__MAX_RECEIVE_COUNT".into(), "2".into())];
    let env = Env::with_orders(name, "shards = 1", "", daemon_env).await;
    (proxy, env)
}

fn on(operations: &[&str], fault: Fault) -> Vec<Rule> {
    operations.iter().map(|op| Rule { operation: Some((*op).to_owned()), probability: 1.0, fault: fault.clone() }).collect()
}

/// Requests of `operation` the proxy has held unanswered.
fn held(proxy: &Proxy, operation: &str) -> u64 {
    proxy.stats().operations.get(operation).map_or(0, |c| c.black_hole)
}

/// Waits until the proxy holds a request of `operation` unanswered (the
/// daemon's log in the failure).
async fn wait_held(proxy: &Proxy, operation: &str, within: Duration, env: &Env) {
    let deadline = Instant::now() + within;
    while held(proxy, operation) == 0 {
        assert!(Instant::now() < deadline, "no {operation} was held\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every lease of the stream exists and is owned by no one.
async fn assert_released(env: &Env) {
    let leases = env.leases().await;
    assert!(!leases.is_empty() && leases.values().all(|(owner, _)| owner.is_none()), "not released: {leases:?}\n{}", env.log());
}

/// Messages in the payments queue's DLQ.
async fn dlq_messages(env: &Env) -> usize {
    let url = env
        .sqs
        .get_queue_url()
        .queue_name(format!("{}-pay-dlq.fifo", env.prefix))
        .send()
        .await
        .expect("dlq url")
        .queue_url
        .expect("url");
    let got = env.sqs.receive_message().queue_url(url).max_number_of_messages(10).wait_time_seconds(1).send().await;
    got.expect("receive from the DLQ").messages().len()
}

/// Payments, and order life cycles whose events must apply in FIFO order,
/// all through the payments queue; what they must add up to.
fn traffic(prefix: &str) -> (Vec<(String, String)>, i64, Expected) {
    let (mut bodies, total) = burst(prefix, 120);
    let mut expected = Expected::default();
    for i in 0..20 {
        bodies.extend(order_events(prefix, i, &mut expected));
    }
    (bodies, total, expected)
}

async fn wait_all_applied(env: &Env, payments: i64, total: i64, expected: &Expected, within: Duration) {
    let sums = env.wait_for_payments(payments, within).await;
    assert_eq!(sums.get("payments"), Some(&payments), "{sums:?}\n{}", env.log());
    assert_eq!(sums.get("payment_amount_cents"), Some(&total), "{sums:?}");
    env.wait_orders_exact(expected, Duration::from_secs(30)).await;
}

/// DynamoDB throttles every write for 40 s under a backlog. SQS would move a
/// message to the DLQ at its second receive (`max_receive_count = 2`); the
/// daemon keeps the batches in flight and retries them in place, so nothing
/// is dead-lettered, every payment counts once, and each order's events
/// apply in FIFO order (out of order they would be rejected).
#[tokio::test(flavor = "multi_thread")]
async fn throttled_writes_are_retried_in_flight_and_nothing_reaches_the_dlq() {
    let (proxy, mut env) = behind_a_dynamodb_proxy("throttled").await;
    env.daemon_env.push(("CAFE_ADMIN__UNREADY_AFTER_SECS".into(), "5".into()));
    env.start();
    let ready = http_get(&env.admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200") || ready.contains("\"starting\""), "{ready}");
    proxy.set_rules(on(&["TransactWriteItems", "BatchGetItem"], Fault::Throttle)).expect("rules");
    let (bodies, total, expected) = traffic(&env.prefix);
    env.send(&bodies).await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    // Readiness: DynamoDB has failed for longer than 5 s, so the instance
    // says it is not ready, naming the sink; liveness is not affected.
    let ready = http_get(&env.admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let body: serde_json::Value = serde_json::from_str(ready.split("\r\n\r\n").nth(1).unwrap_or("")).expect("JSON body");
    assert_eq!(body["components"]["sink"]["dynamodb"]["state"], "failed", "{body}");
    assert!(
        body["components"]["sink"]["dynamodb"]["error"].as_str().is_some_and(|e| e.contains("ProvisionedThroughputExceeded")),
        "{body}"
    );
    assert_eq!(body["components"]["source"][format!("{}-pay.fifo", env.prefix)]["state"], "ok", "{body}");
    let live = http_get(&env.admin, "/healthz").await;
    assert!(live.starts_with("HTTP/1.1 200") && live.contains("\"alive\""), "{live}");
    let throttled = proxy.stats().total.throttle;
    assert!(throttled > 0, "the proxy throttled nothing: {:?}", proxy.stats());
    assert_eq!(env.aggregates().await.get("payments"), None, "a write got through the throttle");
    proxy.clear();

    let cleared = Instant::now();
    wait_all_applied(&env, 120, total, &expected, Duration::from_secs(60)).await;
    eprintln!(
        "{throttled} calls throttled over 40 s; everything applied {:.1} s after the throttle ended",
        cleared.elapsed().as_secs_f64()
    );
    assert_eq!(dlq_messages(&env).await, 0, "a message reached the DLQ\n{}", env.log());
    let retried = metric(&env, "cafe_source_retried_in_flight_total", "pay.fifo").await;
    assert!(retried > 0.0, "nothing was retried in flight");
    assert_eq!(metric(&env, "cafe_source_given_back_total", "pay.fifo").await, 0.0, "messages were given back");
    // Written again: ready again.
    let ready = http_get(&env.admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200") && ready.contains("\"ready\""), "{ready}");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// A slow DynamoDB does not stall a shard. The proxy holds every
/// transaction 1.5 s while orders stream in (two new ones a tick, each
/// order's events a tick apart), so each batch has new orders, free to
/// write, and events of orders whose previous event is still writing in
/// the batch before, which must wait for it. One shard, one transaction at
/// a time per batch (`sink_concurrency = 1`): two transactions in flight
/// at once can only be two batches writing side by side (with
/// `max_batches_in_flight = 1` the peak is 1). Every order's events still
/// apply in shard order: exact statuses and counters, nothing rejected.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_transaction_does_not_stall_its_shard() {
    let proxy = dynamodb_proxy().await;
    let daemon_env =
        vec![("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url()), ("CAFE_PIPELINE__SINK_CONCURRENCY".into(), "1".into())];
    let mut env = Env::with_orders("slowtx", "shards = 1", "", daemon_env).await;
    env.start();
    proxy.set_rules(on(&["TransactWriteItems"], Fault::Latency { millis: 1500 })).expect("rules");
    let more = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn(produce(env.producer(), 0, 2, Duration::from_millis(400), Arc::clone(&more)));
    tokio::time::sleep(Duration::from_secs(4)).await;
    more.store(false, Ordering::SeqCst);
    let expected = producer.await.expect("producer");
    env.wait_orders_exact(&expected, Duration::from_secs(120)).await;
    let stats = proxy.stats();
    assert!(stats.total.latency > 0, "the proxy delayed nothing: {stats:?}");
    let peak = stats.peak_in_flight.get("TransactWriteItems").copied().unwrap_or(0);
    eprintln!("{} orders; at most {peak} transactions in flight at once", expected.statuses.len());
    assert!(peak >= 2, "one transaction at a time: the shard's batches wrote one after the other\n{}", env.log());
    assert_eq!(metric(&env, "cafe_pipeline_rejected_events_total", "").await, 0.0, "an event was rejected");
    // The daemon's request counter agrees with what the wire saw.
    let sent = stats.operations.get("TransactWriteItems").map_or(0, |c| c.forwarded);
    assert!(sent > 0, "no transaction went through the proxy: {stats:?}");
    let counted = metric(&env, "cafe_aws_requests_total", "operation=\"TransactWriteItems\"").await;
    assert_eq!(counted, sent as f64, "cafe_aws_requests_total against the proxy's count of TransactWriteItems");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// DynamoDB stops answering until its calls time out (10 s) and are retried:
/// calls time out instead of hanging, and the pipeline resumes by itself
/// once the endpoint answers again, losing and double-counting nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_dynamodb_stalls_nothing_for_good() {
    let (proxy, mut env) = behind_a_dynamodb_proxy("blackhole").await;
    env.start();
    proxy.set_rules(on(&["TransactWriteItems", "BatchGetItem"], Fault::BlackHole)).expect("rules");
    let (bodies, total, expected) = traffic(&env.prefix);
    env.send(&bodies).await;
    // Silent until calls have timed out (10 s; 20 s allowed on a loaded
    // machine, under the 30 s that let a hung call hold its batch longer)
    // and been retried.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&env, "cafe_sink_requests_total", "outcome=\"retry\"").await == 0.0 {
        assert!(Instant::now() < deadline, "no call timed out and was retried\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let held = proxy.stats().total.black_hole;
    assert!(held > 0, "the proxy held nothing: {:?}", proxy.stats());
    assert_eq!(env.aggregates().await.get("payments"), None, "a write got through the black hole");
    proxy.clear();

    let cleared = Instant::now();
    wait_all_applied(&env, 120, total, &expected, Duration::from_secs(90)).await;
    eprintln!(
        "{held} calls held unanswered; everything applied {:.1} s after the endpoint came back",
        cleared.elapsed().as_secs_f64()
    );
    assert_eq!(dlq_messages(&env).await, 0, "a message reached the DLQ\n{}", env.log());
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// SIGTERM while DynamoDB answers nothing: writes are retried for the first
/// half of the grace period, then given back, and the calls still waiting
/// are abandoned, so the daemon exits 0 within the grace period instead of
/// waiting on the sink's retries. What was given back is applied, once,
/// after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_time_while_dynamodb_is_silent() {
    let (proxy, mut env) = behind_a_dynamodb_proxy("silentstop").await;
    env.start();
    proxy.set_rules(on(&["TransactWriteItems", "BatchGetItem"], Fault::BlackHole)).expect("rules");
    let (bodies, total, expected) = traffic(&env.prefix);
    env.send(&bodies).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.stats().total.black_hole == 0 {
        assert!(Instant::now() < deadline, "no write reached the proxy\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, took) = env.sigterm();
    eprintln!("exited {status:?} {:.1} s after SIGTERM with DynamoDB silent", took.as_secs_f64());
    assert!(status.success(), "{status:?} after {took:?}\n{}", env.log());
    assert!(took < Duration::from_secs(20), "the drain took {took:?}, past the 20 s grace period");

    proxy.clear();
    env.start();
    env.wait_for_payments(120, Duration::from_secs(90)).await;
    assert_eq!(dlq_messages(&env).await, 0, "a message given back reached the DLQ\n{}", env.log());
    wait_all_applied(&env, 120, total, &expected, Duration::from_secs(60)).await;
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// Visibility extensions that land too late: SQS answers them only after
/// the messages' visibility ran out (every ChangeMessageVisibilityBatch held
/// 8 s by a proxy in front of SQS, the visibility timeout being 6 s), while
/// DynamoDB throttles every write so the batches stay in flight. SQS refuses
/// the late entries one by one; the daemon forgets those messages, drops
/// them from its retries (SQS delivers them again) and gives back the rest
/// of their FIFO groups, so nothing is lost or counted twice, and each
/// order still applies in order.
#[tokio::test(flavor = "multi_thread")]
async fn extensions_that_land_too_late_lose_and_double_count_nothing() {
    let dynamodb = dynamodb_proxy().await;
    let sqs = proxy_for("AWS_ENDPOINT_URL_SQS").await;
    let daemon_env = vec![("AWS_ENDPOINT_URL_DYNAMODB".into(), dynamodb.url()), ("AWS_ENDPOINT_URL_SQS".into(), sqs.url())];
    let mut env = Env::with_orders("lateextend", "shards = 1", "", daemon_env).await;
    env.start();
    dynamodb.set_rules(on(&["TransactWriteItems", "BatchGetItem"], Fault::Throttle)).expect("rules");
    sqs.set_rules(on(&["ChangeMessageVisibilityBatch"], Fault::Latency { millis: 8000 })).expect("rules");
    let (bodies, total, expected) = traffic(&env.prefix);
    env.send(&bodies).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.log().contains("no longer ours to extend") {
        assert!(Instant::now() < deadline, "no late extension was refused\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(sqs.stats().total.latency > 0, "the SQS proxy delayed nothing: {:?}", sqs.stats());
    assert!(metric(&env, "cafe_source_errors_total", "outcome=\"extend\"").await > 0.0, "no refused extension counted");
    sqs.clear();
    dynamodb.clear();

    wait_all_applied(&env, 120, total, &expected, Duration::from_secs(90)).await;
    assert_eq!(dlq_messages(&env).await, 0, "a message reached the DLQ\n{}", env.log());
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// The read budget bounds what every shard together holds read and not yet
/// durable when the writes are slow: DynamoDB's transactions held 1 s
/// each, 64 KiB for two shards, results of up to 50 records (a few fit the
/// budget at once) and a backlog of about 1 MiB. The readers wait for room
/// again and again, the room in use never exceeds the budget plus one
/// result per shard (without the budget each shard holds up to seven
/// results: two prefetched, four writing, one being read), nothing is lost
/// or applied out of order, and every byte's room comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_far_beyond_the_read_budget_drains_exactly_and_gives_the_room_back() {
    const BUDGET: usize = 65536;
    const MAX_RECORDS: usize = 50;
    let proxy = dynamodb_proxy().await;
    let mut env = Env::with_orders(
        "budget",
        &format!("shards = 2\nmax_bytes_in_flight = {BUDGET}\nmax_records = {MAX_RECORDS}\npoll_interval_ms = 200"),
        "",
        vec![("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url())],
    )
    .await;
    let mut expected = Expected::default();
    let orders: Vec<Vec<(String, String)>> = (0..800).map(|i| order_events(&env.prefix, i, &mut expected)).collect();
    // Wave k holds every order's k-th event: an order's events land in order.
    for k in 0..5 {
        let wave: Vec<(String, Vec<u8>)> = orders
            .iter()
            .filter_map(|events| events.get(k))
            .map(|(key, body)| (key.clone(), body.clone().into_bytes()))
            .collect();
        env.producer().put(&wave).await;
    }
    let bytes: usize = orders.iter().flatten().map(|(_, b)| b.len()).sum();
    assert!(bytes > 10 * BUDGET, "the backlog ({bytes} bytes) must be far beyond the budget");
    proxy.set_rules(on(&["TransactWriteItems"], Fault::Latency { millis: 1000 })).expect("rules");
    // The budget counts each record's data and sequence number.
    let largest = orders.iter().flatten().map(|(_, b)| b.len() + 64).max().unwrap_or(0);
    let bound = BUDGET + 2 * MAX_RECORDS * largest;
    assert!(2 * MAX_RECORDS * largest < BUDGET, "a few results must fit the budget at once");
    env.start();
    let metric = |text: &str, name: &str| {
        text.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(-1.0)
    };
    // The room in use, sampled while the backlog drains.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (admin, sampling) = (env.admin.clone(), Arc::clone(&sampling));
        async move {
            let mut peak = 0.0f64;
            while sampling.load(Ordering::SeqCst) {
                if tokio::net::TcpStream::connect(&admin).await.is_ok() {
                    let text = http_get(&admin, "/metrics").await;
                    let used = text
                        .lines()
                        .find(|l| l.starts_with("cafe_kinesis_read_budget_used_bytes "))
                        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
                    peak = peak.max(used.unwrap_or(0.0));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        }
    });
    env.wait_orders_exact(&expected, Duration::from_secs(120)).await;
    sampling.store(false, Ordering::SeqCst);
    let peak = sampler.await.expect("sampler");
    assert!(peak > 0.0 && peak <= bound as f64, "room in use peaked at {peak} bytes; the bound is {bound}\n{}", env.log());
    let text = http_get(&env.admin, "/metrics").await;
    let waits = metric(&text, "cafe_kinesis_read_budget_waits_total ");
    assert!(waits >= 5.0, "the readers should have waited for room: {waits}\n{}", env.log());
    assert!(proxy.stats().total.latency > 0, "the proxy delayed nothing: {:?}", proxy.stats());
    eprintln!("budget: {waits} waits, room in use peaked at {peak} of a bound of {bound} bytes");
    // The last batches' room comes back as they are written (the scrape may
    // come a moment before the last write returns).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let used = metric(&http_get(&env.admin, "/metrics").await, "cafe_kinesis_read_budget_used_bytes ");
        if used == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{used} bytes of room never came back\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A record rejected by the clock whose rejection cannot be sent for a
/// while: an `order.placed` stamped 8 s ahead of the daemon's clock
/// (`max_future_secs = 1`), before five orders on the same shard, while SQS
/// answers every SendMessageBatch with its internal error until the stamp
/// is 3 s in the past. The rejected sink gives up after its own retries,
/// and the shard retries the record as it was decided: it reaches the
/// rejected queue with reason `ts_out_of_range`, the order it would have
/// placed is never applied, and the orders behind it are. Decided again on
/// a retry past its stamp, the record would place its order instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_record_rejected_by_the_clock_is_retried_as_it_was_decided() {
    let sqs = proxy_for("AWS_ENDPOINT_URL_SQS").await;
    let daemon_env = vec![("AWS_ENDPOINT_URL_SQS".into(), sqs.url()), ("CAFE_PIPELINE__MAX_FUTURE_SECS".into(), "1".into())];
    let mut env = Env::with_orders("clockretry", "shards = 1", "", daemon_env).await;
    env.start();
    sqs.set_rules(on(&["SendMessageBatch"], Fault::ServerError)).expect("rules");
    // The shard is read before the record is stamped: it must be decided
    // while its stamp is still ahead, however slow the start.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !env.log().contains("Consuming the stream") || metric(&env, "cafe_leases_held", "").await < 1.0 {
        assert!(Instant::now() < deadline, "the daemon took no lease\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let put_at = Instant::now();
    let stamp = time::OffsetDateTime::now_utc() + time::Duration::seconds(8);
    let ts = stamp.format(&time::format_description::well_known::Rfc3339).expect("ts");
    let id = format!("{}-ahead", env.prefix);
    let ahead = serde_json::json!({
        "v": 1, "id": format!("{id}-e0"), "type": "order.placed", "ts": ts, "store": "st0",
        "data": {"order_id": id, "customer_id": "c0", "channel": "app",
                 "items": [{"sku": "s", "qty": 1, "unit_price_cents": 100}], "total_cents": 100}
    });
    let mut expected = Expected::default();
    let mut records = vec![(id.clone(), ahead.to_string().into_bytes())];
    for i in 0..5 {
        records.extend(order_events(&env.prefix, i, &mut expected).into_iter().map(|(k, b)| (k, b.into_bytes())));
    }
    env.producer().put(&records).await;

    // The shard gives the record back to itself at least once while SQS
    // fails, and SQS fails until the stamp is well past.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.log().contains("Records not durable; retrying them") {
        assert!(Instant::now() < deadline, "the shard retried nothing\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep((put_at + Duration::from_secs(11)).saturating_duration_since(Instant::now())).await;
    assert!(sqs.stats().total.server_error > 0, "the SQS proxy failed nothing: {:?}", sqs.stats());
    sqs.clear();

    let rejected = env.wait_rejected(1, Duration::from_secs(60)).await;
    let reasons: Vec<&str> = rejected.iter().map(|(_, a)| a.get("reason").map_or("", String::as_str)).collect();
    assert_eq!(reasons, ["ts_out_of_range"], "{rejected:?}\n{}", env.log());
    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
    assert!(!env.orders().await.contains_key(&id), "the record was decided again and placed its order\n{}", env.log());
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// A stop while a silent SQS holds the start-up lookups (every GetQueueUrl
/// black-holed: each attempt waits out the call's 30 s timeout, five
/// attempts a queue) ends the run at once, with exit 0. Before, the signal
/// was seen only after every lookup had given up, minutes later, past any
/// grace period (systemd would have killed it).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_a_silent_sqs_holds_the_start_up_lookups_exits_at_once() {
    let sqs = proxy_for("AWS_ENDPOINT_URL_SQS").await;
    let mut env = Env::with_orders("silentstart", "shards = 1", "", vec![("AWS_ENDPOINT_URL_SQS".into(), sqs.url())]).await;
    // After provisioning, which goes through the proxy too.
    sqs.set_rules(on(&["GetQueueUrl"], Fault::BlackHole)).expect("rules");
    env.start();
    wait_held(&sqs, "GetQueueUrl", Duration::from_secs(15), &env).await;
    let (status, took) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
    assert!(took < Duration::from_secs(5), "the stop took {took:?}\n{}", env.log());
    assert!(env.log().contains("Stopped during start-up"), "{}", env.log());
    assert_eq!(held(&sqs, "GetQueueUrl"), 1, "no lookup after the first was held");
}

/// Kinesis refusing every GetRecords for throughput
/// (ProvisionedThroughputExceededException, from a proxy in front of the
/// stream), then silent: the shard's reader backs off and counts each
/// refusal, and once the stream answers every order is applied exactly
/// once. A SIGTERM while a GetRecords is held unanswered ends the read at
/// once (it only reads: nothing it would return is kept): the shard
/// checkpoints, releases its lease and the process exits 0 in seconds, not
/// after the call's 10 s timeout (which, with a short grace period, made
/// a drained daemon exit 1).
#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_then_silent_kinesis_loses_nothing_and_holds_no_shutdown() {
    let kinesis = proxy_for("AWS_ENDPOINT_URL_KINESIS").await;
    let mut env =
        Env::with_orders("kinesisfaults", "shards = 1", "", vec![("AWS_ENDPOINT_URL_KINESIS".into(), kinesis.url())]).await;
    kinesis.set_rules(on(&["GetRecords"], Fault::Throttle)).expect("rules");
    env.start();
    let more = Arc::new(AtomicBool::new(true));
    let producer = tokio::spawn(produce(env.producer(), 0, 3, Duration::from_millis(300), Arc::clone(&more)));
    let refused = || kinesis.stats().operations.get("GetRecords").map_or(0, |c| c.throttle);
    let source = format!("source=\"{}\"", env.stream());
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&env, "cafe_source_throttles_total", &source).await < 3.0 {
        assert!(Instant::now() < deadline, "{} reads refused, fewer counted\n{}", refused(), env.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused() >= 3, "{:?}", kinesis.stats());
    kinesis.clear();
    more.store(false, Ordering::SeqCst);
    let expected = producer.await.expect("producer");
    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;

    // Silent: the next read is held unanswered.
    kinesis.set_rules(on(&["GetRecords"], Fault::BlackHole)).expect("rules");
    wait_held(&kinesis, "GetRecords", Duration::from_secs(15), &env).await;
    let (status, took) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
    // The SQS receivers' last polls (1 s) and the release come first; the
    // held read would take its 10 s timeout.
    assert!(took < Duration::from_secs(8), "the stop took {took:?}, a held read waited for\n{}", env.log());
    assert_released(&env).await;
    // The stream answers again: the next process resumes at the
    // checkpoint, and what follows is applied exactly once too.
    kinesis.clear();
    env.start();
    let mut all = expected;
    let extra: Vec<(String, Vec<u8>)> =
        (1_000..1_010).flat_map(|i| order_events(&env.prefix, i, &mut all)).map(|(k, b)| (k, b.into_bytes())).collect();
    env.producer().put(&extra).await;
    env.wait_orders_exact(&all, Duration::from_secs(60)).await;
    let (status, _) = env.sigterm();
    assert!(status.success(), "{}", env.log());
}

/// Kinesis silent from the start: the shard's lease is taken, and its first
/// GetShardIterator is held unanswered (from a proxy in front of the
/// stream). A SIGTERM then ends the wait at once (nothing was read, so
/// there is nothing to checkpoint): the lease is released and the process
/// exits 0 in seconds, not after the call's 10 s timeout. The next process,
/// the stream answering, reads the shard from its start: every order that
/// waited on it is applied exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_kinesis_silent_from_the_start_holds_no_shutdown() {
    let kinesis = proxy_for("AWS_ENDPOINT_URL_KINESIS").await;
    let mut env =
        Env::with_orders("kinesissilent", "shards = 1", "", vec![("AWS_ENDPOINT_URL_KINESIS".into(), kinesis.url())]).await;
    let mut expected = Expected::default();
    let waiting: Vec<(String, Vec<u8>)> =
        (0..10).flat_map(|i| order_events(&env.prefix, i, &mut expected)).map(|(k, b)| (k, b.into_bytes())).collect();
    env.producer().put(&waiting).await;
    kinesis.set_rules(on(&["GetShardIterator"], Fault::BlackHole)).expect("rules");
    env.start();
    wait_held(&kinesis, "GetShardIterator", Duration::from_secs(20), &env).await;
    let (status, took) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
    // The SQS receivers' last polls (1 s) and the release come first; the
    // held call would take its 10 s timeout.
    assert!(took < Duration::from_secs(8), "the stop took {took:?}, a held GetShardIterator waited for\n{}", env.log());
    assert_eq!(kinesis.stats().operations.get("GetRecords").map_or(0, |c| c.forwarded), 0, "a read got through");
    assert_released(&env).await;
    kinesis.clear();
    env.start();
    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
    let (status, _) = env.sigterm();
    assert!(status.success(), "{}", env.log());
}

/// SQS refusing every DeleteMessageBatch (a 500, from a proxy in front of
/// the queue) while payments and orders flow through the FIFO queue: the
/// first batches' writes land, each delete is retried and then given up
/// (an undeleted message holds its FIFO group back: nothing after it is
/// received until it comes back), and the messages come back after their
/// visibility timeout as no-ops. Once SQS answers, every payment is
/// counted once, every order's events applied once and in order, the
/// queue empties and nothing reaches the DLQ.
#[tokio::test(flavor = "multi_thread")]
async fn refused_deletes_are_given_up_and_the_redelivered_messages_change_nothing() {
    let sqs = proxy_for("AWS_ENDPOINT_URL_SQS").await;
    let mut env = Env::with_orders("refuseddeletes", "shards = 1", "", vec![("AWS_ENDPOINT_URL_SQS".into(), sqs.url())]).await;
    sqs.set_rules(on(&["DeleteMessageBatch"], Fault::ServerError)).expect("rules");
    env.start();
    let (bodies, total, expected) = traffic(&env.prefix);
    env.send(&bodies).await;
    let refused = || sqs.stats().operations.get("DeleteMessageBatch").map_or(0, |c| c.server_error);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.log().contains("Giving up deleting") {
        assert!(Instant::now() < deadline, "{} deletes refused, none given up\n{}", refused(), env.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused() >= 6, "{:?}", sqs.stats());
    assert!(metric(&env, "cafe_source_errors_total", "outcome=\"delete\"").await >= 6.0, "refused deletes not counted");
    sqs.clear();

    // Redelivered after the visibility timeout (6 s), each a no-op: the
    // sums again once the queue is empty (every redelivery done).
    wait_all_applied(&env, 120, total, &expected, Duration::from_secs(90)).await;
    assert!(env.wait_queue_empty(Duration::from_secs(60)).await, "the queue never emptied\n{}", env.log());
    wait_all_applied(&env, 120, total, &expected, Duration::from_secs(5)).await;
    let repeats = metric(&env, "cafe_pipeline_events_total", "outcome=\"duplicate\"").await;
    assert!(repeats > 0.0, "nothing came back\n{}", env.log());
    assert_eq!(dlq_messages(&env).await, 0, "a message reached the DLQ\n{}", env.log());
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// SQS refusing every SendMessageBatch (500s through the proxy: the
/// daemon's sends to the rejected queue; the test's own sends go straight
/// to SQS) while poison and payments arrive on the FIFO queue: a poison
/// message is not acknowledged while its rejection cannot be sent (it
/// would be lost), and the payments of the other groups go on. Once SQS
/// answers, each poison message reaches the rejected queue once, unchanged
/// and with its reason, every payment counts once and the queue empties.
#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_queue_refusing_sends_loses_no_rejection_and_holds_no_other_group() {
    let sqs = proxy_for("AWS_ENDPOINT_URL_SQS").await;
    let mut env = Env::with_orders("refusedrejects", "shards = 1", "", vec![("AWS_ENDPOINT_URL_SQS".into(), sqs.url())]).await;
    sqs.set_rules(on(&["SendMessageBatch"], Fault::ServerError)).expect("rules");
    env.start();
    let (mut bodies, total) = burst(&env.prefix, 40);
    let poison = [("poison-a", "not json at all"), ("poison-b", r#"{"v":1,"id":"x","type":"payment.requested"}"#)];
    bodies.extend(poison.iter().map(|(g, b)| ((*g).to_owned(), (*b).to_owned())));
    env.send(&bodies).await;
    let sums = env.wait_for_payments(40, Duration::from_secs(60)).await;
    assert_eq!((sums.get("payments"), sums.get("payment_amount_cents")), (Some(&40), Some(&total)), "{sums:?}\n{}", env.log());
    let refused = || sqs.stats().operations.get("SendMessageBatch").map_or(0, |c| c.server_error);
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused() < 2 {
        assert!(Instant::now() < deadline, "no rejection was sent: {:?}\n{}", sqs.stats(), env.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.rejected().await.is_empty(), "a rejection got through the refusals");
    // Payments sent while the rejections are refused go on.
    let (more, more_total) = burst(&format!("{}-b", env.prefix), 20);
    env.send(&more).await;
    let sums = env.wait_for_payments(60, Duration::from_secs(60)).await;
    assert_eq!(sums.get("payments"), Some(&60), "payments held behind the unsent rejections\n{}", env.log());
    assert!(env.rejected().await.is_empty(), "a rejection got through the refusals");
    sqs.clear();

    let mut seen: Vec<(String, HashMap<String, String>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < poison.len() {
        assert!(Instant::now() < deadline, "rejections seen: {seen:?}\n{}", env.log());
        seen.extend(env.rejected().await);
    }
    assert!(env.wait_queue_empty(Duration::from_secs(60)).await, "the queue never emptied\n{}", env.log());
    // Once each: the rejected queue holds as many messages as were sent to
    // it, seen (hidden by the reads above) or not.
    let (visible, hidden) = env.messages(&env.rejected_url).await;
    assert_eq!((visible + hidden) as usize, poison.len(), "{visible} visible, {hidden} not");
    let mut bodies: Vec<&str> = seen.iter().map(|(b, _)| b.as_str()).collect();
    bodies.sort_unstable();
    let mut sent: Vec<&str> = poison.iter().map(|(_, b)| *b).collect();
    sent.sort_unstable();
    assert_eq!(bodies, sent, "each poison message once, unchanged");
    assert!(seen.iter().all(|(_, a)| a.get("reason").is_some_and(|r| !r.is_empty())), "{seen:?}");
    let sums = env.aggregates().await;
    assert_eq!((sums.get("payments"), sums.get("payment_amount_cents")), (Some(&60), Some(&(total + more_total))), "{sums:?}");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}
