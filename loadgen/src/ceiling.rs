//! The CPU-bound ceiling of a run: what the daemon's kernel would do on the
//! cores the rest of the machine left it, in the same run. A scenario whose
//! daemon work is CPU-bound (menu-sync) is judged on the local stack by its
//! drain next to that ceiling, not by an absolute time that would measure
//! the machine and the emulators.
//!
//! - The rest of the machine: the CPU time every process took over the run
//!   (`/proc/stat`) less the daemon's own (`process_cpu_seconds_total` on
//!   its admin endpoint). It counts the emulators and the loadgen's own
//!   sending: the daemon shares the machine with both.
//! - The kernel: `pipeline`'s decode and menu digest timed here on one
//!   thread over the run's own bodies, right after the run.
//!
//! Owns: reading the machine's and the daemon's CPU and timing the kernel.
//! Must not: check the daemon's output with the daemon's code (the kernel
//! is timed for its speed only; every value is verified elsewhere).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pipeline::event::{Body, decode};

/// CPU time read at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    /// Busy CPU-seconds of the whole machine since boot.
    machine_secs: f64,
    /// The daemon's CPU-seconds since it started.
    daemon_secs: f64,
}

/// The machine's CPUs over a span of a run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CoresLeft {
    /// CPUs of the machine (`/proc/stat`).
    pub cores: f64,
    /// Cores the daemon used on average.
    pub daemon: f64,
    /// Cores everything else used on average (emulators, loadgen, noise).
    pub others: f64,
    /// Cores left to the daemon: `cores - others`, at least a twentieth of one.
    pub left: f64,
}

/// Reads the machine's busy CPU time and the daemon's, whose admin endpoint
/// is `admin` (`host:port`).
pub async fn mark(admin: &str) -> anyhow::Result<CpuMark> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat (the ceiling needs Linux)")?;
    let (machine_secs, _) = machine_busy(&stat).context("no cpu line in /proc/stat")?;
    let daemon_secs = daemon_cpu(admin).await?;
    Ok(CpuMark { at: Instant::now(), machine_secs, daemon_secs })
}

/// Cores left to the daemon between two marks.
pub fn cores_left(from: &CpuMark, to: &CpuMark) -> anyhow::Result<CoresLeft> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let (_, cores) = machine_busy(&stat).context("no cpu line in /proc/stat")?;
    Ok(split(cores, to.at.duration_since(from.at), to.machine_secs - from.machine_secs, to.daemon_secs - from.daemon_secs))
}

fn split(cores: usize, wall: Duration, machine: f64, daemon: f64) -> CoresLeft {
    let wall = wall.as_secs_f64().max(1e-3);
    let cores = cores as f64;
    let others = ((machine - daemon) / wall).clamp(0.0, cores);
    CoresLeft { cores, daemon: (daemon / wall).clamp(0.0, cores), others, left: (cores - others).max(0.05) }
}

/// (busy CPU-seconds since boot, number of CPUs) from `/proc/stat`; busy is
/// everything but idle and iowait, in the kernel's USER_HZ of 100.
fn machine_busy(stat: &str) -> Option<(f64, usize)> {
    let total = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = total.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: f64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    let cpus = stat.lines().filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)).count();
    Some((busy / 100.0, cpus.max(1)))
}

/// `process_cpu_seconds_total` from the daemon's `/metrics`.
pub async fn daemon_cpu(admin: &str) -> anyhow::Result<f64> {
    let text = daemon_metrics(admin).await?;
    metric(&text, "process_cpu_seconds_total").with_context(|| format!("no process_cpu_seconds_total in http://{admin}/metrics"))
}

/// The daemon's metrics page, from its admin address.
pub async fn daemon_metrics(admin: &str) -> anyhow::Result<String> {
    let url = format!("http://{admin}/metrics");
    Ok(reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("reading the daemon's metrics from {url} (set --daemon-admin to its admin.listen)"))?
        .text()
        .await?)
}

/// An unlabelled sample's value on a metrics page.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}

/// Mean CPU-seconds of the menu kernel per item (decode, image check, JSON
/// rounds, kcal) over `bodies`, on one thread: the faster of two passes
/// (the first also pays for cold caches and a fresh allocator's pages).
pub fn menu_kernel_secs(bodies: &[String], json_rounds: u32) -> anyhow::Result<f64> {
    if bodies.is_empty() {
        bail!("no item to time");
    }
    let mut best = f64::INFINITY;
    for _ in 0..2 {
        let started = Instant::now();
        for body in bodies {
            let event = decode(body.as_bytes()).map_err(|r| anyhow::anyhow!("a sent item does not decode: {r:?}"))?;
            let Body::MenuItemUpserted(item) = event.body else { bail!("a sent item is not a menu item") };
            std::hint::black_box(pipeline::menu::digest(&item, json_rounds).map(|d| d.image_ok).ok());
        }
        best = best.min(started.elapsed().as_secs_f64() / bodies.len() as f64);
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 20 30 1000 50 5 5 10 0 0\ncpu0 50 10 15 500 25 2 3 5 0 0\ncpu1 50 10 15 500 25 3 2 5 0 0\nintr 1\n";
        assert_eq!(machine_busy(stat), Some((1.7, 2)));
    }

    #[test]
    fn the_daemon_is_not_counted_among_the_others() {
        // 2 cores over 10 s: 12 CPU-s busy, 9 of them the daemon's.
        let c = split(2, Duration::from_secs(10), 12.0, 9.0);
        assert!((c.others - 0.3).abs() < 1e-9 && (c.left - 1.7).abs() < 1e-9 && (c.daemon - 0.9).abs() < 1e-9, "{c:?}");
        // Others busy on every core: a twentieth of a core is still left.
        assert_eq!(split(2, Duration::from_secs(1), 5.0, 0.0).left, 0.05);
    }

    #[tokio::test]
    async fn an_unreachable_daemon_admin_is_an_error_that_names_the_option() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
        let err = mark(&format!("127.0.0.1:{port}")).await.expect_err("nothing listens there");
        assert!(format!("{err:#}").contains("--daemon-admin"), "{err:#}");
    }

    #[test]
    fn reads_a_counter_by_its_exact_name() {
        let text = "process_cpu_seconds_total_x 5\nprocess_cpu_seconds_total 12.5\n";
        assert_eq!(metric(text, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(metric(text, "process_resident_memory_bytes"), None);
    }
}
