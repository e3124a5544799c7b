//! The simulator with a road network: cars drive along the roads at their
//! speeds, and on the generated river city ranking by road gives shorter
//! pickups than ranking by the straight line, for the same policy, through
//! the binary as a user runs it.

use std::sync::Arc;

use dispatch_sim::{TripRow, World, world};
use dispatch_testkit::roads::{self as city, at};

fn river_city() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("river-city.osm");
    std::fs::write(&path, city::xml()).unwrap_or_else(|e| panic!("{e}"));
    (dir, path)
}

/// One driver across the river from one rider: the car drives to the
/// pickup by the bridge, so the pickup takes the road's time, not the
/// straight line's, and the ride the road's time again.
#[test]
fn a_car_drives_the_roads_at_their_speeds() {
    let network = dispatch_road::from_xml(&city::xml(), dispatch_road::DEFAULT_SNAP_M);
    let network = Arc::new(network.unwrap_or_else(|e| panic!("{e}")));
    let (start, pickup, dropoff) = (at(5.0, 10.0), at(6.0, 10.0), at(11.0, 10.0));
    let to_pickup = network.leg(start, pickup).unwrap_or_else(|| panic!("no drive"));
    assert!(to_pickup.metres > 1_500.0, "{to_pickup:?}");
    let trips = [TripRow { at_s: 3_600.0, pickup, dropoff, accept_after_s: None }];
    for rank_by_road in [false, true] {
        let w = World { drivers: 1, roads: Some(network.clone()), rank_by_road, ..World::default() };
        let k = world::run(&w, &trips, &[start], 3_600.0, 5_400.0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((k.matched, k.completed), (1, 1), "{k:?}");
        assert!((k.pickup_eta_mean_s - to_pickup.seconds).abs() < 0.01, "{k:?} against {to_pickup:?}");
        assert!((k.empty_km * 1_000.0 - to_pickup.metres).abs() < 1.0, "{k:?} against {to_pickup:?}");
        // The straight line is 100 m: the KPI says so beside the drive.
        assert!((k.pickup_mean_m - 100.0).abs() < 1.0, "{k:?}");
    }
}

/// The binary on the river city with random trips, each policy ranked
/// both ways: by road the cars reach their riders sooner, for the same
/// riders and the same fleet.
#[test]
fn on_the_river_city_ranking_by_road_gives_shorter_pickups() {
    let (_dir, path) = river_city();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dispatch-sim"))
        .arg("--road-network")
        .arg(&path)
        .args(["--random-trips", "200", "--drivers", "40", "--rank", "crow", "road"])
        .args(["--compare", "nearest", "batch:2s", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let runs: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let names: Vec<&str> = runs.iter().filter_map(|r| r["policy"].as_str()).collect();
    assert_eq!(names, ["nearest by crow", "nearest by road", "batch:2s by crow", "batch:2s by road"]);
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
    for pair in runs.chunks(2) {
        let (crow, road) = (&pair[0], &pair[1]);
        assert_eq!(crow["requests"], 200, "{crow}");
        assert!(f(road, "match_rate") >= f(crow, "match_rate") - 0.02, "crow {crow}\nroad {road}");
        assert!(f(road, "pickup_eta_mean_s") < f(crow, "pickup_eta_mean_s") * 0.9, "crow {crow}\nroad {road}");
    }
}
