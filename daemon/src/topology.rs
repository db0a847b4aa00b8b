//! Wires the daemon together: the only module that spawns tasks and makes
//! channels.
//!
//! Owns: start-up order (every lookup that can wait on AWS before
//! anything reads, so a stop during them has nothing to drain), the shape
//! of the graph and shutdown. Every input
//! hands its batches to one router (one CPU pool, one fraud engine, the
//! sinks). Each SQS input: receivers -> decide -> write -> acknowledger,
//! every hop a bounded channel. The stream: the lease loop reports leases
//! gained and lost; a supervisor starts, per leased shard, a reader feeding
//! a bounded prefetch channel and that shard's processor, and stops them
//! when the lease goes.
//! On the shutdown signal the receivers and readers stop, each stage drains
//! what it holds, shards checkpoint and release their leases, and the
//! acknowledger and the lease loop finish last; the Redshift flusher then
//! flushes once more with what is left of the grace period (past it, the
//! statement it waits for is cancelled and the flush dropped). Must not:
//! contain data-path logic.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipeline::fraud::{FraudEngine, Rules, StateStore};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::admin::{self, Health};
use crate::bridge::CpuPool;
use crate::config::{Config, KinesisSourceConfig, SqsSourceConfig};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::route::{FraudStateCache, OrderCaches, Router, Scoring, Tunables};
use crate::sinks::dynamodb::DynamoDbSink;
use crate::sinks::redshift::{RedshiftSink, Transport};
use crate::sinks::rejected::RejectedSink;
use crate::sources::kinesis::KinesisSource;
use crate::sources::kinesis::leases::{self, LeaseEvent, Leases};
use crate::sources::kinesis::shard::{self, ShardContext};
use crate::sources::sqs::{SqsSource, stages};

/// What stopping takes after the grace period: the cut of a Redshift
/// flush still running (its submit's id and its statement's cancel, 3 s;
/// 4 s allowed), the
/// lease loops' release and the admin endpoint's close (each AWS call has
/// its own timeout).
pub const STOP_MARGIN: Duration = Duration::from_secs(15);

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Drained within the grace period.
    Drained,
    /// The grace period ran out first; undeleted messages will be redelivered.
    GraceExceeded,
}

/// What the process gives a run besides its configuration.
#[derive(Debug, Default)]
pub struct Control {
    /// SIGHUP, and where the configuration is read again from.
    pub reload: Option<crate::reload::Reload>,
    /// The installed subscriber's level, for a reload.
    pub logging: Option<Arc<crate::logging::Logging>>,
}

/// Runs the daemon until `shutdown` completes, then drains.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>, control: Control) -> anyhow::Result<Exit> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(Arc::clone(&metrics.components), Duration::from_secs(config.admin.unready_after_secs)));
    let notifier = Arc::new(Notifier::from_env());

    let listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin.listen): {e}", config.admin.listen))?;
    let admin_addr = listener.local_addr()?;
    let admin_stop = CancellationToken::new();
    let admin_task = {
        let router = admin::router(Arc::clone(&metrics), Arc::clone(&health));
        let stop = admin_stop.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                error!(error = %e, "Admin endpoint failed");
            }
        })
    };
    info!(addr = %admin_addr, "Admin endpoint listening");

    // Cancelled half way through a shutdown's grace period: from then on a
    // failed write is not retried (by the sink, or in place by an SQS
    // input) but given back, so a sink that is down cannot hold the drain
    // past the grace period.
    let stop_retrying = CancellationToken::new();
    // And AFTER_STOP later, a call still waiting in a loop of calls (SQS
    // deletes, rejections and their ledger) is abandoned: one allowance
    // for them all.
    let stopping = crate::aws::Stopping { retrying: stop_retrying.clone(), calls: CancellationToken::new() };
    let sdk = crate::aws::run_sdk_config(&config.aws).await;
    // Every client counts its requests (`cafe_aws_requests_total`).
    let count = crate::aws::CountRequests(Arc::clone(&metrics));
    let sqs = aws_sdk_sqs::Client::from_conf(aws_sdk_sqs::config::Builder::from(&sdk).interceptor(count.clone()).build());
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk)
            .timeout_config(crate::aws::data_call_timeouts())
            .interceptor(count.clone())
            .build(),
    );

    let mirror = config.sinks.redshift.enabled;
    for (field, why) in config.warnings() {
        warn!(field, "{why}");
    }
    for component in crate::components::enabled(&config) {
        component.init_metrics(&metrics);
    }
    let fraud_problems = |p: Vec<pipeline::fraud::ConfigProblem>| {
        anyhow::anyhow!("fraud config: {}", p.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
    };
    let scoring = match config.fraud.state {
        StateStore::Process => {
            Scoring::Process(Arc::new(Mutex::new(FraudEngine::new(config.fraud.clone()).map_err(fraud_problems)?)))
        }
        StateStore::DynamoDb => Scoring::Shared {
            cache: Arc::new(FraudStateCache::new(
                config.fraud.max_tracked_keys,
                Some(crate::internal_events::fraud_state_cache_gauge(&metrics)),
            )),
        },
    };
    let tunables =
        Arc::new(Tunables::new(crate::reload::tuned(&config, Rules::new(config.fraud.clone()).map_err(fraud_problems)?)));
    let dynamodb_sink = DynamoDbSink::new(dynamodb.clone(), config.sinks.dynamodb.clone(), Arc::clone(&metrics))
        .with_mirror(mirror)
        .with_stop_retrying(stop_retrying.clone());
    let stop_flushing = CancellationToken::new();
    // Cancelled when the grace period is over with the final flush still
    // running: a Data API statement it waits for is cancelled then.
    let cut_flushing = CancellationToken::new();
    // Built before the start-up lookups, so a bad transport fails the start
    // at once, with nothing to hand back; started once the streams are known.
    let mirror_sink = if mirror {
        Some(RedshiftSink::new(
            Transport::new(&config.sinks.redshift, &sdk, Some(count.clone()))
                .map_err(|e| anyhow::anyhow!("sinks.redshift.url: {e}"))?
                .cut_by(cut_flushing.clone()),
            dynamodb.clone(),
            config.sinks.dynamodb.aggregates_table.clone(),
            config.sinks.redshift.clone(),
            Arc::clone(&metrics),
        ))
    } else {
        None
    };
    // The start-up lookups (the rejected queue's URL and size limit, each
    // input queue's URL, each stream's shards and lease table), all before
    // anything reads: each retries a passing failure for a while, so a
    // silent endpoint can hold them for minutes, and a stop meanwhile ends
    // the run at once, with nothing read, taken or written to hand back.
    let mut shutdown = std::pin::pin!(shutdown);
    let found = tokio::select! {
        found = look_up(&config, &sdk, (&sqs, &dynamodb, &count), &metrics) => found?,
        () = &mut shutdown => {
            info!("Stopped during start-up, before reading anything");
            admin_stop.cancel();
            let _ = admin_task.await;
            return Ok(Exit::Drained);
        }
    };
    let router = Router {
        orders: Arc::new(dynamodb_sink.clone()),
        dynamodb: dynamodb_sink,
        rejected: found
            .rejected
            .with_ledger(dynamodb.clone(), &config.sinks.dynamodb.events_table)
            .with_stopping(stopping.clone()),
        // The one CPU pool: every input's decide stage hops onto it.
        pool: CpuPool::new(config.pipeline.cpu_threads, Arc::clone(&metrics))?,
        tunables: Arc::clone(&tunables),
        scoring,
        sink_concurrency: config.pipeline.sink_concurrency,
        metrics: Arc::clone(&metrics),
    };
    let stop_receiving = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut queues_running = Vec::new();
    for (source, input) in found.queues {
        let acker = start_queue(&source, &input, &config, router.clone(), &tracker, (&stop_receiving, &stopping));
        queues_running.push((source, acker));
    }

    // Depth of the queues an operator must watch: the DLQs and the rejected queue.
    let depth_task = {
        let mut watched: Vec<String> = config.sources.enabled_sqs().map(|(_, s)| s.dlq.clone()).collect();
        watched.push(config.rejected.queue.clone());
        tokio::spawn(crate::sources::sqs::depth_loop(
            sqs.clone(),
            watched,
            Duration::from_secs(30),
            Arc::clone(&metrics),
            admin_stop.clone(),
        ))
    };

    // Each stream: its lease loop, and a supervisor of one task pair per shard.
    let stop_taking = CancellationToken::new();
    let stop_shards = CancellationToken::new();
    let stop_leasing = CancellationToken::new();
    let shard_tracker = TaskTracker::new();
    let mut lease_tasks = Vec::new();
    let mut streams_consumed = Vec::new();
    let mut share: Option<Arc<Leases>> = None;
    let mut pacings = Vec::new();
    for (name, stream, kinesis, leases) in found.streams {
        let shards = Arc::new(ShardContext {
            router: router.clone(),
            leases,
            config: stream.clone(),
            pipeline: config.pipeline.clone(),
            metrics: Arc::clone(&metrics),
            sync_now: Arc::new(tokio::sync::Notify::new()),
            orders: OrderCaches::new(
                usize::try_from(stream.order_cache_bytes).unwrap_or(usize::MAX),
                Some(crate::internal_events::order_cache_gauge(&metrics, &stream.stream)),
            ),
        });
        pacings.push((name, kinesis.pacing()));
        let (lease_tx, lease_rx) = mpsc::channel(64);
        shard_tracker.spawn(supervise_shards(
            lease_rx,
            kinesis.clone(),
            Arc::clone(&shards),
            stop_shards.clone(),
            shard_tracker.clone(),
        ));
        info!(stream = %kinesis.name(), worker_id = %shards.leases.worker_id, "Consuming the stream");
        share.get_or_insert_with(|| Arc::clone(&shards.leases));
        streams_consumed.push(stream.stream.clone());
        lease_tasks.push(tokio::spawn(leases::run(
            Arc::clone(&shards.leases),
            kinesis,
            lease_tx,
            Arc::clone(&shards.sync_now),
            stop_taking.clone(),
            stop_leasing.clone(),
        )));
    }

    // The Redshift mirror, outside the trackers: it runs until the drain is
    // over. With a stream, each instance flushes the buckets of the shard
    // leases it holds (several instances no longer all flush every row).
    let flusher = mirror_sink.map(|sink| {
        let sink = match &share {
            Some(leases) => sink.with_share(Arc::clone(leases) as Arc<dyn crate::sinks::redshift::BucketShare>),
            None => sink,
        };
        tokio::spawn(sink.flush_loop(stop_flushing.clone()))
    });

    tracker.close();
    health.set_ready();
    let mut inputs: Vec<String> = queues_running.iter().map(|(s, _)| s.name.clone()).collect();
    for name in &inputs {
        info!(queue = %name, "Consuming");
    }
    inputs.extend(streams_consumed);
    notifier.ready(&format!("consuming {}", inputs.join(", ")));
    // The health loop: each run is the liveness beat `/healthz` reads, and,
    // under systemd, the watchdog's ping (at half its time).
    let watchdog = {
        let (notifier, health, stop) = (Arc::clone(&notifier), Arc::clone(&health), admin_stop.clone());
        let every = notifier.watchdog_interval().map_or(Duration::from_secs(1), |w| w.min(Duration::from_secs(1)));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                health.beat();
                if health.is_alive() {
                    // A no-op without systemd's watchdog.
                    notifier.watchdog();
                }
            }
        })
    };
    // SIGHUP: the fields a reload may change, applied from the next batch.
    let reload_task = control.reload.map(|reload| {
        let targets = crate::reload::Targets {
            running: config.clone(),
            router: router.clone(),
            logging: control.logging.clone(),
            notifier: Arc::clone(&notifier),
            pacings,
        };
        tokio::spawn(crate::reload::reload_loop(reload, targets))
    });
    let inflight = || queues_running.iter().map(|(s, _)| s.inflight()).sum::<usize>();

    shutdown.await;
    let grace = Duration::from_secs(config.shutdown.grace_period_secs);
    let deadline = tokio::time::Instant::now() + grace;
    info!(inflight = inflight(), grace_secs = grace.as_secs(), "Shutting down: draining");
    // systemd waits for the whole drain, whatever the unit's TimeoutStopSec:
    // the grace period (the final Redshift flush included) and a margin for
    // releasing leases and closing.
    notifier.stopping(&format!("draining (grace {} s)", grace.as_secs()), grace + STOP_MARGIN);
    health.set_draining();
    stop_receiving.cancel();
    stop_taking.cancel();
    stop_shards.cancel();
    shard_tracker.close();
    let retrying_ends = {
        let stopping = stopping.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace / 2).await;
            stopping.retrying.cancel();
            tokio::time::sleep(crate::aws::AFTER_STOP).await;
            stopping.calls.cancel();
        })
    };

    let drained = async {
        tokio::join!(tracker.wait(), shard_tracker.wait());
    };
    let exit = match tokio::time::timeout(grace, drained).await {
        Ok(()) => {
            info!("Drained");
            Exit::Drained
        }
        Err(_) => {
            error!(inflight = inflight(), "Grace period exceeded; in-flight messages will be redelivered");
            for (_, acker) in &queues_running {
                acker.abort();
            }
            Exit::GraceExceeded
        }
    };
    retrying_ends.abort();
    stop_flushing.cancel();
    if let Some(mut f) = flusher {
        // Rows not flushed now stay pending in DynamoDB for the next start.
        if tokio::time::timeout_at(deadline, &mut f).await.is_err() {
            error!("Grace period exceeded during a Redshift flush; its rows stay pending");
            // The statement it waits for is cancelled, not left running on
            // the cluster (holding the mirror table's locks) after the exit:
            // a submit under way gets 1 s for its id, the cancel AFTER_STOP;
            // then the flush is dropped.
            cut_flushing.cancel();
            if tokio::time::timeout(2 * crate::aws::AFTER_STOP, &mut f).await.is_err() {
                f.abort();
            }
        }
    }
    stop_leasing.cancel();
    for t in lease_tasks {
        let _ = t.await;
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    let _ = watchdog.await;
    let _ = depth_task.await;
    if let Some(t) = reload_task {
        t.abort();
    }
    Ok(exit)
}

/// What the start-up lookups found: the rejected queue, each enabled input
/// queue with its settings, each enabled stream with its settings, reader
/// and lease table.
struct Found {
    rejected: RejectedSink,
    queues: Vec<(Arc<SqsSource>, SqsSourceConfig)>,
    streams: Vec<(String, KinesisSourceConfig, KinesisSource, Arc<Leases>)>,
}

/// The start-up lookups, in order; the first that fails for good fails the
/// start (a missing queue, stream or lease table is named).
async fn look_up(
    config: &Config,
    sdk: &aws_config::SdkConfig,
    (sqs, dynamodb, count): (&aws_sdk_sqs::Client, &aws_sdk_dynamodb::Client, &crate::aws::CountRequests),
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Found> {
    let rejected = RejectedSink::connect(sqs.clone(), &config.rejected.queue, Arc::clone(metrics)).await?;
    let mut queues = Vec::new();
    for (_, input) in config.sources.enabled_sqs() {
        queues.push((Arc::new(SqsSource::connect(sqs.clone(), input.clone(), Arc::clone(metrics)).await?), input.clone()));
    }
    let mut streams = Vec::new();
    for (name, stream) in config.sources.enabled_kinesis() {
        let worker_id = if stream.worker_id.is_empty() { leases::default_worker_id() } else { stream.worker_id.clone() };
        let leases = Arc::new(Leases::new(dynamodb.clone(), stream.clone(), worker_id, Arc::clone(metrics)));
        let kinesis = KinesisSource::new(
            aws_sdk_kinesis::Client::from_conf(
                aws_sdk_kinesis::config::Builder::from(sdk)
                    .timeout_config(crate::aws::data_call_timeouts())
                    .interceptor(count.clone())
                    .build(),
            ),
            stream.clone(),
            Arc::clone(metrics),
        );
        // Fail fast on a missing stream or lease table rather than retrying
        // forever; a passing failure gets a few attempts.
        let mut attempt = 0;
        loop {
            let check = async {
                kinesis.list_shards().await?;
                leases
                    .scan()
                    .await
                    .map_err(|e| anyhow::anyhow!("lease table {} (run `cafe-streamd provision`): {e}", stream.lease_table))
            };
            match check.await {
                Ok(_) => break,
                Err(e) if attempt + 1 < crate::sources::sqs::STARTUP_ATTEMPTS => {
                    warn!(stream = %stream.stream, error = %e, attempt, "Stream or lease table not reachable yet, retrying");
                    // Jittered: a fleet restarted together does not retry in step.
                    let backoff = crate::aws::Backoff { base: Duration::from_millis(500), max: Duration::from_secs(8) };
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        streams.push((name.to_owned(), stream.clone(), kinesis, leases));
    }
    Ok(Found { rejected, queues, streams })
}

/// Starts and stops shard tasks as leases come and go. On `stop`, every
/// shard task is told to drain, checkpoint and release (they are in
/// `tracker`, which topology waits on).
async fn supervise_shards(
    mut events: mpsc::Receiver<LeaseEvent>,
    kinesis: KinesisSource,
    path: Arc<ShardContext>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    // shard -> (generation of the holding its task was started for, its stop)
    let mut running: HashMap<String, (i64, CancellationToken)> = HashMap::new();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            e = events.recv() => match e {
                Some(e) => e,
                None => return,
            },
        };
        match event {
            LeaseEvent::Acquired(lease) => {
                if let Some((_, old)) = running.remove(&lease.key) {
                    old.cancel();
                }
                let lost = CancellationToken::new();
                running.insert(lease.key.clone(), (lease.counter, lost.clone()));
                tracker.spawn(run_shard(lease, kinesis.clone(), Arc::clone(&path), stop.clone(), lost, tracker.clone()));
            }
            LeaseEvent::Lost { key, generation } => {
                // A later holding of the shard (taken again meanwhile) keeps running.
                if running.get(&key).is_some_and(|(g, _)| *g == generation)
                    && let Some((_, lost)) = running.remove(&key)
                {
                    lost.cancel();
                }
            }
        }
    }
}

/// One leased shard: wait for its parents, then a reader and a processor
/// joined by the bounded prefetch channel.
async fn run_shard(
    lease: leases::Lease,
    kinesis: KinesisSource,
    path: Arc<ShardContext>,
    stop: CancellationToken,
    lost: CancellationToken,
    tracker: TaskTracker,
) {
    let shard_id = lease.key.clone();
    let waiting = CancellationToken::new();
    let either = {
        let (stop, lost, waiting) = (stop.clone(), lost.clone(), waiting.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = lost.cancelled() => {}
            }
            waiting.cancel();
        })
    };
    if !shard::wait_for_parents(&path, &lease, &waiting).await {
        if !lost.is_cancelled() {
            let _ = path.leases.release(&shard_id, lease.counter, None).await;
        }
        either.abort();
        return;
    }
    let Some(start) = shard::pin_latest(&path, &lease, &waiting).await else {
        if !lost.is_cancelled() {
            let _ = path.leases.release(&shard_id, lease.counter, None).await;
        }
        either.abort();
        return;
    };
    info!(shard = %shard_id, checkpoint = ?start, "Reading shard");
    let (tx, rx) = mpsc::channel(path.config.prefetch_batches);
    let reader = {
        let (kinesis, shard_id, checkpoint, stop_reading) = (kinesis.clone(), shard_id.clone(), start, waiting.clone());
        tracker.spawn(async move { kinesis.fetch_loop(shard_id, checkpoint, tx, stop_reading).await })
    };
    let exit = shard::process_shard(path, shard_id.clone(), lease.counter, rx, stop, lost).await;
    waiting.cancel();
    let _ = reader.await;
    either.abort();
    info!(shard = %shard_id, exit = ?exit, "Shard reader stopped");
}

/// Starts one SQS input's stages in `tracker` and returns its acknowledger.
fn start_queue(
    source: &Arc<SqsSource>,
    input: &SqsSourceConfig,
    config: &Config,
    router: Router,
    tracker: &TaskTracker,
    (stop_receiving, stopping): (&CancellationToken, &crate::aws::Stopping),
) -> tokio::task::JoinHandle<()> {
    let stop_retrying = &stopping.retrying;
    let cap = config.pipeline.channel_capacity;
    let (recv_tx, recv_rx) = mpsc::channel(cap * input.receivers as usize);
    let (decided_tx, decided_rx) = mpsc::channel(cap);
    let (ack_tx, ack_rx) = mpsc::channel(cap);
    let stop_extending = CancellationToken::new();
    for _ in 0..input.receivers {
        let (source, tx, stop) = (Arc::clone(source), recv_tx.clone(), stop_receiving.clone());
        tracker.spawn(async move { source.receive_loop(tx, stop).await });
    }
    drop(recv_tx);
    {
        let (source, stop) = (Arc::clone(source), stop_extending.clone());
        tracker.spawn(async move { source.extend_loop(stop).await });
    }
    tracker.spawn(stages::decide_loop(recv_rx, decided_tx, router.clone(), config.pipeline.clone()));
    let stage = stages::WriteStage {
        metrics: Arc::clone(&router.metrics),
        router,
        concurrency: config.pipeline.sink_concurrency,
        source: source.name.clone(),
        retry_in_flight: Duration::from_secs(u64::from(input.retry_in_flight_secs)),
        stop: stop_retrying.clone(),
        queue: Arc::clone(source),
    };
    tracker.spawn(stages::write_loop(decided_rx, ack_tx, stage));
    let source = Arc::clone(source);
    let stop_acking = stopping.clone();
    tracker.spawn(async move {
        source.ack_loop(ack_rx, 8, &stop_acking).await;
        // Nothing is in flight any more: stop keeping messages invisible.
        stop_extending.cancel();
    })
}
