#!/usr/bin/env bash
# Build the nnrun image (idempotent: Docker's layer cache makes a rebuild with
# no changes take seconds).
#
# No container registry may be reachable and pip inside `docker build` may not
# trust the host's CA, so:
#   * Python packages are resolved on the host into a wheelhouse and installed
#     in the image with --no-index;
#   * when the default base (python:3.11-slim) can neither be found nor pulled,
#     a local Debian base is made with debootstrap and `docker import`.
# Environment: NNRUN_IMAGE (tag, default nnrun:<version>), BASE_IMAGE,
# NNRUN_CACHE (wheelhouse and base rootfs; default /var/cache/nnrun as root,
# ~/.cache/nnrun otherwise).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=stack.sh
. "$REPO/scripts/stack.sh"
IMAGE="${NNRUN_IMAGE:-nnrun:$VERSION}"
DEFAULT_BASE="python:3.11-slim"
BASE_IMAGE="${BASE_IMAGE:-$DEFAULT_BASE}"
LOCAL_BASE="nnrun-base:bookworm"

log() { echo "build-image: $*" >&2; }

# 1. Wheelhouse (host pip: it trusts the host's CA and finds the CPU torch build).
ensure_wheelhouse python3

# 2. Base image: the default when present or pullable, else a local Debian base.
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if timeout 90 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
        log "pulled $BASE_IMAGE"
    elif [ "$BASE_IMAGE" = "$DEFAULT_BASE" ]; then
        log "$BASE_IMAGE cannot be pulled here: using a local Debian base ($LOCAL_BASE)"
        BASE_IMAGE="$LOCAL_BASE"
        if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
            ROOTFS="$CACHE/rootfs-bookworm"
            if [ ! -x "$ROOTFS/bin/sh" ] || [ ! -f "$ROOTFS/.complete" ]; then
                command -v debootstrap >/dev/null || { log "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
                # The Debian mirror this machine's apt already uses.
                MIRROR="$(grep -rhoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
                          | grep -v security | awk '{print $2}' | grep -E 'debian/?$' | head -1 || true)"
                [ -n "$MIRROR" ] || { log "no Debian mirror found in /etc/apt sources"; exit 1; }
                log "debootstrap --variant=minbase bookworm (about 25 s)"
                rm -rf "$ROOTFS"
                debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
                    || { log "debootstrap failed: see $CACHE/debootstrap.log"; exit 1; }
                touch "$ROOTFS/.complete"
            fi
            tar -C "$ROOTFS" --exclude=./.complete -c . | docker import - "$LOCAL_BASE" >/dev/null
        fi
    else
        log "base image $BASE_IMAGE is neither present nor pullable"
        exit 1
    fi
fi

# 3. Build context: the wheelhouse (hard links when possible) and the runner package.
# One folder per build, so that builds of several tags can run at once.
CONTEXT="$(mktemp -d "$CACHE/context.XXXXXX")"
trap 'rm -rf "$CONTEXT"' EXIT
cp -al "$WHEELS" "$CONTEXT/wheels" 2>/dev/null || cp -a "$WHEELS" "$CONTEXT/wheels"
rm -f "$CONTEXT/wheels/.requirements"
(cd "$REPO" && tar -c --exclude=__pycache__ runner) | tar -C "$CONTEXT" -x

log "building $IMAGE from $BASE_IMAGE"
DOCKER_BUILDKIT=0 docker build -q -f "$REPO/Dockerfile" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg NNRUN_VERSION="$VERSION" \
    --build-arg TORCH_VERSION="$TORCH_VERSION" \
    --build-arg NNUNETV2_VERSION="$NNUNETV2_VERSION" \
    -t "$IMAGE" "$CONTEXT" >/dev/null
log "built $IMAGE ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c1-19))"
