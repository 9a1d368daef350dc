#!/usr/bin/env bash
# A Python environment for `nnrun preprocess --runtime host` (e.g. in a Slurm
# task on a node without Docker): a venv with the image's nnU-Net stack,
# installed offline (--no-index) from the same wheelhouse the image is built
# from: with NNRUN_BASE_PYTHON of the image's Python version (3.11, the lock's),
# exactly the image's packages (runner/image/requirements.lock, hashes
# required); with another Python, the same top-level pins resolved for it.
# Idempotent (a stamp file records what is installed); prints the venv's
# python on stdout, the only thing this script prints there:
#
#   export NNRUN_HOST_PYTHON="$(scripts/host-env.sh)"
#
# Environment: NNRUN_CACHE (default /var/cache/nnrun as root, ~/.cache/nnrun
# otherwise; the wheelhouse is $NNRUN_CACHE/wheels, the venv $NNRUN_CACHE/hostenv),
# NNRUN_HOSTENV (the venv folder), NNRUN_BASE_PYTHON (the Python the venv is
# made from; default python3: its version must match the wheelhouse's wheels).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The same stack, cache and wheelhouse as the image.
# shellcheck source=stack.sh
. "$REPO/scripts/stack.sh"
VENV="${NNRUN_HOSTENV:-$CACHE/hostenv}"
BASE_PYTHON="${NNRUN_BASE_PYTHON:-python3}"

log() { echo "host-env: $*" >&2; }
mkdir -p "$CACHE"

BASE_VERSION="$("$BASE_PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" \
    || { log "$BASE_PYTHON does not run: set NNRUN_BASE_PYTHON to a Python 3.10+"; exit 1; }
STAMP="$VENV/.nnrun-hostenv"
LOCK_PYTHON="$(sed -n 's/^#: python-version: *//p' "$LOCK")"
if [ "${BASE_VERSION%.*}" = "$LOCK_PYTHON" ]; then
    WANT="lock=$(sha256sum "$LOCK" | cut -c1-64) python=$BASE_VERSION"
else
    WANT="$REQUIREMENTS python=$BASE_VERSION"
fi

verify() {
    "$VENV/bin/python" -c "import nnunetv2, torch, psutil, blosc2, SimpleITK" >/dev/null 2>&1 || return 1
    PYTHONPATH="$REPO" "$VENV/bin/python" -m runner.incontainer.supervisor --help >/dev/null 2>&1 || return 1
}

# Warm path: the stamp is written only after a full verify, so a quick check suffices.
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] \
   && PYTHONPATH="$REPO" "$VENV/bin/python" -m runner.incontainer.supervisor --help >/dev/null 2>&1; then
    echo "$VENV/bin/python"
    exit 0
fi

if [ "${BASE_VERSION%.*}" = "$LOCK_PYTHON" ]; then
    # 1. The wheelhouse of the lock (the one the image is built from), hash-checked.
    ensure_wheelhouse python3
    INSTALL=(--require-hashes -r "$LOCK")
    FROM="$WHEELS"
else
    # 1. Another Python than the image's: the same top-level pins, resolved for it in a wheelhouse of its own.
    FROM="$CACHE/wheels-py$BASE_VERSION"
    if [ ! -f "$FROM/.requirements" ] || [ "$(cat "$FROM/.requirements")" != "$REQUIREMENTS" ]; then
        log "$BASE_PYTHON is $BASE_VERSION, not the image's $LOCK_PYTHON: resolving $REQUIREMENTS into $FROM"
        rm -rf "$FROM.tmp"
        # shellcheck disable=SC2086
        "$BASE_PYTHON" -m pip wheel -q -w "$FROM.tmp" $REQUIREMENTS
        rm -rf "$FROM"
        mv "$FROM.tmp" "$FROM"
        echo "$REQUIREMENTS" >"$FROM/.requirements"
    fi
    # shellcheck disable=SC2206
    INSTALL=($REQUIREMENTS)
fi

# 2. The venv (in place: a venv cannot be moved; the stamp, written last, marks it complete).
log "making $VENV from $BASE_PYTHON $BASE_VERSION (offline, from $FROM)"
rm -rf "$VENV"
"$BASE_PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-index --find-links "$FROM" "${INSTALL[@]}" \
    || { log "pip install from $FROM failed (is $BASE_PYTHON the Python the wheels were resolved for?)"; exit 1; }
if ! verify; then
    log "the venv at $VENV does not import nnunetv2 or run runner.incontainer.supervisor"
    "$VENV/bin/python" -c "import nnunetv2, torch, psutil" >&2 || true
    exit 1
fi
echo "$WANT" >"$STAMP"
log "ready: $VENV/bin/python (nnunetv2 $NNUNETV2_VERSION, torch $TORCH_VERSION)"
echo "$VENV/bin/python"
