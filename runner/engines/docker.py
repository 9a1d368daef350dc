"""The one module that imports the Docker SDK.

It turns Docker SDK objects and exceptions into the plain data of
:mod:`runner.engines.base` and nnrun's own errors.  Nothing connects at import time:
a :class:`DockerEngine` connects on first use.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import docker
import docker.errors
import requests.exceptions

from runner import __version__
from runner.engines.base import ContainerSpec, ContainerState, EngineInfo, ImageInfo
from runner.errors import BadInputError, InfraError
from runner.image import build_command_for

# Advice that holds for an installed nnrun (no checkout of its repository needed to follow it).
DAEMON_HINT = "Start the Docker daemon (e.g. `sudo systemctl start docker`) or set DOCKER_HOST to where one listens"
IMAGE_HINT = "build it with `nnrun image build`, or pass --image with an nnrun image this engine has"

ENGINES = ("docker", "podman")
PODMAN_HOST_ENV = "NNRUN_PODMAN_HOST"
# The socket nnrun looks at first for Podman's Docker-compatible API (scripts/ensure-podman.sh serves it there).
NNRUN_PODMAN_SOCKET = "/run/nnrun-podman.sock"
PODMAN_SERVICE_HINT = (f"Start it (e.g. as root `podman system service --time=0 unix://{NNRUN_PODMAN_SOCKET} &`) "
                       f"or set {PODMAN_HOST_ENV} to where it listens")

# Podman asks the OCI runtime for container rlimits above the limits of its own
# service process by default (nofile 1048576); where root lacks
# CAP_SYS_RESOURCE (this kind of machine) every start then fails with
# "error setting rlimit type 7 (nofile) / type 6 (nproc): operation not
# permitted".  nnrun asks for lower ones, for Podman only: nofile at the
# kernel's default hard limit, nproc (a per-uid count of tasks across the
# host, threads included) above any pids limit nnrun sets, so the container's
# pids cgroup is what binds.
PODMAN_NOFILE = 4096
PODMAN_NPROC_MIN = 8192


def _daemon_hint(base_url: str, engine: str | None = None) -> str:
    if engine == "podman":
        return f"is the Podman service running and is {base_url} the right address? {PODMAN_SERVICE_HINT}"
    return f"is dockerd running and is {base_url} the right address? {DAEMON_HINT}"


def _image_hint(engine: str | None, image: str) -> str:
    if engine == "podman":
        return (f"Podman has its own image store: build it there with `{build_command_for(image, 'podman')}`, or copy "
                f"it from Docker with `docker save {image} | podman load`, or pass --image with an image Podman has")
    if image != f"nnrun:{__version__}":
        return f"build it with `{build_command_for(image)}`, or pass --image with an nnrun image this engine has"
    return IMAGE_HINT


# In a rootless engine's user namespace, uid/gid 0 are the caller (see host_config_kwargs).
ROOTLESS_CALLER_USER = "0:0"


def podman_socket_candidates(uid: int | None = None, env: Mapping[str, str] | None = None) -> list[str]:
    """Where a Podman API socket usually is, most likely first for this user."""
    env = os.environ if env is None else env
    uid = os.getuid() if uid is None else uid
    rootless = f"{env.get('XDG_RUNTIME_DIR') or f'/run/user/{uid}'}/podman/podman.sock"
    rootful = [NNRUN_PODMAN_SOCKET, "/run/podman/podman.sock"]
    return rootful + [rootless] if uid == 0 else [rootless] + rootful


def podman_base_url(env: Mapping[str, str] | None = None, uid: int | None = None) -> str:
    """``$NNRUN_PODMAN_HOST``, else the first standard socket that exists, else nnrun's own socket path."""
    env = os.environ if env is None else env
    if env.get(PODMAN_HOST_ENV):
        return env[PODMAN_HOST_ENV]
    candidates = podman_socket_candidates(uid, env)
    for path in candidates:
        try:
            if Path(path).is_socket():
                return f"unix://{path}"
        except OSError:
            continue
    return f"unix://{candidates[0]}"


def is_podman(version: Mapping) -> bool:
    """Podman's /version names a "Podman Engine" component (and some builds say so in Platform.Name)."""
    names = [str((c or {}).get("Name", "")) for c in version.get("Components") or []]
    names.append(str((version.get("Platform") or {}).get("Name", "")))
    return any("podman" in n.lower() for n in names)


def engine_factory(name: str | None) -> Callable[[], DockerEngine]:
    """The Engine factory for ``--runtime``: docker (DOCKER_HOST or the default socket; a Podman
    service there is recognised as such) or podman ($NNRUN_PODMAN_HOST or the standard sockets)."""
    name = (name or "docker").lower()
    if name == "docker":
        return DockerEngine
    if name == "podman":
        return lambda: DockerEngine(base_url=podman_base_url(), expect="podman")
    raise BadInputError(f"--runtime must be one of {', '.join(ENGINES)} (got {name!r})")


class DockerEngine:
    """Docker (or Podman's Docker-compatible API) behind nnrun's Engine protocol.

    Which of the two answers is read from the server's version on connecting
    (``name``); ``expect="podman"`` refuses anything else.
    """

    def __init__(self, base_url: str | None = None, timeout_s: int = 60, expect: str | None = None) -> None:
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        self.timeout_s = timeout_s
        self.expect = expect
        self.name: str | None = None          # "docker" / "podman" once connected
        self._version: dict = {}
        self._client: docker.DockerClient | None = None
        self._rootless: bool | None = None    # rootless Podman (asked once, when a container is created)

    @property
    def _label(self) -> str:
        return "Podman" if (self.name or self.expect) == "podman" else "Docker"

    # -- connection ---------------------------------------------------------
    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            what = "Podman service" if self.expect == "podman" else "Docker daemon"
            try:
                client = docker.DockerClient(base_url=self.base_url, timeout=self.timeout_s)
                client.ping()
                version = client.version() or {}
            except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as err:
                raise InfraError(f"{what} not reachable at {self.base_url}",
                                 hint=_daemon_hint(self.base_url, self.expect)) from err
            name = "podman" if is_podman(version) else "docker"
            if self.expect and name != self.expect:
                client.close()
                raise InfraError(f"the engine at {self.base_url} is {name}, not {self.expect}",
                                 hint=_daemon_hint(self.base_url, self.expect))
            self.name, self._version, self._client = name, version, client
        return self._client

    def _call(self, what: str, fn, *args, **kwargs):
        """Run an SDK call and turn its failures into InfraError."""
        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound:
            raise
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as err:
            raise InfraError(f"{self._label} failed to {what}: {_short(err)}",
                             hint=_daemon_hint(self.base_url, self.name or self.expect)) from err

    # -- Engine protocol ----------------------------------------------------
    def info(self) -> EngineInfo:
        raw = self._call("report its info", self.client.info)
        version = self._version or self._call("report its version", self.client.version)
        name = self.name or ("podman" if is_podman(version) else "docker")
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
            raise InfraError(f"image {ref} not found{self._in_store()}", hint=_image_hint(self.name, ref)) from None
        return ImageInfo(ref=ref, image_id=img.id, labels=dict(img.labels or {}),
                         repo_digests=list(img.attrs.get("RepoDigests") or []))

    def has_image(self, ref: str) -> bool:
        try:
            self._call(f"inspect image {ref}", self.client.images.get, ref)
            return True
        except docker.errors.NotFound:
            return False

    def pull_image(self, ref: str, timeout_s: float = 90) -> None:
        """Pull ``ref`` (InfraError when no registry answers within ``timeout_s``)."""
        _ = self.client
        repo, tag = _split_ref(ref)
        try:
            client = docker.DockerClient(base_url=self.base_url, timeout=int(timeout_s))
        except docker.errors.DockerException as err:
            raise InfraError(f"{self._label} failed to pull {ref}: {_short(err)}") from err
        try:
            self._call(f"pull {ref}", client.images.pull, repo, tag=tag)
        except docker.errors.NotFound as err:
            raise InfraError(f"{ref} not found in its registry: {_short(err)}") from None
        finally:
            client.close()

    def import_image(self, tar_path: Path, ref: str) -> ImageInfo:
        """``docker import``: a root file system tarball as image ``ref``."""
        repo, tag = _split_ref(ref)
        answer = self._call(f"import {tar_path} as {ref}", self.client.api.import_image, src=str(tar_path),
                            repository=repo, tag=tag)
        # Podman (4.3) ignores the name of an import: tag the imported image by the id the engine answered.
        found = re.findall(r"sha256:[0-9a-f]{64}", str(answer))
        if found:
            self._call(f"tag the imported image as {ref}", self.client.api.tag, found[-1], repo, tag, force=True)
        return self.image(ref)

    def build_image(self, context: Path, dockerfile: str, tag: str, buildargs: Mapping[str, str],
                    labels: Mapping[str, str], progress: Callable[[str], None] | None = None,
                    nocache: bool = False) -> ImageInfo:
        """Build ``context`` (a folder; ``dockerfile`` relative to it) as ``tag``; every output line to ``progress``.

        The classic builder of the Engine API (what ``DOCKER_BUILDKIT=0 docker
        build`` runs), intermediate containers removed; no HTTP timeout (a RUN
        step may be silent for minutes).  A failed step is InfraError with the
        engine's message; its last output lines are in the error's ``output_tail``.
        """
        _ = self.client
        try:
            client = docker.APIClient(base_url=self.base_url, timeout=None)   # type: ignore[arg-type]
        except docker.errors.DockerException as err:
            raise InfraError(f"{self._label} failed to build {tag}: {_short(err)}") from err
        tail: list[str] = []
        image_id = None
        try:
            stream = self._call(f"build {tag}", client.build, path=str(context), dockerfile=dockerfile, tag=tag,
                                buildargs=dict(buildargs), labels=dict(labels) or None, rm=True, forcerm=True,
                                pull=False, nocache=nocache, decode=True, timeout=None)
            for chunk in _iterate(self, f"build {tag}", stream):
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error") or chunk.get("errorDetail"):
                    message = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message") or "build failed"
                    error = InfraError(f"{self._label} could not build {tag}: {' '.join(str(message).split())[:400]}",
                                       hint="the build output above says which step failed")
                    error.output_tail = tail[-20:]       # type: ignore[attr-defined]
                    raise error
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("ID"):
                    image_id = aux["ID"]
                text = chunk.get("stream") or chunk.get("status")
                if text:
                    for line in str(text).splitlines():
                        if line.strip():
                            tail = (tail + [line.rstrip()])[-20:]
                            if progress is not None:
                                progress(line.rstrip())
        finally:
            client.close()
        info = self.image(tag)
        if image_id and info.image_id != image_id:
            raise InfraError(f"{tag} is {info.image_id}, not the image just built ({image_id}): another build "
                             "tagged it meanwhile")
        return info

    def create(self, spec: ContainerSpec) -> str:
        client = self.client                  # connects, so self.name says which engine answers
        kwargs = host_config_kwargs(spec, engine=self.name or "docker", rootless=self._podman_rootless())
        try:
            container = self._call("create the container", client.containers.create,
                                   spec.image, command=spec.command, **kwargs)
        except docker.errors.NotFound:
            raise InfraError(f"image {spec.image} not found{self._in_store()}",
                             hint=_image_hint(self.name, spec.image)) from None
        return container.id

    def _podman_rootless(self) -> bool:
        """Whether the engine is Podman running rootless (as the caller, in a user namespace).

        Podman 4.3's Docker-compatible ``/info`` does not say so (its SecurityOptions list only seccomp, seen
        on a real rootless service), so ask Podman's own ``/libpod/info`` (``host.security.rootless``); the
        compatible ``name=rootless`` security option is the fallback.
        """
        if self.name != "podman":
            return False
        if self._rootless is None:
            api = self.client.api
            try:  # the SDK has no call for libpod's endpoints: its low-level get on the versioned path
                libpod = api._result(api._get(api._url("/libpod/info")), json=True) or {}
                self._rootless = bool(((libpod.get("host") or {}).get("security") or {}).get("rootless"))
            except (docker.errors.DockerException, requests.exceptions.RequestException, OSError, ValueError):
                self._rootless = is_rootless(self._call("report its info", self.client.info))
        return self._rootless

    def _in_store(self) -> str:
        return " in Podman's image store" if self.name == "podman" else ""

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
        """How many ``oom`` events the engine sent for the container: only a fallback when the cgroup
        counter could not be read.  Docker on cgroup v1 sends one per limit hit, not per kill; Podman
        sends one only when it thinks the container itself was OOM-killed (none for a killed child),
        and its events backend (file or journald) may be unavailable, which raises InfraError.  The
        stream ends at ``until``; a client with a short timeout keeps a silent engine from hanging nnrun.
        """
        _ = self.client
        try:
            client = docker.DockerClient(base_url=self.base_url, timeout=15)
        except docker.errors.DockerException as err:
            raise InfraError(f"{self._label} failed to read events: {_short(err)}") from err
        try:
            events = self._call("read events", client.events, since=int(since), until=int(until) + 1,
                                filters={"container": container_id, "event": "oom"}, decode=True)
            try:
                return self._call("read events", lambda: sum(1 for e in events if _is_oom_event(e, container_id)))
            finally:
                events.close()
        finally:
            client.close()

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
        client = self.client
        extra = podman_kwargs(pids_limit) if self.name == "podman" else {}
        try:
            container = self._call(
                "create a container", client.containers.create, image,
                entrypoint=entrypoint, command=command, mem_limit=int(mem_bytes), memswap_limit=int(mem_bytes),
                labels={"io.nnrun.run-id": run_id,
                        **({"io.nnrun.test-id": os.environ["NNRUN_TEST_ID"]} if os.environ.get("NNRUN_TEST_ID") else {})},
                network_mode="none", detach=True, init=False, read_only=True, tmpfs=tmpfs or {"/tmp": "rw,size=64m"},
                cap_drop=["ALL"], security_opt=["no-new-privileges"], pids_limit=pids_limit, **extra)
        except docker.errors.NotFound:
            raise InfraError(f"image {image} not found{self._in_store()}", hint=_image_hint(self.name, image)) from None
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


def podman_kwargs(pids_limit: int | None = None) -> dict:
    """What every container nnrun creates through Podman also gets: rlimits Podman can set."""
    nproc = max(PODMAN_NPROC_MIN, pids_limit or 0)
    return {"ulimits": [{"name": "nofile", "soft": PODMAN_NOFILE, "hard": PODMAN_NOFILE},
                        {"name": "nproc", "soft": nproc, "hard": nproc}]}


def _is_oom_event(event, container_id: str) -> bool:
    """An ``oom`` event of this container (the filters asked for just those; an engine may ignore them)."""
    if not isinstance(event, dict):
        return False
    if str(event.get("status") or event.get("Action") or "").lower() != "oom":
        return False
    ids = [str(i) for i in (event.get("id"), (event.get("Actor") or {}).get("ID")) if i]
    return not ids or any(container_id.startswith(i) or i.startswith(container_id) for i in ids)


def is_rootless(info: dict) -> bool:
    """Whether an engine's Docker-compatible ``/info`` lists the ``name=rootless`` security option."""
    return any(str(o) == "name=rootless" or str(o).startswith("name=rootless,")
               for o in (info or {}).get("SecurityOptions") or [])


def host_config_kwargs(spec: ContainerSpec, engine: str = "docker", rootless: bool = False) -> dict:
    """The Docker SDK ``containers.create`` arguments for a spec (also used by tests and compose checks).

    ``engine="podman"`` adds the rlimits Podman needs (:func:`podman_kwargs`).  Rootless Podman also runs
    the container as uid 0 of its user namespace, which *is* the caller on the host (no privilege: the
    capabilities are dropped as everywhere): any other uid there is one of the caller's subuids, which
    cannot write the caller's folders (seen on a real cgroup v2 host: the supervisor exited 1 before
    nnU-Net ran).  ``--userns keep-id`` would keep the uid, but the Docker SDK refuses that value.
    """
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
    if engine == "podman":
        kwargs.update(podman_kwargs(spec.pids_limit))
        if rootless and spec.user:
            kwargs["user"] = ROOTLESS_CALLER_USER
    return kwargs


def _split_ref(ref: str) -> tuple[str, str]:
    """``repo[:tag]`` -> (repo, tag); a port in the registry part is not a tag; no tag is ``latest``."""
    head, sep, tail = ref.rpartition(":")
    if sep and "/" not in tail:
        return head, tail
    return ref, "latest"


def _iterate(engine: DockerEngine, what: str, stream) -> Iterator:
    """A streamed API response, its connection failures turned into InfraError."""
    iterator = iter(stream)
    while True:
        try:
            item = engine._call(what, next, iterator)
        except StopIteration:
            return
        yield item


def _short(err: Exception) -> str:
    text = getattr(err, "explanation", None) or str(err)
    return " ".join(str(text).split())[:300]
