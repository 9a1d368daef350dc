"""The container contract: paths, labels, user, command and environment of nnrun's container.

``nnrun preprocess`` builds its :class:`~runner.engines.base.ContainerSpec`
from these; the Kubernetes and Slurm renderers use the same command and
environment, so a pod or a batch task runs exactly what a local run does.
"""
from __future__ import annotations

import os
from pathlib import Path

from runner import __version__
from runner.dataset import RawDataset
from runner.engines.base import ContainerSpec, Mount
from runner.options import PreprocessOptions, nnunet_argv
from runner.run.settings import RunSettings
from runner.rundir import (
    CLEAN_ENV,
    FILE_ENDING_ENV,
    RESUME_ENV,
    SCHEDULE_ENV,
    SCHEDULE_FILE,
    SCHEDULE_FILE_ENV,
    TEST_HOOK_ENVS,
    THRASH_WINDOW_ENV,
)
from runner.shards import PLANS_NAME_ENV, SHARD_COUNT_ENV, SHARD_INDEX_ENV, SHARD_MAP_ENV, SKIP_PLANNING_ENV
from runner.shards import map_path as shard_map_path
from runner.units import parse_mem

CONTAINER_RAW = "/data/raw"
CONTAINER_PREPROCESSED = "/data/preprocessed"
CONTAINER_RUN_DIR = "/nnrun/run"
RUN_LABEL = "io.nnrun.run-id"
# Test-only: the integration suite tags each test's containers, so that its
# cleanup registry sees exactly the containers that test started.
TEST_LABEL = "io.nnrun.test-id"
TEST_LABEL_ENV = "NNRUN_TEST_ID"
IMAGE_USER = (1000, 1000)   # the unprivileged user the Dockerfile creates


def container_user(preprocessed_root: Path, caller_uid: int | None = None,
                   caller_gid: int | None = None) -> tuple[int, int, bool]:
    """(uid, gid, chown_back): who the container runs as.  Never root.

    A normal caller's uid:gid, so the outputs belong to them.  When root runs
    nnrun, the container still runs unprivileged: as the owner of the
    preprocessed folder when that is not root, else as the image's user
    (1000:1000); in that last case nnrun hands the outputs back to root after
    the run (chown_back), so they belong to the caller as well.
    """
    uid = os.getuid() if caller_uid is None else caller_uid
    gid = os.getgid() if caller_gid is None else caller_gid
    if uid != 0:
        return uid, gid, False
    try:
        st = preprocessed_root.stat()
        if st.st_uid != 0:
            return st.st_uid, st.st_gid, False
    except OSError:
        pass
    return IMAGE_USER[0], IMAGE_USER[1], True


def hand_over(paths: list[Path], uid: int, gid: int) -> None:
    """chown -R (only when root runs nnrun), so the unprivileged container user can write there."""
    for top in paths:
        if not top.is_dir() or top.is_symlink():
            os.chown(top, uid, gid, follow_symlinks=False)
            continue
        for dirpath, _dirnames, filenames in os.walk(top):
            os.chown(dirpath, uid, gid)
            for name in filenames:
                try:
                    os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
                except OSError:
                    pass


def container_command(opts: PreprocessOptions, run_dir: str = CONTAINER_RUN_DIR,
                      wait_for_host: bool = True) -> list[str]:
    """The image entrypoint's arguments: the supervisor, then nnU-Net's own entry point run by the agent."""
    command = ["--run-dir", run_dir]
    if wait_for_host:
        command.append("--wait-for-host")
    if opts.verify_dataset_integrity:
        command.append("--verify")
    # nnU-Net's own entry point, run by the agent that records which worker holds which case.
    return command + ["--", "python3", "-m", "runner.incontainer.agent", *nnunet_argv(opts)[1:]]


def container_environment(opts: PreprocessOptions, settings: RunSettings, file_ending: str,
                          run_dir: str = CONTAINER_RUN_DIR, dataset_name: str | None = None,
                          preprocessed: str = CONTAINER_PREPROCESSED, raw: str = CONTAINER_RAW,
                          test_hooks: bool = True) -> dict[str, str]:
    """The container's environment (also used by the Kubernetes and Slurm renderers)."""
    env = {
        "nnUNet_raw": raw,
        "nnUNet_preprocessed": preprocessed,
        "nnUNet_results": "/tmp/nnUNet_results",
        "PYTHONUNBUFFERED": "1",
        "HOME": "/tmp",
        FILE_ENDING_ENV: file_ending,
    }
    # The agent resumes from complete cases (and starts over with --clean).
    env[RESUME_ENV] = "1"
    if opts.clean:
        env[CLEAN_ENV] = "1"
    env[SCHEDULE_ENV] = settings.schedule
    if settings.schedule == "memory":
        env[SCHEDULE_FILE_ENV] = f"{run_dir}/{SCHEDULE_FILE}"
    if settings.shard is not None:
        # Fingerprint and plans exist (checked before); this run preprocesses its shard of the cases.
        env[SHARD_INDEX_ENV] = str(settings.shard.index)
        env[SHARD_COUNT_ENV] = str(settings.shard.count)
        env[SKIP_PLANNING_ENV] = "1"
        env[PLANS_NAME_ENV] = opts.plans_name
        if dataset_name:
            env[SHARD_MAP_ENV] = shard_map_path(f"{preprocessed}/{dataset_name}", opts.plans_name)
    for hook in TEST_HOOK_ENVS:     # test-only hooks (never in rendered manifests)
        if test_hooks and os.environ.get(hook):
            env[hook] = os.environ[hook]
    if os.environ.get(THRASH_WINDOW_ENV):       # the user's thrashing window (0: never end a thrashing run)
        env[THRASH_WINDOW_ENV] = os.environ[THRASH_WINDOW_ENV]
    return env


def build_spec(opts: PreprocessOptions, settings: RunSettings, dataset: RawDataset, preprocessed_dataset: Path,
               run_dir: Path, mem_bytes: int, run_id: str, user: tuple[int, int] | None = None) -> ContainerSpec:
    command = container_command(opts)
    env = container_environment(opts, settings, dataset.file_ending, dataset_name=dataset.name)
    return ContainerSpec(
        image=settings.image,
        command=command,
        mem_limit_bytes=mem_bytes,
        user=f"{user[0]}:{user[1]}" if user else f"{os.getuid()}:{os.getgid()}",
        environment=env,
        mounts=[
            Mount(str(Path(dataset.path).resolve()), f"{CONTAINER_RAW}/{dataset.name}", read_only=True),
            Mount(str(preprocessed_dataset), f"{CONTAINER_PREPROCESSED}/{dataset.name}"),
            Mount(str(run_dir), CONTAINER_RUN_DIR),
        ],
        labels={RUN_LABEL: run_id, "io.nnrun.dataset": dataset.name, "io.nnrun.version": __version__,
                **({TEST_LABEL: os.environ[TEST_LABEL_ENV]} if os.environ.get(TEST_LABEL_ENV) else {})},
        name=f"nnrun-{run_id}",
        shm_size_bytes=parse_mem(settings.shm_size),
    )
