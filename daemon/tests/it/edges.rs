//! Input at the contract's edges (v1.1: bounds on numbers and event times):
//! each is rejected with its reason, and nothing behind it stalls or is
//! counted wrong, the Redshift mirror included.

use daemon::sinks::redshift::postgres::PgTransport;
use pipeline::event::MAX_AMOUNT_CENTS;

use super::menu::{pg_target, wait_mirrored};
use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn numbers_and_times_outside_the_contract_are_rejected_and_the_mirror_still_flows() {
    let (target, user, db) = pg_target();
    let table = format!("it_edges_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let extra = format!(
        "[sinks.redshift]\nenabled = true\ntransport = \"postgres\"\nurl = \"postgres://{user}@{target}/{db}\"\ntable = \"{table}\"\nflush_interval_ms = 500\n"
    );
    let mut env = Env::new("edges", &extra).await;
    let pg =
        PgTransport::connect(&std::env::var("CAFE_PG_URL").expect("url"), std::time::Duration::from_secs(60)).await.expect("pg");
    env.start();
    let p = env.prefix.clone();
    let at = |i: usize, customer: &str, amount: u64, ts: &str| {
        let (group, body) = payment(&p, i, customer, amount);
        let mut v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["ts"] = json!(ts);
        (group, v.to_string())
    };
    let now = time::OffsetDateTime::now_utc();
    let in_two_hours = (now + time::Duration::hours(2)).format(&time::format_description::well_known::Rfc3339).expect("ts");
    let ok_ts = "2026-11-22T08:15:30.000Z";
    let bodies = vec![
        at(1, "c1", 100, ok_ts),
        // Year 0 is valid RFC 3339, and PostgreSQL refuses it (22008).
        at(2, "c1", 7, "0000-01-01T00:00:00Z"),
        at(3, "c2", 200, ok_ts),
        // Wrapped to a negative sum before the bound.
        at(4, "c2", u64::MAX, ok_ts),
        at(5, "c3", 300, ok_ts),
        at(6, "c3", MAX_AMOUNT_CENTS + 1, ok_ts),
        at(7, "c4", 9, "1999-12-31T23:59:59.999Z"),
        at(8, "c4", 9, &in_two_hours),
        at(9, "c5", 9, "9999-12-31T23:59:59Z"),
        at(10, "c5", MAX_AMOUNT_CENTS, ok_ts),
    ];
    env.send(&bodies).await;

    let sums = env.wait_for_payments(4, Duration::from_secs(60)).await;
    assert_eq!(sums.get("payments"), Some(&4), "{sums:?}\n{}", env.log());
    assert_eq!(sums.get("payment_amount_cents"), Some(&(600 + MAX_AMOUNT_CENTS as i64)), "{sums:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut reasons: Vec<String> = Vec::new();
    while reasons.len() < 6 && Instant::now() < deadline {
        reasons.extend(env.rejected().await.into_iter().map(|(_, attrs)| attrs.get("reason").cloned().unwrap_or_default()));
    }
    reasons.sort();
    assert_eq!(reasons, ["schema", "schema", "ts_out_of_range", "ts_out_of_range", "ts_out_of_range", "ts_out_of_range"]);

    // Every good row reaches Redshift: no bad one is there to stop a flush.
    let mirrored = wait_mirrored(&env, &pg, &table, Duration::from_secs(30)).await;
    assert!(!mirrored.is_empty());
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
    pg.execute(&format!("DROP TABLE {table}")).await.expect("drop");
}

/// Records no producer should send, on every shard, each before valid
/// orders: each reaches the rejected queue as SQS can carry it, and the
/// orders behind it are applied.
#[tokio::test(flavor = "multi_thread")]
async fn poison_records_on_every_shard_are_rejected_and_the_orders_behind_them_are_applied() {
    use super::orders::{Expected, order_events};
    use base64::Engine;

    let mut env = Env::with_orders("poison", "shards = 2", "", Vec::new()).await;
    env.start();
    let p = env.prefix.clone();
    let status = |bad: &str| {
        format!(
            "{{\"v\":1,\"id\":\"{p}-x\",\"type\":\"order.status\",\"ts\":\"2026-11-22T08:30:00Z\",\"store\":\"s1\",\"data\":{{\"order_id\":\"o\",\"status\":\"{bad}\"}}}}"
        )
    };
    // A control character escaped in JSON (serde quotes it raw in its
    // message), one raw in the record, and 900 KiB that is not UTF-8.
    let escaped = status("\\u0001").into_bytes();
    let raw = status("\u{1}").into_bytes();
    let big: Vec<u8> = (0..900 * 1024).map(|i| (i % 251) as u8 | 0x80).collect();
    let mut expected = Expected::default();
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    // Many partition keys spread the poison over both shards (a big record
    // every other order keeps a PutRecords call under its 5 MiB).
    for k in 0..8 {
        let poisons = if k % 2 == 0 { vec![&escaped, &raw, &big] } else { vec![&escaped, &raw] };
        for (n, poison) in poisons.into_iter().enumerate() {
            records.push((format!("poison-{k}-{n}"), poison.clone()));
        }
        for (key, body) in order_events(&p, k, &mut expected) {
            records.push((key, body.into_bytes()));
        }
    }
    env.producer().put(&records).await;

    env.wait_orders_exact(&expected, Duration::from_secs(90)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rejected = Vec::new();
    while rejected.len() < 20 && Instant::now() < deadline {
        rejected.extend(env.rejected().await);
    }
    assert_eq!(rejected.len(), 20, "every poison record is rejected once\n{}", env.log());
    let b64 = base64::engine::general_purpose::STANDARD;
    for (body, attrs) in &rejected {
        let bytes = if attrs.get("encoding").map(String::as_str) == Some("base64") {
            b64.decode(body).expect("base64 body")
        } else {
            body.clone().into_bytes()
        };
        match attrs.get("truncated_from") {
            Some(full) => {
                assert_eq!(full, &big.len().to_string());
                assert!(big.starts_with(&bytes) && bytes.len() > 100 * 1024, "{} bytes of the big record", bytes.len());
            }
            None => assert!(bytes == escaped || bytes == raw, "{body:?} {attrs:?}"),
        }
        assert!(attrs.get("position").is_some_and(|pos| pos.starts_with("shardId-")), "{attrs:?}");
    }
    let shards: std::collections::HashSet<&str> =
        rejected.iter().filter_map(|(_, a)| a.get("position")).filter_map(|pos| pos.split('/').next()).collect();
    assert_eq!(shards.len(), 2, "poison on every shard: {shards:?}");
    let metrics = http_get(&env.admin, "/metrics").await;
    assert!(metrics.contains(&format!("cafe_rejected_truncated_total{{source=\"{}\"}} 4", env.stream())), "{metrics}");

    let (status, took) = env.sigterm();
    assert!(status.success(), "exit {status:?} after {took:?}\n{}", env.log());
}

/// A menu item another tool wrote, without a string `sync_version`, is
/// older than any sync: the next one is applied (before, the writer re-read
/// and retried it forever, without a backoff).
#[tokio::test(flavor = "multi_thread")]
async fn a_menu_item_without_a_string_sync_version_is_overwritten_by_the_next_sync() {
    use super::menu::{image, menu_event};
    use aws_sdk_dynamodb::types::AttributeValue as A;

    let mut env = Env::new("foreignmenu", "").await;
    let p = env.prefix.clone();
    let table = format!("{p}-menu");
    for (sku, version) in [("sku-num", Some(A::N("7".into()))), ("sku-none", None)] {
        let mut put = env.ddb.put_item().table_name(&table).item("sku", A::S(sku.into())).item("name", A::S("Old".into()));
        if let Some(v) = version {
            put = put.item("sync_version", v);
        }
        put.send().await.expect("put a foreign item");
    }
    env.start();
    let bodies: Vec<String> = ["sku-num", "sku-none"]
        .iter()
        .enumerate()
        .map(|(i, sku)| menu_event(&format!("{p}-f{i}"), "st1", sku, "2026-11-22T08:15:30Z", "Latte", &image(i, 300), false))
        .collect();
    env.send_menu(&bodies).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let items = env.menu_items().await;
        let name = |sku: &str| items.get(sku).and_then(|i| i.get("name")).and_then(|v| v.as_s().ok()).cloned();
        if name("sku-num").as_deref() == Some("Latte") && name("sku-none").as_deref() == Some("Latte") {
            break;
        }
        assert!(Instant::now() < deadline, "the foreign items were not overwritten: {items:?}\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sums = env.aggregates().await;
    assert_eq!(sums.get("menu_items"), Some(&2), "{sums:?}");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// A row Redshift refuses (here one an earlier release let through: year
/// 0, which PostgreSQL refuses with 22008) is set aside on its own, with a
/// metric, and every other row still reaches Redshift.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_redshift_refuses_is_set_aside_and_the_rest_flows() {
    a_refused_row_is_set_aside(false).await;
}

/// The same over the Data API, which gives no SQLSTATE: the refusal is
/// known by its wording.
#[tokio::test(flavor = "multi_thread")]
async fn over_the_data_api_a_refused_row_is_set_aside_and_the_rest_flows() {
    a_refused_row_is_set_aside(true).await;
}

async fn a_refused_row_is_set_aside(data_api: bool) {
    use super::menu::redshift_rows;
    use aws_sdk_dynamodb::types::AttributeValue as A;

    let (target, user, db) = pg_target();
    let table = format!("it_quarantine_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let pg_url = std::env::var("CAFE_PG_URL").expect("url");
    let (extra, daemon_env) = if data_api {
        let (_, endpoint) = super::data_api::start(pg_url.clone()).await;
        let extra = format!(
            "[sinks.redshift]\nenabled = true\ntransport = \"data_api\"\ncluster_identifier = \"cafe-local\"\ndatabase = \"{db}\"\ndb_user = \"{user}\"\ntable = \"{table}\"\nflush_interval_ms = 500\nfirst_poll_ms = 10\n"
        );
        (extra, vec![("AWS_ENDPOINT_URL_REDSHIFT_DATA".to_owned(), endpoint)])
    } else {
        let extra = format!(
            "[sinks.redshift]\nenabled = true\ntransport = \"postgres\"\nurl = \"postgres://{user}@{target}/{db}\"\ntable = \"{table}\"\nflush_interval_ms = 500\n"
        );
        (extra, Vec::new())
    };
    let mut env = Env::with_orders("quarantine", "shards = 1", &extra, daemon_env).await;
    let pg = PgTransport::connect(&pg_url, std::time::Duration::from_secs(60)).await.expect("pg");
    let bad = ("st-old".to_owned(), "0000-01-01T00:00:00Z".to_owned());
    let since = (time::OffsetDateTime::now_utc().unix_timestamp() * 1000).to_string();
    env.ddb
        .put_item()
        .table_name(format!("{}-aggregates", env.prefix))
        .item("store", A::S(bad.0.clone()))
        .item("window", A::S(bad.1.clone()))
        .item("payments", A::N("1".into()))
        .item("version", A::N("1".into()))
        .item("mirror_pending", A::S("3".into()))
        .item("mirror_pending_since", A::N(since))
        .send()
        .await
        .expect("put an old pending row");
    env.start();
    let p = env.prefix.clone();
    let bodies: Vec<(String, String)> = (0..12).map(|i| payment(&p, i, &format!("c{}", i % 4), 100 + i as u64)).collect();
    env.send(&bodies).await;
    env.wait_for_payments(12, Duration::from_secs(60)).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (mut dynamo, pending) = env.aggregate_rows().await;
        assert!(dynamo.remove(&bad).is_some(), "the old row is still in DynamoDB");
        let red = redshift_rows(&pg, &table).await;
        if pending == 0 && red == dynamo && !red.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rest did not reach Redshift: {pending} pending, {} of {} rows\n{}",
            red.len(),
            dynamo.len(),
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let item = env
        .ddb
        .get_item()
        .table_name(format!("{}-aggregates", env.prefix))
        .key("store", A::S(bad.0.clone()))
        .key("window", A::S(bad.1.clone()))
        .send()
        .await
        .expect("get")
        .item
        .expect("the row");
    assert_eq!(item.get("mirror_quarantined_version").and_then(|v| v.as_n().ok()).map(String::as_str), Some("1"), "{item:?}");
    let metrics = http_get(&env.admin, "/metrics").await;
    assert!(metrics.contains("cafe_mirror_rows_quarantined_total 1"), "{metrics}");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
    pg.execute(&format!("DROP TABLE {table}")).await.expect("drop");
}
