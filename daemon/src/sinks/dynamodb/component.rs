//! The DynamoDB sink as a [`Component`]: its checks, the contract's tables
//! with their keys, index and expiry, what `run` may do with them, and its
//! metric series.

use crate::components::{Component, Grant, Resource, Shape, Target};
use crate::internal_events::Sink as SinkLabel;
use crate::metrics::Metrics;
use crate::sinks::dynamodb::config::DynamoDbSinkConfig;
use crate::sinks::dynamodb::fraud_state::{STATE_EXPIRES, STATE_KEY};
use crate::sinks::dynamodb::{EVENT_EXPIRES, MIRROR_INDEX, MIRROR_PENDING};

/// `[sinks.dynamodb]`.
#[derive(Debug)]
pub struct Sink<'a> {
    /// Its settings.
    pub config: &'a DynamoDbSinkConfig,
    /// Whether the fraud history lives in its `fraud_state_table`
    /// (`[fraud] state = "dynamodb"`).
    pub fraud_state: bool,
}

impl Component for Sink<'_> {
    fn key(&self) -> String {
        "sinks.dynamodb".to_owned()
    }

    fn problems(&self) -> Vec<(String, String)> {
        let mut out = self.config.problems();
        // A payment scored against the shared state is its put, its three
        // keys' states and its aggregate row, in one transaction.
        if self.fraud_state && self.config.max_transaction_items < 5 {
            out.push((
                "sinks.dynamodb.max_transaction_items".into(),
                format!(
                    "must be at least 5 with fraud.state = \"dynamodb\" (a payment and its four writes), got {}",
                    self.config.max_transaction_items
                ),
            ));
        }
        out
    }

    fn resources(&self) -> Vec<Resource> {
        let d = self.config;
        let table = |field: &str, name: &str, keys: &'static [&'static str]| Resource {
            field: format!("sinks.dynamodb.{field}"),
            name: name.to_owned(),
            shape: Shape::Table { keys, index: None, ttl: None },
        };
        let mut aggregates = table("aggregates_table", &d.aggregates_table, &["store", "window"]);
        // The sparse index of rows the Redshift mirror has yet to copy.
        aggregates.shape =
            Shape::Table { keys: &["store", "window"], index: Some((MIRROR_INDEX, MIRROR_PENDING, "window")), ttl: None };
        let mut events = table("events_table", &d.events_table, &["event_id"]);
        events.shape = Shape::Table { keys: &["event_id"], index: None, ttl: Some(EVENT_EXPIRES) };
        let mut out = vec![
            aggregates,
            table("payments_table", &d.payments_table, &["payment_id"]),
            table("orders_table", &d.orders_table, &["order_id"]),
            table("menu_table", &d.menu_table, &["sku"]),
            events,
        ];
        if self.fraud_state {
            let mut state = table("fraud_state_table", &d.fraud_state_table, &[STATE_KEY]);
            state.shape = Shape::Table { keys: &[STATE_KEY], index: None, ttl: Some(STATE_EXPIRES) };
            out.push(state);
        }
        out
    }

    fn grants(&self) -> Vec<Grant> {
        let d = self.config;
        let mut out = vec![
            // Any input may carry order events.
            Grant::new(
                "WriteOrders",
                &["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchGetItem"],
                vec![Target::Table(d.orders_table.clone())],
            ),
            Grant::new("WritePayments", &["dynamodb:PutItem"], vec![Target::Table(d.payments_table.clone())]),
            Grant::new("WriteMenu", &["dynamodb:UpdateItem", "dynamodb:BatchGetItem"], vec![Target::Table(d.menu_table.clone())]),
            Grant::new(
                "EventLedger",
                &["dynamodb:PutItem", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"],
                vec![Target::Table(d.events_table.clone())],
            ),
            Grant::new("WriteAggregates", &["dynamodb:UpdateItem"], vec![Target::Table(d.aggregates_table.clone())]),
        ];
        if self.fraud_state {
            // Read in batches, written with the payments (TransactWriteItems puts).
            out.push(Grant::new(
                "FraudState",
                &["dynamodb:BatchGetItem", "dynamodb:PutItem"],
                vec![Target::Table(d.fraud_state_table.clone())],
            ));
        }
        out
    }

    fn init_metrics(&self, metrics: &Metrics) {
        crate::internal_events::init_sink_series(metrics, SinkLabel::DynamoDb);
        crate::internal_events::init_menu_series(metrics);
    }
}
