//! The HTTP side of a real `dispatchd`: Prometheus metrics that move with
//! traffic, who may read them, and the live map in a real browser.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use dispatch_proto::pb::{self, driver_event::Kind as Event, driver_message::Kind as DriverMsg};
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

const SEOUL: (f64, f64) = (37.5665, 126.9780);

fn at(lat: f64, lng: f64) -> Option<pb::LatLng> {
    Some(pb::LatLng { lat, lng })
}

async fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn next_event(events: &mut tonic::Streaming<pb::DriverEvent>) -> Event {
    let event = tokio::time::timeout(Duration::from_secs(10), events.message()).await;
    match event {
        Ok(Ok(Some(pb::DriverEvent { kind: Some(kind) }))) => kind,
        other => panic!("no driver event: {other:?}"),
    }
}

async fn send(tx: &mpsc::Sender<pb::DriverMessage>, kind: DriverMsg) {
    tx.send(pb::DriverMessage { kind: Some(kind) }).await.unwrap_or_else(|e| panic!("{e}"));
}

/// A driver at `(lat, lng)`, on duty; its session started.
async fn driver(
    addr: &str,
    id: &str,
    lat: f64,
    lng: f64,
) -> (mpsc::Sender<pb::DriverMessage>, tonic::Streaming<pb::DriverEvent>) {
    let hello = pb::Hello { driver_id: id.into(), position: at(lat, lng), available: true, ..Default::default() };
    let (tx, mut events) = common::open_driver(channel(addr).await, hello).await;
    assert!(matches!(next_event(&mut events).await, Event::SessionStarted(_)));
    (tx, events)
}

/// The driver on `tx`/`events` accepts the offer it gets; answers its
/// trip's id once `rider` sees the trip assigned.
async fn accept_the_offer(
    tx: &mpsc::Sender<pb::DriverMessage>,
    events: &mut tonic::Streaming<pb::DriverEvent>,
    rider: &mut tonic::Streaming<pb::Trip>,
) -> String {
    let offer = match next_event(events).await {
        Event::Offer(offer) => offer,
        other => panic!("expected an offer, got {other:?}"),
    };
    let trip_id = offer.trip.as_ref().map(|t| t.trip_id.clone()).unwrap_or_default();
    send(tx, DriverMsg::OfferReply(pb::OfferReply { offer_id: offer.offer_id.clone(), accept: true })).await;
    while let Ok(Ok(Some(trip))) = tokio::time::timeout(Duration::from_secs(10), rider.message()).await {
        if trip.status == pb::TripStatus::DriverAssigned as i32 {
            break;
        }
    }
    trip_id
}

async fn request(addr: &str, rider: &str, pickup: (f64, f64), dropoff: (f64, f64)) -> tonic::Streaming<pb::Trip> {
    let mut riders = pb::rider_service_client::RiderServiceClient::new(channel(addr).await);
    let request = pb::RideRequest {
        rider_id: rider.into(),
        request_id: format!("{rider}-1"),
        pickup: at(pickup.0, pickup.1),
        dropoff: at(dropoff.0, dropoff.1),
        ..Default::default()
    };
    riders.request_ride(request).await.unwrap_or_else(|e| panic!("{e}")).into_inner()
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut request = client.get(url).timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// The samples of a Prometheus text page: `name{labels}` to value.
fn samples(page: &str) -> HashMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sample(page: &HashMap<String, f64>, key: &str) -> f64 {
    *page.get(key).unwrap_or_else(|| panic!("no {key} in {:?}", page.keys().collect::<Vec<_>>()))
}

/// Scrapes until `ready` holds (the engine's counts are read at scrape
/// time, but a change made through one stream may be a round behind).
async fn scrape_until(http: &str, ready: impl Fn(&HashMap<String, f64>) -> bool) -> (String, HashMap<String, f64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = get(&format!("http://{http}/metrics"), None).await;
        assert_eq!(status, 200, "{page}");
        let parsed = samples(&page);
        if ready(&parsed) {
            return (page, parsed);
        }
        assert!(tokio::time::Instant::now() < deadline, "metrics never got there:\n{page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_named_described_and_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (child, addr, http) = common::start_with_http(dir.path(), &[], &[]);
    let child = common::Running(Some(child));
    let (status, body) = get(&format!("http://{http}/healthz"), None).await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (_, before) = scrape_until(&http, |_| true).await;
    assert_eq!(sample(&before, "dispatch_ride_requests_total"), 0.0);

    // One ride, start to end, and one refused message.
    let (tx, mut events) = driver(&addr, "D1", SEOUL.0 + 0.003, SEOUL.1).await;
    send(&tx, DriverMsg::Location(pb::LocationPing { position: at(SEOUL.0 + 0.002, SEOUL.1), ..Default::default() }))
        .await;
    let mut rider = request(&addr, "r1", SEOUL, (37.55, 127.0)).await;
    let offer = match next_event(&mut events).await {
        Event::Offer(offer) => offer,
        other => panic!("expected an offer, got {other:?}"),
    };
    send(&tx, DriverMsg::OfferReply(pb::OfferReply { offer_id: "o-999999".into(), accept: true })).await;
    assert!(matches!(next_event(&mut events).await, Event::Rejected(r) if r.code == tonic::Code::NotFound as i32));
    send(&tx, DriverMsg::OfferReply(pb::OfferReply { offer_id: offer.offer_id, accept: true })).await;
    let trip_id = offer.trip.map(|t| t.trip_id).unwrap_or_default();
    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress, pb::TripStatus::Completed] {
        let progress = pb::TripProgress { trip_id: trip_id.clone(), status: status as i32 };
        send(&tx, DriverMsg::TripProgress(progress)).await;
    }
    while let Ok(Ok(Some(trip))) = tokio::time::timeout(Duration::from_secs(10), rider.message()).await {
        if trip.status == pb::TripStatus::Completed as i32 {
            break;
        }
    }

    let (page, after) = scrape_until(&http, |m| {
        m.get("dispatch_trips_ended_total{status=\"completed\"}") == Some(&1.0)
            && m.contains_key("dispatch_request_to_assigned_seconds_count")
    })
    .await;
    for (key, want) in [
        ("dispatch_ride_requests_total", 1.0),
        ("dispatch_offers_total{outcome=\"accepted\"}", 1.0),
        ("dispatch_offers_total{outcome=\"declined\"}", 0.0),
        ("dispatch_rejected_total{code=\"NOT_FOUND\"}", 1.0),
        ("dispatch_drivers{state=\"available\"}", 1.0),
        ("dispatch_drivers{state=\"on_trip\"}", 0.0),
        ("dispatch_sessions{kind=\"driver\"}", 1.0),
        ("dispatch_trips_open{status=\"searching\"}", 0.0),
        ("dispatch_request_to_offer_seconds_count", 1.0),
        ("dispatch_request_to_assigned_seconds_count", 1.0),
        ("dispatch_pickup_distance_meters_count", 1.0),
        ("dispatch_grpc_requests_total{service=\"dispatch.v1.RiderService\",method=\"RequestRide\",code=\"OK\"}", 1.0),
        // One shard without --shards, holding everything.
        ("dispatch_shard_ride_requests_total{shard=\"0\"}", 1.0),
        ("dispatch_shard_drivers{shard=\"0\"}", 1.0),
    ] {
        assert_eq!(sample(&after, key), want, "{key}\n{page}");
    }
    assert!(sample(&after, "dispatch_location_updates_total") >= 2.0, "{page}");
    assert!(sample(&after, "dispatch_log_commit_seconds_count") >= 1.0, "{page}");
    assert!(sample(&after, "dispatch_engine_round_seconds_count") >= 1.0, "{page}");
    let distance = sample(&after, "dispatch_pickup_distance_meters_sum");
    assert!((150.0..300.0).contains(&distance), "pickup distance {distance}");
    // Every figure the operators' dashboards expect is there, described.
    for name in [
        "dispatch_location_updates_total",
        "dispatch_location_updates_shed_total",
        "dispatch_ride_requests_total",
        "dispatch_offers_total",
        "dispatch_trips_ended_total",
        "dispatch_rejected_total",
        "dispatch_grpc_requests_total",
        "dispatch_drivers",
        "dispatch_sessions",
        "dispatch_trips_open",
        "dispatch_engine_queue_depth",
        "dispatch_request_to_offer_seconds",
        "dispatch_request_to_assigned_seconds",
        "dispatch_engine_round_seconds",
        "dispatch_log_commit_seconds",
        "dispatch_pickup_distance_meters",
        "dispatch_shard_drivers",
        "dispatch_shard_trips_open",
        "dispatch_shard_ride_requests_total",
        "dispatch_shard_location_updates_total",
    ] {
        assert!(page.contains(&format!("# HELP {name} ")), "no HELP for {name}\n{page}");
    }
    assert!(page.contains("# TYPE dispatch_request_to_offer_seconds histogram"), "{page}");
    // And every one deploy/'s dashboard and alert rules query (but the
    // cluster's, checked on a cluster node).
    let deployed = common::deployed_metrics();
    assert!(deployed.len() >= 12 && deployed.contains("dispatch_cluster_epoch"), "{deployed:?}");
    for name in deployed.iter().filter(|n| !n.starts_with("dispatch_cluster_")) {
        assert!(page.contains(&format!("# TYPE {name} ")), "deploy/ queries {name}, which /metrics lacks\n{page}");
    }
    // The driver hangs up: its session is gone from the gauge.
    drop((tx, events));
    scrape_until(&http, |m| m.get("dispatch_sessions{kind=\"driver\"}") == Some(&0.0)).await;
    child.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_the_http_side_wants_an_admin_token_unless_metrics_are_left_open() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-secret-of-at-least-thirty-two-bytes\n").unwrap_or_else(|e| panic!("{e}"));
    let secret = secret.to_string_lossy().into_owned();
    let keys = dispatch_auth::Keys::new(b"a-secret-of-at-least-thirty-two-bytes").unwrap_or_else(|e| panic!("{e}"));
    let admin =
        keys.mint(dispatch_auth::Role::Admin, "ops", Duration::from_secs(600)).unwrap_or_else(|e| panic!("{e}"));
    let rider = keys.mint(dispatch_auth::Role::Rider, "r1", Duration::from_secs(600)).unwrap_or_else(|e| panic!("{e}"));
    let view = "api/view?south=37.5&west=126.9&north=37.6&east=127.0";

    let (child, _, http) = common::start_with_http(&dir.path().join("a"), &["--auth-secret-file", &secret], &[]);
    let child = common::Running(Some(child));
    for path in ["metrics", "healthz", view, "api/stats"] {
        let url = format!("http://{http}/{path}");
        assert_eq!(get(&url, None).await.0, 401, "{path} without a token");
        assert_eq!(get(&url, Some(&rider)).await.0, 403, "{path} with a rider's token");
        assert_eq!(get(&url, Some(&admin)).await.0, 200, "{path} with an admin token");
    }
    // The browser's event stream carries the token in the query.
    assert_eq!(get(&format!("http://{http}/api/stats?token={admin}"), None).await.0, 200);
    child.stop();

    let extra = ["--auth-secret-file", &secret, "--http-open-metrics"];
    let (child, _, http) = common::start_with_http(&dir.path().join("b"), &extra, &[]);
    let child = common::Running(Some(child));
    assert_eq!(get(&format!("http://{http}/metrics"), None).await.0, 200);
    assert_eq!(get(&format!("http://{http}/healthz"), None).await.0, 200);
    assert_eq!(get(&format!("http://{http}/{view}"), None).await.0, 401);
    child.stop();

    // And a public HTTP address without a secret is refused, like gRPC.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dispatchd"))
        .args(["--listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("c"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("HTTP on a non-loopback address"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_api_answers_for_the_viewport_and_refuses_nonsense() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (child, addr, http) = common::start_with_http(dir.path(), &[], &[]);
    let child = common::Running(Some(child));
    let mut sessions = Vec::new();
    for k in 0..20 {
        sessions.push(driver(&addr, &format!("S{k}"), SEOUL.0 + 0.001 * f64::from(k), SEOUL.1).await);
    }
    sessions.push(driver(&addr, "B1", 35.1796, 129.0756).await);
    let view = |q: &str| {
        let url = format!("http://{http}/api/view?{q}");
        async move { get(&url, None).await }
    };
    let (status, body) = view("south=37.5&west=126.9&north=37.7&east=127.1").await;
    assert_eq!(status, 200, "{body}");
    let seoul: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(seoul["drivers"].as_array().map(Vec::len), Some(20), "{seoul}");
    // The whole country with room for 5 drivers: counts per cell instead.
    let (_, body) = view("south=33&west=124&north=39&east=131&max_drivers=5").await;
    let korea: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(korea["drivers"].as_array().map(Vec::len), Some(0), "{korea}");
    let counted: u64 =
        korea["cells"].as_array().unwrap_or_else(|| panic!("{korea}")).iter().map(|c| c[2].as_u64().unwrap_or(0)).sum();
    assert_eq!(counted, 21, "{korea}");
    for bad in
        ["south=38&west=126&north=37&east=127", "south=nan&west=1&north=2&east=3", "south=91&west=0&north=92&east=1"]
    {
        assert_eq!(view(bad).await.0, 400, "{bad}");
    }
    let (status, body) = get(&format!("http://{http}/api/find?q=S3"), None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"state\":\"available\""), "{body}");
    assert_eq!(get(&format!("http://{http}/api/find?q=nobody"), None).await.0, 404);
    drop(sessions);
    child.stop();
}

/// Chromium, headless, with the flags this machine's closed network needs;
/// killed when dropped (also when the test fails).
async fn browser(profile: &std::path::Path) -> (chromiumoxide::Browser, tokio::task::JoinHandle<()>) {
    use chromiumoxide::browser::{Browser, BrowserConfig};
    use futures::StreamExt;
    let executable = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    let config = BrowserConfig::builder()
        .chrome_executable(&executable)
        .no_sandbox()
        .user_data_dir(profile)
        .window_size(1280, 800)
        .args([
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .launch_timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_else(|e| panic!("browser config: {e}"));
    let (browser, mut handler) = Browser::launch(config)
        .await
        .unwrap_or_else(|e| panic!("cannot start {executable} (apt-get install chromium): {e}"));
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    (browser, events)
}

/// Evaluates `expression` in `page` until it is true, for at most 20 s.
async fn until(page: &chromiumoxide::Page, what: &str, expression: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value = page.evaluate(expression).await.ok().and_then(|v| v.into_value::<bool>().ok());
        if value == Some(true) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let drawn = page.evaluate("JSON.stringify(window.dispatchMap && window.dispatchMap.drawn)").await;
            let drawn = drawn.ok().and_then(|v| v.into_value::<String>().ok());
            panic!("the page never showed {what}; drawn: {drawn:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_map_draws_cars_and_trips_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // Four shards: the map and the panel put every shard's part together.
    let (child, addr, http) = common::start_with_http(&dir.path().join("data"), &["--shards", "4"], &[]);
    let child = common::Running(Some(child));
    // A small city: 40 cars around City Hall, one trip under way, one
    // rider waiting for a car that is not near enough.
    let mut cars = Vec::new();
    for k in 0..40u32 {
        let (dlat, dlng) = (f64::from(k % 8) * 0.004 - 0.014, f64::from(k / 8) * 0.005 - 0.01);
        cars.push(driver(&addr, &format!("car-{k}"), SEOUL.0 + 0.03 + dlat, SEOUL.1 + dlng).await);
    }
    let (tx, mut events) = driver(&addr, "taxi-7", SEOUL.0 + 0.002, SEOUL.1).await;
    let mut rider = request(&addr, "rider-1", SEOUL, (37.55, 127.01)).await;
    let trip_id = accept_the_offer(&tx, &mut events, &mut rider).await;
    let mut riders = pb::rider_service_client::RiderServiceClient::new(channel(&addr).await);
    let waiting = pb::RideRequest {
        rider_id: "rider-2".into(),
        request_id: "w-1".into(),
        pickup: at(SEOUL.0 - 0.01, SEOUL.1 - 0.01),
        max_pickup_distance_m: 50.0,
        ..Default::default()
    };
    let _waiting = riders.request_ride(waiting).await.unwrap_or_else(|e| panic!("{e}")).into_inner();

    let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut browser, events_task) = browser(profile.path()).await;
    let page = browser
        .new_page(format!("http://{http}/?lat={}&lng={}&zoom=13", SEOUL.0 + 0.01, SEOUL.1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    until(&page, "every car", "window.dispatchMap.drawn.drivers === 41").await;
    until(&page, "the trip", &format!("window.dispatchMap.drawn.tripIds.includes({trip_id:?})")).await;
    until(&page, "the waiting rider", "window.dispatchMap.drawn.trips === 2").await;
    until(&page, "the counters", "document.getElementById('drivers-table').textContent.includes('on a trip')").await;
    // The flow panel shows the sessions as numbers (0 fleets, 41 driver
    // apps), and nothing on the page reads NaN or undefined.
    until(&page, "the sessions", "document.getElementById('flow-table').textContent.includes('0 / 41 / ')").await;
    // One row per shard under a header, held by this server, whose
    // drivers add up to every car.
    let shards = "(() => { const rows = [...document.querySelectorAll('#shards-table tr')].slice(1); \
        return rows.length === 4 && rows.every((r) => r.cells[1].textContent === 'this server') \
        && rows.reduce((n, r) => n + Number(r.cells[2].textContent), 0) === 41; })()";
    until(&page, "the shards", shards).await;
    let text = page.evaluate("document.body.innerText").await.ok().and_then(|v| v.into_value::<String>().ok());
    let text = text.unwrap_or_else(|| panic!("the page has no text"));
    assert!(!text.contains("NaN") && !text.contains("undefined"), "the page shows NaN or undefined:\n{text}");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-map.png");
    let params = chromiumoxide::page::ScreenshotParams::builder().build();
    page.save_screenshot(params, &shot).await.unwrap_or_else(|e| panic!("screenshot: {e}"));
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000), "no screenshot at {}", shot.display());

    // Following the trip by its id shows it in the side panel.
    let follow = format!(
        "document.getElementById('search-q').value = {trip_id:?}; \
         document.getElementById('search').requestSubmit(); true"
    );
    page.evaluate(follow).await.unwrap_or_else(|e| panic!("{e}"));
    until(
        &page,
        "the followed trip",
        &format!("document.getElementById('followed').textContent.includes('trip {trip_id}: assigned')"),
    )
    .await;

    // Zoomed out with room for only a few cars: counts per cell instead.
    let dense = browser
        .new_page(format!("http://{http}/?lat={}&lng={}&zoom=9&max_drivers=10", SEOUL.0, SEOUL.1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    until(&dense, "density cells", "window.dispatchMap.drawn.cells > 0 && window.dispatchMap.drawn.drivers === 0")
        .await;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-map-density.png");
    dense
        .save_screenshot(chromiumoxide::page::ScreenshotParams::builder().build(), &shot)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let _ = browser.close().await;
    let _ = browser.wait().await;
    events_task.abort();
    drop((cars, tx, events));
    child.stop();
}

/// On the river city: a car 100 m across the water from the pickup takes
/// the ride, and `/api/find` of the trip gives its way there, which goes
/// round by the east bridge (8 streets east). The trip's id, that bridge's
/// longitude, and the driver's stream.
async fn a_followed_trip_goes_by_the_east_bridge(
    addr: &str,
    http: &str,
) -> (String, f64, mpsc::Sender<pb::DriverMessage>, tonic::Streaming<pb::DriverEvent>) {
    use dispatch_testkit::roads::at as city_at;
    let (car, pickup, dropoff) = (city_at(5.0, 10.0), city_at(6.0, 10.0), city_at(11.0, 10.0));
    let (tx, mut events) = driver(addr, "across", car.lat(), car.lng()).await;
    let mut rider = request(addr, "rider-1", (pickup.lat(), pickup.lng()), (dropoff.lat(), dropoff.lng())).await;
    let trip_id = accept_the_offer(&tx, &mut events, &mut rider).await;
    let bridge = city_at(5.0, 17.5).lng();
    let (status, found) = get(&format!("http://{http}/api/find?q={trip_id}"), None).await;
    assert_eq!(status, 200, "{found}");
    let found: serde_json::Value = serde_json::from_str(&found).unwrap_or_else(|e| panic!("{e}: {found}"));
    let route = found["route"].as_array().unwrap_or_else(|| panic!("no route in {found}"));
    assert!(route.len() > 3 && route.iter().any(|p| p[1].as_f64().is_some_and(|lng| lng > bridge)), "{found}");
    let end = route.last().and_then(|p| Some((p[0].as_f64()?, p[1].as_f64()?)));
    assert_eq!(end, Some((pickup.lat(), pickup.lng())), "{found}");
    (trip_id, bridge, tx, events)
}

/// With `--router` and a real `osrm-routed` serving the river city, the
/// map's way of a followed trip is OSRM's (its `route` service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_osrm_router_a_followed_trips_way_is_osrms() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let extract = dir.path().join("river-city.osm");
    std::fs::write(&extract, dispatch_testkit::roads::xml()).unwrap_or_else(|e| panic!("{e}"));
    let routed = dispatch_testkit::osrm::Routed::start(&extract);
    let spec = routed.spec();
    let (child, addr, http) = common::start_with_http(&dir.path().join("data"), &["--router", spec.as_str()], &[]);
    let child = common::Running(Some(child));
    let (_, _, tx, events) = a_followed_trip_goes_by_the_east_bridge(&addr, &http).await;
    drop((tx, events));
    child.stop();
}

/// With `--road-network`, following a trip draws the way its car drives to
/// the pickup by road: on the river city, a car 100 m across the water goes
/// round by the bridge at the east end, and the route drawn goes there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_draws_a_followed_trips_route_by_road_in_a_real_browser() {
    use dispatch_testkit::roads::{self as city, at as city_at};
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let extract = dir.path().join("river-city.osm");
    std::fs::write(&extract, city::xml()).unwrap_or_else(|e| panic!("{e}"));
    let road_network = extract.to_string_lossy().into_owned();
    let (child, addr, http) =
        common::start_with_http(&dir.path().join("data"), &["--road-network", road_network.as_str()], &[]);
    let child = common::Running(Some(child));
    let pickup = city_at(6.0, 10.0);
    let (trip_id, bridge, tx, events) = a_followed_trip_goes_by_the_east_bridge(&addr, &http).await;

    let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (mut browser, events_task) = browser(profile.path()).await;
    let page = browser
        .new_page(format!(
            "http://{http}/?lat={}&lng={}&zoom=16&follow={trip_id}",
            pickup.lat(),
            city_at(6.0, 14.0).lng()
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let drawn = format!(
        "window.dispatchMap.drawn.route.length > 3 && \
         window.dispatchMap.drawn.route.some(([, lng]) => lng > {bridge}) && \
         document.querySelector('canvas').dataset.routePoints > 3"
    );
    until(&page, "the route by the bridge", &drawn).await;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-map-route.png");
    page.save_screenshot(chromiumoxide::page::ScreenshotParams::builder().build(), &shot)
        .await
        .unwrap_or_else(|e| panic!("screenshot: {e}"));
    let _ = browser.close().await;
    let _ = browser.wait().await;
    events_task.abort();
    drop((tx, events));
    child.stop();
}
