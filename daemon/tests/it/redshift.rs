//! The Redshift sink's SQL, run for real on the local PostgreSQL 15 through
//! the PostgreSQL-wire transport.

use daemon::sinks::redshift::sql::MirrorRow;
use daemon::sinks::redshift::{postgres, sql};
use pipeline::window::{Counters, WindowId};
use std::time::Duration;

async fn pg() -> postgres::PgTransport {
    let url = std::env::var("CAFE_PG_URL").expect("CAFE_PG_URL is not set: run through scripts/test.sh");
    postgres::PgTransport::connect(&url, std::time::Duration::from_secs(60)).await.expect("connect to the local PostgreSQL")
}

fn row(store: &str, minute: u32, orders: i64) -> MirrorRow {
    MirrorRow {
        id: WindowId { store: store.into(), window: format!("2026-11-22T08:{minute:02}:00Z") },
        counters: Counters { orders, revenue_cents: orders * 450, payments: 1, ..Counters::default() },
        version: orders,
    }
}

async fn table_rows(pg: &postgres::PgTransport, table: &str) -> Vec<Vec<String>> {
    pg.query_text(&format!("SELECT store, window_start, orders, revenue_cents, payments FROM {table} ORDER BY 1, 2"))
        .await
        .expect("select")
}

#[tokio::test(flavor = "multi_thread")]
async fn upserts_are_idempotent_and_atomic_on_postgresql() {
    let pg = pg().await;
    let table = format!("cafe_store_minute_it_{}", std::process::id());
    pg.execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop");
    pg.execute(&sql::create_table(&table)).await.expect("create");

    let rows = vec![row("s1", 1, 3), row("s1", 2, 5), row("s'x", 1, 7)];
    for b in sql::upsert_batches(&table, &rows) {
        pg.run_batch(&b).await.expect("upsert");
    }
    let first = table_rows(&pg, &table).await;
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(first[0], vec!["s'x", "2026-11-22 08:01:00", "7", "3150", "1"]);

    // Replayed twice: nothing changes.
    for _ in 0..2 {
        for b in sql::upsert_batches(&table, &rows) {
            pg.run_batch(&b).await.expect("replay");
        }
    }
    assert_eq!(table_rows(&pg, &table).await, first);

    // A newer absolute value replaces the row; the others stay.
    for b in sql::upsert_batches(&table, &[row("s1", 2, 6)]) {
        pg.run_batch(&b).await.expect("update");
    }
    let updated = table_rows(&pg, &table).await;
    assert_eq!(updated.len(), 3);
    assert_eq!(updated[2][2], "6", "{updated:?}");
    // An older flush landing late (another instance's, or a retry) changes nothing.
    for b in sql::upsert_batches(&table, &[row("s1", 2, 4), row("s'x", 1, 2)]) {
        pg.run_batch(&b).await.expect("late");
    }
    assert_eq!(table_rows(&pg, &table).await, updated, "older versions never replace newer ones");

    // A batch that fails half way commits nothing.
    let mut bad = sql::upsert_batches(&table, &[row("s1", 1, 999), row("s9", 9, 1)]).remove(0);
    let merge_at = bad.iter().position(|s| s.starts_with("MERGE")).expect("merge");
    bad.insert(merge_at + 1, "SELECT 1 / 0".into());
    let err = pg.run_batch(&bad).await.expect_err("division by zero");
    assert!(!err.retryable(), "{err}");
    assert_eq!(table_rows(&pg, &table).await, updated, "the failed batch changed nothing");

    // A flush larger than one Data API batch still lands whole.
    let many: Vec<_> = (0..60_000).map(|i| row(&format!("bulk-{i}"), (i % 60) as u32, 1)).collect();
    let batches = sql::upsert_batches(&table, &many);
    assert!(batches.len() > 1);
    for b in &batches {
        pg.run_batch(b).await.expect("bulk");
    }
    let n = pg.query_text(&format!("SELECT count(*) FROM {table}")).await.expect("count");
    assert_eq!(n[0][0], (3 + 60_000).to_string());
    pg.execute(&format!("DROP TABLE {table}")).await.expect("drop");
}

/// Flushes of one key from several instances at once, in any order: the
/// newest version wins, whatever interleaving PostgreSQL picks, and a
/// collision is reported retryable.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_flushes_keep_the_newest_version() {
    let setup = pg().await;
    let table = format!("cafe_store_minute_race_{}", std::process::id());
    setup.execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop");
    setup.execute(&sql::create_table(&table)).await.expect("create");
    let mut tasks = Vec::new();
    for writer in 0..6i64 {
        let table = table.clone();
        tasks.push(tokio::spawn(async move {
            let pg = pg().await;
            let mut retries = 0;
            // Each writer flushes versions 1..=30 of 10 keys, offset so
            // that writers overtake each other.
            for step in 0..30i64 {
                let version = (step + writer * 5) % 30 + 1;
                let rows: Vec<MirrorRow> = (0..10).map(|k| row(&format!("k{k}"), 0, version)).collect();
                for b in sql::upsert_batches(&table, &rows) {
                    loop {
                        match pg.run_batch(&b).await {
                            Ok(()) => break,
                            Err(e) if e.retryable() => retries += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }
            retries
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let rows = setup.query_text(&format!("SELECT store, orders, version FROM {table} ORDER BY 1")).await.expect("select");
    assert_eq!(rows.len(), 10, "one row per key: {rows:?}");
    for r in &rows {
        assert_eq!((r[1].as_str(), r[2].as_str()), ("30", "30"), "{rows:?}");
    }
    setup.execute(&format!("DROP TABLE {table}")).await.expect("drop");
}

/// A raw connection whose transaction the test holds open between
/// statements, to force one interleaving of two flushes.
async fn raw() -> tokio_postgres::Client {
    let url = std::env::var("CAFE_PG_URL").expect("CAFE_PG_URL is not set: run through scripts/test.sh");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// Runs every statement of `batch` inside an open transaction (no COMMIT).
async fn run_open(client: &tokio_postgres::Client, batch: &[String]) {
    client.batch_execute("BEGIN").await.expect("begin");
    for s in batch {
        client.batch_execute(s).await.expect("statement");
    }
}

/// The interleaving that lost an update under READ COMMITTED with the
/// stage-delete-insert upsert: flush A (an older version) has written the
/// key but not committed; flush B (a newer version) starts and waits on
/// A's row lock; A commits. B must end with its newer version in place,
/// and the reverse order must leave the newer version too.
#[tokio::test(flavor = "multi_thread")]
async fn a_flush_waiting_on_an_older_one_still_lands_its_newer_version() {
    let setup = pg().await;
    let table = format!("cafe_store_minute_interleave_{}", std::process::id());
    setup.execute(&format!("DROP TABLE IF EXISTS {table}")).await.expect("drop");
    setup.execute(&sql::create_table(&table)).await.expect("create");
    for b in sql::upsert_batches(&table, &[row("k", 0, 4)]) {
        setup.run_batch(&b).await.expect("v4");
    }
    for (first, second, expected) in [(5, 6, "6"), (8, 7, "8")] {
        let a = raw().await;
        let b = raw().await;
        let batch = |v| sql::upsert_batches(&table, &[row("k", 0, v)]).remove(0);
        run_open(&a, &batch(first)).await;
        let b_pid: i32 = b.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
        let second_batch = batch(second);
        let waiting = tokio::spawn(async move {
            run_open(&b, &second_batch).await;
            b.batch_execute("COMMIT").await.expect("commit b");
        });
        // B is blocked on A's row lock before A commits.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let rows = setup
                .query_text(&format!("SELECT wait_event_type FROM pg_stat_activity WHERE pid = {b_pid}"))
                .await
                .expect("activity");
            if rows.first().is_some_and(|r| r[0] == "Lock") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "flush B never waited on flush A: {rows:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        a.batch_execute("COMMIT").await.expect("commit a");
        waiting.await.expect("flush b");
        let rows = setup.query_text(&format!("SELECT orders, version FROM {table}")).await.expect("select");
        assert_eq!(rows, vec![vec![expected.to_owned(), expected.to_owned()]], "after v{first} then v{second}");
    }
    setup.execute(&format!("DROP TABLE {table}")).await.expect("drop");
}

/// The wire transport's `sslmode`, with libpq's meanings, against the
/// stack's PostgreSQL, which offers TLS with a certificate of its own CA
/// (`CAFE_PG_CA`) for the name `localhost` only. What the server saw is read
/// from `pg_stat_ssl`; a refused connection names the reason.
#[tokio::test(flavor = "multi_thread")]
async fn sslmode_has_libpqs_meanings() {
    let url = std::env::var("CAFE_PG_URL").expect("CAFE_PG_URL is not set: run through scripts/test.sh");
    let ca = std::env::var("CAFE_PG_CA").expect("CAFE_PG_CA is not set: run through scripts/test.sh");
    let by_name = url.replace("127.0.0.1", "localhost");
    let with = |base: &str, q: &str| format!("{base}?{q}");
    let tls_of = |u: String| async move {
        match postgres::PgTransport::connect(&u, std::time::Duration::from_secs(60)).await {
            Ok(pg) => {
                let rows = pg.query_text("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.expect("query");
                Ok(rows[0][0] == "true")
            }
            Err(e) => Err(e.to_string()),
        }
    };
    // Encrypted or not, as asked; nothing checked below verify-ca.
    assert_eq!(tls_of(with(&url, "sslmode=disable")).await, Ok(false));
    assert_eq!(tls_of(url.clone()).await, Ok(true), "prefer (the default off Redshift) takes the TLS the server offers");
    assert_eq!(tls_of(with(&url, "sslmode=prefer")).await, Ok(true));
    assert_eq!(tls_of(with(&url, "sslmode=require")).await, Ok(true), "require does not check the certificate");
    // The chain: verify-ca needs a CA file (against the public roots any
    // certificate of any name would pass), and the stack's CA is not a
    // public root.
    let e = tls_of(with(&url, "sslmode=verify-ca")).await.expect_err("verify-ca without a CA file is refused");
    assert!(e.contains("needs sslrootcert"), "{e}");
    let e = tls_of(with(&url, "sslmode=verify-full")).await.expect_err("an unknown issuer is refused");
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert_eq!(tls_of(with(&url, &format!("sslmode=verify-ca&sslrootcert={ca}"))).await, Ok(true), "verify-ca ignores the name");
    // require with a root certificate file is verify-ca.
    let other = "/etc/ssl/certs/ca-certificates.crt";
    let e = tls_of(with(&url, &format!("sslmode=require&sslrootcert={other}"))).await.expect_err("another CA's roots");
    assert!(e.contains("UnknownIssuer") || e.contains("issuer"), "{e}");
    // The name: the certificate is for localhost, not 127.0.0.1.
    let e = tls_of(with(&url, &format!("sslmode=verify-full&sslrootcert={ca}"))).await.expect_err("wrong name");
    assert!(e.contains("not valid for name"), "{e}");
    assert_eq!(tls_of(with(&by_name, &format!("sslmode=verify-full&sslrootcert={ca}"))).await, Ok(true));
}

/// A statement that outlives the transport's timeout fails the call as a
/// retryable error, and does not go on running on the server once the
/// connection is dropped: the server ends it after the same time (a
/// statement left running would hold the mirror table's lock, and the
/// retry would queue behind it). The next call connects again and works.
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_past_the_timeout_fails_and_does_not_go_on_running_on_the_server() {
    let url = std::env::var("CAFE_PG_URL").expect("CAFE_PG_URL is not set: run through scripts/test.sh");
    let t = postgres::PgTransport::connect(&url, Duration::from_millis(1000)).await.expect("connect");
    let marker = format!("it_timeout_{}", std::process::id());
    let backend = || async { t.query_text("SELECT pg_backend_pid()").await.expect("pid")[0][0].clone() };
    let started = std::time::Instant::now();
    let slow = format!("SELECT pg_sleep(20) AS {marker}");
    let r = t.run_batch(std::slice::from_ref(&slow)).await;
    let e = r.expect_err("the statement outlives the timeout");
    assert!(e.retryable(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // Within a moment nothing of it runs on the server.
    let watcher = pg().await;
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%AS {marker}%' AND pid <> pg_backend_pid()"
    );
    let mut left = String::new();
    for _ in 0..50 {
        left = watcher.query_text(&running).await.expect("pg_stat_activity")[0][0].clone();
        if left == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, "0", "the statement still runs on the server");
    t.run_batch(&["SELECT 1".to_owned()]).await.expect("works again");
    // A batch whose statements each end in time but together do not: this
    // side gives up (the server would not), and the connection, its
    // transaction in an unknown state, is dropped: the next call is
    // another backend's.
    let before = backend().await;
    let pair = ["SELECT pg_sleep(0.7)".to_owned(), "SELECT pg_sleep(0.7)".to_owned()];
    let e = t.run_batch(&pair).await.expect_err("the batch outlives the timeout");
    assert!(e.to_string().contains("no answer within 1000 ms") && e.retryable(), "{e}");
    t.run_batch(&["SELECT 1".to_owned()]).await.expect("connected again");
    assert_ne!(backend().await, before, "the connection that timed out was used again");
}

/// The cut (a shutdown's grace period over) while a batch waits on a lock
/// another session holds: the batch is given up at once and not retried,
/// its query is cancelled on the server (a backend waiting on a lock does
/// not see its client's connection close: it would stay in the table's
/// lock queue after the exit), and no batch is sent after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_cut_off_at_the_end_of_the_grace_period_is_cancelled_on_the_server() {
    let url = std::env::var("CAFE_PG_URL").expect("CAFE_PG_URL is not set: run through scripts/test.sh");
    let table = format!("it_cut_{}", std::process::id());
    let locker = raw().await;
    locker
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (k int primary key)"))
        .await
        .expect("table");
    locker.batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")).await.expect("lock");
    let cut = tokio_util::sync::CancellationToken::new();
    let t = postgres::PgTransport::connect(&url, Duration::from_secs(60)).await.expect("connect").cut_by(cut.clone());
    let watcher = pg().await;
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO {table}%' AND pid <> pg_backend_pid()"
    );
    let in_queue = || async { watcher.query_text(&waiting).await.expect("pg_stat_activity")[0][0].clone() };
    let batch = [format!("INSERT INTO {table} VALUES (1)")];
    let cutting = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while in_queue().await == "0" {
            assert!(std::time::Instant::now() < deadline, "the batch never waited on the lock");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cut.cancel();
        std::time::Instant::now()
    };
    let (r, cut_at) = tokio::join!(t.run_batch(&batch), cutting);
    let e = r.expect_err("cut off");
    // At once (its query would wait 60 s): the cancel request's connection
    // and answer only.
    assert!(cut_at.elapsed() < Duration::from_secs(3), "ended {:?} after the cut", cut_at.elapsed());
    assert!(!e.retryable() && e.to_string().contains("given up at the end of the grace period; cancelled"), "{e}");
    // Out of the lock queue, though the lock is still held.
    let mut left = String::new();
    for _ in 0..50 {
        left = in_queue().await;
        if left == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, "0", "the batch still waits on the table after its cut");
    let e = t.run_batch(&batch).await.expect_err("not sent");
    assert!(matches!(e, postgres::PgError::Cut(_)), "{e}");
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    assert_eq!(
        watcher.query_text(&format!("SELECT count(*) FROM {table}")).await.expect("count")[0][0],
        "0",
        "the cut batch committed"
    );
    locker.batch_execute(&format!("DROP TABLE {table}")).await.expect("drop");
}
