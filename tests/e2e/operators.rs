//! Operators: nearby drivers, stats, health and reflection.

use dispatch_proto::pb;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::drivers::wait_for_available;
use crate::harness::*;

#[tokio::test]
async fn nearby_drivers_are_exact_nearest_first_with_filters() {
    let server = TestServer::start().await;
    let fleet = server.fleet("f").await;
    // A seeded scatter, checked against haversine brute force.
    let mut rng = dispatch_testkit::rng(7);
    let city = dispatch_testkit::city::CityShape::seoul();
    let mut points = Vec::new();
    let mut updates = Vec::new();
    for n in 0..500 {
        let p = city.point(&mut rng);
        let id = format!("f/d-{n:03}");
        let van = n % 5 == 0;
        updates.push(pb::DriverUpdate {
            driver_id: id.clone(),
            position: Some(pb::LatLng { lat: p.lat(), lng: p.lng() }),
            available: Some(n % 3 != 0),
            service_types: if van { vec![pb::ServiceType::Van.into()] } else { vec![] },
            ..Default::default()
        });
        points.push((id, p, n % 3 != 0, van));
    }
    fleet.batch(updates).await;
    wait_for_available(&server, points.iter().filter(|p| p.2).count() as u64).await;
    let centre = city.point(&mut rng);
    let request = pb::NearbyRequest {
        center: Some(pb::LatLng { lat: centre.lat(), lng: centre.lng() }),
        limit: 20,
        radius_m: 6_000.0,
        service_types: vec![pb::ServiceType::Van.into()],
        available_only: true,
        ..Default::default()
    };
    let got = server.admin().nearby_drivers(request).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
    assert_eq!(got.exact_within_m, 6_000.0, "500 drivers are far under the search's bound");
    let got = got.drivers;
    let mut want: Vec<_> = points
        .iter()
        .filter(|(_, _, available, van)| *available && *van)
        .map(|(id, p, ..)| (p.distance_m(centre), id.clone()))
        .filter(|(d, _)| *d <= 6_000.0)
        .collect();
    want.sort_by(|a, b| a.0.total_cmp(&b.0));
    want.truncate(20);
    assert!(!want.is_empty());
    assert_eq!(
        got.iter().map(|d| d.driver_id.clone()).collect::<Vec<_>>(),
        want.iter().map(|w| w.1.clone()).collect::<Vec<_>>()
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g.distance_m - w.0).abs() < 1e-6 && g.available);
    }
    // Defaults: limit 0 is 10, no radius, any service.
    let all = server
        .admin()
        .nearby_drivers(pb::NearbyRequest { center: Some(pickup()), ..Default::default() })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(all.drivers.len(), 10);
    assert_eq!(all.exact_within_m, dispatch_core::geo::MAX_DISTANCE_M);
    // No services is any service, vans among them; UNSPECIFIED in the list
    // is taxi, as in a ride request, so no van; the deprecated field reads
    // UNSPECIFIED as any and a service as that service.
    let is_van = |d: &pb::NearbyDriver| points.iter().any(|p| p.0 == d.driver_id && p.3);
    let count = async |request: pb::NearbyRequest| {
        let request = pb::NearbyRequest { center: Some(pickup()), limit: 500, ..request };
        let got = server.admin().nearby_drivers(request).await.unwrap_or_else(|e| panic!("{e}")).into_inner();
        (got.drivers.len(), got.drivers.iter().filter(|d| is_van(d)).count())
    };
    assert_eq!(count(pb::NearbyRequest::default()).await, (500, 100));
    let taxis = pb::NearbyRequest { service_types: vec![pb::ServiceType::Unspecified.into()], ..Default::default() };
    assert_eq!(count(taxis).await, (400, 0));
    let both = pb::NearbyRequest {
        service_types: vec![pb::ServiceType::Taxi.into(), pb::ServiceType::Van.into()],
        ..Default::default()
    };
    assert_eq!(count(both).await, (500, 100));
    #[allow(deprecated)]
    let legacy = pb::NearbyRequest { service_type: pb::ServiceType::Van.into(), ..Default::default() };
    assert_eq!(count(legacy).await, (100, 100));
    let too_many = pb::NearbyRequest { center: Some(pickup()), limit: 1_000_000, ..Default::default() };
    assert_eq!(
        server.admin().nearby_drivers(too_many).await.map(|_| ()).map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    );
}

#[tokio::test]
async fn stats_count_what_happened_and_time_the_matching() {
    let server = TestServer::start().await;
    let mut a = server.driver(hello("a", 100.0)).await;
    let _b = server.driver(auto_hello("b", 200.0)).await;
    let mut rider = server.request("r1", "q1").await;
    let offer = a.expect_offer().await;
    a.reply(&offer, false).await;
    rider.until(pb::TripStatus::DriverAssigned).await;
    a.ping(north(150.0)).await;
    let stats = server.stats_until("the ping to count", |s| s.location_updates >= 3).await;
    assert_eq!(stats.drivers_connected, 2);
    assert_eq!(stats.drivers_available, 1);
    assert_eq!(stats.drivers_on_trip, 1);
    assert_eq!(stats.trips_active, 1);
    assert_eq!((stats.offers_sent, stats.offers_declined, stats.offers_accepted), (2, 1, 1));
    assert!(stats.match_latency_p50_us > 0 && stats.match_latency_p99_us >= stats.match_latency_p50_us);
    assert!(stats.match_latency_p99_us < 1_000_000, "{}", stats.match_latency_p99_us);
    // The breakdown: one first offer through each stage, none longer than
    // the whole; and the trip log's group commits (at least the request's).
    let (offer_stages, commits) = stats.match_stages.split_at(stats.match_stages.len().saturating_sub(1));
    let stages: Vec<(&str, u64)> = offer_stages.iter().map(|s| (s.stage.as_str(), s.count)).collect();
    assert_eq!(stages, [("queue", 1), ("engine", 1), ("commit_wait", 1), ("commit", 1), ("deliver", 1)]);
    assert!(commits.iter().all(|c| c.stage == "log_commit" && c.count >= 1), "{commits:?}");
    for stage in offer_stages {
        assert!(stage.max_us <= stats.match_latency_p99_us + stats.match_latency_p99_us / 100 + 1, "{stage:?}");
    }
    wait_for_available(&server, 1).await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel());
    for service in [
        "dispatch.v1.DriverService",
        "dispatch.v1.RiderService",
        "dispatch.v1.FleetService",
        "dispatch.v1.AdminService",
    ] {
        let response = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|e| panic!("{service}: {e}"))
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service}");
    }
    // Both versions of reflection: tools built on v1alpha (grpc_requests,
    // older grpcui, evans, Postman) get UNIMPLEMENTED from a v1-only server.
    macro_rules! list_services {
        ($version:ident) => {{
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            };
            let mut reflection = ServerReflectionClient::new(server.channel());
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut responses = reflection
                .server_reflection_info(tokio_stream::once(request))
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", stringify!($version)))
                .into_inner();
            let Ok(Some(response)) = responses.message().await else { panic!("no reflection answer") };
            let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
                panic!("{response:?}")
            };
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }};
    }
    for names in [list_services!(v1), list_services!(v1alpha)] {
        for service in ["dispatch.v1.DriverService", "dispatch.v1.RiderService", "grpc.health.v1.Health"] {
            assert!(names.iter().any(|n| n == service), "{service} not in {names:?}");
        }
    }
}
