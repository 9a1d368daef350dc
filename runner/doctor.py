"""``nnrun doctor``: can this machine run nnrun?  Pure core, no printing.

:func:`run_checks` runs every check against an engine made by the given
factory (``runner.engines.docker.DockerEngine`` for real, a fake in tests) and
returns a :class:`DoctorReport`; :func:`render_doctor` and :func:`doctor_json`
are its human and JSON renderings.  Each check is ``ok``, ``warn`` or
``fail``, with a one-line detail and advice when not ok.  Doctor never raises:
a check that fails unexpectedly becomes a ``fail`` with the exception's text.
The exit code is 0 when no check failed (warnings allowed), else the infra
code (6).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import __version__
from runner.cgroup import detect_cgroup_version, parse_flat_keyed
from runner.errors import NnrunError, Outcome, exit_code_for
from runner.image import LABEL_LOCK_DIGEST, build_command_for, lock_digest
from runner.units import MIB, format_bytes

SCHEMA_VERSION = 1

OK, WARN, FAIL = "ok", "warn", "fail"
STATUSES = (OK, WARN, FAIL)

PROBE_MEM_BYTES = 64 * MIB
PROBE_TIMEOUT_S = 60.0
# Advice that holds for an installed nnrun (the engine's own hints say the same).
DAEMON_ADVICE = "start the Docker daemon (e.g. `sudo systemctl start docker`) or set DOCKER_HOST to where one listens"
IMAGE_ADVICE = "build it with `nnrun image build`, or pass --image with an nnrun image"
SWAP_ADVICE = ("swap is on: nnrun sets memory == memory+swap for its containers, "
               "but other processes may swap")
LABEL_NNRUN = "io.nnrun.version"
LABEL_NNUNET = "io.nnrun.nnunetv2-version"
LABEL_TORCH = "io.nnrun.torch-version"
LABEL_LOCK = LABEL_LOCK_DIGEST

NAME_DAEMON = "docker daemon"
NAME_CGROUP = "cgroup"
NAME_MEMORY = "host memory"
NAME_IMAGE = "image"
NAME_PROBE = "oom probe"
NAME_RAW = "raw folder"
NAME_PREPROCESSED = "preprocessed folder"


@dataclass
class Check:
    name: str
    status: str                      # ok / warn / fail
    detail: str                      # one line
    advice: str | None = None        # what to do, when not ok
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail,
                "advice": self.advice, "data": _plain(self.data)}


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return exit_code_for(Outcome.OK) if self.ok else exit_code_for(Outcome.INFRA)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass(frozen=True)
class ProbeResult:
    """What the OOM probe saw (built from the engine's plain dict)."""

    container_exit_code: int | None
    child_exit_status: int | None
    oom_kill: int | None              # the container cgroup's counter; None = not readable
    counters: dict
    timed_out: bool
    engine_oom_killed: bool | None
    mem_bytes: int
    alloc_bytes: int | None
    run_id: str | None
    stderr_tail: str
    parse_error: str | None = None

    @property
    def enforced(self) -> bool:
        """The child died of SIGKILL (137 from the shell) and the cgroup counted an OOM kill."""
        return self.child_exit_status == 137 and (self.oom_kill or 0) >= 1

    @classmethod
    def from_engine(cls, raw: Mapping[str, Any], mem_bytes: int) -> ProbeResult:
        counters: dict = {}
        parse_error = None
        try:
            counters = parse_flat_keyed(str(raw.get("stdout") or ""), "probe output")
        except NnrunError as err:
            parse_error = err.one_line()
        child = counters.pop("child_exit_status", None)
        container_exit = raw.get("container_exit_code")
        if child is None and parse_error is None:
            child = container_exit          # the script exits with the child's status
        stderr = " ".join(str(raw.get("stderr") or "").split())
        return cls(
            container_exit_code=container_exit,
            child_exit_status=child,
            oom_kill=counters.get("oom_kill"),
            counters=counters,
            timed_out=bool(raw.get("timed_out")),
            engine_oom_killed=raw.get("engine_oom_killed"),
            mem_bytes=int(raw.get("mem_bytes") or mem_bytes),
            alloc_bytes=raw.get("alloc_bytes"),
            run_id=raw.get("run_id"),
            stderr_tail=stderr[-200:],
            parse_error=parse_error,
        )

    def to_dict(self) -> dict:
        return {"enforced": self.enforced, "container_exit_code": self.container_exit_code,
                "child_exit_status": self.child_exit_status, "oom_kill": self.oom_kill,
                "counters": dict(self.counters), "timed_out": self.timed_out,
                "engine_oom_killed": self.engine_oom_killed, "mem_bytes": self.mem_bytes,
                "alloc_bytes": self.alloc_bytes, "run_id": self.run_id, "stderr_tail": self.stderr_tail,
                "parse_error": self.parse_error}


# --------------------------------------------------------------------------
# The checks


@dataclass
class _Context:
    engine_factory: Callable[[], Any]
    image: str
    raw: str | None
    preprocessed: str | None
    proc_root: Path
    cgroup_root: Path
    probe: bool
    probe_mem_bytes: int
    probe_timeout_s: float
    engine: Any = None
    info: Any = None                  # EngineInfo when the daemon answered
    image_info: Any = None            # ImageInfo when the image is there


def run_checks(engine_factory: Callable[[], Any], image: str, raw: str | os.PathLike | None,
               preprocessed: str | os.PathLike | None, proc_root: Path = Path("/proc"),
               cgroup_root: Path = Path("/sys/fs/cgroup"), probe: bool = True, *,
               env: Mapping[str, str] | None = None, probe_mem_bytes: int = PROBE_MEM_BYTES,
               probe_timeout_s: float = PROBE_TIMEOUT_S) -> DoctorReport:
    """Run every check and return the report; never raises (except KeyboardInterrupt & co.).

    ``raw`` / ``preprocessed`` override the ``nnUNet_raw`` / ``nnUNet_preprocessed``
    variables of ``env`` (default ``os.environ``).  ``probe=False`` skips the
    container that tests the memory cap (the check is then a warning).
    """
    env = os.environ if env is None else env
    ctx = _Context(engine_factory=engine_factory, image=image,
                   raw=_str_or_none(raw) or env.get("nnUNet_raw") or None,
                   preprocessed=_str_or_none(preprocessed) or env.get("nnUNet_preprocessed") or None,
                   proc_root=Path(proc_root), cgroup_root=Path(cgroup_root), probe=probe,
                   probe_mem_bytes=int(probe_mem_bytes), probe_timeout_s=float(probe_timeout_s))
    checks = [_guarded(name, fn, ctx) for name, fn in (
        (NAME_DAEMON, _check_daemon),
        (NAME_CGROUP, _check_cgroup),
        (NAME_MEMORY, _check_memory),
        (NAME_IMAGE, _check_image),
        (NAME_PROBE, _check_probe),
        (NAME_RAW, _check_raw),
        (NAME_PREPROCESSED, _check_preprocessed),
    )]
    return DoctorReport(checks)


def _guarded(name: str, fn: Callable[[_Context], Check], ctx: _Context) -> Check:
    try:
        check = fn(ctx)
        if check.status not in STATUSES:
            raise ValueError(f"check {name} returned status {check.status!r}")
        return check
    except NnrunError as err:
        return Check(name, FAIL, _one_line(err.message), err.hint or None, {"error": type(err).__name__})
    except Exception as err:  # noqa: BLE001 -- doctor must never crash
        return Check(name, FAIL, _one_line(f"unexpected error: {type(err).__name__}: {err}"),
                     "this is a bug in nnrun doctor or an unusual machine: please report it with this line",
                     {"error": type(err).__name__})


def _not_checked(name: str, why: str, advice: str) -> Check:
    return Check(name, FAIL, f"not checked: {why}", advice, {"checked": False})


def _check_daemon(ctx: _Context) -> Check:
    try:
        ctx.engine = ctx.engine_factory()
        info = ctx.engine.info()
    except NnrunError as err:
        base_url = getattr(ctx.engine, "base_url", None)
        return Check(NAME_DAEMON, FAIL, _one_line(err.message),
                     err.hint or DAEMON_ADVICE,
                     {"reachable": False, "base_url": base_url})
    ctx.info = info
    data = {"reachable": True, "engine": info.name, "server_version": info.server_version,
            "base_url": info.base_url, "kernel_version": info.kernel_version,
            "mem_total_bytes": info.mem_total_bytes}
    mem = f", {format_bytes(info.mem_total_bytes)}" if info.mem_total_bytes else ""
    kernel = f", kernel {info.kernel_version}" if info.kernel_version else ""
    return Check(NAME_DAEMON, OK, f"{info.name} {info.server_version} at {info.base_url}{kernel}{mem}", None, data)


def _is_local(base_url: str | None) -> bool:
    return bool(base_url) and str(base_url).startswith(("unix://", "npipe://"))


def _check_cgroup(ctx: _Context) -> Check:
    info = ctx.info
    base_url = info.base_url if info is not None else getattr(ctx.engine, "base_url", None)
    local = _is_local(base_url) if base_url else True
    host_version = None
    if local and ctx.cgroup_root.is_dir():
        host_version = detect_cgroup_version(ctx.cgroup_root)
    data = {"engine_cgroup_version": getattr(info, "cgroup_version", None),
            "cgroup_driver": getattr(info, "cgroup_driver", None),
            "host_cgroup_version": host_version, "engine_local": local, "cgroup_root": str(ctx.cgroup_root)}
    host_text = f"host: v{host_version} at {ctx.cgroup_root}" if host_version else (
        f"host: {ctx.cgroup_root} not found" if local else "host: not checked (remote engine)")
    if info is None:
        return Check(NAME_CGROUP, WARN, f"engine not reachable; {host_text}",
                     "fix the docker daemon check first", data)
    version, driver = info.cgroup_version, info.cgroup_driver or "unknown driver"
    if version is None:
        return Check(NAME_CGROUP, WARN, f"the engine did not report its cgroup version ({driver}); {host_text}",
                     "nnrun will look for the container's cgroup under both layouts; the oom probe tells whether "
                     "kills are counted", data)
    detail = f"v{version}, driver {driver}; {host_text}"
    if local and host_version is None:
        return Check(NAME_CGROUP, WARN, detail,
                     f"nnrun's host-side monitor reads containers' cgroups under {ctx.cgroup_root}; "
                     "mount cgroupfs there (the in-container supervisor still works)", data)
    if local and host_version != version:
        return Check(NAME_CGROUP, WARN, detail + " (engine and host disagree)",
                     "the engine may run in a VM or rootless: nnrun's host-side monitor may not find the "
                     "containers' cgroups; the in-container supervisor still reads them", data)
    if local and version == 1 and not (ctx.cgroup_root / "memory").is_dir():
        return Check(NAME_CGROUP, WARN, detail + f"; no memory controller at {ctx.cgroup_root / 'memory'}",
                     "mount the v1 memory controller, or boot with cgroup v2", data)
    return Check(NAME_CGROUP, OK, detail, None, data)


def read_meminfo(proc_root: Path) -> dict[str, int]:
    """``/proc/meminfo`` under ``proc_root`` as bytes (values in kB are converted)."""
    values: dict[str, int] = {}
    for line in (Path(proc_root) / "meminfo").read_text().splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit():
            continue
        n = int(parts[0])
        values[key.strip()] = n * 1024 if len(parts) > 1 and parts[1].lower() == "kb" else n
    return values


def _check_memory(ctx: _Context) -> Check:
    path = ctx.proc_root / "meminfo"
    if not path.exists():
        return Check(NAME_MEMORY, WARN, f"{path} not found: host memory unknown",
                     "nnrun refuses --mem above the Docker host's memory either way", {"meminfo": str(path)})
    info = read_meminfo(ctx.proc_root)
    if "MemTotal" not in info:
        return Check(NAME_MEMORY, WARN, f"{path} has no MemTotal", None, {"meminfo": str(path)})
    total, swap = info["MemTotal"], info.get("SwapTotal", 0)
    data = {"mem_total_bytes": total, "swap_total_bytes": swap,
            "mem_available_bytes": info.get("MemAvailable")}
    avail = f" ({format_bytes(info['MemAvailable'])} available)" if info.get("MemAvailable") is not None else ""
    if swap > 0:
        return Check(NAME_MEMORY, WARN, f"{format_bytes(total)} RAM{avail}, {format_bytes(swap)} swap",
                     SWAP_ADVICE, data)
    return Check(NAME_MEMORY, OK, f"{format_bytes(total)} RAM{avail}, no swap", None, data)


def image_advice(image: str, engine: str | None = None) -> str:
    """What to do about a missing image: the one command that builds it, or another --image."""
    command = build_command_for(image, engine)
    if command == "nnrun image build":
        return IMAGE_ADVICE
    return f"build it with `{command}`, or pass --image with an nnrun image"


def _check_image(ctx: _Context) -> Check:
    if ctx.info is None:
        return _not_checked(NAME_IMAGE, "the Docker daemon is not reachable", "fix the docker daemon check first")
    try:
        img = ctx.engine.image(ctx.image)
    except NnrunError as err:
        # Podman has its own image store: the engine's hint says how to fill it.
        advice = err.hint if ctx.info.name == "podman" and err.hint else image_advice(ctx.image)
        return Check(NAME_IMAGE, FAIL, _one_line(err.message), advice, {"image": ctx.image, "present": False})
    ctx.image_info = img
    return evaluate_image(ctx.image, img.image_id, dict(img.labels or {}), lock_digest(),
                          engine=ctx.info.name if ctx.info.name == "podman" else None)


def evaluate_image(image: str, image_id: str | None, labels: Mapping[str, str], host_lock_digest: str | None,
                   engine: str | None = None) -> Check:
    """The image check from the image's labels: an nnrun image of this version, built from this nnrun's lock."""
    versions = {"nnrun": labels.get(LABEL_NNRUN), "nnunetv2": labels.get(LABEL_NNUNET),
                "torch": labels.get(LABEL_TORCH)}
    image_lock = labels.get(LABEL_LOCK) or None
    data = {"image": image, "present": True, "image_id": image_id, "versions": versions,
            "expected_nnrun_version": __version__, "lock_digest": image_lock, "expected_lock_digest": host_lock_digest,
            "lock_matches": bool(image_lock) and image_lock == host_lock_digest}
    shown = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    detail = f"{image} ({_short_id(image_id)}): {shown or 'no io.nnrun.* version labels'}"
    rebuild = build_command_for(image, engine)
    if versions["nnrun"] is None:
        return Check(NAME_IMAGE, WARN, detail + "; not labelled as an nnrun image",
                     f"build the nnrun image with `{rebuild}`, or pass --image with one", data)
    problems = []
    if versions["nnrun"] != __version__:
        problems.append(f"this nnrun is {__version__}")
    if host_lock_digest is None:
        problems.append("this nnrun carries no image lock (an incomplete install)")
    elif image_lock is None:
        problems.append("the image has no lock digest label (built before the lock, or not by nnrun image build)")
    elif image_lock != host_lock_digest:
        problems.append(f"its package lock {_short_digest(image_lock)} is not this nnrun's "
                        f"{_short_digest(host_lock_digest)}")
    if problems:
        return Check(NAME_IMAGE, WARN, detail + "; " + "; ".join(problems),
                     f"rebuild the image with `{rebuild}`: its supervisor and packages may not match this nnrun", data)
    return Check(NAME_IMAGE, OK, f"{detail}, lock {_short_digest(image_lock)}", None, data)


_NOT_ENFORCED_ADVICE = ("the kernel does not enforce container memory limits: enable the memory cgroup controller and "
                        "swap accounting (kernel command line `cgroup_enable=memory swapaccount=1`), then restart "
                        "Docker; nnrun cannot diagnose OOM kills until then")


def _check_probe(ctx: _Context) -> Check:
    if not ctx.probe:
        return Check(NAME_PROBE, WARN, "not run (probe disabled)",
                     "run nnrun doctor with the probe to test that the memory cap really OOM-kills",
                     {"checked": False})
    if ctx.info is None:
        return _not_checked(NAME_PROBE, "the Docker daemon is not reachable", "fix the docker daemon check first")
    if ctx.image_info is None:
        return _not_checked(NAME_PROBE, f"image {ctx.image} is not available", "fix the image check first")
    raw = ctx.engine.oom_probe(ctx.image, ctx.probe_mem_bytes, timeout_s=ctx.probe_timeout_s)
    return evaluate_probe(ProbeResult.from_engine(raw, ctx.probe_mem_bytes))


def evaluate_probe(result: ProbeResult) -> Check:
    """The oom probe check from what the probe saw."""
    data = result.to_dict()
    cap = format_bytes(result.mem_bytes)
    alloc = format_bytes(int(result.alloc_bytes)) if result.alloc_bytes else "more than the cap"
    what = f"allocating {alloc} under a {cap} cap"
    facts = f"exit {result.child_exit_status}, oom_kill {_counter(result.oom_kill)}"
    if result.timed_out:
        return Check(NAME_PROBE, FAIL, f"{what}: still running after the timeout, killed",
                     "the container neither finished nor was OOM-killed: is the machine overloaded, "
                     "or swap used despite memory == memory+swap?", data)
    if result.parse_error:
        return Check(NAME_PROBE, FAIL, f"{what}: unexpected probe output ({result.parse_error})",
                     "the image needs sh and python3 (use the nnrun image)", data)
    if result.enforced:
        return Check(NAME_PROBE, OK, f"{what}: OOM-killed ({facts})", None, data)
    if result.child_exit_status == 137 and result.oom_kill is None:
        return Check(NAME_PROBE, WARN, f"{what}: SIGKILLed, but the cgroup has no oom_kill counter ({facts})",
                     "this kernel does not count OOM kills (v1 needs kernel >= 4.13): nnrun falls back to "
                     "Docker's OOM flag, which is less reliable", data)
    if result.child_exit_status == 137:
        return Check(NAME_PROBE, FAIL, f"{what}: SIGKILLed without an OOM kill counted ({facts})",
                     "something other than the OOM killer kills processes in containers here: nnrun would "
                     "report OOM kills as `killed`", data)
    if result.child_exit_status == 127:
        return Check(NAME_PROBE, FAIL, f"{what}: python3 not found in the image ({facts})",
                     "the probe needs python3 in the image: pass --image with the nnrun image", data)
    if result.child_exit_status == 0:
        return Check(NAME_PROBE, FAIL, f"{what}: succeeded, the cap is not enforced ({facts})",
                     _NOT_ENFORCED_ADVICE, data)
    tail = f"; stderr: {result.stderr_tail}" if result.stderr_tail else ""
    return Check(NAME_PROBE, FAIL, f"{what}: exited without an OOM kill ({facts}){tail}",
                 _NOT_ENFORCED_ADVICE, data)


def _check_raw(ctx: _Context) -> Check:
    if not ctx.raw:
        return Check(NAME_RAW, WARN, "not set", "set nnUNet_raw or pass --raw DIR to nnrun preprocess",
                     {"path": None})
    path = _resolved(ctx.raw)
    data: dict = {"path": str(path), "exists": path.exists()}
    if not path.exists():
        return Check(NAME_RAW, FAIL, f"{path} does not exist", "fix nnUNet_raw / --raw, or create the folder", data)
    if not path.is_dir():
        return Check(NAME_RAW, FAIL, f"{path} is not a folder", "nnUNet_raw / --raw must name a folder", data)
    data["readable"] = os.access(path, os.R_OK | os.X_OK)
    if not data["readable"]:
        return Check(NAME_RAW, FAIL, f"{path} is not readable", f"give your user read access to {path}", data)
    datasets = sorted(p.name for p in path.iterdir() if p.is_dir() and p.name.startswith("Dataset"))
    data["datasets"] = datasets
    if not datasets:
        return Check(NAME_RAW, WARN, f"{path}: readable, no Dataset* folders",
                     "put DatasetXXX_Name folders here (nnrun make-demo --raw DIR writes a demo one)", data)
    return Check(NAME_RAW, OK, f"{path}: readable, {len(datasets)} dataset(s)", None, data)


def _check_preprocessed(ctx: _Context) -> Check:
    if not ctx.preprocessed:
        return Check(NAME_PREPROCESSED, WARN, "not set",
                     "set nnUNet_preprocessed or pass --preprocessed DIR to nnrun preprocess", {"path": None})
    path = _resolved(ctx.preprocessed)
    data: dict = {"path": str(path), "exists": path.exists()}
    if ctx.raw and path == _resolved(ctx.raw):
        return Check(NAME_PREPROCESSED, FAIL, f"{path} is also the raw folder",
                     "the raw and preprocessed folders must differ", data)
    if not path.exists():
        parent = _nearest_existing(path)
        data["creatable"] = parent is not None and os.access(parent, os.W_OK | os.X_OK)
        if data["creatable"]:
            return Check(NAME_PREPROCESSED, WARN, f"{path} does not exist yet (nnrun will create it)",
                         "check the path is right (nnUNet_preprocessed / --preprocessed)", data)
        return Check(NAME_PREPROCESSED, FAIL, f"{path} does not exist and cannot be created",
                     f"create it, or give your user write access to {parent}", data)
    if not path.is_dir():
        return Check(NAME_PREPROCESSED, FAIL, f"{path} is not a folder",
                     "nnUNet_preprocessed / --preprocessed must name a folder", data)
    data["readable"] = os.access(path, os.R_OK | os.X_OK)
    data["writable"] = os.access(path, os.W_OK | os.X_OK)
    if not data["readable"] or not data["writable"]:
        missing = " and ".join(w for w, ok in (("readable", data["readable"]), ("writable", data["writable"]))
                               if not ok)
        return Check(NAME_PREPROCESSED, FAIL, f"{path} is not {missing}",
                     f"give your user read and write access to {path}, or choose another folder", data)
    return Check(NAME_PREPROCESSED, OK, f"{path}: readable and writable", None, data)


# --------------------------------------------------------------------------
# Renderings


def render_doctor(report: DoctorReport) -> str:
    """One line per check (status, name, detail in aligned columns), advice under non-ok checks."""
    name_w = max((len(c.name) for c in report.checks), default=0)
    status_w = max(len(s) for s in STATUSES)
    lines = []
    for c in report.checks:
        lines.append(f"  {c.status:<{status_w}}  {c.name:<{name_w}}  {_one_line(c.detail)}")
        if c.status != OK and c.advice:
            lines.append(f"  {'':<{status_w}}  {'':<{name_w}}  advice: {_one_line(c.advice)}")
    n = {s: sum(1 for c in report.checks if c.status == s) for s in STATUSES}
    summary = f"{n[OK]} ok, {n[WARN]} warn, {n[FAIL]} fail"
    verdict = "nnrun can run on this machine" if report.ok else "nnrun cannot run on this machine yet"
    lines.append(f"nnrun doctor: {verdict} ({summary}); exit code {report.exit_code}")
    return "\n".join(lines)


def doctor_json(report: DoctorReport) -> dict:
    return {"schema_version": SCHEMA_VERSION, "nnrun_version": __version__, "ok": report.ok,
            "exit_code": report.exit_code, "checks": [c.to_dict() for c in report.checks]}


# --------------------------------------------------------------------------
# Helpers


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _str_or_none(value: str | os.PathLike | None) -> str | None:
    return None if value is None or str(value) == "" else os.fspath(value)


def _short_id(image_id: str | None) -> str:
    if not image_id:
        return "?"
    return image_id.split(":", 1)[-1][:12]


def _short_digest(digest: str | None) -> str:
    if not digest:
        return "?"
    algo, _, hexdigest = digest.partition(":")
    return f"{algo}:{hexdigest[:12]}" if hexdigest else digest[:12]


def _counter(value: int | None) -> str:
    return "unreadable" if value is None else str(value)


def _resolved(value: str) -> Path:
    """The folder as nnrun preprocess resolves it (``~`` expanded, absolute, links followed)."""
    path = Path(value).expanduser()
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _nearest_existing(path: Path) -> Path | None:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return None


def _plain(value: Any) -> Any:
    """JSON-ready copy: Paths and other objects become strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
