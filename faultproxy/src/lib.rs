//! A fault-injecting HTTP/1.1 proxy for AWS JSON endpoints.
//!
//! Tests of cafe-streamd, and the chaos scenarios, put a [`Proxy`] between the daemon and
//! AWS-compatible servers on loopback (moto, dynoxide, ferrokinesis) and switch [`Rule`]s on
//! and off while the daemon runs: throttles, service errors, 500s, latency, connection
//! resets and black holes. Errors are answered in each service's own shape (`__type`,
//! content type, `x-amzn-query-error` for SQS), so the AWS SDK for Rust parses and
//! classifies them exactly as it would real AWS answers; that is the whole point.
//!
//! What it deliberately does not do: TLS, HTTP/2 (so no Kinesis `SubscribeToShard`),
//! streaming bodies (each body is collected whole), altering an answer the upstream gave
//! (only delaying it: `LateAnswer`, the upstream having already acted on the request),
//! or authentication of its control API. It is a test tool for loopback, not a production proxy.

mod aws;
pub mod control;
mod proxy;
mod rules;
mod stats;

pub use proxy::Proxy;
pub use rules::{Fault, InvalidRule, Rule, validate};
pub use stats::{Counts, Stats};
