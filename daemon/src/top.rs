//! `cafe-streamd top`: a live view of a running daemon, read from its
//! metrics endpoint: rates in and out per source, e2e p99, rejects, Kinesis
//! lag and leases, the Redshift backlog, CPU pool depth, process CPU and
//! RSS.
//!
//! Owns: parsing the Prometheus text exposition it needs and rendering two
//! scrapes `secs` apart as text. Must not: reach into the daemon other than
//! through `/metrics` (it works on any host that can reach the endpoint).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Samples of one scrape: (metric name, sorted labels) -> value.
pub type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Parses the text exposition (comments and malformed lines are skipped).
pub fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some((s, v)) => (s, v),
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut l: Vec<(String, String)> = labels
            .split("\",")
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned())))
            .collect();
        l.sort();
        out.insert((name.to_owned(), l), value);
    }
    out
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
    labels.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str())
}

/// Sum of `name` by the value of label `by`.
fn by(s: &Samples, name: &str, key: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for ((n, l), v) in s {
        if n == name {
            *out.entry(label(l, key).to_owned()).or_insert(0.0) += v;
        }
    }
    out
}

/// p-quantile from histogram bucket counts (upper bound of the bucket).
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
}

/// e2e p99 per source over the interval (bucket deltas; the whole run if
/// nothing new arrived).
fn p99_by_source(prev: &Samples, cur: &Samples) -> BTreeMap<String, Option<f64>> {
    let mut buckets: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for ((n, l), v) in cur {
        if n != "cafe_pipeline_e2e_latency_seconds_bucket" {
            continue;
        }
        let le = match label(l, "le") {
            "+Inf" => f64::INFINITY,
            x => x.parse().unwrap_or(f64::INFINITY),
        };
        let before = prev.get(&(n.clone(), l.clone())).copied().unwrap_or(0.0);
        buckets.entry(label(l, "source").to_owned()).or_default().push((le, *v - before, *v));
    }
    buckets
        .into_iter()
        .map(|(source, mut b)| {
            b.sort_by(|a, c| a.0.total_cmp(&c.0));
            let delta: Vec<(f64, f64)> = b.iter().map(|(le, d, _)| (*le, *d)).collect();
            let whole: Vec<(f64, f64)> = b.iter().map(|(le, _, c)| (*le, *c)).collect();
            (source, quantile(&delta, 0.99).or_else(|| quantile(&whole, 0.99)))
        })
        .collect()
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("<= {:.0} ms", x * 1000.0),
        Some(_) => "> 300 s".into(),
        None => "-".into(),
    }
}

/// Renders two scrapes `secs` apart.
pub fn render(prev: &Samples, cur: &Samples, secs: f64) -> String {
    let rate = |name: &str, key: &str| -> BTreeMap<String, f64> {
        let (a, b) = (by(prev, name, key), by(cur, name, key));
        b.iter().map(|(k, v)| (k.clone(), (v - a.get(k).copied().unwrap_or(0.0)) / secs)).collect()
    };
    let mut out = String::new();
    let version = cur
        .keys()
        .find(|(n, _)| n == "cafe_build_info")
        .map(|(_, l)| format!("{} ({})", label(l, "version"), label(l, "commit")));
    out.push_str(&format!("cafe-streamd {}   every {secs:.0} s\n\n", version.unwrap_or_default()));
    out.push_str(&format!("{:<28} {:>10} {:>10} {:>10} {:>14}\n", "source", "in/s", "acked/s", "in flight", "e2e p99"));
    let received = rate("cafe_source_received_messages_total", "source");
    let acked = rate("cafe_source_acked_messages_total", "source");
    let inflight = by(cur, "cafe_source_inflight_messages", "source");
    let p99 = p99_by_source(prev, cur);
    let mut sources: Vec<&String> = received.keys().chain(p99.keys()).collect();
    sources.sort();
    sources.dedup();
    for s in sources {
        out.push_str(&format!(
            "{:<28} {:>10.1} {:>10.1} {:>10.0} {:>14}\n",
            s,
            received.get(s).copied().unwrap_or(0.0),
            acked.get(s).copied().unwrap_or(0.0),
            inflight.get(s).copied().unwrap_or(0.0),
            ms(p99.get(s).copied().flatten())
        ));
    }
    let outcomes = rate("cafe_pipeline_events_total", "outcome");
    let line: Vec<String> = outcomes.iter().filter(|(_, v)| **v > 0.0).map(|(k, v)| format!("{k} {v:.1}/s")).collect();
    out.push_str(&format!("\nevents: {}\n", if line.is_empty() { "idle".into() } else { line.join(", ") }));
    let rejects = rate("cafe_pipeline_rejected_events_total", "reason");
    let line: Vec<String> = rejects.iter().filter(|(_, v)| **v > 0.0).map(|(k, v)| format!("{k} {v:.1}/s")).collect();
    out.push_str(&format!("rejects: {}\n", if line.is_empty() { "none".into() } else { line.join(", ") }));
    let lag = by(cur, "cafe_kinesis_behind_latest_seconds", "shard");
    let leases: f64 = by(cur, "cafe_leases_held", "source").values().sum();
    let worst = lag.iter().max_by(|a, b| a.1.total_cmp(b.1));
    out.push_str(&format!(
        "kinesis: {leases:.0} leases held, {} shards read, most behind {}\n",
        lag.len(),
        worst.map_or("-".into(), |(s, v)| format!("{s} {v:.1} s"))
    ));
    let get = |name: &str| cur.iter().find(|((n, _), _)| n == name).map(|(_, v)| *v);
    out.push_str(&format!(
        "redshift mirror: {} rows pending, oldest {} s\n",
        get("cafe_mirror_pending_rows").map_or("-".into(), |v| format!("{v:.0}")),
        get("cafe_mirror_oldest_pending_seconds").map_or("-".into(), |v| format!("{v:.1}"))
    ));
    let cpu = |s: &Samples| s.iter().find(|((n, _), _)| n == "process_cpu_seconds_total").map(|(_, v)| *v);
    let cpu_rate = cpu(cur).zip(cpu(prev)).map(|(b, a)| (b - a) / secs * 100.0);
    out.push_str(&format!(
        "cpu pool: {} batches queued   process: {} CPU, {} RSS\n",
        get("cafe_rayon_queue_depth_batches").map_or("-".into(), |v| format!("{v:.0}")),
        cpu_rate.map_or("-".into(), |v| format!("{v:.0}%")),
        get("process_resident_memory_bytes").map_or("-".into(), |v| format!("{:.0} MiB", v / 1_048_576.0))
    ));
    out
}

/// GET `/metrics` from `addr` (plain HTTP on the admin port).
pub async fn scrape(addr: &str) -> anyhow::Result<Samples> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr} timed out"))?
        .map_err(|e| anyhow::anyhow!("cannot reach the metrics endpoint {addr} (admin.listen): {e}"))?;
    stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut body))
        .await
        .map_err(|_| anyhow::anyhow!("reading {addr}/metrics timed out"))??;
    let (head, text) = body.split_once("\r\n\r\n").unwrap_or(("", ""));
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{addr}/metrics answered: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(parse(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "# HELP x\ncafe_source_received_messages_total{source=\"q\"} 10\ncafe_pipeline_e2e_latency_seconds_bucket{le=\"0.1\",source=\"q\"} 5\ncafe_pipeline_e2e_latency_seconds_bucket{le=\"1.0\",source=\"q\"} 10\ncafe_pipeline_e2e_latency_seconds_bucket{le=\"+Inf\",source=\"q\"} 10\n";
    const B: &str = "cafe_source_received_messages_total{source=\"q\"} 30\ncafe_pipeline_e2e_latency_seconds_bucket{le=\"0.1\",source=\"q\"} 5\ncafe_pipeline_e2e_latency_seconds_bucket{le=\"1.0\",source=\"q\"} 30\ncafe_pipeline_e2e_latency_seconds_bucket{le=\"+Inf\",source=\"q\"} 30\ncafe_leases_held{source=\"s\"} 3\ncafe_kinesis_behind_latest_seconds{shard=\"shardId-1\",source=\"s\"} 2.5\nprocess_resident_memory_bytes 31457280\n";

    #[test]
    fn rates_and_interval_p99_from_two_scrapes() {
        let (a, b) = (parse(A), parse(B));
        let text = render(&a, &b, 2.0);
        assert!(text.contains("q                                  10.0"), "{text}");
        // All 20 new samples fell in the 1 s bucket: the interval's p99 is that bucket.
        assert!(text.contains("<= 1000 ms"), "{text}");
        assert!(text.contains("3 leases held, 1 shards read, most behind shardId-1 2.5 s"), "{text}");
        assert!(text.contains("30 MiB RSS"), "{text}");
    }
}
