"""``nnrun slurm submit`` and ``nnrun slurm status``: the CLI layer of the Slurm backend.

The only module of the Slurm backend that prints: the human result on stdout
(with ``--json`` one JSON object there instead, and the human text on stderr),
progress and errors on stderr.  Exit codes come from
:func:`runner.errors.exit_code_for` (``status``: the most serious outcome of
the submission's tasks).  The batch scripts and the submission folder are in
:mod:`runner.backends.slurm.scripts`, the parsers of Slurm's output in
:mod:`runner.backends.slurm.parsing`, the diagnosis in
:mod:`runner.backends.slurm.diagnosis`, the Slurm commands in
:mod:`runner.backends.slurm.client`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from runner.cli import common
from runner.cli import options as cli_options
from runner.cli.common import result
from runner.errors import BadInputError, InfraError, NnrunError

app = typer.Typer(
    name="slurm",
    help="Run the preprocessing of one dataset as Slurm jobs (a plan job, then an array of shards), "
         "and diagnose the whole submission.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

RUNTIMES = ("host", "podman")


def _out(data: dict) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _repo_root() -> str | None:
    """The checkout holding this nnrun's ``runner`` package, for the jobs' PYTHONPATH.

    None for an installed nnrun: a site-packages folder on PYTHONPATH would leak
    this Python's packages into the --host-python environment of the jobs.
    """
    import runner

    root = Path(runner.__file__).resolve().parent.parent
    return None if root.name in ("site-packages", "dist-packages") else str(root)


def _installed_in_editable_mode(root: str) -> bool:
    """Whether this Python has the checkout at ``root`` installed in editable mode (pip install -e)."""
    from importlib import metadata
    try:
        direct_url = json.loads(metadata.distribution("nnrun").read_text("direct_url.json") or "{}")
    except (metadata.PackageNotFoundError, ValueError):
        return False
    url = str(direct_url.get("url") or "")
    return bool((direct_url.get("dir_info") or {}).get("editable")) and url.startswith("file://") \
        and Path(url[len("file://"):]).resolve() == Path(root).resolve()


def _nnrun_executable() -> str | None:
    """The installed ``nnrun`` command the batch jobs run, or None to run this checkout with ``python -m``.

    Installed (site-packages): the ``nnrun`` next to the Python that runs, else the one on PATH.  A checkout:
    only when this Python has it installed in editable mode (its ``nnrun`` runs this very code); a checkout
    that is not installed keeps PYTHONPATH and ``-m runner.cli``.
    """
    beside = Path(sys.executable).parent / "nnrun"
    beside_ok = beside.is_file() and os.access(beside, os.X_OK)
    root = _repo_root()
    if root is not None:
        return str(beside) if beside_ok and _installed_in_editable_mode(root) else None
    return str(beside) if beside_ok else shutil.which("nnrun")


@app.command("submit", context_settings=common.HELP)
def submit_command(
    dataset: list[str] = typer.Option(..., "-d", metavar="ID", help="Dataset id (e.g. 501 or Dataset501_Name). One dataset."),
    mem: str = typer.Option(..., "--mem", metavar="SIZE", help="Memory of each job (sbatch --mem) and nnrun's cap: 16g, 4096m."),
    shards: int = typer.Option(..., "--shards", min=1, metavar="N",
                               help="N: the cases are split into N shards, one array task each."),
    partition: Optional[str] = typer.Option(None, "--partition", metavar="NAME", help="sbatch --partition."),
    time_limit: Optional[str] = typer.Option(None, "--time", metavar="TIME", help="sbatch --time of each job (e.g. 2:00:00)."),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task", min=1, metavar="N", help="sbatch --cpus-per-task."),
    runtime: str = typer.Option("host", "--runtime", metavar="host|podman",
                                help="host: nnU-Net as processes in the job, under the job's memory limit "
                                     "(default; no Docker needed); podman: in a Podman container."),
    host_python: Optional[str] = typer.Option(None, "--host-python", metavar="PATH",
                                              help="--runtime host: a Python with nnunetv2 on the nodes "
                                                   "[default: $NNRUN_HOST_PYTHON, else the Python of nnrun in the job]."),
    raw: Optional[str] = typer.Option(None, "--raw", metavar="DIR", help="nnU-Net raw folder [default: $nnUNet_raw]."),
    preprocessed: Optional[str] = typer.Option(None, "--preprocessed", metavar="DIR",
                                               help="nnU-Net preprocessed folder [default: $nnUNet_preprocessed]."),
    only_shards: Optional[str] = typer.Option(None, "--only-shards", metavar="K,K...",
                                              help="Resubmit only these shards, e.g. 1,3 (no plan job: the plans "
                                                   "exist). `nnrun slurm status` prints this command for you."),
    configurations: Optional[list[str]] = typer.Option(None, "-c", metavar="CONFIG...",
                                                       help="nnU-Net configurations to preprocess."),
    np_: Optional[list[str]] = typer.Option(None, "-np", metavar="N...",
                                            help="Preprocessing workers per task (as nnrun preprocess)."),
    npfp: Optional[str] = typer.Option(None, "-npfp", metavar="N", help="Fingerprint workers of the plan job."),
    overwrite_plans_name: Optional[str] = cli_options.OVERWRITE_PLANS_NAME,
    retry: Optional[int] = typer.Option(None, "--retry", min=0, max=10, metavar="N",
                                        help="nnrun preprocess --retry in each job."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the batch scripts; submit nothing, write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Submit a plan job (fingerprint, planning) and an array of N preprocessing tasks that depends on it.

    Each task runs `nnrun preprocess --shard K/N` directly in its batch script
    (no srun), so Slurm records an OOM kill as the task's state OUT_OF_MEMORY.
    Files: <preprocessed>/<Dataset>/.nnrun/slurm/<id>/ (scripts, submission.json,
    logs/, tasks/<K>.json = nnrun's report of task K). Then: nnrun slurm status JOBID.
    """
    from runner.backends.slurm.client import SlurmClient
    from runner.backends.slurm.scripts import (
        DRY_RUN_PLAN_ID,
        LOGS_DIR,
        PLAN_SCRIPT,
        PYTHON_ENV,
        SUBMISSION_FILE,
        TASK_SCRIPT,
        TASKS_DIR,
        SubmitOptions,
        array_spec,
        index_add,
        new_submission_id,
        render_plan_script,
        render_task_script,
        slurm_mem,
        submission_record,
    )
    from runner.dataset import load_raw_dataset, parse_dataset_id
    from runner.engines.host import HOST_ENV_HINT
    from runner.options import DEFAULT_CONFIGURATIONS, PreprocessOptions
    from runner.run.preflight import check_configurations, resolve_root
    from runner.rundir import HOST_PYTHON_ENV, write_json_atomic
    from runner.shards import ShardError, map_path, parse_shard_list, read_map
    from runner.units import parse_mem

    try:
        if len(dataset) != 1:
            raise BadInputError(f"one dataset per submission (got -d {' '.join(dataset)})")
        parse_mem(mem)
        if runtime not in RUNTIMES:
            raise BadInputError(f"--runtime must be host or podman on Slurm nodes (got {runtime!r}): "
                                f"Docker is usually not available there")
        try:
            only = parse_shard_list(only_shards, shards) if only_shards is not None else None
        except ShardError as err:
            raise BadInputError(f"--only-shards: {err}") from None
        if runtime == "host":
            host_python = host_python or os.environ.get(HOST_PYTHON_ENV) or None
            problem = None
            if host_python and not os.path.exists(host_python):
                problem = BadInputError(f"--host-python {host_python} does not exist", hint=HOST_ENV_HINT)
            elif not host_python and not os.environ.get(PYTHON_ENV) and importlib.util.find_spec("nnunetv2") is None:
                problem = BadInputError("--runtime host needs a Python with nnunetv2 on the nodes, and this one has "
                                        "none", hint=HOST_ENV_HINT)
            if problem is not None:
                if not dry_run:
                    raise problem
                # A dry run shows the scripts anyway (they may be meant for nodes that have what this host lacks).
                common.err(f"nnrun slurm: warning: {problem.one_line()}")
        elif host_python:
            raise BadInputError("--host-python goes with --runtime host")
        raw_root = resolve_root(raw, "nnUNet_raw", "--raw")
        ds = load_raw_dataset(raw_root, dataset[0])        # a DatasetXXX_Name must match the folder
        pre_root = resolve_root(preprocessed, "nnUNet_preprocessed", "--preprocessed")
        pre_ds = pre_root / ds.name
        plans_name = overwrite_plans_name or "nnUNetPlans"
        # -c as each task's `nnrun preprocess` will check it, before anything is submitted
        check_configurations(PreprocessOptions(parse_dataset_id(str(dataset[0])),
                                               configurations=tuple(configurations or DEFAULT_CONFIGURATIONS),
                                               overwrite_plans_name=overwrite_plans_name),
                             pre_ds, shard=only is not None)
        if only is not None and not (pre_ds / f"{plans_name}.json").is_file():
            raise BadInputError(f"--only-shards needs the plans, and {pre_ds / (plans_name + '.json')} does not "
                                f"exist: submit without --only-shards")
        try:
            existing = read_map(map_path(pre_ds, plans_name))
        except ShardError as err:
            raise BadInputError(str(err)) from None
        if existing is not None and int(existing.get("shards", -1)) != shards:
            raise BadInputError(f"{map_path(pre_ds, plans_name)} splits the cases into {existing.get('shards')} "
                                f"shards, not {shards}: use --shards {existing.get('shards')}, or delete the map "
                                f"once no shard runs")
        sub_id = new_submission_id()
        sub_dir = pre_ds / ".nnrun" / "slurm" / sub_id
        opts = SubmitOptions(
            dataset=str(dataset[0]), dataset_name=ds.name, mem=mem, shards=shards, submission_dir=str(sub_dir),
            python=os.environ.get(PYTHON_ENV) or sys.executable, pythonpath=_repo_root(),
            # $NNRUN_SLURM_PYTHON names the Python of the jobs: then `-m runner.cli`, else an installed nnrun.
            nnrun=None if os.environ.get(PYTHON_ENV) else _nnrun_executable(),
            only_shards=only, partition=partition, time=time_limit, cpus_per_task=cpus_per_task, runtime=runtime,
            host_python=host_python if runtime == "host" else None, raw=str(raw_root), preprocessed=str(pre_root),
            configurations=list(configurations) if configurations else None, np=list(np_) if np_ else None,
            npfp=npfp, plans_name=overwrite_plans_name, retry=retry)
        plan_script = None if only else render_plan_script(opts)

        if dry_run:
            task_script = render_task_script(opts, None if only else DRY_RUN_PLAN_ID)
            if as_json:
                _out({"outcome": "ok", "exit_code": 0, "dry_run": True, "submission_dir": str(sub_dir),
                      "scripts": {"plan": plan_script, "preprocess": task_script}})
            else:
                if plan_script:
                    sys.stdout.write(f"# ---- {sub_dir / PLAN_SCRIPT}\n{plan_script}\n")
                sys.stdout.write(f"# ---- {sub_dir / TASK_SCRIPT}"
                                 + (" (submitted with the plan job's id)" if plan_script else "") + f"\n{task_script}")
                common.err("nnrun slurm: dry run: nothing submitted, nothing written")
            raise typer.Exit(0)

        if shutil.which("sbatch") is None:
            raise InfraError("sbatch not found: this is not a Slurm submit host (install the Slurm client, "
                             "or load its module)")
        client = SlurmClient()
        try:
            for sub in (LOGS_DIR, TASKS_DIR):
                (sub_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise BadInputError(f"cannot make the submission folder {sub_dir}: {err.strerror}") from None
        plan_id = cluster = None
        if plan_script:
            (sub_dir / PLAN_SCRIPT).write_text(plan_script)
            plan_id, cluster = client.sbatch(str(sub_dir / PLAN_SCRIPT))
        task_script = render_task_script(opts, plan_id)
        (sub_dir / TASK_SCRIPT).write_text(task_script)
        try:
            array_id, cluster2 = client.sbatch(str(sub_dir / TASK_SCRIPT))
        except NnrunError:
            if plan_id:
                client.scancel(plan_id)       # no plan job without its array
            raise
        cluster = cluster or cluster2
        record = submission_record(opts, sub_id, plan_id, array_id, cluster)
        write_json_atomic(sub_dir / SUBMISSION_FILE, record)
        for jid in (plan_id, array_id):
            if jid:
                try:
                    index_add(jid, str(sub_dir), cluster)
                except OSError as err:
                    common.err(f"nnrun slurm: warning: cannot write the job index ({err.strerror}); "
                         f"use nnrun slurm status {sub_dir}")
    except NnrunError as err:
        common.fail(err, as_json, "nnrun slurm")
        return
    shards_text = array_spec(opts.array_shards)
    what = f"plan job {plan_id} and " if plan_id else ""
    count = len(opts.array_shards)
    result(f"nnrun slurm: submitted {what}array job {array_id} ({'shard' if count == 1 else 'shards'} {shards_text} "
           f"of 0-{shards - 1}) for {ds.name}, "
           f"--mem {slurm_mem(opts.mem_bytes)} each\n"
           f"  submission:   {sub_dir}\n"
           f"  status:       nnrun slurm status {array_id}   (--wait to wait for the end)", as_json)
    if as_json:
        _out({"outcome": "ok", "exit_code": 0, "dry_run": False, "submission_id": sub_id,
              "submission_dir": str(sub_dir), "plan_job_id": plan_id, "array_job_id": array_id,
              "array": shards_text, "cluster": cluster, "status_command": f"nnrun slurm status {array_id}"})
    raise typer.Exit(0)


def _find_submission(target: str) -> str:
    from runner.backends.slurm.client import SlurmClient
    from runner.backends.slurm.scripts import SUBMISSION_FILE, index_dir, index_lookup, parse_job_arg
    p = Path(target).expanduser()
    if p.is_dir() or p.name == SUBMISSION_FILE:
        return str(p.resolve())
    job = parse_job_arg(target)
    if job is None:
        raise BadInputError(f"{target} is neither a Slurm job id nor a submission folder")
    job_id, _task, cluster = job
    found = index_lookup(job_id, cluster)
    if found:
        return found
    # Not in this user's index (another machine, another user): ask Slurm for the job's batch script.
    if shutil.which("scontrol"):
        command = SlurmClient().job_command(job_id)
        if command and (Path(command).parent / SUBMISSION_FILE).is_file():
            return str(Path(command).parent)
    raise BadInputError(f"no nnrun submission known for job {job_id} (index {index_dir()}, and Slurm "
                        f"does not know the job any more): pass the submission folder "
                        f"<preprocessed>/<Dataset>/.nnrun/slurm/<id> instead")


@app.command("status", context_settings=common.HELP)
def status_command(
    target: str = typer.Argument(..., metavar="JOBID|DIR",
                                 help="A job id of the submission (plan or array job, or ARRAY_TASK) "
                                      "or its submission folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    wait: bool = typer.Option(False, "--wait", help="Wait until no job of the submission is queued any more."),
    interval: float = typer.Option(5.0, "--interval", min=0.2, metavar="SECONDS",
                                   help="--wait: seconds between looks at the queue."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0, metavar="SECONDS",
                                            help="--wait: give up after this many seconds (then the status so far)."),
) -> None:
    """One diagnosis for a whole submission: the state of each shard, which task was OOM-killed on which
    case, and the command that resubmits only the failed shards.

    Exit code: the most serious outcome among the finished tasks (0 ok, 3 oom, 5 killed, 4 error, 6 infra, ...);
    0 while everything that finished so far is ok.
    """
    from runner.backends.slurm.client import SlurmClient, queued, status
    from runner.backends.slurm.diagnosis import render_status
    from runner.backends.slurm.scripts import load_submission
    try:
        record = load_submission(_find_submission(target))
        if shutil.which("scontrol") is None and shutil.which("sacct") is None:
            raise InfraError("neither scontrol nor sacct found: this is not a Slurm host (install the Slurm client, "
                             "or load its module)")
        client = SlurmClient()
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            last = None
            while True:
                queue = queued(record, client)
                if not queue:
                    break
                summary = ", ".join(f"{n} {s.lower()}" for s, n in sorted(
                    {s: sum(1 for q in queue if q.state == s) for s in {q.state for q in queue}}.items()))
                if summary != last:
                    common.err(f"nnrun slurm: waiting: {summary}")
                    last = summary
                if deadline is not None and time.monotonic() >= deadline:
                    common.err("nnrun slurm: --timeout reached; the status so far:")
                    break
                time.sleep(interval)
        diagnosis = status(record, client)
    except NnrunError as err:
        common.fail(err, as_json, "nnrun slurm")
        return
    result(render_status(diagnosis), as_json)
    if as_json:
        _out(diagnosis.to_json())
    raise typer.Exit(diagnosis.exit_code)

