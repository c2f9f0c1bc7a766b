# Personify's image: `personify serve` by default; the same image runs `personify worker`,
# `personify lake sink` and every CLI command (deploy/compose.yaml, docs/deploy.md).
#
#   docker build -t personify:latest .
#
# Three stages: the console's front-end libraries from npm, a builder that compiles the
# wheel (with the C part of ingest) and its dependencies' wheels, and a slim runtime with
# no compiler, running as an unprivileged user.

ARG PYTHON_VERSION=3.11
ARG NODE_VERSION=22

FROM node:${NODE_VERSION}-bookworm-slim AS node

FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
# a C compiler and Python's headers for src/personify/ingest/_wire_native.c
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
# npm, for the console's vendored libraries (tools/vendor_console.py runs `npm ci`)
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s /usr/local/lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm
WORKDIR /build
COPY pyproject.toml hatch_build.py README.md ./
COPY tools ./tools
COPY src ./src
RUN python tools/vendor_console.py --require
# every engine's extra: one image serves the embedded and the scaled-out shapes
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[redis,postgres,kafka]"
# the compiled ingest path is an accelerator the build may skip with a warning; an image
# must not ship without it
RUN python -c "import glob, sys, zipfile; \
wheel = glob.glob('/wheels/personify-*.whl')[0]; \
names = zipfile.ZipFile(wheel).namelist(); \
sys.exit(0 if any('_wire_native' in n and n.endswith('.so') for n in names) else 'no C extension in ' + wheel)"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PERSONIFY_HOST=0.0.0.0 \
    PERSONIFY_PORT=8000 \
    PERSONIFY_DATA_DIR=/var/lib/personify \
    PERSONIFY_LOG_FORMAT=json
RUN groupadd --system --gid 10001 personify \
    && useradd --system --uid 10001 --gid personify --no-create-home \
        --home-dir /var/lib/personify --shell /usr/sbin/nologin personify \
    && mkdir -p /var/lib/personify/secrets \
    && chown -R personify:personify /var/lib/personify
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "personify[redis,postgres,kafka]"
USER personify:personify
WORKDIR /var/lib/personify
VOLUME ["/var/lib/personify"]
EXPOSE 8000
# liveness only: readiness (/readyz) is for load balancers, and a container is not
# restarted because PostgreSQL is down. A worker container has no HTTP server: compose
# disables this check for it
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PERSONIFY_PORT', '8000') + '/healthz', timeout=2)"]
ENTRYPOINT ["personify"]
CMD ["serve"]
