//! `cafe-emulators`: the local stack's DynamoDB and Kinesis, served from one
//! process on 127.0.0.1 only.
//!
//! - DynamoDB is dynoxide (SQLite in memory; checked against real AWS by a
//!   public conformance suite).
//! - Kinesis is ferrokinesis (every Kinesis operation, in memory).
//!
//! Both are libraries pinned by the workspace's Cargo.lock and built with it,
//! so the stack rebuilds nothing a test build has not built already.
//!
//! This file owns the binding (loopback only: neither emulator checks
//! credentials), the emulators' options (how long a stream stays CREATING,
//! UPDATING or DELETING, a shard limit, an iterator lifetime a test can
//! shorten, how long a new table stays CREATING) and the line that says what is serving. It must not
//! change what an emulator answers: where one is more lenient than AWS,
//! docs/local-stack.md says so and why it is acceptable, or the strictness
//! goes here (or in `front.rs`, DynamoDB's) with its reason.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;

mod front;

#[derive(Parser, Debug)]
#[command(name = "cafe-emulators", version, about = "DynamoDB (dynoxide) and Kinesis (ferrokinesis) on 127.0.0.1")]
struct Args {
    /// Serve DynamoDB on 127.0.0.1:PORT (0: any free port).
    #[arg(long)]
    dynamodb_port: Option<u16>,
    /// Serve Kinesis on 127.0.0.1:PORT (0: any free port).
    #[arg(long)]
    kinesis_port: Option<u16>,
    /// Open shards allowed across all streams (the AWS default is 500 per
    /// account in most regions; the tests create a few streams each).
    #[arg(long, default_value_t = 256)]
    kinesis_shard_limit: u32,
    /// Lifetime of a shard iterator: Kinesis's is 300 s; a test shortens it
    /// to see ExpiredIteratorException in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    iterator_lifetime_secs: u64,
    /// How long a new DynamoDB table stays CREATING, its reads and writes
    /// refused (AWS: seconds); 0 makes it ACTIVE at once, as dynoxide
    /// alone does (front.rs).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    table_creating_ms: u64,
    /// How long a new Kinesis stream stays CREATING, its puts refused
    /// (ResourceNotFoundException) and no shard listed (AWS: seconds to a
    /// minute); 0 makes it ACTIVE at once.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    stream_creating_ms: u64,
    /// How long a stream stays UPDATING after a split, a merge or a change
    /// of shard count: still read and written, another reshard refused
    /// (ResourceInUseException), the new shards there only after it (AWS:
    /// seconds to minutes); 0 makes it ACTIVE again at once.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    stream_updating_ms: u64,
    /// How long a deleted stream stays DELETING, its name not yet free for
    /// a new stream (ResourceInUseException) and its puts refused
    /// (ResourceNotFoundException); 0 frees it at once.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    stream_deleting_ms: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.dynamodb_port.is_none() && args.kinesis_port.is_none() {
        anyhow::bail!("nothing to serve: give --dynamodb-port, --kinesis-port or both");
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let mut servers = tokio::task::JoinSet::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    if let Some(port) = args.dynamodb_port {
        let listener = bind(port).await.context("DynamoDB")?;
        let addr = listener.local_addr()?;
        // dynoxide on a port of its own, behind the front on the one asked
        // for (front.rs: new tables CREATING for a while, as on AWS).
        let inner = bind(0).await.context("DynamoDB (dynoxide, behind the front)")?;
        let inner_addr = inner.local_addr()?;
        let db = dynoxide::Database::memory().map_err(|e| anyhow::anyhow!("dynoxide: in-memory database: {e}"))?;
        let stop = stopped();
        servers.spawn(async move {
            dynoxide::server::serve_with_shutdown(inner, db, stop)
                .await
                .map_err(|e| anyhow::anyhow!("dynoxide on {inner_addr}: {e}"))
        });
        let window = std::time::Duration::from_millis(args.table_creating_ms);
        let app = axum::Router::new()
            .fallback(front::handle)
            .with_state(front::Front::new(inner_addr, window))
            .layer(axum::extract::DefaultBodyLimit::disable());
        let stop = stopped();
        servers.spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(stop).await.with_context(|| format!("DynamoDB on {addr}"))
        });
        println!("dynamodb http://{addr} dynoxide (in memory; new tables CREATING for {} ms)", args.table_creating_ms);
    }
    if let Some(port) = args.kinesis_port {
        let listener = bind(port).await.context("Kinesis")?;
        let addr = listener.local_addr()?;
        let options = ferrokinesis::store::StoreOptions {
            // Kinesis creates, reshards and deletes a stream asynchronously
            // (CREATING, UPDATING, DELETING for seconds or more) and refuses
            // what a stream in those states cannot take: a client that
            // writes to a stream, or reshards it again, without waiting for
            // ACTIVE fails here as on AWS (ferrokinesis' own states and
            // answers, which follow kinesalite's).
            create_stream_ms: args.stream_creating_ms,
            delete_stream_ms: args.stream_deleting_ms,
            update_stream_ms: args.stream_updating_ms,
            shard_limit: args.kinesis_shard_limit,
            iterator_ttl_seconds: args.iterator_lifetime_secs,
            ..Default::default()
        };
        let (app, _store) = ferrokinesis::create_app(options);
        // axum's own limit is 2 MiB of body; a PutRecords of the 5 MiB
        // Kinesis allows is about 7 MiB of JSON (base64). ferrokinesis
        // itself refuses what Kinesis refuses (1 MiB a record, 5 MiB a call).
        let app = app.layer(axum::extract::DefaultBodyLimit::max(8 << 20)).layer(axum::middleware::from_fn(one_put_at_a_time));
        let stop = stopped();
        servers.spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(stop).await.with_context(|| format!("Kinesis on {addr}"))
        });
        println!(
            "kinesis http://{addr} ferrokinesis (shard limit {}, iterator lifetime {} s; new streams CREATING for {} ms, \
             reshards UPDATING for {}, deletions DELETING for {})",
            args.kinesis_shard_limit,
            args.iterator_lifetime_secs,
            args.stream_creating_ms,
            args.stream_updating_ms,
            args.stream_deleting_ms
        );
    }
    // The stack script waits for the ports; a test reads these lines.
    println!("ready pid {}", std::process::id());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        Some(done) = servers.join_next() => {
            // A server that ends on its own is a failure: say which.
            done??;
            anyhow::bail!("a server stopped on its own");
        }
    }
    let _ = stop_tx.send(true);
    // In-flight requests finish; a client holding a connection open does not
    // hold the stop for more than two seconds.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(done) = servers.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "server stopped with an error");
            }
        }
    })
    .await;
    Ok(())
}

async fn bind(port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(addr).await.with_context(|| format!("bind {addr}"))
}

/// Held by each PutRecord and PutRecords for its whole request.
static PUTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs Kinesis puts one at a time. ferrokinesis numbers a call's records
/// first (a lock-free counter per shard) and stores them later, after
/// awaiting the shard's throughput reservation: two calls at once can store
/// the later-numbered records first, and a reader at the shard's tip then
/// reads past the earlier numbers before they exist and never sees them
/// (its next iterator starts after the last record it got). Kinesis makes a
/// shard's records readable in sequence order, so a consumer following the
/// tip loses nothing. One put at a time makes numbering and storing one step
/// again; reads are not held.
async fn one_put_at_a_time(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let put = request
        .headers()
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| t.ends_with(".PutRecords") || t.ends_with(".PutRecord"));
    if put {
        let _one = PUTS.lock().await;
        next.run(request).await
    } else {
        next.run(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stack starts the emulators without these options: their defaults
    /// are what keeps its tables and streams in AWS's states for a while
    /// (the stack tests set their own, longer windows).
    #[test]
    fn by_default_tables_and_streams_keep_their_states_for_half_a_second() {
        let args = Args::try_parse_from(["cafe-emulators", "--dynamodb-port", "0", "--kinesis-port", "0"]).expect("args");
        assert_eq!(
            (args.table_creating_ms, args.stream_creating_ms, args.stream_updating_ms, args.stream_deleting_ms),
            (500, 500, 500, 500)
        );
    }
}
