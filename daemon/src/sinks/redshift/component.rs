//! The Redshift mirror as a [`Component`]: its checks, its table, what
//! `run` and `provision` may do through the Data API, and its metric series.

use crate::components::{Component, Grant, Resource, Shape, Target};
use crate::metrics::Metrics;
use crate::sinks::dynamodb::MIRROR_INDEX;
use crate::sinks::dynamodb::config::DynamoDbSinkConfig;
use crate::sinks::redshift::config::{RedshiftSinkConfig, TransportKind};

/// `[sinks.redshift]`.
#[derive(Debug)]
pub struct Sink<'a> {
    /// Its settings.
    pub config: &'a RedshiftSinkConfig,
    /// The DynamoDB sink's settings: the mirror reads its aggregates table.
    pub aggregates: &'a DynamoDbSinkConfig,
}

impl Sink<'_> {
    /// What the Data API transport needs, for `run` and `provision` alike
    /// (both send SQL). The postgres transport needs no IAM.
    fn data_api_grants(&self) -> Vec<Grant> {
        let r = self.config;
        if r.transport != TransportKind::DataApi {
            return Vec::new();
        }
        // Statements: the Data API scopes Execute/BatchExecute by cluster or
        // workgroup; Describe and Cancel act on the caller's own statements.
        let target = if r.cluster_identifier.is_empty() {
            "arn:aws:redshift-serverless:{region}:{account}:workgroup/*".to_owned()
        } else {
            format!("arn:aws:redshift:{{region}}:{{account}}:cluster:{}", r.cluster_identifier)
        };
        let mut out = vec![
            Grant::new(
                "RedshiftStatements",
                &["redshift-data:ExecuteStatement", "redshift-data:BatchExecuteStatement"],
                vec![Target::Arn(target.clone())],
            ),
            Grant {
                sid: "RedshiftOwnStatements",
                actions: &["redshift-data:DescribeStatement", "redshift-data:CancelStatement"],
                on: vec![Target::Any],
                condition: Some(serde_json::json!({
                    "StringEquals": {"redshift-data:statement-owner-iam-userid": "${aws:userid}"}
                })),
            },
        ];
        if !r.secret_arn.is_empty() {
            out.push(Grant::new("RedshiftSecret", &["secretsmanager:GetSecretValue"], vec![Target::Arn(r.secret_arn.clone())]));
        } else if !r.cluster_identifier.is_empty() {
            out.push(Grant::new(
                "RedshiftTemporaryCredentials",
                &["redshift:GetClusterCredentials"],
                vec![
                    Target::Arn(format!("arn:aws:redshift:{{region}}:{{account}}:dbuser:{}/{}", r.cluster_identifier, r.db_user)),
                    Target::Arn(format!(
                        "arn:aws:redshift:{{region}}:{{account}}:dbname:{}/{}",
                        r.cluster_identifier, r.database
                    )),
                ],
            ));
        } else {
            out.push(Grant::new(
                "RedshiftServerlessCredentials",
                &["redshift-serverless:GetCredentials"],
                vec![Target::Arn(target)],
            ));
        }
        out
    }
}

impl Component for Sink<'_> {
    fn key(&self) -> String {
        "sinks.redshift".to_owned()
    }

    fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn problems(&self) -> Vec<(String, String)> {
        self.config.problems()
    }

    fn resources(&self) -> Vec<Resource> {
        if !self.config.enabled {
            return Vec::new();
        }
        vec![Resource {
            field: "sinks.redshift.table".to_owned(),
            name: self.config.table.clone(),
            shape: Shape::RedshiftTable(Box::new(self.config.clone())),
        }]
    }

    fn grants(&self) -> Vec<Grant> {
        let mut out = vec![Grant::new(
            "ReadPendingAggregates",
            &["dynamodb:Query"],
            vec![Target::Index(self.aggregates.aggregates_table.clone(), MIRROR_INDEX)],
        )];
        out.extend(self.data_api_grants());
        out
    }

    fn provision_grants(&self) -> Vec<Grant> {
        if self.config.enabled { self.data_api_grants() } else { Vec::new() }
    }

    fn init_metrics(&self, metrics: &Metrics) {
        crate::internal_events::init_mirror_series(metrics);
        crate::internal_events::init_sink_series(metrics, crate::internal_events::Sink::Redshift);
    }
}
