//! The live progress of a run: sent, stored (as the verification sees it),
//! their rates, and the time since the start, so that a long send or a
//! verification wait (up to its timeout) is never silent.
//!
//! Owns: the run's counters (one run per process) and the line drawn from
//! them. Drivers report what they know: `Sends` counts accepted items, the
//! verification waits report what they found stored. Must not: decide
//! anything; the verdict reads its own figures.
//!
//! On a terminal the line is redrawn in place every second; elsewhere (a
//! CI log, a pipe) a line is printed every 10 s.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What the run has done so far.
#[derive(Debug, Default)]
pub struct Progress {
    sent: AtomicU64,
    expected: AtomicU64,
    stored: AtomicU64,
    started: OnceLock<Instant>,
}

static RUN: OnceLock<Progress> = OnceLock::new();

/// The process's run.
pub fn run() -> &'static Progress {
    RUN.get_or_init(Progress::default)
}

impl Progress {
    /// The run starts now (the first call counts).
    pub fn start(&self) {
        self.started.get_or_init(Instant::now);
    }

    /// The run will send `n` items.
    pub fn expect(&self, n: u64) {
        self.start();
        self.expected.store(n, Ordering::Relaxed);
    }

    /// `n` more items were accepted by the service.
    pub fn sent(&self, n: u64) {
        self.start();
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    /// The verification found `n` items stored so far.
    pub fn stored(&self, n: u64) {
        self.stored.store(n, Ordering::Relaxed);
    }

    /// The line for now.
    pub fn line(&self) -> String {
        let elapsed = self.started.get().map_or(Duration::ZERO, Instant::elapsed);
        render(
            elapsed,
            self.sent.load(Ordering::Relaxed),
            self.expected.load(Ordering::Relaxed),
            self.stored.load(Ordering::Relaxed),
        )
    }
}

/// `12.0 s · sent 4,000 of 10,000 (333/s) · stored 3,200 (267/s)`.
pub fn render(elapsed: Duration, sent: u64, expected: u64, stored: u64) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let of = if expected > 0 { format!(" of {}", thousands(expected)) } else { String::new() };
    format!(
        "{secs:.1} s · sent {}{of} ({:.0}/s) · stored {} ({:.0}/s)",
        thousands(sent),
        rate(sent),
        thousands(stored),
        rate(stored)
    )
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Draws the line until `stop` fires: in place each second on a terminal,
/// a line every 10 s elsewhere; ends the line on a terminal.
pub async fn ticker(stop: tokio::sync::oneshot::Receiver<()>) {
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal { Duration::from_secs(1) } else { Duration::from_secs(10) };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let line = run().line();
        let mut err = std::io::stderr().lock();
        let _ = if terminal { write!(err, "\r\x1b[2K{line}") } else { writeln!(err, "progress: {line}") };
        let _ = err.flush();
    }
    if terminal {
        let _ = writeln!(std::io::stderr(), "\r\x1b[2K{}", run().line());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_counts_rates_and_elapsed_time() {
        assert_eq!(
            render(Duration::from_secs(12), 4000, 10_000, 3200),
            "12.0 s · sent 4,000 of 10,000 (333/s) · stored 3,200 (267/s)"
        );
        assert_eq!(render(Duration::ZERO, 0, 0, 0), "0.0 s · sent 0 (0/s) · stored 0 (0/s)");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }

    #[test]
    fn counters_add_up() {
        let p = Progress::default();
        p.expect(10);
        p.sent(3);
        p.sent(4);
        p.stored(5);
        assert!(p.line().contains("sent 7 of 10") && p.line().contains("stored 5"), "{}", p.line());
    }
}
