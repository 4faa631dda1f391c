//! The planner alone, on a synthetic organisation (`dirsync::plan::synthetic`): N directory
//! users against N portal users and their baselines, about 1% changed. Two sizes, so that
//! linearity shows: the 100k median should be about ten times the 10k one.
//!
//! `cargo bench --bench plan`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use dirsync::plan::{self, synthetic::Synthetic};

fn plan_at(c: &mut Criterion, n: usize, samples: usize) {
    let world = match Synthetic::new(n) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("cannot build the synthetic organisation: {e}");
            std::process::exit(1);
        }
    };
    let mut group = c.benchmark_group("plan");
    group.sample_size(samples);
    group.bench_function(format!("{}k users, 1% changed", n / 1000), |b| {
        b.iter(|| plan::compute(black_box(&world.input())))
    });
    group.finish();
}

fn plan_10k(c: &mut Criterion) {
    plan_at(c, 10_000, 20);
}

fn plan_100k(c: &mut Criterion) {
    plan_at(c, 100_000, 10);
}

criterion_group!(benches, plan_10k, plan_100k);
criterion_main!(benches);
