//! The router on the generated river city, where the answers are known,
//! and against Dijkstra on the same graph; the engine ranking by it
//! against a brute-force oracle.

mod common;

use std::sync::Arc;

use dispatch_core::geo::LatLng;
use dispatch_core::roads::Roads;
use dispatch_road::osm::Osm;
use dispatch_road::{ACCESS_KMH, DEFAULT_SNAP_M, Graph, RoadNetwork};
use dispatch_testkit::roads::{self as city, at};
use rand::Rng;

fn network() -> RoadNetwork {
    dispatch_road::from_xml(&city::xml(), DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"))
}

fn graph() -> Graph {
    Graph::of(&Osm::read_xml(city::xml().as_bytes()).unwrap_or_else(|e| panic!("{e}")))
}

fn metres(network: &RoadNetwork, from: LatLng, to: LatLng) -> f64 {
    network.leg(from, to).map_or(f64::NAN, |leg| leg.metres)
}

#[test]
fn across_the_river_is_the_long_way_round_by_the_nearer_bridge() {
    let network = network();
    let (north, south) = (at(5.0, 10.0), at(6.0, 10.0));
    assert!((north.distance_m(south) - 100.0).abs() < 1.0);
    // East to the bridge at column 18, over, and back: 800 + 100 + 800.
    let across = metres(&network, north, south);
    assert!((across - 1_700.0).abs() < 5.0, "{across}");
    // The same bank: straight along the street.
    let along = metres(&network, at(6.0, 15.0), south);
    assert!((along - 500.0).abs() < 5.0, "{along}");
    let leg = network.leg(north, south).unwrap_or_else(|| panic!("a route"));
    // Residential streets at 30 km/h, each of the 17 blocks' time rounded
    // up to a tenth of a second.
    let at_30 = 1_700.0 / (30.0 / 3.6);
    assert!(leg.seconds >= at_30 - 0.01 && leg.seconds <= at_30 + 1.7, "{leg:?}");
}

#[test]
fn a_one_way_street_is_driven_its_way_only() {
    let network = network();
    let (west, east) = (at(city::ONEWAY_ROW as f64, 5.0), at(city::ONEWAY_ROW as f64, 10.0));
    let with = metres(&network, west, east);
    let against = metres(&network, east, west);
    assert!((with - 500.0).abs() < 5.0, "{with}");
    // Up a street, along the next row, and back down.
    assert!((against - 700.0).abs() < 5.0, "{against}");
}

#[test]
fn a_point_off_the_roads_joins_them_within_the_bound_and_not_beyond() {
    let network = network();
    // Half a block off the grid's southern edge: snapped, the stretch
    // driven slowly.
    let near = at(city::ROWS as f64 - 1.0 + 0.5, 3.0);
    let leg = network.leg(near, at(city::ROWS as f64 - 1.0, 4.0)).unwrap_or_else(|| panic!("a route"));
    assert!((leg.metres - 150.0).abs() < 5.0, "{leg:?}");
    assert!(leg.seconds > 50.0 / (ACCESS_KMH / 3.6), "{leg:?}");
    // A kilometre out in the sea: none, and the engine is told so.
    let far = at(-10.0, 3.0);
    assert_eq!(network.leg(far, at(0.0, 3.0)), None);
    let legs = network.legs_to(&[far, at(0.0, 5.0)], at(0.0, 3.0));
    assert_eq!(legs.iter().map(Option::is_some).collect::<Vec<_>>(), [false, true]);
    assert_eq!(network.legs_to(&[at(0.0, 5.0)], far), [None]);
}

fn random_point(rng: &mut dispatch_testkit::Rng) -> LatLng {
    at(rng.random_range(0.0..(city::ROWS - 1) as f64), rng.random_range(0.0..(city::COLS - 1) as f64))
}

/// One by one and ten at a time to one point, whether the search from
/// that point reaches them (the default limit), stops short of some (a
/// limit of 16 nodes) or of all (1) and leaves them to the hierarchy.
#[test]
fn every_drive_takes_as_long_as_dijkstra_says() {
    let graph = graph();
    for limit in [dispatch_road::SETTLE_LIMIT, 16, 1] {
        let network = network().with_settle_limit(limit);
        let mut rng = dispatch_testkit::rng(7);
        for _ in 0..200 {
            let to = random_point(&mut rng);
            let (node, access_to) = network.snap_node(to).unwrap_or_else(|| panic!("in the city"));
            let costs = common::dijkstra_to(&graph, node);
            let from: Vec<LatLng> = (0..10).map(|_| random_point(&mut rng)).collect();
            let together = network.legs_to(&from, to);
            for (&from, together) in from.iter().zip(together) {
                let (start, access_from) = network.snap_node(from).unwrap_or_else(|| panic!("in the city"));
                let want = costs.get(&start).map(|&t| t as f64 / 10.0 + (access_from + access_to) / (ACCESS_KMH / 3.6));
                let got = network.leg(from, to).map(|leg| leg.seconds);
                match (got, want) {
                    (Some(g), Some(w)) => assert!((g - w).abs() < 1e-6, "{from} to {to}: {g} s, Dijkstra {w} s"),
                    other => panic!("{from} to {to}, limit {limit}: {other:?}"),
                }
                assert_eq!(together.map(|leg| leg.seconds), got, "{from} to {to}, limit {limit}");
            }
        }
    }
}

/// The engine ranking by road offers the driver with the least drive to
/// the pickup, by Dijkstra, whenever that driver is among the candidates
/// it ranks (all of them here); by the straight line it often does not.
#[test]
fn the_engine_offers_the_driver_with_the_least_drive_by_dijkstra() {
    let network = Arc::new(network());
    let outcome = common::oracle(&network, &graph(), 11, 40, 1_000, random_point);
    // The river makes the straight line wrong often enough to see.
    assert!(outcome.crow_worse > 50, "{outcome:?}");
}

/// Two cities no road joins (as the load harness's grid over six Korean
/// cities): a point in either joins its own city's roads, a drive within a
/// city is had, and between them there is none: unreachable, not a
/// fallback to the straight line.
#[test]
fn two_cities_no_road_joins_are_both_routed_and_unreachable_from_each_other() {
    let (a, b) = (LatLng::new(37.5, 127.0), LatLng::new(37.5, 127.3));
    let (a, b) = (a.unwrap_or_else(|e| panic!("{e}")), b.unwrap_or_else(|e| panic!("{e}")));
    // The smaller city holds a fifth of the nodes: a large part.
    let xml = dispatch_road::grid::grids_xml(&[(a, 2_000.0), (b, 1_000.0)], 200.0);
    let network = dispatch_road::from_xml(&xml, DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"));
    let east = |p: LatLng, m: f64| LatLng::new(p.lat(), p.lng() + m / 88_000.0).unwrap_or_else(|e| panic!("{e}"));
    for city in [a, b] {
        assert!(network.snap_node(city).is_some(), "{city}");
        let leg = network.leg(city, east(city, 600.0)).unwrap_or_else(|| panic!("no drive in {city}"));
        assert!(leg.reachable() && (leg.metres - 600.0).abs() < 30.0, "{leg:?}");
    }
    assert_eq!(network.leg(a, b), Some(dispatch_core::roads::Leg::UNREACHABLE));
    assert_eq!(network.route(a, b), None);
}
