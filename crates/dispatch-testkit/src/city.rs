//! A seeded city for the engine: drivers scattered around a centre and
//! ride requests among them, built the same way by tests and benches.

use dispatch_core::engine::{DriverHello, RideRequest};
use dispatch_core::geo::LatLng;
use dispatch_core::ids::{DriverId, RequestId, RiderId};
use dispatch_core::service::{ServiceSet, ServiceType};
use rand::Rng;

use crate::geo::{SEOUL, point, random_point_near};

/// The shape of a simulated city.
#[derive(Debug, Clone, Copy)]
pub struct CityShape {
    /// Where its centre is.
    pub centre: LatLng,
    /// How far drivers and riders spread from it, in metres.
    pub radius_m: f64,
}

impl CityShape {
    /// Seoul: a disc of 15 km around City Hall.
    pub fn seoul() -> Self {
        Self { centre: point(SEOUL.0, SEOUL.1), radius_m: 15_000.0 }
    }

    /// A random point in the city.
    pub fn point(&self, rng: &mut impl Rng) -> LatLng {
        random_point_near(rng, self.centre, self.radius_m)
    }
}

/// The id of the `n`th simulated driver.
pub fn driver_id(n: usize) -> DriverId {
    match DriverId::new(&format!("driver-{n:07}")) {
        Ok(id) => id,
        Err(e) => panic!("{e}"),
    }
}

/// A driver's hello: available, at a random point, serving taxi and, one in
/// ten, premium as well.
pub fn driver_hello(rng: &mut impl Rng, city: &CityShape, n: usize) -> DriverHello {
    let mut services = ServiceSet::taxi();
    if rng.random_ratio(1, 10) {
        services = services.with(ServiceType::Premium);
    }
    DriverHello { driver: driver_id(n), services, position: Some(city.point(rng)), available: true, auto_accept: false }
}

/// The `n`th rider's request for a taxi between two random points.
pub fn ride_request(rng: &mut impl Rng, city: &CityShape, n: usize) -> RideRequest {
    let (rider, request_id) = match (RiderId::new(&format!("rider-{n:07}")), RequestId::new(&format!("req-{n}"))) {
        (Ok(r), Ok(q)) => (r, q),
        (Err(e), _) | (_, Err(e)) => panic!("{e}"),
    };
    RideRequest {
        rider,
        request_id,
        pickup: city.point(rng),
        dropoff: Some(city.point(rng)),
        service: ServiceType::Taxi,
        max_pickup_distance_m: None,
    }
}

/// An engine with `drivers` connected drivers scattered over `city`, each in
/// its own session (`SessionId(n + 1)` for driver `n`), every one available,
/// with the effects of connecting drained. Returns the engine and each
/// driver's session and position.
pub fn engine_with_drivers(
    seed: u64,
    city: &CityShape,
    drivers: usize,
    config: dispatch_core::engine::Config,
) -> (dispatch_core::Engine, Vec<(dispatch_core::ids::SessionId, LatLng)>) {
    let mut rng = crate::rng(seed);
    let mut engine = dispatch_core::Engine::new(config);
    let mut placed = Vec::with_capacity(drivers);
    let now = dispatch_core::time::Timestamp(0);
    for n in 0..drivers {
        let hello = driver_hello(&mut rng, city, n);
        let at = hello.position.unwrap_or(city.centre);
        let session = dispatch_core::ids::SessionId(n as u64 + 1);
        if let Err(e) = engine.connect_driver(now, session, hello) {
            panic!("{e}");
        }
        placed.push((session, at));
    }
    engine.tick(now);
    engine.drain_effects().for_each(drop);
    (engine, placed)
}
