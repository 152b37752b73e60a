# bench/scale-lib.sh — what bench/scale.sh and bench/scale-cluster.sh share: the knobs, the
# open-file limit, the configuration every scale run uses (scheduled checks, the keepalive
# alert handler) and the load generator's command line. Sourced after bench/lib.sh; not run on
# its own.
#
# The workload: AGENTS simulated agents (kensa-loadgen, real agent protocol) in CHECK_GROUPS
# subscription groups; one check per group (`scale-00`…, command `true` — the simulated agents
# never run it, they answer every request at once with a canned result drawn from STATUS_MIX)
# scheduled by the backend every CHECK_INTERVAL seconds. Each agent therefore sends one result
# per CHECK_INTERVAL: AGENTS / CHECK_INTERVAL events/s (10,000 agents every 2 s = 5,000/s),
# arriving in CHECK_GROUPS bursts per interval (one per check, at its own phase). Every result
# goes scheduler → dispatcher → agent → eventd → store → ack, so the report has both the dispatch
# latency (scheduled tick → request at the agent) and the ingest latency (result sent → ack).
# A tcp handler named `keepalive` (filter is_incident) points at the load generator's alert
# listener: any keepalive alert it receives is a false alert, since every simulated agent stays
# alive.

AGENTS=${AGENTS:-10000}
CHECK_GROUPS=${CHECK_GROUPS:-20}
CHECK_INTERVAL=${CHECK_INTERVAL:-2}
DURATION=${DURATION:-600}
WARMUP=${WARMUP:-30}
DRAIN=${DRAIN:-20}
STATUS_MIX=${STATUS_MIX:-0:1}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-$AGENTS}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-300}
# Non-empty: one agent connects alone first, so the mass connect meets a backend that has
# already verified the agents' credentials (its cache is warm, as when it already has agents).
PRIME_AUTH=${PRIME_AUTH:-}
# What the binaries were built from, recorded in the report (default: this checkout's commit,
# `-dirty` with uncommitted changes).
BUILD_NOTE=${BUILD_NOTE:-$(git -C "$(dirname "${BASH_SOURCE[0]}")" describe --always --dirty 2>/dev/null || echo unknown)}
KEEPALIVE_INTERVAL=${KEEPALIVE_INTERVAL:-20}
KEEPALIVE_WARNING_TIMEOUT=${KEEPALIVE_WARNING_TIMEOUT:-120}
RESULTS_TAG=${RESULTS_TAG:-}
PERF_OUT=${PERF_OUT:-}
PERF_CALL_GRAPH=${PERF_CALL_GRAPH:-fp}
ADMIN_USER=admin
ADMIN_PASSWORD='P@ssw0rd!'
# The binaries (default: the release builds in CARGO_TARGET_DIR, set by the scripts).
BACKEND_BIN=${BACKEND_BIN:-}
LOADGEN_BIN=${LOADGEN_BIN:-}

# Raises this shell's open-file limit (soft and hard; the hard one needs root with
# CAP_SYS_RESOURCE) to `$1` + 4096, so the backends and the load generator started from it can
# hold `$1` sockets each. Fails when the hard limit stays below `$1` + 300: the load generator
# holds one socket per agent, and agents beyond its limit could not connect.
raise_fd_limit() {
    local need=$1 want=$(($1 + 4096)) hard
    hard=$(ulimit -Hn)
    if [[ "$hard" != unlimited && "$hard" -lt "$want" ]]; then
        ulimit -Hn "$want" 2>/dev/null || true
    fi
    hard=$(ulimit -Hn)
    if [[ "$hard" == unlimited || "$hard" -ge "$want" ]]; then
        ulimit -Sn "$want"
    else
        ulimit -Sn "$hard"
    fi
    log "open-file limit: $(ulimit -Sn) (hard $(ulimit -Hn))"
    if [[ "$hard" != unlimited && "$hard" -lt $((need + 300)) ]]; then
        log "the open-file hard limit ($hard) is too low for $need agents, and could not be raised"
        log "(that needs root with CAP_SYS_RESOURCE: ulimit -Hn $want, or LimitNOFILE= / limits.conf);"
        log "one kensa-loadgen process holds at most $((hard - 300)) agents here"
        return 1
    fi
}

# An admin access token from the API at `$1`.
admin_token() {
    curl -fsS -u "$ADMIN_USER:$ADMIN_PASSWORD" "$1/auth" |
        sed 's/.*"access_token":"\([^"]*\)".*/\1/'
}

# PUT a resource as admin: api_put <api url> <token> <path> <json>
api_put() {
    local url=$1 token=$2 path=$3 body=$4 status out
    out=$(mktemp)
    status=$(curl -sS -o "$out" -w '%{http_code}' -X PUT \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data "$body" "$url$path")
    if [[ "$status" != 2* ]]; then
        log "PUT $path: $status $(cat "$out")"
        rm -f "$out"
        return 1
    fi
    rm -f "$out"
}

# The keepalive alert handler and the CHECK_GROUPS scheduled checks, through the API at `$1`;
# `$2` is the port of the load generator's alert listener.
configure_scale() {
    local api_url=$1 alert_port=$2 token group name
    token=$(admin_token "$api_url")
    api_put "$api_url" "$token" /api/core/v2/namespaces/default/handlers/keepalive \
        "{\"metadata\":{\"name\":\"keepalive\",\"namespace\":\"default\"},\"type\":\"tcp\",\"socket\":{\"host\":\"127.0.0.1\",\"port\":$alert_port},\"filters\":[\"is_incident\"],\"timeout\":10}"
    for group in $(seq 0 $((CHECK_GROUPS - 1))); do
        printf -v name 'scale-%02d' "$group"
        api_put "$api_url" "$token" "/api/core/v2/namespaces/default/checks/$name" \
            "$(printf '{"metadata":{"name":"%s","namespace":"default"},"command":"true","interval":%s,"timeout":10,"publish":true,"subscriptions":["loadgen-group-%02d"]}' \
                "$name" "$CHECK_INTERVAL" "$group")"
    done
}

# Runs the load generator with the scale workload: run_scale_loadgen <out file> <log file>
# <extra kensa-loadgen arguments…>. Runs in the foreground; returns its status.
run_scale_loadgen() {
    local out=$1 logfile=$2
    shift 2
    KENSA_LOADGEN_AGENT_PASSWORD="$ADMIN_PASSWORD" KENSA_LOADGEN_API_PASSWORD="$ADMIN_PASSWORD" \
        "${LOADGEN_BIN:-$TARGET_DIR/release/kensa-loadgen}" agents \
        --agents "$AGENTS" --checks 0 --answer-requests \
        --subscriptions loadgen --subscription-groups "$CHECK_GROUPS" \
        --status-mix "$STATUS_MIX" --resend-after 30 --window 1000 \
        --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" \
        --keepalive-interval "$KEEPALIVE_INTERVAL" \
        --keepalive-warning-timeout "$KEEPALIVE_WARNING_TIMEOUT" \
        --connect-concurrency "$CONNECT_CONCURRENCY" --connect-timeout "$CONNECT_TIMEOUT" \
        --series-interval 5 ${PRIME_AUTH:+--prime-auth} \
        --out "$out" "$@" >/dev/null 2>"$logfile"
}

# Waits until the load generator's log `$1` says the measurement started (or process `$2`
# ended); returns 1 in the latter case.
wait_for_measure() {
    local logfile=$1 pid=$2
    while ! grep -q 'phase measure' "$logfile" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.5
    done
}

# Records the backend `$1` with perf for `$2` seconds into `$3` (background; sets PERF_PID).
start_perf() {
    local pid=$1 seconds=$2 data=$3
    perf record --call-graph "$PERF_CALL_GRAPH" -F 499 -p "$pid" -o "$data" -- sleep "$seconds" \
        >"$data.log" 2>&1 &
    PERF_PID=$!
}

# `perf report` of `$1` into `$2`.
report_perf() {
    perf report -i "$1" --stdio --no-children --percent-limit 0.5 --sort dso,symbol >"$2" 2>/dev/null ||
        log "perf report failed (see $1.log)"
}

# How many warnings and errors the log `$1` (of `$2`) has, and the most frequent ones (colours,
# timestamps and field values stripped).
log_summary() {
    local file=$1 what=$2
    log "$what: $(grep -c -E 'WARN|ERROR' "$file" || true) warnings/errors"
    grep -E 'WARN|ERROR' "$file" | sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +//; s/=[^ ]+/=…/g' | cut -c1-160 |
        sort | uniq -c | sort -rn | head -n 5 >&2 || true
}

# CPU seconds (user + system) used so far by every process named `$1` (e.g. postgres, which
# runs one process per connection).
comm_cpu_seconds() {
    local name=$1
    cat /proc/[0-9]*/stat 2>/dev/null |
        awk -v name="($name)" -v hz="$(getconf CLK_TCK)" '$2 == name { sum += $14 + $15 } END { printf "%.2f\n", sum / hz }'
}

# Adds the scenario `$3`, the machine's load before the run `$2` and BUILD_NOTE to the report
# `$1`, then prints a one-line summary.
finish_report() {
    local file=$1 load_before=$2 scenario=$3
    python3 - "$file" "$load_before" "$scenario" "$BUILD_NOTE" <<'EOF'
import json, sys
path, load_before, scenario, build = sys.argv[1:]
report = json.load(open(path))
report["scenario"] = scenario
report["build"] = build
report.setdefault("load_average", {})["before_backends_started"] = [float(x) for x in load_before.split()[:3]]
json.dump(report, open(path, "w"), indent=2)
m, h, t = report["measure"], report["handshakes"], report["totals"]
series = report.get("series") or {}
rss = [(p["name"], p["measure"]["rss_peak_mib"], (p["measure"]["rss_trend_mib"] or {}).get("last_vs_first_third_pct")) for p in series.get("processes", [])]
storms = report["reconnects"]["storms"]
alerts = (report.get("keepalive_alerts") or {}).get("keepalive_alerts")
print(f"{scenario}: connected {h['succeeded']}/{h['attempted']} (all after {h['all_connected_after_s']} s, "
      f"{h['agents_whose_first_attempt_failed']} first attempts failed); acked/s {m['acked_per_s']}; "
      f"ack p50/p99 {m['ack_latency']['p50_ms']}/{m['ack_latency']['p99_ms']} ms; dispatch {m['dispatch_latency_ms']}; "
      f"rss peak/trend {rss}; storms {[s['all_connected_again_after_s'] for s in storms]}; keepalive alerts {alerts}; "
      f"load {report['load_average']}", file=sys.stderr)
EOF
}
