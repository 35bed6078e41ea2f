//! Crash points for the crash tests (tests/upstream_crash.rs): compiled into debug builds only,
//! so the release binary (and the .deb) has neither the code nor the variable.
//!
//! - `EDGEVOICE_FAULT_CRASH_AT=<point>`: the daemon aborts (as a kill -9 would stop it: no
//!   drain, no flush) the first time it reaches `<point>`, a place between two durable writes.
//! - `EDGEVOICE_FAULT_ABORT_BEFORE_DELETE=<stream>/<sequence>` (e.g. `calls/2`): it aborts when
//!   the broker's PUBACK for that message arrives, before the outbox deletes it: the window in
//!   which the broker has the message and the outbox still holds it.

/// Aborts the process here when `EDGEVOICE_FAULT_CRASH_AT` names `point` (debug builds).
#[cfg(debug_assertions)]
pub fn crash_point(point: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("EDGEVOICE_FAULT_CRASH_AT").ok());
    if wanted.as_deref() == Some(point) {
        eprintln!("fault injection: crash at {point}");
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn crash_point(_: &str) {}

/// Aborts when `EDGEVOICE_FAULT_ABORT_BEFORE_DELETE` names `message` (`stream/sequence`,
/// idempotency key `key`) whose PUBACK just arrived (debug builds).
#[cfg(debug_assertions)]
pub fn crash_before_puback_delete(message: &str, key: &str) {
    static WANTED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("EDGEVOICE_FAULT_ABORT_BEFORE_DELETE").ok());
    if wanted.as_deref() == Some(message) {
        eprintln!("fault injection: PUBACK for {key} received; aborting before the delete");
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn crash_before_puback_delete(_: &str, _: &str) {}
