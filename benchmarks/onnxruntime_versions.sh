#!/usr/bin/env bash
# Which onnxruntime releases run our ONNX exports: each version in its own venv (onnxruntime and
# numpy only, nothing of attnround-pl) runs every quantized_opset{21,18}.onnx that
# benchmarks/export_sizes.py wrote, on the same random inputs, and its outputs are compared with
# the project's onnxruntime (.venv). Venvs go to benchmarks/runs/onnxruntime/.
#   bash benchmarks/onnxruntime_versions.sh [VERSION ...]     # default: 1.18.1 1.19.2 1.20.1
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(1.18.1 1.19.2 1.20.1)
runs=benchmarks/runs/onnxruntime
models=(benchmarks/runs/export_sizes/*/quantized_opset*.onnx)
[ -e "${models[0]}" ] || { echo "no exports: run benchmarks/export_sizes.py first" >&2; exit 2; }
mkdir -p "$runs"
run_all() {  # $1: python; writes $runs/<label>/<model>.npy or <model>.err
    local py=$1 label=$2
    mkdir -p "$runs/$label"
    for f in "${models[@]}"; do
        name=$(basename "$(dirname "$f")")_$(basename "$f" .onnx)
        "$py" benchmarks/onnxruntime_run.py "$f" "$runs/$label/$name" || true
    done
}
run_all .venv/bin/python current
for v in "${versions[@]}"; do
    if [ ! -x "$runs/venv-$v/bin/python" ]; then
        python3 -m venv "$runs/venv-$v"
        "$runs/venv-$v/bin/pip" install --quiet --disable-pip-version-check "onnxruntime==$v" "numpy<2.3"
    fi
    run_all "$runs/venv-$v/bin/python" "$v"
done
.venv/bin/python benchmarks/onnxruntime_run.py --compare "$runs" current "${versions[@]}"
