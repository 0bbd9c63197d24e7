#!/usr/bin/env bash
# Retouch on several machines, played on one (README, "Running on several machines"):
# a PostgreSQL database of its own, an S3 API server (moto), 2 `retouch-worker` processes
# and 2 `retouch-mcp --no-worker --transport http` front ends, all on one config file. An
# edit is made through the first front end, run by a worker, and its result read through
# the second; then everything is stopped and the database dropped.
#
#   docs/fleet-example.sh            # needs PostgreSQL, and retouch installed with [s3]
#
# Environment: RETOUCH_PG_ADMIN (a superuser's URL; default postgres@127.0.0.1:5432),
# PYTHON (default: the python beside retouch-mcp), KEEP=1 to keep the folder of logs.
# tests/test_fleet_example.py runs this script, so the README's commands cannot rot.
set -euo pipefail

ADMIN=${RETOUCH_PG_ADMIN:-postgresql://postgres@127.0.0.1:5432/postgres}
BIN=$(dirname "$(command -v retouch-mcp)")
PYTHON=${PYTHON:-$BIN/python}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/retouch-fleet-XXXXXX")
DB="retouch_fleet_$(date +%s)_$$"
TOKEN="fleet-example-token-$RANDOM$RANDOM"
PIDS=()

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

stop() {
  status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql "$ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  if [ "$status" -ne 0 ]; then
    for log in "$WORK"/*.log; do echo "--- $log"; tail -n 20 "$log"; done >&2
  fi
  if [ "${KEEP:-}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
  exit "$status"
}
trap stop EXIT INT TERM

wait_for() {  # wait_for WHAT COMMAND...: up to 60 s for COMMAND to succeed
  what=$1; shift
  for _ in $(seq 600); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$what did not start" >&2
  return 1
}

# 1. The database: one PostgreSQL database (Retouch makes its tables at the first start).
psql "$ADMIN" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $DB"
BASE=${ADMIN%%\?*}                      # the admin URL with our database in it
DB_URL="${BASE%/*}/$DB${ADMIN#"$BASE"}"
echo "PostgreSQL: database $DB"

# 2. The images: an S3-compatible bucket (here moto's server; MinIO, AWS S3, R2… alike).
S3_PORT=$(free_port)
"$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/s3.log" 2>&1 &
PIDS+=($!)
wait_for "the S3 server" curl -fs "http://127.0.0.1:$S3_PORT/"
curl -fs -X PUT "http://127.0.0.1:$S3_PORT/retouch-images" >/dev/null
echo "S3: bucket retouch-images at http://127.0.0.1:$S3_PORT"

# 3. One config file for every process: the same store, the same vendors, the same secrets.
cat >"$WORK/config.toml" <<EOF
log_level = "WARNING"

[store]
url = "$DB_URL"
blobs = "s3://retouch-images/example"
s3_endpoint_url = "http://127.0.0.1:$S3_PORT"
s3_region = "us-east-1"
s3_access_key_id = "example-key-id"
s3_secret_access_key = "example-secret"
s3_addressing_style = "path"
path = "$WORK/data/retouch.db"          # unused with url; the data folder holds nothing shared

[mcp]
transport = "http"
auth_token = "$TOKEN"
stateless = true                        # any front end answers any request
url_secret = "example-only-make-your-own-32-characters-or-more"

[vendors.local]
kind = "local"
esrgan = "off"
EOF

# 4. Two workers: they claim the queued tasks, run them and store the results.
for i in 1 2; do
  retouch-worker --config "$WORK/config.toml" 2>"$WORK/worker-$i.log" &
  PIDS+=($!)
done

# 5. Two front ends: they answer MCP clients and queue tasks; they run none.
PORTS=()
for i in 1 2; do
  port=$(free_port)
  PORTS+=("$port")
  retouch-mcp --config "$WORK/config.toml" --no-worker --transport http --port "$port" \
    2>"$WORK/front-$i.log" &
  PIDS+=($!)
done

# All four start at once; each is ready when it says so (workers) or answers (front ends).
for i in 1 2; do wait_for "worker $i" grep -q '^retouch-worker ' "$WORK/worker-$i.log"; done
echo "workers: $(grep -h '^retouch-worker ' "$WORK"/worker-*.log | cut -d: -f1-3 | tr '\n' ' ')"
for i in 0 1; do
  wait_for "front end $((i + 1))" curl -fs "http://127.0.0.1:${PORTS[$i]}/health"
done
echo "front ends: http://127.0.0.1:${PORTS[0]}/mcp http://127.0.0.1:${PORTS[1]}/mcp"

# 6. An edit through the first front end, its result read through the second.
"$PYTHON" "$HERE/fleet_client.py" \
  "http://127.0.0.1:${PORTS[0]}/mcp" "http://127.0.0.1:${PORTS[1]}/mcp" "$TOKEN"
echo "done: stopping"
