"""``--runtime host``: nnrun's supervisor, agent and nnU-Net as processes on this node.

HPC nodes rarely have Docker.  Under a batch scheduler the job already has a
memory cgroup with a hard limit (Slurm's ``--mem`` with ``task/cgroup``), so
the cap is the job's, and nnrun only needs to run the same supervisor and
agent there: the same events, status file and diagnosis as in a container.

This engine implements nnrun's :class:`~runner.engines.base.Engine` protocol with
plain subprocesses, so :mod:`runner.run.preprocess` drives it exactly like Docker:

* the container paths of the :class:`~runner.engines.base.ContainerSpec` (``/data/raw``,
  ``/data/preprocessed``, the run folder, ``/tmp``) are mapped into a private
  folder of symlinks to the real folders, and the environment and command are
  rewritten to those paths (nnU-Net sees the same layout as in the image);
* "the container's cgroup" is this process's own memory cgroup, read from
  ``/proc/self/cgroup``; a run without a memory limit there is refused, since
  nothing would enforce ``--mem``;
* the image is a Python interpreter that has nnunetv2 (``--host-python``).

It runs as the calling user (no uid switch) and never needs root.
"""
from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from runner.cgroup import DEFAULT_ROOT, detect_cgroup_version, process_memory_cgroup, read_memory_counters
from runner.engines.base import ContainerSpec, ContainerState, EngineInfo, ImageInfo
from runner.errors import CgroupReadError, InfraError
from runner.rundir import CGROUP_DIR_ENV, HOST_PYTHON_ENV

HOST_ENV_HINT = ("pass --host-python PATH (or set NNRUN_HOST_PYTHON) to a Python with nnunetv2 and psutil installed, "
                 "e.g. a venv: `python3 -m venv ENV && ENV/bin/pip install nnunetv2 psutil`")
# The package folder that holds runner/, put on the payload's PYTHONPATH (the image has it in /opt/nnrun).
RUNNER_PARENT = str(Path(__file__).resolve().parents[2])
# Passed through from the caller's environment (a Slurm task's own variables included).
_PASS_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
             "SLURM_JOB_NAME", "SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS")


def default_host_python() -> str:
    return os.environ.get(HOST_PYTHON_ENV) or sys.executable


class _Process:
    def __init__(self, root: Path, argv: list[str], env: dict[str, str], cwd: str) -> None:
        self.root, self.argv, self.env, self.cwd = root, argv, env, cwd
        self.popen: subprocess.Popen | None = None


class HostEngine:
    """Runs a ContainerSpec as a process tree on this node, in this process's memory cgroup."""

    def __init__(self, python: str | None = None, cgroup_root: Path = DEFAULT_ROOT,
                 proc_cgroup: Path = Path("/proc/self/cgroup")) -> None:
        self.python = python or default_host_python()
        self.cgroup_root = Path(cgroup_root)
        self.proc_cgroup = Path(proc_cgroup)
        self._processes: dict[str, _Process] = {}

    # -- where the cap comes from -------------------------------------------
    def own_cgroup_dir(self) -> Path:
        try:
            return process_memory_cgroup(self.proc_cgroup.read_text(), self.cgroup_root)
        except OSError as err:
            raise InfraError(f"cannot read {self.proc_cgroup}: {err.strerror}") from None

    def limit_bytes(self) -> int | None:
        try:
            return read_memory_counters(self.own_cgroup_dir()).limit_bytes
        except CgroupReadError as err:
            raise InfraError(f"--runtime host: cannot read this job's memory cgroup: {err.one_line()}",
                             hint="run it inside a job with a memory limit (Slurm --mem with task/cgroup)") from None

    def cgroup_dir(self, container_id: str) -> Path | None:
        """The cgroup the host sampler reads: ours, shared with the payload."""
        return self.own_cgroup_dir()

    # -- Engine protocol ----------------------------------------------------
    def info(self) -> EngineInfo:
        limit = self.limit_bytes()
        if limit is None:
            raise InfraError("--runtime host found no memory limit on this process's cgroup "
                             f"({self.own_cgroup_dir()}): nothing would enforce --mem",
                             hint="run it as a Slurm task with --mem (TaskPlugin=task/cgroup, "
                                  "ConstrainRAMSpace=yes), or use --runtime docker")
        version = detect_cgroup_version(self.cgroup_root)
        return EngineInfo(name="host", server_version=platform.python_version(), mem_total_bytes=limit,
                          cgroup_version=version, cgroup_driver=None, kernel_version=platform.release(),
                          base_url=f"host:{self.own_cgroup_dir()}")

    def image(self, ref: str) -> ImageInfo:
        """The 'image' is the host Python: it must import nnunetv2 (its versions become the labels)."""
        probe = ("import json, importlib.metadata as m, sys\n"
                 "v = {}\n"
                 "for p in ('nnunetv2', 'torch', 'blosc2'):\n"
                 "    try: v[p] = m.version(p)\n"
                 "    except m.PackageNotFoundError: v[p] = None\n"
                 "import nnunetv2\n"
                 "print(json.dumps({'python': sys.version.split()[0], 'executable': sys.executable, **v}))\n")
        try:
            out = subprocess.run([self.python, "-c", probe], capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise InfraError(f"--host-python {self.python} does not exist", hint=HOST_ENV_HINT) from None
        except (OSError, subprocess.TimeoutExpired) as err:
            raise InfraError(f"--host-python {self.python} did not run: {err}", hint=HOST_ENV_HINT) from None
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no output"])[-1]
            raise InfraError(f"--host-python {self.python} cannot import nnunetv2 ({last})", hint=HOST_ENV_HINT)
        versions = json.loads(out.stdout.strip().splitlines()[-1])
        labels = {"io.nnrun.version": _runner_version(), "io.nnrun.nnunetv2-version": versions.get("nnunetv2") or "",
                  "io.nnrun.torch-version": versions.get("torch") or "", "io.nnrun.python": versions["python"]}
        return ImageInfo(ref=f"host:{versions['executable']}", image_id=f"host-python:{versions['executable']}",
                         labels=labels, repo_digests=[])

    def create(self, spec: ContainerSpec) -> str:
        container_id = secrets.token_hex(32)
        root = Path(tempfile.mkdtemp(prefix=f"nnrun-host-{container_id[:12]}-"))
        targets: dict[str, Path] = {}
        for mount in spec.mounts:
            link = root / mount.target.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.abspath(mount.source), link)
            targets[mount.target] = link
        for target in spec.tmpfs:                 # /tmp: a private folder (no tmpfs size cap here)
            path = root / target.lstrip("/")
            path.mkdir(parents=True, exist_ok=True)
            targets[target] = path
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.update({k: map_container_path(v, targets, root) for k, v in spec.environment.items()})
        env["PYTHONPATH"] = os.pathsep.join([RUNNER_PARENT, *filter(None, [os.environ.get("PYTHONPATH")])])
        env[CGROUP_DIR_ENV] = str(self.own_cgroup_dir())    # the supervisor reads the job's cgroup
        command = [self.python if a == "python3" else map_container_path(a, targets, root) for a in spec.command]
        argv = [self.python, "-m", "runner.incontainer.supervisor", *command]
        cwd = str(targets.get("/tmp", root))
        self._processes[container_id] = _Process(root, argv, env, cwd)
        return container_id

    def start(self, container_id: str) -> None:
        proc = self._get(container_id)
        try:
            proc.popen = subprocess.Popen(proc.argv, env=proc.env, cwd=proc.cwd, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        except OSError as err:
            raise InfraError(f"cannot start {proc.argv[0]}: {err.strerror}", hint=HOST_ENV_HINT) from None

    def state(self, container_id: str) -> ContainerState:
        proc = self._get(container_id)
        p = proc.popen
        code = None if p is None else p.poll()
        running = p is not None and code is None
        return ContainerState(container_id=container_id, status="running" if running else "exited",
                              running=running, exit_code=None if code is None else _exit_status(code),
                              oom_killed=False, pid=p.pid if p else None, error=None)

    def wait(self, container_id: str, timeout_s: float | None = None) -> int:
        p = self._get(container_id).popen
        if p is None:
            raise InfraError("the host process was never started")
        try:
            return _exit_status(p.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"host process still running after {timeout_s} s") from None

    def logs(self, container_id: str) -> Iterator[bytes]:
        p = self._get(container_id).popen
        if p is None or p.stdout is None:
            return
        while True:
            chunk = p.stdout.read1(65536) if hasattr(p.stdout, "read1") else p.stdout.read(4096)
            if not chunk:
                return
            yield chunk

    def stop(self, container_id: str, timeout_s: int = 10) -> None:
        """SIGTERM to the supervisor (it passes it on to nnU-Net), SIGKILL to the group after timeout_s."""
        p = self._get(container_id).popen
        if p is None or p.poll() is not None:
            return
        _signal_group(p.pid, signal.SIGTERM)
        timer = threading.Timer(timeout_s, _signal_group, args=(p.pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    def remove(self, container_id: str) -> None:
        proc = self._processes.pop(container_id, None)
        if proc is None:
            return
        if proc.popen is not None and proc.popen.poll() is None:
            _signal_group(proc.popen.pid, signal.SIGKILL)
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if proc.popen is not None and proc.popen.stdout is not None:
            proc.popen.stdout.close()
        # The mounts are symlinks: rmtree unlinks them and never follows them into the data.
        shutil.rmtree(proc.root, ignore_errors=True)

    def oom_event_count(self, container_id: str, since: float, until: float) -> int:
        return 0            # no engine events: the cgroup counter is the only evidence (as it should be)

    def list_containers(self, label: str) -> list[str]:
        return []           # processes of a dead nnrun end with their job

    def run_throwaway(self, image: str, entrypoint: list[str], command: list[str], mem_bytes: int,
                      timeout_s: float, run_id_prefix: str, pids_limit: int = 256,
                      tmpfs: dict[str, str] | None = None) -> dict:
        """A short command with the host Python (the estimate's baseline probe), in this job's cgroup.

        ``/tmp/`` in its arguments maps to a private folder, as the container's tmpfs would.
        """
        run_id = f"{run_id_prefix}-{os.urandom(6).hex()}"
        tmp = tempfile.mkdtemp(prefix="nnrun-probe-")
        argv = [self.python if a == "python3" else a.replace("/tmp/", tmp + "/") for a in [*entrypoint, *command]]
        env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
        env.update({"PYTHONPATH": RUNNER_PARENT, "HOME": tmp, "PYTHONUNBUFFERED": "1"})
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=tmp, env=env)
            code, stdout, stderr, timed_out = _exit_status(out.returncode), out.stdout, out.stderr, False
        except subprocess.TimeoutExpired as err:
            code, timed_out = None, True
            stdout, stderr = _text(err.stdout), _text(err.stderr)
        except OSError as err:
            raise InfraError(f"cannot run {argv[0]}: {err.strerror}", hint=HOST_ENV_HINT) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {"run_id": run_id, "container_exit_code": code, "timed_out": timed_out, "stdout": stdout,
                "stderr": stderr, "engine_oom_killed": False, "mem_bytes": int(mem_bytes)}

    def _get(self, container_id: str) -> _Process:
        try:
            return self._processes[container_id]
        except KeyError:
            raise InfraError(f"no host process {container_id[:12]}") from None


def map_container_path(value: str, targets: dict[str, Path], root: Path) -> str:
    """A container path in an argument or variable -> the same path under the private root.

    ``/data/raw`` (a parent of the mount ``/data/raw/<Dataset>``) maps to the
    folder that holds the symlink; ``/tmp/x`` maps under the private /tmp.
    Anything that is not under a mapped path is returned unchanged.
    """
    if not value.startswith("/"):
        return value
    for target in sorted(targets, key=len, reverse=True):
        if value == target or value.startswith(target.rstrip("/") + "/"):
            return str(root / value.lstrip("/"))
    for target in targets:
        if target.startswith(value.rstrip("/") + "/"):        # a parent folder of a mount
            return str(root / value.lstrip("/"))
    return value


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)


def _exit_status(returncode: int) -> int:
    """Popen's -N (killed by signal N) as a container engine reports it: 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _runner_version() -> str:
    from runner import __version__
    return __version__
