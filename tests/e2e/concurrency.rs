//! Hundreds of simultaneous requests against fewer drivers: no driver is
//! ever assigned twice, no trip gets two drivers.

use std::collections::HashMap;

use dispatch_proto::pb::{self, driver_event::Kind as Event};

use crate::drivers::wait_for_available;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_driver_is_assigned_twice_under_concurrent_requests() {
    const DRIVERS: usize = 40;
    const RIDERS: usize = 300;
    let server = TestServer::start().await;
    // Half the drivers auto-accept, half accept every offer by hand.
    let mut manual = Vec::new();
    let mut automatic = Vec::new();
    for n in 0..DRIVERS {
        let metres = 50.0 * n as f64;
        if n % 2 == 0 {
            automatic.push(server.driver(auto_hello(&format!("d{n}"), metres)).await);
        } else {
            manual.push(server.driver(hello(&format!("d{n}"), metres)).await);
        }
    }
    wait_for_available(&server, DRIVERS as u64).await;
    let acceptors: Vec<_> = manual
        .into_iter()
        .map(|mut d| {
            tokio::spawn(async move {
                loop {
                    match d.next_result().await {
                        Ok(Some(Event::Offer(offer))) => d.reply(&offer, true).await,
                        Ok(Some(_)) => {}
                        _ => return,
                    }
                }
            })
        })
        .collect();
    let riders: Vec<_> = (0..RIDERS)
        .map(|n| {
            let server_channel = server.channel();
            tokio::spawn(async move {
                let mut riders = pb::rider_service_client::RiderServiceClient::new(server_channel);
                let request = pb::RideRequest {
                    rider_id: format!("r{n}"),
                    request_id: "q".into(),
                    pickup: Some(pickup()),
                    ..Default::default()
                };
                let mut stream = riders.request_ride(request).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
                // Follow the trip until it has a driver or a short while passes.
                let mut last = None;
                while let Ok(Ok(Some(trip))) =
                    tokio::time::timeout(std::time::Duration::from_secs(3), stream.message()).await
                {
                    let assigned = trip.status() == pb::TripStatus::DriverAssigned;
                    last = Some(trip);
                    if assigned {
                        break;
                    }
                }
                last
            })
        })
        .collect();
    let mut by_driver: HashMap<String, Vec<String>> = HashMap::new();
    for rider in riders {
        let trip = within("a rider", rider).await.unwrap_or_else(|e| panic!("{e}"));
        if let Some(trip) = trip.filter(|t| t.status() == pb::TripStatus::DriverAssigned) {
            by_driver.entry(trip.driver_id.clone()).or_default().push(trip.trip_id);
        }
    }
    for (driver, trips) in &by_driver {
        assert_eq!(trips.len(), 1, "driver {driver} got {trips:?}");
    }
    assert_eq!(by_driver.len(), DRIVERS, "every driver got exactly one ride");
    let stats = server.stats().await;
    assert_eq!(stats.drivers_on_trip, DRIVERS as u64);
    assert_eq!(stats.trips_active, DRIVERS as u64);
    assert_eq!(stats.trips_searching, (RIDERS - DRIVERS) as u64);
    for a in acceptors {
        a.abort();
    }
    drop(automatic);
}
