#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn
//! What geo-shards cost the core: the shard map's answers, an update in an
//! engine with a territory against one without, and a ride whose pickup
//! radius stays in its shard against one that reaches other shards (a
//! gather, and a claim when the best driver is across the border).
//!
//! Seeded, named by scenario. Run: `cargo bench --bench shards`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dispatch_core::engine::{Config, Ping};
use dispatch_core::time::Timestamp;
use dispatch_core::{Effect, Engine};
use dispatch_shard::{Home, LocalShards, ShardId, ShardMap};
use dispatch_testkit::city::{CityShape, driver_hello, engine_with_drivers, ride_request};
use dispatch_testkit::geo::destination;
use dispatch_testkit::rng;
use rand::Rng;

fn map(count: u32) -> ShardMap {
    ShardMap::new(count).unwrap_or_else(|e| panic!("{e}"))
}

fn shard_map(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_map");
    group.throughput(Throughput::Elements(1));
    let city = CityShape::seoul();
    let mut rng = rng(1);
    let points: Vec<_> = (0..4096).map(|_| city.point(&mut rng)).collect();
    let map = map(16);
    let mut i = 0;
    group.bench_function("shard_of", |b| {
        b.iter(|| {
            i += 1;
            black_box(map.shard_of(points[i % points.len()]))
        });
    });
    for (radius, name) in [(3_000.0, "shards_within/3km"), (5_000.0, "shards_within/5km")] {
        group.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                black_box(map.shards_within(points[i % points.len()], radius))
            });
        });
    }
    group.finish();
}

/// A location update (each driver in turn moves ~10 m), with a tick every
/// 64 updates as the engine task does between batches: an engine holding
/// the whole map against the same engine given a territory (a one-shard
/// map, so every driver stays home and each update pays the check of its
/// shard, and nothing else).
fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update/250k_drivers");
    group.throughput(Throughput::Elements(1));
    let city = CityShape::seoul();
    for territory in [false, true] {
        let (engine, placed) = engine_with_drivers(1, &city, 250_000, Config::default());
        let mut engine =
            if territory { engine.with_territory(Arc::new(Home { map: map(1), shard: ShardId(0) })) } else { engine };
        let mut rng = rng(2);
        let steps: Vec<_> = placed
            .iter()
            .map(|(s, at)| (*s, destination(*at, rng.random_range(0.0..std::f64::consts::TAU), 10.0)))
            .collect();
        let (mut i, mut now) = (0, Timestamp(0));
        let name = if territory { "with_territory" } else { "whole_map" };
        group.bench_function(name, |b| {
            b.iter(|| {
                let (session, position) = steps[i % steps.len()];
                i += 1;
                now = now + 1;
                black_box(engine.ping(now, session, Ping { position, timestamp: None })).ok();
                if i % 64 == 0 {
                    engine.tick(now);
                    engine.drain_effects().for_each(drop);
                }
            });
        });
    }
    group.finish();
}

/// A ride request through to its offer (then cancelled), over 50,000
/// drivers in sixteen shards' engines: pickups whose 5 km radius stays in
/// their shard against those that reach others. The same through one
/// engine holding the whole map, for scale.
fn ride(c: &mut Criterion) {
    let mut group = c.benchmark_group("ride/50k_drivers");
    let city = CityShape::seoul();
    let config = Config::default();
    let map = map(16);
    let mut shards = LocalShards::new(&config, map);
    let mut rng = rng(3);
    let now = Timestamp(1);
    for n in 0..50_000 {
        let session = dispatch_core::ids::SessionId(n as u64 + 1);
        shards.connect_driver(now, session, driver_hello(&mut rng, &city, n)).unwrap_or_else(|e| panic!("{e}"));
    }
    shards.drain_effects();
    let (mut one, _) = engine_with_drivers(3, &city, 50_000, config.clone());
    let requests: Vec<_> = (0..20_000).map(|n| ride_request(&mut rng, &city, n)).collect();
    let inside =
        |r: &&dispatch_core::engine::RideRequest| map.shards_within(r.pickup, config.max_pickup_distance_m).len() == 1;
    let interior: Vec<_> = requests.iter().filter(inside).cloned().collect();
    let border: Vec<_> = requests.iter().filter(|r| !inside(r)).cloned().collect();
    eprintln!(
        "of {} pickups in Seoul, {} have a 5 km radius inside their shard, {} reach others",
        requests.len(),
        interior.len(),
        border.len()
    );
    for (name, set) in [("sharded/interior", &interior), ("sharded/border", &border)] {
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_batched(
                || {
                    i += 1;
                    let mut r = set[i % set.len()].clone();
                    r.request_id =
                        dispatch_core::ids::RequestId::new(&format!("b-{i}")).unwrap_or_else(|e| panic!("{e}"));
                    r
                },
                |request| {
                    let trip = shards.request_ride(now, request).trip.id;
                    let offered = shards.drain_effects().iter().filter(|e| matches!(e, Effect::Driver { .. })).count();
                    let _ = shards.cancel_ride(now, trip, "");
                    shards.drain_effects();
                    offered
                },
                BatchSize::SmallInput,
            );
        });
    }
    let mut i = 0;
    group.bench_function(BenchmarkId::from_parameter("whole_map"), |b| {
        b.iter_batched(
            || {
                i += 1;
                let mut r = requests[i % requests.len()].clone();
                r.request_id = dispatch_core::ids::RequestId::new(&format!("w-{i}")).unwrap_or_else(|e| panic!("{e}"));
                r
            },
            |request| ride_once(&mut one, now, request),
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn ride_once(engine: &mut Engine, now: Timestamp, request: dispatch_core::engine::RideRequest) -> usize {
    let trip = engine.request_ride(now, request).trip.id;
    engine.tick(now);
    let offered = engine.drain_effects().count();
    let _ = engine.cancel_ride(now, trip, "");
    engine.tick(now);
    engine.drain_effects().for_each(drop);
    offered
}

criterion_group!(benches, shard_map, update, ride);
criterion_main!(benches);
