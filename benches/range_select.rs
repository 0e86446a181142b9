//! Range-selection speed and quality on synthetic tensors: 1 M samples each from a few
//! distributions (ReLU-like half-normal with exact zeros, Laplace with outliers, uniform,
//! shifted Gaussian), every method on the grids activations are quantized to. Prints the
//! milliseconds per tensor (fastest of several runs) and the chosen range with its expected MSE; run with
//! `cargo bench --bench range_select`.
//!
//! `RANGE_SELECT_STATS=a.json,b.json` (files written by `qrange calibrate`) adds every tensor
//! of those files on uint8 and symmetric int8: total time per method, and one line per tensor
//! and method (`tsv` prefix: file, tensor, grid, method, lo, hi, expected MSE) to compare runs;
//! `RANGE_SELECT_SYNTHETIC=0` leaves out the synthetic tensors.

use qrange::calib::{
    compute_range, CalibrationFile, Method, MethodOptions, QuantTarget, TensorStats,
};
use std::time::Instant;

/// SplitMix64: a small deterministic generator (same samples on every run).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    fn laplace(&mut self) -> f64 {
        let u = self.uniform() - 0.5;
        -u.signum() * (1.0 - 2.0 * u.abs()).ln()
    }
}

const N: usize = 1_000_000;

/// The fastest of several runs of `f`, in milliseconds (at least `min_runs`, and more while
/// the total stays under `budget_s`): the minimum filters out other processes sharing the
/// cores.
fn fastest_ms<T>(min_runs: u32, budget_s: f64, mut f: impl FnMut() -> T) -> (f64, T) {
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    loop {
        let t = Instant::now();
        let out = f();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
        runs += 1;
        if runs >= min_runs && (start.elapsed().as_secs_f64() >= budget_s || runs >= 1000) {
            return (best, out);
        }
    }
}

fn stats_of(gen: impl FnMut(&mut Rng) -> f64, seed: u64) -> TensorStats {
    let mut rng = Rng(seed);
    let mut gen = gen;
    let vals: Vec<f32> = (0..N).map(|_| gen(&mut rng) as f32).collect();
    let mut s = TensorStats::new();
    s.observe(&vals);
    s
}

fn main() {
    let cases: Vec<(&str, TensorStats)> = vec![
        ("relu_halfnormal", stats_of(|r| r.normal().max(0.0), 1)),
        (
            "laplace_outliers",
            stats_of(
                |r| {
                    if r.uniform() < 1e-4 {
                        (20.0 + 40.0 * r.uniform()) * if r.uniform() < 0.5 { -1.0 } else { 1.0 }
                    } else {
                        r.laplace()
                    }
                },
                2,
            ),
        ),
        ("uniform_-1_3", stats_of(|r| -1.0 + 4.0 * r.uniform(), 3)),
        ("gauss_shifted", stats_of(|r| 1.0 + r.normal(), 4)),
    ];
    let targets = [
        ("u8", QuantTarget::new(0, 255, false).unwrap()),
        ("i8sym", QuantTarget::new(-127, 127, true).unwrap()),
        ("i4sym", QuantTarget::new(-7, 7, true).unwrap()),
        ("u16", QuantTarget::new(0, 65535, false).unwrap()),
    ];
    let methods = [
        Method::MinMax,
        Method::Percentile,
        Method::Entropy,
        Method::Mse,
        Method::Auto,
    ];
    let opts = MethodOptions::default();
    if std::env::var("RANGE_SELECT_SYNTHETIC").as_deref() == Ok("0") {
        for path in std::env::var("RANGE_SELECT_STATS")
            .unwrap_or_default()
            .split(',')
        {
            if !path.is_empty() {
                real_tensors(path, &targets[..2], &methods, &opts);
            }
        }
        return;
    }
    println!(
        "{:<17} {:<6} {:<10} {:>9} {:>13} {:>13} {:>14}",
        "tensor", "grid", "method", "ms", "lo", "hi", "expected_mse"
    );
    let mut auto_ms = Vec::new();
    for (name, s) in &cases {
        for (tname, t) in &targets {
            for &m in &methods {
                let (ms, r) = fastest_ms(5, 0.3, || compute_range(name, s, m, t, &opts).unwrap());
                if m == Method::Auto {
                    auto_ms.push(ms);
                }
                println!(
                    "{:<17} {:<6} {:<10} {:>9.3} {:>13.7} {:>13.7} {:>14.6e}",
                    name,
                    tname,
                    format!(
                        "{m}{}",
                        if m == Method::Auto {
                            format!("={}", r.method)
                        } else {
                            String::new()
                        }
                    ),
                    ms,
                    r.lo,
                    r.hi,
                    r.expected_mse
                );
            }
        }
    }
    let mean = auto_ms.iter().sum::<f64>() / auto_ms.len() as f64;
    let max = auto_ms.iter().cloned().fold(0.0, f64::max);
    println!("auto: mean {mean:.3} ms per tensor, max {max:.3} ms");
    if let Ok(files) = std::env::var("RANGE_SELECT_STATS") {
        for path in files.split(',').filter(|p| !p.is_empty()) {
            real_tensors(path, &targets[..2], &methods, &opts);
        }
    }
}

/// Every tensor of a calibration file, once per method and grid (see the crate doc).
fn real_tensors(
    path: &str,
    targets: &[(&str, QuantTarget)],
    methods: &[Method],
    opts: &MethodOptions,
) {
    let file = CalibrationFile::read(std::path::Path::new(path)).unwrap();
    for (tname, t) in targets {
        for &m in methods {
            let mut lines = Vec::new();
            let mut ms = 0.0;
            for (name, s) in &file.tensors {
                let (t_ms, r) = fastest_ms(3, 0.0, || compute_range(name, s, m, t, opts));
                ms += t_ms;
                if let Ok(r) = r {
                    lines.push(format!(
                        "tsv\t{path}\t{name}\t{tname}\t{m}\t{}\t{:e}\t{:e}\t{:e}",
                        r.method, r.lo, r.hi, r.expected_mse
                    ));
                }
            }
            println!(
                "{path} {tname} {m}: {} tensors, {:.1} ms total, {:.3} ms per tensor",
                file.tensors.len(),
                ms,
                ms / file.tensors.len().max(1) as f64
            );
            for l in lines {
                println!("{l}");
            }
        }
    }
}
