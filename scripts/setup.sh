#!/usr/bin/env bash
# Prepares a machine for mailjobs: Python venv with the requirements, and (unless a database
# URL is given) a MariaDB server binary for the project-local database. Idempotent and quick
# when nothing changed. Usage: scripts/setup.sh [run|test]
#   run:  the runtime dependencies only (requirements.lock), what `make run` needs
#   test: the development set too (requirements-dev.lock: pytest, playwright, schemathesis, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "$@"
}

PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
  apt_install python3 python3-venv python3-pip
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PY" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install python3-venv
    "$PY" -m venv .venv
  fi
fi

# The locked versions with their hashes (`make lock` refreshes them from the ranges in
# requirements*.txt). One stamp per set: `make test` after `make run` adds the development set;
# `make run` after `make test` has nothing to add.
lock=requirements.lock
[ "$mode" = "test" ] && lock=requirements-dev.lock
stamp=".venv/.installed-$mode"
if [ ! -f "$stamp" ] || [ "$lock" -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r "$lock"
  # src/ is the package `mailjobs`, installed in place (editable): its dependencies came above
  # (setuptools' build warnings are noise here; shown only when the install fails)
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e . \
       >.venv/install.log 2>&1; then
    cat .venv/install.log >&2
    exit 1
  fi
  touch "$stamp"
fi

if [ "$mode" = "test" ]; then
  # mypy finds the package by a directory named mailjobs (it does not follow setuptools'
  # editable-install finder): a link to src/
  mkdir -p .venv/typecheck && ln -sfn ../../src .venv/typecheck/mailjobs
  [ -n "${TEST_DATABASE_URL:-}" ] || scripts/ensure-mariadb.sh
else
  [ -n "${DATABASE_URL:-}" ] || scripts/ensure-mariadb.sh
fi
