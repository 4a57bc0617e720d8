# syntax=docker/dockerfile:1
# edgefleet edge agent for x86_64 with an NVIDIA GPU: CUDA 12 + cuDNN 9 runtime, onnxruntime-gpu.
# Also the image of a development cloud pool (`edge-agent serve --standalone`, deploy/compose.yaml).
#
# Build from the repository root:
#   docker build -f deploy/docker/agent-x86.Dockerfile -t edgefleet/agent-x86:0.1.0 .
# Run on a GPU host (NVIDIA Container Toolkit):
#   docker run --gpus all -v /etc/edgefleet:/etc/edgefleet:ro -v agent-state:/var/lib/edgefleet \
#     --network host edgefleet/agent-x86:0.1.0 serve --config /etc/edgefleet/agent.toml
# onnxruntime-gpu >= 1.19 on PyPI is built for CUDA 12.x and cuDNN 9, which this base carries.
# TensorRT is not in this image (its wheels come from NVIDIA's index); add it with
# `pip install tensorrt` in a derived image if you want the TensorRT runtime on x86.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocols ./protocols
COPY models ./models
COPY edge_agent ./edge_agent
COPY cloud_hub ./cloud_hub
# onnxruntime is not a base dependency: the `gpu` extra brings onnxruntime-gpu alone (the CPU build would
# install the same `onnxruntime` Python package and shadow it).
RUN python3 -m venv /opt/edgefleet/venv \
 && /opt/edgefleet/venv/bin/pip install --upgrade pip \
 && /opt/edgefleet/venv/bin/pip install '.[gpu]' \
 && ! /opt/edgefleet/venv/bin/pip show onnxruntime >/dev/null 2>&1

FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="edgefleet edge agent (x86_64, CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/edgefleet/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CUDA_CACHE_PATH=/var/cache/edgefleet/cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 edgefleet \
 && useradd --system --uid 10001 --gid edgefleet --groups video --home-dir /var/lib/edgefleet --shell /usr/sbin/nologin edgefleet \
 && install -d -m 0700 -o edgefleet -g edgefleet /var/lib/edgefleet /var/cache/edgefleet
COPY --from=build /opt/edgefleet/venv /opt/edgefleet/venv
USER 10001:10001
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["edge-agent"]
CMD ["serve", "--config", "/etc/edgefleet/agent.toml"]
