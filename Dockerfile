# nnrun image: nnU-Net v2 preprocessing plus nnrun's in-container supervisor.
#
# The one recipe: runner/image/Dockerfile inside the nnrun package (the
# repository's top-level Dockerfile is a byte-identical copy, kept so by a unit
# test).  Build it with `nnrun image build` (scripts/build-image.sh calls it),
# which prepares the build context from the installed package:
#   wheels/   the wheels of runner/image/requirements.lock, fetched on the host
#             (pip inside `docker build` cannot be trusted to reach an index),
#             each one hashing to the lock's sha256;
#   runner/   a copy of the nnrun package (with runner/image/requirements.lock).
# Every Python package of the venv comes from the lock, with hashes required,
# pip included (the venv is made without pip).  Real users keep the default
# base; where it cannot be pulled nnrun builds a local Debian base and passes
# it as BASE_IMAGE.
ARG BASE_IMAGE=python:3.11-slim

# ---- a base with Python 3 (a debootstrap base has none; python:3.11-slim skips the install)
FROM ${BASE_IMAGE} AS pybase
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update && \
        apt-get install -y --no-install-recommends python3 python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi

# ---- stage 1: a virtualenv with exactly the lock, installed offline from the wheelhouse
FROM pybase AS venv
COPY runner/image/requirements.lock /tmp/requirements.lock
COPY wheels /wheels
RUN python3 -m venv --without-pip /opt/venv && \
    pip_wheel="$(ls /wheels/pip-*.whl)" && \
    /opt/venv/bin/python "$pip_wheel/pip" install --no-cache-dir --disable-pip-version-check \
        --no-index --find-links /wheels --require-hashes -r /tmp/requirements.lock && \
    /opt/venv/bin/python -m pip check && \
    /opt/venv/bin/python -c "import nnunetv2, torch, blosc2, SimpleITK"

# ---- stage 2: the runtime image (the wheels stay behind in stage 1)
FROM pybase
ARG NNUNETV2_VERSION=2.8.1
ARG TORCH_VERSION=2.13.0
ARG BASE_IMAGE=python:3.11-slim
ARG NNRUN_VERSION=0.0.0
ARG LOCK_DIGEST=
COPY --from=venv /opt/venv /opt/venv
# A fixed non-root user for runs that do not pass --user; nnrun itself runs the
# container as the caller's uid:gid so that outputs belong to the caller.
RUN groupadd --gid 1000 nnrun && \
    useradd --uid 1000 --gid 1000 --home-dir /home/nnrun --create-home --shell /bin/sh nnrun
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp \
    nnUNet_raw=/data/raw \
    nnUNet_preprocessed=/data/preprocessed \
    nnUNet_results=/tmp/nnUNet_results \
    PYTHONPATH=/opt/nnrun
# nnrun's supervisor (stdlib only) last, so that code changes rebuild one small layer.
COPY runner /opt/nnrun/runner
LABEL org.opencontainers.image.title="nnrun" \
      org.opencontainers.image.description="nnU-Net v2 preprocessing under a memory cap, with nnrun's supervisor" \
      org.opencontainers.image.version="${NNRUN_VERSION}" \
      io.nnrun.version="${NNRUN_VERSION}" \
      io.nnrun.nnunetv2-version="${NNUNETV2_VERSION}" \
      io.nnrun.torch-version="${TORCH_VERSION}" \
      io.nnrun.lock-digest="${LOCK_DIGEST}" \
      io.nnrun.base-image="${BASE_IMAGE}"
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["python3", "-m", "runner.incontainer.supervisor"]
