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

const LOG_MAGIC: &[u8; 8] = b"DSPTLOG1";
const SNAPSHOT_MAGIC: &[u8; 8] = b"DSPSNAP1";
const LOG: &str = "trips.log";
/// A pre-zeroed file the log moves into at its next compaction (see
/// [`TripLog::maintain_spare`]).
const SPARE: &str = "trips.log.next";
/// A log that is not in a pre-zeroed file moves into one once it is this
/// long (a quarter of the compaction size if that is less) and the spare
/// is ready: a server under load does so within a second or two, one that
/// logs little never writes a spare.
const SPARE_AFTER: u64 = 1 << 20;
/// A run of at least this many zero bytes ending a file, after damage with
/// no good frame past it, is the unwritten rest of a pre-zeroed log: the
/// damage is a write a crash cut short.
const ZERO_TAIL: usize = 4096;
/// Kept trips, by id, as their encoded records (shared, so freezing them
/// for a snapshot copies no payload).
type Frozen = Vec<(u64, LiveTrip)>;

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

/// Where a snapshot's trips come from besides those held in memory, which
/// win over both: the trips of the snapshot in place, and those that ended
/// in the logs written since it; but for the trips forgotten since.
///
/// So ended trips, most of a day's, are never held in the log's memory:
/// each is read back from disk once per compaction instead.
struct Sources {
    /// Logs written since the snapshot in place, oldest first.
    logs: Vec<PathBuf>,
    /// Trips forgotten since that snapshot was begun.
    forgotten: HashSet<u64>,
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

/// Where the next pre-zeroed log file is.
enum Spare {
    /// None asked for yet.
    None,
    /// Being written (or checked) on a thread of its own.
    Writing(JoinHandle<Result<(), StoreError>>),
    /// `trips.log.next`, whole and synced.
    Ready,
    /// Writing one failed: this run's logs grow as they are written.
    Failed,
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

    /// Whether the log has grown enough to be worth compacting (and no
    /// compaction is under way), or is not in a pre-zeroed file while a
    /// spare is ready (see [`TripLog::maintain_spare`]).
    pub fn compaction_due(&self) -> bool {
        let grown = self.log_bytes > self.compact_after && self.log_bytes > self.snapshot_bytes;
        let into_spare =
            !self.preallocated && self.log_bytes > self.spare_after() && matches!(self.spare, Spare::Ready);
        self.compacting.is_none() && (grown || into_spare)
    }

    /// Whether `trips.log` is a pre-zeroed file now.
    pub fn preallocated(&self) -> bool {
        self.preallocated
    }

    /// With [`Fsync::Always`], keeps a pre-zeroed file (`trips.log.next`,
    /// the size of the log at compaction and a quarter more) ready for the
    /// log to move into at its next compaction, written gently on a thread
    /// of its own (see `write_spare`): appends into zeros already on disk make a
    /// sync flush data only, where appends that grow a file make it
    /// journal the new length and blocks too (measured: the group commit's
    /// `fdatasync` p50 0.29 -> 0.21 ms under the korea load). Begun once
    /// the log passes [`SPARE_AFTER`] (or a quarter of the compaction
    /// size), so a server that logs little never writes one.
    pub fn maintain_spare(&mut self) -> Result<(), StoreError> {
        match std::mem::replace(&mut self.spare, Spare::None) {
            Spare::Writing(running) if running.is_finished() => {
                let made = running.join().unwrap_or_else(|_| {
                    Err(io_err("write a spare log in", &self.dir)(io::Error::other("the spare thread panicked")))
                });
                self.spare = match made {
                    Ok(()) => Spare::Ready,
                    Err(cause) => {
                        warn!(%cause, "no pre-zeroed log file this run; the log grows as it is written");
                        Spare::Failed
                    }
                };
            }
            Spare::None
                if self.fsync == Fsync::Always && (self.preallocated || self.log_bytes > self.spare_after()) =>
            {
                let (dir, bytes) = (self.dir.clone(), spare_bytes(self.compact_after));
                let spawned =
                    std::thread::Builder::new().name("trip-log-spare".into()).spawn(move || write_spare(&dir, bytes));
                self.spare = Spare::Writing(spawned.map_err(io_err("spawn a thread for", &self.dir))?);
            }
            other => self.spare = other,
        }
        Ok(())
    }

    fn spare_after(&self) -> u64 {
        SPARE_AFTER.min(self.compact_after / 4)
    }

    /// The spare, made ready for appends (the magic written over its first
    /// zeros and synced), if one is ready. A spare that cannot be made
    /// ready is not the log's failure: the log then grows as it is written.
    fn take_spare(&mut self) -> Option<(File, PathBuf)> {
        if !matches!(self.spare, Spare::Ready) {
            return None;
        }
        let path = self.dir.join(SPARE);
        let ready = OpenOptions::new().write(true).open(&path).and_then(|mut file| {
            file.write_all(LOG_MAGIC)?;
            file.sync_data()?;
            Ok(file)
        });
        match ready {
            Ok(file) => {
                self.spare = Spare::None;
                Some((file, path))
            }
            Err(cause) => {
                warn!(%cause, path = %path.display(), "spare log file unusable; the log grows as it is written");
                self.spare = Spare::Failed;
                None
            }
        }
    }

    /// Starts a compaction that does not hold up appends: the log is set
    /// aside as `trips.log.prev` and a fresh one begun, then a thread writes
    /// the snapshot of every kept trip as of now and removes the old log.
    /// A crash at any point recovers the same trips (see [`TripLog::open`]).
    /// [`TripLog::poll_compaction`] collects the result.
    pub fn start_compaction(&mut self) -> Result<(), StoreError> {
        if self.compacting.is_some() {
            return Ok(());
        }
        self.commit()?;
        let (log, previous) = (self.dir.join(LOG), self.dir.join(PREVIOUS_LOG));
        fs::rename(&log, &previous).map_err(io_err("rename", &log))?;
        self.start_fresh_log()?;
        let (header, mut trips) = self.frozen();
        let from = Sources { logs: vec![previous.clone()], forgotten: std::mem::take(&mut self.forgotten) };
        let (dir, fsync) = (self.dir.clone(), self.fsync);
        let spawned = std::thread::Builder::new().name("trip-snapshot".into()).spawn(move || {
            let started = std::time::Instant::now();
            // Sorted here, not on the thread that appends and delivers.
            trips.sort_unstable_by_key(|(id, _)| *id);
            let (bytes, kept) = write_snapshot(&dir, fsync, header, &trips, &from)?;
            fs::remove_file(&previous).map_err(io_err("remove", &previous))?;
            sync_dir(&dir, fsync)?;
            let took_ms = started.elapsed().as_millis();
            info!(
                trips = kept,
                from_memory = trips.len(),
                snapshot_bytes = bytes,
                took_ms,
                "trip log compacted in the background"
            );
            Ok(bytes)
        });
        self.compacting = Some(spawned.map_err(io_err("spawn a thread for", &self.dir))?);
        Ok(())
    }

    /// Whether a background compaction is under way; collects a finished
    /// one (and its error, if it failed).
    pub fn poll_compaction(&mut self) -> Result<bool, StoreError> {
        match self.compacting.take() {
            None => Ok(false),
            Some(running) if !running.is_finished() => {
                self.compacting = Some(running);
                Ok(true)
            }
            Some(done) => {
                self.snapshot_bytes = done.join().map_err(|_| {
                    io_err("write a snapshot in", &self.dir)(io::Error::other("the snapshot thread panicked"))
                })??;
                Ok(false)
            }
        }
    }

    /// Waits for a background compaction to finish.
    pub fn finish_compaction(&mut self) -> Result<(), StoreError> {
        while self.poll_compaction()? {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    /// Compacts and waits: writes a snapshot of every kept trip, then
    /// starts an empty log. A crash at any point leaves a state that
    /// recovers to the same trips: records the snapshot covers are skipped
    /// by sequence number.
    pub fn compact(&mut self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.finish_compaction()?;
        self.commit()?;
        let (header, mut trips) = self.frozen();
        trips.sort_unstable_by_key(|(id, _)| *id);
        let previous = self.dir.join(PREVIOUS_LOG);
        let logs = [previous.clone(), self.dir.join(LOG)].into_iter().filter(|p| p.exists()).collect();
        let from = Sources { logs, forgotten: std::mem::take(&mut self.forgotten) };
        let (bytes, kept) = write_snapshot(&self.dir, self.fsync, header, &trips, &from)?;
        if previous.exists() {
            fs::remove_file(&previous).map_err(io_err("remove", &previous))?;
        }
        // The snapshot holds everything: start the log over.
        self.start_fresh_log()?;
        self.snapshot_bytes = bytes;
        let took_ms = started.elapsed().as_millis();
        info!(trips = kept, from_memory = trips.len(), snapshot_bytes = bytes, took_ms, "trip log compacted");
        Ok(())
    }

    /// Every kept trip as of the last record (in no order: the snapshot
    /// writer sorts them by id), with the header a snapshot of them
    /// carries. Cheap: the payloads are shared.
    fn frozen(&self) -> (SnapshotHeader, Frozen) {
        let trips: Frozen = self.live.iter().map(|(id, p)| (*id, p.clone())).collect();
        let header =
            SnapshotHeader { lsn: self.lsn, next_trip: self.next_trip, boot: self.boot, trips: trips.len() as u64 };
        (header, trips)
    }

    /// Replaces `trips.log` with an empty one, the spare (pre-zeroed) file
    /// if one is ready, else a new file (written aside, synced); renamed
    /// into place, and appended to from now on.
    fn start_fresh_log(&mut self) -> Result<(), StoreError> {
        let log_path = self.dir.join(LOG);
        let spare = self.take_spare();
        let preallocated = spare.is_some();
        let (fresh, from) = match spare {
            Some(ready) => ready,
            None => {
                let log_tmp = self.dir.join(format!("{LOG}.tmp"));
                let mut fresh = File::create(&log_tmp).map_err(io_err("create", &log_tmp))?;
                fresh.write_all(LOG_MAGIC).map_err(io_err("write", &log_tmp))?;
                if self.fsync == Fsync::Always {
                    fresh.sync_all().map_err(io_err("sync", &log_tmp))?;
                }
                (fresh, log_tmp)
            }
        };
        fs::rename(&from, &log_path).map_err(io_err("rename", &from))?;
        sync_dir(&self.dir, self.fsync)?;
        // Appends go on from just past the magic, over the zeros if any.
        self.log = BufWriter::with_capacity(256 * 1024, fresh);
        self.log_bytes = LOG_MAGIC.len() as u64;
        self.preallocated = preallocated;
        if preallocated {
            info!(bytes = spare_bytes(self.compact_after), "trip log moved into a pre-zeroed file");
        }
        self.maintain_spare()
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

/// Writes the snapshot: `trips` (sorted by id), and the trips of the
/// snapshot in place and of the logs since (see [`Sources`]); to a
/// temporary file, synced, renamed into place, directory synced. Returns
/// its size and how many trips it holds.
fn write_snapshot(
    dir: &Path,
    fsync: Fsync,
    mut header: SnapshotHeader,
    trips: &Frozen,
    from: &Sources,
) -> Result<(u64, u64), StoreError> {
    let tmp = dir.join(format!("{SNAPSHOT}.tmp"));
    let path = dir.join(SNAPSHOT);
    let held = |id: u64| trips.binary_search_by_key(&id, |(t, _)| *t).is_ok() || from.forgotten.contains(&id);
    // The logs since the snapshot in place: which record of each trip is
    // its latest, and whether the trip had ended by then.
    let since = snapshot_lsn(&path)?;
    let mut latest: HashMap<u64, (u64, bool)> = HashMap::new();
    for log in &from.logs {
        for_each_log_trip(log, since, &mut |lsn, trip| {
            latest.insert(trip.id, (lsn, trip.ended()));
        })?;
    }
    latest.retain(|id, (_, ended)| *ended && !held(*id));
    let carried = |id: u64| !held(id) && !latest.contains_key(&id);
    // The header comes first and counts the trips: one pass over the
    // snapshot to count those carried over, one to copy them.
    let mut count = 0u64;
    for_each_snapshot_trip(&path, &mut |id, _| count += u64::from(carried(id)))?;
    header.trips = trips.len() as u64 + count + latest.len() as u64;
    let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, Paced { file, fsync, unsynced: 0 });
    let mut bytes = SNAPSHOT_MAGIC.len() as u64;
    out.write_all(SNAPSHOT_MAGIC).map_err(io_err("write", &tmp))?;
    bytes += frame::write(&mut out, &[&header.encode_to_vec()]).map_err(io_err("write", &tmp))?;
    let mut written = Ok(());
    for_each_snapshot_trip(&path, &mut |id, payload| {
        if written.is_ok() && carried(id) {
            written = frame::write(&mut out, &[payload]).map(|n| bytes += n);
        }
    })?;
    for log in &from.logs {
        for_each_log_trip(log, since, &mut |lsn, trip| {
            if written.is_ok() && latest.get(&trip.id).is_some_and(|(at, _)| *at == lsn) {
                written = frame::write(&mut out, &[&trip.encode_to_vec()]).map(|n| bytes += n);
            }
        })?;
    }
    written.map_err(io_err("write", &tmp))?;
    for (_, trip) in trips {
        bytes += frame::write(&mut out, &[&trip.whole, &trip.tried_since]).map_err(io_err("write", &tmp))?;
    }
    let Paced { file, .. } = out.into_inner().map_err(|e| io_err("write", &tmp)(e.into_error()))?;
    if fsync == Fsync::Always {
        file.sync_all().map_err(io_err("sync", &tmp))?;
    }
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    sync_dir(dir, fsync)?;
    Ok((bytes, header.trips))
}

/// The last sequence number the snapshot at `path` covers (0 without one).
fn snapshot_lsn(path: &Path) -> Result<u64, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let mut input = BufReader::new(file);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(io_err("read", path))?;
    match frame::read(&mut input).map_err(io_err("read", path))? {
        Next::Frame(payload) if &magic == SNAPSHOT_MAGIC => SnapshotHeader::decode(payload.as_slice())
            .map(|h| h.lsn)
            .map_err(|_| damaged(path, "unreadable snapshot header")),
        _ => Err(damaged(path, "snapshot header changed since it was read")),
    }
}

/// Hands every whole trip record of the log at `path` after sequence
/// number `after` to `each`, in order. Logs read here were written (and
/// read, or committed whole) by this run: damage in one now is an error.
fn for_each_log_trip(path: &Path, after: u64, each: &mut dyn FnMut(u64, StoredTrip)) -> Result<(), StoreError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(io_err("read", path))?;
    if &magic != LOG_MAGIC {
        return Err(damaged(path, "log magic changed since it was read"));
    }
    loop {
        match frame::read(&mut input).map_err(io_err("read", path))? {
            Next::End => return Ok(()),
            // A zero header: the pre-zeroed rest of the file.
            Next::Frame(payload) if payload.is_empty() => return Ok(()),
            Next::Frame(payload) => {
                let entry = LogEntry::decode(payload.as_slice()).map_err(|_| damaged(path, "unreadable entry"))?;
                if let (true, Some(Entry::Trip(trip))) = (entry.lsn > after, entry.entry) {
                    each(entry.lsn, trip);
                }
            }
            Next::Bad(bad) => return Err(damaged(path, bad.why())),
        }
    }
}

fn damaged(path: &Path, what: &str) -> StoreError {
    io_err("read", path)(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()))
}

/// Hands every trip of the snapshot at `path` (if there is one) to `each`,
/// with its id. It is one this run wrote or read whole at start, so damage
/// in it now is an error: the compaction stops and the file stays.
fn for_each_snapshot_trip(path: &Path, each: &mut dyn FnMut(u64, &[u8])) -> Result<(), StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let damaged = |what: &str| damaged(path, what);
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(io_err("read", path))?;
    if &magic != SNAPSHOT_MAGIC {
        return Err(damaged("snapshot magic changed since it was read"));
    }
    let mut first = true;
    loop {
        match frame::read(&mut input).map_err(io_err("read", path))? {
            Next::End => return Ok(()),
            Next::Frame(_) if first => first = false,
            Next::Frame(payload) => {
                let id = StoredTrip::decode(payload.as_slice()).map_err(|_| damaged("unreadable trip"))?.id;
                each(id, &payload);
            }
            Next::Bad(bad) => return Err(damaged(bad.why())),
        }
    }
}

/// A snapshot file written a chunk at a time: every `PACE_CHUNK` bytes are
/// synced, then the disk is left alone for `PACE_GAP`. A snapshot is tens
/// of megabytes; written in one go and synced at the end, it fills the
/// disk's queue for the better part of a second, and every group commit of
/// the log (each ride waits on one) queues behind it.
struct Paced {
    file: File,
    fsync: Fsync,
    unsynced: usize,
}

const PACE_CHUNK: usize = 1 << 20;
const PACE_GAP: std::time::Duration = std::time::Duration::from_millis(2);

impl Write for Paced {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n;
        if self.fsync == Fsync::Always && self.unsynced >= PACE_CHUNK {
            self.file.sync_data()?;
            self.unsynced = 0;
            std::thread::sleep(PACE_GAP);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path, fsync: Fsync) -> Result<(), StoreError> {
    if fsync == Fsync::Always {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync", dir))?;
    }
    Ok(())
}

/// How big a spare log file is: the log's length at compaction and a
/// quarter more, so a log normally never outgrows it (one that does goes on
/// growing the file).
fn spare_bytes(compact_after: u64) -> u64 {
    compact_after.saturating_add(compact_after / 4).clamp(SPARE_AFTER, 1 << 30)
}

/// Writes `trips.log.next`: `bytes` zeros, synced, renamed into place; kept
/// as it is if one of that size is there already (all a spare ever holds
/// besides zeros is the magic, written over when it is taken).
///
/// Gently: 256 KiB at a time, each synced and followed by 20 ms of rest (a
/// spare of 80 MiB takes about 7 s), so that the group commits, which
/// share the disk, never queue long behind it; it is not needed before
/// the next compaction.
fn write_spare(dir: &Path, bytes: u64) -> Result<(), StoreError> {
    const CHUNK: usize = 256 << 10;
    const REST: std::time::Duration = std::time::Duration::from_millis(20);
    let (tmp, path) = (dir.join(format!("{SPARE}.tmp")), dir.join(SPARE));
    if fs::metadata(&path).is_ok_and(|m| m.len() == bytes) {
        return Ok(());
    }
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let zeros = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        file.write_all(&zeros[..n]).map_err(io_err("write", &tmp))?;
        file.sync_data().map_err(io_err("sync", &tmp))?;
        left -= n as u64;
        std::thread::sleep(REST);
    }
    file.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    sync_dir(dir, Fsync::Always)
}

/// What reading back the files builds up.
#[derive(Default)]
struct Replay {
    latest: HashMap<u64, TripRecord>,
    live: HashMap<u64, LiveTrip>,
    recovered: Recovered,
}

impl Replay {
    /// A stored trip's whole state: replaces what came before.
    fn trip(&mut self, payload: Vec<u8>) -> bool {
        let Some(record) = decode_trip(&payload, &mut self.recovered) else { return false };
        let id = record.trip.id.0;
        let ended = record.trip.status.is_terminal();
        self.latest.insert(id, record);
        self.live.insert(id, LiveTrip::new(payload, ended));
        true
    }

    /// A driver added to a trip's `tried`.
    fn tried(&mut self, entry: TriedEntry) {
        let (Some(record), Some(live)) = (self.latest.get_mut(&entry.trip), self.live.get_mut(&entry.trip)) else {
            // The trip was forgotten before this was logged: nothing to add.
            return;
        };
        match DriverId::new(&entry.driver) {
            Ok(driver) => {
                encode_tried(driver.as_str(), &mut live.tried_since);
                record.tried.push(driver);
            }
            Err(cause) => {
                warn!(%cause, trip = entry.trip, "unreadable tried entry skipped");
                self.recovered.unreadable += 1;
            }
        }
    }

    fn finish(mut self) -> (HashMap<u64, LiveTrip>, Recovered) {
        let mut records: Vec<TripRecord> = self.latest.into_values().collect();
        records.sort_by_key(|r| r.trip.id);
        self.recovered.records = records;
        (self.live, self.recovered)
    }
}

/// What reading a file's frames found.
struct Frames {
    /// The offset just past the last whole good frame read before any
    /// damage: where a torn tail is cut.
    good_end: u64,
    /// Damage found, if any.
    damage: Option<Damage>,
    /// The frames ended at zeros that run to the end of the file: a log in
    /// a pre-zeroed file (see [`TripLog::maintain_spare`]).
    zero_tail: bool,
}

/// Where a file stopped being whole good frames.
struct Damage {
    /// Its offset.
    at: u64,
    /// What was wrong.
    bad: Bad,
    /// Whether reading went on after it (a good frame was found further on).
    resumed: bool,
    /// Whether the file ends in a run of zeros after it (at least
    /// [`ZERO_TAIL`] bytes): the unwritten rest of a pre-zeroed log.
    zeros_after: bool,
}

impl Damage {
    /// Only a torn tail may be cut: a write the crash cut short, with no
    /// good frame after it: the file ends inside it, or (a pre-zeroed log)
    /// zeros follow it to the end. Anything else sets the file aside.
    fn is_torn_tail(&self) -> bool {
        !self.resumed && (matches!(self.bad, Bad::Torn(_)) || self.zeros_after)
    }
}

/// Whether `input` holds nothing but zero bytes to its end.
fn zeros_to_end(input: &mut impl Read) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) if buf[..n].iter().any(|b| *b != 0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads the frames of `path` from `start`, handing each good payload to
/// `each` in order. At a bad frame it looks further on for the next good
/// frame whose payload decodes as `M` and goes on from there, so damage in
/// the middle never hides the records after it.
///
/// A log's writer never writes an empty frame, whose header is all zeros:
/// in a log (`zero_tail`) one is where the zeros of a pre-zeroed file
/// begin, if zeros run from there to the end; if anything else follows,
/// it is damage like any other.
fn read_frames<M: Message + Default>(
    path: &Path,
    start: u64,
    zero_tail: bool,
    mut each: impl FnMut(Vec<u8>),
) -> Result<Frames, StoreError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    file.seek(SeekFrom::Start(start)).map_err(io_err("seek", path))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut offset = start;
    let bad = loop {
        match frame::read(&mut input).map_err(io_err("read", path))? {
            Next::End => return Ok(Frames { good_end: offset, damage: None, zero_tail: false }),
            Next::Frame(payload) if zero_tail && payload.is_empty() => {
                if zeros_to_end(&mut input).map_err(io_err("read", path))? {
                    return Ok(Frames { good_end: offset, damage: None, zero_tail: true });
                }
                break Bad::Refused("an empty frame before more data");
            }
            Next::Frame(payload) => {
                offset += frame::HEADER + payload.len() as u64;
                each(payload);
            }
            Next::Bad(bad) => break bad,
        }
    };
    let good_end = offset;
    // Damage is rare: read the rest into memory and look for where whole
    // frames begin again.
    drop(input);
    let mut rest = Vec::new();
    let mut file = File::open(path).map_err(io_err("open", path))?;
    file.seek(SeekFrom::Start(good_end + 1)).map_err(io_err("seek", path))?;
    file.read_to_end(&mut rest).map_err(io_err("read", path))?;
    let resumed = resume_after_damage::<M>(&rest, &mut each);
    let zeros = rest.iter().rev().take_while(|b| **b == 0).count();
    let damage = Damage { at: good_end, bad, resumed, zeros_after: zero_tail && zeros >= ZERO_TAIL };
    Ok(Frames { good_end, damage: Some(damage), zero_tail: false })
}

/// Reads on through `bytes` (what follows a bad frame), skipping to the next
/// good frame after each bad stretch. Returns whether any was found.
fn resume_after_damage<M: Message + Default>(mut bytes: &[u8], each: &mut impl FnMut(Vec<u8>)) -> bool {
    // Never an empty frame: zeros would all be frames.
    let plausible = |payload: &[u8]| !payload.is_empty() && M::decode(payload).is_ok();
    let mut resumed = false;
    while let Some(at) = frame::resync(bytes, plausible) {
        resumed = true;
        let mut input = &bytes[at..];
        loop {
            match frame::read(&mut input) {
                Ok(Next::Frame(payload)) if !payload.is_empty() => each(payload),
                Ok(Next::End) => return true,
                Ok(Next::Frame(_) | Next::Bad(_)) | Err(_) => break,
            }
        }
        // `input` stopped at a bad frame: look again one byte past it.
        let consumed = bytes.len() - input.len();
        bytes = bytes.get(consumed.max(at + 1)..).unwrap_or(&[]);
    }
    resumed
}

/// Moves a damaged file out of the way under a name nothing else uses
/// (`NAME.corrupt.N`), so a later build can still read what this one
/// could not.
fn set_aside(path: &Path, recovered: &mut Recovered) -> Result<(), StoreError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let aside = (1u32..)
        .map(|n| path.with_file_name(format!("{name}.corrupt.{n}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| path.with_file_name(format!("{name}.corrupt")));
    fs::rename(path, &aside).map_err(io_err("set aside", path))?;
    error!(path = %path.display(), moved_to = %aside.display(),
        "trip log file damaged: set aside whole and kept; every record that could be read was recovered");
    recovered.set_aside.push(aside);
    Ok(())
}

/// Reads `trips.snapshot`; returns the last sequence number it covers, its
/// size and its boot number. A damaged snapshot is read as far as it can be
/// (past the damage too) and set aside.
fn read_snapshot(dir: &Path, replay: &mut Replay) -> Result<(u64, u64, u64), StoreError> {
    let path = dir.join(SNAPSHOT);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0, 0)),
        Err(e) => return Err(io_err("open", &path)(e)),
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut input = BufReader::new(file);
    let mut magic = [0u8; 8];
    let header = match input.read_exact(&mut magic) {
        Ok(()) if &magic == SNAPSHOT_MAGIC => match frame::read(&mut input).map_err(io_err("read", &path))? {
            Next::Frame(payload) => SnapshotHeader::decode(payload.as_slice()).ok().map(|h| (h, payload.len())),
            _ => None,
        },
        _ => None,
    };
    drop(input);
    let Some((header, header_len)) = header else {
        // Renamed into place whole, so this is damage, not a crash. Whatever
        // trip frames can be found are kept; the log's records, which come
        // later, win over them.
        warn!(path = %path.display(), "trip snapshot header unreadable; reading what trips can be found");
        let mut found = 0;
        resume_after_damage::<StoredTrip>(&fs::read(&path).map_err(io_err("read", &path))?, &mut |payload| {
            found += usize::from(replay.trip(payload));
        });
        replay.recovered.snapshot_trips = found;
        set_aside(&path, &mut replay.recovered)?;
        return Ok((0, 0, 0));
    };
    let start = SNAPSHOT_MAGIC.len() as u64 + frame::HEADER + header_len as u64;
    let mut found = 0;
    let frames = read_frames::<StoredTrip>(&path, start, false, |payload| found += usize::from(replay.trip(payload)))?;
    replay.recovered.snapshot_trips = found;
    replay.recovered.next_trip = header.next_trip;
    if let Some(damage) = frames.damage {
        error!(path = %path.display(), offset = damage.at, why = damage.bad.why(), read = found,
            expected = header.trips, resumed = damage.resumed, "trip snapshot damaged");
        set_aside(&path, &mut replay.recovered)?;
    } else if (found as u64) < header.trips {
        warn!(path = %path.display(), read = found, expected = header.trips, "trip snapshot ends early");
    }
    Ok((header.lsn, size, header.boot))
}

/// Reads `trips.log` and leaves it open for appending: a torn tail is cut,
/// any other damage sets the file aside (see [`TripLog::open`]) and a new
/// one is started. A pre-zeroed log whose zeros are whole stays so. Returns
/// the file, where its records end, the last sequence number and the last
/// boot number seen, and whether it is pre-zeroed.
fn read_log(dir: &Path, snapshot_lsn: u64, replay: &mut Replay) -> Result<(File, u64, u64, u64, bool), StoreError> {
    let path = dir.join(LOG);
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))
    };
    let mut file = open()?;
    let size = file.metadata().map_err(io_err("stat", &path))?.len();
    let mut magic = Vec::with_capacity(LOG_MAGIC.len());
    (&mut file).take(LOG_MAGIC.len() as u64).read_to_end(&mut magic).map_err(io_err("read", &path))?;
    let magic_ok = magic == LOG_MAGIC;
    // The magic itself torn by a crash right after the file was made.
    let torn_magic = !magic_ok && size < LOG_MAGIC.len() as u64 && LOG_MAGIC.starts_with(&magic);
    let (mut lsn, mut boot) = (snapshot_lsn, 0);
    let mut good_end = 0;
    let mut zero_tail = false;
    if magic_ok {
        let read = read_entries(&path, LOG_MAGIC.len() as u64, snapshot_lsn, replay)?;
        (lsn, boot, good_end) = (lsn.max(read.lsn), read.boot, read.frames.good_end);
        match read.frames.damage {
            None => zero_tail = read.frames.zero_tail,
            Some(damage) if damage.is_torn_tail() => {
                let cut = size - damage.at;
                warn!(path = %path.display(), offset = damage.at, cut_bytes = cut, why = damage.bad.why(),
                    "trip log ends in a torn write; cut at the last whole record");
                replay.recovered.cut = Some((cut, damage.bad.why()));
            }
            Some(damage) => {
                error!(path = %path.display(), offset = damage.at, why = damage.bad.why(), resumed = damage.resumed,
                    "trip log damaged before its end; reading on past the damage");
                drop(file);
                set_aside(&path, &mut replay.recovered)?;
                file = open()?;
                good_end = 0;
            }
        }
    } else if size > 0 && !torn_magic {
        // Not a log this server wrote, or its first bytes are damaged: look
        // for records in it anyway, and keep it.
        warn!(path = %path.display(), bytes = size, "trip log does not start with its magic");
        drop(file);
        let read = read_entries(&path, 0, snapshot_lsn, replay)?;
        (lsn, boot) = (lsn.max(read.lsn), read.boot);
        set_aside(&path, &mut replay.recovered)?;
        file = open()?;
    }
    if (good_end < size && !zero_tail) || good_end == 0 {
        file.set_len(good_end).map_err(io_err("truncate", &path))?;
    }
    if good_end == 0 {
        file.seek(SeekFrom::Start(0)).map_err(io_err("seek", &path))?;
        file.write_all(LOG_MAGIC).map_err(io_err("write", &path))?;
        good_end = LOG_MAGIC.len() as u64;
    }
    file.sync_all().map_err(io_err("sync", &path))?;
    file.seek(SeekFrom::Start(good_end)).map_err(io_err("seek", &path))?;
    Ok((file, good_end, lsn, boot, zero_tail && good_end > 0))
}

/// What reading a log's entries found.
struct Entries {
    frames: Frames,
    /// The last sequence number and boot number seen.
    lsn: u64,
    boot: u64,
}

/// Reads log entries from `start`, adding what comes after `snapshot_lsn`
/// to `replay`.
fn read_entries(path: &Path, start: u64, snapshot_lsn: u64, replay: &mut Replay) -> Result<Entries, StoreError> {
    let (mut lsn, mut boot) = (0, 0);
    let frames = read_frames::<LogEntry>(path, start, true, |payload| {
        let Ok(entry) = LogEntry::decode(payload.as_slice()) else {
            replay.recovered.unreadable += 1;
            return;
        };
        lsn = lsn.max(entry.lsn);
        match entry.entry {
            Some(Entry::Boot(b)) => boot = boot.max(b),
            Some(Entry::Trip(stored)) if entry.lsn > snapshot_lsn => {
                if replay.trip(stored.encode_to_vec()) {
                    replay.recovered.log_records += 1;
                }
            }
            Some(Entry::Tried(tried)) if entry.lsn > snapshot_lsn => {
                replay.tried(tried);
                replay.recovered.log_records += 1;
            }
            Some(Entry::Trip(_) | Entry::Tried(_)) | None => {}
        }
    })?;
    Ok(Entries { frames, lsn, boot })
}

/// Reads `trips.log.prev`, left by a background compaction that had not
/// finished. It was committed whole before it was set aside, so any damage
/// in it is reported and the file set aside. Returns the last sequence and
/// boot numbers.
fn read_previous_log(path: &Path, snapshot_lsn: u64, replay: &mut Replay) -> Result<(u64, u64), StoreError> {
    let mut magic = [0u8; 8];
    let magic_ok = File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == LOG_MAGIC;
    let start = if magic_ok { LOG_MAGIC.len() as u64 } else { 0 };
    let read = read_entries(path, start, snapshot_lsn, replay)?;
    if let Some(damage) = &read.frames.damage {
        error!(path = %path.display(), offset = damage.at, why = damage.bad.why(), resumed = damage.resumed,
            "previous trip log damaged; kept every record that could be read");
    }
    if !magic_ok || read.frames.damage.is_some() {
        set_aside(path, &mut replay.recovered)?;
    }
    Ok((snapshot_lsn.max(read.lsn), read.boot))
}

fn decode_trip(payload: &[u8], recovered: &mut Recovered) -> Option<TripRecord> {
    let stored = match StoredTrip::decode(payload) {
        Ok(stored) => stored,
        Err(cause) => {
            warn!(%cause, "unreadable trip record skipped");
            recovered.unreadable += 1;
            return None;
        }
    };
    match TripRecord::try_from(stored) {
        Ok(record) => Some(record),
        Err(cause) => {
            warn!(%cause, "unreadable trip record skipped");
            recovered.unreadable += 1;
            None
        }
    }
}
