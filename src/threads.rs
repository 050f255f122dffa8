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
}
