#!/usr/bin/env bash
# Quantizes every shipped fixture the way the README, the tests and CI do, and writes a
# manifest of what came out: the sha256 of each written model (and of the overrides,
# sensitivity cache, report and calibration files written beside it), the exit code, and
# the sha256 of the `--json` summary and of stderr with the timings and the output folder
# taken out. Two builds that give the same manifest wrote the same bytes.
#
#   benches/same_bytes.sh BIN OUTDIR        # run from the repository root
#   diff OUTDIR_A/manifest.txt OUTDIR_B/manifest.txt
#
# BIN is a qrange binary (e.g. target/debug/qrange); OUTDIR is created, or emptied of the
# files a previous run left (a sensitivity cache found there would change the summary); its
# models, JSON and stderr files stay there for a closer look. A debug build takes about two
# minutes. The `passes` log of the summary is left out too: it lists the pass steps, which
# the manifest compares through their result.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 BIN OUTDIR" >&2
    exit 2
fi
BIN=$(realpath "$1")
OUT=$2
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
find "$OUT" -maxdepth 1 -type f -delete
cd "$(dirname "$0")/.."
MANIFEST="$OUT/manifest.txt"
: >"$MANIFEST"

F=fixtures

# The summary without its timings, with the output folder written as OUT.
normalise_json() {
    jq -S 'del(.seconds, .passes)' "$1" 2>/dev/null | sed "s#$OUT#OUT#g" || sed "s#$OUT#OUT#g" "$1"
}

hash_of() {
    sha256sum | cut -c1-64
}

# case LABEL ARGS...: `qrange quantize ARGS -o OUT/LABEL.onnx --json`.
case_() {
    local label=$1
    shift
    local o="$OUT/$label.onnx"
    local code=0
    "$BIN" quantize "$@" -o "$o" --json >"$OUT/$label.json" 2>"$OUT/$label.stderr" || code=$?
    {
        echo "== $label (exit $code)"
        for f in "$o" "$OUT/$label.overrides.json" "$OUT/$label.sensitivity.json"; do
            [ -f "$f" ] && echo "  $(basename "$f") $(hash_of <"$f")"
        done
        [ -f "$OUT/$label.html" ] && echo "  $label.html $(sed "s#$OUT#OUT#g" "$OUT/$label.html" | hash_of)"
        echo "  json $(normalise_json "$OUT/$label.json" | hash_of)"
        echo "  stderr $(sed "s#$OUT#OUT#g" "$OUT/$label.stderr" | hash_of)"
    } >>"$MANIFEST"
    echo "$label: exit $code" >&2
}

# calibrate_ LABEL ARGS...: `qrange calibrate ARGS -o OUT/LABEL.json`.
calibrate_() {
    local label=$1
    shift
    local code=0
    "$BIN" calibrate "$@" -o "$OUT/$label.json" >"$OUT/$label.stdout" 2>"$OUT/$label.stderr" || code=$?
    {
        echo "== $label (exit $code)"
        [ -f "$OUT/$label.json" ] && echo "  $label.json $(hash_of <"$OUT/$label.json")"
        echo "  stdout $(sed "s#$OUT#OUT#g" "$OUT/$label.stdout" | hash_of)"
    } >>"$MANIFEST"
    echo "$label: exit $code" >&2
}

CLS=(
    "$F/ppocr_cls/model.onnx" --calib "$F/ppocr_cls/calib.npz"
    --eval "$F/ppocr_cls/eval.npz" --labels label
)
PRE=resize=192x48,color=rgb,layout=nchw,scale=255,mean=0.5,0.5,0.5,std=0.5,0.5,0.5
# The shipped real models (quantized_ort.py's list, README commands).
case_ cls "${CLS[@]}" --report "$OUT/cls.html"
case_ cls_auto "${CLS[@]}" --method auto
case_ cls_mse_weights "${CLS[@]}" --weight-method mse --no-validate
case_ cls_u16 "${CLS[@]}" --activation-type u16 --no-validate
case_ cls_images "$F/ppocr_cls/model.onnx" --calib "$F/ppocr_cls/images" --preprocess "$PRE" \
    --eval "$F/ppocr_cls/eval.npz" --labels label
case_ cls_mixed "${CLS[@]}" --target-sqnr 30 --sensitivity-samples 4
case_ cls_replay "${CLS[@]}" --overrides "$OUT/cls_mixed.overrides.json"
case_ cls_4bit "${CLS[@]}" --size-budget 0.25 --sensitivity-samples 4 --no-validate
case_ det "$F/ppocr_det/model.onnx" --calib "$F/ppocr_det/calib.npz" --eval "$F/ppocr_det/eval.npz"
case_ magika "$F/magika/model.onnx" --calib "$F/magika/calib.npz" --eval "$F/magika/eval.npz" \
    --labels label
case_ magika_auto "$F/magika/model.onnx" --calib "$F/magika/calib.npz" --method auto --no-validate
case_ vad "$F/silero_vad/model.onnx" --calib "$F/silero_vad/calib.npz" \
    --eval "$F/silero_vad/eval.npz" --labels label --pin sr=16000
case_ vad_ifless "$F/silero_vad_ifless/model.onnx" --calib "$F/silero_vad/calib.npz" \
    --eval "$F/silero_vad/eval.npz" --pin sr=16000
case_ minilm "$F/minilm_l3/model.onnx" --calib "$F/minilm_l3/calib.npz" \
    --eval "$F/minilm_l3/eval.npz" --report "$OUT/minilm.html"

# The tiny fixtures the tests quantize.
for t in tiny_cnn tiny_mlp tiny_bn tiny_outlier tiny_if tiny_nested_if tiny_scan tiny_broken_layer \
    tiny_crnn; do
    case_ "$t" "$F/tiny/$t.onnx" --calib "$F/tiny/$t.npz" --eval "$F/tiny/$t.eval.npz" \
        --labels label --report "$OUT/$t.html"
    case_ "${t}_auto" "$F/tiny/$t.onnx" --calib "$F/tiny/$t.npz" --method auto --no-validate
done
for t in tiny_loop tiny_shape_if tiny_all_attrs; do
    case_ "$t" "$F/tiny/$t.onnx" --calib "$F/tiny/$t.npz" --no-validate
done
case_ tiny_external "$F/tiny/tiny_external/model.onnx" --calib "$F/tiny/tiny_external.npz" \
    --no-validate
case_ tiny_mlp_testdata "$F/tiny/tiny_mlp.onnx" --calib "$F/tiny/tiny_mlp_testdata" --no-validate
CNN=("$F/tiny/tiny_cnn.onnx" --calib "$F/tiny/tiny_cnn.npz")
CNN_EVAL=("${CNN[@]}" --eval "$F/tiny/tiny_cnn.eval.npz" --labels label)
for m in minmax percentile entropy mse; do
    case_ "cnn_$m" "${CNN[@]}" --method "$m" --no-validate
done
case_ cnn_tensorrt "${CNN_EVAL[@]}" --target tensorrt
case_ cnn_generic "${CNN_EVAL[@]}" --target generic
case_ cnn_per_tensor "${CNN_EVAL[@]}" --per-tensor --no-reduce-range
case_ cnn_i8 "${CNN_EVAL[@]}" --activation-type i8
case_ cnn_exclude "${CNN_EVAL[@]}" --exclude-op-types Gemm --exclude-nodes conv1
case_ cnn_mixed "${CNN_EVAL[@]}" --target-sqnr 30
case_ cnn_replay "${CNN_EVAL[@]}" --overrides "$OUT/cnn_mixed.overrides.json"
case_ cnn_max_drop "${CNN_EVAL[@]}" --max-drop 1
case_ cnn_unreachable "${CNN_EVAL[@]}" --target-sqnr 200
case_ cnn_budget "${CNN[@]}" --size-budget 0.0038 --no-validate
case_ cnn_budget_unreachable "${CNN[@]}" --size-budget 0.0001 --no-validate
case_ cnn_random "$F/tiny/tiny_cnn.onnx" --calib random:6 --no-validate --target generic \
    --report "$OUT/cnn_random.html"
calibrate_ cnn_stats "${CNN[@]}"
case_ cnn_from_stats "$F/tiny/tiny_cnn.onnx" --ranges "$OUT/cnn_stats.json" --no-validate \
    --method auto
calibrate_ vad_stats "$F/silero_vad/model.onnx" --calib "$F/silero_vad/calib.npz" --pin sr=16000

echo "wrote $MANIFEST" >&2
