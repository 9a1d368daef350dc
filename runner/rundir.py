"""The run-folder protocol: what the host and the code in the container exchange.

One run of nnU-Net has a run folder (``<preprocessed dataset>/.nnrun/runs/<run id>``
on the host, ``/nnrun/run`` in the container).  The supervisor and the agent
write into it, the host reads it while the run goes and after.  Every file
name, every environment variable the host sets for the container, and the
records that cross this boundary (the supervisor's ``status.json``, its
``worker_exit`` events) are defined here once, so both sides spell them the
same way.

Standard library only: the image imports this module (``runner.incontainer``).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from runner.cgroup import own_cgroup_dir

# -- files in the run folder ---------------------------------------------------------------
STATUS_FILE = "status.json"          # the supervisor's final status (SupervisorStatus)
HOST_ACK_FILE = "host-ack"           # the host has read the cgroup once more: the supervisor may exit
EVENTS_FILE = "events.jsonl"         # the supervisor's events, one JSON object a line
AGENT_EVENTS_FILE = "agent.jsonl"    # the agent's events from inside nnU-Net's processes (cases)
NNUNET_LOG = "nnunet.log"            # nnU-Net's own output
TIMELINE_FILE = "timeline.jsonl"     # the host's cgroup readings, ~10 Hz
REPORT_FILE = "report.json"          # the run's report (runner/schema/report.schema.json)
MANIFEST_FILE = "manifest.json"      # what ran, where, with which versions
PLOT_FILE = "memory.png"             # memory over time, cases and phases
SCHEDULE_FILE = "schedule.json"      # the memory-aware admission plan for the agent
WARM_FILE = "warm.json"              # workers the agent starts while nnU-Net's main process plans
FAULTS_DIR = "faults"                # faulthandler's dump of each nnU-Net process that crashed: <pid>.log

# -- in the preprocessed dataset folder ----------------------------------------------------
NNRUN_DIR = ".nnrun"                 # nnrun's own folder beside nnU-Net's outputs
ACTIVE_FILE = "active.json"          # in NNRUN_DIR: the run in progress (left behind only if nnrun died)

# -- environment the host sets for the container (and the agent for nnU-Net's workers) -----
CGROUP_DIR_ENV = "NNRUN_CGROUP_DIR"              # --runtime host: the job's cgroup, for the supervisor
AGENT_EVENTS_ENV = "NNRUN_AGENT_EVENTS"          # where the agent appends its events
PHASE_ENV = "NNRUN_AGENT_PHASE"                  # the phase a worker runs in (set by the agent)
CONFIGURATION_ENV = "NNRUN_AGENT_CONFIGURATION"  # the configuration a worker preprocesses
FILE_ENDING_ENV = "NNRUN_FILE_ENDING"
RESUME_ENV = "NNRUN_RESUME"                      # "1": keep complete cases, stage configurations
CLEAN_ENV = "NNRUN_CLEAN"                        # "1": start over (--clean)
SCHEDULE_ENV = "NNRUN_SCHEDULE"                  # fixed | memory
SCHEDULE_FILE_ENV = "NNRUN_SCHEDULE_FILE"        # the admission plan (SCHEDULE_FILE) as the container sees it
HOST_PYTHON_ENV = "NNRUN_HOST_PYTHON"            # --runtime host: a Python with nnunetv2
# Test-only hooks, passed through from the host's environment (never in rendered manifests).
TEST_KILL_AT_ENV = "NNRUN_TEST_KILL_AT"          # SIGKILL nnU-Net at a named point
THRASH_WINDOW_ENV = "NNRUN_THRASH_WINDOW_S"    # seconds of thrashing at the cap before nnU-Net is ended (0: off)
TEST_OOM_VICTIM_ENV = "NNRUN_TEST_OOM_VICTIM"    # make the kernel pick this process: worker | main
TEST_SHM_FILL_ENV = "NNRUN_TEST_SHM_FILL"        # a worker maps this many bytes of /dev/shm before its case
TEST_THRASH_ENV = "NNRUN_TEST_THRASH"          # a worker fills the cap to this far below it, then re-reads a file
TEST_HOOK_ENVS = (TEST_OOM_VICTIM_ENV, TEST_KILL_AT_ENV, TEST_SHM_FILL_ENV, TEST_THRASH_ENV)

SUPERVISOR_SCHEMA = 1


def run_cgroup_dir() -> Path:
    """The memory cgroup that caps this run's processes: the job's, as the host found it (``--runtime host``
    sets CGROUP_DIR_ENV), else the container's own."""
    given = os.environ.get(CGROUP_DIR_ENV)
    return Path(given) if given else own_cgroup_dir()

# -- event kinds (events.jsonl and agent.jsonl) ------------------------------------------------
EV_SUPERVISOR_START = "supervisor_start"
EV_CHILD_START = "child_start"
EV_CHILD_EXIT = "child_exit"
EV_PHASE = "phase"
EV_OOM_KILL = "oom_kill"
EV_WORKER_START = "worker_start"
EV_WORKER_EXIT = "worker_exit"
EV_WATCHDOG = "watchdog"
EV_THRASHING = "thrashing"           # the supervisor ended nnU-Net: it thrashed at the cap
EV_CASE_START = "case_start"
EV_CASE_END = "case_end"
EV_CASE_ERROR = "case_error"
EV_WORKER_DIED = "worker_died"       # nnrun's pool saw a worker die: worker_pid, exitcode (negative: signal)


@dataclass(frozen=True)
class WorkerExitRecord:
    """A worker process of nnU-Net vanished (the supervisor's ``worker_exit`` event, and status.json)."""

    pid: int
    t: float
    main_alive: bool
    last_rss_bytes: int | None = None
    phase: str | None = None
    configuration: str | None = None
    oom_kill_before: int | None = None     # the cgroup's OOM-kill counter at the poll before it vanished
    oom_kill_after: int | None = None      # and at the poll that saw it gone

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> WorkerExitRecord:
        return cls(pid=int(data["pid"]), t=float(data.get("t") or 0.0), main_alive=bool(data.get("main_alive")),
                   last_rss_bytes=data.get("last_rss_bytes"), phase=data.get("phase"),
                   configuration=data.get("configuration"), oom_kill_before=data.get("oom_kill_before"),
                   oom_kill_after=data.get("oom_kill_after"))


@dataclass(frozen=True)
class Thrashing:
    """The supervisor's thrashing watch fired (:mod:`runner.incontainer.thrash`): how long the cgroup sat
    at the cap, and the evidence.  nnU-Net was ended then; the host reports it as an OOM."""

    since: float                       # the first reading of this stretch at the cap
    seconds: float                     # from then to the verdict
    reread_rate: float | None           # major faults per second over the window
    stall_share: float | None          # v2: share of the window every task stalled on memory
    limit_bytes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Thrashing:
        return cls(since=float(data["since"]), seconds=float(data["seconds"]), reread_rate=data.get("reread_rate"),
                   stall_share=data.get("stall_share"), limit_bytes=int(data["limit_bytes"]))


@dataclass
class SupervisorStatus:
    """``status.json``: what the supervisor knows when nnU-Net has ended.

    ``partial`` marks a status rebuilt from the event log (the supervisor died
    before writing the file, e.g. after ``docker kill``): it has no return code.
    """

    schema: int = SUPERVISOR_SCHEMA
    command: list[str] = field(default_factory=list)
    started: float | None = None
    ended: float | None = None
    main_pid: int | None = None
    returncode: int | None = None
    start_error: str | None = None
    terminated_by_signal: int | None = None
    watchdog_fired: bool = False
    thrashing: Thrashing | None = None
    thrash_watch: dict | None = None           # ThrashWatch.summary(): longest stretch at the cap, peak rate
    phase: str | None = None
    configuration: str | None = None
    completed_phases: list[str] = field(default_factory=list)
    completed_configurations: list[str] = field(default_factory=list)
    progress: dict[str, list[int]] = field(default_factory=dict)    # tqdm label -> [done, total]
    last_exception_line: str | None = None
    cgroup_version: int | None = None
    cgroup_error: str | None = None
    limit_bytes: int | None = None
    oom_kill_start: int | None = None
    oom_kill_end: int | None = None
    peak_anon_bytes: int | None = None
    peak_usage_bytes: int | None = None
    peak_shm_bytes: int | None = None
    shm_size_bytes: int | None = None          # the size of /dev/shm (--shm-size)
    workers_seen: list[int] = field(default_factory=list)
    worker_exits: list[WorkerExitRecord] = field(default_factory=list)
    partial: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.partial:
            del data["partial"]
        return data

    @classmethod
    def from_json(cls, data: dict) -> SupervisorStatus:
        """Tolerant: unknown keys are ignored, missing ones take their defaults."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["worker_exits"] = [WorkerExitRecord.from_json(w) for w in data.get("worker_exits") or []
                                  if isinstance(w, dict) and w.get("pid") is not None]
        thrashing = data.get("thrashing")
        values["thrashing"] = Thrashing.from_json(thrashing) if isinstance(thrashing, dict) else None
        return cls(**values)

    @property
    def supervisor_ran(self) -> bool:
        """The supervisor saw nnU-Net end (or fail to start)."""
        return self.returncode is not None or bool(self.start_error)


def status_from_events(events: list[dict]) -> SupervisorStatus | None:
    """A partial status (no return code) rebuilt from events.jsonl, e.g. after ``docker kill``."""
    partial = SupervisorStatus(partial=True)
    seen = False
    for event in events:
        kind = event.get("event")
        if kind == EV_SUPERVISOR_START:
            partial.oom_kill_start = event.get("oom_kill")
            partial.limit_bytes = event.get("limit_bytes")
            partial.cgroup_version = event.get("cgroup_version")
        elif kind == EV_CHILD_START:
            partial.main_pid = event.get("pid")
        elif kind == EV_PHASE:
            partial.phase, partial.configuration = event.get("phase"), event.get("configuration")
        elif kind == EV_OOM_KILL:
            partial.oom_kill_end = event.get("count")
        elif kind == EV_WORKER_EXIT and event.get("pid") is not None:
            partial.worker_exits.append(WorkerExitRecord.from_json(event))
            continue                 # worker exits alone do not make a status
        else:
            continue
        seen = True
    return partial if seen else None


STATUS_ON_STDOUT = b"nnrun-supervisor: cannot write status.json"


def read_status(run_dir: Path, log_tail: bytes = b"") -> SupervisorStatus | None:
    """The supervisor's status.json; else the status it printed when it could not write the file (a full
    disk); else what its event log says when it died before writing one."""
    try:
        return SupervisorStatus.from_json(json.loads((run_dir / STATUS_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        pass
    for line in reversed(log_tail.splitlines()):
        if line.startswith(STATUS_ON_STDOUT) and b"; status: " in line:
            try:
                return SupervisorStatus.from_json(json.loads(line.split(b"; status: ", 1)[1]))
            except (ValueError, TypeError):
                break
    return status_from_events(read_jsonl(run_dir / EVENTS_FILE))


def parse_jsonl(text: str) -> list[dict]:
    """JSON objects, one a line; a torn last line (a killed writer) and junk lines are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def read_jsonl(path: Path) -> list[dict]:
    try:
        return parse_jsonl(path.read_text(errors="replace"))
    except OSError:
        return []


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 1, mode: int | None = None) -> None:
    """Write to a temporary name beside ``path``, then rename: a reader sees the old or the new file, never half.

    ``mode``: chmod the file (e.g. 0o644 for a file other users' processes read, whatever the umask).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")    # unique: several processes may write one file
    tmp.write_text(json.dumps(data, indent=indent) + "\n")
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def try_write_json(path: Path, data: Any, indent: int | None = 1) -> bool:
    """nnrun's own records are best effort: a full disk must not turn the verdict into a crash."""
    try:
        write_json_atomic(path, data, indent=indent)
        return True
    except OSError:
        return False


# -- faulthandler dumps (FAULTS_DIR/<pid>.log) ------------------------------------------------------

# faulthandler's first line names the fatal signal (CPython's faulthandler.c).
FAULT_SIGNALS = {
    "Segmentation fault": "SIGSEGV",
    "Bus error": "SIGBUS",
    "Aborted": "SIGABRT",
    "Floating-point exception": "SIGFPE",
    "Floating point exception": "SIGFPE",
    "Illegal instruction": "SIGILL",
}


@dataclass(frozen=True)
class FaultDump:
    """What faulthandler wrote when a process of nnU-Net died of a fatal signal."""

    pid: int
    signal_name: str | None           # SIGSEGV, SIGBUS, ...
    frame: str | None                 # the innermost Python frame: 'blosc2/ndarray.py:3245 in asarray'
    library: str | None               # the package of that frame: blosc2, numpy, SimpleITK, ...


_FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')


def parse_fault_dump(pid: int, text: str) -> FaultDump | None:
    """A dump as faulthandler writes it; None for an empty file (the process did not crash)."""
    lines = text.splitlines()
    if not lines:
        return None
    signal_name = None
    for line in lines:
        if line.startswith("Fatal Python error: "):
            signal_name = FAULT_SIGNALS.get(line.removeprefix("Fatal Python error: ").strip())
            break
    frame = library = None
    for line in lines:
        m = _FRAME.match(line)
        if m:          # most recent call first: the first frame is where it crashed
            path = m.group("path")
            library = _package_of(path)
            short = path.split("site-packages/", 1)[1] if "site-packages/" in path else path
            frame = f"{short}:{m.group('line')} in {m.group('func')}"
            break
    return FaultDump(pid=pid, signal_name=signal_name, frame=frame, library=library)


def _package_of(path: str) -> str | None:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/runner/" in path:
        return "nnrun"
    return None


def read_fault_dumps(run_dir: Path) -> list[FaultDump]:
    """The non-empty dumps of a run folder (every nnU-Net process has a file; only a crash fills it)."""
    folder = Path(run_dir) / FAULTS_DIR
    dumps = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.endswith(".log") or not entry.name[:-4].isdigit():
            continue
        try:
            text = entry.read_text(errors="replace")
        except OSError:
            continue
        dump = parse_fault_dump(int(entry.name[:-4]), text)
        if dump is not None:
            dumps.append(dump)
    return dumps


def remove_empty_fault_files(run_dir: Path) -> None:
    """Tidy the run folder: the files of processes that did not crash are empty."""
    folder = Path(run_dir) / FAULTS_DIR
    try:
        for entry in folder.iterdir():
            if entry.suffix == ".log" and entry.stat().st_size == 0:
                entry.unlink()
        folder.rmdir()          # only when nothing is left
    except OSError:
        pass
