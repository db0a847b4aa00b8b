//! Routing by event type: every event type arrives on every kind of input
//! (the contract's "any input accepts any event type"), is processed there
//! and counts once however often it is redelivered or replayed; and a FIFO
//! queue's acknowledgements keep each group's order across every outcome
//! of a batch.

use super::menu::{image, menu_event};
use super::orders::{Expected, order_events};
use super::*;

/// `cafe_pipeline_events_total{source, outcome}` on a daemon's /metrics.
async fn events(admin: &str, source: &str, outcome: &str) -> u64 {
    let text = http_get(admin, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with("cafe_pipeline_events_total{"))
        .filter(|l| l.contains(&format!("source=\"{source}\"")) && l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Waits until `source` has reported at least `n` events as `outcome`.
async fn wait_events(env: &Env, source: &str, outcome: &str, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = events(&env.admin, source, outcome).await;
        if got >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{source}: {got} of {n} {outcome} events after {within:?}\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until an order's history is `want`.
async fn wait_history(env: &Env, order: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = env.orders().await.remove(order).unwrap_or_default();
        if have.iter().map(String::as_str).eq(want.iter().copied()) {
            return;
        }
        assert!(Instant::now() < deadline, "{order}: history {have:?}, want {want:?}\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_type_is_processed_from_every_input_and_counts_once() {
    let mut env = Env::new("anyinput", "").await;
    env.start();
    let p = env.prefix.clone();
    let fifo_source = format!("{p}-pay.fifo");
    let menu_source = format!("{p}-menu");
    let stream = env.stream();

    // Orders on the payments FIFO queue, MessageGroupId = order id.
    let mut expected = Expected::default();
    let mut on_fifo = Vec::new();
    for i in 0..6 {
        on_fifo.extend(order_events(&p, i, &mut expected));
    }
    env.send(&on_fifo).await;

    // A payment and a menu item on the stream.
    let payment = super::payment(&p, 500, "cust-s", 4321).1;
    let sku = format!("{p}-sku");
    let item = menu_event(&format!("{p}-m1"), "st1", &sku, "2026-11-22T08:15:30Z", "Latte", &image(1, 300), false);
    let producer = env.producer();
    let on_stream = vec![("cust-s".to_owned(), payment.into_bytes()), (sku.clone(), item.into_bytes())];
    producer.put(&on_stream).await;

    // An order placed on the stream, whose statuses then arrive on the menu
    // (standard) queue, one after another.
    let chain = order_events(&p, 100, &mut expected);
    let order = chain[0].0.clone();
    producer.put(&[(order.clone(), chain[0].1.clone().into_bytes())]).await;
    wait_history(&env, &order, &["placed"]).await;
    let statuses: Vec<String> = chain[1..].iter().map(|(_, b)| b.clone()).collect();
    for (k, body) in statuses.iter().enumerate() {
        env.send_menu(std::slice::from_ref(body)).await;
        wait_history(&env, &order, &expected.statuses[&order][..k + 2]).await;
    }

    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
    let sums = env.wait_for_payments(1, Duration::from_secs(60)).await;
    assert_eq!((sums.get("payments"), sums.get("payment_amount_cents")), (Some(&1), Some(&4321)), "{sums:?}\n{}", env.log());
    let decided = env.payment(&format!("{p}-p500")).await.expect("the payment from the stream is decided");
    assert!(decided.contains_key("decision") && decided.contains_key("score"), "{decided:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.menu_items().await.contains_key(&sku) {
        assert!(Instant::now() < deadline, "the menu item from the stream was not applied\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_events(&env, &stream, "written", 3, Duration::from_secs(10)).await;
    let before = env.wait_for_payments(1, Duration::from_secs(1)).await;
    assert_eq!(before.get("menu_items"), Some(&1), "{before:?}");

    // Everything again: redelivered on the queues, replayed on the stream.
    env.send(&on_fifo).await;
    env.send_menu(&statuses).await;
    let mut replay = on_stream.clone();
    replay.push((order.clone(), chain[0].1.clone().into_bytes()));
    producer.put(&replay).await;
    wait_events(&env, &fifo_source, "duplicate", on_fifo.len() as u64, Duration::from_secs(60)).await;
    wait_events(&env, &menu_source, "duplicate", statuses.len() as u64, Duration::from_secs(60)).await;
    wait_events(&env, &stream, "duplicate", replay.len() as u64, Duration::from_secs(60)).await;
    assert!(env.wait_queue_empty(Duration::from_secs(30)).await, "queue not drained\n{}", env.log());
    assert_eq!(env.aggregates().await, before, "a redelivery or a replay changed the counters");
    env.wait_orders_exact(&expected, Duration::from_secs(10)).await;
    assert_eq!(env.payment_count().await, 1);
    let rejected = env.rejected().await;
    assert!(rejected.is_empty(), "nothing here breaks the contract: {rejected:?}");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fifo_group_is_acknowledged_in_order_across_rejects_failures_and_writes() {
    let mut env = Env::new("fifoack", "").await;
    let p = env.prefix.clone();
    // Payments cannot be written while their table is gone (DynamoDB's own
    // ResourceNotFoundException): each fails and is given back.
    env.ddb.delete_table().table_name(format!("{p}-payments")).send().await.expect("delete the payments table");
    env.start();
    let item = |n: usize| {
        let sku = format!("{p}-sku{n}");
        menu_event(&format!("{p}-m{n}"), "st1", &sku, "2026-11-22T08:15:30Z", "Latte", &image(n, 200), false)
    };
    let bad = |n: usize| format!("{{\"v\":1,\"id\":\"{p}-bad{n}\",");
    // g1: a reject, then a payment that fails, then a menu item and a
    // reject that must wait behind it. g2: a menu item and a reject.
    let bodies = vec![
        ("g1".to_owned(), bad(1)),
        super::payment(&p, 1, "g1", 700),
        ("g1".to_owned(), item(1)),
        ("g1".to_owned(), bad(2)),
        ("g2".to_owned(), item(2)),
        ("g2".to_owned(), bad(3)),
    ];
    env.send(&bodies).await;

    // g2 is done and g1's first message with it; the three behind the
    // failure stay on the queue, whatever their own outcome was.
    let source = format!("{p}-pay.fifo");
    wait_events(&env, &source, "failed", 3, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = queue_messages(&env).await;
        if waiting == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} messages on the queue, want g1's last 3\n{}\n{}",
            http_get(&env.admin, "/metrics")
                .await
                .lines()
                .filter(|l| l.contains("pipeline_events_total{") || l.contains("acked"))
                .collect::<Vec<_>>()
                .join("\n"),
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(queue_messages(&env).await, 3, "a message behind its group's failure was deleted\n{}", env.log());
    assert!(env.menu_items().await.contains_key(&format!("{p}-sku2")), "g2 is not held back by g1");

    // The table comes back: the group goes through, in order, once.
    let out = Command::new(BIN).args(["provision", "--config"]).arg(&env.config).output().expect("provision");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sums = env.wait_for_payments(1, Duration::from_secs(60)).await;
    assert!(env.wait_queue_empty(Duration::from_secs(60)).await, "queue not drained\n{}", env.log());
    let sums_after = env.aggregates().await;
    assert_eq!(sums, sums_after);
    assert_eq!((sums.get("payments"), sums.get("menu_items")), (Some(&1), Some(&2)), "{sums:?}");
    let mut reasons: Vec<(String, String)> =
        env.rejected().await.into_iter().map(|(body, attrs)| (body, attrs.get("reason").cloned().unwrap_or_default())).collect();
    reasons.sort();
    let want: Vec<(String, String)> = [bad(1), bad(2), bad(3)].into_iter().map(|b| (b, "bad_json".to_owned())).collect();
    assert_eq!(reasons, want, "each rejection reaches the rejected queue once, redelivered or not");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// Messages on the payments queue, visible or in flight.
async fn queue_messages(env: &Env) -> i64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = env
        .sqs
        .get_queue_attributes()
        .queue_url(&env.queue_url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("attributes");
    let attrs = out.attributes.unwrap_or_default();
    [A::ApproximateNumberOfMessages, A::ApproximateNumberOfMessagesNotVisible]
        .iter()
        .map(|k| attrs.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_moved_on_another_input_is_read_again_before_a_rejection_counts() {
    let mut env = Env::new("stalecache", "").await;
    env.start();
    let p = env.prefix.clone();
    let mut expected = Expected::default();
    // Order 1's chain: placed, confirmed, preparing, ready, completed.
    let chain = order_events(&p, 1, &mut expected);
    let order = chain[0].0.clone();
    let producer = env.producer();
    // Placed on the stream: the shard caches the order as placed.
    producer.put(&[(order.clone(), chain[0].1.clone().into_bytes())]).await;
    wait_history(&env, &order, &["placed"]).await;
    // Confirmed on the FIFO queue, by another path than the shard.
    env.send(&[(order.clone(), chain[1].1.clone())]).await;
    wait_history(&env, &order, &["placed", "confirmed"]).await;
    // The rest on the stream: against its cached copy the shard would refuse
    // `preparing` after `placed`; read again, the order is confirmed.
    let rest: Vec<(String, Vec<u8>)> = chain[2..].iter().map(|(k, b)| (k.clone(), b.clone().into_bytes())).collect();
    producer.put(&rest).await;
    env.wait_orders_exact(&expected, Duration::from_secs(60)).await;
    let rejected = env.rejected().await;
    assert!(rejected.is_empty(), "a valid event was rejected against a stale copy: {rejected:?}");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}
