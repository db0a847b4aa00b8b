//! A bare reader at the tip of the orders stream, running beside an orders
//! scenario: one GetRecords per shard per poll interval, as the daemon
//! reads, and nothing else (no decode, no state, no write). Its latency,
//! the event's `ts` to the GetRecords call that returned it, is what the
//! same stack gives any reader in the same run; the daemon's e2e above it
//! is the daemon's own part (decide, the order's read, the transaction).
//!
//! Owns: its shard iterators and its latency samples. Must not: take a
//! lease or checkpoint (it is not a consumer the daemon shares with).

use std::time::Duration;

use anyhow::Context;
use aws_sdk_kinesis::types::ShardIteratorType;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// What the bare reader saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TipReport {
    /// Records of this run it read.
    pub records: u64,
    /// GetRecords calls that failed (each retried after a poll interval).
    pub errors: u64,
    /// Event time to the GetRecords call that returned the record.
    #[serde(flatten)]
    pub e2e: crate::attack::E2e,
}

/// A running bare reader; [`TipReader::finish`] stops it.
pub struct TipReader {
    stop: watch::Sender<bool>,
    shards: JoinSet<anyhow::Result<(Vec<f64>, u64)>>,
}

/// Starts reading every shard of `stream` from its tip (LATEST), keeping the
/// records whose event id holds `run_id`.
pub async fn start(kinesis: &aws_sdk_kinesis::Client, stream: &str, poll: Duration, run_id: &str) -> anyhow::Result<TipReader> {
    let shards = kinesis.list_shards().stream_name(stream).send().await.context("ListShards for the bare tip reader")?;
    let (stop, stopped) = watch::channel(false);
    let mut set = JoinSet::new();
    for shard in shards.shards() {
        let iterator = kinesis
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::Latest)
            .send()
            .await
            .context("GetShardIterator for the bare tip reader")?
            .shard_iterator
            .context("no shard iterator")?;
        let (kinesis, stream, shard_id, run_id, stopped) =
            (kinesis.clone(), stream.to_owned(), shard.shard_id().to_owned(), run_id.to_owned(), stopped.clone());
        set.spawn(async move { read_shard(kinesis, stream, shard_id, iterator, poll, run_id, stopped).await });
    }
    Ok(TipReader { stop, shards: set })
}

impl TipReader {
    /// Stops reading and reports.
    pub async fn finish(mut self) -> anyhow::Result<TipReport> {
        let _ = self.stop.send(true);
        let (mut all, mut errors) = (Vec::new(), 0);
        while let Some(joined) = self.shards.join_next().await {
            let (samples, e) = joined.context("a tip reader task")??;
            all.extend(samples);
            errors += e;
        }
        all.sort_by(f64::total_cmp);
        Ok(TipReport { records: all.len() as u64, errors, e2e: crate::attack::E2e::of(&all) })
    }
}

async fn read_shard(
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    shard_id: String,
    mut iterator: String,
    poll: Duration,
    run_id: String,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let (mut samples, mut errors) = (Vec::new(), 0u64);
    let mut last_sequence: Option<String> = None;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stopped.changed() => return Ok((samples, errors)),
        }
        next += poll;
        let call = kinesis.get_records().shard_iterator(&iterator).limit(10_000);
        match tokio::time::timeout(Duration::from_secs(10), call.send()).await {
            Ok(Ok(out)) => {
                let now = OffsetDateTime::now_utc();
                for record in out.records() {
                    last_sequence = Some(record.sequence_number().to_owned());
                    if let Some(ms) = latency_ms(record.data().as_ref(), &run_id, now) {
                        samples.push(ms);
                    }
                }
                match out.next_shard_iterator {
                    Some(it) => iterator = it,
                    // The shard closed (a reshard): nothing more comes here.
                    None => {
                        let _ = stopped.changed().await;
                        return Ok((samples, errors));
                    }
                }
            }
            failed => {
                errors += 1;
                let why = match failed {
                    Ok(Err(e)) => format!("{}", aws_sdk_kinesis::error::DisplayErrorContext(e)),
                    _ => "timed out after 10 s".to_owned(),
                };
                warn!(shard = %shard_id, error = %why, "The bare tip reader's GetRecords failed; retrying");
                // An expired iterator: go on after the last record read.
                let fresh = match &last_sequence {
                    Some(seq) => kinesis
                        .get_shard_iterator()
                        .stream_name(&stream)
                        .shard_id(&shard_id)
                        .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                        .starting_sequence_number(seq),
                    None => kinesis
                        .get_shard_iterator()
                        .stream_name(&stream)
                        .shard_id(&shard_id)
                        .shard_iterator_type(ShardIteratorType::Latest),
                };
                if let Ok(Ok(out)) = tokio::time::timeout(Duration::from_secs(10), fresh.send()).await
                    && let Some(it) = out.shard_iterator
                {
                    debug!(shard = %shard_id, "The bare tip reader has a fresh iterator");
                    iterator = it;
                }
            }
        }
    }
}

/// Milliseconds from the event's `ts` to `now`, for an event of this run.
fn latency_ms(data: &[u8], run_id: &str, now: OffsetDateTime) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    if !v.get("id")?.as_str()?.contains(run_id) {
        return None;
    }
    let ts = OffsetDateTime::parse(v.get("ts")?.as_str()?, &Rfc3339).ok()?;
    Some((now - ts).as_seconds_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_runs_events_count() {
        let now = OffsetDateTime::parse("2026-12-01T10:00:01.250Z", &Rfc3339).expect("time");
        let mine = br#"{"id":"rabc-o1-e0","ts":"2026-12-01T10:00:01Z","type":"order.placed"}"#;
        assert_eq!(latency_ms(mine, "abc", now), Some(250.0));
        assert_eq!(latency_ms(br#"{"id":"rxyz-o1-e0","ts":"2026-12-01T10:00:01Z"}"#, "abc", now), None);
        assert_eq!(latency_ms(b"not json", "abc", now), None);
    }
}
