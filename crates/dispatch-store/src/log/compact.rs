//! Compaction: the live trips written to a new snapshot in the background,
//! paced, while appends go on to a fresh log.

use super::*;

/// Kept trips, by id, as their encoded records (shared, so freezing them
/// for a snapshot copies no payload).
pub(super) type Frozen = Vec<(u64, LiveTrip)>;

/// Where a snapshot's trips come from besides those held in memory, which
/// win over both: the trips of the snapshot in place, and those that ended
/// in the logs written since it; but for the trips forgotten since.
///
/// So ended trips, most of a day's, are never held in the log's memory:
/// each is read back from disk once per compaction instead.
pub(super) struct Sources {
    /// Logs written since the snapshot in place, oldest first.
    logs: Vec<PathBuf>,
    /// Trips forgotten since that snapshot was begun.
    forgotten: HashSet<u64>,
}

/// Writes the snapshot: `trips` (sorted by id), and the trips of the
/// snapshot in place and of the logs since (see [`Sources`]); to a
/// temporary file, synced, renamed into place, directory synced. Returns
/// its size and how many trips it holds.
pub(super) fn write_snapshot(
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
pub(super) fn snapshot_lsn(path: &Path) -> Result<u64, StoreError> {
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
pub(super) fn for_each_log_trip(
    path: &Path,
    after: u64,
    each: &mut dyn FnMut(u64, StoredTrip),
) -> Result<(), StoreError> {
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

/// Hands every trip of the snapshot at `path` (if there is one) to `each`,
/// with its id. It is one this run wrote or read whole at start, so damage
/// in it now is an error: the compaction stops and the file stays.
pub(super) fn for_each_snapshot_trip(path: &Path, each: &mut dyn FnMut(u64, &[u8])) -> Result<(), StoreError> {
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
pub(super) struct Paced {
    file: File,
    fsync: Fsync,
    unsynced: usize,
}

pub(super) const PACE_CHUNK: usize = 1 << 20;
pub(super) const PACE_GAP: std::time::Duration = std::time::Duration::from_millis(2);

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

impl TripLog {
    /// Whether the log has grown enough to be worth compacting (and no
    /// compaction is under way), or is not in a pre-zeroed file while a
    /// spare is ready (see [`TripLog::maintain_spare`]).
    pub fn compaction_due(&self) -> bool {
        let grown = self.log_bytes > self.compact_after && self.log_bytes > self.snapshot_bytes;
        let into_spare =
            !self.preallocated && self.log_bytes > self.spare_after() && matches!(self.spare, Spare::Ready);
        self.compacting.is_none() && (grown || into_spare)
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
    pub(super) fn frozen(&self) -> (SnapshotHeader, Frozen) {
        let trips: Frozen = self.live.iter().map(|(id, p)| (*id, p.clone())).collect();
        let header =
            SnapshotHeader { lsn: self.lsn, next_trip: self.next_trip, boot: self.boot, trips: trips.len() as u64 };
        (header, trips)
    }

    /// Replaces `trips.log` with an empty one, the spare (pre-zeroed) file
    /// if one is ready, else a new file (written aside, synced); renamed
    /// into place, and appended to from now on.
    pub(super) fn start_fresh_log(&mut self) -> Result<(), StoreError> {
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
}
