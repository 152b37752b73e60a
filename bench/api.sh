#!/usr/bin/env bash
# bench/api.sh — the REST API benchmark (see BENCHMARKS.md).
#
# Builds release binaries, then for each store (SQLite in a temporary state dir, PostgreSQL in
# a fresh database) starts a kensa-backend on 127.0.0.1, runs `kensa-loadgen api` against it
# (seed 40,000 entities + 40,000 events, page the event list with limit=500, random single
# GETs, one streamed full listing, backend RSS and CPU sampled throughout), stops the backend and
# writes bench/results/api-<store>.json. All traffic stays on 127.0.0.1; every process and
# database this script creates is removed on exit, including on failure or Ctrl-C.
#
# Knobs (environment): STORES="sqlite postgres", ENTITIES=40000, EVENTS=40000,
# SEED_CONCURRENCY=16, GETS=5000, GET_CONCURRENCY=8, PORT (default: a free one),
# PG_URL=postgres://postgres@127.0.0.1:5432 (server with trust auth), RUN_TIMEOUT=3600
# (seconds per store), RESULTS_TAG (appended to the file name, e.g. "-10k" for a scaling run),
# SKIP_BUILD=1, CARGO_TARGET_DIR (default <repo>/target).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$ROOT/bench/results
STORES=${STORES:-sqlite postgres}
ENTITIES=${ENTITIES:-40000}
EVENTS=${EVENTS:-40000}
SEED_CONCURRENCY=${SEED_CONCURRENCY:-16}
GETS=${GETS:-5000}
GET_CONCURRENCY=${GET_CONCURRENCY:-8}
PORT=${PORT:-}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
RUN_TIMEOUT=${RUN_TIMEOUT:-3600}
RESULTS_TAG=${RESULTS_TAG:-}
ADMIN_USER=admin
ADMIN_PASSWORD='P@ssw0rd!'

BACKEND_PID=""
STATE_DIR=""
PG_DATABASE=""

cleanup() {
    stop_pid "$BACKEND_PID" backend
    BACKEND_PID=""
    drop_database
    if [[ -n "$STATE_DIR" ]]; then
        rm -rf "$STATE_DIR"
        STATE_DIR=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One store: start a backend, measure, stop it, clean up.
run_store() {
    local store=$1
    local store_args=()
    STATE_DIR=$(mktemp -d -t kensa-bench-api.XXXXXX)
    case "$store" in
        sqlite) ;;
        postgres)
            PG_DATABASE="kensa_bench_api_$$"
            psql "$PG_URL/postgres" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$PG_DATABASE\"" >/dev/null
            store_args=(--store-url "$PG_URL/$PG_DATABASE")
            ;;
        *)
            log "unknown store $store (sqlite or postgres)"
            return 2
            ;;
    esac
    local port=$PORT
    if [[ -z "$port" ]]; then
        port=$(free_port)
    fi
    if port_in_use "$port"; then
        log "127.0.0.1:$port is already in use; set PORT"
        return 1
    fi

    log "$store: starting kensa-backend on 127.0.0.1:$port (log: $STATE_DIR/backend.log)"
    "$TARGET_DIR/release/kensa-backend" start \
        --state-dir "$STATE_DIR" \
        --api-listen-address "127.0.0.1:$port" \
        --agent-host 127.0.0.1 --agent-port 0 \
        --dashboard-host 127.0.0.1 --dashboard-port 0 \
        --cluster-admin-username "$ADMIN_USER" \
        --cluster-admin-password "$ADMIN_PASSWORD" \
        --log-level warn \
        "${store_args[@]}" >"$STATE_DIR/backend.log" 2>&1 &
    BACKEND_PID=$!

    local out="$RESULTS/api-$store$RESULTS_TAG.json"
    local status=0
    KENSA_LOADGEN_PASSWORD="$ADMIN_PASSWORD" timeout --signal=TERM "$RUN_TIMEOUT" \
        "$TARGET_DIR/release/kensa-loadgen" api \
        --url "http://127.0.0.1:$port" \
        --username "$ADMIN_USER" \
        --backend-pid "$BACKEND_PID" \
        --label "$store" \
        --entities "$ENTITIES" --events "$EVENTS" \
        --seed-concurrency "$SEED_CONCURRENCY" \
        --gets "$GETS" --get-concurrency "$GET_CONCURRENCY" \
        --out "$out.tmp" >/dev/null || status=$?
    if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
        log "$store: the backend exited during the run"
        [[ $status -ne 0 ]] || status=1
    fi
    if [[ $status -ne 0 ]]; then
        log "$store: failed (status $status); last backend log lines:"
        tail -n 30 "$STATE_DIR/backend.log" >&2 || true
        rm -f "$out.tmp"
        return "$status"
    fi
    mv "$out.tmp" "$out"
    log "$store: wrote ${out#"$ROOT"/}"
    cleanup
}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "building release binaries into $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p kensa-backend -p kensa-loadgen)
fi
mkdir -p "$RESULTS"
for store in $STORES; do
    run_store "$store"
done
log "done: $(cd "$RESULTS" && ls api-*.json | tr '\n' ' ')"
