#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then lint and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

# An older python3 would build a .venv that fails later, on a syntax error far from the cause.
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "scripts/test.sh: $(python3 -V 2>&1) is too old: Python 3.11 or later is needed" >&2
  exit 1
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt

# The browser tests drive Debian's Chromium through Playwright; Playwright never downloads one.
if [ ! -x /usr/bin/chromium ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium >/dev/null
fi

.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
