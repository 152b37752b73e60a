#!/usr/bin/env bash
# Sets up (idempotently) what the dashboard's browser tests need: Debian's `chromium` package
# (the system browser Playwright drives through `executablePath`, so no browser download) and
# tests/browser/node_modules from the committed package-lock.json (playwright-core, pinned).
#
#   scripts/browser-setup.sh        # then: KENSA_BROWSER_TESTS=1 cargo test -p kensa-backend --test dashboard
#
# Environment:
#   KENSA_CHROMIUM   browser binary to use (default: /usr/bin/chromium); when set and present,
#                    nothing is installed with apt
#   KENSA_VERBOSE=1  show apt and npm output
#
# Prints nothing on success except the browser path on stdout; errors go to stderr with a
# non-zero exit status.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BROWSER_DIR="$ROOT/tests/browser"
CHROMIUM="${KENSA_CHROMIUM:-/usr/bin/chromium}"
LOG="$(mktemp "${TMPDIR:-/tmp}/kensa-browser-setup.XXXXXX.log")"
trap 'rm -f "$LOG"' EXIT

die() {
    echo "browser-setup.sh: error: $*" >&2
    if [[ -s "$LOG" ]]; then
        echo "---- last 40 lines of the log ----" >&2
        tail -n 40 "$LOG" >&2
    fi
    exit 1
}

run() {
    if [[ "${KENSA_VERBOSE:-0}" == 1 ]]; then
        "$@" >&2
    else
        "$@" >>"$LOG" 2>&1
    fi
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        return 1
    fi
}

# 1. The browser.
if [[ ! -x "$CHROMIUM" ]]; then
    command -v apt-get >/dev/null 2>&1 || die "$CHROMIUM is missing and apt-get is not available (set KENSA_CHROMIUM)"
    export DEBIAN_FRONTEND=noninteractive
    if ! run as_root apt-get install -y --no-install-recommends chromium; then
        run as_root apt-get update || die "apt-get update failed"
        run as_root apt-get install -y --no-install-recommends chromium || die "apt-get install chromium failed"
    fi
    [[ -x "$CHROMIUM" ]] || die "$CHROMIUM is still missing after installing chromium"
fi

# 2. Node and the pinned playwright-core.
command -v node >/dev/null 2>&1 || die "node is not installed (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm is not installed (Debian: apt-get install npm)"
wanted=$(node -e 'console.log(require(process.argv[1]).dependencies["playwright-core"])' "$BROWSER_DIR/package.json")
installed=$(node -e 'try { console.log(require(process.argv[1]).version) } catch { console.log("") }' \
    "$BROWSER_DIR/node_modules/playwright-core/package.json")
if [[ "$installed" != "$wanted" ]]; then
    (cd "$BROWSER_DIR" && run npm ci --no-audit --no-fund) \
        || die "npm ci in tests/browser failed (needs the npm registry)"
fi

echo "$CHROMIUM"
