# syntax=docker/dockerfile:1
# detect-serve images.
#   GPU (default):  docker build -t detect-serve:gpu .
#   CPU:            docker build --target cpu -t detect-serve:cpu .
# Both fetch the default model's source at build time (no model download at start-up; its
# model.yaml ships in the wheel) into the home /var/lib/detect (DETECT_HOME), and build
# precision engines at start-up into /var/lib/detect/engines (a volume): engines are tied to the
# device and tool versions, so they are built where they run and reused while the manifest matches.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# CUDA 12.6 + cuDNN 9 runtime: what the onnxruntime-gpu 1.2x CUDA 12 wheels and the tensorrt 10.x
# cu12 wheels are built against. TensorRT itself comes from pip (tensorrt-cu12 bundles its libs).
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---- wheel of the project (no build tools in the runtime images) -------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engines/ engines/
COPY service/ service/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

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
# hadolint ignore=DL3013
RUN WHEEL="$(ls /wheels/*.whl)" \
    && pip install --no-cache-dir "${WHEEL}[gpu]" \
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
HEALTHCHECK --interval=15s --timeout=5s --start-period=900s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DETECT_PORT', '8000') + '/health/ready', timeout=4)"]
CMD ["detect-serve", "serve", "--prepare"]
