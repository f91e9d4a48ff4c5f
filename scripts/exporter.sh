#!/usr/bin/env bash
# Run danihodovic's celery-exporter beside the platform, in a virtualenv of its own.
#
# Its PyPI package (prometheus-exporter-celery) pins redis<6 and prometheus-client<0.22, so it
# cannot share .venv with Celery 5.7 and redis 8: it lives in .venv-exporter. In production use
# its container image (docker-compose.yml, service celery-exporter).
#
#   REDIS_URL=redis://127.0.0.1:6379/0 bash scripts/exporter.sh            # metrics on :9808
#   bash scripts/exporter.sh --install-only
#   REDIS_URL=... bash scripts/exporter.sh --port 9809 --host 127.0.0.1   # extra args pass through
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh  # for pick_python (it does not touch .venv here)

EXPORTER_VERSION=0.11.2
EXPORTER_STAMP=3  # bump when the install line changes
VENV=${EXPORTER_VENV:-.venv-exporter}
stamp="$VENV/.installed-$EXPORTER_VERSION-$EXPORTER_STAMP"
if [ ! -f "$stamp" ]; then
  py=$(pick_python)
  "$py" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # Celery/kombu 5.7 need redis>=6.1, the exporter pins redis<6: pin the 5.5 line here. kombu's
  # Redis transport also imports packaging, which nothing declares.
  "$VENV/bin/python" -m pip install --quiet "prometheus-exporter-celery==$EXPORTER_VERSION" \
    "celery==5.5.3" "kombu==5.5.4" "packaging==25.0"
  touch "$stamp"
fi
if [ "${1:-}" = "--install-only" ]; then
  exit 0
fi

# Our REDIS_URL as kombu reads it: unix:///path?db=N -> redis+socket:///path?virtual_host=N
broker=${CELERY_BROKER_URL:-${REDIS_URL:?set REDIS_URL (or CELERY_BROKER_URL)}}
case "$broker" in
  unix://*) broker="redis+socket://${broker#unix://}"; broker=${broker/db=/virtual_host=} ;;
esac
# The package installs its code as a top-level module named "src" (no console script).
exec "$VENV/bin/python" -c 'from src.cli import cli; cli()' --broker-url "$broker" \
  --port "${EXPORTER_PORT:-9808}" "$@"
