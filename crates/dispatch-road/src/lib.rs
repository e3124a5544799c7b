//! A road network for dispatch: the engine ranks its nearest candidates by
//! their drive to the pickup over it (see `dispatch_core::roads`).
//!
//! - [`osm`]: the drivable ways of an OpenStreetMap extract (`.osm.pbf`,
//!   or `.osm` XML), their speeds and directions.
//! - [`network`]: the graph prepared as a contraction hierarchy
//!   (`fast_paths`), snapping, drives.
//! - [`load`]: an extract to a network, through a cache of the prepared
//!   graph, so a restart does not prepare it again.
//! - [`grid`]: generated grids of streets, for load scenarios.

pub mod grid;
mod nearby;
pub mod network;
pub mod osm;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{info, warn};

pub use nearby::SETTLE_LIMIT;
use network::Prepared;
pub use network::{ACCESS_KMH, DEFAULT_SNAP_M, Graph, RoadNetwork, Route};
use osm::Osm;

/// What stops a road network from loading.
#[derive(Debug, thiserror::Error)]
pub enum RoadError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not OpenStreetMap data this can read.
    #[error("{path}: not readable OpenStreetMap data: {why}")]
    Osm {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The file has no drivable road.
    #[error("{path}: no drivable roads in it")]
    NoRoads {
        /// The file.
        path: PathBuf,
    },
}

impl RoadError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// The cache file's format; a change makes old files be rebuilt.
const CACHE_VERSION: u32 = 6;

/// How a network came to be: read and prepared, or loaded from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the extract and prepared now.
    Prepared,
    /// Read back from the cache.
    Cached,
}

/// Loads the road network of the extract at `path`, points joining it
/// within `snap_m`. With `cache_dir`, the prepared graph is kept there,
/// under a name that changes with the extract's size and modification
/// time, and read back at the next start; a cache file that fails its
/// checksum or does not hold together is prepared again.
pub fn load(path: &Path, cache_dir: Option<&Path>, snap_m: f64) -> Result<(RoadNetwork, Source), RoadError> {
    let meta = std::fs::metadata(path).map_err(|e| RoadError::io(path, e))?;
    let cache = cache_dir.map(|dir| dir.join(cache_name(path, &meta)));
    if let Some(file) = &cache
        && file.exists()
    {
        match read_cache(file) {
            Ok(prepared) => {
                if let Some(network) = RoadNetwork::new(prepared, snap_m) {
                    info!(cache = %file.display(), nodes = network.nodes(), "road network loaded from the cache");
                    return Ok((network, Source::Cached));
                }
                warn!(cache = %file.display(), "the cached road network does not hold together; preparing it again");
            }
            Err(why) => {
                warn!(cache = %file.display(), %why, "the cached road network is unreadable; preparing it again")
            }
        }
    }
    let started = Instant::now();
    let osm = Osm::read(path)?;
    let prepared = Prepared::build(&osm);
    if prepared.coords.is_empty() {
        return Err(RoadError::NoRoads { path: path.into() });
    }
    info!(
        extract = %path.display(),
        ways = osm.ways.len(),
        turn_restrictions = osm.turns.len(),
        nodes = prepared.coords.len(),
        seconds = started.elapsed().as_secs_f64(),
        "road network prepared"
    );
    if let Some(file) = &cache
        && let Err(e) = write_cache(file, &prepared)
    {
        warn!(cache = %file.display(), error = %e, "could not keep the prepared road network");
    }
    let network = RoadNetwork::new(prepared, snap_m)
        .ok_or_else(|| RoadError::Osm { path: path.into(), why: "the prepared graph does not hold together".into() })?;
    Ok((network, Source::Prepared))
}

/// Prepares the network of OSM XML given as text, without a cache: for
/// tests and tools that make their own maps.
pub fn from_xml(xml: &str, snap_m: f64) -> Result<RoadNetwork, RoadError> {
    let path = PathBuf::from("<xml>");
    let osm = Osm::read_xml(xml.as_bytes()).map_err(|why| RoadError::Osm { path: path.clone(), why })?;
    let prepared = Prepared::build(&osm);
    if prepared.coords.is_empty() {
        return Err(RoadError::NoRoads { path });
    }
    RoadNetwork::new(prepared, snap_m).ok_or(RoadError::NoRoads { path })
}

fn cache_name(path: &Path, meta: &std::fs::Metadata) -> String {
    let modified =
        meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let key = format!("{}|{}|{}|{CACHE_VERSION}", path.display(), meta.len(), modified);
    format!("roads-{:016x}.bin", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

/// The file: the prepared graph (postcard), then its CRC-32 (4 bytes, LE).
fn write_cache(file: &Path, prepared: &Prepared) -> std::io::Result<()> {
    let mut bytes = postcard::to_stdvec(&(CACHE_VERSION, prepared)).map_err(std::io::Error::other)?;
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Written whole beside it, then renamed: a crash leaves the old file or
    // none, never half of one.
    let tmp = file.with_extension("tmp");
    let mut out = std::fs::File::create(&tmp)?;
    out.write_all(&bytes)?;
    out.sync_all()?;
    std::fs::rename(&tmp, file)
}

fn read_cache(file: &Path) -> Result<Prepared, String> {
    let bytes = std::fs::read(file).map_err(|e| e.to_string())?;
    let Some(split) = bytes.len().checked_sub(4) else { return Err("too short".into()) };
    let (body, crc) = bytes.split_at(split);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    let (version, prepared): (u32, Prepared) = postcard::from_bytes(body).map_err(|e| e.to_string())?;
    if version != CACHE_VERSION {
        return Err(format!("format {version}, not {CACHE_VERSION}"));
    }
    Ok(prepared)
}
