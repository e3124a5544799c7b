//! The spare log file: written ahead, pre-zeroed, so that a compaction can
//! move appends into a file whose blocks are already allocated.

use super::*;

/// A pre-zeroed file the log moves into at its next compaction (see
/// [`TripLog::maintain_spare`]).
pub(super) const SPARE: &str = "trips.log.next";
/// A log that is not in a pre-zeroed file moves into one once it is this
/// long (a quarter of the compaction size if that is less) and the spare
/// is ready: a server under load does so within a second or two, one that
/// logs little never writes a spare.
pub(super) const SPARE_AFTER: u64 = 1 << 20;
/// A run of at least this many zero bytes ending a file, after damage with
/// no good frame past it, is the unwritten rest of a pre-zeroed log: the
/// damage is a write a crash cut short.
pub(super) const ZERO_TAIL: usize = 4096;
/// Where the next pre-zeroed log file is.
pub(super) enum Spare {
    /// None asked for yet.
    None,
    /// Being written (or checked) on a thread of its own.
    Writing(JoinHandle<Result<(), StoreError>>),
    /// `trips.log.next`, whole and synced.
    Ready,
    /// Writing one failed: this run's logs grow as they are written.
    Failed,
}

/// How big a spare log file is: the log's length at compaction and a
/// quarter more, so a log normally never outgrows it (one that does goes on
/// growing the file).
pub(super) fn spare_bytes(compact_after: u64) -> u64 {
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
pub(super) fn write_spare(dir: &Path, bytes: u64) -> Result<(), StoreError> {
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

impl TripLog {
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

    pub(super) fn spare_after(&self) -> u64 {
        SPARE_AFTER.min(self.compact_after / 4)
    }

    /// The spare, made ready for appends (the magic written over its first
    /// zeros and synced), if one is ready. A spare that cannot be made
    /// ready is not the log's failure: the log then grows as it is written.
    pub(super) fn take_spare(&mut self) -> Option<(File, PathBuf)> {
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
}
