#!/usr/bin/env bash
# Renders kensa.conf.template (next to this script) to stdout, for /etc/nginx/conf.d/:
#
#   KENSA_BACKEND_1=10.0.0.11 KENSA_BACKEND_2=10.0.0.12 KENSA_BACKEND_3=10.0.0.13 \
#   KENSA_LB_SERVER_NAME=kensa.example.com \
#   KENSA_LB_CERT_FILE=/etc/nginx/tls/kensa.crt KENSA_LB_KEY_FILE=/etc/nginx/tls/kensa.key \
#     ./render.sh > /etc/nginx/conf.d/kensa.conf && nginx -t && nginx -s reload
#
# Required: KENSA_BACKEND_1..3 (host names or addresses; IPv6 in brackets), KENSA_LB_CERT_FILE,
# KENSA_LB_KEY_FILE. Optional, with their defaults: KENSA_LB_SERVER_NAME (_: any name),
# KENSA_LB_LISTEN_ADDRESS (*: every IPv4 address; [::] for IPv6 only),
# KENSA_LB_DASHBOARD_PORT (443), KENSA_LB_API_PORT (8080), KENSA_LB_AGENT_PORT (8081), and the
# backends' listeners KENSA_BACKEND_API_PORT (8080), KENSA_BACKEND_AGENT_PORT (8081),
# KENSA_BACKEND_DASHBOARD_PORT (3000).
#
# Only these ${KENSA_…} placeholders are replaced; nginx's own $variables are left alone (as
# `envsubst` would with an explicit variable list). Pure bash: nothing else to install.
set -euo pipefail

template="$(dirname "$0")/kensa.conf.template"

: "${KENSA_LB_SERVER_NAME:=_}"
: "${KENSA_LB_LISTEN_ADDRESS:=*}"
: "${KENSA_LB_DASHBOARD_PORT:=443}"
: "${KENSA_LB_API_PORT:=8080}"
: "${KENSA_LB_AGENT_PORT:=8081}"
: "${KENSA_BACKEND_API_PORT:=8080}"
: "${KENSA_BACKEND_AGENT_PORT:=8081}"
: "${KENSA_BACKEND_DASHBOARD_PORT:=3000}"

fail() {
  echo "render.sh: $*" >&2
  exit 1
}

hosts=(KENSA_BACKEND_1 KENSA_BACKEND_2 KENSA_BACKEND_3)
ports=(KENSA_LB_DASHBOARD_PORT KENSA_LB_API_PORT KENSA_LB_AGENT_PORT
  KENSA_BACKEND_API_PORT KENSA_BACKEND_AGENT_PORT KENSA_BACKEND_DASHBOARD_PORT)
files=(KENSA_LB_CERT_FILE KENSA_LB_KEY_FILE)

# Values end up inside nginx directives: refuse anything that could end or extend one.
for name in "${hosts[@]}"; do
  value="${!name:-}"
  [[ -n $value ]] || fail "$name is required (a backend's host name or address)"
  [[ $value =~ ^[A-Za-z0-9._-]+$|^\[[0-9A-Fa-f:.]+\]$ ]] \
    || fail "$name=\"$value\" is not a host name or address (IPv6 goes in brackets)"
done
for name in "${ports[@]}"; do
  value="${!name}"
  [[ $value =~ ^[0-9]+$ ]] && ((value >= 1 && value <= 65535)) \
    || fail "$name=\"$value\" is not a port (1-65535)"
done
for name in "${files[@]}"; do
  value="${!name:-}"
  [[ -n $value ]] || fail "$name is required (a PEM file nginx can read)"
  [[ $value =~ ^[A-Za-z0-9._/@+-]+$ ]] \
    || fail "$name=\"$value\": use a path without spaces, quotes or semicolons"
done
[[ $KENSA_LB_LISTEN_ADDRESS == '*' || $KENSA_LB_LISTEN_ADDRESS =~ ^[0-9.]+$|^\[[0-9A-Fa-f:.]+\]$ ]] \
  || fail "KENSA_LB_LISTEN_ADDRESS=\"$KENSA_LB_LISTEN_ADDRESS\" is not *, an IPv4 address or [IPv6]"
[[ $KENSA_LB_SERVER_NAME =~ ^[A-Za-z0-9._*~-]+$ ]] \
  || fail "KENSA_LB_SERVER_NAME=\"$KENSA_LB_SERVER_NAME\" is not a server name"

text="$(<"$template")"
for name in "${hosts[@]}" "${ports[@]}" "${files[@]}" KENSA_LB_SERVER_NAME \
  KENSA_LB_LISTEN_ADDRESS; do
  text="${text//"\${$name}"/"${!name}"}"
done
if [[ $text =~ \$\{KENSA_[A-Z0-9_]*\} ]]; then
  fail "the template uses ${BASH_REMATCH[0]}, which this script does not know"
fi
printf '%s\n' "$text"
