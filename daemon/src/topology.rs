//! Wires the daemon together: the only module that spawns tasks and makes
//! channels.
//!
//! Owns: start-up order, the shape of the graph (receivers -> decide ->
//! write -> acknowledger, every hop a bounded channel) and shutdown: on the
//! shutdown signal the receivers stop, each stage drains what it holds and
//! closes its output, and the acknowledger finishes last. Must not: contain
//! data-path logic.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipeline::fraud::FraudEngine;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::admin::{self, Health};
use crate::bridge::CpuPool;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::payments::{self, Sinks};
use crate::sinks::dynamodb::DynamoDbSink;
use crate::sinks::rejected::RejectedSink;
use crate::sources::sqs::SqsSource;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Drained within the grace period.
    Drained,
    /// The grace period ran out first; undeleted messages will be redelivered.
    GraceExceeded,
}

/// Runs the daemon until `shutdown` completes, then drains.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<Exit> {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());

    let listener = tokio::net::TcpListener::bind(config.admin.addr())
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

    let sdk = crate::aws::sdk_config(&config.aws).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);

    let source = Arc::new(SqsSource::connect(sqs.clone(), config.sources.payments.clone(), Arc::clone(&metrics)).await?);
    let sinks = Sinks {
        dynamodb: DynamoDbSink::new(dynamodb, config.sinks.dynamodb.clone(), Arc::clone(&metrics)),
        rejected: RejectedSink::connect(sqs, &config.rejected.queue, Arc::clone(&metrics)).await?,
    };
    let engine = FraudEngine::new(config.fraud.clone())
        .map_err(|p| anyhow::anyhow!("fraud config: {}", p.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;
    let engine = Arc::new(Mutex::new(engine));
    let pool = CpuPool::new(config.pipeline.cpu_threads, Arc::clone(&metrics))?;

    let cap = config.pipeline.channel_capacity;
    let (recv_tx, recv_rx) = mpsc::channel(cap * config.sources.payments.receivers as usize);
    let (decided_tx, decided_rx) = mpsc::channel(cap);
    let (ack_tx, ack_rx) = mpsc::channel(cap);

    let stop_receiving = CancellationToken::new();
    let stop_extending = CancellationToken::new();
    let tracker = TaskTracker::new();
    for _ in 0..config.sources.payments.receivers {
        let (source, tx, stop) = (Arc::clone(&source), recv_tx.clone(), stop_receiving.clone());
        tracker.spawn(async move { source.receive_loop(tx, stop).await });
    }
    drop(recv_tx);
    {
        let (source, stop) = (Arc::clone(&source), stop_extending.clone());
        tracker.spawn(async move { source.extend_loop(stop).await });
    }
    tracker.spawn(payments::decide_loop(
        recv_rx,
        decided_tx,
        pool,
        engine,
        config.pipeline.clone(),
        source.name.clone(),
        Arc::clone(&metrics),
    ));
    tracker.spawn(payments::write_loop(
        decided_rx,
        ack_tx,
        sinks,
        config.pipeline.sink_concurrency,
        source.name.clone(),
        Arc::clone(&metrics),
    ));
    let acker = {
        let (source, stop_extending) = (Arc::clone(&source), stop_extending.clone());
        tracker.spawn(async move {
            source.ack_loop(ack_rx, 8).await;
            // Nothing is in flight any more: stop keeping messages invisible.
            stop_extending.cancel();
        })
    };
    tracker.close();
    health.set_ready();
    info!(queue = %source.name, receivers = config.sources.payments.receivers, "Consuming");

    shutdown.await;
    let grace = Duration::from_secs(config.shutdown.grace_period_secs);
    info!(inflight = source.inflight(), grace_secs = grace.as_secs(), "Shutting down: draining");
    health.set_draining();
    stop_receiving.cancel();

    let exit = match tokio::time::timeout(grace, tracker.wait()).await {
        Ok(()) => {
            info!("Drained");
            Exit::Drained
        }
        Err(_) => {
            error!(inflight = source.inflight(), "Grace period exceeded; in-flight messages will be redelivered");
            acker.abort();
            Exit::GraceExceeded
        }
    };
    admin_stop.cancel();
    let _ = admin_task.await;
    Ok(exit)
}
