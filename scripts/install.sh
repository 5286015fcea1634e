#!/usr/bin/env bash
# The README's install command: the Python environment in .venv (the package, its extras
# and the dev tools), plus the two Debian packages the test suite drives: chromium (the web
# page test, through Playwright; its own browser download does not work offline) and
# docker-compose (validates deploy/docker-compose.yml). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v docker-compose >/dev/null || missing+=(docker-compose)
# a machine with NodeSource's nodejs already has npm (and Debian's npm conflicts with it)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing ${missing[*]} from Debian"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: install Debian's ${missing[*]} (as root: apt-get install -y ${missing[*]});" \
      "the browser tests fail without chromium and npm, and the compose check is skipped without docker-compose" >&2
  fi
fi

python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]' 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
# the storefront browser test's front end: InstantSearch + algoliasearch from the npm registry,
# pinned by tests/storefront/package-lock.json (node_modules is not committed)
if command -v npm >/dev/null; then
  (cd tests/storefront && npm ci --no-audit --no-fund --loglevel=error)
else
  echo "note: install Node.js and npm (apt-get install -y nodejs npm); the storefront test fails without them" >&2
fi
.venv/bin/python -c "import clipfuse, open_clip, qdrant_client"  # fail early if the install did not work
echo "installed: .venv/bin/clipfuse demo runs the demo, .venv/bin/python -m pytest the tests"
