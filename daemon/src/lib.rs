//! cafe-streamd: the cafe-stream processing daemon.
//!
//! Data flows one way: `sources/*` -> `queues` (decode, fraud scoring and
//! menu hashing on the CPU pool via `bridge`) or `orders` (decode on the
//! CPU pool, the order state machine) -> `sinks/*`, and acknowledgements
//! (SQS deletes, Kinesis checkpoints through `leases`) flow back. The
//! Redshift mirror follows the DynamoDB aggregates on its own cadence. Only
//! `topology` spawns tasks and makes channels.

pub mod admin;
pub mod aws;
pub mod bridge;
pub mod config;
pub mod iam;
pub mod leases;
pub mod metrics;
pub mod notify;
pub mod orders;
pub mod provision;
pub mod queues;
pub mod sinks;
pub mod sources;
pub mod top;
pub mod topology;

/// The git commit this binary was built from.
pub const GIT_COMMIT: &str = env!("CAFE_GIT_COMMIT");
