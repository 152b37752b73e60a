#!/usr/bin/env bash
# Create (idempotently) a Python virtualenv containing ansible==8.7.0, which
# ships the sensu.sensu_go collection 1.14.x used by the Kensa compatibility
# test (crates/kensa-backend/tests/ansible.rs), and print the absolute path of
# its `ansible-playbook`. Also installs bcrypt, which the collection's `user`
# module needs to change passwords (it hashes them client-side).
#
#   scripts/ansible-venv.sh            # -> /root/.cache/kensa/ansible-venv/bin/ansible-playbook
#   KENSA_ANSIBLE_PLAYBOOK="$(scripts/ansible-venv.sh)" \
#       cargo test -p kensa-backend --test ansible
#
# Environment:
#   KENSA_ANSIBLE_VENV     venv location (default: $HOME/.cache/kensa/ansible-venv)
#   KENSA_PYTHON           python interpreter to use (default: python3)
#   KENSA_ANSIBLE_VERSION  ansible package version (default: 8.7.0)
#   KENSA_BCRYPT_VERSION   bcrypt package version (default: 4.2.0)
#   KENSA_VERBOSE=1        show pip output
#
# Quiet by default: only the ansible-playbook path goes to stdout; errors go to
# stderr with a non-zero exit status.
set -euo pipefail

ANSIBLE_VERSION="${KENSA_ANSIBLE_VERSION:-8.7.0}"
BCRYPT_VERSION="${KENSA_BCRYPT_VERSION:-4.2.0}"
PYTHON="${KENSA_PYTHON:-python3}"
VENV="${KENSA_ANSIBLE_VENV:-${HOME:?HOME is not set}/.cache/kensa/ansible-venv}"
[[ "$VENV" == /* ]] || VENV="$PWD/$VENV"   # print an absolute path
STAMP="$VENV/.kensa-ansible-${ANSIBLE_VERSION}-bcrypt-${BCRYPT_VERSION}"
LOG=""

die() {
    echo "ansible-venv.sh: error: $*" >&2
    if [[ -n "$LOG" && -s "$LOG" ]]; then
        echo "---- last 40 lines of $LOG ----" >&2
        tail -n 40 "$LOG" >&2
        echo "---- end of log ----" >&2
    fi
    exit 1
}

run() {
    # Run a command, capturing its output in $LOG unless KENSA_VERBOSE=1.
    if [[ "${KENSA_VERBOSE:-0}" == 1 ]]; then
        "$@" >&2
    else
        "$@" >>"$LOG" 2>&1
    fi
}

command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set KENSA_PYTHON)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); ansible $ANSIBLE_VERSION needs Python >= 3.9"

PLAYBOOK="$VENV/bin/ansible-playbook"

# Fast path: already installed and verified.
if [[ -f "$STAMP" && -x "$PLAYBOOK" && -x "$VENV/bin/python" ]]; then
    echo "$PLAYBOOK"
    exit 0
fi

mkdir -p "$(dirname "$VENV")" || die "cannot create parent directory of $VENV"
LOG="$(mktemp "${TMPDIR:-/tmp}/kensa-ansible-venv.XXXXXX.log")"
trap 'rm -f "$LOG"' EXIT

if [[ ! -x "$VENV/bin/python" ]]; then
    if [[ -e "$VENV" ]] && [[ -n "$(ls -A "$VENV" 2>/dev/null)" ]]; then
        die "$VENV exists but is not a virtualenv; remove it or set KENSA_ANSIBLE_VENV"
    fi
    run "$PYTHON" -m venv "$VENV" \
        || die "'$PYTHON -m venv $VENV' failed (is the python3-venv package installed?)"
fi

run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "ansible==${ANSIBLE_VERSION}" "bcrypt==${BCRYPT_VERSION}" \
    || die "pip install ansible==${ANSIBLE_VERSION} bcrypt==${BCRYPT_VERSION} into $VENV failed (needs access to PyPI; pip output below)"

[[ -x "$PLAYBOOK" ]] || die "$PLAYBOOK missing after install"

# Verify the sensu.sensu_go collection is present and importable.
COLL="$("$VENV/bin/python" - <<'PY' 2>>"$LOG"
import json, os, ansible_collections
for base in ansible_collections.__path__:
    p = os.path.join(base, "sensu", "sensu_go", "MANIFEST.json")
    if os.path.exists(p):
        print(json.load(open(p))["collection_info"]["version"])
        break
PY
)" || die "could not inspect the sensu.sensu_go collection"
[[ -n "$COLL" ]] || die "sensu.sensu_go collection not found in ansible==${ANSIBLE_VERSION}"

"$VENV/bin/python" -c 'import bcrypt' >>"$LOG" 2>&1 || die "bcrypt is not importable in $VENV"
"$PLAYBOOK" --version >>"$LOG" 2>&1 || die "$PLAYBOOK --version failed"

rm -f "$VENV"/.kensa-ansible-*
echo "ansible==${ANSIBLE_VERSION} bcrypt==${BCRYPT_VERSION} sensu.sensu_go==${COLL}" >"$STAMP"
echo "$PLAYBOOK"
