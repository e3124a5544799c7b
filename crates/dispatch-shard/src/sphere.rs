//! Distances on the unit sphere between a point and a cell's edges.
//!
//! An H3 cell's edges are arcs of great circles (straight lines in the
//! gnomonic projection of an icosahedron face; where an edge crosses from
//! one face to another, the cell's boundary has an extra vertex there), so
//! the distance from a point outside a cell to the cell is the least
//! distance to one of those arcs.

/// `a · b`.
fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// `a × b`.
fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

/// The angle between two unit vectors, in radians; atan2 keeps it exact
/// for tiny and for near-antipodal angles alike.
pub fn angle(a: [f64; 3], b: [f64; 3]) -> f64 {
    let c = cross(a, b);
    dot(c, c).sqrt().atan2(dot(a, b))
}

/// The angle from `p` to the nearest point of the minor great-circle arc
/// from `a` to `b` (all unit vectors), in radians.
pub fn angle_to_arc(p: [f64; 3], a: [f64; 3], b: [f64; 3]) -> f64 {
    let to_ends = angle(p, a).min(angle(p, b));
    let n = cross(a, b);
    let len = dot(n, n).sqrt();
    if len < 1e-15 {
        // A degenerate arc (its ends coincide): just its ends.
        return to_ends;
    }
    let n = [n[0] / len, n[1] / len, n[2] / len];
    // p's foot on the arc's great circle lies between the ends when it is
    // on the inner side of both: then the distance is p's angle from the
    // circle's plane.
    let off = dot(p, n);
    let foot = [p[0] - off * n[0], p[1] - off * n[1], p[2] - off * n[2]];
    let between = dot(cross(a, foot), n) >= 0.0 && dot(cross(foot, b), n) >= 0.0;
    if between && dot(foot, foot) > 0.0 { off.abs().clamp(0.0, 1.0).asin().min(to_ends) } else { to_ends }
}

/// Whether the minor arc from `a` to `b` comes within the angle whose
/// cosine and sine are `cos_reach` and `sin_reach` of `p` (all unit
/// vectors): [`angle_to_arc`]`(p, a, b) <= reach` without inverse
/// trigonometry, for the many tests a search makes against one reach.
pub fn arc_within(p: [f64; 3], a: [f64; 3], b: [f64; 3], cos_reach: f64, sin_reach: f64) -> bool {
    if dot(p, a) >= cos_reach || dot(p, b) >= cos_reach {
        return true;
    }
    let n = cross(a, b);
    let len = dot(n, n).sqrt();
    if len < 1e-15 {
        return false;
    }
    let n = [n[0] / len, n[1] / len, n[2] / len];
    let off = dot(p, n);
    if off.abs() > sin_reach {
        return false;
    }
    // Within reach of the arc's great circle: of the arc itself if the
    // foot lies between the ends (and on p's side of the sphere).
    let foot = [p[0] - off * n[0], p[1] - off * n[1], p[2] - off * n[2]];
    dot(cross(a, foot), n) >= 0.0 && dot(cross(foot, b), n) >= 0.0 && dot(foot, a) + dot(foot, b) > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(lat: f64, lng: f64) -> [f64; 3] {
        let (lat, lng) = (f64::to_radians(lat), f64::to_radians(lng));
        [lat.cos() * lng.cos(), lat.cos() * lng.sin(), lat.sin()]
    }

    #[test]
    fn a_point_above_the_middle_of_an_arc_is_its_angle_from_the_circle() {
        // The arc along the equator from lng 0 to lng 10; p at lat 1, lng 5.
        let d = angle_to_arc(unit(1.0, 5.0), unit(0.0, 0.0), unit(0.0, 10.0));
        assert!((d - 1f64.to_radians()).abs() < 1e-12, "{d}");
    }

    #[test]
    fn a_point_past_an_end_is_its_angle_to_that_end() {
        let p = unit(0.0, 12.0);
        let d = angle_to_arc(p, unit(0.0, 0.0), unit(0.0, 10.0));
        assert!((d - 2f64.to_radians()).abs() < 1e-12, "{d}");
        // Beside the arc's far side (lng 190 is behind lng 0), still an end.
        let d = angle_to_arc(unit(0.0, -5.0), unit(0.0, 0.0), unit(0.0, 10.0));
        assert!((d - 5f64.to_radians()).abs() < 1e-12, "{d}");
    }

    #[test]
    fn within_reach_agrees_with_the_angle() {
        let (a, b) = (unit(37.0, 126.0), unit(37.4, 127.1));
        for (lat, lng) in [(37.2, 126.5), (36.0, 125.0), (38.0, 128.0), (37.5, 126.0), (37.1, 127.5), (-37.2, -53.5)] {
            let p = unit(lat, lng);
            let d = angle_to_arc(p, a, b);
            for reach in [d * 0.999, d * 1.001, 0.001, 0.01, 0.1, 1.0] {
                assert_eq!(arc_within(p, a, b, reach.cos(), reach.sin()), d <= reach, "({lat}, {lng}) at {reach}");
            }
        }
    }

    #[test]
    fn the_arc_is_never_farther_than_its_nearest_sampled_point() {
        // Against brute force: points along the arc.
        let (a, b) = (unit(37.0, 126.0), unit(37.4, 127.1));
        for (lat, lng) in [(37.2, 126.5), (36.0, 125.0), (38.0, 128.0), (37.5, 126.0), (37.1, 127.5)] {
            let p = unit(lat, lng);
            let fast = angle_to_arc(p, a, b);
            let sampled = (0..=10_000)
                .map(|i| {
                    let t = f64::from(i) / 10_000.0;
                    let q = [a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), a[2] + t * (b[2] - a[2])];
                    let len = dot(q, q).sqrt();
                    angle(p, [q[0] / len, q[1] / len, q[2] / len])
                })
                .fold(f64::INFINITY, f64::min);
            assert!(fast <= sampled + 1e-12, "{fast} > {sampled}");
            assert!(sampled - fast < 1e-6, "{fast} much below {sampled}");
        }
    }
}
