#!/usr/bin/env bash
# bench/agent-rss.sh — memory and CPU of one real kensa-agent (issue 3's target: idle RSS
# < 15 MB; see BENCHMARKS.md).
#
# Builds release binaries, starts a kensa-backend (SQLite in a temporary state dir) and one
# `kensa-agent start` (subscription `rss`, cache dir, local API, socket and StatsD listeners on
# free 127.0.0.1 ports — the agent as a user runs it), then runs `kensa-loadgen agent-rss`:
# it waits for the agent's keepalive, samples the agent's RSS and CPU for IDLE seconds, creates
# CHECKS checks with INTERVAL and COMMAND for subscription `rss` (50 × 1 s = 50 executions per
# second) whose results go to a tcp handler counted by the load generator, waits RAMP seconds,
# samples again for LOAD seconds, and deletes the checks. Result: bench/results/agent-rss.json.
# Every process and file this script creates is removed on exit, including on failure or
# Ctrl-C.
#
# Knobs (environment): CHECKS=50, INTERVAL=1, COMMAND=true, IDLE=20, RAMP=5, LOAD=30,
# RESULTS_TAG (appended to the file name), SKIP_BUILD=1, CARGO_TARGET_DIR (default
# <repo>/target).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$ROOT/bench/results
CHECKS=${CHECKS:-50}
INTERVAL=${INTERVAL:-1}
COMMAND=${COMMAND:-true}
IDLE=${IDLE:-20}
RAMP=${RAMP:-5}
LOAD=${LOAD:-30}
RESULTS_TAG=${RESULTS_TAG:-}
ADMIN_USER=admin
ADMIN_PASSWORD='P@ssw0rd!'
AGENT_NAME=kensa-bench-rss-agent

BACKEND_PID=""
AGENT_PID=""
STATE_DIR=""

cleanup() {
    stop_pid "$AGENT_PID" agent
    AGENT_PID=""
    stop_pid "$BACKEND_PID" backend
    BACKEND_PID=""
    if [[ -n "$STATE_DIR" ]]; then
        rm -rf "$STATE_DIR"
        STATE_DIR=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "building release binaries into $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p kensa-backend -p kensa-loadgen -p kensa-agent)
fi
mkdir -p "$RESULTS"

STATE_DIR=$(mktemp -d -t kensa-bench-agent-rss.XXXXXX)
api_port=$(free_port)
agent_port=$(free_port "$api_port")
local_api_port=$(free_port "$api_port" "$agent_port")
socket_port=$(free_port "$api_port" "$agent_port" "$local_api_port")
statsd_port=$(free_port "$api_port" "$agent_port" "$local_api_port" "$socket_port")

log "starting kensa-backend (api :$api_port, agents :$agent_port; log: $STATE_DIR/backend.log)"
"$TARGET_DIR/release/kensa-backend" start \
    --state-dir "$STATE_DIR/backend" \
    --api-listen-address "127.0.0.1:$api_port" \
    --agent-host 127.0.0.1 --agent-port "$agent_port" \
    --dashboard-host 127.0.0.1 --dashboard-port 0 \
    --cluster-admin-username "$ADMIN_USER" \
    --cluster-admin-password "$ADMIN_PASSWORD" \
    --log-level warn >"$STATE_DIR/backend.log" 2>&1 &
BACKEND_PID=$!

log "starting kensa-agent $AGENT_NAME (log: $STATE_DIR/agent.log)"
mkdir -p "$STATE_DIR/agent-cache"
KENSA_AGENT_PASSWORD="$ADMIN_PASSWORD" "$TARGET_DIR/release/kensa-agent" start \
    --name "$AGENT_NAME" \
    --backend-url "ws://127.0.0.1:$agent_port" \
    --subscriptions rss \
    --user agent \
    --cache-dir "$STATE_DIR/agent-cache" \
    --api-host 127.0.0.1 --api-port "$local_api_port" \
    --socket-host 127.0.0.1 --socket-port "$socket_port" \
    --statsd-metrics-host 127.0.0.1 --statsd-metrics-port "$statsd_port" \
    --retry-min 200ms --retry-max 2s \
    --log-level warn >"$STATE_DIR/agent.log" 2>&1 &
AGENT_PID=$!

out="$RESULTS/agent-rss$RESULTS_TAG.json"
status=0
KENSA_LOADGEN_PASSWORD="$ADMIN_PASSWORD" "$TARGET_DIR/release/kensa-loadgen" agent-rss \
    --url "http://127.0.0.1:$api_port" \
    --username "$ADMIN_USER" \
    --agent-pid "$AGENT_PID" --agent-name "$AGENT_NAME" \
    --subscription rss \
    --checks "$CHECKS" --interval "$INTERVAL" --command "$COMMAND" \
    --idle-secs "$IDLE" --ramp-secs "$RAMP" --load-secs "$LOAD" \
    --label sqlite \
    --out "$out.tmp" >/dev/null || status=$?
for pid_what in "$BACKEND_PID:backend" "$AGENT_PID:agent"; do
    if ! kill -0 "${pid_what%%:*}" 2>/dev/null; then
        log "the ${pid_what#*:} exited during the run"
        [[ $status -ne 0 ]] || status=1
    fi
done
if [[ $status -ne 0 ]]; then
    log "failed (status $status); last backend log lines:"
    tail -n 20 "$STATE_DIR/backend.log" >&2 || true
    log "last agent log lines:"
    tail -n 20 "$STATE_DIR/agent.log" >&2 || true
    rm -f "$out.tmp"
    exit "$status"
fi
mv "$out.tmp" "$out"
log "wrote ${out#"$ROOT"/}"
