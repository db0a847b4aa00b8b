//! The only place async code hands CPU work to rayon.
//!
//! Owns: the fixed rayon pool and the hop onto it: one closure per batch,
//! `rayon::spawn` plus a oneshot back, so tokio's workers never block and
//! rayon's never wait on I/O; and freeing on the pool, with nothing back,
//! what it allocated (a batch's decoded events) and what a shard's one
//! serial task would otherwise free piece by piece (a durable batch's
//! inputs, the orders that left the order cache in a write, a finished
//! shard's order cache). Must not: be called per record.

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
    /// Values handed to [`CpuPool::drop_on_pool`], for the tests of who
    /// hands what.
    #[cfg(test)]
    handed_to_free: Arc<std::sync::atomic::AtomicUsize>,
    /// Calls of [`CpuPool::run`] so far, and the one (from 1; 0: none)
    /// whose closure panics instead of running, as a bug would: for the
    /// tests of what a stage does with a batch it failed on.
    #[cfg(test)]
    runs: Arc<std::sync::atomic::AtomicUsize>,
    #[cfg(test)]
    panic_at_run: Arc<std::sync::atomic::AtomicUsize>,
}

/// The batch's closure panicked; the batch is given back to its source.
#[derive(Debug, thiserror::Error)]
#[error("cpu task panicked: {0}")]
pub struct CpuPanic(pub String);

impl CpuPool {
    /// A pool of `threads` workers (0: one per core).
    pub fn new(threads: usize, metrics: Arc<Metrics>) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("cafe-cpu-{i}")).build()?;
        Ok(CpuPool {
            pool: Arc::new(pool),
            metrics,
            #[cfg(test)]
            handed_to_free: Arc::default(),
            #[cfg(test)]
            runs: Arc::default(),
            #[cfg(test)]
            panic_at_run: Arc::default(),
        })
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
        #[cfg(test)]
        let f = {
            use std::sync::atomic::Ordering::Relaxed;
            let panics = self.runs.fetch_add(1, Relaxed) + 1 == self.panic_at_run.load(Relaxed);
            move || {
                assert!(!panics, "the test's bug in the closure of a chosen run");
                f()
            }
        };
        // Inside the job, rayon's parallel iterators run on this same pool.
        self.pool.spawn(move || {
            let out = std::panic::catch_unwind(AssertUnwindSafe(f));
            CpuJobDone.emit(&metrics);
            let _ = tx.send(out);
        });
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(panic)) => Err(CpuPanic(panic_message(panic.as_ref()))),
            Err(_) => Err(CpuPanic("cpu pool dropped the task".into())),
        }
    }

    /// The `n`th call of [`CpuPool::run`] (from 1, counting those made
    /// so far) panics in its closure instead of running it.
    #[cfg(test)]
    pub(crate) fn panic_at_run(&self, n: usize) {
        self.panic_at_run.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many values were handed to [`CpuPool::drop_on_pool`].
    #[cfg(test)]
    pub(crate) fn handed_to_free(&self) -> usize {
        self.handed_to_free.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Drops `value` on the pool instead of the calling runtime worker: for
    /// what the pool's threads allocated (a batch's decoded events), which
    /// the allocator frees from the thread's own free list (from another
    /// thread each free is an atomic push onto the owner's, collected
    /// later), and for what a shard's serial task, the stage's slower
    /// thread, would free piece by piece (a durable batch's inputs, a
    /// finished shard's order cache). Freed behind the pool's queued
    /// jobs, first in, first out. Not a batch among the pool's
    /// (`cafe_rayon_queue_depth_batches`), and not awaited: `value`'s drop
    /// must not block. A panic in it is caught (in a job rayon spawns it
    /// would abort the process).
    pub fn drop_on_pool<T: Send + 'static>(&self, value: T) {
        #[cfg(test)]
        self.handed_to_free.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pool.spawn(move || {
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(value)));
        });
    }
}

/// A stage's future panicked (a bug): its message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("stage panicked: {0}")]
pub struct Panicked(pub String);

/// Runs `fut` to its end; a panic inside becomes `Err` with its message
/// instead of unwinding into (and ending) the task that awaits it.
pub async fn catch_panic<T>(fut: impl std::future::Future<Output = T>) -> Result<T, Panicked> {
    use futures::FutureExt;
    AssertUnwindSafe(fut).catch_unwind().await.map_err(|panic| Panicked(panic_message(panic.as_ref())))
}

/// The text a panic was raised with.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_given_to_the_pool_to_drop_is_dropped_on_a_pool_thread() {
        struct Noted(std::sync::mpsc::Sender<Option<String>>);
        impl Drop for Noted {
            fn drop(&mut self) {
                let _ = self.0.send(std::thread::current().name().map(str::to_owned));
            }
        }
        struct Panics;
        impl Drop for Panics {
            fn drop(&mut self) {
                panic!("a drop that panics");
            }
        }
        let pool = CpuPool::new(1, Arc::new(Metrics::new())).expect("a pool");
        let (tx, rx) = std::sync::mpsc::channel();
        // Caught: uncaught, a panic in a job rayon spawns aborts the process.
        pool.drop_on_pool(Panics);
        pool.drop_on_pool(vec![Noted(tx.clone()), Noted(tx)]);
        for _ in 0..2 {
            let thread = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("dropped within 10 s");
            assert_eq!(thread.as_deref(), Some("cafe-cpu-0"), "dropped on the pool's thread, not the caller's");
        }
    }

    #[tokio::test]
    async fn a_panic_in_an_awaited_stage_is_contained_and_named() {
        let fine = catch_panic(async { 7 }).await;
        assert_eq!(fine, Ok(7));
        let stage = async {
            tokio::task::yield_now().await;
            let empty: Vec<u32> = Vec::new();
            empty[3]
        };
        let caught = catch_panic(stage).await;
        let Panicked(message) = caught.expect_err("the panic is caught");
        assert!(message.contains("index out of bounds"), "{message}");
    }
}
