#!/usr/bin/env bash
# A private PostgreSQL server on 127.0.0.1 for a shared Optuna study (--study-storage).
#
#   scripts/postgres.sh start DIR [PORT] [DB]   initdb DIR/data (first time), start the
#                                               server on 127.0.0.1:PORT, create DB, and
#                                               print its SQLAlchemy URL (last stdout line)
#   scripts/postgres.sh stop DIR                stop that server by pid (SIGINT = fast
#                                               shutdown, then SIGKILL after 30 s)
#   scripts/postgres.sh url DIR                 print the URL again
#   scripts/postgres.sh status DIR              exit 0 if the server is running
#
# Debian's `postgresql` package is installed with apt-get when no server binaries are
# found (needs root; `apt-get update` is run only if the first install attempt fails).
# PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user
# (created by the package) and DIR must be reachable by that user (e.g. under /tmp).
# Defaults: PORT a free port, DB "seltune", user "seltune" with a random password kept
# in DIR/password (mode 600). Files: DIR/data (cluster), DIR/server.log, DIR/sock
# (unix socket dir), DIR/pid (postmaster pid), DIR/url. Nothing here touches the
# system's own PostgreSQL clusters (no pg_ctlcluster, no service start).
set -euo pipefail

die() { echo "postgres.sh: $*" >&2; exit 1; }

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

pg_bindir() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x "$d/initdb" && -x "$d/postgres" ]] && { echo "$d"; return 0; }
    done
    return 1
}

ensure_installed() {
    pg_bindir >/dev/null && return 0
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed and installing it needs root: apt-get install postgresql"
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and apt-get is not available"
    echo "postgres.sh: installing Debian's postgresql with apt-get" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2; then
        DEBIAN_FRONTEND=noninteractive apt-get update >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql >&2
    fi
    pg_bindir >/dev/null || die "apt-get install postgresql finished but no server binaries were found"
}

# Run a command as the server's user: `postgres` when we are root, else ourselves.
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {
    local p i
    for i in $(seq 1 200); do
        p=$(( 20000 + RANDOM % 30000 ))
        port_free "$p" && { echo "$p"; return 0; }
    done
    die "no free TCP port found on 127.0.0.1"
}

running_pid() {  # print the postmaster pid if DIR's server is running
    local dir=$1 pid
    [[ -f "$dir/pid" ]] || return 1
    pid=$(cat "$dir/pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # The pid must still be our postmaster (pids are recycled): check its data dir.
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "-D $dir/data" || return 1
    echo "$pid"
}

cmd_start() {
    local dir=${1:?DIR missing} port=${2:-} db=${3:-seltune}
    [[ "$db" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "DB=$db: expected letters, digits, _"
    ensure_installed
    local bin; bin=$(pg_bindir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if pid=$(running_pid "$dir"); then
        echo "postgres.sh: already running (pid $pid)" >&2
        cat "$dir/url"
        return 0
    fi
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$dir"
        runuser -u postgres -- test -w "$dir" \
            || die "$dir: not writable by user postgres; use a directory under /tmp (its parents must be searchable by postgres)"
    fi
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        ( umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/password" )
        [[ $(id -u) -eq 0 ]] && chown postgres: "$dir/password"
        as_pg "$bin/initdb" -D "$dir/data" -U seltune --pwfile="$dir/password" \
            -A scram-sha-256 -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 \
            || die "initdb failed; see $dir/initdb.log"
    fi
    [[ -n "$port" ]] || port=$(pick_port)
    port_free "$port" || die "port $port on 127.0.0.1 is in use"
    as_pg mkdir -p "$dir/sock"
    # -h 127.0.0.1: TCP on loopback only; -k: the unix socket in our dir, not /run.
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $port -k $dir/sock" start >&2 \
        || die "server did not start; see $dir/server.log"
    head -1 "$dir/data/postmaster.pid" > "$dir/pid"
    local pw; pw=$(cat "$dir/password")
    if ! PGPASSWORD="$pw" "$bin/psql" -h 127.0.0.1 -p "$port" -U seltune -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
        PGPASSWORD="$pw" "$bin/createdb" -h 127.0.0.1 -p "$port" -U seltune "$db" \
            || die "createdb $db failed"
    fi
    echo "postgresql+psycopg2://seltune:$pw@127.0.0.1:$port/$db" > "$dir/url"
    chmod 600 "$dir/url"
    cat "$dir/url"
}

cmd_stop() {
    local dir=${1:?DIR missing} pid i
    dir=$(cd "$dir" && pwd)
    if ! pid=$(running_pid "$dir"); then
        echo "postgres.sh: not running" >&2
        return 0
    fi
    kill -INT "$pid"  # "fast" shutdown: roll back open transactions, exit cleanly
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { echo "postgres.sh: stopped (pid $pid)" >&2; return 0; }
        sleep 0.1
    done
    echo "postgres.sh: pid $pid ignored SIGINT for 30 s; sending SIGKILL" >&2
    # Its backends are its children: list them before they are orphaned, kill all.
    local children; children=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
    kill -KILL "$pid" $children 2>/dev/null || true
}

cmd_url() {
    local dir=${1:?DIR missing}
    [[ -f "$dir/url" ]] || die "$dir/url: no such file (run: postgres.sh start $dir)"
    cat "$dir/url"
}

cmd_status() {
    local dir=${1:?DIR missing} pid
    dir=$(cd "$dir" 2>/dev/null && pwd) || die "$1: no such directory"
    if pid=$(running_pid "$dir"); then echo "running (pid $pid)"; else echo "stopped"; return 1; fi
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    url) shift; cmd_url "$@" ;;
    status) shift; cmd_status "$@" ;;
    *) usage ;;
esac
