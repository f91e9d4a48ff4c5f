#!/usr/bin/env bash
# Run an example flow on the embedded default (no Redis or Postgres needed).
#   bash scripts/demo.sh                      # flows/examples/hello.yaml
#   bash scripts/demo.sh flows/examples/diamond.yaml --input x=3
source "$(dirname "$0")/bootstrap.sh"
bootstrap requirements.txt
flow="${1:-flows/examples/hello.yaml}"
shift || true
exec .venv/bin/python manage.py run-flow "$flow" "$@"
