#!/usr/bin/env bash
# One-time (idempotent) set-up: nnrun on the host, a Docker engine, the image,
# and the synthetic demo dataset.  Safe to run again: every step skips what is
# already done.
#
# Environment: NNRUN_HOME (demo data; default <repo>/.demo), plus what
# scripts/build-image.sh reads (NNRUN_IMAGE, BASE_IMAGE, NNRUN_CACHE).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NNRUN_HOME="${NNRUN_HOME:-$REPO/.demo}"
log() { echo "setup: $*" >&2; }

# 1. nnrun and its test tools on the host (editable, so the checkout is what runs).
if ! python3 -c "import runner.cli.app, docker, typer, psutil, pytest, hypothesis, jsonschema, blosc2, ruff, mypy, SimpleITK, nibabel, PIL, tifffile" >/dev/null 2>&1 \
   || [ "$(python3 -c 'import runner,os;print(os.path.dirname(os.path.dirname(os.path.abspath(runner.__file__))))' 2>/dev/null)" != "$REPO" ]; then
    log "installing nnrun (editable) with its test dependencies"
    python3 -m pip install -q --disable-pip-version-check -e "$REPO[test]" 2>&1 | grep -v -e '^WARNING: Location' -e 'Running pip as the' >&2 || true
    python3 -c "import runner.cli.app" || { log "installing nnrun failed"; exit 1; }
fi
# An editable install leaves the package uncompiled, and where PYTHONDONTWRITEBYTECODE is set (CI
# machines) every nnrun command compiled its ~95 modules again: 0.15 s on `nnrun --version`.
python3 -m compileall -q "$REPO/runner" >/dev/null 2>&1 || true

# 2. A Docker engine that answers (installed and started when we are root).
"$REPO/scripts/ensure-docker.sh"

# 2a. tmux, for the terminal test (tests/integration/test_terminal_real.py: nnrun in a real 80-column terminal).
if [ "$(id -u)" = 0 ] && ! command -v tmux >/dev/null 2>&1; then
    log "installing tmux"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux >/dev/null 2>&1; } \
        || log "could not install tmux: the terminal test will be skipped"
fi

# 2b. A one-node Slurm for the Slurm backend (root only: it installs and starts daemons).
if [ "$(id -u)" = 0 ]; then "$REPO/scripts/ensure-slurm.sh"; fi

# 3. The image (Docker's layer cache makes this seconds when nothing changed).
"$REPO/scripts/build-image.sh" 2> >(grep -v -e '^WARNING: Location' -e 'DEPRECATED' -e 'BuildKit is currently' -e 'environment-variable' -e '^ *$' >&2)

# 4. The demo dataset.
mkdir -p "$NNRUN_HOME/raw" "$NNRUN_HOME/preprocessed"
python3 -m runner.demo --raw "$NNRUN_HOME/raw" >/dev/null
log "ready: image $(sed -n 's/^__version__ = "\(.*\)"/nnrun:\1/p' "$REPO/runner/__init__.py"), demo data in $NNRUN_HOME/raw"
