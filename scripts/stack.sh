# Sourced by scripts/build-image.sh and scripts/host-env.sh: the one definition of
# the nnU-Net stack nnrun runs (the image and the --runtime host venv must match),
# of nnrun's cache folder and of the host-side wheelhouse both install from.
# Needs REPO set; defines VERSION, CACHE, TORCH_VERSION, NNUNETV2_VERSION,
# REQUIREMENTS, WHEELS and ensure_wheelhouse.

VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/runner/__init__.py")"
if [ "$(id -u)" = 0 ]; then CACHE="${NNRUN_CACHE:-/var/cache/nnrun}"; else CACHE="${NNRUN_CACHE:-$HOME/.cache/nnrun}"; fi
TORCH_VERSION=2.13.0          # the CPU build in the host pip's find-links: never a multi-GB CUDA build
NNUNETV2_VERSION=2.8.1
REQUIREMENTS="torch==$TORCH_VERSION nnunetv2==$NNUNETV2_VERSION psutil"
WHEELS="$CACHE/wheels"

# ensure_wheelhouse PYTHON: resolve REQUIREMENTS into $WHEELS with that Python's pip (the host's
# pip trusts the host's CA and finds the CPU torch build; pip inside `docker build` does neither).
ensure_wheelhouse() {
    local python="$1" stamp="$WHEELS/.requirements"
    mkdir -p "$CACHE"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$REQUIREMENTS" ]; then
        log "resolving $REQUIREMENTS into $WHEELS"
        rm -rf "$WHEELS.tmp"
        # shellcheck disable=SC2086
        "$python" -m pip wheel -q -w "$WHEELS.tmp" $REQUIREMENTS
        rm -rf "$WHEELS"
        mv "$WHEELS.tmp" "$WHEELS"
        echo "$REQUIREMENTS" >"$stamp"
    fi
}
