//! `[sinks.dynamodb]`: the contract's tables and the write retries.
//!
//! Owns: the sink's settings, their defaults and their checks.

use serde::{Deserialize, Serialize};

/// `[sinks.dynamodb]`: the contract's tables.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamoDbSinkConfig {
    /// Per (store, minute) counters.
    pub aggregates_table: String,
    /// One item per payment.
    pub payments_table: String,
    /// One item per order.
    pub orders_table: String,
    /// One item per menu sku.
    pub menu_table: String,
    /// The event ledger: one item per applied event whose write has no
    /// natural key of its own (menu upserts), so a redelivery counts once.
    /// Entries expire after 15 days (SQS keeps a message 14 at most).
    pub events_table: String,
    /// The fraud rules' shared history, one item per card fingerprint,
    /// customer and device (used when `[fraud] state = "dynamodb"`).
    pub fraud_state_table: String,
    /// Items per TransactWriteItems, at most 100 (AWS's limit, and
    /// dynoxide's). Fewer, smaller transactions cost more per event: on
    /// the local stack's orders backlog, 25 reached 0.69 of a bare writer
    /// and 100 reached 0.91-0.94 (same run).
    pub max_transaction_items: usize,
    /// Retries of a throttled or failed request before the batch is given back to its source.
    pub max_retries: u32,
    /// First retry delay; doubles each retry, with full jitter.
    pub base_backoff_ms: u64,
    /// Largest retry delay.
    pub max_backoff_ms: u64,
}

impl Default for DynamoDbSinkConfig {
    fn default() -> Self {
        DynamoDbSinkConfig {
            aggregates_table: "cafe-aggregates".into(),
            payments_table: "cafe-payments".into(),
            orders_table: "cafe-orders".into(),
            menu_table: "cafe-menu".into(),
            events_table: "cafe-events".into(),
            fraud_state_table: "cafe-fraud-state".into(),
            max_transaction_items: 100,
            max_retries: 8,
            base_backoff_ms: 50,
            max_backoff_ms: 5_000,
        }
    }
}

impl DynamoDbSinkConfig {
    /// Problems of `[sinks.dynamodb]` as (dotted field, why).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |field: &str, why: String| out.push((field.to_owned(), why));
        for (f, v) in [
            ("aggregates_table", &self.aggregates_table),
            ("payments_table", &self.payments_table),
            ("orders_table", &self.orders_table),
            ("menu_table", &self.menu_table),
            ("events_table", &self.events_table),
            ("fraud_state_table", &self.fraud_state_table),
        ] {
            if v.len() < 3 || v.len() > 255 || !v.chars().all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch)) {
                bad(&format!("sinks.dynamodb.{f}"), format!("{v:?} is not a DynamoDB table name (3..255 of A-Za-z0-9_.-)"));
            }
        }
        if !(2..=100).contains(&self.max_transaction_items) {
            bad(
                "sinks.dynamodb.max_transaction_items",
                format!("must be 2..100 (a DynamoDB limit), got {}", self.max_transaction_items),
            );
        }
        if self.base_backoff_ms == 0 || self.base_backoff_ms > self.max_backoff_ms {
            bad("sinks.dynamodb.base_backoff_ms", "must be greater than 0 and at most max_backoff_ms".into());
        }
        out
    }
}
