# syntax=docker/dockerfile:1
# Eclipse Mosquitto 2.0.11 from Debian bookworm: the same package and file locations that
# deploy/mosquitto/mosquitto.conf is written (and tested, tests/rig) for. Used by deploy/compose.yaml.
#
# The config, the certificates and the dynamic-security registry are mounted, not baked in:
#   /etc/mosquitto/mosquitto.conf    deploy/mosquitto/mosquitto.conf
#   /etc/mosquitto/certs/            edgefleet-ca.pem, broker.pem, broker.key, edgefleet.crl (readable by
#                                    uid 1883) and edgefleet.acl rendered from deploy/mosquitto/acl.template
#                                    for the acl_file alternative; /etc/mosquitto/edgefleet.acl links to it
#   /var/lib/mosquitto/              persistence and dynamic-security.json (`cloud-hub pki broker-dynsec`),
#                                    which the plugin rewrites (writable by uid 1883)
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# A fixed uid/gid (1883) before the package creates the user, so mounted keys can be chown'ed to it.
RUN groupadd --system --gid 1883 mosquitto \
 && useradd --system --uid 1883 --gid mosquitto --home-dir /var/lib/mosquitto --shell /usr/sbin/nologin mosquitto \
 && apt-get update \
 && apt-get install -y --no-install-recommends mosquitto \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o mosquitto -g mosquitto /run/mosquitto /var/lib/mosquitto /var/log/mosquitto \
 && ln -s /etc/mosquitto/certs/edgefleet.acl /etc/mosquitto/edgefleet.acl
VOLUME ["/var/lib/mosquitto", "/var/log/mosquitto"]
EXPOSE 8883
# Started as root so it can read root-owned files, then it drops to `user mosquitto` (as on Debian).
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
  CMD ["sh", "-c", "kill -0 $(cat /run/mosquitto/mosquitto.pid)"]
CMD ["/usr/sbin/mosquitto", "-c", "/etc/mosquitto/mosquitto.conf"]
