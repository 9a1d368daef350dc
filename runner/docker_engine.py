"""The one module that imports the Docker SDK.

It turns Docker SDK objects and exceptions into the plain data of
:mod:`runner.engine` and nnrun's own errors.  Nothing connects at import time:
a :class:`DockerEngine` connects on first use.
"""
from __future__ import annotations

import os
from typing import Iterator

import docker
import docker.errors
import requests.exceptions

from runner.engine import ContainerSpec, ContainerState, EngineInfo, ImageInfo
from runner.errors import InfraError

SETUP_HINT = "run scripts/setup.sh, which installs and starts Docker and builds the image"


def _daemon_hint(base_url: str) -> str:
    return (f"is dockerd running and is {base_url} the right address? "
            f"Start it (e.g. `dockerd &` or `systemctl start docker`), fix DOCKER_HOST, or {SETUP_HINT}")


class DockerEngine:
    """Docker (or Podman's Docker-compatible API) behind nnrun's Engine protocol."""

    def __init__(self, base_url: str | None = None, timeout_s: int = 60) -> None:
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.timeout_s = timeout_s
        self._client: docker.DockerClient | None = None

    # -- connection ---------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                client = docker.DockerClient(base_url=self.base_url, timeout=self.timeout_s)
                client.ping()
            except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as err:
                raise InfraError(f"Docker daemon not reachable at {self.base_url}",
                                 hint=_daemon_hint(self.base_url)) from err
            self._client = client
        return self._client

    def _call(self, what: str, fn, *args, **kwargs):
        """Run an SDK call and turn its failures into InfraError."""
        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as err:
            raise InfraError(f"Docker failed to {what}: {_short(err)}", hint=_daemon_hint(self.base_url)) from err

    # -- Engine protocol ----------------------------------------------------
    def info(self) -> EngineInfo:
        raw = self._call("report its info", self.client.info)
        version = self._call("report its version", self.client.version)
        name = "podman" if any("podman" in str(c.get("Name", "")).lower()
                               for c in version.get("Components", []) or []) else "docker"
        cgroup_version = raw.get("CgroupVersion")
        return EngineInfo(
            name=name,
            server_version=str(version.get("Version", "?")),
            mem_total_bytes=int(raw.get("MemTotal") or 0),
            cgroup_version=int(cgroup_version) if str(cgroup_version or "").isdigit() else None,
            cgroup_driver=raw.get("CgroupDriver"),
            kernel_version=raw.get("KernelVersion"),
            base_url=self.base_url,
        )

    def image(self, ref: str) -> ImageInfo:
        try:
            img = self._call(f"inspect image {ref}", self.client.images.get, ref)
        except docker.errors.NotFound:
            raise InfraError(f"image {ref} not found", hint=SETUP_HINT) from None
        return ImageInfo(ref=ref, image_id=img.id, labels=dict(img.labels or {}),
                         repo_digests=list(img.attrs.get("RepoDigests") or []))

    def create(self, spec: ContainerSpec) -> str:
        kwargs = host_config_kwargs(spec)
        try:
            container = self._call("create the container", self.client.containers.create,
                                   spec.image, command=spec.command, **kwargs)
        except docker.errors.NotFound:
            raise InfraError(f"image {spec.image} not found", hint=SETUP_HINT) from None
        return container.id

    def start(self, container_id: str) -> None:
        container = self._container(container_id)
        try:
            self._call("start the container", container.start)
        except docker.errors.NotFound as err:
            raise InfraError(f"container could not start: {_short(err)}") from err

    def state(self, container_id: str) -> ContainerState:
        container = self._container(container_id)
        self._call("inspect the container", container.reload)
        st = container.attrs.get("State", {})
        return ContainerState(
            container_id=container.id,
            status=str(st.get("Status", "")),
            running=bool(st.get("Running")),
            exit_code=st.get("ExitCode") if not st.get("Running") else None,
            oom_killed=bool(st.get("OOMKilled")),
            pid=int(st["Pid"]) if st.get("Pid") else None,
            error=st.get("Error") or None,
        )

    def wait(self, container_id: str, timeout_s: float | None = None) -> int:
        container = self._container(container_id)
        try:
            result = container.wait(timeout=timeout_s)
        except requests.exceptions.ReadTimeout:
            raise TimeoutError(f"container {container_id[:12]} still running after {timeout_s} s") from None
        except requests.exceptions.ConnectionError as err:
            # A read timeout surfaces as ConnectionError in some urllib3 versions.
            if "timed out" in str(err).lower():
                raise TimeoutError(f"container {container_id[:12]} still running") from None
            raise InfraError(f"lost the Docker daemon while waiting: {_short(err)}") from err
        return int(result.get("StatusCode", -1))

    def logs(self, container_id: str) -> Iterator[bytes]:
        container = self._container(container_id)
        return self._call("stream the logs", container.logs, stream=True, follow=True, stdout=True, stderr=True)

    def stop(self, container_id: str, timeout_s: int = 10) -> None:
        try:
            self._container(container_id).stop(timeout=timeout_s)
        except docker.errors.NotFound:
            pass

    def kill(self, container_id: str) -> None:
        try:
            self._container(container_id).kill()
        except (docker.errors.NotFound, docker.errors.APIError):
            pass

    def remove(self, container_id: str) -> None:
        try:
            self._container(container_id).remove(force=True)
        except docker.errors.NotFound:
            pass

    def oom_event_count(self, container_id: str, since: float, until: float) -> int:
        """How many ``oom`` events Docker sent for the container (cgroup v1: limit hits, not kills)."""
        events = self._call("read events", self.client.events, since=int(since), until=int(until) + 1,
                            filters={"container": container_id, "event": "oom"}, decode=True)
        try:
            return sum(1 for _ in events)
        finally:
            events.close()

    def list_containers(self, label: str) -> list[str]:
        found = self._call("list containers", self.client.containers.list, all=True, filters={"label": label})
        return [c.id for c in found]

    # -- helpers ------------------------------------------------------------
    def _container(self, container_id: str):
        return self._call("find the container", self.client.containers.get, container_id)

    def oom_probe(self, image: str, mem_bytes: int, timeout_s: float = 60, alloc_bytes: int | None = None) -> dict:
        """``nnrun doctor``'s probe: does the memory cap really OOM-kill?

        Runs a throw-away container of ``image`` (entrypoint ``sh -c``; the
        image needs ``sh`` and ``python3``) capped at ``mem_bytes`` with no
        swap and no network, in which a child ``python3`` (oom_score_adj 1000)
        allocates ``alloc_bytes`` (default 4x the cap, at least 256 MiB).  The
        shell survives the kill, prints ``child_exit_status <n>`` and then the
        container's own OOM counters (v1 ``memory.oom_control``, v2
        ``memory.events``) on stdout -- every stdout line is "key value", for
        ``runner.cgroup.parse_flat_keyed`` -- and exits with the child's
        status.  The cgroup vanishes with the container, hence reading it from
        inside.  The container (label ``io.nnrun.run-id=doctor-<random>``) is
        removed in every case.  Returns plain data: ``run_id``,
        ``container_exit_code`` (None on timeout), ``timed_out``, ``stdout``,
        ``stderr``, ``engine_oom_killed``, ``mem_bytes``, ``alloc_bytes``.
        """
        alloc = int(alloc_bytes or max(4 * mem_bytes, 256 * 1024 * 1024))
        child = ("import os\n"
                 "try:\n    open('/proc/self/oom_score_adj', 'w').write('1000')\nexcept OSError:\n    pass\n"
                 f"b = bytearray({alloc})\n")
        script = (f"python3 -c \"{child}\"; rc=$?; echo \"child_exit_status $rc\"; "
                  "cat /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null || cat /sys/fs/cgroup/memory.events; "
                  "exit $rc")
        result = self.run_throwaway(image, ["sh", "-c"], [script], mem_bytes, timeout_s, "doctor", pids_limit=64)
        return {**result, "alloc_bytes": alloc}

    def run_throwaway(self, image: str, entrypoint: list[str], command: list[str], mem_bytes: int,
                      timeout_s: float, run_id_prefix: str, pids_limit: int = 256,
                      tmpfs: dict[str, str] | None = None) -> dict:
        """Run a short command in a throw-away, hardened container and return what it printed.

        Memory == memory+swap, no network, read-only root, cap-drop ALL,
        no-new-privileges; labelled ``io.nnrun.run-id=<prefix>-<random>`` (and
        the test label when set); removed in every case.  Plain data back:
        ``run_id``, ``container_exit_code`` (None on timeout), ``timed_out``,
        ``stdout``, ``stderr``, ``engine_oom_killed``, ``mem_bytes``.
        """
        run_id = f"{run_id_prefix}-{os.urandom(6).hex()}"
        try:
            container = self._call(
                "create a container", self.client.containers.create, image,
                entrypoint=entrypoint, command=command, mem_limit=int(mem_bytes), memswap_limit=int(mem_bytes),
                labels={"io.nnrun.run-id": run_id,
                        **({"io.nnrun.test-id": os.environ["NNRUN_TEST_ID"]} if os.environ.get("NNRUN_TEST_ID") else {})},
                network_mode="none", detach=True, init=False, read_only=True, tmpfs=tmpfs or {"/tmp": "rw,size=64m"},
                cap_drop=["ALL"], security_opt=["no-new-privileges"], pids_limit=pids_limit)
        except docker.errors.NotFound:
            raise InfraError(f"image {image} not found", hint=SETUP_HINT) from None
        try:
            try:
                self._call("start the container", container.start)
            except docker.errors.NotFound as err:
                raise InfraError(f"container could not start: {_short(err)}") from err
            timed_out = False
            exit_code: int | None
            try:
                exit_code = self.wait(container.id, timeout_s)
            except TimeoutError:
                timed_out, exit_code = True, None
                self.kill(container.id)
            self._call("inspect the container", container.reload)
            stdout = self._call("read the output", container.logs, stdout=True, stderr=False)
            stderr = self._call("read the output", container.logs, stdout=False, stderr=True)
            return {
                "run_id": run_id,
                "container_exit_code": exit_code,
                "timed_out": timed_out,
                "stdout": stdout.decode("utf-8", "replace"),
                "stderr": stderr.decode("utf-8", "replace"),
                "engine_oom_killed": bool(container.attrs.get("State", {}).get("OOMKilled")),
                "mem_bytes": int(mem_bytes),
            }
        finally:
            self.remove(container.id)


def host_config_kwargs(spec: ContainerSpec) -> dict:
    """The Docker SDK ``containers.create`` arguments for a spec (also used by tests and compose checks)."""
    kwargs: dict = {
        "mem_limit": spec.mem_limit_bytes,
        "memswap_limit": spec.mem_limit_bytes,   # equal to the cap: no swap
        "environment": dict(spec.environment),
        "labels": dict(spec.labels),
        "volumes": {m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in spec.mounts},
        "detach": True,
        "init": False,                           # the supervisor is PID 1 on purpose
    }
    if spec.user:
        kwargs["user"] = spec.user
    if spec.name:
        kwargs["name"] = spec.name
    if spec.shm_size_bytes:
        kwargs["shm_size"] = spec.shm_size_bytes
    if spec.pids_limit:
        kwargs["pids_limit"] = spec.pids_limit
    if spec.network_disabled:
        kwargs["network_mode"] = "none"
    if spec.read_only_rootfs:
        kwargs["read_only"] = True
    if spec.tmpfs:
        kwargs["tmpfs"] = dict(spec.tmpfs)
    if spec.cap_drop_all:
        kwargs["cap_drop"] = ["ALL"]
    if spec.no_new_privileges:
        kwargs["security_opt"] = ["no-new-privileges"]
    return kwargs


def _short(err: Exception) -> str:
    text = getattr(err, "explanation", None) or str(err)
    return " ".join(str(text).split())[:300]
