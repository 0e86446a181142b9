//! Calibration statistics speed: nanoseconds per value of `TensorStats::observe` on 16 Mi
//! values (or the number given as argument) of a few activation-like distributions, observed
//! as one tensor and as many tensors of a typical tapped size. Run with
//! `cargo bench --bench observe`.

use qrange::calib::TensorStats;
use std::time::Instant;

/// A small deterministic generator (xorshift), so runs compare like with like.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

fn main() {
    // Optional first argument: the number of values per case.
    let n = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1 << 24);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cases: Vec<(&str, Vec<f32>)> = vec![
        (
            "relu (half zeros)",
            (0..n).map(|_| (rng.next() - 0.5).max(0.0) * 6.0).collect(),
        ),
        (
            "two-sided, heavy tail",
            (0..n)
                .map(|_| {
                    let u = rng.next() - 0.5;
                    u.signum() * (-(1.0 - 2.0 * u.abs()).max(1e-9).ln())
                })
                .collect(),
        ),
        ("constant", vec![0.25; n]),
    ];
    for (name, values) in &cases {
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let mut s = TensorStats::new();
            let t = Instant::now();
            s.observe(values);
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(&s);
        }
        println!(
            "{name:24} {:6.2} ns/value ({} values, best of 5)",
            best * 1e9 / values.len() as f64,
            values.len()
        );
    }
    // Calibration taps are mostly small and still in cache, just computed by the engine:
    // ppocr_cls's median tapped tensor has 11,520 values. Sixteen tensors of that size
    // (720 KiB), each observed 64 times into its own statistics.
    const SMALL: usize = 11_520;
    for (name, values) in &cases {
        let tensors: Vec<&[f32]> = values
            .chunks_exact(SMALL)
            .take(16)
            .cycle()
            .take(16 * 64)
            .collect();
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let mut stats: Vec<TensorStats> = (0..16).map(|_| TensorStats::new()).collect();
            let t = Instant::now();
            for (i, v) in tensors.iter().enumerate() {
                stats[i % 16].observe(v);
            }
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(&stats);
        }
        println!(
            "{name:24} {:6.2} ns/value ({} observations of {SMALL} values in cache, best of 5)",
            best * 1e9 / (tensors.len() * SMALL) as f64,
            tensors.len()
        );
    }
}
