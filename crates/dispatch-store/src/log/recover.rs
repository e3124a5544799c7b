//! Recovery: the snapshot and the logs read back at open, a torn tail cut,
//! other damage set aside and read past.

use super::*;

/// What reading back the files builds up.
#[derive(Default)]
pub(super) struct Replay {
    latest: HashMap<u64, TripRecord>,
    live: HashMap<u64, LiveTrip>,
    recovered: Recovered,
}

impl Replay {
    /// A stored trip's whole state: replaces what came before.
    pub(super) fn trip(&mut self, payload: Vec<u8>) -> bool {
        let Some(record) = decode_trip(&payload, &mut self.recovered) else { return false };
        let id = record.trip.id.0;
        let ended = record.trip.status.is_terminal();
        self.latest.insert(id, record);
        self.live.insert(id, LiveTrip::new(payload, ended));
        true
    }

    /// A driver added to a trip's `tried`.
    pub(super) fn tried(&mut self, entry: TriedEntry) {
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

    pub(super) fn finish(mut self) -> (HashMap<u64, LiveTrip>, Recovered) {
        let mut records: Vec<TripRecord> = self.latest.into_values().collect();
        records.sort_by_key(|r| r.trip.id);
        self.recovered.records = records;
        (self.live, self.recovered)
    }
}

/// What reading a file's frames found.
pub(super) struct Frames {
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
pub(super) struct Damage {
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
    pub(super) fn is_torn_tail(&self) -> bool {
        !self.resumed && (matches!(self.bad, Bad::Torn(_)) || self.zeros_after)
    }
}

/// Whether `input` holds nothing but zero bytes to its end.
pub(super) fn zeros_to_end(input: &mut impl Read) -> io::Result<bool> {
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
pub(super) fn read_frames<M: Message + Default>(
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
pub(super) fn resume_after_damage<M: Message + Default>(mut bytes: &[u8], each: &mut impl FnMut(Vec<u8>)) -> bool {
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
pub(super) fn set_aside(path: &Path, recovered: &mut Recovered) -> Result<(), StoreError> {
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
pub(super) fn read_snapshot(dir: &Path, replay: &mut Replay) -> Result<(u64, u64, u64), StoreError> {
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
pub(super) fn read_log(
    dir: &Path,
    snapshot_lsn: u64,
    replay: &mut Replay,
) -> Result<(File, u64, u64, u64, bool), StoreError> {
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
pub(super) struct Entries {
    frames: Frames,
    /// The last sequence number and boot number seen.
    lsn: u64,
    boot: u64,
}

/// Reads log entries from `start`, adding what comes after `snapshot_lsn`
/// to `replay`.
pub(super) fn read_entries(
    path: &Path,
    start: u64,
    snapshot_lsn: u64,
    replay: &mut Replay,
) -> Result<Entries, StoreError> {
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
pub(super) fn read_previous_log(path: &Path, snapshot_lsn: u64, replay: &mut Replay) -> Result<(u64, u64), StoreError> {
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

pub(super) fn decode_trip(payload: &[u8], recovered: &mut Recovered) -> Option<TripRecord> {
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
