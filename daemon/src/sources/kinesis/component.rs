//! A Kinesis input as a [`Component`]: its checks, its stream and lease
//! table, what `run` may do with them, and its lease metric series.

use crate::components::{Component, Grant, Resource, Shape, Target};
use crate::metrics::Metrics;
use crate::sources::kinesis::config::KinesisSourceConfig;

/// `[sources.<name>]` of `type = "kinesis"`.
#[derive(Debug)]
pub struct Input<'a> {
    /// The input's name in `[sources]`.
    pub name: &'a str,
    /// Its settings.
    pub config: &'a KinesisSourceConfig,
}

impl Component for Input<'_> {
    fn key(&self) -> String {
        format!("sources.{}", self.name)
    }

    fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn problems(&self) -> Vec<(String, String)> {
        self.config.problems(&self.key())
    }

    fn resources(&self) -> Vec<Resource> {
        let key = self.key();
        let c = self.config;
        vec![
            Resource {
                field: format!("{key}.lease_table"),
                name: c.lease_table.clone(),
                shape: Shape::Table { keys: &["leaseKey"], index: None, ttl: None },
            },
            Resource { field: format!("{key}.stream"), name: c.stream.clone(), shape: Shape::Stream { shards: c.shards } },
        ]
    }

    fn grants(&self) -> Vec<Grant> {
        let c = self.config;
        vec![
            Grant::new(
                "ReadStreams",
                &["kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"],
                vec![Target::Stream(c.stream.clone())],
            ),
            Grant::new(
                "LeaseTables",
                &["dynamodb:Scan", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
                vec![Target::Table(c.lease_table.clone())],
            ),
        ]
    }

    fn init_metrics(&self, metrics: &Metrics) {
        crate::internal_events::init_lease_series(metrics, &self.config.stream);
    }
}
