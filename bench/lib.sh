# bench/lib.sh — what the benchmark scripts share: logging, stopping processes, temporary
# PostgreSQL databases, free ports. Sourced by bench/*.sh; not run on its own.

# Messages go to stderr, prefixed with the script's name.
log() { printf '%s: %s\n' "bench/$(basename "$0")" "$*" >&2; }

# Stops process `$1` (named `$2` in messages): SIGTERM, then SIGKILL after 10 s.
stop_pid() {
    local pid=$1 what=$2
    [[ -n "$pid" ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$what $pid ignored SIGTERM for 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

# Drops the database named in $PG_DATABASE (on the server $PG_URL), if any.
drop_database() {
    [[ -n "${PG_DATABASE:-}" ]] || return 0
    psql "$PG_URL/postgres" -v ON_ERROR_STOP=1 -qc "DROP DATABASE IF EXISTS \"$PG_DATABASE\" WITH (FORCE)" >/dev/null ||
        log "could not drop database $PG_DATABASE; drop it by hand"
    PG_DATABASE=""
}

# Waits (up to 60 s) until the backend at URL `$1` answers /health; fails early when process
# `$2` exits.
wait_healthy() {
    local url=$1 pid=$2
    for _ in $(seq 1 300); do
        curl -fsS "$url/health" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nothing listens on now (different from the ones given as arguments), below the
# kernel's ephemeral range: a backend's tcp handler opens one connection per event, and the
# tens of thousands of them left in TIME_WAIT would make a port from that range fail to bind.
# UDP ports are not probed.
free_port() {
    local port low
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    for _ in $(seq 1 100); do
        port=$((10000 + RANDOM % (low - 10000)))
        if ! port_in_use "$port" && [[ " $* " != *" $port "* ]]; then
            echo "$port"
            return 0
        fi
    done
    log "no free port found"
    return 1
}
