# syntax=docker/dockerfile:1
# edgefleet cloud hub: control plane (registry, provisioning CA, telemetry ingest, rollouts, operator API).
#
# Build from the repository root:
#   docker build -f deploy/docker/hub.Dockerfile -t edgefleet/hub:0.1.0 .
# Run (SQLite in the data volume; add --db postgresql://... for several replicas, --broker mqtts://...
# for ingest; the data dir comes from EDGEFLEET_HUB_DATA_DIR):
#   docker run -v hub-data:/var/lib/edgefleet-hub -p 8443:8443 edgefleet/hub:0.1.0 \
#     serve --host 0.0.0.0 --port 8443 --server-name hub.example.com --broker mqtts://mqtt.example.com:8883
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocols ./protocols
COPY models ./models
COPY edge_agent ./edge_agent
COPY cloud_hub ./cloud_hub
# One virtual environment, copied whole into the runtime stage: no compiler or pip cache there.
RUN python -m venv /opt/edgefleet/venv \
 && /opt/edgefleet/venv/bin/pip install --upgrade pip \
 && /opt/edgefleet/venv/bin/pip install '.[hub]'

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="edgefleet cloud hub" \
      org.opencontainers.image.source="https://github.com/edgefleet/edgefleet" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/edgefleet/venv/bin:$PATH \
    EDGEFLEET_HUB_DATA_DIR=/var/lib/edgefleet-hub \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed non-root uid so volumes and Kubernetes securityContext (runAsUser: 10001) agree.
RUN groupadd --system --gid 10001 edgefleet \
 && useradd --system --uid 10001 --gid edgefleet --home-dir /var/lib/edgefleet-hub --shell /usr/sbin/nologin edgefleet \
 && install -d -m 0700 -o edgefleet -g edgefleet /var/lib/edgefleet-hub
COPY --from=build /opt/edgefleet/venv /opt/edgefleet/venv
USER 10001:10001
WORKDIR /var/lib/edgefleet-hub
# Data dir: CA and signing keys, operator token, and the SQLite database unless --db names PostgreSQL.
VOLUME ["/var/lib/edgefleet-hub"]
EXPOSE 8443
# The hub serves HTTPS with a certificate from its own CA; the probe is local, so it skips verification.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import ssl,sys,urllib.request as u; sys.exit(0 if u.urlopen('https://127.0.0.1:8443/healthz', timeout=2, context=ssl._create_unverified_context()).status == 200 else 1)"]
ENTRYPOINT ["cloud-hub"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8443"]
