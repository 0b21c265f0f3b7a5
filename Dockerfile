# syntax=docker/dockerfile:1
# gpuq images: one Dockerfile, three targets, all running as the non-root user gpuq.
#
#   api         the API (gunicorn) and Flower. No torch: the light side never imports it.
#   worker-gpu  the worker launcher, CUDA torch on a CUDA runtime base; one Celery worker per GPU.
#   worker-cpu  the worker launcher, the CPU torch wheel on python:3.11-slim, for hosts without a GPU.
#
# docker compose builds what it needs; by hand:
#   docker build --target worker-gpu -t gpuq-worker:gpu .
# The project is installed as a package (not editable), so the digits weights
# (gpu_worker/analyzers/digits.safetensors, package data) are inside the image.
# No secret is baked in: the Redis password and Flower's credentials come from
# the environment at run time.

ARG PYTHON_IMAGE=python:3.11-slim
# torch 2.13.0's Linux wheel on PyPI is built for CUDA 13.0 and brings its CUDA
# libraries; the base adds the NVIDIA container settings (nvidia-smi and NVML
# mounted from the host driver, which must support CUDA 13.0).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
ARG TORCH_VERSION=2.13.0

# ---------------------------------------------------------------- common parts
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin gpuq \
 && install -d -o gpuq -g gpuq /data /app
WORKDIR /app

# ---------------------------------------------------------------- api (+ Flower)
FROM python-base AS api
# The source is bind-mounted for the install only: nothing of it but the
# installed package and gunicorn's config stays in the image.
RUN --mount=type=bind,source=.,target=/src,rw \
    pip install "/src[dashboard]" \
 && cp /src/gunicorn.conf.py /app/gunicorn.conf.py
USER gpuq
EXPOSE 8000 5555
CMD ["gunicorn", "-c", "/app/gunicorn.conf.py"]

# ---------------------------------------------------------------- worker on CPU
FROM python-base AS worker-cpu
ARG TORCH_VERSION
# The CPU wheel first, from PyTorch's CPU index, so that the project's looser
# torch requirement pulls no CUDA packages.
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
RUN --mount=type=bind,source=.,target=/src,rw \
    pip install "/src[gpu]" \
 && python -c "import importlib.resources as r; assert r.files('gpu_worker.analyzers').joinpath('digits.safetensors').is_file()"
ENV GPUQ_GPUS=none
USER gpuq
CMD ["gpuq", "worker"]

# ---------------------------------------------------------------- worker on GPUs
FROM ${CUDA_IMAGE} AS worker-gpu
ARG TORCH_VERSION
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin gpuq \
 && install -d -o gpuq -g gpuq /data /app
WORKDIR /app
# The CUDA build of torch (PyPI's Linux wheel), pinned before the project.
RUN pip install "torch==${TORCH_VERSION}"
RUN --mount=type=bind,source=.,target=/src,rw \
    pip install "/src[gpu]" \
 && python -c "import importlib.resources as r; assert r.files('gpu_worker.analyzers').joinpath('digits.safetensors').is_file()"
USER gpuq
CMD ["gpuq", "worker"]
