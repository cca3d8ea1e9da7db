# se-onnx images: one file, two targets.
#   docker build -t se-onnx:0.1.0 .                               CPU (the default, last stage)
#   docker build --target cuda -t se-onnx:0.1.0-cuda .            NVIDIA GPU
# Both run `se-onnx serve` on ports 8000 (HTTP) and 8001 (gRPC) with the sample models in /models, and every other
# `se-onnx` command works too: docker run --rm -v "$PWD:/data" se-onnx:0.1.0 se-onnx insert ...
# Builds with BuildKit's built-in Dockerfile frontend (Docker 20.10 and later, `RUN --mount`
# included): no `# syntax=` line, which would pull a frontend image from a registry. Where no
# registry answers, make a local base: deploy/docker/offline-base.sh, then
# --build-arg PYTHON_IMAGE=se-onnx-base:bookworm (deploy/docker/smoke.sh does both).

# Base images, pinned by exact tag. onnxruntime-gpu on PyPI is built for CUDA 12.x up to 1.26
# and for CUDA 13.0 from 1.27 (each wheel's onnxruntime/capi/build_and_package_info.py says which),
# with cuDNN 9 in both; its CUDA major version must be the base image's. For hosts whose driver
# predates CUDA 13 (< 580): --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# --build-arg ONNXRUNTIME_GPU_VERSION=1.26.0. Ubuntu 24.04 ships Python 3.12, as the CPU image has.
ARG PYTHON_IMAGE=python:3.12.13-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# builder: the se-onnx wheel (pure Python). Only this stage sees the source tree.
FROM ${PYTHON_IMAGE} AS builder
WORKDIR /src
COPY . .
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# cuda: Python from Ubuntu, the wheel, and ONNX Runtime's CUDA build instead of its CPU build.
FROM ${CUDA_IMAGE} AS cuda
# Keep in step with CUDA_IMAGE (see the top of this file).
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
# The Ubuntu release is pinned by the base tag; exact apt versions would break the build each
# time the archive publishes a security update, so apt packages are left unpinned (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python3 -m venv /opt/venv
# onnxruntime and onnxruntime-gpu install into the same `onnxruntime` package directory, so both
# cannot be present: install se-onnx (which pulls the CPU wheel), remove the CPU wheel, then add
# the GPU wheel. Uninstalling after the GPU wheel instead would delete files the GPU wheel owns.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/se_onnx-*.whl \
    && pip uninstall --yes onnxruntime \
    && pip install --no-cache-dir "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}"
RUN groupadd --gid 10001 se-onnx \
    && useradd --create-home --uid 10001 --gid 10001 se-onnx
COPY models/ /models/
ENV SE_ONNX_MODEL_REPOSITORY=/models \
    SE_ONNX_HOST=0.0.0.0 \
    SE_ONNX_PORT=8000 \
    SE_ONNX_GRPC_PORT=8001 \
    SE_ONNX_PROVIDER=cuda \
    SE_ONNX_LOG_LEVEL=info
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /data
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SE_ONNX_PORT', '8000') + '/v2/health/ready', timeout=4)"]
CMD ["se-onnx", "serve"]

# ---------------------------------------------------------------------------------------------
# cpu (default): the slim Python image, the wheel and its dependencies (onnxruntime's CPU build).
FROM ${PYTHON_IMAGE} AS cpu
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python -m venv /opt/venv
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/se_onnx-*.whl
RUN groupadd --gid 10001 se-onnx \
    && useradd --create-home --uid 10001 --gid 10001 se-onnx
COPY models/ /models/
ENV SE_ONNX_MODEL_REPOSITORY=/models \
    SE_ONNX_HOST=0.0.0.0 \
    SE_ONNX_PORT=8000 \
    SE_ONNX_GRPC_PORT=8001 \
    SE_ONNX_PROVIDER=cpu \
    SE_ONNX_LOG_LEVEL=info
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /data
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SE_ONNX_PORT', '8000') + '/v2/health/ready', timeout=4)"]
CMD ["se-onnx", "serve"]
