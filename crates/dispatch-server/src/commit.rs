//! The commit stage: makes each round's trip records durable, then hands
//! the round on to the delivery stage to be told.
//!
//! On a thread of its own, it appends the records of every round the
//! engine task has handed over since the last commit and makes them durable
//! with one `fdatasync` (group commit: one sync covers every change that
//! queued up behind the last one). Then it passes the group on and starts
//! on the next at once, while the delivery stage delivers the last: a
//! group's deliveries never hold up the next group's sync, and nothing is
//! delivered before the records ahead of it are durable.

use std::sync::mpsc as std_mpsc;

use dispatch_store::{StoreError, TripStore};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::error;

use crate::deliver::Input;
use crate::engine_task::Round;
use crate::latency::Latency;

/// The most rounds committed together.
const GROUP: usize = 256;

/// The stage's state; lives on its thread.
pub struct Committer {
    log: Option<Box<dyn TripStore>>,
    latency: Option<Latency>,
    /// Set when the log fails: the server stops, since it can no longer
    /// promise that what it says is durable.
    fatal: watch::Sender<Option<String>>,
}

impl Committer {
    /// A stage over `log` (`None`: nothing is kept across restarts, and
    /// rounds pass straight on).
    pub fn new(
        log: Option<Box<dyn TripStore>>,
        latency: Option<Latency>,
        fatal: watch::Sender<Option<String>>,
    ) -> Self {
        Self { log, latency, fatal }
    }

    /// Runs until the engine task hangs up, then makes the log durable one
    /// last time. After a failure of the log it commits nothing more, and
    /// drops what comes (which tells waiting callers the server is going
    /// away).
    pub fn run(mut self, rounds: std_mpsc::Receiver<Round>, durable: std_mpsc::SyncSender<Input>) {
        let mut failed = false;
        while let Ok(first) = rounds.recv() {
            let mut group = Vec::with_capacity(GROUP);
            group.push(first);
            while group.len() < GROUP
                && let Ok(round) = rounds.try_recv()
            {
                group.push(round);
            }
            if failed {
                continue;
            }
            let commit_start = Instant::now();
            if let Err(cause) = self.commit(&group) {
                failed = self.fail(&cause, &durable);
                continue;
            }
            let commit_end = Instant::now();
            if self.log.is_some()
                && let Some(latency) = &self.latency
            {
                latency.commit(commit_end - commit_start);
            }
            if durable.send(Input::Durable { rounds: group, commit_start, commit_end }).is_err() {
                // The delivery stage is gone: only at shutdown.
                break;
            }
            if let Some(log) = &mut self.log
                && let Err(cause) = log.maintain()
            {
                failed = self.fail(&cause, &durable);
            }
        }
        if let Some(log) = &mut self.log
            && let Err(cause) = log.close()
        {
            error!(%cause, "trip log: last commit at shutdown failed");
        }
        tracing::info!("commit stage stopped; trip log closed");
    }

    /// Stops the server: returns that the log has failed.
    fn fail(&self, cause: &StoreError, durable: &std_mpsc::SyncSender<Input>) -> bool {
        error!(%cause, "trip log failed: stopping, since changes can no longer be made durable");
        let _ = self.fatal.send(Some(cause.to_string()));
        let _ = durable.send(Input::LogFailed);
        true
    }

    fn commit(&mut self, group: &[Round]) -> Result<(), StoreError> {
        let Some(log) = &mut self.log else { return Ok(()) };
        for record in group.iter().flat_map(|b| &b.records) {
            log.append(record)?;
        }
        log.commit()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use dispatch_core::engine::LogRecord;
    use dispatch_core::ids::{DriverId, TripId};

    use crate::engine_task::Delivery;

    use super::*;

    /// A log that notes what was asked of it; a commit takes 20 ms, as a
    /// slow disk's sync might, and fails once past `fail_from` records.
    #[derive(Clone, Default)]
    struct Noted {
        calls: Arc<Mutex<Vec<&'static str>>>,
        durable: Arc<Mutex<usize>>,
        fail_from: Option<usize>,
    }

    impl Noted {
        fn commits(&self) -> usize {
            self.calls.lock().map_or(0, |c| c.iter().filter(|c| **c == "commit").count())
        }
    }

    impl TripStore for Noted {
        fn append(&mut self, _: &LogRecord) -> Result<(), StoreError> {
            self.calls.lock().map_err(|_| StoreError::Replicated("poisoned".into()))?.push("append");
            Ok(())
        }
        fn commit(&mut self) -> Result<(), StoreError> {
            std::thread::sleep(Duration::from_millis(20));
            let mut calls = self.calls.lock().map_err(|_| StoreError::Replicated("poisoned".into()))?;
            let appended = calls.iter().filter(|c| **c == "append").count();
            if self.fail_from.is_some_and(|n| appended > n) {
                return Err(StoreError::Replicated("disk gone".into()));
            }
            calls.push("commit");
            *self.durable.lock().map_err(|_| StoreError::Replicated("poisoned".into()))? = appended;
            Ok(())
        }
        fn retain(&mut self, _: &mut dyn FnMut(TripId) -> bool) {}
        fn maintain(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
        fn close(&mut self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    /// A commit stage over `log`, running on a thread of its own.
    struct Started {
        rounds: std_mpsc::SyncSender<Round>,
        durable_rx: std_mpsc::Receiver<Input>,
        stage: std::thread::JoinHandle<()>,
        fatal_rx: watch::Receiver<Option<String>>,
    }

    fn start(log: &Noted) -> Started {
        let (fatal, fatal_rx) = watch::channel(None);
        let committer = Committer::new(Some(Box::new(log.clone())), None, fatal);
        let (rounds, rounds_rx) = std_mpsc::sync_channel(16);
        let (durable, durable_rx) = std_mpsc::sync_channel(4);
        let stage = std::thread::spawn(move || committer.run(rounds_rx, durable));
        Started { rounds, durable_rx, stage, fatal_rx }
    }

    /// A round with one record and a reply that says how many records were
    /// durable when it was carried out.
    fn round(n: u64, durable: &Arc<Mutex<usize>>, told: &std_mpsc::Sender<(u64, usize)>) -> Round {
        let driver = DriverId::new(&format!("d{n}")).unwrap_or_else(|e| panic!("{e}"));
        let (durable, told) = (durable.clone(), told.clone());
        Round {
            records: vec![LogRecord::Tried { trip: TripId(n), driver }],
            deliveries: vec![Delivery::Reply(Box::new(move || {
                let _ = told.send((n, durable.lock().map_or(0, |d| *d)));
            }))],
            flushed: Some(Instant::now()),
        }
    }

    fn deliver_all(committed: Input) {
        if let Input::Durable { rounds, .. } = committed {
            for out in rounds.into_iter().flat_map(|b| b.deliveries) {
                if let Delivery::Reply(reply) = out {
                    reply();
                }
            }
        }
    }

    /// Waits (polling, for up to a minute) until `done` holds.
    fn wait_for(what: &str, done: impl Fn() -> bool) {
        for _ in 0..60_000 {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn a_group_is_passed_on_only_once_durable_and_the_next_syncs_while_it_is_delivered() {
        let log = Noted::default();
        let Started { rounds, durable_rx, stage, .. } = start(&log);
        let (told, heard) = std_mpsc::channel();

        rounds.send(round(1, &log.durable, &told)).unwrap_or_else(|e| panic!("{e}"));
        let first = durable_rx.recv().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(log.commits(), 1, "a group was passed on before its commit returned");
        // Not delivered yet: the next round is committed meanwhile.
        rounds.send(round(2, &log.durable, &told)).unwrap_or_else(|e| panic!("{e}"));
        wait_for("the second group's commit while the first waits to be delivered", || log.commits() == 2);
        deliver_all(first);
        deliver_all(durable_rx.recv().unwrap_or_else(|e| panic!("{e}")));
        drop(rounds);
        stage.join().unwrap_or_else(|_| panic!("the commit stage panicked"));

        let replies: Vec<(u64, usize)> = heard.try_iter().collect();
        assert_eq!(replies.len(), 2, "{replies:?}");
        for (n, durable_then) in replies {
            assert!(durable_then >= n as usize, "round {n} was told when {durable_then} records were durable");
        }
        let calls = log.calls.lock().map(|c| c.clone()).unwrap_or_default();
        assert_eq!(calls, ["append", "commit", "append", "commit"]);
    }

    #[test]
    fn a_failed_commit_stops_the_server_and_nothing_after_it_is_told() {
        let log = Noted { fail_from: Some(1), ..Noted::default() };
        let Started { rounds, durable_rx, stage, mut fatal_rx } = start(&log);
        let (told, heard) = std_mpsc::channel();
        rounds.send(round(1, &log.durable, &told)).unwrap_or_else(|e| panic!("{e}"));
        deliver_all(durable_rx.recv().unwrap_or_else(|e| panic!("{e}")));
        for n in 2..=3 {
            rounds.send(round(n, &log.durable, &told)).unwrap_or_else(|e| panic!("{e}"));
        }
        drop(rounds);
        let mut failed = false;
        for committed in durable_rx.iter() {
            failed |= matches!(committed, Input::LogFailed);
            if !failed {
                deliver_all(committed);
            }
        }
        stage.join().unwrap_or_else(|_| panic!("the commit stage panicked"));
        assert!(failed, "the delivery stage was not told the log failed");
        assert!(fatal_rx.borrow_and_update().as_deref().is_some_and(|c| c.contains("disk gone")));
        let replies: Vec<u64> = heard.try_iter().map(|(n, _)| n).collect();
        assert_eq!(replies, [1], "only the round made durable is told");
    }
}
