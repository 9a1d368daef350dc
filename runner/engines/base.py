"""Plain data that crosses the engine seam.

Everything above the engine sees these dataclasses, never a Docker SDK object
(as repo2docker splits ``engine.py`` from ``docker.py``).  The only module
that imports the Docker SDK is :mod:`runner.engines.docker`.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    """What nnrun asks the engine to run.  Memory and swap caps are equal: no swap."""

    image: str
    command: list[str]
    mem_limit_bytes: int
    user: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    shm_size_bytes: int | None = None
    pids_limit: int | None = 4096
    network_disabled: bool = True
    read_only_rootfs: bool = True
    tmpfs: dict[str, str] = field(default_factory=lambda: {"/tmp": "rw,exec,size=1g"})
    cap_drop_all: bool = True
    no_new_privileges: bool = True


@dataclass(frozen=True)
class EngineInfo:
    name: str                 # "docker" or "podman"
    server_version: str
    mem_total_bytes: int
    cgroup_version: int | None
    cgroup_driver: str | None
    kernel_version: str | None
    base_url: str


@dataclass(frozen=True)
class ImageInfo:
    ref: str
    image_id: str
    labels: dict[str, str]
    repo_digests: list[str]


@dataclass(frozen=True)
class ContainerState:
    container_id: str
    status: str               # created / running / exited / ...
    running: bool
    exit_code: int | None
    oom_killed: bool          # Docker's flag: NOT evidence of a kill (see classify.py)
    pid: int | None           # host pid of the container's PID 1 while running
    error: str | None


class Engine(Protocol):
    """The operations nnrun needs from a container engine."""

    def info(self) -> EngineInfo: ...
    def image(self, ref: str) -> ImageInfo: ...
    def create(self, spec: ContainerSpec) -> str: ...
    def start(self, container_id: str) -> None: ...
    def state(self, container_id: str) -> ContainerState: ...
    def wait(self, container_id: str, timeout_s: float | None = None) -> int: ...
    def logs(self, container_id: str) -> Iterator[bytes]: ...
    def stop(self, container_id: str, timeout_s: int = 10) -> None: ...
    def remove(self, container_id: str) -> None: ...
    def oom_event_count(self, container_id: str, since: float, until: float) -> int: ...
    def list_containers(self, label: str) -> list[str]: ...


