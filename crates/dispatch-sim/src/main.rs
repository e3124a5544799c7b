//! `dispatch-sim`: see the library's docs, or `dispatch-sim --help`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dispatch_cli::Dur;
use dispatch_core::engine::MatchingSpec;
use dispatch_sim::world::Think;
use dispatch_sim::{Format, Kpis, SimError, World, clock, plot, seed_points, trips, world};
use rand::SeedableRng;

/// Replays real trips through the engine in virtual time and prints the
/// KPIs of each matching policy.
#[derive(Debug, Parser)]
#[command(name = "dispatch-sim", version, about)]
struct Flags {
    /// A trip file, e.g. `../shared/data/nyc-2013-03-01-am/nyc_2013-03-01_8-12.csv`.
    #[arg(long, required_unless_present = "random_trips")]
    data: Option<PathBuf>,
    /// Instead of a trip file: this many requests spread evenly at random
    /// over the window, from and to points drawn from `--road-network`'s
    /// roads.
    #[arg(long, requires = "road_network", conflicts_with = "data")]
    random_trips: Option<usize>,
    /// Drive the cars along this OpenStreetMap extract's roads at their
    /// speeds (`.osm.pbf` or `.osm`), and rank drivers by it (see `--rank`).
    #[arg(long)]
    road_network: Option<PathBuf>,
    /// How far from a road a point still joins it, metres.
    #[arg(long, default_value_t = dispatch_road::DEFAULT_SNAP_M)]
    road_snap_m: f64,
    /// How the engine ranks drivers, with `--road-network`: `road`,
    /// `crow` (the straight line, as without one), or both (`--rank crow
    /// road`: each policy run both ways, cars on the same roads).
    #[arg(long, num_args = 1.., value_enum, default_value = "road")]
    rank: Vec<Rank>,
    /// Its layout (read from its header when left out).
    #[arg(long)]
    format: Option<Format>,
    /// Replay the requests from this time of day (`HH:MM`).
    #[arg(long, default_value = "09:00", value_parser = clock)]
    from: f64,
    /// Up to this time of day.
    #[arg(long, default_value = "10:00", value_parser = clock)]
    to: f64,
    /// Fleet size.
    #[arg(long, default_value_t = 900)]
    drivers: usize,
    /// Run each fleet size of `FROM..TO[:STEP]` instead (default step 100).
    #[arg(long, value_parser = sweep)]
    sweep_drivers: Option<Sizes>,
    /// Matching settings to compare side by side, each in `dispatchd
    /// --matching`'s grammar (`nearest`, `batch:2s`, `broadcast:3`,
    /// `batch:2s,premium=nearest`, with `+accept:M` and `+forward:M`), as
    /// several values (`--compare nearest batch:2s+forward:1000`).
    #[arg(long, num_args = 1.., default_value = "nearest")]
    compare: Vec<String>,
    /// Straight-line driving speed, km/h.
    #[arg(long, default_value_t = 28.8)]
    speed_kmh: f64,
    /// Road over straight-line distance.
    #[arg(long, default_value_t = 1.3)]
    detour: f64,
    /// The chance a driver accepts an offer (on average over drivers).
    #[arg(long, default_value_t = 1.0)]
    accept: f64,
    /// Drivers differ: each one's own chance is drawn from `accept ± this`.
    #[arg(long, default_value_t = 0.0)]
    accept_spread: f64,
    /// How long a driver takes to answer: `MIN..MAX` (`2s..12s`), drawn
    /// uniformly, or `data`: the real request-to-accept intervals of the
    /// data (Austin).
    #[arg(long, default_value = "0s..0s", value_parser = think)]
    think: ThinkFlag,
    /// Acceptance-aware ranking for every policy: a driver who missed all
    /// their recent offers ranks like one this many metres farther.
    #[arg(long, default_value_t = 0.0)]
    accept_weight_m: f64,
    /// Forward dispatch for every policy: a driver whose ride ends within
    /// this many metres of a pickup may be offered it next.
    #[arg(long, default_value_t = 0.0)]
    forward_dispatch_m: f64,
    /// Write SVG plots of the runs into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The pickup radius, metres.
    #[arg(long, default_value_t = 5_000.0)]
    max_pickup_distance_m: f64,
    /// How long a request searches before it gives up.
    #[arg(long, default_value = "60s", value_parser = Dur::positive)]
    search_timeout: Dur,
    /// Batch: leaving a request unmatched costs like a pickup this long...
    #[arg(long, default_value_t = 2_000.0)]
    batch_unmatched_m: f64,
    /// ...plus this many metres per second waited.
    #[arg(long, default_value_t = 100.0)]
    batch_unmatched_per_s_m: f64,
    /// Seed for drivers' start points and answers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One JSON object per run instead of a table.
    #[arg(long)]
    json: bool,

    // ------------------------ earlier spellings, hidden (they still work)
    #[arg(long, hide = true)]
    speed_mps: Option<f64>,
    #[arg(long, hide = true, value_parser = think_seconds)]
    think_s: Option<ThinkFlag>,
    #[arg(long, hide = true)]
    radius_m: Option<f64>,
    #[arg(long, hide = true)]
    patience_s: Option<u64>,
    #[arg(long, hide = true)]
    unmatched_m: Option<f64>,
    #[arg(long, hide = true)]
    unmatched_per_s_m: Option<f64>,
}

impl Flags {
    /// Takes the earlier spellings into today's flags, and says for each
    /// what to write instead.
    fn take_earlier_spellings(&mut self, matches: &clap::ArgMatches) -> Vec<String> {
        use dispatch_cli::earlier;
        let given = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        let mut said = Vec::new();
        let speed = self.speed_mps.map(|mps| mps * 3.6);
        said.extend(earlier("speed-mps", "speed-kmh", speed, given("speed_kmh"), &mut self.speed_kmh));
        said.extend(earlier("think-s", "think", self.think_s, given("think"), &mut self.think));
        let radius = self.radius_m;
        said.extend(earlier(
            "radius-m",
            "max-pickup-distance-m",
            radius,
            given("max_pickup_distance_m"),
            &mut self.max_pickup_distance_m,
        ));
        let patience = self.patience_s.map(|s| Dur(std::time::Duration::from_secs(s)));
        said.extend(earlier(
            "patience-s",
            "search-timeout",
            patience,
            given("search_timeout"),
            &mut self.search_timeout,
        ));
        let unmatched = self.unmatched_m;
        said.extend(earlier(
            "unmatched-m",
            "batch-unmatched-m",
            unmatched,
            given("batch_unmatched_m"),
            &mut self.batch_unmatched_m,
        ));
        let per_s = self.unmatched_per_s_m;
        said.extend(earlier(
            "unmatched-per-s-m",
            "batch-unmatched-per-s-m",
            per_s,
            given("batch_unmatched_per_s_m"),
            &mut self.batch_unmatched_per_s_m,
        ));
        // The earlier `--compare a,b,c`: a list, where today a comma
        // separates a policy's services (and needs `service=`).
        if self.compare.len() == 1 && self.compare[0].contains(',') && !self.compare[0].contains('=') {
            let list: Vec<String> =
                self.compare[0].split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect();
            said.push(format!(
                "--compare {} is an earlier spelling: write --compare {}",
                self.compare[0],
                list.join(" ")
            ));
            self.compare = list;
        }
        said
    }
}

/// How drivers are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Rank {
    /// By the straight line.
    Crow,
    /// By the drive over the road network.
    Road,
}

/// Fleet sizes to sweep.
#[derive(Debug, Clone)]
struct Sizes(Vec<usize>);

fn sweep(s: &str) -> Result<Sizes, String> {
    let (range, step) = s.split_once(':').unwrap_or((s, "100"));
    let (a, b) = range.split_once("..").ok_or_else(|| format!("{s:?}: expected FROM..TO[:STEP]"))?;
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
    let (a, b, step) = (parse(a)?, parse(b)?, parse(step)?.max(1));
    Ok(Sizes((a..=b).step_by(step).collect()))
}

/// `--think`: a range of seconds, or the data's own intervals.
#[derive(Debug, Clone, Copy)]
enum ThinkFlag {
    Range(f64, f64),
    Data,
}

impl std::fmt::Display for ThinkFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dur = |s: f64| Dur(std::time::Duration::from_secs_f64(s));
        match *self {
            Self::Range(a, b) => write!(f, "{}..{}", dur(a), dur(b)),
            Self::Data => f.write_str("data"),
        }
    }
}

fn think(s: &str) -> Result<ThinkFlag, String> {
    let seconds = |v: &str| v.trim().parse::<Dur>().map(|d| d.0.as_secs_f64());
    think_with(s, seconds)
}

/// The earlier `--think-s MIN..MAX`, in seconds.
fn think_seconds(s: &str) -> Result<ThinkFlag, String> {
    think_with(s, |v| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}")))
}

fn think_with(s: &str, seconds: impl Fn(&str) -> Result<f64, String>) -> Result<ThinkFlag, String> {
    if s == "data" {
        return Ok(ThinkFlag::Data);
    }
    let (a, b) = s.split_once("..").ok_or_else(|| format!("{s:?}: expected MIN..MAX"))?;
    let (a, b) = (seconds(a)?, seconds(b)?);
    if !(0.0..=600.0).contains(&a) || b < a || b > 600.0 {
        return Err(format!("{s:?}: need 0 <= MIN <= MAX <= 10m"));
    }
    Ok(ThinkFlag::Range(a, b))
}

fn run(flags: &Flags, out: &mut impl Write) -> Result<(), SimError> {
    let roads = match &flags.road_network {
        Some(path) => {
            let (network, _) = dispatch_road::load(path, None, flags.road_snap_m)
                .map_err(|e| SimError::Input(format!("--road-network: {e}")))?;
            Some(std::sync::Arc::new(network))
        }
        None => None,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(flags.seed);
    let all = match (&flags.data, flags.random_trips, &roads) {
        (_, Some(n), Some(roads)) => trips::on_roads(&roads.main_part(), n, flags.from, flags.to, &mut rng)?,
        (Some(data), _, _) => {
            let format = match flags.format {
                Some(format) => format,
                None => Format::sniff(data)?,
            };
            let (all, dropped) = trips::read(data, format, &mut rng)?;
            if dropped.total() > 0 {
                eprintln!("dispatch-sim: {}: {dropped}", data.display());
            }
            all
        }
        _ => return Err(SimError::Input("give --data, or --random-trips with --road-network".into())),
    };
    let seeds = seed_points(&all, flags.from);
    let think = match flags.think {
        ThinkFlag::Range(lo, hi) => Think::Uniform(lo, hi),
        ThinkFlag::Data => {
            let real: Vec<f64> = all.iter().filter_map(|t| t.accept_after_s).collect();
            if real.is_empty() {
                return Err(SimError::Input("--think data: these trips carry no accept times".into()));
            }
            Think::Sampled(real)
        }
    };
    if !(0.0..=1.0).contains(&flags.accept) || !(0.0..=1.0).contains(&flags.accept_spread) {
        return Err(SimError::Input("--accept and --accept-spread are from 0 to 1".into()));
    }
    let sizes = flags.sweep_drivers.clone().map_or_else(|| vec![flags.drivers], |s| s.0);
    let policies: Vec<&str> = flags.compare.iter().map(|p| p.trim()).filter(|p| !p.is_empty()).collect();
    let ranks: Vec<Rank> = if roads.is_some() { flags.rank.clone() } else { vec![Rank::Crow] };
    let mut rows: Vec<(String, Kpis)> = Vec::new();
    for &drivers in &sizes {
        for (policy, rank) in policies.iter().flat_map(|p| ranks.iter().map(move |r| (p, *r))) {
            let mut world = World {
                drivers,
                speed_mps: flags.speed_kmh / 3.6,
                detour: flags.detour,
                accept: flags.accept,
                accept_spread: flags.accept_spread,
                think: think.clone(),
                seed: flags.seed,
                roads: roads.clone(),
                rank_by_road: rank == Rank::Road,
                ..World::default()
            };
            world.engine.max_pickup_distance_m = flags.max_pickup_distance_m;
            world.engine.search_timeout_ms = flags.search_timeout.as_ms();
            let spec: MatchingSpec = policy.parse().map_err(SimError::Input)?;
            world.engine.matching = spec.policies;
            world.engine.accept_weight_m = spec.accept_weight_m.unwrap_or(flags.accept_weight_m);
            world.engine.forward_dispatch_m = spec.forward_dispatch_m.unwrap_or(flags.forward_dispatch_m);
            world.engine.batch_unmatched_m = flags.batch_unmatched_m;
            world.engine.batch_unmatched_per_s_m = flags.batch_unmatched_per_s_m;
            let kpis = world::run(&world, &all, &seeds, flags.from, flags.to)?;
            let name = match (&roads, rank) {
                (None, _) => (*policy).to_owned(),
                (Some(_), Rank::Crow) => format!("{policy} by crow"),
                (Some(_), Rank::Road) => format!("{policy} by road"),
            };
            rows.push((name, kpis));
        }
    }
    let io = |e: std::io::Error| SimError::Input(format!("output: {e}"));
    if let Some(dir) = &flags.plot {
        for written in plot::all(dir, &rows)? {
            writeln!(std::io::stderr(), "wrote {}", written.display()).map_err(io)?;
        }
    }
    if flags.json {
        for (policy, kpis) in &rows {
            let mut value = serde_json::to_value(kpis).map_err(|e| SimError::Input(e.to_string()))?;
            value["policy"] = serde_json::json!(policy);
            writeln!(out, "{value}").map_err(io)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<22} {:>7} {:>8} {:>7} {:>9} {:>9} {:>10} {:>9} {:>9} {:>6} {:>9} {:>7} {:>8}",
        "policy",
        "drivers",
        "requests",
        "match",
        "wait_mean",
        "wait_p90",
        "pickup_m",
        "pickup_p90",
        "eta_mean",
        "util",
        "empty_km",
        "offers",
        "declined"
    )
    .map_err(io)?;
    for (policy, k) in &rows {
        writeln!(
            out,
            "{:<22} {:>7} {:>8} {:>6.1}% {:>8.1}s {:>8.1}s {:>10.0} {:>9.0} {:>8.0}s {:>5.1}% {:>9.0} {:>7.2} {:>7.1}%",
            policy,
            k.drivers,
            k.requests,
            k.match_rate * 100.0,
            k.wait_mean_s,
            k.wait_p90_s,
            k.pickup_mean_m,
            k.pickup_p90_m,
            k.pickup_eta_mean_s,
            k.utilisation * 100.0,
            k.empty_km,
            k.offers_per_trip,
            k.decline_rate * 100.0
        )
        .map_err(io)?;
    }
    // Against the first policy of the same fleet size, as ratios.
    if rows.len() > sizes.len() {
        writeln!(out).map_err(io)?;
        for (policy, k) in &rows {
            let Some((base_name, base)) = rows.iter().find(|(_, b)| b.drivers == k.drivers) else { continue };
            if std::ptr::eq(base, k) {
                continue;
            }
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            writeln!(
                out,
                "{} drivers: {policy} vs {base_name}: match {:+.1} points, pickup x{:.2}, pickup eta x{:.2}, \
                 wait p90 {:+.1} s, empty km x{:.2}, offers per request x{:.2}",
                k.drivers,
                (k.match_rate - base.match_rate) * 100.0,
                ratio(k.pickup_mean_m, base.pickup_mean_m),
                ratio(k.pickup_eta_mean_s, base.pickup_eta_mean_s),
                k.wait_p90_s - base.wait_p90_s,
                ratio(k.empty_km, base.empty_km),
                ratio(k.offers_per_trip, base.offers_per_trip),
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Flags::command().get_matches();
    let mut flags = Flags::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    for line in flags.take_earlier_spellings(&matches) {
        let _ = writeln!(std::io::stderr(), "dispatch-sim: {line}");
    }
    let mut out = std::io::stdout().lock();
    match run(&flags, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "dispatch-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
