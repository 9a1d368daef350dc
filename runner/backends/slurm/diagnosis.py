"""The diagnosis of one Slurm submission, and its human rendering.

Slurm's state of each task combined with the task's nnrun JSON (victim case,
peak, recommendation) gives one diagnosis: per shard the state and outcome, the
OOM-killed shards with their case and memory peak, and one ``nnrun slurm submit
... --only-shards`` command that resubmits just the failed shards with more
memory or fewer workers.

No subprocess and no printing: the states come from
:mod:`runner.backends.slurm.client` (or a test), the task files from the
submission folder.
"""
from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runner import __version__
from runner.backends.slurm.parsing import JobState, signal_of, status_of
from runner.backends.slurm.scripts import (
    LOGS_DIR,
    PLAN_KEY,
    SCHEMA_VERSION,
    SubmitOptions,
    options_from_record,
    read_task_files,
)
from runner.diagnosis.wording import headline
from runner.errors import EXIT_CODES, NnrunError, Outcome, exit_code_for
from runner.units import format_bytes, format_mem_arg, parse_mem

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
            or signal_of(v.slurm_exit_code) == SLURM_OOM_SIGNAL
            or signal_of(v.slurm_derived_exit_code) == SLURM_OOM_SIGNAL)


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
        code = v.nnrun_exit_code if v.nnrun_exit_code is not None else status_of(v.slurm_exit_code)
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



# --------------------------------------------------------------------------- human rendering (pure)

def render_status(d: SlurmDiagnosis) -> str:
    head = headline(d.outcome, "nnrun slurm")
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
