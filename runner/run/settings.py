"""nnrun's own settings for one run (as opposed to nnU-Net's options), and where a run reports progress."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runner import __version__
from runner.run.monitor import DEFAULT_CGROUP_ROOT
from runner.shards import Shard

DEFAULT_IMAGE = f"nnrun:{__version__}"


class ProgressSink(Protocol):
    """Where a run reports progress; the CLI renders it (the orchestrator never prints)."""

    def stage(self, message: str) -> None: ...
    def file_check(self, done: int, total: int) -> None: ...
    def nnunet_output(self, chunk: bytes) -> None: ...
    def event(self, event: dict) -> None: ...       # run_start, supervisor and agent events
    def memory(self, sample: dict) -> None: ...     # host cgroup readings, ~10 Hz


class NullSink:
    def stage(self, message: str) -> None: pass
    def file_check(self, done: int, total: int) -> None: pass
    def nnunet_output(self, chunk: bytes) -> None: pass
    def event(self, event: dict) -> None: pass
    def memory(self, sample: dict) -> None: pass


@dataclass
class RunSettings:
    """nnrun's own options (as opposed to nnU-Net's)."""

    mem: str
    image: str = DEFAULT_IMAGE
    raw_root: str | None = None
    preprocessed_root: str | None = None
    skip_file_check: bool = False
    shm_size: str = "256m"
    cgroup_root: Path = DEFAULT_CGROUP_ROOT
    check_workers: int = 2
    plot: bool = True
    schedule: str = "fixed"          # "fixed": -np workers as nnU-Net; "memory": admit cases by predicted peak
    retries: int | None = None       # --retry; None: 2 when nnrun chose the worker counts, else 0
    np_auto: bool = False            # -np auto: the largest fixed pool that fits, from the estimate
    npfp_auto: bool = False          # -npfp auto
    workers_pinned: bool = False     # the user gave -np or -npfp
    passthrough_argv: list[str] = field(default_factory=list)   # nnrun options to repeat in advice
    shard: Shard | None = None       # --shard K/N: preprocess only shard K of N of the cases
    runtime: str = "docker"          # docker | podman (a container engine) | host (this node, in its own cgroup)
    dataset_arg: str | None = None   # -d as given: a DatasetXXX_Name must be the name of the folder found for XXX
    command: list[str] | None = None  # the nnrun command as typed (manifest.json), e.g. ["nnrun", "preprocess", ...]
