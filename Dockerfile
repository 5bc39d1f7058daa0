# syntax=docker/dockerfile:1
# callbridge's image (the one the Helm chart and deploy/compose run):
#   docker build -t callbridge:0.1.0 .
# Builds a wheel and a virtualenv in one stage and copies only the virtualenv into a slim
# runtime that runs as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/callbridge
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so that a source change reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
 && /opt/callbridge/bin/pip install -r requirements.txt
COPY README.md ./
COPY core core
COPY plugins plugins
RUN /opt/callbridge/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/callbridge/bin/pip install --no-deps /wheels/*.whl \
 && /opt/callbridge/bin/callbridge --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="callbridge" \
      org.opencontainers.image.description="Bridges phone-provider media WebSockets into rooms" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/callbridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 callbridge \
 && useradd --system --uid 10001 --gid callbridge --no-create-home \
      --home-dir /var/lib/callbridge --shell /usr/sbin/nologin callbridge \
 && install -d -o callbridge -g callbridge -m 0750 /var/lib/callbridge
COPY --from=build /opt/callbridge /opt/callbridge
# Defaults for `docker run`: every interface, state in /var/lib/callbridge. Mount your own
# file over it (the chart and the compose file do).
COPY deploy/docker/config.yaml /etc/callbridge/config.yaml
USER 10001:10001
WORKDIR /var/lib/callbridge
EXPOSE 8000
# SIGTERM drains: readiness turns false, running calls may go on for cluster.drain_seconds.
# Give the container that long plus ~25 s before it is killed (docker stop -t, compose's
# stop_grace_period, Kubernetes' terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["callbridge"]
CMD ["serve", "--config", "/etc/callbridge/config.yaml"]
