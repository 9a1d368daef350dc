"""The Slurm commands nnrun runs, and the status of a submission.

``nnrun slurm status`` reads the states back: ``scontrol show job -o`` while
the controller remembers the jobs (``MinJobAge``, 300 s by default), then
``sacct`` (with accounting), or ``sacct -c`` (the jobcomp file, when
accounting storage is disabled: it knows no array task ids, so each task
writes its own Slurm job id to ``tasks/<shard>.start``).  Combined with each
task's nnrun JSON this gives one diagnosis (:mod:`runner.backends.slurm.diagnosis`).

The only module of the Slurm backend that runs commands, through the optional
command runner of :class:`SlurmClient` (injected in tests): no printing, no
subprocess at import.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from runner.backends.slurm.diagnosis import SlurmDiagnosis, build_views, diagnose
from runner.backends.slurm.parsing import (
    SQUEUE_FORMAT,
    JobState,
    parse_sacct,
    parse_sbatch_parsable,
    parse_scontrol_jobs,
    parse_squeue,
    states_from_sacct,
    states_from_scontrol,
    states_from_squeue,
)
from runner.backends.slurm.scripts import TASKS_DIR, read_task_files
from runner.errors import BadInputError, InfraError

# --------------------------------------------------------------------------- talking to Slurm

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _default_runner(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
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

    def _call(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
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
