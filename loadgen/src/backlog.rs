//! The daemon's memory under a backlog it cannot drain at once: a stream
//! holding `--records` (a million by default) order events, the daemon
//! started into it, and its resident memory sampled every second from its
//! admin endpoint (`process_resident_memory_bytes`) while it works through
//! them. Memory must stay flat: what the daemon holds is bounded by its
//! batches in flight and its caches, not by what waits on the stream.
//! The order cache fills towards its bound (`order_cache_bytes`, 32 MiB by
//! default) as new orders come, so each sample also reads what the daemon
//! says it holds (`cafe_orders_cache_bytes`), and the growth is given net
//! of it too: what grows besides a cache filling to its bound.
//!
//! Owns: the backlog and the samples. Must not: stop the daemon (the
//! caller does, as it started it).

use std::time::{Duration, Instant};

use pipeline::metric_names::{ORDERS_CACHE_BYTES, PROCESS_RSS, SOURCE_ACKED};
use serde::Serialize;
use tracing::info;

use crate::Targets;

/// `cafe-loadgen orders-backlog`.
#[derive(Debug, Clone, clap::Args)]
pub struct BacklogArgs {
    /// Records (order events) in the backlog, at least.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: usize,
    /// Share of corporate bulk orders.
    #[arg(long, default_value_t = 0.1)]
    pub bulk_ratio: f64,
    /// Shell command that starts the daemon once the backlog is in place.
    #[arg(long)]
    pub start_command: String,
    /// Seconds of sampling after the start.
    #[arg(long, default_value_t = 60)]
    pub watch_secs: u64,
    #[command(flatten)]
    pub targets: Targets,
}

/// One sample of the daemon.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the start command.
    pub secs: f64,
    /// Resident memory, MiB.
    pub rss_mib: f64,
    /// Messages and records acknowledged so far (every source).
    pub acked: f64,
    /// The order caches' bytes, as the daemon estimates them, MiB (every
    /// stream); none from a daemon that does not report them.
    pub order_cache_mib: Option<f64>,
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    /// Records put on the stream.
    pub records: usize,
    /// Orders they belong to.
    pub orders: usize,
    /// Seconds the put took.
    pub put_secs: f64,
    /// Records the daemon acknowledged within the window.
    pub acked: f64,
    /// Peak resident memory over the window, MiB.
    pub peak_rss_mib: f64,
    /// Peak over the window's first half and its second half, MiB.
    pub first_half_peak_mib: f64,
    /// See `first_half_peak_mib`.
    pub second_half_peak_mib: f64,
    /// `second_half_peak_mib / first_half_peak_mib`: about 1 when flat.
    pub growth: f64,
    /// The order caches at the end of the window, MiB.
    pub order_cache_mib: Option<f64>,
    /// As `growth`, of resident memory less the order caches (none when
    /// the daemon reports no cache figure or the first half's peak is not
    /// above 0).
    pub growth_net_of_cache: Option<f64>,
    /// Every sample.
    pub samples: Vec<Sample>,
}

/// Puts the backlog, starts the daemon and samples it.
pub async fn run(args: &BacklogArgs, seed: u64) -> anyhow::Result<Backlog> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    // An order is 3 or 5 events: 4.84 on average with 8% cancelled.
    let orders = crate::throughput::plan_backlog(seed, (args.records * 100).div_ceil(484), args.bulk_ratio);
    let started = Instant::now();
    info!(orders = orders.len(), "Putting the backlog");
    let records = crate::throughput::put_backlog(&kinesis, &args.targets.orders_stream, &orders).await?;
    let put_secs = started.elapsed().as_secs_f64();
    info!(records, put_secs, command = %args.start_command, "Backlog in place; starting the daemon");
    let status = tokio::process::Command::new("sh").arg("-c").arg(&args.start_command).status().await?;
    anyhow::ensure!(status.success(), "start command failed: {status}");
    let started = Instant::now();
    let client = reqwest::Client::new();
    let url = format!("http://{}/metrics", args.targets.daemon_admin);
    let mut samples = Vec::new();
    let mut next = started;
    while started.elapsed() < Duration::from_secs(args.watch_secs) {
        tokio::time::sleep_until(next.into()).await;
        next += Duration::from_secs(1);
        let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(2), async {
            client.get(&url).send().await?.error_for_status()?.text().await
        })
        .await
        else {
            // Not listening yet (starting) or busy: the next second.
            continue;
        };
        let (rss, acked, cache) = read(&text);
        if let Some(rss) = rss {
            let secs = started.elapsed().as_secs_f64();
            samples.push(Sample { secs, rss_mib: rss / 1_048_576.0, acked, order_cache_mib: cache.map(|c| c / 1_048_576.0) });
        }
    }
    anyhow::ensure!(samples.len() >= 4, "only {} samples of {url} in {} s", samples.len(), args.watch_secs);
    let acked = samples.last().map_or(0.0, |s| s.acked);
    anyhow::ensure!(acked > 0.0, "the daemon acknowledged nothing of the backlog in {} s", args.watch_secs);
    let (first, second) = halves(&samples, |s| s.rss_mib);
    Ok(Backlog {
        records,
        orders: orders.len(),
        put_secs,
        acked,
        peak_rss_mib: first.max(second),
        first_half_peak_mib: first,
        second_half_peak_mib: second,
        growth: second / first,
        order_cache_mib: samples.last().and_then(|s| s.order_cache_mib),
        growth_net_of_cache: growth_net_of_cache(&samples),
        samples,
    })
}

/// (resident bytes, acknowledged messages summed over sources, the order
/// caches' bytes summed over streams if the daemon reports them) from a
/// scrape.
fn read(text: &str) -> (Option<f64>, f64, Option<f64>) {
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let values = |prefix: String| text.lines().filter(move |l| l.starts_with(&prefix)).filter_map(value);
    let rss = values(format!("{PROCESS_RSS} ")).next();
    let acked = values(format!("{SOURCE_ACKED}_total{{")).sum();
    let mut caches = values(format!("{ORDERS_CACHE_BYTES}{{")).peekable();
    let cache = caches.peek().is_some().then(|| caches.sum());
    (rss, acked, cache)
}

/// Second half's peak over the first's of resident memory less the order
/// caches, when the daemon reports the caches' figure and the first peak
/// is above zero. A sample without the figure from a daemon that reports
/// it counts an empty cache: the first scrape can come before the orders
/// input has made its cache and series.
fn growth_net_of_cache(samples: &[Sample]) -> Option<f64> {
    if samples.iter().all(|s| s.order_cache_mib.is_none()) {
        return None;
    }
    let (first, second) = halves(samples, |s| s.rss_mib - s.order_cache_mib.unwrap_or(0.0));
    (first > 0.0).then(|| second / first)
}

/// Peak of `of` over the first and the second half of the samples.
fn halves(samples: &[Sample], of: impl Fn(&Sample) -> f64) -> (f64, f64) {
    let mid = samples.len() / 2;
    let peak = |s: &[Sample]| s.iter().map(&of).fold(0.0, f64::max);
    (peak(&samples[..mid]), peak(&samples[mid..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_sums_acks_over_sources() {
        let text = "# HELP x\nprocess_resident_memory_bytes 10485760\n\
                    cafe_source_acked_messages_total{source=\"orders\"} 1200\n\
                    cafe_source_acked_messages_total{source=\"menu\"} 3\ncafe_source_acked_messages_created 5\n\
                    cafe_orders_cache_bytes{source=\"orders\"} 2048\ncafe_orders_cache_bytes{source=\"more\"} 1024\n";
        assert_eq!(read(text), (Some(10_485_760.0), 1203.0, Some(3072.0)));
        // A daemon that does not report its order caches: none, not 0.
        assert_eq!(read("process_resident_memory_bytes 1\n"), (Some(1.0), 0.0, None));
    }

    #[test]
    fn growth_compares_the_second_half_with_the_first() {
        let s = |rss_mib, cache: Option<f64>| Sample { secs: 0.0, rss_mib, acked: 0.0, order_cache_mib: cache };
        let samples = [s(40.0, Some(1.0)), s(60.0, Some(2.0)), s(58.0, Some(9.0)), s(61.0, Some(12.0))];
        assert_eq!(halves(&samples, |s| s.rss_mib), (60.0, 61.0));
        // Net of the cache: the first half's peak 58, the second's 49.
        assert_eq!(growth_net_of_cache(&samples), Some(49.0 / 58.0));
        // The first scrape before the cache's series exists: an empty cache.
        let mut starting = samples;
        starting[0].order_cache_mib = None;
        assert_eq!(growth_net_of_cache(&starting), Some(49.0 / 58.0));
        let mut late = samples;
        late[1].order_cache_mib = None;
        assert_eq!(growth_net_of_cache(&late), Some(49.0 / 60.0));
        // A daemon that reports no cache, or nothing left of the first half: none.
        assert_eq!(growth_net_of_cache(&samples.map(|x| Sample { order_cache_mib: None, ..x })), None);
        assert_eq!(growth_net_of_cache(&[s(4.0, Some(5.0)), s(6.0, Some(5.0))]), None);
    }
}
