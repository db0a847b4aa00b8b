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

/// The allocator the daemon runs on (`main.rs` makes mimalloc the global
/// allocator), as `mimalloc <major>.<minor>.<patch>`: logged at start and
/// a label of `cafe_build_info`. The workspace asks for mimalloc 2: with
/// the crate's default, mimalloc 3.3, resident memory under a backlog of a
/// million records rose through the run and peaked 20-30 MiB higher
/// (docs/performance.md), so a dependency update that brings 3 back fails
/// this crate's test.
pub fn allocator() -> String {
    let v = mimalloc::MiMalloc.version();
    // 20302 for 2.3.2; releases before 2.0 gave 186 for 1.8.6.
    let (major, minor, patch) = if v >= 10_000 { (v / 10_000, v / 100 % 100, v % 100) } else { (v / 100, v / 10 % 10, v % 10) };
    format!("mimalloc {major}.{minor}.{patch}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_daemon_allocates_with_mimalloc_2() {
        let name = super::allocator();
        assert!(
            name.starts_with("mimalloc 2."),
            "{name}: mimalloc 3 held 20-30 MiB more under the backlog and kept rising (docs/performance.md); \
             the workspace's Cargo.toml asks for its `v2` feature"
        );
    }
}
