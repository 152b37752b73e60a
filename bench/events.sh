#!/usr/bin/env bash
# bench/events.sh — event throughput of one backend (issue 3's target: ≥ 10,000 events/s with
# the embedded store; see BENCHMARKS.md).
#
# Builds release binaries, then for each store (SQLite in a temporary state dir, PostgreSQL in
# a fresh database when the server answers) starts a kensa-backend on 127.0.0.1, creates
# through the REST API an EventFilter `allow-all` (allow, `event.check.status >= 0`) and a
# Handler `sink` using it (HANDLER_TYPE: `udp` — one datagram per event, the nearest to a no-op
# handler that still proves every delivery — or `tcp`, one loopback connection per event),
# then runs `kensa-loadgen agents`: AGENTS simulated agents on the agent protocol, each
# sending results of CHECKS checks (handlers: [sink]) as fast as their acknowledgements allow
# (at most WINDOW unacknowledged each), while the load generator's built-in sink counts the
# handler's deliveries. Every event therefore goes agent → eventd (history, state) → store →
# acknowledgement → pipeline → JavaScript filter → handler.
# Results: bench/results/events-<store>.json (events acked/s and handled/s, ack latency, the
# backend's CPU and RSS per phase). All traffic stays on 127.0.0.1; every process and database
# this script creates is removed on exit, including on failure or Ctrl-C.
#
# Knobs (environment): STORES="sqlite postgres" (postgres is skipped when PG_URL does not
# answer), AGENTS=50, CHECKS=20, RATE=0 (total events/s; 0 = as fast as acks allow),
# WINDOW=200, HANDLER_TYPE=udp, DURATION=30, WARMUP=5, DRAIN=20, STATUS_MIX="0:90,1:5,2:5",
# PG_URL=postgres://postgres@127.0.0.1:5432 (server with trust auth), RESULTS_TAG (appended to
# the file name), PERF_OUT (a file: record the backend with `perf record -g` during the
# measurement and write `perf report` there; the recording is kept as <PERF_OUT>.<store>.data),
# PERF_CALL_GRAPH (perf's --call-graph mode, default fp; release builds have no frame pointers,
# so `dwarf` gives the real call chains at a higher recording cost), BACKEND_LD_PRELOAD (e.g.
# /usr/lib/x86_64-linux-gnu/libjemalloc.so.2, to compare allocators without rebuilding; use a
# RESULTS_TAG with it), BACKEND_BIN / LOADGEN_BIN (other binaries than the release builds, to
# compare two builds), SKIP_BUILD=1, CARGO_TARGET_DIR (default <repo>/target).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$ROOT/bench/results
STORES=${STORES:-sqlite postgres}
AGENTS=${AGENTS:-50}
CHECKS=${CHECKS:-20}
RATE=${RATE:-0}
WINDOW=${WINDOW:-200}
HANDLER_TYPE=${HANDLER_TYPE:-udp}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-5}
DRAIN=${DRAIN:-20}
STATUS_MIX=${STATUS_MIX:-0:90,1:5,2:5}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
RESULTS_TAG=${RESULTS_TAG:-}
PERF_OUT=${PERF_OUT:-}
PERF_CALL_GRAPH=${PERF_CALL_GRAPH:-fp}
BACKEND_LD_PRELOAD=${BACKEND_LD_PRELOAD:-}
ADMIN_USER=admin
ADMIN_PASSWORD='P@ssw0rd!'

BACKEND_PID=""
PERF_PID=""
STATE_DIR=""
PG_DATABASE=""

cleanup() {
    stop_pid "$PERF_PID" perf
    PERF_PID=""
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


# PUT a resource as admin: api_put <api url> <token> <path> <json>
api_put() {
    local url=$1 token=$2 path=$3 body=$4 status
    status=$(curl -sS -o "$STATE_DIR/put.out" -w '%{http_code}' -X PUT \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data "$body" "$url$path")
    if [[ "$status" != 2* ]]; then
        log "PUT $path: $status $(cat "$STATE_DIR/put.out")"
        return 1
    fi
}

# One store: start a backend, configure the pipeline, measure, stop it, clean up.
run_store() {
    local store=$1
    local store_args=()
    STATE_DIR=$(mktemp -d -t kensa-bench-events.XXXXXX)
    case "$store" in
        sqlite) ;;
        postgres)
            if ! psql "$PG_URL/postgres" -qAtc 'SELECT 1' >/dev/null 2>&1; then
                log "postgres: $PG_URL does not answer; skipped"
                cleanup
                return 0
            fi
            PG_DATABASE="kensa_bench_events_$$"
            psql "$PG_URL/postgres" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$PG_DATABASE\"" >/dev/null
            store_args=(--store-url "$PG_URL/$PG_DATABASE")
            ;;
        *)
            log "unknown store $store (sqlite or postgres)"
            return 2
            ;;
    esac
    local api_port agent_port sink_port
    api_port=$(free_port)
    agent_port=$(free_port "$api_port")
    sink_port=$(free_port "$api_port" "$agent_port")
    local api_url="http://127.0.0.1:$api_port"

    log "$store: starting kensa-backend (api :$api_port, agents :$agent_port; log: $STATE_DIR/backend.log)"
    env ${BACKEND_LD_PRELOAD:+LD_PRELOAD="$BACKEND_LD_PRELOAD"} \
        "${BACKEND_BIN:-$TARGET_DIR/release/kensa-backend}" start \
        --state-dir "$STATE_DIR" \
        --api-listen-address "127.0.0.1:$api_port" \
        --agent-host 127.0.0.1 --agent-port "$agent_port" \
        --dashboard-host 127.0.0.1 --dashboard-port 0 \
        --cluster-admin-username "$ADMIN_USER" \
        --cluster-admin-password "$ADMIN_PASSWORD" \
        --log-level warn \
        "${store_args[@]}" >"$STATE_DIR/backend.log" 2>&1 &
    BACKEND_PID=$!
    if ! wait_healthy "$api_url" "$BACKEND_PID"; then
        log "$store: the backend did not become healthy; last log lines:"
        tail -n 30 "$STATE_DIR/backend.log" >&2 || true
        return 1
    fi

    local token
    token=$(curl -fsS -u "$ADMIN_USER:$ADMIN_PASSWORD" "$api_url/auth" |
        sed 's/.*"access_token":"\([^"]*\)".*/\1/')
    api_put "$api_url" "$token" /api/core/v2/namespaces/default/filters/allow-all \
        '{"metadata":{"name":"allow-all","namespace":"default"},"action":"allow","expressions":["event.check.status >= 0"]}'
    api_put "$api_url" "$token" /api/core/v2/namespaces/default/handlers/sink \
        "{\"metadata\":{\"name\":\"sink\",\"namespace\":\"default\"},\"type\":\"$HANDLER_TYPE\",\"socket\":{\"host\":\"127.0.0.1\",\"port\":$sink_port},\"filters\":[\"allow-all\"]}"

    if [[ -n "$PERF_OUT" ]]; then
        # Start recording when the measurement starts (after connect and warm-up).
        (
            sleep $((WARMUP + 3))
            exec perf record --call-graph "$PERF_CALL_GRAPH" -F 499 -p "$BACKEND_PID" \
                -o "$STATE_DIR/perf.data" -- sleep $((DURATION - WARMUP))
        ) >"$STATE_DIR/perf.log" 2>&1 &
        PERF_PID=$!
    fi

    local out="$RESULTS/events-$store$RESULTS_TAG.json"
    local status=0
    KENSA_LOADGEN_AGENT_PASSWORD="$ADMIN_PASSWORD" "${LOADGEN_BIN:-$TARGET_DIR/release/kensa-loadgen}" agents \
        --agent-url "ws://127.0.0.1:$agent_port" \
        --agents "$AGENTS" --checks "$CHECKS" \
        --rate "$RATE" --window "$WINDOW" \
        --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" \
        --status-mix "$STATUS_MIX" \
        --handlers sink --sink-listen "127.0.0.1:$sink_port" \
        --backend-pid "$BACKEND_PID" \
        --label "$store, $HANDLER_TYPE handler${BACKEND_LD_PRELOAD:+ (LD_PRELOAD=$BACKEND_LD_PRELOAD)}" \
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
    log "$store: wrote ${out#"$ROOT"/}: $(sed -n 's/^    "\(acked_per_s\|handled_per_s\)": \(.*\),$/\1=\2/p' "$out" | tr '\n' ' ')"
    if [[ -n "$PERF_PID" ]]; then
        wait "$PERF_PID" 2>/dev/null || true
        PERF_PID=""
        perf report -i "$STATE_DIR/perf.data" --stdio --no-children --percent-limit 0.5 \
            --sort dso,symbol >"$PERF_OUT.$store" 2>/dev/null ||
            log "$store: perf report failed (see $STATE_DIR/perf.log)"
        [[ -s "$PERF_OUT.$store" ]] && log "$store: perf report in $PERF_OUT.$store"
        mv "$STATE_DIR/perf.data" "$PERF_OUT.$store.data" 2>/dev/null || true
    fi
    cleanup
}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "building release binaries into $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p kensa-backend -p kensa-loadgen -p kensa-agent)
fi
mkdir -p "$RESULTS"
for store in $STORES; do
    run_store "$store"
done
log "done"
