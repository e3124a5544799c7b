//! How late a sleeping thread wakes on this machine while the run goes on:
//! a thread of its own asks for 1 ms of sleep, over and over, and records
//! how much longer it slept. Each ride crosses several threads in the
//! server (and the harness's own), and every crossing waits like this for
//! a core; on shared machines the host also takes cores away for
//! milliseconds at a time. Reported beside the ride latencies, per window
//! too, it tells a noisy hour from a slow build.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Run;

/// How long the probe asks to sleep each time.
const NAP: Duration = Duration::from_millis(1);

/// Starts the probe; it stops at the run's deadline. `None` (logged) if
/// the thread cannot be started: the run goes on without it.
pub(crate) fn spawn(run: Arc<Run>) -> Option<JoinHandle<()>> {
    let started = std::thread::Builder::new().name("wake-probe".into()).spawn(move || {
        while Instant::now() < run.deadline {
            let asleep = Instant::now();
            std::thread::sleep(NAP);
            run.metrics.woke_late(asleep.elapsed().saturating_sub(NAP));
        }
    });
    match started {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(cause = %e, "cannot start the wake-up probe; the report will not have it");
            None
        }
    }
}
