//! Points on Earth and the distances between them.
//!
//! Distances are great-circle (haversine) on a sphere of the mean Earth
//! radius. For the index every point is also mapped to a unit vector (ECEF on
//! the unit sphere): the straight-line chord between two unit vectors grows
//! strictly with the great-circle distance, so a Euclidean nearest-neighbour
//! search over unit vectors is exact for great-circle distance everywhere,
//! with no special case at the antimeridian or the poles.

use std::fmt;

/// Mean Earth radius in metres (IUGG), the radius every distance uses.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Half of Earth's circumference: no two points are farther apart.
pub const MAX_DISTANCE_M: f64 = std::f64::consts::PI * EARTH_RADIUS_M;

/// A WGS84 point in degrees, checked: latitude in [-90, 90], longitude in
/// [-180, 180], both finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatLng {
    lat: f64,
    lng: f64,
}

/// Why a coordinate was refused.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum GeoError {
    /// A coordinate was NaN or infinite.
    #[error("coordinates must be finite numbers (got lat {lat}, lng {lng})")]
    NotFinite {
        /// The latitude given.
        lat: f64,
        /// The longitude given.
        lng: f64,
    },
    /// Latitude outside [-90, 90].
    #[error("latitude {0} is outside [-90, 90]")]
    LatitudeOutOfRange(f64),
    /// Longitude outside [-180, 180].
    #[error("longitude {0} is outside [-180, 180]")]
    LongitudeOutOfRange(f64),
    /// A distance was negative, NaN or infinite.
    #[error("distance {0} must be a finite number of metres, zero or more")]
    BadDistance(f64),
}

impl LatLng {
    /// A checked point.
    ///
    /// ```
    /// use dispatch_core::geo::LatLng;
    /// assert!(LatLng::new(37.5665, 126.9780).is_ok());
    /// assert!(LatLng::new(91.0, 0.0).is_err());
    /// assert!(LatLng::new(f64::NAN, 0.0).is_err());
    /// ```
    pub fn new(lat: f64, lng: f64) -> Result<Self, GeoError> {
        if !lat.is_finite() || !lng.is_finite() {
            return Err(GeoError::NotFinite { lat, lng });
        }
        if !(-90.0..=90.0).contains(&lat) {
            return Err(GeoError::LatitudeOutOfRange(lat));
        }
        if !(-180.0..=180.0).contains(&lng) {
            return Err(GeoError::LongitudeOutOfRange(lng));
        }
        Ok(Self { lat, lng })
    }

    /// Latitude in degrees.
    pub fn lat(self) -> f64 {
        self.lat
    }

    /// Longitude in degrees.
    pub fn lng(self) -> f64 {
        self.lng
    }

    /// Great-circle distance in metres (haversine).
    ///
    /// ```
    /// use dispatch_core::geo::LatLng;
    /// let a = LatLng::new(0.0, 179.9995).unwrap();
    /// let b = LatLng::new(0.0, -179.9995).unwrap();
    /// assert!((a.distance_m(b) - 111.2).abs() < 0.1); // across the antimeridian
    /// ```
    pub fn distance_m(self, other: LatLng) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlng = (other.lng - self.lng).to_radians();
        let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlng / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_M * h.sqrt().min(1.0).asin()
    }

    /// The point as a vector on the unit sphere (x through lng 0, z through
    /// the north pole).
    pub fn to_unit(self) -> [f64; 3] {
        let (lat, lng) = (self.lat.to_radians(), self.lng.to_radians());
        [lat.cos() * lng.cos(), lat.cos() * lng.sin(), lat.sin()]
    }
}

impl fmt::Display for LatLng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:.6}, {:.6})", self.lat, self.lng)
    }
}

/// The squared chord between two unit vectors whose great-circle distance is
/// `distance_m`: the index compares squared chords, so a radius in metres is
/// turned into this once per query.
///
/// ```
/// use dispatch_core::geo::{chord2_for_distance, MAX_DISTANCE_M};
/// assert_eq!(chord2_for_distance(0.0), 0.0);
/// assert!((chord2_for_distance(MAX_DISTANCE_M) - 4.0).abs() < 1e-12);
/// ```
pub fn chord2_for_distance(distance_m: f64) -> f64 {
    let angle = (distance_m / EARTH_RADIUS_M).clamp(0.0, std::f64::consts::PI);
    let chord = 2.0 * (angle / 2.0).sin();
    chord * chord
}

/// A search radius in metres, checked: finite and not negative. Radii past
/// half the globe mean "anywhere".
pub fn checked_radius(distance_m: f64) -> Result<f64, GeoError> {
    if distance_m.is_finite() && distance_m >= 0.0 { Ok(distance_m) } else { Err(GeoError::BadDistance(distance_m)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lat: f64, lng: f64) -> LatLng {
        LatLng::new(lat, lng).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rejects_out_of_range_and_non_finite() {
        assert!(matches!(LatLng::new(90.0001, 0.0), Err(GeoError::LatitudeOutOfRange(_))));
        assert!(matches!(LatLng::new(0.0, -180.5), Err(GeoError::LongitudeOutOfRange(_))));
        assert!(matches!(LatLng::new(0.0, f64::INFINITY), Err(GeoError::NotFinite { .. })));
        assert!(LatLng::new(-90.0, 180.0).is_ok());
    }

    #[test]
    fn known_distances() {
        // Seoul City Hall to Gangnam station, about 8.8 km.
        let d = p(37.5663, 126.9779).distance_m(p(37.4979, 127.0276));
        assert!((d - 8_777.0).abs() < 50.0, "{d}");
        // A quarter of the equator.
        let q = p(0.0, 0.0).distance_m(p(0.0, 90.0));
        assert!((q - MAX_DISTANCE_M / 2.0).abs() < 1e-6, "{q}");
        // Over the pole: lng is meaningless there.
        let pole = p(89.999, 0.0).distance_m(p(89.999, 180.0));
        assert!((pole - 222.4).abs() < 0.5, "{pole}");
    }

    #[test]
    fn chord_is_monotonic_in_distance() {
        let origin = p(10.0, 179.0);
        let u0 = origin.to_unit();
        let mut last = (-1.0, -1.0);
        for i in 0..2_000 {
            let q = p(10.0 - i as f64 * 0.05, (179.0 + i as f64 * 0.1 + 180.0) % 360.0 - 180.0);
            let d = origin.distance_m(q);
            let u = q.to_unit();
            let c2: f64 = (0..3).map(|k| (u[k] - u0[k]).powi(2)).sum();
            // A larger distance never has a smaller chord, within rounding.
            if d > last.0 + 1e-3 {
                assert!(c2 >= last.1 - 1e-12, "distance {d} chord2 {c2} after {last:?}");
            }
            assert!((chord2_for_distance(d) - c2).abs() < 1e-9);
            last = (d, c2);
        }
    }
}
