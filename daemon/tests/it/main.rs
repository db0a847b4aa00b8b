//! Integration tests of cafe-streamd against the local AWS stack (moto for
//! SQS, dynoxide and ferrokinesis in `cafe-emulators`, PostgreSQL, all on
//! loopback, started by `scripts/test.sh`).
//!
//! Every test provisions its own uniquely named queues and tables with
//! `cafe-streamd provision`, runs the real binary as a child process, and
//! reads the results back with the AWS SDK: nothing is stubbed.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::MessageAttributeValue;
use serde_json::json;

mod chaos;
mod dashboards;
mod data_api;
mod edges;
mod faults;
mod fraud;
mod iam;
mod leases;
mod menu;
mod orders;
mod packages;
mod redshift;
mod reload;
mod routing;
mod stack;
mod systemd;
mod tidy;

const BIN: &str = env!("CARGO_BIN_EXE_cafe-streamd");
static NEXT: AtomicU32 = AtomicU32::new(0);

fn require_stack() {
    for var in ["AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_KINESIS"] {
        assert!(
            std::env::var(var).is_ok(),
            "{var} is not set: run the integration tests through scripts/test.sh, which starts the local stack"
        );
    }
}

/// One test's private resources and daemon.
struct Env {
    prefix: String,
    dir: PathBuf,
    config: PathBuf,
    admin: String,
    sqs: aws_sdk_sqs::Client,
    ddb: aws_sdk_dynamodb::Client,
    queue_url: String,
    rejected_url: String,
    daemon: Option<Child>,
    /// Extra environment for every daemon and `provision` run of this test.
    daemon_env: Vec<(String, String)>,
    /// Extra daemon processes (`start_worker`), by worker id.
    workers: Vec<(String, Child)>,
    kinesis: aws_sdk_kinesis::Client,
}

/// Binary `bin` of the workspace's package `package`, built now (`cargo
/// test -p daemon` builds no other package's binaries; cargo rebuilds
/// nothing that is fresh). Built with the same selection as
/// `scripts/test.sh` (the whole workspace, every target): features unify
/// per selection, and `-p {package}` alone would rebuild every dependency.
fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--locked", "--workspace", "--all-targets"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap_or_else(|e| panic!("cargo build --workspace --all-targets (for {package}): {e}"));
    assert!(status.success(), "cargo build --workspace --all-targets (for {package}) failed");
    let path = PathBuf::from(BIN).with_file_name(bin);
    assert!(path.is_file(), "{} not built", path.display());
    path
}

/// A `cafe-emulators` of a test's own, started with `args` (its ports
/// among them) and killed when dropped: the stack's binary
/// (`CAFE_EMULATORS_BIN`, or the stack script's build, made if this
/// machine has none), for options the stack's own does not run with.
pub(crate) struct OwnEmulators(Child);

impl OwnEmulators {
    /// Starts it and waits until `port` (one of `args`) takes connections.
    pub(crate) fn start(args: &[&str], port: u16) -> Self {
        let bin = std::env::var("CAFE_EMULATORS_BIN").map(PathBuf::from).ok().filter(|p| p.is_file()).unwrap_or_else(|| {
            let stack = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/local-stack/stack.sh");
            let out =
                Command::new(&stack).arg("emulators-bin").stderr(Stdio::inherit()).output().expect("stack.sh emulators-bin");
            assert!(out.status.success(), "stack.sh emulators-bin failed");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        });
        // Its complaints go to a file, shown if it does not start (an older
        // build refuses an option it does not know, say).
        let log = std::env::temp_dir().join(format!("it-own-emulators-{}-{port}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("the emulators' log");
        let child = Command::new(&bin).args(args).stdout(Stdio::null()).stderr(stderr).spawn().expect("start cafe-emulators");
        let mut own = OwnEmulators(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let said = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = own.0.try_wait() {
                panic!("{} {args:?} exited ({status}): {}", bin.display(), said());
            }
            assert!(Instant::now() < deadline, "{} {args:?} did not start in 20 s: {}", bin.display(), said());
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_file(&log);
        own
    }
}

impl Drop for OwnEmulators {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Env {
    async fn new(name: &str, extra: &str) -> Env {
        Env::with_orders(name, "shards = 1", extra, Vec::new()).await
    }

    /// A test environment whose `[sources.orders]` section has `orders`
    /// fields, and whose processes get `daemon_env`.
    async fn with_orders(name: &str, orders: &str, extra: &str, daemon_env: Vec<(String, String)>) -> Env {
        require_stack();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let prefix = format!("it-{name}-{}-{n}-{:x}", std::process::id(), nanos >> 12);
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let admin = format!("127.0.0.1:{}", free_port());
        let config = dir.join("cafe-streamd.toml");
        let text = format!(
            r#"
[sources.payments]
queue = "{prefix}-pay.fifo"
dlq = "{prefix}-pay-dlq.fifo"
visibility_timeout_secs = 6
wait_time_secs = 1
retry_delay_secs = 1
max_receive_count = 50
[sources.menu]
queue = "{prefix}-menu"
dlq = "{prefix}-menu-dlq"
visibility_timeout_secs = 6
wait_time_secs = 1
retry_delay_secs = 1
max_receive_count = 50
[sources.orders]
stream = "{prefix}-orders"
lease_table = "{prefix}-leases"
{orders}
[sinks.dynamodb]
aggregates_table = "{prefix}-aggregates"
payments_table = "{prefix}-payments"
orders_table = "{prefix}-orders"
menu_table = "{prefix}-menu"
events_table = "{prefix}-events"
fraud_state_table = "{prefix}-fraud-state"
[rejected]
queue = "{prefix}-rejected"
[admin]
listen = "{admin}"
[shutdown]
grace_period_secs = 20
{extra}
"#
        );
        std::fs::write(&config, text).expect("write config");
        let out = Command::new(BIN)
            .args(["provision", "--config"])
            .arg(&config)
            .envs(daemon_env.iter().cloned())
            .output()
            .expect("run provision");
        assert!(out.status.success(), "provision failed: {}", String::from_utf8_lossy(&out.stderr));

        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let mut kinesis_conf = aws_sdk_kinesis::config::Builder::from(&sdk);
        if let Some((_, url)) = daemon_env.iter().find(|(k, _)| k == "AWS_ENDPOINT_URL_KINESIS") {
            kinesis_conf = kinesis_conf.endpoint_url(url);
        }
        let kinesis = aws_sdk_kinesis::Client::from_conf(kinesis_conf.build());
        let url = |q: String| {
            let sqs = sqs.clone();
            async move { sqs.get_queue_url().queue_name(q).send().await.expect("queue").queue_url.expect("url") }
        };
        let queue_url = url(format!("{prefix}-pay.fifo")).await;
        let rejected_url = url(format!("{prefix}-rejected")).await;
        Env {
            prefix,
            dir,
            config,
            admin,
            sqs,
            ddb,
            queue_url,
            rejected_url,
            daemon: None,
            daemon_env,
            workers: Vec::new(),
            kinesis,
        }
    }

    fn start(&mut self) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log")).expect("log file");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&self.config)
            .envs(self.daemon_env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start daemon");
        self.daemon = Some(child);
    }

    fn kill9(&mut self) {
        let mut child = self.daemon.take().expect("daemon running");
        child.kill().expect("kill -9");
        let _ = child.wait();
    }

    /// SIGTERM, then wait; returns the exit status and how long it took.
    fn sigterm(&mut self) -> (ExitStatus, Duration) {
        let mut child = self.daemon.take().expect("daemon running");
        let started = Instant::now();
        let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill").success();
        assert!(ok, "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM for 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    async fn send(&self, bodies: &[(String, String)]) {
        for chunk in bodies.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, (group, body))| {
                    let dedup = format!("{}-{}", NEXT.fetch_add(1, Ordering::SeqCst), i);
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body)
                        .message_group_id(group)
                        .message_deduplication_id(dedup)
                        .build()
                        .expect("entry")
                })
                .collect();
            let out =
                self.sqs.send_message_batch().queue_url(&self.queue_url).set_entries(Some(entries)).send().await.expect("send");
            assert!(out.failed.is_empty(), "send failures: {:?}", out.failed);
        }
    }

    async fn aggregates(&self) -> HashMap<String, i64> {
        let mut sums = HashMap::new();
        let out = self.ddb.scan().table_name(format!("{}-aggregates", self.prefix)).send().await.expect("scan");
        for item in out.items() {
            for (k, v) in item {
                if let Ok(n) = v.as_n() {
                    *sums.entry(k.clone()).or_insert(0) += n.parse::<i64>().expect("number");
                }
            }
        }
        sums
    }

    async fn payment_count(&self) -> usize {
        let mut count = 0;
        let mut start = None;
        loop {
            let out = self
                .ddb
                .scan()
                .table_name(format!("{}-payments", self.prefix))
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .expect("scan");
            count += out.count as usize;
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return count,
            }
        }
    }

    async fn payment(&self, id: &str) -> Option<HashMap<String, AttributeValue>> {
        self.ddb
            .get_item()
            .table_name(format!("{}-payments", self.prefix))
            .key("payment_id", AttributeValue::S(id.into()))
            .send()
            .await
            .expect("get")
            .item
    }

    async fn wait_for_payments(&self, n: i64, within: Duration) -> HashMap<String, i64> {
        let deadline = Instant::now() + within;
        loop {
            let sums = self.aggregates().await;
            if sums.get("payments").copied().unwrap_or(0) >= n || Instant::now() > deadline {
                return sums;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until at least `n` payments are counted; returns how many are.
    async fn wait_until_some_processed(&self, n: i64) -> i64 {
        let done = self.wait_for_payments(n, Duration::from_secs(60)).await.get("payments").copied().unwrap_or(0);
        assert!(done >= n, "only {done} of {n} processed\n{}", self.log());
        done
    }

    /// The messages of the queue at `url`: (visible, not visible); -1 for
    /// a count SQS did not give.
    async fn messages(&self, url: &str) -> (i64, i64) {
        use aws_sdk_sqs::types::QueueAttributeName;
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .expect("attributes");
        let attrs = out.attributes.unwrap_or_default();
        let n = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
        (n(QueueAttributeName::ApproximateNumberOfMessages), n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
    }

    async fn queue_empty(&self) -> bool {
        self.messages(&self.queue_url).await == (0, 0)
    }

    async fn wait_queue_empty(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.queue_empty().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, child) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn payment(prefix: &str, i: usize, customer: &str, amount: u64) -> (String, String) {
    let body = json!({
        "v": 1, "id": format!("{prefix}-e{i}"), "type": "payment.requested",
        "ts": "2026-11-22T08:15:30.000Z", "store": format!("st{}", i % 3),
        "data": {
            "payment_id": format!("{prefix}-p{i}"), "order_id": format!("o{i}"), "customer_id": customer,
            "amount_cents": amount, "currency": "USD",
            "card": {"bin": "411111", "last4": "4242", "fingerprint": format!("fp-{customer}")},
            "ip": "203.0.113.7", "device_id": format!("dev-{customer}"), "billing_country": "US"
        }
    })
    .to_string();
    (customer.to_owned(), body)
}

fn burst(prefix: &str, n: usize) -> (Vec<(String, String)>, i64) {
    let mut total = 0i64;
    let bodies = (0..n)
        .map(|i| {
            let amount = 100 + (i as u64 * 37) % 5000;
            total += amount as i64;
            payment(prefix, i, &format!("c{}", i % 40), amount)
        })
        .collect();
    (bodies, total)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_is_decided_and_counted_once() {
    let mut env = Env::new("once", "").await;
    env.start();
    let p = payment(&env.prefix, 1, "cust-1", 1250);
    env.send(std::slice::from_ref(&p)).await;
    let sums = env.wait_for_payments(1, Duration::from_secs(60)).await;
    assert_eq!(sums.get("payments"), Some(&1), "{sums:?}\n{}", env.log());
    assert_eq!(sums.get("payment_amount_cents"), Some(&1250));
    let item = env.payment(&format!("{}-p1", env.prefix)).await.expect("payment item");
    let decision = item["decision"].as_s().expect("decision").clone();
    assert!(["approve", "review", "decline"].contains(&decision.as_str()));
    assert_eq!(
        sums.get(&format!(
            "payments_{}",
            if decision == "approve" {
                "approved"
            } else if decision == "review" {
                "review"
            } else {
                "declined"
            }
        )),
        Some(&1)
    );
    for field in ["order_id", "customer_id", "store", "amount_cents", "score", "reasons", "ts", "decided_at"] {
        assert!(item.contains_key(field), "{field} missing from {item:?}");
    }

    // The same payment delivered again (a producer retry) changes nothing.
    env.send(&[p]).await;
    assert!(env.wait_queue_empty(Duration::from_secs(30)).await, "queue not drained\n{}", env.log());
    let sums = env.aggregates().await;
    assert_eq!(sums.get("payments"), Some(&1), "{sums:?}");
    assert_eq!(env.payment_count().await, 1);

    // Health and metrics are served on the admin address.
    let metrics = http_get(&env.admin, "/metrics").await;
    assert!(metrics.contains("cafe_pipeline_events_total{source=\""), "{metrics}");
    assert!(metrics.contains("outcome=\"duplicate\"} 1"), "{metrics}");
    assert!(metrics.contains("cafe_pipeline_e2e_latency_seconds_bucket"), "{metrics}");
    let ready = http_get(&env.admin, "/readyz").await;
    assert!(ready.contains("ready"), "{ready}");
    // The lease loop's calls worked and said so: ListShards, and the takes
    // of the stream's leases (components of their own, which a failure of
    // either marks failing).
    let body: serde_json::Value = serde_json::from_str(ready.split("\r\n\r\n").nth(1).unwrap_or("")).expect("JSON body");
    for component in ["shards", "leases"] {
        let name = format!("{}-orders/{component}", env.prefix);
        assert_eq!(body["components"]["source"][&name]["state"], "ok", "{name}: {body}");
    }
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// The sum of the samples of `family` whose labels contain `label`.
pub(crate) async fn metric(env: &Env, family: &str, label: &str) -> f64 {
    http_get(&env.admin, "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // `Env::start` returns once the process is spawned, before it listens: a
    // refused connection is retried for a while (a fresh-clone CI run had a
    // test's first request land before the daemon bound its admin port).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut s = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("connect admin at {addr}: {e}"),
        }
    };
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_duplicated_deliveries_change_nothing() {
    let mut env = Env::new("dups", "").await;
    env.start();
    let (bodies, total) = burst(&env.prefix, 100);
    env.send(&bodies).await;
    let sums = env.wait_for_payments(100, Duration::from_secs(90)).await;
    assert_eq!(sums.get("payments"), Some(&100), "{sums:?}\n{}", env.log());
    let before = env.aggregates().await;

    // Every payment delivered twice more: 200 duplicate deliveries.
    let mut again = bodies.clone();
    again.extend(bodies.clone());
    env.send(&again).await;
    assert!(env.wait_queue_empty(Duration::from_secs(90)).await, "queue not drained\n{}", env.log());
    let after = env.aggregates().await;
    assert_eq!(before, after, "a replay changed the aggregates");
    assert_eq!(after.get("payment_amount_cents"), Some(&total));
    assert_eq!(env.payment_count().await, 100);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_events_are_rejected_with_their_reason_and_the_rest_goes_on() {
    let mut env = Env::new("reject", "").await;
    env.start();
    let p = &env.prefix;
    let malformed = ("c1".to_owned(), "{\"v\":1,\"id\":".to_owned());
    let mut schema: serde_json::Value = serde_json::from_str(&payment(p, 90, "c1", 100).1).expect("json");
    schema["data"]["currency"] = json!("usd");
    let schema = ("c2".to_owned(), schema.to_string());
    let big_image = "A".repeat(800 * 1024);
    let oversized = json!({
        "v": 1, "id": format!("{p}-big"), "type": "menu.item.upserted", "ts": "2026-11-22T08:15:30Z", "store": "s1",
        "data": {"sku": "latte", "name": "Latte", "category": "coffee", "price_cents": 450,
                 "image": {"content_type": "image/png", "base64": big_image, "sha256": "0".repeat(64)},
                 "ingredients": [], "allergens": []}
    });
    let oversized = ("c3".to_owned(), oversized.to_string());
    let bodies = vec![
        payment(p, 1, "c1", 100),
        malformed.clone(),
        payment(p, 2, "c1", 200),
        schema.clone(),
        payment(p, 3, "c2", 300),
        oversized.clone(),
        payment(p, 4, "c3", 400),
    ];
    env.send(&bodies).await;
    let sums = env.wait_for_payments(4, Duration::from_secs(60)).await;
    assert_eq!(sums.get("payments"), Some(&4), "{sums:?}\n{}", env.log());
    assert_eq!(sums.get("payment_amount_cents"), Some(&1000));

    let mut rejected: HashMap<String, (String, HashMap<String, MessageAttributeValue>)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rejected.len() < 3 && Instant::now() < deadline {
        let out = env
            .sqs
            .receive_message()
            .queue_url(&env.rejected_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        for m in out.messages.unwrap_or_default() {
            let attrs = m.message_attributes.unwrap_or_default();
            let reason = attrs.get("reason").and_then(|a| a.string_value.clone()).unwrap_or_default();
            rejected.insert(reason, (m.body.unwrap_or_default(), attrs));
        }
    }
    for (reason, original) in [("bad_json", &malformed.1), ("schema", &schema.1), ("too_large", &oversized.1)] {
        let (body, attrs) = rejected.get(reason).unwrap_or_else(|| panic!("no {reason} rejection in {:?}", rejected.keys()));
        assert_eq!(body, original, "{reason}: the rejected event must be unchanged");
        let attr = |k: &str| attrs.get(k).and_then(|a| a.string_value.clone()).unwrap_or_default();
        assert_eq!(attr("source"), format!("{p}-pay.fifo"));
        assert!(!attr("position").is_empty(), "{reason}: position missing");
        assert!(!attr("detail").is_empty(), "{reason}: detail missing");
    }
    assert!(rejected["schema"].1["detail"].string_value.as_deref().unwrap_or("").contains("currency"));
    assert!(env.wait_queue_empty(Duration::from_secs(30)).await, "rejected events must be acknowledged too");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_burst_and_a_restart_end_with_exact_counts() {
    let mut env = Env::new("kill9", "[fraud]\nwork_factor = 2000\n[pipeline]\nmax_batch_events = 20").await;
    let (bodies, total) = burst(&env.prefix, 600);
    env.send(&bodies).await;
    env.start();
    // Kill once some, but not all, are written.
    let done = env.wait_until_some_processed(50).await;
    assert!(done < 600, "the burst finished before the kill; make it larger");
    env.kill9();
    env.start();
    let sums = env.wait_for_payments(600, Duration::from_secs(180)).await;
    assert!(env.wait_queue_empty(Duration::from_secs(60)).await, "queue not drained\n{}", env.log());
    let sums_after = env.aggregates().await;
    assert_eq!(sums, sums_after, "counts moved after the queue drained");
    assert_eq!(sums.get("payments"), Some(&600), "{sums:?}");
    assert_eq!(sums.get("payment_amount_cents"), Some(&total));
    let decided: i64 =
        ["payments_approved", "payments_review", "payments_declined"].iter().map(|k| sums.get(*k).copied().unwrap_or(0)).sum();
    assert_eq!(decided, 600, "{sums:?}");
    assert_eq!(env.payment_count().await, 600);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_within_the_grace_period_and_loses_nothing() {
    let mut env = Env::new("term", "[fraud]\nwork_factor = 2000").await;
    let (bodies, total) = burst(&env.prefix, 400);
    env.send(&bodies).await;
    env.start();
    let done = env.wait_until_some_processed(20).await;
    assert!(done < 400, "the burst finished before SIGTERM; make it larger");
    let (status, took) = env.sigterm();
    assert!(status.success(), "exit {status:?}\n{}", env.log());
    assert!(took < Duration::from_secs(20), "drain took {took:?}, grace is 20 s");
    assert!(env.log().contains("Drained"), "{}", env.log());
    // Whatever it had not finished is still on the queue: a new daemon
    // finishes the job and the counts are exact.
    env.start();
    let sums = env.wait_for_payments(400, Duration::from_secs(180)).await;
    assert_eq!(sums.get("payments"), Some(&400), "{sums:?}\n{}", env.log());
    assert_eq!(sums.get("payment_amount_cents"), Some(&total));
    assert_eq!(env.payment_count().await, 400);
}

/// An idle daemon has a long poll open on each input when SIGTERM comes
/// (10 s polls, 30 s visibility). It waits them out before it exits: SQS
/// would hand a dropped poll the next messages sent, and they would stay
/// invisible for the visibility timeout. A burst sent the moment it has
/// exited, into the next instance, is decided well within the visibility
/// timeout. (When the daemon dropped its idle polls 1 s after the signal, a
/// burst sent then lost up to ten messages per receiver to them: cold-start
/// with a restart just before the burst had 143 payments wait 30 s.)
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_waits_for_idle_long_polls_so_a_restart_strands_nothing() {
    let mut vars: Vec<(String, String)> = Vec::new();
    for q in ["PAYMENTS", "MENU"] {
        vars.push((format!("CAFE_SOURCES__{q}__WAIT_TIME_SECS"), "10".to_owned()));
        vars.push((format!("CAFE_SOURCES__{q}__VISIBILITY_TIMEOUT_SECS"), "30".to_owned()));
    }
    let mut env = Env::with_orders("idlepoll", "shards = 1", "", vars).await;
    env.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while env.log().matches("Consuming").count() < 3 {
        assert!(Instant::now() < deadline, "the daemon never started consuming\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every receiver is in a long poll by now, with seconds to go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, took) = env.sigterm();
    assert!(status.success(), "exit {status:?}\n{}", env.log());
    assert!(took < Duration::from_secs(15), "an idle daemon took {took:?} to exit, past its 10 s polls\n{}", env.log());
    let (bodies, total) = burst(&env.prefix, 40);
    env.send(&bodies).await;
    let sent = Instant::now();
    env.start();
    let sums = env.wait_for_payments(40, Duration::from_secs(20)).await;
    assert_eq!(
        sums.get("payment_amount_cents"),
        Some(&total),
        "not every payment decided {:?} after the burst: some went to a poll the old instance dropped\n{sums:?}\n{}",
        sent.elapsed(),
        env.log()
    );
    let (status, _) = env.sigterm();
    assert!(status.success(), "{status:?}\n{}", env.log());
}

/// A SIGTERM that comes while the daemon starts (here: as soon as its admin
/// port answers, before its inputs and shards have started) is a stop that
/// drains and exits 0. The handlers used to be installed only when the
/// shutdown future was first polled, after every component had started:
/// a signal before that ended the process by the default action, with its
/// first long polls open at SQS (bench.sh's cold-start, started and then at
/// once restarted, had 300 payments wait out a 30 s visibility timeout).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_start_up_stops_gracefully() {
    let mut env = Env::new("earlyterm", "").await;
    env.start();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(&env.admin).await.is_err() {
        assert!(Instant::now() < deadline, "the admin port never answered\n{}", env.log());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (status, _) = env.sigterm();
    assert!(status.success(), "a SIGTERM during start-up ended the daemon with {status:?}\n{}", env.log());
    assert!(env.log().contains("SIGTERM received"), "{}", env.log());
}

#[test]
fn a_bad_config_is_refused_with_every_problem_named() {
    let dir = std::env::temp_dir().join(format!("it-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("bad.toml");
    let mut f = std::fs::File::create(&path).expect("file");
    writeln!(
        f,
        "[sources.payments]\nqueue = \"plain-queue\"\nreceivers = 0\n[admin]\nlisten = \"nowhere\"\n[fraud]\nrisky_bins = [\"12\"]\n[shutdown]\ngrace_period_secs = 0\n[mystery]\nx = 1"
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .env("CAFE_PIPELINE__SINK_CONCURRENCY", "0")
        .output()
        .expect("run validate");
    assert_eq!(out.status.code(), Some(2), "validate must exit 2");
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for field in [
        "sources.payments.queue",
        "sources.payments.receivers",
        "admin.listen",
        "fraud.risky_bins[0]",
        "shutdown.grace_period_secs",
        "mystery",
    ] {
        assert!(err.contains(&format!("{file}: {field}:")), "{field} not named with its file in:\n{err}");
    }
    assert!(
        err.contains("environment CAFE_PIPELINE__SINK_CONCURRENCY: pipeline.sink_concurrency:"),
        "the environment override is not blamed:\n{err}"
    );
    let ok = Command::new(BIN).args(["validate", "--config", "/dev/null"]).output().expect("run validate");
    assert!(ok.status.success(), "the defaults must be valid: {}", String::from_utf8_lossy(&ok.stderr));
}

/// `cafe-streamd config` prints the configuration in force, the
/// environment's overrides in it and its secrets redacted, as a file that
/// `validate` accepts and that prints the same again.
#[test]
fn config_prints_the_configuration_in_force_with_secrets_redacted() {
    let dir = std::env::temp_dir().join(format!("it-printcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("in.toml");
    std::fs::write(
        &path,
        "[sources.payments]\nreceivers = 3\n[sinks.redshift]\nenabled = true\nurl = \"postgres://cafe:hunter2@db:5439/dev\"\n",
    )
    .expect("write");
    let print = |config: &std::path::Path| {
        let out = Command::new(BIN)
            .args(["config", "--config"])
            .arg(config)
            .env("CAFE_PIPELINE__SINK_CONCURRENCY", "3")
            .output()
            .expect("run config");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let printed = print(&path);
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("url = \"postgres://cafe:REDACTED@db:5439/dev\""), "{printed}");
    assert!(printed.contains("receivers = 3") && printed.contains("sink_concurrency = 3"), "{printed}");
    assert!(printed.contains("[fraud.weights]") && printed.contains("grace_period_secs = 30"), "defaults are printed: {printed}");
    let again = dir.join("printed.toml");
    std::fs::write(&again, &printed).expect("write");
    let ok = Command::new(BIN).args(["validate", "--config"]).arg(&again).output().expect("validate");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let twice = print(&again);
    assert_eq!(twice.lines().skip(1).collect::<Vec<_>>(), printed.lines().skip(1).collect::<Vec<_>>());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `validate --environment` checks the account read-only: a provisioned
/// environment passes; a missing table, a queue without its redrive
/// policy, a table keyed otherwise and a redrive count the configuration
/// does not say are each named, with their field, and exit 2.
#[tokio::test(flavor = "multi_thread")]
async fn validate_environment_names_what_the_account_lacks_or_misshapes() {
    let env = Env::new("account", "").await;
    let p = env.prefix.clone();
    let run = |extra: Vec<(&str, String)>| {
        Command::new(BIN)
            .args(["validate", "--environment", "--config"])
            .arg(&env.config)
            .envs(env.daemon_env.iter().cloned())
            .envs(extra)
            .output()
            .expect("run validate --environment")
    };
    let ok = run(Vec::new());
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("the account has what it needs"));
    // Made by hand, not by provision: a queue with no redrive policy and a
    // table keyed by the wrong attribute.
    env.sqs.create_queue().queue_name(format!("{p}-plain")).send().await.expect("create queue");
    {
        use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
        env.ddb
            .create_table()
            .table_name(format!("{p}-wrongkey"))
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder().attribute_name("id").attribute_type(ScalarAttributeType::S).build().expect("attr"),
            )
            .key_schema(KeySchemaElement::builder().attribute_name("id").key_type(KeyType::Hash).build().expect("key"))
            .send()
            .await
            .expect("create table");
    }
    let out = run(vec![
        ("CAFE_SINKS__DYNAMODB__PAYMENTS_TABLE", format!("{p}-nope")),
        ("CAFE_SOURCES__MENU__QUEUE", format!("{p}-plain")),
        ("CAFE_SINKS__DYNAMODB__FRAUD_STATE_TABLE", format!("{p}-wrongkey")),
        ("CAFE_SOURCES__PAYMENTS__MAX_RECEIVE_COUNT", "7".into()),
        ("CAFE_SINKS__REDSHIFT__ENABLED", "true".into()),
        ("CAFE_SINKS__REDSHIFT__URL", std::env::var("CAFE_PG_URL").expect("CAFE_PG_URL")),
        ("CAFE_SINKS__REDSHIFT__TABLE", "cafe_no_such_table".into()),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        format!("account: sinks.dynamodb.payments_table: table {p}-nope does not exist"),
        format!("account: sources.menu.queue: queue {p}-plain has no redrive policy to {p}-menu-dlq"),
        format!("account: sinks.dynamodb.fraud_state_table: table {p}-wrongkey is keyed by [\"id\"], the daemon needs [\"key\"]"),
        format!("account: sinks.dynamodb.fraud_state_table: table {p}-wrongkey does not expire items by expires_at"),
        "account: sinks.redshift.table: Redshift: the table cafe_no_such_table cannot be read".to_owned(),
        format!(
            "account: sources.payments.queue: queue {p}-pay.fifo moves a message to its DLQ after 50 receives, the configuration says 7"
        ),
    ] {
        assert!(err.contains(&want), "{want:?} not in:\n{err}");
    }
    assert!(!err.contains("sinks.dynamodb.orders_table"), "a sound resource is not named:\n{err}");
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(BIN).arg("--version").output().expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("cafe-streamd 0.1.0 (commit "), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn top_shows_a_running_daemon() {
    let mut env = Env::new("top", "").await;
    env.start();
    let (bodies, _) = burst(&env.prefix, 20);
    env.send(&bodies).await;
    env.wait_for_payments(20, Duration::from_secs(60)).await;
    let out = Command::new(BIN).args(["top", "--once", "--interval", "1", "--addr", &env.admin]).output().expect("run top");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for want in
        ["cafe-streamd 0.", "e2e p99", &format!("{}-pay.fifo", env.prefix), "events:", "kinesis: 1 leases held", "MiB RSS"]
    {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    // The payments were decided before the view's interval, so p99 comes
    // from the whole run; their `ts` is hours old, so it is the top bucket.
    assert!(text.lines().any(|l| l.contains("-pay.fifo") && l.ends_with("> 300 s")), "{text}");
    let down = Command::new(BIN).args(["top", "--once", "--addr", "127.0.0.1:1"]).output().expect("run top");
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the metrics endpoint 127.0.0.1:1"));
}
