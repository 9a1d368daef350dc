"""Slurm backend: the submission folder, its two batch scripts, and the job id index.

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

Also here: the submission record (``submission.json``), the job id -> submission
index, and the reading back of the files each task writes (``tasks/<key>.start``,
``.json``, ``.exit``).  Pure apart from reading/writing the submission folder and
the index: no printing, no subprocess.  Slurm's output is parsed in
:mod:`runner.backends.slurm.parsing`, the Slurm commands run in
:mod:`runner.backends.slurm.client`; the CLI layer is ``runner/cli/slurm.py``.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from runner import __version__
from runner.errors import BadInputError, Outcome
from runner.units import GIB, MIB, parse_mem

SCHEMA_VERSION = 1
SUBMISSION_FILE = "submission.json"
PLAN_SCRIPT = "plan.sbatch"
TASK_SCRIPT = "preprocess.sbatch"
TASKS_DIR = "tasks"
LOGS_DIR = "logs"
PLAN_KEY = "plan"                      # tasks/plan.{start,json,exit}
PYTHON_ENV = "NNRUN_SLURM_PYTHON"      # the Python that runs nnrun in the jobs [default: the submitting one]
INDEX_ENV = "NNRUN_SLURM_INDEX"        # folder of the job id -> submission index
DRY_RUN_PLAN_ID = "<plan job id>"


# --------------------------------------------------------------------------- options and scripts

@dataclass
class SubmitOptions:
    """Everything the two batch scripts are rendered from (plain data, saved in submission.json)."""

    dataset: str                         # as the user gave it to -d (501 or Dataset501_Name)
    dataset_name: str                    # Dataset501_Name (job names)
    mem: str                             # nnrun's --mem, docker syntax (16g)
    shards: int                          # N
    submission_dir: str                  # absolute
    python: str                          # runs `-m runner.cli` in the jobs (when ``nnrun`` is None)
    pythonpath: str | None = None        # the folder holding this nnrun's runner package (a checkout)
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
    nnrun: str | None = None             # the installed nnrun executable the jobs run; None: "$PYTHON" -m runner.cli

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
    """The plan job's nnrun arguments (after ``nnrun``): fingerprint and planning only."""
    return ["preprocess", *_common_args(o), "--no_pp"]


def task_argv(o: SubmitOptions, shard: str = "$K/$N") -> list[str]:
    """A preprocessing task's nnrun arguments (after ``nnrun``); ``shard`` stays a shell expression."""
    args = ["preprocess", *_common_args(o), "--shard", shard]
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
    lines = [f"SUBMISSION={shlex.quote(d)}"]
    if o.nnrun:
        lines.append(f"NNRUN={shlex.quote(o.nnrun)}")
    else:
        # A checkout that is not installed: its runner package, run by this Python.
        lines.append(f"PYTHON={shlex.quote(o.python)}")
        if o.pythonpath:
            lines.append(f'export PYTHONPATH={shlex.quote(o.pythonpath)}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    lines.append(f'mkdir -p "$SUBMISSION/{TASKS_DIR}"')
    return lines


def _nnrun(o: SubmitOptions) -> str:
    """How the jobs start nnrun: the installed executable, or the checkout's package with ``$PYTHON -m``."""
    return '"$NNRUN"' if o.nnrun else '"$PYTHON" -m runner.cli'


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
    cmd = command or f"{_nnrun(o)} {_shell(plan_argv(o))}"
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
    cmd = command or f"{_nnrun(o)} {_shell(task_argv(o))}"
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
