//! `fold_constants`: Constant and Identity nodes, constant subexpressions, Shape/Size of
//! known shapes, size limits, subgraphs with outer constants, dead code.

mod ir_build;

use ir_build::*;
use qrange::ir::{AttrValue, DType, Model, Tensor};
use qrange::passes::{Changed, FoldConstants, InferShapes, Pass, PassCx};

fn int(v: i64) -> AttrValue {
    AttrValue::Int(v)
}

fn fold(m: &mut Model) -> PassCx {
    let mut cx = PassCx::default();
    InferShapes.run(m, &mut cx).unwrap();
    FoldConstants.run(m, &mut cx).unwrap();
    m.verify().unwrap();
    cx
}

fn const_value(m: &Model, name: &str) -> Tensor {
    let v = m.graph.value_by_name(name).expect("value exists");
    m.graph
        .const_of(v)
        .unwrap_or_else(|| panic!("{name} is not a constant"))
        .to_tensor()
        .unwrap()
}

fn has_value(m: &Model, name: &str) -> bool {
    m.graph.value_by_name(name).is_some()
}

/// The silero-style rank test: `Not(Equal(Size(Shape(x)), 2))`, cast to bool.
fn rank_test_model() -> Model {
    let mut b = B::new("rank_test");
    b.input("x", DType::F32, "1,576");
    b.op("Shape", &["x"], &["sh"], vec![]);
    b.op("Size", &["sh"], &["rank"], vec![]);
    b.op(
        "Constant",
        &[],
        &["two"],
        vec![("value", tensor_attr(&i64_scalar(2)))],
    );
    b.op("Equal", &["rank", "two"], &["is2"], vec![]);
    b.op("Not", &["is2"], &["not2"], vec![]);
    b.op("Cast", &["not2"], &["cond"], vec![("to", int(9))]);
    b.op("Identity", &["x"], &["x2"], vec![]);
    b.op("Where", &["cond", "x2", "x"], &["y"], vec![]);
    b.output("y");
    b.model(17)
}

#[test]
fn shape_tests_fold_to_constants() {
    let mut m = rank_test_model();
    fold(&mut m);
    assert_eq!(const_value(&m, "cond"), bool_scalar(false));
    // Everything but the Where is gone; the Identity's reader reads x.
    assert_eq!(m.graph.op_count(), 1);
    let w = m.graph.ops().next().unwrap();
    let ins: Vec<String> = m
        .graph
        .inputs_of(w)
        .into_iter()
        .map(|v| m.graph.value(v.unwrap()).name.clone())
        .collect();
    assert_eq!(ins, ["cond", "x", "x"]);
    assert!(!has_value(&m, "two") && !has_value(&m, "sh") && !has_value(&m, "x2"));
}

#[test]
fn shape_of_an_unknown_dim_is_not_folded() {
    let mut b = B::new("t");
    b.input("x", DType::F32, "N,3").init("i", &i64s(&[1]));
    b.op("Shape", &["x"], &["sh"], vec![]);
    b.op("Gather", &["sh", "i"], &["d"], vec![("axis", int(0))]);
    b.op("Reshape", &["x", "sh"], &["y"], vec![]);
    b.op("Mul", &["d", "d"], &["d2"], vec![]);
    b.output("y").output("d2");
    let mut m = b.model(17);
    fold(&mut m);
    assert!(m
        .graph
        .const_of(m.graph.value_by_name("sh").unwrap())
        .is_none());
    assert_eq!(count_ops(&m.graph, "Shape"), 1);
    assert_eq!(count_ops(&m.graph, "Gather"), 1);
}

#[test]
fn identity_to_a_graph_output_renames_the_producer() {
    let mut b = B::new("t");
    b.input("x", DType::F32, "4")
        .init("k", &f32s(&[1.0; 4], &[4]));
    b.op("Relu", &["x"], &["r"], vec![]);
    b.op("Identity", &["r"], &["out"], vec![]);
    b.op("Identity", &["x"], &["passthrough"], vec![]);
    b.op("Identity", &["k"], &["konst"], vec![]);
    b.output("out").output("passthrough").output("konst");
    let mut m = b.model(17);
    fold(&mut m);
    let names: Vec<&str> = m
        .graph
        .outputs
        .iter()
        .map(|v| m.graph.value(*v).name.as_str())
        .collect();
    assert_eq!(names, ["out", "passthrough", "konst"]);
    // Relu now produces `out` directly; `r` is gone.
    let relu = m.graph.producer(m.graph.outputs[0]).unwrap().0;
    assert_eq!(m.graph.op(relu).op_type, "Relu");
    assert!(!has_value(&m, "r"));
    // An input or an initializer cannot be renamed into an output: those Identities stay.
    assert_eq!(count_ops(&m.graph, "Identity"), 2);
}

#[test]
fn large_results_are_not_materialised() {
    let mut b = B::new("t");
    b.input("x", DType::F32, "300,300")
        .init("big", &i64s(&[300, 300]))
        .init("small", &i64s(&[2, 3]));
    b.op(
        "ConstantOfShape",
        &["big"],
        &["zeros"],
        vec![("value", tensor_attr(&f32s(&[0.0], &[1])))],
    );
    b.op(
        "ConstantOfShape",
        &["small"],
        &["ones"],
        vec![("value", tensor_attr(&f32s(&[1.0], &[1])))],
    );
    b.op("Add", &["x", "zeros"], &["y"], vec![]);
    b.output("y").output("ones");
    let mut m = b.model(17);
    let cx = fold(&mut m);
    // 90,000 elements is over the limit: the op stays (typed).
    let zeros = m.graph.value_by_name("zeros").unwrap();
    assert!(m.graph.producer(zeros).is_some());
    assert_eq!(type_of(&m, "zeros"), "f32[300,300]");
    // `ones` is small but a graph output: folding it would make an output an initializer.
    let ones = m.graph.value_by_name("ones").unwrap();
    assert!(m.graph.producer(ones).is_some());
    assert_eq!(count_ops(&m.graph, "ConstantOfShape"), 2);
    assert!(cx.diagnostics.is_empty(), "{:?}", cx.diagnostics);
}

#[test]
fn invalid_constant_computation_stays_and_is_reported() {
    let mut b = B::new("t");
    b.input("x", DType::F32, "3")
        .init("data", &i64s(&[1, 2, 3]))
        .init("idx", &i64s(&[7]));
    b.op("Gather", &["data", "idx"], &["g"], vec![("axis", int(0))]);
    b.op("Reshape", &["x", "g"], &["y"], vec![]);
    b.output("y");
    let mut m = b.model(17);
    let cx = fold(&mut m);
    assert_eq!(count_ops(&m.graph, "Gather"), 1);
    assert!(
        cx.diagnostics
            .iter()
            .any(|d| d.pass == "fold_constants" && d.what.contains("index 7")),
        "{:?}",
        cx.diagnostics
    );
}

/// An If (on a graph input) whose branches compute with outer constants and read an
/// outer Identity's output.
fn subgraph_model() -> Model {
    let mut then_b = B::new("then");
    then_b.op("Add", &["k", "k"], &["kk"], vec![]);
    then_b.op("Mul", &["xi", "kk"], &["t_out"], vec![]);
    then_b.output("t_out");
    let mut else_b = B::new("else");
    else_b.op("Neg", &["xi"], &["e_out"], vec![]);
    else_b.output("e_out");
    let mut b = B::new("main");
    b.input("x", DType::F32, "4")
        .input("c", DType::Bool, "")
        .init("k", &f32s(&[1.0, 2.0, 3.0, 4.0], &[4]));
    b.op("Identity", &["x"], &["xi"], vec![]);
    b.op(
        "If",
        &["c"],
        &["y"],
        vec![
            ("then_branch", AttrValue::Graph(Box::new(then_b.graph()))),
            ("else_branch", AttrValue::Graph(Box::new(else_b.graph()))),
        ],
    );
    b.output("y");
    b.model(17)
}

#[test]
fn subgraphs_fold_with_outer_constants_and_follow_renames() {
    let mut m = subgraph_model();
    fold(&mut m);
    let if_op = m.graph.ops().next().unwrap();
    assert_eq!(m.graph.op(if_op).op_type, "If");
    let subs = m.graph.op(if_op).subgraphs();
    let then_g = subs.iter().find(|(n, _)| *n == "then_branch").unwrap().1;
    let kk = then_g.value_by_name("kk").unwrap();
    let t = then_g
        .const_of(kk)
        .expect("kk folded inside the branch")
        .to_tensor()
        .unwrap();
    assert_eq!(t, f32s(&[2.0, 4.0, 6.0, 8.0], &[4]));
    // The outer Identity is gone and the branches now capture `x`.
    for (_, g) in subs {
        assert!(g.value_by_name("xi").is_none());
        assert!(
            g.captures().contains(&"x".to_string()),
            "{:?}",
            g.captures()
        );
    }
    assert!(!has_value(&m, "xi"));
}

#[test]
fn unused_ops_and_constants_are_removed_inputs_stay() {
    let mut b = B::new("t");
    b.input("x", DType::F32, "4")
        .input("unused_input", DType::F32, "4")
        .init("w", &f32s(&[1.0; 4], &[4]));
    b.op("Relu", &["x"], &["dead"], vec![]);
    b.op("Mul", &["dead", "w"], &["dead2"], vec![]);
    b.op("Neg", &["x"], &["y"], vec![]);
    b.output("y");
    let mut m = b.model(17);
    fold(&mut m);
    assert_eq!(m.graph.op_count(), 1);
    assert!(!has_value(&m, "w") && !has_value(&m, "dead"));
    assert!(has_value(&m, "unused_input"));
    let mut cx = PassCx::default();
    assert_eq!(FoldConstants.run(&mut m, &mut cx).unwrap(), Changed::No);
}

#[test]
fn snapshot_rank_test() {
    let mut m = rank_test_model();
    let mut cx = PassCx::default();
    InferShapes.run(&mut m, &mut cx).unwrap();
    let text = run_and_diff(&FoldConstants, &mut m, &mut cx);
    insta::assert_snapshot!("rank_test", text);
}

#[test]
fn snapshot_subgraph() {
    let mut m = subgraph_model();
    let mut cx = PassCx::default();
    InferShapes.run(&mut m, &mut cx).unwrap();
    let text = run_and_diff(&FoldConstants, &mut m, &mut cx);
    insta::assert_snapshot!("subgraph", text);
}
