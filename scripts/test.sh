#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up (idempotent; as root also
# scripts/ensure-podman.sh and scripts/host-env.sh), then the fast pure suite and the integration
# suite (real Docker, Podman and docker-compose, real nnU-Net, real OOM
# kills; and the cgroup_v2 tests, which build and boot a cgroup v2 Debian guest under QEMU with
# scripts/cgroup-v2-guest.sh, cached in $NNRUN_CACHE; NNRUN_CGROUP_V2=0 leaves them out), after ruff and mypy.  Extra arguments go to pytest (e.g. -m "not docker" for the pure
# suite alone).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$REPO/scripts/setup.sh"
# Podman's API with the image in its own store, for the --engine podman tests
# (as root; the podman tests say why when Podman cannot run containers here).
if [ "$(id -u)" = 0 ] && [ "${NNRUN_SKIP_DOCKER:-}" != 1 ]; then
    "$REPO/scripts/ensure-podman.sh" >/dev/null || echo "test: scripts/ensure-podman.sh failed (see above)" >&2
fi
# A Python with nnunetv2 for --runtime host (the host-runtime and Slurm tests), from the image's wheelhouse.
if [ -z "${NNRUN_HOST_PYTHON:-}" ]; then
    NNRUN_HOST_PYTHON="$("$REPO/scripts/host-env.sh")" || { echo "test: scripts/host-env.sh failed" >&2; exit 1; }
    export NNRUN_HOST_PYTHON
fi
cd "$REPO"
# The cgroup v2 guest (about 3 minutes cold: debootstrap, disk image) builds in the background while the
# rest of the suite runs; its tests run last and wait for it (scripts/cgroup-v2-guest.sh takes a lock).
if [ "$#" = 0 ] && [ "$(id -u)" = 0 ] && [ "${NNRUN_CGROUP_V2:-1}" != 0 ] && [ "$(uname -m)" = x86_64 ]; then
    mkdir -p "${NNRUN_CACHE:-/var/cache/nnrun}"
    "$REPO/scripts/cgroup-v2-guest.sh" build >"${NNRUN_CACHE:-/var/cache/nnrun}/cgroup-v2-guest-build.log" 2>&1 &
fi
# Lint and types first (seconds): ruff over the whole tree, mypy over the pure core (pyproject.toml).
if [ "${NNRUN_SKIP_LINT:-}" != 1 ]; then
    python3 -m ruff check runner tests scripts bench || { echo "test: ruff check failed" >&2; exit 1; }
    python3 -m mypy || { echo "test: mypy failed" >&2; exit 1; }
fi
set +e
python3 -m pytest -p no:cacheprovider "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
    echo "test: pytest collected no tests: that is a failure, not a pass" >&2
    exit 1
fi
exit "$status"
