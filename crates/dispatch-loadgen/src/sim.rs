//! Simulated cars: where they are, where they head, how they move.
//!
//! Motion is planar over short steps (metres to degrees at the car's
//! latitude), which is exact enough for a car moving metres per second and
//! cheap enough for 250,000 cars a second.

use dispatch_core::geo::LatLng;
use rand::Rng;

use crate::config::City;

const M_PER_DEG: f64 = 111_195.0;

/// A point in degrees, unchecked inside the simulation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lng: f64,
}

impl Point {
    /// Metres to `other`, great-circle.
    pub fn distance_m(self, other: Point) -> f64 {
        match (LatLng::new(self.lat, self.lng), LatLng::new(other.lat, other.lng)) {
            (Ok(a), Ok(b)) => a.distance_m(b),
            _ => f64::INFINITY,
        }
    }

    /// This point moved `east_m`, `north_m`.
    pub fn offset(self, east_m: f64, north_m: f64) -> Point {
        let lat = (self.lat + north_m / M_PER_DEG).clamp(-89.9, 89.9);
        let lng = self.lng + east_m / (M_PER_DEG * lat.to_radians().cos());
        Point { lat, lng: (lng + 180.0).rem_euclid(360.0) - 180.0 }
    }
}

/// A random point in one of `cities`, chosen by weight.
pub fn random_point(rng: &mut impl Rng, cities: &[City]) -> Point {
    let total: f64 = cities.iter().map(|c| c.weight).sum();
    let mut pick = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
    let city = cities
        .iter()
        .find(|c| {
            pick -= c.weight;
            pick < 0.0
        })
        .or(cities.last())
        .copied()
        .unwrap_or(crate::config::SEOUL);
    let r = city.radius_m * rng.random::<f64>().sqrt();
    let angle = rng.random_range(0.0..std::f64::consts::TAU);
    Point { lat: city.lat, lng: city.lng }.offset(r * angle.cos(), r * angle.sin())
}

/// What a car is doing.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Free: cruising toward a random spot nearby.
    Cruising,
    /// Assigned: driving to the pickup.
    ToPickup {
        /// The trip.
        trip_id: String,
        /// Where the rider waits.
        pickup: Point,
        /// Where the rider goes.
        dropoff: Point,
    },
    /// The rider is on board.
    ToDropoff {
        /// The trip.
        trip_id: String,
        /// Where the rider goes.
        dropoff: Point,
        /// With a trip length, the seconds of ride left: the rider gets out
        /// where the car is when they run out, if it is not there yet.
        left_s: Option<f64>,
    },
}

/// One simulated car.
#[derive(Debug, Clone)]
pub struct Car {
    /// Its driver id.
    pub driver_id: String,
    /// Where it is.
    pub at: Point,
    /// Where it heads while cruising.
    pub wander: Point,
    /// What it is doing.
    pub phase: Phase,
}

/// What a step of driving led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    /// Nothing yet.
    None,
    /// Reached the pickup of this trip (report arrived, then in progress).
    Pickup(String),
    /// Reached the dropoff of this trip (report completed).
    Dropoff(String),
}

impl Car {
    /// A free car at `at`.
    pub fn new(driver_id: String, at: Point) -> Self {
        Self { driver_id, at, wander: at, phase: Phase::Cruising }
    }

    /// The same car as one of `fleet`'s drivers, named `FLEET_ID/ID`.
    pub fn in_fleet(&self, fleet: &str) -> Self {
        Self { driver_id: format!("{fleet}/{}", self.driver_id), ..self.clone() }
    }

    /// Drives for `seconds` at `speed_mps`; with `trip_s`, a ride from
    /// pickup to dropoff lasts at most that long (time compression at city
    /// speed: the rider gets out early, so trips end at the rate they start
    /// within a run and no car drives faster than a car does).
    pub fn step(&mut self, rng: &mut impl Rng, seconds: f64, speed_mps: f64, trip_s: Option<f64>) -> Arrival {
        if let Phase::ToDropoff { trip_id, left_s: Some(left), .. } = &mut self.phase {
            *left -= seconds;
            if *left <= 0.0 {
                let trip_id = std::mem::take(trip_id);
                self.phase = Phase::Cruising;
                return Arrival::Dropoff(trip_id);
            }
        }
        let budget = seconds * speed_mps;
        let target = match &self.phase {
            Phase::Cruising => {
                if self.at.distance_m(self.wander) < 1.0 {
                    let angle = rng.random_range(0.0..std::f64::consts::TAU);
                    self.wander = self.at.offset(500.0 * angle.cos(), 500.0 * angle.sin());
                }
                self.wander
            }
            Phase::ToPickup { pickup, .. } => *pickup,
            Phase::ToDropoff { dropoff, .. } => *dropoff,
        };
        let left = self.at.distance_m(target);
        if left <= budget {
            self.at = target;
        } else {
            let k = budget / left;
            self.at = Point {
                lat: self.at.lat + (target.lat - self.at.lat) * k,
                lng: self.at.lng + (target.lng - self.at.lng) * k,
            };
            return Arrival::None;
        }
        match std::mem::replace(&mut self.phase, Phase::Cruising) {
            Phase::Cruising => Arrival::None,
            Phase::ToPickup { trip_id, dropoff, .. } => {
                let left_s = trip_s.filter(|s| *s > 0.0);
                self.phase = Phase::ToDropoff { trip_id: trip_id.clone(), dropoff, left_s };
                Arrival::Pickup(trip_id)
            }
            Phase::ToDropoff { trip_id, .. } => Arrival::Dropoff(trip_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_car_drives_to_the_pickup_then_the_dropoff() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let start = Point { lat: 37.5, lng: 127.0 };
        let pickup = start.offset(0.0, 1_000.0);
        let dropoff = pickup.offset(2_000.0, 0.0);
        let mut car = Car::new("d".into(), start);
        car.phase = Phase::ToPickup { trip_id: "t-1".into(), pickup, dropoff };
        let mut events = Vec::new();
        for second in 0..400 {
            match car.step(&mut rng, 1.0, 10.0, None) {
                Arrival::None => {}
                a => {
                    let at = if matches!(a, Arrival::Pickup(_)) { pickup } else { dropoff };
                    assert!(car.at.distance_m(at) < 1.0, "{a:?} away from the spot");
                    events.push((second, a));
                }
            }
        }
        // 1 km to the pickup, then 2 km to the dropoff, at 10 m/s.
        let when: Vec<_> = events.iter().map(|(s, _)| *s).collect();
        assert!((99..=101).contains(&when[0]) && (298..=302).contains(&when[1]), "{when:?}");
        let arrivals: Vec<_> = events.into_iter().map(|(_, a)| a).collect();
        assert_eq!(arrivals, vec![Arrival::Pickup("t-1".into()), Arrival::Dropoff("t-1".into())]);
        assert_eq!(car.phase, Phase::Cruising);
    }

    #[test]
    fn with_a_trip_length_a_long_ride_ends_early_at_city_speed() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let start = Point { lat: 37.5, lng: 127.0 };
        // 295 m at 10 m/s: there in 30 s; 8 km: out after 60 s, 600 m on.
        for (km, after_s, driven_m) in [(0.295, 30, 295.0), (8.0, 60, 600.0)] {
            let dropoff = start.offset(km * 1_000.0, 0.0);
            let mut car = Car::new("d".into(), start);
            car.phase = Phase::ToPickup { trip_id: "t".into(), pickup: start, dropoff };
            assert_eq!(car.step(&mut rng, 1.0, 10.0, Some(60.0)), Arrival::Pickup("t".into()));
            let done = (1..=70).find(|_| car.step(&mut rng, 1.0, 10.0, Some(60.0)) != Arrival::None);
            assert_eq!(done, Some(after_s), "{km} km");
            assert!((car.at.distance_m(start) - driven_m).abs() < 15.0, "{km} km: {} m", car.at.distance_m(start));
            assert_eq!(car.phase, Phase::Cruising);
        }
    }

    #[test]
    fn points_land_in_the_cities() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for _ in 0..1_000 {
            let p = random_point(&mut rng, &crate::config::KOREA);
            let near =
                crate::config::KOREA.iter().any(|c| p.distance_m(Point { lat: c.lat, lng: c.lng }) <= c.radius_m + 1.0);
            assert!(near, "{p:?}");
        }
    }
}
