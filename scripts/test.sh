#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up (idempotent), then the
# fast pure suite and the integration suite (real Docker, real nnU-Net, real
# OOM kills).  Extra arguments go to pytest (e.g. -m "not docker" for the pure
# suite alone).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/setup.sh"
cd "$REPO"
set +e
python3 -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "test: pytest collected no tests: that is a failure, not a pass" >&2
    exit 1
fi
exit "$status"
