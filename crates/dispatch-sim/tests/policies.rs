//! The simulator on a synthetic city with tight supply: the batch beats
//! nearest-first on pickup distance and match rate, on the same seeded
//! city, and the KPIs add up.

use dispatch_core::geo::LatLng;
use dispatch_sim::{TripRow, World, world};
use rand::{Rng, SeedableRng};

fn city(seed: u64, n: usize) -> Vec<TripRow> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let point = |rng: &mut rand_chacha::ChaCha8Rng| {
        LatLng::new(40.70 + rng.random_range(0.0..0.12), -74.02 + rng.random_range(0.0..0.10))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    (0..n)
        .map(|k| TripRow {
            at_s: 3_600.0 + k as f64 * 3_600.0 / n as f64,
            pickup: point(&mut rng),
            dropoff: point(&mut rng),
        })
        .collect()
}

#[test]
fn on_a_tight_city_the_batch_beats_nearest_first() {
    let trips = city(3, 3_000);
    let seeds: Vec<LatLng> = trips.iter().map(|t| t.pickup).collect();
    let run = |policy: &str| {
        let mut w = World { drivers: 350, ..World::default() };
        w.engine.matching = policy.parse().unwrap_or_else(|e: String| panic!("{e}"));
        world::run(&w, &trips, &seeds, 3_600.0, 7_200.0).unwrap_or_else(|e| panic!("{e}"))
    };
    let (nearest, batch) = (run("nearest"), run("batch:2s"));
    for k in [&nearest, &batch] {
        assert_eq!(k.requests, 3_000);
        assert!(k.matched <= k.requests && k.completed <= k.matched, "{k:?}");
        assert!(k.match_rate > 0.3 && k.utilisation > 0.1 && k.utilisation < 1.0, "{k:?}");
        assert!(k.wait_p50_s <= k.wait_p90_s && k.pickup_mean_m > 0.0, "{k:?}");
    }
    assert!(batch.pickup_mean_m < nearest.pickup_mean_m * 0.9, "nearest {nearest:?}\nbatch {batch:?}");
    assert!(batch.match_rate > nearest.match_rate, "nearest {nearest:?}\nbatch {batch:?}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let trips = city(4, 500);
    let seeds: Vec<LatLng> = trips.iter().map(|t| t.pickup).collect();
    let w = World { drivers: 100, accept: 0.8, think_s: (1.0, 8.0), ..World::default() };
    let a = world::run(&w, &trips, &seeds, 3_600.0, 7_200.0).unwrap_or_else(|e| panic!("{e}"));
    let b = world::run(&w, &trips, &seeds, 3_600.0, 7_200.0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert!(a.decline_rate > 0.1 && a.decline_rate < 0.3, "{a:?}");
}
