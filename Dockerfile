# syntax=docker/dockerfile:1
# detect-serve images.
#   GPU (default):  docker build -t detect-serve:gpu .
#   CPU:            docker build --target cpu -t detect-serve:cpu .
# Both fetch the default model's source at build time (no model download at start-up; its
# model.yaml ships in the wheel) into the home /var/lib/detect (DETECT_HOME), and build
# precision engines at start-up into /var/lib/detect/engines (a volume): engines are tied to the
# device and tool versions, so they are built where they run and reused while the manifest matches.
# Replicas may share that volume: one builds (under a lock), the others find the plans cached.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# One CUDA major for the whole GPU stack: 13. onnxruntime-gpu >= 1.27 (the first with what the
# build uses) is a CUDA 13 build on PyPI, tensorrt-cu13 and cuda-bindings 13.x match it, and
# cuDNN 9 is for ONNX Runtime's CUDA provider. Hosts need an R580+ driver and a GPU of compute
# capability >= 7.5 (CUDA 13 dropped Maxwell, Pascal and Volta).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# ---- wheel of the project (no build tools in the runtime images) -------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engines/ engines/
COPY service/ service/
COPY scripts/gpu_requirements.py scripts/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && mkdir /requirements \
    && python scripts/gpu_requirements.py pyproject.toml > /requirements/gpu.txt

# ---- CPU image -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DETECT_HOST=0.0.0.0 \
    DETECT_PORT=8000 \
    DETECT_HOME=/var/lib/detect \
    DETECT_MODELS_DIR=/var/lib/detect/models \
    DETECT_ENGINES_DIR=/var/lib/detect/engines \
    DETECT_CACHE_DIR=/var/lib/detect/cache \
    DETECT_PREPARE_PRECISIONS='["fp32","int8"]'
COPY --from=wheel /wheels /wheels
# The tested versions: requirements/lock.txt pins every dependency (scripts/lock.sh refreshes it).
COPY requirements/lock.txt /tmp/lock.txt
# Installs the project's own wheel (a path, not a registry name) under the lock's constraints.
# hadolint ignore=DL3013
RUN WHEEL="$(ls /wheels/*.whl)" \
    && pip install --no-cache-dir -c /tmp/lock.txt "${WHEEL}" \
    && rm /tmp/lock.txt \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home detect \
    && mkdir -p /var/lib/detect/engines /var/lib/detect/cache
RUN detect-serve models fetch yolov3-tiny-coco \
    && rm -rf /var/lib/detect/cache/* \
    && chown -R detect:detect /var/lib/detect
WORKDIR /var/lib/detect
USER 10001:10001
VOLUME ["/var/lib/detect/engines"]
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DETECT_PORT', '8000') + '/health/ready', timeout=4)"]
CMD ["detect-serve", "serve", "--prepare"]

# ---- GPU image (default target) ------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    DETECT_HOST=0.0.0.0 \
    DETECT_PORT=8000 \
    DETECT_HOME=/var/lib/detect \
    DETECT_MODELS_DIR=/var/lib/detect/models \
    DETECT_ENGINES_DIR=/var/lib/detect/engines \
    DETECT_CACHE_DIR=/var/lib/detect/cache \
    DETECT_BACKEND=tensorrt \
    DETECT_PREPARE_PRECISIONS='["fp32","fp16","int8"]'
# The distribution's Python; versions follow the pinned base image, which pins them in turn.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
COPY --from=wheel /wheels /wheels
COPY --from=wheel /requirements/gpu.txt /tmp/gpu-requirements.txt
# The project's core dependencies include the CPU `onnxruntime`, which installs the same module as
# onnxruntime-gpu (with both, the CUDA provider may vanish). So the wheel goes in with --no-deps,
# its other dependencies from the list the wheel stage wrote (pyproject's core dependencies
# without onnxruntime), and the GPU stack pinned exactly (pyproject's `gpu` extra gives the ranges).
# TensorRT's libraries are not on PyPI (its tensorrt-cu13-libs there is a stub that fetches from
# NVIDIA's index), so pip reads NVIDIA's index too. The check below fails the build if anything
# brought `onnxruntime` in anyway.
# hadolint ignore=DL3013
RUN WHEEL="$(ls /wheels/*.whl)" \
    && pip install --no-cache-dir --no-deps "${WHEEL}" \
    && pip install --no-cache-dir --extra-index-url https://pypi.nvidia.com \
        -r /tmp/gpu-requirements.txt \
        "onnxruntime-gpu==1.31.1" \
        "tensorrt-cu13==11.4.0.106" \
        "cuda-bindings==13.5.0" \
        "nvidia-ml-py==13.615.71" \
    && if pip show onnxruntime >/dev/null 2>&1; then echo "onnxruntime beside onnxruntime-gpu" >&2; exit 1; fi \
    && python -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" \
    && rm -rf /wheels /tmp/gpu-requirements.txt \
    && useradd --system --uid 10001 --create-home detect \
    && mkdir -p /var/lib/detect/engines /var/lib/detect/cache
RUN detect-serve models fetch yolov3-tiny-coco \
    && rm -rf /var/lib/detect/cache/* \
    && chown -R detect:detect /var/lib/detect
WORKDIR /var/lib/detect
USER 10001:10001
VOLUME ["/var/lib/detect/engines"]
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DETECT_PORT', '8000') + '/health/ready', timeout=4)"]
CMD ["detect-serve", "serve", "--prepare"]
