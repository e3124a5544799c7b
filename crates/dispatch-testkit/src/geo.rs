//! Random points for index and matcher tests.

use dispatch_core::geo::{EARTH_RADIUS_M, LatLng};
use rand::Rng;

/// Seoul City Hall: the centre of the default simulated city.
pub const SEOUL: (f64, f64) = (37.5663, 126.9779);

/// A point uniformly distributed over the whole sphere.
pub fn random_point(rng: &mut impl Rng) -> LatLng {
    let z: f64 = rng.random_range(-1.0..=1.0);
    let lng: f64 = rng.random_range(-180.0..=180.0);
    point(z.asin().to_degrees(), lng)
}

/// A point uniformly distributed over a disc of `radius_m` around `centre`,
/// following great circles, so discs over a pole or the antimeridian work.
pub fn random_point_near(rng: &mut impl Rng, centre: LatLng, radius_m: f64) -> LatLng {
    let distance = radius_m * rng.random::<f64>().sqrt();
    let bearing = rng.random_range(0.0..std::f64::consts::TAU);
    destination(centre, bearing, distance)
}

/// The point `distance_m` from `from` along the initial `bearing` (radians,
/// clockwise from north).
pub fn destination(from: LatLng, bearing: f64, distance_m: f64) -> LatLng {
    let angle = distance_m / EARTH_RADIUS_M;
    let (lat1, lng1) = (from.lat().to_radians(), from.lng().to_radians());
    let lat2 = (lat1.sin() * angle.cos() + lat1.cos() * angle.sin() * bearing.cos()).clamp(-1.0, 1.0).asin();
    let lng2 = lng1 + (bearing.sin() * angle.sin() * lat1.cos()).atan2(angle.cos() - lat1.sin() * lat2.sin());
    point(lat2.to_degrees(), wrap_lng(lng2.to_degrees()))
}

fn wrap_lng(lng: f64) -> f64 {
    let wrapped = (lng + 180.0).rem_euclid(360.0) - 180.0;
    if wrapped < -180.0 { -180.0 } else { wrapped }
}

/// A checked point from values this module computed; clamps the last ulp.
pub fn point(lat: f64, lng: f64) -> LatLng {
    match LatLng::new(lat.clamp(-90.0, 90.0), lng.clamp(-180.0, 180.0)) {
        Ok(p) => p,
        Err(e) => panic!("generated point out of range: {e}"),
    }
}
