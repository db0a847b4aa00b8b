//! A Redshift Data API endpoint for the tests, and the test that drives
//! the daemon's `data_api` transport through it.
//!
//! No emulator of the Data API runs SQL (moto's never leaves STARTED), so
//! this one speaks the `RedshiftData.*` JSON protocol (awsJson1.1, the
//! operation in `X-Amz-Target`) that the official SDK sends, and runs the
//! statements on the local PostgreSQL: the SDK's real serialisation is
//! exercised and the SQL really runs. Like the real service it is
//! asynchronous (a statement is STARTED until it ends, so clients must
//! poll DescribeStatement), runs a BatchExecuteStatement as one
//! transaction, and refuses batches over 40 statements or statements over
//! 100 KB. CancelStatement cancels a running statement (it ends ABORTED,
//! its query cancelled on PostgreSQL) and refuses one already ended, as
//! the service does. It can be told to fail the next batches the way
//! Redshift fails a conflicting transaction. Test harness only: not part of the product.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::menu::{pg_target, redshift_rows, wait_mirrored};
use super::*;

#[derive(Debug, Clone)]
struct Statement {
    status: &'static str,
    error: Option<String>,
    sqls: Vec<String>,
    created: f64,
    updated: f64,
    /// The PostgreSQL backend running it, once it runs.
    pid: Option<i32>,
}

/// The endpoint's state, shared with the test.
#[derive(Default)]
pub struct DataApi {
    pg_url: String,
    statements: Mutex<HashMap<String, Statement>>,
    next: AtomicUsize,
    /// Fail this many of the next batches with a serializable isolation violation.
    pub fail_next: AtomicUsize,
    /// Largest batch and statement seen.
    pub largest_batch: AtomicUsize,
    pub largest_statement: AtomicUsize,
    /// Calls per operation.
    pub calls: Mutex<HashMap<String, usize>>,
}

fn epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn error(code: &str, message: &str) -> Response {
    let body = json!({"__type": code, "message": message}).to_string();
    (StatusCode::BAD_REQUEST, [("content-type", "application/x-amz-json-1.1")], body).into_response()
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, [("content-type", "application/x-amz-json-1.1")], v.to_string()).into_response()
}

/// Runs statement `id` (`sqls`, one transaction) on PostgreSQL, its
/// backend's pid noted (it runs). A statement cancelled meanwhile
/// (ABORTED) cancels its own query, whatever it is doing then (every
/// 10 ms it looks), and commits nothing.
async fn run_on_pg(api: &DataApi, id: &str, sqls: &[String]) -> Result<(), String> {
    let (mut client, conn) = tokio_postgres::connect(&api.pg_url, tokio_postgres::NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.map_err(|e| e.to_string())?.get(0);
    let aborted = || api.statements.lock().expect("lock").get(id).is_some_and(|s| s.status == "ABORTED");
    if let Some(s) = api.statements.lock().expect("lock").get_mut(id) {
        s.pid = Some(pid);
    }
    let cancel = client.cancel_token();
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    for s in sqls {
        let mut run = std::pin::pin!(tx.batch_execute(s));
        loop {
            if aborted() {
                let _ = cancel.cancel_query(tokio_postgres::NoTls).await;
                return Err("cancelled".into());
            }
            tokio::select! {
                done = &mut run => {
                    done.map_err(|e| e.as_db_error().map_or_else(|| e.to_string(), |d| format!("ERROR: {}", d.message())))?;
                    break;
                }
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }
    if aborted() {
        return Err("cancelled".into());
    }
    tx.commit().await.map_err(|e| e.to_string())
}

/// Cancels statement `id` if it has not ended: ABORTED (its run sees it
/// and cancels its query); one that ended is refused, as by the service.
fn cancel(api: &DataApi, id: &str) -> Response {
    let mut map = api.statements.lock().expect("lock");
    let Some(s) = map.get_mut(id) else {
        return error("ResourceNotFoundException", &format!("statement {id} not found"));
    };
    if s.status != "STARTED" {
        return error("ValidationException", &format!("Could not cancel a query that is already in {} state", s.status));
    }
    s.status = "ABORTED";
    s.updated = epoch();
    ok(json!({"Status": true}))
}

async fn handle(State(api): State<Arc<DataApi>>, headers: HeaderMap, body: String) -> Response {
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    let Some(op) = target.strip_prefix("RedshiftData.") else {
        return error("UnknownOperationException", target);
    };
    *api.calls.lock().expect("lock").entry(op.to_owned()).or_default() += 1;
    let Ok(req) = serde_json::from_str::<Value>(&body) else {
        return error("SerializationException", "body is not JSON");
    };
    let field = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    match op {
        "ExecuteStatement" | "BatchExecuteStatement" => {
            if field("ClusterIdentifier").is_empty() == field("WorkgroupName").is_empty() {
                return error("ValidationException", "exactly one of ClusterIdentifier and WorkgroupName is required");
            }
            if field("Database").is_empty() {
                return error("ValidationException", "Database is required");
            }
            let sqls: Vec<String> = if op == "ExecuteStatement" {
                vec![field("Sql")]
            } else {
                req.get("Sqls")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default()
            };
            if sqls.is_empty() || sqls.len() > 40 {
                return error("ValidationException", &format!("between 1 and 40 statements per batch, got {}", sqls.len()));
            }
            if let Some(big) = sqls.iter().find(|s| s.len() > 100_000) {
                return error("ValidationException", &format!("a statement is {} bytes, the limit is 100 KB", big.len()));
            }
            api.largest_batch.fetch_max(sqls.len(), AtomicOrdering::SeqCst);
            api.largest_statement.fetch_max(sqls.iter().map(String::len).max().unwrap_or(0), AtomicOrdering::SeqCst);
            let id = format!("00000000-0000-4000-8000-{:012}", api.next.fetch_add(1, AtomicOrdering::SeqCst));
            let now = epoch();
            api.statements.lock().expect("lock").insert(
                id.clone(),
                Statement { status: "STARTED", error: None, sqls: sqls.clone(), created: now, updated: now, pid: None },
            );
            let api2 = Arc::clone(&api);
            let id2 = id.clone();
            tokio::spawn(async move {
                // Like the service, the outcome is known only some time later.
                tokio::time::sleep(Duration::from_millis(30)).await;
                let injected =
                    api2.fail_next.fetch_update(AtomicOrdering::SeqCst, AtomicOrdering::SeqCst, |n| n.checked_sub(1)).is_ok();
                let result = if injected {
                    Err("ERROR: 1023 DETAIL: Serializable isolation violation on table - 100345, transactions forming the cycle are: 1, 2".to_owned())
                } else {
                    run_on_pg(&api2, &id2, &sqls).await
                };
                let mut map = api2.statements.lock().expect("lock");
                if let Some(s) = map.get_mut(&id2)
                    && s.status != "ABORTED"
                {
                    s.updated = epoch();
                    match result {
                        Ok(()) => s.status = "FINISHED",
                        Err(e) => {
                            s.status = "FAILED";
                            s.error = Some(e);
                        }
                    }
                }
            });
            ok(
                json!({"Id": id, "CreatedAt": now, "Database": field("Database"), "ClusterIdentifier": field("ClusterIdentifier"), "DbUser": field("DbUser")}),
            )
        }
        "DescribeStatement" => {
            let id = field("Id");
            let Some(s) = api.statements.lock().expect("lock").get(&id).cloned() else {
                return error("ResourceNotFoundException", &format!("statement {id} not found"));
            };
            let mut out = json!({
                "Id": id, "Status": s.status, "CreatedAt": s.created, "UpdatedAt": s.updated,
                "Duration": ((s.updated - s.created) * 1e9) as i64, "HasResultSet": false,
                "QueryString": s.sqls.first().cloned().unwrap_or_default(),
            });
            if let Some(e) = &s.error {
                out["Error"] = json!(e);
            }
            if s.sqls.len() > 1 {
                out["SubStatements"] = json!(s.sqls.iter().enumerate().map(|(i, q)| json!({
                    "Id": format!("{id}:{}", i + 1), "Status": s.status, "QueryString": q, "CreatedAt": s.created, "UpdatedAt": s.updated
                })).collect::<Vec<_>>());
            }
            ok(out)
        }
        "CancelStatement" => cancel(&api, &field("Id")),
        other => error("UnknownOperationException", &format!("{other} is not served by the test endpoint")),
    }
}

/// Starts the endpoint on a free loopback port; returns its URL.
pub async fn start(pg_url: String) -> (Arc<DataApi>, String) {
    let api = Arc::new(DataApi { pg_url, ..DataApi::default() });
    let app = axum::Router::new().route("/", axum::routing::post(handle)).with_state(Arc::clone(&api));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (api, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_data_api_transport_mirrors_through_the_sdk_and_retries_conflicts() {
    let pg_url = std::env::var("CAFE_PG_URL").expect("CAFE_PG_URL is not set: run through scripts/test.sh");
    let (_, user, db) = pg_target();
    let (api, endpoint) = start(pg_url.clone()).await;
    let table = format!("it_store_minute_dataapi_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let extra = format!(
        "[sinks.redshift]\nenabled = true\ntransport = \"data_api\"\ncluster_identifier = \"cafe-local\"\ndatabase = \"{db}\"\ndb_user = \"{user}\"\ntable = \"{table}\"\nflush_interval_ms = 500\nfirst_poll_ms = 10\n"
    );
    let daemon_env = vec![("AWS_ENDPOINT_URL_REDSHIFT_DATA".to_owned(), endpoint)];
    let mut env = Env::with_orders("dataapi", "shards = 1", &extra, daemon_env).await;
    assert_eq!(
        api.calls.lock().expect("lock").get("ExecuteStatement"),
        Some(&1),
        "provision created the table through the Data API"
    );
    let pg =
        daemon::sinks::redshift::postgres::PgTransport::connect(&pg_url, std::time::Duration::from_secs(60)).await.expect("pg");
    env.start();

    let (pays, total) = burst(&env.prefix, 30);
    env.send(&pays).await;
    env.wait_for_payments(30, Duration::from_secs(60)).await;
    let first = wait_mirrored(&env, &pg, &table, Duration::from_secs(30)).await;
    let amount: i64 = first.values().map(|v| v[8]).sum();
    assert_eq!(amount, total);

    // Two conflicting transactions in a row: the flush retries and lands.
    api.fail_next.store(2, AtomicOrdering::SeqCst);
    let (more, _) = burst(&format!("{}-b", env.prefix), 20);
    env.send(&more).await;
    env.wait_for_payments(50, Duration::from_secs(60)).await;
    wait_mirrored(&env, &pg, &table, Duration::from_secs(30)).await;
    assert_eq!(api.fail_next.load(AtomicOrdering::SeqCst), 0, "the injected failures were hit");
    let calls = api.calls.lock().expect("lock").clone();
    assert!(calls.get("BatchExecuteStatement").copied().unwrap_or(0) >= 3, "{calls:?}");
    assert!(calls.get("DescribeStatement").copied().unwrap_or(0) >= 3, "{calls:?}");
    assert!(api.largest_batch.load(AtomicOrdering::SeqCst) <= 40);
    assert!(env.log().contains("Serializable isolation violation"), "the failure was surfaced with its error");

    let (status, _) = env.sigterm();
    assert!(status.success(), "{}", env.log());
    assert_eq!(redshift_rows(&pg, &table).await, env.aggregate_rows().await.0);
    pg.execute(&format!("DROP TABLE {table}")).await.expect("drop");
}

/// DescribeStatement failing (a 500, through a proxy in front of the
/// endpoint) while the flushes wait on their statements: each failed poll
/// is counted as a retried Redshift request and made again until the
/// statement's timeout, when the statement is cancelled (it would go on
/// running beside the batch sent again) and the batch retried; the
/// statements are seen ended once the endpoint answers, and the mirror is
/// exact. Polls refused for good (access denied) cancel nothing.
#[tokio::test(flavor = "multi_thread")]
async fn failed_polls_are_counted_and_made_again_until_the_statement_is_seen_ended() {
    use faultproxy::{Fault, Proxy, Rule};
    let pg_url = std::env::var("CAFE_PG_URL").expect("CAFE_PG_URL is not set: run through scripts/test.sh");
    let (_, user, db) = pg_target();
    let (api, endpoint) = start(pg_url.clone()).await;
    let proxy = Proxy::start("127.0.0.1:0".parse().expect("addr"), &endpoint).await.expect("start the proxy");
    let table = format!("it_store_minute_dataapipoll_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let extra = format!(
        "[sinks.redshift]\nenabled = true\ntransport = \"data_api\"\ncluster_identifier = \"cafe-local\"\ndatabase = \"{db}\"\ndb_user = \"{user}\"\ntable = \"{table}\"\nflush_interval_ms = 500\nfirst_poll_ms = 10\nmax_poll_ms = 200\nstatement_timeout_ms = 1000\n"
    );
    let daemon_env = vec![("AWS_ENDPOINT_URL_REDSHIFT_DATA".to_owned(), proxy.url())];
    let mut env = Env::with_orders("dataapipoll", "shards = 1", &extra, daemon_env).await;
    let pg =
        daemon::sinks::redshift::postgres::PgTransport::connect(&pg_url, std::time::Duration::from_secs(60)).await.expect("pg");
    proxy
        .set_rules(vec![Rule { operation: Some("DescribeStatement".into()), probability: 1.0, fault: Fault::ServerError }])
        .expect("rules");
    env.start();
    let (pays, total) = burst(&env.prefix, 30);
    env.send(&pays).await;
    env.wait_for_payments(30, Duration::from_secs(60)).await;
    let refused = || proxy.stats().operations.get("DescribeStatement").map_or(0, |c| c.server_error);
    // Each refused poll counted (the proxy counts a refusal before it
    // answers, so the count is waited for, not read once).
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&env, "cafe_sink_requests_total", "sink=\"redshift\",outcome=\"retry\"").await < 3.0 {
        assert!(Instant::now() < deadline, "{} polls refused, fewer retries counted\n{}", refused(), env.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused() >= 3, "{:?}", proxy.stats());
    assert!(env.log().contains("DescribeStatement failed; polling again"), "{}", env.log());
    // Past the statement's timeout (1 s) of polls refused, it is cancelled.
    let cancelled = || api.calls.lock().expect("lock").get("CancelStatement").copied().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while cancelled() == 0 {
        assert!(Instant::now() < deadline, "no statement was cancelled\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.clear();

    let mirrored = wait_mirrored(&env, &pg, &table, Duration::from_secs(60)).await;
    assert_eq!(mirrored.values().map(|v| v[8]).sum::<i64>(), total);
    assert!(api.calls.lock().expect("lock").get("DescribeStatement").copied().unwrap_or(0) > 0, "a poll got through");

    // Polls refused for good (access denied): nothing says the statement
    // will not commit, so it is not cancelled; the batch is sent again.
    let before = cancelled();
    let denied = Fault::Error { status: 400, code: "AccessDeniedException".into(), message: "denied".into(), extra: None };
    proxy.set_rules(vec![Rule { operation: Some("DescribeStatement".into()), probability: 1.0, fault: denied }]).expect("rules");
    let (more, more_total) = burst(&format!("{}-b", env.prefix), 10);
    env.send(&more).await;
    env.wait_for_payments(40, Duration::from_secs(60)).await;
    let refused_for_good = || proxy.stats().operations.get("DescribeStatement").map_or(0, |c| c.error);
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused_for_good() < 2 {
        assert!(Instant::now() < deadline, "no poll was denied: {:?}\n{}", proxy.stats(), env.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.clear();
    let mirrored = wait_mirrored(&env, &pg, &table, Duration::from_secs(60)).await;
    assert_eq!(mirrored.values().map(|v| v[8]).sum::<i64>(), total + more_total);
    assert_eq!(cancelled(), before, "a statement whose poll was refused for good was cancelled");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{}", env.log());
    assert_eq!(redshift_rows(&pg, &table).await, env.aggregate_rows().await.0);
    pg.execute(&format!("DROP TABLE {table}")).await.expect("drop");
}

/// The grace period running out while a flush waits on its statement
/// (another session holds the mirror table, so the statement cannot end):
/// the statement is cancelled before the daemon exits, within the grace
/// period and the cut's allowance, not left running on the cluster in the
/// table's lock queue; its rows stay pending, and the next start mirrors
/// them exactly.
#[tokio::test(flavor = "multi_thread")]
async fn a_flush_cut_off_by_the_grace_period_cancels_its_statement_before_the_exit() {
    let pg_url = std::env::var("CAFE_PG_URL").expect("CAFE_PG_URL is not set: run through scripts/test.sh");
    let (_, user, db) = pg_target();
    let (api, endpoint) = start(pg_url.clone()).await;
    let table = format!("it_store_minute_dataapicut_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
    let extra = format!(
        "[sinks.redshift]\nenabled = true\ntransport = \"data_api\"\ncluster_identifier = \"cafe-local\"\ndatabase = \"{db}\"\ndb_user = \"{user}\"\ntable = \"{table}\"\nflush_interval_ms = 500\nfirst_poll_ms = 10\nmax_poll_ms = 200\n"
    );
    let daemon_env = vec![("AWS_ENDPOINT_URL_REDSHIFT_DATA".to_owned(), endpoint)];
    let mut env = Env::with_orders("dataapicut", "shards = 1", &extra, daemon_env).await;
    // A short grace period: the cut comes soon after the SIGTERM.
    // Long enough for the drain under load (the inputs' last polls, the
    // shard's checkpoint), short enough for the test.
    let grace = Duration::from_secs(8);
    let text = std::fs::read_to_string(&env.config).expect("config");
    assert!(text.contains("grace_period_secs = 20"), "the grace period to shorten: {text}");
    std::fs::write(&env.config, text.replace("grace_period_secs = 20", &format!("grace_period_secs = {}", grace.as_secs())))
        .expect("config");
    let pg =
        daemon::sinks::redshift::postgres::PgTransport::connect(&pg_url, std::time::Duration::from_secs(60)).await.expect("pg");
    env.start();
    let (pays, total) = burst(&env.prefix, 20);
    env.send(&pays).await;
    env.wait_for_payments(20, Duration::from_secs(60)).await;
    wait_mirrored(&env, &pg, &table, Duration::from_secs(30)).await;

    // Another session holds the mirror table: the next statements wait.
    let (locker, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    locker.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")).await.expect("lock");
    let (more, more_total) = burst(&format!("{}-b", env.prefix), 10);
    env.send(&more).await;
    env.wait_for_payments(30, Duration::from_secs(60)).await;
    let waiting = || -> Vec<String> {
        let map = api.statements.lock().expect("lock");
        map.iter().filter(|(_, s)| s.status == "STARTED" && s.pid.is_some()).map(|(id, _)| id.clone()).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiting().is_empty() {
        assert!(Instant::now() < deadline, "no statement waited on the locked table\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waited = waiting();

    let (status, took) = env.sigterm();
    assert!(status.success(), "{}", env.log());
    // The grace period, the cut's allowance (a cancel, 2 s at most) and a
    // margin for the rest of the stop.
    assert!(took < grace + Duration::from_secs(6), "took {took:?} to exit\n{}", env.log());
    let statuses: Vec<&str> = {
        let map = api.statements.lock().expect("lock");
        waited.iter().map(|id| map.get(id).map_or("gone", |s| s.status)).collect()
    };
    assert!(statuses.iter().all(|s| *s == "ABORTED"), "statements left {statuses:?} at the exit\n{}", env.log());
    assert!(env.log().contains("given up at the end of the grace period; cancelled"), "{}", env.log());
    // The flush cut off is the stop's last: no final flush follows it
    // (it would read every pending row again and send nothing).
    let log = env.log();
    let stop = log.rfind("SIGTERM received").expect("the stop logged");
    assert_eq!(log[stop..].matches("Redshift flush failed").count(), 1, "flushes failed after the stop\n{log}");
    // Nothing of the daemon's waits on the table any longer (a cancel on
    // PostgreSQL takes effect a moment after it is asked for).
    let in_queue = || {
        let pg = &pg;
        let q = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%{table}%' AND pid <> pg_backend_pid()"
        );
        async move { pg.query_text(&q).await.expect("pg_stat_activity")[0][0].parse::<i64>().expect("count") }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while in_queue().await > 0 {
        assert!(Instant::now() < deadline, "a statement still waits on the table after the exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    locker.batch_execute("ROLLBACK").await.expect("unlock");

    // Its rows stayed pending: the next start mirrors them, exactly.
    env.start();
    let mirrored = wait_mirrored(&env, &pg, &table, Duration::from_secs(60)).await;
    assert_eq!(mirrored.values().map(|v| v[8]).sum::<i64>(), total + more_total);
    let (status, _) = env.sigterm();
    assert!(status.success(), "{}", env.log());
    pg.execute(&format!("DROP TABLE {table}")).await.expect("drop");
}
