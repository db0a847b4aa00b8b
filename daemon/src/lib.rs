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

/// The allocator the daemon's binary is built with (`main.rs`), as
/// `mimalloc <major>.<minor>.<patch>`, or `system` when built with the
/// `system-allocator` feature (for heap profilers that hook malloc, which
/// then does not link mimalloc at all): logged at start and a label of
/// `cafe_build_info`. (A test binary that links this crate allocates with
/// its own allocator, whatever this says.)
pub fn allocator() -> String {
    #[cfg(feature = "system-allocator")]
    return "system".to_owned();
    #[cfg(not(feature = "system-allocator"))]
    mimalloc_version()
}

/// The linked mimalloc's version, `mimalloc <major>.<minor>.<patch>`.
#[cfg(not(feature = "system-allocator"))]
fn mimalloc_version() -> String {
    let v = mimalloc::MiMalloc.version();
    // Five digits since 2.3 and 3.2 (30302 for 3.3.2), three before (217
    // for 2.1.7, 186 for 1.8.6).
    let (major, minor, patch) = if v >= 10_000 { (v / 10_000, v / 100 % 100, v % 100) } else { (v / 100, v / 10 % 10, v % 10) };
    format!("mimalloc {major}.{minor}.{patch}")
}

#[cfg(test)]
mod tests {
    /// The version as three numbers, the first at least 2 (a decoding that
    /// went wrong, or a `mi_version` of 0, fails).
    #[cfg(not(feature = "system-allocator"))]
    #[test]
    fn the_allocator_is_named_with_its_version() {
        let name = super::allocator();
        let version = name.strip_prefix("mimalloc ").unwrap_or_else(|| panic!("{name}"));
        let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap_or_else(|_| panic!("{name}"))).collect();
        assert!(parts.len() == 3 && parts[0] >= 2 && parts[1] < 100 && parts[2] < 100, "{name}: major.minor.patch");
    }

    #[cfg(feature = "system-allocator")]
    #[test]
    fn a_system_allocator_build_says_so() {
        assert_eq!(super::allocator(), "system");
    }
}
