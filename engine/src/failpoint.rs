//! Named crash points for tests of crash safety.
//!
//! In debug builds (and with the `failpoints` cargo feature) the environment variable
//! `CHAOS_AGENT_CRASH_AT` names a point; when the code reaches it, the process kills itself
//! with `SIGKILL`, exactly as `kill -9` would, leaving the journal and the host as they are
//! at that instant. Release builds compile this to nothing.
//!
//! Points: `after-plan`, `after-journal-planned`, `after-inject`, `after-journal-applied`,
//! `mid-revert` (after the journal says `reverting`, before revert finishes),
//! `after-revert`.

/// The environment variable read by [`hit`].
pub const ENV: &str = "CHAOS_AGENT_CRASH_AT";

/// Die here with SIGKILL if `CHAOS_AGENT_CRASH_AT` names `point` (debug builds only).
#[inline]
pub fn hit(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var(ENV).is_ok_and(|v| v == point) {
        // SAFETY: raising a signal on ourselves has no memory preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        // SIGKILL cannot be caught; should delivery be delayed, do not run on.
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
