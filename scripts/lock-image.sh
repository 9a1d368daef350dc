#!/usr/bin/env bash
# Make runner/image/requirements.lock: resolve runner/image/requirements.in (the
# same pins as scripts/stack.sh: torch, nnunetv2, psutil, and the installer pip)
# with this host's pip, fetch every file into the wheelhouse, build a wheel
# reproducibly for a package whose index has only an sdist, and write each
# package as name==version with the sha256 of the exact file the wheelhouse
# holds.  Run it on a Linux x86_64 host whose python3 is the image's Python
# (3.11), then rebuild the image (scripts/build-image.sh or nnrun image build)
# and commit the lock.
#
# Environment: NNRUN_CACHE (the wheelhouse is $NNRUN_CACHE/wheels; default
# /var/cache/nnrun as root, ~/.cache/nnrun otherwise), PYTHON (default python3).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=stack.sh
. "$REPO/scripts/stack.sh"
PYTHON="${PYTHON:-python3}"

PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m runner.image.wheelhouse lock \
    --requirements "$REPO/runner/image/requirements.in" --output "$LOCK" --wheels "$WHEELS" --python "$PYTHON" "$@"
echo "lock-image: $(sha256sum "$LOCK" | cut -c1-64)  $LOCK" >&2
