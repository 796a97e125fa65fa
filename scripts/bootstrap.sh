#!/usr/bin/env bash
# Prepare a checkout: a .venv with the package (and dev tools), and a redis-server binary:
# what `make run` needs. With --test (`make test`), also what only the tests use: Chromium
# for the dashboard's browser tests, and the OpenAPI linters (npm). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  "") for_tests=0 ;;
  --test) for_tests=1 ;;
  *) echo "usage: scripts/bootstrap.sh [--test]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
  command -v apt-get >/dev/null || return 1
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: Python 3.11 or newer is needed as '$PYTHON' (set PYTHON=...)" >&2; exit 1
fi

if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python${pyver}-venv" || { echo "bootstrap: '$PYTHON -m venv' failed; install python3-venv" >&2; exit 1; }
    "$PYTHON" -m venv .venv
  fi
fi
# The pinned versions (requirements/dev.lock, made by `make lock`), then the package itself.
stamp=.venv/.installed-$(cat pyproject.toml requirements/dev.lock | cksum | cut -d' ' -f1)
if [ ! -f "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -r requirements/dev.lock
  .venv/bin/pip install --quiet --no-deps -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi

if ! command -v redis-server >/dev/null; then
  echo "bootstrap: redis-server is missing; installing it with apt-get" >&2
  apt_install redis-server || { echo "bootstrap: could not install redis-server; install Redis 7 and put redis-server on PATH" >&2; exit 1; }
  # Debian starts a system Redis on 6379 on install; this project runs its own.
fi

[ "$for_tests" = 1 ] || exit 0

# The dashboard's tests drive Debian's Chromium (Playwright cannot download its own browsers here).
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "bootstrap: chromium is missing (for the dashboard's browser tests); installing it with apt-get" >&2
  apt_install chromium || { echo "bootstrap: could not install chromium; install it or set CHROMIUM=<path>" >&2; exit 1; }
fi

# The OpenAPI linters the tests run (Redocly CLI, Spectral), pinned in tools/openapi-lint.
if ! command -v npm >/dev/null; then
  echo "bootstrap: npm is missing; installing nodejs and npm with apt-get" >&2
  apt_install nodejs npm || { echo "bootstrap: could not install npm; install Node.js 20+ with npm" >&2; exit 1; }
fi
lint=tools/openapi-lint
lint_stamp=$lint/node_modules/.installed-$(cksum < $lint/package-lock.json | cut -d' ' -f1)
if [ ! -f "$lint_stamp" ]; then
  npm ci --prefix "$lint" --silent --no-audit --no-fund
  touch "$lint_stamp"
fi
