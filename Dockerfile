# syntax=docker/dockerfile:1
# Distillery image: one image for the API, the worker and the migration job.
#
# CPU (default):
#   docker build -t distillery .
# GPU hosts (CUDA 12.8 wheels of torch):
#   docker build -t distillery --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .

FROM python:3.11-slim AS build

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from its own index, so `pip install .` finds it already satisfied.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY app/ app/
COPY worker/ worker/
COPY migrations/ migrations/
RUN pip install --no-cache-dir .


FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DISTILLERY_DATA_DIR=/data

RUN groupadd --system --gid 1000 distillery \
    && useradd --system --uid 1000 --gid distillery --home-dir /srv --shell /usr/sbin/nologin distillery \
    && mkdir -p /data /srv \
    && chown distillery:distillery /data /srv

COPY --from=build /opt/venv /opt/venv

WORKDIR /srv
# `distillery migrate` runs alembic from the working directory.
COPY --chown=distillery:distillery alembic.ini ./
COPY --chown=distillery:distillery migrations/ migrations/

USER distillery
VOLUME /data
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["distillery", "api", "--host", "0.0.0.0", "--port", "8000"]
