//! What the operators' map shows of a viewport, at a bounded cost to the
//! engine whatever the zoom: the drivers themselves (and their trips) when
//! few are in view, else how many of each kind there are per cell, read
//! from the [`Density`](super::tables::Density) map the tables keep.

use std::collections::BTreeMap;

use super::Engine;
use super::tables::{CELL_DEG, CellCounts, CellKey, Density, LEVELS, Shade};
use crate::geo::LatLng;
use crate::ids::{DriverId, TripId};
use crate::trip::Trip;

/// The most waiting trips one view examines, so a backlog of them cannot
/// stall the engine.
const MAX_WAITING_EXAMINED: usize = 10_000;

/// A viewport: the box from `south_west` to `north_east` (not across the
/// antimeridian).
#[derive(Debug, Clone, PartialEq)]
pub struct MapQuery {
    /// The box's south-west corner.
    pub south_west: LatLng,
    /// The box's north-east corner.
    pub north_east: LatLng,
    /// Show each driver when at most this many are in view, else cells.
    pub max_drivers: usize,
    /// The most cells (and the most trips) in an answer.
    pub max_cells: usize,
}

impl MapQuery {
    /// A viewport; `None` if the corners are the wrong way round.
    pub fn new(south_west: LatLng, north_east: LatLng, max_drivers: usize, max_cells: usize) -> Option<Self> {
        let ordered = south_west.lat() <= north_east.lat() && south_west.lng() <= north_east.lng();
        ordered.then_some(Self { south_west, north_east, max_drivers, max_cells: max_cells.max(1) })
    }

    fn contains(&self, at: LatLng) -> bool {
        (self.south_west.lat()..=self.north_east.lat()).contains(&at.lat())
            && (self.south_west.lng()..=self.north_east.lng()).contains(&at.lng())
    }

    /// The cells the box touches, corner to corner.
    fn cell_range(&self) -> (CellKey, CellKey) {
        (CellKey::of(self.south_west), CellKey::of(self.north_east))
    }
}

/// One driver on the map.
#[derive(Debug, Clone, PartialEq)]
pub struct MapDriver {
    /// Who.
    pub driver: DriverId,
    /// Where.
    pub position: LatLng,
    /// Available, offered, on a trip or unavailable.
    pub shade: Shade,
    /// The trip offered to or held by the driver.
    pub trip: Option<TripId>,
}

/// One cell of the density view.
#[derive(Debug, Clone, PartialEq)]
pub struct MapCell {
    /// The cell's south-west corner.
    pub south_west: (f64, f64),
    /// Drivers available, offered, on a trip, unavailable; trips waiting.
    pub counts: CellCounts,
}

/// One open trip on the map.
#[derive(Debug, Clone, PartialEq)]
pub struct MapTrip {
    /// The trip as the engine has it.
    pub trip: Trip,
    /// The driver it is offered to, while it is.
    pub offered_to: Option<DriverId>,
}

/// What the map shows of a viewport.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MapView {
    /// Every driver in view, when there are at most `max_drivers`.
    pub drivers: Vec<MapDriver>,
    /// Otherwise, counts per cell of side `cell_deg` degrees.
    pub cells: Vec<MapCell>,
    /// The side of `cells`.
    pub cell_deg: f64,
    /// With `drivers`: their trips and offers, and trips waiting in view.
    pub trips: Vec<MapTrip>,
    /// Drivers (of any kind) in the cells the viewport touches.
    pub drivers_in_view: u64,
    /// Trips waiting for a driver in the cells the viewport touches.
    pub waiting_in_view: u64,
}

/// Every non-empty cell of `level` inside `lo..=hi` (cells of that level):
/// the cells of the box looked up one by one when the box has fewer than
/// the level has, else the level walked; so the cost is the smaller of the
/// two.
fn cells_in<'a>(
    density: &'a Density,
    level: usize,
    lo: CellKey,
    hi: CellKey,
) -> Box<dyn Iterator<Item = (CellKey, CellCounts)> + 'a> {
    let Some(cells) = density.0.get(level) else { return Box::new(std::iter::empty()) };
    let rows = i64::from(hi.lat) - i64::from(lo.lat) + 1;
    let cols = i64::from(hi.lng) - i64::from(lo.lng) + 1;
    if rows.saturating_mul(cols) <= cells.len() as i64 {
        Box::new((lo.lat..=hi.lat).flat_map(move |lat| {
            (lo.lng..=hi.lng).filter_map(move |lng| {
                let key = CellKey { lat, lng };
                cells.get(&key).map(|c| (key, *c))
            })
        }))
    } else {
        let inside = move |k: &CellKey| (lo.lat..=hi.lat).contains(&k.lat) && (lo.lng..=hi.lng).contains(&k.lng);
        Box::new(density.cells(level).filter(move |(k, _)| inside(k)).map(|(k, c)| (k, *c)))
    }
}

fn add(into: &mut CellCounts, from: &CellCounts) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

impl Engine {
    /// What the map shows of `query`'s viewport. Costs O(`max_cells`)
    /// density lookups (read from the pyramid level that gives about that
    /// many cells) plus, zoomed in, O(log n + drivers in view); never a walk
    /// over every driver or every base cell.
    pub fn map_view(&self, query: &MapQuery) -> MapView {
        let (lo, hi) = query.cell_range();
        let rows = i64::from(hi.lat) - i64::from(lo.lat) + 1;
        let cols = i64::from(hi.lng) - i64::from(lo.lng) + 1;
        // Merge 2^k x 2^k base cells into one until few enough are left.
        let mut k = 0;
        while (((rows - 1) >> k) + 1) * (((cols - 1) >> k) + 1) > query.max_cells as i64 && k < 24 {
            k += 1;
        }
        let level = k.min(LEVELS - 1);
        let (lo_l, hi_l) = (lo.up(level), hi.up(level));
        let mut view = MapView { cell_deg: CELL_DEG, ..MapView::default() };
        let mut in_view = CellCounts::default();
        for (_, counts) in cells_in(self.drivers.density(), level, lo_l, hi_l) {
            add(&mut in_view, &counts);
        }
        for (_, counts) in cells_in(self.trips.density(), level, lo_l, hi_l) {
            view.waiting_in_view += u64::from(counts[Shade::Waiting as usize]);
        }
        view.drivers_in_view = in_view.iter().map(|&n| u64::from(n)).sum();
        if k == 0 && view.drivers_in_view <= query.max_drivers as u64 {
            self.fill_drivers(query, &mut view);
        } else {
            self.fill_cells(level, k, (lo_l, hi_l), &mut view);
        }
        view
    }

    /// One driver as the map shows it, if the engine knows it.
    pub fn map_driver(&self, id: &DriverId) -> Option<MapDriver> {
        let driver = self.driver(self.drivers.key_of(id)?);
        let trip = driver.trip.or_else(|| driver.offer.and_then(|o| self.offers.get(o)).map(|o| o.trip));
        Some(MapDriver { driver: driver.id.clone(), position: driver.position?, shade: driver.shade(), trip })
    }

    fn fill_drivers(&self, query: &MapQuery, view: &mut MapView) {
        // The cells over-count (they stick out of the box), so the index
        // is asked for somewhat more than will be shown.
        let limit = query.max_drivers.saturating_mul(2);
        let free = self.drivers.free().in_box(query.south_west, query.north_east, limit);
        let busy = self.drivers.busy().in_box(query.south_west, query.north_east, limit);
        for key in free.into_iter().chain(busy) {
            let driver = self.driver(key);
            let Some(position) = driver.position.filter(|p| query.contains(*p)) else { continue };
            let trip = driver.trip.or_else(|| driver.offer.and_then(|o| self.offers.get(o)).map(|o| o.trip));
            view.drivers.push(MapDriver { driver: driver.id.clone(), position, shade: driver.shade(), trip });
            if view.drivers.len() == query.max_drivers {
                break;
            }
        }
        view.drivers.sort_by(|a, b| a.driver.cmp(&b.driver));
        let mut trips: BTreeMap<TripId, Option<DriverId>> = BTreeMap::new();
        for d in &view.drivers {
            if let Some(trip) = d.trip {
                let offered = (d.shade == Shade::Offered).then(|| d.driver.clone());
                trips.insert(trip, offered);
            }
        }
        for trip in self.queue.queued().take(MAX_WAITING_EXAMINED) {
            if trips.len() >= query.max_cells {
                break;
            }
            if self.trips.get(&trip).is_some_and(|t| query.contains(t.trip.pickup)) {
                trips.insert(trip, None);
            }
        }
        view.trips = trips
            .into_iter()
            .take(query.max_cells)
            .filter_map(|(id, offered_to)| Some(MapTrip { trip: self.trips.get(&id)?.trip.clone(), offered_to }))
            .collect();
    }

    /// Counts per cell of 2^k base cells a side, read from `level`.
    fn fill_cells(&self, level: usize, k: usize, (lo, hi): (CellKey, CellKey), view: &mut MapView) {
        let merge = k - level;
        let coarse = |key: CellKey| CellKey { lat: key.lat >> merge, lng: key.lng >> merge };
        let mut merged: BTreeMap<CellKey, CellCounts> = BTreeMap::new();
        let drivers = cells_in(self.drivers.density(), level, lo, hi);
        for (key, counts) in drivers.chain(cells_in(self.trips.density(), level, lo, hi)) {
            add(merged.entry(coarse(key)).or_default(), &counts);
        }
        view.cell_deg = CELL_DEG * f64::from(1u32 << k.min(31));
        view.cells = merged
            .into_iter()
            .map(|(key, counts)| MapCell {
                south_west: (f64::from(key.lat) * view.cell_deg, f64::from(key.lng) * view.cell_deg),
                counts,
            })
            .collect();
    }
}
