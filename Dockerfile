# nnrun image: nnU-Net v2 preprocessing plus nnrun's in-container supervisor.
#
# Build it with scripts/build-image.sh, which prepares the build context: a
# `wheels/` folder resolved on the host (pip inside `docker build` cannot be
# trusted to reach an index) and a copy of the `runner/` package.  Real users
# keep the default base; where it cannot be pulled the script builds a local
# Debian base and passes it as BASE_IMAGE.
ARG BASE_IMAGE=python:3.11-slim

# ---- a base with Python 3 (a debootstrap base has none; python:3.11-slim skips the install)
FROM ${BASE_IMAGE} AS pybase
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update && \
        apt-get install -y --no-install-recommends python3 python3-venv && \
        rm -rf /var/lib/apt/lists/*; \
    fi

# ---- stage 1: a virtualenv with nnU-Net, installed offline from the wheelhouse
FROM pybase AS venv
ARG NNUNETV2_VERSION=2.8.1
ARG TORCH_VERSION=2.13.0
COPY wheels /wheels
RUN python3 -m venv /opt/venv && \
    /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        "torch==${TORCH_VERSION}" "nnunetv2==${NNUNETV2_VERSION}" psutil && \
    /opt/venv/bin/python -c "import nnunetv2, torch, blosc2, SimpleITK"

# ---- stage 2: the runtime image (the wheels stay behind in stage 1)
FROM pybase
ARG NNUNETV2_VERSION=2.8.1
ARG TORCH_VERSION=2.13.0
ARG BASE_IMAGE=python:3.11-slim
ARG NNRUN_VERSION=0.0.0
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
      io.nnrun.base-image="${BASE_IMAGE}"
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["python3", "-m", "runner.incontainer.supervisor"]
