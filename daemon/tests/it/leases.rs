//! The lease table's fencing, against the local DynamoDB.

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue as A;
use daemon::config::KinesisSourceConfig;
use daemon::metrics::Metrics;
use daemon::sources::kinesis::Checkpoint;
use daemon::sources::kinesis::leases::{LeaseError, Leases};

use super::*;

/// A lease nobody holds, at the start of its shard.
async fn put_free_lease(env: &Env, table: &str, key: &str) {
    env.ddb
        .put_item()
        .table_name(table)
        .item("leaseKey", A::S(key.into()))
        .item("leaseCounter", A::N("0".into()))
        .item("checkpoint", A::S("TRIM_HORIZON".into()))
        .send()
        .await
        .expect("put a lease");
}

/// A shard task of an earlier holding (its lease was taken away and then
/// taken back by the same instance) can no longer write: its checkpoint
/// would move the shard's progress backwards under the new holding.
#[tokio::test(flavor = "multi_thread")]
async fn a_task_of_an_earlier_holding_cannot_checkpoint_after_the_lease_came_back() {
    let env = Env::new("fence", "").await;
    let config = KinesisSourceConfig {
        lease_table: format!("{}-leases", env.prefix),
        stream: env.stream(),
        ..KinesisSourceConfig::default()
    };
    let table = config.lease_table.clone();
    let key = "shardId-fence-0";
    put_free_lease(&env, &table, key).await;
    let leases = Leases::new(env.ddb.clone(), config, "worker-a".into(), Arc::new(Metrics::new()));
    let mut rng = rand::rng();
    let first = leases.take(&mut rng).await.expect("take").into_iter().find(|l| l.key == key).expect("taken");

    // Another worker steals it, then gives it back; this worker takes it again.
    let set_owner = |owner: Option<&str>, counter: i64| {
        let mut u = env
            .ddb
            .update_item()
            .table_name(&table)
            .key("leaseKey", A::S(key.into()))
            .expression_attribute_values(":c", A::N(counter.to_string()));
        u = match owner {
            Some(o) => {
                u.update_expression("SET leaseOwner = :o, leaseCounter = :c").expression_attribute_values(":o", A::S(o.into()))
            }
            None => u.update_expression("REMOVE leaseOwner SET leaseCounter = :c"),
        };
        u.send()
    };
    set_owner(Some("worker-b"), first.counter + 1).await.expect("steal");
    let lost = leases.renew_all().await;
    assert_eq!(lost, [(key.to_owned(), first.counter)], "the renewal finds the lease gone");
    set_owner(None, first.counter + 2).await.expect("give back");
    let second = leases.take(&mut rng).await.expect("take").into_iter().find(|l| l.key == key).expect("taken again");
    leases
        .checkpoint(key, second.counter, &Checkpoint::At { sequence: "200".into(), sub: 0 })
        .await
        .expect("the current holding checkpoints");

    // The first holding's task, still running, tries to checkpoint behind it.
    let old = leases.checkpoint(key, first.counter, &Checkpoint::At { sequence: "100".into(), sub: 0 }).await;
    assert!(matches!(old, Err(LeaseError::Lost(_))), "{old:?}");
    let old_release = leases.release(key, first.counter, Some(&Checkpoint::At { sequence: "50".into(), sub: 0 })).await;
    assert!(matches!(old_release, Err(LeaseError::Lost(_))), "{old_release:?}");
    let stored = leases.get(key).await.expect("get").expect("lease");
    assert_eq!(stored.checkpoint, Checkpoint::At { sequence: "200".into(), sub: 0 }, "the checkpoint never moves back");
    assert_eq!(stored.owner.as_deref(), Some("worker-a"), "an earlier holding's release does not give the lease away");
    leases.checkpoint(key, second.counter, &Checkpoint::At { sequence: "300".into(), sub: 0 }).await.expect("still held");
}

/// A lease write the table applied but answered too late (the client timed
/// out) moved the counter without this instance knowing; the next write's
/// condition then fails as if another instance had taken the lease. It
/// must not give up a lease nobody took: the lease is read, found still
/// ours, and the write made again. The delay comes from a real proxy in
/// front of the local DynamoDB that forwards every UpdateItem at once and
/// holds its answer past the lease client's attempt timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_write_that_timed_out_but_landed_does_not_cost_the_lease() {
    let env = Env::new("ambiguous", "").await;
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local DynamoDB");
    let proxy = faultproxy::Proxy::start("127.0.0.1:0".parse().expect("addr"), &upstream).await.expect("proxy");
    let client = aws_sdk_dynamodb::Client::from_conf(
        env.ddb
            .config()
            .to_builder()
            .endpoint_url(proxy.url())
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .build(),
    );
    // Lease calls time out after 500 ms (an attempt) and 1 s (a call).
    let config = KinesisSourceConfig {
        lease_table: format!("{}-leases", env.prefix),
        stream: env.stream(),
        lease_renew_interval_ms: 500,
        ..KinesisSourceConfig::default()
    };
    let key = "shardId-ambiguous-0";
    put_free_lease(&env, &config.lease_table, key).await;
    let leases = Leases::new(client, config, "worker-a".into(), Arc::new(Metrics::new()));
    let mut rng = rand::rng();
    let taken = leases.take(&mut rng).await.expect("take").into_iter().find(|l| l.key == key).expect("taken");

    // The table applies the renewal; its answer comes after the client gave up.
    proxy
        .set_rules(vec![faultproxy::Rule {
            operation: Some("UpdateItem".into()),
            probability: 1.0,
            fault: faultproxy::Fault::LateAnswer { millis: 1500 },
        }])
        .expect("rules");
    assert!(leases.renew_all().await.is_empty(), "a renewal that timed out is not a lost lease");
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.clear();
    assert!(proxy.stats().total.late_answer > 0, "the proxy delayed nothing: {:?}", proxy.stats());
    let landed = leases.get(key).await.expect("get").expect("lease");
    assert_eq!(landed.counter, taken.counter + 1, "the unanswered renewal landed");

    leases
        .checkpoint(key, taken.counter, &Checkpoint::At { sequence: "100".into(), sub: 0 })
        .await
        .expect("the lease is still this instance's");
    let stored = leases.get(key).await.expect("get").expect("lease");
    assert_eq!(stored.owner.as_deref(), Some("worker-a"));
    assert_eq!(stored.checkpoint, Checkpoint::At { sequence: "100".into(), sub: 0 });
    assert!(leases.renew_all().await.is_empty(), "renewals go on");
}

/// Once an instance holds its share and sees no free or expired lease, it
/// scans the lease table every `failover_time_ms / 4` (2.5 s by default),
/// not every `lease_take_interval_ms` (1 s): the scans, whose cost grows
/// with shards times instances, are counted by a proxy in front of
/// DynamoDB while the daemon holds both shards of its stream.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_holding_its_share_scans_the_lease_table_less_often() {
    let upstream = std::env::var("AWS_ENDPOINT_URL_DYNAMODB").expect("the local DynamoDB");
    let proxy = faultproxy::Proxy::start("127.0.0.1:0".parse().expect("addr"), &upstream).await.expect("proxy");
    let daemon_env = vec![("AWS_ENDPOINT_URL_DYNAMODB".to_owned(), proxy.url())];
    let mut env = Env::with_orders("scans", "shards = 2", "", daemon_env).await;
    env.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(&env.admin).await.is_err() {
            assert!(Instant::now() < deadline, "the daemon did not start\n{}", env.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let metrics = http_get(&env.admin, "/metrics").await;
        if metrics.lines().any(|l| l.starts_with("cafe_leases_held{") && l.ends_with(" 2")) {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not take both leases\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Settled from its first scan that found nothing to take.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let scans = || proxy.stats().operations.get("Scan").map_or(0, |c| c.forwarded);
    let before = scans();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = scans() - before;
    assert!((2..=6).contains(&during), "{during} scans of the lease table in 10 s (every 2.5 s: 4; every second: 10)");
    let (status, _) = env.sigterm();
    assert!(status.success(), "{}", env.log());
}
