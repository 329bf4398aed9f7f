//! Many callers behind a barrier: one tokio task per caller, all released
//! at the same moment, for single-flight tests and the bench's refresh burst.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// What a [`burst`] produced.
pub struct Burst<T> {
    /// When the barrier released the callers.
    pub released: Instant,
    /// Each caller's result, in the order of the callers given.
    pub results: Vec<T>,
}

/// Runs `call(caller)` for every caller, each in its own task on the current
/// runtime, once all of them are waiting: none starts before the last one is
/// spawned. Open connections (the callers) beforehand so that connecting is
/// not part of the race. A task that panics fails the burst with its
/// [`tokio::task::JoinError`].
pub async fn burst<C, T, F, Fut>(
    callers: Vec<C>,
    call: F,
) -> Result<Burst<T>, tokio::task::JoinError>
where
    F: Fn(C) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(callers.len()));
    let released = Arc::new(OnceLock::new());
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|caller| {
            // An async call does nothing until polled: it starts after the barrier.
            let call = call(caller);
            let barrier = Arc::clone(&barrier);
            let released = Arc::clone(&released);
            tokio::spawn(async move {
                if barrier.wait().await.is_leader() {
                    let _ = released.set(Instant::now());
                }
                call.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await?);
    }
    Ok(Burst {
        released: released.get().copied().unwrap_or_else(Instant::now),
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_caller_starts_before_every_caller_is_waiting() {
        let spawned = Arc::new(AtomicUsize::new(0));
        let burst = burst((0..50).collect(), |i: usize| {
            // The synchronous part runs as each caller is spawned...
            spawned.fetch_add(1, Ordering::SeqCst);
            let spawned = Arc::clone(&spawned);
            // ...the call itself only once all 50 are.
            async move { (i * 2, spawned.load(Ordering::SeqCst)) }
        })
        .await
        .unwrap();
        assert_eq!(
            burst.results,
            (0..50).map(|i| (i * 2, 50)).collect::<Vec<_>>(),
            "results in caller order, every call after the last spawn"
        );
        assert!(burst.released <= Instant::now());
    }

    #[tokio::test]
    async fn a_panicking_caller_fails_the_burst() {
        let r = burst(vec![1, 2], |i: u32| async move {
            assert_ne!(i, 2, "caller 2 panics");
        })
        .await;
        assert!(r.is_err_and(|e| e.is_panic()));
    }

    #[tokio::test]
    async fn no_callers_is_an_empty_burst() {
        let r = burst(Vec::<u8>::new(), |_| async {}).await.unwrap();
        assert!(r.results.is_empty());
    }
}
