#!/usr/bin/env bash
# bench/scale.sh — one backend on the embedded SQLite store under a fleet of simulated agents
# (issue 6's first milestone: 10,000 agents and 5,000 events/s for 10 minutes, ingest p99 <
# 250 ms, backend RSS ≤ 2 GiB and not trending upward, 10,000 agents connecting at once with
# 0 errors). See BENCHMARKS.md, "Scale-out".
#
# Builds release binaries, raises the open-file limit, starts a kensa-backend on 127.0.0.1
# (SQLite in a temporary state dir), creates the scale workload (bench/scale-lib.sh:
# CHECK_GROUPS checks every CHECK_INTERVAL s on subscription groups, a `keepalive` tcp handler
# to the load generator's alert listener), then runs `kensa-loadgen agents`: AGENTS agents connect
# CONNECT_CONCURRENCY at a time (default: all at once — the mass-connect measure), answer every
# check request for DURATION seconds, and the backend's RSS and CPU are sampled every 5 s.
# Agents connect from addresses spread over 127.0.0.0/8 (more than ~28k connections fit).
# Result: bench/results/scale-single<RESULTS_TAG>.json. Every process and directory this script
# creates is removed on exit, also on failure or Ctrl-C.
#
# Knobs (environment), besides those of bench/scale-lib.sh (AGENTS=10000, CHECK_GROUPS=20,
# CHECK_INTERVAL=2, DURATION=600, WARMUP=30, DRAIN=20, STATUS_MIX=0:1, CONNECT_CONCURRENCY,
# CONNECT_TIMEOUT=300, PRIME_AUTH, KEEPALIVE_INTERVAL=20, KEEPALIVE_WARNING_TIMEOUT=120,
# RESULTS_TAG, BUILD_NOTE, BACKEND_BIN, LOADGEN_BIN): PERF_OUT (a file: record the backend with
# perf for PERF_SECONDS (60) from the start of the measurement and write `perf report` there;
# PERF_CALL_GRAPH=fp), LOG_DIR (keep the backend's and the load generator's logs there),
# SKIP_BUILD=1, CARGO_TARGET_DIR (default <repo>/target).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/scale-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/scale-lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$ROOT/bench/results
PERF_SECONDS=${PERF_SECONDS:-60}
LOG_DIR=${LOG_DIR:-}

BACKEND_PID=""
LOADGEN_PID=""
PERF_PID=""
STATE_DIR=""

cleanup() {
    stop_pid "$PERF_PID" perf
    PERF_PID=""
    stop_pid "$LOADGEN_PID" kensa-loadgen
    LOADGEN_PID=""
    stop_pid "$BACKEND_PID" backend
    BACKEND_PID=""
    if [[ -n "$STATE_DIR" ]]; then
        if [[ -n "$LOG_DIR" ]]; then
            mkdir -p "$LOG_DIR"
            cp "$STATE_DIR"/*.log "$LOG_DIR"/ 2>/dev/null || true
        fi
        rm -rf "$STATE_DIR"
        STATE_DIR=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "building release binaries into $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p kensa-backend -p kensa-loadgen)
fi
mkdir -p "$RESULTS"
raise_fd_limit "$AGENTS"

STATE_DIR=$(mktemp -d -t kensa-bench-scale.XXXXXX)
api_port=$(free_port)
agent_port=$(free_port "$api_port")
alert_port=$(free_port "$api_port" "$agent_port")
api_url="http://127.0.0.1:$api_port"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average before starting: $load_before"

log "starting kensa-backend (api :$api_port, agents :$agent_port; log: $STATE_DIR/backend.log)"
"${BACKEND_BIN:-$TARGET_DIR/release/kensa-backend}" start \
    --state-dir "$STATE_DIR" \
    --api-listen-address "127.0.0.1:$api_port" \
    --agent-host 127.0.0.1 --agent-port "$agent_port" \
    --dashboard-host 127.0.0.1 --dashboard-port 0 \
    --cluster-admin-username "$ADMIN_USER" \
    --cluster-admin-password "$ADMIN_PASSWORD" \
    --log-level warn >"$STATE_DIR/backend.log" 2>&1 &
BACKEND_PID=$!
if ! wait_healthy "$api_url" "$BACKEND_PID"; then
    log "the backend did not become healthy; last log lines:"
    tail -n 30 "$STATE_DIR/backend.log" >&2 || true
    exit 1
fi
configure_scale "$api_url" "$alert_port"

out="$RESULTS/scale-single$RESULTS_TAG.json"
log "$AGENTS agents, $CHECK_GROUPS checks every $CHECK_INTERVAL s, ${DURATION} s (loadgen log: $STATE_DIR/loadgen.log)"
run_scale_loadgen "$out.tmp" "$STATE_DIR/loadgen.log" \
    --agent-url "ws://127.0.0.1:$agent_port" \
    --alert-sink-listen "127.0.0.1:$alert_port" \
    --api-url "$api_url" \
    --backend-pid "$BACKEND_PID" \
    --label "single backend, sqlite" &
LOADGEN_PID=$!
if [[ -n "$PERF_OUT" ]]; then
    if wait_for_measure "$STATE_DIR/loadgen.log" "$LOADGEN_PID"; then
        log "recording the backend with perf for $PERF_SECONDS s"
        start_perf "$BACKEND_PID" "$PERF_SECONDS" "$STATE_DIR/perf.data"
    fi
fi
status=0
wait "$LOADGEN_PID" || status=$?
LOADGEN_PID=""
if ! kill -0 "$BACKEND_PID" 2>/dev/null; then
    log "the backend exited during the run; last log lines:"
    tail -n 30 "$STATE_DIR/backend.log" >&2 || true
    [[ $status -ne 0 ]] || status=1
fi
if [[ $status -ne 0 ]]; then
    log "the load generator failed (status $status):"
    tail -n 20 "$STATE_DIR/loadgen.log" >&2 || true
    rm -f "$out.tmp"
    exit "$status"
fi
mv "$out.tmp" "$out"
finish_report "$out" "$load_before" single
log_summary "$STATE_DIR/backend.log" backend
if [[ -n "$PERF_PID" ]]; then
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
    report_perf "$STATE_DIR/perf.data" "$PERF_OUT"
    mv "$STATE_DIR/perf.data" "$PERF_OUT.data" 2>/dev/null || true
    log "perf report in $PERF_OUT"
fi
log "wrote ${out#"$ROOT"/}"
