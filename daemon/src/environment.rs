//! `cafe-streamd validate --environment`: the account against the
//! configuration, as Vector's health checks do, without changing anything.
//!
//! Owns: checking that credentials resolve and that every resource of the
//! configured components exists with the shape the daemon needs (a queue's
//! FIFO attribute, redrive policy and visibility timeout; a table's keys,
//! index and expiry attribute; a stream's status; the Redshift table,
//! through the configured transport), and naming every problem. Which
//! resources and shapes: the components' (`components.rs`), the same list
//! `provision` creates. Must not: create or change anything (`provision`
//! does); each call is read-only and has a timeout.

use std::future::Future;
use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use aws_sdk_dynamodb::types::{KeyType, TimeToLiveStatus};
use aws_sdk_kinesis::types::StreamStatus;
use aws_sdk_sqs::types::QueueAttributeName;

use crate::aws::describe;
use crate::components::{self, Resource, Shape};
use crate::config::{Config, Problem, Problems};
use crate::sinks::redshift;

/// How long one check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Where problems found here come from, in their `origin`.
pub const ORIGIN: &str = "account";

/// The fix for a resource that is missing or misshapen.
const PROVISION: &str = "run `cafe-streamd provision`";

/// Every problem of the account against `config`: none when the daemon
/// would find what it needs.
pub async fn check(config: &Config) -> Problems {
    let sdk = crate::aws::run_sdk_config(&config.aws).await;
    let mut problems = Vec::new();
    let mut bad = |field: &str, why: String| problems.push(Problem { origin: ORIGIN.into(), field: field.into(), why });

    match sdk.credentials_provider() {
        None => bad("aws", "no credentials provider: set AWS_PROFILE, the AWS_ACCESS_KEY_ID pair, or an instance role".into()),
        Some(provider) => {
            if let Err(why) = within(provider.provide_credentials(), |e| format!("credentials do not resolve: {e}")).await {
                bad("aws", why.0);
            }
        }
    }
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    for resource in components::enabled(config).iter().flat_map(|c| c.resources()) {
        let found = match &resource.shape {
            Shape::Queue { redrive, visibility_timeout_secs } => {
                queue(&sqs, &resource, redrive.as_ref(), *visibility_timeout_secs).await
            }
            Shape::Table { keys, index, ttl } => table(&dynamodb, &resource.name, keys, *index, *ttl).await,
            Shape::Stream { .. } => stream(&kinesis, &resource.name).await,
            Shape::RedshiftTable(r) => redshift_table(r, &sdk, &resource.name).await,
        };
        for why in found {
            bad(&resource.field, why);
        }
    }
    Problems(problems)
}

/// A check that failed, in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

impl Failed {
    fn contains(&self, s: &str) -> bool {
        self.0.contains(s)
    }
}

/// `call` within [`CHECK_TIMEOUT`], its error through `describe_err`.
async fn within<T, E>(call: impl Future<Output = Result<T, E>>, describe_err: impl FnOnce(E) -> String) -> Result<T, Failed> {
    match tokio::time::timeout(CHECK_TIMEOUT, call).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Failed(describe_err(e))),
        Err(_) => Err(Failed(format!("no answer within {} s", CHECK_TIMEOUT.as_secs()))),
    }
}

async fn queue(
    sqs: &aws_sdk_sqs::Client,
    resource: &Resource,
    redrive: Option<&(String, u32)>,
    visibility_timeout_secs: Option<u32>,
) -> Vec<String> {
    let name = crate::iam::queue_name(&resource.name);
    // A queue given by URL (another account's, say) is used as given, as
    // the daemon does; a name is looked up in this account.
    let url = if resource.name.starts_with("https://") || resource.name.starts_with("http://") {
        resource.name.clone()
    } else {
        match within(sqs.get_queue_url().queue_name(name).send(), |e| describe(&e)).await {
            Ok(out) => out.queue_url.unwrap_or_default(),
            Err(e) if e.contains("NonExistentQueue") || e.contains("QueueDoesNotExist") => {
                return vec![format!("queue {name} does not exist; {PROVISION}")];
            }
            Err(e) => return vec![format!("queue {name}: GetQueueUrl failed: {e}")],
        }
    };
    let attrs = match within(sqs.get_queue_attributes().queue_url(&url).attribute_names(QueueAttributeName::All).send(), |e| {
        describe(&e)
    })
    .await
    {
        Ok(out) => out.attributes.unwrap_or_default(),
        Err(e) if e.contains("NonExistentQueue") || e.contains("QueueDoesNotExist") => {
            return vec![format!("queue {} does not exist", resource.name)];
        }
        Err(e) => return vec![format!("queue {name}: GetQueueAttributes failed: {e}")],
    };
    let attr = |k: QueueAttributeName| attrs.get(&k).cloned();
    let mut out = Vec::new();
    let fifo = attr(QueueAttributeName::FifoQueue).as_deref() == Some("true");
    if name.ends_with(".fifo") != fifo {
        out.push(format!("queue {name} is {}a FIFO queue", if fifo { "" } else { "not " }));
    }
    if let Some((dlq, max_receive_count)) = redrive {
        let policy: Option<serde_json::Value> =
            attr(QueueAttributeName::RedrivePolicy).and_then(|p| serde_json::from_str(&p).ok());
        match policy {
            None => out.push(format!("queue {name} has no redrive policy to {dlq}; {PROVISION}")),
            Some(p) => {
                let target = p["deadLetterTargetArn"].as_str().unwrap_or("");
                if target.rsplit(':').next() != Some(crate::iam::queue_name(dlq)) {
                    out.push(format!("queue {name} dead-letters to {target:?}, not {dlq}; {PROVISION}"));
                }
                let count = p["maxReceiveCount"].as_u64().or_else(|| p["maxReceiveCount"].as_str().and_then(|s| s.parse().ok()));
                if count != Some(u64::from(*max_receive_count)) {
                    out.push(format!(
                        "queue {name} moves a message to its DLQ after {} receives, the configuration says {max_receive_count}; {PROVISION}",
                        count.map_or_else(|| "?".to_owned(), |c| c.to_string())
                    ));
                }
            }
        }
    }
    if let Some(want) = visibility_timeout_secs {
        let have = attr(QueueAttributeName::VisibilityTimeout).and_then(|v| v.parse::<u32>().ok());
        if have != Some(want) {
            out.push(format!(
                "queue {name} has a visibility timeout of {} s, the configuration says {want} s; {PROVISION}",
                have.map_or_else(|| "?".to_owned(), |v| v.to_string())
            ));
        }
    }
    out
}

async fn table(
    dynamodb: &aws_sdk_dynamodb::Client,
    name: &str,
    keys: &[&str],
    index: Option<(&str, &str, &str)>,
    ttl: Option<&str>,
) -> Vec<String> {
    let described = match within(dynamodb.describe_table().table_name(name).send(), |e| describe(&e)).await {
        Ok(out) => out.table,
        Err(e) if e.contains("ResourceNotFoundException") => return vec![format!("table {name} does not exist; {PROVISION}")],
        Err(e) => return vec![format!("table {name}: DescribeTable failed: {e}")],
    };
    let Some(t) = described else { return vec![format!("table {name}: DescribeTable returned no table")] };
    let mut out = Vec::new();
    let schema = |elements: &[aws_sdk_dynamodb::types::KeySchemaElement]| -> Vec<String> {
        let mut by_type: Vec<(bool, String)> =
            elements.iter().map(|k| (k.key_type() != &KeyType::Hash, k.attribute_name().to_owned())).collect();
        by_type.sort();
        by_type.into_iter().map(|(_, n)| n).collect()
    };
    let have = schema(t.key_schema());
    let want: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    if have != want {
        out.push(format!("table {name} is keyed by {have:?}, the daemon needs {want:?}"));
    }
    for k in keys {
        let ty =
            t.attribute_definitions().iter().find(|a| a.attribute_name() == *k).map(|a| a.attribute_type().as_str().to_owned());
        if ty.as_deref().is_some_and(|ty| ty != "S") {
            out.push(format!("table {name}: key {k} is of type {}, the daemon writes strings (S)", ty.unwrap_or_default()));
        }
    }
    if let Some((index_name, hash, range)) = index {
        match t.global_secondary_indexes().iter().find(|i| i.index_name() == Some(index_name)) {
            None => out.push(format!("table {name} has no index {index_name}; {PROVISION}")),
            Some(i) => {
                let have = schema(i.key_schema());
                if have != [hash, range] {
                    out.push(format!(
                        "table {name}: index {index_name} is keyed by {have:?}, the daemon needs [{hash:?}, {range:?}]"
                    ));
                }
            }
        }
    }
    if let Some(attribute) = ttl {
        match within(dynamodb.describe_time_to_live().table_name(name).send(), |e| describe(&e)).await {
            Ok(d) => {
                let d = d.time_to_live_description;
                let on = d.as_ref().and_then(|d| d.time_to_live_status.clone());
                let by = d.as_ref().and_then(|d| d.attribute_name.clone());
                if !matches!(on, Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)) || by.as_deref() != Some(attribute)
                {
                    out.push(format!("table {name} does not expire items by {attribute} (TTL); {PROVISION}"));
                }
            }
            Err(e) => out.push(format!("table {name}: DescribeTimeToLive failed: {e}")),
        }
    }
    out
}

async fn stream(kinesis: &aws_sdk_kinesis::Client, name: &str) -> Vec<String> {
    match within(kinesis.describe_stream_summary().stream_name(name).send(), |e| describe(&e)).await {
        Ok(out) => match out.stream_description_summary.map(|s| s.stream_status) {
            Some(StreamStatus::Active | StreamStatus::Updating) => Vec::new(),
            Some(status) => vec![format!("stream {name} is {}, not ACTIVE", status.as_str())],
            None => vec![format!("stream {name}: DescribeStreamSummary returned no summary")],
        },
        Err(e) if e.contains("ResourceNotFoundException") => vec![format!("stream {name} does not exist; {PROVISION}")],
        Err(e) => vec![format!("stream {name}: DescribeStreamSummary failed: {e}")],
    }
}

async fn redshift_table(config: &redshift::config::RedshiftSinkConfig, sdk: &aws_config::SdkConfig, name: &str) -> Vec<String> {
    let transport = match redshift::Transport::new(config, sdk, None) {
        Ok(t) => t,
        Err(e) => return vec![format!("the Redshift transport cannot be built: {e}")],
    };
    // As long as a statement may take: a paused Serverless workgroup or
    // cluster resumes first.
    let limit = Duration::from_millis(config.statement_timeout_ms).max(CHECK_TIMEOUT);
    let statement = format!("SELECT 1 FROM {name} LIMIT 0");
    let check = tokio::time::timeout(limit, transport.execute(&statement));
    match check.await.map_err(|_| format!("no answer within {} s", limit.as_secs())).and_then(|r| r.map_err(|e| e.to_string())) {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("Redshift: the table {name} cannot be read: {e}")],
    }
}
