"""Slurm backend: batch scripts, parsers of Slurm's output, and one diagnosis per submission.

``nnrun slurm submit`` makes a *submission*: one folder
``<preprocessed>/<Dataset>/.nnrun/slurm/<id>/`` holding the two batch scripts,
``submission.json`` (options and job ids), the tasks' Slurm output (``logs/``)
and nnrun's JSON report of each task (``tasks/<shard>.json``, ``tasks/plan.json``).

* The **plan job** runs ``nnrun preprocess --no_pp`` (fingerprint and plans).
* The **array job** (``--array=0-(N-1)``, or ``--array=1,3`` for a resubmission
  of some shards) depends on it (``--dependency=afterok:<plan>``, and
  ``--kill-on-invalid-dep=yes`` so that a failed plan cancels it instead of
  leaving it pending forever); task K runs ``nnrun preprocess --shard K/N``.

nnrun runs *directly* in the batch script, never through ``srun``: with srun
an OOM kill shows only in the step's state and the job itself ends
``FAILED``/``NonZeroExitCode``; run in the batch script, the job's own state is
``OUT_OF_MEMORY`` (verified on Slurm 22.05, see tests/fixtures/slurm/).

``nnrun slurm status`` reads the states back: ``scontrol show job -o`` while
the controller remembers the jobs (``MinJobAge``, 300 s by default), then
``sacct`` (with accounting), or ``sacct -c`` (the jobcomp file, when
accounting storage is disabled: it knows no array task ids, so each task
writes its own Slurm job id to ``tasks/<shard>.start``).  Combined with each
task's nnrun JSON (victim case, peak, recommendation) this gives one
diagnosis: per shard the state and outcome, the OOM-killed shards with their
case and memory peak, and one ``nnrun slurm submit ... --only-shards`` command
that resubmits just the failed shards with more memory or fewer workers.

Pure apart from reading/writing the submission folder and the optional
command runner of :class:`SlurmClient` (injected in tests): no printing, no
subprocess at import.  The CLI layer is ``runner/cli/slurm.py``.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from runner import __version__
from runner.errors import EXIT_CODES, BadInputError, InfraError, NnrunError, Outcome, exit_code_for
from runner.units import GIB, MIB, format_bytes, format_mem_arg, parse_mem

SCHEMA_VERSION = 1
SUBMISSION_FILE = "submission.json"
PLAN_SCRIPT = "plan.sbatch"
TASK_SCRIPT = "preprocess.sbatch"
TASKS_DIR = "tasks"
LOGS_DIR = "logs"
PLAN_KEY = "plan"                      # tasks/plan.{start,json,exit}
PYTHON_ENV = "NNRUN_SLURM_PYTHON"      # the Python that runs nnrun in the jobs [default: the submitting one]
INDEX_ENV = "NNRUN_SLURM_INDEX"        # folder of the job id -> submission index
HOST_PYTHON_ENV = "NNRUN_HOST_PYTHON"
DRY_RUN_PLAN_ID = "<plan job id>"
# A memory increase never below this factor when nnrun recommends none (README: "1.5x the cap").
MEM_FACTOR = 1.5

# Slurm job states (squeue/scontrol/sacct spell them the same).
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                           "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED"})
# A finished job's state -> nnrun outcome, used only when the task left no nnrun JSON.
_STATE_OUTCOME = {
    "COMPLETED": Outcome.OK,
    "OUT_OF_MEMORY": Outcome.OOM,
    "TIMEOUT": Outcome.KILLED,
    "DEADLINE": Outcome.KILLED,
    "PREEMPTED": Outcome.KILLED,
    "CANCELLED": Outcome.KILLED,
    "REVOKED": Outcome.KILLED,
    "NODE_FAIL": Outcome.INFRA,
    "BOOT_FAIL": Outcome.INFRA,
    "LAUNCH_FAILED": Outcome.INFRA,
    "SPECIAL_EXIT": Outcome.ERROR,
    "FAILED": Outcome.ERROR,
}
# Slurm's signal number for "killed for memory" in ExitCode/DerivedExitCode (0:125).
SLURM_OOM_SIGNAL = 125
# Which outcome of several tasks speaks for the whole submission: the most
# serious one (an OOM is fixed by a resubmission; an nnU-Net error or broken
# infrastructure needs a person).  The exit code then comes from errors.py.
SEVERITY = (Outcome.OK, Outcome.OOM, Outcome.KILLED, Outcome.INTERRUPTED, Outcome.ERROR,
            Outcome.BAD_INPUT, Outcome.INFRA, Outcome.BUG)


class SlurmParseError(InfraError):
    """Output of a Slurm command that does not parse."""


# --------------------------------------------------------------------------- options and scripts

@dataclass
class SubmitOptions:
    """Everything the two batch scripts are rendered from (plain data, saved in submission.json)."""

    dataset: str                         # as the user gave it to -d (501 or Dataset501_Name)
    dataset_name: str                    # Dataset501_Name (job names)
    mem: str                             # nnrun's --mem, docker syntax (16g)
    shards: int                          # N
    submission_dir: str                  # absolute
    python: str                          # runs `-m runner.cli` in the jobs
    pythonpath: str | None = None        # the folder holding this nnrun's runner package
    only_shards: list[int] | None = None
    partition: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    runtime: str = "host"                # host | podman
    host_python: str | None = None
    raw: str | None = None
    preprocessed: str | None = None
    configurations: list[str] | None = None
    np: list[str] | None = None
    npfp: str | None = None
    plans_name: str | None = None        # -overwrite_plans_name
    retry: int | None = None

    @property
    def mem_bytes(self) -> int:
        return parse_mem(self.mem)

    @property
    def array_shards(self) -> list[int]:
        return list(self.only_shards) if self.only_shards else list(range(self.shards))


def slurm_mem(n_bytes: int) -> str:
    """nnrun's cap as sbatch's --mem: whole GiB as ``16G``, else MiB rounded up (``1536M``).

    Slurm's K/M/G suffixes are binary multiples like Docker's, so the job's
    limit is the cap nnrun was given (rounded up to a whole MiB).
    """
    if n_bytes <= 0:
        raise ValueError("memory must be positive")
    if n_bytes % GIB == 0:
        return f"{n_bytes // GIB}G"
    return f"{-(-n_bytes // MIB)}M"


def array_spec(shards: Sequence[int]) -> str:
    """``--array`` for these shards: ``0-3`` for a contiguous run from its first, else ``1,3``."""
    s = sorted(set(int(x) for x in shards))
    if not s:
        raise ValueError("no shards")
    if len(s) > 1 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ",".join(str(x) for x in s)


def _common_args(o: SubmitOptions) -> list[str]:
    # Progress lines go to stderr, i.e. the job's output file; the JSON report to stdout.
    args = ["-d", str(o.dataset), "--mem", o.mem, "--runtime", o.runtime, "--json"]
    if o.runtime == "host" and o.host_python:
        args += ["--host-python", o.host_python]
    if o.raw:
        args += ["--raw", o.raw]
    if o.preprocessed:
        args += ["--preprocessed", o.preprocessed]
    if o.plans_name:
        args += ["-overwrite_plans_name", o.plans_name]
    if o.npfp is not None:
        args += ["-npfp", str(o.npfp)]
    if o.retry is not None:
        args += ["--retry", str(o.retry)]
    return args


def plan_argv(o: SubmitOptions) -> list[str]:
    """The plan job's nnrun command (after the interpreter): fingerprint and planning only."""
    return ["-m", "runner.cli", "preprocess", *_common_args(o), "--no_pp"]


def task_argv(o: SubmitOptions, shard: str = "$K/$N") -> list[str]:
    """A preprocessing task's nnrun command (after the interpreter); ``shard`` stays a shell expression."""
    args = ["-m", "runner.cli", "preprocess", *_common_args(o), "--shard", shard]
    if o.configurations:
        args += ["-c", *o.configurations]
    if o.np:
        args += ["-np", *[str(x) for x in o.np]]
    return args


def _shell(argv: Iterable[str]) -> str:
    """Shell-quote every word except a shard expression, which must expand: ``"$K/$N"``."""
    return " ".join('"$K/$N"' if a == "$K/$N" else shlex.quote(str(a)) for a in argv)


def _check_path(path: str, what: str) -> str:
    # #SBATCH lines are not shell: a blank would split the value.
    if any(c.isspace() for c in path):
        raise BadInputError(f"{what} {path!r} contains a blank, which #SBATCH lines cannot hold: "
                            f"use a folder without blanks")
    return path


def _sbatch_lines(o: SubmitOptions, job_name: str, log_name: str) -> list[str]:
    # A literal % in the folder must be %% in --output (% starts Slurm's file name patterns).
    output = f"{o.submission_dir.replace('%', '%%')}/{LOGS_DIR}/{log_name}"
    lines = [f"#SBATCH --job-name={job_name}",
             f"#SBATCH --mem={slurm_mem(o.mem_bytes)}",
             f"#SBATCH --output={output}",
             "#SBATCH --open-mode=append"]
    if o.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={int(o.cpus_per_task)}")
    if o.partition:
        lines.append(f"#SBATCH --partition={o.partition}")
    if o.time:
        lines.append(f"#SBATCH --time={o.time}")
    return lines


def _header(o: SubmitOptions) -> list[str]:
    d = o.submission_dir
    lines = [f"SUBMISSION={shlex.quote(d)}",
             f"PYTHON={shlex.quote(o.python)}"]
    if o.pythonpath:
        lines.append(f'export PYTHONPATH={shlex.quote(o.pythonpath)}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    lines.append(f'mkdir -p "$SUBMISSION/{TASKS_DIR}"')
    return lines


def _run_lines(key: str, command: str) -> list[str]:
    """Record the job id, run nnrun with its JSON to tasks/<key>.json, keep nnrun's exit code."""
    t = f'"$SUBMISSION/{TASKS_DIR}/{key}'
    return [
        f"printf 'job_id=%s\\narray_job_id=%s\\narray_task_id=%s\\nhost=%s\\nstarted=%s\\n' "
        f'"$SLURM_JOB_ID" "${{SLURM_ARRAY_JOB_ID:-}}" "${{SLURM_ARRAY_TASK_ID:-}}" "$(hostname)" '
        f'"$(date -u +%Y-%m-%dT%H:%M:%SZ)" >{t}.start"',
        f'rm -f {t}.json" {t}.exit"',
        "# nnrun runs here, in the batch step itself: not through srun (srun would hide an",
        "# OOM kill in the step's state and make the job FAILED instead of OUT_OF_MEMORY).",
        f'{command} >{t}.json.tmp"',
        "rc=$?",
        f'mv -f {t}.json.tmp" {t}.json"',
        f'echo "$rc" >{t}.exit"',
        'exit "$rc"',
    ]


def render_plan_script(o: SubmitOptions, command: str | None = None) -> str:
    _check_path(o.submission_dir, "the submission folder")
    cmd = command or f'"$PYTHON" {_shell(plan_argv(o))}'
    lines = ["#!/bin/bash",
             *_sbatch_lines(o, f"nnrun-plan-{o.dataset_name}", "plan-%j.out"),
             "#",
             f"# nnrun slurm: fingerprint and planning of {o.dataset_name} (nnrun preprocess --no_pp).",
             "# The preprocessing array starts after this job only if it succeeds (afterok).",
             "set -u",
             *_header(o),
             *_run_lines(PLAN_KEY, cmd)]
    return "\n".join(lines) + "\n"


def render_task_script(o: SubmitOptions, plan_job_id: str | None, command: str | None = None) -> str:
    _check_path(o.submission_dir, "the submission folder")
    cmd = command or f'"$PYTHON" {_shell(task_argv(o))}'
    lines = ["#!/bin/bash",
             *_sbatch_lines(o, f"nnrun-pp-{o.dataset_name}", "preprocess-%A_%a.out"),
             f"#SBATCH --array={array_spec(o.array_shards)}"]
    if plan_job_id:
        lines += [f"#SBATCH --dependency=afterok:{plan_job_id}",
                  "#SBATCH --kill-on-invalid-dep=yes"]
    lines += ["#",
              f"# nnrun slurm: preprocessing of {o.dataset_name}, one array task per shard:",
              f"# task K runs nnrun preprocess --shard K/{o.shards} (its cases are in the shard map",
              "# .nnrun/shards.<plans>.json of the preprocessed dataset folder).",
              "set -u",
              *_header(o),
              'K="${SLURM_ARRAY_TASK_ID:?this script runs as a Slurm array task}"',
              f"N={int(o.shards)}",
              *_run_lines("$K", cmd)]
    return "\n".join(lines) + "\n"


def new_submission_id(now: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(3)


def submission_record(o: SubmitOptions, submission_id: str, plan_job_id: str | None, array_job_id: str | None,
                      cluster: str | None = None) -> dict:
    return {"schema_version": SCHEMA_VERSION, "nnrun_version": __version__, "id": submission_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "options": asdict(o),
            "array": array_spec(o.array_shards), "plan_job_id": plan_job_id, "array_job_id": array_job_id,
            "cluster": cluster,
            "scripts": {"plan": PLAN_SCRIPT if plan_job_id else None, "preprocess": TASK_SCRIPT}}


def options_from_record(record: dict) -> SubmitOptions:
    known = SubmitOptions.__dataclass_fields__
    return SubmitOptions(**{k: v for k, v in record["options"].items() if k in known})


def load_submission(path: str | os.PathLike) -> dict:
    p = Path(path)
    f = p / SUBMISSION_FILE if p.is_dir() else p
    try:
        data = json.loads(f.read_text())
    except FileNotFoundError:
        raise BadInputError(f"no {SUBMISSION_FILE} in {p}: not an nnrun Slurm submission folder") from None
    except (OSError, ValueError) as err:
        raise BadInputError(f"cannot read {f}: {err}") from None
    if not isinstance(data, dict) or "options" not in data:
        raise BadInputError(f"{f} is not an nnrun Slurm submission record")
    data["_dir"] = str(f.parent)
    return data


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".tmp.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the job id index

def index_dir(environ: dict | None = None) -> Path:
    """Where ``status JOBID`` finds the submission of a job id, also after Slurm forgot the job."""
    env = os.environ if environ is None else environ
    if env.get(INDEX_ENV):
        return Path(env[INDEX_ENV])
    base = Path(env.get("XDG_CACHE_HOME") or Path(env.get("HOME") or Path.home()) / ".cache")
    return base / "nnrun" / "slurm-jobs"


def _index_key(job_id: str, cluster: str | None = None) -> str:
    return f"{cluster}-{job_id}" if cluster else str(job_id)


def index_add(job_id: str, submission_dir: str, cluster: str | None = None, environ: dict | None = None) -> None:
    d = index_dir(environ)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{job_id}.{os.getpid()}"
    tmp.write_text(str(submission_dir) + "\n")
    os.replace(tmp, d / _index_key(job_id, cluster))


def index_lookup(job_id: str, cluster: str | None = None, environ: dict | None = None) -> str | None:
    try:
        return (index_dir(environ) / _index_key(job_id, cluster)).read_text().strip() or None
    except OSError:
        return None


_JOB_ARG = re.compile(r"^(\d+)(?:_(\d+))?(?:;(\S+))?$")


def parse_job_arg(text: str) -> tuple[str, int | None, str | None] | None:
    """``4``, ``4_1`` (array task), ``4;cluster`` -> (job id, task id, cluster); None when not a job id."""
    m = _JOB_ARG.match(text.strip())
    if not m:
        return None
    return m.group(1), int(m.group(2)) if m.group(2) else None, m.group(3)


# --------------------------------------------------------------------------- parsers

def parse_sbatch_parsable(stdout: str) -> tuple[str, str | None]:
    """``sbatch --parsable``: ``<job id>`` or ``<job id>;<cluster>`` on the last line."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise SlurmParseError("sbatch --parsable printed no job id")
    m = re.fullmatch(r"(\d+)(?:;(\S+))?", lines[-1])
    if not m:
        raise SlurmParseError(f"sbatch --parsable printed {lines[-1]!r}, not a job id")
    return m.group(1), m.group(2)


_KEY = re.compile(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_scontrol_line(line: str) -> dict[str, str]:
    """One ``scontrol show job -o`` record: ``Key=Value`` pairs; a value may hold blanks
    (``Reason=(ReqNodeNotAvail, ...)``): it runs to the next `` Key=``."""
    line = line.strip()
    matches = list(_KEY.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def parse_scontrol_jobs(text: str) -> list[dict[str, str]]:
    """Every record of ``scontrol show job -o`` (one per line; array tasks are separate records)."""
    return [rec for rec in (parse_scontrol_line(line) for line in text.splitlines() if line.strip())
            if "JobId" in rec]


SQUEUE_FORMAT = "%i|%A|%F|%K|%j|%T|%r"
_SQUEUE_FIELDS = ("id", "job_id", "array_job_id", "array_task_id", "name", "state", "reason")


def parse_squeue(text: str) -> list[dict[str, str | None]]:
    """``squeue -h -r -o '%i|%A|%F|%K|%j|%T|%r'``: one line per job or array task."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split("|")
        if len(parts) != len(_SQUEUE_FIELDS):
            raise SlurmParseError(f"unexpected squeue line {line!r}")
        row: dict[str, str | None] = dict(zip(_SQUEUE_FIELDS, parts))
        if row["array_task_id"] in ("N/A", ""):
            row["array_task_id"] = None
        out.append(row)
    return out


def parse_sacct(text: str) -> list[dict[str, str]]:
    """``sacct -P`` (with its header line): one dict per line, keyed by the header's column names.

    Lines that do not have the header's number of fields (``sacct -c`` writes
    "Unknown type ArrayJobId" errors to stderr, but be lenient) are skipped.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    header_i = next((i for i, line in enumerate(lines) if line.startswith("JobID")), None)
    if header_i is None:
        return []
    header = lines[header_i].split("|")
    rows = []
    for line in lines[header_i + 1:]:
        parts = line.split("|")
        if len(parts) == len(header):
            rows.append(dict(zip(header, parts)))
    return rows


def expand_array_range(text: str) -> list[int]:
    """Slurm's array index expression: ``0-2``, ``1,3``, ``[0-9]``, ``0-8:2``, ``0-15%4``."""
    t = text.strip().strip("[]")
    t = t.split("%", 1)[0]
    out: list[int] = []
    for part in t.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part)
        if not m:
            raise SlurmParseError(f"unexpected array index expression {text!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        step = int(m.group(3)) if m.group(3) else 1
        out.extend(range(lo, hi + 1, step))
    return sorted(set(out))


def _signal_of(exit_code: str | None) -> int | None:
    """``0:125`` -> 125 (the part after the colon)."""
    if not exit_code or ":" not in exit_code:
        return None
    try:
        return int(exit_code.split(":", 1)[1])
    except ValueError:
        return None


def _status_of(exit_code: str | None) -> int | None:
    if not exit_code:
        return None
    try:
        return int(exit_code.split(":", 1)[0])
    except ValueError:
        return None


def _norm_state(state: str | None) -> str | None:
    """``CANCELLED by 0`` -> ``CANCELLED``; ``OUT_OF_ME+`` is never produced with -P."""
    if not state:
        return None
    return state.split()[0].rstrip("+").upper()


@dataclass
class JobState:
    """One job or array task as Slurm reports it."""

    job_id: str | None               # the task's own job id (JobId / JobIDRaw)
    array_job_id: str | None
    array_task_id: int | None
    state: str | None
    reason: str | None = None
    exit_code: str | None = None     # "0:125"
    derived_exit_code: str | None = None
    time_limit: str | None = None
    source: str = "scontrol"         # scontrol | squeue | sacct | sacct -c
    step_states: list[str] = field(default_factory=list)   # sacct with accounting: states of .batch etc.


def states_from_scontrol(records: list[dict[str, str]]) -> list[JobState]:
    """Array tasks are separate records; a pending meta record (``ArrayTaskId=0-2``) stands for each of its tasks."""
    out = []
    for r in records:
        base = dict(job_id=r.get("JobId"), array_job_id=r.get("ArrayJobId"), state=_norm_state(r.get("JobState")),
                    reason=r.get("Reason"), exit_code=r.get("ExitCode"), time_limit=r.get("TimeLimit"),
                    source="scontrol")
        tid = r.get("ArrayTaskId")
        if tid is None:
            out.append(JobState(array_task_id=None, **base))
        elif re.fullmatch(r"\d+", tid):
            out.append(JobState(array_task_id=int(tid), **base))
        else:
            for k in expand_array_range(tid):
                out.append(JobState(array_task_id=k, **{**base, "job_id": None}))
    return out


def states_from_squeue(rows: list[dict]) -> list[JobState]:
    out = []
    for r in rows:
        tid = r.get("array_task_id")
        tasks = [None] if tid is None else (expand_array_range(tid) if not str(tid).isdigit() else [int(tid)])
        for k in tasks:
            out.append(JobState(job_id=r.get("job_id") if tid is None or str(tid).isdigit() else None,
                                array_job_id=r.get("array_job_id") if tid is not None else None,
                                array_task_id=k, state=_norm_state(r.get("state")), reason=r.get("reason"),
                                source="squeue"))
    return out


def states_from_sacct(rows: list[dict[str, str]], source: str = "sacct") -> list[JobState]:
    """sacct rows to job states.  With accounting, JobID is ``4_1`` for array tasks and steps
    (``4_1.batch``) follow their job: their states are kept (an OOM may show only in a step).
    ``sacct -c`` has plain job ids only (no array fields)."""
    jobs: dict[str, JobState] = {}
    order: list[str] = []
    for r in rows:
        jid = r.get("JobID", "")
        main, _, step = jid.partition(".")
        if step:
            if main in jobs:
                st = _norm_state(r.get("State"))
                if st:
                    jobs[main].step_states.append(st)
            continue
        m = re.fullmatch(r"(\d+)(?:_(\d+|\[.*\]))?", main)
        if not m:
            continue
        array_job, task = (m.group(1), m.group(2)) if m.group(2) else (None, None)
        raw = r.get("JobIDRaw") or (main if not m.group(2) else None)
        common = dict(state=_norm_state(r.get("State")), exit_code=r.get("ExitCode"),
                      derived_exit_code=r.get("DerivedExitCode"), time_limit=r.get("Timelimit"), source=source)
        if task and task.startswith("["):
            for k in expand_array_range(task):
                key = f"{array_job}_{k}"
                jobs[key] = JobState(job_id=None, array_job_id=array_job, array_task_id=k, **common)
                order.append(key)
            continue
        jobs[main] = JobState(job_id=raw, array_job_id=array_job, array_task_id=int(task) if task else None, **common)
        order.append(main)
    return [jobs[k] for k in order]


# --------------------------------------------------------------------------- the task files

def read_task_files(submission_dir: str | os.PathLike, key: str) -> dict:
    """tasks/<key>.start (key=value lines), .json (nnrun's report), .exit (nnrun's exit code)."""
    d = Path(submission_dir) / TASKS_DIR
    out: dict = {"start": None, "nnrun": None, "exit": None, "json_path": None, "json_error": None}
    try:
        out["start"] = dict(line.split("=", 1) for line in (d / f"{key}.start").read_text().splitlines()
                            if "=" in line)
    except OSError:
        pass
    path = d / f"{key}.json"
    if path.exists():
        out["json_path"] = str(path)
        out["nnrun"], out["json_error"] = parse_task_json(path.read_text(errors="replace"))
    try:
        out["exit"] = int((d / f"{key}.exit").read_text().strip())
    except (OSError, ValueError):
        pass
    return out


def parse_task_json(text: str) -> tuple[dict | None, str | None]:
    """nnrun's ``--json`` output: one JSON object (the last line that is one). (report, error)."""
    for line in reversed([line for line in text.splitlines() if line.strip()]):
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and "outcome" in data:
            try:
                Outcome(data["outcome"])
            except ValueError:
                return None, f"unknown outcome {data['outcome']!r}"
            return data, None
    return None, "no nnrun JSON report" if not text.strip() else "nnrun's output is not a JSON report"


# --------------------------------------------------------------------------- diagnosis

@dataclass
class TaskView:
    role: str                               # plan | shard
    shard: int | None
    job_id: str | None = None               # the task's own Slurm job id
    array_job_id: str | None = None
    slurm_state: str | None = None
    slurm_reason: str | None = None
    slurm_exit_code: str | None = None
    slurm_derived_exit_code: str | None = None
    slurm_time_limit: str | None = None
    step_states: list[str] = field(default_factory=list)
    source: str | None = None               # where the state came from
    finished: bool = False
    outcome: Outcome | None = None
    nnrun_outcome: str | None = None
    nnrun_exit_code: int | None = None
    victim_case: str | None = None
    cases_in_flight: list[str] = field(default_factory=list)
    phase: str | None = None
    peak_anon_bytes: int | None = None
    limit_bytes: int | None = None
    message: str | None = None
    recommendation_argv: list[str] | None = None
    run_dir: str | None = None
    dataset_complete: bool | None = None
    json_path: str | None = None
    output_path: str | None = None
    note: str | None = None
    retried_after_oom: list[dict] = field(default_factory=list)   # nnrun's earlier attempts that were OOM-killed

    @property
    def label(self) -> str:
        if self.role == "plan":
            return "plan"
        return f"shard {self.shard}"

    @property
    def slurm_id(self) -> str | None:
        if self.role == "shard" and self.array_job_id and self.shard is not None:
            return f"{self.array_job_id}_{self.shard}"
        return self.job_id

    def to_json(self) -> dict:
        d = asdict(self)
        d["outcome"] = self.outcome.value if self.outcome else None
        d["slurm_id"] = self.slurm_id
        return d


def _slurm_says_oom(v: TaskView) -> bool:
    return (v.slurm_state == "OUT_OF_MEMORY" or "OUT_OF_MEMORY" in v.step_states
            or _signal_of(v.slurm_exit_code) == SLURM_OOM_SIGNAL
            or _signal_of(v.slurm_derived_exit_code) == SLURM_OOM_SIGNAL)


def _outcome_for_exit(code: int) -> Outcome | None:
    for outcome, c in EXIT_CODES.items():
        if c == code:
            return outcome
    if code in (143, 130):
        return Outcome.INTERRUPTED
    if code > 128:              # killed by a signal (128 + n) that Slurm did not count as an OOM kill
        return Outcome.KILLED
    return None


def classify(v: TaskView) -> None:
    """Fill ``finished``/``outcome``/``note`` of one task from its Slurm state and its nnrun JSON."""
    state = v.slurm_state
    if state in ACTIVE_STATES:
        if state == "PENDING" and (v.slurm_reason or "").startswith("DependencyNeverSatisfied"):
            v.finished, v.outcome = True, None
            v.note = "never started: the plan job failed (its dependency can never be satisfied)"
        else:
            v.finished = False
        return
    v.finished = True
    if v.nnrun_outcome:
        v.outcome = Outcome(v.nnrun_outcome)
        if _slurm_says_oom(v) and v.outcome not in (Outcome.OK, Outcome.OOM):
            v.note = f"nnrun said {v.outcome.value}, Slurm counted an OOM kill in the job: oom"
            v.outcome = Outcome.OOM
        elif _slurm_says_oom(v) and v.outcome is Outcome.OK:
            first = v.retried_after_oom[0] if v.retried_after_oom else {}
            where = "".join([f" in {first['phase']}" if first.get("phase") else "",
                             f" on case {first['victim_case']}" if first.get("victim_case") else ""])
            v.note = (f"Slurm counted an OOM kill{where}; nnrun retried with fewer workers and finished"
                      if v.retried_after_oom else
                      "Slurm counted an OOM kill in this job, but nnrun finished its work")
        return
    if state is None:
        if v.nnrun_exit_code is not None:
            v.outcome = _outcome_for_exit(v.nnrun_exit_code) or Outcome.ERROR
            v.note = "Slurm no longer knows this job; outcome from nnrun's exit code"
        elif v.role == "shard" and v.job_id is None:
            v.outcome = None
            v.note = "never started, and Slurm has no record of it"
        else:
            v.outcome = Outcome.INFRA
            v.note = "Slurm has no record of this job and it left no nnrun report"
        return
    if _slurm_says_oom(v):
        v.outcome = Outcome.OOM
        if state != "OUT_OF_MEMORY":
            v.note = f"Slurm state {state}, but an OOM kill shows in its exit codes or steps"
        elif v.json_path:
            v.note = "no nnrun report: nnrun's own process was killed too (case unknown)"
        return
    if state == "FAILED":
        code = v.nnrun_exit_code if v.nnrun_exit_code is not None else _status_of(v.slurm_exit_code)
        if code in (126, 127):
            v.outcome = Outcome.INFRA
            v.note = f"the job could not run nnrun (exit {code}): check the Python in the batch script"
        else:
            v.outcome = (_outcome_for_exit(code) if code is not None else None) or Outcome.ERROR
            v.note = f"no nnrun report; the job exited {code}"
        return
    if state == "CANCELLED" and v.job_id is None and v.role == "shard":
        if (v.slurm_reason or "").startswith("Dependency"):
            # The plan job's failure speaks for these.
            v.outcome, v.note = None, "cancelled before it started: the plan job did not complete"
        else:
            v.outcome, v.note = Outcome.KILLED, "cancelled before it started"
        return
    v.outcome = _STATE_OUTCOME.get(state, Outcome.ERROR)
    if state == "TIMEOUT":
        v.note = f"hit its time limit ({v.slurm_time_limit or 'partition default'})"


@dataclass
class SlurmDiagnosis:
    submission_id: str
    submission_dir: str
    dataset: str
    shards: int
    plan_job_id: str | None
    array_job_id: str | None
    plan: TaskView | None
    tasks: list[TaskView]
    finished: bool
    outcome: Outcome
    message: str
    failed_shards: list[int] = field(default_factory=list)
    oom_shards: list[int] = field(default_factory=list)
    recommendation_argv: list[str] | None = None
    advice: list[str] = field(default_factory=list)
    dataset_complete: bool | None = None
    sources: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return exit_code_for(self.outcome, 15 if self.outcome is Outcome.INTERRUPTED else None)

    @property
    def recommendation(self) -> str | None:
        return shlex.join(self.recommendation_argv) if self.recommendation_argv else None

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "nnrun_version": __version__,
                "outcome": self.outcome.value, "exit_code": self.exit_code, "finished": self.finished,
                "message": self.message, "submission_id": self.submission_id,
                "submission_dir": self.submission_dir, "dataset": self.dataset, "shards": self.shards,
                "plan_job_id": self.plan_job_id, "array_job_id": self.array_job_id,
                "plan": self.plan.to_json() if self.plan else None,
                "tasks": [t.to_json() for t in self.tasks],
                "failed_shards": self.failed_shards, "oom_shards": self.oom_shards,
                "recommendation": self.recommendation, "recommendation_argv": self.recommendation_argv,
                "advice": self.advice, "dataset_complete": self.dataset_complete, "sources": self.sources}


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    return max(outcomes, key=SEVERITY.index, default=Outcome.OK)


def _view(role: str, shard: int | None, files: dict, state: JobState | None) -> TaskView:
    v = TaskView(role=role, shard=shard)
    start = files.get("start") or {}
    v.job_id = (state.job_id if state and state.job_id else None) or start.get("job_id") or None
    v.array_job_id = (state.array_job_id if state else None) or start.get("array_job_id") or None
    if state:
        v.slurm_state, v.slurm_reason = state.state, state.reason
        v.slurm_exit_code, v.slurm_derived_exit_code = state.exit_code, state.derived_exit_code
        v.slurm_time_limit, v.step_states, v.source = state.time_limit, list(state.step_states), state.source
    rep = files.get("nnrun")
    v.json_path = files.get("json_path")
    v.nnrun_exit_code = files.get("exit")
    if rep:
        v.nnrun_outcome = rep.get("outcome")
        v.victim_case = rep.get("victim_case")
        v.cases_in_flight = list(rep.get("cases_in_flight") or [])
        v.phase = rep.get("phase")
        v.peak_anon_bytes = rep.get("peak_anon_bytes")
        v.limit_bytes = rep.get("limit_bytes")
        v.message = rep.get("message")
        v.recommendation_argv = rep.get("recommendation_argv")
        v.run_dir = rep.get("run_dir")
        v.dataset_complete = rep.get("dataset_complete")
        v.retried_after_oom = [{k: a.get(k) for k in ("phase", "victim_case", "workers")}
                               for a in (rep.get("attempts") or [])[:-1]
                               if isinstance(a, dict) and a.get("outcome") == "oom"]
        if v.nnrun_exit_code is None and isinstance(rep.get("exit_code"), int):
            v.nnrun_exit_code = rep["exit_code"]
    elif files.get("json_error") and files.get("exit") is not None:
        v.message = f"{files['json_error']} (nnrun exited {files['exit']})"
    classify(v)
    return v


def build_views(record: dict, states: list[JobState]) -> tuple[TaskView | None, list[TaskView]]:
    """Join Slurm's states with the task files of a submission."""
    d = record["_dir"]
    opts = options_from_record(record)
    plan_id, array_id = record.get("plan_job_id"), record.get("array_job_id")
    by_task: dict[int, JobState] = {}
    by_job: dict[str, JobState] = {}
    for s in states:
        if s.array_job_id and s.array_task_id is not None and str(s.array_job_id) == str(array_id):
            by_task[s.array_task_id] = s
        if s.job_id:
            by_job.setdefault(str(s.job_id), s)
    plan = None
    if plan_id:
        plan = _view("plan", None, read_task_files(d, PLAN_KEY), by_job.get(str(plan_id)))
        plan.job_id = str(plan_id)
        plan.output_path = str(Path(d) / LOGS_DIR / f"plan-{plan_id}.out")
    claimed = {str(s.job_id) for s in by_task.values() if s.job_id}
    views = []
    for k in opts.array_shards:
        files = read_task_files(d, str(k))
        state = by_task.get(k)
        if state is None:
            # sacct -c knows no array task ids: the task recorded its own job id when it started.
            jid = (files.get("start") or {}).get("job_id")
            if jid and jid in by_job:
                state = by_job[jid]
                claimed.add(jid)
        if state is None and array_id and str(array_id) in by_job and str(array_id) not in claimed \
                and not (files.get("start") or {}).get("job_id"):
            # The array's own record, not taken by a task that ran: it stands for the tasks that never
            # started (e.g. CANCELLED when the plan failed).
            meta = by_job[str(array_id)]
            state = JobState(job_id=None, array_job_id=str(array_id), array_task_id=k, state=meta.state,
                             reason=meta.reason, exit_code=meta.exit_code, time_limit=meta.time_limit,
                             source=meta.source)
        v = _view("shard", k, files, state)
        if (plan is not None and plan.finished and plan.slurm_state not in (None, "COMPLETED")
                and v.slurm_state == "CANCELLED" and v.job_id is None):
            # afterok: a plan job that did not end COMPLETED cancels the tasks (sacct -c gives no reason).
            v.outcome, v.note = None, "cancelled before it started: the plan job did not complete"
        if v.array_job_id is None and array_id:
            v.array_job_id = str(array_id)
        if array_id:
            v.output_path = str(Path(d) / LOGS_DIR / f"preprocess-{array_id}_{k}.out")
        views.append(v)
    return plan, views


def _time_to_minutes(text: str | None) -> int | None:
    """Slurm time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S -> whole minutes (rounded up)."""
    if not text or text.upper() in ("UNLIMITED", "INFINITE", "N/A", "NONE"):
        return None
    days = 0
    t = text
    if "-" in t:
        d, t = t.split("-", 1)
        days = int(d)
        parts = [int(x) for x in t.split(":")]
        h, m, s = (parts + [0, 0, 0])[:3]
    else:
        parts = [int(x) for x in t.split(":")]
        if len(parts) == 1:
            h, m, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, s = 0, parts[0], parts[1]
        else:
            h, m, s = parts[:3]
    return days * 1440 + h * 60 + m + (1 if s else 0)


def _format_minutes(minutes: int) -> str:
    d, rest = divmod(int(minutes), 1440)
    h, m = divmod(rest, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


def _opt_values(argv: Sequence[str], flag: str) -> list[str] | None:
    """The values after ``flag`` in an nnrun command line (up to the next option)."""
    if flag not in argv:
        return None
    i = list(argv).index(flag) + 1
    vals = []
    while i < len(argv) and not (argv[i].startswith("-") and not _is_number(argv[i])):
        vals.append(argv[i])
        i += 1
    return vals


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _suggestion(v: TaskView, current_mem: int, fallback_mem: int) -> tuple[int | None, list[str] | None, str | None]:
    """(mem, -np values, -npfp) nnrun recommends for a failed OOM task; mem None when it recommends fewer workers."""
    argv = v.recommendation_argv or []
    mem = None
    rec_mem = _opt_values(argv, "--mem")
    if rec_mem:
        try:
            mem = parse_mem(rec_mem[0])
        except NnrunError:
            mem = None
    np_ = [x for x in (_opt_values(argv, "-np") or []) if x.isdigit()]
    npfp = [x for x in (_opt_values(argv, "-npfp") or []) if x.isdigit()]
    fewer_workers = bool(np_ or npfp) and (mem is None or mem <= current_mem)
    if fewer_workers:
        return None, np_ or None, npfp[0] if npfp else None
    if mem is not None and mem > current_mem:
        return mem, None, None
    return fallback_mem, None, None


def submit_argv(o: SubmitOptions, mem: str, only_shards: list[int] | None, np_: list[str] | None = None,
                npfp: str | None = None, time_limit: str | None = None) -> list[str]:
    """``nnrun slurm submit`` with the same options as ``o``, some replaced."""
    argv = ["nnrun", "slurm", "submit", "-d", str(o.dataset), "--mem", mem, "--shards", str(o.shards)]
    if only_shards:
        argv += ["--only-shards", ",".join(str(s) for s in sorted(only_shards))]
    for flag, value in (("--partition", o.partition), ("--time", time_limit or o.time),
                        ("--cpus-per-task", o.cpus_per_task), ("--raw", o.raw),
                        ("--preprocessed", o.preprocessed), ("-overwrite_plans_name", o.plans_name),
                        ("--retry", o.retry)):
        if value is not None:
            argv += [flag, str(value)]
    if o.runtime != "host":
        argv += ["--runtime", o.runtime]
    elif o.host_python:
        argv += ["--host-python", o.host_python]
    if o.configurations:
        argv += ["-c", *o.configurations]
    npv = np_ if np_ is not None else o.np
    if npv:
        argv += ["-np", *[str(x) for x in npv]]
    npfpv = npfp if npfp is not None else o.npfp
    if npfpv is not None:
        argv += ["-npfp", str(npfpv)]
    return argv


def _min_np(values: list[list[str]]) -> list[str]:
    """Element-wise minimum of several -np recommendations (one value or one per configuration)."""
    width = max(len(v) for v in values)
    spread = [v if len(v) == width else [v[0]] * width for v in values]
    return [str(min(int(col[i]) for col in spread)) for i in range(width)]


def diagnose(record: dict, plan: TaskView | None, tasks: list[TaskView], sources: Sequence[str] = ()) -> SlurmDiagnosis:
    """One verdict for a submission: per task outcome, the worst one, and one resubmit command."""
    opts = options_from_record(record)
    d = SlurmDiagnosis(submission_id=record.get("id", "?"), submission_dir=record["_dir"], dataset=str(opts.dataset),
                       shards=opts.shards, plan_job_id=record.get("plan_job_id"),
                       array_job_id=record.get("array_job_id"), plan=plan, tasks=tasks, finished=False,
                       outcome=Outcome.OK, message="", sources=list(sources))
    every = ([plan] if plan else []) + tasks
    d.finished = all(v.finished for v in every)
    done = [v for v in every if v.finished and v.outcome is not None]
    d.outcome = worst(v.outcome for v in done)
    d.dataset_complete = True if any(v.dataset_complete for v in tasks) else (
        False if any(v.dataset_complete is False for v in tasks) else None)
    current = opts.mem_bytes
    fallback = parse_mem(format_mem_arg(math.ceil(current * MEM_FACTOR)))

    plan_failed = plan is not None and plan.finished and plan.outcome not in (None, Outcome.OK)
    d.failed_shards = [v.shard for v in tasks if v.finished and v.outcome is not Outcome.OK]
    d.oom_shards = [v.shard for v in tasks if v.outcome is Outcome.OOM]
    running = [v for v in every if not v.finished]
    ok = [v for v in tasks if v.outcome is Outcome.OK]
    never_ran = [v for v in tasks if v.finished and v.outcome is None]
    # afterok: a plan job that Slurm did not end COMPLETED cancels the array, even when nnrun inside it
    # finished the plans (e.g. after an OOM kill it recovered from by a retry: Slurm still says OUT_OF_MEMORY).
    plan_blocked = (not plan_failed and plan is not None and bool(never_ran)
                    and plan.slurm_state not in (None, "COMPLETED"))
    if never_ran and not plan_failed:
        d.outcome = worst([d.outcome, _STATE_OUTCOME.get(plan.slurm_state, Outcome.KILLED)
                           if plan_blocked else Outcome.KILLED])

    # The one command to run next: just the failed shards, with more memory or fewer workers.
    failed_views = [plan] if plan_failed else [v for v in tasks if v.shard in d.failed_shards]
    ooms = [v for v in failed_views if v.outcome is Outcome.OOM]
    mems, nps, npfps = [], [], []
    for v in ooms:
        mem, np_, npfp = _suggestion(v, current, fallback)
        if mem:
            mems.append(mem)
        if np_:
            nps.append(np_)
        if npfp:
            npfps.append(npfp)
    timeouts = [v for v in failed_views if v.slurm_state == "TIMEOUT"]
    new_time = None
    if timeouts:
        limits = [m for m in (_time_to_minutes(v.slurm_time_limit or opts.time) for v in timeouts) if m]
        if limits:
            new_time = _format_minutes(2 * max(limits))
    if d.finished and failed_views:
        new_mem = format_mem_arg(max(mems)) if mems else opts.mem
        d.recommendation_argv = submit_argv(
            opts, new_mem, None if plan_failed else d.failed_shards,
            np_=_min_np(nps) if nps else None, npfp=str(min(int(x) for x in npfps)) if npfps else None,
            time_limit=new_time)

    # Advice lines.
    for v in ooms:
        what = f"{v.label} (Slurm {v.slurm_id or v.job_id or '?'})"
        case = f" on case {v.victim_case}" if v.victim_case else (
            f" (cases in flight: {', '.join(v.cases_in_flight)})" if v.cases_in_flight else "")
        peak = (f"; peak {format_bytes(v.peak_anon_bytes)} of the {format_bytes(v.limit_bytes or current)} cap"
                if v.peak_anon_bytes else "")
        d.advice.append(f"{what} was OOM-killed{case}{peak}")
    if nps or npfps:
        d.advice.append("nnrun recommends fewer workers under the same memory: resubmit with the command below")
    elif mems:
        d.advice.append(f"resubmit with more memory: --mem {format_mem_arg(max(mems))} (was {opts.mem})")
    for v in failed_views:
        if v.outcome in (Outcome.ERROR, Outcome.BAD_INPUT):
            d.advice.append(f"{v.label}: {v.outcome.value}: {v.message or v.note or 'see its output'}; "
                            f"fix the cause before resubmitting ({v.output_path})")
        elif v.outcome is Outcome.INFRA:
            d.advice.append(f"{v.label}: infrastructure: {v.note or v.message or ''} ({v.output_path})")
        elif v.slurm_state == "TIMEOUT":
            d.advice.append(f"{v.label} hit its time limit"
                            + (f": resubmit with --time {new_time}" if new_time else ""))
    if plan_failed:
        d.advice.append("the plan job failed, so no shard ran: resubmit the whole dataset")
    elif plan_blocked:
        d.advice.append("the plans exist: resubmit the shards alone (the command below has no plan job)")
    if d.finished and not failed_views and not plan_failed and tasks and len(ok) == len(tasks):
        if d.dataset_complete is False:
            d.advice.append("these shards are done, but other shards of the dataset are not: "
                            f"check with nnrun merge -d {opts.dataset}")

    # The headline.
    n = len(tasks)
    if plan_failed:
        v = plan
        cause = "OOM-killed" if v.outcome is Outcome.OOM else v.outcome.value
        d.message = (f"the plan job {v.job_id} (fingerprint and planning) failed ({cause}"
                     f"{', Slurm ' + v.slurm_state if v.slurm_state else ''}); none of the {n} shard task(s) ran")
    elif plan_blocked:
        first = plan.retried_after_oom[0] if plan.retried_after_oom else None
        how = (f" (nnrun retried after an OOM kill{' on case ' + first['victim_case'] if first.get('victim_case') else ''})"
               if first is not None else "")
        d.message = (f"the plan job {plan.job_id} wrote the plans{how}, but Slurm ended it {plan.slurm_state}, "
                     f"so afterok cancelled the {len(never_ran)} shard task(s)")
    elif d.oom_shards:
        parts = []
        for v in ooms:
            parts.append(f"shard {v.shard} (task {v.slurm_id})" + (f" on case {v.victim_case}" if v.victim_case else ""))
        d.message = (f"{len(d.oom_shards)} of {n} shard task(s) OOM-killed by Slurm: {'; '.join(parts)}; "
                     f"{len(ok)} completed")
    elif d.failed_shards:
        d.message = (f"{len(d.failed_shards)} of {n} shard task(s) failed (shards "
                     f"{', '.join(str(s) for s in d.failed_shards)}); {len(ok)} completed")
    elif d.finished:
        d.message = f"all {n} shard task(s) completed" + (
            "; the preprocessed dataset is complete" if d.dataset_complete else "")
    else:
        d.message = f"{len(ok)} of {n} shard task(s) completed so far"
    if running:
        pend = sum(1 for v in running if v.slurm_state == "PENDING")
        d.message += f"; still in the queue: {len(running)} ({pend} pending)"
    return d


# --------------------------------------------------------------------------- talking to Slurm

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _default_runner(argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def _first_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower():
            return line
    return lines[-1] if lines else "no message"


_USER_ERRORS = ("invalid partition", "memory specification", "requested node configuration", "invalid account",
                "invalid qos", "time limit", "invalid time", "more processors than", "invalid generic resource")


class SlurmClient:
    """The Slurm commands nnrun runs, through an injectable runner."""

    def __init__(self, runner: Runner | None = None) -> None:
        self.run = runner or _default_runner

    def _call(self, argv: Sequence[str]) -> "subprocess.CompletedProcess[str]":
        try:
            return self.run(argv)
        except FileNotFoundError:
            raise InfraError(f"{argv[0]} not found: this is not a Slurm submit host "
                             f"(install the Slurm client, or load its module)") from None
        except subprocess.TimeoutExpired:
            raise InfraError(f"{argv[0]} did not answer within 60 s: is slurmctld reachable?") from None

    def sbatch(self, script: str, extra: Sequence[str] = ()) -> tuple[str, str | None]:
        p = self._call(["sbatch", "--parsable", *extra, script])
        if p.returncode != 0:
            msg = _first_error(p.stderr)
            cls = BadInputError if any(s in msg.lower() for s in _USER_ERRORS) else InfraError
            raise cls(f"sbatch refused {os.path.basename(script)}: {msg}")
        return parse_sbatch_parsable(p.stdout)

    def scancel(self, job_id: str) -> None:
        self._call(["scancel", str(job_id)])

    def scontrol_jobs(self, job_id: str) -> list[JobState] | None:
        """The job's records (array: one per task), or None when the controller forgot it."""
        p = self._call(["scontrol", "show", "job", "-o", str(job_id)])
        if p.returncode != 0:
            if "invalid job id" in (p.stderr + p.stdout).lower():
                return None
            raise InfraError(f"scontrol show job {job_id} failed: {_first_error(p.stderr)}")
        return states_from_scontrol(parse_scontrol_jobs(p.stdout))

    def squeue(self, job_ids: Sequence[str]) -> list[JobState]:
        """Jobs of these ids still in the queue (pending, running, completing)."""
        p = self._call(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", SQUEUE_FORMAT])
        if p.returncode != 0:
            if "invalid job id" in (p.stderr + p.stdout).lower():
                return []
            raise InfraError(f"squeue failed: {_first_error(p.stderr)}")
        return states_from_squeue(parse_squeue(p.stdout))

    SACCT_FIELDS = "JobID,JobIDRaw,JobName,State,ExitCode,DerivedExitCode,Timelimit,MaxRSS"
    SACCT_C_FIELDS = "JobID,JobName,State,ExitCode,DerivedExitCode,Timelimit,Start,End"

    def sacct(self, job_ids: Sequence[str]) -> tuple[list[JobState], str]:
        """Finished jobs: ``sacct`` with accounting, else ``sacct -c`` (the jobcomp file)."""
        ids = ",".join(job_ids)
        p = self._call(["sacct", "-P", "-j", ids, "-o", self.SACCT_FIELDS])
        if p.returncode == 0:
            return states_from_sacct(parse_sacct(p.stdout), "sacct"), "sacct"
        p = self._call(["sacct", "-c", "-P", "-j", ids, "-o", self.SACCT_C_FIELDS])
        if p.returncode == 0:
            return states_from_sacct(parse_sacct(p.stdout), "sacct -c"), "sacct -c"
        return [], "none"

    def job_command(self, job_id: str) -> str | None:
        """The batch script of a job Slurm still knows (``Command=``)."""
        p = self._call(["scontrol", "show", "job", "-o", str(job_id)])
        if p.returncode != 0:
            return None
        for rec in parse_scontrol_jobs(p.stdout):
            cmd = rec.get("Command")
            if cmd and cmd != "(null)":
                return cmd
        return None


def collect_states(record: dict, client: SlurmClient, sources: Sequence[str] = ("scontrol", "sacct")) \
        -> tuple[list[JobState], list[str]]:
    """Slurm's states of a submission's jobs: scontrol while it remembers them, else sacct."""
    ids = [str(x) for x in (record.get("plan_job_id"), record.get("array_job_id")) if x]
    states: list[JobState] = []
    used: list[str] = []
    missing = []
    for jid in ids:
        got = client.scontrol_jobs(jid) if "scontrol" in sources else None
        if got:
            states += got
            used.append("scontrol")
        else:
            missing.append(jid)
    if missing and "sacct" in sources:
        # Task job ids as the tasks recorded them (sacct -c has no array task ids).
        extra = []
        tdir = Path(record["_dir"]) / TASKS_DIR
        for f in sorted(tdir.glob("*.start")) if tdir.is_dir() else []:
            start = read_task_files(record["_dir"], f.stem)["start"] or {}
            if start.get("job_id") and (start.get("array_job_id") in missing or start.get("job_id") in missing):
                extra.append(start["job_id"])
        got, how = client.sacct(list(dict.fromkeys(missing + extra)))
        states += got
        if got:
            used.append(how)
    return states, sorted(set(used))


def status(record: dict, client: SlurmClient, sources: Sequence[str] = ("scontrol", "sacct")) -> SlurmDiagnosis:
    states, used = collect_states(record, client, sources)
    plan, tasks = build_views(record, states)
    return diagnose(record, plan, tasks, used)


def queued(record: dict, client: SlurmClient) -> list[JobState]:
    ids = [str(x) for x in (record.get("plan_job_id"), record.get("array_job_id")) if x]
    return client.squeue(ids) if ids else []


# --------------------------------------------------------------------------- human rendering (pure)

def render_status(d: SlurmDiagnosis) -> str:
    head = "nnrun slurm: oom (out of memory)" if d.outcome is Outcome.OOM else f"nnrun slurm: {d.outcome.value}"
    if not d.finished and d.outcome is Outcome.OK:
        head = "nnrun slurm: running"
    plan = f"plan job {d.plan_job_id}" if d.plan_job_id else "no plan job (plans existed)"
    lines = [f"{head}: {d.message}",
             f"  submission:   {d.submission_dir}",
             f"  jobs:         dataset {d.dataset}, {d.shards} shard(s); {plan}; array job {d.array_job_id or '-'}"]
    rows = ([d.plan] if d.plan else []) + d.tasks
    for v in rows:
        state = v.slurm_state or "unknown"
        outcome = v.outcome.value if v.outcome else ("-" if v.finished else "…")
        extra = []
        if v.victim_case and v.outcome is Outcome.OOM:
            extra.append(f"case {v.victim_case}")
        if v.peak_anon_bytes:
            extra.append(f"peak {format_bytes(v.peak_anon_bytes)}"
                         + (f" of {format_bytes(v.limit_bytes)}" if v.limit_bytes else ""))
        if v.slurm_reason and v.slurm_reason not in ("None", "(null)") and state != "COMPLETED":
            extra.append(f"reason {v.slurm_reason}")
        if v.note:
            extra.append(v.note)
        lines.append(f"  {v.label:<9} {(v.slurm_id or '-'):<10} {state:<14} {outcome:<9} {'; '.join(extra)}".rstrip())
    for a in d.advice:
        lines.append(f"  advice:       {a}")
    if d.recommendation:
        lines.append(f"  next:         {d.recommendation}")
    if d.sources:
        lines.append(f"  states from:  {', '.join(d.sources)}")
    return "\n".join(lines)
