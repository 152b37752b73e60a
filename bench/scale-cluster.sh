#!/usr/bin/env bash
# bench/scale-cluster.sh — three backends on one PostgreSQL database and one NATS JetStream
# stream, on this machine, under a fleet of simulated agents (issue 6). Two scenarios:
#
# - `steady`: agents spread over the three backends (each agent's own random order of the
#   three URLs, as real agents shuffle theirs); sustained events/s, ingest p99, dispatch
#   latency, every backend's RSS over the run, mass connect. Result:
#   bench/results/scale-cluster<RESULTS_TAG>.json.
# - `storm`: every agent starts on backend 0 (their fail-over orders still differ;
#   STORM_PLACEMENT=spread spreads them over the three instead, so backend 0 holds a third and
#   the survivors already hold agents); KILL_AFTER seconds into the measurement the script
#   kills backend 0 with SIGKILL. Measured: time until every agent is connected to backend 1
#   or 2 (target < 10 s), keepalive alerts received by the `keepalive` handler (every agent
#   stays alive, so each one is false; target 0) and, after the run, keepalive events with a
#   failure in their history (read through backend 1's API). The run goes on long enough
#   after the kill for a missed keepalive deadline to fire (STORM_DURATION defaults to WARMUP +
#   KILL_AFTER + KEEPALIVE_WARNING_TIMEOUT + 60). Result:
#   bench/results/scale-storm<RESULTS_TAG>.json.
#
# The database is a fresh one (`kensa_bench_scale_<pid>` on PG_URL), dropped at the end; the
# NATS server is a private nats-server on its own port and store directory with a stream of
# the run's own name, stopped and removed at the end. Every process and directory this script
# creates is removed on exit, also on failure or Ctrl-C.
#
# Knobs (environment): SCENARIOS="steady storm", KILL_AFTER=60, STORM_PLACEMENT=first,
# STORM_DURATION, PG_URL=postgres://postgres@127.0.0.1:5432 (trust auth), NATS_SERVER (default
# nats-server from PATH), and those of bench/scale-lib.sh (AGENTS=10000, CHECK_GROUPS=20,
# CHECK_INTERVAL=2, DURATION=600 for steady, WARMUP=30, DRAIN=20, STATUS_MIX=0:1,
# CONNECT_CONCURRENCY, CONNECT_TIMEOUT=300, PRIME_AUTH, KEEPALIVE_INTERVAL=20,
# KEEPALIVE_WARNING_TIMEOUT=120, RESULTS_TAG, BUILD_NOTE, BACKEND_BIN, LOADGEN_BIN), PERF_OUT /
# PERF_SECONDS (perf on backend 0 during `steady`), LOG_DIR (keep every log in
# LOG_DIR/<scenario>), SKIP_BUILD=1, CARGO_TARGET_DIR (default <repo>/target).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
STEADY_DURATION=${DURATION:-600}
# shellcheck source=bench/scale-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/scale-lib.sh"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$ROOT/bench/results
SCENARIOS=${SCENARIOS:-steady storm}
KILL_AFTER=${KILL_AFTER:-60}
STORM_PLACEMENT=${STORM_PLACEMENT:-first}
STORM_DURATION=${STORM_DURATION:-$((WARMUP + KILL_AFTER + KEEPALIVE_WARNING_TIMEOUT + 60))}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/sbin/nats-server)}
PERF_SECONDS=${PERF_SECONDS:-60}
LOG_DIR=${LOG_DIR:-}

BACKEND_PIDS=()
NATS_PID=""
LOADGEN_PID=""
PERF_PID=""
STATE_DIR=""
PG_DATABASE=""
SCENARIO=""

cleanup() {
    stop_pid "$PERF_PID" perf
    PERF_PID=""
    stop_pid "$LOADGEN_PID" kensa-loadgen
    LOADGEN_PID=""
    local pid
    for pid in "${BACKEND_PIDS[@]}"; do
        stop_pid "$pid" backend
    done
    BACKEND_PIDS=()
    stop_pid "$NATS_PID" nats-server
    NATS_PID=""
    drop_database
    if [[ -n "$STATE_DIR" ]]; then
        if [[ -n "$LOG_DIR" ]]; then
            mkdir -p "$LOG_DIR/$SCENARIO"
            cp "$STATE_DIR"/*.log "$LOG_DIR/$SCENARIO"/ 2>/dev/null || true
        fi
        rm -rf "$STATE_DIR"
        STATE_DIR=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# One scenario: fresh database and NATS, three backends, the load generator, clean up.
run_scenario() {
    local scenario=$1 duration
    SCENARIO=$scenario
    case "$scenario" in
        steady) duration=$STEADY_DURATION ;;
        storm) duration=$STORM_DURATION ;;
        *)
            log "unknown scenario $scenario (steady or storm)"
            return 2
            ;;
    esac
    STATE_DIR=$(mktemp -d -t kensa-bench-scale-cluster.XXXXXX)
    if ! psql "$PG_URL/postgres" -qAtc 'SELECT 1' >/dev/null 2>&1; then
        log "$PG_URL does not answer; a cluster needs PostgreSQL"
        return 1
    fi
    PG_DATABASE="kensa_bench_scale_$$"
    psql "$PG_URL/postgres" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$PG_DATABASE\"" >/dev/null
    local store_url="$PG_URL/$PG_DATABASE"
    local nats_port stream
    nats_port=$(free_port)
    stream="KENSA_BENCH_SCALE_$$_$(date +%s)"
    "$NATS_SERVER" -js -a 127.0.0.1 -p "$nats_port" -sd "$STATE_DIR/nats" \
        >"$STATE_DIR/nats.log" 2>&1 &
    NATS_PID=$!
    for _ in $(seq 1 50); do port_in_use "$nats_port" && break; sleep 0.1; done

    "${BACKEND_BIN:-$TARGET_DIR/release/kensa-backend}" init --store-url "$store_url" \
        --cluster-admin-username "$ADMIN_USER" --cluster-admin-password "$ADMIN_PASSWORD" \
        >"$STATE_DIR/init.log" 2>&1 || {
        log "init failed: $(cat "$STATE_DIR/init.log")"
        return 1
    }
    local load_before
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    log "$scenario: load average before starting: $load_before"
    local api_urls=() agent_urls=() used=("$nats_port") index api_port agent_port dashboard_port
    for index in 0 1 2; do
        api_port=$(free_port "${used[@]}")
        used+=("$api_port")
        agent_port=$(free_port "${used[@]}")
        used+=("$agent_port")
        dashboard_port=$(free_port "${used[@]}")
        used+=("$dashboard_port")
        mkdir -p "$STATE_DIR/backend-$index"
        "${BACKEND_BIN:-$TARGET_DIR/release/kensa-backend}" start \
            --store-url "$store_url" \
            --queue-url "nats://127.0.0.1:$nats_port" --queue-stream "$stream" \
            --state-dir "$STATE_DIR/backend-$index" \
            --api-listen-address "127.0.0.1:$api_port" \
            --agent-host 127.0.0.1 --agent-port "$agent_port" \
            --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
            --log-level warn >"$STATE_DIR/backend-$index.log" 2>&1 &
        BACKEND_PIDS+=($!)
        api_urls+=("http://127.0.0.1:$api_port")
        agent_urls+=("ws://127.0.0.1:$agent_port")
    done
    for index in 0 1 2; do
        if ! wait_healthy "${api_urls[$index]}" "${BACKEND_PIDS[$index]}"; then
            log "backend $index did not become healthy; last log lines:"
            tail -n 30 "$STATE_DIR/backend-$index.log" >&2 || true
            return 1
        fi
    done
    local alert_port
    alert_port=$(free_port "${used[@]}")
    configure_scale "${api_urls[0]}" "$alert_port"

    local out extra=()
    case "$scenario" in
        steady) out="$RESULTS/scale-cluster$RESULTS_TAG.json" ;;
        storm)
            out="$RESULTS/scale-storm$RESULTS_TAG.json"
            if [[ "$STORM_PLACEMENT" == first ]]; then
                extra=(--start-on-first-url)
            fi
            ;;
    esac
    local urls pids
    urls=$(IFS=,; echo "${agent_urls[*]}")
    pids=$(IFS=,; echo "${BACKEND_PIDS[*]}")
    log "$scenario: $AGENTS agents, $CHECK_GROUPS checks every $CHECK_INTERVAL s, ${duration} s (loadgen log: $STATE_DIR/loadgen.log)"
    DURATION=$duration run_scale_loadgen "$out.tmp" "$STATE_DIR/loadgen.log" \
        --agent-url "$urls" "${extra[@]}" \
        --alert-sink-listen "127.0.0.1:$alert_port" \
        --api-url "${api_urls[1]}" \
        --backend-pid "$pids" --watch-pid "nats=$NATS_PID" \
        --label "3 backends, postgres + nats ($scenario)" &
    LOADGEN_PID=$!
    local postgres_cpu_before
    postgres_cpu_before=$(comm_cpu_seconds postgres)
    local killed_at=""
    if [[ "$scenario" == storm ]]; then
        if wait_for_measure "$STATE_DIR/loadgen.log" "$LOADGEN_PID"; then
            sleep "$KILL_AFTER"
            log "storm: kill -9 backend 0 (pid ${BACKEND_PIDS[0]})"
            killed_at=$(date +%s.%N)
            { kill -KILL "${BACKEND_PIDS[0]}" && wait "${BACKEND_PIDS[0]}"; } 2>/dev/null || true
        fi
    elif [[ -n "$PERF_OUT" ]]; then
        if wait_for_measure "$STATE_DIR/loadgen.log" "$LOADGEN_PID"; then
            log "recording backend 0 with perf for $PERF_SECONDS s"
            start_perf "${BACKEND_PIDS[0]}" "$PERF_SECONDS" "$STATE_DIR/perf.data"
        fi
    fi
    local status=0
    wait "$LOADGEN_PID" || status=$?
    LOADGEN_PID=""
    local postgres_cpu_after
    postgres_cpu_after=$(comm_cpu_seconds postgres)
    for index in 0 1 2; do
        if [[ "$scenario" == storm && $index -eq 0 ]]; then
            continue
        fi
        if ! kill -0 "${BACKEND_PIDS[$index]}" 2>/dev/null; then
            log "$scenario: backend $index exited during the run; last log lines:"
            tail -n 30 "$STATE_DIR/backend-$index.log" >&2 || true
            [[ $status -ne 0 ]] || status=1
        fi
    done
    if [[ $status -ne 0 ]]; then
        log "$scenario: the load generator failed (status $status):"
        tail -n 20 "$STATE_DIR/loadgen.log" >&2 || true
        rm -f "$out.tmp"
        return "$status"
    fi
    mv "$out.tmp" "$out"
    python3 - "$out" "$postgres_cpu_before" "$postgres_cpu_after" <<'EOF'
import json, sys
path, before, after = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
report = json.load(open(path))
# Every postgres process of the server (all databases), over the whole load generator run.
report["postgres_cpu_s_whole_run"] = round(after - before, 2)
json.dump(report, open(path, "w"), indent=2)
EOF
    if [[ -n "$killed_at" ]]; then
        python3 - "$out" "$killed_at" "$STORM_PLACEMENT" <<'EOF'
import json, sys
path, killed_at, placement = sys.argv[1], float(sys.argv[2]), sys.argv[3]
report = json.load(open(path))
report["storm"] = {"killed_backend": 0, "killed_at_unix": killed_at,
                   "placement": placement,
                   "killed_at_s_after_loadgen_start": round(killed_at - report["started_at_unix_ms"] / 1000, 3)}
json.dump(report, open(path, "w"), indent=2)
EOF
    fi
    finish_report "$out" "$load_before" "cluster-$scenario"
    for index in 0 1 2; do
        log_summary "$STATE_DIR/backend-$index.log" "backend $index"
    done
    if [[ -n "$PERF_PID" ]]; then
        wait "$PERF_PID" 2>/dev/null || true
        PERF_PID=""
        report_perf "$STATE_DIR/perf.data" "$PERF_OUT"
        mv "$STATE_DIR/perf.data" "$PERF_OUT.data" 2>/dev/null || true
        log "perf report in $PERF_OUT"
    fi
    log "$scenario: wrote ${out#"$ROOT"/}"
    cleanup
}

if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "building release binaries into $TARGET_DIR"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release -p kensa-backend -p kensa-loadgen)
fi
mkdir -p "$RESULTS"
raise_fd_limit "$AGENTS"
for scenario in $SCENARIOS; do
    run_scenario "$scenario"
done
log "done"
