//! One model run whole by the engine: the prepared model in the engine's protobuf types
//! and a plan per input signature (element types and shapes), built on first use.
//!
//! Every call into the engine (building a plan, running it) is guarded: the engine panics on
//! some malformed models (an axis out of range, a slice step of 0, a Scan body that does not
//! match its node, allocations of terabytes), and such a panic becomes an [`ExecError`]
//! saying where the engine stopped, without the panic message on stderr.

use super::{convert, fake_quant, folded, lowbit, prepare, qdq, tap};
use super::{engine_error, ExecError, ObservedError, SessionOptions, TapValue};
use crate::ir::tensor::{DType, Tensor};
use crate::onnx::proto::ModelProto;
use prost::Message;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tract_onnx::prelude::{
    tensor0, tvec, InferenceFact, InferenceModelExt, IntoRunnable, IntoTValue, TValue, TVec,
    TractError, TractResult, TypedNode, TypedRunnableModel,
};
use tract_onnx::tract_core::ops::OpState;
use tract_onnx::tract_core::plan::EvalContext;

/// Element type and shape of each model input, in input order.
type Signature = Vec<(DType, Vec<usize>)>;

thread_local! {
    /// How many [`guarded`] engine calls this thread is inside.
    static IN_ENGINE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Where the last panic inside an engine call happened (`crate-version/path:line`).
    static PANIC_AT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs, once, a panic hook that keeps quiet about panics inside [`guarded`] calls
/// (recording where they happened) and hands every other panic to the previous hook.
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_ENGINE.with(|d| d.get()) == 0 {
                return previous(info);
            }
            let at = info.location().map(|l| {
                let file = l.file();
                // A dependency's path, from its package folder on (after the registry's
                // `registry/src/<index>/`).
                const REGISTRY: &str = "/registry/src/";
                let short = file
                    .find(REGISTRY)
                    .map(|i| &file[i + REGISTRY.len()..])
                    .and_then(|rest| rest.find('/').map(|j| &rest[j + 1..]))
                    .unwrap_or(file);
                format!("{short}:{}", l.line())
            });
            PANIC_AT.with(|p| *p.borrow_mut() = at);
        }));
    });
}

/// Runs `f`, a call into the engine, turning a panic inside it into an error (`wrap` makes
/// it [`ExecError::Load`] or [`ExecError::Run`]). The engine panics on some malformed models
/// (a permutation naming a missing axis, a slice step of 0, a Scan body with fewer outputs
/// than the node, an allocation of terabytes…); this keeps those a one-line error.
fn guarded<T>(
    wrap: fn(String) -> ExecError,
    f: impl FnOnce() -> Result<T, ExecError>,
) -> Result<T, ExecError> {
    install_panic_hook();
    IN_ENGINE.with(|d| d.set(d.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_ENGINE.with(|d| d.set(d.get() - 1));
    r.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        let at = PANIC_AT
            .with(|p| p.borrow_mut().take())
            .map(|a| format!(", at {a}"))
            .unwrap_or_default();
        Err(wrap(format!(
            "the execution engine cannot handle this model: it stopped with '{}'{at}",
            engine_error(what)
        )))
    })
}

/// A model the engine runs whole.
pub(crate) struct Engine {
    /// The prepared model in the engine's protobuf types.
    proto: tract_onnx::pb::ModelProto,
    base_dir: Option<String>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    /// How many of `outputs` are the model's own (the rest are taps or tap sinks).
    graph_outputs: usize,
    logical: BTreeMap<String, DType>,
    /// The quantization ops the notes describe (the first notes).
    ops: prepare::OpCounts,
    notes: Vec<String>,
    /// Notes added while building plans.
    extra_notes: Mutex<Vec<String>>,
    plans: Mutex<BTreeMap<Signature, Arc<TypedRunnableModel>>>,
    /// Where the engine reads external data: the files, and the constant DequantizeLinear
    /// taken out of the model (`folded`).
    resolver: Arc<folded::Folded>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("notes", &self.notes)
            .finish()
    }
}

/// The engine's ONNX front end with qrange's exact quantization ops registered.
fn engine() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register
        .insert("QuantizeLinear", qdq::quantize_builder);
    onnx.op_register
        .insert("DequantizeLinear", qdq::dequantize_builder);
    for (op, builder) in lowbit::BUILDERS {
        onnx.op_register.insert(op, builder);
    }
    onnx.op_register.insert(tap::TAP_OP, tap::tap_builder);
    onnx.op_register
        .insert(fake_quant::FAKE_QUANT_OP, fake_quant::fake_quant_builder);
    onnx
}

impl Engine {
    /// Prepares `model` and builds a plan for the input types and shapes of `sample`.
    ///
    /// `base_dir` is where external-data files live (`None`: the model has none). `sample` holds
    /// one tensor per model input (by name); its types and shapes become the input facts, so
    /// models with dynamic dimensions load. Other shapes given to `run` later get
    /// their own plan.
    ///
    /// `folded` answers the external references of the DequantizeLinear taken out of the
    /// model (`folded::fold`), counted with the others in the notes.
    pub fn new(
        model: &ModelProto,
        base_dir: Option<&Path>,
        sample: &BTreeMap<String, Tensor>,
        opts: &SessionOptions,
        folded: folded::Folded,
    ) -> Result<Engine, ExecError> {
        let onnx = engine();
        let known = |op: &str| onnx.op_register.0.contains_key(op);
        let mut prepared = prepare::prepare(model, base_dir, &opts.taps, opts.stream_taps, &known)?;
        prepared.ops.add_folded_dequantize(folded.len());
        // Each copy of an inline weight lives only until the next is made: the prepared
        // model until it is encoded, the bytes until they are decoded.
        let bytes = std::mem::take(&mut prepared.model).encode_to_vec();
        let proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| ExecError::Load(format!("re-decoding the prepared model: {e}")))?;
        drop(bytes);
        let base_dir = match base_dir {
            None => None,
            Some(d) => Some(
                d.to_str()
                    .ok_or_else(|| {
                        ExecError::Load(format!("base directory {} is not UTF-8", d.display()))
                    })?
                    .to_string(),
            ),
        };
        let session = Engine {
            proto,
            base_dir,
            inputs: prepared.inputs,
            outputs: prepared.outputs,
            graph_outputs: prepared.graph_outputs,
            logical: prepared.logical,
            ops: prepared.ops,
            notes: prepared.notes,
            extra_notes: Mutex::new(Vec::new()),
            plans: Mutex::new(BTreeMap::new()),
            resolver: Arc::new(folded),
        };
        let signature = session.signature(sample)?;
        session.plan(&signature)?;
        Ok(session)
    }

    /// Names of the model inputs a sample must provide, in model order.
    pub fn input_names(&self) -> &[String] {
        &self.inputs
    }

    /// Names of the values `run` returns: graph outputs, then taps.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// Adds notes (what was done to the model before the engine saw it).
    pub(crate) fn add_notes(&mut self, notes: Vec<String>) {
        self.notes.extend(notes);
    }

    /// The Q/DQ nodes qrange's kernels run, by (domain, op type).
    pub(crate) fn op_counts(&self) -> &prepare::OpCounts {
        &self.ops
    }

    /// The notes other than the Q/DQ counts.
    pub(crate) fn other_notes(&self) -> Vec<String> {
        let extra = self.extra_notes.lock().unwrap_or_else(|e| e.into_inner());
        self.notes.iter().chain(extra.iter()).cloned().collect()
    }

    /// Runs one sample; returns every graph output and every tap by ONNX name.
    pub fn run(
        &self,
        sample: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, ExecError> {
        let signature = self.signature(sample)?;
        let plan = self.plan(&signature)?;
        let inputs = self.engine_inputs(sample)?;
        let values = guarded(ExecError::Run, || {
            plan.run(inputs)
                .map_err(|e| ExecError::Run(engine_error(e)))
        })?;
        if values.len() != self.outputs.len() {
            return Err(ExecError::Run(format!(
                "the engine returned {} values for {} outputs",
                values.len(),
                self.outputs.len()
            )));
        }
        self.host_outputs(&values)
    }

    /// Runs one sample, handing every streamed tap (see `SessionOptions::stream_taps`) to
    /// `observe` with its ONNX name as soon as the engine has computed it. Each tap is observed
    /// exactly once per run. The model's own outputs are returned when `keep_outputs` is set.
    /// A run may be made from several threads at once (each gets its own engine state).
    pub fn run_observed<E>(
        &self,
        sample: &BTreeMap<String, Tensor>,
        keep_outputs: bool,
        mut observe: impl FnMut(&str, TapValue<'_>) -> Result<(), E>,
    ) -> Result<Option<BTreeMap<String, Tensor>>, ObservedError<E>> {
        let exec = ObservedError::Exec;
        let signature = self.signature(sample).map_err(exec)?;
        let plan = self.plan(&signature).map_err(exec)?;
        let inputs = self.engine_inputs(sample).map_err(exec)?;
        let mut state = plan
            .spawn()
            .map_err(|e| ExecError::Run(engine_error(e)))
            .map_err(exec)?;
        let mut failure: Option<ObservedError<E>> = None;
        let logical = &self.logical;
        let ran = guarded(ExecError::Run, || {
            Ok(state.run_plan_with_eval(
                inputs,
                |ctx: &EvalContext<'_>,
                 op_state: Option<&mut (dyn OpState + 'static)>,
                 node: &TypedNode,
                 inputs: TVec<TValue>|
                 -> TractResult<TVec<TValue>> {
                    let Some(sink) = node.op_as::<tap::TapSink>() else {
                        return tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                    };
                    let value = &inputs[0];
                    let plain = value.to_plain_array_view::<f32>();
                    let view = match plain.as_ref().ok().and_then(|v| v.as_slice()) {
                        Some(s) => TapValue::F32(s),
                        None => match convert::to_host(value, logical.get(&sink.name).copied()) {
                            Ok(t) => TapValue::Host(t),
                            Err(e) => {
                                failure = Some(ObservedError::Exec(ExecError::Output {
                                    name: sink.name.clone(),
                                    reason: engine_error(e),
                                }));
                                return Err(TractError::msg(format!(
                                    "tap '{}' could not be converted",
                                    sink.name
                                )));
                            }
                        },
                    };
                    if let Err(e) = observe(&sink.name, view) {
                        failure = Some(ObservedError::Observer(e));
                        return Err(TractError::msg(format!(
                            "observation of '{}' failed",
                            sink.name
                        )));
                    }
                    Ok(tvec!(tensor0(0f32).into_tvalue()))
                },
            ))
        })
        .map_err(exec)?;
        let values = match (ran, failure) {
            (_, Some(f)) => return Err(f),
            (Err(e), None) => return Err(ObservedError::Exec(ExecError::Run(engine_error(e)))),
            (Ok(values), None) => values,
        };
        if !keep_outputs {
            return Ok(None);
        }
        self.host_outputs(&values[..self.graph_outputs.min(values.len())])
            .map(Some)
            .map_err(exec)
    }

    /// The first engine values converted to host tensors, named by the session's outputs.
    fn host_outputs(&self, values: &[TValue]) -> Result<BTreeMap<String, Tensor>, ExecError> {
        let mut out = BTreeMap::new();
        for (name, value) in self.outputs.iter().zip(values.iter()) {
            let logical = self.logical.get(name).copied();
            let host = convert::to_host(value, logical).map_err(|e| ExecError::Output {
                name: name.clone(),
                reason: engine_error(e),
            })?;
            out.insert(name.clone(), host);
        }
        Ok(out)
    }

    /// The sample's tensors in the engine's form, in model input order.
    fn engine_inputs(&self, sample: &BTreeMap<String, Tensor>) -> Result<TVec<TValue>, ExecError> {
        let mut inputs: TVec<TValue> = TVec::new();
        for name in &self.inputs {
            let t = sample
                .get(name)
                .ok_or_else(|| ExecError::MissingInput(name.clone()))?;
            let t = convert::to_engine(t).map_err(|dtype| ExecError::UnsupportedType {
                tensor: name.clone(),
                dtype,
            })?;
            inputs.push(t.into_tvalue());
        }
        Ok(inputs)
    }

    /// Checks a sample against the model inputs and returns its signature.
    fn signature(&self, sample: &BTreeMap<String, Tensor>) -> Result<Signature, ExecError> {
        if let Some(extra) = sample.keys().find(|k| !self.inputs.contains(k)) {
            return Err(ExecError::UnknownInput(extra.clone()));
        }
        self.inputs
            .iter()
            .map(|name| {
                let t = sample
                    .get(name)
                    .ok_or_else(|| ExecError::MissingInput(name.clone()))?;
                if convert::storage_datum(t.dtype()).is_none() {
                    return Err(ExecError::UnsupportedType {
                        tensor: name.clone(),
                        dtype: t.dtype(),
                    });
                }
                Ok((t.dtype(), t.shape()))
            })
            .collect()
    }

    /// The cached plan for `signature`, built on first use.
    fn plan(&self, signature: &Signature) -> Result<Arc<TypedRunnableModel>, ExecError> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plan) = plans.get(signature) {
            return Ok(plan.clone());
        }
        let plan = self.build(signature)?;
        plans.insert(signature.clone(), plan.clone());
        Ok(plan)
    }

    /// Builds a plan with the sample's concrete input facts. Some models only load with their
    /// own declared (symbolic) input facts (e.g. an `If` whose branches disagree once shapes are
    /// concrete); when the concrete facts fail, those are tried before giving up.
    fn build(&self, signature: &Signature) -> Result<Arc<TypedRunnableModel>, ExecError> {
        match self.build_with(Some(signature)) {
            Ok(plan) => Ok(plan),
            Err(concrete) => match self.build_with(None) {
                Ok(plan) => {
                    let mut extra = self.extra_notes.lock().unwrap_or_else(|e| e.into_inner());
                    let note = format!(
                        "the model's declared input shapes were used: it does not load with \
                         concrete ones ({concrete})"
                    );
                    if !extra.contains(&note) {
                        extra.push(note);
                    }
                    Ok(plan)
                }
                Err(_) => Err(concrete),
            },
        }
    }

    fn build_with(
        &self,
        signature: Option<&Signature>,
    ) -> Result<Arc<TypedRunnableModel>, ExecError> {
        guarded(ExecError::Load, || self.build_unguarded(signature))
    }

    fn build_unguarded(
        &self,
        signature: Option<&Signature>,
    ) -> Result<Arc<TypedRunnableModel>, ExecError> {
        let load = |e: tract_onnx::prelude::TractError| ExecError::Load(engine_error(e));
        let mut onnx = engine();
        onnx.provider = self.resolver.clone();
        let parsed = onnx
            .parse(&self.proto, self.base_dir.as_deref())
            .map_err(load)?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(ExecError::Load(format!(
                "values used but never defined: {}",
                parsed.unresolved_inputs.join(", ")
            )));
        }
        let mut model = parsed.model;
        let outlets = model.input_outlets().map_err(load)?.to_vec();
        let Some(signature) = signature else {
            let typed = model.into_optimized().map_err(load)?;
            return typed.into_runnable().map_err(load);
        };
        for (ix, outlet) in outlets.iter().enumerate() {
            let name = model.node(outlet.node).name.clone();
            let pos = self
                .inputs
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| ExecError::Load(format!("unexpected engine input '{name}'")))?;
            let (dtype, shape) = &signature[pos];
            let dt = convert::storage_datum(*dtype).ok_or(ExecError::UnsupportedType {
                tensor: name.clone(),
                dtype: *dtype,
            })?;
            model
                .set_input_fact(ix, InferenceFact::dt_shape(dt, shape.clone()))
                .map_err(load)?;
        }
        let typed = model.into_optimized().map_err(load)?;
        typed.into_runnable().map_err(load)
    }
}
