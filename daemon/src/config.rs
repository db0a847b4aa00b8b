//! The daemon's configuration: one TOML file, `CAFE_...` environment
//! overrides, and validation that names every problem at once.
//!
//! Owns: the config structs (their doc comments are the user's reference),
//! defaults, and the two stages raw -> validated. Must not: touch AWS or
//! start anything; `cafe-streamd validate` runs exactly this module.
//!
//! Environment overrides: `CAFE_<SECTION>__<FIELD>=value`, path segments
//! joined by a double underscore, e.g. `CAFE_ADMIN__LISTEN=0.0.0.0:9464` or
//! `CAFE_SOURCES__PAYMENTS__RECEIVERS=8`. The value is read as a TOML value
//! when it parses as one (numbers, booleans, arrays), else as a string.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use pipeline::fraud::FraudConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::logging::{LogConfig, LogFormat};
pub use crate::sinks::dynamodb::config::DynamoDbSinkConfig;
pub use crate::sinks::redshift::config::RedshiftSinkConfig;
pub use crate::sinks::rejected::config::RejectedConfig;
pub use crate::sources::kinesis::config::KinesisSourceConfig;
pub use crate::sources::sqs::config::SqsSourceConfig;

/// The whole validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Config {
    /// `[aws]`
    pub aws: AwsConfig,
    /// `[sources.*]`
    pub sources: SourcesConfig,
    /// `[pipeline]`
    pub pipeline: PipelineConfig,
    /// `[sinks.*]`
    pub sinks: SinksConfig,
    /// `[rejected]`
    pub rejected: RejectedConfig,
    /// `[fraud]`
    pub fraud: FraudConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[shutdown]`
    pub shutdown: ShutdownConfig,
    /// `[log]`
    pub log: LogConfig,
}

/// `[aws]`: how to reach AWS. Credentials and endpoints come from the
/// standard AWS environment (`AWS_PROFILE`, `AWS_ENDPOINT_URL_<SERVICE>`, the
/// instance role, ...).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region; unset means the standard AWS region chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
}

/// `[sources]`: the inputs, one table each, by name. Every input accepts
/// every event type.
///
/// `payments` and `menu` (SQS) and `orders` (Kinesis) exist with the
/// contract's names and defaults; configure them under those names (or
/// turn them off with `enabled = false`). Any other name is one more input
/// of the kind its `type` field says, `sqs` or `kinesis`:
///
/// ```toml
/// [sources.orders_fifo]
/// type = "sqs"
/// queue = "cafe-orders.fifo"   # dlq defaults to cafe-orders-dlq.fifo
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct SourcesConfig {
    /// Every input by name, in name order.
    pub inputs: BTreeMap<String, SourceConfig>,
}

/// One input.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    /// An SQS queue (`type = "sqs"`).
    Sqs(SqsSourceConfig),
    /// A Kinesis stream shared through a lease table (`type = "kinesis"`).
    Kinesis(KinesisSourceConfig),
}

impl Default for SourcesConfig {
    fn default() -> Self {
        SourcesConfig {
            inputs: BTreeMap::from([
                ("menu".to_owned(), SourceConfig::Sqs(SqsSourceConfig::menu_defaults())),
                ("orders".to_owned(), SourceConfig::Kinesis(KinesisSourceConfig::default())),
                ("payments".to_owned(), SourceConfig::Sqs(SqsSourceConfig::default())),
            ]),
        }
    }
}

impl SourcesConfig {
    /// Every SQS input, enabled or not, by name.
    pub fn sqs(&self) -> impl Iterator<Item = (&str, &SqsSourceConfig)> {
        self.inputs.iter().filter_map(|(n, s)| match s {
            SourceConfig::Sqs(q) => Some((n.as_str(), q)),
            SourceConfig::Kinesis(_) => None,
        })
    }

    /// Every Kinesis input, enabled or not, by name.
    pub fn kinesis(&self) -> impl Iterator<Item = (&str, &KinesisSourceConfig)> {
        self.inputs.iter().filter_map(|(n, s)| match s {
            SourceConfig::Kinesis(k) => Some((n.as_str(), k)),
            SourceConfig::Sqs(_) => None,
        })
    }

    /// The enabled SQS inputs.
    pub fn enabled_sqs(&self) -> impl Iterator<Item = (&str, &SqsSourceConfig)> {
        self.sqs().filter(|(_, s)| s.enabled)
    }

    /// The enabled Kinesis inputs.
    pub fn enabled_kinesis(&self) -> impl Iterator<Item = (&str, &KinesisSourceConfig)> {
        self.kinesis().filter(|(_, k)| k.enabled)
    }

    /// The SQS input `name`.
    pub fn sqs_input(&self, name: &str) -> Option<&SqsSourceConfig> {
        self.sqs().find(|(n, _)| *n == name).map(|(_, s)| s)
    }

    /// The Kinesis input `name`.
    pub fn kinesis_input(&self, name: &str) -> Option<&KinesisSourceConfig> {
        self.kinesis().find(|(n, _)| *n == name).map(|(_, k)| k)
    }

    /// The input `name`, to change it.
    pub fn input_mut(&mut self, name: &str) -> Option<&mut SourceConfig> {
        self.inputs.get_mut(name)
    }
}

impl Config {
    /// This configuration with every secret in it replaced by `REDACTED`
    /// (today the password a `sinks.redshift.url` may carry).
    #[must_use]
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.sinks.redshift.url = redact_url(&c.sinks.redshift.url);
        c
    }

    /// The whole configuration as TOML, secrets redacted: what
    /// `cafe-streamd config` prints, and a file that loads to the same
    /// configuration (less the secrets).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(&self.redacted())
    }

    /// What is allowed but unsafe, as (field, why): `validate` prints it and
    /// `run` logs it.
    pub fn warnings(&self) -> Vec<(String, String)> {
        let r = &self.sinks.redshift;
        let mut out = Vec::new();
        if r.enabled
            && r.transport == crate::sinks::redshift::config::TransportKind::Postgres
            && let Some(why) = crate::sinks::redshift::tls::weakness(&r.url)
        {
            out.push(("sinks.redshift.url".to_owned(), why));
        }
        out
    }
}

/// `url` with any password in it replaced by `REDACTED`: the one of a
/// URL's user info (`postgres://user:secret@host/db`; as tokio-postgres
/// reads it, the user info ends at the first `@`, so the password may hold
/// `/`, `?` or `#`) and the value of any `password` key (a URL's query, or
/// libpq's `key=value` form), its name percent-decoded as the driver does.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(start) = out.find("://").map(|i| i + 3)
        && let Some(at) = out[start..].find('@').map(|i| start + i)
        && let Some(colon) = out[start..at].find(':').map(|i| start + i)
    {
        out.replace_range(colon + 1..at, "REDACTED");
    }
    // Each `key=value` of the query or of the key/value form.
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(eq) = rest.find('=') {
        let key_start = rest[..eq].rfind(['?', '&', ' ']).map_or(0, |i| i + 1);
        let key = crate::sinks::redshift::tls::percent_decode(&rest[key_start..eq]);
        let value_end = rest[eq + 1..].find(['&', ' ', '#']).map_or(rest.len(), |i| eq + 1 + i);
        result.push_str(&rest[..=eq]);
        if key.eq_ignore_ascii_case("password") {
            result.push_str("REDACTED");
        } else {
            result.push_str(&rest[eq + 1..value_end]);
        }
        rest = &rest[value_end..];
    }
    result.push_str(rest);
    result
}

/// The kind an input of this name has when its `type` is not given.
fn builtin_kind(name: &str) -> Option<&'static str> {
    match name {
        "payments" | "menu" => Some("sqs"),
        "orders" => Some("kinesis"),
        _ => None,
    }
}

/// Reads `[sources]`: each input's table into its kind's settings, with
/// the contract's defaults for the built-in names. Problems are (field, why).
fn read_sources(value: &toml::Value, problems: &mut Vec<(String, String)>) -> SourcesConfig {
    let mut out = SourcesConfig::default();
    let Some(table) = value.as_table() else {
        problems.push(("sources".into(), "must be a table of inputs, e.g. [sources.payments]".into()));
        return out;
    };
    for (name, v) in table {
        let field = format!("sources.{name}");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
            problems.push((field, "an input name is 1 or more of a-z, 0-9, _ and -".into()));
            continue;
        }
        let Some(t) = v.as_table() else {
            problems.push((field, "must be a table".into()));
            continue;
        };
        let mut t = t.clone();
        let kind = match t.remove("type") {
            Some(toml::Value::String(k)) => k,
            Some(_) => {
                problems.push((format!("{field}.type"), "must be \"sqs\" or \"kinesis\"".into()));
                continue;
            }
            None => match builtin_kind(name) {
                Some(k) => k.to_owned(),
                None => {
                    problems.push((
                        format!("{field}.type"),
                        "missing: an input other than payments, menu and orders needs type = \"sqs\" or \"kinesis\"".into(),
                    ));
                    continue;
                }
            },
        };
        // Given, as a name: a value of the wrong type is reported and the
        // default stands in.
        let has = |k: &str| t.get(k).is_some_and(toml::Value::is_str);
        let (has_queue, has_dlq, has_stream, has_lease_table) = (has("queue"), has("dlq"), has("stream"), has("lease_table"));
        let input = match kind.as_str() {
            "sqs" => match typed_all::<SqsSourceConfig>(toml::Value::Table(t), &field) {
                (Some(mut s), found) => {
                    problems.extend(found);
                    if name == "menu" && builtin_kind(name) == Some("sqs") {
                        let menu = SqsSourceConfig::menu_defaults();
                        if !has_queue {
                            s.queue = menu.queue;
                        }
                        if !has_dlq {
                            s.dlq = menu.dlq;
                        }
                    } else if name != "payments" {
                        if !has_queue {
                            s.queue = String::new();
                        }
                        if !has_dlq {
                            s.dlq = SqsSourceConfig::default_dlq(&s.queue);
                        }
                    }
                    SourceConfig::Sqs(s)
                }
                (None, found) => {
                    problems.extend(found);
                    continue;
                }
            },
            "kinesis" => match typed_all::<KinesisSourceConfig>(toml::Value::Table(t), &field) {
                (Some(mut k), found) => {
                    problems.extend(found);
                    if name != "orders" {
                        if !has_stream {
                            k.stream = String::new();
                        }
                        if !has_lease_table {
                            k.lease_table = format!("{}-leases", k.stream);
                        }
                    }
                    SourceConfig::Kinesis(k)
                }
                (None, found) => {
                    problems.extend(found);
                    continue;
                }
            },
            other => {
                problems.push((format!("{field}.type"), format!("must be \"sqs\" or \"kinesis\", got {other:?}")));
                continue;
            }
        };
        out.inputs.insert(name.clone(), input);
    }
    out
}

/// `[pipeline]`: batching, backpressure and the CPU pool.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most events in one batch sent to the CPU pool from a queue. A
    /// shard's batch is one GetRecords result, never split (its
    /// `max_records` bounds it), with the results read ahead coalesced
    /// into it while it holds fewer than this.
    pub max_batch_events: usize,
    /// How long a partial batch waits for more events, in milliseconds.
    pub linger_ms: u64,
    /// Capacity of each bounded channel between stages, in batches.
    pub channel_capacity: usize,
    /// Threads of the rayon pool; 0 means one per core.
    pub cpu_threads: usize,
    /// Batches being written to sinks at once.
    pub sink_concurrency: usize,
    /// The menu stage's JSON work factor: each item's canonical JSON is
    /// parsed and written again this many times (the story's re-processing
    /// of every item; 0 turns it off).
    pub menu_json_rounds: u32,
    /// An event whose `ts` is more than this many seconds ahead of the
    /// daemon's clock is rejected as `ts_out_of_range` (contract v1.1).
    pub max_future_secs: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_batch_events: 250,
            linger_ms: 50,
            channel_capacity: 16,
            cpu_threads: 0,
            sink_concurrency: 8,
            menu_json_rounds: 100,
            max_future_secs: pipeline::event::DEFAULT_MAX_FUTURE_SECS,
        }
    }
}

/// `[sinks]`: where results are written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    /// `[sinks.dynamodb]`
    pub dynamodb: DynamoDbSinkConfig,
    /// `[sinks.redshift]`
    pub redshift: RedshiftSinkConfig,
}

/// `[admin]`: the metrics and health endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`. Loopback unless you mean it.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// `/readyz` says not ready while an input has failed to read, or a
    /// sink to write, for longer than this many seconds.
    pub unready_after_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: SocketAddr::from(([127, 0, 0, 1], 9464)), unready_after_secs: 60 }
    }
}

fn socket_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| serde::de::Error::custom(format!("{text:?} is not an address like 127.0.0.1:9464")))
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// On SIGTERM, how long draining may take before the daemon gives up and
    /// exits non-zero (undeleted messages are redelivered, so nothing is lost).
    pub grace_period_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_period_secs: 30 }
    }
}

/// A setting that must be one of a few words and is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be {expected}, got {got:?}")]
pub struct UnknownChoice {
    /// The words it may be, e.g. `postgres or data_api`.
    pub expected: &'static str,
    /// What it was.
    pub got: String,
}

/// One configuration problem: where, which field, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, or `environment CAFE_...` for an override.
    pub origin: String,
    /// Dotted field path.
    pub field: String,
    /// What is wrong.
    pub why: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.field, self.why)
    }
}

/// Every problem found; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

const ENV_PREFIX: &str = "CAFE_";

/// Loads `path` (or the defaults when `None`), applies the `CAFE_...`
/// overrides from `env`, and validates.
pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, Problems> {
    let origin = path.map_or_else(|| "defaults".to_owned(), |p| p.display().to_string());
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            Problems(vec![Problem { origin: origin.clone(), field: "-".into(), why: format!("cannot read: {e}") }])
        })?,
        None => String::new(),
    };
    parse(&text, &origin, env)
}

/// Like [`load`], on text already read. `origin` names it in problems.
pub fn parse(text: &str, origin: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, Problems> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        Problems(vec![Problem { origin: origin.to_owned(), field: "-".into(), why: format!("not valid TOML: {}", e.message()) }])
    })?;
    let mut problems = Vec::new();
    let mut from_env: Vec<(String, String)> = Vec::new();
    for (key, value) in env {
        let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        // CAFE_ variables without a section path (e.g. CAFE_LOG) are not config.
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        match set_path(&mut table, &path, env_value(&value)) {
            Ok(()) => from_env.push((path.join("."), key)),
            Err(why) => {
                problems.push(Problem { origin: format!("environment {key}"), field: path.join("."), why: why.to_string() })
            }
        }
    }
    let origin_of = |field: &str| -> String {
        from_env
            .iter()
            .find(|(p, _)| field == p || field.starts_with(&format!("{p}.")) || field.starts_with(&format!("{p}[")))
            .map_or_else(|| origin.to_owned(), |(_, k)| format!("environment {k}"))
    };

    let known = ["aws", "sources", "pipeline", "sinks", "rejected", "fraud", "admin", "shutdown", "log"];
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            problems.push(Problem {
                origin: origin_of(key),
                field: key.clone(),
                why: format!("unknown section; expected one of {}", known.join(", ")),
            });
        }
    }

    let mut cfg = Config::default();
    macro_rules! take {
        ($name:literal, $ty:ty, $slot:expr) => {
            if let Some(v) = table.get($name) {
                let (value, found) = typed_all::<$ty>(v.clone(), $name);
                if let Some(x) = value {
                    $slot = x;
                }
                for (field, why) in found {
                    problems.push(Problem { origin: origin_of(&field), field, why });
                }
            }
        };
    }
    take!("aws", AwsConfig, cfg.aws);
    if let Some(v) = table.get("sources") {
        let mut found = Vec::new();
        cfg.sources = read_sources(v, &mut found);
        for (field, why) in found {
            problems.push(Problem { origin: origin_of(&field), field, why });
        }
    }
    take!("pipeline", PipelineConfig, cfg.pipeline);
    take!("sinks", SinksConfig, cfg.sinks);
    take!("rejected", RejectedConfig, cfg.rejected);
    take!("fraud", FraudConfig, cfg.fraud);
    take!("admin", AdminConfig, cfg.admin);
    take!("shutdown", ShutdownConfig, cfg.shutdown);
    take!("log", LogConfig, cfg.log);

    for (field, why) in semantic_problems(&cfg) {
        problems.push(Problem { origin: origin_of(&field), field, why });
    }
    if problems.is_empty() { Ok(cfg) } else { Err(Problems(problems)) }
}

/// Deserializes one section, naming every field that does not: each bad
/// field is named, taken out and the section read again, so the value
/// comes back with defaults in place of the bad fields (for the checks
/// that follow) and every problem is reported, not only the first.
fn typed_all<T: DeserializeOwned>(mut v: toml::Value, prefix: &str) -> (Option<T>, Vec<(String, String)>) {
    let mut problems = Vec::new();
    loop {
        let e = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return (Some(t), problems),
            Err(e) => e,
        };
        // The keys down to the bad field; inside an array, the array itself
        // (its other elements are not checked then, but the section's other
        // fields are).
        let mut keys: Vec<String> = Vec::new();
        for segment in e.path().iter() {
            match segment {
                serde_path_to_error::Segment::Map { key } => keys.push(key.clone()),
                _ => break,
            }
        }
        let e_path_len = e.path().iter().count();
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() { prefix.to_owned() } else { format!("{prefix}.{path}") };
        let why = e.into_inner().message().to_owned();
        // An unknown field may be reported at its section; take out the field alone.
        if let Some(name) = why.strip_prefix("unknown field `").and_then(|r| r.split('`').next())
            && keys.len() == e_path_len
            && keys.last().map(String::as_str) != Some(name)
        {
            keys.push(name.to_owned());
        }
        problems.push((field, why));
        // Without the field, its default stands in; if it cannot be taken
        // out (the section itself is wrong), stop here.
        if !remove_key(&mut v, &keys) {
            return (None, problems);
        }
    }
}

/// Removes the value at `keys` from nested tables; false if there is none.
fn remove_key(v: &mut toml::Value, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else { return false };
    let mut cur = v;
    for k in parents {
        match cur.as_table_mut().and_then(|t| t.get_mut(k)) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    cur.as_table_mut().is_some_and(|t| t.remove(last).is_some())
}

fn env_value(raw: &str) -> toml::Value {
    // A bare TOML value parses as `v = <raw>`; anything else is a string.
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// An override whose path runs through a value that is not a table.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a section")]
struct NotASection(String);

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), NotASection> {
    let Some((last, parents)) = path.split_last() else { return Err(NotASection("the empty path".into())) };
    let mut cur = table;
    for p in parents {
        let entry = cur.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| NotASection(p.clone()))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

fn semantic_problems(c: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let components = crate::components::list(c);
    for component in &components {
        out.extend(component.problems());
    }
    out.extend(c.log.problems());
    let mut bad = |field: &str, why: String| out.push((field.to_owned(), why));

    // Payments are scored in arrival order per customer: the contract's
    // payments input keeps that order only as a FIFO queue.
    if let Some(p) = c.sources.sqs_input("payments")
        && !p.is_fifo()
    {
        bad("sources.payments.queue", format!("{:?} must be a FIFO queue (name ending in .fifo)", p.queue));
    }
    if c.admin.unready_after_secs == 0 || c.admin.unready_after_secs > 86_400 {
        bad("admin.unready_after_secs", format!("must be 1..86400, got {}", c.admin.unready_after_secs));
    }
    let p = &c.pipeline;
    if p.max_batch_events == 0 || p.max_batch_events > 10_000 {
        bad("pipeline.max_batch_events", format!("must be 1..10000, got {}", p.max_batch_events));
    }
    if p.linger_ms > 10_000 {
        bad("pipeline.linger_ms", format!("must be 0..10000, got {}", p.linger_ms));
    }
    if p.channel_capacity == 0 || p.channel_capacity > 4096 {
        bad("pipeline.channel_capacity", format!("must be 1..4096, got {}", p.channel_capacity));
    }
    if p.cpu_threads > 1024 {
        bad("pipeline.cpu_threads", format!("must be 0..1024, got {}", p.cpu_threads));
    }
    if p.sink_concurrency == 0 || p.sink_concurrency > 1024 {
        bad("pipeline.sink_concurrency", format!("must be 1..1024, got {}", p.sink_concurrency));
    }
    if p.max_future_secs > 31_536_000 {
        bad("pipeline.max_future_secs", format!("must be 0..31536000 (a year), got {}", p.max_future_secs));
    }
    if p.menu_json_rounds > 100_000 {
        bad("pipeline.menu_json_rounds", format!("must be 0..100000, got {}", p.menu_json_rounds));
    }

    if c.shutdown.grace_period_secs == 0 || c.shutdown.grace_period_secs > 3600 {
        bad("shutdown.grace_period_secs", format!("must be 1..3600, got {}", c.shutdown.grace_period_secs));
    }
    if let Some(r) = &c.aws.region
        && (r.is_empty() || !r.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'))
    {
        bad("aws.region", format!("{r:?} is not a region name like us-east-1"));
    }
    for p in c.fraud.problems() {
        bad(&format!("fraud.{}", p.field), p.why);
    }
    // Each queue, stream and table serves one purpose (names are per service).
    let resources: Vec<crate::components::Resource> = components.iter().flat_map(|c| c.resources()).collect();
    let mut first: BTreeMap<(crate::components::Service, &str), &str> = BTreeMap::new();
    for r in &resources {
        if r.name.is_empty() {
            continue;
        }
        match first.get(&(r.shape.service(), r.name.as_str())) {
            Some(f) => bad(&r.field, format!("{:?} is also {f}: one queue, stream or table serves one purpose", r.name)),
            None => {
                first.insert((r.shape.service(), &r.name), &r.field);
            }
        }
    }
    out
}

/// The default config file path used by the systemd unit.
pub fn default_path() -> PathBuf {
    PathBuf::from("/etc/cafe-stream/cafe-streamd.toml")
}

/// The file to read: the one given, else `default` when it exists, else
/// none (the contract's defaults).
pub fn resolve_path(given: Option<PathBuf>, default: &Path) -> Option<PathBuf> {
    given.or_else(|| default.exists().then(|| default.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn passwords_are_redacted_wherever_they_are_in_a_url() {
        assert_eq!(
            redact_url("postgres://cafe:s3cr:et@host:5439/dev?sslmode=require"),
            "postgres://cafe:REDACTED@host:5439/dev?sslmode=require"
        );
        assert_eq!(redact_url("postgres://cafe@host/dev"), "postgres://cafe@host/dev");
        assert_eq!(
            redact_url("postgres://host/dev?user=cafe&password=hunter2&sslmode=require"),
            "postgres://host/dev?user=cafe&password=REDACTED&sslmode=require"
        );
        assert_eq!(redact_url("host=h user=cafe password=hunter2 dbname=dev"), "host=h user=cafe password=REDACTED dbname=dev");
        assert_eq!(redact_url("postgres://a:b@h/d?Password=c"), "postgres://a:REDACTED@h/d?Password=REDACTED");
        assert_eq!(redact_url(""), "");
        // The driver ends the user info at the first `@`: a password with a
        // slash or a question mark is still the password.
        assert_eq!(redact_url("postgres://cafe:ab/cd@host:5439/dev"), "postgres://cafe:REDACTED@host:5439/dev");
        assert_eq!(
            redact_url("postgres://cafe:a?b#c@host/dev?sslmode=require"),
            "postgres://cafe:REDACTED@host/dev?sslmode=require"
        );
        assert_eq!(redact_url("postgres://h/d?pass%77ord=hunter2&x=1"), "postgres://h/d?pass%77ord=REDACTED&x=1");
    }

    #[test]
    fn the_printed_configuration_loads_back_to_the_same_one() {
        let text = "[sources.payments]\nreceivers = 3\n[sources.extra]\ntype = \"sqs\"\nqueue = \"x\"\n[sources.more]\ntype = \"kinesis\"\nstream = \"s\"\n\
                    [sinks.redshift]\nenabled = true\nurl = \"postgres://u:pw@h:5439/d\"\n[fraud]\nrisky_bins = [\"400000\"]\nip_ranges = [{ cidr = \"10.0.0.0/8\", country = \"US\" }]\n\
                    [log]\nformat = \"json\"";
        let c = parse(text, "t.toml", no_env()).expect("valid");
        let printed = c.to_toml().expect("prints");
        assert!(!printed.contains("pw@"), "the password is printed:\n{printed}");
        let back = parse(&printed, "printed.toml", no_env()).unwrap_or_else(|p| panic!("{p}\n{printed}"));
        assert_eq!(back, c.redacted());
        assert_eq!(back.sinks.redshift.url, "postgres://u:REDACTED@h:5439/d");
        // The defaults too: every default is printed, and loads back.
        let d = parse("", "t.toml", no_env()).expect("valid");
        assert_eq!(parse(&d.to_toml().expect("prints"), "printed.toml", no_env()).expect("loads"), d);
    }

    #[test]
    fn empty_config_is_the_contracts_defaults() {
        let c = parse("", "t.toml", no_env()).expect("defaults are valid");
        assert_eq!(c.sources.sqs_input("payments").map(|s| s.queue.as_str()), Some("cafe-payments.fifo"));
        let menu = c.sources.sqs_input("menu").expect("menu input");
        assert_eq!((menu.queue.as_str(), menu.dlq.as_str()), ("cafe-menu-sync", "cafe-menu-sync-dlq"));
        assert_eq!(c.sources.kinesis_input("orders").map(|k| k.stream.as_str()), Some("cafe-orders"));
        assert_eq!(c.sinks.dynamodb.aggregates_table, "cafe-aggregates");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.fraud.work_factor, 10_000);
    }

    #[test]
    fn every_problem_is_named_with_file_and_field() {
        let text = r#"
            colour = "blue"
            [sources.payments]
            receivers = 0
            max_messages = 11
            [pipeline]
            linger_ms = "soon"
            [admin]
            listen = "everywhere"
            [fraud]
            review_threshold = 900
            decline_threshold = 100
            [sinks.dynamodb]
            max_transaction_items = 1000
            speed = 3
        "#;
        let err = parse(text, "bad.toml", no_env()).expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        for want in [
            "colour",
            "pipeline.linger_ms",
            "sinks.dynamodb",
            "sources.payments.receivers",
            "sources.payments.max_messages",
            "admin.listen",
            "fraud.review_threshold",
        ] {
            assert!(fields.iter().any(|f| f.starts_with(want)), "{want} missing from {fields:?}");
        }
        assert!(err.0.iter().all(|p| p.origin == "bad.toml"));
        let text = err.to_string();
        assert!(text.contains("bad.toml: sinks.dynamodb"), "{text}");
        assert!(text.contains("unknown field `speed`"), "{text}");
    }

    #[test]
    fn environment_overrides_apply_and_are_blamed_by_name() {
        let env = vec![
            ("CAFE_SOURCES__PAYMENTS__RECEIVERS".to_owned(), "8".to_owned()),
            ("CAFE_ADMIN__LISTEN".to_owned(), "0.0.0.0:9000".to_owned()),
            ("CAFE_LOG".to_owned(), "debug".to_owned()),
            ("HOME".to_owned(), "/root".to_owned()),
        ];
        let c = parse("", "t.toml", env).expect("valid");
        assert_eq!(c.sources.sqs_input("payments").map(|s| s.receivers), Some(8));
        assert_eq!(c.admin.listen.to_string(), "0.0.0.0:9000");

        let env = vec![("CAFE_SHUTDOWN__GRACE_PERIOD_SECS".to_owned(), "0".to_owned())];
        let err = parse("", "t.toml", env).expect_err("invalid");
        let grace = err.0.iter().find(|p| p.field == "shutdown.grace_period_secs").expect("grace problem named");
        assert_eq!(grace.origin, "environment CAFE_SHUTDOWN__GRACE_PERIOD_SECS");
    }

    #[test]
    fn receives_long_poll_within_sqs_limit() {
        let err = parse("[sources.menu]\nwait_time_secs = 0\n[sources.payments]\nwait_time_secs = 21\n", "w.toml", no_env())
            .expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["sources.menu.wait_time_secs", "sources.payments.wait_time_secs"], "{err}");
        assert!(err.to_string().contains("0 is short polling"), "{err}");
        parse("[sources.menu]\nwait_time_secs = 1\n", "w.toml", no_env()).expect("a 1 s long poll");
    }

    #[test]
    fn a_long_poll_must_leave_time_to_drain_what_it_returns() {
        let polls = "[sources.payments]\nwait_time_secs = 10\n[sources.menu]\nwait_time_secs = 5\n";
        let err = parse(&format!("{polls}[shutdown]\ngrace_period_secs = 14\n"), "g.toml", no_env()).expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["sources.payments.wait_time_secs"], "{err}");
        parse(&format!("{polls}[shutdown]\ngrace_period_secs = 15\n"), "g.toml", no_env()).expect("10 s polls, 15 s grace");
    }

    #[test]
    fn lease_and_polling_limits_are_checked() {
        let text = "[sources.orders]\npoll_interval_ms = 100\nidle_poll_interval_ms = 60001\nlease_renew_interval_ms = 9000\ninitial_position = \"oldest\"\nmax_records = 20000\n";
        let err = parse(text, "o.toml", no_env()).expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        for want in [
            "sources.orders.poll_interval_ms",
            "sources.orders.idle_poll_interval_ms",
            "sources.orders.lease_renew_interval_ms",
            "sources.orders.initial_position",
            "sources.orders.max_records",
        ] {
            assert!(fields.contains(&want), "{want} missing from {fields:?}");
        }
        let ok = parse("[sources.orders]\nworker_id = \"host-a\"\nshards = 8\n", "o.toml", no_env()).expect("valid");
        let orders = ok.sources.kinesis_input("orders").expect("orders input");
        assert_eq!((orders.worker_id.as_str(), orders.failover_time_ms), ("host-a", 10_000));
    }

    #[test]
    fn every_bad_field_of_one_section_is_named_and_the_rest_still_checked() {
        // Two fields of the wrong type and an unknown one in one section, and
        // a range problem in a field that did deserialize.
        let text = "[sources.orders]\ninitial_position = \"oldest\"\nshards = \"many\"\nspeed = 1\npoll_interval_ms = 100\n\n[admin]\nlisten = \"everywhere\"\n[sinks.redshift]\ntransport = \"odbc\"\nflush_interval_ms = 1\n[fraud]\nrisky_bins = [5]\nreview_threshold = \"high\"\n";
        let err = parse(text, "o.toml", no_env()).expect_err("invalid");
        let text = err.to_string();
        for want in [
            "o.toml: sources.orders.initial_position: must be trim_horizon or latest, got \"oldest\"",
            "o.toml: sources.orders.shards: invalid type",
            "o.toml: sources.orders.speed: unknown field `speed`",
            "o.toml: sources.orders.poll_interval_ms: must be 200..60000",
            "o.toml: admin.listen: \"everywhere\" is not an address like 127.0.0.1:9464",
            "o.toml: sinks.redshift.transport: must be postgres or data_api, got \"odbc\"",
            "o.toml: sinks.redshift.flush_interval_ms: must be 100..3600000",
            "o.toml: fraud.risky_bins[0]: invalid type",
            "o.toml: fraud.review_threshold: invalid type",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn toml_syntax_errors_are_reported() {
        let err = parse("[admin\nlisten=", "x.toml", no_env()).expect_err("invalid");
        assert!(err.to_string().starts_with("x.toml: -: not valid TOML"), "{err}");
    }

    #[test]
    fn redshift_transports_are_checked() {
        let err = parse("[sinks.redshift]\nenabled = true\ntransport = \"odbc\"\n", "r.toml", no_env()).expect_err("invalid");
        assert!(err.to_string().contains("r.toml: sinks.redshift.transport: must be postgres or data_api"), "{err}");
        let err = parse("[sinks.redshift]\nenabled = true\ntransport = \"data_api\"\n", "r.toml", no_env()).expect_err("invalid");
        let fields: Vec<&str> = err.0.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["sinks.redshift.cluster_identifier", "sinks.redshift.database"]);
        let ok = parse(
            "[sinks.redshift]\nenabled = true\ntransport = \"data_api\"\nworkgroup_name = \"wg\"\ndatabase = \"dev\"\n",
            "r.toml",
            no_env(),
        )
        .expect("valid");
        assert_eq!(ok.sinks.redshift.flush_interval_ms, 10_000);
        let env = vec![("CAFE_SINKS__REDSHIFT__ENABLED".to_owned(), "true".to_owned())];
        let err = parse("", "r.toml", env).expect_err("postgres needs a url");
        assert_eq!(err.0[0].field, "sinks.redshift.url");
        // The statement timeout is also the server's: within what it takes.
        for ms in [999_u64, 3_600_001, 2_147_483_648] {
            let text = format!("[sinks.redshift]\nstatement_timeout_ms = {ms}\n");
            let err = parse(&text, "r.toml", no_env()).expect_err("out of range");
            assert_eq!(err.0[0].field, "sinks.redshift.statement_timeout_ms", "{err}");
        }
    }

    #[test]
    fn menu_source_keeps_its_own_defaults_when_partly_configured() {
        let c = parse("[sources.menu]\nreceivers = 2\n", "t.toml", no_env()).expect("valid");
        let menu = c.sources.sqs_input("menu").expect("menu input");
        assert_eq!((menu.queue.as_str(), menu.receivers), ("cafe-menu-sync", 2));
    }

    #[test]
    fn another_input_is_one_entry_and_the_built_in_ones_stay() {
        let text = "[sources.orders_fifo]\ntype = \"sqs\"\nqueue = \"cafe-orders.fifo\"\n[sources.more]\ntype = \"kinesis\"\nstream = \"more-orders\"\n";
        let c = parse(text, "t.toml", no_env()).expect("valid");
        let names: Vec<&str> = c.sources.sqs().map(|(n, _)| n).collect();
        assert_eq!(names, ["menu", "orders_fifo", "payments"]);
        let extra = c.sources.sqs_input("orders_fifo").expect("extra input");
        assert_eq!((extra.queue.as_str(), extra.dlq.as_str(), extra.receivers), ("cafe-orders.fifo", "cafe-orders-dlq.fifo", 4));
        let more = c.sources.kinesis_input("more").expect("second stream");
        assert_eq!((more.stream.as_str(), more.lease_table.as_str()), ("more-orders", "more-orders-leases"));
        // The same through the environment.
        let env = vec![
            ("CAFE_SOURCES__EXTRA__TYPE".to_owned(), "sqs".to_owned()),
            ("CAFE_SOURCES__EXTRA__QUEUE".to_owned(), "extra-queue".to_owned()),
        ];
        let c = parse("", "t.toml", env).expect("valid");
        assert_eq!(c.sources.sqs_input("extra").map(|s| s.dlq.as_str()), Some("extra-queue-dlq"));
    }

    #[test]
    fn inputs_without_a_kind_a_queue_or_their_own_resources_are_refused() {
        let text = "[sources.mystery]\nqueue = \"q\"\n[sources.bare]\ntype = \"sqs\"\n[sources.odd]\ntype = \"kafka\"\n[sources.twin]\ntype = \"sqs\"\nqueue = \"cafe-menu-sync\"\n[sources.stream2]\ntype = \"kinesis\"\nstream = \"cafe-orders\"\nlease_table = \"cafe-orders-leases\"\n";
        let err = parse(text, "s.toml", no_env()).expect_err("invalid");
        let text = err.to_string();
        for want in [
            "s.toml: sources.mystery.type: missing",
            "s.toml: sources.bare.queue: must not be empty",
            "s.toml: sources.odd.type: must be \"sqs\" or \"kinesis\"",
            "s.toml: sources.twin.queue: \"cafe-menu-sync\" is also sources.menu.queue",
            "s.toml: sources.stream2.stream: \"cafe-orders\" is also sources.orders.stream",
            "s.toml: sources.stream2.lease_table: \"cafe-orders-leases\" is also sources.orders.lease_table",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn without_a_path_the_default_file_is_read_when_it_exists() {
        let dir = std::env::temp_dir().join(format!("cafe-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let default = dir.join("cafe-streamd.toml");
        let _ = std::fs::remove_file(&default);
        assert_eq!(resolve_path(None, &default), None, "no file: the contract's defaults");
        std::fs::write(&default, "[admin]\nlisten = \"127.0.0.1:1\"\n").expect("write");
        assert_eq!(resolve_path(None, &default), Some(default.clone()));
        let given = dir.join("other.toml");
        assert_eq!(resolve_path(Some(given.clone()), &default), Some(given));
        let c = load(resolve_path(None, &default).as_deref(), no_env()).expect("valid");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_rejected_queue_must_be_a_standard_queue() {
        let err = parse("[rejected]\nqueue = \"cafe-rejected.fifo\"\n", "r.toml", no_env()).expect_err("invalid");
        assert!(err.to_string().contains("r.toml: rejected.queue: \"cafe-rejected.fifo\" must be a standard queue"), "{err}");
    }
}
