//! `cafe-streamd provision`: creates every resource of the contract,
//! idempotently, on the local stack or a real account.
//!
//! Owns: how each kind of resource is made (FIFO attributes, redrive
//! policies, keys, indexes, expiry); which resources exist and their shapes
//! come from the components (`components.rs`). Must not: delete or change
//! existing resources' data.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndexUpdate, IndexStatus,
    KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use aws_sdk_kinesis::types::StreamStatus;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::QueueAttributeName;

use crate::aws::describe;
use crate::components::{self, Shape};
use crate::config::Config;
use crate::sinks::redshift;

/// What provisioning did to one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// `sqs`, `kinesis`, `dynamodb` or `redshift`.
    pub kind: &'static str,
    /// Resource name.
    pub name: String,
    /// True if it was created now, false if it existed.
    pub created: bool,
}

/// Creates every resource of every configured component that does not
/// exist yet, in the order the components list them.
pub async fn provision(config: &Config) -> anyhow::Result<Vec<Provisioned>> {
    let sdk = crate::aws::sdk_config(&config.aws).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let mut done = Vec::new();
    // Tables and streams are created one after the other without waiting,
    // then waited for: DynamoDB and Kinesis create them side by side
    // (seconds each on AWS, half a second on the local stack), so
    // provisioning waits about one creation, not the sum of them.
    let mut tables = Vec::new();
    let mut streams = Vec::new();
    for resource in components::list(config).iter().flat_map(|c| c.resources()) {
        let name = resource.name.as_str();
        match &resource.shape {
            Shape::Queue { redrive, visibility_timeout_secs } => {
                let mut attrs = HashMap::new();
                if name.ends_with(".fifo") {
                    attrs.insert(QueueAttributeName::FifoQueue, "true".to_owned());
                    // Producers may set their own MessageDeduplicationId; without one
                    // the body is the dedup key, so `aws sqs send-message` just works.
                    attrs.insert(QueueAttributeName::ContentBasedDeduplication, "true".to_owned());
                }
                if let Some((dlq, max_receive_count)) = redrive {
                    let arn = queue_arn(&sqs, dlq).await?;
                    attrs.insert(
                        QueueAttributeName::RedrivePolicy,
                        serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max_receive_count.to_string()})
                            .to_string(),
                    );
                }
                if let Some(v) = visibility_timeout_secs {
                    attrs.insert(QueueAttributeName::VisibilityTimeout, v.to_string());
                }
                done.push(queue(&sqs, name, attrs).await?.0);
            }
            Shape::Table { keys, index, ttl } => {
                done.push(create_table(&dynamodb, name, keys).await?);
                tables.push((name.to_owned(), *index, *ttl));
            }
            Shape::Stream { shards } => {
                streams.push((done.len(), *shards));
                done.push(create_stream(&kinesis, name, *shards).await?);
            }
            Shape::RedshiftTable(redshift) => {
                let transport =
                    redshift::Transport::new(redshift, &sdk, None).map_err(|e| anyhow::anyhow!("sinks.redshift.url: {e}"))?;
                transport
                    .execute(&redshift::sql::create_table(name))
                    .await
                    .map_err(|e| anyhow::anyhow!("creating Redshift table {name}: {e}"))?;
                done.push(Provisioned { kind: "redshift", name: name.to_owned(), created: false });
            }
        }
    }
    for (at, shards) in streams {
        let created_again = stream_active(&kinesis, &done[at].name, shards).await?;
        done[at].created |= created_again;
    }
    for (name, index, ttl) in tables {
        table_active(&dynamodb, &name).await?;
        if let Some(index) = index {
            secondary_index(&dynamodb, &name, index).await?;
        }
        if let Some(attribute) = ttl {
            expiry(&dynamodb, &name, attribute).await?;
        }
    }
    Ok(done)
}

/// The ARN of an existing queue (a dead-letter queue, for a redrive policy).
async fn queue_arn(sqs: &aws_sdk_sqs::Client, name: &str) -> anyhow::Result<String> {
    let url = sqs
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("looking up {name} (provisioned before the queues it serves): {}", describe(&e)))?
        .queue_url
        .context("GetQueueUrl returned no URL")?;
    sqs.get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("reading the ARN of {name}: {}", describe(&e)))?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .context("the queue has no QueueArn")
}

/// A global secondary index (string keys, every attribute projected),
/// added to an existing table if missing.
async fn secondary_index(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    (name, hash, range): (&str, &str, &str),
) -> anyhow::Result<()> {
    let describe_index = || async {
        let out = dynamodb.describe_table().table_name(table).send().await;
        let out = out.map_err(|e| anyhow::anyhow!("describing table {table}: {}", describe(&e)))?;
        let index = out.table.map(|t| t.global_secondary_indexes.unwrap_or_default()).unwrap_or_default();
        Ok::<_, anyhow::Error>(index.into_iter().find(|i| i.index_name() == Some(name)).map(|i| i.index_status))
    };
    if describe_index().await?.is_none() {
        let create = CreateGlobalSecondaryIndexAction::builder()
            .index_name(name)
            .key_schema(KeySchemaElement::builder().attribute_name(hash).key_type(KeyType::Hash).build()?)
            .key_schema(KeySchemaElement::builder().attribute_name(range).key_type(KeyType::Range).build()?)
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()?;
        dynamodb
            .update_table()
            .table_name(table)
            .attribute_definitions(
                AttributeDefinition::builder().attribute_name(hash).attribute_type(ScalarAttributeType::S).build()?,
            )
            .attribute_definitions(
                AttributeDefinition::builder().attribute_name(range).attribute_type(ScalarAttributeType::S).build()?,
            )
            .global_secondary_index_updates(GlobalSecondaryIndexUpdate::builder().create(create).build())
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("adding index {name} to {table}: {}", describe(&e)))?;
    }
    wait_active("index", name, || async { Ok(matches!(describe_index().await?, Some(None | Some(IndexStatus::Active)))) }).await
}

/// Expiry of a table's items by `attribute` (epoch seconds).
async fn expiry(dynamodb: &aws_sdk_dynamodb::Client, table: &str, attribute: &str) -> anyhow::Result<()> {
    let current = dynamodb
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("describing the TTL of {table}: {}", describe(&e)))?;
    if current.time_to_live_description.and_then(|d| d.attribute_name) == Some(attribute.to_owned()) {
        return Ok(());
    }
    let spec = TimeToLiveSpecification::builder().attribute_name(attribute).enabled(true).build()?;
    dynamodb
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("enabling the TTL of {table}: {}", describe(&e)))?;
    Ok(())
}

async fn queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    attrs: HashMap<QueueAttributeName, String>,
) -> anyhow::Result<(Provisioned, String)> {
    if let Ok(out) = sqs.get_queue_url().queue_name(name).send().await
        && let Some(url) = out.queue_url
    {
        // Keep an existing queue's settings in line with the config.
        let settable: HashMap<_, _> = attrs.into_iter().filter(|(k, _)| *k != QueueAttributeName::FifoQueue).collect();
        if !settable.is_empty() {
            sqs.set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(settable))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!("updating queue {name}: {}", describe(&e)))?;
        }
        return Ok((Provisioned { kind: "sqs", name: name.to_owned(), created: false }, url));
    }
    let out = sqs
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(attrs))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("creating queue {name}: {}", describe(&e)))?;
    let url = out.queue_url.context("CreateQueue returned no URL")?;
    Ok((Provisioned { kind: "sqs", name: name.to_owned(), created: true }, url))
}

/// Creates table `name` keyed by `keys` (a hash key, then a range key) if
/// it does not exist, without waiting for it: [`table_active`] does.
async fn create_table(dynamodb: &aws_sdk_dynamodb::Client, name: &str, keys: &[&str]) -> anyhow::Result<Provisioned> {
    let mut req = dynamodb.create_table().table_name(name).billing_mode(BillingMode::PayPerRequest);
    for (i, attr) in keys.iter().enumerate() {
        let key_type = if i == 0 { KeyType::Hash } else { KeyType::Range };
        req = req
            .attribute_definitions(
                AttributeDefinition::builder().attribute_name(*attr).attribute_type(ScalarAttributeType::S).build()?,
            )
            .key_schema(KeySchemaElement::builder().attribute_name(*attr).key_type(key_type).build()?);
    }
    let created = match req.send().await {
        Ok(_) => true,
        Err(e) if e.code() == Some("ResourceInUseException") => false,
        Err(e) => bail!("creating table {name}: {}", describe(&e)),
    };
    Ok(Provisioned { kind: "dynamodb", name: name.to_owned(), created })
}

/// Waits until table `name` is ACTIVE.
async fn table_active(dynamodb: &aws_sdk_dynamodb::Client, name: &str) -> anyhow::Result<()> {
    wait_active("table", name, || async {
        match dynamodb.describe_table().table_name(name).send().await {
            Ok(out) => Ok(out.table.and_then(|t| t.table_status) == Some(TableStatus::Active)),
            // DescribeTable is eventually consistent: just after CreateTable
            // it may not know the table yet. Not ACTIVE yet, as the SDK's own
            // waiter has it.
            Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => Ok(false),
            Err(e) => bail!("describing table {name}: {}", describe(&e)),
        }
    })
    .await
}

/// Creates the stream unless it exists (ResourceInUseException: it does,
/// or is being created or deleted; [`stream_active`] tells which).
async fn create_stream(kinesis: &aws_sdk_kinesis::Client, name: &str, shards: u32) -> anyhow::Result<Provisioned> {
    let created = match kinesis.create_stream().stream_name(name).shard_count(shards as i32).send().await {
        Ok(_) => true,
        Err(e) if e.code() == Some("ResourceInUseException") => false,
        Err(e) => bail!("creating stream {name}: {}", describe(&e)),
    };
    Ok(Provisioned { kind: "kinesis", name: name.to_owned(), created })
}

/// Waits until the stream is ACTIVE; whether it had to create it again. A
/// stream DescribeStreamSummary does not know is created again: one that
/// was DELETING when CreateStream found its name in use is gone now (its
/// name is free only then), and one just created and not yet known is
/// answered "in use", harmlessly.
async fn stream_active(kinesis: &aws_sdk_kinesis::Client, name: &str, shards: u32) -> anyhow::Result<bool> {
    let created_again = std::cell::Cell::new(false);
    wait_active("stream", name, || async {
        match kinesis.describe_stream_summary().stream_name(name).send().await {
            Ok(out) => Ok(out.stream_description_summary.map(|s| s.stream_status) == Some(StreamStatus::Active)),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => {
                if create_stream(kinesis, name, shards).await?.created {
                    created_again.set(true);
                }
                Ok(false)
            }
            Err(e) => bail!("describing stream {name}: {}", describe(&e)),
        }
    })
    .await?;
    Ok(created_again.get())
}

/// Polls `is_active` for up to two minutes: at once, then after 100 ms, the
/// pause doubling to a second (a table of the local stack is CREATING for
/// half a second, one on AWS for seconds).
async fn wait_active<F, Fut>(what: &str, name: &str, mut is_active: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut pause = Duration::from_millis(100);
    loop {
        if is_active().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() + pause > deadline {
            bail!("{what} {name} did not become ACTIVE within 2 minutes");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aws_sdk_dynamodb::config::http::{HttpRequest, HttpResponse};
    use aws_smithy_runtime_api::client::http::{HttpConnector, HttpConnectorFuture};

    use super::*;

    /// A DynamoDB (in memory) that creates the table CREATING, does not know
    /// it at the first DescribeTable (eventually consistent), says CREATING
    /// at the second and ACTIVE at the third; and the operations asked.
    #[derive(Debug, Clone, Default)]
    struct Creating(Arc<Mutex<Vec<String>>>);

    impl HttpConnector for Creating {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            let op =
                request.headers().get("x-amz-target").unwrap_or_default().trim_start_matches("DynamoDB_20120810.").to_owned();
            let mut asked = self.0.lock().expect("not poisoned");
            asked.push(op.clone());
            let describes = asked.iter().filter(|o| *o == "DescribeTable").count();
            let (code, body) = match (op.as_str(), describes) {
                ("CreateTable", _) => {
                    (200, serde_json::json!({"TableDescription": {"TableName": "t", "TableStatus": "CREATING"}}))
                }
                (_, 1) => (
                    400,
                    serde_json::json!({"__type": "com.amazonaws.dynamodb.v20120810#ResourceNotFoundException", "message": "Requested resource not found: Table: t not found"}),
                ),
                (_, 2) => (200, serde_json::json!({"Table": {"TableName": "t", "TableStatus": "CREATING"}})),
                _ => (200, serde_json::json!({"Table": {"TableName": "t", "TableStatus": "ACTIVE"}})),
            };
            let status = code.try_into().expect("a valid status");
            HttpConnectorFuture::ready(Ok(HttpResponse::new(status, aws_smithy_types::body::SdkBody::from(body.to_string()))))
        }
    }

    /// A Kinesis (in memory) whose stream is DELETING: CreateStream finds its
    /// name in use, DescribeStreamSummary says DELETING, then knows no such
    /// stream; CreateStream then creates it, CREATING, then ACTIVE.
    #[derive(Debug, Clone, Default)]
    struct Deleting(Arc<Mutex<Vec<String>>>);

    impl HttpConnector for Deleting {
        fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
            let op = request.headers().get("x-amz-target").unwrap_or_default().trim_start_matches("Kinesis_20131202.").to_owned();
            let mut asked = self.0.lock().expect("not poisoned");
            asked.push(op.clone());
            let describes = asked.iter().filter(|o| *o == "DescribeStreamSummary").count();
            let creates = asked.iter().filter(|o| *o == "CreateStream").count();
            let summary = |status: &str| {
                serde_json::json!({"StreamDescriptionSummary": {
                    "StreamName": "s", "StreamARN": "arn:aws:kinesis:us-east-1:000000000000:stream/s",
                    "StreamStatus": status, "RetentionPeriodHours": 24, "StreamCreationTimestamp": 0,
                    "EnhancedMonitoring": [], "OpenShardCount": 1}})
            };
            let (code, body) = match (op.as_str(), creates, describes) {
                ("CreateStream", 1, _) => (
                    400,
                    serde_json::json!({"__type": "ResourceInUseException", "message": "Stream s under account 000000000000 already exists."}),
                ),
                ("CreateStream", _, _) => (200, serde_json::json!({})),
                (_, 1, 1) => (200, summary("DELETING")),
                (_, 1, _) => (
                    400,
                    serde_json::json!({"__type": "ResourceNotFoundException", "message": "Stream s under account 000000000000 not found."}),
                ),
                (_, _, 3) => (200, summary("CREATING")),
                _ => (200, summary("ACTIVE")),
            };
            let status = code.try_into().expect("a valid status");
            HttpConnectorFuture::ready(Ok(HttpResponse::new(status, aws_smithy_types::body::SdkBody::from(body.to_string()))))
        }
    }

    /// A stream being deleted when provisioning finds its name in use is
    /// waited for until it is gone, then created again and waited for until
    /// ACTIVE, and reported created; not a failure to describe it.
    #[tokio::test]
    async fn a_stream_being_deleted_is_created_again_once_it_is_gone() {
        let connector = Deleting::default();
        let kinesis = aws_sdk_kinesis::Client::new(&crate::sinks::in_process_sdk_config(connector.clone()));
        let done = create_stream(&kinesis, "s", 1).await.expect("in use is not an error");
        assert!(!done.created);
        assert!(stream_active(&kinesis, "s", 1).await.expect("active"), "created again");
        assert_eq!(
            *connector.0.lock().expect("not poisoned"),
            [
                "CreateStream",
                "DescribeStreamSummary",
                "DescribeStreamSummary",
                "CreateStream",
                "DescribeStreamSummary",
                "DescribeStreamSummary"
            ]
        );
    }

    /// A table DescribeTable does not know yet, just after CreateTable, is
    /// waited for as one still CREATING, not reported as a failure.
    #[tokio::test]
    async fn a_new_table_not_yet_described_is_waited_for() {
        let connector = Creating::default();
        let dynamodb = aws_sdk_dynamodb::Client::new(&crate::sinks::in_process_sdk_config(connector.clone()));
        let done = create_table(&dynamodb, "t", &["k"]).await.expect("created");
        assert!(done.created);
        table_active(&dynamodb, "t").await.expect("active");
        assert_eq!(
            *connector.0.lock().expect("not poisoned"),
            ["CreateTable", "DescribeTable", "DescribeTable", "DescribeTable"]
        );
    }
}
