#!/usr/bin/env bash
# A local MariaDB Galera cluster of three nodes on 127.0.0.1 (for tests and for trying
# mailjobs on one): start | stop | status | kill N | destroy. Data under var/galera/.
# `start` prints DATABASE_URL=mysql://... with the three hosts. Needs mariadb-server and galera-4
# (installed from Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/lib/galera/libgalera_smm.so ] || ! command -v rsync >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends galera-4 rsync mariadb-server
fi
scripts/setup.sh run >/dev/null
exec .venv/bin/python -m mailjobs.db.local_galera "$@"
