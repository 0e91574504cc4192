# aidraw's container image: `docker build -t aidraw .` (CUDA) or
# `docker build --build-arg TORCH=cpu -t aidraw:cpu .` (CPU only).
#
# UNTESTED: written where neither Docker nor a GPU could run. Its install steps mirror the
# Makefile's `install` target, which CI runs on every change (tests/test_deploy.py checks that
# the pins below match the Makefile and pyproject.toml).
#
# Inside: /srv/aidraw holds settings.toml (mount yours, e.g. deploy/docker-settings.toml),
# models/ (your checkpoints: a volume) and data/ (journal, per-user settings, finished
# images, backups: a volume). Tokens come from the environment only.

ARG TORCH=cuda

# --- CUDA: NVIDIA's runtime image (drivers come from the host's NVIDIA Container Toolkit).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-cuda
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

# --- CPU: plain Python; torch from PyTorch's CPU index (PyPI's default is the CUDA build).
FROM python:3.12-slim-bookworm AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

FROM base-${TORCH}
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv

# As `make install`: torch goes in first, from its own index, so aidraw's torch==2.13.0 pin
# is already met and pip never swaps the build.
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0

WORKDIR /opt/aidraw
COPY pyproject.toml README.md settings.toml ./
COPY bot bot
COPY engine engine
RUN pip install . \
    # Only for CLIP's BPE vocabulary file; its dependencies would replace the torch build.
    && pip install --no-deps 'open-clip-torch>=2.20,<4' \
    # Upscaler networks; its torchvision requirement would replace the torch build.
    && pip install --no-deps 'spandrel==0.4.2'

# UID 1000 (often yours on the host, for the bind-mounted models/); Ubuntu's images give it to
# a user "ubuntu" already.
RUN if id ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && useradd --create-home --uid 1000 aidraw \
    && mkdir -p /srv/aidraw/models /srv/aidraw/data \
    && cp settings.toml /srv/aidraw/settings.toml \
    && chown -R aidraw:aidraw /srv/aidraw
USER aidraw
WORKDIR /srv/aidraw
ENV AIDRAW_SETTINGS=/srv/aidraw/settings.toml
VOLUME ["/srv/aidraw/models", "/srv/aidraw/data"]
EXPOSE 7860

# /healthz answers 503 once the engine loop has stopped. It is on the web server, so
# [web] serve must be "always" (deploy/docker-settings.toml) beside the bots; off loopback it
# needs the API's token, as /metrics does.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 CMD python3 -c "\
import os, urllib.request as u; \
t = os.environ.get('AIDRAW_API_TOKEN', ''); \
u.urlopen(u.Request('http://127.0.0.1:7860/healthz', \
headers={'Authorization': 'Bearer ' + t} if t else {}), timeout=8)"

# Builds the demo model into models/ when it holds none, then serves until SIGTERM (the
# drawing batch gets [queue] shutdown_grace_s; queued jobs stay in the journal).
CMD ["sh", "-c", "aidraw build-demo --if-missing && exec aidraw run"]
