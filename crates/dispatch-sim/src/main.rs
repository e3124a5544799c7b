//! `dispatch-sim`: see the library's docs, or `dispatch-sim --help`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dispatch_sim::world::Think;
use dispatch_sim::{Format, Kpis, SimError, World, clock, plot, seed_points, trips, world};
use rand::SeedableRng;

/// Replays real trips through the engine in virtual time and prints the
/// KPIs of each matching policy.
#[derive(Debug, Parser)]
#[command(name = "dispatch-sim", version, about)]
struct Flags {
    /// A trip file, e.g. `../shared/data/nyc-2013-03-01-am/nyc_2013-03-01_8-12.csv`.
    #[arg(long)]
    data: PathBuf,
    /// Its layout (guessed from the path when left out).
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
    /// Policies to compare side by side, comma-separated (`nearest`,
    /// `batch:2s`, `batch:500ms`, `broadcast:3`); a policy may carry its own
    /// acceptance weight and forward dispatch radius after `+`
    /// (`nearest+accept:1500`, `nearest+forward:1000`,
    /// `batch:2s+accept:800+forward:500`).
    #[arg(long, default_value = "nearest")]
    compare: String,
    /// Straight-line speed, metres a second.
    #[arg(long, default_value_t = 8.0)]
    speed_mps: f64,
    /// Road over straight-line distance.
    #[arg(long, default_value_t = 1.3)]
    detour: f64,
    /// The chance a driver accepts an offer (on average over drivers).
    #[arg(long, default_value_t = 1.0)]
    accept: f64,
    /// Drivers differ: each one's own chance is drawn from `accept ± this`.
    #[arg(long, default_value_t = 0.0)]
    accept_spread: f64,
    /// Seconds a driver takes to answer: `MIN..MAX`, drawn uniformly, or
    /// `data`: the real request-to-accept intervals of the data (Austin).
    #[arg(long, default_value = "0..0", value_parser = think)]
    think_s: ThinkFlag,
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
    radius_m: f64,
    /// How long a request searches before it gives up, seconds.
    #[arg(long, default_value_t = 60)]
    patience_s: i64,
    /// Batch: leaving a request unmatched costs like a pickup this long...
    #[arg(long, default_value_t = 2_000.0)]
    unmatched_m: f64,
    /// ...plus this many metres per second waited.
    #[arg(long, default_value_t = 100.0)]
    unmatched_per_s_m: f64,
    /// Seed for drivers' start points and answers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One JSON object per run instead of a table.
    #[arg(long)]
    json: bool,
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

/// `--think-s`: a range, or the data's own intervals.
#[derive(Debug, Clone)]
enum ThinkFlag {
    Range(f64, f64),
    Data,
}

fn think(s: &str) -> Result<ThinkFlag, String> {
    if s == "data" {
        return Ok(ThinkFlag::Data);
    }
    range_s(s).map(|(a, b)| ThinkFlag::Range(a, b))
}

fn range_s(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s.split_once("..").ok_or_else(|| format!("{s:?}: expected MIN..MAX"))?;
    let parse = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}"));
    let (a, b) = (parse(a)?, parse(b)?);
    if !(0.0..=600.0).contains(&a) || b < a || b > 600.0 {
        return Err(format!("{s:?}: need 0 <= MIN <= MAX <= 600"));
    }
    Ok((a, b))
}

fn run(flags: &Flags, out: &mut impl Write) -> Result<(), SimError> {
    let format = flags
        .format
        .or_else(|| Format::guess(&flags.data))
        .ok_or_else(|| SimError::Input(format!("cannot tell the format of {}; pass --format", flags.data.display())))?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(flags.seed);
    let all = trips::read(&flags.data, format, &mut rng)?;
    let seeds = seed_points(&all, flags.from);
    let think = match flags.think_s {
        ThinkFlag::Range(lo, hi) => Think::Uniform(lo, hi),
        ThinkFlag::Data => {
            let real: Vec<f64> = all.iter().filter_map(|t| t.accept_after_s).collect();
            if real.is_empty() {
                return Err(SimError::Input("--think-s data: these trips carry no accept times".into()));
            }
            Think::Sampled(real)
        }
    };
    if !(0.0..=1.0).contains(&flags.accept) || !(0.0..=1.0).contains(&flags.accept_spread) {
        return Err(SimError::Input("--accept and --accept-spread are from 0 to 1".into()));
    }
    let sizes = flags.sweep_drivers.clone().map_or_else(|| vec![flags.drivers], |s| s.0);
    let policies: Vec<&str> = flags.compare.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    let mut rows: Vec<(String, Kpis)> = Vec::new();
    for &drivers in &sizes {
        for policy in &policies {
            let mut world = World {
                drivers,
                speed_mps: flags.speed_mps,
                detour: flags.detour,
                accept: flags.accept,
                accept_spread: flags.accept_spread,
                think: think.clone(),
                seed: flags.seed,
                ..World::default()
            };
            world.engine.max_pickup_distance_m = flags.radius_m;
            world.engine.search_timeout_ms = flags.patience_s.max(1) * 1_000;
            let spec = policy_spec(policy, flags)?;
            world.engine.matching = spec.matching;
            world.engine.accept_weight_m = spec.accept_weight_m;
            world.engine.forward_dispatch_m = spec.forward_dispatch_m;
            world.engine.batch_unmatched_m = flags.unmatched_m;
            world.engine.batch_unmatched_per_s_m = flags.unmatched_per_s_m;
            let kpis = world::run(&world, &all, &seeds, flags.from, flags.to)?;
            rows.push(((*policy).to_owned(), kpis));
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
    if policies.len() > 1 {
        writeln!(out).map_err(io)?;
        for (policy, k) in &rows {
            let Some((base_name, base)) = rows.iter().find(|(_, b)| b.drivers == k.drivers) else { continue };
            if std::ptr::eq(base, k) {
                continue;
            }
            let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            writeln!(
                out,
                "{} drivers: {policy} vs {base_name}: match {:+.1} points, pickup x{:.2}, wait p90 {:+.1} s, \
                 empty km x{:.2}, offers per request x{:.2}",
                k.drivers,
                (k.match_rate - base.match_rate) * 100.0,
                ratio(k.pickup_mean_m, base.pickup_mean_m),
                k.wait_p90_s - base.wait_p90_s,
                ratio(k.empty_km, base.empty_km),
                ratio(k.offers_per_trip, base.offers_per_trip),
            )
            .map_err(io)?;
        }
    }
    Ok(())
}

/// One entry of `--compare`.
struct Spec {
    matching: dispatch_core::engine::Policies,
    accept_weight_m: f64,
    forward_dispatch_m: f64,
}

/// `POLICY[+accept:M][+forward:M]`: the policy, its acceptance weight and
/// its forward dispatch radius (the flags' when not given).
fn policy_spec(s: &str, flags: &Flags) -> Result<Spec, SimError> {
    let mut parts = s.split('+');
    let matching = parts.next().unwrap_or_default().parse().map_err(SimError::Input)?;
    let mut spec =
        Spec { matching, accept_weight_m: flags.accept_weight_m, forward_dispatch_m: flags.forward_dispatch_m };
    for part in parts {
        let (name, metres) = part.split_once(':').ok_or_else(|| SimError::Input(format!("{s:?}: {part:?}")))?;
        let metres = metres.parse::<f64>().map_err(|e| SimError::Input(format!("{s:?}: {e}")))?;
        if !(0.0..=1_000_000.0).contains(&metres) {
            return Err(SimError::Input(format!("{s:?}: {name} is 0 to 1,000,000 metres")));
        }
        match name {
            "accept" => spec.accept_weight_m = metres,
            "forward" => spec.forward_dispatch_m = metres,
            other => return Err(SimError::Input(format!("{s:?}: unknown {other:?} (accept or forward)"))),
        }
    }
    Ok(spec)
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let mut out = std::io::stdout().lock();
    match run(&flags, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "dispatch-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
