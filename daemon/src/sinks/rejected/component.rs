//! The rejected sink as a [`Component`]: its checks, its queue, what `run`
//! may do with it and with the ledger of rejections sent, and its metric
//! series.

use crate::components::{Component, Grant, Resource, Shape, Target};
use crate::internal_events::Sink as SinkLabel;
use crate::metrics::Metrics;
use crate::sinks::rejected::config::RejectedConfig;

/// `[rejected]`.
#[derive(Debug)]
pub struct Sink<'a> {
    /// Its settings.
    pub config: &'a RejectedConfig,
    /// The event ledger table, where each rejection sent is recorded.
    pub ledger: &'a str,
}

impl Component for Sink<'_> {
    fn key(&self) -> String {
        "rejected".to_owned()
    }

    fn problems(&self) -> Vec<(String, String)> {
        self.config.problems()
    }

    fn resources(&self) -> Vec<Resource> {
        vec![Resource {
            field: "rejected.queue".to_owned(),
            name: self.config.queue.clone(),
            shape: Shape::Queue { redrive: None, visibility_timeout_secs: None },
        }]
    }

    fn grants(&self) -> Vec<Grant> {
        let queue = Target::Queue(self.config.queue.clone());
        vec![
            Grant::new("SendRejected", &["sqs:SendMessage", "sqs:GetQueueUrl"], vec![queue.clone()]),
            Grant::new("WatchQueueDepth", &["sqs:GetQueueAttributes", "sqs:GetQueueUrl"], vec![queue]),
            Grant::new(
                "EventLedger",
                &["dynamodb:PutItem", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"],
                vec![Target::Table(self.ledger.to_owned())],
            ),
        ]
    }

    fn init_metrics(&self, metrics: &Metrics) {
        crate::internal_events::init_sink_series(metrics, SinkLabel::Rejected);
    }
}
