//! The rejected-events sink: events that break the contract go, unchanged,
//! to the `cafe-rejected` queue with `reason`, `detail`, `source` and
//! `position` attributes.
//!
//! Owns: that queue's message layout. Must not: drop a rejection; a send
//! that fails is reported so the original is not acknowledged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use tracing::warn;

use super::WriteOutcome;
use crate::aws::{Backoff, describe};
use crate::metrics::{Metrics, SinkLabel, SinkOutcome};
use crate::sources::sqs::queue_url;

const SINK: &str = "rejected";
/// SQS's limit for one message and for one batch, bodies plus attributes.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
const MAX_DETAIL_CHARS: usize = 900;

/// One rejected event.
#[derive(Debug, Clone)]
pub struct RejectedRecord {
    /// The event exactly as received.
    pub body: String,
    /// Reason code.
    pub reason: &'static str,
    /// Human detail (no payload contents).
    pub detail: String,
    /// Input name.
    pub source: String,
    /// Shard and sequence number, or SQS message id.
    pub position: String,
}

/// Sends rejections.
#[derive(Debug, Clone)]
pub struct RejectedSink {
    client: Client,
    url: String,
    metrics: Arc<Metrics>,
}

fn attr(v: &str) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder().data_type("String").string_value(v).build().ok()
}

impl RejectedSink {
    /// Connects to the queue (fails if it does not exist).
    pub async fn connect(client: Client, queue: &str, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let url = queue_url(&client, queue).await?;
        Ok(RejectedSink { client, url, metrics })
    }

    /// Sends `records`, returning an outcome for each, in order.
    pub async fn send(&self, records: &[RejectedRecord]) -> Vec<WriteOutcome> {
        if records.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let mut outcomes = vec![WriteOutcome::Failed; records.len()];
        let mut batch: Vec<usize> = Vec::new();
        let mut bytes = 0;
        for (i, r) in records.iter().enumerate() {
            let size = r.body.len() + r.detail.len() + r.source.len() + r.position.len() + 256;
            if !batch.is_empty() && (batch.len() == 10 || bytes + size > MAX_BATCH_BYTES) {
                self.send_batch(records, &batch, &mut outcomes).await;
                batch.clear();
                bytes = 0;
            }
            batch.push(i);
            bytes += size;
        }
        if !batch.is_empty() {
            self.send_batch(records, &batch, &mut outcomes).await;
        }
        self.metrics.sink_write_duration.get_or_create(&SinkLabel { sink: SINK }).observe(started.elapsed().as_secs_f64());
        outcomes
    }

    async fn send_batch(&self, records: &[RejectedRecord], batch: &[usize], outcomes: &mut [WriteOutcome]) {
        let backoff = Backoff { base: Duration::from_millis(50), max: Duration::from_secs(2) };
        let mut pending: Vec<usize> = batch.to_vec();
        for attempt in 0..6 {
            let entries: Vec<_> = pending
                .iter()
                .filter_map(|&i| {
                    let r = &records[i];
                    let detail: String = r.detail.chars().take(MAX_DETAIL_CHARS).collect();
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&r.body)
                        .set_message_attributes(Some(
                            [("reason", r.reason), ("detail", detail.as_str()), ("source", &r.source), ("position", &r.position)]
                                .into_iter()
                                .filter(|(_, v)| !v.is_empty())
                                .filter_map(|(k, v)| Some((k.to_owned(), attr(v)?)))
                                .collect(),
                        ))
                        .build()
                        .ok()
                })
                .collect();
            match self.client.send_message_batch().queue_url(&self.url).set_entries(Some(entries)).send().await {
                Ok(out) => {
                    let failed: Vec<usize> = out.failed.iter().filter_map(|f| f.id.parse().ok()).collect();
                    for &i in &pending {
                        if !failed.contains(&i) {
                            outcomes[i] = WriteOutcome::Written;
                        }
                    }
                    pending = failed;
                    if pending.is_empty() {
                        self.metrics.sink_requests.get_or_create(&SinkOutcome { sink: SINK, outcome: "ok" }).inc();
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %describe(&e), attempt, "Sending rejections failed, retrying")
                }
            }
            self.metrics.sink_requests.get_or_create(&SinkOutcome { sink: SINK, outcome: "retry" }).inc();
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
        self.metrics.sink_requests.get_or_create(&SinkOutcome { sink: SINK, outcome: "failed" }).inc();
        warn!(records = pending.len(), "Rejections not sent; the originals will be redelivered");
    }
}
