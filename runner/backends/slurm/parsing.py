"""Parsers of Slurm's output and the job states they give.

``sbatch --parsable``, ``scontrol show job -o``, ``squeue``, ``sacct -P`` (with
accounting, and ``sacct -c`` from the jobcomp file), array index expressions and
``ExitCode`` values; :class:`JobState` is one job or array task as any of them
reports it.  Pure: text in, data out (no files, no subprocess); the real outputs
they are tested on are in tests/fixtures/slurm/.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from runner.errors import InfraError


class SlurmParseError(InfraError):
    """Output of a Slurm command that does not parse."""


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


def signal_of(exit_code: str | None) -> int | None:
    """``0:125`` -> 125 (the part after the colon)."""
    if not exit_code or ":" not in exit_code:
        return None
    try:
        return int(exit_code.split(":", 1)[1])
    except ValueError:
        return None


def status_of(exit_code: str | None) -> int | None:
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
