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
