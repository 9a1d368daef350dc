#!/usr/bin/env bash
# Make sure a Docker engine answers.  Idempotent.
# When none answers and we run as root: install Debian's docker.io (and
# debootstrap, which build-image.sh may need) and start dockerd in the
# background.  Otherwise say what to do.
# Also, as root, Debian's docker-compose (1.29: compose/ and its test).
set -euo pipefail

log() { echo "ensure-docker: $*" >&2; }

if ! command -v docker-compose >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        log "installing docker-compose from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends docker-compose >/dev/null
    else
        log "docker-compose is missing (compose/ and its test need it): as root, apt-get install docker-compose"
    fi
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi
if [ -n "${DOCKER_HOST:-}" ]; then
    log "no Docker engine answers at DOCKER_HOST=$DOCKER_HOST; unset it to use a local engine"
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    log "no Docker engine answers and this is not root: start Docker (e.g. 'sudo systemctl start docker') and add yourself to the docker group"
    exit 1
fi
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
    log "installing docker.io and debootstrap from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends docker.io debootstrap ca-certificates iptables >/dev/null
fi
if ! command -v docker >/dev/null 2>&1; then
    log "docker CLI missing after install"
    exit 1
fi
LOG=/var/log/nnrun-dockerd.log
# A dockerd that was killed (as at the end of a session) leaves pid files that
# make the next one refuse to start: drop those whose process is gone.
for pidfile in /var/run/docker.pid /run/docker/containerd/containerd.pid; do
    if [ -f "$pidfile" ]; then
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [ -z "$pid" ] || ! grep -qE 'dockerd|containerd' "/proc/$pid/cmdline" 2>/dev/null; then
            log "removing stale $pidfile"
            rm -f "$pidfile"
        fi
    fi
done
log "starting dockerd (log: $LOG)"
nohup dockerd >"$LOG" 2>&1 &
for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then
        log "Docker engine is up ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
        exit 0
    fi
    sleep 0.5
done
log "dockerd did not come up within 60 s; see $LOG"
tail -20 "$LOG" >&2 || true
exit 1
