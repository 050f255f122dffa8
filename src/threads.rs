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

/// Runs a future to completion on a thread of its own (signals blocked, with a
/// current-thread tokio runtime), while the calling Postgres thread waits and
/// runs `check` every 100 ms (for interrupts). Nothing Postgres happens in `fut`.
pub fn block_on<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
    mut check: impl FnMut(),
) -> io::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_blocked(
        "stripe_sync http",
        Box::new(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            let _ = tx.send(rt.map(|rt| rt.block_on(fut)));
        }),
    )?;
    loop {
        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(r) => return r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => check(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("the HTTP thread ended without an answer"));
            }
        }
    }
}
