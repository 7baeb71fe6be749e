# Worker image for durable: `durable worker MODULE:ATTR` with the sample apps.
#
#   docker build -t durable .
#   docker run --rm -e DURABLE_REDIS_URL=redis://host.docker.internal:6379/0 -p 9464:9464 durable
#
# The ops server (metrics, health, API, dashboard) listens on 9464.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Fixed non-root uid/gid; the Helm chart runs the pod as 10001:10001.
RUN groupadd --system --gid 10001 durable \
    && useradd --system --uid 10001 --gid durable --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin durable

WORKDIR /app

# Install the package first so code-only changes to the sample apps reuse this layer.
# README.md* matches nothing harmlessly if the readme is absent.
COPY pyproject.toml README.md* ./
COPY durable ./durable
RUN pip install . \
    && rm -rf /app/build /app/*.egg-info

# Sample applications: orchestrations.patterns:worker (the default CMD) and entities:worker.
COPY orchestrations ./orchestrations
COPY entities ./entities
ENV PYTHONPATH=/app

USER 10001:10001

ENV DURABLE_OPS_PORT=9464
EXPOSE 9464

ENTRYPOINT ["durable"]
CMD ["worker", "orchestrations.patterns:worker"]
