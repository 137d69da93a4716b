# One bot per container: `docker build -t botcorebot .`, then see "Container" in README.md.
# The base is a build argument so an image can be built from a locally made base
# (scripts/check-image builds one from Debian packages); any image with python3 >= 3.11 and
# its venv module works.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/botcorebot/bin:$PATH

# Only the packages and metadata: no tests, no .venv, no workspace, no secrets.
COPY pyproject.toml README.md /src/
COPY actors /src/actors
COPY adapters /src/adapters
COPY runtime /src/runtime
# psycopg[binary] is a wheel that brings its own libpq (and the libssl it uses), so the image
# needs no libpq package for PostgreSQL; importing psycopg proves libpq loads.
RUN python3 -m venv /opt/botcorebot \
 && /opt/botcorebot/bin/pip install --no-cache-dir /src \
 && /opt/botcorebot/bin/python -c "import psycopg; print('psycopg', psycopg.__version__, psycopg.pq.__impl__, 'libpq', psycopg.pq.version())" \
 && rm -rf /src \
 && groupadd --gid 10001 bot \
 && useradd --no-log-init --no-create-home --uid 10001 --gid bot --home-dir /bot --shell /usr/sbin/nologin bot \
 && mkdir -p /bot && chown bot:bot /bot

# The workspace (IDENTITY.md, SOUL.md, USER.md, engram.db, files) is the volume: mount the
# bot's folder here. Keys and tokens come from the environment at `docker run` time.
# DATABASE_URL=postgresql://USER@HOST:5432/DB (the password in PGPASSWORD, or in the URL)
# puts the bot's data on PostgreSQL instead of engram.db: what replicas of one bot share
# (examples/fleet/compose.yaml, docs/DEPLOY.md). The workspace volume still holds the
# identity files and the bot's own files.
ENV BOTCORE_WORKSPACE=/bot \
    HOME=/bot \
    HTTP_PORT=3000 \
    HTTP_HOST=0.0.0.0
# HTTP_HOST=0.0.0.0: inside a container the port is only reachable through a published port,
# and 127.0.0.1 would make it unreachable. Whoever can reach the published port can talk to
# the bot: set BOTCORE_API_TOKEN (the start-up log warns when it is missing), or publish the
# port on the host's loopback only (`-p 127.0.0.1:3000:3000`).
VOLUME ["/bot"]
WORKDIR /bot
USER bot
EXPOSE 3000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HTTP_PORT', '3000'), timeout=4)"]

# Exec form: botcorebot is PID 1 and receives SIGTERM itself, drains turns in flight for
# SHUTDOWN_GRACE_SECONDS and exits 0. Give `docker stop -t` a little more than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["botcorebot"]
CMD ["serve"]
