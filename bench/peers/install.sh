#!/usr/bin/env bash
# Installs the peers the `mirrorlog-bench peers` comparison measures against:
# PostgreSQL 15 and Redis 7 from Debian bookworm. Safe to run again: apt-get
# install of an installed package is a no-op.
#
# The Debian packages start system services (a "main" PostgreSQL cluster on
# port 5432, redis-server on port 6379) where an init system is running. The
# benchmark does not use them: it starts its own servers on free 127.0.0.1
# ports with their own data directories, and stops them by PID when it ends.
# This script leaves any system service alone (neither stops nor disables it).
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y postgresql-15 redis-server

PG_BIN=/usr/lib/postgresql/15/bin
for b in initdb postgres pg_basebackup; do
    if [ ! -x "$PG_BIN/$b" ]; then
        echo "error: $PG_BIN/$b is missing after installing postgresql-15" >&2
        exit 1
    fi
done
if ! id postgres >/dev/null 2>&1; then
    # The benchmark runs PostgreSQL as this user when it is started as root
    # (PostgreSQL refuses to run as root). The Debian package creates it.
    echo "error: the postgres system user does not exist" >&2
    exit 1
fi

echo
echo "installed:"
echo "  $("$PG_BIN/postgres" --version)"
echo "  $(redis-server --version)"
echo
echo "note: the packages may start system services (PostgreSQL on 5432,"
echo "redis-server on 6379). This script leaves them alone and the benchmark"
echo "does not use them: it starts its own servers on free 127.0.0.1 ports."
if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters || true
fi
# Report (never stop) system servers that are running now. In containers
# without an init system the packages' policy usually prevents the start.
running=$(ps -eo pid=,user=,args= | grep -E '[r]edis-server|[p]ostgres -D|[b]in/postgres' || true)
if [ -n "$running" ]; then
    echo "system servers running (left alone):"
    echo "$running"
else
    echo "no system PostgreSQL or Redis server is running."
fi
