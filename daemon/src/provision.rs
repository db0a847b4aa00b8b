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
                done.push(table_with_keys(&dynamodb, name, keys).await?);
                if let Some(index) = index {
                    secondary_index(&dynamodb, name, *index).await?;
                }
                if let Some(attribute) = ttl {
                    expiry(&dynamodb, name, attribute).await?;
                }
            }
            Shape::Stream { shards } => done.push(stream(&kinesis, name, *shards).await?),
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

async fn table_with_keys(dynamodb: &aws_sdk_dynamodb::Client, name: &str, keys: &[&str]) -> anyhow::Result<Provisioned> {
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
    wait_active("table", name, || async {
        let out = dynamodb.describe_table().table_name(name).send().await;
        let out = out.map_err(|e| anyhow::anyhow!("describing table {name}: {}", describe(&e)))?;
        Ok(out.table.and_then(|t| t.table_status) == Some(TableStatus::Active))
    })
    .await?;
    Ok(Provisioned { kind: "dynamodb", name: name.to_owned(), created })
}

async fn stream(kinesis: &aws_sdk_kinesis::Client, name: &str, shards: u32) -> anyhow::Result<Provisioned> {
    let created = match kinesis.create_stream().stream_name(name).shard_count(shards as i32).send().await {
        Ok(_) => true,
        Err(e) if e.code() == Some("ResourceInUseException") => false,
        Err(e) => bail!("creating stream {name}: {}", describe(&e)),
    };
    wait_active("stream", name, || async {
        let out = kinesis.describe_stream_summary().stream_name(name).send().await;
        let out = out.map_err(|e| anyhow::anyhow!("describing stream {name}: {}", describe(&e)))?;
        Ok(out.stream_description_summary.map(|s| s.stream_status) == Some(StreamStatus::Active))
    })
    .await?;
    Ok(Provisioned { kind: "kinesis", name: name.to_owned(), created })
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
