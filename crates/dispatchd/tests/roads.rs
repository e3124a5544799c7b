//! `dispatchd --road-network` as a user runs it, on the Helsinki extract:
//! a ride where the driver nearest by the straight line is not the
//! nearest by road goes to the one nearest by road, with the road's ETA,
//! and a restart reads the prepared graph back from the data directory.

mod common;

use std::time::Duration;

use dispatch_core::geo::LatLng;
use dispatch_proto::pb::{self, driver_event::Kind as Event, driver_message::Kind as DriverMsg};
use dispatch_road::{DEFAULT_SNAP_M, RoadNetwork};
use rand::Rng;

/// A pickup and two drivers on Helsinki's roads: the first nearer by the
/// straight line, the second by road, by at least a minute.
fn a_case_where_the_crow_is_wrong(network: &RoadNetwork) -> (LatLng, LatLng, LatLng) {
    cases_where_the_crow_is_wrong(network)
        .next()
        .unwrap_or_else(|| panic!("no pickup in Helsinki where the straight line misleads"))
}

/// Every such case, seeded, in turn.
fn cases_where_the_crow_is_wrong(network: &RoadNetwork) -> impl Iterator<Item = (LatLng, LatLng, LatLng)> + '_ {
    let nodes = dispatch_road::Graph::of(
        &dispatch_road::osm::Osm::read(&dispatch_testkit::roads::helsinki_extract()).unwrap_or_else(|e| panic!("{e}")),
    );
    let mut rng = dispatch_testkit::rng(1);
    (0..100_000).filter_map(move |_| {
        let mut pick = || nodes.coords[rng.random_range(0..nodes.coords.len())];
        let (pickup, crow_best, road_best) = (pick(), pick(), pick());
        let (a, b) = (network.leg(crow_best, pickup)?, network.leg(road_best, pickup)?);
        (crow_best.distance_m(pickup) < 0.5 * road_best.distance_m(pickup)
            && road_best.distance_m(pickup) < 1_500.0
            && a.seconds > b.seconds + 60.0)
            .then_some((pickup, crow_best, road_best))
    })
}

fn point(p: LatLng) -> pb::LatLng {
    pb::LatLng { lat: p.lat(), lng: p.lng() }
}

async fn next(events: &mut tonic::Streaming<pb::DriverEvent>) -> Option<Event> {
    let event = tokio::time::timeout(Duration::from_secs(10), events.message()).await;
    event.unwrap_or_else(|_| panic!("no event")).unwrap_or_else(|e| panic!("{e}")).and_then(|e| e.kind)
}

/// Drivers `crow` at `crow_best` and `road` at `road_best`, a ride at
/// `pickup`: the one offered it must be `road`, who accepts; the trip as
/// its rider sees it assigned.
async fn ride_between_two_drivers(addr: &str, pickup: LatLng, crow_best: LatLng, road_best: LatLng) -> pb::Trip {
    let channel = common::channel(addr).await;
    let mut drivers = Vec::new();
    for (id, at) in [("crow", crow_best), ("road", road_best)] {
        let hello =
            pb::Hello { driver_id: id.into(), position: Some(point(at)), available: true, ..Default::default() };
        let (tx, mut events) = common::open_driver(channel.clone(), hello).await;
        assert!(matches!(next(&mut events).await, Some(Event::SessionStarted(_))));
        drivers.push((tx, events));
    }
    let request = pb::RideRequest {
        rider_id: "r1".into(),
        request_id: "q1".into(),
        pickup: Some(point(pickup)),
        ..Default::default()
    };
    let mut rider = pb::rider_service_client::RiderServiceClient::new(channel)
        .request_ride(request)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    let (tx, events) = &mut drivers[1];
    let Some(Event::Offer(offer)) = next(events).await else { panic!("the driver nearest by road gets no offer") };
    let reply = pb::OfferReply { offer_id: offer.offer_id, accept: true };
    tx.send(pb::DriverMessage { kind: Some(DriverMsg::OfferReply(reply)) }).await.unwrap_or_else(|e| panic!("{e}"));
    let trip = loop {
        let trip = tokio::time::timeout(Duration::from_secs(10), rider.message()).await;
        let trip = trip.unwrap_or_else(|_| panic!("no trip update")).unwrap_or_else(|e| panic!("{e}"));
        let trip = trip.unwrap_or_else(|| panic!("the rider's stream ended"));
        if trip.status() == pb::TripStatus::DriverAssigned {
            break trip;
        }
    };
    assert_eq!(trip.driver_id, "road");
    trip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ride_in_helsinki_goes_to_the_driver_nearest_by_road_with_the_roads_eta() {
    let extract = dispatch_testkit::roads::helsinki_extract();
    let (network, _) = dispatch_road::load(&extract, None, DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"));
    let (pickup, crow_best, road_best) = a_case_where_the_crow_is_wrong(&network);
    let leg = network.leg(road_best, pickup).unwrap_or_else(|| panic!("a drive"));

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = extract.to_string_lossy().into_owned();
    let args = ["--road-network", path.as_str()];
    let (child, addr) = common::start_in(dir.path(), &args, &[]);
    let running = common::Running(Some(child));
    let trip = ride_between_two_drivers(&addr, pickup, crow_best, road_best).await;
    assert!((trip.pickup_eta_s - leg.seconds).abs() < 0.01, "{trip:?} against {leg:?}");
    assert!((trip.pickup_distance_m - leg.metres).abs() < 0.01, "{trip:?} against {leg:?}");
    running.stop();

    // The prepared graph is kept in the data directory and read back, not
    // prepared again, at the next start.
    let cached = |dir: &std::path::Path| {
        let entries = std::fs::read_dir(dir.join("roads")).unwrap_or_else(|e| panic!("{e}"));
        let files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");
        std::fs::metadata(&files[0]).and_then(|m| m.modified()).unwrap_or_else(|e| panic!("{e}"))
    };
    let before = cached(dir.path());
    let (child, _) = common::start_in(dir.path(), &args, &[]);
    common::Running(Some(child)).stop();
    assert_eq!(cached(dir.path()), before);
}

/// `--router` with a real `osrm-routed` serving Helsinki: the ride goes to
/// the driver OSRM says is nearer by road, with OSRM's ETA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_osrm_router_the_ride_goes_to_the_driver_osrm_says_is_nearer() {
    let extract = dispatch_testkit::roads::helsinki_extract();
    let routed = dispatch_testkit::osrm::Routed::start(&extract);
    let osrm = dispatch_osrm::Osrm::new(&routed.spec(), Duration::from_secs(5), DEFAULT_SNAP_M, dispatch_osrm::TOP_KMH)
        .unwrap_or_else(|e| panic!("{e}"));
    let (network, _) = dispatch_road::load(&extract, None, DEFAULT_SNAP_M).unwrap_or_else(|e| panic!("{e}"));
    // A case where OSRM, too, says the straight line misleads.
    let (pickup, crow_best, road_best, leg) = cases_where_the_crow_is_wrong(&network)
        .find_map(|(pickup, crow_best, road_best)| {
            let legs = osrm.table(&[crow_best, road_best], pickup).ok()?;
            let (a, b) = (legs[0]?, legs[1]?);
            (a.seconds > b.seconds + 30.0).then_some((pickup, crow_best, road_best, b))
        })
        .unwrap_or_else(|| panic!("no case where OSRM says the straight line misleads"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let spec = routed.spec();
    let (child, addr) = common::start_in(dir.path(), &["--router", spec.as_str()], &[]);
    let running = common::Running(Some(child));
    let trip = ride_between_two_drivers(&addr, pickup, crow_best, road_best).await;
    assert!((trip.pickup_eta_s - leg.seconds).abs() < 0.01, "{trip:?} against {leg:?}");
    running.stop();
}

#[test]
fn a_router_that_is_not_there_or_not_named_right_stops_the_start() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let nobody = format!("osrm:http://127.0.0.1:{port}");
    for (router, says) in [(nobody.as_str(), "does not answer"), ("http://127.0.0.1:5000", "expected osrm:http://")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatchd"))
            .args(["--listen", "127.0.0.1:0", "--http-listen", "off", "--router-timeout", "1s", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--router", router])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!out.status.success());
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains(says), "{log}");
    }
}

#[test]
fn a_road_network_that_will_not_load_stops_the_start_with_its_reason() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("city.osm.pbf");
    std::fs::write(&bad, b"not a pbf").unwrap_or_else(|e| panic!("{e}"));
    for extra in [
        vec!["--road-network", bad.to_str().unwrap_or_default()],
        vec!["--road-network", bad.to_str().unwrap_or_default(), "--shards", "2"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dispatchd"))
            .args(["--listen", "127.0.0.1:0", "--http-listen", "off", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(&extra)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!out.status.success());
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(log.contains("city.osm.pbf") || log.contains("--shards"), "{log}");
    }
}
