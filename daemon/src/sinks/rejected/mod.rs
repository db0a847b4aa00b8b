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
//! failure therefore reaches the queue once. The gaps: a crash between the
//! send and the ledger write, or a shutdown that abandons the ledger write
//! (past the point of retrying, see `aws::Stopping`), sends that rejection
//! again on replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use pipeline::decided::RejectedEvent;

use crate::aws::{AwsError, Backoff, Stopping, describe, retry_failed_entries};
use crate::internal_events::{
    InternalEvent, RejectionTruncated, RejectionsNotRecorded, Sink, SinkGaveUp, SinkRequest, SinkRequestOutcome, SinkRetrying,
    SinkWriteFinished, SinkWrote,
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
    /// In a shutdown: past the point of retrying no call is retried, and
    /// `aws::AFTER_STOP` later one still waiting is abandoned (a send: the
    /// rejection is reported not sent, so its input is not acknowledged; a
    /// ledger record: that rejection may be sent again on a replay).
    stop: Stopping,
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
        stop: Stopping::default(),
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
        Ok(RejectedSink { client, url, metrics, max_message_bytes, ledger: None, stop: Stopping::default() })
    }

    /// Gives up retrying, then waiting, at `stop`'s points (see the field).
    pub fn with_stopping(mut self, stop: Stopping) -> Self {
        self.stop = stop;
        self
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
            let backoff = Backoff { base: Duration::from_millis(50), max: Duration::from_millis(200) };
            for attempt in 0..3u32 {
                // Not read once calls are abandoned: the rejections are
                // sent (at least once).
                let Some(result) = self.stop.call(ddb.batch_get_item().request_items(table, request.clone()).send()).await else {
                    break;
                };
                match result {
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
                    }
                }
                // Unprocessed keys (throttling) or an error: again after
                // the backoff.
                if !self.stop.pause(backoff.delay(attempt)).await {
                    break;
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
            let backoff = Backoff { base: Duration::from_millis(50), max: Duration::from_millis(400) };
            for attempt in 0..4u32 {
                let Some(result) = self.stop.call(ddb.batch_write_item().request_items(table, writes.clone()).send()).await
                else {
                    break;
                };
                match result {
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
                if !self.stop.pause(backoff.delay(attempt)).await {
                    break;
                }
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
        let unsent = retry_failed_entries(batch.len(), 6, backoff, &self.stop, |pending: Vec<usize>, attempt| async move {
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
                    SinkWrote { sink: Sink::Rejected }.emit(&self.metrics);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;

    /// An SQS client whose endpoint never answers.
    fn silent_sqs(calls: &Arc<AtomicUsize>) -> Client {
        Client::new(&crate::sinks::silent_sdk_config(calls))
    }

    /// In a shutdown, a send to a queue that does not answer is abandoned
    /// when calls stop being waited for, and its rejections reported not
    /// sent (their inputs are not acknowledged): it cannot hold the drain
    /// past the grace period. Before, it waited for each call's timeout,
    /// six times.
    #[tokio::test]
    async fn a_send_to_a_silent_queue_gives_up_when_retrying_stops() {
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = Stopping::default();
        let sink = RejectedSink { client: silent_sqs(&calls), ..refusing_sink() }.with_stopping(stop.clone());
        let rejected = |position: &str| RejectedEvent {
            body: b"{}".to_vec(),
            reason: "schema",
            detail: "test".into(),
            source: "payments".into(),
            position: position.into(),
        };
        let records = [rejected("m1"), rejected("m2")];
        let send = tokio::spawn(async move { sink.send(&records).await });
        while calls.load(Relaxed) == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        stop.retrying.cancel();
        stop.calls.cancel();
        let outcomes = tokio::time::timeout(std::time::Duration::from_secs(10), send)
            .await
            .expect("given up when retrying stops")
            .expect("no panic");
        assert_eq!(outcomes, [WriteOutcome::Failed, WriteOutcome::Failed]);
        assert_eq!(calls.load(Relaxed), 1, "no call after the stop");
    }

    /// With the event ledger silent too, and retrying already stopped when
    /// the send begins: the ledger's read is given up when calls stop
    /// being waited for, and no send is made after that: the calls share
    /// one allowance, not one each; nothing is retried.
    #[tokio::test]
    async fn a_silent_ledger_and_queue_hold_a_send_no_longer_than_the_allowance_after_a_stop() {
        let calls = Arc::new(AtomicUsize::new(0));
        let ddb = aws_sdk_dynamodb::Client::new(&crate::sinks::silent_sdk_config(&calls));
        // As topology does: calls are abandoned AFTER_STOP after retrying stops.
        let stop = Stopping::default();
        stop.retrying.cancel();
        let abandon = stop.calls.clone();
        let allowance = tokio::spawn(async move {
            tokio::time::sleep(crate::aws::AFTER_STOP).await;
            abandon.cancel();
        });
        let sink =
            RejectedSink { client: silent_sqs(&calls), ..refusing_sink() }.with_ledger(ddb, "cafe-events").with_stopping(stop);
        let record = RejectedEvent {
            body: b"{}".to_vec(),
            reason: "schema",
            detail: "test".into(),
            source: "payments".into(),
            position: "m1".into(),
        };
        let started = std::time::Instant::now();
        let outcomes = tokio::time::timeout(std::time::Duration::from_secs(10), sink.send(std::slice::from_ref(&record)))
            .await
            .expect("the silent calls are given up");
        assert_eq!(outcomes, [WriteOutcome::Failed]);
        assert_eq!(calls.load(Relaxed), 1, "the ledger's read; no send is made once calls are abandoned");
        let took = started.elapsed();
        assert!(took >= crate::aws::AFTER_STOP && took < crate::aws::AFTER_STOP * 3 / 2, "one allowance in all: {took:?}");
        allowance.await.expect("no panic");
    }
}
