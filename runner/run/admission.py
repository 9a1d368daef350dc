"""Worker counts and the memory-aware admission plan, from the estimate.  Pure functions.

* ``-np auto`` / ``-npfp auto``: the largest fixed pool whose largest cases fit
  the cap side by side, with the estimate's safety margin (and no more
  workers than cores).
* ``--schedule memory`` (the default when no worker count is given): the agent
  admits cases largest first while the cgroup's predicted charge fits the cap:
  the main process and every live worker's baseline (measured in the image),
  plus, per running case, its predicted extra bytes and the safety margin of
  its predicted peak (the model's error was measured on per-case peaks; the
  baselines carry none); a case an earlier run measured is known: its
  measured peak and ``MEASURED_MARGIN``.  Workers start on demand, so a case that needs the
  cap to itself never shares it with an idle worker.  ``admission_plan``
  gives the agent these numbers and the most workers that can ever run.
* Warm workers: the first configuration's workers start while nnU-Net's main
  process imports (``warm_workers``), when their idle baselines fit next to it
  (and, before a fingerprint, next to the fingerprint pool and the main
  process's peak at its end).
* A case predicted not to fit the cap even alone is ``bad_input`` before the
  run, with the ``--mem`` it needs.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from runner.errors import NotEnoughMemoryError
from runner.estimate.model import Estimate, max_workers_that_fit
from runner.estimate.need import MEASURED_MARGIN, MemoryNeed, Part, PeakKey, mem_hint, memory_needed
from runner.options import PreprocessOptions
from runner.units import format_bytes


def case_extras(est: Estimate, configuration: str) -> dict[str, int]:
    return {row["case"]: int(row["extra_bytes"]) for row in est.per_case
            if row["phase"] == "preprocessing" and row["configuration"] == configuration}


def measured_peaks_of(measured: Mapping[PeakKey, int] | None, configuration: str) -> dict[str, int]:
    """The worker peaks earlier runs measured for this configuration's cases (runner.run.history)."""
    return {case: int(v) for (phase, cfg, case), v in (measured or {}).items()
            if phase == "preprocessing" and cfg == configuration and v}


def case_needs(est: Estimate, configuration: str, measured: Mapping[PeakKey, int] | None = None) -> dict[str, int]:
    """What admitting a case reserves: its extra bytes above the worker baseline + a margin of its peak.

    A case an earlier run of this dataset measured (same image and plans) is known: its measured peak
    with ``MEASURED_MARGIN``; the others: the estimate with the model's margin.
    """
    known = measured_peaks_of(measured, configuration)
    worker = est.baseline.worker_bytes
    out = {}
    for c, e in case_extras(est, configuration).items():
        if c in known:
            out[c] = max(0, known[c] - worker) + int(round(MEASURED_MARGIN * known[c]))
        else:
            out[c] = e + int(round(est.margin * (worker + e)))
    return out


def admission_plan(est: Estimate, configuration: str, max_workers: int,
                   measured: Mapping[PeakKey, int] | None = None) -> dict | None:
    """The memory model of one configuration for the agent's admission (None: no such configuration).

    ``workers``: the most workers that can ever run at once, the smallest cases side by side (at most
    ``max_workers``, the cores and the cases); the agent starts them only as cases fit.  ``measured``:
    per-case peaks of earlier runs (those cases are known, not estimated).
    """
    extras = case_extras(est, configuration)
    if not extras:
        return None
    need = case_needs(est, configuration, measured)
    known = sorted(set(measured_peaks_of(measured, configuration)) & set(extras))
    main, per_worker, cap = est.baseline.main_bytes, est.baseline.worker_added_bytes, est.cap_bytes
    smallest = sorted(need.values())
    workers = 1
    for w in range(2, max(1, min(max_workers, est.cpus, len(extras))) + 1):
        if main + w * per_worker + sum(smallest[:w]) <= cap:
            workers = w
    return {"model": 2, "workers": workers, "cap_bytes": cap, "main_bytes": main, "worker_added_bytes": per_worker,
            "worker_bytes": est.baseline.worker_bytes,      # the agent's feedback compares whole peaks
            "need_bytes": need, "case_bytes": extras, "margin": est.margin, "measured_cases": known,
            # model 1 (an agent without main_bytes): a budget for the cases' extra bytes
            "budget_bytes": max(cap - main - workers * per_worker, max(need.values()))}


def warm_workers(opts: PreprocessOptions, est: Estimate | None, schedule: str, np_auto: bool,
                 fingerprint_exists: bool) -> dict | None:
    """The workers to start with nnU-Net's main process (None: none), for ``warm.json``.

    When preprocessing follows (no --no_pp, no dataset verification) and the estimate is known: one worker
    for memory-aware admission (it starts the others as cases fit), the first configuration's fixed pool
    otherwise (``-np auto`` or a count given).  A spawned worker spends ~2 s importing nnU-Net; started
    with the main process it uses the core the main process's own imports leave idle, instead of
    following the planning.  Idle, the workers hold their baselines next to the main process: when the
    fingerprint is still to be made (none yet, or --clean) they must also fit beside the fingerprint
    pool and beside the main process's peak at the end of the fingerprint, or none is started.
    """
    if est is None or opts.no_pp or opts.verify_dataset_integrity:
        return None
    first = opts.configurations[0]
    if schedule == "memory":
        kind, n = "memory", 1
    else:
        kind, n = "fixed", opts.workers_per_configuration().get(first, 1)
    added = n * est.baseline.worker_added_bytes
    if est.baseline.main_bytes + added > est.cap_bytes:
        return None
    if (opts.clean or not fingerprint_exists) and not fingerprint_fits_beside(est, opts.npfp, added):
        return None
    return {"configuration": first, "kind": kind, "workers": n}


def fingerprint_fits_beside(est: Estimate, npfp: int, added_bytes: int) -> bool:
    """Whether ``added_bytes`` more (idle warm workers) leave room for the fingerprint phase: ``npfp``
    workers with the largest predicted cases (margin included) beside the main process while the pool
    runs, and the main process's predicted peak at the end of the phase (margin included)."""
    shared = est.baseline.shared_bytes
    peaks = [r["predicted_peak_bytes"] - shared for r in est.per_case if r["phase"] == "fingerprint"]
    want = min(max(1, npfp), len(peaks))
    fits_pool = not peaks or max_workers_that_fit(peaks, est.main_fingerprint_pool_bytes + added_bytes,
                                                  est.cap_bytes, est.margin, want, shared) >= want
    main_end = est.main_fingerprint_peak_bytes or est.baseline.main_bytes
    return fits_pool and main_end * (1.0 + est.margin) + added_bytes <= est.cap_bytes


def resolve_workers(opts: PreprocessOptions, est: Estimate, np_auto: bool, npfp_auto: bool,
                    schedule: str, measured: Mapping[PeakKey, int] | None = None) -> PreprocessOptions:
    """Fill in the worker counts nnrun chooses (``measured``: per-case peaks of earlier runs)."""
    new = opts
    if npfp_auto:
        new = replace(new, npfp=max(1, est.max_npfp))
    if schedule == "memory":
        plans = {c: admission_plan(est, c, max_workers=est.cpus, measured=measured) for c in opts.configurations}
        values = tuple(max(1, (p or {}).get("workers", 1)) for p in plans.values())
        new = replace(new, np=values if len(set(values)) > 1 else values[:1])
    elif np_auto:
        values = tuple(max(1, est.max_np.get(c, 1)) for c in opts.configurations)
        new = replace(new, np=values if len(set(values)) > 1 else values[:1])
    return new


def _refusal_bytes(part: Part, est: Estimate) -> int:
    """What must fit for a part to be worth a try: nnU-Net's main process alone less its library pages.

    The main process's peak RSS counts the shared libraries it maps (torch, numpy: ``shared_bytes``),
    file pages the kernel can drop and read again under the cap; its anonymous memory cannot go.
    Measured: native nnU-Net finished the fingerprint of six head phantoms under a 1536 MiB cap (one
    channel, ``-npfp 2``) where the main process's predicted RSS peak was 1.6 GiB.  A case part already
    counts those pages once (the worker's peak less them).  The --mem nnrun advises keeps the whole peak.
    """
    if part.kind in ("main", "main_pool", "main_end"):
        return part.bytes - est.baseline.shared_bytes
    return part.bytes


def check_fits(est: Estimate, host_mem_bytes: int | None, fingerprint_needed: bool,
               preprocessing: bool = True, configurations: Iterable[str] | None = None,
               measured: Mapping[PeakKey, int] | None = None, main_only: bool = False) -> MemoryNeed:
    """The memory the run needs with one worker per pool; NotEnoughMemoryError (bad_input) when even that
    cannot fit the cap.

    Refuse only when the point value itself exceeds the cap (for nnU-Net's main process: less the
    library pages it maps, :func:`_refusal_bytes`): the margin (the
    model's worst error) decides how cases are packed, and the advised --mem
    includes it, but a cap between the point value and point + margin is worth
    a try (measured: a case predicted at 2.10 GB peaked at 1.99 GB).  Every
    part is checked at once (:func:`memory_needed`), so the --mem named here is
    the one that fits, not the first of several refusals.

    ``main_only`` (the user pinned the workers): refuse only when nnU-Net's
    main process cannot run (its imports, or the fingerprint samples it holds
    while the workers run); the --mem named is the same.
    """
    need = memory_needed(est, fingerprint=fingerprint_needed, configurations=configurations if preprocessing else (),
                         measured=measured)
    over = [p for p in need.parts if _refusal_bytes(p, est) > est.cap_bytes
            and (p.kind in ("main", "main_pool") or not main_only)]
    if over:
        worst = max(over, key=lambda p: p.bytes)
        more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
        raise NotEnoughMemoryError(
            f"{worst.what} needs about {format_bytes(worst.bytes)}{more}: more than the "
            f"{format_bytes(est.cap_bytes)} cap, even with one worker",
            hint=mem_hint(need, host_mem_bytes),
            mem_arg=None if host_mem_bytes and need.mem_bytes > host_mem_bytes else need.mem_arg)
    return need
