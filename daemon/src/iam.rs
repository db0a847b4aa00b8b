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

use crate::components::{self, Grant, Resource, Service, Target};
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
pub fn queue_name(q: &str) -> &str {
    q.rsplit('/').next().unwrap_or(q)
}

/// The policy document. `region` and `account` go into every ARN (`*`
/// when not known). Each component says what it needs ([`Component::grants`]);
/// grants with the same statement id become one statement.
pub fn policy(config: &Config, purpose: Purpose, region: &str, account: &str) -> Value {
    let mut grants: Vec<Grant> = Vec::new();
    match purpose {
        Purpose::Run => {
            let enabled = components::enabled(config);
            for c in &enabled {
                grants.extend(c.grants());
            }
            // `validate --environment`, run on the instance: read-only looks
            // at the shape of each resource the daemon uses.
            let resources: Vec<Resource> = enabled.iter().flat_map(|c| c.resources()).collect();
            let of = |service: Service, target: fn(String) -> Target| -> Vec<Target> {
                resources.iter().filter(|r| r.shape.service() == service).map(|r| target(r.name.clone())).collect()
            };
            grants.push(Grant::new(
                "CheckQueues",
                &["sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
                of(Service::Sqs, Target::Queue),
            ));
            grants.push(Grant::new(
                "CheckTables",
                &["dynamodb:DescribeTable", "dynamodb:DescribeTimeToLive"],
                of(Service::DynamoDb, Target::Table),
            ));
            grants.push(Grant::new("CheckStreams", &["kinesis:DescribeStreamSummary"], of(Service::Kinesis, Target::Stream)));
        }
        Purpose::Provision => {
            let all = components::list(config);
            let resources: Vec<Resource> = all.iter().flat_map(|c| c.resources()).collect();
            let of = |service: Service, target: fn(String) -> Target| -> Vec<Target> {
                resources.iter().filter(|r| r.shape.service() == service).map(|r| target(r.name.clone())).collect()
            };
            grants.push(Grant::new(
                "CreateQueues",
                &["sqs:CreateQueue", "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes"],
                of(Service::Sqs, Target::Queue),
            ));
            grants.push(Grant::new(
                "CreateTables",
                &[
                    "dynamodb:CreateTable",
                    "dynamodb:DescribeTable",
                    "dynamodb:UpdateTable",
                    "dynamodb:DescribeTimeToLive",
                    "dynamodb:UpdateTimeToLive",
                ],
                of(Service::DynamoDb, Target::Table),
            ));
            grants.push(Grant::new(
                "CreateStreams",
                &["kinesis:CreateStream", "kinesis:DescribeStreamSummary"],
                of(Service::Kinesis, Target::Stream),
            ));
            for c in &all {
                grants.extend(c.provision_grants());
            }
        }
    }
    let arn = |t: &Target| -> String {
        match t {
            Target::Queue(q) => format!("arn:aws:sqs:{region}:{account}:{}", queue_name(q)),
            Target::Table(t) => format!("arn:aws:dynamodb:{region}:{account}:table/{t}"),
            Target::Index(t, i) => format!("arn:aws:dynamodb:{region}:{account}:table/{t}/index/{i}"),
            Target::Stream(s) => format!("arn:aws:kinesis:{region}:{account}:stream/{s}"),
            Target::Arn(a) => a.replace("{region}", region).replace("{account}", account),
            Target::Any => "*".to_owned(),
        }
    };
    // One statement per id, in order of first appearance, over every resource granted under it.
    let mut statements: Vec<(Grant, Vec<String>)> = Vec::new();
    for g in grants {
        if g.on.is_empty() {
            continue;
        }
        let resources: Vec<String> = g.on.iter().map(arn).collect();
        match statements.iter_mut().find(|(s, _)| s.sid == g.sid) {
            Some((s, have)) => {
                // One id, one set of actions: merging different ones would
                // widen or drop a permission.
                assert_eq!((s.actions, &s.condition), (g.actions, &g.condition), "statement {} granted two ways", g.sid);
                for r in resources {
                    if !have.contains(&r) {
                        have.push(r);
                    }
                }
            }
            None => statements.push((g, resources)),
        }
    }
    let statements: Vec<Value> = statements
        .into_iter()
        .map(|(g, resources)| {
            let resource = if resources == ["*"] { json!("*") } else { json!(resources) };
            let mut s = json!({"Sid": g.sid, "Effect": "Allow", "Action": g.actions, "Resource": resource});
            if let Some(c) = g.condition {
                s["Condition"] = c;
            }
            s
        })
        .collect();
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
