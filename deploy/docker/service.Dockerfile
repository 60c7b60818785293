# syntax=docker/dockerfile:1
# One image per Python service, built from the pex that `./pants package` writes into dist/:
# ingest, orchestrator, worker, registry, or migrate (the migration runner, pm-migrate.pex).
#
#   ./pants package services:: libs/pm_db:migrate
#   docker build -f deploy/docker/service.Dockerfile --build-arg SERVICE=ingest \
#     -t production-master-ingest:<tag> dist/
#
# The pex becomes a virtualenv at /opt/pm, so the container starts without unpacking anything
# and runs with a read-only root filesystem as an unprivileged user. No HEALTHCHECK: Kubernetes
# probes the gRPC health service instead.

# The interpreter the pex was built for (pants.toml: CPython 3.11) on the glibc it was built
# against (Debian bookworm); both stages must use the same image, the venv links to its python.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS venv
# pants.toml's [pex-cli] version: the pex-tools that read the pex Pants built.
ARG PEX_VERSION=2.1.137
ARG SERVICE
RUN test -n "${SERVICE}" || { echo "--build-arg SERVICE=<ingest|orchestrator|worker|registry|migrate> is required" >&2; exit 1; }
RUN pip install --no-cache-dir "pex==${PEX_VERSION}"
COPY pm-${SERVICE}.pex /tmp/app.pex
RUN pex-tools /tmp/app.pex venv --compile /opt/pm

FROM ${PYTHON_IMAGE}
ARG SERVICE
LABEL org.opencontainers.image.title="production-master-${SERVICE}" \
      org.opencontainers.image.description="Production Master ${SERVICE}"
RUN groupadd --system --gid 10001 pm \
    && useradd --system --uid 10001 --gid pm --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin pm
COPY --from=venv /opt/pm /opt/pm
ENV PATH=/opt/pm/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
# The pex's entry point (pm_<service>.__main__:main, or pm_db.migrate:main). The worker image
# also runs the evaluation front end: PEX_MODULE=pm_worker.evaluate.
ENTRYPOINT ["/opt/pm/pex"]
