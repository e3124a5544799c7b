//! The index against a brute-force oracle: random drivers, random moves,
//! random queries, in a city, across the antimeridian, at both poles and
//! over the whole globe, with fixed seeds.

use dispatch_core::geo::{LatLng, MAX_DISTANCE_M};
use dispatch_core::index::{DriverIndex, DriverKey};
use dispatch_testkit::geo::{random_point, random_point_near};
use dispatch_testkit::{Rng as ChaCha8Rng, rng};

/// The oracle: every point, by haversine distance.
fn brute_force(points: &[(DriverKey, LatLng)], at: LatLng, max_m: f64) -> Vec<(DriverKey, f64)> {
    let mut all: Vec<_> = points.iter().map(|&(k, p)| (k, at.distance_m(p))).filter(|&(_, d)| d <= max_m).collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    all
}

fn check_against_oracle(seed: u64, centre: Option<LatLng>, spread_m: f64) {
    let mut rng = rng(seed);
    let mut index = DriverIndex::new();
    let mut points = Vec::new();
    let sample = |rng: &mut ChaCha8Rng| match centre {
        Some(c) => random_point_near(rng, c, spread_m),
        None => random_point(rng),
    };
    for k in 0..2_000u32 {
        let p = sample(&mut rng);
        index.locate_mut(DriverKey(k), p);
        points.push((DriverKey(k), p));
    }
    // Move a third of them, so the oracle also checks removal.
    for k in (0..2_000u32).step_by(3) {
        let p = sample(&mut rng);
        index.locate_mut(DriverKey(k), p);
        points[k as usize].1 = p;
    }
    for _ in 0..200 {
        let at = sample(&mut rng);
        let radius = spread_m * 0.3;
        let want = brute_force(&points, at, radius);
        let got: Vec<_> = index.nearest_iter(at, radius).collect();
        assert_eq!(got.len(), want.len(), "seed {seed} at {at}");
        for (g, w) in got.iter().zip(&want) {
            let gd = at.distance_m(points[g.key.0 as usize].1);
            assert!((gd - w.1).abs() < 1e-3, "seed {seed} at {at}: got {gd} want {}", w.1);
        }
    }
}

#[test]
fn matches_brute_force_in_a_city() {
    let seoul = LatLng::new(37.5665, 126.9780).unwrap_or_else(|e| panic!("{e}"));
    check_against_oracle(1, Some(seoul), 20_000.0);
}

#[test]
fn matches_brute_force_across_the_antimeridian() {
    let fiji = LatLng::new(-17.0, 180.0).unwrap_or_else(|e| panic!("{e}"));
    check_against_oracle(2, Some(fiji), 50_000.0);
}

#[test]
fn matches_brute_force_at_the_poles() {
    for (seed, lat) in [(3, 90.0), (4, -90.0), (5, 89.9)] {
        let pole = LatLng::new(lat, 0.0).unwrap_or_else(|e| panic!("{e}"));
        check_against_oracle(seed, Some(pole), 30_000.0);
    }
}

#[test]
fn matches_brute_force_over_the_whole_globe() {
    check_against_oracle(6, None, MAX_DISTANCE_M);
}
