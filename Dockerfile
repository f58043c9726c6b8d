# syntax=docker/dockerfile:1
# EventIndex service image, production mode by default (authentication on /v1, JSON logs).
# The test suite builds and runs it with podman (tests/test_image.py: health, non-root user,
# JSON logs, anonymous /v1 requests refused) on a base image it makes with debootstrap, passed
# as BASE; tests/test_deploy_files.py checks that what this file names exists in the project.
#   docker build -t eventindex .                        (on python:3.11-slim)
#   docker build --build-arg BASE=IMAGE -t eventindex .  (any base with python >= 3.11 as `python`)
ARG BASE=python:3.11-slim

# --- build: install the project and its pinned dependencies into a virtualenv ---------------
FROM ${BASE} AS build
WORKDIR /src
RUN python -m venv /opt/eventindex
ENV PATH=/opt/eventindex/bin:$PATH
# The pinned dependencies first, in a layer of their own: a change to the code alone reuses it.
COPY pyproject.toml constraints.txt ./
RUN pip install --no-cache-dir --upgrade pip \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; e = p['optional-dependencies']; print('\n'.join(p['dependencies'] + e['server'] + e['generate']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt
COPY README.md ./
COPY eventindex ./eventindex
COPY migrations ./migrations
# The service (the server extra), with the generator's numpy: the compose file's demo-data
# service runs 'eventindex generate'.
RUN pip install --no-cache-dir -c constraints.txt '.[server,generate]'

# --- runtime: the virtualenv only, as an unprivileged user -------------------------------
FROM ${BASE}
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin eventindex
COPY --from=build /opt/eventindex /opt/eventindex
ENV PATH=/opt/eventindex/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EVENTINDEX_MODE=production \
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
