//! The only place async code hands CPU work to rayon.
//!
//! Owns: the fixed rayon pool and the hop onto it: one closure per batch,
//! `rayon::spawn` plus a oneshot back, so tokio's workers never block and
//! rayon's never wait on I/O. Must not: be called per record.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::internal_events::{CpuJobDone, CpuJobQueued, InternalEvent};
use crate::metrics::Metrics;

/// The CPU pool.
#[derive(Debug, Clone)]
pub struct CpuPool {
    pool: Arc<rayon::ThreadPool>,
    metrics: Arc<Metrics>,
}

/// The batch's closure panicked; the batch is given back to its source.
#[derive(Debug, thiserror::Error)]
#[error("cpu task panicked: {0}")]
pub struct CpuPanic(pub String);

impl CpuPool {
    /// A pool of `threads` workers (0: one per core).
    pub fn new(threads: usize, metrics: Arc<Metrics>) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("cafe-cpu-{i}")).build()?;
        Ok(CpuPool { pool: Arc::new(pool), metrics })
    }

    /// Runs `f` on the pool and waits for it without blocking the runtime.
    pub async fn run<R, F>(&self, f: F) -> Result<R, CpuPanic>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        CpuJobQueued.emit(&self.metrics);
        let metrics = Arc::clone(&self.metrics);
        // Inside the job, rayon's parallel iterators run on this same pool.
        self.pool.spawn(move || {
            let out = std::panic::catch_unwind(AssertUnwindSafe(f));
            CpuJobDone.emit(&metrics);
            let _ = tx.send(out);
        });
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(CpuPanic(msg))
            }
            Err(_) => Err(CpuPanic("cpu pool dropped the task".into())),
        }
    }
}
