//! Generated road networks: square grids of two-way streets, written as
//! OpenStreetMap XML, for a load scenario over places no extract is at
//! hand for (`dispatch-loadgen --write-road-grid`). A stand-in that costs
//! what a real network of its size costs to route, not a map of anywhere.

use std::fmt::Write;

use dispatch_core::geo::LatLng;

const METRES_PER_DEGREE: f64 = 111_195.0;

/// One square grid of residential streets `spacing_m` apart round each
/// `(centre, radius_m)`, reaching `radius_m` each way, as OSM XML.
pub fn grids_xml(areas: &[(LatLng, f64)], spacing_m: f64) -> String {
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<osm version=\"0.6\" generator=\"dispatch-road grid\">\n",
    );
    let spacing_m = spacing_m.max(10.0);
    let mut next_node = 1u64;
    let mut next_way = 1u64;
    let mut ways = String::new();
    for &(centre, radius_m) in areas {
        let half = (radius_m / spacing_m).ceil().max(1.0) as i64;
        let side = (2 * half + 1) as u64;
        let first = next_node;
        let id = |row: i64, col: i64| first + (row + half) as u64 * side + (col + half) as u64;
        let cos = centre.lat().to_radians().cos().max(0.01);
        for row in -half..=half {
            for col in -half..=half {
                let lat = (centre.lat() - row as f64 * spacing_m / METRES_PER_DEGREE).clamp(-89.9, 89.9);
                let lng = (centre.lng() + col as f64 * spacing_m / (METRES_PER_DEGREE * cos)).clamp(-179.9, 179.9);
                let _ = writeln!(out, "  <node id=\"{}\" lat=\"{lat:.7}\" lon=\"{lng:.7}\"/>", id(row, col));
            }
        }
        next_node += side * side;
        for line in -half..=half {
            for horizontal in [true, false] {
                let _ = writeln!(ways, "  <way id=\"{next_way}\">");
                next_way += 1;
                for along in -half..=half {
                    let node = if horizontal { id(line, along) } else { id(along, line) };
                    let _ = writeln!(ways, "    <nd ref=\"{node}\"/>");
                }
                ways.push_str("    <tag k=\"highway\" v=\"residential\"/>\n  </way>\n");
            }
        }
    }
    out.push_str(&ways);
    out.push_str("</osm>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grid_routes_along_its_streets() {
        let centre = LatLng::new(37.5, 127.0).unwrap_or_else(|e| panic!("{e}"));
        let network = crate::from_xml(&grids_xml(&[(centre, 1_000.0)], 200.0), crate::DEFAULT_SNAP_M)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(network.nodes(), 11 * 11);
        // Two blocks east and two south: 800 m by the streets.
        let east = |m: f64| {
            LatLng::new(37.5 - m / METRES_PER_DEGREE, 127.0 + m / (METRES_PER_DEGREE * 37.5f64.to_radians().cos()))
        };
        let to = east(400.0).unwrap_or_else(|e| panic!("{e}"));
        let leg = network.leg(centre, to).unwrap_or_else(|| panic!("a route"));
        assert!((leg.metres - 800.0).abs() < 2.0, "{leg:?}");
    }
}
