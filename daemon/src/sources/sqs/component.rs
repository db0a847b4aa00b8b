//! An SQS input as a [`Component`]: its checks, its queue and dead-letter
//! queue, and what `run` may do with them.

use crate::components::{Component, Grant, Resource, Shape, Target};
use crate::sources::sqs::config::SqsSourceConfig;

/// `[sources.<name>]` of `type = "sqs"`.
#[derive(Debug)]
pub struct Input<'a> {
    /// The input's name in `[sources]`.
    pub name: &'a str,
    /// Its settings.
    pub config: &'a SqsSourceConfig,
    /// `shutdown.grace_period_secs`, which bounds the long-poll wait.
    pub grace_period_secs: u64,
}

impl Component for Input<'_> {
    fn key(&self) -> String {
        format!("sources.{}", self.name)
    }

    fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn problems(&self) -> Vec<(String, String)> {
        self.config.problems(&self.key(), self.grace_period_secs)
    }

    fn resources(&self) -> Vec<Resource> {
        let key = self.key();
        let c = self.config;
        vec![
            Resource {
                field: format!("{key}.dlq"),
                name: c.dlq.clone(),
                shape: Shape::Queue { redrive: None, visibility_timeout_secs: None },
            },
            Resource {
                field: format!("{key}.queue"),
                name: c.queue.clone(),
                shape: Shape::Queue {
                    redrive: Some((c.dlq.clone(), c.max_receive_count)),
                    visibility_timeout_secs: Some(c.visibility_timeout_secs),
                },
            },
        ]
    }

    fn grants(&self) -> Vec<Grant> {
        let c = self.config;
        vec![
            Grant::new(
                "ConsumeInputQueues",
                &["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"],
                vec![Target::Queue(c.queue.clone())],
            ),
            // The depth an operator watches: the dead-letter queue.
            Grant::new("WatchQueueDepth", &["sqs:GetQueueAttributes", "sqs:GetQueueUrl"], vec![Target::Queue(c.dlq.clone())]),
        ]
    }
}
