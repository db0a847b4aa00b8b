//! The SQS source: long-polling receivers, visibility extension for work in
//! flight, and the acknowledger that deletes only what sinks confirmed.
//!
//! Owns: every SQS call made on an input queue, the stage loops between the
//! receivers and the router (`stages.rs`), and what to acknowledge once a
//! batch's outcomes are known (`ack.rs`). Must not: decode events or decide
//! outcomes; it learns them from the router.
//!
//! FIFO ordering: SQS delivers no further message of a MessageGroupId while
//! one is in flight, so the order of a group is kept as long as a group's
//! messages are applied in the order received and a message that failed
//! holds back the rest of its group, whatever their outcomes (`ack.rs`), and
//! is made visible again after `retry_delay_secs` rather than deleted.

pub mod ack;
pub mod component;
pub mod config;
pub mod stages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::aws::{AwsError, Backoff, ErrorClass, Stopping, classify, describe, retry_failed_entries};
use crate::config::SqsSourceConfig;
use crate::internal_events::{
    Acknowledged, InFlight, InternalEvent, QueueDepth, Received, SourceError, SourceErrorKind, VisibilityExtended,
};
use crate::metrics::Metrics;

/// One received message.
#[derive(Debug, Clone)]
pub struct SqsMessage {
    /// SQS message id: the event's `position` in rejections.
    pub message_id: String,
    /// Handle for delete and visibility changes.
    pub receipt_handle: String,
    /// FIFO MessageGroupId, if any.
    pub group_id: Option<String>,
    /// The body as sent.
    pub body: String,
    /// How often SQS has delivered it (1 on first delivery).
    pub receive_count: u32,
    /// When this daemon received it.
    pub received_at: Instant,
}

/// What to do with a message once its outcome is known.
#[derive(Debug, Clone)]
pub enum Ack {
    /// Every write is durable: delete it.
    Done {
        /// The message's receipt handle.
        receipt_handle: String,
    },
    /// Not processed: make it visible again after the retry delay.
    Retry {
        /// The message's receipt handle.
        receipt_handle: String,
    },
}

/// Resolves a queue name or URL to its URL. A transient failure is
/// retried a few times with backoff (the SDK's own retries are off); a
/// missing queue is not.
pub async fn queue_url(client: &Client, name_or_url: &str) -> Result<String, AwsError> {
    if name_or_url.starts_with("https://") || name_or_url.starts_with("http://") {
        return Ok(name_or_url.to_owned());
    }
    let backoff = Backoff { base: Duration::from_millis(200), max: Duration::from_secs(2) };
    let mut attempt = 0;
    let out = loop {
        match client.get_queue_url().queue_name(name_or_url).send().await {
            Ok(out) => break out,
            Err(e) if classify(&e) != ErrorClass::Fatal && attempt + 1 < STARTUP_ATTEMPTS => {
                warn!(queue = %name_or_url, error = %describe(&e), attempt, "GetQueueUrl failed, retrying");
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                return Err(AwsError::sdk(format!("queue {name_or_url:?} (run `cafe-streamd provision` if it is missing)"), &e));
            }
        }
    };
    out.queue_url.ok_or_else(|| AwsError {
        what: format!("queue {name_or_url:?}"),
        class: ErrorClass::Fatal,
        detail: "GetQueueUrl returned no URL".into(),
    })
}

/// ChangeMessageVisibilityBatch calls of one extension pass at once.
const EXTEND_CONCURRENCY: usize = 8;

/// How long past its wait time a long poll under way at the stop is still
/// waited for: SQS answers every poll by then, so one still open is an
/// endpoint that does not answer.
const LATE_POLL_MARGIN: Duration = Duration::from_secs(2);

/// Whether a refused visibility change says the message is not in flight
/// under that receipt handle any more (so extending it again cannot help).
/// `InvalidParameterValue` is SQS's answer past the 12 hours a message may
/// stay in flight (the timeouts asked for are validated).
fn no_longer_in_flight(code: &str) -> bool {
    code.contains("MessageNotInflight") || code.contains("ReceiptHandleIsInvalid") || code.contains("InvalidParameterValue")
}

/// Attempts of a start-up lookup before the daemon gives up starting.
pub const STARTUP_ATTEMPTS: u32 = 5;

/// An input queue.
#[derive(Debug)]
pub struct SqsSource {
    client: Client,
    url: String,
    /// Metric label and `source` attribute of rejections.
    pub name: String,
    config: SqsSourceConfig,
    metrics: Arc<Metrics>,
    /// receipt handle -> when its visibility runs out.
    inflight: Mutex<HashMap<String, Instant>>,
    /// Written while one batch of visibility extensions is sent, read by a
    /// give-back while it sends its own change: an extension must not land
    /// after a give-back (and hide the message again, its group's order with
    /// it). Give-backs run side by side; an extension waits for those under
    /// way, then sends only what is still in flight.
    extending: tokio::sync::RwLock<()>,
}

impl SqsSource {
    /// Connects to the queue (fails if it does not exist).
    pub async fn connect(client: Client, config: SqsSourceConfig, metrics: Arc<Metrics>) -> Result<Self, AwsError> {
        let url = queue_url(&client, &config.queue).await?;
        let name = url.rsplit('/').next().unwrap_or(&config.queue).to_owned();
        Ok(SqsSource {
            client,
            url,
            name,
            config,
            metrics,
            inflight: Mutex::new(HashMap::new()),
            extending: tokio::sync::RwLock::new(()),
        })
    }

    fn visibility(&self) -> Duration {
        Duration::from_secs(u64::from(self.config.visibility_timeout_secs))
    }

    fn set_inflight_gauge(&self, n: usize) {
        InFlight { source: &self.name, count: n }.emit(&self.metrics);
    }

    fn track(&self, receipts: impl IntoIterator<Item = String>) {
        let deadline = Instant::now() + self.visibility();
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        for r in receipts {
            map.insert(r, deadline);
        }
        self.set_inflight_gauge(map.len());
    }

    fn untrack(&self, receipts: &[String]) {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        for r in receipts {
            map.remove(r);
        }
        self.set_inflight_gauge(map.len());
    }

    /// Whether the message of `receipt` is still in flight for this
    /// instance (not acknowledged, and not found expired by an extension).
    pub fn holds(&self, receipt: &str) -> bool {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).contains_key(receipt)
    }

    /// Messages received and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// One receiver: long-polls until `stop`, sending each non-empty receive
    /// downstream. A full channel stops the polling: that is the backpressure.
    pub async fn receive_loop(&self, tx: mpsc::Sender<Vec<SqsMessage>>, stop: CancellationToken) {
        let backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(10) };
        let mut failures = 0u32;
        loop {
            let call = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(self.config.max_messages as i32)
                .wait_time_seconds(self.config.wait_time_secs as i32)
                .visibility_timeout(self.config.visibility_timeout_secs as i32)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send();
            // On shutdown no new poll starts, and a poll under way is waited
            // for (at most its wait time) and what it returns is processed.
            // A poll the client drops is not cancelled at SQS: it stays open
            // there until its wait time ends and takes the first messages
            // that arrive meanwhile, which then stay invisible for a
            // visibility timeout, and in a FIFO queue hold back the rest of
            // their groups. Measured with cold-start (10,000 payments sent
            // right after a restart, 4 receivers, 10 s polls): when the old
            // instance abandoned its idle polls, 143 payments waited out the
            // 30 s visibility timeout (e2e p99 27 s, drain 1.27x a bare
            // client's); with the polls expired before the burst, p99 17.6 s
            // and 1.06x. So an idle daemon's exit takes up to
            // `wait_time_secs` longer (validated to leave 5 s of the grace period); a
            // poll open `LATE_POLL_MARGIN` past that is an endpoint that
            // does not answer, and is dropped.
            if stop.is_cancelled() {
                return;
            }
            let result = tokio::select! {
                biased;
                result = call => result,
                () = self.poll_overdue(&stop) => {
                    warn!(queue = %self.name, "A long poll was not answered within its wait time after the stop; abandoning it (what SQS hands it stays invisible for a visibility timeout)");
                    return;
                }
            };
            let out = match result {
                Ok(out) => {
                    failures = 0;
                    out
                }
                Err(e) => {
                    let class = classify(&e);
                    let kind = if class == ErrorClass::Throttled { SourceErrorKind::Throttled } else { SourceErrorKind::Error };
                    SourceError { source: &self.name, shard: None, kind, error: &describe(&e) }.emit(&self.metrics);
                    let delay = backoff.delay(failures);
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            let now = Instant::now();
            let batch: Vec<SqsMessage> = out
                .messages
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| {
                    let attrs = m.attributes.unwrap_or_default();
                    Some(SqsMessage {
                        message_id: m.message_id.unwrap_or_default(),
                        receipt_handle: m.receipt_handle?,
                        group_id: attrs.get(&MessageSystemAttributeName::MessageGroupId).cloned(),
                        body: m.body.unwrap_or_default(),
                        receive_count: attrs
                            .get(&MessageSystemAttributeName::ApproximateReceiveCount)
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(1),
                        received_at: now,
                    })
                })
                .collect();
            // Empty or not, the receive worked: the input can read.
            Received { source: &self.name, shard: None, count: batch.len() as u64, bytes: None }.emit(&self.metrics);
            if batch.is_empty() {
                continue;
            }
            self.track(batch.iter().map(|m| m.receipt_handle.clone()));
            if tx.send(batch).await.is_err() {
                // Downstream is gone (shutdown): what we hold is redelivered.
                return;
            }
        }
    }

    /// Resolves once `stop` has been cancelled for longer than a poll's
    /// wait time and `LATE_POLL_MARGIN`: any poll started before the stop
    /// should have been answered by then.
    async fn poll_overdue(&self, stop: &CancellationToken) {
        stop.cancelled().await;
        tokio::time::sleep(Duration::from_secs(u64::from(self.config.wait_time_secs)) + LATE_POLL_MARGIN).await;
    }

    /// Keeps in-flight messages invisible while they are worked on, until
    /// `stop`. Extends any message whose visibility ends within half the
    /// timeout.
    pub async fn extend_loop(&self, stop: CancellationToken) {
        let period = (self.visibility() / 4).max(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            let now = Instant::now();
            let due: Vec<String> = {
                let map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
                map.iter()
                    .filter(|(_, deadline)| deadline.saturating_duration_since(now) < self.visibility() / 2)
                    .map(|(r, _)| r.clone())
                    .collect()
            };
            if due.is_empty() {
                continue;
            }
            // One pass at a time, and no give-back while it is under way.
            let _extending = self.extending.write().await;
            // Given back or deleted meanwhile: not ours to extend any more.
            let due: Vec<String> = {
                let map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
                due.into_iter().filter(|r| map.contains_key(r)).collect()
            };
            // Several calls at once: thousands of messages in flight must
            // all be extended well within half a visibility timeout.
            let chunks: Vec<Vec<String>> = due.chunks(10).map(<[String]>::to_vec).collect();
            let calls: Vec<_> = chunks.into_iter().map(|chunk| self.extend_chunk(chunk)).collect();
            futures::stream::iter(calls).buffer_unordered(EXTEND_CONCURRENCY).collect::<Vec<()>>().await;
        }
    }

    /// One ChangeMessageVisibilityBatch of up to ten in-flight messages.
    /// An entry SQS refuses because the message is no longer ours (its
    /// visibility ran out, or it was received again) is forgotten: its
    /// outcome will be acknowledged in vain and SQS redelivers it. Any
    /// other refusal keeps the old deadline and is tried again next period.
    async fn extend_chunk(&self, chunk: Vec<String>) {
        let entries: Vec<_> = chunk
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .visibility_timeout(self.config.visibility_timeout_secs as i32)
                    .build()
                    .ok()
            })
            .collect();
        // The new timeout runs from when SQS got the request, at the
        // latest: count it from before sending.
        let sent_at = Instant::now();
        match self.client.change_message_visibility_batch().queue_url(&self.url).set_entries(Some(entries)).send().await {
            Ok(out) => {
                let mut refused: Vec<usize> = Vec::new();
                let mut gone: Vec<String> = Vec::new();
                for f in &out.failed {
                    let Ok(i) = f.id.parse::<usize>() else { continue };
                    refused.push(i);
                    if no_longer_in_flight(&f.code)
                        && let Some(r) = chunk.get(i)
                    {
                        gone.push(r.clone());
                    }
                }
                let deadline = sent_at + self.visibility();
                let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
                for (_, r) in chunk.iter().enumerate().filter(|(i, _)| !refused.contains(i)) {
                    if let Some(d) = map.get_mut(r) {
                        *d = deadline;
                    }
                }
                drop(map);
                VisibilityExtended { source: &self.name, count: (chunk.len() - refused.len()) as u64 }.emit(&self.metrics);
                if !refused.is_empty() {
                    let codes: Vec<&str> = out.failed.iter().map(|f| f.code.as_str()).collect();
                    let error = format!("{} of {} entries refused ({})", refused.len(), chunk.len(), codes.join(", "));
                    SourceError { source: &self.name, shard: None, kind: SourceErrorKind::Extend, error: &error }
                        .emit(&self.metrics);
                }
                if !gone.is_empty() {
                    warn!(queue = %self.name, messages = gone.len(), "In-flight messages were no longer ours to extend; SQS will redeliver them");
                    self.untrack(&gone);
                }
            }
            Err(e) => {
                let error = describe(&e);
                SourceError { source: &self.name, shard: None, kind: SourceErrorKind::Extend, error: &error }.emit(&self.metrics);
            }
        }
    }

    /// Applies acknowledgements until the channel closes: deletes in batches
    /// of up to ten, several calls at once, and makes retried messages
    /// visible again after the retry delay.
    /// In a shutdown, a delete that failed is not retried past the point
    /// of retrying, nor waited for past `stop.calls` (the messages are
    /// redelivered; the sinks are idempotent).
    pub async fn ack_loop(&self, mut rx: mpsc::Receiver<Vec<Ack>>, concurrency: usize, stop: &Stopping) {
        let mut calls = FuturesUnordered::new();
        let mut open = true;
        while open || !calls.is_empty() {
            tokio::select! {
                acks = rx.recv(), if open && calls.len() < concurrency => match acks {
                    Some(acks) => {
                        let mut done = Vec::new();
                        let mut retry = Vec::new();
                        for a in acks {
                            match a {
                                Ack::Done { receipt_handle } => done.push(receipt_handle),
                                Ack::Retry { receipt_handle } => retry.push(receipt_handle),
                            }
                        }
                        for chunk in done.chunks(10) {
                            calls.push(self.delete(chunk.to_vec(), stop));
                        }
                        for r in retry {
                            calls.push(Box::pin(self.release(r)));
                        }
                    }
                    None => open = false,
                },
                Some(()) = calls.next(), if !calls.is_empty() => {}
            }
        }
        info!(queue = %self.name, "Acknowledger drained");
    }

    fn delete<'a>(
        &'a self,
        receipts: Vec<String>,
        stop: &'a Stopping,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let backoff = Backoff { base: Duration::from_millis(50), max: Duration::from_secs(2) };
            let receipts = &receipts;
            let undeleted = retry_failed_entries(receipts.len(), 6, backoff, stop, |pending: Vec<usize>, attempt| async move {
                let entries: Vec<_> = pending
                    .iter()
                    .filter_map(|&i| {
                        DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(&receipts[i]).build().ok()
                    })
                    .collect();
                match self.client.delete_message_batch().queue_url(&self.url).set_entries(Some(entries)).send().await {
                    Ok(out) => {
                        let failed: Vec<usize> = out.failed.iter().filter_map(|f| f.id.parse().ok()).collect();
                        let ok: Vec<String> =
                            pending.iter().filter(|i| !failed.contains(i)).map(|&i| receipts[i].clone()).collect();
                        Acknowledged { source: &self.name, count: ok.len() as u64 }.emit(&self.metrics);
                        self.untrack(&ok);
                        if !failed.is_empty() {
                            let codes: Vec<&str> = out.failed.iter().map(|f| f.code()).collect();
                            let error =
                                format!("{} of {} deletes refused: {codes:?} (attempt {attempt})", failed.len(), pending.len());
                            SourceError { source: &self.name, shard: None, kind: SourceErrorKind::Delete, error: &error }
                                .emit(&self.metrics);
                        }
                        failed
                    }
                    Err(e) => {
                        let error = format!("{} (attempt {attempt})", describe(&e));
                        SourceError { source: &self.name, shard: None, kind: SourceErrorKind::Delete, error: &error }
                            .emit(&self.metrics);
                        pending
                    }
                }
            })
            .await;
            if !undeleted.is_empty() {
                // Not deleted: SQS redelivers them and the idempotent sinks
                // make the replay a no-op.
                warn!(queue = %self.name, messages = undeleted.len(), "Giving up deleting; they will be redelivered");
                self.untrack(&undeleted.iter().map(|&i| receipts[i].clone()).collect::<Vec<_>>());
            }
        })
    }

    async fn release(&self, receipt: String) {
        // Untracked first, so no later extension picks it up; then after any
        // extension already under way, so this change is the last.
        self.untrack(std::slice::from_ref(&receipt));
        let _after_extensions = self.extending.read().await;
        let result = self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&receipt)
            .visibility_timeout(self.config.retry_delay_secs as i32)
            .send()
            .await;
        if let Err(e) = result {
            // The message still becomes visible when its timeout runs out.
            debug!(queue = %self.name, error = %describe(&e), "Releasing a message failed");
        }
    }
}

/// Publishes `cafe_queue_depth_messages{queue}` (SQS
/// ApproximateNumberOfMessages) for `queues` (the DLQs and the rejected
/// queue: what an operator must notice growing) every `every`, until `stop`.
/// A queue that cannot be read is skipped, its failure counted
/// (`cafe_source_errors_total{outcome="depth"}`, which does not mark the
/// input failing: the gauge is for the operator, not the pipeline). A pass
/// under way when `stop` comes is abandoned (its calls only read): topology
/// waits for this loop at the end of a shutdown, and a silent endpoint held
/// each pass for its calls' timeouts, minutes past the grace period.
pub async fn depth_loop(client: Client, queues: Vec<String>, every: Duration, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut urls: Vec<(String, Option<String>)> = queues.into_iter().map(|q| (q, None)).collect();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = depth_pass(&client, &mut urls, &metrics) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// One pass of [`depth_loop`]: each queue's URL (once) and depth.
async fn depth_pass(client: &Client, urls: &mut [(String, Option<String>)], metrics: &Metrics) {
    use aws_sdk_sqs::types::QueueAttributeName;
    for (name, url) in urls {
        if url.is_none() {
            *url = match queue_url(client, name).await {
                Ok(u) => Some(u),
                Err(e) => {
                    let error = e.to_string();
                    SourceError { source: name, shard: None, kind: SourceErrorKind::Depth, error: &error }.emit(metrics);
                    None
                }
            };
        }
        let Some(u) = url.as_deref() else { continue };
        let out = client
            .get_queue_attributes()
            .queue_url(u)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await;
        match out {
            Ok(o) => {
                let n = o
                    .attributes
                    .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages).and_then(|v| v.parse::<i64>().ok()))
                    .unwrap_or(0);
                let label = u.rsplit('/').next().unwrap_or(name).to_owned();
                QueueDepth { queue: &label, messages: n }.emit(metrics);
            }
            Err(e) => SourceError { source: name, shard: None, kind: SourceErrorKind::Depth, error: &describe(&e) }.emit(metrics),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue whose depth cannot be read is counted, each time, and
    /// leaves the inputs' readiness alone; it was a debug line before.
    #[tokio::test]
    async fn a_depth_that_cannot_be_read_is_counted_and_does_not_mark_the_input_failing() {
        let metrics = Arc::new(Metrics::new());
        let client = Client::new(&crate::sinks::refusing_sdk_config());
        let queue = "http://127.0.0.1:1/000000000000/cafe-rejected".to_owned();
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(depth_loop(client, vec![queue.clone()], Duration::from_millis(10), Arc::clone(&metrics), stop.clone()));
        let counted = || {
            let want = format!(r#"cafe_source_errors_total{{source="{queue}",outcome="depth"}} "#);
            metrics.encode().lines().find_map(|l| l.strip_prefix(want.as_str())?.parse::<u64>().ok()).unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while counted() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        task.await.expect("the loop ends on the stop");
        assert!(counted() >= 2, "each failed read counted");
        // Unlike a receive's failure (the control), it marks nothing failing.
        for kind in [SourceErrorKind::Depth, SourceErrorKind::Error] {
            let source = format!("q-{}", kind.as_str());
            SourceError { source: &source, shard: None, kind, error: "refused" }.emit(&metrics);
            tokio::time::sleep(Duration::from_millis(30)).await;
            SourceError { source: &source, shard: None, kind, error: "refused" }.emit(&metrics);
        }
        assert_eq!(metrics.components.failing_longer_than(Duration::from_millis(20)), ["source q-error"]);
    }

    /// A stop ends the loop while a call of its pass waits on a silent
    /// endpoint: topology waits for it at the end of a shutdown. Before,
    /// the stop was seen only between passes (with the daemon's timeouts, a
    /// silent queue held the exit for minutes).
    #[tokio::test]
    async fn a_stop_ends_the_depth_loop_while_a_call_waits_on_a_silent_queue() {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        let calls = Arc::new(AtomicUsize::new(0));
        let client = Client::new(&crate::sinks::silent_sdk_config(&calls));
        let stop = CancellationToken::new();
        let queues = vec!["cafe-rejected".to_owned()];
        let task = tokio::spawn(depth_loop(client, queues, Duration::from_millis(10), Arc::new(Metrics::new()), stop.clone()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while calls.load(Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the pass made no call");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("ended by the stop").expect("no panic");
        assert_eq!(calls.load(Relaxed), 1, "the GetQueueUrl call it was waiting on");
    }
}
