//! An external router: an OSRM server's `table` service, asked over HTTP,
//! as the engine's road network (`dispatchd --router osrm:http://...`), for
//! operators who already run OSRM for a whole country; its `route` service
//! gives the way a followed trip's car drives, for the map.
//!
//! - **One call per ranking**: the drives from every candidate to a pickup
//!   come from one `table` request (sources: the candidates; destination:
//!   the pickup), up to [`MAX_SOURCES`] a request.
//! - **Snapping** is OSRM's (to the nearest road); the stretch between a
//!   point and where OSRM put it is driven at [`ACCESS_KMH`]; a point OSRM
//!   moved farther than the snap distance to reach a road has no drive,
//!   and the engine ranks it by the straight line, as it does off the
//!   embedded router's roads.
//! - **A router that does not answer** (refused, timed out, not OSRM's
//!   JSON) is let rest for [`REST`]: meanwhile every drive is `None`, so
//!   rides are ranked by the straight line and counted as fallbacks, rather
//!   than each waiting out the timeout on the engine's thread.
//!
//! The engine waits for each request on its own thread: a ranking costs a
//! round trip to OSRM (a millisecond or two on a city over loopback), which
//! bounds how many rides a second one engine can rank this way.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dispatch_core::geo::LatLng;
use dispatch_core::roads::{Leg, Roads};
use serde::Deserialize;
use tracing::warn;

/// The most sources in one `table` request (`osrm-routed`'s default
/// `--max-table-size` is 100, sources and destinations together).
pub const MAX_SOURCES: usize = 99;

/// A speed no drive beats over the straight line, km/h: the engine skips
/// candidates too far to beat those it has ranked by it (OSRM does not say
/// its top speed; motorways in its car profile are 90 to 130).
pub const TOP_KMH: f64 = 200.0;

/// The speed of the stretch between a point and where OSRM snapped it.
pub const ACCESS_KMH: f64 = 15.0;

/// How long a router that failed is let rest before it is asked again.
pub const REST: Duration = Duration::from_secs(5);

/// Why a router could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OsrmError {
    /// The `--router` value is not `osrm:http://HOST:PORT[/PATH]`.
    #[error("{0:?}: expected osrm:http://HOST:PORT (an OSRM server's address)")]
    Spec(String),
    /// The request failed.
    #[error("{url}: {reason}")]
    Request {
        /// What was asked.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The server answered, but not with a table.
    #[error("{url}: {reason}")]
    Answer {
        /// What was asked.
        url: String,
        /// What came back.
        reason: String,
    },
}

/// OSRM's `table` answer, the parts read.
#[derive(Debug, Deserialize)]
struct Table {
    code: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    durations: Vec<Vec<Option<f64>>>,
    #[serde(default)]
    distances: Vec<Vec<Option<f64>>>,
    #[serde(default)]
    sources: Vec<Waypoint>,
    #[serde(default)]
    destinations: Vec<Waypoint>,
}

/// OSRM's `route` answer, the parts read.
#[derive(Debug, Deserialize)]
struct Routes {
    code: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    routes: Vec<RouteAnswer>,
    #[serde(default)]
    waypoints: Vec<Waypoint>,
}

/// One route: its GeoJSON line, `[lng, lat]` points.
#[derive(Debug, Deserialize)]
struct RouteAnswer {
    geometry: Line,
}

#[derive(Debug, Deserialize)]
struct Line {
    coordinates: Vec<[f64; 2]>,
}

/// Where OSRM snapped a point: `distance` metres from it.
#[derive(Debug, Deserialize)]
struct Waypoint {
    distance: f64,
}

/// An OSRM server, asked for drives.
pub struct Osrm {
    base: String,
    profile: String,
    agent: ureq::Agent,
    snap_m: f64,
    top_mps: f64,
    /// Until when a router that failed is let rest.
    resting_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Osrm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Osrm").field("base", &self.base).field("profile", &self.profile).finish_non_exhaustive()
    }
}

impl Osrm {
    /// The router at `spec` (`osrm:http://HOST:PORT`, with an optional path
    /// before `/table`), asked with `timeout` a request; a point OSRM snaps
    /// farther than `snap_m` has no drive; `top_kmh` is a speed no drive
    /// beats over the straight line (the engine prunes candidates by it).
    pub fn new(spec: &str, timeout: Duration, snap_m: f64, top_kmh: f64) -> Result<Osrm, OsrmError> {
        let base = spec.strip_prefix("osrm:").ok_or_else(|| OsrmError::Spec(spec.to_owned()))?;
        let host = base.strip_prefix("http://").ok_or_else(|| OsrmError::Spec(spec.to_owned()))?;
        if host.is_empty() || host.starts_with('/') || base.contains(['?', '#', ' ']) {
            return Err(OsrmError::Spec(spec.to_owned()));
        }
        let agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build();
        Ok(Osrm {
            base: base.trim_end_matches('/').to_owned(),
            profile: "driving".to_owned(),
            agent: agent.new_agent(),
            snap_m,
            top_mps: top_kmh.max(1.0) / 3.6,
            resting_until: Mutex::new(None),
        })
    }

    /// The server's address, as given.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Asks the server for one drive (from a point in the Gulf of Guinea,
    /// 0° 0°, to itself), to see that it is there and speaks OSRM: an
    /// answer with any `code` will do (a point outside its data is
    /// `NoSegment`).
    pub fn check(&self) -> Result<(), OsrmError> {
        let at = LatLng::new(0.0, 0.0).map_err(|e| OsrmError::Spec(e.to_string()))?;
        let url = self.table_url(&[at], at);
        self.get(&url).map(|_| ())
    }

    /// The drive from each of `from` to `to`: `Ok` with `None` where OSRM
    /// snapped a point too far, [`Leg::UNREACHABLE`] where it has no route;
    /// `Err` if the server could not be asked.
    pub fn table(&self, from: &[LatLng], to: LatLng) -> Result<Vec<Option<Leg>>, OsrmError> {
        let mut legs = Vec::with_capacity(from.len());
        for chunk in from.chunks(MAX_SOURCES) {
            let url = self.table_url(chunk, to);
            let table = self.get(&url)?;
            if table.code != "Ok" {
                // A point that snaps nowhere (outside the server's data):
                // no drive for any of them.
                if table.code == "NoSegment" {
                    legs.extend(std::iter::repeat_n(None, chunk.len()));
                    continue;
                }
                let reason = format!("{}: {}", table.code, table.message.unwrap_or_default());
                return Err(OsrmError::Answer { url, reason });
            }
            // A table of another shape is not an answer: the router rests
            // rather than every driver seeming unreachable.
            let whole = |rows: &[Vec<Option<f64>>]| rows.len() == chunk.len() && rows.iter().all(|r| r.len() == 1);
            let (Some(to_snap), true, true, true) = (
                table.destinations.first(),
                table.sources.len() == chunk.len(),
                whole(&table.durations),
                whole(&table.distances),
            ) else {
                let reason = format!("a table not of {} sources by 1 destination", chunk.len());
                return Err(OsrmError::Answer { url, reason });
            };
            for n in 0..chunk.len() {
                let from_snap = &table.sources[n];
                let near = to_snap.distance <= self.snap_m && from_snap.distance <= self.snap_m;
                // OSRM drives from where it snapped each point: the stretch
                // from the point to there is driven at `ACCESS_KMH`, as the
                // embedded router does (so no drive beats `TOP_KMH`).
                let access_m = to_snap.distance.max(0.0) + from_snap.distance.max(0.0);
                legs.push(match (near, table.durations[n][0], table.distances[n][0]) {
                    (false, _, _) => None,
                    (true, Some(seconds), Some(metres)) if seconds.is_finite() && metres.is_finite() => Some(Leg {
                        metres: metres.max(0.0) + access_m,
                        seconds: seconds.max(0.0) + access_m / (ACCESS_KMH / 3.6),
                    }),
                    // Both on roads, and no route between them.
                    (true, _, _) => Some(Leg::UNREACHABLE),
                });
            }
        }
        Ok(legs)
    }

    /// The way a drive from `from` to `to` goes, as OSRM's `route` service
    /// gives it (its whole line), with the two ends first and last: `Ok`
    /// with `None` where a point snaps farther than the snap distance, or
    /// OSRM has no route; `Err` if the server could not be asked.
    pub fn route(&self, from: LatLng, to: LatLng) -> Result<Option<Vec<LatLng>>, OsrmError> {
        let point = |p: LatLng| format!("{:.6},{:.6}", p.lng(), p.lat());
        let url = format!(
            "{}/route/v1/{}/{};{}?overview=full&geometries=geojson&steps=false",
            self.base,
            self.profile,
            point(from),
            point(to)
        );
        let answer: Routes = self.get_json(&url, "route")?;
        match answer.code.as_str() {
            "Ok" => {}
            "NoSegment" | "NoRoute" => return Ok(None),
            code => {
                let reason = format!("{code}: {}", answer.message.unwrap_or_default());
                return Err(OsrmError::Answer { url, reason });
            }
        }
        if answer.waypoints.len() != 2 || answer.waypoints.iter().any(|w| w.distance > self.snap_m) {
            return Ok(None);
        }
        let Some(route) = answer.routes.into_iter().next() else { return Ok(None) };
        let line = route.geometry.coordinates.into_iter().filter_map(|[lng, lat]| LatLng::new(lat, lng).ok());
        Ok(Some(std::iter::once(from).chain(line).chain(std::iter::once(to)).collect()))
    }

    /// `{base}/table/v1/driving/{to};{from...}?sources=1;...&destinations=0`.
    fn table_url(&self, from: &[LatLng], to: LatLng) -> String {
        let point = |p: LatLng| format!("{:.6},{:.6}", p.lng(), p.lat());
        let mut points = vec![point(to)];
        points.extend(from.iter().map(|&p| point(p)));
        let sources: Vec<String> = (1..=from.len()).map(|n| n.to_string()).collect();
        format!(
            "{}/table/v1/{}/{}?sources={}&destinations=0&annotations=duration,distance",
            self.base,
            self.profile,
            points.join(";"),
            sources.join(";")
        )
    }

    fn get(&self, url: &str) -> Result<Table, OsrmError> {
        self.get_json(url, "table")
    }

    /// `url`'s answer as OSRM's JSON of a `what` (for the error).
    fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str, what: &str) -> Result<T, OsrmError> {
        let request = |reason: String| OsrmError::Request { url: url.to_owned(), reason };
        let mut response = self.agent.get(url).call().map_err(|e| request(e.to_string()))?;
        let status = response.status();
        let body = response.body_mut().read_to_string().map_err(|e| request(e.to_string()))?;
        serde_json::from_str::<T>(&body).map_err(|e| OsrmError::Answer {
            url: url.to_owned(),
            reason: format!("HTTP {status}, not an OSRM {what} ({e})"),
        })
    }

    /// Whether the router failed less than [`REST`] ago, and is not asked
    /// until then.
    pub fn resting(&self) -> bool {
        let mut until = self.resting_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *until {
            Some(at) if Instant::now() < at => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    fn rest(&self) {
        let mut until = self.resting_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *until = Some(Instant::now() + REST);
    }
}

impl Roads for Osrm {
    fn legs_to(&self, from: &[LatLng], to: LatLng) -> Vec<Option<Leg>> {
        if from.is_empty() || self.resting() {
            return vec![None; from.len()];
        }
        match self.table(from, to) {
            Ok(legs) => legs,
            Err(e) => {
                warn!(error = %e, rest_s = REST.as_secs(), "the router failed; ranking by the straight line meanwhile");
                self.rest();
                vec![None; from.len()]
            }
        }
    }

    fn top_speed_mps(&self) -> f64 {
        self.top_mps
    }

    /// OSRM's `route` service; nothing while the router rests, and a
    /// failure lets it rest, as a ranking's does.
    fn way(&self, from: LatLng, to: LatLng) -> Option<Vec<LatLng>> {
        if self.resting() {
            return None;
        }
        self.route(from, to).unwrap_or_else(|e| {
            warn!(error = %e, rest_s = REST.as_secs(), "the router failed; ranking by the straight line meanwhile");
            self.rest();
            None
        })
    }

    fn batches(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_is_named_by_its_http_address() {
        let osrm = |s: &str| Osrm::new(s, Duration::from_secs(1), 250.0, 130.0);
        assert_eq!(osrm("osrm:http://127.0.0.1:5000/").map(|o| o.base).ok().as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(osrm("osrm:http://r.internal/osrm").map(|o| o.base).ok().as_deref(), Some("http://r.internal/osrm"));
        for bad in
            ["http://127.0.0.1:5000", "osrm:127.0.0.1:5000", "osrm:https://x", "osrm:http://", "osrm:http://x?a=1"]
        {
            assert!(matches!(osrm(bad), Err(OsrmError::Spec(_))), "{bad}");
        }
    }

    #[test]
    fn a_table_asks_every_source_to_the_one_destination() {
        let osrm = Osrm::new("osrm:http://h:1", Duration::from_secs(1), 250.0, 130.0).unwrap_or_else(|e| panic!("{e}"));
        let p = |lat, lng| LatLng::new(lat, lng).unwrap_or_else(|e| panic!("{e}"));
        let url = osrm.table_url(&[p(60.1, 24.9), p(60.2, 24.8)], p(60.0, 25.0));
        assert_eq!(
            url,
            "http://h:1/table/v1/driving/25.000000,60.000000;24.900000,60.100000;24.800000,60.200000\
             ?sources=1;2&destinations=0&annotations=duration,distance"
        );
    }
}
