//! Image folders as calibration/evaluation data: the ppocr_cls PNG fixture reproduces its
//! calib.npz through the declared preprocessing, and quantize/calibrate/run take the folder.

mod common;

use common::*;
use qrange::data::{self, InputSpec, Preprocess};
use qrange::ir::DType;

/// The preprocessing that maps ppocr_cls's PNGs back to calib.npz.
const PPOCR: &str =
    "resize=192x48,layout=nchw,mean=0.5,0.5,0.5,std=0.5,0.5,0.5,scale=255,color=rgb";

/// One 8-bit step after normalisation: 1/255 / std.
const STEP: f64 = 1.0 / 255.0 / 0.5;

fn ppocr_input() -> Vec<InputSpec> {
    vec![InputSpec::new(
        "x",
        DType::F32,
        Some(vec![None, Some(3), None, None]),
    )]
}

/// Largest absolute difference between the image samples and the npz samples.
fn max_diff(images: &data::Dataset, npz: &data::Dataset) -> f64 {
    assert_eq!(images.len(), npz.len());
    let mut worst = 0.0f64;
    for (a, b) in images
        .read_all()
        .unwrap()
        .iter()
        .zip(&npz.read_all().unwrap())
    {
        assert_eq!(a["x"].shape(), b["x"].shape());
        let (a, b) = (a["x"].to_f64_vec().unwrap(), b["x"].to_f64_vec().unwrap());
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

#[test]
fn png_folder_reproduces_the_npz_samples() {
    let specs = ppocr_input();
    let npz = data::load(&fixture("ppocr_cls/calib.npz"), &specs).unwrap();
    let pre: Preprocess = PPOCR.parse().unwrap();
    let dir = fixture("ppocr_cls/images");
    assert!(data::is_image_dir(&dir).unwrap());
    let images = data::load_with(&dir, &specs, Some(&pre)).unwrap();
    assert_eq!(images.len(), 8);
    assert_eq!(images.get(0).unwrap()["x"].shape(), vec![1, 3, 48, 192]);
    assert_eq!(images.get(0).unwrap()["x"].dtype(), DType::F32);
    // Sorted name order: sample_00.png is npz sample 0, and so on; the notes file is skipped.
    let d = max_diff(&images, &npz);
    assert!(
        d <= STEP + 1e-6,
        "max difference {d} exceeds one 8-bit step {STEP}"
    );
    assert_eq!(images.skipped.len(), 1);
    assert_eq!(images.skipped[0].0, "NOTES.txt");
    // The comparison can fail: a wrong preprocessing is far off.
    let wrong: Preprocess = "scale=255,mean=0.4,std=0.5".parse().unwrap();
    let off = data::load_with(&dir, &specs, Some(&wrong)).unwrap();
    assert!(max_diff(&off, &npz) > 10.0 * STEP);
    // Without a preprocessing the folder is refused, not misread.
    let e = data::load(&dir, &specs).unwrap_err().to_string();
    assert!(e.contains("holds images"), "{e}");
}

#[test]
fn jpeg_files_decode_close_to_the_pngs() {
    let jpeg = fixture("ppocr_cls/images_jpeg");
    for i in 0..2 {
        let name = format!("sample_{i:02}");
        let j =
            data::decode_image(&std::fs::read(jpeg.join(format!("{name}.jpg"))).unwrap()).unwrap();
        let p = data::decode_image(
            &std::fs::read(fixture("ppocr_cls/images").join(format!("{name}.png"))).unwrap(),
        )
        .unwrap();
        assert_eq!((j.width, j.height, j.channels), (192, 48, 3));
        assert_eq!((p.width, p.height, p.channels), (192, 48, 3));
        // Lossy at quality 90: close on average, not exact.
        let mean: f64 = j
            .data
            .iter()
            .zip(&p.data)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / j.data.len() as f64;
        assert!(mean < 3.0, "{name}: mean abs pixel difference {mean}");
    }
    // A folder of JPEGs loads like a folder of PNGs.
    let pre: Preprocess = PPOCR.parse().unwrap();
    let ds = data::load_with(&jpeg, &ppocr_input(), Some(&pre)).unwrap();
    assert_eq!(ds.len(), 2);
    assert!(ds.skipped.is_empty());
}

#[test]
fn resize_and_layouts_on_a_real_image() {
    let dir = fixture("ppocr_cls/images");
    let nhwc = vec![InputSpec::new(
        "x",
        DType::F32,
        Some(vec![Some(1), None, None, Some(3)]),
    )];
    let pre: Preprocess = "resize=96x24,layout=nhwc,scale=255".parse().unwrap();
    let ds = data::load_with(&dir, &nhwc, Some(&pre)).unwrap();
    let t = &ds.get(3).unwrap()["x"];
    assert_eq!(t.shape(), vec![1, 24, 96, 3]);
    let v = t.to_f64_vec().unwrap();
    assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
    // Halving both sides: each output pixel is the mean of a 2x2 block of the original.
    let full: Preprocess = "layout=nhwc,scale=255".parse().unwrap();
    let big = data::load_with(&dir, &nhwc, Some(&full)).unwrap();
    let b = big.get(3).unwrap()["x"].to_f64_vec().unwrap();
    let at = |y: usize, x: usize, c: usize| b[(y * 192 + x) * 3 + c];
    for (y, x, c) in [(0, 0, 0), (5, 17, 1), (11, 40, 2), (23, 95, 0)] {
        let want = (at(2 * y, 2 * x, c)
            + at(2 * y, 2 * x + 1, c)
            + at(2 * y + 1, 2 * x, c)
            + at(2 * y + 1, 2 * x + 1, c))
            / 4.0;
        let got = v[(y * 96 + x) * 3 + c];
        assert!((got - want).abs() < 1e-5, "({y},{x},{c}): {got} vs {want}");
    }
    // Grey, rank 3 (no batch), u8.
    let gray = vec![InputSpec::new(
        "x",
        DType::U8,
        Some(vec![Some(1), Some(48), Some(192)]),
    )];
    let pre: Preprocess = "color=gray".parse().unwrap();
    let ds = data::load_with(&dir, &gray, Some(&pre)).unwrap();
    assert_eq!(ds.get(0).unwrap()["x"].shape(), vec![1, 48, 192]);
    assert_eq!(ds.get(0).unwrap()["x"].dtype(), DType::U8);
}

#[test]
fn quantize_from_an_image_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cls.int8.onnx");
    let model = fixture("ppocr_cls/model.onnx");
    let images = fixture("ppocr_cls/images");
    let eval = fixture("ppocr_cls/eval.npz");
    let r = qrange(&[
        "quantize",
        model.to_str().unwrap(),
        "--calib",
        images.to_str().unwrap(),
        "--preprocess",
        PPOCR,
        "--eval",
        eval.to_str().unwrap(),
        "--labels",
        "label",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let s: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(s["calibration_samples"], 8);
    assert_eq!(s["eval_samples"], 16);
    assert!(out.is_file());
    // One note names the folder, the input it fed, and the skipped file.
    let note = r
        .stderr
        .lines()
        .find(|l| l.starts_with("note: --calib"))
        .unwrap_or_else(|| panic!("no --calib note in: {}", r.stderr));
    assert!(
        note.contains("8 images as input 'x' f32[1,3,48,192]"),
        "{note}"
    );
    assert!(note.contains("skipped 1: NOTES.txt"), "{note}");

    // The same folder as evaluation data, and the JSON form of the preprocessing in a file,
    // with `calibrate`: statistics identical to the text form's.
    let spec_file = tmp.path().join("pre.json");
    std::fs::write(
        &spec_file,
        r#"{"resize": [192, 48], "layout": "nchw", "color": "rgb", "scale": 255,
            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}"#,
    )
    .unwrap();
    let mut stats = Vec::new();
    for (spec, name) in [
        (PPOCR.to_string(), "text.json"),
        (format!("@{}", spec_file.display()), "file.json"),
    ] {
        let o = tmp.path().join(name);
        let r = qrange(&[
            "calibrate",
            model.to_str().unwrap(),
            "--calib",
            images.to_str().unwrap(),
            "--preprocess",
            &spec,
            "-o",
            o.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "stderr: {}", r.stderr);
        stats.push(std::fs::read(&o).unwrap());
    }
    assert_eq!(stats[0], stats[1]);

    // `run --data DIR` takes the folder too.
    let npz = tmp.path().join("out.npz");
    let r = qrange(&[
        "run",
        model.to_str().unwrap(),
        "--data",
        images.to_str().unwrap(),
        "--preprocess",
        PPOCR,
        "-o",
        npz.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(r.stdout.contains("ran 8 samples"), "{}", r.stdout);
}

#[test]
fn eval_folder_without_preprocess_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let r = qrange(&[
        "quantize",
        fixture("ppocr_cls/model.onnx").to_str().unwrap(),
        "--calib",
        fixture("ppocr_cls/calib.npz").to_str().unwrap(),
        "--eval",
        fixture("ppocr_cls/images").to_str().unwrap(),
        "-o",
        tmp.path().join("o.onnx").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.starts_with("error: --eval ")
            && r.stderr.contains("holds images: give --preprocess"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1);
}

#[test]
fn mixed_folder_and_sorted_order() {
    // PNG and JPEG files side by side, taken in name order; other files skipped and listed.
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::copy(
        fixture("ppocr_cls/images_jpeg/sample_01.jpg"),
        d.join("b.JPG"),
    )
    .unwrap();
    std::fs::copy(fixture("ppocr_cls/images/sample_00.png"), d.join("a.png")).unwrap();
    std::fs::copy(fixture("ppocr_cls/images/sample_02.png"), d.join("c.png")).unwrap();
    std::fs::write(d.join("labels.csv"), "a,0\n").unwrap();
    std::fs::create_dir(d.join("more")).unwrap();
    let pre: Preprocess = PPOCR.parse().unwrap();
    let ds = data::load_with(d, &ppocr_input(), Some(&pre)).unwrap();
    assert_eq!(ds.len(), 3);
    let skipped: Vec<&str> = ds.skipped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(skipped, vec!["more", "labels.csv"]);
    let npz = data::load(&fixture("ppocr_cls/calib.npz"), &ppocr_input()).unwrap();
    let close = |i: usize, j: usize, tol: f64| {
        let a = ds.get(i).unwrap()["x"].to_f64_vec().unwrap();
        let b = npz.get(j).unwrap()["x"].to_f64_vec().unwrap();
        let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64;
        mean < tol
    };
    assert!(close(0, 0, STEP));
    assert!(close(1, 1, 0.05));
    assert!(close(2, 2, STEP));
    assert!(!close(2, 0, 0.05));
}
