//! [`TripLog`]: opening (and recovering), appending, group commit and
//! compaction. Synchronous file I/O; the server runs it on a thread of its
//! own.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use dispatch_core::engine::TripRecord;
use dispatch_core::ids::TripId;
use prost::Message;
use tracing::{info, warn};

use crate::format::{Entry, LogEntry, SnapshotHeader, StoredTrip};
use crate::frame::{self, Next};

const LOG_MAGIC: &[u8; 8] = b"DSPTLOG1";
const SNAPSHOT_MAGIC: &[u8; 8] = b"DSPSNAP1";
const LOG: &str = "trips.log";
/// Kept trips, by id, as their encoded records (shared, so freezing them
/// for a snapshot copies no payload).
type Frozen = Vec<(u64, Arc<[u8]>)>;

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
}

/// What was read back on open.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every trip record read, oldest first (the snapshot's, then the
    /// log's); the last one for a trip is its state.
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
    /// Bytes cut off the end of the log (a torn or corrupt tail), and why.
    pub cut: Option<(u64, &'static str)>,
    /// Frames with a good checksum whose content could not be read (kept
    /// out, logged).
    pub unreadable: usize,
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
    /// The latest encoded record of every trip still kept: what the next
    /// snapshot holds. Kept here, not asked of the engine, so compacting
    /// never stalls dispatch.
    live: HashMap<u64, Arc<[u8]>>,
    next_trip: u64,
    boot: u64,
    /// Appended since the last commit.
    unsynced: bool,
    /// A snapshot being written on a thread of its own; answers its size.
    compacting: Option<JoinHandle<Result<u64, StoreError>>>,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

impl TripLog {
    /// Opens the log in `dir` (created if missing), reads back what is
    /// there, cuts off a torn or corrupt tail, and starts a new boot.
    pub fn open(dir: &Path, fsync: Fsync, compact_after: u64) -> Result<(TripLog, Recovered), StoreError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        for leftover in [format!("{SNAPSHOT}.tmp"), format!("{LOG}.tmp")] {
            let _ = fs::remove_file(dir.join(leftover));
        }
        let mut recovered = Recovered::default();
        let mut live = HashMap::new();
        let (snapshot_lsn, snapshot_bytes, mut boot) = read_snapshot(dir, &mut recovered, &mut live)?;
        // A snapshot was being written when the server stopped: the log it
        // started from comes first.
        let previous = dir.join(PREVIOUS_LOG);
        let (mut lsn, mut log_boot) = (snapshot_lsn, 0);
        if previous.exists() {
            (lsn, log_boot) = read_previous_log(&previous, snapshot_lsn, &mut recovered, &mut live)?;
        }
        let (log_file, log_bytes, log_lsn, last_boot) = read_log(dir, snapshot_lsn, &mut recovered, &mut live)?;
        let lsn = lsn.max(log_lsn);
        boot = boot.max(log_boot).max(last_boot) + 1;
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
            next_trip,
            boot,
            unsynced: false,
            compacting: None,
        };
        log.write_entry(Entry::Boot(boot))?;
        log.commit()?;
        if previous.exists() {
            // Finish what the last run started before writing anything new
            // over it.
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

    /// Appends a trip's new state; durable after the next [`TripLog::commit`].
    pub fn append(&mut self, record: &TripRecord) -> Result<(), StoreError> {
        let stored = StoredTrip::from(record);
        self.next_trip = self.next_trip.max(stored.id + 1);
        self.live.insert(stored.id, stored.encode_to_vec().into());
        self.write_entry(Entry::Trip(stored))
    }

    /// The engine forgot a trip (its retention ran out): the next snapshot
    /// leaves it out.
    pub fn forget(&mut self, trip: TripId) {
        self.live.remove(&trip.0);
    }

    /// Keeps in the next snapshot only the trips `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(TripId) -> bool) {
        self.live.retain(|id, _| keep(TripId(*id)));
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
    /// compaction is under way).
    pub fn compaction_due(&self) -> bool {
        self.compacting.is_none() && self.log_bytes > self.compact_after && self.log_bytes > self.snapshot_bytes
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
        let (header, trips) = self.frozen();
        let (dir, fsync) = (self.dir.clone(), self.fsync);
        let spawned = std::thread::Builder::new().name("trip-snapshot".into()).spawn(move || {
            let started = std::time::Instant::now();
            let bytes = write_snapshot(&dir, fsync, &header, &trips)?;
            fs::remove_file(&previous).map_err(io_err("remove", &previous))?;
            sync_dir(&dir, fsync)?;
            let took_ms = started.elapsed().as_millis();
            info!(trips = trips.len(), snapshot_bytes = bytes, took_ms, "trip log compacted in the background");
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
        let (header, trips) = self.frozen();
        let bytes = write_snapshot(&self.dir, self.fsync, &header, &trips)?;
        let previous = self.dir.join(PREVIOUS_LOG);
        if previous.exists() {
            fs::remove_file(&previous).map_err(io_err("remove", &previous))?;
        }
        // The snapshot holds everything: start the log over.
        self.start_fresh_log()?;
        self.snapshot_bytes = bytes;
        let took_ms = started.elapsed().as_millis();
        info!(trips = trips.len(), snapshot_bytes = bytes, took_ms, "trip log compacted");
        Ok(())
    }

    /// Every kept trip as of the last record, sorted by id, with the header
    /// a snapshot of them carries. Cheap: the payloads are shared.
    fn frozen(&self) -> (SnapshotHeader, Frozen) {
        let mut trips: Frozen = self.live.iter().map(|(id, p)| (*id, p.clone())).collect();
        trips.sort_unstable_by_key(|(id, _)| *id);
        let header =
            SnapshotHeader { lsn: self.lsn, next_trip: self.next_trip, boot: self.boot, trips: trips.len() as u64 };
        (header, trips)
    }

    /// Replaces `trips.log` with an empty one (written aside, synced,
    /// renamed) and appends to it from now on.
    fn start_fresh_log(&mut self) -> Result<(), StoreError> {
        let log_tmp = self.dir.join(format!("{LOG}.tmp"));
        let log_path = self.dir.join(LOG);
        let mut fresh = File::create(&log_tmp).map_err(io_err("create", &log_tmp))?;
        fresh.write_all(LOG_MAGIC).map_err(io_err("write", &log_tmp))?;
        if self.fsync == Fsync::Always {
            fresh.sync_all().map_err(io_err("sync", &log_tmp))?;
        }
        fs::rename(&log_tmp, &log_path).map_err(io_err("rename", &log_tmp))?;
        sync_dir(&self.dir, self.fsync)?;
        self.log = BufWriter::with_capacity(256 * 1024, fresh);
        self.log_bytes = LOG_MAGIC.len() as u64;
        Ok(())
    }

    fn write_entry(&mut self, entry: Entry) -> Result<(), StoreError> {
        self.lsn += 1;
        let payload = LogEntry { lsn: self.lsn, entry: Some(entry) }.encode_to_vec();
        let path = self.dir.join(LOG);
        self.log_bytes += frame::write(&mut self.log, &payload).map_err(io_err("write", &path))?;
        self.unsynced = true;
        Ok(())
    }
}

/// Writes `trips` as the snapshot: to a temporary file, synced, renamed
/// into place, directory synced. Returns its size.
fn write_snapshot(dir: &Path, fsync: Fsync, header: &SnapshotHeader, trips: &Frozen) -> Result<u64, StoreError> {
    let tmp = dir.join(format!("{SNAPSHOT}.tmp"));
    let path = dir.join(SNAPSHOT);
    let file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut bytes = SNAPSHOT_MAGIC.len() as u64;
    out.write_all(SNAPSHOT_MAGIC).map_err(io_err("write", &tmp))?;
    bytes += frame::write(&mut out, &header.encode_to_vec()).map_err(io_err("write", &tmp))?;
    for (_, payload) in trips {
        bytes += frame::write(&mut out, payload).map_err(io_err("write", &tmp))?;
    }
    let file = out.into_inner().map_err(|e| io_err("write", &tmp)(e.into_error()))?;
    if fsync == Fsync::Always {
        file.sync_all().map_err(io_err("sync", &tmp))?;
    }
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    sync_dir(dir, fsync)?;
    Ok(bytes)
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path, fsync: Fsync) -> Result<(), StoreError> {
    if fsync == Fsync::Always {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("sync", dir))?;
    }
    Ok(())
}

/// Reads `trips.snapshot` into `recovered` and `live`; returns the last
/// sequence number it covers, its size and its boot number.
fn read_snapshot(
    dir: &Path,
    recovered: &mut Recovered,
    live: &mut HashMap<u64, Arc<[u8]>>,
) -> Result<(u64, u64, u64), StoreError> {
    let path = dir.join(SNAPSHOT);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0, 0)),
        Err(e) => return Err(io_err("open", &path)(e)),
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    let header = match input.read_exact(&mut magic) {
        Ok(()) if &magic == SNAPSHOT_MAGIC => match frame::read(&mut input).map_err(io_err("read", &path))? {
            Next::Frame(payload) => SnapshotHeader::decode(payload.as_slice()).ok(),
            _ => None,
        },
        _ => None,
    };
    let Some(header) = header else {
        // The snapshot is renamed into place whole, so this is damage, not
        // a crash. Keep the file for a human and go on with the log alone.
        let aside = dir.join(format!("{SNAPSHOT}.corrupt"));
        warn!(path = %path.display(), moved_to = %aside.display(), "trip snapshot unreadable; set aside");
        let _ = fs::rename(&path, &aside);
        return Ok((0, 0, 0));
    };
    for _ in 0..header.trips {
        match frame::read(&mut input).map_err(io_err("read", &path))? {
            Next::Frame(payload) => {
                if let Some(record) = decode_trip(&payload, recovered) {
                    live.insert(record.trip.id.0, payload.into());
                    recovered.records.push(record);
                    recovered.snapshot_trips += 1;
                }
            }
            Next::End | Next::Bad(_) => {
                warn!(path = %path.display(), read = recovered.snapshot_trips, expected = header.trips,
                    "trip snapshot ends early; keeping the trips read");
                break;
            }
        }
    }
    recovered.next_trip = header.next_trip;
    Ok((header.lsn, size, header.boot))
}

/// Reads `trips.log`, cutting it at the first bad frame, and leaves it open
/// for appending. Returns the file, its length, the last sequence number and
/// the last boot number seen.
fn read_log(
    dir: &Path,
    snapshot_lsn: u64,
    recovered: &mut Recovered,
    live: &mut HashMap<u64, Arc<[u8]>>,
) -> Result<(File, u64, u64, u64), StoreError> {
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
    let mut size = file.metadata().map_err(io_err("stat", &path))?.len();
    let mut magic = [0u8; 8];
    let magic_ok = file.read_exact(&mut magic).is_ok() && &magic == LOG_MAGIC;
    if !magic_ok && size > 0 {
        // Not a log this server wrote, or its first bytes are damaged:
        // keep it for a human and start a fresh one.
        let aside = dir.join(format!("{LOG}.corrupt"));
        warn!(path = %path.display(), moved_to = %aside.display(), bytes = size,
            "trip log does not start with its magic; set aside");
        drop(file);
        fs::rename(&path, &aside).map_err(io_err("rename", &path))?;
        file = open()?;
        size = 0;
    }
    let mut input = BufReader::with_capacity(1 << 20, &mut file);
    let (mut lsn, mut boot) = (snapshot_lsn, 0);
    let mut good_end = LOG_MAGIC.len() as u64;
    if magic_ok {
        let read = read_entries(&mut input, &path, snapshot_lsn, recovered, live)?;
        good_end += read.good_bytes;
        (lsn, boot) = (lsn.max(read.lsn), read.boot);
        recovered.cut = read.bad.map(|why| (size - good_end, why));
    } else {
        good_end = 0;
    }
    drop(input);
    if let Some((bytes, why)) = recovered.cut {
        warn!(path = %path.display(), offset = good_end, cut_bytes = bytes, why,
            "trip log has a torn or corrupt tail; cut at the last good record");
    }
    if good_end < size || good_end == 0 {
        file.set_len(good_end).map_err(io_err("truncate", &path))?;
    }
    if good_end == 0 {
        file.seek(SeekFrom::Start(0)).map_err(io_err("seek", &path))?;
        file.write_all(LOG_MAGIC).map_err(io_err("write", &path))?;
        good_end = LOG_MAGIC.len() as u64;
    }
    file.sync_all().map_err(io_err("sync", &path))?;
    file.seek(SeekFrom::Start(good_end)).map_err(io_err("seek", &path))?;
    Ok((file, good_end, lsn, boot))
}

/// What reading a log's frames found.
struct Entries {
    /// Bytes of whole good frames.
    good_bytes: u64,
    /// Why reading stopped early, if it did.
    bad: Option<&'static str>,
    /// The last sequence number and boot number seen.
    lsn: u64,
    boot: u64,
}

/// Reads log frames (after the magic) up to the end or the first bad one,
/// adding the trip records past `snapshot_lsn` to `recovered` and `live`.
fn read_entries(
    input: &mut impl Read,
    path: &Path,
    snapshot_lsn: u64,
    recovered: &mut Recovered,
    live: &mut HashMap<u64, Arc<[u8]>>,
) -> Result<Entries, StoreError> {
    let mut read = Entries { good_bytes: 0, bad: None, lsn: 0, boot: 0 };
    loop {
        match frame::read(input).map_err(io_err("read", path))? {
            Next::End => return Ok(read),
            Next::Bad(why) => {
                read.bad = Some(why);
                return Ok(read);
            }
            Next::Frame(payload) => {
                read.good_bytes += frame::HEADER + payload.len() as u64;
                let Ok(entry) = LogEntry::decode(payload.as_slice()) else {
                    recovered.unreadable += 1;
                    continue;
                };
                read.lsn = read.lsn.max(entry.lsn);
                match entry.entry {
                    Some(Entry::Boot(b)) => read.boot = read.boot.max(b),
                    Some(Entry::Trip(stored)) if entry.lsn > snapshot_lsn => {
                        let payload = stored.encode_to_vec();
                        if let Some(record) = decode_trip(&payload, recovered) {
                            live.insert(record.trip.id.0, payload.into());
                            recovered.records.push(record);
                            recovered.log_records += 1;
                        }
                    }
                    Some(Entry::Trip(_)) | None => {}
                }
            }
        }
    }
}

/// Reads `trips.log.prev`, left by a background compaction that had not
/// finished. It was committed whole before it was set aside, so it is read
/// as it is (a bad frame ends it, and is reported). Returns the last
/// sequence and boot numbers.
fn read_previous_log(
    path: &Path,
    snapshot_lsn: u64,
    recovered: &mut Recovered,
    live: &mut HashMap<u64, Arc<[u8]>>,
) -> Result<(u64, u64), StoreError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    if input.read_exact(&mut magic).is_err() || &magic != LOG_MAGIC {
        warn!(path = %path.display(), "previous trip log does not start with its magic; skipped");
        return Ok((snapshot_lsn, 0));
    }
    let read = read_entries(&mut input, path, snapshot_lsn, recovered, live)?;
    if let Some(why) = read.bad {
        warn!(path = %path.display(), why, "previous trip log ends in a bad frame; kept what came before");
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
