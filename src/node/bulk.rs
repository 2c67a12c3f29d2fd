//! The node's bulk runtime: where the frames of pipelined streams (analytical traffic) are
//! admitted and taken, so that their work never queues ahead of an alert's.
//!
//! Tokio's scheduler has no priorities: a task woken after a few hundred others waits for them.
//! A client's or peer's pipelined stream brings its frames in batches (see `pipeline`), each
//! frame a task of admission, routing and a store write; on the runtime that also drives the
//! connections, an alert's stream arriving behind such a batch waited for all of it (p99 under
//! load several times its p99 alone). So the tasks of every frame after the first on a stream (a
//! time-sensitive message is alone on its stream; a pipelined stream carries many) run on a
//! runtime of their own, and the node's main runtime keeps the connection drivers, the alerts'
//! streams, deliveries and everything else. The operating system shares the cores between the
//! two; the main runtime's threads, mostly idle, are scheduled promptly when an alert wakes them.
//!
//! What the split does not isolate: the connections' I/O (quinn's drivers) stays on the main
//! runtime, and both runtimes share the store writer, whose urgent requests go first.

use tokio::runtime::{Handle, Runtime};

/// Worker threads of the bulk runtime (the machines this runs on have a few cores).
const WORKERS: usize = 2;

/// The bulk runtime, shut down (without waiting for its tasks) when the node's state goes.
pub(super) struct Bulk(Option<Runtime>);

impl Bulk {
    /// Starts the runtime; its threads are named `node-<node>-bulk` (cut to 15 bytes by Linux).
    pub fn start(node: &str) -> std::io::Result<Bulk> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name(format!("node-{node}-bulk"))
            .on_thread_start(|| lower_priority(NICENESS))
            .enable_all()
            .build()?;
        Ok(Bulk(Some(rt)))
    }

    /// Where to spawn bulk work.
    pub fn handle(&self) -> &Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

/// Niceness of the bulk runtime's threads, above the node's own (0 for a default service).
const NICENESS: i32 = 5;

/// Lowers the calling thread's scheduling priority: its niceness goes `by` above what it was.
/// On Linux a thread's niceness is its own (`setpriority` on its thread id). Failing is
/// harmless: the thread keeps the node's priority.
pub(super) fn lower_priority(by: i32) {
    let tid = rustix::thread::gettid();
    let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), now + by) {
        tracing::debug!(error = %e, "cannot lower a thread's priority");
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        // Never blocks, so the last holder of the node's state may be a task.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_tasks_and_goes_away_inside_a_task() {
        let bulk = Bulk::start("test-1").unwrap();
        let name = bulk
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("node-test-1-bulk"));
        // Dropped from async code, as the node's state may be: no panic, no wait.
        drop(bulk);
    }

    #[tokio::test]
    async fn goes_away_inside_its_own_task() {
        let bulk = std::sync::Arc::new(Bulk::start("test-2").unwrap());
        let last = bulk.clone();
        let handle = bulk.handle().clone();
        drop(bulk);
        // The task holds the last reference, as a frame's task may hold the node's state.
        let r = handle.spawn(async move { drop(last) }).await;
        assert!(!r.is_err_and(|e| e.is_panic()));
    }
}
