#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn
//! What ranking by road costs: preparing an extract, one drive, the drives
//! of a pickup's candidates (one query each), and the engine's ranking of
//! a pickup by the straight line against by road, on central Helsinki
//! (see `dispatch_testkit::roads::helsinki_extract`); the same drives and
//! ranking asked of a real `osrm-routed` over loopback (`--router`); and
//! snapping a point to the nearest node: the network's own, and a k-d tree
//! (what the network uses) against an R-tree over the same points.
//!
//! Seeded. Run: `cargo bench --bench roads`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use dispatch_core::Engine;
use dispatch_core::engine::{Config, DriverHello};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, SessionId};
use dispatch_core::roads::Roads;
use dispatch_core::service::{ServiceSet, ServiceType};
use dispatch_core::time::Timestamp;
use dispatch_road::{DEFAULT_SNAP_M, Graph, RoadNetwork};
use dispatch_testkit::rng;
use rand::Rng;

struct Helsinki {
    network: Arc<RoadNetwork>,
    points: Vec<LatLng>,
}

fn helsinki() -> Helsinki {
    let extract = dispatch_testkit::roads::helsinki_extract();
    let (network, _) = dispatch_road::load(&extract, None, DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"));
    let graph = Graph::of(&dispatch_road::osm::Osm::read(&extract).unwrap_or_else(|e| panic!("{e}")));
    let mut rng = rng(1);
    let points = (0..4_096)
        .map(|_| graph.coords[rng.random_range(0..graph.coords.len())])
        .filter(|&p| network.snap_node(p).is_some())
        .collect();
    Helsinki { network: Arc::new(network), points }
}

fn prepare(c: &mut Criterion) {
    let mut group = c.benchmark_group("road_prepare");
    group.sample_size(10);
    let extract = dispatch_testkit::roads::helsinki_extract();
    group.bench_function("helsinki", |b| {
        b.iter(|| black_box(dispatch_road::load(&extract, None, DEFAULT_SNAP_M).map(|(n, _)| n.nodes())));
    });
    let xml = dispatch_testkit::roads::xml();
    group.bench_function("river_city", |b| b.iter(|| black_box(dispatch_road::from_xml(&xml, DEFAULT_SNAP_M).is_ok())));
    group.finish();
}

/// Percentiles of single queries, which criterion's means hide: timed one
/// by one and printed (stderr) before the benchmarks.
fn spread(city: &Helsinki) {
    let n = city.points.len();
    let mut took: Vec<std::time::Duration> = (0..20_000)
        .map(|i| {
            let started = std::time::Instant::now();
            black_box(city.network.leg(city.points[(2 * i) % n], city.points[(2 * i + 1) % n]));
            started.elapsed()
        })
        .collect();
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    eprintln!(
        "road_query/leg one by one: p50 {:?}, p99 {:?}, max {:?} over {} queries ({} nodes)",
        at(0.5),
        at(0.99),
        at(1.0),
        took.len(),
        city.network.nodes()
    );
}

/// How often the driver with the least drive to a pickup is not among the
/// `k` nearest by the straight line (so ranking `k` by road misses it), and
/// by how much the best of those `k` is slower then: drivers and pickups
/// at random on the roads, printed (stderr) before the benchmarks.
fn misses(city: &Helsinki) {
    let n = city.points.len();
    let mut rng = rng(7);
    for drivers in [50, 100, 400] {
        for k in [8, 16, 32] {
            let (mut missed, mut extra_s, asked) = (0, 0.0, 1_000);
            for _ in 0..asked {
                let pickup = city.points[rng.random_range(0..n)];
                let mut fleet: Vec<LatLng> = (0..drivers).map(|_| city.points[rng.random_range(0..n)]).collect();
                fleet.sort_by(|a, b| a.distance_m(pickup).total_cmp(&b.distance_m(pickup)));
                let secs: Vec<f64> = city
                    .network
                    .legs_to(&fleet, pickup)
                    .into_iter()
                    .map(|leg| leg.map_or(f64::INFINITY, |l| l.seconds))
                    .collect();
                let best = secs.iter().copied().fold(f64::INFINITY, f64::min);
                let best_of_k = secs.iter().take(k).copied().fold(f64::INFINITY, f64::min);
                if best_of_k > best {
                    missed += 1;
                    extra_s += best_of_k - best;
                }
            }
            eprintln!(
                "road_candidates {k} of {drivers} drivers: the fastest missed in {missed} of {asked} pickups, \
                 {:.1} s slower on average when missed",
                if missed > 0 { extra_s / f64::from(missed) } else { 0.0 }
            );
        }
    }
}

fn query(c: &mut Criterion) {
    let city = helsinki();
    spread(&city);
    misses(&city);
    let mut group = c.benchmark_group("road_query");
    let mut i = 0;
    let n = city.points.len();
    group.bench_function("leg", |b| {
        b.iter(|| {
            i += 2;
            black_box(city.network.leg(city.points[i % n], city.points[(i + 1) % n]))
        });
    });
    for k in [8, 16, 32] {
        group.bench_function(format!("legs_to/{k}"), |b| {
            b.iter(|| {
                i += k + 1;
                let from: Vec<LatLng> = (0..k).map(|j| city.points[(i + j) % n]).collect();
                black_box(city.network.legs_to(&from, city.points[(i + k) % n]))
            });
        });
    }
    group.finish();
    snap(c, &city);
}

/// The nearest of many points to a point: the network's own snap (a k-d
/// tree, `kiddo`) on Helsinki, and a k-d tree against an R-tree (`rstar`)
/// over the same points, asked the same queries: the benchmark's 4,096
/// draws from Helsinki's 1,956 nodes (most nodes drawn twice), and 92,366
/// random points (as many as the load harness's grid of six cities has
/// nodes) spread evenly over 60 km by 60 km round Seoul.
fn snap(c: &mut Criterion, city: &Helsinki) {
    let mut group = c.benchmark_group("road_snap");
    let mut rng = rng(3);
    // Pickups and drivers near the roads, not on their nodes.
    let near: Vec<LatLng> = (0..4_096)
        .map(|i| {
            let at = city.points[i % city.points.len()];
            LatLng::new(at.lat() + rng.random_range(-0.0005..0.0005), at.lng() + rng.random_range(-0.0005..0.0005))
                .unwrap_or(at)
        })
        .collect();
    let mut i = 0;
    group.bench_function("network/helsinki", |b| {
        b.iter(|| {
            i += 1;
            black_box(city.network.snap_node(near[i % near.len()]))
        });
    });
    let seoul = |rng: &mut dispatch_testkit::Rng| {
        LatLng::new(37.3 + rng.random_range(0.0..0.54), 126.7 + rng.random_range(0.0..0.68))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let korea: Vec<LatLng> = (0..92_366).map(|_| seoul(&mut rng)).collect();
    let korea_asked: Vec<LatLng> = (0..4_096).map(|_| seoul(&mut rng)).collect();
    for (size, nodes, asked) in [("helsinki", &city.points, &near), ("korea_grid", &korea, &korea_asked)] {
        let units: Vec<[f64; 3]> = nodes.iter().map(|p| p.to_unit()).collect();
        let kd: kiddo::ImmutableKdTree<f64, 3> = kiddo::ImmutableKdTree::new_from_slice(&units);
        let rtree = rstar::RTree::bulk_load(units.clone());
        let asked: Vec<[f64; 3]> = asked.iter().map(|p| p.to_unit()).collect();
        group.bench_function(format!("kdtree/{size}"), |b| {
            b.iter(|| {
                i += 1;
                black_box(kd.nearest_one::<kiddo::SquaredEuclidean>(&asked[i % asked.len()]).item)
            });
        });
        group.bench_function(format!("rtree/{size}"), |b| {
            b.iter(|| {
                i += 1;
                black_box(rtree.nearest_neighbor(asked[i % asked.len()]))
            });
        });
    }
    group.finish();
}

/// The drives of 16 candidates to a pickup in one `table` request to
/// `osrm-routed` serving Helsinki.
fn osrm(c: &mut Criterion, city: &Helsinki, osrm: &dispatch_osrm::Osrm) {
    let mut group = c.benchmark_group("road_query");
    let mut i = 0;
    let n = city.points.len();
    group.bench_function("osrm_table/16", |b| {
        b.iter(|| {
            i += 17;
            let from: Vec<LatLng> = (0..16).map(|j| city.points[(i + j) % n]).collect();
            black_box(osrm.legs_to(&from, city.points[(i + 16) % n]))
        });
    });
    group.finish();
}

/// The engine's answer to "who gets this ride" with 400 drivers in the
/// extract: by the straight line, by road over 16 candidates, and by
/// asking OSRM for those 16.
fn rank(c: &mut Criterion) {
    let city = helsinki();
    let routed = dispatch_testkit::osrm::Routed::start(&dispatch_testkit::roads::helsinki_extract());
    let spec = routed.spec();
    let timeout = std::time::Duration::from_secs(5);
    let router = dispatch_osrm::Osrm::new(&spec, timeout, DEFAULT_SNAP_M, dispatch_osrm::TOP_KMH);
    let router = Arc::new(router.unwrap_or_else(|e| panic!("{e}")));
    osrm(c, &city, &router);
    let mut group = c.benchmark_group("road_rank");
    let engine = |roads: Option<Arc<dyn Roads>>| {
        let mut engine = Engine::new(Config::default());
        if let Some(roads) = roads {
            engine.set_roads(roads);
        }
        let mut rng = rng(2);
        for n in 0..400u64 {
            let driver = DriverId::new(&format!("d{n}")).unwrap_or_else(|e| panic!("{e}"));
            let position = Some(city.points[rng.random_range(0..city.points.len())]);
            let hello =
                DriverHello { driver, services: ServiceSet::default(), position, available: true, auto_accept: false };
            engine.connect_driver(Timestamp(1), SessionId(n + 1), hello).unwrap_or_else(|e| panic!("{e}"));
        }
        engine
    };
    let embedded: Arc<dyn Roads> = city.network.clone();
    let asked: Arc<dyn Roads> = router.clone();
    for (name, roads) in [("crow", None), ("road16", Some(embedded)), ("osrm16", Some(asked))] {
        let engine = engine(roads);
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                let pickup = city.points[i % city.points.len()];
                black_box(engine.nearest_offerable_driver(pickup, ServiceType::Taxi, 5_000.0))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, prepare, query, rank);
criterion_main!(benches);
