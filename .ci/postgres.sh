#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suite's PostgreSQL leg.
#   eval "$(.ci/postgres.sh start)"   initdb into a temp folder, start on 127.0.0.1 and a free port,
#                                     print the export lines (NSCMONITOR_TEST_PG_URL, PGDATA_CI)
#   .ci/postgres.sh stop [PGDATA]     stop it and remove the folder (PGDATA defaults to $PGDATA_CI)
# The server runs as an unprivileged account: the `postgres` system user when started as root
# (PostgreSQL refuses to run as root), else the calling user. Durability is switched off
# (fsync, full_page_writes): the data is thrown away at the end and per-test databases are cheap.
# The server's time zone is deliberately far from UTC (UTC+14), so a time stored or read in the
# session's zone instead of UTC shows up as a failing test.
set -euo pipefail

PGBIN="${PGBIN:-}"
if [ -z "$PGBIN" ]; then
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && PGBIN="$d"; done
  [ -z "$PGBIN" ] && PGBIN="$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"
fi
[ -x "$PGBIN/initdb" ] || { echo "postgres.sh: initdb not found (install PostgreSQL or set PGBIN)" >&2; exit 1; }

# The account the server runs as when started by root: postgres, else nobody (PG_CI_USER overrides).
if [ -z "${PG_CI_USER:-}" ]; then
  if id -u postgres >/dev/null 2>&1; then PG_CI_USER=postgres; else PG_CI_USER=nobody; fi
fi

as_server() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$PG_CI_USER" -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local dir port pw
  dir="$(mktemp -d "${TMPDIR:-/tmp}/nsc-pg.XXXXXX")"
  pw="$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
  if [ "$(id -u)" = 0 ]; then chown "$PG_CI_USER" "$dir"; fi
  as_server sh -c "umask 077; printf '%s\n' '$pw' > '$dir/pw'"
  as_server "$PGBIN/initdb" -D "$dir/data" -U nscadmin --pwfile="$dir/pw" --auth=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
  port="$(free_port)"
  as_server "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off \
     -c full_page_writes=off -c synchronous_commit=off -c max_connections=200 -c TimeZone=Pacific/Kiritimati" >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  echo "export PGDATA_CI='$dir'"
  echo "export NSCMONITOR_TEST_PG_URL='postgresql+psycopg://nscadmin:$pw@127.0.0.1:$port/postgres'"
}

stop() {
  local dir="${1:-${PGDATA_CI:-}}"
  [ -n "$dir" ] && [ -d "$dir" ] || return 0
  as_server "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start|stop [PGDATA]" >&2; exit 2 ;;
esac
