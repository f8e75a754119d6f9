#!/usr/bin/env bash
# Prepares a machine for mailjobs: Python venv with the requirements, and (unless a database
# URL is given) a MariaDB server binary for the project-local database. Idempotent and quick
# when nothing changed. Usage: scripts/setup.sh [run|test]
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

stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] \
   || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi

if [ "$mode" = "test" ]; then
  [ -n "${TEST_DATABASE_URL:-}" ] || scripts/ensure-mariadb.sh
else
  [ -n "${DATABASE_URL:-}" ] || scripts/ensure-mariadb.sh
fi
