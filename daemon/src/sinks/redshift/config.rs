//! `[sinks.redshift]`: the Redshift mirror of the aggregates.
//!
//! Owns: the mirror's settings, their defaults and their checks.

use serde::{Deserialize, Serialize};

/// `[sinks.redshift]`: the `cafe_store_minute` mirror of `cafe-aggregates`.
///
/// Every change to an aggregate row marks it pending (in the same DynamoDB
/// transaction); the flusher upserts pending rows into Redshift with their
/// absolute counters and version, then clears the marks whose version it
/// wrote. A Redshift outage therefore buffers in DynamoDB, durably and
/// bounded by the number of rows, and the flusher catches up when Redshift
/// is back.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedshiftSinkConfig {
    /// Mirror the aggregates into Redshift. Off: no marks are written.
    pub enabled: bool,
    /// `postgres` (the PostgreSQL wire protocol, port 5439 on Redshift) or
    /// `data_api` (the Redshift Data API, no network path to the cluster needed).
    pub transport: TransportKind,
    /// `postgres`: `postgres://user@host:5439/db?sslmode=verify-full&sslrootcert=/etc/cafe-stream/redshift-ca.pem`.
    /// `sslmode` has libpq's meanings (`disable`, `prefer`, `require`,
    /// `verify-ca`, `verify-full`; `require` by default for a Redshift
    /// host, `prefer` for any other). A password here is never logged.
    pub url: String,
    /// `data_api`: the provisioned cluster (or set `workgroup_name`).
    pub cluster_identifier: String,
    /// `data_api`: the Redshift Serverless workgroup (or set `cluster_identifier`).
    pub workgroup_name: String,
    /// `data_api`: the database.
    pub database: String,
    /// `data_api`: temporary-credentials user (provisioned clusters), or set `secret_arn`.
    pub db_user: String,
    /// `data_api`: Secrets Manager secret with the credentials.
    pub secret_arn: String,
    /// The table (the contract's name by default).
    pub table: String,
    /// Flush every this many milliseconds, for late updates.
    pub flush_interval_ms: u64,
    /// Also flush this long after each minute ends, when its windows close.
    pub window_close_delay_ms: u64,
    /// Most pending rows one flush reads and writes (bounds memory).
    pub max_rows_per_flush: usize,
    /// Data API: the bound of the first DescribeStatement poll's wait; it
    /// doubles up to `max_poll_ms`, each wait jittered (a quarter of the
    /// bound to all of it).
    pub first_poll_ms: u64,
    /// Data API: longest DescribeStatement poll delay.
    pub max_poll_ms: u64,
    /// Give up on one statement batch after this many milliseconds (it is
    /// retried at the next flush).
    pub statement_timeout_ms: u64,
}

/// How the mirror reaches Redshift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum TransportKind {
    /// The PostgreSQL wire protocol (`postgres`).
    Postgres,
    /// The Redshift Data API (`data_api`).
    DataApi,
}

impl From<TransportKind> for &'static str {
    fn from(t: TransportKind) -> &'static str {
        match t {
            TransportKind::Postgres => "postgres",
            TransportKind::DataApi => "data_api",
        }
    }
}

impl TryFrom<String> for TransportKind {
    type Error = crate::config::UnknownChoice;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match s.as_str() {
            "postgres" => Ok(TransportKind::Postgres),
            "data_api" => Ok(TransportKind::DataApi),
            _ => Err(crate::config::UnknownChoice { expected: "postgres or data_api", got: s }),
        }
    }
}

impl Default for RedshiftSinkConfig {
    fn default() -> Self {
        RedshiftSinkConfig {
            enabled: false,
            transport: TransportKind::Postgres,
            url: String::new(),
            cluster_identifier: String::new(),
            workgroup_name: String::new(),
            database: String::new(),
            db_user: String::new(),
            secret_arn: String::new(),
            table: "cafe_store_minute".into(),
            flush_interval_ms: 10_000,
            window_close_delay_ms: 2_000,
            max_rows_per_flush: 20_000,
            first_poll_ms: 50,
            max_poll_ms: 1_000,
            statement_timeout_ms: 60_000,
        }
    }
}

impl RedshiftSinkConfig {
    /// Problems of `[sinks.redshift]` as (dotted field, why).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |field: &str, why: String| out.push((field.to_owned(), why));
        if self.enabled {
            match self.transport {
                TransportKind::Postgres => {
                    if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
                        bad(
                            "sinks.redshift.url",
                            "transport postgres needs a URL like postgres://user@host:5439/db?sslmode=require".into(),
                        );
                    } else if let Some(why) = super::tls::problem(&self.url) {
                        // What the transport parses at start (the URL, its
                        // sslmode, the sslrootcert file), refused here instead.
                        bad("sinks.redshift.url", why);
                    }
                }
                TransportKind::DataApi => {
                    if self.cluster_identifier.is_empty() == self.workgroup_name.is_empty() {
                        bad(
                            "sinks.redshift.cluster_identifier",
                            "transport data_api needs exactly one of cluster_identifier and workgroup_name".into(),
                        );
                    }
                    if self.database.is_empty() {
                        bad("sinks.redshift.database", "transport data_api needs a database".into());
                    }
                    if !self.cluster_identifier.is_empty() && self.db_user.is_empty() && self.secret_arn.is_empty() {
                        bad("sinks.redshift.db_user", "a cluster needs db_user or secret_arn".into());
                    }
                }
            }
        }
        if self.table.is_empty()
            || self.table.len() > 127
            || !self.table.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            bad("sinks.redshift.table", format!("{:?} is not a table name (1..127 of A-Za-z0-9_)", self.table));
        }
        if !(100..=3_600_000).contains(&self.flush_interval_ms) {
            bad("sinks.redshift.flush_interval_ms", format!("must be 100..3600000, got {}", self.flush_interval_ms));
        }
        if self.window_close_delay_ms >= 60_000 {
            bad("sinks.redshift.window_close_delay_ms", format!("must be 0..59999, got {}", self.window_close_delay_ms));
        }
        if !(1..=1_000_000).contains(&self.max_rows_per_flush) {
            bad("sinks.redshift.max_rows_per_flush", format!("must be 1..1000000, got {}", self.max_rows_per_flush));
        }
        if self.first_poll_ms == 0 || self.first_poll_ms > self.max_poll_ms {
            bad("sinks.redshift.first_poll_ms", "must be greater than 0 and at most max_poll_ms".into());
        }
        // At most an hour: a flush holds the mirror table's lock, and the
        // value is also the server's statement_timeout (PostgreSQL refuses
        // more than 2^31 - 1 ms, which would fail every connection).
        if !(1000..=3_600_000).contains(&self.statement_timeout_ms) {
            bad(
                "sinks.redshift.statement_timeout_ms",
                format!("must be 1000..3600000 (1 s to an hour), got {}", self.statement_timeout_ms),
            );
        }
        out
    }
}
