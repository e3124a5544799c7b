//! `dispatchctl drive`: a driver played end to end. It goes on duty where it
//! is told, accepts offers (or declines them, for trying that out), drives
//! in a straight line to the pickup, reports arrival, waits for the rider
//! to board, drives to the dropoff and completes the trip, sending its
//! position every tick on the way.

use std::io::Write;
use std::time::Duration;

use dispatch_core::geo::LatLng;
use dispatch_proto::pb::{self, driver_event::Kind as Event, driver_message::Kind as Msg};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use dispatch_cli::Dur;

use crate::{Client, CtlError, show};

/// Where the driver starts and how it behaves.
#[derive(Debug, clap::Args)]
pub struct DriveArgs {
    /// The driver's id (the token's subject when tokens are checked).
    #[arg(long)]
    pub id: String,
    /// Where it starts, `LAT,LNG`.
    #[arg(long, value_parser = crate::lat_lng)]
    pub at: LatLng,
    /// Let the server assign rides without offering them first.
    #[arg(long)]
    pub auto_accept: bool,
    /// Decline every offer instead of accepting it.
    #[arg(long, conflicts_with = "auto_accept")]
    pub decline_offers: bool,
    /// How fast it drives, km/h.
    #[arg(long, default_value_t = 43.2)]
    pub speed_kmh: f64,
    /// How often it moves and reports its position (at least 10ms).
    #[arg(long, default_value = "1s", value_parser = tick)]
    pub tick: Dur,
    /// How long the rider takes to get in.
    #[arg(long, default_value = "2s", value_parser = Dur::any)]
    pub board: Dur,
    /// Go off duty and stop after this many completed trips.
    #[arg(long)]
    pub trips: Option<u64>,
    // Earlier spellings, hidden: they still work.
    #[arg(long, hide = true)]
    #[doc(hidden)]
    pub speed_mps: Option<f64>,
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(10..))]
    #[doc(hidden)]
    pub tick_ms: Option<u64>,
    #[arg(long, hide = true)]
    #[doc(hidden)]
    pub board_ms: Option<u64>,
}

fn tick(s: &str) -> Result<Dur, String> {
    match s.parse::<Dur>()? {
        Dur(d) if d >= Duration::from_millis(10) => Ok(Dur(d)),
        _ => Err(format!("{s:?} is shorter than 10ms")),
    }
}

impl DriveArgs {
    /// Takes the earlier spellings into today's flags; what to write
    /// instead, for each given.
    pub fn take_earlier_spellings(&mut self) -> Vec<String> {
        use dispatch_cli::earlier;
        // Today's flags have defaults: an earlier spelling given wins
        // unless today's differs from its default.
        let mut said = Vec::new();
        let speed = self.speed_mps.map(|mps| mps * 3.6);
        said.extend(earlier("speed-mps", "speed-kmh", speed, self.speed_kmh != 43.2, &mut self.speed_kmh));
        let tick = self.tick_ms.map(|ms| Dur(Duration::from_millis(ms)));
        said.extend(earlier("tick-ms", "tick", tick, self.tick != Dur::ms(1_000), &mut self.tick));
        let board = self.board_ms.map(|ms| Dur(Duration::from_millis(ms)));
        said.extend(earlier("board-ms", "board", board, self.board != Dur::ms(2_000), &mut self.board));
        said
    }
}

/// What the driver is doing.
enum Phase {
    Idle,
    ToPickup {
        trip: String,
        pickup: LatLng,
        dropoff: Option<LatLng>,
    },
    Boarding {
        trip: String,
        until: Instant,
        dropoff: LatLng,
    },
    ToDropoff {
        trip: String,
        dropoff: LatLng,
    },
    /// Completion reported; waiting for the server to confirm it.
    Finishing {
        trip: String,
    },
}

fn point(p: Option<&pb::LatLng>) -> Option<LatLng> {
    p.and_then(|p| LatLng::new(p.lat, p.lng).ok())
}

/// `from` moved up to `metres` towards `to`; whether it got there.
fn toward(from: LatLng, to: LatLng, metres: f64) -> (LatLng, bool) {
    let left = from.distance_m(to);
    if left <= metres.max(1.0) {
        return (to, true);
    }
    let f = metres / left;
    let next = LatLng::new(from.lat() + (to.lat() - from.lat()) * f, from.lng() + (to.lng() - from.lng()) * f);
    (next.unwrap_or(to), false)
}

/// Where a rider who gave no dropoff gets out: a kilometre north.
fn somewhere_near(pickup: LatLng) -> LatLng {
    LatLng::new((pickup.lat() + 0.009).min(90.0), pickup.lng()).unwrap_or(pickup)
}

struct Driver<'a> {
    tx: mpsc::Sender<pb::DriverMessage>,
    out: &'a mut (dyn Write + Send),
    json: bool,
    position: LatLng,
}

impl Driver<'_> {
    async fn send(&mut self, kind: Msg) -> Result<(), CtlError> {
        self.tx
            .send(pb::DriverMessage { kind: Some(kind) })
            .await
            .map_err(|_| CtlError::Input("the session ended".into()))
    }

    async fn progress(&mut self, trip: &str, status: pb::TripStatus) -> Result<(), CtlError> {
        let message = pb::TripProgress { trip_id: trip.to_owned(), status: status as i32 };
        self.send(Msg::TripProgress(message)).await?;
        show::step(
            self.out,
            "reported",
            json!(format!("{trip} {}", dispatch_proto::json::status(status as i32))),
            self.json,
        )?;
        Ok(())
    }

    fn say(&mut self, what: &str, detail: serde_json::Value) -> Result<(), CtlError> {
        Ok(show::step(self.out, what, detail, self.json)?)
    }
}

/// Plays the driver until the session ends or `--trips` are done.
pub async fn drive(client: &Client, args: DriveArgs, out: &mut (dyn Write + Send), json: bool) -> Result<(), CtlError> {
    let (tx, rx) = mpsc::channel(64);
    let hello = pb::Hello {
        driver_id: args.id.clone(),
        service_types: Vec::new(),
        position: Some(args.at.into()),
        available: true,
        auto_accept: args.auto_accept,
    };
    tx.send(pb::DriverMessage { kind: Some(Msg::Hello(hello)) })
        .await
        .map_err(|_| CtlError::Input("the session ended".into()))?;
    let mut events = client.drivers().connect(client.request(ReceiverStream::new(rx))).await?.into_inner();
    let mut me = Driver { tx, out, json, position: args.at };
    let mut phase = Phase::Idle;
    let mut done = 0;
    let tick = args.tick.0;
    let step_m = args.speed_kmh / 3.6 * tick.as_secs_f64();
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.message() => {
                let Some(event) = event? else {
                    me.say("session ended", serde_json::Value::Null)?;
                    return Ok(());
                };
                match event.kind {
                    Some(Event::SessionStarted(started)) => {
                        me.say("on duty", json!(format!("{} at {:.5},{:.5}", started.driver_id, args.at.lat(), args.at.lng())))?;
                        if let Some(trip) = started.current_trip {
                            phase = resume(&trip);
                        }
                    }
                    Some(Event::Offer(offer)) => {
                        let trip = offer.trip.as_ref().map_or("", |t| t.trip_id.as_str()).to_owned();
                        let accept = !args.decline_offers;
                        me.say("offer", json!(format!("{} for {trip}: {}", offer.offer_id, if accept { "accepting" } else { "declining" })))?;
                        me.send(Msg::OfferReply(pb::OfferReply { offer_id: offer.offer_id, accept })).await?;
                    }
                    Some(Event::OfferWithdrawn(w)) => me.say("offer withdrawn", json!(format!("{} ({})", w.offer_id, w.reason)))?,
                    Some(Event::Rejected(r)) => me.say("refused", json!(r.message))?,
                    Some(Event::Trip(trip)) => {
                        show::trip(me.out, &trip, json)?;
                        let status = pb::TripStatus::try_from(trip.status).unwrap_or(pb::TripStatus::Unspecified);
                        match status {
                            pb::TripStatus::DriverAssigned if matches!(phase, Phase::Idle) => phase = resume(&trip),
                            pb::TripStatus::Completed if matches!(&phase, Phase::Finishing { trip: t } if *t == trip.trip_id) => {
                                phase = Phase::Idle;
                                done += 1;
                                if args.trips.is_some_and(|n| done >= n) {
                                    me.send(Msg::Availability(pb::SetAvailability { available: false })).await?;
                                    me.say("off duty", json!(format!("{done} trips done")))?;
                                    // Hang up, and read to the end so that
                                    // everything sent has been taken.
                                    drop(me.tx);
                                    while events.message().await?.is_some() {}
                                    return Ok(());
                                }
                            }
                            pb::TripStatus::Cancelled | pb::TripStatus::NoDriverFound => phase = Phase::Idle,
                            _ => {}
                        }
                    }
                    None => {}
                }
            }
            _ = every.tick() => {
                phase = match phase {
                    Phase::Idle => Phase::Idle,
                    Phase::ToPickup { trip, pickup, dropoff } => {
                        let (next, there) = toward(me.position, pickup, step_m);
                        me.position = next;
                        me.send(Msg::Location(pb::LocationPing { position: Some(next.into()), ..Default::default() })).await?;
                        if there {
                            me.progress(&trip, pb::TripStatus::DriverArrived).await?;
                            let dropoff = dropoff.unwrap_or_else(|| somewhere_near(pickup));
                            Phase::Boarding { trip, until: Instant::now() + args.board.0, dropoff }
                        } else {
                            Phase::ToPickup { trip, pickup, dropoff }
                        }
                    }
                    Phase::Boarding { trip, until, dropoff } if Instant::now() >= until => {
                        me.progress(&trip, pb::TripStatus::InProgress).await?;
                        Phase::ToDropoff { trip, dropoff }
                    }
                    waiting @ (Phase::Boarding { .. } | Phase::Finishing { .. }) => waiting,
                    Phase::ToDropoff { trip, dropoff } => {
                        let (next, there) = toward(me.position, dropoff, step_m);
                        me.position = next;
                        me.send(Msg::Location(pb::LocationPing { position: Some(next.into()), ..Default::default() })).await?;
                        if there {
                            me.progress(&trip, pb::TripStatus::Completed).await?;
                            Phase::Finishing { trip }
                        } else {
                            Phase::ToDropoff { trip, dropoff }
                        }
                    }
                };
            }
        }
    }
}

/// What to do about a trip the driver holds: drive to the pickup, or on to
/// the dropoff if the rider is already aboard.
fn resume(trip: &pb::Trip) -> Phase {
    let (pickup, dropoff) = (point(trip.pickup.as_ref()), point(trip.dropoff.as_ref()));
    let Some(pickup) = pickup else { return Phase::Idle };
    let status = pb::TripStatus::try_from(trip.status).unwrap_or(pb::TripStatus::Unspecified);
    let id = trip.trip_id.clone();
    match status {
        pb::TripStatus::InProgress => {
            Phase::ToDropoff { trip: id, dropoff: dropoff.unwrap_or_else(|| somewhere_near(pickup)) }
        }
        pb::TripStatus::DriverArrived => Phase::Boarding {
            trip: id,
            until: Instant::now(),
            dropoff: dropoff.unwrap_or_else(|| somewhere_near(pickup)),
        },
        _ => Phase::ToPickup { trip: id, pickup, dropoff },
    }
}
