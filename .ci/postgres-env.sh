# shellcheck shell=bash
# Source me: gives this shell a private PostgreSQL server for the tests of
# the shared vault (`latchkeyd --vault postgres://…`).
#
#   source .ci/postgres-env.sh || echo "no PostgreSQL"
#
# - Installs Debian's postgresql with apt-get when no server is found (as
#   root), then makes a cluster in a temp dir (/tmp/latchkey-pg-<uid>.XXXX),
#   listening on 127.0.0.1 only, on a free port, with TLS on (a throwaway CA
#   and a server certificate for localhost / 127.0.0.1, made by openssl) and
#   password (SCRAM) authentication for a role `latchkey` that may create
#   databases. As root the server runs as the `postgres` user (initdb
#   refuses root).
# - Exports LATCHKEY_TEST_POSTGRES (postgres://latchkey@127.0.0.1:PORT/postgres,
#   no password in it), LATCHKEY_TEST_POSTGRES_PASSWORD_FILE (the role's
#   password, 0600), LATCHKEY_TEST_POSTGRES_CA (the CA's certificate) and
#   LATCHKEY_TEST_POSTGRES_CTL (a script: `$LATCHKEY_TEST_POSTGRES_CTL
#   stop|start|restart`, for the tests that restart the database).
# - Prints one line saying what it did; on failure prints one line to stderr
#   and returns 1 (it never exits the calling shell). Works under set -euo
#   pipefail, with no TTY.
# - latchkey_postgres_env_stop stops the server and removes its directory.

_latchkey_pg_bindir() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && { printf '%s\n' "$dir"; return 0; }
  done
  return 1
}

_latchkey_pg_env_start() {
  local bindir
  if ! bindir=$(_latchkey_pg_bindir); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql openssl >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql openssl >/dev/null 2>&1; } \
        || { echo "postgres-env: could not install postgresql with apt-get" >&2; return 1; }
    fi
    bindir=$(_latchkey_pg_bindir) || { echo "postgres-env: no PostgreSQL server (initdb) found; install postgresql" >&2; return 1; }
  fi
  command -v openssl >/dev/null 2>&1 || { echo "postgres-env: openssl is needed for the server's test certificate" >&2; return 1; }

  local run_as=()
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { echo "postgres-env: running as root needs the postgres user (from Debian's postgresql package)" >&2; return 1; }
    run_as=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi

  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/latchkey-pg-$(id -u).XXXXXX") || return 1
  chmod 0755 "$dir"
  mkdir -p "$dir/data" "$dir/sock" "$dir/tls"
  local password
  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  printf '%s\n' "$password" >"$dir/password"
  chmod 0600 "$dir/password"
  # The superuser's own password for initdb (never used over the network).
  printf '%s\n' "$password" >"$dir/initpw"

  # A throwaway CA and a server certificate for localhost and 127.0.0.1.
  (
    cd "$dir/tls" &&
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=latchkey test CA" -keyout ca.key -out ca.crt \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign >/dev/null 2>&1 &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout server.key -out server.csr >/dev/null 2>&1 &&
      printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >ext.cnf &&
      openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out server.crt >/dev/null 2>&1
  ) || { echo "postgres-env: could not make the test certificates" >&2; rm -rf "$dir"; return 1; }
  chmod 0600 "$dir/tls/server.key"

  if [ "$(id -u)" = 0 ]; then
    chown -R postgres:postgres "$dir/data" "$dir/sock" "$dir/tls" "$dir/initpw"
  fi
  if ! "${run_as[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --pwfile="$dir/initpw" \
    --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >"$dir/initdb.log" 2>&1; then
    echo "postgres-env: initdb failed (see $dir/initdb.log)" >&2
    return 1
  fi
  rm -f "$dir/initpw"

  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
ssl = on
ssl_cert_file = '$dir/tls/server.crt'
ssl_key_file = '$dir/tls/server.key'
max_connections = 200
fsync = on
EOF
  # Only 127.0.0.1 with a password; the superuser over the private socket.
  cat >"$dir/data/pg_hba.conf" <<EOF
local all postgres trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
  cat >"$dir/ctl" <<EOF
#!/usr/bin/env bash
# stop | start | restart the tests' PostgreSQL server.
set -euo pipefail
case "\${1:-}" in
  stop) ${run_as[*]} "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null ;;
  start) ${run_as[*]} "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ;;
  restart) ${run_as[*]} "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart >/dev/null ;;
  *) echo "usage: \$0 stop|start|restart" >&2; exit 2 ;;
esac
EOF
  chmod 0755 "$dir/ctl"
  if [ "$(id -u)" = 0 ]; then
    touch "$dir/server.log" && chown postgres:postgres "$dir/server.log" "$dir"
  fi
  if ! "$dir/ctl" start; then
    echo "postgres-env: the server did not start (see $dir/server.log)" >&2
    return 1
  fi
  if ! "${run_as[@]}" "$bindir/psql" -h "$dir/sock" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
    -c "CREATE ROLE latchkey LOGIN CREATEDB PASSWORD '$password'" >/dev/null 2>&1; then
    echo "postgres-env: could not create the test role" >&2
    "$dir/ctl" stop || true
    return 1
  fi
  export LATCHKEY_TEST_POSTGRES="postgres://latchkey@127.0.0.1:$port/postgres"
  export LATCHKEY_TEST_POSTGRES_PASSWORD_FILE="$dir/password"
  export LATCHKEY_TEST_POSTGRES_CA="$dir/tls/ca.crt"
  export LATCHKEY_TEST_POSTGRES_CTL="$dir/ctl"
  _LATCHKEY_PG_DIR=$dir
  echo "postgres-env: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (TLS on), data in $dir" >&2
}

latchkey_postgres_env_stop() {
  [ -n "${_LATCHKEY_PG_DIR:-}" ] || return 0
  "$_LATCHKEY_PG_DIR/ctl" stop >/dev/null 2>&1 || true
  rm -rf "$_LATCHKEY_PG_DIR"
  _LATCHKEY_PG_DIR=
}

_latchkey_pg_env_start
