//! The oracle the road tests share: Dijkstra on the graph the router
//! prepared, and the engine's choice checked against it.

use std::collections::HashMap;

use dispatch_core::engine::{Config, DriverHello, Engine};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, SessionId};
use dispatch_core::service::{ServiceSet, ServiceType};
use dispatch_core::time::Timestamp;
use dispatch_road::{ACCESS_KMH, Graph, RoadNetwork};

/// Tenths of a second from every node to `to` (arriving at it or at a
/// copy of it, see `Graph::of`), by Dijkstra over the reversed edges.
pub fn dijkstra_to(graph: &Graph, to: usize) -> HashMap<usize, usize> {
    let mut incoming: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
    for &(a, b, w) in &graph.edges {
        incoming.entry(b).or_default().push((a, w));
    }
    // From a point past every node: to `to` and its copies, at no cost.
    let arrivals: Vec<(usize, usize)> = graph.arrivals(to).into_iter().map(|n| (n, 0)).collect();
    let start = usize::MAX;
    let reached = pathfinding::prelude::dijkstra_all(&start, |&n| {
        if n == start { arrivals.clone() } else { incoming.get(&n).cloned().unwrap_or_default() }
    });
    let mut cost: HashMap<usize, usize> = reached.into_iter().map(|(n, (_, c))| (n, c)).collect();
    cost.remove(&start);
    cost.insert(to, 0);
    cost
}

/// What the oracle saw.
#[derive(Debug)]
#[allow(dead_code)] // Each test reads what it needs.
pub struct Outcome {
    /// Requests asked.
    pub requests: usize,
    /// Requests where ranking by the straight line offered a driver with a
    /// longer drive than the best.
    pub crow_worse: usize,
    /// The same, ranking by road over only `Config::road_candidates` (its
    /// default) of the nearest.
    pub bounded_worse: usize,
}

/// Places `drivers` at points `sample` gives, then for `requests` pickups
/// checks that an engine ranking by road over every driver offers one
/// whose drive (by Dijkstra, with the router's snapping) is the least;
/// counts how often the straight line, and the default candidate bound,
/// would not.
pub fn oracle(
    network: &std::sync::Arc<RoadNetwork>,
    graph: &Graph,
    seed: u64,
    drivers: usize,
    requests: usize,
    mut sample: impl FnMut(&mut dispatch_testkit::Rng) -> LatLng,
) -> Outcome {
    let mut rng = dispatch_testkit::rng(seed);
    let mut all = Engine::new(Config { road_candidates: drivers, ..Config::default() });
    all.set_roads(network.clone());
    let mut bounded = Engine::new(Config::default());
    bounded.set_roads(network.clone());
    let mut by_crow = Engine::new(Config::default());
    let now = Timestamp(1_000);
    let mut positions = HashMap::new();
    while positions.len() < drivers {
        let position = sample(&mut rng);
        if network.snap_node(position).is_none() {
            continue;
        }
        let n = positions.len();
        let driver = DriverId::new(&format!("d{n:03}")).unwrap_or_else(|e| panic!("{e}"));
        positions.insert(driver.clone(), position);
        for engine in [&mut all, &mut bounded, &mut by_crow] {
            let hello = DriverHello {
                driver: driver.clone(),
                services: ServiceSet::default(),
                position: Some(position),
                available: true,
                auto_accept: false,
            };
            engine.connect_driver(now, SessionId(n as u64 + 1), hello).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let mut outcome = Outcome { requests, crow_worse: 0, bounded_worse: 0 };
    let mut asked = 0;
    while asked < requests {
        let pickup = sample(&mut rng);
        let Some((node, access_to)) = network.snap_node(pickup) else { continue };
        asked += 1;
        let costs = dijkstra_to(graph, node);
        let drive = |d: &DriverId| {
            let (start, access_from) = network.snap_node(positions[d]).unwrap_or_else(|| panic!("placed on a road"));
            costs
                .get(&start)
                .map_or(f64::INFINITY, |&t| t as f64 / 10.0 + (access_from + access_to) / (ACCESS_KMH / 3.6))
        };
        let best = positions.keys().map(drive).fold(f64::INFINITY, f64::min);
        if !best.is_finite() {
            continue;
        }
        let offer = |engine: &Engine| {
            engine.nearest_offerable_driver(pickup, ServiceType::Taxi, 1e6).unwrap_or_else(|| panic!("a driver")).0
        };
        let chosen = offer(&all);
        assert!(
            (drive(&chosen) - best).abs() < 1e-6,
            "at {pickup}: {chosen} drives {} s, best {best} s",
            drive(&chosen)
        );
        if drive(&offer(&by_crow)) > best + 1e-6 {
            outcome.crow_worse += 1;
        }
        if drive(&offer(&bounded)) > best + 1e-6 {
            outcome.bounded_worse += 1;
        }
    }
    outcome
}
