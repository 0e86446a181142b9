//! Text dump snapshots of the fixtures (the format of `qrange inspect --graph`).

mod common;

use common::*;

fn dump(rel: &str) -> String {
    let m = qrange::onnx::read_model(&fixture(rel)).unwrap();
    qrange::ir::dump::dump_model(&m)
}

#[test]
fn tiny_models() {
    for name in [
        "tiny_cnn",
        "tiny_mlp",
        "tiny_if",
        "tiny_nested_if",
        "tiny_shape_if",
        "tiny_loop",
        "tiny_conv_loop",
        "tiny_while",
        "tiny_scan",
        "tiny_bn",
        "tiny_outlier",
        "tiny_all_attrs",
    ] {
        insta::assert_snapshot!(name, dump(&format!("tiny/{name}.onnx")));
    }
}

#[test]
fn external_data_model() {
    insta::assert_snapshot!("tiny_external", dump("tiny/tiny_external/model.onnx"));
}

#[test]
fn real_model_magika() {
    insta::assert_snapshot!("magika", dump("magika/model.onnx"));
}

#[test]
fn dump_is_deterministic_and_ordered() {
    let a = dump("silero_vad/model.onnx");
    let b = dump("silero_vad/model.onnx");
    assert_eq!(a, b);
    // every op line's inputs are defined by an earlier line (topological order)
    let mut defined: std::collections::HashSet<String> = std::collections::HashSet::new();
    for line in a.lines().filter(|l| !l.starts_with(' ')) {
        if let Some(rest) = line
            .strip_prefix("input  %")
            .or(line.strip_prefix("const  %"))
        {
            defined.insert(rest.split(':').next().unwrap().to_string());
        } else if let Some((outs, rhs)) = line.split_once(" = ") {
            let args = rhs.split_once('(').unwrap().1.split_once(')').unwrap().0;
            for arg in args.split(", ").filter(|s| s.starts_with('%')) {
                assert!(
                    defined.contains(&arg[1..]),
                    "{arg} used before definition in: {line}"
                );
            }
            for o in outs.split(", ") {
                defined.insert(o.trim_start_matches('%').to_string());
            }
        }
    }
}
