#!/usr/bin/env bash
# bench/round-robin.sh — sustained round-robin executions per second (issue 4's target:
# ≥ 2,000/s with the JetStream queue on this machine), dispatch latency from the scheduled
# tick to the request reaching an agent (target p99 < 1 s), and the queue's share of CPU.
#
# For each queue (in-process, and NATS JetStream on a nats-server this script starts on its
# own port and store directory) it starts a release kensa-backend (embedded SQLite store),
# creates CHECKS round-robin checks (`interval: 1`, subscription `rr`, canned command — the
# simulated agents never run it), then runs `kensa-loadgen agents --checks 0
# --answer-requests`: AGENTS simulated agents on the agent protocol answer every request at
# once with an OK result carrying its round. Every execution therefore goes scheduler →
# queue → pull loop → agent → eventd (round claim, store) → queue ack.
# Results: bench/results/round-robin-<queue>.json — the load generator's report (acked_per_s
# = executions stored per second, dispatch_latency_ms) plus the backend's round counters
# and the CPU seconds of the backend and of nats-server over the measurement.
# Every process and directory this script creates is removed on exit.
#
# Knobs: QUEUES="in-process nats", CHECKS=2000, AGENTS=50, DURATION=60, WARMUP=15, RESULTS_TAG
# (appended to the file name), BACKEND_BIN / LOADGEN_BIN (other binaries than the release builds),
# DRAIN=15, SKIP_BUILD=1, CARGO_TARGET_DIR (default <repo>/target), NATS_SERVER
# (default nats-server from PATH).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$ROOT/bench/results
QUEUES=${QUEUES:-in-process nats}
CHECKS=${CHECKS:-2000}
AGENTS=${AGENTS:-50}
DURATION=${DURATION:-60}
WARMUP=${WARMUP:-15}
DRAIN=${DRAIN:-15}
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
ADMIN_USER=admin
ADMIN_PASSWORD='P@ssw0rd!'

BACKEND_PID=""
NATS_PID=""
STATE_DIR=""

cleanup() {
    stop_pid "$BACKEND_PID" backend
    BACKEND_PID=""
    stop_pid "$NATS_PID" nats-server
    NATS_PID=""
    if [[ -n "$STATE_DIR" ]]; then
        rm -rf "$STATE_DIR"
        STATE_DIR=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# CPU seconds (user + system) a process has used so far.
cpu_seconds() {
    local pid=$1
    [[ -n "$pid" && -r /proc/$pid/stat ]] || { echo 0; return; }
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$pid/stat"
}


run_queue() {
    local queue=$1
    local queue_args=()
    STATE_DIR=$(mktemp -d -t kensa-bench-rr.XXXXXX)
    case "$queue" in
        in-process) ;;
        nats)
            local nats_port
            nats_port=$(free_port)
            "$NATS_SERVER" -js -a 127.0.0.1 -p "$nats_port" -sd "$STATE_DIR/nats" \
                >"$STATE_DIR/nats.log" 2>&1 &
            NATS_PID=$!
            for _ in $(seq 1 50); do port_in_use "$nats_port" && break; sleep 0.1; done
            queue_args=(--queue-url "nats://127.0.0.1:$nats_port" --queue-stream KENSA_BENCH_RR)
            ;;
        *)
            log "unknown queue $queue (in-process or nats)"
            return 2
            ;;
    esac
    local api_port agent_port
    api_port=$(free_port)
    agent_port=$(free_port "$api_port")
    local api_url="http://127.0.0.1:$api_port"
    log "$queue: starting kensa-backend (log: $STATE_DIR/backend.log)"
    "${BACKEND_BIN:-$TARGET_DIR/release/kensa-backend}" start \
        --state-dir "$STATE_DIR" \
        --api-listen-address "127.0.0.1:$api_port" \
        --agent-host 127.0.0.1 --agent-port "$agent_port" \
        --dashboard-host 127.0.0.1 --dashboard-port 0 \
        --cluster-admin-username "$ADMIN_USER" \
        --cluster-admin-password "$ADMIN_PASSWORD" \
        --log-level warn \
        "${queue_args[@]}" >"$STATE_DIR/backend.log" 2>&1 &
    BACKEND_PID=$!
    if ! wait_healthy "$api_url" "$BACKEND_PID"; then
        log "$queue: the backend did not become healthy; last log lines:"
        tail -n 30 "$STATE_DIR/backend.log" >&2 || true
        return 1
    fi
    local token
    token=$(curl -fsS -u "$ADMIN_USER:$ADMIN_PASSWORD" "$api_url/auth" |
        sed 's/.*"access_token":"\([^"]*\)".*/\1/')

    # The simulated agents connect first, so the first rounds find them.
    local out="$RESULTS/round-robin-$queue${RESULTS_TAG:-}.json"
    local status=0
    KENSA_LOADGEN_AGENT_PASSWORD="$ADMIN_PASSWORD" "${LOADGEN_BIN:-$TARGET_DIR/release/kensa-loadgen}" agents \
        --agent-url "ws://127.0.0.1:$agent_port" \
        --agents "$AGENTS" --checks 0 --answer-requests --subscriptions rr \
        --window 100000 \
        --duration "$((DURATION + 20))" --warmup "$((WARMUP + 20))" --drain "$DRAIN" \
        --backend-pid "$BACKEND_PID" \
        --label "$queue" \
        --out "$out.tmp" >"$STATE_DIR/loadgen.log" 2>&1 &
    local loadgen=$!

    log "$queue: creating $CHECKS round-robin checks"
    seq 1 "$CHECKS" | xargs -P 8 -I{} curl -fsS -o /dev/null -X PUT \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data '{"metadata":{"name":"rr-{}","namespace":"default"},"command":"true","interval":1,"timeout":5,"round_robin":true,"publish":true,"subscriptions":["rr"]}' \
        "$api_url/api/core/v2/namespaces/default/checks/rr-{}"

    # Measure CPU over the load generator's measurement window (it starts 20 s + WARMUP in).
    sleep "$((WARMUP + 18))"
    local backend_cpu0 nats_cpu0 backend_cpu1 nats_cpu1
    backend_cpu0=$(cpu_seconds "$BACKEND_PID")
    nats_cpu0=$(cpu_seconds "$NATS_PID")
    sleep "$DURATION"
    backend_cpu1=$(cpu_seconds "$BACKEND_PID")
    nats_cpu1=$(cpu_seconds "$NATS_PID")
    wait "$loadgen" || status=$?
    if [[ $status -ne 0 ]]; then
        log "$queue: the load generator failed ($status):"
        tail -n 20 "$STATE_DIR/loadgen.log" >&2 || true
        tail -n 20 "$STATE_DIR/backend.log" >&2 || true
        rm -f "$out.tmp"
        return "$status"
    fi
    curl -fsS "$api_url/metrics" >"$STATE_DIR/metrics.txt"
    python3 - "$out.tmp" "$out" "$STATE_DIR/metrics.txt" "$queue" "$CHECKS" "$DURATION" \
        "$backend_cpu0" "$backend_cpu1" "$nats_cpu0" "$nats_cpu1" <<'EOF'
import json, sys
src, dst, metrics, queue, checks, duration, b0, b1, n0, n1 = sys.argv[1:]
report = json.load(open(src))
counters = {}
for line in open(metrics):
    if line.startswith("kensa_round") and not line.startswith("#"):
        name, value = line.rsplit(" ", 1)
        base = name.split("{")[0]
        counters[base] = counters.get(base, 0) + float(value)
backend = float(b1) - float(b0)
nats = float(n1) - float(n0)
seconds = float(duration)
report["round_robin"] = {
    "queue": queue,
    "checks": int(checks),
    "scheduled_rounds_per_s_nominal": int(checks),
    "backend_counters": counters,
    "cpu_seconds": {"backend": round(backend, 2), "nats_server": round(nats, 2), "window_s": seconds},
    "cpu_cores": {"backend": round(backend / seconds, 3), "nats_server": round(nats / seconds, 3)},
    "queue_cpu_share": round(nats / (backend + nats), 3) if queue == "nats" and backend + nats > 0 else None,
}
json.dump(report, open(dst, "w"), indent=2)
print(f"{queue}: acked/s={report['measure']['acked_per_s']} dispatch={report['totals'].get('dispatch_latency_ms')} cpu={report['round_robin']['cpu_cores']}")
EOF
    rm -f "$out.tmp"
    log "$queue: wrote ${out#"$ROOT"/}"
    cleanup
}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "building release binaries into $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p kensa-backend -p kensa-loadgen)
fi
mkdir -p "$RESULTS"
for queue in $QUEUES; do
    run_queue "$queue"
done
log "done"
