//! Progress of long replays: a bar redrawn in place on a terminal, plain lines otherwise (logs,
//! CI), so an operator sees a rebuild of millions of events move.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Counts steps toward a known total and reports at most every half second.
pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last: Instant,
    terminal: bool,
}

const EVERY: Duration = Duration::from_millis(500);
/// Plain lines come less often than bar redraws.
const EVERY_PLAIN: Duration = Duration::from_secs(5);

impl Progress {
    /// Starts counting `total` steps of `what`.
    pub fn new(what: &'static str, total: u64) -> Self {
        let now = Instant::now();
        Self {
            what,
            total,
            done: 0,
            started: now,
            last: now,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// One step done.
    #[inline]
    pub fn step(&mut self) {
        self.done += 1;
        if self.done.is_multiple_of(4096) {
            let every = if self.terminal { EVERY } else { EVERY_PLAIN };
            if self.last.elapsed() >= every {
                self.last = Instant::now();
                self.draw();
            }
        }
    }

    fn draw(&self) {
        let pct = (self.done.min(self.total) * 100)
            .checked_div(self.total)
            .map_or(100, |p| p as usize);
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let filled = pct / 4;
            let _ = write!(
                err,
                "\r{} [{}{}] {pct:>3}% {}/{} ({rate:.0}/s)",
                self.what,
                "#".repeat(filled),
                " ".repeat(25 - filled),
                self.done,
                self.total
            );
        } else {
            let _ = writeln!(
                err,
                "{}: {}/{} records ({pct}%, {rate:.0}/s)",
                self.what, self.done, self.total
            );
        }
    }

    /// Final report (only when it took long enough to have shown progress).
    pub fn finish(&self) {
        if self.started.elapsed() >= EVERY {
            self.draw();
            if self.terminal {
                let _ = writeln!(std::io::stderr());
            }
        }
    }
}
