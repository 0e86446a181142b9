//! `fold_if`: inlining taken branches, nesting, name clashes, the forms a branch output
//! can take, the round cap, and pinning inputs to make conditions constant.

mod ir_build;

use ir_build::*;
use qrange::ir::{AttrValue, DType, Graph, Model};
use qrange::passes::{specialize, Changed, FoldIf, Pass, PassCx, PinInputs};

fn int(v: i64) -> AttrValue {
    AttrValue::Int(v)
}

fn if_op(b: &mut B, cond: &str, outs: &[&str], then_g: Graph, else_g: Graph) {
    b.op(
        "If",
        &[cond],
        outs,
        vec![
            ("then_branch", AttrValue::Graph(Box::new(then_g))),
            ("else_branch", AttrValue::Graph(Box::new(else_g))),
        ],
    );
}

fn names(m: &Model, ids: &[qrange::ir::ValueId]) -> Vec<String> {
    ids.iter().map(|v| m.graph.value(*v).name.clone()).collect()
}

/// `y = If(sr == 16000) { x * w16 } else { x * w8 }`, `sr` a graph input.
fn sample_rate_model() -> Model {
    let mut t = B::new("sr16k");
    t.init("w16", &f32s(&[2.0; 4], &[4]));
    t.op("Mul", &["x", "w16"], &["t_y"], vec![]);
    t.output("t_y");
    let mut e = B::new("sr8k");
    e.init("w8", &f32s(&[3.0; 4], &[4]));
    e.op("Mul", &["x", "w8"], &["e_y"], vec![]);
    e.output("e_y");
    let mut b = B::new("vad");
    b.input("x", DType::F32, "4")
        .input("sr", DType::I64, "")
        .init("k16000", &i64_scalar(16000));
    b.op("Equal", &["sr", "k16000"], &["is16k"], vec![]);
    if_op(&mut b, "is16k", &["y"], t.graph(), e.graph());
    b.output("y");
    b.model(16)
}

#[test]
fn pinned_input_selects_and_inlines_a_branch() {
    for (sr, weight) in [(16000, 2.0f32), (8000, 3.0)] {
        let mut m = sample_rate_model();
        let mut cx = PassCx::default();
        cx.pinned.insert("sr".into(), i64_scalar(sr));
        assert_eq!(specialize(&mut m, &mut cx).unwrap(), Changed::Yes);
        m.verify().unwrap();
        assert_eq!(count_ops(&m.graph, "If"), 0);
        assert_eq!(names(&m, &m.graph.inputs), ["x"]);
        assert_eq!(names(&m, &m.graph.outputs), ["y"]);
        let mul = m.graph.producer(m.graph.outputs[0]).unwrap().0;
        assert_eq!(m.graph.op(mul).op_type, "Mul");
        let w = m.graph.input(mul, 1).unwrap();
        let wt = m.graph.const_of(w).unwrap().to_tensor().unwrap();
        assert_eq!(wt, f32s(&[weight; 4], &[4]), "sr={sr}");
        assert!(cx.diagnostics.is_empty(), "{:?}", cx.diagnostics);
    }
}

#[test]
fn without_a_constant_condition_nothing_changes() {
    let mut m = sample_rate_model();
    let mut cx = PassCx::default();
    FoldIf::default().run(&mut m, &mut cx).unwrap();
    assert_eq!(count_ops(&m.graph, "If"), 1);
    let again = FoldIf::default().run(&mut m, &mut cx).unwrap();
    assert_eq!(again, Changed::No);
}

/// Two levels: the outer If is on a pinned flag; its taken branch squeezes `h` only if
/// `h`'s first dim is 1 (a test that is constant once the input shape is known).
fn nested_model() -> Model {
    let mut sq = B::new("squeeze");
    sq.init("ax0", &i64s(&[0]));
    sq.op("Squeeze", &["h", "ax0"], &["sq_out"], vec![]);
    sq.output("sq_out");
    let mut keep = B::new("keep");
    keep.op("Identity", &["h"], &["keep_out"], vec![]);
    keep.output("keep_out");
    let mut outer_then = B::new("outer_then");
    outer_then
        .init("zero", &i64s(&[0]))
        .init("one", &i64s(&[1]));
    outer_then.op("Relu", &["x"], &["h"], vec![]);
    outer_then.op("Shape", &["h"], &["hs"], vec![]);
    outer_then.op("Gather", &["hs", "zero"], &["d0"], vec![("axis", int(0))]);
    outer_then.op("Equal", &["d0", "one"], &["is1"], vec![]);
    if_op(&mut outer_then, "is1", &["inner"], sq.graph(), keep.graph());
    outer_then.op("Neg", &["inner"], &["ot_out"], vec![]);
    outer_then.output("ot_out");
    let mut outer_else = B::new("outer_else");
    outer_else.op("Identity", &["x"], &["oe_out"], vec![]);
    outer_else.output("oe_out");
    let mut b = B::new("nested");
    b.input("x", DType::F32, "B,4")
        .input("flag", DType::Bool, "");
    if_op(
        &mut b,
        "flag",
        &["y"],
        outer_then.graph(),
        outer_else.graph(),
    );
    b.output("y");
    b.model(17)
}

fn pin_nested(m: &mut Model) -> PassCx {
    let mut cx = PassCx::default();
    cx.pinned.insert("flag".into(), bool_scalar(true));
    cx.input_shapes.insert("x".into(), vec![1, 4]);
    PinInputs.run(m, &mut cx).unwrap();
    cx
}

#[test]
fn nested_ifs_fold_over_several_rounds() {
    let mut m = nested_model();
    let mut cx = pin_nested(&mut m);
    FoldIf::default().run(&mut m, &mut cx).unwrap();
    m.verify().unwrap();
    assert_eq!(count_ops(&m.graph, "If"), 0);
    let ops: Vec<String> = m
        .graph
        .topo_order()
        .unwrap()
        .into_iter()
        .map(|o| m.graph.op(o).op_type.clone())
        .collect();
    assert_eq!(ops, ["Relu", "Squeeze", "Neg"]);
    assert_eq!(type_of(&m, "y"), "f32[4]");
}

#[test]
fn the_round_cap_is_an_error() {
    let mut m = nested_model();
    let mut cx = pin_nested(&mut m);
    let e = FoldIf { max_rounds: 1 }.run(&mut m, &mut cx).unwrap_err();
    assert_eq!(e.pass, "fold_if");
    assert!(
        e.to_string().contains("no fixed point after 1 rounds"),
        "{e}"
    );
}

#[test]
fn snapshot_nested() {
    let mut m = nested_model();
    let mut cx = pin_nested(&mut m);
    let text = run_and_diff(&FoldIf::default(), &mut m, &mut cx);
    insta::assert_snapshot!("nested", text);
}

/// Two Ifs in one graph whose branches both define `t` (legal: sibling scopes). The
/// first is folded; its `t` must not clash with the second's, nor its capture by a
/// subgraph of the inlined branch.
fn clash_model() -> Model {
    let mut inner_t = B::new("inner_then");
    inner_t.op("Relu", &["t"], &["it"], vec![]);
    inner_t.output("it");
    let mut inner_e = B::new("inner_else");
    inner_e.op("Neg", &["t"], &["ie"], vec![]);
    inner_e.output("ie");
    let mut a_then = B::new("a_then");
    a_then.op("Sigmoid", &["x"], &["t"], vec![]);
    if_op(&mut a_then, "c", &["u"], inner_t.graph(), inner_e.graph());
    a_then.output("u");
    let mut a_else = B::new("a_else");
    a_else.op("Identity", &["x"], &["a_e"], vec![]);
    a_else.output("a_e");
    let mut b_then = B::new("b_then");
    b_then.op("Tanh", &["x"], &["t"], vec![]);
    b_then.output("t");
    let mut b_else = B::new("b_else");
    b_else.op("Abs", &["x"], &["b_e"], vec![]);
    b_else.output("b_e");
    let mut b = B::new("clash");
    b.input("x", DType::F32, "4")
        .input("c", DType::Bool, "")
        .init("yes", &bool_scalar(true));
    if_op(&mut b, "yes", &["ya"], a_then.graph(), a_else.graph());
    if_op(&mut b, "c", &["yb"], b_then.graph(), b_else.graph());
    b.op("Add", &["ya", "yb"], &["y"], vec![]);
    b.output("y");
    b.model(17)
}

#[test]
fn clashing_names_get_derived_names_and_captures_follow() {
    let mut m = clash_model();
    let mut cx = PassCx::default();
    FoldIf::default().run(&mut m, &mut cx).unwrap();
    m.verify().unwrap();
    // The inlined `t` is renamed; the other If's branch keeps its own `t`.
    assert!(m.graph.value_by_name("t").is_none());
    let t1 = m.graph.value_by_name("t.1").expect("derived name");
    let sig = m.graph.producer(t1).unwrap().0;
    assert_eq!(m.graph.op(sig).op_type, "Sigmoid");
    // The inner If (on the input `c`) was inlined with its branches reading `t.1`.
    let inner = m
        .graph
        .ops()
        .find(|o| {
            let op = m.graph.op(*o);
            op.op_type == "If"
                && m.graph.value(m.graph.input(*o, 0).unwrap()).name == "c"
                && op
                    .subgraphs()
                    .iter()
                    .any(|(_, g)| g.name.as_deref() == Some("inner_then"))
        })
        .expect("inner If is now in the main graph");
    for (_, g) in m.graph.op(inner).subgraphs() {
        assert_eq!(g.captures(), ["t.1"]);
    }
    let other = m
        .graph
        .ops()
        .find(|o| {
            m.graph
                .op(*o)
                .subgraphs()
                .iter()
                .any(|(_, g)| g.name.as_deref() == Some("b_then"))
        })
        .unwrap();
    let b_then = m.graph.op(other).subgraphs()[0].1;
    assert!(b_then.value_by_name("t").is_some());
}

#[test]
fn snapshot_clash() {
    let mut m = clash_model();
    let text = run_and_diff(&FoldIf::default(), &mut m, &mut PassCx::default());
    insta::assert_snapshot!("clash", text);
}

/// Branch outputs that are not produced by a branch op: an outer value, a branch
/// initializer, and one value listed twice.
#[test]
fn branch_outputs_of_every_form() {
    let mut t = B::new("then");
    t.init("k", &f32s(&[5.0; 4], &[4]));
    t.op("Relu", &["x"], &["r"], vec![]);
    t.output("x").output("k").output("r").output("r");
    let mut e = B::new("else");
    e.op("Neg", &["x"], &["n"], vec![]);
    e.output("n").output("n").output("n").output("n");
    let mut b = B::new("forms");
    b.input("x", DType::F32, "4").init("go", &bool_scalar(true));
    if_op(
        &mut b,
        "go",
        &["o1", "o2", "o3", "o4"],
        t.graph(),
        e.graph(),
    );
    b.op("Sum", &["o1", "o2", "o3", "o4"], &["s"], vec![]);
    b.output("s").output("o1").output("o4");
    let mut m = b.model(17);
    let mut cx = PassCx::default();
    FoldIf::default().run(&mut m, &mut cx).unwrap();
    m.verify().unwrap();
    assert_eq!(count_ops(&m.graph, "If"), 0);
    assert_eq!(names(&m, &m.graph.outputs), ["s", "o1", "o4"]);
    let sum = m.graph.producer(m.graph.outputs[0]).unwrap().0;
    let ins: Vec<String> = m
        .graph
        .inputs_of(sum)
        .into_iter()
        .map(|v| m.graph.value(v.unwrap()).name.clone())
        .collect();
    // o1 is a graph output fed by the input x: it stays an Identity of x.
    // o2 is the branch constant k. o3 and o4 are the same branch value; o4 is a graph
    // output, so the Relu ends up producing o4 and o3 is gone.
    assert_eq!(ins, ["o1", "k", "o4", "o4"]);
    assert!(m.graph.value_by_name("o3").is_none());
    let src = |name: &str| {
        let v = m.graph.value_by_name(name).unwrap();
        let (p, _) = m.graph.producer(v).unwrap();
        let op = m.graph.op(p);
        let from = m.graph.input(p, 0).map(|v| m.graph.value(v).name.clone());
        (op.op_type.clone(), from)
    };
    assert_eq!(src("o1"), ("Identity".into(), Some("x".into())));
    assert_eq!(src("o4"), ("Relu".into(), Some("x".into())));
}

#[test]
fn snapshot_sample_rate() {
    let mut m = sample_rate_model();
    let mut cx = PassCx::default();
    cx.pinned.insert("sr".into(), i64_scalar(16000));
    PinInputs.run(&mut m, &mut cx).unwrap();
    let text = run_and_diff(&FoldIf::default(), &mut m, &mut cx);
    insta::assert_snapshot!("sample_rate", text);
}

#[test]
fn an_if_inside_a_loop_body_folds_in_place() {
    let mut t = B::new("t");
    t.op("Relu", &["v_in"], &["t_out"], vec![]);
    t.output("t_out");
    let mut e = B::new("e");
    e.op("Neg", &["v_in"], &["e_out"], vec![]);
    e.output("e_out");
    let mut body = B::new("body");
    body.input("iter", DType::I64, "")
        .input("cond_in", DType::Bool, "")
        .input("v_in", DType::F32, "4");
    if_op(&mut body, "use_relu", &["v_out"], t.graph(), e.graph());
    body.op("Identity", &["cond_in"], &["cond_out"], vec![]);
    body.output("cond_out").output("v_out");
    let mut b = B::new("loop");
    b.input("x", DType::F32, "4")
        .init("trips", &i64_scalar(3))
        .init("go", &bool_scalar(true))
        .init("use_relu", &bool_scalar(false));
    b.op(
        "Loop",
        &["trips", "go", "x"],
        &["y"],
        vec![("body", AttrValue::Graph(Box::new(body.graph())))],
    );
    b.output("y");
    let mut m = b.model(17);
    let mut cx = PassCx::default();
    FoldIf::default().run(&mut m, &mut cx).unwrap();
    m.verify().unwrap();
    assert_eq!(count_ops(&m.graph, "If"), 0);
    assert_eq!(count_ops(&m.graph, "Loop"), 1);
    let lp = m.graph.ops().next().unwrap();
    let body = m.graph.op(lp).subgraphs()[0].1;
    let v_out = body.outputs[1];
    let (p, _) = body.producer(v_out).unwrap();
    assert_eq!(body.op(p).op_type, "Neg");
    assert_eq!(body.value(v_out).name, "v_out");
    // The condition was the only use of the outer constant: it is gone.
    assert!(m.graph.value_by_name("use_relu").is_none());
}
