#!/usr/bin/env bash
# Lint, then the whole test suite (pytest arguments pass through: bash scripts/test.sh -k e2e -x).
# The tests start their own redis-server on unix sockets; the machine's Redis is not touched.
source "$(dirname "$0")/bootstrap.sh"
bootstrap requirements-dev.txt
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest "$@"
