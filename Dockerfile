# syntax=docker/dockerfile:1
# microbatch-consumer: `docker build -t microbatch-consumer .`, then `docker run microbatch-consumer` (= `consumer run`)
# or any subcommand: `docker run --rm microbatch-consumer check`. Settings are environment variables (README).
# Runs as uid 10001 with a read-only root filesystem: it writes only to /tmp and /var/lib/consumer (a volume).

# --- build: wheels of the dependencies (their own layer), then the service's own wheel -----------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml ./
# The dependency list comes from pyproject.toml alone, so this layer is rebuilt only when it changes.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip wheel --wheel-dir /wheels/deps --requirement requirements.txt
COPY README.md ./
COPY consumer ./consumer
RUN pip wheel --no-deps --wheel-dir /wheels/app .

# --- runtime: slim Python, the wheels installed into /opt/venv, no build tools -------------------------------
FROM python:3.11-slim-bookworm AS runtime
ARG VERSION=0.1.0
ARG SOURCE=""
ARG LICENSE=LicenseRef-Proprietary
LABEL org.opencontainers.image.title="microbatch-consumer" \
      org.opencontainers.image.description="Kafka micro-batches into a SQL table, idempotent, offsets committed only after the sink." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="${LICENSE}"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH HOME=/tmp TMPDIR=/tmp \
    METRICS_PORT=9400

RUN groupadd --system --gid 10001 consumer \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin consumer \
    && python -m venv /opt/venv \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/consumer

# The wheels are bind-mounted from the build stage, not copied: no layer keeps them after the install.
RUN --mount=type=bind,from=build,source=/wheels/deps,target=/wheels/deps \
    /opt/venv/bin/pip install --no-index --find-links /wheels/deps /wheels/deps/*.whl
RUN --mount=type=bind,from=build,source=/wheels/app,target=/wheels/app \
    /opt/venv/bin/pip install --no-index --no-deps /wheels/app/*.whl

# The default SINK_URL (sqlite:///./data/sink.db) and `demo` write under the working directory: a volume.
WORKDIR /var/lib/consumer
VOLUME ["/var/lib/consumer"]
USER 10001:10001
EXPOSE 9400

# /healthz answers 200 while the poll loop is alive; urlopen raises (exit 1) on 503 or no answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('METRICS_PORT', '9400'), timeout=4)"]

# Exec form: `consumer` is PID 1 and receives SIGTERM itself (graceful stop within SHUTDOWN_TIMEOUT_MS).
ENTRYPOINT ["consumer"]
CMD ["run"]
