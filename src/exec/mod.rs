//! Model execution: the only module that names the engine (tract).
//!
//! [`Session`] runs an ONNX [`ModelProto`] on host [`Tensor`]s and returns every graph output
//! plus any requested intermediate value ("tap") by its ONNX name. On the way in:
//! - `prepare` rewrites a copy of the model at the proto level: unknown operators are refused
//!   up front naming the node, taps become extra graph outputs, 4-bit tensors are widened to
//!   byte storage (the engine cannot load them), and types the engine cannot hold are refused
//!   naming the tensor;
//! - the copy is handed to the engine through its own protobuf types (same schema, re-decoded);
//! - a model given in the IR has each DequantizeLinear of constant codes kept in a side file
//!   taken out (`folded`): the engine's data resolver dequantizes the codes with qrange's
//!   kernel as the engine loads the model, so a quantized weight is held once, in float;
//! - `qdq` replaces the engine's QuantizeLinear/DequantizeLinear with ops backed by
//!   [`crate::quant::kernels`]: exact ONNX semantics (bit-exact with ONNX Runtime) for every
//!   integer type, axis and block size, immune to the engine's lookup-table folding;
//! - `lowbit` replaces the engine's MatMulNBits, GatherBlockQuantized, DynamicQuantizeLinear and
//!   MatMulInteger, and adds com.microsoft MatMulIntegerToFloat, DynamicQuantizeMatMul and
//!   DynamicQuantizeLSTM, with ops backed by [`crate::quant::nbits`], [`crate::quant::integer`]
//!   and [`crate::quant::lstm`] (ONNX Runtime's
//!   arithmetic, bit for bit); MatMulNBits dequantizes its weight exactly and feeds the engine's
//!   float32 product. The engine's own ConvInteger is exact (checked) and stays;
//! - `fake_quant` registers the switchable fake quantization of the simulation model
//!   (`tune::sim`), one op per switch (domain `qrange`, never written to a file);
//! - concrete input facts (element type and shape) come from the sample, so models with dynamic
//!   dimensions load. A plan is built per distinct input signature and cached.
//!
//! [`Session::run`] returns taps as extra outputs (all alive until the run ends);
//! [`Session::run_observed`] streams them instead (`tap`: each is handed to an observer as soon
//! as it is computed and freed once its readers ran), for calibration over large activations.
//!
//! [`Session::notes`] says what was replaced or emulated, for the user to see, and where ONNX
//! Runtime computes something else (MatMulNBits with `accuracy_level` 4, uint8 × int8 products
//! on CPUs without VNNI).
//!
//! **Loop.** The engine has no `Loop`. A model holding one is decoded to the IR first:
//! `Loop`s with a small constant trip count are unrolled (`passes::unroll_loop`, within
//! [`LoopLimits::unroll`]); a model still holding a `Loop` runs in stages (`staged`): the
//! engine runs the parts of the graph between `Loop`s whole, and each `Loop` runs its body
//! as a model of its own once per iteration (`loops`: ONNX's semantics, data-dependent trip
//! counts and conditions, at most [`LoopLimits::max_iterations`] iterations, an error past
//! them). Either way the session's interface is the same.
//!
//! A panic inside the engine on a malformed model becomes an [`ExecError`] (`engine`).

mod convert;
mod engine;
pub(crate) mod fake_quant;
mod folded;
pub mod loops;
mod lowbit;
mod prepare;
mod qdq;
mod staged;
mod tap;

use crate::ir::tensor::{DType, Tensor};
use crate::ir::Model;
use crate::onnx::proto::{GraphProto, ModelProto};
use engine::Engine;
pub use loops::LoopLimits;
use prost::Message;
use staged::Staged;
pub(crate) use staged::{part_model, reads};
use std::collections::BTreeMap;
use std::path::Path;

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The model has no graph.
    #[error("the model has no graph")]
    NoGraph,
    /// A node uses an operator the engine does not implement.
    #[error("node '{node}': operator '{op_type}'{} is not implemented by the execution engine", domain_suffix(.domain))]
    UnsupportedOp {
        node: String,
        op_type: String,
        domain: String,
    },
    /// A requested tap is not a value of the main graph.
    #[error("tap '{0}' is not a value of the model's main graph")]
    UnknownTap(String),
    /// A tensor has an element type the engine cannot hold.
    #[error("tensor '{tensor}': element type {dtype} cannot be executed")]
    UnsupportedType { tensor: String, dtype: DType },
    /// A tensor's stored data is malformed.
    #[error("tensor '{tensor}': {reason}")]
    TensorData { tensor: String, reason: String },
    /// A tensor's external data could not be read.
    #[error("tensor '{tensor}': external data: {reason}")]
    ExternalData { tensor: String, reason: String },
    /// A model input has no tensor in the sample.
    #[error("model input '{0}' is missing from the sample")]
    MissingInput(String),
    /// A sample tensor matches no model input.
    #[error("sample tensor '{0}' is not an input of the model")]
    UnknownInput(String),
    /// The engine could not load or optimize the model.
    #[error("loading the model failed: {0}")]
    Load(String),
    /// The engine failed while running the model.
    #[error("running the model failed: {0}")]
    Run(String),
    /// An output could not be converted back.
    #[error("output '{name}': {reason}")]
    Output { name: String, reason: String },
    /// A control-flow node run on the host (a `Loop`, or an `If` around one) failed or
    /// cannot run.
    #[error("{op_type} node '{node}': {reason}")]
    ControlFlow {
        op_type: String,
        node: String,
        reason: String,
    },
}

fn domain_suffix(domain: &str) -> String {
    match domain {
        "" | "ai.onnx" => String::new(),
        d => format!(" (domain {d})"),
    }
}

fn engine_error(e: impl std::fmt::Display) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Options of a [`Session`].
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Intermediate values (ONNX names) to return besides the graph outputs.
    pub taps: Vec<String>,
    /// Stream the taps to [`Session::run_observed`] instead of returning them as outputs.
    pub stream_taps: bool,
    /// How `Loop` nodes run: unrolling bounds and the cap on iterations.
    pub loops: LoopLimits,
}

/// A streamed tap's value: f32 data as the engine holds it (no copy), other types converted.
#[derive(Debug)]
pub enum TapValue<'a> {
    F32(&'a [f32]),
    Host(Tensor),
}

/// Why [`Session::run_observed`] stopped.
#[derive(Debug)]
pub enum ObservedError<E> {
    /// The engine failed.
    Exec(ExecError),
    /// The observer returned this error.
    Observer(E),
}

/// True when `g` or one of its subgraphs holds a default-domain `Loop`.
fn proto_holds_loop(g: &GraphProto) -> bool {
    g.node.iter().any(|n| {
        (n.op_type() == "Loop" && matches!(n.domain(), "" | "ai.onnx"))
            || n.attribute
                .iter()
                .flat_map(|a| a.g.iter().chain(a.graphs.iter()))
                .any(proto_holds_loop)
    })
}

/// How a [`Session`] runs its model.
enum Kind {
    /// Whole, in the engine.
    Engine(Box<Engine>),
    /// In stages around the `Loop`s the engine cannot run.
    Staged(Box<Staged>),
}

/// A model ready to run on host tensors.
pub struct Session {
    kind: Kind,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Engine(e) => e.fmt(f),
            Kind::Staged(s) => s.fmt(f),
        }
    }
}

impl Session {
    /// Prepares `model` and builds a plan for the input types and shapes of `sample`.
    ///
    /// `base_dir` is where external-data files live (`None`: the model has none). `sample` holds
    /// one tensor per model input (by name); its types and shapes become the input facts, so
    /// models with dynamic dimensions load. Other shapes given to [`Session::run`] later get
    /// their own plan. A model holding a `Loop` the engine cannot run whole runs `sample`
    /// once here, so that every part it reaches is loaded.
    pub fn new(
        model: &ModelProto,
        base_dir: Option<&Path>,
        sample: &BTreeMap<String, Tensor>,
        opts: &SessionOptions,
    ) -> Result<Session, ExecError> {
        let graph = model.graph.as_ref().ok_or(ExecError::NoGraph)?;
        if !proto_holds_loop(graph) {
            let engine = Engine::new(model, base_dir, sample, opts, Default::default())?;
            return Ok(Session {
                kind: Kind::Engine(Box::new(engine)),
            });
        }
        let bytes = model.encode_to_vec();
        let origin = Path::new("<model>");
        let m = crate::onnx::decode_model(&bytes, base_dir.unwrap_or(Path::new(".")), origin)
            .map_err(|e| ExecError::Load(e.to_string()))?;
        Session::from_ir(m, base_dir, sample, opts)
    }

    /// [`Session::new`] for a model in the IR; how it runs depends on its `Loop`s (see the
    /// module documentation).
    pub(crate) fn from_ir(
        mut m: Model,
        base_dir: Option<&Path>,
        sample: &BTreeMap<String, Tensor>,
        opts: &SessionOptions,
    ) -> Result<Session, ExecError> {
        let unrolled = crate::passes::unroll_loop::unroll_loops(&mut m, &opts.loops.unroll)
            .map_err(|e| ExecError::Load(e.to_string()))?;
        let notes: Vec<String> = unrolled
            .iter()
            .map(|u| {
                format!(
                    "Loop {}: unrolled into {} copies of its body (a constant trip count)",
                    u.node, u.trips
                )
            })
            .collect();
        if !staged::holds_loop(&m.graph) {
            // Weights still in their side file stay there: the engine reads them itself,
            // dequantizing those a DequantizeLinear of constants reads (`folded`).
            let folded = folded::fold(&mut m);
            let (proto, dir) =
                crate::onnx::engine_proto(&m).map_err(|e| ExecError::Load(e.to_string()))?;
            drop(m);
            let mut engine =
                Engine::new(&proto, dir.as_deref().or(base_dir), sample, opts, folded)?;
            engine.add_notes(notes);
            return Ok(Session {
                kind: Kind::Engine(Box::new(engine)),
            });
        }
        let staged = Staged::new(m, base_dir, opts, notes)?;
        let warm = if opts.stream_taps {
            let mut ignore = |_: &str, _: TapValue<'_>| Ok::<(), std::convert::Infallible>(());
            let ignore: &mut dyn FnMut(&str, TapValue<'_>) -> Result<(), std::convert::Infallible> =
                &mut ignore;
            staged.execute(sample, Some(ignore))
        } else {
            staged.execute(sample, None)
        };
        warm.map_err(|e| match e {
            ObservedError::Exec(e) => e,
            ObservedError::Observer(never) => match never {},
        })?;
        Ok(Session {
            kind: Kind::Staged(Box::new(staged)),
        })
    }

    /// Names of the model inputs a sample must provide, in model order.
    pub fn input_names(&self) -> &[String] {
        match &self.kind {
            Kind::Engine(e) => e.input_names(),
            Kind::Staged(s) => s.input_names(),
        }
    }

    /// Names of the values [`Session::run`] returns: graph outputs, then taps.
    pub fn output_names(&self) -> &[String] {
        match &self.kind {
            Kind::Engine(e) => e.output_names(),
            Kind::Staged(s) => s.output_names(),
        }
    }

    /// What was replaced or emulated to run this model.
    pub fn notes(&self) -> Vec<String> {
        let (counts, other) = self.note_parts();
        let mut out = prepare::op_notes(&counts);
        out.extend(other);
        out
    }

    /// The quantization ops the notes describe, and the other notes.
    fn note_parts(&self) -> (prepare::OpCounts, Vec<String>) {
        match &self.kind {
            Kind::Engine(e) => (e.op_counts().clone(), e.other_notes()),
            Kind::Staged(s) => s.note_parts(),
        }
    }

    /// Runs one sample; returns every graph output and every tap by ONNX name.
    pub fn run(
        &self,
        sample: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, ExecError> {
        match &self.kind {
            Kind::Engine(e) => e.run(sample),
            Kind::Staged(s) => s
                .execute::<std::convert::Infallible>(sample, None)
                .map_err(|e| match e {
                    ObservedError::Exec(e) => e,
                    ObservedError::Observer(never) => match never {},
                }),
        }
    }

    /// Runs one sample, handing every streamed tap (see [`SessionOptions::stream_taps`]) to
    /// `observe` with its ONNX name as soon as it has been computed. Each tap is observed
    /// exactly once per run. The model's own outputs are returned when `keep_outputs` is set.
    /// A run may be made from several threads at once (each gets its own engine state).
    pub fn run_observed<E>(
        &self,
        sample: &BTreeMap<String, Tensor>,
        keep_outputs: bool,
        mut observe: impl FnMut(&str, TapValue<'_>) -> Result<(), E>,
    ) -> Result<Option<BTreeMap<String, Tensor>>, ObservedError<E>> {
        match &self.kind {
            Kind::Engine(e) => e.run_observed(sample, keep_outputs, observe),
            Kind::Staged(s) => {
                let observe: &mut dyn FnMut(&str, TapValue<'_>) -> Result<(), E> = &mut observe;
                let out = s.execute(sample, Some(observe))?;
                Ok(keep_outputs.then_some(out))
            }
        }
    }
}
