#!/bin/sh
# First-run initialisation, mirroring the official postgres image's contract
# (POSTGRES_USER/_PASSWORD_FILE/_DB/_INITDB_ARGS, /docker-entrypoint-initdb.d)
# so that one compose service definition drives both image lanes.
set -eu
# As upstream: `docker run IMAGE -c x=y` means `postgres -c x=y`.
case "${1:-}" in -*) set -- postgres "$@" ;; esac
: "${PGDATA:=/var/lib/postgresql/data}" "${POSTGRES_USER:=postgres}"
export PGDATA
psql_() { psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username="$POSTGRES_USER" "$@"; }

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    # Never create a cluster whose superuser password nobody knows.
    pw=${POSTGRES_PASSWORD_FILE:-}
    if [ -z "$pw" ] || [ ! -r "$pw" ] || [ ! -s "$pw" ]; then
        echo "docker-entrypoint: $PGDATA is not initialised and POSTGRES_PASSWORD_FILE" \
             "('$pw') is unset, unreadable or empty: refusing to start" >&2
        exit 1
    fi
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a word list, as upstream
    initdb --username="$POSTGRES_USER" --pwfile="$pw" --auth-local=trust \
        --auth-host=scram-sha-256 --data-checksums ${POSTGRES_INITDB_ARGS:-}
    # Clients come over the compose network, not just loopback (upstream does the same).
    printf '\nhost all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"

    # Socket-only temporary server: nothing can reach it over TCP until init is done.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    db=${POSTGRES_DB:-$POSTGRES_USER}   # upstream's default
    # Via stdin, because psql does not expand :"db" (safe quoting) inside -c.
    [ "$db" = postgres ] || echo 'CREATE DATABASE :"db";' | psql_ --dbname=postgres --set db="$db"
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) echo "docker-entrypoint: running $f"   # sourced unless executable, as upstream
                  # shellcheck disable=SC1090
                  if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql) echo "docker-entrypoint: running $f"; psql_ --dbname="$db" -f "$f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop
    echo "docker-entrypoint: initialisation complete"
fi
exec "$@"
