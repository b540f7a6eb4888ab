#!/bin/sh
# The mongo image's entrypoint contract, for the stand-in: `mongod [flags]` (or flags alone),
# the scripts of /docker-entrypoint-initdb.d run once, at the first start of an empty /data/db,
# against a server listening on 127.0.0.1 only (so health checks through the container's own
# address fail until the seed is in), then the server for the network.
#
# Of mongod's flags it honours --replSet (without it the server is a standalone, which has no
# change streams, as a real mongod), --port and --bind_ip_all/--bind_ip; the replica set is
# always named "secantus", so clients connect with ?directConnection=true.
set -eu

DATA_DIR=/data/db
INIT_DIR=/docker-entrypoint-initdb.d
INITIALIZED="$DATA_DIR/.initdb-done"
# Bounded waits: the temporary server is up in about a second.
START_ATTEMPTS=60

case "${1:-mongod}" in
  -*) set -- mongod "$@" ;;
esac
if [ "${1:-mongod}" != mongod ]; then
  exec "$@"
fi
[ $# -gt 0 ] && shift

port=27017
bind=0.0.0.0
replica_set=""
while [ $# -gt 0 ]; do
  case "$1" in
    --replSet) replica_set=$2; shift 2 ;;
    --replSet=*) replica_set=${1#*=}; shift ;;
    --port) port=$2; shift 2 ;;
    --port=*) port=${1#*=}; shift ;;
    --bind_ip_all) bind=0.0.0.0; shift ;;
    --bind_ip) bind=$2; shift 2 ;;
    *) echo "stand-in mongod: ignoring $1" >&2; shift ;;
  esac
done

mode=--standalone
if [ -n "$replica_set" ]; then
  mode=""
  echo "stand-in mongod: replica set requested ($replica_set); serving as the one-node set 'secantus'" >&2
fi

# serve ADDRESS: the server in place of this shell (run it in a subshell for the background).
serve() {
  # shellcheck disable=SC2086 # $mode is empty or one flag
  exec /opt/secantus/bin/secantusd-py --host "$1" --port "$port" --storage-path "$DATA_DIR" $mode
}

if [ ! -e "$INITIALIZED" ] && [ -n "$(ls -A "$INIT_DIR" 2>/dev/null)" ]; then
  (serve 127.0.0.1) &
  server=$!
  attempt=0
  until mongosh --quiet --host 127.0.0.1 --port "$port" --eval 'db.runCommand({ping: 1})' >/dev/null 2>&1; do
    attempt=$((attempt + 1))
    if [ "$attempt" -ge "$START_ATTEMPTS" ]; then
      echo "stand-in mongod: the initdb server did not answer" >&2
      exit 1
    fi
    sleep 1
  done
  for script in "$INIT_DIR"/*; do
    case "$script" in
      *.sh) echo "running $script"; . "$script" ;;
      *.js) echo "running $script"
            mongosh --quiet --host 127.0.0.1 --port "$port" "${MONGO_INITDB_DATABASE:-test}" "$script" ;;
      *) echo "ignoring $script" ;;
    esac
  done
  kill -TERM "$server"
  wait "$server" || true
  touch "$INITIALIZED"
fi

serve "$bind"
