//! The router and the engine ranking by it on a real extract, central
//! Helsinki (see `dispatch_testkit::roads::helsinki_extract`): read from
//! PBF, prepared, kept in the cache and read back, checked against
//! Dijkstra.

mod common;

use std::sync::Arc;

use dispatch_core::geo::LatLng;
use dispatch_road::osm::Osm;
use dispatch_road::{DEFAULT_SNAP_M, Graph, Source};
use rand::Rng;

#[test]
fn helsinki_is_read_cached_read_back_and_ranked_as_dijkstra_says() {
    let extract = dispatch_testkit::roads::helsinki_extract();
    let cache = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (network, source) =
        dispatch_road::load(&extract, Some(cache.path()), DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(source, Source::Prepared);
    assert!(network.nodes() > 1_000, "{network:?}");
    let osm = Osm::read(&extract).unwrap_or_else(|e| panic!("{e}"));
    let graph = Graph::of(&osm);
    assert_eq!(graph.coords.len(), network.nodes());
    // The extract's turn restrictions split junctions, and the drives
    // below (Dijkstra's among them) keep to them.
    assert!(!osm.turns.is_empty() && graph.coords.len() > graph.placed, "{} restrictions", osm.turns.len());

    // The bounding box of the roads, where drivers and pickups are drawn.
    let (mut south, mut north, mut west, mut east) = (90.0f64, -90.0f64, 180.0f64, -180.0f64);
    for p in &graph.coords {
        (south, north, west, east) = (south.min(p.lat()), north.max(p.lat()), west.min(p.lng()), east.max(p.lng()));
    }
    let sample = |rng: &mut dispatch_testkit::Rng| {
        LatLng::new(rng.random_range(south..north), rng.random_range(west..east)).unwrap_or_else(|e| panic!("{e}"))
    };

    // Read back from the cache: the same drives.
    let (again, source) =
        dispatch_road::load(&extract, Some(cache.path()), DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(source, Source::Cached);
    let mut rng = dispatch_testkit::rng(3);
    for _ in 0..200 {
        let (a, b) = (sample(&mut rng), sample(&mut rng));
        assert_eq!(network.leg(a, b), again.leg(a, b), "{a} to {b}");
    }

    let outcome = common::oracle(&Arc::new(network), &graph, 5, 40, 500, sample);
    assert!(outcome.crow_worse > 0, "{outcome:?}");

    // A cache file cut short is prepared again, not trusted.
    for entry in std::fs::read_dir(cache.path()).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
    }
    let (_, source) =
        dispatch_road::load(&extract, Some(cache.path()), DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(source, Source::Prepared);
}

#[test]
fn a_file_that_is_not_osm_data_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for (name, bytes) in
        [("x.osm.pbf", &b"not a pbf"[..]), ("x.osm", b"<osm><way><nd ref=\"1\"></osm>"), ("y.osm", b"<osm></osm>")]
    {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
        let err = dispatch_road::load(&path, None, DEFAULT_SNAP_M).err().unwrap_or_else(|| panic!("{name} loaded"));
        assert!(err.to_string().contains(name), "{err}");
    }
}
