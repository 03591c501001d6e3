#!/usr/bin/env bash
# The GPU check of the unsplit capture: one command with a time limit, for a lent GPU machine.
#
# What it measures, on CUDA (the CPU numbers are in docs/performance.md):
#   1. the machine: nvidia-smi, nvcc;
#   2. llama-cpp-python 0.3.36 built with -DGGML_CUDA=on -DGGML_RPC=ON from the pinned sdist, and this package;
#   3. the observer check in both capture modes (--mode unsplit, the default, and --mode callback): whether
#      capturing every tensor changed the logits and tokens of a fully offloaded run (-ngl 99);
#   4. capture costs as ratios to the plain run in the same call (capture-all, --stats-only, one tensor) in both
#      modes, at -c 512 and -c 32768: a per-node callback synchronises the GPU at every node and turns CUDA graphs
#      off, which the unsplit mode avoids;
#   5. an offload compare: the same prompt at -ngl 0 and -ngl 99, compared tensor by tensor.
# Everything it prints and writes lands in $OUT (the device tool brings that folder back).
#
# The machine reaches no package index: prepare here, once, the files it installs from (git-ignored):
#   pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d benchmarks/device
#   pip wheel --no-deps -w benchmarks/device/wheels numpy gguf h5py click xxhash jinja2 matplotlib pillow \
#       scikit-build-core cmake ninja pathspec packaging pyproject-metadata typing-extensions diskcache
# and run, with benchmarks/device carried:  bash benchmarks/device_check.sh   (timeout_s 600)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
OUT=${OUT:-$ROOT/dumps/device-check}
LIMIT_S=${DEVICE_CHECK_LIMIT_S:-560}
STARTED=$(date +%s)
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_check.log") 2>&1

left() { echo $((LIMIT_S - ($(date +%s) - STARTED))); }
stage() {  # stage NAME SECONDS COMMAND...: runs COMMAND within SECONDS (and within what is left), says how it ended
    local name=$1 seconds=$2
    shift 2
    local budget
    budget=$(left)
    if [ "$budget" -le 10 ]; then echo "== $name: skipped, no time left"; return 1; fi
    [ "$seconds" -gt "$budget" ] && seconds=$budget
    echo "== $name (at most ${seconds}s)"
    local begun=$(date +%s)
    timeout --kill-after=5 "$seconds" "$@"
    local status=$?
    echo "== $name: exit $status after $(($(date +%s) - begun))s"
    return $status
}

stage facts 20 bash -c 'nvidia-smi; nvcc --version || ls /usr/local/cuda*/bin/nvcc; nproc; free -g' \
    > "$OUT/facts.txt" 2>&1
cat "$OUT/facts.txt"

VENV=$ROOT/.venv-cuda
SDIST=$(ls "$HERE"/device/llama_cpp_python-0.3.36.tar.gz 2>/dev/null | head -1)
build() {
    python3 -m venv "$VENV" &&
    "$VENV/bin/pip" install --no-index --find-links "$HERE/device/wheels" numpy gguf h5py click xxhash jinja2 \
        matplotlib pillow scikit-build-core cmake ninja pathspec packaging pyproject-metadata typing-extensions \
        diskcache &&
    PATH=/usr/local/cuda/bin:$PATH CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=ON -DCMAKE_CUDA_ARCHITECTURES=native -DLLAMA_BUILD_TESTS=OFF" \
        "$VENV/bin/pip" install --no-index --no-build-isolation --no-deps "$SDIST" &&
    "$VENV/bin/pip" install --no-index --no-build-isolation --no-deps -e "$ROOT" &&
    "$VENV/bin/ggml-inspector" build-hook
}
if [ -z "$SDIST" ]; then
    echo "no benchmarks/device/llama_cpp_python-0.3.36.tar.gz: prepare it as the header says"; exit 2
fi
stage build 420 build || { echo "the CUDA build did not finish: nothing else can run"; exit 1; }

PY=$VENV/bin/python
GI=$VENV/bin/ggml-inspector
MODEL=$("$PY" -c "import sys; sys.path.insert(0, '$HERE'); import bench_real_model as b; print(b.model_path())")
PROMPT="The quick brown fox jumps over the lazy dog; The quick brown fox jumps over the lazy dog; then it sleeps."
run_capture() {  # run_capture OUTPUT EXTRA...: a fully offloaded capture at llama.cpp's settings otherwise
    local out=$1; shift
    "$GI" capture "$MODEL" -p "$PROMPT" -n 8 -ngl 99 -o "$OUT/$out" --overwrite "$@"
}

for mode in unsplit callback; do
    stage "observer check, --mode $mode" 90 run_capture "observer-$mode.h5" --mode "$mode" --observer-check
    "$GI" show "$OUT/observer-$mode.h5" --json 2>/dev/null | "$PY" -c \
        "import json,sys; d=json.load(sys.stdin); print('$mode observer check:', d.get('result', {}).get('observer_check'))" \
        || true
done

timed() {  # timed LABEL COMMAND...: the median wall time of three runs after one warm-up, in ms
    local label=$1; shift
    "$@" > /dev/null 2>&1
    local runs=()
    for _ in 1 2 3; do
        local begun=$(date +%s%N)
        "$@" > /dev/null 2>&1
        runs+=("$((($(date +%s%N) - begun) / 1000000))")
    done
    printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p | sed "s/^/$label /"
}
bench() {
    for ctx in 512 32768; do
        timed "plain c$ctx" "$PY" -c "import sys, llama_cpp; llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=$ctx,
n_gpu_layers=99, verbose=False); llm(sys.argv[2], max_tokens=8, temperature=0.0)" "$MODEL" "$PROMPT"
        for mode in unsplit callback; do
            timed "all c$ctx $mode" run_capture bench.h5 -c "$ctx" --mode "$mode"
            timed "stats c$ctx $mode" run_capture bench.h5 -c "$ctx" --mode "$mode" --stats-only
            timed "one c$ctx $mode" run_capture bench.h5 -c "$ctx" --mode "$mode" -T result_output
        done
    done
}
stage benchmark 240 bash -c "$(declare -f timed run_capture bench); GI='$GI' PY='$PY' MODEL='$MODEL' \
    PROMPT='$PROMPT' OUT='$OUT' bench" | tee "$OUT/benchmark.txt"

stage "offload compare" 60 bash -c "'$GI' capture '$MODEL' -p '$PROMPT' -n 4 -ngl 0 -o '$OUT/ngl0.h5' --overwrite &&
    '$GI' capture '$MODEL' -p '$PROMPT' -n 4 -ngl 99 -o '$OUT/ngl99.h5' --overwrite &&
    '$GI' compare '$OUT/ngl0.h5' '$OUT/ngl99.h5' | tail -3" | tee "$OUT/offload_compare.txt"
rm -f "$OUT"/*.h5
echo "done in $(($(date +%s) - STARTED))s"
