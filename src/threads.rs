//! Threads started from a backend or the worker. Postgres delivers signals to
//! any thread of the process, and its handlers must run on the main thread; so
//! every thread we start has all signals blocked (its children inherit that).
//! Threads never call Postgres: results come back over channels.

use std::io;

/// Spawns `job` on a new thread with every signal blocked.
pub fn spawn_blocked(name: &str, job: Box<dyn FnOnce() + Send>) -> io::Result<()> {
    // SAFETY: plain libc calls on local, initialized sigsets; the caller's mask is
    // restored before returning.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let spawned = std::thread::Builder::new().name(name.to_string()).spawn(job);
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        spawned.map(|_| ())
    }
}

/// Why [`block_on`] returned without the future's output.
#[derive(Debug)]
pub enum Wait {
    /// `check` asked to stop: the caller goes on at once; the HTTP thread is
    /// left to end on its own (its answer is dropped).
    Stopped,
    /// The thread could not start, or ended without an answer.
    Failed(io::Error),
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Stopped => f.write_str("asked to stop while waiting for Stripe"),
            Wait::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Runs a future to completion on a thread of its own (signals blocked, with a
/// current-thread tokio runtime), while the calling Postgres thread waits and
/// runs `check` every 100 ms. When `check` returns true (a shutdown, a cancel),
/// the wait ends at once with [`Wait::Stopped`], however long the request and
/// its retries would still take. `check` may also raise a Postgres error (for
/// `CHECK_FOR_INTERRUPTS`); nothing Postgres happens in `fut`.
pub fn block_on<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
    mut check: impl FnMut() -> bool,
) -> Result<T, Wait> {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_blocked(
        "stripe_sync http",
        Box::new(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let _ = tx.send(rt.map(|rt| rt.block_on(fut)));
        }),
    )
    .map_err(Wait::Failed)?;
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(r) => return r.map_err(Wait::Failed),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if check() {
                    return Err(Wait::Stopped);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Wait::Failed(io::Error::other("the HTTP thread ended without an answer")));
            }
        }
    }
}

/// A tokio runtime on threads of its own (signals blocked), alive until dropped:
/// every request of one refresh runs on it. HTTP connections belong to the
/// runtime that opened them, and the client's pool hands them to whoever asks
/// next; with one runtime per request, a connection whose runtime had ended
/// failed the request another runtime had sent on it (a retry each).
pub struct Runtime {
    handle: tokio::runtime::Handle,
    /// Dropped to shut the runtime down.
    _stop: std::sync::mpsc::Sender<()>,
}

impl Runtime {
    pub fn new(name: &str) -> io::Result<Runtime> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        spawn_blocked(
            name,
            Box::new(move || {
                // worker threads inherit this thread's blocked signals
                let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
                match rt {
                    Ok(rt) => {
                        let _ = handle_tx.send(Ok(rt.handle().clone()));
                        // until the owner drops its end
                        let _ = stop_rx.recv();
                        rt.shutdown_background();
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            }),
        )?;
        let handle = handle_rx.recv().map_err(|_| io::Error::other("the runtime thread ended at once"))??;
        Ok(Runtime { handle, _stop: stop })
    }

    /// Runs `fut` on the runtime, in the background.
    pub fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        self.handle.spawn(fut);
    }

    /// [`block_on`] on this runtime: waits for `fut`, running `check` every
    /// 100 ms; when it returns true the wait ends at once (and `fut` is dropped).
    pub fn block_on<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
        mut check: impl FnMut() -> bool,
    ) -> Result<T, Wait> {
        let (tx, rx) = std::sync::mpsc::channel();
        let task = self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(r) => return Ok(r),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if check() {
                        task.abort();
                        return Err(Wait::Stopped);
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Wait::Failed(io::Error::other("the HTTP task ended without an answer")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_stopped_wait_returns_at_once() {
        let t = Instant::now();
        let mut calls = 0;
        // the sleep is made inside the future: only the HTTP thread has a runtime
        let r = block_on(async { tokio::time::sleep(Duration::from_secs(30)).await }, || {
            calls += 1;
            calls >= 2
        });
        assert!(matches!(r, Err(Wait::Stopped)));
        assert!(t.elapsed() < Duration::from_secs(5), "waited {:?}", t.elapsed());
        assert_eq!(block_on(async { 7 }, || false).ok(), Some(7));
    }

    #[test]
    fn a_runtime_runs_futures_until_dropped_and_a_stopped_wait_returns_at_once() {
        let rt = Runtime::new("test runtime").unwrap();
        assert_eq!(rt.block_on(async { 7 }, || false).ok(), Some(7));
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let _ = tx.send(1);
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).ok(), Some(1));
        let t = Instant::now();
        let r = rt.block_on(async { tokio::time::sleep(Duration::from_secs(30)).await }, || true);
        assert!(matches!(r, Err(Wait::Stopped)));
        assert!(t.elapsed() < Duration::from_secs(5), "waited {:?}", t.elapsed());
    }
}
