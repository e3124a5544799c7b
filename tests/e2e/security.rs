//! Only drivers drive and only riders ride: every role tries every other
//! role's actions, with forged, expired and missing tokens, over real gRPC.

use std::time::Duration;

use dispatch_auth::{Keys, Role};
use dispatch_proto::pb::{self, driver_event::Kind as Event, driver_message::Kind as DriverMsg};
use dispatch_server::{RateLimits, ServerConfig};
use tonic::Code;

use crate::harness::*;

const SECRET: &[u8] = b"e2e-test-secret-0123456789abcdef";

fn keys() -> Keys {
    Keys::new(SECRET).unwrap_or_else(|e| panic!("{e}"))
}

fn token(role: Role, sub: &str) -> String {
    keys().mint(role, sub, Duration::from_secs(3_600)).unwrap_or_else(|e| panic!("{e}"))
}

async fn secured() -> TestServer {
    TestServer::with(ServerConfig { auth: Some(keys()), ..ServerConfig::default() }).await
}

/// A driver session as `id` with its own token, past `session_started`.
async fn driver(server: &TestServer, id: &str, metres: f64, auto: bool) -> DriverConn {
    let hello = if auto { auto_hello(id, metres) } else { hello(id, metres) };
    let mut conn = server
        .open_driver_as(Some(&token(Role::Driver, id)), DriverMsg::Hello(hello))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    match conn.next().await {
        Event::SessionStarted(_) => conn,
        other => panic!("{other:?}"),
    }
}

async fn ride(server: &TestServer, rider: &str, key: &str) -> RiderConn {
    server.request_as(Some(&token(Role::Rider, rider)), rider, key).await.unwrap_or_else(|e| panic!("{e}"))
}

async fn get_trip(server: &TestServer, token: Option<&str>, trip_id: &str) -> Result<pb::Trip, tonic::Status> {
    let request = authed(pb::GetTripRequest { trip_id: trip_id.into() }, token);
    server.riders().get_trip(request).await.map(|r| r.into_inner())
}

async fn cancel(server: &TestServer, token: Option<&str>, trip_id: &str) -> Result<pb::Trip, tonic::Status> {
    let request = authed(pb::CancelRideRequest { trip_id: trip_id.into(), reason: String::new() }, token);
    server.riders().cancel_ride(request).await.map(|r| r.into_inner())
}

async fn stats(server: &TestServer, token: Option<&str>) -> Result<pb::Stats, tonic::Status> {
    server.admin().get_stats(authed(pb::GetStatsRequest {}, token)).await.map(|r| r.into_inner())
}

async fn nearby(server: &TestServer, token: Option<&str>) -> Result<pb::NearbyResponse, tonic::Status> {
    let request = pb::NearbyRequest { center: Some(pickup()), limit: 5, ..Default::default() };
    server.admin().nearby_drivers(authed(request, token)).await.map(|r| r.into_inner())
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn missing_malformed_forged_and_expired_tokens_are_unauthenticated() {
    let server = secured().await;
    let forged = Keys::new(b"not-the-server-secret-0123456789").unwrap_or_else(|e| panic!("{e}"));
    let forged = forged.mint(Role::Admin, "mallory", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let minted_at = unix_ms();
    let expired = keys().mint(Role::Admin, "ops", Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
    // Expiry is in whole seconds: a second after minting, it has passed.
    wait_until_past(minted_at + 1_000).await;
    for bad in [None, Some("garbage"), Some("a.b.c"), Some(forged.as_str()), Some(expired.as_str())] {
        let hello = DriverMsg::Hello(hello("d1", 100.0));
        assert_eq!(code(server.open_driver_as(bad, hello).await), Code::Unauthenticated, "driver {bad:?}");
        assert_eq!(code(server.open_fleet_as(bad, "f").await), Code::Unauthenticated, "fleet {bad:?}");
        assert_eq!(code(server.request_as(bad, "r1", "q1").await), Code::Unauthenticated, "ride {bad:?}");
        assert_eq!(code(get_trip(&server, bad, "t-1").await), Code::Unauthenticated);
        assert_eq!(code(cancel(&server, bad, "t-1").await), Code::Unauthenticated);
        assert_eq!(code(stats(&server, bad).await), Code::Unauthenticated);
        assert_eq!(code(nearby(&server, bad).await), Code::Unauthenticated);
    }
    // The error never echoes the token.
    let status = server.request_as(Some(&forged), "r1", "q1").await.err().unwrap_or_else(|| panic!("accepted"));
    assert!(!status.message().contains(&forged), "{}", status.message());
}

#[tokio::test]
async fn each_role_may_use_only_its_own_service() {
    let server = secured().await;
    for role in [Role::Rider, Role::Fleet, Role::Admin] {
        let t = token(role, "d1");
        let hello = DriverMsg::Hello(hello("d1", 100.0));
        assert_eq!(code(server.open_driver_as(Some(&t), hello).await), Code::PermissionDenied, "{role} as driver");
    }
    for role in [Role::Rider, Role::Driver, Role::Admin] {
        let t = token(role, "f");
        assert_eq!(code(server.open_fleet_as(Some(&t), "f").await), Code::PermissionDenied, "{role} as fleet");
    }
    for role in [Role::Driver, Role::Fleet, Role::Admin] {
        let t = token(role, "r1");
        assert_eq!(code(server.request_as(Some(&t), "r1", "q1").await), Code::PermissionDenied, "{role} riding");
    }
    for role in [Role::Driver, Role::Rider, Role::Fleet] {
        let t = token(role, "ops");
        assert_eq!(code(stats(&server, Some(&t)).await), Code::PermissionDenied, "{role} stats");
        assert_eq!(code(nearby(&server, Some(&t)).await), Code::PermissionDenied, "{role} nearby");
    }
    let admin = token(Role::Admin, "ops");
    assert_eq!(code(stats(&server, Some(&admin)).await), Code::Ok);
    assert_eq!(code(nearby(&server, Some(&admin)).await), Code::Ok);
    assert_eq!(code(cancel(&server, Some(&token(Role::Fleet, "f")), "t-1").await), Code::PermissionDenied);
}

#[tokio::test]
async fn a_token_acts_only_as_its_own_subject() {
    let server = secured().await;
    let mut as_other = server
        .open_driver_as(Some(&token(Role::Driver, "d1")), DriverMsg::Hello(hello("d2", 100.0)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(as_other.expect_end().await.code(), Code::PermissionDenied);
    let mut other_fleet =
        server.open_fleet_as(Some(&token(Role::Fleet, "fleet-a")), "fleet-b").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(other_fleet.expect_end().await.code(), Code::PermissionDenied);
    let t = token(Role::Rider, "r1");
    assert_eq!(code(server.request_as(Some(&t), "r2", "q1").await), Code::PermissionDenied);
}

#[tokio::test]
async fn a_driver_cannot_answer_another_drivers_offer_or_move_their_trip() {
    let server = secured().await;
    let mut near = driver(&server, "near", 100.0, false).await;
    let mut far = driver(&server, "far", 900.0, false).await;
    let mut rider = ride(&server, "r1", "q1").await;
    let offer = near.expect_offer().await;
    far.reply(&offer, true).await;
    far.expect_rejected(Code::NotFound).await;
    near.reply(&offer, true).await;
    rider.until(pb::TripStatus::DriverAssigned).await;
    far.progress(&rider.trip_id, pb::TripStatus::DriverArrived).await;
    far.expect_rejected(Code::FailedPrecondition).await;
    assert_eq!(
        get_trip(&server, Some(&token(Role::Rider, "r1")), &rider.trip_id).await.map(|t| t.status()).ok(),
        Some(pb::TripStatus::DriverAssigned)
    );
    // The assigned driver may read the trip; another driver may not.
    assert_eq!(code(get_trip(&server, Some(&token(Role::Driver, "near")), &rider.trip_id).await), Code::Ok);
    assert_eq!(code(get_trip(&server, Some(&token(Role::Driver, "far")), &rider.trip_id).await), Code::NotFound);
}

#[tokio::test]
async fn a_fleet_reaches_only_drivers_in_its_own_namespace() {
    let server = secured().await;
    let mut a =
        server.open_fleet_as(Some(&token(Role::Fleet, "fleet-a")), "fleet-a").await.unwrap_or_else(|e| panic!("{e}"));
    let mut b =
        server.open_fleet_as(Some(&token(Role::Fleet, "fleet-b")), "fleet-b").await.unwrap_or_else(|e| panic!("{e}"));
    for conn in [&mut a, &mut b] {
        assert!(matches!(conn.next().await, Event::SessionStarted(_)));
    }
    // Squatting: fleet B claims an app driver's id before the app connects,
    // and ids in fleet A's namespace, held (a-1) or not (a-2).
    a.batch(vec![pb::DriverUpdate { available: Some(false), ..update("fleet-a/a-1", 100.0) }]).await;
    b.batch(vec![update("app-1", 50.0), update("fleet-a/a-1", 50.0), update("fleet-a/a-2", 50.0)]).await;
    for wanted in ["app-1", "fleet-a/a-1", "fleet-a/a-2"] {
        match b.next().await {
            Event::Rejected(r) => assert_eq!((r.code, r.driver_id.as_str()), (Code::PermissionDenied as i32, wanted)),
            other => panic!("{other:?}"),
        }
    }
    // The real driver is not locked out, and an app cannot take a fleet's
    // name either.
    let app = driver(&server, "app-1", 200.0, true).await;
    let squatter = DriverMsg::Hello(hello("fleet-b/x", 100.0));
    let mut squatter = server
        .open_driver_as(Some(&token(Role::Driver, "fleet-b/x")), squatter)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(squatter.expect_end().await.code(), Code::PermissionDenied);
    // The ride goes to the app's driver, whom fleet B still cannot touch.
    let mut rider = ride(&server, "r1", "q1").await;
    let trip = rider.until(pb::TripStatus::DriverAssigned).await;
    let held = trip.driver_id.clone();
    assert_eq!(held, "app-1");
    drop(app);
    // Replies and progress for someone else's trip are refused too.
    let progress = pb::FleetTripProgress {
        driver_id: held.clone(),
        trip_id: rider.trip_id.clone(),
        status: pb::TripStatus::DriverArrived.into(),
    };
    b.send(pb::fleet_message::Kind::TripProgress(progress)).await;
    match b.next().await {
        Event::Rejected(r) => assert_eq!(r.code, Code::NotFound as i32, "{r:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_rider_sees_and_cancels_only_their_own_trips() {
    let server = secured().await;
    let mine = ride(&server, "r1", "q1").await;
    let theirs = token(Role::Rider, "r2");
    assert_eq!(code(get_trip(&server, Some(&theirs), &mine.trip_id).await), Code::NotFound);
    assert_eq!(code(cancel(&server, Some(&theirs), &mine.trip_id).await), Code::NotFound);
    // Same answer as a trip that does not exist: ids cannot be probed.
    assert_eq!(code(get_trip(&server, Some(&theirs), "t-999999").await), Code::NotFound);
    let own = token(Role::Rider, "r1");
    assert_eq!(
        get_trip(&server, Some(&own), &mine.trip_id).await.map(|t| t.status()).ok(),
        Some(pb::TripStatus::Searching)
    );
    // An operator may read and cancel any trip.
    let admin = token(Role::Admin, "ops");
    assert_eq!(code(get_trip(&server, Some(&admin), &mine.trip_id).await), Code::Ok);
    assert_eq!(
        cancel(&server, Some(&admin), &mine.trip_id).await.map(|t| t.status()).ok(),
        Some(pb::TripStatus::Cancelled)
    );
}

#[tokio::test]
async fn an_operator_ends_a_ride_in_progress_whose_driver_never_came_back() {
    let server = secured().await;
    let mut d = driver(&server, "gone", 100.0, true).await;
    let mut rider = ride(&server, "r1", "q1").await;
    let trip = rider.until(pb::TripStatus::DriverAssigned).await;
    d.expect_trip(pb::TripStatus::DriverAssigned).await;
    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress] {
        d.progress(&trip.trip_id, status).await;
        d.expect_trip(status).await;
    }
    rider.until(pb::TripStatus::InProgress).await;
    d.hang_up();
    // The rider may not end a ride in progress; an operator may.
    let own = token(Role::Rider, "r1");
    assert_eq!(code(cancel(&server, Some(&own), &trip.trip_id).await), Code::FailedPrecondition);
    let admin = token(Role::Admin, "ops");
    let ended = cancel(&server, Some(&admin), &trip.trip_id).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ended.status(), pb::TripStatus::Cancelled);
    rider.until(pb::TripStatus::Cancelled).await;
    // Nothing is held for the driver any more: it can start over.
    let mut back = driver(&server, "gone", 100.0, false).await;
    assert!(back.next_before_barrier().await.is_none());
}

#[tokio::test]
async fn an_expired_token_ends_open_streams() {
    let server = secured().await;
    let short = |role, sub| keys().mint(role, sub, Duration::from_secs(1)).unwrap_or_else(|e| panic!("{e}"));
    let mut d = server
        .open_driver_as(Some(&short(Role::Driver, "d1")), DriverMsg::Hello(hello("d1", 100.0)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut rider =
        server.request_as(Some(&short(Role::Rider, "r1")), "r1", "q1").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.expect_end().await.code(), Code::Unauthenticated);
    assert_eq!(rider.end_status().await.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn rate_limits_refuse_the_excess_of_one_identity_only() {
    let limits = RateLimits {
        driver_updates_per_s: 5,
        rider_requests_per_min: 3,
        fleet_batches_per_s: 2,
        ..RateLimits::default()
    };
    let server =
        TestServer::with(ServerConfig { auth: Some(keys()), rate_limits: limits, ..ServerConfig::default() }).await;
    let mut noisy = driver(&server, "noisy", 100.0, false).await;
    let mut calm = driver(&server, "calm", 200.0, false).await;
    for _ in 0..20 {
        noisy.ping(north(100.0)).await;
    }
    let r = noisy.expect_rejected(Code::ResourceExhausted).await;
    assert!(r.message.contains("rate limit"), "{}", r.message);
    calm.ping(north(150.0)).await;
    assert!(calm.next_before_barrier().await.is_none(), "the calm driver was limited too");

    let t = token(Role::Rider, "r1");
    for n in 0..3 {
        server.request_as(Some(&t), "r1", &format!("q{n}")).await.unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(code(server.request_as(Some(&t), "r1", "q9").await), Code::ResourceExhausted);
    assert_eq!(code(server.request_as(Some(&token(Role::Rider, "r2")), "r2", "q1").await), Code::Ok);

    let mut fleet = server.open_fleet_as(Some(&token(Role::Fleet, "f")), "f").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(fleet.next().await, Event::SessionStarted(_)));
    for i in 0..6 {
        fleet.batch(vec![pb::DriverUpdate { available: Some(false), ..update(&format!("f/{i}"), 10.0) }]).await;
    }
    match fleet.next().await {
        Event::Rejected(r) => assert_eq!(r.code, Code::ResourceExhausted as i32),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reconnecting_does_not_refill_a_bucket_and_fleet_replies_are_limited_too() {
    let limits = RateLimits { driver_updates_per_s: 1, fleet_messages_per_s: 2, ..RateLimits::default() };
    let server =
        TestServer::with(ServerConfig { auth: Some(keys()), rate_limits: limits, ..ServerConfig::default() }).await;
    // One token a second: spend it, reconnect at once, and the next ping is
    // still refused. A second can pass on a stalled machine before the
    // reconnect, which refills the bucket honestly: then try again.
    let mut refused_after_reconnect = false;
    for _ in 0..5 {
        let mut first = driver(&server, "hopper", 100.0, false).await;
        first.ping(north(100.0)).await;
        first.ping(north(101.0)).await;
        let spent = std::time::Instant::now();
        first.expect_rejected(Code::ResourceExhausted).await;
        let mut second = driver(&server, "hopper", 100.0, false).await;
        second.ping(north(102.0)).await;
        let event = second.next_before_barrier().await;
        if matches!(&event, Some(Event::Rejected(r)) if r.code == Code::ResourceExhausted as i32) {
            refused_after_reconnect = true;
            break;
        }
        assert!(spent.elapsed() >= Duration::from_secs(1), "a reconnect refilled the bucket: {event:?}");
    }
    assert!(refused_after_reconnect);

    // Offer replies from a fleet draw on a budget of their own.
    let mut fleet = server.open_fleet_as(Some(&token(Role::Fleet, "f")), "f").await.unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(fleet.next().await, Event::SessionStarted(_)));
    for n in 0..3 {
        let reply = pb::OfferReply { offer_id: format!("o-{n}"), accept: true };
        fleet.send(pb::fleet_message::Kind::OfferReply(reply)).await;
    }
    let mut codes = Vec::new();
    for _ in 0..3 {
        match fleet.next().await {
            Event::Rejected(r) => codes.push(r.code),
            other => panic!("{other:?}"),
        }
    }
    codes.sort_unstable();
    assert_eq!(codes, [Code::NotFound as i32, Code::NotFound as i32, Code::ResourceExhausted as i32]);
}

#[tokio::test]
async fn each_party_sees_the_least_it_needs() {
    let server = secured().await;
    let mut taxi_driver = driver(&server, "taxi-d", 100.0, false).await;
    let premium = pb::Hello { service_types: vec![pb::ServiceType::Premium.into()], ..hello("prem-d", 100.0) };
    let mut premium_driver = server
        .open_driver_as(Some(&token(Role::Driver, "prem-d")), DriverMsg::Hello(premium))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(premium_driver.next().await, Event::SessionStarted(_)));
    // A taxi offer shows the dropoff.
    let _taxi = ride(&server, "r1", "q1").await;
    let offer = taxi_driver.expect_offer().await;
    assert!(offer.trip.as_ref().is_some_and(|t| t.dropoff.is_some()), "{offer:?}");
    // No offer, and no trip a driver sees, says who the rider is.
    assert!(offer.trip.as_ref().is_some_and(|t| t.rider_id.is_empty()), "{offer:?}");
    taxi_driver.reply(&offer, true).await;
    let assigned = taxi_driver.expect_trip(pb::TripStatus::DriverAssigned).await;
    assert!(assigned.rider_id.is_empty(), "{assigned:?}");
    // A premium offer does not, until the driver has accepted.
    let request = pb::RideRequest {
        rider_id: "r2".into(),
        request_id: "q1".into(),
        pickup: Some(pickup()),
        dropoff: Some(north(3_000.0)),
        service_type: pb::ServiceType::Premium.into(),
        ..Default::default()
    };
    let stream = server
        .riders()
        .request_ride(authed(request, Some(&token(Role::Rider, "r2"))))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let mut rider = RiderConn { stream, trip_id: String::new(), requested_at_ms: 0 };
    rider.trip_id = rider.next().await.trip_id;
    let offer = premium_driver.expect_offer().await;
    let offered = offer.trip.clone().unwrap_or_else(|| panic!("no trip in the offer"));
    assert!(offered.dropoff.is_none() && offered.pickup.is_some(), "{offered:?}");
    premium_driver.reply(&offer, true).await;
    let assigned = premium_driver.expect_trip(pb::TripStatus::DriverAssigned).await;
    assert!(assigned.dropoff.is_some());
    // The rider sees the driver's position while the driver is theirs...
    let seen = rider.until(pb::TripStatus::DriverAssigned).await;
    assert!(seen.driver_position.is_some());
    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress, pb::TripStatus::Completed] {
        premium_driver.progress(&rider.trip_id, status).await;
        premium_driver.expect_trip(status).await;
    }
    // ...and not after the ride.
    let done = rider.until(pb::TripStatus::Completed).await;
    assert!(done.driver_position.is_none(), "{done:?}");
    let later =
        get_trip(&server, Some(&token(Role::Rider, "r2")), &rider.trip_id).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(later.driver_position.is_none());
}

#[tokio::test]
async fn a_previous_key_is_accepted_during_its_rotation_grace() {
    let old_secret = b"the-previous-secret-0123456789ab";
    let old = Keys::new(old_secret).unwrap_or_else(|e| panic!("{e}"));
    let old_token = old.mint(Role::Admin, "ops", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let rotating = keys()
        .with_previous(old_secret, std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let server = TestServer::with(ServerConfig { auth: Some(rotating), ..ServerConfig::default() }).await;
    assert_eq!(code(stats(&server, Some(&old_token)).await), Code::Ok);
    assert_eq!(code(stats(&server, Some(&token(Role::Admin, "ops"))).await), Code::Ok);
    let over = keys().with_previous(old_secret, std::time::SystemTime::now()).unwrap_or_else(|e| panic!("{e}"));
    let server = TestServer::with(ServerConfig { auth: Some(over), ..ServerConfig::default() }).await;
    assert_eq!(code(stats(&server, Some(&old_token)).await), Code::Unauthenticated);
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_certificate_and_no_one_in_plaintext() {
    let (tls, cert_pem) = localhost_tls();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut config = ServerConfig { auth: Some(keys()), tls: Some(tls), ..ServerConfig::default() };
    config.trip_log = Some(dispatch_server::TripLogConfig::new(dir.path()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(dispatch_server::run(listener, config, async {
        let _ = stopped.await;
    }));

    let trust = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert_pem.clone()))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .and_then(|e| e.tls_config(trust))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("TLS connect: {e}"));
    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel);
    let stats = admin.get_stats(authed(pb::GetStatsRequest {}, Some(&token(Role::Admin, "ops")))).await;
    assert!(stats.is_ok(), "{stats:?}");

    // A plaintext client gets nowhere.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .timeout(Duration::from_secs(2));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(channel) => pb::admin_service_client::AdminServiceClient::new(channel)
            .get_stats(authed(pb::GetStatsRequest {}, Some(&token(Role::Admin, "ops"))))
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext client was served");
    let _ = stop.send(());
    let _ = within("server stop", server).await;
}

#[tokio::test]
async fn reads_of_trips_not_open_are_limited_per_caller_and_reads_of_open_ones_are_not() {
    // Each read of a trip not open (ended, or a made-up id) is a command to
    // the engine: a flood of them must not fill the queue rides use.
    let limits = RateLimits { trip_reads_per_s: 1, ..RateLimits::default() };
    let server =
        TestServer::with(ServerConfig { auth: Some(keys()), rate_limits: limits, ..ServerConfig::default() }).await;
    let prober = token(Role::Rider, "prober");
    let rider = server.request_as(Some(&prober), "prober", "q1").await.unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..10 {
        assert_eq!(code(get_trip(&server, Some(&prober), &rider.trip_id).await), Code::Ok, "an open trip's read");
    }
    let mut answers = Vec::new();
    for n in 0..10 {
        let answer = code(get_trip(&server, Some(&prober), &format!("t-{}", 900_000 + n)).await);
        answers.push(answer);
        if answer == Code::ResourceExhausted {
            break;
        }
    }
    assert_eq!(answers.first(), Some(&Code::NotFound), "{answers:?}");
    assert_eq!(answers.last(), Some(&Code::ResourceExhausted), "a flood of made-up ids was never limited: {answers:?}");
    // Another caller's budget is untouched, and operators are not limited.
    assert_eq!(code(get_trip(&server, Some(&token(Role::Rider, "calm")), "t-900000").await), Code::NotFound);
    let admin = token(Role::Admin, "ops");
    for n in 0..10 {
        assert_eq!(code(get_trip(&server, Some(&admin), &format!("t-{}", 900_000 + n)).await), Code::NotFound);
    }
}
