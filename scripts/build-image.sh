#!/usr/bin/env bash
# Build the nnrun image from this checkout: `nnrun image build` (the same
# Python code an installed nnrun runs; one recipe: runner/image/Dockerfile and
# runner/image/requirements.lock).  Idempotent: with the wheelhouse cached and
# nothing changed, a rebuild takes seconds.
#
# What it does (runner/image/build.py): fills the wheelhouse from the lock with
# the host's pip (hash-checked; pip inside `docker build` cannot reach an index
# here), takes python:3.11-slim when present or pullable, else makes a local
# Debian base with debootstrap and `docker import`, then builds through the
# Docker API with every package installed with --require-hashes.
# Environment: NNRUN_IMAGE (tag, default nnrun:<version>), BASE_IMAGE,
# NNRUN_CACHE (wheelhouse and base rootfs; default /var/cache/nnrun as root,
# ~/.cache/nnrun otherwise).  Extra arguments go to `nnrun image build`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=stack.sh
. "$REPO/scripts/stack.sh"
IMAGE="${NNRUN_IMAGE:-nnrun:$VERSION}"
BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim}"

PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python3 -m runner.cli image build \
    --tag "$IMAGE" --base-image "$BASE_IMAGE" --cache "$CACHE" "$@"
