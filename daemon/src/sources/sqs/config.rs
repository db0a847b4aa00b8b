//! `[sources.<name>]` of `type = "sqs"`: an SQS queue input.
//!
//! Owns: the queue input's settings, their defaults and their checks. Must
//! not: touch AWS.

use serde::{Deserialize, Serialize};

/// An SQS queue source.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqsSourceConfig {
    /// Consume this queue.
    pub enabled: bool,
    /// Queue name or URL. A name ending in `.fifo` is a FIFO queue.
    pub queue: String,
    /// Dead-letter queue name, created by `provision` with the redrive policy.
    pub dlq: String,
    /// Receives after which SQS moves a message to the DLQ.
    pub max_receive_count: u32,
    /// Concurrent long-polling receivers.
    pub receivers: u32,
    /// Messages per ReceiveMessage call, 1..10.
    pub max_messages: u32,
    /// Long-poll wait per ReceiveMessage call, 0..20 seconds. Shutdown waits
    /// up to this long for the last polls to return (their messages are
    /// processed, not abandoned), so keep it well under the grace period.
    pub wait_time_secs: u32,
    /// Visibility timeout asked for on receive; extended while work is in flight.
    pub visibility_timeout_secs: u32,
    /// A batch whose writes failed (a sink throttled, down or slow) is
    /// retried in place for up to this long, with backoff, its messages kept
    /// in flight (their visibility extended): no receive is spent, so an
    /// outage shorter than this sends nothing to the DLQ and keeps FIFO
    /// order. After it, or on shutdown, the messages are given back to the
    /// queue (visible again after `retry_delay_secs`: one receive toward
    /// `max_receive_count`). 0 gives back at once. With the visibility
    /// timeout, at most SQS's 12 hours.
    pub retry_in_flight_secs: u32,
    /// After a failed write is given back, the message becomes visible again after this delay.
    pub retry_delay_secs: u32,
}

/// The least of the grace period left after a long poll's wait time: a
/// poll under way at the stop is waited for, and what it returns drained.
pub const DRAIN_AFTER_POLL_SECS: u64 = 5;

impl Default for SqsSourceConfig {
    fn default() -> Self {
        SqsSourceConfig {
            enabled: true,
            queue: "cafe-payments.fifo".into(),
            dlq: "cafe-payments-dlq.fifo".into(),
            max_receive_count: 5,
            receivers: 4,
            max_messages: 10,
            wait_time_secs: 10,
            visibility_timeout_secs: 30,
            retry_in_flight_secs: 900,
            retry_delay_secs: 5,
        }
    }
}

impl SqsSourceConfig {
    /// The contract's menu queue: defaults as for payments, with its names.
    pub fn menu_defaults() -> Self {
        SqsSourceConfig { queue: "cafe-menu-sync".into(), dlq: "cafe-menu-sync-dlq".into(), ..SqsSourceConfig::default() }
    }

    /// Whether the queue is FIFO (its name ends in `.fifo`).
    pub fn is_fifo(&self) -> bool {
        self.queue.ends_with(".fifo")
    }

    /// The dead-letter queue a queue gets when none is configured:
    /// `<queue>-dlq`, FIFO like the queue.
    pub fn default_dlq(queue: &str) -> String {
        match queue.strip_suffix(".fifo") {
            Some(base) => format!("{base}-dlq.fifo"),
            None => format!("{queue}-dlq"),
        }
    }

    /// Problems of this section as (dotted field, why); `p` is the section's path.
    /// `grace_period_secs` bounds the long-poll wait.
    pub fn problems(&self, p: &str, grace_period_secs: u64) -> Vec<(String, String)> {
        let s = self;
        let mut out = Vec::new();
        let mut bad = |field: &str, why: String| out.push((field.to_owned(), why));
        if s.queue.trim().is_empty() {
            bad(&format!("{p}.queue"), "must not be empty".into());
        }
        if !(1..=10).contains(&s.max_messages) {
            bad(&format!("{p}.max_messages"), format!("must be 1..10 (an SQS limit), got {}", s.max_messages));
        }
        // 0 is short polling: each receiver would send ReceiveMessage back
        // to back while the queue is empty (each call billed, and a core's
        // worth of requests), and SQS answers a short poll from a sample
        // of its servers, so it may come back empty with messages queued.
        if !(1..=20).contains(&s.wait_time_secs) {
            bad(
                &format!("{p}.wait_time_secs"),
                format!(
                    "must be 1..20 (at most 20, an SQS limit; 0 is short polling, which sends receives back to back while the queue is empty), got {}",
                    s.wait_time_secs
                ),
            );
        }
        if !(1..=256).contains(&s.receivers) {
            bad(&format!("{p}.receivers"), format!("must be 1..256, got {}", s.receivers));
        }
        if !(5..=43_200).contains(&s.visibility_timeout_secs) {
            bad(&format!("{p}.visibility_timeout_secs"), format!("must be 5..43200, got {}", s.visibility_timeout_secs));
        }
        if s.retry_delay_secs > 43_200 {
            bad(&format!("{p}.retry_delay_secs"), format!("must be 0..43200, got {}", s.retry_delay_secs));
        }
        if u64::from(s.retry_in_flight_secs) + u64::from(s.visibility_timeout_secs) > 43_200 {
            bad(
                &format!("{p}.retry_in_flight_secs"),
                format!(
                    "{} s plus the visibility timeout ({} s) is over SQS's 12 hours (43200 s) a message may stay in flight",
                    s.retry_in_flight_secs, s.visibility_timeout_secs
                ),
            );
        }
        if !(1..=1000).contains(&s.max_receive_count) {
            bad(&format!("{p}.max_receive_count"), format!("must be 1..1000, got {}", s.max_receive_count));
        }
        if self.is_fifo() != self.dlq.ends_with(".fifo") {
            bad(&format!("{p}.dlq"), "a FIFO queue's dead-letter queue must be FIFO too, and a standard queue's standard".into());
        }
        // A poll under way at the stop is waited for (see `receive_loop`),
        // and what it returns must still be decided, written and deleted.
        if u64::from(s.wait_time_secs) + DRAIN_AFTER_POLL_SECS > grace_period_secs {
            bad(
                &format!("{p}.wait_time_secs"),
                format!(
                    "{} s leaves less than {DRAIN_AFTER_POLL_SECS} s of shutdown.grace_period_secs ({} s) after a poll under way at the stop ends: what it returns could not be drained in time",
                    s.wait_time_secs, grace_period_secs
                ),
            );
        }
        out
    }
}
