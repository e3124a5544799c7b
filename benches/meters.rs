#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn
//! What recording a figure for Prometheus costs, with the exporter
//! `dispatchd` installs, against the plain integer add the engine uses to
//! count a location update. Run: `cargo bench --bench meters`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

fn meters(c: &mut Criterion) {
    let metrics = dispatch_http::Metrics::install().unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("meters");
    // The engine's count of a location update (published at scrape time).
    let mut plain = 0u64;
    group.bench_function("location_update_count/u64_add", |b| {
        b.iter(|| {
            plain = black_box(plain).wrapping_add(1);
        });
    });
    // A counter through the facade with a handle taken once (what a hot
    // path would do), and one looked up by name and labels every time.
    let counter = metrics::counter!("dispatch_bench_total");
    group.bench_function("counter/handle", |b| b.iter(|| counter.increment(black_box(1))));
    group.bench_function("counter/by_name_and_label", |b| {
        b.iter(|| metrics::counter!("dispatch_rejected_total", "code" => "NOT_FOUND").increment(black_box(1)));
    });
    // A histogram sample, as each engine round and group commit records.
    let histogram = metrics::histogram!("dispatch_engine_round_seconds");
    group.bench_function("histogram/handle", |b| b.iter(|| histogram.record(black_box(0.000_12))));
    group.finish();
    black_box(plain);
    black_box(&metrics);
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = meters
}
criterion_main!(benches);
