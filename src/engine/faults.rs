//! Fault-injection points for the proof suite: `TALLY_FAULT=point[@n]` kills the process
//! (as kill -9 would), or hangs the thread, the n-th time `point` is reached. Compiled only with
//! the `faults` feature (the test runners enable it); release builds have empty points.

#[cfg(feature = "faults")]
pub use armed::*;

/// Marks that execution reached `point` (no faults in this build).
#[cfg(not(feature = "faults"))]
#[inline(always)]
pub fn hit(_point: &str) {}

/// Marks that execution reached `point` (no faults in this build).
#[cfg(not(feature = "faults"))]
#[inline(always)]
pub fn hang(_point: &str) {}

/// Marks that execution reached `point` (no faults in this build).
#[cfg(not(feature = "faults"))]
#[inline(always)]
pub fn hit_after(_point: &str, _first: impl FnOnce()) {}

#[cfg(feature = "faults")]
mod armed {

    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    struct Fault {
        point: String,
        at: u64,
        hits: AtomicU64,
    }

    fn fault() -> Option<&'static Fault> {
        static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
        FAULT
            .get_or_init(|| {
                let spec = std::env::var("TALLY_FAULT").ok()?;
                let (point, at) = match spec.split_once('@') {
                    Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
                    None => (spec, 1),
                };
                Some(Fault {
                    point,
                    at,
                    hits: AtomicU64::new(0),
                })
            })
            .as_ref()
    }

    /// Marks that execution reached `point`; dies abruptly if a test asked for it here.
    pub fn hit(point: &str) {
        hit_after(point, || {});
    }

    /// Marks that execution reached `point`; blocks the calling thread for good if a test asked for
    /// it here, as a Kafka client call that ignores its timeout does.
    pub fn hang(point: &str) {
        if fires(point) {
            tracing::error!(point, "TALLY_FAULT: this thread hangs");
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
    }

    /// [`hit`], but runs `first` before dying (e.g. a flush, so what was sent has landed); `first`
    /// runs only when the fault fires.
    pub fn hit_after(point: &str, first: impl FnOnce()) {
        if fires(point) {
            first();
            tracing::error!(point, "TALLY_FAULT: killing the process");
            // SAFETY: raising SIGKILL on ourselves has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }

    /// Counts a visit of `point`: whether this is the visit the fault asked for.
    fn fires(point: &str) -> bool {
        fault()
            .is_some_and(|f| f.point == point && f.hits.fetch_add(1, Ordering::AcqRel) + 1 == f.at)
    }
}
