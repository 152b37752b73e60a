#!/usr/bin/env bash
# bench/dashboard.sh — the dashboard benchmark (see BENCHMARKS.md).
#
# Builds a release kensa-backend, then for each store (SQLite in a temporary state dir,
# PostgreSQL in a fresh database) starts it on 127.0.0.1, runs bench/dashboard-driver.mjs
# (seed 40,000 events for 40,000 proxy entities through the REST API; time the overview and
# filtered event pages on the server (Server-Timing) and the first view in headless Chromium
# with an empty cache, with the bytes it downloads), stops the backend and writes
# bench/results/dashboard-<store>.json. Needs what the browser tests need
# (scripts/browser-setup.sh). Everything this script creates is removed on exit.
#
# Knobs (environment): STORES="sqlite" (add postgres to run both), EVENTS=40000,
# SEED_CONCURRENCY=16, REPEAT=30, BROWSER_RUNS=5, PG_URL=postgres://postgres@127.0.0.1:5432,
# RUN_TIMEOUT=3600, RESULTS_TAG, SKIP_BUILD=1, CARGO_TARGET_DIR (default <repo>/target),
# KENSA_CHROMIUM (default /usr/bin/chromium).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$ROOT/bench/results
STORES=${STORES:-sqlite}
EVENTS=${EVENTS:-40000}
SEED_CONCURRENCY=${SEED_CONCURRENCY:-16}
REPEAT=${REPEAT:-30}
BROWSER_RUNS=${BROWSER_RUNS:-5}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
RUN_TIMEOUT=${RUN_TIMEOUT:-3600}
RESULTS_TAG=${RESULTS_TAG:-}
CHROMIUM=${KENSA_CHROMIUM:-/usr/bin/chromium}
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

run_store() {
    local store=$1
    local store_args=()
    STATE_DIR=$(mktemp -d -t kensa-bench-dashboard.XXXXXX)
    case "$store" in
        sqlite) ;;
        postgres)
            PG_DATABASE="kensa_bench_dashboard_$$"
            psql "$PG_URL/postgres" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$PG_DATABASE\"" >/dev/null
            store_args=(--store-url "$PG_URL/$PG_DATABASE")
            ;;
        *)
            log "unknown store $store (sqlite or postgres)"
            return 2
            ;;
    esac
    local api_port agent_port dashboard_port
    api_port=$(free_port)
    agent_port=$(free_port)
    dashboard_port=$(free_port)

    log "$store: starting kensa-backend, dashboard on 127.0.0.1:$dashboard_port (log: $STATE_DIR/backend.log)"
    "$TARGET_DIR/release/kensa-backend" start \
        --state-dir "$STATE_DIR" \
        --api-listen-address "127.0.0.1:$api_port" \
        --agent-host 127.0.0.1 --agent-port "$agent_port" \
        --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
        --cluster-admin-username "$ADMIN_USER" \
        --cluster-admin-password "$ADMIN_PASSWORD" \
        --log-level warn \
        "${store_args[@]}" >"$STATE_DIR/backend.log" 2>&1 &
    BACKEND_PID=$!
    for _ in $(seq 1 100); do
        port_in_use "$dashboard_port" && break
        sleep 0.1
    done

    local out="$RESULTS/dashboard-$store$RESULTS_TAG.json"
    local status=0
    DASHBOARD_URL="http://127.0.0.1:$dashboard_port" \
        ADMIN_USERNAME="$ADMIN_USER" ADMIN_PASSWORD="$ADMIN_PASSWORD" \
        CHROMIUM="$CHROMIUM" EVENTS="$EVENTS" SEED_CONCURRENCY="$SEED_CONCURRENCY" \
        REPEAT="$REPEAT" BROWSER_RUNS="$BROWSER_RUNS" LABEL="$store" \
        BACKEND_PID="$BACKEND_PID" OUT="$out.tmp" \
        timeout --signal=TERM "$RUN_TIMEOUT" node "$ROOT/bench/dashboard-driver.mjs" >/dev/null || status=$?
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

[[ -x "$CHROMIUM" && -d "$ROOT/tests/browser/node_modules/playwright-core" ]] ||
    { log "run scripts/browser-setup.sh first ($CHROMIUM and tests/browser/node_modules are needed)"; exit 1; }
if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "building the release backend into $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p kensa-backend)
fi
mkdir -p "$RESULTS"
for store in $STORES; do
    run_store "$store"
done
log "done: $(cd "$RESULTS" && ls dashboard-*.json | tr '\n' ' ')"
