//! Turn restrictions: a junction a car may not turn at as the extract
//! says, whichever way the drive is asked (one search from the pickup, or
//! the hierarchy), and the same answers as Dijkstra on the same graph.
//!
//! The junction C, 100 m between neighbours:
//!
//! ```text
//!   N ── NE
//!   │    │
//! W─C ── E
//!   │
//!   S
//! ```
//!
//! Ways: 101 S–C, 102 C–E, 103 N–NE–E, 104 C–N, 105 C–W, all two-way.

mod common;

use dispatch_core::geo::LatLng;
use dispatch_core::roads::Roads;
use dispatch_road::osm::Osm;
use dispatch_road::{DEFAULT_SNAP_M, Graph, RoadNetwork};

const METRES_PER_DEGREE: f64 = 111_195.0;

/// The point `north` and `east` blocks from C.
fn at(north: f64, east: f64) -> LatLng {
    let (lat, lng) = (60.0, 25.0);
    let lng_m = METRES_PER_DEGREE * f64::to_radians(lat).cos();
    LatLng::new(lat + north * 100.0 / METRES_PER_DEGREE, lng + east * 100.0 / lng_m).unwrap_or_else(|e| panic!("{e}"))
}

/// The junction's OSM XML with `relations` (whole `<relation>` elements).
fn xml(relations: &str) -> String {
    let nodes = [(1, 0.0, 0.0), (2, 1.0, 0.0), (3, 0.0, 1.0), (4, -1.0, 0.0), (5, 1.0, 1.0), (6, 0.0, -1.0)];
    let mut out = String::from("<?xml version=\"1.0\"?>\n<osm version=\"0.6\">\n");
    for (id, north, east) in nodes {
        let p = at(north, east);
        out.push_str(&format!("<node id=\"{id}\" lat=\"{:.8}\" lon=\"{:.8}\"/>\n", p.lat(), p.lng()));
    }
    for (id, refs) in [(101, &[4, 1][..]), (102, &[1, 3]), (103, &[2, 5, 3]), (104, &[1, 2]), (105, &[1, 6])] {
        out.push_str(&format!("<way id=\"{id}\">"));
        for r in refs {
            out.push_str(&format!("<nd ref=\"{r}\"/>"));
        }
        out.push_str("<tag k=\"highway\" v=\"residential\"/></way>\n");
    }
    out.push_str(relations);
    out.push_str("</osm>\n");
    out
}

/// A restriction relation from way `from` via node 1 (C) to way `to`.
fn restriction(tags: &[(&str, &str)], from: i64, to: i64) -> String {
    let tags: String = tags.iter().map(|(k, v)| format!("<tag k=\"{k}\" v=\"{v}\"/>")).collect();
    format!(
        "<relation id=\"9{from}{to}\"><member type=\"way\" ref=\"{from}\" role=\"from\"/>\
         <member type=\"node\" ref=\"1\" role=\"via\"/><member type=\"way\" ref=\"{to}\" role=\"to\"/>{tags}</relation>\n"
    )
}

fn network(xml: &str) -> RoadNetwork {
    dispatch_road::from_xml(xml, DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"))
}

/// Metres of the drive from `from` to `to`, asked both ways the router
/// answers (a search from `to`, and the hierarchy's route), which agree.
fn metres(network: &RoadNetwork, from: LatLng, to: LatLng) -> f64 {
    let searched = network.legs_to(&[from], to).pop().flatten().map_or(f64::NAN, |leg| leg.metres);
    let routed = network.route(from, to).map_or(f64::NAN, |route| route.leg.metres);
    assert!((searched - routed).abs() < 1.0, "{from} to {to}: {searched} m searched, {routed} m routed");
    searched
}

#[test]
fn a_forbidden_turn_sends_the_car_round_the_block() {
    let (s, e, n, w) = (at(-1.0, 0.0), at(0.0, 1.0), at(1.0, 0.0), at(0.0, -1.0));
    let open = network(&xml(""));
    assert!((metres(&open, s, e) - 200.0).abs() < 2.0);

    let no_right = xml(&restriction(&[("type", "restriction"), ("restriction", "no_right_turn")], 101, 102));
    let restricted = network(&no_right);
    // North, east and down: 400 m, not 200.
    assert!((metres(&restricted, s, e) - 400.0).abs() < 2.0, "{}", metres(&restricted, s, e));
    let way = restricted.route(s, e).unwrap_or_else(|| panic!("a route")).points;
    assert!(way.iter().any(|p| p.distance_m(n) < 1.0), "{way:?}");
    // The other turns at C, and the same turn from elsewhere, are free.
    for (from, to) in [(s, n), (s, w), (e, s), (n, e), (w, e)] {
        assert!((metres(&restricted, from, to) - 200.0).abs() < 2.0, "{from} to {to}");
    }
    // A drive to the junction itself arrives along the restricted street,
    // wherever it may not turn next.
    let c = at(0.0, 0.0);
    assert!((metres(&restricted, s, c) - 100.0).abs() < 1.0, "{}", metres(&restricted, s, c));
    let to_c = restricted.route(s, c).unwrap_or_else(|| panic!("a route")).points;
    assert!(to_c.iter().all(|p| p.distance_m(n) > 50.0), "{to_c:?}");
    // Points snap to the junction itself, never to a copy of it.
    let graph = Graph::of(&Osm::read_xml(no_right.as_bytes()).unwrap_or_else(|e| panic!("{e}")));
    assert!(graph.coords.len() > graph.placed);
    let (node, _) = restricted.snap_node(at(0.0, 0.0)).unwrap_or_else(|| panic!("C snaps"));
    assert!(node < graph.placed, "{node}");
}

#[test]
fn only_straight_on_forbids_every_other_way_out() {
    let (s, e, n, w) = (at(-1.0, 0.0), at(0.0, 1.0), at(1.0, 0.0), at(0.0, -1.0));
    let only = network(&xml(&restriction(&[("type", "restriction"), ("restriction", "only_straight_on")], 101, 104)));
    assert!((metres(&only, s, n) - 200.0).abs() < 2.0);
    assert!((metres(&only, s, e) - 400.0).abs() < 2.0);
    // West: on to N, back to C (arriving from N, where no rule binds) and
    // west, 400 m; a drive turning at C would be 200.
    assert!((metres(&only, s, w) - 400.0).abs() < 2.0, "{}", metres(&only, s, w));
    assert!((metres(&only, n, w) - 200.0).abs() < 2.0);
}

#[test]
fn what_binds_a_car_is_read_and_the_rest_is_not() {
    let turn = |tags: &[(&str, &str)]| {
        let osm = Osm::read_xml(xml(&restriction(tags, 101, 102)).as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        osm.turns.first().map(|t| (t.from, t.via, t.to, t.only))
    };
    assert_eq!(turn(&[("type", "restriction"), ("restriction", "no_left_turn")]), Some((101, 1, 102, false)));
    assert_eq!(turn(&[("restriction", "only_right_turn"), ("type", "restriction")]), Some((101, 1, 102, true)));
    let car = turn(&[("type", "restriction"), ("restriction:motorcar", "no_right_turn"), ("restriction", "only_x")]);
    assert_eq!(car, Some((101, 1, 102, false)));
    assert_eq!(turn(&[("type", "restriction"), ("restriction:hgv", "no_right_turn")]), None);
    assert_eq!(turn(&[("type", "restriction"), ("restriction", "no_right_turn"), ("except", "bus;motorcar")]), None);
    assert_eq!(turn(&[("type", "multipolygon"), ("restriction", "no_right_turn")]), None);
    assert_eq!(turn(&[("type", "restriction"), ("restriction", "give_way")]), None);
    // A via inside a way rather than at its end is not a valid restriction
    // (OSRM too ignores it): nothing is split.
    let inside = xml(&restriction(&[("type", "restriction"), ("restriction", "no_left_turn")], 103, 101))
        .replace("<nd ref=\"2\"/><nd ref=\"5\"/><nd ref=\"3\"/>", "<nd ref=\"2\"/><nd ref=\"1\"/><nd ref=\"5\"/>");
    let graph = Graph::of(&Osm::read_xml(inside.as_bytes()).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!((graph.coords.len(), graph.placed), (6, 6));
    // A turn restriction via a way is not read.
    let via_way = "<relation id=\"1\"><member type=\"way\" ref=\"101\" role=\"from\"/>\
        <member type=\"way\" ref=\"104\" role=\"via\"/><member type=\"way\" ref=\"103\" role=\"to\"/>\
        <tag k=\"type\" v=\"restriction\"/><tag k=\"restriction\" v=\"no_u_turn\"/></relation>";
    assert!(Osm::read_xml(xml(via_way).as_bytes()).unwrap_or_else(|e| panic!("{e}")).turns.is_empty());
}

#[test]
fn no_u_turn_forbids_going_back_only() {
    let tags = [("type", "restriction"), ("restriction", "no_u_turn")];
    let graph =
        Graph::of(&Osm::read_xml(xml(&restriction(&tags, 101, 101)).as_bytes()).unwrap_or_else(|e| panic!("{e}")));
    // S is node 3 of the graph (the order ways name them), C node 1: the
    // copy of C for S → C leads on to N, E and W but not back to S.
    let copy = graph.placed;
    assert_eq!(graph.coords.len(), copy + 1);
    let mut out: Vec<usize> = graph.edges.iter().filter(|e| e.0 == copy).map(|e| e.1).collect();
    out.sort_unstable();
    let index = |p: LatLng| graph.coords.iter().position(|&c| c.distance_m(p) < 1.0);
    let mut want: Vec<usize> = [at(1.0, 0.0), at(0.0, 1.0), at(0.0, -1.0)].into_iter().filter_map(index).collect();
    want.sort_unstable();
    assert_eq!(out, want);
    let s = index(at(-1.0, 0.0)).unwrap_or_else(|| panic!("S"));
    assert!(graph.edges.iter().any(|e| e.0 == s && e.1 == copy));
    assert!(!graph.edges.iter().any(|e| e.0 == s && e.1 < copy && graph.coords[e.1].distance_m(at(0.0, 0.0)) < 1.0));
}

#[test]
fn drives_with_restrictions_are_dijkstras() {
    let tags = [("type", "restriction"), ("restriction", "no_right_turn")];
    let both = format!(
        "{}{}",
        restriction(&tags, 101, 102),
        restriction(&[("type", "restriction"), ("restriction", "no_left_turn")], 102, 104)
    );
    let xml = xml(&both);
    let network = network(&xml);
    let graph = Graph::of(&Osm::read_xml(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}")));
    for to in 0..graph.placed {
        let tenths = common::dijkstra_to(&graph, to);
        for from in 0..graph.placed {
            let leg = network.leg(graph.coords[from], graph.coords[to]).unwrap_or_else(|| panic!("on the roads"));
            let want = tenths.get(&from).map(|&t| t as f64 / 10.0);
            assert!(want.is_some_and(|w| (w - leg.seconds).abs() < 1e-6), "{from} to {to}: {leg:?}, Dijkstra {want:?}");
        }
    }
}

#[test]
fn the_engine_offers_the_driver_dijkstra_says_is_quickest_with_restrictions() {
    use rand::Rng;
    let no_right = xml(&restriction(&[("type", "restriction"), ("restriction", "no_right_turn")], 101, 102));
    let network = std::sync::Arc::new(network(&no_right));
    let graph = Graph::of(&Osm::read_xml(no_right.as_bytes()).unwrap_or_else(|e| panic!("{e}")));
    let sample = |rng: &mut dispatch_testkit::Rng| at(rng.random_range(-1.2..1.2), rng.random_range(-1.2..1.2));
    let outcome = common::oracle(&network, &graph, 7, 4, 300, sample);
    assert_eq!(outcome.requests, 300);
}
