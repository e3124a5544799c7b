//! The simulator on a synthetic city with tight supply: the batch beats
//! nearest-first on pickup distance and match rate, a broadcast beats it
//! on the wait when drivers are slow to answer, on the same seeded city,
//! and the KPIs add up; the Austin reader and the plots.

use dispatch_core::geo::LatLng;
use dispatch_sim::world::Think;
use dispatch_sim::{Format, TripRow, World, plot, trips, world};
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
            accept_after_s: None,
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
    let w = World { drivers: 100, accept: 0.8, think: Think::Uniform(1.0, 8.0), ..World::default() };
    let a = world::run(&w, &trips, &seeds, 3_600.0, 7_200.0).unwrap_or_else(|e| panic!("{e}"));
    let b = world::run(&w, &trips, &seeds, 3_600.0, 7_200.0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    assert!(a.decline_rate > 0.1 && a.decline_rate < 0.3, "{a:?}");
}

/// Drivers who take 2 to 9 s to answer and accept 70% of offers, supply
/// ample: sending each request to three at once assigns it much sooner
/// than asking one at a time (a decline costs a whole answer time), for
/// more offers (and, measured in the README, longer pickups).
#[test]
fn with_slow_choosy_drivers_a_broadcast_assigns_sooner() {
    let trips = city(5, 2_000);
    let seeds: Vec<LatLng> = trips.iter().map(|t| t.pickup).collect();
    let run = |policy: &str| {
        let mut w = World { drivers: 1_000, accept: 0.7, think: Think::Uniform(2.0, 9.0), ..World::default() };
        w.engine.matching = policy.parse().unwrap_or_else(|e: String| panic!("{e}"));
        world::run(&w, &trips, &seeds, 3_600.0, 7_200.0).unwrap_or_else(|e| panic!("{e}"))
    };
    let (nearest, broadcast) = (run("nearest"), run("broadcast:3"));
    assert!(broadcast.wait_mean_s < nearest.wait_mean_s * 0.75, "nearest {nearest:?}\nbroadcast {broadcast:?}");
    assert!(broadcast.offers_per_trip > nearest.offers_per_trip * 1.5, "{broadcast:?}");
    assert!(broadcast.match_rate >= nearest.match_rate - 0.01, "nearest {nearest:?}\nbroadcast {broadcast:?}");
}

/// The Austin (triplinker) reader: the pickup point, not the garbage
/// request columns; the request-to-accept interval; times past midnight
/// of the first day run on past 24:00; rows come back sorted.
#[test]
fn the_austin_reader_takes_pickups_accept_intervals_and_runs_past_midnight() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("triplinker_austin_data.csv");
    let csv = "ptctripid,request_datetime,driver_accept_datetime,request_latitude,request_longitude,driver_reach_datetime,pickup_datetime,pickup_latitude,pickup_longitude,dropoff_datetime,dropoff_latitude,dropoff_longitude,trip_distance,driver_id\n\
        2,2017-03-16 00:10:00,2017-03-16 00:10:09,-97.7,-97.7,x,x,30.28,-97.74,x,30.26,-97.75,100,7\n\
        1,2017-03-15 04:00:06,2017-03-15 04:00:08,-97.745,-97.745,x,x,30.282,-97.747,x,30.264,-97.745,2799.0,554156\n\
        3,2017-03-15 05:00:00,2017-03-15 05:00:01,0,0,x,x,0,0,x,30.26,-97.75,100,8\n";
    std::fs::write(&path, csv).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Format::sniff(&path).ok(), Some(Format::Austin));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (rows, dropped) = trips::read(&path, Format::Austin, &mut rng).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len(), 2, "the 0/0 pickup is dropped: {rows:?}");
    assert_eq!(dropped, trips::Dropped { bad_position: 1, ..Default::default() });
    assert_eq!((rows[0].at_s, rows[0].accept_after_s), (4.0 * 3_600.0 + 6.0, Some(2.0)));
    assert_eq!((rows[0].pickup.lat(), rows[0].pickup.lng()), (30.282, -97.747));
    assert_eq!((rows[1].at_s, rows[1].accept_after_s), (24.0 * 3_600.0 + 600.0, Some(9.0)));
}

/// The plots are written, one line per policy, for a sweep.
#[test]
fn the_plots_show_every_policy() {
    let trips = city(6, 300);
    let seeds: Vec<LatLng> = trips.iter().map(|t| t.pickup).collect();
    let mut rows = Vec::new();
    for drivers in [40, 60] {
        for policy in ["nearest", "batch:2s"] {
            let mut w = World { drivers, ..World::default() };
            w.engine.matching = policy.parse().unwrap_or_else(|e: String| panic!("{e}"));
            rows.push((
                policy.to_owned(),
                world::run(&w, &trips, &seeds, 3_600.0, 7_200.0).unwrap_or_else(|e| panic!("{e}")),
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let written = plot::all(dir.path(), &rows).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(written.len(), 3);
    for path in written {
        let svg = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(svg.starts_with("<svg") && svg.contains("nearest") && svg.contains("batch:2s"), "{}", path.display());
        assert!(svg.contains("<polyline"), "{}: no lines drawn", path.display());
    }
}

/// Short of drivers, forward dispatch queues rides behind drivers about to
/// drop off nearby instead of sending free drivers from far away: more
/// rides matched, sooner, with fewer kilometres driven empty. (Not a
/// shorter mean pickup here: the rides it adds are those nearest-first
/// could not serve at all, from up to the radius away.)
#[test]
fn on_a_tight_city_forward_dispatch_beats_nearest_first() {
    let trips = city(3, 3_000);
    let seeds: Vec<LatLng> = trips.iter().map(|t| t.pickup).collect();
    let run = |forward_m: f64| {
        let mut w = World { drivers: 350, ..World::default() };
        w.engine.forward_dispatch_m = forward_m;
        world::run(&w, &trips, &seeds, 3_600.0, 7_200.0).unwrap_or_else(|e| panic!("{e}"))
    };
    let (nearest, forward) = (run(0.0), run(1_500.0));
    assert!(forward.match_rate > nearest.match_rate + 0.03, "nearest {nearest:?}\nforward {forward:?}");
    assert!(forward.wait_mean_s < nearest.wait_mean_s, "nearest {nearest:?}\nforward {forward:?}");
    assert!(forward.empty_km < nearest.empty_km, "nearest {nearest:?}\nforward {forward:?}");
    assert!(forward.completed <= forward.matched, "{forward:?}");
}

/// Rows that cannot be used are counted by why, not dropped silently, and a
/// file is read by its columns whatever its name.
#[test]
fn rows_left_out_are_counted_by_why() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("seoul.csv");
    let csv = "pickup_time,dropoff_time,distance_miles,pickup_lat,pickup_lon,dropoff_lat,dropoff_lon\n\
        2024-05-01 08:00:05,2024-05-01 08:10:00,1.0,37.5665,126.978,37.55,126.99\n\
        not a time,2024-05-01 08:10:00,1.0,37.5665,126.978,37.55,126.99\n\
        2024-05-01 08:00:09,2024-05-01 08:10:00,1.0,0,0,37.55,126.99\n\
        2024-05-01 08:00:09,2024-05-01 08:10:00,1.0,95.0,126.978,37.55,126.99\n\
        2024-05-01 08:01:00,2024-05-01 08:10:00,1.0,north,126.978,37.55,126.99\n\
        2024-05-01 08:00:01,2024-05-01 08:10:00,1.0,37.57,126.98,37.56,126.97\n";
    std::fs::write(&path, csv).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(Format::sniff(&path).ok(), Some(Format::Nyc));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let (rows, dropped) = trips::read(&path, Format::Nyc, &mut rng).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.iter().map(|r| r.at_s).collect::<Vec<_>>(), [8.0 * 3_600.0 + 1.0, 8.0 * 3_600.0 + 5.0]);
    assert_eq!(dropped, trips::Dropped { malformed: 1, bad_time: 1, bad_position: 2 });
    assert_eq!(dropped.total(), 4);
}

/// The binary on the example file, as the README runs it: every policy given
/// is run on the same trips; the earlier spellings of its flags still work
/// and say what to write now.
#[test]
fn the_binary_replays_the_example_trips_and_takes_earlier_spellings() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/trips.csv");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_dispatch-sim"))
            .arg("--data")
            .arg(&data)
            .args(["--from", "08:00", "--to", "08:30", "--drivers", "20", "--json"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        let runs: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (runs, stderr)
    };
    let (runs, _) = run(&["--compare", "nearest", "batch:2s,premium=nearest+forward:1000"]);
    let policies: Vec<&str> = runs.iter().filter_map(|r| r["policy"].as_str()).collect();
    assert_eq!(policies, ["nearest", "batch:2s,premium=nearest+forward:1000"]);
    for r in &runs {
        assert_eq!(r["requests"].as_u64(), Some(60), "{r}");
        assert!(r["match_rate"].as_f64().is_some_and(|m| m > 0.5), "{r}");
    }
    let (old, said) =
        run(&["--compare", "nearest,batch:2s", "--speed-mps", "8", "--think-s", "0..0", "--patience-s", "60"]);
    assert_eq!(old.len(), 2, "{said}");
    for advice in [
        "write --compare nearest batch:2s",
        "write --speed-kmh 28.8",
        "write --think 0s..0s",
        "write --search-timeout 1m",
    ] {
        assert!(said.contains(advice), "no {advice:?} in {said}");
    }
    assert_eq!(old[0]["match_rate"], runs[0]["match_rate"], "the same run either way");
}
