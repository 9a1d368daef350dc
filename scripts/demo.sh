#!/usr/bin/env bash
# Set everything up (idempotent) and preprocess the bundled demo dataset under
# a memory cap: the README's first command.  Extra arguments go to
# `nnrun preprocess` (e.g. --json, -c 3d_fullres).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export NNRUN_HOME="${NNRUN_HOME:-$REPO/.demo}"
"$REPO/scripts/setup.sh"
export nnUNet_raw="$NNRUN_HOME/raw" nnUNet_preprocessed="$NNRUN_HOME/preprocessed"
echo "+ nnrun preprocess -d 501 --mem ${NNRUN_DEMO_MEM:-6g} $*" >&2
exec python3 -m runner.cli preprocess -d 501 --mem "${NNRUN_DEMO_MEM:-6g}" "$@"
