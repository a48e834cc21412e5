#!/usr/bin/env bash
# A team's tracking server on this machine: PostgreSQL (Debian's postgresql package, initdb +
# pg_ctl on a loopback port, no system service) and `mlflow server` on it, serving artifacts
# from a local directory so clients upload through the server.
#
#   bash scripts/services.sh up       start both (idempotent), wait until they answer, print URIs
#   bash scripts/services.sh status   say what runs, exit 1 when something is down
#   bash scripts/services.sh down     stop both
#
# Then run stages and sweeps with tracking=server (conf/tracking/server.yaml), or point
# tracking.uri at a team's own server. Everything lives in $RKPIPE_SERVICES_DIR (default
# .services/ in the repo, ignored by git). Ports: RKPIPE_PG_PORT (default 54329) and
# RKPIPE_MLFLOW_PORT (default 5050). PostgreSQL refuses to run as root, so as root its commands
# run as the postgres user that the Debian package creates.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=${RKPIPE_SERVICES_DIR:-$ROOT/.services}
PG_PORT=${RKPIPE_PG_PORT:-54329}
MLFLOW_PORT=${RKPIPE_MLFLOW_PORT:-5050}
PYTHON=${RKPIPE_PYTHON:-$ROOT/.venv/bin/python}
PG_DATA=$DIR/postgres
PG_USER=rkpipe
DB=mlflow
ARTIFACTS=$DIR/mlflow-artifacts
MLFLOW_PID=$DIR/mlflow.pid
MLFLOW_URI=http://127.0.0.1:$MLFLOW_PORT
BACKEND_URI=postgresql+psycopg://$PG_USER@127.0.0.1:$PG_PORT/$DB

die() { echo "services: error: $*" >&2; exit 1; }

# Debian keeps the server programs (initdb, pg_ctl) out of PATH, in /usr/lib/postgresql/<v>/bin
pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$dir" ] && command -v initdb >/dev/null; then dir=$(dirname "$(command -v initdb)"); fi
  [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/psql" ] \
    || die "PostgreSQL is not installed: apt-get install -y postgresql (Debian's package; no system service is needed)"
  echo "$dir"
}

# run a PostgreSQL command as a user it accepts (not root)
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_busy() { "$PYTHON" - "$1" <<'EOF'
import socket, sys
with socket.socket() as s:
    sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

pg_running() { [ -d "$PG_DATA" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA" status >/dev/null 2>&1; }
mlflow_running() { [ -f "$MLFLOW_PID" ] && kill -0 "$(cat "$MLFLOW_PID")" 2>/dev/null; }
mlflow_healthy() { "$PYTHON" -c "import urllib.request as u; u.urlopen('$MLFLOW_URI/health', timeout=2)" 2>/dev/null; }

start_postgres() {
  local bin
  bin=$(pg_bin)
  if pg_running; then return; fi
  port_busy "$PG_PORT" && die "port $PG_PORT is in use by another program; set RKPIPE_PG_PORT to a free port"
  mkdir -p "$DIR"
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$DIR"; then
    die "the postgres user cannot reach $DIR (a parent directory is not world-executable); set RKPIPE_SERVICES_DIR to a directory it can reach"
  fi
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    mkdir -p "$PG_DATA"
    [ "$(id -u)" = 0 ] && chown postgres: "$PG_DATA"
    # trust on loopback only: the server listens on 127.0.0.1 and a socket in its data dir
    as_pg "$bin/initdb" -D "$PG_DATA" -U "$PG_USER" --auth=trust -E UTF8 >"$DIR/initdb.log" 2>&1 \
      || die "initdb failed; see $DIR/initdb.log"
  fi
  as_pg "$bin/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PG_DATA" start >/dev/null \
    || die "PostgreSQL did not start; see $PG_DATA/server.log"
  as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
    || as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$DB"
}

start_mlflow() {
  if mlflow_running && mlflow_healthy; then return; fi
  port_busy "$MLFLOW_PORT" && die "port $MLFLOW_PORT is in use by another program; set RKPIPE_MLFLOW_PORT to a free port"
  "$PYTHON" -c "import psycopg" 2>/dev/null \
    || die "the MLflow server needs psycopg: pip install -c requirements/constraints.txt -e '.[server]'"
  mkdir -p "$ARTIFACTS"
  # its own session: `down` stops the server and the workers it starts as one process group
  setsid nohup "$PYTHON" -m mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --backend-store-uri "$BACKEND_URI" --artifacts-destination "$ARTIFACTS" --serve-artifacts \
    --workers 2 >"$DIR/mlflow.log" 2>&1 &
  echo $! >"$MLFLOW_PID"
  for _ in $(seq 1 120); do
    mlflow_healthy && return
    kill -0 "$(cat "$MLFLOW_PID")" 2>/dev/null || die "mlflow server exited; see $DIR/mlflow.log"
    sleep 0.5
  done
  die "mlflow server did not answer on $MLFLOW_URI within 60 s; see $DIR/mlflow.log"
}

say_uris() {
  echo "services: PostgreSQL  $BACKEND_URI  (data $PG_DATA)"
  echo "services: MLflow      $MLFLOW_URI  (artifacts $ARTIFACTS)"
  echo "services: use it with tracking=server, or tracking.uri=$MLFLOW_URI"
}

case "${1:-}" in
  up)
    start_postgres
    start_mlflow
    say_uris
    ;;
  status)
    up=0
    if pg_running; then echo "services: PostgreSQL up on 127.0.0.1:$PG_PORT"; else echo "services: PostgreSQL down"; up=1; fi
    if mlflow_running && mlflow_healthy; then echo "services: MLflow up on $MLFLOW_URI"; else echo "services: MLflow down"; up=1; fi
    exit $up
    ;;
  down)
    if mlflow_running; then
      kill -- "-$(cat "$MLFLOW_PID")" 2>/dev/null || true
      for _ in $(seq 1 40); do mlflow_running || break; sleep 0.25; done
      mlflow_running && kill -9 -- "-$(cat "$MLFLOW_PID")" 2>/dev/null || true
    fi
    rm -f "$MLFLOW_PID"
    if pg_running; then as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null; fi
    echo "services: stopped"
    ;;
  *)
    echo "usage: bash scripts/services.sh up|status|down" >&2
    exit 2
    ;;
esac
