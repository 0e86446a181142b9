//! # qrange — a quantizing compiler for ONNX models
//!
//! ## Bird's-eye view
//! ```text
//!  .onnx bytes ──decode──▶ IR ──passes──▶ IR ──encode──▶ .onnx bytes
//!                            │                  │
//!                            └──── exec (tract) ┘   before/after, same engine, same mode
//! ```
//! A model is decoded with prost into a petgraph IR, transformed by an ordered list of
//! passes, and encoded back. tract executes the graph before and after, with qrange's own
//! exact QuantizeLinear/DequantizeLinear kernels, so every run can say what a change cost.
//!
//! `qrange quantize` is [`pipeline::quantize`]: typed options in, the model to write and
//! its summary out, progress through a callback. Every graph rewrite it makes is a step of
//! one declared list ([`passes::pipeline`], what `qrange passes` prints), run in three
//! phases: specialise (`pin_inputs`, `fold_if` with `infer_shapes`/`fold_constants` to a
//! fixed point: the float model validation compares against) → prepare (`infer_shapes`,
//! `fold_constants`, `fold_batchnorm`, `fold_bias_add`, `remove_dead`, `infer_shapes`, then
//! `plan`: `quant::plan::build` reads the rule table, a decision per value, in the main
//! graph and inside If branches, Loop and Scan bodies; values computed from constants and
//! shapes only, such as a transformer's position embeddings, are left alone; an op the
//! table marks `after_quantized` (Add, Mul, Softmax) stays float behind a producer that
//! leaves its output float (a MatMul, whose integer kernel returns floats; a
//! LayerNormalization), so a transformer's residual stream keeps its outlier channels;
//! an embedding table is stored int8 per row (`quant::embedding`), or with
//! `--embedding-bits 4` left float by the plan and stored int4 in blocks once the Q/DQ are
//! in place (`pipeline::tables`; the summary counts those lookups quantized and lists the
//! tables);
//! `upgrade_opset` to what the planned Q/DQ need, `infer_shapes` and `plan` again; the
//! model before that raise identifies calibration files, so statistics serve every
//! mode whatever opset it needs) →
//! equalize (`pipeline::equalize`, `--equalize`, off by default: the
//! per-channel weight ranges of Conv→Conv and MatMul/Gemm→MatMul/Gemm pairs, through at
//! most a bias Add and a positively homogeneous activation, made equal by
//! `quant::equalize`'s factors, swept over chains until they converge; data-free, the
//! equalized model is planned again) →
//! smooth (`pipeline::smooth`, `--smooth`, 0.5 by default: one float run measures each
//! LayerNormalization output's per-channel maxima, `quant::smooth`'s factors move them into
//! the weights of the MatMuls that read it, divided out in the normalization or by a float
//! Mul; the smoothed model is planned again and is what the rest calibrates) →
//! calibrate (`calib::collect` streams the planned values out of tract as it computes
//! them, straight into `calib::TensorStats`, samples spread over worker threads and merged
//! exactly; a model whose weights exceed `--memory-budget`, or any with `--layerwise`,
//! runs block by block instead, `calib::layerwise`, with the same statistics bytes;
//! a method turns each into a range; `--method adaptive`, the default, runs every
//! method's set of ranges in `tune::sim`'s simulation model on a few calibration samples
//! and keeps the method whose set comes closest to their float outputs, which the
//! collector kept while calibrating; the compared ranges come from the other samples'
//! statistics, which the collector keeps apart, `pipeline::ranges::adaptive`;
//! `quant::plan::fit_to_statistics` leaves float, with the reason, whatever would need a
//! value calibration has no statistics for) → bias correction (`pipeline::bias_correct`,
//! `--bias-correction`: the plan materialised once, each quantized Conv/Gemm given a float
//! twin on the same input, one streamed run's per-channel mean difference subtracted from
//! the float bias) → mixed precision (plan edits) → materialise
//! (the list's last phase on a copy of the prepared model: `insert_qdq`, which writes the
//! weights the adaptive selection's simulation already quantized from its side file,
//! `insert_qdq::WeightMemo`, Relu/Clip folded into their producer's range, Div/Mul by a constant into its QuantizeLinear scale, then
//! `infer_shapes`, then under `--size-budget` `compact`: zero points of zero, stored bias
//! scales, added ops' names and inferred value_info dropped) → validate (both models in tract, `report::compare`) → summary and,
//! with `--report`, the data of one HTML page (`report::html`). The command line writes
//! the model, the overrides, the sensitivity cache and the page, together, through
//! [`fsx`]. `--dump-after PASS` and `--stop-after PASS`
//! print the IR text dump after a step.
//!
//! Dynamic quantization (`--mode dynamic`) takes another road after preparation: the
//! plan steps do nothing, the opset is raised to 11, and calibration, range choice, mixed
//! precision and `insert_qdq` give way to one materialise step, `quantize_dynamic`: 8-bit
//! symmetric weights per output channel (uint8 codes around a zero point of 128 for the
//! integer products), each activation quantized at run time from its own range
//! (DynamicQuantizeLinear → MatMulInteger/ConvInteger → Cast → Mul by the two scales),
//! LSTMs as com.microsoft DynamicQuantizeLSTM on ONNX Runtime, embedding tables gathered
//! as int8 rows; then the same validation
//! (`pipeline::dynamic`). No calibration data is needed.
//!
//! The plan is a step of the list that rewrites nothing: what follows it in the list
//! depends on it (the opset the Q/DQ need, what `insert_qdq` inserts), so it stands where
//! it is built and travels in the pass context (`PassCx::plan`); calibration, range
//! choice and mixed precision edit it between the prepare and materialise phases. The
//! runner verifies the IR after every step in debug and test builds, naming the step.
//!
//! Subgraphs: tract returns main-graph values only, so calibration runs each If branch
//! as a model of its own (`ir::scope::subgraph_model`: captured names become inputs) on
//! the captured values of the samples that take it, each Scan body step by step on its
//! states and slices, and each Loop body once per iteration on its carried values. A body
//! reading a quantized outer value gets its own DequantizeLinear of the outer
//! QuantizeLinear output.
//!
//! Loop: tract has no Loop, so `exec` runs a model holding one itself, for every command
//! (run, compare, calibration, validation): a Loop whose trip count is a small constant
//! (at most 64 iterations and 4096 copied ops) is unrolled on the engine's copy
//! (`passes::unroll_loop`); any other Loop runs on the host, its body a session of its own
//! once per iteration with ONNX's trip-count and condition semantics (`exec::loops`), the
//! graph around it in parts tract runs whole (`exec::staged`). One execution of a Loop
//! runs at most 100,000 iterations; a loop still running then is an error, never a
//! silent stop. Written models keep their Loops.
//!
//! Mixed precision (`--target-sqnr`, `--max-drop`, `--size-budget`, `--overrides`) runs
//! between calibration and materialisation: `tune` builds one simulation model whose Q/DQ
//! pairs are switches, measures each activation's sensitivity on it, searches the cheapest
//! promotions (16-bit activations, float), and edits the plan; `--size-budget` first
//! chooses each weight's storage (8-bit, int4 per channel, int4 in blocks of 128/64/32/16
//! along the reduction axis for MatMul/Gemm weights and embedding tables, k-means
//! 4/3/2-bit) by least energy-weighted
//! output noise per byte saved, the last move the least harmful that ends the walk when
//! that beats the rest of it (`pipeline::budget`, `quant::budget`; with
//! `--size-budget-cost output` that noise is scaled by each weight's output change measured
//! on the simulation), measured on the materialised model; the written model is then
//! validated as usual, and the summary lists every layer's activation precision and
//! weight storage (`pipeline::summary::layer_choices`). A goal without evaluation data holds no
//! sample back: `pipeline::folds` calibrates the calibration samples in k folds, every
//! sample runs in the simulation with the ranges of the other folds' statistics, and the
//! goal is judged on the bootstrap lower bound of the pooled figure (`report::estimate`);
//! the written model's ranges come from every sample. The cost is bounded there: the
//! sensitivity probes run on as many samples as an activation-element budget allows, and
//! the search screens each demotion on those samples before judging it on all of them.
//!
//! ## Code map
//! - [`onnx`]: generated protobuf types (`proto/onnx.proto`, ONNX 1.23.2), decode
//!   (proto → IR; every `TensorProto`, model initializer, tensor attribute or `.pb` data
//!   file, through `onnx::tensor`), encode (IR → proto), external data, atomic file writes.
//!   External data is located and checked on decode but stays in its side file
//!   (`ir::external` reads a tensor's span when a pass, the dump or a decoder asks); the
//!   writer streams it from file to file, and the engine is handed references to it
//!   (`onnx::engine_proto`) and reads the weights itself.
//! - [`ir`]: the graph (bipartite `StableDiGraph` of op and value nodes, typed handles),
//!   values and constants, the one decoder of constant payloads into host tensors
//!   (`ir::payload`, every element type, checked sizes), external data read on demand
//!   (`ir::external`: positional reads and streamed copies, counted), `verify()`, scopes
//!   (where each subgraph sits, which graph defines a captured name, a subgraph as a model of its
//!   own), the text dump.
//! - [`passes`]: the `Pass` trait, the quantize pipeline as one declared list of steps
//!   (each ordering constraint commented), the runner that runs it phase by phase, checks
//!   the IR and logs what ran, and one file per pass (pin_inputs, infer_shapes,
//!   fold_constants, fold_if, fold_batchnorm, fold_bias_add, remove_dead, plan,
//!   upgrade_opset, insert_qdq, quantize_dynamic, compact; and unroll_loop, which `exec` runs on the engine's copy,
//!   outside the list: the written model keeps its Loops).
//! - [`pipeline`]: the quantize job as a library, one file per step (inputs, prepare,
//!   equalize (cross-layer equalization), smooth (SmoothQuant's migration), calibrate,
//!   bias_correct (empirical bias correction), ranges with the adaptive selection, folds, precision, materialise,
//!   dynamic (the `--mode dynamic` road),
//!   interface (the float model's inputs and declared dims kept), energy (the input energy
//!   k-means codebook weights are weighted by), adaround (learned up/down rounding of uniform
//!   weights, each layer on the inputs the partly quantized model gives it against the float
//!   model's output, in passes by depth, into the plan), summary,
//!   report data); typed options, typed errors, a progress callback; writes nothing.
//!   Three modes: static (the default: calibrated Q/DQ), dynamic, and
//!   `pipeline::weight_only` (`--mode weight-only`): MatMul/Gemm weights
//!   on 4 or 8 bits by RTN, clipping or GPTQ (layer inputs streamed out of tract), written as
//!   MatMulNBits or DequantizeLinear with `block_size`, outside the pass list.
//! - [`quant`]: numeric kernels with ONNX's exact QuantizeLinear/DequantizeLinear
//!   semantics (every integer dtype, per-tensor, per-axis, blocked); ONNX Runtime's packed
//!   low-bit weights (`nbits`: MatMulNBits, GatherBlockQuantized) and dynamic quantization's
//!   integer ops (`integer`: DynamicQuantizeLinear, MatMulInteger, MatMulIntegerToFloat,
//!   DynamicQuantizeMatMul; `lstm`: DynamicQuantizeLSTM with ONNX Runtime's FMA3 sigmoid and
//!   tanh), computed as ONNX Runtime computes them; scale/zero-point
//!   rules (`params`); the per-op rule table (`rules`); the plan (`plan`); weight-only
//!   codes (`weight_only`: RTN, clipping search, GPTQ with its Cholesky written by hand); the
//!   embedding tables (`embedding`: int8 per row, or 4/8-bit blocks along the embedding axis,
//!   their own block size, RTN or the clipping search, written as GatherBlockQuantized or
//!   blocked DequantizeLinear); ONNX Runtime's
//!   MatMul + bias Add → Gemm fusion as the plan names it (`gemm_fusion`);
//!   non-uniform weight grids (`codebook`: weighted k-means, power-of-two levels, both put
//!   on a channel's int8 grid, which `insert_qdq` writes as GatherElements → DequantizeLinear);
//!   learned rounding (`adaround`: one layer's up/down choices against the moments of its
//!   quantized inputs and their noise against the float inputs, im2col for Conv patches).
//! - [`exec`]: the only module that names tract: sessions with concrete input facts,
//!   tapped intermediates (returned as outputs, or streamed to an observer through sink
//!   nodes as the engine computes them), qrange's exact Q/DQ ops registered in place
//!   of tract's (`exec::qdq`), its low-bit and integer ops likewise (`exec::lowbit`), the
//!   simulation model's switchable fake-quantization op, and Loop execution (`loops`:
//!   ONNX's semantics with a cap on iterations; `staged`: a model cut into engine parts
//!   around the Loops it runs on the host).
//! - [`data`]: calibration/evaluation inputs (.npz, .npy, ONNX `test_data_set` folders, and
//!   image folders: PNG via `png`, JPEG via `zune-jpeg`, turned into the model's image input
//!   by a declared `Preprocess`: resize with qrange's own bilinear filter, colour order,
//!   layout, scale/mean/std, dtype), validated against the model's inputs; .npz/.npy inputs
//!   read one sample at a time when used (seek for stored members, a forward inflate stream
//!   via `flate2` for deflated ones), so memory does not grow with the sample count;
//!   `Dataset` views and the `SampleSource` trait consumers run over; deterministic .npz
//!   output.
//! - [`calib`]: streaming, mergeable calibration statistics on a canonical histogram grid
//!   (bit-identical whatever the sharding) and the range methods (minmax, percentile,
//!   entropy, mse, auto; `adaptive`, which compares whole sets by simulated output, lives
//!   in `pipeline::ranges::adaptive`); the calibration file format; the collector that streams tapped
//!   tensors from tract into statistics (a run holds about what a plain inference holds,
//!   whatever the number of values), and runs If branches, Loop bodies and Scan bodies
//!   as models of their own to reach the values inside; layer-wise collection runs the
//!   model one block of weights at a time (`exec::part_model` makes each block a model),
//!   holding or spilling the activations between blocks.
//! - [`report`]: accuracy metrics (SQNR, cosine, max-abs, top-1 agreement, accuracy), how
//!   sure a figure pooled over samples is (`estimate`: bootstrap bounds, fixed seed), the
//!   output-by-output comparison of two models (`compare`), the value-by-value one
//!   (`layers`: pairs a float model's values with its quantized version's through the
//!   Q/DQ pairs, taps them in groups under a memory budget, worst SQNR first), and the
//!   visual report (`quantize --report`):
//!   `ReportInput` (plain data, one section per part of qrange) rendered to one
//!   self-contained HTML page with SVG charts (plotters, SVG backend only): per calibrated
//!   tensor, its histogram with every method's range and the chosen one; per quantized
//!   weight (`weights`), its histogram with the levels of the grid it is written on (uniform
//!   codes or codebook levels, of the widest channel).
//! - [`lint`]: fusion coverage of any QDQ model: per node unit, whether the target runtime
//!   fuses it into an integer kernel (and which), drops a data-movement op's Q/DQ pair, or
//!   runs it in float and why. `lint::ort` replays ONNX Runtime's CPU QDQ transformations
//!   on a copy of the graph (`ort/sim.rs`), one file per step in ONNX Runtime's order
//!   (no-op elimination, unique DQ per node unit, constant folding, Q/DQ propagation,
//!   weight/bias quantization, Relu/Clip before Q, int8→uint8 on x86-64), then the QDQ
//!   selectors (`ort/selectors/`, one file per selector: drop Q/DQ around data movement,
//!   Split, unary, binary, variadic, Where, Conv, MatMul, Gemm), and `ort/coverage.rs`
//!   maps the verdicts back to the model's units (checked against ONNX Runtime by
//!   `tests/conformance/lint_vs_ort.py`); `lint::trt` encodes TensorRT's documented rules.
//! - [`tune`]: mixed precision as plan edits: activation units (a quantized value and the
//!   values sharing its parameters), the overrides file, the switchable simulation model
//!   (`tune::sim`, exact against the written model, also for another choice of ranges;
//!   the codes of each large constant weight or table move to a temporary side file and
//!   the engine dequantizes them as it loads the model, `exec::folded`, so it holds each
//!   once, in float, as in a float run),
//!   sensitivity analysis and the promotion search (`tune::search`).
//! - [`fsx`]: the one output layer: every file qrange writes is staged in a registered
//!   temporary file beside its target (symbolic links followed; folders, devices, FIFOs
//!   and sockets refused) and renamed with the command's other outputs once all are
//!   complete, with the umask's mode or the replaced file's; `fsx::Paths` checks a
//!   command's writes against its reads and other writes (as files: device and inode)
//!   before any work; `fsx::scratch` makes a registered file (in its own folder of the
//!   system's temporary directory) for data a command writes and reads back itself (the
//!   simulation's side file, activations spilled by layer-wise calibration);
//!   SIGINT/SIGTERM remove the temporary files and
//!   exit 130/143.
//! - [`cli`]: clap arguments and one file per subcommand, the flags several share
//!   (`cli::flags`: clap enums mapped to the library's, `--pin`/`--shape`/`--preprocess`
//!   parsing), progress bars, printing and writing; the only module that prints, and the
//!   only one that knows clap.
//!
//! Dependency direction: `onnx → ir ← passes ← pipeline ← cli`; `exec → quant → ir`;
//! `calib → exec`, `report → exec, calib, quant`, `lint → passes, quant::rules`,
//! `tune → exec, quant, report::metrics`; `pipeline` reads all of these. `ir`
//! knows nothing of protobuf, tract or clap; only `exec` names tract; only `cli` names
//! clap. Two exceptions, kept
//! deliberate: `passes::upgrade_opset` asks `onnx` for model-local function bodies, which
//! live in the carried protobuf bytes; `exec` runs `passes::unroll_loop` on its copy of a
//! model holding a Loop (an IR rewrite, like any pass, that serves execution only).
//!
//! ## Invariants
//! - **Invariant:** decode → encode is lossless. Fields the IR does not model travel as
//!   opaque `Carry` bytes that only `onnx` reads; `decode(encode(decode(x))) == decode(x)`,
//!   and files written by `onnx.save` come back byte-identical.
//! - **Invariant:** a value has at most one producer; edges go value → op (input slot) and
//!   op → value (output slot); only `ir::Graph` methods touch edges.
//! - **Invariant:** output is deterministic: ops are emitted in a topological order whose
//!   ties are broken by the original node index; everything printed or written iterates
//!   ordered collections.
//! - **Invariant:** no engine approximates silently: Q/DQ and the low-bit and integer
//!   quantization ops run through `quant` kernels in tract, and `exec::Session::notes` says
//!   what was replaced or emulated, and where ONNX Runtime computes something else.
//! - **Invariant:** quantization decisions are a plan (value → decision) before any edit;
//!   one pass materialises it, and only the rule table names op types for quantization
//!   (including which control-flow ops have their subgraphs planned).
//! - **Invariant:** a value captured by a subgraph is one value: the body sees the outer
//!   decision, range and quantization parameters; new names are unique across the whole
//!   model, so no subgraph shadows an outer name.
//! - **Invariant:** calibration statistics depend only on the multiset of observed
//!   tensors (one per value per sample): shards merge bit-identically to one run. The hot
//!   loops (statistics, the simulation's fake quantization) are compiled per instruction
//!   set and chosen at run time; every choice computes the same bits.
//! - **Invariant:** no model qrange writes or hands to the engine declares a shape its
//!   graph contradicts: `infer_shapes` relaxes a contradicting declaration (graph output,
//!   `value_info`) to what the graph computes, and says so.
//! - **Invariant:** user input never panics: errors are typed per layer and name the
//!   file, node or tensor. Sizes read from files go through checked arithmetic before
//!   anything is allocated (`ir::value::element_count`, the `.npy` header checks, image
//!   size limits; `tests/fuzz` holds the readers of models, data files and images to
//!   this on mutated fixtures); external data resolves inside the model's folder
//!   (`onnx::external::resolve_location`); a panic inside the engine on a malformed model
//!   is caught in `exec` and becomes an error. The command line prints an error as one
//!   line (`cli::print_error`, a chain of causes joined); standard output closed by its
//!   reader ends a command quietly once its files are written.
//! - **Invariant:** weights in external data are never gathered whole: `inspect` and
//!   `convert` read none into memory (`tests/lazy_external` counts it), the engine gets
//!   references, and a pass that needs a tensor's values reads that tensor only.
//! - **Invariant:** no command damages a file: it writes no file it reads and no file twice
//!   (checked before any work), writes only through `fsx` (temporary file, rename), and
//!   leaves no temporary file or partial output, even when interrupted.
//! - **Invariant:** the written model takes the float model's inputs: a pinned input stays
//!   declared, unused (`pipeline::interface`), unless `--drop-pinned-inputs`; inputs and
//!   outputs keep their declared dims, symbolic or not. Analysis, calibration and the plan
//!   work on the model specialised for the first sample's shapes; the plan is then
//!   materialised on the model prepared with its declared dims (its `Shape` computations
//!   kept) when it means the same there and both give the same outputs in the engine, and
//!   constants that exist only for the sample's shapes are never baked in as weights.
//!   Otherwise (an `If` or a constant that depends on the shapes) the fixed dims are
//!   written and the summary names the inputs and why; `--shape` fixes dims on purpose.
//!   The dynamic mode, which needs no shapes, quantizes the model with the declared dims
//!   directly when the engine runs it.

pub mod calib;
pub mod cli;
pub mod data;
pub mod exec;
pub mod fsx;
pub mod ir;
pub mod lint;
pub mod onnx;
pub mod passes;
pub mod pipeline;
pub mod quant;
pub mod report;
pub mod tune;
