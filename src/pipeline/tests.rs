//! Tests of the pipeline's steps together: the simulation that mixed precision and the
//! adaptive selection run is exact against the models the pipeline writes.
use super::inputs::{input_specs, load_data};
use super::options::{CalibSource, Common};
use super::precision::{build_sim, Basis};
use super::prepare::{prepare, PrepareEnd, PrepareInput, Prepared};
use super::ranges::{adaptive, choose_ranges, Candidates};
use super::Silent;
use crate::calib::collect::Keep;
use crate::calib::{CalibrationFile, Method, MethodOptions};
use crate::data::Dataset;
use crate::exec::{Session, SessionOptions};
use crate::ir::Tensor;
use crate::onnx::{self, ExternalPolicy};
use crate::passes::{self, Runner};
use crate::report::metrics::Comparison;
use crate::tune::{self, Precision, Unit};
use std::collections::{BTreeMap, BTreeSet};

fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

/// A fixture model prepared (with `wide` grids) and calibrated on its data.
fn calibrated(model: &str, data: &str, wide: bool) -> (Prepared, Dataset, CalibrationFile) {
    let c = Common::new(fixture(model), CalibSource::Data(fixture(data)));
    let m = onnx::read_model(&c.model).unwrap();
    let specs = input_specs(&m, &BTreeMap::new());
    let ds = load_data("--calib", &fixture(data), &specs, None, &Silent).unwrap();
    let input = PrepareInput {
        common: &c,
        float_nodes: &[],
        first_sample: Some(&ds.first().unwrap()),
        wide,
        dynamic: false,
        dump: &Default::default(),
    };
    let PrepareEnd::Prepared(p) = prepare(&input, m, &mut Runner::new(), &Silent).unwrap() else {
        panic!("stopped")
    };
    let keep = Keep {
        samples: &BTreeSet::new(),
        others: &mut |_| {},
    };
    let (stats, _) = super::calibrate::calibrate(&p, &ds, 2, &Silent, keep).unwrap();
    (*p, ds, stats)
}

/// `worst` lowered to the SQNR of any output of `test` against the same in `reference`.
fn lower_to_worst(
    worst: &mut f64,
    reference: &BTreeMap<String, Tensor>,
    test: &BTreeMap<String, Tensor>,
) {
    for (name, rv) in reference {
        let (a, b) = (
            crate::report::metrics::as_f32(rv).unwrap(),
            crate::report::metrics::as_f32(&test[name]).unwrap(),
        );
        let mut cmp = Comparison::default();
        cmp.add(&a, &b, false, None);
        *worst = worst.min(cmp.metrics().sqnr_db);
    }
}

/// Worst SQNR between the simulation under `config` and the materialised plan.
fn sim_vs_real(model: &str, data: &str, config_of: impl Fn(&Unit) -> Precision) -> f64 {
    sim_vs_real_w(model, data, config_of, false)
}

/// As `sim_vs_real`, with every 4-bit candidate weight on 4 bits when `w4_all`.
fn sim_vs_real_w(
    model: &str,
    data: &str,
    config_of: impl Fn(&Unit) -> Precision,
    w4_all: bool,
) -> f64 {
    let (mut p, ds, stats) = calibrated(model, data, true);
    let opts = MethodOptions::default();
    let mut cands = Candidates::default();
    let basis = Basis {
        p: &p,
        plan: &p.plan,
        stats: &stats,
        method: Method::Auto,
        opts: &opts,
    };
    let (units, sim) = build_sim(&basis, &mut cands, w4_all, false).unwrap();
    let w4: BTreeSet<String> = sim.narrow_weights().into_iter().collect();
    assert_eq!(w4.is_empty(), !w4_all);
    let config: Vec<Precision> = units.iter().map(&config_of).collect();
    let prec: BTreeMap<String, Precision> = units
        .iter()
        .zip(&config)
        .map(|(u, p)| (u.root.clone(), *p))
        .collect();
    tune::apply(&mut p.plan, &p.model, &units, &prec, "test");
    tune::apply_w4(&mut p.plan, &w4);
    choose_ranges(&mut p.plan, &stats.tensors, Method::Auto, &opts, &mut cands).unwrap();
    let mut q = p.model.clone();
    passes::insert_qdq::materialize(&mut q, &p.plan).unwrap();
    let (qp, _) = onnx::encode_model(&q, &ExternalPolicy::Inline, "").unwrap();
    let (sp, _) = onnx::encode_model(&sim.model, &ExternalPolicy::Inline, "").unwrap();
    let s0 = &ds.get(0).unwrap();
    let real = Session::new(&qp, None, s0, &SessionOptions::default()).unwrap();
    let simu = Session::new(
        &sp,
        None,
        &sim.feed(s0, &config, &w4),
        &SessionOptions::default(),
    )
    .unwrap();
    let mut worst = f64::INFINITY;
    for s in &ds.read_all().unwrap() {
        let r = real.run(s).unwrap();
        let t = simu.run(&sim.feed(s, &config, &w4)).unwrap();
        lower_to_worst(&mut worst, &r, &t);
    }
    worst
}

/// DequantizeLinears of a constant large enough for the simulation's side file in `m`,
/// and how many of them read codes kept in `file`.
fn large_constant_dequantizes(
    m: &crate::ir::Model,
    file: Option<&std::path::Path>,
) -> (usize, usize) {
    let g = &m.graph;
    let large: Vec<_> = g
        .ops()
        .filter(|&o| g.op(o).op_type == "DequantizeLinear")
        .filter_map(|o| g.input(o, 0).and_then(|v| g.const_of(v)))
        .filter(|c| c.numel() >= tune::sim::SIDE_FILE_ELEMENTS)
        .collect();
    let in_file = large
        .iter()
        .filter(|c| matches!(&c.data, crate::ir::TensorData::External(r) if Some(r.file.as_path()) == file))
        .count();
    (large.len(), in_file)
}

#[test]
fn constants_dequantized_as_the_engine_loads_give_the_same_bits() {
    // The codes of every DequantizeLinear of a large constant (weights, the int8 embedding
    // tables) in the side file, dequantized as the engine loads the simulation: the same
    // bits as when the engine runs those DequantizeLinear, in every precision.
    let (p, ds, stats) = calibrated("minilm_l3/model.onnx", "minilm_l3/calib.npz", true);
    let opts = MethodOptions::default();
    let basis = Basis {
        p: &p,
        plan: &p.plan,
        stats: &stats,
        method: Method::Auto,
        opts: &opts,
    };
    let (units, sim) = build_sim(&basis, &mut Candidates::default(), false, false).unwrap();
    tune::sim::LEAVE_DEQUANTIZE.with(|c| c.set(true));
    let left = build_sim(&basis, &mut Candidates::default(), false, false);
    tune::sim::LEAVE_DEQUANTIZE.with(|c| c.set(false));
    let (_, left) = left.unwrap();
    let (large, _) = large_constant_dequantizes(&left.model, None);
    assert!(large > 10, "too few left to the engine");
    assert_eq!(
        large_constant_dequantizes(&sim.model, sim.side_file()),
        (large, large),
        "codes not in the side file"
    );
    assert!(sim.side_file().is_some() && left.side_file().is_none());
    let inline = |m: &crate::ir::Model, s: &crate::data::Sample| {
        let (proto, _) = onnx::encode_model(m, &ExternalPolicy::Inline, "").unwrap();
        Session::new(&proto, None, s, &SessionOptions::default()).unwrap()
    };
    let samples = ds.read_all().unwrap();
    let w4 = BTreeSet::new();
    let configs: Vec<Vec<Precision>> = [Precision::A8, Precision::A16, Precision::Float]
        .into_iter()
        .map(|first| {
            (0..units.len())
                .map(|i| if i % 2 == 0 { first } else { Precision::A8 })
                .collect()
        })
        .collect();
    let first = sim.feed(&samples[0], &configs[0], &w4);
    let plain = inline(&left.model, &first);
    let folded =
        Session::from_ir(sim.model.clone(), None, &first, &SessionOptions::default()).unwrap();
    assert!(
        folded
            .notes()
            .iter()
            .any(|n| n.contains(&format!("DequantizeLinear x{large} "))),
        "{:?}",
        folded.notes()
    );
    let bits = |m: &BTreeMap<String, Tensor>| {
        m.iter()
            .map(|(k, t)| {
                let v = crate::report::metrics::as_f32(t).unwrap_or_default();
                (k.clone(), v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            })
            .collect::<Vec<_>>()
    };
    for config in &configs {
        for s in &samples {
            let feed = sim.feed(s, config, &w4);
            assert_eq!(
                bits(&plain.run(&feed).unwrap()),
                bits(&folded.run(&feed).unwrap())
            );
        }
    }
}

/// Worst SQNR, over `model`'s samples, between each adaptive range set written as a
/// model and the same set fed to the selection's simulation; and how many sets differ.
fn adaptive_sets_vs_real(model: &str, data: &str) -> (f64, usize) {
    let (p, ds, stats) = calibrated(model, data, false);
    let sets = adaptive::range_sets(
        &p.plan,
        &stats.tensors,
        &MethodOptions::default(),
        &mut Candidates::default(),
    )
    .unwrap();
    let mut base = p.plan.clone();
    adaptive::apply_set(&mut base, &sets[0]);
    let s = adaptive::simulation(&p, &base).unwrap();
    let sim = &s.sim;
    let (sp, _) = onnx::encode_model(&sim.model, &ExternalPolicy::Inline, "").unwrap();
    let all = ds.read_all().unwrap();
    let samples = &all[..all.len().min(3)];
    let params0 = adaptive::range_params(&p, &base, &s, &sets[0]).unwrap();
    let simu = Session::new(
        &sp,
        None,
        &sim.feed_params(&samples[0], &params0),
        &SessionOptions::default(),
    )
    .unwrap();
    let mut worst = f64::INFINITY;
    let mut distinct: Vec<Vec<(f32, f32)>> = Vec::new();
    let mut biases = 0;
    for set in &sets {
        let ranges: Vec<(f32, f32)> = set.values().map(|r| (r.lo, r.hi)).collect();
        if !distinct.contains(&ranges) {
            distinct.push(ranges);
        }
        let mut plan = p.plan.clone();
        adaptive::apply_set(&mut plan, set);
        let mut q = p.model.clone();
        passes::insert_qdq::materialize(&mut q, &plan).unwrap();
        let (qp, _) = onnx::encode_model(&q, &ExternalPolicy::Inline, "").unwrap();
        let real = Session::new(&qp, None, &samples[0], &SessionOptions::default()).unwrap();
        let params = adaptive::range_params(&p, &base, &s, set).unwrap();
        // The biases fed are, bit for bit, those the set's written model holds.
        for (b, t) in &params.biases {
            let written = crate::tune::sim::dequantized_bias(&q, b).unwrap();
            assert_eq!(t, &written, "{model}: bias '{b}'");
        }
        biases += params.biases.len();
        for s in samples {
            let r = real.run(s).unwrap();
            let t = simu.run(&sim.feed_params(s, &params)).unwrap();
            lower_to_worst(&mut worst, &r, &t);
        }
    }
    assert!(biases > 0, "{model}: no bias is a simulation input");
    (worst, distinct.len())
}

#[test]
fn adaptive_simulation_runs_each_range_set_as_written() {
    // Unit parameters and int32 biases fed for a set give exactly its written model.
    for (model, data) in [
        ("tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz"),
        ("ppocr_cls/model.onnx", "ppocr_cls/calib.npz"),
    ] {
        let (db, distinct) = adaptive_sets_vs_real(model, data);
        assert!(
            distinct >= 3,
            "{model}: only {distinct} distinct range sets"
        );
        assert!(
            db.is_infinite(),
            "{model}: simulation differs from a written set: {db} dB"
        );
    }
}

#[test]
fn the_simulation_holds_its_weights_codes_in_a_side_file_removed_with_it() {
    // The codes of every DequantizeLinear of a large constant lie in the simulation's
    // temporary side file (the engine dequantizes them as it loads the model), which goes
    // away with the last clone of the simulation.
    let (p, _, stats) = calibrated("minilm_l3/model.onnx", "minilm_l3/calib.npz", true);
    let opts = MethodOptions::default();
    let basis = Basis {
        p: &p,
        plan: &p.plan,
        stats: &stats,
        method: Method::Auto,
        opts: &opts,
    };
    let (_, sim) = build_sim(&basis, &mut Candidates::default(), false, false).unwrap();
    let file = sim.side_file().expect("a side file").to_path_buf();
    let (large, in_side) = large_constant_dequantizes(&sim.model, Some(&file));
    assert!(in_side > 5, "{in_side} codes in the side file");
    assert_eq!(in_side, large, "codes of large constants left inline");
    let copy = sim.clone();
    drop(sim);
    assert!(file.is_file(), "removed while a clone holds it");
    drop(copy);
    assert!(!file.exists(), "left behind");
    assert!(!file.parent().unwrap().exists(), "its folder left behind");
}

#[test]
fn simulation_is_exact_for_eight_bits() {
    let db = sim_vs_real("tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz", |_| Precision::A8);
    assert!(
        db.is_infinite(),
        "simulation differs from the 8-bit model: {db} dB"
    );
}

#[test]
fn simulation_with_four_bit_weights() {
    let db = sim_vs_real_w(
        "tiny/tiny_cnn.onnx",
        "tiny/tiny_cnn.npz",
        |_| Precision::A8,
        true,
    );
    assert!(
        db.is_infinite(),
        "simulation differs from the 4-bit model: {db} dB"
    );
}

#[test]
fn simulation_follows_mixed_precision() {
    // Units in turn 8-bit, 16-bit and float.
    let n = std::cell::Cell::new(0usize);
    let db = sim_vs_real("tiny/tiny_cnn.onnx", "tiny/tiny_cnn.npz", |_| {
        n.set(n.get() + 1);
        match n.get() % 3 {
            0 => Precision::A8,
            1 => Precision::A16,
            _ => Precision::Float,
        }
    });
    assert!(
        db.is_infinite(),
        "simulation differs from the mixed model: {db} dB"
    );
}

#[test]
fn simulation_with_folded_relus_and_reduced_weights() {
    // Not bit-exact here: the engine evaluates some float chains of this model
    // differently once Q/DQ pairs become float ops; far below quantization noise.
    let db = sim_vs_real("ppocr_cls/model.onnx", "ppocr_cls/calib.npz", |u| {
        if u.folded_op.is_some() {
            Precision::Float
        } else {
            Precision::A16
        }
    });
    assert!(db > 60.0, "simulation far from the mixed model: {db} dB");
}

#[test]
fn a_goal_the_samples_cannot_support_is_one_line_with_the_samples_that_would() {
    use crate::report::estimate::Estimate;
    let e = Estimate {
        figure: 32.0,
        lower: 26.0,
        upper: 36.0,
        samples: 32,
        level: 0.9,
    };
    let line = super::precision::unsupported(&crate::tune::search::Goal::Sqnr { db: 30.0 }, &e);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with("--target-sqnr 30: 32 calibration samples cannot support it"),
        "{line}"
    );
    // The bound is 6 dB below the figure, the goal 2: (6/2)^2 = 9 times the samples.
    assert!(line.contains("about 288 samples would"), "{line}");
    let drop = crate::tune::search::Goal::MaxDrop { points: 0.5 };
    let e = Estimate {
        figure: 0.0,
        lower: -1.5,
        upper: 0.0,
        samples: 64,
        level: 0.9,
    };
    // No drop measured, a bound of 1.5 points against 0.5 allowed: (1.5 / 0.5)^2 = 9
    // times the samples.
    assert!(super::precision::unsupported(&drop, &e).contains("about 576 samples would"));
}
