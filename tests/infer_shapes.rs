//! `infer_shapes`: one case per op family on small generated models, the merge rules
//! against types the file gives, subgraphs, and before/after snapshots.

mod ir_build;

use ir_build::*;
use qrange::ir::{AttrValue, DType, Model};
use qrange::passes::{InferShapes, Pass, PassCx};

/// Builds a one-graph model at `opset`, runs infer_shapes, checks the IR.
fn infer(opset: i64, build: impl FnOnce(&mut B)) -> (Model, PassCx) {
    let mut b = B::new("t");
    build(&mut b);
    let mut m = b.model(opset);
    m.verify().unwrap();
    let mut cx = PassCx::default();
    InferShapes.run(&mut m, &mut cx).unwrap();
    m.verify().unwrap();
    (m, cx)
}

fn ints(v: &[i64]) -> AttrValue {
    AttrValue::Ints(v.to_vec())
}

fn int(v: i64) -> AttrValue {
    AttrValue::Int(v)
}

fn string(s: &str) -> AttrValue {
    AttrValue::String(s.as_bytes().to_vec())
}

fn zeros(shape: &[usize]) -> qrange::ir::Tensor {
    f32s(&vec![0.0; shape.iter().product()], shape)
}

#[test]
fn conv_family_and_pooling() {
    let (m, cx) = infer(17, |b| {
        b.input("x", DType::F32, "N,3,32,32")
            .init("w", &zeros(&[8, 3, 3, 3]))
            .init("wt", &zeros(&[8, 2, 3, 3]));
        for stat in ["s", "bb", "mu", "var"] {
            b.init(stat, &zeros(&[8]));
        }
        b.op(
            "Conv",
            &["x", "w"],
            &["c1"],
            vec![("pads", ints(&[1, 1, 1, 1])), ("strides", ints(&[2, 2]))],
        );
        b.op(
            "Conv",
            &["x", "w"],
            &["c2"],
            vec![
                ("auto_pad", string("SAME_UPPER")),
                ("strides", ints(&[3, 3])),
            ],
        );
        b.op(
            "Conv",
            &["x", "w"],
            &["c3"],
            vec![("dilations", ints(&[2, 2]))],
        );
        b.op(
            "ConvTranspose",
            &["c1", "wt"],
            &["ct"],
            vec![
                ("strides", ints(&[2, 2])),
                ("pads", ints(&[1, 1, 1, 1])),
                ("output_padding", ints(&[1, 1])),
            ],
        );
        b.op(
            "MaxPool",
            &["c1"],
            &["p1", "idx"],
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("pads", ints(&[1, 1, 1, 1])),
            ],
        );
        b.op(
            "AveragePool",
            &["c3"],
            &["p2"],
            vec![
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("ceil_mode", int(1)),
            ],
        );
        b.op("GlobalAveragePool", &["c1"], &["gap"], vec![]);
        b.op(
            "BatchNormalization",
            &["c1", "s", "bb", "mu", "var"],
            &["bn"],
            vec![],
        );
    });
    assert_eq!(type_of(&m, "c1"), "f32[N,8,16,16]");
    assert_eq!(type_of(&m, "c2"), "f32[N,8,11,11]");
    assert_eq!(type_of(&m, "c3"), "f32[N,8,28,28]");
    // ConvTranspose: 2*(16-1) + 1 + 3 - 2 = 32 per axis, 2 output channels (W is [C, M/g, k, k])
    assert_eq!(type_of(&m, "ct"), "f32[N,2,32,32]");
    assert_eq!(type_of(&m, "p1"), "f32[N,8,8,8]");
    assert_eq!(type_of(&m, "idx"), "i64[N,8,8,8]");
    // ceil((28 - 3) / 2) + 1 = 14 (floor would give 13)
    assert_eq!(type_of(&m, "p2"), "f32[N,8,14,14]");
    assert_eq!(type_of(&m, "gap"), "f32[N,8,1,1]");
    assert_eq!(type_of(&m, "bn"), "f32[N,8,16,16]");
    assert!(cx.diagnostics.is_empty(), "{:?}", cx.diagnostics);
}

#[test]
fn matmul_gemm_and_broadcasting_with_symbolic_dims() {
    let (m, _) = infer(17, |b| {
        b.input("a", DType::F32, "2,1,3,4")
            .input("b", DType::F32, "5,4,6")
            .input("v", DType::F32, "4")
            .input("x", DType::F32, "N,16")
            .input("y", DType::F32, "N,1,8")
            .input("z", DType::F32, "4,1")
            .input("p", DType::F32, "N,3")
            .input("q", DType::F32, "M,3")
            .init("w", &zeros(&[10, 16]));
        b.op("MatMul", &["a", "b"], &["mm"], vec![]);
        b.op("MatMul", &["v", "b"], &["mv"], vec![]);
        b.op("MatMul", &["a", "v"], &["am"], vec![]);
        b.op("Gemm", &["x", "w"], &["g"], vec![("transB", int(1))]);
        b.op("Add", &["y", "z"], &["s1"], vec![]);
        b.op("Mul", &["p", "p"], &["s2"], vec![]);
        b.op("Sub", &["p", "q"], &["s3"], vec![]);
        b.op("Max", &["y", "z", "y"], &["s4"], vec![]);
        b.op("Equal", &["p", "p"], &["e"], vec![]);
        b.op("Where", &["e", "p", "q"], &["w2"], vec![]);
    });
    assert_eq!(type_of(&m, "mm"), "f32[2,5,3,6]");
    assert_eq!(type_of(&m, "mv"), "f32[5,6]");
    assert_eq!(type_of(&m, "am"), "f32[2,1,3]");
    assert_eq!(type_of(&m, "g"), "f32[N,10]");
    assert_eq!(type_of(&m, "s1"), "f32[N,4,8]");
    assert_eq!(type_of(&m, "s2"), "f32[N,3]");
    assert_eq!(type_of(&m, "s3"), "f32[?,3]");
    assert_eq!(type_of(&m, "s4"), "f32[N,4,8]");
    assert_eq!(type_of(&m, "e"), "bool[N,3]");
    assert_eq!(type_of(&m, "w2"), "f32[?,3]");
}

#[test]
fn incompatible_broadcast_is_a_diagnostic_not_an_error() {
    let (m, cx) = infer(17, |b| {
        b.input("a", DType::F32, "2,3")
            .input("b", DType::F32, "4,3");
        b.op("Add", &["a", "b"], &["y"], vec![]);
    });
    assert_eq!(type_of(&m, "y"), "?");
    assert_eq!(cx.diagnostics.len(), 1);
    assert!(
        cx.diagnostics[0].what.contains("do not broadcast"),
        "{:?}",
        cx.diagnostics
    );
}

#[test]
fn elementwise_unary_and_special_outputs() {
    let (m, _) = infer(17, |b| {
        b.input("x", DType::F32, "N,4")
            .input("hi", DType::F32, "")
            .input("two", DType::F32, "?");
        for (i, op) in [
            "Relu",
            "Sigmoid",
            "Tanh",
            "HardSigmoid",
            "HardSwish",
            "LeakyRelu",
            "Sqrt",
            "Exp",
            "Erf",
            "Softmax",
            "Identity",
        ]
        .iter()
        .enumerate()
        {
            b.op(op, &["x"], &[&format!("u{i}")], vec![]);
        }
        b.op("Clip", &["x", "", "hi"], &["clip"], vec![]);
        b.op("Dropout", &["x"], &["d", "mask"], vec![]);
        b.op("Pow", &["x", "two"], &["pow"], vec![]);
        b.op("Not", &["e"], &["not"], vec![]);
        b.op("Greater", &["x", "x"], &["e"], vec![]);
        b.op("Cast", &["x"], &["c"], vec![("to", int(7))]);
        b.op("CastLike", &["c", "x"], &["cl"], vec![]);
    });
    for i in 0..11 {
        assert_eq!(type_of(&m, &format!("u{i}")), "f32[N,4]", "u{i}");
    }
    assert_eq!(type_of(&m, "clip"), "f32[N,4]");
    assert_eq!(type_of(&m, "d"), "f32[N,4]");
    assert_eq!(type_of(&m, "mask"), "bool[N,4]");
    assert_eq!(type_of(&m, "not"), "bool[N,4]");
    assert_eq!(type_of(&m, "c"), "i64[N,4]");
    assert_eq!(type_of(&m, "cl"), "f32[N,4]");
    // Pow's exponent has an unknown dim: so has the result, and broadcasting [?] with
    // [N,4] can only give 4 in the last place.
    assert_eq!(type_of(&m, "pow"), "f32[N,4]");
}

#[test]
fn reshape_flatten_transpose_concat() {
    let (m, _) = infer(17, |b| {
        b.input("x", DType::F32, "N,8,4,4")
            .init("t1", &i64s(&[0, -1]))
            .init("t2", &i64s(&[-1, 16]))
            .init("zero", &i64s(&[0]))
            .init("minus1", &i64s(&[-1]));
        b.op("Reshape", &["x", "t1"], &["r1"], vec![]);
        b.op("Reshape", &["x", "t2"], &["r2"], vec![]);
        // The exporter pattern: Reshape(x, Concat(Shape(x)[0:1], [-1])) keeps N.
        b.op("Shape", &["x"], &["sh"], vec![]);
        b.op("Gather", &["sh", "zero"], &["n"], vec![("axis", int(0))]);
        b.op("Concat", &["n", "minus1"], &["t3"], vec![("axis", int(0))]);
        b.op("Reshape", &["x", "t3"], &["r3"], vec![]);
        b.op("Flatten", &["x"], &["f1"], vec![]);
        b.op("Flatten", &["x"], &["f0"], vec![("axis", int(0))]);
        b.op(
            "Transpose",
            &["x"],
            &["tp"],
            vec![("perm", ints(&[0, 2, 3, 1]))],
        );
        b.op("Transpose", &["x"], &["tr"], vec![]);
        b.op("Concat", &["x", "x"], &["cat"], vec![("axis", int(1))]);
        b.op("Concat", &["x", "r3"], &["bad"], vec![("axis", int(0))]);
    });
    assert_eq!(type_of(&m, "r1"), "f32[N,128]");
    assert_eq!(type_of(&m, "r2"), "f32[?,16]");
    assert_eq!(type_of(&m, "sh"), "i64[4]");
    assert_eq!(type_of(&m, "t3"), "i64[2]");
    assert_eq!(type_of(&m, "r3"), "f32[N,128]");
    assert_eq!(type_of(&m, "f1"), "f32[N,128]");
    assert_eq!(type_of(&m, "f0"), "f32[1,?]");
    assert_eq!(type_of(&m, "tp"), "f32[N,4,4,8]");
    assert_eq!(type_of(&m, "tr"), "f32[4,4,8,N]");
    assert_eq!(type_of(&m, "cat"), "f32[N,16,4,4]");
    assert_eq!(type_of(&m, "bad"), "?");
}

#[test]
fn squeeze_unsqueeze_by_attribute_before_opset_13_and_by_input_after() {
    let build = |with_input: bool| {
        move |b: &mut B| {
            b.input("x", DType::F32, "N,1,4,1").init("ax", &i64s(&[1]));
            let axes = if with_input {
                vec![]
            } else {
                vec![("axes", ints(&[1]))]
            };
            let ins: &[&str] = if with_input { &["x", "ax"] } else { &["x"] };
            b.op("Squeeze", ins, &["s"], axes.clone());
            let ins2: &[&str] = if with_input { &["s", "ax"] } else { &["s"] };
            b.op("Unsqueeze", ins2, &["u"], axes);
            b.op("Squeeze", &["u"], &["all"], vec![]);
        }
    };
    let (m11, _) = infer(11, build(false));
    let (m13, _) = infer(13, build(true));
    for m in [&m11, &m13] {
        assert_eq!(type_of(m, "s"), "f32[N,4,1]");
        assert_eq!(type_of(m, "u"), "f32[N,1,4,1]");
        // No axes and a symbolic dim: the rank is unknown.
        assert_eq!(type_of(m, "all"), "f32[*]");
    }
    // At opset 13 the attribute form means nothing: axes come from the missing input.
    let (m13a, _) = infer(13, build(false));
    assert_eq!(type_of(&m13a, "u"), "f32[*]");
}

#[test]
fn gather_slice_split_pad() {
    let (m, _) = infer(13, |b| {
        b.input("x", DType::F32, "N,10,8")
            .init("i2", &i64s(&[2, 3]))
            .init("i0", &i64_scalar(1))
            .init("st", &i64s(&[1]))
            .init("en", &i64s(&[-1]))
            .init("ax", &i64s(&[1]))
            .init("sp", &i64s(&[2]))
            .init("z", &i64s(&[0]))
            .init("big", &i64s(&[i64::MAX]))
            .init("splits", &i64s(&[3, 7]))
            .init("pads", &i64s(&[0, 1, 0, 0, 2, 3]));
        b.op("Gather", &["x", "i2"], &["g2"], vec![("axis", int(1))]);
        b.op("Gather", &["x", "i0"], &["g0"], vec![("axis", int(2))]);
        b.op("Slice", &["x", "st", "en", "ax", "sp"], &["sl"], vec![]);
        b.op("Slice", &["x", "z", "big"], &["sl0"], vec![]);
        b.input("dyn", DType::I64, "1");
        b.op("Slice", &["x", "st", "dyn", "ax"], &["sld"], vec![]);
        b.op(
            "Split",
            &["x", "splits"],
            &["a", "b2"],
            vec![("axis", int(1))],
        );
        b.op("Split", &["x"], &["h1", "h2"], vec![("axis", int(2))]);
        b.op("Pad", &["x", "pads"], &["pd"], vec![]);
    });
    assert_eq!(type_of(&m, "g2"), "f32[N,2,8]");
    assert_eq!(type_of(&m, "g0"), "f32[N,10]");
    assert_eq!(type_of(&m, "sl"), "f32[N,4,8]");
    assert_eq!(type_of(&m, "sl0"), "f32[N,10,8]");
    assert_eq!(type_of(&m, "sld"), "f32[N,?,8]");
    assert_eq!(type_of(&m, "a"), "f32[N,3,8]");
    assert_eq!(type_of(&m, "b2"), "f32[N,7,8]");
    assert_eq!(type_of(&m, "h1"), "f32[N,10,4]");
    assert_eq!(type_of(&m, "pd"), "f32[N,13,11]");
}

#[test]
fn split_and_pad_attribute_forms_at_old_opsets() {
    let (m, _) = infer(11, |b| {
        b.input("x", DType::F32, "6,4");
        b.op(
            "Split",
            &["x"],
            &["a", "b2"],
            vec![("axis", int(0)), ("split", ints(&[2, 4]))],
        );
    });
    assert_eq!(type_of(&m, "a"), "f32[2,4]");
    assert_eq!(type_of(&m, "b2"), "f32[4,4]");
    let (m, _) = infer(2, |b| {
        b.input("x", DType::F32, "6,4");
        b.op("Pad", &["x"], &["p"], vec![("pads", ints(&[1, 0, 1, 2]))]);
    });
    assert_eq!(type_of(&m, "p"), "f32[8,6]");
    let (m, _) = infer(18, |b| {
        b.input("x", DType::F32, "5,2");
        b.op("Split", &["x"], &["a", "b2"], vec![("num_outputs", int(2))]);
    });
    assert_eq!(type_of(&m, "a"), "f32[3,2]");
    assert_eq!(type_of(&m, "b2"), "f32[2,2]");
}

#[test]
fn reductions_attribute_and_input_axes() {
    let (m, _) = infer(13, |b| {
        b.input("x", DType::F32, "N,4,5").init("last", &i64s(&[-1]));
        b.op(
            "ReduceMean",
            &["x"],
            &["rm"],
            vec![("axes", ints(&[1])), ("keepdims", int(0))],
        );
        b.op("ReduceSum", &["x", "last"], &["rs"], vec![]);
        b.op("ReduceMax", &["x"], &["all"], vec![("keepdims", int(0))]);
        b.op("ArgMax", &["x"], &["am"], vec![("axis", int(2))]);
    });
    assert_eq!(type_of(&m, "rm"), "f32[N,5]");
    assert_eq!(type_of(&m, "rs"), "f32[N,4,1]");
    assert_eq!(type_of(&m, "all"), "f32[]");
    assert_eq!(type_of(&m, "am"), "i64[N,4,1]");
    let (m, _) = infer(18, |b| {
        b.input("x", DType::F32, "N,4,5").init("ax", &i64s(&[0, 2]));
        b.op("ReduceMean", &["x", "ax"], &["rm"], vec![]);
    });
    assert_eq!(type_of(&m, "rm"), "f32[1,4,1]");
}

#[test]
fn shape_values_constants_and_expand() {
    let (m, _) = infer(17, |b| {
        b.input("x", DType::F32, "N,3")
            .init("to", &i64s(&[2, 1, 3]))
            .init("r0", &i64_scalar(2))
            .init("r1", &i64_scalar(11))
            .init("r2", &i64_scalar(3));
        b.op("Shape", &["x"], &["sh"], vec![]);
        b.op("Size", &["x"], &["sz"], vec![]);
        b.op("Shape", &["x"], &["tail"], vec![("start", int(-1))]);
        b.op(
            "Constant",
            &[],
            &["k"],
            vec![("value", tensor_attr(&i64s(&[2, 3])))],
        );
        b.op(
            "Constant",
            &[],
            &["kf"],
            vec![("value_float", AttrValue::Float(1.0))],
        );
        b.op(
            "ConstantOfShape",
            &["k"],
            &["cos"],
            vec![("value", tensor_attr(&i64s(&[7])))],
        );
        b.op("Expand", &["x", "to"], &["ex"], vec![]);
        b.op("Range", &["r0", "r1", "r2"], &["rg"], vec![]);
    });
    assert_eq!(type_of(&m, "sh"), "i64[2]");
    assert_eq!(type_of(&m, "sz"), "i64[]");
    assert_eq!(type_of(&m, "tail"), "i64[1]");
    assert_eq!(type_of(&m, "k"), "i64[2]");
    assert_eq!(type_of(&m, "kf"), "f32[]");
    assert_eq!(type_of(&m, "cos"), "i64[2,3]");
    assert_eq!(type_of(&m, "ex"), "f32[2,N,3]");
    assert_eq!(type_of(&m, "rg"), "i64[3]");
}

#[test]
fn resize_and_upsample() {
    let (m, _) = infer(13, |b| {
        b.input("x", DType::F32, "N,3,8,10")
            .init("sc", &f32s(&[1.0, 1.0, 2.0, 0.5], &[4]))
            .init("sz", &i64s(&[1, 3, 5, 5]));
        b.op("Resize", &["x", "", "sc"], &["r1"], vec![]);
        b.op("Resize", &["x", "", "", "sz"], &["r2"], vec![]);
    });
    assert_eq!(type_of(&m, "r1"), "f32[N,3,16,5]");
    assert_eq!(type_of(&m, "r2"), "f32[1,3,5,5]");
    let (m, _) = infer(9, |b| {
        b.input("x", DType::F32, "1,3,8,8")
            .init("sc", &f32s(&[1.0, 1.0, 2.0, 2.0], &[4]));
        b.op("Upsample", &["x", "sc"], &["u"], vec![]);
    });
    assert_eq!(type_of(&m, "u"), "f32[1,3,16,16]");
}

#[test]
fn quantize_dequantize_and_recurrent_outputs() {
    let (m, _) = infer(17, |b| {
        b.input("x", DType::F32, "5,N,16")
            .input("W", DType::F32, "2,128,16")
            .input("R", DType::F32, "2,128,32")
            .input("xb", DType::F32, "N,7,16")
            .input("W2", DType::F32, "1,24,16")
            .input("R2", DType::F32, "1,24,8")
            .init("s", &f32s(&[0.1], &[]))
            .init("zp", &qrange::ir::Tensor::I8(ndarray::arr0(0i8).into_dyn()));
        b.op("QuantizeLinear", &["x", "s", "zp"], &["q"], vec![]);
        b.op("QuantizeLinear", &["x", "s"], &["qu"], vec![]);
        b.op("DequantizeLinear", &["q", "s", "zp"], &["dq"], vec![]);
        b.op(
            "LSTM",
            &["x", "W", "R"],
            &["y", "yh", "yc"],
            vec![
                ("hidden_size", int(32)),
                ("direction", string("bidirectional")),
            ],
        );
        b.op(
            "GRU",
            &["xb", "W2", "R2"],
            &["gy", "gyh"],
            vec![("hidden_size", int(8)), ("layout", int(1))],
        );
    });
    assert_eq!(type_of(&m, "q"), "i8[5,N,16]");
    assert_eq!(type_of(&m, "qu"), "u8[5,N,16]");
    assert_eq!(type_of(&m, "dq"), "f32[5,N,16]");
    assert_eq!(type_of(&m, "y"), "f32[5,2,N,32]");
    assert_eq!(type_of(&m, "yh"), "f32[2,N,32]");
    assert_eq!(type_of(&m, "yc"), "f32[2,N,32]");
    assert_eq!(type_of(&m, "gy"), "f32[N,7,1,8]");
    assert_eq!(type_of(&m, "gyh"), "f32[N,1,8]");
}

#[test]
fn unknown_ops_stay_untyped_without_error() {
    let (m, cx) = infer(17, |b| {
        b.input("x", DType::F32, "4");
        b.op("FancyOp", &["x"], &["y"], vec![]);
        b.op("Relu", &["y"], &["z"], vec![]);
    });
    assert_eq!(type_of(&m, "y"), "?");
    assert_eq!(type_of(&m, "z"), "?");
    assert!(cx.diagnostics.is_empty());
}

#[test]
fn file_types_are_made_more_specific_and_contradicting_shapes_relaxed() {
    let (m, cx) = infer(17, |b| {
        b.input("x", DType::F32, "1,8");
        b.op("Relu", &["x"], &["a"], vec![]);
        b.op("Relu", &["x"], &["b2"], vec![]);
        b.op("Relu", &["x"], &["c"], vec![]);
        b.op("Relu", &["x"], &["d"], vec![]);
        b.op("Relu", &["x"], &["e"], vec![]);
        b.op("Relu", &["x"], &["f"], vec![]);
        b.typed("a", DType::F32, "?,8"); // unknown dim: filled
        b.typed("b2", DType::F32, "N,8"); // symbolic dim: a known one is more specific
        b.typed("c", DType::F32, "2,8"); // a contradicting dim: relaxed, reported
        b.typed("d", DType::F16, "1,8"); // other dtype: kept, reported
        b.typed("e", DType::F32, "seqlen,1,8"); // the rank contradicts: relaxed, reported
        b.typed("f", DType::F32, "N,9"); // one dim contradicts, the other is kept
        b.output("e");
    });
    assert_eq!(type_of(&m, "a"), "f32[1,8]");
    assert_eq!(type_of(&m, "b2"), "f32[1,8]");
    assert_eq!(type_of(&m, "c"), "f32[1,8]");
    assert_eq!(type_of(&m, "d"), "f16[1,8]");
    assert_eq!(type_of(&m, "e"), "f32[1,8]");
    assert_eq!(type_of(&m, "f"), "f32[1,8]");
    let notes: Vec<&str> = cx.diagnostics.iter().map(|d| d.what.as_str()).collect();
    assert_eq!(notes.len(), 4, "{notes:?}");
    let of = |v: &str| {
        notes
            .iter()
            .find(|n| n.contains(&format!("'{v}'")))
            .unwrap_or_else(|| panic!("no note on '{v}': {notes:?}"))
    };
    assert!(
        of("c").contains("declared shape f32[2,8] contradicts") && of("c").contains("relaxed"),
        "{notes:?}"
    );
    assert!(of("d").contains("keeping the model's type"), "{notes:?}");
    assert!(
        of("f").contains("f32[N,9]") && of("f").contains("relaxed to f32[1,8]"),
        "{notes:?}"
    );
    assert!(of("e").contains("graph output 'e'"), "{notes:?}");
    // The relaxed model is consistent: a second run finds nothing more to say.
    let mut m = m;
    let mut cx2 = PassCx::default();
    InferShapes.run(&mut m, &mut cx2).unwrap();
    assert!(
        cx2.diagnostics
            .iter()
            .all(|d| !d.what.contains("contradicts")),
        "{:?}",
        cx2.diagnostics
    );
}

#[test]
fn a_graph_output_of_another_rank_is_relaxed() {
    let (m, cx) = infer(17, |b| {
        b.input("x", DType::F32, "4,1,8")
            .init("s", &i64s(&[4, 1, -1]));
        b.op("Reshape", &["x", "s"], &["y"], vec![]);
        b.typed("y", DType::F32, "1,seqlen");
        b.output("y");
    });
    assert_eq!(type_of(&m, "y"), "f32[4,1,8]");
    assert_eq!(cx.diagnostics.len(), 1, "{:?}", cx.diagnostics);
    assert!(
        cx.diagnostics[0]
            .what
            .contains("graph output 'y': declared shape f32[1,seqlen] contradicts the graph, which computes f32[4,1,8]"),
        "{:?}",
        cx.diagnostics
    );
}

#[test]
fn a_second_run_changes_nothing() {
    let mut b = B::new("t");
    b.input("x", DType::F32, "N,3").init("w", &zeros(&[3, 5]));
    b.op("MatMul", &["x", "w"], &["y"], vec![]);
    b.output("y");
    let mut m = b.model(17);
    let mut cx = PassCx::default();
    assert_eq!(
        InferShapes.run(&mut m, &mut cx).unwrap(),
        qrange::passes::Changed::Yes
    );
    assert_eq!(
        InferShapes.run(&mut m, &mut cx).unwrap(),
        qrange::passes::Changed::No
    );
}

/// An `If` whose branches read an outer value: typed from the branches.
fn if_model(cond_const: Option<bool>) -> Model {
    let mut then_b = B::new("then");
    then_b.op("Relu", &["h"], &["t_out"], vec![]);
    then_b.op("Concat", &["h", "h"], &["t_cat"], vec![("axis", int(1))]);
    then_b.output("t_out").output("t_cat");
    let mut else_b = B::new("else");
    else_b.op("Neg", &["h"], &["e_out"], vec![]);
    else_b.op("Identity", &["h"], &["e_cat"], vec![]);
    else_b.output("e_out").output("e_cat");
    let mut b = B::new("main");
    b.input("x", DType::F32, "N,4");
    b.op("Sigmoid", &["x"], &["h"], vec![]);
    match cond_const {
        Some(c) => {
            b.init("cond", &bool_scalar(c));
        }
        None => {
            b.input("cond", DType::Bool, "");
        }
    }
    b.op(
        "If",
        &["cond"],
        &["y", "ycat"],
        vec![
            ("then_branch", AttrValue::Graph(Box::new(then_b.graph()))),
            ("else_branch", AttrValue::Graph(Box::new(else_b.graph()))),
        ],
    );
    b.output("y").output("ycat");
    b.model(17)
}

#[test]
fn if_outputs_from_branches() {
    let mut m = if_model(None);
    let mut cx = PassCx::default();
    InferShapes.run(&mut m, &mut cx).unwrap();
    m.verify().unwrap();
    assert_eq!(type_of(&m, "y"), "f32[N,4]");
    // then gives [N,8], else [N,4]: they agree on N only.
    assert_eq!(type_of(&m, "ycat"), "f32[N,?]");
    let mut m = if_model(Some(true));
    InferShapes.run(&mut m, &mut cx).unwrap();
    assert_eq!(type_of(&m, "ycat"), "f32[N,8]");
    let mut m = if_model(Some(false));
    InferShapes.run(&mut m, &mut cx).unwrap();
    assert_eq!(type_of(&m, "ycat"), "f32[N,4]");
}

#[test]
fn snapshot_small_cnn_with_symbolic_batch() {
    let mut b = B::new("cnn");
    b.input("x", DType::F32, "N,3,8,8")
        .init("w", &zeros(&[4, 3, 3, 3]))
        .init("bias", &zeros(&[4]))
        .init("fc", &zeros(&[4, 2]));
    b.op(
        "Conv",
        &["x", "w", "bias"],
        &["c"],
        vec![("pads", ints(&[1, 1, 1, 1]))],
    );
    b.op("Relu", &["c"], &["r"], vec![]);
    b.op(
        "MaxPool",
        &["r"],
        &["p"],
        vec![("kernel_shape", ints(&[2, 2])), ("strides", ints(&[2, 2]))],
    );
    b.op("GlobalAveragePool", &["p"], &["g"], vec![]);
    b.op("Flatten", &["g"], &["f"], vec![]);
    b.op("MatMul", &["f", "fc"], &["logits"], vec![]);
    b.op("Softmax", &["logits"], &["y"], vec![("axis", int(-1))]);
    b.output("y");
    let mut m = b.model(17);
    let text = run_and_diff(&InferShapes, &mut m, &mut PassCx::default());
    insta::assert_snapshot!("small_cnn", text);
}

#[test]
fn snapshot_if_branches() {
    let mut m = if_model(None);
    let text = run_and_diff(&InferShapes, &mut m, &mut PassCx::default());
    insta::assert_snapshot!("if_branches", text);
}

#[test]
fn snapshot_shape_arithmetic() {
    let mut b = B::new("shapes");
    b.input("x", DType::F32, "N,C,4")
        .init("one", &i64s(&[1]))
        .init("minus1", &i64s(&[-1]))
        .init("axes0", &i64s(&[0]));
    b.op("Shape", &["x"], &["sh"], vec![]);
    b.op("Slice", &["sh", "one", "minus1"], &["c"], vec![]);
    b.op("Gather", &["sh", "axes0"], &["n"], vec![("axis", int(0))]);
    b.op(
        "Concat",
        &["n", "c", "minus1"],
        &["target"],
        vec![("axis", int(0))],
    );
    b.op("Reshape", &["x", "target"], &["y"], vec![]);
    b.op(
        "Transpose",
        &["y"],
        &["z"],
        vec![("perm", ints(&[2, 1, 0]))],
    );
    b.output("z");
    let mut m = b.model(17);
    let text = run_and_diff(&InferShapes, &mut m, &mut PassCx::default());
    insta::assert_snapshot!("shape_arithmetic", text);
}

#[test]
fn loop_outputs_take_the_types_of_their_body() {
    for (file, expect) in [
        // A constant trip count, no cond, a body that hands its condition on.
        (
            "tiny_conv_loop.onnx",
            vec![
                ("refined", "f32[1,4,8,8]"),
                ("steps", "f32[3,1,4,1,1]"),
                ("y", "f32[1,3]"),
            ],
        ),
        // cond the constant true.
        (
            "tiny_loop.onnx",
            vec![("y", "f32[1,4]"), ("trace", "f32[3,1,4]")],
        ),
        // A while-loop: carried values typed, iteration count unknown.
        (
            "tiny_while.onnx",
            vec![("v", "f32[1,8]"), ("k", "i64[]"), ("y", "f32[1,3]")],
        ),
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/tiny")
            .join(file);
        let mut m = qrange::onnx::read_model(&path).unwrap();
        // Forget every type of the main graph but its inputs': all must come from inference.
        let g = &mut m.graph;
        for v in g.values().collect::<Vec<_>>() {
            if !g.is_input(v) && g.value(v).init.is_none() {
                g.value_mut(v).ty = None;
            }
        }
        InferShapes.run(&mut m, &mut PassCx::default()).unwrap();
        for (name, ty) in expect {
            let v = m.graph.value_by_name(name).unwrap();
            let got = m.graph.value(v).ty.as_ref().map(|t| t.display());
            assert_eq!(got.as_deref(), Some(ty), "{file}: {name}");
        }
    }
}

mod adversarial {
    //! Attributes and constant inputs are user input: odd values must give diagnostics
    //! or unknown dims, never a panic.
    use super::*;
    use proptest::prelude::*;

    fn weird() -> impl Strategy<Value = i64> {
        prop_oneof![
            -3i64..6,
            Just(i64::MAX),
            Just(i64::MIN),
            Just(i64::MAX / 2),
            Just(1i64 << 40),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn odd_attributes_and_constants_never_panic(
            op_idx in 0usize..14,
            a in proptest::collection::vec(weird(), 1..5),
            b in proptest::collection::vec(weird(), 1..5),
            d0 in 1i64..6,
        ) {
            let ops = [
                "Conv", "MaxPool", "AveragePool", "ConvTranspose", "Split", "Pad", "Slice",
                "Reshape", "Expand", "ConstantOfShape", "Tile", "DepthToSpace", "Squeeze",
                "Unsqueeze",
            ];
            let op_type = ops[op_idx];
            let mut bld = B::new("t");
            bld.input("x", DType::F32, &format!("1,{d0},5,6"))
                .init("w", &zeros(&[2, 1, 3, 3]))
                .init("ka", &i64s(&a))
                .init("kb", &i64s(&b));
            let attrs = vec![
                ("kernel_shape", ints(&a)),
                ("strides", ints(&b)),
                ("pads", ints(&[a[0], b[0], a[0], b[0]])),
                ("dilations", ints(&b)),
                ("axis", int(a[0])),
                ("blocksize", int(b[0])),
                ("group", int(a[0])),
                ("num_outputs", int(b[0])),
            ];
            let ins: &[&str] = match op_type {
                "Conv" | "ConvTranspose" => &["x", "w"],
                "Slice" => &["x", "ka", "kb", "ka", "kb"],
                "Reshape" | "Expand" | "Pad" | "Tile" | "Split" | "Squeeze" | "Unsqueeze" => {
                    &["x", "ka"]
                }
                "ConstantOfShape" => &["ka"],
                _ => &["x"],
            };
            bld.op(op_type, ins, &["y"], attrs);
            bld.output("y");
            let mut m = bld.model(17);
            let mut cx = PassCx::default();
            prop_assert!(InferShapes.run(&mut m, &mut cx).is_ok());
            prop_assert!(qrange::passes::FoldConstants.run(&mut m, &mut cx).is_ok());
            prop_assert!(m.verify().is_ok());
        }
    }
}
