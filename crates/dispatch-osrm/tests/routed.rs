//! Against a real `osrm-routed` (see `dispatch_testkit::osrm`) serving the
//! generated river city: the drives across the river and along the bank,
//! a point out at sea, and a router that is not there.

use std::time::Duration;

use dispatch_core::roads::Roads;
use dispatch_osrm::Osrm;
use dispatch_testkit::osrm::Routed;
use dispatch_testkit::roads::{self as city, at};

#[test]
fn osrm_answers_the_drives_of_the_river_city() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let extract = dir.path().join("river-city.osm");
    std::fs::write(&extract, city::xml()).unwrap_or_else(|e| panic!("{e}"));
    let routed = Routed::start(&extract);
    let osrm = Osrm::new(&routed.spec(), Duration::from_secs(5), 250.0, 130.0).unwrap_or_else(|e| panic!("{e}"));
    osrm.check().unwrap_or_else(|e| panic!("{e}"));
    let pickup = at(6.0, 10.0);
    // 100 m over the water and round by the bridge; 500 m along the bank;
    // a kilometre out at sea.
    let (across, same_bank, sea) = (at(5.0, 10.0), at(6.0, 15.0), at(-10.0, 13.0));
    let legs = osrm.legs_to(&[across, same_bank, sea], pickup);
    let [Some(across), Some(same_bank), None] = legs[..] else { panic!("{legs:?}") };
    assert!((across.metres - 1_700.0).abs() < 30.0, "{across:?}");
    assert!((same_bank.metres - 500.0).abs() < 30.0, "{same_bank:?}");
    assert!(across.seconds > 2.0 * same_bank.seconds, "{across:?} {same_bank:?}");
    // A pickup at sea: no drive for anyone.
    assert_eq!(osrm.legs_to(&[pickup], sea), [None]);

    // The way across, for the map: from the car round by the bridge at
    // column 18 (OSRM's line passes it) to the pickup.
    let way = osrm.way(at(5.0, 10.0), pickup).unwrap_or_else(|| panic!("a way across"));
    assert_eq!((way.first(), way.last()), (Some(&at(5.0, 10.0)), Some(&pickup)));
    let bridge = at(5.5, 18.0);
    assert!(way.iter().any(|p| p.distance_m(bridge) < 60.0), "{way:?}");
    let along: f64 = way.windows(2).map(|w| w[0].distance_m(w[1])).sum();
    assert!((along - 1_700.0).abs() < 60.0, "{along} m");
    assert_eq!(osrm.way(pickup, sea), None);
    assert!(!osrm.resting());
}

#[test]
fn a_router_that_is_not_there_gives_no_drive_and_is_let_rest() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let osrm = Osrm::new(&format!("osrm:http://127.0.0.1:{port}"), Duration::from_secs(1), 250.0, 130.0)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(osrm.check().is_err());
    assert!(!osrm.resting());
    // The map's way fails the same way, and lets it rest.
    assert_eq!(osrm.way(at(5.0, 10.0), at(6.0, 10.0)), None);
    assert!(osrm.resting());
    assert_eq!(osrm.legs_to(&[at(5.0, 10.0), at(6.0, 15.0)], at(6.0, 10.0)), [None, None]);
    assert!(osrm.resting());
}
