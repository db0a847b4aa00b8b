//! The rejected-events sink: events that break the contract go, unchanged,
//! to the `cafe-rejected` queue with `reason`, `detail`, `source` and
//! `position` attributes.
//!
//! Owns: that queue's message layout, and its ledger. Must not: drop a
//! rejection; a send that fails is reported so the original is not
//! acknowledged.
//!
//! Idempotent by key: an SQS queue has no conditional write, so each
//! rejection sent is recorded in the event ledger (`cafe-events`, key
//! `rejected/<source>/<position>`, with the ledger's TTL) and a rejection
//! whose key is already there is not sent again. A redelivered message, a
//! batch replayed from a checkpoint, or a FIFO message held back behind a
//! failure therefore reaches the queue once. The one gap: a crash between
//! the send and the ledger write sends that rejection again on replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use pipeline::decided::RejectedEvent;

use crate::aws::{AwsError, Backoff, describe, retry_failed_entries};
use crate::internal_events::{
    InternalEvent, RejectionTruncated, RejectionsNotRecorded, Sink, SinkGaveUp, SinkRequest, SinkRequestOutcome, SinkRetrying,
    SinkWriteFinished,
};
use crate::metrics::Metrics;
use crate::sinks::WriteOutcome;
use crate::sinks::dynamodb::{EVENT_EXPIRES, LEDGER_TTL_SECS};
use crate::sources::sqs::queue_url;

pub mod component;
pub mod config;
pub mod encode;

/// SQS's limit for one batch, bodies plus attributes.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The rejected queue's `MaximumMessageSize` when it cannot be read: the
/// smallest default SQS has had.
const FALLBACK_MESSAGE_BYTES: usize = 256 * 1024;

/// Sends rejections.
#[derive(Debug, Clone)]
pub struct RejectedSink {
    client: Client,
    url: String,
    metrics: Arc<Metrics>,
    /// The queue's `MaximumMessageSize`.
    max_message_bytes: usize,
    /// The event ledger: (client, table).
    ledger: Option<(aws_sdk_dynamodb::Client, String)>,
}

/// A sink whose every send is refused at once (nothing listens on port
/// 1), with no retries and no ledger: for unit tests of what its callers
/// do when SQS fails.
#[cfg(test)]
pub(crate) fn refusing_sink() -> RejectedSink {
    RejectedSink {
        client: Client::new(&crate::sinks::refusing_sdk_config()),
        url: "http://127.0.0.1:1/000000000000/cafe-rejected".into(),
        metrics: Arc::new(Metrics::new()),
        max_message_bytes: FALLBACK_MESSAGE_BYTES,
        ledger: None,
    }
}

/// The ledger key of a rejection: where the rejected input was.
pub fn ledger_key(r: &RejectedEvent) -> String {
    format!("rejected/{}/{}", r.source, r.position)
}

fn attr(v: &str) -> Option<MessageAttributeValue> {
    MessageAttributeValue::builder().data_type("String").string_value(v).build().ok()
}

impl RejectedSink {
    /// Connects to the queue (fails if it does not exist).
    pub async fn connect(client: Client, queue: &str, metrics: Arc<Metrics>) -> Result<Self, AwsError> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let url = queue_url(&client, queue).await?;
        let read =
            client.get_queue_attributes().queue_url(&url).attribute_names(QueueAttributeName::MaximumMessageSize).send().await;
        let max_message_bytes = match read {
            Ok(out) => out
                .attributes
                .and_then(|a| a.get(&QueueAttributeName::MaximumMessageSize).and_then(|v| v.parse().ok()))
                .unwrap_or(FALLBACK_MESSAGE_BYTES)
                .min(MAX_BATCH_BYTES),
            Err(e) => {
                let error = format!("reading MaximumMessageSize of {queue}: {}", describe(&e));
                SinkRetrying { sink: Sink::Rejected, what: "Reading the rejected queue's size limit", attempt: 0, error: &error }
                    .emit(&metrics);
                FALLBACK_MESSAGE_BYTES
            }
        };
        Ok(RejectedSink { client, url, metrics, max_message_bytes, ledger: None })
    }

    fn count(&self, outcome: SinkRequestOutcome) {
        SinkRequest { sink: Sink::Rejected, outcome }.emit(&self.metrics);
    }

    /// Records every rejection sent in the event ledger `table`, and sends
    /// none whose key is there already.
    pub fn with_ledger(mut self, client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        self.ledger = Some((client, table.to_owned()));
        self
    }

    /// The keys of `keys` the ledger holds. A ledger that cannot be read
    /// holds nothing: the rejections are sent (at least once).
    async fn already_sent(&self, keys: &[String]) -> HashSet<String> {
        let mut out = HashSet::new();
        let Some((ddb, table)) = &self.ledger else { return out };
        let mut distinct: Vec<&String> = keys.iter().collect();
        distinct.sort();
        distinct.dedup();
        for part in distinct.chunks(100) {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(
                    part.iter().map(|k| HashMap::from([("event_id".to_owned(), AttributeValue::S((*k).clone()))])).collect(),
                ))
                .consistent_read(true)
                .projection_expression("event_id")
                .build();
            let Ok(mut request) = request else { continue };
            for attempt in 0..3u32 {
                match ddb.batch_get_item().request_items(table, request.clone()).send().await {
                    Ok(resp) => {
                        for item in resp.responses.and_then(|mut r| r.remove(table)).unwrap_or_default() {
                            if let Some(AttributeValue::S(k)) = item.get("event_id") {
                                out.insert(k.clone());
                            }
                        }
                        match resp.unprocessed_keys.and_then(|mut u| u.remove(table)) {
                            Some(more) if !more.keys().is_empty() => request = more,
                            _ => break,
                        }
                    }
                    Err(e) => {
                        let error = describe(&e);
                        SinkRetrying { sink: Sink::Rejected, what: "Reading the rejection ledger", attempt, error: &error }
                            .emit(&self.metrics);
                        tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                    }
                }
            }
        }
        out
    }

    /// Records `keys` as sent. Best effort: a key not recorded only means
    /// that rejection may be sent again on a replay.
    async fn record_sent(&self, keys: Vec<String>) {
        let Some((ddb, table)) = &self.ledger else { return };
        let expires = time::OffsetDateTime::now_utc().unix_timestamp() + LEDGER_TTL_SECS;
        let mut distinct = keys;
        distinct.sort();
        distinct.dedup();
        for part in distinct.chunks(25) {
            let mut writes: Vec<WriteRequest> = part
                .iter()
                .filter_map(|k| {
                    let put = PutRequest::builder()
                        .item("event_id", AttributeValue::S(k.clone()))
                        .item("type", AttributeValue::S("rejected".into()))
                        .item(EVENT_EXPIRES, AttributeValue::N(expires.to_string()))
                        .build()
                        .ok()?;
                    Some(WriteRequest::builder().put_request(put).build())
                })
                .collect();
            for attempt in 0..4u32 {
                match ddb.batch_write_item().request_items(table, writes.clone()).send().await {
                    Ok(resp) => match resp.unprocessed_items.and_then(|mut u| u.remove(table)) {
                        Some(more) if !more.is_empty() => writes = more,
                        _ => {
                            writes.clear();
                            break;
                        }
                    },
                    Err(e) => {
                        let error = describe(&e);
                        SinkRetrying { sink: Sink::Rejected, what: "Recording rejections in the ledger", attempt, error: &error }
                            .emit(&self.metrics);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            if !writes.is_empty() {
                RejectionsNotRecorded { count: writes.len() }.emit(&self.metrics);
            }
        }
    }

    /// Sends `records`, returning an outcome for each, in order.
    pub async fn send(&self, records: &[RejectedEvent]) -> Vec<WriteOutcome> {
        if records.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let mut outcomes = vec![WriteOutcome::Failed; records.len()];
        let keys: Vec<String> = records.iter().map(ledger_key).collect();
        let sent_before = self.already_sent(&keys).await;
        let mut batch: Vec<(usize, encode::Encoded)> = Vec::new();
        let mut bytes = 0;
        for (i, r) in records.iter().enumerate() {
            if sent_before.contains(&keys[i]) {
                outcomes[i] = WriteOutcome::Duplicate;
                continue;
            }
            let message = encode::encode(r, self.max_message_bytes);
            if !batch.is_empty() && (batch.len() == 10 || bytes + message.bytes > MAX_BATCH_BYTES) {
                self.send_batch(&batch, &mut outcomes).await;
                batch.clear();
                bytes = 0;
            }
            bytes += message.bytes;
            batch.push((i, message));
        }
        if !batch.is_empty() {
            self.send_batch(&batch, &mut outcomes).await;
        }
        let newly: Vec<String> =
            keys.into_iter().zip(&outcomes).filter(|(_, o)| **o == WriteOutcome::Written).map(|(k, _)| k).collect();
        if !newly.is_empty() {
            self.record_sent(newly).await;
        }
        SinkWriteFinished { sink: Sink::Rejected, elapsed: started.elapsed() }.emit(&self.metrics);
        outcomes
    }

    async fn send_batch(&self, batch: &[(usize, encode::Encoded)], outcomes: &mut [WriteOutcome]) {
        let backoff = Backoff { base: Duration::from_millis(50), max: Duration::from_secs(2) };
        let unsent = retry_failed_entries(batch.len(), 6, backoff, |pending: Vec<usize>, attempt| async move {
            let entries: Vec<_> = pending
                .iter()
                .filter_map(|&k| {
                    let message = &batch[k].1;
                    SendMessageBatchRequestEntry::builder()
                        .id(k.to_string())
                        .message_body(&message.body)
                        .set_message_attributes(Some(
                            message.attributes.iter().filter_map(|(name, v)| Some(((*name).to_owned(), attr(v)?))).collect(),
                        ))
                        .build()
                        .ok()
                })
                .collect();
            let what = "Sending rejections";
            match self.client.send_message_batch().queue_url(&self.url).set_entries(Some(entries)).send().await {
                Ok(out) if out.failed.is_empty() => {
                    self.count(SinkRequestOutcome::Ok);
                    Vec::new()
                }
                Ok(out) => {
                    let codes: Vec<&str> = out.failed.iter().map(|f| f.code()).collect();
                    let error = format!("{} of {} refused: {codes:?}", codes.len(), pending.len());
                    SinkRetrying { sink: Sink::Rejected, what, attempt, error: &error }.emit(&self.metrics);
                    out.failed.iter().filter_map(|f| f.id.parse().ok()).collect()
                }
                Err(e) => {
                    SinkRetrying { sink: Sink::Rejected, what, attempt, error: &describe(&e) }.emit(&self.metrics);
                    pending
                }
            }
        })
        .await;
        for (k, (i, message)) in batch.iter().enumerate() {
            if !unsent.contains(&k) {
                outcomes[*i] = WriteOutcome::Written;
                if let Some(full) = message.truncated_from {
                    let position = message.attributes.iter().find(|(n, _)| *n == "position").map_or("", |(_, v)| v.as_str());
                    let source = message.attributes.iter().find(|(n, _)| *n == "source").map_or("", |(_, v)| v.as_str());
                    RejectionTruncated { source, full_bytes: full, position }.emit(&self.metrics);
                }
            }
        }
        if !unsent.is_empty() {
            SinkGaveUp { sink: Sink::Rejected, what: "Sending rejections", records: unsent.len(), error: None }
                .emit(&self.metrics);
        }
    }
}
