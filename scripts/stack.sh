# Sourced by scripts/build-image.sh, scripts/lock-image.sh and scripts/host-env.sh:
# the one definition of the nnU-Net stack nnrun runs (the image and the
# --runtime host venv must match), of nnrun's cache folder and of the host-side
# wheelhouse both install from.  The pins live in runner/image/requirements.in
# (what the image installs, resolved into runner/image/requirements.lock with
# every package's sha256); this file only reads them.
# Needs REPO set; defines VERSION, CACHE, TORCH_VERSION, NNUNETV2_VERSION,
# REQUIREMENTS, LOCK, WHEELS and ensure_wheelhouse.

VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/runner/__init__.py")"
if [ "$(id -u)" = 0 ]; then CACHE="${NNRUN_CACHE:-/var/cache/nnrun}"; else CACHE="${NNRUN_CACHE:-$HOME/.cache/nnrun}"; fi
REQUIREMENTS_IN="$REPO/runner/image/requirements.in"
LOCK="$REPO/runner/image/requirements.lock"
# torch: the CPU build (the lock pins its +cpu file's hash): never a multi-GB CUDA build.
TORCH_VERSION="$(sed -n 's/^torch==\([^ #]*\).*/\1/p' "$REQUIREMENTS_IN")"
NNUNETV2_VERSION="$(sed -n 's/^nnunetv2==\([^ #]*\).*/\1/p' "$REQUIREMENTS_IN")"
# The top-level pins without the installer (pip), one line: torch==... nnunetv2==... psutil
REQUIREMENTS="$(sed -e 's/#.*//' -e '/^ *$/d' -e '/^pip *$/d' "$REQUIREMENTS_IN" | xargs)"
WHEELS="$CACHE/wheels"

# ensure_wheelhouse PYTHON: every wheel of the lock in $WHEELS, each hashing to the lock's sha256 (fetched with
# that Python's pip: the host's pip trusts the host's CA and finds the CPU torch build; pip inside `docker build`
# does neither).  The same code as `nnrun image build` (runner/image/wheelhouse.py, standard library only).
ensure_wheelhouse() {
    local python="$1"
    mkdir -p "$CACHE"
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$python" -m runner.image.wheelhouse fill \
        --lock "$LOCK" --wheels "$WHEELS" --python "$python" >&2
}
