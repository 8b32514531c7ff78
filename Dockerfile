# The nexus-otel server image: `nexus-otel serve` (OTLP ingest, /metrics, API) and its CLI.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY nexus_otel ./nexus_otel
COPY exporter ./exporter
COPY migrations ./migrations
COPY prometheus/rules ./prometheus/rules
COPY alertmanager/templates ./alertmanager/templates
RUN pip install '.[server]' && rm -rf /src

# An unprivileged user. /config is where init jobs write generated files, as the user of the
# service that reads them (alertmanager-config runs as nobody): writable by all, sticky like /tmp.
RUN useradd --system --uid 10001 --home-dir /var/lib/nexus-otel --create-home nexus \
    && mkdir /config && chmod 1777 /config
USER nexus
WORKDIR /var/lib/nexus-otel

ENV NEXUS_HOST=0.0.0.0
EXPOSE 4318 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4318/health', timeout=2)"]
ENTRYPOINT ["nexus-otel"]
CMD ["serve"]
