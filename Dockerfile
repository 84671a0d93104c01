# One image for the API, the migration job and the GPU workers.
# Build args let users pick the torch build: the default is CUDA 12.8 wheels for GPU workers;
# use TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU-only image.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DSKD_DATA_DIR=/data \
    HF_HOME=/data/hf-cache

RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# torch first, from the chosen index, so the project's own requirement (torch>=2.4) is already satisfied.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
COPY pyproject.toml README.md alembic.ini ./
COPY dskd_core ./dskd_core
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
# Editable: api/cli_support finds migrations/ and alembic.ini next to the source (dskd keys create migrates).
RUN pip install -e ".[dev]"

RUN useradd --create-home --uid 1000 dskd && mkdir -p /data && chown dskd /data
USER dskd
EXPOSE 8000
CMD ["uvicorn", "api.main:create_app", "--factory", "--host", "0.0.0.0", "--port", "8000"]
