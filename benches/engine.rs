#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn
//! The engine with no network: how fast the core is, per scenario.
//!
//! Seeded (the same city every run) and named by scenario, e.g.
//! `update/250k_drivers`. Run: `cargo bench --bench engine`.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dispatch_core::engine::{Config, FleetDriverUpdate, Ping};
use dispatch_core::ids::{DriverId, FleetId, SessionId};
use dispatch_core::service::ServiceType;
use dispatch_core::time::Timestamp;
use dispatch_testkit::city::{CityShape, driver_hello, driver_id, engine_with_drivers, ride_request};
use dispatch_testkit::geo::destination;
use dispatch_testkit::rng;
use rand::Rng;

const SIZES: [(usize, &str); 2] = [(10_000, "10k_drivers"), (250_000, "250k_drivers")];

/// A location update: each driver in turn moves ~10 m (a second of city
/// driving), as pings arrive from the whole fleet.
fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    group.throughput(Throughput::Elements(1));
    for (drivers, name) in SIZES {
        let city = CityShape::seoul();
        let (mut engine, placed) = engine_with_drivers(1, &city, drivers, Config::default());
        let mut rng = rng(2);
        // Precomputed random walks so the bench times the engine, not trig.
        let steps: Vec<_> = placed
            .iter()
            .map(|(s, at)| (*s, destination(*at, rng.random_range(0.0..std::f64::consts::TAU), 10.0)))
            .collect();
        let mut i = 0;
        let mut now = Timestamp(0);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let (session, position) = steps[i % steps.len()];
                i += 1;
                now = now + 1;
                black_box(engine.ping(now, session, Ping { position, timestamp: None })).ok();
            });
        });
    }
    group.finish();
}

/// The nearest eligible driver for a pickup: available, serving the type,
/// inside the radius.
fn nearest(c: &mut Criterion) {
    let mut group = c.benchmark_group("nearest");
    for (drivers, name) in SIZES {
        let city = CityShape::seoul();
        let (engine, placed) = engine_with_drivers(3, &city, drivers, Config::default());
        let mut rng = rng(4);
        let pickups: Vec<_> = (0..4_096).map(|_| city.point(&mut rng)).collect();
        let mut i = 0;
        group.bench_function(BenchmarkId::new(name, "available_only"), |b| {
            b.iter(|| {
                i += 1;
                black_box(engine.nearest_offerable_driver(pickups[i % pickups.len()], ServiceType::Taxi, 5_000.0))
            });
        });
        // The floor to compare with, in the same run: plain rstar nearest-1
        // over the same points, no eligibility, no slack.
        let tree: rstar::RTree<[f64; 3]> = rstar::RTree::bulk_load(placed.iter().map(|(_, p)| p.to_unit()).collect());
        group.bench_function(BenchmarkId::new(name, "rstar_nearest_1_baseline"), |b| {
            b.iter(|| {
                i += 1;
                black_box(tree.nearest_neighbor(pickups[i % pickups.len()].to_unit()))
            });
        });
        // Premium is one driver in ten: the search walks past the others.
        group.bench_function(BenchmarkId::new(name, "premium"), |b| {
            b.iter(|| {
                i += 1;
                black_box(engine.nearest_offerable_driver(pickups[i % pickups.len()], ServiceType::Premium, 5_000.0))
            });
        });
    }
    group.finish();
}

/// A ride request through to the offer effect (then cancelled, so the
/// driver is free for the next iteration).
fn request_to_offer(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_to_offer");
    for (drivers, name) in SIZES {
        let city = CityShape::seoul();
        let (mut engine, _) = engine_with_drivers(5, &city, drivers, Config::default());
        let mut rng = rng(6);
        let mut n = 0;
        let now = Timestamp(1);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    ride_request(&mut rng, &city, n)
                },
                |request| {
                    let trip = engine.request_ride(now, request).trip.id;
                    let offered = engine.drain_effects().count();
                    let _ = engine.cancel_ride(now, trip, "");
                    engine.drain_effects().for_each(drop);
                    offered
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

/// Fleet updates for drivers `numbers`, each available somewhere in the
/// city; a fleet names its drivers in its own namespace, `bench/...`.
fn fleet_updates(city: &CityShape, seed: u64, numbers: std::ops::Range<usize>) -> Vec<FleetDriverUpdate> {
    let mut rng = rng(seed);
    numbers
        .map(|n| FleetDriverUpdate {
            driver: DriverId::new(&format!("bench/{}", driver_id(n))).unwrap_or_else(|e| panic!("{e}")),
            position: Some(Ping { position: city.point(&mut rng), timestamp: None }),
            services: None,
            available: Some(true),
            auto_accept: false,
        })
        .collect()
}

/// A batch of 10,000 fleet updates applied (drivers already registered).
fn fleet_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("fleet_batch");
    group.throughput(Throughput::Elements(10_000));
    let city = CityShape::seoul();
    let (mut engine, _) = engine_with_drivers(7, &city, 240_000, Config::default());
    let fleet = SessionId(u64::MAX);
    engine.connect_fleet(fleet, FleetId::new("bench").unwrap_or_else(|e| panic!("{e}")));
    let batch = fleet_updates(&city, 8, 1_000_000..1_010_000);
    let mut now = Timestamp(0);
    // Registers them, and makes sure the bench times applied updates, not
    // refusals.
    for update in batch.clone() {
        if let Err(e) = engine.fleet_update(now, fleet, update) {
            panic!("{e}");
        }
    }
    group.bench_function("10k_updates/250k_drivers", |b| {
        b.iter_batched(
            || batch.clone(),
            |batch| {
                now = now + 1;
                for update in batch {
                    black_box(engine.fleet_update(now, fleet, update)).ok();
                }
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

/// A batch of 10,000 fleet updates as in the korea scenario's steady state:
/// a fleet of 100,000 drivers (its limit), 90,000 of them on trips (so
/// nearly every update moves a driver whose rider follows), a batch every
/// half second, so the riders of every other batch are due the driver's
/// position. Each driver
/// moves 10 m, within the index's slack: this times the ping's own
/// bookkeeping, not R-tree moves (`update/*` times those).
fn fleet_batch_on_trips(c: &mut Criterion) {
    let mut group = c.benchmark_group("fleet_batch");
    group.throughput(Throughput::Elements(10_000));
    let city = CityShape::seoul();
    let mut engine = dispatch_core::Engine::new(Config::default());
    let fleet = SessionId(u64::MAX);
    engine.connect_fleet(fleet, FleetId::new("bench").unwrap_or_else(|e| panic!("{e}")));
    let mut now = Timestamp(0);
    let drivers: Vec<_> = fleet_updates(&city, 15, 0..100_000)
        .into_iter()
        .map(|update| FleetDriverUpdate { auto_accept: true, ..update })
        .collect();
    for update in drivers.iter().cloned() {
        if let Err(e) = engine.fleet_update(now, fleet, update) {
            panic!("{e}");
        }
    }
    let mut rng = rng(16);
    for n in 0..90_000 {
        engine.request_ride(now, ride_request(&mut rng, &city, n));
    }
    engine.drain_effects().for_each(drop);
    let on_trip = engine.stats().drivers_on_trip;
    assert!(on_trip >= 85_000, "only {on_trip} drivers on trips");
    let batch: Vec<_> = drivers[..10_000]
        .iter()
        .map(|update| {
            let position = update.position.map(|p| Ping { position: destination(p.position, 0.0, 10.0), ..p });
            FleetDriverUpdate { position, available: None, ..update.clone() }
        })
        .collect();
    group.bench_function("10k_updates_on_trips/100k_drivers_90k_trips", |b| {
        b.iter_batched(
            || batch.clone(),
            |batch| {
                now = now + 500;
                for update in batch {
                    black_box(engine.fleet_update(now, fleet, update)).ok();
                }
                engine.drain_effects().count()
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

/// A fleet gateway's first seconds: 250,000 drivers the server has never
/// seen, each registered by its first update (an id, a row, a place in the
/// R-tree), from an empty engine.
fn fleet_first_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("fleet_batch");
    group.sample_size(10);
    group.throughput(Throughput::Elements(250_000));
    let city = CityShape::seoul();
    let batch = fleet_updates(&city, 14, 0..250_000);
    let fleet = SessionId(u64::MAX);
    group.bench_function("250k_new_drivers", |b| {
        b.iter_batched(
            || {
                let mut engine = dispatch_core::Engine::new(Config::default());
                engine.connect_fleet(fleet, FleetId::new("bench").unwrap_or_else(|e| panic!("{e}")));
                (engine, batch.clone())
            },
            |(mut engine, batch)| {
                for update in batch {
                    black_box(engine.fleet_update(Timestamp(0), fleet, update)).ok();
                }
                engine
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// Live counts for `GetStats`, with 20,000 trips kept: the tables keep
/// their counts as rows change, so this does not grow with the drivers.
fn stats(c: &mut Criterion) {
    let mut group = c.benchmark_group("stats");
    for (drivers, name) in SIZES {
        let city = CityShape::seoul();
        let (mut engine, _) = engine_with_drivers(11, &city, drivers, Config::default());
        let mut rng = rng(12);
        for n in 0..20_000 {
            engine.request_ride(Timestamp(1), ride_request(&mut rng, &city, n));
        }
        engine.drain_effects().for_each(drop);
        group.bench_function(BenchmarkId::from_parameter(name), |b| b.iter(|| black_box(engine.stats())));
    }
    group.finish();
}

/// Drivers are scarce: 2,000 requests wait, then 100 drivers come free one
/// at a time and each must go to the earliest waiting request in range.
fn scarce(c: &mut Criterion) {
    let mut group = c.benchmark_group("scarce");
    let city = CityShape::seoul();
    group.bench_function("2k_waiting/100_freed", |b| {
        b.iter_batched(
            || {
                let (mut engine, placed) = engine_with_drivers(9, &city, 100, Config::default());
                for (session, _) in &placed {
                    let _ = engine.set_availability(Timestamp(0), *session, false);
                }
                let mut rng = rng(10);
                for n in 0..2_000 {
                    engine.request_ride(Timestamp(0), ride_request(&mut rng, &city, n));
                }
                engine.tick(Timestamp(0));
                engine.drain_effects().for_each(drop);
                (engine, placed)
            },
            |(mut engine, placed)| {
                for (session, _) in &placed {
                    let _ = engine.set_availability(Timestamp(1), *session, true);
                    engine.tick(Timestamp(1));
                }
                engine.drain_effects().count()
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

/// A mass reconnect after an outage: 20,000 rides wait with no driver
/// connected, then 250,000 drivers say hello, 10,000 per engine round, each
/// round followed by the tick that offers the freed drivers to the waiting
/// rides. Times all 25 rounds.
fn mass_reconnect(c: &mut Criterion) {
    let mut group = c.benchmark_group("mass_reconnect");
    group.sample_size(10);
    let city = CityShape::seoul();
    group.bench_function("20k_waiting/250k_drivers_in_rounds_of_10k", |b| {
        b.iter_batched(
            || {
                let mut engine = dispatch_core::Engine::new(Config::default());
                let mut rng = rng(13);
                for n in 0..20_000 {
                    engine.request_ride(Timestamp(0), ride_request(&mut rng, &city, n));
                }
                engine.tick(Timestamp(0));
                engine.drain_effects().for_each(drop);
                let hellos: Vec<_> = (0..250_000).map(|n| driver_hello(&mut rng, &city, n)).collect();
                (engine, hellos)
            },
            |(mut engine, hellos)| {
                let mut offers = 0;
                for (round, chunk) in hellos.chunks(10_000).enumerate() {
                    let now = Timestamp(1 + round as i64);
                    for (n, hello) in chunk.iter().enumerate() {
                        let _ = engine.connect_driver(now, SessionId((round * 10_000 + n) as u64), hello.clone());
                    }
                    engine.tick(now);
                    offers += engine.drain_effects().count();
                }
                (engine, offers)
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// The operators' map at 250,000 drivers, on the engine's thread: a
/// street-level viewport (each driver and its trip), and the whole country
/// (counts per cell from the density the tables keep, never a walk over
/// the drivers).
fn map_view(c: &mut Criterion) {
    use dispatch_core::engine::MapQuery;
    use dispatch_core::geo::LatLng;
    let mut group = c.benchmark_group("map_view");
    let point = |lat, lng| LatLng::new(lat, lng).unwrap_or_else(|e| panic!("{e}"));
    let seoul = CityShape::seoul();
    // The worst case for the density walk: the same drivers spread evenly
    // over a disc of 200 km, so nearly every cell of the country has some.
    let spread = CityShape { centre: seoul.centre, radius_m: 200_000.0 };
    let street = (point(37.560, 126.970), point(37.5735, 126.987));
    let country = (point(33.0, 124.5), point(38.7, 131.0));
    for (city, city_name) in [(seoul, "in_seoul"), (spread, "spread_200km")] {
        let (engine, _) = engine_with_drivers(13, &city, 250_000, Config::default());
        for ((sw, ne), view_name) in [(street, "street_1.5km"), (country, "country")] {
            let name = format!("250k_drivers_{city_name}/{view_name}");
            let query = MapQuery::new(sw, ne, 3_000, 4_000).unwrap_or_else(|| panic!("box"));
            let view = engine.map_view(&query);
            eprintln!(
                "map_view/{name}: {} drivers in view, {} shown, {} cells of {}°",
                view.drivers_in_view,
                view.drivers.len(),
                view.cells.len(),
                view.cell_deg
            );
            group.bench_function(name, |b| b.iter(|| black_box(engine.map_view(&query))));
        }
    }
    group.finish();
}

/// One batch's assignment at Korea's peak: 2,000 ride requests held for a
/// 1 s window in one city, 8 candidates each among 6,000 drivers, all
/// chained into one component (solved in pieces of `MAX_ROWS`).
fn batch_assign(c: &mut Criterion) {
    use dispatch_core::engine::{CANDIDATES, Row, assign};
    let mut rng = rng(21);
    let (n, m) = (2_000usize, 6_000usize);
    let rows: Vec<Row> = (0..n)
        .map(|r| {
            let centre = r * m / n;
            let candidates = (0..CANDIDATES)
                .map(|_| ((centre + rng.random_range(0..24)).min(m - 1), rng.random_range(0..3_000)))
                .collect();
            Row { candidates, unmatched: 2_000 + rng.random_range(0..2_000) }
        })
        .collect();
    let mut group = c.benchmark_group("batch");
    group.sample_size(20);
    group.bench_function("assign/2000_requests_6000_drivers", |b| b.iter(|| black_box(assign(&rows, m))));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = update, nearest, request_to_offer, fleet_batch, fleet_batch_on_trips, fleet_first_batch, stats, scarce, mass_reconnect, map_view, batch_assign
}
criterion_main!(benches);
