#!/usr/bin/env bash
# Refreshes the lock files (`make lock`): every runtime and development dependency pinned with its
# hashes, resolved from the ranges in requirements.txt and requirements-dev.txt. `make run`,
# `make test` and the deployment install from the locks (pip --require-hashes), so a fresh machine
# next month runs the versions the suite passed with. pip-tools lives in its own venv
# (.venv-lock/) so it never changes the project's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv-lock/bin/pip-compile ] || { "$PY" -m venv .venv-lock && .venv-lock/bin/pip install -q pip-tools; }
for name in requirements requirements-dev; do
  .venv-lock/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links ${LOCK_ARGS:-} -o "$name.lock" "$name.txt"
done
echo "mailjobs: requirements.lock and requirements-dev.lock refreshed (LOCK_ARGS=--upgrade to move to newer releases)"
