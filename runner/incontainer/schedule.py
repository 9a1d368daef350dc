"""Inside the container: the worker pools of the preprocessing step (standard library only).

Two things the host asks for through files in the run folder:

* **Warm workers** (``warm.json``): the first configuration's workers are
  started when the agent starts, before nnU-Net's main process imports torch
  (and extracts the fingerprint, when there is none yet).  A spawned worker
  spends ~2 s importing nnU-Net; here that overlaps the main process's own
  imports, on the core they leave idle, instead of following the planning.
  The host checked that the idle workers fit next to the main process (and
  the fingerprint pool): they hold only their baseline, which the estimate
  counts.
* **Memory-aware admission** (``schedule.json``, model 2): cases are admitted
  largest first while the cgroup's predicted charge fits the cap::

      main + workers alive x worker baseline + sum over running cases of need(case) <= cap
      need(case) = predicted extra bytes + margin x predicted peak

  The safety margin applies to what the estimate predicts per case (the
  model's error was measured on the full per-case peak); the main process's
  and an idle worker's baselines are measured in the image and carry none.
  Workers are single-worker pools started on demand: one while a case that
  needs the cap to itself runs, a second (third...) as soon as a case fits
  next to the running ones *and* its worker's baseline, so a large case is
  never preceded by an idle worker it cannot afford, and small cases run side
  by side.  An idle worker is stopped when the next case only fits alone.
  A case always runs when nothing else does (the host refused, before the
  run, a case whose point estimate does not fit the cap alone).  Each
  finished case's measured peak feeds back (``MemoryModel.learn``): the
  cases still to run are re-predicted with the worst measured/predicted
  ratio seen so far.

Every case is computed by nnU-Net's own ``run_case_save`` with nnU-Net's
arguments, as in its own pool: outputs are the same whatever the schedule.
A worker that dies is fatal, with nnU-Net's own message, as in nnU-Net.
"""
from __future__ import annotations

import json
import os
import threading
import time
from multiprocessing import get_context

from runner.incontainer.events import DEAD_WORKER_MESSAGE, current_phase, emit, kill_hook, peak_rss_bytes
from runner.rundir import AGENT_EVENTS_ENV, CONFIGURATION_ENV, EV_WORKER_DIED, PHASE_ENV, WARM_FILE

_WARM: dict | None = None        # {"configuration", "kind", "pools": [Pool], "procs": [Process]}


# -- tasks --------------------------------------------------------------------------------------

def call_in_phase(phase: str | None, configuration: str | None, fn, args: tuple) -> int | None:
    """Run one case in a worker with the phase in its environment (a warm worker started before it was set).

    Returns the worker's peak RSS on the case (the agent's per-case wrapper reset it when the case began;
    without the wrapper it is the worker's lifetime peak, never less): the memory-aware admission learns
    from it.  nnU-Net's ``run_case_save`` returns nothing.
    """
    os.environ[PHASE_ENV] = phase or ""
    os.environ[CONFIGURATION_ENV] = configuration or ""
    fn(*args)
    return peak_rss_bytes()


def _dead_worker_error() -> RuntimeError:
    return RuntimeError(DEAD_WORKER_MESSAGE)


# -- warm workers -------------------------------------------------------------------------------

def warm_file() -> str | None:
    events = os.environ.get(AGENT_EVENTS_ENV)
    return os.path.join(os.path.dirname(events), WARM_FILE) if events else None


def prestart(path: str | None = None) -> None:
    """Start the workers ``warm.json`` asks for (main process, before nnU-Net's imports)."""
    global _WARM
    path = path or warm_file()
    if not path or not os.path.exists(path) or _WARM is not None:
        return
    try:
        with open(path) as fh:
            plan = json.load(fh)
        kind, n, configuration = plan["kind"], int(plan["workers"]), plan["configuration"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if kind not in ("fixed", "memory") or n < 1:
        return
    ctx = get_context("spawn")
    try:
        pools = [ctx.Pool(n)] if kind == "fixed" else [ctx.Pool(1) for _ in range(n)]
    except OSError as err:     # only a head start: without it nnU-Net's pool starts as usual
        emit("warm_workers_failed", error=str(err)[:300])
        return
    _WARM = {"configuration": configuration, "kind": kind, "workers": n, "pools": pools,
             "procs": [p for pool in pools for p in pool._pool]}
    emit("warm_workers", configuration=configuration, pools=kind, workers=n,
         worker_pids=[p.pid for p in _WARM["procs"]])


def take_warm(configuration: str | None, kind: str, workers: int | None = None) -> list | None:
    """The warm pools if they were started for this configuration and kind (and size); else stop them."""
    global _WARM
    warm, _WARM = _WARM, None
    if warm is None:
        return None
    if warm["configuration"] == configuration and warm["kind"] == kind and workers in (None, warm["workers"]):
        if not all(p.is_alive() for p in warm["procs"]):
            for pool in warm["pools"]:
                pool.terminate()
            raise _dead_worker_error()
        return warm["pools"]
    for pool in warm["pools"]:
        pool.terminate()
    return None


def discard_warm() -> None:
    take_warm(None, "")


# -- fixed pool (nnU-Net's own logic) -----------------------------------------------------------

def run_fixed(preprocessor, args: dict, num_processes: int) -> None:
    """Every case queued on -np spawn workers, a dead worker is fatal: nnU-Net's DefaultPreprocessor.run."""
    phase, configuration = current_phase()
    warm = take_warm(configuration, "fixed", num_processes)
    pool = warm[0] if warm else get_context("spawn").Pool(num_processes)
    with pool:
        workers = list(pool._pool)
        results = {c: pool.apply_async(call_in_phase, (phase, configuration, preprocessor.run_case_save, a))
                   for c, a in args.items()}
        remaining = set(results)
        finished = 0
        while remaining:
            dead = [w for w in workers if not w.is_alive()]
            if dead:
                for w in dead:
                    emit(EV_WORKER_DIED, worker_pid=w.pid, exitcode=w.exitcode, phase=phase,
                         configuration=configuration)
                raise _dead_worker_error()
            for c in [c for c in remaining if results[c].ready()]:
                results[c].get()
                remaining.discard(c)
                finished += 1
                if finished == 1:
                    kill_hook("between_cases")
            time.sleep(0.1)


# -- memory-aware admission ---------------------------------------------------------------------

class _Slot:
    """One single-worker pool and the case it runs."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.proc = pool._pool[0]
        self.case: str | None = None
        self.result = None


# Feedback never scales the predictions below this fraction, and lowers them only once this many cases
# were measured: a run learns from a few cases only (the model's per-case error spread is ~13 %).
MIN_FEEDBACK_RATIO = 0.85
MIN_CASES_TO_LOWER = 2


class MemoryModel:
    """The cgroup charge the plan predicts for a set of workers and running cases.

    **Feedback** (:meth:`learn`): each finished case's measured peak is compared with its predicted peak;
    the remaining estimated cases are re-predicted with the worst ratio seen so far (not below
    ``MIN_FEEDBACK_RATIO``, and below 1 only after ``MIN_CASES_TO_LOWER`` cases), with the same margin.
    So a dataset the model over-predicts (e.g. smooth anatomy that crops well) packs tighter as the run
    goes, and one it under-predicts reserves more.  A running case's reservation only ever grows; cases
    an earlier run measured (``measured_cases``) are known and keep their need.
    """

    def __init__(self, plan: dict, cases) -> None:
        needs = plan.get("need_bytes") or {}
        self.extra = {c: int((plan.get("case_bytes") or {}).get(c, 0)) for c in cases}
        self.need = {c: int(needs.get(c, self.extra[c])) for c in cases}
        if "main_bytes" in plan:
            self.cap = int(plan["cap_bytes"])
            self.main = int(plan["main_bytes"])
            self.worker = int(plan["worker_added_bytes"])
        else:       # a model-1 plan: a budget for the cases' extra bytes, the workers' baselines set aside
            self.cap, self.main, self.worker = int(plan["budget_bytes"]), 0, 0
        # What feedback needs: a worker's whole baseline and the margin (plans from nnrun >= 0.1.0 with it).
        self.worker_bytes = int(plan.get("worker_bytes") or 0)
        self.margin = float(plan.get("margin") or 0.0)
        self.known = set(plan.get("measured_cases") or ())
        self.ratio: float | None = None
        self.learnt = 0

    def free(self, workers: int, running) -> int:
        return self.cap - self.main - workers * self.worker - sum(self.need[c] for c in running)

    def predicted_peak(self, case: str) -> int:
        return self.worker_bytes + self.extra.get(case, 0)

    def learn(self, case: str, peak: int | None, unfinished, running) -> float | None:
        """A finished case's measured peak: re-predict the unfinished estimated cases; the new ratio (or None)."""
        if not peak or case in self.known or not self.worker_bytes or case not in self.extra:
            return None
        ratio = peak / max(1, self.predicted_peak(case))
        self.ratio = ratio if self.ratio is None else max(self.ratio, ratio)
        self.learnt += 1
        scale = max(self.ratio, MIN_FEEDBACK_RATIO if self.learnt >= MIN_CASES_TO_LOWER else 1.0)
        for c in unfinished:
            if c in self.known or c not in self.extra:
                continue
            p = scale * self.predicted_peak(c)
            new = max(0, int(p) - self.worker_bytes) + int(round(self.margin * p))
            self.need[c] = max(self.need[c], new) if c in running else new
        return self.ratio


def plan_admissions(model: MemoryModel, pending: list[str], running: list[str], idle: int, alive: int,
                    max_workers: int) -> list[tuple[str, str]]:
    """The next decisions, in order: ("run", case) on an idle worker, ("spawn", case) on a new worker,
    ("retire", "") an idle worker.  Pure: the scheduler applies them.  ``pending`` is in admission order."""
    out: list[tuple[str, str]] = []
    pending, running = list(pending), list(running)
    while pending:
        chosen = None
        for c in pending:
            if not running:
                # Nothing runs: the first pending case runs, next to as few idle workers as it needs.
                while alive > 1 and idle > 0 and model.free(alive, [c]) < 0:
                    out.append(("retire", ""))
                    alive, idle = alive - 1, idle - 1
                if idle == 0:
                    out.append(("spawn", c))
                    alive += 1
                else:
                    out.append(("run", c))
                    idle -= 1
                chosen = c
                break
            if idle > 0 and model.free(alive, running + [c]) >= 0:
                out.append(("run", c))
                idle -= 1
                chosen = c
                break
            if idle == 0 and alive < max_workers and model.free(alive + 1, running + [c]) >= 0:
                out.append(("spawn", c))
                alive += 1
                chosen = c
                break
        if chosen is None:
            break
        pending.remove(chosen)
        running.append(chosen)
    return out


def run_memory_aware(preprocessor, args: dict, plan: dict) -> None:
    """Admit cases largest first while the predicted charge fits the cap; start workers as cases fit."""
    phase, configuration = current_phase()
    model = MemoryModel(plan, args)
    max_workers = max(1, min(int(plan.get("workers", 1)), len(args)))
    pending = sorted(args, key=lambda c: (-model.need[c], c))
    emit("schedule", mode="memory", model=2, workers=max_workers, cap_bytes=model.cap, main_bytes=model.main,
         worker_bytes=model.worker, order=pending, need_bytes=model.need)
    ctx = get_context("spawn")
    wake = threading.Event()
    slots: list[_Slot] = [_Slot(p) for p in (take_warm(configuration, "memory") or [])]

    def done(_result=None) -> None:
        wake.set()

    def submit(slot: _Slot, case: str) -> None:
        slot.case = case
        slot.result = slot.pool.apply_async(call_in_phase, (phase, configuration, preprocessor.run_case_save,
                                                             args[case]), callback=done, error_callback=done)

    finished = 0
    try:
        while pending or any(s.case for s in slots):
            dead = [s for s in slots if not s.proc.is_alive()]
            if dead:
                for s in dead:
                    emit(EV_WORKER_DIED, worker_pid=s.proc.pid, exitcode=s.proc.exitcode, case=s.case, phase=phase,
                         configuration=configuration)
                raise _dead_worker_error()
            for s in slots:
                if s.case is not None and s.result.ready():
                    peak = s.result.get()       # a case's exception fails the run, as in nnU-Net's pool
                    case, s.case, s.result = s.case, None, None
                    running = [x.case for x in slots if x.case]
                    ratio = model.learn(case, peak, pending + running, running)
                    if ratio is not None:
                        emit("schedule_feedback", case=case, peak_rss_bytes=peak, ratio=round(ratio, 4),
                             need_bytes={c: model.need[c] for c in pending})
                    finished += 1
                    if finished == 1:
                        kill_hook("between_cases")
            running = [s.case for s in slots if s.case]
            idle = [s for s in slots if s.case is None]
            for action, case in plan_admissions(model, pending, running, len(idle), len(slots), max_workers):
                if action == "retire":
                    slot = idle.pop()
                    slots.remove(slot)
                    slot.pool.terminate()
                elif action == "spawn":
                    slot = _Slot(ctx.Pool(1))
                    slots.append(slot)
                    submit(slot, case)
                    pending.remove(case)
                else:
                    slot = idle.pop(0)
                    submit(slot, case)
                    pending.remove(case)
            wake.wait(0.05)
            wake.clear()
    finally:
        for s in slots:
            s.pool.terminate()
