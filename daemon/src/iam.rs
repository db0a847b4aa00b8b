//! `cafe-streamd iam-policy`: the least-privilege IAM policy for the
//! configured resources, for running the daemon (`run`) or for creating
//! its resources (`provision`, usually a different, deploy-time role).
//!
//! Owns: which IAM actions each AWS operation the daemon calls needs
//! ([`OPERATIONS`]), and which resources each action is granted on. A test
//! (`daemon/tests/it/iam.rs`) reads the daemon's source for every SDK
//! operation it calls and checks that the policy allows exactly those
//! actions. Must not: call AWS.

use serde_json::{Value, json};

use crate::config::Config;

/// Every AWS SDK operation the daemon calls and the IAM actions it needs.
/// TransactWriteItems is authorised per contained write.
pub const OPERATIONS: &[(&str, &[&str])] = &[
    ("receive_message", &["sqs:ReceiveMessage"]),
    ("delete_message_batch", &["sqs:DeleteMessage"]),
    ("change_message_visibility", &["sqs:ChangeMessageVisibility"]),
    ("change_message_visibility_batch", &["sqs:ChangeMessageVisibility"]),
    ("send_message_batch", &["sqs:SendMessage"]),
    ("get_queue_url", &["sqs:GetQueueUrl"]),
    ("get_queue_attributes", &["sqs:GetQueueAttributes"]),
    ("set_queue_attributes", &["sqs:SetQueueAttributes"]),
    ("create_queue", &["sqs:CreateQueue"]),
    ("list_shards", &["kinesis:ListShards"]),
    ("get_shard_iterator", &["kinesis:GetShardIterator"]),
    ("get_records", &["kinesis:GetRecords"]),
    ("create_stream", &["kinesis:CreateStream"]),
    ("describe_stream_summary", &["kinesis:DescribeStreamSummary"]),
    ("transact_write_items", &["dynamodb:PutItem", "dynamodb:UpdateItem"]),
    ("batch_get_item", &["dynamodb:BatchGetItem"]),
    ("batch_write_item", &["dynamodb:BatchWriteItem"]),
    ("get_item", &["dynamodb:GetItem"]),
    ("put_item", &["dynamodb:PutItem"]),
    ("update_item", &["dynamodb:UpdateItem"]),
    ("scan", &["dynamodb:Scan"]),
    ("query", &["dynamodb:Query"]),
    ("create_table", &["dynamodb:CreateTable"]),
    ("describe_table", &["dynamodb:DescribeTable"]),
    ("update_table", &["dynamodb:UpdateTable"]),
    ("describe_time_to_live", &["dynamodb:DescribeTimeToLive"]),
    ("update_time_to_live", &["dynamodb:UpdateTimeToLive"]),
    ("execute_statement", &["redshift-data:ExecuteStatement"]),
    ("batch_execute_statement", &["redshift-data:BatchExecuteStatement"]),
    ("describe_statement", &["redshift-data:DescribeStatement"]),
    ("cancel_statement", &["redshift-data:CancelStatement"]),
];

/// Which role the policy is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `cafe-streamd run`.
    Run,
    /// `cafe-streamd provision`.
    Provision,
}

/// A queue's name from a name or URL.
fn queue_name(q: &str) -> &str {
    q.rsplit('/').next().unwrap_or(q)
}

fn statement(sid: &str, actions: &[&str], resources: Vec<String>) -> Value {
    json!({"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources})
}

/// The policy document. `region` and `account` go into every ARN (`*`
/// when not known).
pub fn policy(config: &Config, purpose: Purpose, region: &str, account: &str) -> Value {
    let sqs = |q: &str| format!("arn:aws:sqs:{region}:{account}:{}", queue_name(q));
    let table = |t: &str| format!("arn:aws:dynamodb:{region}:{account}:table/{t}");
    let stream = |s: &str| format!("arn:aws:kinesis:{region}:{account}:stream/{s}");
    let d = &config.sinks.dynamodb;
    let r = &config.sinks.redshift;
    let streams: Vec<_> = config.sources.enabled_kinesis().map(|(_, k)| k).collect();
    let inputs: Vec<_> = config.sources.enabled_sqs().map(|(_, s)| s).collect();
    let mut statements = Vec::new();
    match purpose {
        Purpose::Run => {
            statements.push(statement(
                "ConsumeInputQueues",
                &["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl"],
                inputs.iter().map(|s| sqs(&s.queue)).collect(),
            ));
            statements.push(statement(
                "SendRejected",
                &["sqs:SendMessage", "sqs:GetQueueUrl"],
                vec![sqs(&config.rejected.queue)],
            ));
            let mut watched: Vec<String> = inputs.iter().map(|s| sqs(&s.dlq)).collect();
            watched.push(sqs(&config.rejected.queue));
            statements.push(statement("WatchQueueDepth", &["sqs:GetQueueAttributes", "sqs:GetQueueUrl"], watched));
            if !streams.is_empty() {
                statements.push(statement(
                    "ReadStreams",
                    &["kinesis:ListShards", "kinesis:GetShardIterator", "kinesis:GetRecords"],
                    streams.iter().map(|k| stream(&k.stream)).collect(),
                ));
                statements.push(statement(
                    "LeaseTables",
                    &["dynamodb:Scan", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"],
                    streams.iter().map(|k| table(&k.lease_table)).collect(),
                ));
            }
            // Any input may carry order events.
            statements.push(statement(
                "WriteOrders",
                &["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchGetItem"],
                vec![table(&d.orders_table)],
            ));
            statements.push(statement("WritePayments", &["dynamodb:PutItem"], vec![table(&d.payments_table)]));
            statements.push(statement(
                "WriteMenu",
                &["dynamodb:UpdateItem", "dynamodb:BatchGetItem"],
                vec![table(&d.menu_table)],
            ));
            statements.push(statement(
                "EventLedger",
                &["dynamodb:PutItem", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem"],
                vec![table(&d.events_table)],
            ));
            statements.push(statement("WriteAggregates", &["dynamodb:UpdateItem"], vec![table(&d.aggregates_table)]));
            if r.enabled {
                statements.push(statement(
                    "ReadPendingAggregates",
                    &["dynamodb:Query"],
                    vec![format!("{}/index/{}", table(&d.aggregates_table), crate::sinks::dynamodb::MIRROR_INDEX)],
                ));
            }
        }
        Purpose::Provision => {
            let mut queues: Vec<String> = Vec::new();
            for (_, s) in config.sources.sqs() {
                queues.push(sqs(&s.queue));
                queues.push(sqs(&s.dlq));
            }
            queues.push(sqs(&config.rejected.queue));
            statements.push(statement(
                "CreateQueues",
                &["sqs:CreateQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes"],
                queues,
            ));
            let mut tables = vec![&d.aggregates_table, &d.payments_table, &d.orders_table, &d.menu_table, &d.events_table];
            tables.extend(config.sources.kinesis().map(|(_, k)| &k.lease_table));
            statements.push(statement(
                "CreateTables",
                &[
                    "dynamodb:CreateTable",
                    "dynamodb:DescribeTable",
                    "dynamodb:UpdateTable",
                    "dynamodb:DescribeTimeToLive",
                    "dynamodb:UpdateTimeToLive",
                ],
                tables.iter().map(|t| table(t)).collect(),
            ));
            statements.push(statement(
                "CreateStreams",
                &["kinesis:CreateStream", "kinesis:DescribeStreamSummary"],
                config.sources.kinesis().map(|(_, k)| stream(&k.stream)).collect(),
            ));
        }
    }
    if r.enabled && r.transport == "data_api" {
        // Statements: the Data API scopes Execute/BatchExecute by cluster or
        // workgroup; Describe and Cancel act on the caller's own statements.
        let target = if r.cluster_identifier.is_empty() {
            format!("arn:aws:redshift-serverless:{region}:{account}:workgroup/*")
        } else {
            format!("arn:aws:redshift:{region}:{account}:cluster:{}", r.cluster_identifier)
        };
        let run = ["redshift-data:ExecuteStatement", "redshift-data:BatchExecuteStatement"];
        statements.push(statement("RedshiftStatements", &run, vec![target.clone()]));
        let follow = ["redshift-data:DescribeStatement", "redshift-data:CancelStatement"];
        statements.push(json!({
            "Sid": "RedshiftOwnStatements", "Effect": "Allow", "Action": follow, "Resource": "*",
            "Condition": {"StringEquals": {"redshift-data:statement-owner-iam-userid": "${aws:userid}"}}
        }));
        if !r.secret_arn.is_empty() {
            statements.push(statement("RedshiftSecret", &["secretsmanager:GetSecretValue"], vec![r.secret_arn.clone()]));
        } else if !r.cluster_identifier.is_empty() {
            statements.push(statement(
                "RedshiftTemporaryCredentials",
                &["redshift:GetClusterCredentials"],
                vec![
                    format!("arn:aws:redshift:{region}:{account}:dbuser:{}/{}", r.cluster_identifier, r.db_user),
                    format!("arn:aws:redshift:{region}:{account}:dbname:{}/{}", r.cluster_identifier, r.database),
                ],
            ));
        } else {
            statements.push(statement("RedshiftServerlessCredentials", &["redshift-serverless:GetCredentials"], vec![target]));
        }
    }
    json!({"Version": "2012-10-17", "Statement": statements})
}

/// Every action the policy allows.
pub fn actions(policy: &Value) -> Vec<String> {
    let mut out: Vec<String> = policy["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_the_configured_ones() {
        let mut c = Config::default();
        c.sinks.redshift.enabled = true;
        let p = policy(&c, Purpose::Run, "eu-west-1", "123456789012");
        let text = p.to_string();
        assert!(text.contains("arn:aws:sqs:eu-west-1:123456789012:cafe-payments.fifo"));
        assert!(text.contains("arn:aws:dynamodb:eu-west-1:123456789012:table/cafe-aggregates/index/mirror-pending"));
        assert!(!text.contains("CreateTable") && !text.contains("\"Resource\":\"*\""), "{text}");
        assert!(!text.contains("redshift-data"), "the postgres transport needs no IAM");
        if let Some(crate::config::SourceConfig::Kinesis(k)) = c.sources.input_mut("orders") {
            k.enabled = false;
        }
        let p = policy(&c, Purpose::Run, "eu-west-1", "123456789012");
        assert!(!actions(&p).iter().any(|a| a.starts_with("kinesis:")));
    }
}
