# syntax=docker/dockerfile:1
# waldur-matrix-bridge. Build: docker build -t waldur-bridge .
# Run:   docker run -v waldur-bridge-data:/data waldur-bridge
# The first two starts write /data/config.yaml and /data/registration.yaml and exit
# (see docker-run.sh); afterwards the container runs the bridge on appservice.port (29334).

# The base image by digest, so every build starts from the same bytes: the multi-platform
# index of python:3.12-slim as pinned by public projects in 2026 (this repository's CI cannot
# pull images, so it was not pulled here). When bumping, take the current one from
#   docker buildx imagetools inspect python:3.12-slim
# (the "Digest:" line) and rebuild.
ARG PYTHON_IMAGE=python:3.12-slim@sha256:78387bc3881b8273120a12ebe6c1ab22b018ccc2c9adf565ae1ac9b536e184ea

FROM ${PYTHON_IMAGE} AS builder

# Compilers for dependencies without a wheel for this platform (python-olm builds libolm
# with cmake). They stay in this stage.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1

# The image's own pip (pinned with it by the digest), not whatever pip is newest today.
RUN python -m venv /opt/venv

WORKDIR /src
COPY . .
# With the e2be extra (end-to-bridge encryption): python-olm builds on this Python (3.12).
# constraints.txt holds the versions the tests ran with (scripts/update-constraints.py).
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install -c constraints.txt \
        "$(ls /tmp/wheels/waldur_matrix_bridge-*.whl)[e2be]" \
    && /opt/venv/bin/python -c "import mautrix.bridge, olm, waldur_bridge.__main__"


FROM ${PYTHON_IMAGE}

# The venv links to /usr/local/bin/python3.12, the same in both stages.
COPY --from=builder /opt/venv /opt/venv
COPY docker-run.sh /usr/local/bin/docker-run.sh

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN chmod 0755 /usr/local/bin/docker-run.sh \
    && groupadd --system --gid 1337 waldur \
    && useradd --system --uid 1337 --gid 1337 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin waldur \
    && mkdir -p /data \
    && chown waldur:waldur /data

USER waldur:waldur
VOLUME /data
WORKDIR /data
EXPOSE 29334

# The appservice's own liveness endpoint (mautrix), on the port and address the config names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "waldur_bridge.healthcheck"]

ENTRYPOINT ["/usr/local/bin/docker-run.sh"]
