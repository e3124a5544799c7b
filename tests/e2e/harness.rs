//! A server per test and clients that speak to it.

use std::time::Duration;

use dispatch_proto::pb::{
    self, admin_service_client::AdminServiceClient, driver_event::Kind as Event, driver_message::Kind as DriverMsg,
    driver_service_client::DriverServiceClient, fleet_message::Kind as FleetMsg,
    fleet_service_client::FleetServiceClient, rider_service_client::RiderServiceClient,
};
use dispatch_server::{Fsync, ServerConfig, ServerError, TripLogConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

/// How long any one step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// Seoul City Hall: every test's pickup.
pub const PICKUP: (f64, f64) = (37.5665, 126.9780);

/// A point `metres` north of the pickup.
pub fn north(metres: f64) -> pb::LatLng {
    pb::LatLng { lat: PICKUP.0 + metres / 111_195.0, lng: PICKUP.1 }
}

pub fn pickup() -> pb::LatLng {
    pb::LatLng { lat: PICKUP.0, lng: PICKUP.1 }
}

/// Awaits `f`, failing the test after [`STEP`].
/// Now, in unix milliseconds (the server's clock reads the same).
pub fn unix_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Waits until the wall clock reads past `at_ms` (unix milliseconds): for
/// tests about a deadline, the condition is that time itself has passed.
pub async fn wait_until_past(at_ms: i64) {
    while unix_ms() <= at_ms {
        let left = u64::try_from(at_ms + 1 - unix_ms()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(left.max(1))).await;
    }
}

pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Reads `stream` to its end and returns the status it ended with.
pub async fn end_status<T>(stream: &mut Streaming<T>) -> Status {
    loop {
        match within("the stream to end", stream.message()).await {
            Err(status) => return status,
            Ok(None) => panic!("stream ended without a status"),
            Ok(Some(_)) => continue,
        }
    }
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    /// The trip log's directory, removed when the server is dropped.
    data: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(ServerConfig::default()).await
    }

    /// A server whose offers lapse after `offer_ms` and searches after
    /// `search_ms`.
    pub async fn with_timeouts(offer_ms: i64, search_ms: i64) -> Self {
        let mut config = ServerConfig::default();
        config.engine.offer_timeout_ms = offer_ms;
        config.engine.search_timeout_ms = search_ms;
        Self::with(config).await
    }

    /// A server with `config`; unless it names a trip log, the log goes to
    /// a fresh temporary directory (without fsync: these tests are about
    /// behaviour, and the process crash test covers durability).
    pub async fn with(config: ServerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        Self::in_dir(config, dir).await
    }

    /// A server whose trip log lives in `dir`: a server started again in
    /// the same directory recovers what the last one logged.
    pub async fn in_dir(mut config: ServerConfig, dir: tempfile::TempDir) -> Self {
        if config.trip_log.is_none() {
            let mut log = TripLogConfig::new(dir.path());
            log.fsync = Fsync::Never;
            config.trip_log = Some(log);
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dispatch_server::run(listener, config, async {
            let _ = stopped.await;
        }));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("endpoint: {e}"))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        Self { addr, channel, stop: Some(stop), task: Some(task), data: Some(dir) }
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn riders(&self) -> RiderServiceClient<Channel> {
        RiderServiceClient::new(self.channel())
    }

    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel())
    }

    /// Opens a driver session with `hello` and reads its `session_started`.
    pub async fn driver(&self, hello: pb::Hello) -> DriverConn {
        let mut conn = self.open_driver(DriverMsg::Hello(hello)).await;
        match conn.next().await {
            Event::SessionStarted(_) => conn,
            other => panic!("expected session_started, got {other:?}"),
        }
    }

    /// Opens a driver session whose first message is `first`, reading
    /// nothing.
    pub async fn open_driver(&self, first: DriverMsg) -> DriverConn {
        let (tx, rx) = mpsc::channel(1_024);
        tx.send(pb::DriverMessage { kind: Some(first) }).await.unwrap_or_else(|e| panic!("send: {e}"));
        let events =
            within("driver connect", DriverServiceClient::new(self.channel()).connect(ReceiverStream::new(rx)))
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"))
                .into_inner();
        DriverConn { tx: Some(tx), events }
    }

    /// Opens a driver session as the holder of `token`, sending `first`
    /// and reading nothing; a refused call gives its status.
    pub async fn open_driver_as(&self, token: Option<&str>, first: DriverMsg) -> Result<DriverConn, Status> {
        let (tx, rx) = mpsc::channel(1_024);
        tx.send(pb::DriverMessage { kind: Some(first) }).await.unwrap_or_else(|e| panic!("send: {e}"));
        let request = authed(ReceiverStream::new(rx), token);
        let events = within("driver connect", DriverServiceClient::new(self.channel()).connect(request)).await?;
        Ok(DriverConn { tx: Some(tx), events: events.into_inner() })
    }

    /// Opens a fleet session as the holder of `token`, reading nothing.
    pub async fn open_fleet_as(&self, token: Option<&str>, fleet_id: &str) -> Result<FleetConn, Status> {
        let (tx, rx) = mpsc::channel(1_024);
        let hello = FleetMsg::Hello(pb::FleetHello { fleet_id: fleet_id.into() });
        tx.send(pb::FleetMessage { kind: Some(hello) }).await.unwrap_or_else(|e| panic!("send: {e}"));
        let request = authed(ReceiverStream::new(rx), token);
        let events = within("fleet connect", FleetServiceClient::new(self.channel()).connect(request)).await?;
        Ok(FleetConn { tx, events: events.into_inner() })
    }

    /// Asks for a ride as the holder of `token` and reads the first update.
    pub async fn request_as(&self, token: Option<&str>, rider: &str, request_id: &str) -> Result<RiderConn, Status> {
        let request = pb::RideRequest {
            rider_id: rider.into(),
            request_id: request_id.into(),
            pickup: Some(pickup()),
            dropoff: Some(north(3_000.0)),
            ..Default::default()
        };
        let stream = within("request_ride", self.riders().request_ride(authed(request, token))).await?.into_inner();
        let mut conn = RiderConn { stream, trip_id: String::new(), requested_at_ms: 0 };
        let first = conn.next().await;
        conn.trip_id = first.trip_id.clone();
        conn.requested_at_ms = first.requested_at_ms;
        Ok(conn)
    }

    /// Asks again with the same rider and request id (after a drop or a
    /// restart): the stream starts from where the trip is.
    pub async fn reattach(&self, rider: &str, request_id: &str) -> RiderConn {
        self.request_with(pb::RideRequest {
            rider_id: rider.into(),
            request_id: request_id.into(),
            pickup: Some(pickup()),
            ..Default::default()
        })
        .await
    }

    /// Opens a fleet session and reads its `session_started`.
    pub async fn fleet(&self, fleet_id: &str) -> FleetConn {
        let (tx, rx) = mpsc::channel(1_024);
        let hello = FleetMsg::Hello(pb::FleetHello { fleet_id: fleet_id.into() });
        tx.send(pb::FleetMessage { kind: Some(hello) }).await.unwrap_or_else(|e| panic!("send: {e}"));
        let events = within("fleet connect", FleetServiceClient::new(self.channel()).connect(ReceiverStream::new(rx)))
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
            .into_inner();
        let mut conn = FleetConn { tx, events };
        match conn.next().await {
            Event::SessionStarted(s) => assert_eq!(s.fleet_id, fleet_id),
            other => panic!("expected session_started, got {other:?}"),
        }
        conn
    }

    /// Asks for a ride and reads the first message, which must be the trip
    /// searching.
    pub async fn request(&self, rider: &str, request_id: &str) -> RiderConn {
        self.request_with(pb::RideRequest {
            rider_id: rider.into(),
            request_id: request_id.into(),
            pickup: Some(pickup()),
            dropoff: Some(north(3_000.0)),
            ..Default::default()
        })
        .await
    }

    pub async fn request_with(&self, request: pb::RideRequest) -> RiderConn {
        let stream = within("request_ride", self.riders().request_ride(request))
            .await
            .unwrap_or_else(|e| panic!("request_ride: {e}"))
            .into_inner();
        let mut conn = RiderConn { stream, trip_id: String::new(), requested_at_ms: 0 };
        let first = conn.next().await;
        conn.trip_id = first.trip_id.clone();
        conn.requested_at_ms = first.requested_at_ms;
        conn
    }

    pub async fn stats(&self) -> pb::Stats {
        self.admin().get_stats(pb::GetStatsRequest {}).await.unwrap_or_else(|e| panic!("stats: {e}")).into_inner()
    }

    /// Waits until the engine has ticked at a time past `at_ms`: the clock
    /// passes it, then two calls go through the engine (it ticks after
    /// every round, so the second is answered after a tick that came after
    /// the first, which was itself sent past `at_ms`).
    pub async fn engine_past(&self, at_ms: i64) {
        wait_until_past(at_ms).await;
        for _ in 0..2 {
            self.stats().await;
        }
    }

    /// Waits until the stats satisfy `ok` (polled through the engine).
    pub async fn stats_until(&self, what: &str, ok: impl Fn(&pb::Stats) -> bool) -> pb::Stats {
        within(what, async {
            loop {
                let stats = self.stats().await;
                if ok(&stats) {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
    }

    pub async fn get_trip(&self, trip_id: &str) -> Result<pb::Trip, Status> {
        self.riders().get_trip(pb::GetTripRequest { trip_id: trip_id.into() }).await.map(|r| r.into_inner())
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(self) {
        self.stop_keeping_data().await;
    }

    /// Signals shutdown, waits for `run` to return, and hands back the
    /// data directory for a server started after it.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match within("server shutdown", task).await {
                Ok(Ok(())) => {}
                other => panic!("server ended badly: {other:?}"),
            }
        }
        match self.data.take() {
            Some(dir) => dir,
            None => panic!("the data directory was already taken"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `message` with `authorization: Bearer <token>` when a token is given.
pub fn authed<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap_or_else(|e| panic!("metadata: {e}"));
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A driver hello: available, `metres` north of the pickup.
pub fn hello(driver_id: &str, metres: f64) -> pb::Hello {
    pb::Hello { driver_id: driver_id.into(), position: Some(north(metres)), available: true, ..Default::default() }
}

/// The same, assigned without offers.
pub fn auto_hello(driver_id: &str, metres: f64) -> pb::Hello {
    pb::Hello { auto_accept: true, ..hello(driver_id, metres) }
}

pub struct DriverConn {
    tx: Option<mpsc::Sender<pb::DriverMessage>>,
    events: Streaming<pb::DriverEvent>,
}

impl DriverConn {
    pub async fn send(&self, kind: DriverMsg) {
        let Some(tx) = &self.tx else { panic!("the driver hung up already") };
        tx.send(pb::DriverMessage { kind: Some(kind) }).await.unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Sends unless the call is over; says whether it sent.
    pub async fn try_send(&self, kind: DriverMsg) -> bool {
        let Some(tx) = &self.tx else { return false };
        tx.send(pb::DriverMessage { kind: Some(kind) }).await.is_ok()
    }

    pub async fn ping(&self, position: pb::LatLng) {
        self.send(DriverMsg::Location(pb::LocationPing { position: Some(position), ..Default::default() })).await;
    }

    pub async fn reply(&self, offer: &pb::Offer, accept: bool) {
        self.send(DriverMsg::OfferReply(pb::OfferReply { offer_id: offer.offer_id.clone(), accept })).await;
    }

    pub async fn progress(&self, trip_id: &str, status: pb::TripStatus) {
        self.send(DriverMsg::TripProgress(pb::TripProgress { trip_id: trip_id.into(), status: status.into() })).await;
    }

    /// The next event; fails the test if the stream ends.
    pub async fn next(&mut self) -> Event {
        match self.next_result().await {
            Ok(Some(event)) => event,
            other => panic!("driver stream ended: {other:?}"),
        }
    }

    pub async fn next_result(&mut self) -> Result<Option<Event>, Status> {
        let message = within("a driver event", self.events.message()).await?;
        Ok(message.map(|m| m.kind.unwrap_or_else(|| panic!("an event with no kind"))))
    }

    /// Whether an event arrives within `ms` (for "nothing happens" checks).
    /// What the server sent this session before a barrier: a reply to an
    /// offer id never minted (`o-0`), which the engine refuses in order
    /// after everything it did for earlier messages. `None` means nothing
    /// came before it, checked without waiting on a timer.
    pub async fn next_before_barrier(&mut self) -> Option<Event> {
        self.send(DriverMsg::OfferReply(pb::OfferReply { offer_id: BARRIER_OFFER.into(), accept: false })).await;
        barrier_or(self.next().await)
    }

    pub async fn expect_offer(&mut self) -> pb::Offer {
        match self.next().await {
            Event::Offer(offer) => offer,
            other => panic!("expected an offer, got {other:?}"),
        }
    }

    pub async fn expect_trip(&mut self, status: pb::TripStatus) -> pb::Trip {
        match self.next().await {
            Event::Trip(trip) if trip.status() == status => trip,
            other => panic!("expected the trip {status:?}, got {other:?}"),
        }
    }

    pub async fn expect_rejected(&mut self, code: Code) -> pb::Rejected {
        match self.next().await {
            Event::Rejected(r) if r.code == code as i32 => r,
            other => panic!("expected a rejection {code:?}, got {other:?}"),
        }
    }

    /// The status the stream ended with.
    pub async fn expect_end(&mut self) -> Status {
        end_status(&mut self.events).await
    }

    /// Hangs up: closes the sending side and drops the stream.
    pub fn hang_up(mut self) {
        self.tx = None;
    }
}

pub struct FleetConn {
    tx: mpsc::Sender<pb::FleetMessage>,
    events: Streaming<pb::DriverEvent>,
}

impl FleetConn {
    pub async fn send(&self, kind: FleetMsg) {
        self.tx.send(pb::FleetMessage { kind: Some(kind) }).await.unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// The sending side and the stream of events, apart.
    pub fn into_parts(self) -> (mpsc::Sender<pb::FleetMessage>, Streaming<pb::DriverEvent>) {
        (self.tx, self.events)
    }

    pub async fn batch(&self, updates: Vec<pb::DriverUpdate>) {
        self.send(FleetMsg::Updates(pb::DriverUpdateBatch { updates })).await;
    }

    pub async fn next(&mut self) -> Event {
        match within("a fleet event", self.events.message()).await {
            Ok(Some(m)) => m.kind.unwrap_or_else(|| panic!("an event with no kind")),
            other => panic!("fleet stream ended: {other:?}"),
        }
    }

    /// The status the stream ended with.
    pub async fn expect_end(&mut self) -> Status {
        end_status(&mut self.events).await
    }

    /// What the server sent this session before a barrier; see
    /// [`DriverConn::next_before_barrier`].
    pub async fn next_before_barrier(&mut self) -> Option<Event> {
        self.send(FleetMsg::OfferReply(pb::OfferReply { offer_id: BARRIER_OFFER.into(), accept: false })).await;
        barrier_or(self.next().await)
    }
}

/// An offer id the server never mints: replying to it is refused
/// `NOT_FOUND`, in order with everything else on the session.
const BARRIER_OFFER: &str = "o-0";

/// `None` if `event` is the barrier's refusal; the event otherwise.
fn barrier_or(event: Event) -> Option<Event> {
    match &event {
        Event::Rejected(r) if r.code == Code::NotFound as i32 && r.message.contains(BARRIER_OFFER) => None,
        _ => Some(event),
    }
}

/// A fleet's update for one driver: available, `metres` north.
pub fn update(driver_id: &str, metres: f64) -> pb::DriverUpdate {
    pb::DriverUpdate {
        driver_id: driver_id.into(),
        position: Some(north(metres)),
        available: Some(true),
        ..Default::default()
    }
}

pub struct RiderConn {
    pub stream: Streaming<pb::Trip>,
    pub trip_id: String,
    /// When the server took the request (unix ms), from the first update.
    pub requested_at_ms: i64,
}

impl RiderConn {
    pub async fn next(&mut self) -> pb::Trip {
        match within("a trip update", self.stream.message()).await {
            Ok(Some(trip)) => trip,
            other => panic!("rider stream ended: {other:?}"),
        }
    }

    /// Reads updates until one has `status`.
    pub async fn until(&mut self, status: pb::TripStatus) -> pb::Trip {
        loop {
            let trip = self.next().await;
            if trip.status() == status {
                return trip;
            }
        }
    }

    /// The stream ends cleanly (after a terminal status).
    pub async fn expect_end(&mut self) {
        match within("the rider stream to end", self.stream.message()).await {
            Ok(None) => {}
            other => panic!("expected the stream to end, got {other:?}"),
        }
    }

    pub async fn end_status(&mut self) -> Status {
        end_status(&mut self.stream).await
    }
}

/// A certificate for `localhost` made now: the server's TLS files, and the
/// PEM a client trusts.
pub fn localhost_tls() -> (dispatch_server::TlsFiles, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap_or_else(|e| panic!("{e}"));
    let files = dispatch_server::TlsFiles {
        cert_pem: cert.pem().into_bytes(),
        key_pem: signing_key.serialize_pem().into_bytes(),
    };
    (files, cert.pem())
}
