#!/usr/bin/env bash
# Make sure Podman's Docker-compatible API answers and holds the nnrun image.
# Idempotent; run as root (CI starts from a fresh machine):
#   1. apt-get install podman when it is missing;
#   2. start `podman system service --time=0` on unix://$SOCK (default
#      /run/nnrun-podman.sock, the first place `nnrun --engine podman` looks)
#      in the background when nothing answers there;
#   3. copy the image from Docker into Podman's own store (`docker save |
#      podman load`) when Podman lacks it or holds another build of the tag.
#      The image is built into Docker by scripts/build-image.sh; nothing is
#      ever pulled.
# Prints the socket URL (for NNRUN_PODMAN_HOST or DOCKER_HOST) on stdout.
# Environment: NNRUN_IMAGE (tag, default nnrun:<version>), NNRUN_PODMAN_SOCKET.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/runner/__init__.py")"
IMAGE="${NNRUN_IMAGE:-nnrun:$VERSION}"
SOCK="${NNRUN_PODMAN_SOCKET:-/run/nnrun-podman.sock}"
URL="unix://$SOCK"
LOG=/var/log/nnrun-podman.log
WORKDIR=/run/nnrun-podman        # the service's working directory

log() { echo "ensure-podman: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "run this as root: it installs Podman and serves its API on $SOCK"
    exit 1
fi

# 1. Podman.
if ! command -v podman >/dev/null 2>&1; then
    log "installing podman from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q podman >/dev/null
fi

answers() { timeout 10 podman --remote --url "$URL" version >/dev/null 2>&1; }

# 2. The API service.
if ! answers; then
    # A service killed with the session leaves its socket behind: replace it.
    if [ -S "$SOCK" ] && ! pgrep -f "podman system service --time=0 $URL" >/dev/null 2>&1; then
        rm -f "$SOCK"
    fi
    log "starting podman system service on $URL (log: $LOG)"
    # conmon writes a file named `oom` into its working directory (inherited from the
    # service) whenever a container's cgroup hits its limit: keep that out of the caller's.
    mkdir -p "$WORKDIR"
    (cd "$WORKDIR" && exec setsid nohup podman system service --time=0 "$URL" >>"$LOG" 2>&1 </dev/null) &
    for _ in $(seq 1 60); do
        answers && break
        sleep 0.5
    done
    if ! answers; then
        log "the Podman API did not answer at $URL within 30 s; see $LOG"
        tail -20 "$LOG" >&2 || true
        exit 1
    fi
fi

# 3. The image, from Docker (podman resolves nnrun:X to localhost/nnrun:X).
docker_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
podman_id="$(podman image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
if [ -n "$docker_id" ] && [ "${docker_id#sha256:}" != "${podman_id#sha256:}" ]; then
    log "loading $IMAGE from Docker into Podman's store (about a minute for 2.3 GB)"
    docker save "$IMAGE" | podman load -q >/dev/null
    # The build this replaced, if nothing else names it any more (only nnrun's own images).
    if [ -n "$podman_id" ] && [ -z "$(podman image inspect -f '{{join .RepoTags ","}}' "$podman_id" 2>/dev/null)" ]; then
        podman rmi "$podman_id" >/dev/null 2>&1 || true
    fi
elif [ -z "$docker_id" ] && [ -z "$podman_id" ]; then
    log "image $IMAGE is neither in Docker nor in Podman: build it first (scripts/build-image.sh)"
    exit 1
fi
echo "$URL"
