//! Simulated drivers: through fleet gateways (many cars per stream, batched)
//! and through their own sessions (one stream each). Both share [`Cars`],
//! which turns server events and driving into replies and progress reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_proto::pb::{
    self, driver_event::Kind as Event, driver_message::Kind as DriverMsg, driver_service_client::DriverServiceClient,
    fleet_message::Kind as FleetMsg, fleet_service_client::FleetServiceClient,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::credentials::authorize;
use dispatch_auth::Role;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::Run;
use crate::metrics::Metrics;
use crate::sim::{Arrival, Car, Phase, Point};

/// How long drivers stay after the deadline, so the final stats see them.
const HANG_UP_AFTER: Duration = Duration::from_secs(1);

/// Something a car says back to the server.
#[derive(Debug, Clone, PartialEq)]
enum Say {
    Accept { offer_id: String },
    Progress { driver_id: String, trip_id: String, status: pb::TripStatus },
}

/// The cars one task drives.
struct Cars {
    cars: Vec<Car>,
    by_id: HashMap<String, usize>,
    rng: ChaCha8Rng,
    /// Offers lately withdrawn as taken, oldest first.
    taken: std::collections::VecDeque<String>,
}

impl Cars {
    fn new(cars: Vec<Car>, seed: u64) -> Self {
        let by_id = cars.iter().enumerate().map(|(i, c)| (c.driver_id.clone(), i)).collect();
        Self { cars, by_id, rng: ChaCha8Rng::seed_from_u64(seed), taken: std::collections::VecDeque::new() }
    }

    /// Reacts to a server event; returns what to say back.
    fn on_event(&mut self, run: &Run, event: Event) -> Vec<Say> {
        match event {
            Event::Offer(offer) => {
                Metrics::add(&run.metrics.offers, 1);
                if let Some(trip) = &offer.trip {
                    run.metrics.trip_offered(&trip.trip_id);
                }
                vec![Say::Accept { offer_id: offer.offer_id }]
            }
            Event::Trip(trip) => {
                let Some(&i) = self.by_id.get(&trip.driver_id) else { return Vec::new() };
                let car = &mut self.cars[i];
                match trip.status() {
                    pb::TripStatus::DriverAssigned => {
                        if run.config.auto_accept {
                            // With no offer round trip, the assignment is
                            // this trip's "offer".
                            run.metrics.trip_offered(&trip.trip_id);
                        }
                        let pickup = trip.pickup.map(|p| Point { lat: p.lat, lng: p.lng }).unwrap_or(car.at);
                        let dropoff = trip.dropoff.map(|p| Point { lat: p.lat, lng: p.lng }).unwrap_or(pickup);
                        car.phase = Phase::ToPickup { trip_id: trip.trip_id, pickup, dropoff };
                    }
                    pb::TripStatus::Cancelled | pb::TripStatus::Completed => car.phase = Phase::Cruising,
                    _ => {}
                }
                Vec::new()
            }
            Event::Rejected(r) => {
                // An accept that crossed a broadcast's "taken" on the
                // wire is refused as expected, not an error.
                let names = |o: &String| r.message.split_whitespace().any(|word| word == o.as_str());
                let late = r.code == Code::NotFound as i32 && self.taken.iter().any(names);
                if late {
                    self.taken.retain(|o| !names(o));
                } else {
                    run.metrics.error(Code::from_i32(r.code));
                }
                Vec::new()
            }
            Event::OfferWithdrawn(w) => {
                if w.reason_code == dispatch_proto::pb::WithdrawReason::Taken as i32 {
                    Metrics::add(&run.metrics.offers_taken, 1);
                    // Bounded: the few offers whose late accept may still
                    // be refused.
                    if self.taken.len() >= 64 {
                        self.taken.pop_front();
                    }
                    self.taken.push_back(w.offer_id);
                }
                Vec::new()
            }
            Event::SessionStarted(_) => Vec::new(),
        }
    }

    /// Drives the cars in `range` for `seconds`; returns the progress to
    /// report.
    fn drive(&mut self, run: &Run, range: std::ops::Range<usize>, seconds: f64) -> Vec<Say> {
        let mut said = Vec::new();
        for car in &mut self.cars[range] {
            match car.step(&mut self.rng, seconds, run.config.speed_mps, run.config.trip_s) {
                Arrival::None => {}
                Arrival::Pickup(trip_id) => {
                    for status in [pb::TripStatus::DriverArrived, pb::TripStatus::InProgress] {
                        said.push(Say::Progress { driver_id: car.driver_id.clone(), trip_id: trip_id.clone(), status });
                    }
                }
                Arrival::Dropoff(trip_id) => {
                    Metrics::add(&run.metrics.completed, 1);
                    let status = pb::TripStatus::Completed;
                    said.push(Say::Progress { driver_id: car.driver_id.clone(), trip_id, status });
                }
            }
        }
        said
    }
}

/// The ping clock of a group of cars split into `parts` (a fleet's
/// batches): ticks `parts` times every ping interval, evenly (the first
/// after `offset`), each tick for the next part in turn, and says which part
/// and how long its cars drove since their last tick, until the run is over
/// (a moment after its deadline). So a fleet gateway sends its batches
/// spread over the interval, as a real one forwards its cars' pings as they
/// come, not all at once.
struct Pace {
    ticker: tokio::time::Interval,
    last: Vec<Instant>,
    next: usize,
    stop: Instant,
}

impl Pace {
    fn new(run: &Run, offset: Duration, parts: usize) -> Self {
        let parts = parts.max(1);
        let every = run.config.ping_interval / u32::try_from(parts).unwrap_or(u32::MAX);
        let mut ticker =
            tokio::time::interval_at((Instant::now() + offset).into(), every.max(Duration::from_micros(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Self { ticker, last: vec![Instant::now(); parts], next: 0, stop: run.deadline + HANG_UP_AFTER }
    }

    /// Waits for the next tick and returns the part whose turn it is and
    /// the seconds driven since its last; `None` once the run is over.
    async fn next(&mut self) -> Option<(usize, f64)> {
        tokio::select! {
            _ = self.ticker.tick() => {}
            () = tokio::time::sleep_until(self.stop.into()) => return None,
        }
        let part = self.next;
        self.next = (self.next + 1) % self.last.len();
        let seconds = self.last[part].elapsed().as_secs_f64();
        self.last[part] = Instant::now();
        Some((part, seconds))
    }
}

fn position(car: &Car) -> pb::LatLng {
    pb::LatLng { lat: car.at.lat, lng: car.at.lng }
}

fn unix_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(0)
}

/// Sends `message` after the configured think time (at once when it is 0).
fn say_later<M: Send + 'static>(run: &Run, tx: &mpsc::Sender<M>, message: M) {
    let think = run.config.think_time;
    if think.is_zero() {
        // A full queue means the server is behind; the offer lapses and the
        // run shows it, which is what a load test should show.
        let _ = tx.try_send(message);
    } else {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(think).await;
            let _ = tx.send(message).await;
        });
    }
}

/// Reads the next event, or notes why the stream ended.
async fn next_event(run: &Run, events: &mut Streaming<pb::DriverEvent>) -> Option<Event> {
    match events.message().await {
        Ok(Some(event)) => event.kind,
        Ok(None) => None,
        Err(status) => {
            if Instant::now() < run.deadline {
                run.metrics.error(status.code());
                // With --reconnect a broken stream is expected (a node
                // died) and opened again.
                if !run.config.reconnect {
                    run.protocol_error();
                }
            }
            None
        }
    }
}

/// One fleet gateway: its cars' positions in batches, each batch every ping
/// interval and the batches spread over it (fleet `index` of `fleets`
/// starting its turn a share of a batch's slot later than the one before),
/// offers accepted, trips driven. With `--reconnect`, a broken session is
/// opened again through the next target and every car registered again.
pub async fn fleet(run: Arc<Run>, channel: Channel, fleet_id: String, cars: Vec<Car>, seed: u64, slot: (usize, usize)) {
    let send = |kind| pb::FleetMessage { kind: Some(kind) };
    let batch = run.config.batch_size.max(1);
    let parts = cars.len().div_ceil(batch).max(1);
    let mut cars = Cars::new(cars, seed);
    let (index, fleets) = slot;
    let offset = run.config.ping_interval / u32::try_from(parts * fleets.max(1)).unwrap_or(u32::MAX)
        * u32::try_from(index).unwrap_or(0);
    let mut pace = Pace::new(&run, offset, parts);
    let mut channel = Some(channel);
    let mut attempt = index;
    loop {
        let Some(channel) = run.session_channel(&mut channel, &mut attempt).await else { return };
        let (tx, rx) = mpsc::channel::<pb::FleetMessage>(256);
        let _ = tx.send(send(FleetMsg::Hello(pb::FleetHello { fleet_id: fleet_id.clone() }))).await;
        let mut client = FleetServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let request = authorize(run.config.credentials.as_ref(), Role::Fleet, &fleet_id, ReceiverStream::new(rx));
        let mut events = match client.connect(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if run.config.reconnect {
                    continue;
                }
                run.metrics.error(status.code());
                run.protocol_error();
                return;
            }
        };
        let mut registered = vec![false; parts];
        loop {
            tokio::select! {
                tick = pace.next() => {
                    let Some((part, seconds)) = tick else { return };
                    let range = part * batch..((part + 1) * batch).min(cars.cars.len());
                    for say in cars.drive(&run, range.clone(), seconds) {
                        if let Say::Progress { driver_id, trip_id, status } = say {
                            let progress = pb::FleetTripProgress { driver_id, trip_id, status: status.into() };
                            let _ = tx.send(send(FleetMsg::TripProgress(progress))).await;
                        }
                    }
                    let timestamp_ms = unix_ms();
                    let first = !std::mem::replace(&mut registered[part], true);
                    let updates: Vec<pb::DriverUpdate> = cars.cars[range]
                        .iter()
                        .map(|car| pb::DriverUpdate {
                            driver_id: car.driver_id.clone(),
                            position: Some(position(car)),
                            service_types: Vec::new(),
                            available: first.then_some(true),
                            auto_accept: run.config.auto_accept,
                            timestamp_ms,
                        })
                        .collect();
                    let n = updates.len() as u64;
                    if tx.send(send(FleetMsg::Updates(pb::DriverUpdateBatch { updates }))).await.is_err() {
                        break;
                    }
                    Metrics::add(&run.metrics.updates_sent, n);
                }
                event = next_event(&run, &mut events) => {
                    let Some(event) = event else { break };
                    for say in cars.on_event(&run, event) {
                        if let Say::Accept { offer_id } = say {
                            say_later(&run, &tx, send(FleetMsg::OfferReply(pb::OfferReply { offer_id, accept: true })));
                        }
                    }
                }
            }
        }
        if !run.config.reconnect {
            return;
        }
    }
}

/// One driver's own session: a ping every interval (the first at a random
/// moment within it, so sessions do not ping in lockstep). With
/// `--reconnect`, a broken session is opened again through the next target.
pub async fn solo(run: Arc<Run>, channel: Channel, car: Car, seed: u64) {
    let send = |kind| pb::DriverMessage { kind: Some(kind) };
    let interval = run.config.ping_interval;
    let offset = Duration::from_nanos(seed % u64::try_from(interval.as_nanos()).unwrap_or(1).max(1));
    let mut pace = Pace::new(&run, offset, 1);
    let mut cars = Cars::new(vec![car], seed);
    let mut channel = Some(channel);
    let mut attempt = usize::try_from(seed).unwrap_or(0);
    loop {
        let Some(channel) = run.session_channel(&mut channel, &mut attempt).await else { return };
        let (tx, rx) = mpsc::channel::<pb::DriverMessage>(16);
        let car = &cars.cars[0];
        let hello = pb::Hello {
            driver_id: car.driver_id.clone(),
            service_types: Vec::new(),
            position: Some(position(car)),
            available: true,
            auto_accept: run.config.auto_accept,
        };
        let _ = tx.send(send(DriverMsg::Hello(hello))).await;
        let request = authorize(run.config.credentials.as_ref(), Role::Driver, &car.driver_id, ReceiverStream::new(rx));
        let mut events = match DriverServiceClient::new(channel).connect(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if run.config.reconnect {
                    continue;
                }
                run.metrics.error(status.code());
                run.protocol_error();
                return;
            }
        };
        loop {
            tokio::select! {
                tick = pace.next() => {
                    let Some((_, seconds)) = tick else { return };
                    for say in cars.drive(&run, 0..1, seconds) {
                        if let Say::Progress { trip_id, status, .. } = say {
                            let progress = pb::TripProgress { trip_id, status: status.into() };
                            let _ = tx.send(send(DriverMsg::TripProgress(progress))).await;
                        }
                    }
                    let ping = pb::LocationPing { position: Some(position(&cars.cars[0])), timestamp_ms: unix_ms(), ..Default::default() };
                    if tx.send(send(DriverMsg::Location(ping))).await.is_err() {
                        break;
                    }
                    Metrics::add(&run.metrics.updates_sent, 1);
                }
                event = next_event(&run, &mut events) => {
                    let Some(event) = event else { break };
                    for say in cars.on_event(&run, event) {
                        if let Say::Accept { offer_id } = say {
                            say_later(&run, &tx, send(DriverMsg::OfferReply(pb::OfferReply { offer_id, accept: true })));
                        }
                    }
                }
            }
        }
        if !run.config.reconnect {
            return;
        }
    }
}
