//! The one list of configured components: every input and every sink, each
//! saying what it needs. Validation, `provision`, `iam-policy` and the
//! metric series created at start all iterate [`list`]; none of them names
//! an input or a sink.
//!
//! Owns: the [`Component`] seam and the list. Each component implements it
//! in its own folder (`sources/*/component.rs`, `sinks/*/component.rs`).
//! Must not: touch AWS; what to do with a [`Resource`] or a [`Grant`] is
//! `provision`'s and `iam`'s.

use crate::config::{Config, RedshiftSinkConfig};
use crate::metrics::Metrics;

/// One configured input or sink.
pub trait Component {
    /// Its section in the config file, e.g. `sources.payments`.
    fn key(&self) -> String;

    /// Whether `run` starts it.
    fn enabled(&self) -> bool {
        true
    }

    /// Problems of its settings as (dotted field, why).
    fn problems(&self) -> Vec<(String, String)>;

    /// The queues, streams and tables it uses, each named by its config
    /// field, with the shape `provision` gives it (in creation order: a
    /// dead-letter queue before the queue that redrives to it).
    fn resources(&self) -> Vec<Resource>;

    /// What `run` needs to be allowed to do, on which resources.
    fn grants(&self) -> Vec<Grant>;

    /// What `provision` needs beyond creating its [`resources`](Self::resources)
    /// (which `iam` grants from their kinds).
    fn provision_grants(&self) -> Vec<Grant> {
        Vec::new()
    }

    /// Creates its metric series at start, so dashboards see zeros rather
    /// than no data.
    fn init_metrics(&self, _metrics: &Metrics) {}
}

/// A resource a component uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The config field that names it, e.g. `sources.payments.dlq`.
    pub field: String,
    /// Its name (an SQS queue may be given by URL).
    pub name: String,
    /// What it is, and its shape.
    pub shape: Shape,
}

/// What a resource is, and the shape `provision` gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// An SQS queue, FIFO when its name ends in `.fifo`.
    Queue {
        /// Its dead-letter queue and the receives before a message moves there.
        redrive: Option<(String, u32)>,
        /// Visibility timeout, in seconds, when the component has one.
        visibility_timeout_secs: Option<u32>,
    },
    /// A Kinesis stream.
    Stream {
        /// Shards when created.
        shards: u32,
    },
    /// A DynamoDB table (string keys, on-demand).
    Table {
        /// Partition key, then the sort key if any.
        keys: &'static [&'static str],
        /// A global secondary index: (name, partition key, sort key).
        index: Option<(&'static str, &'static str, &'static str)>,
        /// The attribute DynamoDB's TTL expires items by.
        ttl: Option<&'static str>,
    },
    /// The Redshift table the mirror writes.
    RedshiftTable(Box<RedshiftSinkConfig>),
}

impl Shape {
    /// The service the resource belongs to; names are unique per service.
    pub fn service(&self) -> Service {
        match self {
            Shape::Queue { .. } => Service::Sqs,
            Shape::Stream { .. } => Service::Kinesis,
            Shape::Table { .. } => Service::DynamoDb,
            Shape::RedshiftTable(_) => Service::Redshift,
        }
    }
}

/// An AWS service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// SQS.
    Sqs,
    /// Kinesis Data Streams.
    Kinesis,
    /// DynamoDB.
    DynamoDb,
    /// Redshift (its SQL endpoint or the Data API).
    Redshift,
}

/// Permission to call `actions` on `on`. Grants with the same `sid` are
/// one statement of the policy, over all their resources.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// The statement's id (letters and digits).
    pub sid: &'static str,
    /// IAM actions, e.g. `sqs:ReceiveMessage`.
    pub actions: &'static [&'static str],
    /// What they act on.
    pub on: Vec<Target>,
    /// An IAM condition block, as JSON.
    pub condition: Option<serde_json::Value>,
}

impl Grant {
    /// A grant without a condition.
    pub fn new(sid: &'static str, actions: &'static [&'static str], on: Vec<Target>) -> Self {
        Grant { sid, actions, on, condition: None }
    }
}

/// A resource in a grant; `iam` makes it an ARN for the region and account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An SQS queue by name or URL.
    Queue(String),
    /// A DynamoDB table.
    Table(String),
    /// A global secondary index: (table, index).
    Index(String, &'static str),
    /// A Kinesis stream.
    Stream(String),
    /// An ARN in which `{region}` and `{account}` are filled in.
    Arn(String),
    /// Every resource (`*`), for actions that only act on the caller's own.
    Any,
}

/// Every configured component, enabled or not, in a fixed order: the
/// inputs by name, then the sinks. Adding a component is one line here.
pub fn list(config: &Config) -> Vec<Box<dyn Component + '_>> {
    use crate::sinks::{dynamodb, redshift, rejected};
    use crate::sources::{kinesis, sqs};
    let mut out: Vec<Box<dyn Component + '_>> = Vec::new();
    for (name, source) in config.sources.sqs() {
        out.push(Box::new(sqs::component::Input { name, config: source, grace_period_secs: config.shutdown.grace_period_secs }));
    }
    for (name, source) in config.sources.kinesis() {
        out.push(Box::new(kinesis::component::Input { name, config: source }));
    }
    let fraud_state = config.fraud.state == pipeline::fraud::StateStore::DynamoDb;
    out.push(Box::new(dynamodb::component::Sink { config: &config.sinks.dynamodb, fraud_state }));
    out.push(Box::new(rejected::component::Sink { config: &config.rejected, ledger: &config.sinks.dynamodb.events_table }));
    out.push(Box::new(redshift::component::Sink { config: &config.sinks.redshift, aggregates: &config.sinks.dynamodb }));
    out
}

/// The enabled components.
pub fn enabled(config: &Config) -> Vec<Box<dyn Component + '_>> {
    list(config).into_iter().filter(|c| c.enabled()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_and_sink_is_listed_once() {
        let c = Config::default();
        let keys: Vec<String> = list(&c).iter().map(|c| c.key()).collect();
        assert_eq!(keys, ["sources.menu", "sources.payments", "sources.orders", "sinks.dynamodb", "rejected", "sinks.redshift"]);
        let on: Vec<String> = enabled(&c).iter().map(|c| c.key()).collect();
        assert!(!on.contains(&"sinks.redshift".to_owned()), "the mirror is off by default: {on:?}");
    }

    #[test]
    fn the_shared_fraud_state_brings_its_table_grant_and_transaction_floor() {
        let mut c = Config::default();
        let fields = |c: &Config| -> Vec<String> { list(c).iter().flat_map(|c| c.resources()).map(|r| r.field).collect() };
        assert!(fields(&c).contains(&"sinks.dynamodb.fraud_state_table".to_owned()), "shared by default");
        c.sinks.dynamodb.max_transaction_items = 4;
        let problems: Vec<(String, String)> = list(&c).iter().flat_map(|c| c.problems()).collect();
        assert!(problems.iter().any(|(f, _)| f == "sinks.dynamodb.max_transaction_items"), "{problems:?}");
        c.fraud.state = pipeline::fraud::StateStore::Process;
        assert!(!fields(&c).contains(&"sinks.dynamodb.fraud_state_table".to_owned()), "no table in process");
        assert!(list(&c).iter().flat_map(|c| c.problems()).next().is_none(), "4 items are enough without it");
    }

    #[test]
    fn resources_are_named_by_their_fields_and_dead_letter_queues_come_first() {
        let c = Config::default();
        let all: Vec<Resource> = list(&c).iter().flat_map(|c| c.resources()).collect();
        let fields: Vec<&str> = all.iter().map(|r| r.field.as_str()).collect();
        let dlq = fields.iter().position(|f| *f == "sources.payments.dlq").expect("payments dlq");
        let queue = fields.iter().position(|f| *f == "sources.payments.queue").expect("payments queue");
        assert!(dlq < queue, "{fields:?}");
        for want in ["sources.orders.stream", "sources.orders.lease_table", "sinks.dynamodb.events_table", "rejected.queue"] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        assert!(!fields.iter().any(|f| f.starts_with("sinks.redshift")), "no Redshift table while the mirror is off");
    }
}
