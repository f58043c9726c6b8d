# syntax=docker/dockerfile:1
# EventIndex service image. Not built in CI (no Docker engine there): tests/test_deploy_files.py
# checks that what this file names exists in the project.

# --- build: install the project and its pinned dependencies into a virtualenv ---------------
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/eventindex
ENV PATH=/opt/eventindex/bin:$PATH
COPY pyproject.toml constraints.txt README.md ./
COPY eventindex ./eventindex
COPY tools ./tools
COPY migrations ./migrations
RUN pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir -c constraints.txt .

# --- runtime: the virtualenv only, as an unprivileged user -------------------------------
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin eventindex
COPY --from=build /opt/eventindex /opt/eventindex
ENV PATH=/opt/eventindex/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EVENTINDEX_HOST=0.0.0.0 \
    EVENTINDEX_PORT=8000 \
    EVENTINDEX_LOG_FORMAT=json
USER eventindex
WORKDIR /tmp
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('EVENTINDEX_PORT', '8000') + '/health', timeout=2)"]
ENTRYPOINT ["eventindex"]
CMD ["serve"]
