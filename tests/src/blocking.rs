//! Blocking HTTP work (reqwest's blocking client) made safe to call from
//! inside a tokio runtime, for the provider and the browser.

/// Runs blocking work off any tokio runtime the caller may be inside: on a
/// scoped helper thread when there is one (reqwest's blocking client
/// panics inside a runtime), else right here.
pub(crate) fn off_runtime<T: Send>(
    work: impl FnOnce() -> Result<T, String> + Send,
) -> Result<T, String> {
    if tokio::runtime::Handle::try_current().is_err() {
        return work();
    }
    std::thread::scope(|s| {
        s.spawn(work)
            .join()
            .unwrap_or_else(|_| Err("helper thread panicked".into()))
    })
}
