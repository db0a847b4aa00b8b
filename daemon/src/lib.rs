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

/// How long a command's runtime waits for its blocking threads once the
/// command's work is done (see [`block_on`]).
pub const RUNTIME_CLOSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `work` to its end on a new multi-thread runtime (its workers named
/// `cafe-io`), then shuts the runtime down, waiting at most
/// [`RUNTIME_CLOSE`] for the threads of blocking calls still under way.
/// Dropping the runtime would wait for them however long: a DNS lookup the
/// SDK's client left hanging in `getaddrinfo` (a resolver that never
/// answers) would hold the exit of a daemon that had drained and released
/// everything, past the grace period, until systemd killed it. Nothing
/// durable waits on those threads: the drain is over when `work` ends.
pub fn block_on<T>(work: impl Future<Output = T>) -> std::io::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("cafe-io").build()?;
    let out = runtime.block_on(work);
    runtime.shutdown_timeout(RUNTIME_CLOSE);
    Ok(out)
}

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
    use std::time::{Duration, Instant};

    /// A blocking call that never returns (as `getaddrinfo` against a
    /// resolver that never answers) holds the end of `block_on` for
    /// [`super::RUNTIME_CLOSE`], not until it returns.
    #[test]
    fn a_blocking_call_still_under_way_holds_the_exit_no_longer_than_the_close() {
        let started = Instant::now();
        let out = super::block_on(async {
            let (running, is_running) = tokio::sync::oneshot::channel();
            drop(tokio::task::spawn_blocking(move || {
                let _ = running.send(());
                std::thread::sleep(Duration::from_secs(60));
            }));
            is_running.await.expect("the blocking call started");
            7
        })
        .expect("a runtime");
        assert_eq!(out, 7);
        let took = started.elapsed();
        assert!(took < super::RUNTIME_CLOSE + Duration::from_secs(3), "took {took:?}");
    }

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
