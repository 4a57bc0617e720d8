# syntax=docker/dockerfile:1
# edgefleet edge agent for NVIDIA Jetson (Orin, JetPack 6 / L4T r36): TensorRT, CUDA and cuDNN come from
# the JetPack base image and must match the L4T release flashed on the device.
#
# Build on the Jetson itself (or an arm64 builder) from the repository root:
#   docker build -f deploy/docker/agent-jetson.Dockerfile -t edgefleet/agent-jetson:0.1.0-r36.4 .
# Run with the NVIDIA runtime, which maps the Jetson GPU nodes (/dev/nvhost-*, /dev/nvmap) into the container:
#   docker run --runtime nvidia -v /etc/edgefleet:/etc/edgefleet:ro -v agent-state:/var/lib/edgefleet \
#     --network host edgefleet/agent-jetson:0.1.0-r36.4 serve --config /etc/edgefleet/agent.toml
#   docker run --runtime nvidia --rm edgefleet/agent-jetson:0.1.0-r36.4 doctor   # TensorRT vs CPU self-check
#
# Python: edgefleet needs Python >= 3.11 (tomllib), but JetPack 6 is Ubuntu 22.04 and ships Python 3.10
# with TensorRT bindings for 3.10 only. The build stage therefore compiles TensorRT's Python bindings for
# Python 3.11 from NVIDIA's TensorRT OSS sources (python/build.sh), at the branch of the TensorRT version
# in the base image (JetPack 6.1/6.2 = L4T r36.4 = TensorRT 10.3), against the base image's own headers
# and libraries. Frigate builds its Jetson images the same way. Change L4T_IMAGE and TRT_OSS_BRANCH
# together. Engines are built on the device at model load and cached in the state directory.
#
# onnxruntime: the PyPI aarch64 wheel is CPU-only. For onnxruntime's CUDA/TensorRT providers on Jetson,
# install NVIDIA's Jetson build from the Jetson AI Lab index (optional; check it has a cp311 wheel for
# your JetPack), e.g. --build-arg ORT_INDEX_URL=https://pypi.jetson-ai-lab.io/jp6/cu126
ARG L4T_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0
ARG TRT_OSS_BRANCH=release/10.3
ARG ORT_INDEX_URL=

FROM ${L4T_IMAGE} AS build
ARG TRT_OSS_BRANCH
ARG ORT_INDEX_URL
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Python 3.11 for Ubuntu 22.04 (arm64) from the deadsnakes PPA; cmake and git for the bindings.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-dev python3.11-venv \
      python3-pip python3-setuptools python3-wheel cmake git build-essential \
 && rm -rf /var/lib/apt/lists/*
# TensorRT Python bindings for cp311, built against the JetPack TensorRT in this image.
RUN git clone --depth 1 --branch "${TRT_OSS_BRANCH}" https://github.com/NVIDIA/TensorRT.git /tmp/TensorRT \
 && mkdir -p /tmp/ext \
 && git clone --depth 1 --branch v2.13.6 https://github.com/pybind/pybind11.git /tmp/ext/pybind11 \
 && ln -s /usr/include/python3.11 /tmp/ext/python3.11 \
 && for h in NvOnnxParser.h; do ln -sf /usr/include/aarch64-linux-gnu/$h /tmp/TensorRT/parsers/onnx/$h; done \
 && cd /tmp/TensorRT/python \
 && TRT_OSSPATH=/tmp/TensorRT EXT_PATH=/tmp/ext TARGET_ARCHITECTURE=aarch64 \
    PYTHON_MAJOR_VERSION=3 PYTHON_MINOR_VERSION=11 bash ./build.sh \
 && mkdir -p /wheels && find /tmp/TensorRT/python/build -name 'tensorrt-*-cp311-*.whl' -exec cp {} /wheels/ \; \
 && test -n "$(ls /wheels)"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocols ./protocols
COPY models ./models
COPY edge_agent ./edge_agent
COPY cloud_hub ./cloud_hub
RUN python3.11 -m venv /opt/edgefleet/venv \
 && /opt/edgefleet/venv/bin/pip install --upgrade pip \
 && /opt/edgefleet/venv/bin/pip install . /wheels/tensorrt-*.whl \
 && if [ -n "${ORT_INDEX_URL}" ]; then \
      /opt/edgefleet/venv/bin/pip install --index-url "${ORT_INDEX_URL}" onnxruntime-gpu; \
    else \
      /opt/edgefleet/venv/bin/pip install '.[cpu]'; \
    fi

FROM ${L4T_IMAGE}
LABEL org.opencontainers.image.title="edgefleet edge agent (Jetson, L4T r36)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive \
    PATH=/opt/edgefleet/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CUDA_CACHE_PATH=/var/cache/edgefleet/cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y software-properties-common gpg-agent && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 edgefleet \
 && useradd --system --uid 10001 --gid edgefleet --groups video --home-dir /var/lib/edgefleet --shell /usr/sbin/nologin edgefleet \
 && install -d -m 0700 -o edgefleet -g edgefleet /var/lib/edgefleet /var/cache/edgefleet
COPY --from=build /opt/edgefleet/venv /opt/edgefleet/venv
# The Jetson GPU nodes are group "video" (added above); the agent needs no root.
USER 10001:10001
WORKDIR /var/lib/edgefleet
VOLUME ["/var/lib/edgefleet"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python3.11", "-c", "import sys,urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["edge-agent"]
CMD ["serve", "--config", "/etc/edgefleet/agent.toml"]
