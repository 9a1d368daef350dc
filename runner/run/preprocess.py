"""``nnrun preprocess``: pre-flight, one container run under a memory cap, diagnosis.

This module orchestrates; it never prints.  Progress goes to a
:class:`ProgressSink` the CLI provides, and the result is a
:class:`~runner.diagnosis.report.RunReport`.  Expected failures before the container
starts are raised as :class:`~runner.errors.NnrunError`.
"""
from __future__ import annotations

import json
import os
import platform
import secrets
import shlex
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Protocol

from runner import __version__
from runner.dataset import RawDataset, load_raw_dataset
from runner.diagnosis.classify import RunFacts, Verdict, Victim, WorkerExit, classify, during_phase, recommend
from runner.engines.base import ContainerSpec, Engine, Mount
from runner.errors import BadInputError, NnrunError, Outcome, RunInterrupted
from runner.run.monitor import DEFAULT_CGROUP_ROOT, CgroupMonitor, MonitorSummary
from runner.formats.nifti import read_header
from runner.options import PreprocessOptions, nnrun_argv, nnunet_argv, validate
from runner.incontainer.preprocess import STAGING, TMP_MARK
from runner.shards import (PLANS_NAME_ENV, SHARD_COUNT_ENV, SHARD_INDEX_ENV, SHARD_MAP_ENV, SKIP_PLANNING_ENV,
                           Shard)
from runner.shards import map_path as shard_map_path
from runner.run.outputs import NNRUN_DIR, cases_in_flight, incomplete_outputs, new_run_dir, remove_paths
from runner.run.locks import acquire as acquire_locks, owner_info, scope_for_run
from runner.diagnosis.report import RunReport, to_json
from runner.incontainer.supervisor import EVENTS_FILE, HOST_ACK_FILE, NNUNET_LOG, STATUS_FILE
from runner.run.telemetry import AGENT_FILE, TIMELINE_FILE, JsonlTail, case_held_by, case_records, read_jsonl
from runner.units import format_bytes, format_mem_arg, parse_mem

DEFAULT_IMAGE = f"nnrun:{__version__}"
CONTAINER_RAW = "/data/raw"
CONTAINER_PREPROCESSED = "/data/preprocessed"
CONTAINER_RUN_DIR = "/nnrun/run"
RUN_LABEL = "io.nnrun.run-id"
# Test-only: the integration suite tags each test's containers, so that its
# cleanup registry sees exactly the containers that test started.
TEST_LABEL = "io.nnrun.test-id"
TEST_LABEL_ENV = "NNRUN_TEST_ID"
IMAGE_USER = (1000, 1000)   # the unprivileged user the Dockerfile creates
REPORT_FILE = "report.json"
MANIFEST_FILE = "manifest.json"
PLOT_FILE = "memory.png"
SCHEDULE_FILE = "schedule.json"   # in the run folder: the memory-aware admission plan for the agent
ACTIVE_FILE = "active.json"     # in .nnrun/: the run in progress (left behind only if nnrun died)
STOP_TIMEOUT_S = 10


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


def _resolve_root(given: str | None, env_name: str, flag: str) -> Path:
    value = given or os.environ.get(env_name)
    if not value:
        raise BadInputError(f"no {env_name} folder: pass {flag} DIR or set the {env_name} environment variable")
    return Path(value).expanduser().resolve()


def preflight(opts: PreprocessOptions, settings: RunSettings, sink: ProgressSink) -> tuple[int, RawDataset, Path]:
    """Everything that can be checked without Docker.  Raises BadInputError."""
    validate(opts)
    mem_bytes = parse_mem(settings.mem)
    raw_root = _resolve_root(settings.raw_root, "nnUNet_raw", "--raw")
    dataset = load_raw_dataset(raw_root, opts.dataset_id)
    preprocessed_root = _resolve_root(settings.preprocessed_root, "nnUNet_preprocessed", "--preprocessed")
    existing = preprocessed_root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BadInputError(f"--preprocessed {preprocessed_root}: {existing} is not a folder")
    if raw_root == preprocessed_root:
        raise BadInputError("the raw and preprocessed folders must differ")
    if settings.shard is not None:
        check_shard_run(opts, preprocessed_root / dataset.name, settings.mem)
    elif not settings.skip_file_check:      # a shard checks its own cases' files, once it knows them
        check_dataset_files(dataset, settings, sink)
    return mem_bytes, dataset, preprocessed_root


def check_dataset_files(dataset: RawDataset, settings: RunSettings, sink: ProgressSink) -> None:
    """Read every image and label file to its end (damaged files fail here, not in a worker)."""
    files = list(dataset.all_files())
    sink.stage(f"checking {len(files)} image and label files of {dataset.name} to the end")
    from runner.formats.check_cache import check_files_once     # files verified before are not read again
    problems = check_files_once(files, workers=settings.check_workers, progress=sink.file_check)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more damaged file(s))" if len(problems) > 1 else ""
        raise BadInputError(first.message + more, hint=first.hint)


def check_shard_run(opts: PreprocessOptions, preprocessed_dataset: Path, mem: str) -> None:
    """A shard only preprocesses: the global steps must have run once before (they are not sharded)."""
    if opts.no_pp:
        raise BadInputError("--shard preprocesses cases; --no_pp runs only the global steps",
                            hint="run the planning step once without --shard, then the shards")
    if opts.clean:
        raise BadInputError("--clean cannot be combined with --shard: it would delete other shards' cases",
                            hint="run `nnrun preprocess --clean --no_pp` once before the shards")
    if opts.verify_dataset_integrity:
        raise BadInputError("--verify_dataset_integrity belongs to the planning step, not to a shard",
                            hint="pass it to the run with --no_pp")
    needed = [preprocessed_dataset / "dataset_fingerprint.json", preprocessed_dataset / f"{opts.plans_name}.json",
              preprocessed_dataset / "dataset.json"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise BadInputError(f"a shard run needs the fingerprint and plans of {preprocessed_dataset.name}, "
                            f"missing: {', '.join(missing)}",
                            hint=f"run the planning step once first: nnrun preprocess -d {opts.dataset_id} "
                                 f"--mem {mem} --no_pp (nnrun slurm submit does this for you)")


def dataset_complete(preprocessed_dataset: Path, plans_name: str, configurations) -> bool:
    """Every configuration's folder is in its final place (nothing left in staging)."""
    from runner.run.outputs import data_identifier
    try:
        planned = json.loads((preprocessed_dataset / f"{plans_name}.json").read_text())["configurations"]
    except (OSError, ValueError, KeyError):
        return False
    for configuration in configurations:
        if configuration not in planned:      # nnU-Net skips configurations its plans do not have
            continue
        ident = data_identifier(preprocessed_dataset, plans_name, configuration)
        if not (preprocessed_dataset / ident).is_dir() or (preprocessed_dataset / STAGING / ident).exists():
            return False
    return True


def shard_dataset(dataset: RawDataset, cases: list[str]) -> RawDataset:
    """The dataset restricted to a shard's cases (same order)."""
    keep = set(cases)
    return replace(dataset, cases=tuple(c for c in dataset.cases if c.case_id in keep))


def shape_mismatches(dataset: RawDataset) -> list[str]:
    """Cases whose label's shape differs from their image's, from headers only."""
    found = []
    for case in dataset.cases:
        try:
            image = read_header(case.images[0])
            label = read_header(case.label)
        except NnrunError:
            continue
        if tuple(image.shape[:3]) != tuple(label.shape[:3]):
            found.append(f"{case.case_id} (image {'x'.join(map(str, image.shape))}, "
                         f"label {'x'.join(map(str, label.shape))})")
    return found


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


def check_output_writable(preprocessed_dataset: Path) -> None:
    """A folder this user cannot write: say so before anything starts (nothing is written as root)."""
    probe = preprocessed_dataset
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        try:
            owner = f"uid {probe.stat().st_uid}"
        except OSError:
            owner = "another user"
        raise BadInputError(f"the output folder {probe} belongs to {owner} and is not writable by you "
                            f"(uid {os.getuid()})",
                            hint="pass --preprocessed with a folder of yours, or ask its owner to run nnrun")


def hand_over(paths: list[Path], uid: int, gid: int) -> None:
    """chown -R (only when root runs nnrun), so the unprivileged container user can write there."""
    for top in paths:
        if not top.is_dir() or top.is_symlink():
            os.chown(top, uid, gid, follow_symlinks=False)
            continue
        for dirpath, dirnames, filenames in os.walk(top):
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
        "NNRUN_FILE_ENDING": file_ending,
    }
    # The agent resumes from complete cases (and starts over with --clean).
    env["NNRUN_RESUME"] = "1"
    if opts.clean:
        env["NNRUN_CLEAN"] = "1"
    env["NNRUN_SCHEDULE"] = settings.schedule
    if settings.schedule == "memory":
        env["NNRUN_SCHEDULE_FILE"] = f"{run_dir}/{SCHEDULE_FILE}"
    if settings.shard is not None:
        # Fingerprint and plans exist (checked before); this run preprocesses its shard of the cases.
        env[SHARD_INDEX_ENV] = str(settings.shard.index)
        env[SHARD_COUNT_ENV] = str(settings.shard.count)
        env[SKIP_PLANNING_ENV] = "1"
        env[PLANS_NAME_ENV] = opts.plans_name
        if dataset_name:
            env[SHARD_MAP_ENV] = shard_map_path(f"{preprocessed}/{dataset_name}", opts.plans_name)
    for hook in ("NNRUN_TEST_OOM_VICTIM", "NNRUN_TEST_KILL_AT"):     # test-only hooks (never in rendered manifests)
        if test_hooks and os.environ.get(hook):
            env[hook] = os.environ[hook]
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


def _read_status(run_dir: Path, log_tail: bytes = b"") -> dict | None:
    """The supervisor's status.json; else the status it printed when it could not write the file (a full
    disk); else what its event log says when it died before writing one."""
    try:
        return json.loads((run_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        pass
    marker = b"nnrun-supervisor: cannot write status.json"
    for line in reversed(log_tail.splitlines()):
        if line.startswith(marker) and b"; status: " in line:
            try:
                return json.loads(line.split(b"; status: ", 1)[1])
            except ValueError:
                break
    return _status_from_events(run_dir)


def _status_from_events(run_dir: Path) -> dict | None:
    """A partial status (no return code) rebuilt from events.jsonl, e.g. after `docker kill`."""
    events = read_jsonl(run_dir / EVENTS_FILE)
    partial: dict = {"partial": True, "worker_exits": []}
    for event in events:
        kind = event.get("event")
        if kind == "supervisor_start":
            partial["oom_kill_start"] = event.get("oom_kill")
            partial["limit_bytes"] = event.get("limit_bytes")
            partial["cgroup_version"] = event.get("cgroup_version")
        elif kind == "child_start":
            partial["main_pid"] = event.get("pid")
        elif kind == "phase":
            partial["phase"], partial["configuration"] = event.get("phase"), event.get("configuration")
        elif kind == "oom_kill":
            partial["oom_kill_end"] = event.get("count")
        elif kind == "worker_exit":
            partial["worker_exits"].append(event)
    return partial if len(partial) > 2 else None


def _disk_full(folder: Path, below_bytes: int = 8 * 1024 * 1024) -> bool:
    """nnU-Net's error after a full disk need not say so (blosc2: 'Error while creating the NDArray')."""
    try:
        return shutil.disk_usage(folder).free < below_bytes
    except OSError:
        return False


def _last_log_line(log_path: Path) -> str | None:
    try:
        with open(log_path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 8192))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [ln.strip() for ln in tail.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else None


def _pick(*values):
    present = [v for v in values if v is not None]
    return max(present) if present else None


def gather_facts(status: dict | None, summary: MonitorSummary, exit_code: int | None, engine_oom_killed: bool,
                 engine_oom_events: int, interrupt_signal: int | None, records: list | None = None) -> RunFacts:
    status = status or {}
    starts = [v for v in (status.get("oom_kill_start"), summary.oom_kill_first) if v is not None]
    return RunFacts(
        container_exit_code=exit_code,
        supervisor_ran=bool(status) and status.get("returncode") is not None or bool(status.get("start_error")),
        nnunet_returncode=status.get("returncode"),
        main_pid=status.get("main_pid"),
        main_ended=status.get("ended"),
        phase=status.get("phase"),
        configuration=status.get("configuration"),
        oom_kill_before=min(starts) if starts else None,
        oom_kill_after=_pick(status.get("oom_kill_end"), summary.oom_kill_last),
        engine_oom_killed=engine_oom_killed,
        engine_oom_events=engine_oom_events,
        worker_exits=tuple(WorkerExit(w["pid"], w["t"], w["main_alive"], w.get("oom_kill_before"),
                                      w.get("oom_kill_after"), w.get("last_rss_bytes"))
                           for w in status.get("worker_exits", [])),
        interrupt_signal=interrupt_signal,
        exception_line=status.get("last_exception_line"),
        start_error=status.get("start_error"),
        watchdog_fired=bool(status.get("watchdog_fired")),
        open_case_pids=frozenset(r.pid for r in records or [] if r.status == "unfinished"),
    )


_CASE_VERBS = {"preprocessing": "preprocessing", "fingerprint": "extracting the fingerprint of",
               "verify": "verifying"}


def oom_message(first: Victim | None, phase: str | None, configuration: str | None, in_flight: list[str],
                exact: bool) -> str:
    """'a worker (pid 73) was killed while preprocessing case017 (3d_fullres); 3 other cases were in flight: ...'"""
    during = during_phase(phase, configuration)
    if first is not None and first.role == "main":
        return f"the kernel OOM-killed nnU-Net's main process {during}"
    pid = f" (pid {first.pid})" if first is not None and first.pid else ""
    if first is not None and first.case:
        config = f" ({configuration})" if phase == "preprocessing" and configuration else ""
        others = [c for c in in_flight if c != first.case]
        text = (f"the kernel OOM-killed a worker{pid} while {_CASE_VERBS.get(phase or '', 'processing')} "
                f"{first.case}{config}")
        if others:
            text += f"; {len(others)} other case{'s' if len(others) > 1 else ''} {'were' if len(others) > 1 else 'was'} " \
                    f"in flight: {', '.join(others)}"
        return text
    flight = ""
    if in_flight:
        flight = f" (cases in flight{'' if exact else ', inferred'}: {', '.join(in_flight)})"
    return f"the kernel OOM-killed a worker process{pid} {during}{flight}"


class Preprocess:
    """One ``nnrun preprocess`` run."""

    def __init__(self, opts: PreprocessOptions, settings: RunSettings, engine_factory: Callable[[], Engine],
                 sink: ProgressSink | None = None) -> None:
        self.opts = opts
        self.settings = settings
        self.engine_factory = engine_factory
        self.sink = sink or NullSink()
        self.container_id: str | None = None
        self.engine: Engine | None = None
        self._container_done = threading.Event()
        self.recovered: list[str] = []
        self._log_tail = b""                # the container's last output (the supervisor's fallback status)
        self.last_recommendation = None
        self.estimate = None
        self.schedule_note: str | None = None
        self.shard_cases: list[str] = []        # --shard: this shard's cases (from the shared map)
        # --retry: 2 when nnrun chose the worker counts, else only what the user asked for.
        self.retries = settings.retries if settings.retries is not None else (0 if settings.workers_pinned else 2)

    def _choose_workers(self, dataset: RawDataset, preprocessed_dataset: Path, mem_bytes: int, info) -> None:
        """Estimate per-case peaks (headers only) and let nnrun pick the worker counts / admission plan."""
        from runner.estimate.model import default_cache_dir, estimate, load_model, measure_baseline
        from runner.run.admission import check_fits, resolve_workers

        settings = self.settings
        self.sink.stage("estimating per-case memory from the image headers")
        try:
            baseline = measure_baseline(self.engine_factory, settings.image, default_cache_dir())
            plans_path = preprocessed_dataset / f"{self.opts.plans_name}.json"
            plans = json.loads(plans_path.read_text()) if plans_path.is_file() else None
            est = estimate(dataset, plans, self.opts.configurations, mem_bytes, baseline, load_model(),
                           cpus=os.cpu_count() or 1)
        except (NnrunError, OSError, ValueError, KeyError, RuntimeError) as err:
            # No estimate (e.g. a format nnrun cannot read headers of): nnU-Net's own defaults.
            self.schedule_note = f"no estimate ({err}); using nnU-Net's fixed worker counts"
            self.sink.stage(self.schedule_note)
            self.settings = replace(settings, schedule="fixed", np_auto=False, npfp_auto=False)
            return
        fingerprint_needed = self.opts.clean or not (preprocessed_dataset / "dataset_fingerprint.json").is_file()
        # Under --runtime host the "host memory" is the job's limit, which --mem cannot exceed anyway.
        check_fits(est, info.mem_total_bytes if info.name != "host" else None, fingerprint_needed,
                   preprocessing=not self.opts.no_pp)
        self.estimate = est
        self.opts = resolve_workers(self.opts, est, settings.np_auto, settings.npfp_auto, settings.schedule)
        chosen = self.opts.workers_per_configuration()
        self.sink.stage(f"workers: -npfp {self.opts.npfp}; " + ", ".join(f"{c} {n}" for c, n in chosen.items())
                        + (" (memory-aware admission)" if settings.schedule == "memory" else ""))

    def _shard_cases(self, dataset: RawDataset, preprocessed_dataset: Path, mem_bytes: int) -> RawDataset:
        """Read (or make) the shared case -> shard map and return the dataset restricted to this shard."""
        from runner.shards import ShardError, header_weights, load_or_create, map_path

        shard = self.settings.shard
        case_ids = sorted(c.case_id for c in dataset.cases)

        def weights() -> tuple[dict[str, int], str]:
            predicted = self._predicted_case_bytes(dataset, preprocessed_dataset, mem_bytes)
            if predicted:
                return predicted, "predicted_memory"
            return header_weights({c.case_id: list(c.images) for c in dataset.cases}), "voxels"

        path = map_path(preprocessed_dataset, self.opts.plans_name)
        try:
            shard_map = load_or_create(path, shard.count, case_ids, weights, self.opts.plans_name)
        except ShardError as err:
            raise BadInputError(str(err)) from None
        except OSError as err:
            raise BadInputError(f"cannot write the shard map {path}: {err.strerror}") from None
        mine = [c for c, k in shard_map["assignment"].items() if int(k) == shard.index]
        self.shard_cases = sorted(mine)
        self.sink.stage(f"shard {shard}: {len(mine)} of {len(case_ids)} cases "
                        f"(map {path}, balanced by {shard_map.get('balanced_by')})")
        return shard_dataset(dataset, mine)

    def _own_leftovers(self, paths: list[Path]) -> list[Path]:
        """Other shards may be writing into the same folders: only this shard's cases' temporary files."""
        ending = self.full_dataset.file_ending
        mine = tuple(f"{c}{ending}{TMP_MARK}" for c in self.shard_cases)
        return [p for p in paths if p.name.startswith(mine)]

    def _predicted_case_bytes(self, dataset: RawDataset, preprocessed_dataset: Path, mem_bytes: int) -> dict | None:
        """Each case's largest predicted preprocessing peak over the configurations (None: no estimate)."""
        from runner.estimate.model import Baseline, estimate, load_model
        # The extra memory above the process baseline ranks the cases; the baseline itself is the same for all.
        no_baseline = Baseline(main_bytes=0, worker_bytes=0, image_id="", measured=False)
        try:
            plans = json.loads((preprocessed_dataset / f"{self.opts.plans_name}.json").read_text())
            est = estimate(dataset, plans, self.opts.configurations, mem_bytes, no_baseline, load_model(),
                           cpus=os.cpu_count() or 1)
        except (NnrunError, OSError, ValueError, KeyError, RuntimeError):
            return None
        out: dict[str, int] = {}
        for row in est.per_case:
            if row.get("phase") == "preprocessing":
                out[row["case"]] = max(out.get(row["case"], 0), int(row.get("extra_bytes") or 0))
        return out or None

    def _new_attempt(self) -> None:
        self._log_tail = b""
        self.container_id = None
        self._container_done = threading.Event()
        self.recovered = []
        self.last_recommendation = None

    def _retry_options(self, report: RunReport) -> PreprocessOptions | None:
        """The options of the next attempt after an OOM: fewer workers, never more memory."""
        rec = self.last_recommendation
        if report.outcome is not Outcome.OOM or rec is None or rec.options is None or rec.mem_bytes is not None:
            return None
        return rec.options if rec.options != self.opts else None

    def run(self) -> RunReport:
        opts, settings, sink = self.opts, self.settings, self.sink
        mem_bytes, dataset, preprocessed_root = preflight(opts, settings, sink)
        preprocessed_dataset = preprocessed_root / dataset.name
        check_output_writable(preprocessed_dataset)      # before Docker: nothing to connect for a bad folder
        sink.stage("connecting to the container engine")
        engine = self.engine = self.engine_factory()
        info = engine.info()
        if info.mem_total_bytes and mem_bytes > info.mem_total_bytes:
            where = ("this job's memory limit" if info.name == "host"
                     else f"the {'Podman' if info.name == 'podman' else 'Docker'} host's memory")
            raise BadInputError(f"--mem {settings.mem} is more than {where} "
                                f"({format_bytes(info.mem_total_bytes)})",
                                hint=f"give at most {format_bytes(info.mem_total_bytes)}")
        if info.name == "host" and info.mem_total_bytes and mem_bytes < info.mem_total_bytes:
            sink.stage(f"--runtime host: the cap is this job's limit, {format_bytes(info.mem_total_bytes)}; "
                       f"--mem {settings.mem} is used for the estimate only")
        image = engine.image(settings.image)

        self.full_dataset = dataset
        if settings.shard is not None:
            dataset = self._shard_cases(dataset, preprocessed_dataset, mem_bytes)
            if not settings.skip_file_check:
                check_dataset_files(dataset, settings, sink)
        if settings.schedule == "memory" or settings.np_auto or settings.npfp_auto:
            self._choose_workers(dataset, preprocessed_dataset, mem_bytes, info)
            opts, settings = self.opts, self.settings
        try:
            preprocessed_dataset.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BadInputError(f"cannot create the output folder {preprocessed_dataset}: {err.strerror}",
                                hint="check --preprocessed and its owner and permissions") from None
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        # A second run writing the same outputs must not start (exit 2, naming the first).
        shard = settings.shard
        locks = acquire_locks(preprocessed_dataset,
                              scope_for_run(opts.configurations, opts.no_pp,
                                            (shard.index + 1, shard.count) if shard else None),
                              owner_info(run_id))
        # One marker per shard: shards of the same dataset run at the same time.
        active = preprocessed_dataset / NNRUN_DIR / (f"active.shard-{shard.index}-of-{shard.count}.json" if shard
                                                     else ACTIVE_FILE)
        marked = False
        try:
            self.recovered = recover_dead_run(preprocessed_dataset, engine, opts.plans_name, active,
                                              self._own_leftovers if shard else None)
            attempts: list[dict] = []
            while True:
                marked = try_write_json(active, {"run_id": run_id, "pid": os.getpid(), "started": time.time()})
                report = self._run_locked(mem_bytes, dataset, preprocessed_root, preprocessed_dataset, run_id,
                                          info, image)
                attempts.append(attempt_summary(report))
                next_opts = self._retry_options(report) if len(attempts) <= self.retries else None
                if next_opts is None:
                    break
                # Only the unfinished cases run again: the agent resumes from the complete ones.
                sink.stage(f"retrying after the OOM kill ({len(attempts)} of {self.retries}): "
                           f"{self.last_recommendation.text}")
                self.opts = next_opts
                self._new_attempt()
                run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
            report.attempts = attempts
            if report.run_dir:
                self._write_report(Path(report.run_dir), report)
            return report
        finally:
            # Reached whatever the outcome; only a killed nnrun leaves the marker for the next run.
            if marked:
                active.unlink(missing_ok=True)
            locks.release()

    def _run_locked(self, mem_bytes: int, dataset: RawDataset, preprocessed_root: Path,
                    preprocessed_dataset: Path, run_id: str, info, image) -> RunReport:
        opts, settings, sink = self.opts, self.settings, self.sink
        engine = self.engine
        try:
            run_dir = new_run_dir(preprocessed_dataset, run_id)
        except OSError as err:
            raise BadInputError(f"cannot create the run folder in {preprocessed_dataset}: {err.strerror}",
                                hint="free space in the output folder or pick another --preprocessed") from None
        if settings.runtime == "host":
            uid, gid, chown_back = os.getuid(), os.getgid(), False      # nnU-Net runs as the caller here
        else:
            uid, gid, chown_back = container_user(preprocessed_root)
        staging = preprocessed_dataset / STAGING     # the agent stages configurations here
        staging.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0 and (uid, gid) != (0, 0):
            # Outputs of the dataset (earlier runs included) must be writable by the unprivileged user.
            hand_over([p for p in preprocessed_dataset.iterdir() if p.name != NNRUN_DIR] + [run_dir, staging],
                      uid, gid)
            os.chown(preprocessed_dataset, uid, gid)
        log_path = run_dir / NNUNET_LOG
        spec = build_spec(opts, settings, dataset, preprocessed_dataset, run_dir, mem_bytes, run_id, (uid, gid))
        workers = {"npfp": opts.npfp, "np": opts.workers_per_configuration(), "schedule": settings.schedule}
        report = RunReport(outcome=Outcome.BUG, message="", dataset=dataset.name,
                           # what answered: DOCKER_HOST may point at a Podman service
                           runtime=info.name if settings.runtime in ("docker", "podman") else settings.runtime,
                           configurations=list(opts.configurations), workers=workers,
                           nnunet_argv=nnunet_argv(opts), image=settings.image, image_id=image.image_id,
                           run_id=run_id, run_dir=str(run_dir), log_path=str(log_path), limit_bytes=mem_bytes)

        if settings.schedule == "memory" and self.estimate is not None:
            from runner.run.admission import admission_plan
            per_config = opts.workers_per_configuration()
            plan = {"configurations": {c: admission_plan(self.estimate, c, max_workers=per_config.get(c, 1))
                                       for c in opts.configurations}}
            try_write_json(run_dir / SCHEDULE_FILE, plan)   # without it the agent uses a fixed pool
        from runner.run.admission import warm_workers
        warm = warm_workers(opts, self.estimate, settings.schedule, settings.np_auto,
                            (preprocessed_dataset / "dataset_fingerprint.json").is_file())
        if warm:     # the agent starts these workers while nnU-Net's main process imports and plans
            from runner.incontainer.schedule import WARM_FILE
            try_write_json(run_dir / WARM_FILE, warm)
        manifest = build_manifest(run_id, opts, settings, spec, dataset, info, image, mem_bytes)
        try_write_json(run_dir / MANIFEST_FILE, manifest)
        where = (f"with {image.ref.removeprefix('host:')} under this job's" if settings.runtime == "host"
                 else f"in {settings.image} under a")
        sink.stage(f"starting nnU-Net {where} {format_bytes(info.mem_total_bytes if settings.runtime == 'host' else mem_bytes)} "
                   f"cap (nnU-Net log: {log_path})")
        sink.event({"event": "run_start", "cases": len(dataset.cases), "limit_bytes": mem_bytes,
                    "log_path": str(log_path), "run_dir": str(run_dir)})
        started = time.time()
        interrupt: int | None = None
        exit_code: int | None = None
        monitor: CgroupMonitor | None = None
        log_thread: threading.Thread | None = None
        try:
            self.container_id = engine.create(spec)
            try:
                engine.start(self.container_id)
            except NnrunError as err:
                report.outcome, report.message, report.phase = Outcome.INFRA, err.one_line(), "startup"
                report.log_path = None          # nnU-Net never ran
                self._write_report(run_dir, report)
                return report
            cgroup_dir = getattr(engine, "cgroup_dir", None)       # --runtime host: the job's own cgroup
            monitor = CgroupMonitor(self.container_id, settings.cgroup_root, timeline_path=run_dir / TIMELINE_FILE,
                                    on_sample=sink.memory,
                                    cgroup_dir=cgroup_dir(self.container_id) if cgroup_dir else None).start()
            log_thread = threading.Thread(target=self._pump_logs, name="logs", daemon=True)
            log_thread.start()
            threading.Thread(target=self._watch_run_dir, args=(monitor, run_dir), name="watch",
                             daemon=True).start()
            exit_code = engine.wait(self.container_id)
        except RunInterrupted as stop:
            interrupt = stop.signum
            if self.container_id:
                try:
                    engine.stop(self.container_id, timeout_s=STOP_TIMEOUT_S)
                    exit_code = engine.wait(self.container_id, timeout_s=STOP_TIMEOUT_S + 5)
                except (NnrunError, TimeoutError, RunInterrupted):
                    pass
        finally:
            self._container_done.set()
            summary = MonitorSummary(False, None, None, 0, None, None, None, None, None, "monitor not started")
            engine_oom_killed, engine_events, status = False, 0, None
            try:
                if monitor:
                    summary = monitor.stop()
                if self.container_id:
                    try:
                        state = engine.state(self.container_id)
                        engine_oom_killed = state.oom_killed
                        if exit_code is None:
                            exit_code = state.exit_code
                    except Exception:  # noqa: BLE001 - best effort before removal
                        pass
                    if log_thread is not None:
                        log_thread.join(timeout=2)
                status = _read_status(run_dir, self._log_tail)
                counter_readable = (summary.oom_kill_last is not None
                                    or (status or {}).get("oom_kill_end") is not None)
                if self.container_id and not counter_readable:
                    try:
                        engine_events = engine.oom_event_count(self.container_id, started, time.time())
                    except Exception:  # noqa: BLE001 - only a fallback
                        engine_events = 0
            finally:
                if self.container_id:
                    engine.remove(self.container_id)      # never left behind, whatever failed above
        ended = time.time()

        agent_events = read_jsonl(run_dir / AGENT_FILE)
        records = case_records(agent_events)
        self.agent_ran = bool(agent_events)
        facts = gather_facts(status, summary, exit_code, engine_oom_killed, engine_events, interrupt, records)
        verdict = classify(facts)
        self._fill(report, facts, verdict, status, summary, dataset, preprocessed_dataset, mem_bytes,
                   info.mem_total_bytes, log_path, started, ended, records)
        report.removed_outputs = list(self.recovered)
        if verdict.outcome is not Outcome.OK:
            leftovers = incomplete_outputs(preprocessed_dataset)
            if settings.shard is not None:
                leftovers = self._own_leftovers(leftovers)
            report.removed_outputs += remove_paths(leftovers)
        if settings.shard is not None:
            report.shard, report.shard_cases = str(settings.shard), list(self.shard_cases)
            report.dataset_complete = dataset_complete(preprocessed_dataset, opts.plans_name, opts.configurations)
            if report.outcome is Outcome.OK:
                rest = ("every shard is complete: the dataset is ready" if report.dataset_complete else
                        "cases of other shards are still pending (`nnrun merge` checks the whole dataset)")
                report.message = (f"shard {settings.shard} of {dataset.name}: {len(self.shard_cases)} cases "
                                  f"preprocessed in {report.duration_s:.1f} s; {rest}")
        if chown_back and settings.shard is None:
            # Shards run side by side in these folders: `nnrun merge` hands the dataset back at the end.
            hand_over([preprocessed_dataset], os.getuid(), os.getgid())
        if settings.plot:
            report.plot_path = self._plot(run_dir, report, dataset)
        manifest.update(ended=_iso(ended), outcome=report.outcome.value, exit_code=report.exit_code)
        try_write_json(run_dir / MANIFEST_FILE, manifest)
        self._write_report(run_dir, report)
        return report

    # -- helpers ------------------------------------------------------------
    def _watch_run_dir(self, monitor: CgroupMonitor, run_dir: Path) -> None:
        """Pass the supervisor's and the agent's events on as progress; when the supervisor
        has written its status, read the cgroup once more, then let the supervisor exit."""
        tails = [JsonlTail(run_dir / EVENTS_FILE), JsonlTail(run_dir / AGENT_FILE)]
        status = run_dir / STATUS_FILE
        acked = False
        from runner.run.plot_job import PlotJob, guess_title
        plot_job = self._plot_job = PlotJob(run_dir).prewarm() if self.settings.plot else None
        while not self._container_done.is_set():
            for tail in tails:
                for event in tail.read_new():
                    self.sink.event(event)
            if not acked and status.exists():
                monitor.final_sample()
                if plot_job is not None:    # nnU-Net has ended: draw memory.png while the container goes
                    plot_job.speculate(*guess_title(run_dir, monitor, parse_mem(self.settings.mem)))
                try:
                    (run_dir / HOST_ACK_FILE).write_text("read\n")
                except OSError:
                    pass
                acked = True
            time.sleep(0.02 if not acked else 0.1)
        for tail in tails:
            for event in tail.read_new():
                self.sink.event(event)

    def _pump_logs(self) -> None:
        try:
            for chunk in self.engine.logs(self.container_id):
                self._log_tail = (self._log_tail + chunk)[-65536:]
                self.sink.nnunet_output(chunk)
        except Exception:  # noqa: BLE001 - the stream ends when the container goes away
            return

    def _fill(self, report: RunReport, facts: RunFacts, verdict: Verdict, status: dict | None,
              summary: MonitorSummary, dataset: RawDataset, preprocessed_dataset: Path, mem_bytes: int,
              host_mem: int, log_path: Path, started: float, ended: float,
              records: list | None = None) -> None:
        opts = self.opts
        records = records or []
        status = status or {}
        o = verdict.outcome
        report.outcome = o
        report.interrupt_signal = facts.interrupt_signal
        report.container_exit_code = facts.container_exit_code
        report.duration_s = round(ended - started, 2)
        report.oom_kills = verdict.oom_kills
        report.oom_source = verdict.oom_source
        report.engine_oom_killed = facts.engine_oom_killed
        report.engine_oom_events = facts.engine_oom_events
        report.limit_bytes = summary.limit_bytes or status.get("limit_bytes") or mem_bytes
        report.peak_anon_bytes = _pick(summary.peak_anon_bytes, status.get("peak_anon_bytes"))
        report.peak_usage_bytes = _pick(summary.peak_usage_bytes, status.get("peak_usage_bytes"))
        report.peak_shm_bytes = status.get("peak_shm_bytes")
        report.cgroup_reader = "host" if summary.readable else ("container" if status.get("cgroup_version") else None)
        phase = facts.phase if facts.phase in ("startup", "verify", "fingerprint", "planning", "preprocessing") else None
        report.phase = None if o is Outcome.OK else phase
        report.configuration = facts.configuration if report.phase == "preprocessing" else None
        workers = (opts.npfp if phase in ("verify", "fingerprint")
                   else opts.workers_per_configuration().get(facts.configuration or "", 1))
        progress = (status.get("progress") or {}).get("Extracting dataset fingerprint")
        in_flight = cases_in_flight([c.case_id for c in dataset.cases], phase, facts.configuration, workers,
                                    preprocessed_dataset, opts.plans_name, progress[0] if progress else None)
        exact = False
        if records or getattr(self, "agent_ran", False):
            # The agent's log says exactly which cases had started and not ended.
            open_cases = [r for r in records if r.status == "unfinished" and r.phase == phase
                          and (phase != "preprocessing" or r.configuration == facts.configuration)]
            in_flight = list(dict.fromkeys(r.case for r in open_cases))
            exact = True
        if o in (Outcome.OOM, Outcome.ERROR, Outcome.KILLED, Outcome.INTERRUPTED):
            report.cases_in_flight = in_flight
            report.cases_exact = exact
        victims = [replace(v, case=case_held_by(records, v.pid, v.t)) if v.role == "worker" else v
                   for v in verdict.victims]
        report.victims = [v.to_dict() for v in victims]
        report.victim = verdict.victim
        report.victim_case = victims[0].case if victims else None
        report.cases = [r.to_dict() for r in records]
        report.monitor = {"samples": summary.samples, "interval_s": 0.1, "cpu_s": summary.cpu_s,
                          "wall_s": summary.wall_s,
                          "cpu_percent_of_one_core": round(100 * summary.cpu_s / summary.wall_s, 3)
                          if summary.wall_s else None,
                          "final_reading": summary.final_reading}
        during = during_phase(phase, facts.configuration)
        cap = format_bytes(report.limit_bytes)
        peak = (f"; anonymous memory peaked at {format_bytes(report.peak_anon_bytes)} of the {cap} cap"
                if report.peak_anon_bytes else "")
        if o is Outcome.OK and opts.no_pp:
            report.message = (f"{dataset.name}: fingerprint and plans ready in {report.duration_s:.1f} s "
                              f"(--no_pp: no case preprocessed){peak}")
        elif o is Outcome.OK:
            report.message = (f"{dataset.name} preprocessed ({' '.join(opts.configurations)}) in "
                              f"{report.duration_s:.1f} s{peak}")
        elif o is Outcome.OOM:
            report.message = oom_message(victims[0] if victims else None, phase, facts.configuration,
                                         in_flight, exact) + peak
            rec = recommend(verdict, phase, facts.configuration, opts, report.limit_bytes, host_mem)
            self.last_recommendation = rec
            if rec is not None:
                report.recommendation_text = rec.text
                if rec.options is not None:
                    mem_arg = format_mem_arg(rec.mem_bytes) if rec.mem_bytes else self.settings.mem
                    argv = nnrun_argv(rec.options, mem_arg, self.settings.passthrough_argv)
                    report.recommendation_argv = argv
                    report.recommendation = shlex.join(argv)
        elif o is Outcome.ERROR:
            line = facts.exception_line or _last_log_line(log_path) or f"exit status {facts.nnunet_returncode}"
            detail = ""
            if "No space left on device" in line or "Errno 28" in line or _disk_full(preprocessed_dataset):
                report.reason = "ENOSPC"
                detail = (f"; the output disk is full (ENOSPC: No space left on device): free space in "
                          f"{preprocessed_dataset.parent}")
            if "broadcast" in line or "shape" in line.lower():
                bad = shape_mismatches(dataset)
                if bad:
                    detail = f"; label and image shapes differ in case {', '.join(bad)}"
            report.message = f"nnU-Net failed {during}: {line}{detail}"
            report.error_detail = line
            report.hint = "fix the cause above; the full traceback is in the nnU-Net log"
        elif o is Outcome.KILLED:
            how = (f"nnU-Net was killed by signal {-facts.nnunet_returncode}"
                   if facts.nnunet_returncode is not None and facts.nnunet_returncode < 0
                   else f"the container was killed (exit code {facts.container_exit_code})")
            report.message = (f"{how} {during}, without an OOM kill: stopped from outside "
                              f"(docker kill, a scheduler or an admin?)")
            report.hint = "run the same command again"
        elif o is Outcome.INTERRUPTED:
            import signal as _signal
            name = _signal.Signals(facts.interrupt_signal).name
            report.message = f"interrupted by {name} {during}: container stopped and removed"
        elif o is Outcome.INFRA:
            report.message = (f"the container exited with code {facts.container_exit_code} before nnU-Net ran"
                              + (f": {facts.start_error}" if facts.start_error else ""))
            report.phase = "startup"

    def _plot(self, run_dir: Path, report: RunReport, dataset: RawDataset) -> str | None:
        """memory.png, rendered once at the end; a plotting failure never changes the outcome."""
        try:
            from runner.run.plot_job import PlotJob, plot_title
            title = plot_title(dataset.name, report.outcome.value, report.limit_bytes)
            job = getattr(self, "_plot_job", None)
            job = job if job is not None and job.run_dir == run_dir else PlotJob(run_dir)
            return job.result(title, report.limit_bytes)    # drawn already when the title was foreseen
        except Exception as err:  # noqa: BLE001 - e.g. matplotlib missing: say so, keep the verdict
            report.plot_error = f"{type(err).__name__}: {err}"[:300]
            return None

    def _write_report(self, run_dir: Path, report: RunReport) -> None:
        try_write_json(run_dir / REPORT_FILE, to_json(report))


def recover_dead_run(preprocessed_dataset: Path, engine: Engine, plans_name: str, active: Path | None = None,
                     keep_only: Callable[[list[Path]], list[Path]] | None = None) -> list[str]:
    """Clean up after an earlier nnrun that died without cleaning up (e.g. SIGKILLed).

    Its ``.nnrun/active.json`` is still there (we hold the locks, so it is not
    running).  If its container still runs, refuse; otherwise remove what the
    phase it died in may have left half-written, as that run would have.
    """
    active = active or preprocessed_dataset / NNRUN_DIR / ACTIVE_FILE
    try:
        dead = json.loads(active.read_text())
    except (OSError, ValueError):
        return []
    for cid in engine.list_containers(f"{RUN_LABEL}={dead.get('run_id')}"):
        if engine.state(cid).running:
            raise BadInputError(f"a container of an earlier nnrun run ({dead.get('run_id')}) is still writing "
                                f"{preprocessed_dataset.name}", hint=f"stop it: docker rm -f {cid[:12]}")
        engine.remove(cid)
    leftovers = incomplete_outputs(preprocessed_dataset)
    removed = remove_paths(keep_only(leftovers) if keep_only else leftovers)
    active.unlink(missing_ok=True)
    return removed


def attempt_summary(report: RunReport) -> dict:
    return {"run_id": report.run_id, "outcome": report.outcome.value, "exit_code": report.exit_code,
            "workers": report.workers, "phase": report.phase, "configuration": report.configuration,
            "victim": report.victim, "victim_case": report.victim_case, "oom_kills": report.oom_kills,
            "duration_s": report.duration_s, "run_dir": report.run_dir}


def try_write_json(path: Path, data: dict) -> bool:
    """nnrun's own records are best effort: a full disk must not turn the verdict into a crash."""
    try:
        write_json_atomic(path, data)
        return True
    except OSError:
        return False


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def build_manifest(run_id: str, opts: PreprocessOptions, settings: RunSettings, spec: ContainerSpec,
                   dataset: RawDataset, info, image, mem_bytes: int) -> dict:
    """What a cluster admin needs to trust and reproduce the run."""
    labels = image.labels
    return {
        "schema_version": 1,
        "run_id": run_id,
        "started": _iso(time.time()),
        "ended": None,
        "command": sys.argv,
        "nnunet_argv": nnunet_argv(opts),
        "container_command": spec.command,
        "options": asdict(opts),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "limit_bytes": mem_bytes,
        "versions": {"nnrun": __version__, "nnunetv2": labels.get("io.nnrun.nnunetv2-version"),
                     "torch": labels.get("io.nnrun.torch-version"), "image_nnrun": labels.get("io.nnrun.version")},
        "image": {"ref": image.ref, "id": image.image_id, "repo_digests": image.repo_digests, "labels": labels},
        "engine": asdict(info),
        "host": {"hostname": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "python": platform.python_version()},
        "cgroup": {"version": info.cgroup_version, "driver": info.cgroup_driver},
        "dataset": {"name": dataset.name, "path": dataset.path, "cases": len(dataset.cases),
                    "file_ending": dataset.file_ending},
        "user": spec.user,
    }
