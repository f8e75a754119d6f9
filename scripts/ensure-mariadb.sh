#!/usr/bin/env bash
# Installs MariaDB's server from Debian's packages when no server binary is present.
# Used by `make run` / `make test` when DATABASE_URL is not set. Needs root (or sudo).
set -euo pipefail
if command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || [ -x /usr/sbin/mysqld ]; then
  exit 0
fi
echo "mailjobs: no MariaDB server binary found; installing mariadb-server from Debian's packages" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends mariadb-server mariadb-client
# Debian's package may start its own service; mailjobs does not need it (it runs a private one).
