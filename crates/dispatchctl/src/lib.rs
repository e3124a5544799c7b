//! `dispatchctl`: a command-line client for dispatch, for operators and for
//! trying the system out with no other tools.
//!
//! - `stats`, `shards`, `nearby`, `trip`, `cancel`, `watch`: what operators
//!   ask;
//! - `ride`: request a ride and follow it live;
//! - `drive`: play a driver who takes rides, drives to the pickup and the
//!   dropoff and reports progress, so that two terminals show a whole ride.
//!
//! Output is for people by default, one JSON object per line with `--json`.
//! [`run`] takes the parsed command line and where to write, so tests run
//! it against a real server exactly as the binary does.

mod drive;
mod show;

use std::future::Future;
use std::io::Write;

use clap::{Parser, Subcommand};
use dispatch_core::geo::LatLng;
use dispatch_proto::pb;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Talk to a dispatch server.
#[derive(Debug, Parser)]
#[command(name = "dispatchctl", version, about)]
pub struct Cli {
    /// Where the server is, and how long to wait for it.
    #[command(flatten, next_help_heading = "Connection")]
    pub connection: dispatch_cli::Connection,
    /// Who is asking.
    #[command(flatten, next_help_heading = "Connection")]
    pub token: dispatch_cli::Token,
    /// One JSON object per line instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The server's counters, as a table.
    Stats,
    /// The shards of the map: which node holds each, its drivers and open
    /// trips, and its rides and location updates per second, measured
    /// between two looks `--over` apart.
    Shards {
        /// The time between the two looks.
        #[arg(long, default_value = "1s", value_parser = dispatch_cli::Dur::positive)]
        over: dispatch_cli::Dur,
    },
    /// Drivers nearest a point.
    Nearby {
        /// `LAT,LNG`.
        #[arg(long, value_parser = lat_lng)]
        at: LatLng,
        /// How many.
        #[arg(long, default_value_t = 10)]
        limit: u32,
        /// Only within this many metres.
        #[arg(long)]
        radius_m: Option<f64>,
        /// Only drivers serving this service (default: any).
        #[arg(long)]
        service: Option<Service>,
        /// Only drivers who could take a ride now.
        #[arg(long)]
        available: bool,
    },
    /// A trip as it is now.
    Trip {
        /// Its id, e.g. `t-42`.
        id: String,
    },
    /// Cancels a trip (an operator may cancel any trip not yet ended).
    Cancel {
        /// Its id.
        id: String,
        /// Why, for the rider and the driver.
        #[arg(long, default_value = "cancelled by an operator")]
        reason: String,
    },
    /// Trips as they change, one line each.
    Watch {
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Requests a ride and follows it until it ends.
    Ride {
        /// The pickup, `LAT,LNG`.
        #[arg(long, value_parser = lat_lng)]
        from: LatLng,
        /// The dropoff, `LAT,LNG`.
        #[arg(long, value_parser = lat_lng)]
        to: Option<LatLng>,
        /// The rider's id (the token's subject when tokens are checked).
        #[arg(long, default_value = "dispatchctl-rider")]
        rider: String,
        /// The idempotency key: the same one follows the same trip again.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Plays a driver: takes rides, drives to the pickup and then the
    /// dropoff, and says so at each step.
    Drive(drive::DriveArgs),
    /// Prints a shell completion script:
    /// `dispatchctl completions bash > /etc/bash_completion.d/dispatchctl`.
    Completions {
        /// For which shell.
        shell: clap_complete::Shell,
    },
}

/// A service, as operators name it.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Service {
    /// An ordinary taxi.
    Taxi,
    /// A premium car.
    Premium,
    /// A van.
    Van,
    /// A driver who drives the rider's own car.
    DesignatedDriver,
}

impl From<Service> for pb::ServiceType {
    fn from(service: Service) -> Self {
        match service {
            Service::Taxi => Self::Taxi,
            Service::Premium => Self::Premium,
            Service::Van => Self::Van,
            Service::DesignatedDriver => Self::DesignatedDriver,
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The server could not be reached.
    #[error("cannot reach {target}: {cause}")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        cause: String,
    },
    /// The server said no.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] Status),
    /// The server did not answer within `--timeout`.
    #[error("no answer within {0} (--timeout)")]
    Timeout(dispatch_cli::Dur),
    /// A file could not be read, or the input made no sense.
    #[error("{0}")]
    Input(String),
    /// Writing the output failed.
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

fn lat_lng(s: &str) -> Result<LatLng, String> {
    let (lat, lng) = s.split_once(',').ok_or_else(|| format!("{s:?}: expected LAT,LNG"))?;
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    LatLng::new(parse(lat)?, parse(lng)?).map_err(|e| format!("{s:?}: {e}"))
}

/// What every command needs: a channel and the token.
pub(crate) struct Client {
    channel: Channel,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// How long a call may wait for its answer (a stream: for its start).
    timeout: dispatch_cli::Dur,
}

impl Client {
    async fn connect(cli: &Cli) -> Result<Self, CtlError> {
        let target = &cli.connection.target;
        let connect_error = |cause: String| CtlError::Connect { target: target.clone(), cause };
        let endpoint = cli.connection.endpoint(target).map_err(connect_error)?;
        let channel = endpoint.connect().await.map_err(|e| connect_error(e.to_string()))?;
        let token = cli.token.read().map_err(CtlError::Input)?;
        let token = token
            .map(|t| format!("Bearer {t}").parse().map_err(|_| CtlError::Input("the token is not ASCII".into())))
            .transpose()?;
        Ok(Self { channel, token, timeout: cli.connection.timeout })
    }

    /// `message` with the token attached.
    pub(crate) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", token.clone());
        }
        request
    }

    /// Waits for `call` at most `--timeout`.
    pub(crate) async fn answer<T>(&self, call: impl Future<Output = Result<T, Status>>) -> Result<T, CtlError> {
        match tokio::time::timeout(self.timeout.0, call).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(CtlError::Timeout(self.timeout)),
        }
    }

    fn admin(&self) -> pb::admin_service_client::AdminServiceClient<Channel> {
        pb::admin_service_client::AdminServiceClient::new(self.channel.clone())
    }

    fn riders(&self) -> pb::rider_service_client::RiderServiceClient<Channel> {
        pb::rider_service_client::RiderServiceClient::new(self.channel.clone())
    }

    pub(crate) fn drivers(&self) -> pb::driver_service_client::DriverServiceClient<Channel> {
        pb::driver_service_client::DriverServiceClient::new(self.channel.clone())
    }
}

/// Runs one command, writing what it shows to `out`.
pub async fn run(cli: Cli, out: &mut (dyn Write + Send)) -> Result<(), CtlError> {
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "dispatchctl", out);
        return Ok(());
    }
    let timeout = cli.connection.timeout;
    let client =
        tokio::time::timeout(timeout.0, Client::connect(&cli)).await.map_err(|_| CtlError::Timeout(timeout))??;
    let json = cli.json;
    match cli.command {
        Command::Stats => {
            let stats =
                client.answer(client.admin().get_stats(client.request(pb::GetStatsRequest {}))).await?.into_inner();
            show::stats(out, &stats, json)?;
        }
        Command::Shards { over } => {
            let look = || async {
                let mut admin = client.admin();
                let stats = admin.get_stats(client.request(pb::GetStatsRequest {}));
                Ok::<_, CtlError>(client.answer(stats).await?.into_inner())
            };
            let first = look().await?;
            tokio::time::sleep(over.0).await;
            let second = look().await?;
            show::shards(out, &first, &second, over.0, json)?;
        }
        Command::Nearby { at, limit, radius_m, service, available } => {
            let request = pb::NearbyRequest {
                center: Some(at.into()),
                limit,
                radius_m: radius_m.unwrap_or(0.0),
                service_types: service.into_iter().map(|s| pb::ServiceType::from(s) as i32).collect(),
                available_only: available,
                ..Default::default()
            };
            let nearby = client.answer(client.admin().nearby_drivers(client.request(request))).await?.into_inner();
            show::nearby(out, &nearby, json)?;
        }
        Command::Trip { id } => {
            let trip =
                client.answer(client.riders().get_trip(client.request(pb::GetTripRequest { trip_id: id }))).await?;
            show::trip(out, &trip.into_inner(), json)?;
        }
        Command::Cancel { id, reason } => {
            let request = pb::CancelRideRequest { trip_id: id, reason };
            let trip = client.answer(client.riders().cancel_ride(client.request(request))).await?;
            show::trip(out, &trip.into_inner(), json)?;
        }
        Command::Watch { count } => {
            let mut admin = client.admin();
            let mut changes =
                client.answer(admin.watch_trips(client.request(pb::WatchTripsRequest {}))).await?.into_inner();
            let mut seen = 0;
            while count.is_none_or(|n| seen < n) {
                let Some(trip) = changes.message().await? else { break };
                show::trip(out, &trip, json)?;
                seen += 1;
            }
        }
        Command::Ride { from, to, rider, request_id } => {
            let request_id = request_id.unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                format!("ctl-{}", now.as_millis())
            });
            let request = pb::RideRequest {
                rider_id: rider,
                pickup: Some(from.into()),
                dropoff: to.map(Into::into),
                service_type: 0,
                request_id,
                max_pickup_distance_m: 0.0,
            };
            let mut updates = client.answer(client.riders().request_ride(client.request(request))).await?.into_inner();
            while let Some(trip) = updates.message().await? {
                show::trip(out, &trip, json)?;
            }
        }
        Command::Drive(mut args) => {
            for line in args.take_earlier_spellings() {
                tracing::warn!("{line}");
            }
            drive::drive(&client, args, out, json).await?
        }
        Command::Completions { .. } => {}
    }
    Ok(())
}
