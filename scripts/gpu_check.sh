#!/usr/bin/env bash
# One command for a GPU host with internet access (NVIDIA driver R580+, a GPU of compute
# capability >= 7.5): installs the `gpu` extra (TensorRT from NVIDIA's index), builds FP32, FP16
# and INT8 TensorRT plans of the default model, and writes a JSON report of each plan's agreement
# with ONNX Runtime CPU FP32 on the validation photos and its latency at batch 1, 8 and 32.
#
#   scripts/gpu_check.sh [OUT_DIR]      # default: gpu-check/ ; report: OUT_DIR/report.json
#
# The build does the comparison itself: FP32 detections come from ONNX Runtime on CPU, each plan
# runs on the GPU over the same photos, and the mAP agreement is recorded with the timings in
# the manifest, which gpu_report.py turns into the report.
# NOT YET RUN ON A GPU: written and checked on CPU-only machines (see README, "GPU hosts").
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
python3 -m venv "$out/venv"
# shellcheck disable=SC1091
source "$out/venv/bin/activate"
pip install --quiet --upgrade pip
# The core dependencies include the CPU onnxruntime, the same module as onnxruntime-gpu: install
# the project without its dependencies, then them (and the gpu extra) without onnxruntime.
pip install --quiet --no-deps .
python3 scripts/gpu_requirements.py pyproject.toml gpu > "$out/requirements.txt"
pip install --quiet --extra-index-url https://pypi.nvidia.com -r "$out/requirements.txt"
if pip show onnxruntime >/dev/null 2>&1; then
    echo "onnxruntime (CPU) is installed beside onnxruntime-gpu; remove it" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
export DETECT_MODELS_DIR="$PWD/models" DETECT_ENGINES_DIR="$out/engines" DETECT_BACKEND=tensorrt
detect-serve models fetch yolov3-tiny-coco
# A rejected precision makes the build exit 1; the report says which and why.
detect-serve build yolov3-tiny-coco --backend tensorrt --precision fp32,fp16,int8 \
    --max-batch 32 --force || true
python3 scripts/gpu_report.py "$out/engines/yolov3-tiny-coco" --batches 1,8,32 > "$out/report.json"
echo "report: $out/report.json"
