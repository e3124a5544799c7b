//! The index against a brute-force oracle: random drivers, random moves
//! (small ones that stay within the slack and large ones that do not),
//! random queries, in a city, across the antimeridian, at both poles and
//! over the whole globe, with fixed seeds.

use dispatch_core::geo::{LatLng, MAX_DISTANCE_M};
use dispatch_core::index::{DriverIndex, DriverKey};
use dispatch_testkit::geo::{destination, random_point, random_point_near};
use dispatch_testkit::{Rng as ChaCha8Rng, rng};
use rand::Rng;

/// The oracle: every point, by haversine distance, ties by key.
fn brute_force(points: &[(DriverKey, LatLng)], at: LatLng, max_m: f64, k: usize) -> Vec<(DriverKey, f64)> {
    let mut all: Vec<_> = points.iter().map(|&(key, p)| (key, at.distance_m(p))).filter(|&(_, d)| d <= max_m).collect();
    all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

fn check_against_oracle(seed: u64, centre: Option<LatLng>, spread_m: f64, slack_m: f64) {
    let mut rng = rng(seed);
    let mut index = DriverIndex::with_slack(slack_m);
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
    for round in 0..4 {
        // Every driver drifts a little (mostly inside the slack); a third
        // jump anywhere; a few leave.
        for (k, (key, at)) in points.iter_mut().enumerate() {
            let drift = rng.random_range(0.0..slack_m * 1.5 + 1.0);
            let p = if k % 3 == round % 3 {
                sample(&mut rng)
            } else {
                destination(*at, rng.random_range(0.0..std::f64::consts::TAU), drift)
            };
            index.locate_mut(*key, p);
            *at = p;
        }
        for k in (round * 7..2_000).step_by(97) {
            index.remove(DriverKey(k as u32));
        }
        let removed = |k: usize| k >= round * 7 && (k - round * 7).is_multiple_of(97);
        let live: Vec<_> = points.iter().copied().filter(|(k, _)| !removed(k.0 as usize)).collect();
        for _ in 0..100 {
            let at = sample(&mut rng);
            let radius = spread_m * 0.3;
            for k in [1, 10, usize::MAX] {
                let want = brute_force(&live, at, radius, k);
                let got = index.nearest_k(at, radius, k, |_| true, |a, b| a.cmp(&b));
                assert_eq!(got.len(), want.len(), "seed {seed} at {at} k {k}");
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g.distance_m - w.1).abs() < 1e-3,
                        "seed {seed} at {at}: got {} want {}",
                        g.distance_m,
                        w.1
                    );
                }
            }
            // Bounded: few drivers accepted, so the walk would go far; it
            // stops after 50 entries and answers exactly within what it saw.
            let rare: Vec<_> = live.iter().copied().filter(|(k, _)| k.0.is_multiple_of(13)).collect();
            let mut asked = 0;
            let accept = |k: DriverKey| {
                asked += 1;
                k.0.is_multiple_of(13)
            };
            let got = index.nearest_k_bounded(at, radius, 10, 50, accept, |a, b| a.cmp(&b));
            assert!(asked <= 50, "seed {seed}: {asked} drivers examined");
            assert!(got.exact_within_m <= radius);
            let want = brute_force(&rare, at, got.exact_within_m, 10);
            let got_keys: Vec<_> = got.neighbors.iter().map(|n| n.key).collect();
            let want_keys: Vec<_> = want.iter().map(|w| w.0).collect();
            // Distances equal to within float error may sit either side of
            // the bound; compare what is clearly inside it.
            let inside = |d: f64| d < got.exact_within_m - 1e-3;
            let got_inside: Vec<_> = got.neighbors.iter().filter(|n| inside(n.distance_m)).map(|n| n.key).collect();
            let want_inside: Vec<_> = want.iter().filter(|w| inside(w.1)).map(|w| w.0).collect();
            assert_eq!(got_inside, want_inside, "seed {seed} at {at}: {got_keys:?} vs {want_keys:?}");
        }
        // Put the removed ones back for the next round.
        for &(key, p) in &points {
            index.locate_mut(key, p);
        }
    }
}

#[test]
fn matches_brute_force_in_a_city() {
    let seoul = LatLng::new(37.5665, 126.9780).unwrap_or_else(|e| panic!("{e}"));
    check_against_oracle(1, Some(seoul), 20_000.0, 50.0);
    check_against_oracle(2, Some(seoul), 2_000.0, 200.0);
}

#[test]
fn matches_brute_force_with_no_slack() {
    let seoul = LatLng::new(37.5665, 126.9780).unwrap_or_else(|e| panic!("{e}"));
    check_against_oracle(3, Some(seoul), 20_000.0, 0.0);
}

#[test]
fn matches_brute_force_across_the_antimeridian() {
    let fiji = LatLng::new(-17.0, 180.0).unwrap_or_else(|e| panic!("{e}"));
    check_against_oracle(4, Some(fiji), 50_000.0, 50.0);
}

#[test]
fn matches_brute_force_at_the_poles() {
    for (seed, lat) in [(5, 90.0), (6, -90.0), (7, 89.9)] {
        let pole = LatLng::new(lat, 0.0).unwrap_or_else(|e| panic!("{e}"));
        check_against_oracle(seed, Some(pole), 30_000.0, 50.0);
    }
}

#[test]
fn matches_brute_force_over_the_whole_globe() {
    check_against_oracle(8, None, MAX_DISTANCE_M, 500.0);
}

#[test]
fn a_driver_set_gives_the_nearest_left_and_shrinks() {
    let mut rng = rng(9);
    let seoul = LatLng::new(37.5665, 126.9780).unwrap_or_else(|e| panic!("{e}"));
    let mut points: Vec<_> =
        (0..3_000u32).map(|k| (DriverKey(k), random_point_near(&mut rng, seoul, 10_000.0))).collect();
    let mut set = dispatch_core::index::DriverSet::new(points.clone());
    // Each query takes its nearest accepted driver out, as a matching round does.
    for n in 0..2_000 {
        let at = random_point_near(&mut rng, seoul, 10_000.0);
        let accept = |k: DriverKey| k.0 % 3 != n % 3;
        let rest: Vec<_> = points.iter().copied().filter(|(k, _)| accept(*k)).collect();
        let want = brute_force(&rest, at, 3_000.0, 1);
        let got = set.nearest(at, 3_000.0, accept, |a, b| a.cmp(&b));
        assert_eq!(got.map(|g| g.key), want.first().map(|w| w.0), "query {n} at {at}");
        if let (Some(g), Some(w)) = (got, want.first()) {
            assert!((g.distance_m - w.1).abs() < 1e-3);
            let at = points.iter().find(|(k, _)| *k == g.key).map(|p| p.1).unwrap_or_else(|| panic!("lost"));
            set.remove(g.key, at);
            points.retain(|(k, _)| *k != g.key);
        }
    }
    assert!(points.len() < 3_000 && !set.is_empty());
}

/// `in_box` finds every driver whose exact position is in the box (it may
/// add a few within the slack outside): boxes of every size, anywhere on
/// the globe, the poles and the equator included, after moves within and
/// past the slack.
#[test]
fn in_box_misses_no_driver_in_the_box() {
    let mut rng = rng(77);
    let slack_m = 100.0;
    let mut index = DriverIndex::with_slack(slack_m);
    let mut points = Vec::new();
    for k in 0..3_000u32 {
        let p = random_point(&mut rng);
        index.locate_mut(DriverKey(k), p);
        points.push((DriverKey(k), p));
    }
    for (key, at) in points.iter_mut() {
        *at = destination(*at, rng.random_range(0.0..std::f64::consts::TAU), rng.random_range(0.0..150.0));
        index.locate_mut(*key, *at);
    }
    for _ in 0..300 {
        let (a, b) = (random_point(&mut rng), random_point(&mut rng));
        let span = rng.random_range(0.0..1.0f64).powi(3);
        let (s, w) = (a.lat().min(b.lat()), a.lng().min(b.lng()));
        let n = s + (a.lat().max(b.lat()) - s) * span;
        let e = w + (a.lng().max(b.lng()) - w) * span;
        let (Ok(sw), Ok(ne)) = (LatLng::new(s, w), LatLng::new(n, e)) else { panic!("box {s} {w} {n} {e}") };
        let found: std::collections::HashSet<_> = index.in_box(sw, ne, usize::MAX).into_iter().collect();
        for (key, p) in &points {
            let inside = (s..=n).contains(&p.lat()) && (w..=e).contains(&p.lng());
            assert!(!inside || found.contains(key), "{key:?} at {p} is in [{s},{w}]..[{n},{e}] but was not found");
        }
        // It prunes: a small box finds few of the drivers.
        if span < 0.01 {
            assert!(found.len() < points.len() / 10, "a small box found {} drivers", found.len());
        }
    }
}
