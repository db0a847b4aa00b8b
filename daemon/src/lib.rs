//! cafe-streamd: the cafe-stream processing daemon.
//!
//! Data flows one way: `sources/*` -> `payments` (decode, fraud on the CPU
//! pool via `bridge`) -> `sinks/*`, and acknowledgements flow back to the
//! source. Only `topology` spawns tasks and makes channels.

pub mod admin;
pub mod aws;
pub mod bridge;
pub mod config;
pub mod metrics;
pub mod payments;
pub mod provision;
pub mod sinks;
pub mod sources;
pub mod topology;

/// The git commit this binary was built from.
pub const GIT_COMMIT: &str = env!("CAFE_GIT_COMMIT");
