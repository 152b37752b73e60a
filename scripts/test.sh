#!/usr/bin/env bash
# Runs Kensa's whole test suite. What it needs beyond the Rust toolchain it sets up itself
# (the Ansible venv for the sensu.sensu_go client test). Tests that need PostgreSQL or NATS
# read KENSA_TEST_POSTGRES_URL / KENSA_TEST_NATS_URL and say they were skipped without them.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${KENSA_ANSIBLE_PLAYBOOK:-}" ] && command -v python3 >/dev/null 2>&1; then
  if playbook=$(scripts/ansible-venv.sh); then
    export KENSA_ANSIBLE_PLAYBOOK="$playbook"
  else
    echo "warning: could not set up the Ansible venv; the Ansible client test will be skipped" >&2
  fi
fi

cargo test --workspace --locked "$@"
