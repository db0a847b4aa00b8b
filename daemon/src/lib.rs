//! cafe-streamd: the cafe-stream processing daemon.
//!
//! Data flows one way: `sources/*` -> `route` (decode, fraud scoring and
//! menu hashing on the CPU pool via `bridge`; every event to its handler by
//! type, whatever its input; order events through the state machine) ->
//! `sinks/*`, and acknowledgements (SQS deletes in FIFO order, Kinesis
//! checkpoints through the lease table) flow back to the source, once every
//! outcome of a batch is known. The Redshift mirror follows the DynamoDB
//! aggregates on its own cadence. Only `topology` spawns tasks and makes
//! channels.

pub mod admin;
pub mod aws;
pub mod bridge;
pub mod components;
pub mod config;
pub mod environment;
pub mod iam;
pub mod internal_events;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod provision;
pub mod reload;
pub mod route;
pub mod sinks;
pub mod sources;
pub mod top;
pub mod topology;

/// The git commit this binary was built from.
pub const GIT_COMMIT: &str = env!("CAFE_GIT_COMMIT");
