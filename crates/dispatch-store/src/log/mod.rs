//! [`TripLog`]: opening (and recovering), appending, group commit and
//! compaction. Synchronous file I/O; the server runs it on a thread of its
//! own.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use dispatch_core::engine::{LogRecord, TripRecord};
use dispatch_core::ids::{DriverId, TripId};
use prost::Message;
use tracing::{error, info, warn};

use crate::format::{Entry, LogEntry, SnapshotHeader, StoredTrip, TriedEntry, encode_tried};
use crate::frame::{self, Bad, Next};

mod compact;
mod recover;
mod spare;

use recover::*;
use spare::*;

const LOG_MAGIC: &[u8; 8] = b"DSPTLOG1";
const SNAPSHOT_MAGIC: &[u8; 8] = b"DSPSNAP1";
const LOG: &str = "trips.log";
/// A kept trip's latest record as the next snapshot writes it: the last
/// whole record, then the drivers added to its `tried` since, as more
/// encoded `tried` fields (protobuf reads the two as one message). So a
/// decline costs the bytes of one id here, not a copy of the whole record.
#[derive(Clone)]
struct LiveTrip {
    whole: Arc<[u8]>,
    tried_since: Vec<u8>,
    /// The trip had ended (only between opening and [`TripLog::retain`]:
    /// a trip that ends while the log is open is not held here at all).
    ended: bool,
}

impl LiveTrip {
    fn new(whole: Vec<u8>, ended: bool) -> Self {
        Self { whole: whole.into(), tried_since: Vec::new(), ended }
    }
}

/// The log as it was when a background snapshot began; removed once the
/// snapshot is in place.
const PREVIOUS_LOG: &str = "trips.log.prev";
const SNAPSHOT: &str = "trips.snapshot";

/// When appends reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// `fdatasync` at every commit: a committed record survives power loss.
    Always,
    /// Never: records reach the OS page cache only, which survives a crash
    /// of the process but not of the machine. For tests and benchmarks.
    Never,
}

/// Why the log could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A read, write, sync or rename failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// To which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A replicated log refused or lost a write (see `dispatch-cluster`).
    #[error("replicated trip log: {0}")]
    Replicated(String),
}

/// What was read back on open.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The latest state of every trip read (the snapshot's, then the log's
    /// records and `tried` additions folded in), by trip id.
    pub records: Vec<TripRecord>,
    /// Trip ids below this were minted already.
    pub next_trip: u64,
    /// This run's boot number, one more than any before: offer ids are
    /// made unique to it.
    pub boot: u64,
    /// Trips read from the snapshot.
    pub snapshot_trips: usize,
    /// Records read from the log after the snapshot.
    pub log_records: usize,
    /// Bytes cut off the end of the log (a torn tail: a write the crash
    /// cut short), and why.
    pub cut: Option<(u64, &'static str)>,
    /// Frames with a good checksum whose content could not be read (kept
    /// out, logged).
    pub unreadable: usize,
    /// Files set aside whole because they held damage other than a torn
    /// tail (what could be read of them, before and after the damage, was
    /// kept); a fresh snapshot and log were written from what was read.
    pub set_aside: Vec<PathBuf>,
}

/// The open trip log. See the crate docs for the format.
pub struct TripLog {
    dir: PathBuf,
    log: BufWriter<File>,
    fsync: Fsync,
    /// The sequence number of the last record appended.
    lsn: u64,
    /// Bytes in `trips.log`, and in the last snapshot written.
    log_bytes: u64,
    snapshot_bytes: u64,
    /// Compact once the log is past this many bytes (and past the size of
    /// the last snapshot, so the work stays in proportion to the growth).
    compact_after: u64,
    /// The latest encoded record of every open trip: what the next
    /// snapshot holds, with the snapshot in place and the trips that ended
    /// in the log since (see [`Sources`]). Kept here, not asked of the
    /// engine, so compacting never stalls dispatch. Ended trips are not
    /// held here: the engine alone keeps them in memory.
    live: HashMap<u64, LiveTrip>,
    /// Trips forgotten (or dropped after recovery) since the snapshot in
    /// place was begun: the next one leaves them out.
    forgotten: HashSet<u64>,
    next_trip: u64,
    boot: u64,
    /// Appended since the last commit.
    unsynced: bool,
    /// A snapshot being written on a thread of its own; answers its size.
    compacting: Option<JoinHandle<Result<u64, StoreError>>>,
    /// Whether `trips.log` is a pre-zeroed file (its length is not where
    /// its records end; appends overwrite zeros, so a sync has no size or
    /// block allocation to journal).
    preallocated: bool,
    /// The next pre-zeroed file.
    spare: Spare,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

impl TripLog {
    /// Opens the log in `dir` (created if missing), reads back what is
    /// there, and starts a new boot.
    ///
    /// What cannot be read is never destroyed: only a torn tail (the last
    /// write, cut short by a crash) is cut off. A file with any other damage
    /// (a whole frame refused, a header unreadable) is set aside whole as
    /// `NAME.corrupt.N`, the good frames before and after the damage are
    /// kept, and a fresh snapshot and log are written from them at once.
    pub fn open(dir: &Path, fsync: Fsync, compact_after: u64) -> Result<(TripLog, Recovered), StoreError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        for leftover in [format!("{SNAPSHOT}.tmp"), format!("{LOG}.tmp"), format!("{SPARE}.tmp")] {
            let _ = fs::remove_file(dir.join(leftover));
        }
        let mut replay = Replay::default();
        let (snapshot_lsn, snapshot_bytes, mut boot) = read_snapshot(dir, &mut replay)?;
        // A snapshot was being written when the server stopped: the log it
        // started from comes first.
        let previous = dir.join(PREVIOUS_LOG);
        let had_previous = previous.exists();
        let (mut lsn, mut log_boot) = (snapshot_lsn, 0);
        if had_previous {
            (lsn, log_boot) = read_previous_log(&previous, snapshot_lsn, &mut replay)?;
        }
        let (log_file, log_bytes, log_lsn, last_boot, preallocated) = read_log(dir, snapshot_lsn, &mut replay)?;
        let lsn = lsn.max(log_lsn);
        boot = boot.max(log_boot).max(last_boot) + 1;
        let (live, mut recovered) = replay.finish();
        recovered.boot = boot;
        let next_trip = recovered.records.iter().map(|r| r.trip.id.0 + 1).max().unwrap_or(1).max(recovered.next_trip);
        recovered.next_trip = next_trip;
        let mut log = TripLog {
            dir: dir.to_path_buf(),
            log: BufWriter::with_capacity(256 * 1024, log_file),
            fsync,
            lsn,
            log_bytes,
            snapshot_bytes,
            compact_after,
            live,
            forgotten: HashSet::new(),
            next_trip,
            boot,
            unsynced: false,
            compacting: None,
            preallocated,
            spare: Spare::None,
        };
        log.write_entry(Entry::Boot(boot))?;
        log.commit()?;
        if had_previous || !recovered.set_aside.is_empty() {
            // Finish what the last run started, or put what was saved from
            // damaged files into sound ones, before writing anything new.
            log.compact()?;
        }
        info!(
            dir = %dir.display(),
            boot,
            snapshot_trips = recovered.snapshot_trips,
            log_records = recovered.log_records,
            "trip log opened"
        );
        Ok((log, recovered))
    }

    /// This run's boot number.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Bytes in the log file now.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// Appends a record; durable after the next [`TripLog::commit`].
    pub fn append(&mut self, record: &LogRecord) -> Result<(), StoreError> {
        match record {
            LogRecord::Trip(record) => {
                let stored = StoredTrip::from(record);
                self.next_trip = self.next_trip.max(stored.id + 1);
                self.write_entry(Entry::Trip(stored.clone()))?;
                // A record newer than the forget (ids are never reused by
                // the engine; a test may).
                self.forgotten.remove(&stored.id);
                if record.trip.status.is_terminal() {
                    // In the log file until the next snapshot reads it
                    // from there; the engine keeps it in memory.
                    self.live.remove(&stored.id);
                } else {
                    self.live.insert(stored.id, LiveTrip::new(stored.encode_to_vec(), false));
                }
            }
            LogRecord::Tried { trip, driver } => {
                self.write_entry(Entry::Tried(TriedEntry { trip: trip.0, driver: driver.to_string() }))?;
                if let Some(live) = self.live.get_mut(&trip.0) {
                    encode_tried(driver.as_str(), &mut live.tried_since);
                }
            }
            // Nothing is written: the trip is already ended in the log, and
            // a restart drops it by its retention anyway.
            LogRecord::Forget(trip) => self.forget(*trip),
        }
        Ok(())
    }

    /// The engine forgot a trip (its retention ran out): the next snapshot
    /// leaves it out.
    pub fn forget(&mut self, trip: TripId) {
        self.live.remove(&trip.0);
        self.forgotten.insert(trip.0);
    }

    /// After recovery: keeps in the next snapshot only the trips `keep` says
    /// yes to, then lets go of the ended trips read back (each is in the
    /// snapshot or the log on disk, where the next snapshot finds it).
    pub fn retain(&mut self, mut keep: impl FnMut(TripId) -> bool) {
        let forgotten = &mut self.forgotten;
        self.live.retain(|id, trip| {
            let kept = keep(TripId(*id));
            if !kept {
                forgotten.insert(*id);
            }
            kept && !trip.ended
        });
        self.live.shrink_to_fit();
    }

    /// Trip records held in memory for the next snapshot: the open trips
    /// (and, from opening until [`TripLog::retain`], the ended ones read).
    pub fn live_trips(&self) -> usize {
        self.live.len()
    }

    /// Makes everything appended so far durable: one write and (with
    /// [`Fsync::Always`]) one `fdatasync`, however many records.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        if !self.unsynced {
            return Ok(());
        }
        let path = self.dir.join(LOG);
        self.log.flush().map_err(io_err("write", &path))?;
        if self.fsync == Fsync::Always {
            self.log.get_ref().sync_data().map_err(io_err("sync", &path))?;
        }
        self.unsynced = false;
        Ok(())
    }

    fn write_entry(&mut self, entry: Entry) -> Result<(), StoreError> {
        let payload = LogEntry { lsn: self.lsn + 1, entry: Some(entry) }.encode_to_vec();
        let path = self.dir.join(LOG);
        // A record over the frame limit is refused here, before a byte is
        // written, so the log never holds what it cannot read back.
        self.log_bytes += frame::write(&mut self.log, &[&payload]).map_err(io_err("write", &path))?;
        self.lsn += 1;
        self.unsynced = true;
        Ok(())
    }
}

fn damaged(path: &Path, what: &str) -> StoreError {
    io_err("read", path)(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()))
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path, fsync: Fsync) -> Result<(), StoreError> {
    if fsync == Fsync::Always {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync", dir))?;
    }
    Ok(())
}
